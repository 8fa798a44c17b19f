//! Helm release benchmark: render + plan of kube-prometheus-stack (123
//! objects, 5 MB rendered, CRDs included) against a test kube-apiserver of
//! its own, side by side with what a team runs by hand, `helm template ...
//! | kubectl apply --server-side --dry-run=server -f -`, on the same
//! apiserver with the chart's CRDs installed. Prints figures; asserts
//! nothing.
//!
//!     cargo bench --bench helm
//!
//! Cold: an empty chart cache (index.yaml and the archive fetched from a
//! chart repository served on 127.0.0.1, digest checked, rendered twice).
//! Warm: the cached archive, no network.

#[path = "../tests/it/support/mod.rs"]
mod support;

use std::process::{Command, Stdio};
use std::time::Instant;

use ferry::desired::{self, Feeds, ReleasesFeed, helm::HelmSettings};
use ferry::kubernetes::plan::{self, Depth};
use ferry::revision::{Origin, Revision};
use git2::Repository;
use support::*;

const VALUES: &str = KUBE_PROMETHEUS_VALUES;

fn main() {
    let cluster = PrivateControlPlane::start(false);
    let charts = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/charts");
    let server = static_http(&charts);
    let url = format!("http://127.0.0.1:{}", server.port);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let tmp = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let mirror = tmp.path().join("platform.git");
    let repo = Repository::init_bare(&mirror).unwrap();
    let mut config = kube_target("monitoring", false);
    // The chart's ClusterRoles and bindings, as a team lists them.
    for kind in ["ClusterRole", "ClusterRoleBinding"] {
        config.cluster_scoped.push(ferry::config::ClusterScoped {
            kind: format!("{kind}.rbac.authorization.k8s.io"),
            names: Vec::new(),
        });
    }
    let values = tmp.path().join("values.yaml");
    std::fs::write(&values, VALUES).unwrap();
    let at = commit_files(
        &repo,
        &[
            (
                "manifests/ns.yaml",
                "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: monitoring\n".to_string(),
            ),
            (
                "releases/monitoring.yaml",
                format!(
                    "apiVersion: ferry.dev/v1\nkind: HelmRelease\nname: kps\nnamespace: monitoring\nchart:\n  repository: {url}\n  name: kube-prometheus-stack\n  version: 88.5.3\nvalues_files: [values/monitoring.yaml]\n"
                ),
            ),
            ("values/monitoring.yaml", VALUES.to_string()),
        ],
    );
    let kubeconfig = cluster.admin();
    let helm = helm_binary();
    // What a team runs by hand (the archive already local).
    let template = || {
        let out = Command::new(&helm)
            .args(["template", "kps"])
            .arg(charts.join("kube-prometheus-stack-88.5.3.tgz"))
            .args(["--kube-version", "1.37", "--include-crds", "--skip-tests"])
            .args(["-n", "monitoring", "-f"])
            .arg(&values)
            .output()
            .unwrap();
        assert!(out.status.success());
        String::from_utf8(out.stdout).unwrap()
    };
    // The anchor needs the CRDs served before its dry run; so does ferry's
    // plan of the same objects, for a fair comparison. (The chart ships
    // them in a subchart, so `helm show crds` has none.)
    let crd_text = template()
        .split("\n---\n")
        .filter(|d| d.contains("kind: CustomResourceDefinition"))
        .collect::<Vec<_>>()
        .join("\n---\n");
    kubectl(
        &kubeconfig,
        &["apply", "--server-side", "-f", "-"],
        &crd_text,
    );
    kubectl(
        &kubeconfig,
        &[
            "wait",
            "--for=condition=Established",
            "crd",
            "--all",
            "--timeout=60s",
        ],
        "",
    );
    kubectl(&kubeconfig, &["create", "namespace", "monitoring"], "");

    let client = runtime
        .block_on(ferry::kubernetes::client::connect(Some(&kubeconfig)))
        .unwrap();
    let mut ferry_run = |cache: &std::path::Path| {
        config.cache_dir = cache.to_path_buf();
        let feeds = Feeds {
            manifests: Some("manifests".into()),
            releases: Some(ReleasesFeed {
                dir: "releases".into(),
                helm: HelmSettings {
                    binary: helm.clone(),
                    cache_dir: cache.to_path_buf(),
                    kube_version: Some("1.37".into()),
                    api_versions: Vec::new(),
                    plain_http_registries: Vec::new(),
                    logins: Vec::new(),
                },
            }),
            ..Feeds::default()
        };
        let revision = Revision {
            source: "platform".into(),
            commit: at,
            mirror: mirror.clone(),
            origin: Origin::Branch,
            signed_by: None,
        };
        let started = Instant::now();
        let manifests = desired::read(&revision, &feeds, &mut Default::default())
            .map_err(|r| r.problems)
            .unwrap()
            .manifests
            .unwrap();
        let rendered = started.elapsed();
        let plan = runtime
            .block_on(plan::plan(
                &client,
                "platform",
                &at.to_string(),
                &config,
                &manifests,
                None,
                Depth::Review,
            ))
            .unwrap();
        assert!(plan.errors.is_empty(), "{:?}", plan.errors);
        (rendered, started.elapsed(), plan.objects.len())
    };
    let cache = tmp.path().join("cache");
    let (cold_render, cold, objects) = ferry_run(&cache);
    let (warm_render, warm, _) = ferry_run(&cache);
    let (warm2_render, warm2, _) = ferry_run(&cache);

    let anchor = || {
        let started = Instant::now();
        let text = template();
        kubectl(
            &kubeconfig,
            &["apply", "--server-side", "--dry-run=server", "-f", "-"],
            &text,
        );
        started.elapsed()
    };
    let a1 = anchor();
    let a2 = anchor();
    println!("kube-prometheus-stack 88.5.3, {objects} objects planned");
    println!(
        "ferry cold (fetch + verify + render twice + plan): {:.2} s (render {:.2} s)",
        cold.as_secs_f64(),
        cold_render.as_secs_f64()
    );
    println!(
        "ferry warm (cached chart): {:.2} s / {:.2} s (render {:.2} s / {:.2} s)",
        warm.as_secs_f64(),
        warm2.as_secs_f64(),
        warm_render.as_secs_f64(),
        warm2_render.as_secs_f64()
    );
    println!(
        "helm template | kubectl apply --server-side --dry-run=server: {:.2} s / {:.2} s (archive already local)",
        a1.as_secs_f64(),
        a2.as_secs_f64()
    );
    println!(
        "ratio warm ferry / anchor: {:.2}",
        (warm.as_secs_f64() + warm2.as_secs_f64()) / (a1.as_secs_f64() + a2.as_secs_f64())
    );
}

fn kubectl(kubeconfig: &std::path::Path, args: &[&str], stdin: &str) {
    let mut child = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), stdin.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "kubectl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
