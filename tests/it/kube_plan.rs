//! Planning the platform repo's manifests against a real kube-apiserver
//! (tools/control-plane). One unique namespace per test.

use std::process::Command;

use crate::support::*;
use ferry::config::KubernetesTargetConfig;
use ferry::desired::manifests;
use ferry::kubernetes::client;
use ferry::kubernetes::client::api_for;
use ferry::kubernetes::discovery::Catalog;
use ferry::kubernetes::plan::{Action, Plan};
use git2::{Oid, Repository};
use kube::api::{Patch, PatchParams};

fn target(ns: &str, force: bool) -> ferry::config::KubernetesTargetConfig {
    kube_target(ns, force)
}

fn commit(repo: &Repository, files: &[(&str, String)]) -> Oid {
    commit_files(repo, files)
}

async fn plan(repo: &Repository, at: Oid, config: &KubernetesTargetConfig) -> Plan {
    let client = client::connect(Some(&control_plane().admin)).await.unwrap();
    let manifests = manifests::read(repo, at, "manifests");
    plan_manifests(
        &client,
        "platform",
        &at.to_string(),
        config,
        manifests,
        None,
    )
    .await
}

/// Applies a revision's objects the way a previous ferry apply would have
/// (server-side apply, manager `manager`): test setup only.
async fn apply_as(repo: &Repository, at: Oid, ns: &str, manager: &str) {
    let client = client::connect(Some(&control_plane().admin)).await.unwrap();
    let parsed = manifests::read(repo, at, "manifests").unwrap();
    let catalog = Catalog::discover(&client).await.unwrap();
    for m in parsed {
        let namespaced = catalog.scope(&m.id.group, &m.id.kind)
            == Some(ferry::desired::resolve::Scope::Namespaced);
        let mut object = m.object.clone();
        // As a ferry apply leaves it.
        object["metadata"]["labels"]["app.kubernetes.io/managed-by"] = serde_json::json!("ferry");
        if namespaced {
            object["metadata"]["namespace"] = serde_json::json!(ns);
        }
        let resource = catalog.api_resource(&m.api_version, &m.id.kind).unwrap();
        let api = api_for(&client, &resource, namespaced.then_some(ns));
        api.patch(
            &m.id.name,
            &PatchParams::apply(manager).force(),
            &Patch::Apply(&object),
        )
        .await
        .unwrap_or_else(|e| panic!("setup apply of {}: {e}", m.id));
    }
}

