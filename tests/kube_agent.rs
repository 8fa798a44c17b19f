//! `ferry run` driving the Kubernetes target from a git daemon onto a real
//! kube-apiserver: apply, new revision, no-op, drift, self-heal.

mod support;

use std::path::Path;
use std::time::Duration;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;
use kube::api::{Patch, PatchParams};
use support::*;

fn write_config(
    dir: &Path,
    port: u16,
    git_port: u16,
    ns: &str,
    self_heal: bool,
) -> std::path::PathBuf {
    let path = dir.join(format!("ferry-{self_heal}.yaml"));
    std::fs::write(
        &path,
        format!(
            "cache_dir: {cache}\nserver:\n  listen: 127.0.0.1:{port}\n\
             sources:\n  - name: platform\n    url: git://127.0.0.1:{git_port}/platform.git\n    interval: 1s\n    max_backoff: 2s\n\
             targets:\n  kubernetes:\n    source: platform\n    default_namespace: {ns}\n    allowed_namespaces: [{ns}]\n    \
             drift_interval: 1s\n    self_heal: {self_heal}\n    health_timeout: 0s\n    kubeconfig: {kc}\n",
            cache = dir.join("cache").display(),
            kc = control_plane().admin.display(),
        ),
    )
    .unwrap();
    path
}

fn status(addr: std::net::SocketAddr) -> serde_json::Value {
    let (_, body) = http_get(addr, "/api/v1/status/platform");
    serde_json::from_str(&body).unwrap_or(serde_json::Value::Null)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ferry_run_applies_reports_drift_and_self_heals() {
    let cp = control_plane();
    let tmp = tempfile::tempdir().unwrap();
    let repo = Repo::new(tmp.path(), "platform");
    let ns = unique_namespace("agent");
    let ns_yaml = format!("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {ns}\n");
    let first = repo.commit(
        &[
            ("manifests/ns.yaml", Some(&ns_yaml)),
            ("manifests/cm.yaml", Some("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: settings\ndata:\n  mode: calm\n")),
        ],
        "first",
    );
    let daemon = git_daemon(tmp.path(), free_port());
    let port = free_port();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let config = write_config(tmp.path(), port, daemon.port, &ns, false);
    let ferry = spawn_ferry(&config, &tmp.path().join("ferry.log"), port, &[]);

    let wait = |what: &str, check: &dyn Fn(&serde_json::Value) -> bool| {
        eventually(Duration::from_secs(30), what, || {
            let v = status(addr);
            check(&v).then_some(v)
        })
    };
    wait("first apply", &|v| {
        v["kubernetes"]["applied_revision"] == first.as_str()
    });
    let client = ferry::kubernetes::client::connect(Some(&cp.admin))
        .await
        .unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(client, &ns);
    assert_eq!(
        cms.get("settings").await.unwrap().data.unwrap()["mode"],
        "calm"
    );

    // A new revision is applied.
    let second = repo.commit(
        &[("manifests/cm.yaml", Some("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: settings\ndata:\n  mode: busy\n"))],
        "second",
    );
    wait("second apply", &|v| {
        v["kubernetes"]["applied_revision"] == second.as_str()
    });
    assert_eq!(
        cms.get("settings").await.unwrap().data.unwrap()["mode"],
        "busy"
    );

    // Nothing changes for several poll and drift intervals: zero writes.
    let before = audited_writes(&cp.audit_log, &ns).len();
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(
        audited_writes(&cp.audit_log, &ns).len(),
        before,
        "an idle reconcile wrote to the cluster"
    );
    let (_, metrics) = http_get(addr, "/metrics");
    assert!(
        metrics.contains("ferry_drift_objects{source=\"platform\"} 0"),
        "{}",
        status(addr)
    );

    // Out-of-band edit: reported as drift, left alone without self_heal.
    let edit = serde_json::json!({"data": {"mode": "hand-edited"}});
    cms.patch("settings", &PatchParams::apply("kubectl-edit").force(), &Patch::Apply(&serde_json::json!({
        "apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "settings"}, "data": edit["data"]
    }))).await.unwrap();
    let v = wait("drift reported", &|v| {
        v["kubernetes"]["drift"]
            .as_array()
            .is_some_and(|d| !d.is_empty())
    });
    assert!(
        v["kubernetes"]["drift"][0]
            .as_str()
            .unwrap()
            .contains("settings"),
        "{v}"
    );
    let (_, metrics) = http_get(addr, "/metrics");
    assert!(
        metrics.contains("ferry_drift_objects{source=\"platform\"} 1"),
        "{metrics}"
    );
    assert_eq!(
        cms.get("settings").await.unwrap().data.unwrap()["mode"],
        "hand-edited"
    );
    stop_ferry(ferry);

    // With self_heal, ferry takes the field back.
    let config = write_config(tmp.path(), port, daemon.port, &ns, true);
    let ferry = spawn_ferry(&config, &tmp.path().join("ferry-heal.log"), port, &[]);
    eventually(Duration::from_secs(30), "self-heal", || {
        let client_cms = cms.clone();
        let mode = futures_lite_block(async move {
            client_cms
                .get("settings")
                .await
                .ok()?
                .data?
                .get("mode")
                .cloned()
        });
        (mode.as_deref() == Some("busy")).then_some(())
    });
    // The cluster is healed before ferry records it: wait on the record.
    let v = wait("healed revision recorded", &|v| {
        v["kubernetes"]["applied_revision"] == second.as_str()
    });
    assert!(
        v["kubernetes"]["drift"]
            .as_array()
            .is_some_and(|d| d.is_empty()),
        "{v}"
    );
    stop_ferry(ferry);
}

/// Runs a future to completion from synchronous polling code.
fn futures_lite_block<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::task::block_in_place(|| tokio::runtime::Handle::current().block_on(f))
}

