//! The two templates a team forks, proven against real components: the
//! DAGs template's own tests in a real Airflow 3 (its DAGs' whole path to a
//! serving endpoint is `promotion.rs`); the platform template dry-run on
//! the real kube-apiserver and checked by `kubernetes-validate --strict`.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::support::ml::{output, venv};
use crate::support::*;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn the_dags_template_passes_its_own_tests_in_real_airflow() {
    let home = tempfile::tempdir().unwrap();
    let template = root().join("dags-repo-template");
    let (ok, text) = output(
        Command::new(venv("airflow-venv", "python"))
            .args(["-m", "unittest", "discover", "-v", "-s", "tests", "-t", "."])
            .current_dir(&template)
            .env("AIRFLOW_HOME", home.path())
            .env("PYTHONWARNINGS", "ignore"),
    );
    assert!(ok, "{text}");
    assert!(
        text.contains("Ran 15 tests") && text.contains("OK"),
        "{text}"
    );
}

fn template_manifests() -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut dirs = vec![root().join("platform-repo-template/manifests")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "yaml") {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

#[test]
fn the_platform_template_passes_kubernetes_validate_strict() {
    let files = template_manifests();
    assert!(files.len() >= 8, "{files:?}");
    let (ok, text) = output(
        Command::new(venv("lint-venv", "kubernetes-validate"))
            .args(["--strict", "--kubernetes-version", "1.37.0"])
            .args(&files),
    );
    assert!(ok, "{text}");
    assert!(!text.contains("ERROR"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_platform_template_is_accepted_by_the_apiserver() {
    use k8s_openapi::api::core::v1::Namespace;
    use kube::api::{Api, Patch, PatchParams};

    // As ferry's own identity: deploy/base's ClusterRole, nothing more.
    let cp = control_plane();
    let admin = ferry::kubernetes::client::connect(Some(&cp.admin))
        .await
        .unwrap();
    grant_ferrys_cluster_role(&admin).await;
    let client = ferry::kubernetes::client::connect(Some(&cp.restricted))
        .await
        .unwrap();
    // Commit the template as a platform repo, as a team's fork would be.
    let tmp = tempfile::tempdir().unwrap();
    let repo = git2::Repository::init_bare(tmp.path().join("platform.git")).unwrap();
    let mut files = Vec::new();
    for path in template_manifests() {
        let rel = path
            .strip_prefix(root().join("platform-repo-template"))
            .unwrap();
        files.push((
            rel.to_string_lossy().into_owned(),
            std::fs::read_to_string(&path).unwrap(),
        ));
    }
    let files: Vec<(&str, String)> = files.iter().map(|(p, c)| (p.as_str(), c.clone())).collect();
    let commit = commit_files(&repo, &files);
    let manifests = ferry::desired::manifests::read(&repo, commit, "manifests");
    let manifests = manifests.unwrap_or_else(|e| panic!("ferry cannot parse the template: {e:#?}"));
    // The namespaces exist for real (apply creates them first; a plan
    // dry-runs objects only in namespaces that exist).
    let namespaces: Api<Namespace> = Api::all(client.clone());
    for m in manifests.iter().filter(|m| m.id.kind == "Namespace") {
        namespaces
            .patch(
                &m.id.name,
                &PatchParams::apply("ferry-test"),
                &Patch::Apply(&m.object),
            )
            .await
            .unwrap();
    }
    let plan = assert_dry_run_accepted(&client, "default", manifests).await;
    assert!(plan.objects.len() >= 30, "{}", plan.objects.len());
    // Every object was dry-run, except the bindings of roles the template
    // itself creates while those roles do not exist yet (on a cluster where
    // the quickstart test has applied the template they do): the server
    // checks a binding against its role, which only the apply creates
    // (applied for real, as ferry's identity, by that quickstart test in
    // tests/cli.rs).
    let noted: Vec<String> = plan
        .objects
        .iter()
        .filter(|o| o.note.is_some())
        .map(|o| format!("{} ({})", o.id, o.note.as_deref().unwrap_or_default()))
        .collect();
    assert!(noted.len() <= 2, "{noted:#?}");
    assert!(
        noted
            .iter()
            .all(|n| n.contains("RoleBinding") && n.contains("binds a role this revision creates")),
        "{noted:#?}"
    );
}