fn app(ns: &str, level: &str, image: &str, password: &str) -> Vec<(&'static str, String)> {
    vec![
        (
            "manifests/namespace.yaml",
            format!("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {ns}\n"),
        ),
        (
            "manifests/web/app.yaml",
            format!(
                "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: web-config\ndata:\n  LOG_LEVEL: {level}\n---\n\
                 apiVersion: v1\nkind: Secret\nmetadata:\n  name: web-secret\nstringData:\n  password: {password}\n---\n\
                 apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\nspec:\n  replicas: 2\n  selector:\n    matchLabels: {{app: web}}\n  \
                 template:\n    metadata:\n      labels: {{app: web}}\n    spec:\n      containers:\n        - name: web\n          image: {image}\n"
            ),
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plan_shows_creates_then_nothing_then_exact_changes_and_never_writes() {
    let cp = control_plane();
    let tmp = tempfile::tempdir().unwrap();
    let repo = Repository::init_bare(tmp.path().join("platform.git")).unwrap();
    let ns = unique_namespace("plan");
    let config = target(&ns, false);

    let c1 = commit(&repo, &app(&ns, "info", "nginx:1.27", "first-secret-value"));
    let p = plan(&repo, c1, &config).await;
    assert!(p.errors.is_empty(), "{:?}", p.errors);
    assert_eq!(p.count(Action::Create), 4, "{}", p.render_text());
    let deployment = p
        .objects
        .iter()
        .find(|o| o.id.kind == "Deployment")
        .unwrap();
    assert_eq!(
        deployment.id.namespace.as_deref(),
        Some(ns.as_str()),
        "default namespace applied"
    );
    assert!(
        deployment
            .note
            .as_deref()
            .unwrap_or("")
            .contains("namespace is created by this revision")
    );
    assert_eq!(
        deployment.origin.as_ref().unwrap().file,
        "manifests/web/app.yaml"
    );
    assert_eq!(deployment.origin.as_ref().unwrap().document, 2);
    assert!(
        audited_writes(&cp.audit_log, &ns).is_empty(),
        "a plan must not write"
    );

    apply_as(&repo, c1, &ns, "ferry").await;
    let writes_after_setup = audited_writes(&cp.audit_log, &ns).len();
    let p = plan(&repo, c1, &config).await;
    assert_eq!(p.count(Action::Unchanged), 4, "{}", p.render_text());
    assert_eq!(p.failed(), 0);

    let c2 = commit(
        &repo,
        &app(&ns, "debug", "nginx:1.28", "second-secret-value"),
    );
    let p = plan(&repo, c2, &config).await;
    assert_eq!(p.count(Action::Update), 3, "{}", p.render_text());
    let changes = |kind: &str| {
        let o = p.objects.iter().find(|o| o.id.kind == kind).unwrap();
        o.changes.iter().map(|c| c.path.clone()).collect::<Vec<_>>()
    };
    assert_eq!(changes("ConfigMap"), vec!["data.LOG_LEVEL"]);
    assert_eq!(
        changes("Deployment"),
        vec!["spec.template.spec.containers[0].image"]
    );
    assert_eq!(changes("Secret"), vec!["data.password"]);
    let json = serde_json::to_string(&p).unwrap();
    let text = p.render_text();
    for secret in [
        "first-secret-value",
        "second-secret-value",
        "Zmlyc3Qtc2VjcmV0LXZhbHVl",
        "c2Vjb25kLXNlY3JldC12YWx1ZQ==",
    ] {
        assert!(
            !json.contains(secret) && !text.contains(secret),
            "secret {secret} shown in the plan"
        );
    }
    assert!(
        text.contains("~ spec.template.spec.containers[0].image: \"nginx:1.27\" -> \"nginx:1.28\""),
        "{text}"
    );
    assert_eq!(
        audited_writes(&cp.audit_log, &ns).len(),
        writes_after_setup,
        "plans made writes"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_refusals_and_conflicts_are_reported_per_object() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = Repository::init_bare(tmp.path().join("platform.git")).unwrap();
    let ns = unique_namespace("refuse");
    let base = commit(
        &repo,
        &[
            (
                "manifests/ns.yaml",
                format!("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {ns}\n"),
            ),
            (
                "manifests/owned.yaml",
                "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: owned\ndata:\n  key: theirs\n"
                    .into(),
            ),
        ],
    );
    // Another tool owns `data.key` of this ConfigMap.
    apply_as(&repo, base, &ns, "someone-else").await;

    let next = commit(
        &repo,
        &[
            ("manifests/ns.yaml", format!("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {ns}\n")),
            ("manifests/owned.yaml", "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: owned\ndata:\n  key: ours\n".into()),
            (
                "manifests/bad.yaml",
                "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: bad\nspec:\n  selector:\n    matchLabels: {app: a}\n  \
                 template:\n    metadata:\n      labels: {app: b}\n    spec:\n      containers:\n        - name: c\n          image: x\n"
                    .into(),
            ),
            ("manifests/good.yaml", "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: good\ndata:\n  a: b\n".into()),
            (
                "manifests/elsewhere.yaml",
                "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: lost\n  namespace: no-such-namespace-ferry\n".into(),
            ),
        ],
    );
    let p = plan(&repo, next, &target(&ns, false)).await;
    let by_name = |name: &str| p.objects.iter().find(|o| o.id.name == name).unwrap();
    let bad = by_name("bad").error.clone().expect("422 expected");
    assert!(bad.contains("422") && bad.contains("Invalid"), "{bad}");
    let conflict = by_name("owned").error.clone().expect("409 expected");
    assert!(
        conflict.contains("409") && conflict.contains("someone-else"),
        "the conflict names the other manager: {conflict}"
    );
    let lost = by_name("lost").error.clone().expect("missing namespace");
    assert!(lost.contains("does not exist"), "{lost}");
    assert!(by_name("good").error.is_none(), "the others still plan");
    assert_eq!(by_name("good").action, Action::Create);
    assert_eq!(p.failed(), 3);

    let forced = plan(&repo, next, &target(&ns, true)).await;
    let owned = forced
        .objects
        .iter()
        .find(|o| o.id.name == "owned")
        .unwrap();
    assert!(owned.error.is_none(), "{:?}", owned.error);
    assert_eq!(owned.action, Action::Update);
    assert_eq!(owned.changes[0].path, "data.key");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revision_with_errors_is_not_dry_run_at_all() {
    let cp = control_plane();
    let tmp = tempfile::tempdir().unwrap();
    let repo = Repository::init_bare(tmp.path().join("platform.git")).unwrap();
    let ns = unique_namespace("invalid");
    let cm = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: twice\n";
    let c = commit(
        &repo,
        &[
            ("manifests/a.yaml", format!("{cm}---\n{cm}")),
            (
                "manifests/w.yaml",
                "apiVersion: example.com/v1\nkind: Widget\nmetadata:\n  name: w\n".into(),
            ),
        ],
    );
    let mut config = target(&ns, false);
    config.allowed_namespaces = vec![ns.clone()];
    let p = plan(&repo, c, &config).await;
    assert!(p.objects.is_empty());
    let errors: Vec<String> = p.errors.iter().map(|e| e.to_string()).collect();
    assert!(
        errors
            .iter()
            .any(|e| e.starts_with("manifests/a.yaml:6 (document 1): duplicate object ConfigMap")),
        "{errors:?}"
    );
    assert!(
        errors
            .iter()
            .any(|e| e.contains("manifests/w.yaml:1")
                && e.contains("unknown kind `Widget.example.com`")),
        "{errors:?}"
    );
    let requests = std::fs::read_to_string(&cp.audit_log).unwrap_or_default();
    assert!(
        !requests.contains(&ns),
        "nothing about this namespace reached the server"
    );
}

#[test]
fn ferry_plan_cli_prints_json_and_fails_on_refusals() {
    let cp = control_plane();
    let tmp = tempfile::tempdir().unwrap();
    let served = Repo::new(tmp.path(), "platform");
    let ns = unique_namespace("cli");
    served.commit(
        &[
            (
                "manifests/ns.yaml",
                Some(&format!(
                    "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {ns}\n"
                )),
            ),
            (
                "manifests/cm.yaml",
                Some("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: c\ndata:\n  k: v\n"),
            ),
        ],
        "first",
    );
    // The source asks for signatures; the plan still shows an unsigned head
    // but says that `ferry run` would refuse it.
    let allowed = allowed_signers_of_a_stranger(tmp.path());
    let config = tmp.path().join("ferry.yaml");
    std::fs::write(
        &config,
        format!(
            "cache_dir: {}\nsources:\n  - name: platform\n    url: {}\n    verify:\n      allowed_signers: {}\n\
             targets:\n  kubernetes:\n    source: platform\n    default_namespace: {ns}\n    kubeconfig: {}\n",
            tmp.path().join("cache").display(),
            served.bare.display(),
            allowed.display(),
            cp.admin.display()
        ),
    )
    .unwrap();
    let run_plan = || {
        Command::new(env!("CARGO_BIN_EXE_ferry"))
            .args(["plan", "--output", "json", "--config"])
            .arg(&config)
            .output()
            .unwrap()
    };
    let out = run_plan();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("is not signed") && stderr.contains("`ferry run` would not apply"),
        "{stderr}"
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["objects"].as_array().unwrap().len(), 2);
    assert!(
        v["objects"]
            .as_array()
            .unwrap()
            .iter()
            .all(|o| o["action"] == "create")
    );

    served.commit(
        &[(
            "manifests/bad.yaml",
            // In a namespace that exists, so the server validates it now.
            Some("apiVersion: v1\nkind: Service\nmetadata:\n  name: s\n  namespace: default\nspec:\n  ports:\n    - port: 99999\n"),
        )],
        "bad",
    );
    let out = run_plan();
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let bad = v["objects"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["id"]["name"] == "s")
        .unwrap();
    let error = bad["error"].as_str().unwrap_or_default();
    assert!(error.contains("422") && error.contains("99999"), "{bad}");
}

/// `ferry plan --detailed-exitcode` answers like Terraform (0 nothing to
/// do, 2 changes, 1 errors), and `--revision` takes a short SHA of the head;
/// a commit the mirror cannot have is refused with what to pass instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plan_exit_codes_and_short_revisions() {
    let cp = control_plane();
    let tmp = tempfile::tempdir().unwrap();
    let served = Repo::new(tmp.path(), "platform");
    let ns = unique_namespace("exitcode");
    let head = served.commit(
        &[
            (
                "manifests/a-ns.yaml",
                Some(&format!(
                    "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {ns}\n"
                )),
            ),
            (
                "manifests/cm.yaml",
                Some("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: c\ndata:\n  k: v\n"),
            ),
        ],
        "first",
    );
    let config = tmp.path().join("ferry.yaml");
    std::fs::write(
        &config,
        format!(
            "cache_dir: {}\nsources:\n  - name: platform\n    url: {}\n\
             targets:\n  kubernetes:\n    source: platform\n    default_namespace: {ns}\n    kubeconfig: {}\n",
            tmp.path().join("cache").display(),
            served.bare.display(),
            cp.admin.display()
        ),
    )
    .unwrap();
    let plan = |extra: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_ferry"))
            .args(["plan", "--config"])
            .arg(&config)
            .args(extra)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    // Everything to create: 2 with the flag, 0 without.
    let (code, out, err) = plan(&["--detailed-exitcode"]);
    assert_eq!(code, Some(2), "{out}{err}");
    assert_eq!(plan(&[]).0, Some(0));
    // A short SHA of the head plans that commit.
    let (code, out, err) = plan(&["--revision", &head[..8], "--output", "json"]);
    assert_eq!(code, Some(0), "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["revision"], head.as_str());
    // Applied as ferry would: nothing to do, 0 even with the flag.
    let repo = Repository::open_bare(&served.bare).unwrap();
    apply_as(&repo, Oid::from_str(&head).unwrap(), &ns, "ferry").await;
    let (code, out, err) = plan(&["--detailed-exitcode"]);
    assert_eq!(code, Some(0), "{out}{err}");
    // A commit not in the mirror: an error saying what to pass, exit 1.
    let (code, _, err) = plan(&["--revision", "0123456789ab", "--detailed-exitcode"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("is not in ferry's mirror of `platform`") && err.contains("pass a branch"),
        "{err}"
    );
    // Errors stay 1 with the flag: a refused object.
    served.commit(
        &[(
            "manifests/bad.yaml",
            Some("apiVersion: v1\nkind: Service\nmetadata:\n  name: s\n  namespace: default\nspec:\n  ports:\n    - port: 99999\n"),
        )],
        "bad",
    );
    assert_eq!(plan(&["--detailed-exitcode"]).0, Some(1));
}