/// The API server unreachable: failures are recorded and retried with
/// backoff, ferry stays up, and it applies once the server is back.
#[test]
fn an_unreachable_cluster_is_retried_and_recovered_from() {
    let cp = control_plane();
    let tmp = tempfile::tempdir().unwrap();
    let repo = Repo::new(tmp.path(), "platform");
    let ns = unique_namespace("outage");
    let head = repo.commit(
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
    // A kubeconfig whose server is a port nothing listens on (yet).
    let admin = std::fs::read_to_string(&cp.admin).unwrap();
    let real: std::net::SocketAddr = admin
        .lines()
        .find_map(|l| l.trim().strip_prefix("server: https://"))
        .unwrap()
        .parse()
        .unwrap();
    let down_port = free_port();
    let kubeconfig = tmp.path().join("down.kubeconfig");
    std::fs::write(
        &kubeconfig,
        admin.replace(&real.to_string(), &format!("127.0.0.1:{down_port}")),
    )
    .unwrap();
    let daemon = git_daemon(tmp.path(), free_port());
    let port = free_port();
    let config = tmp.path().join("ferry.yaml");
    std::fs::write(
        &config,
        format!(
            "cache_dir: {}\nserver:\n  listen: 127.0.0.1:{port}\nsources:\n  - name: platform\n    url: git://127.0.0.1:{}/platform.git\n    interval: 1s\n    max_backoff: 2s\n\
             targets:\n  kubernetes:\n    source: platform\n    default_namespace: {ns}\n    health_timeout: 0s\n    kubeconfig: {}\n",
            tmp.path().join("cache").display(),
            daemon.port,
            kubeconfig.display()
        ),
    )
    .unwrap();
    let ferry = spawn_ferry(&config, &tmp.path().join("ferry.log"), port, &[]);
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let v = eventually(Duration::from_secs(30), "two failed attempts", || {
        let v = status(addr);
        (v["consecutive_failures"].as_u64()? >= 2).then_some(v)
    });
    assert_eq!(v["last_error"]["kind"], "cluster_error", "{v}");
    assert!(v["kubernetes"]["applied_revision"].is_null());

    tcp_forward(down_port, real);
    let v = eventually(Duration::from_secs(30), "recovery", || {
        let v = status(addr);
        (v["kubernetes"]["applied_revision"] == head.as_str()).then_some(v)
    });
    assert!(v["last_error"].is_null(), "{v}");
    stop_ferry(ferry);
}

/// SIGTERM while ferry waits for a workload that never gets healthy (no
/// kubelet here): it stops promptly instead of sitting out `health_timeout`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_does_not_wait_out_the_health_timeout() {
    let cp = control_plane();
    let tmp = tempfile::tempdir().unwrap();
    let repo = Repo::new(tmp.path(), "platform");
    let ns = unique_namespace("sigterm");
    repo.commit(
        &[
            ("manifests/ns.yaml", Some(&format!("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {ns}\n"))),
            (
                "manifests/web.yaml",
                Some(
                    "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\nspec:\n  selector:\n    matchLabels: {app: web}\n  \
                     template:\n    metadata:\n      labels: {app: web}\n    spec:\n      containers:\n        - name: web\n          image: nginx:1.27\n",
                ),
            ),
        ],
        "first",
    );
    let daemon = git_daemon(tmp.path(), free_port());
    let port = free_port();
    let config = tmp.path().join("ferry.yaml");
    std::fs::write(
        &config,
        format!(
            "cache_dir: {}\nserver:\n  listen: 127.0.0.1:{port}\nsources:\n  - name: platform\n    url: git://127.0.0.1:{}/platform.git\n    interval: 1s\n\
             targets:\n  kubernetes:\n    source: platform\n    default_namespace: {ns}\n    health_timeout: 120s\n    kubeconfig: {}\n",
            tmp.path().join("cache").display(),
            daemon.port,
            cp.admin.display()
        ),
    )
    .unwrap();
    let ferry = spawn_ferry(&config, &tmp.path().join("ferry.log"), port, &[]);
    let client = ferry::kubernetes::client::connect(Some(&cp.admin))
        .await
        .unwrap();
    let deployments: Api<k8s_openapi::api::apps::v1::Deployment> = Api::namespaced(client, &ns);
    // The Deployment exists: ferry is now waiting for it to become healthy.
    for _ in 0..200 {
        if let Ok(Some(_)) = deployments.get_opt("web").await {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let asked = std::time::Instant::now();
    tokio::task::spawn_blocking(move || stop_ferry(ferry))
        .await
        .unwrap();
    assert!(
        asked.elapsed() < Duration::from_secs(10),
        "shutdown took {:?}",
        asked.elapsed()
    );
}
