//! `ferry run` driving the Kubernetes target from a git daemon onto a real
//! kube-apiserver: apply, new revision, no-op, drift, self-heal.

use std::path::Path;
use std::time::Duration;

use crate::support::*;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;
use kube::api::{Patch, PatchParams};

fn write_config(
    dir: &Path,
    port: u16,
    git_port: u16,
    ns: &str,
    self_heal: bool,
    extra: &str,
) -> std::path::PathBuf {
    let path = dir.join(format!("ferry-{self_heal}.yaml"));
    std::fs::write(
        &path,
        format!(
            "cache_dir: {cache}\nserver:\n  listen: 127.0.0.1:{port}\n\
             sources:\n  - name: platform\n    url: git://127.0.0.1:{git_port}/platform.git\n    interval: 1s\n    max_backoff: 2s\n\
             targets:\n  kubernetes:\n    source: platform\n    default_namespace: {ns}\n    allowed_namespaces: [{ns}]\n    \
             drift_interval: 1s\n    self_heal: {self_heal}\n    health_timeout: 0s\n    kubeconfig: {kc}\n{extra}",
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

/// A platform repo declaring a Namespace and the ConfigMap `settings`
/// (mode: calm), `ferry run` on it (1 s interval and drift checks, no
/// self_heal), and its first apply done.
struct Applied {
    repo: Repo,
    ns: String,
    daemon: Server,
    port: u16,
    addr: std::net::SocketAddr,
    ferry: process::Owned,
    first: String,
}

fn applied(dir: &Path, name: &str) -> Applied {
    let repo = Repo::new(dir, "platform");
    let ns = unique_namespace(name);
    let ns_yaml = format!("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {ns}\n");
    let first = repo.commit(
        &[
            ("manifests/ns.yaml", Some(&ns_yaml)),
            ("manifests/cm.yaml", Some("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: settings\ndata:\n  mode: calm\n")),
        ],
        "first",
    );
    let daemon = git_daemon(dir, free_port());
    let port = free_port();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let config = write_config(dir, port, daemon.port, &ns, false, "");
    let ferry = spawn_ferry(&config, &dir.join("ferry.log"), port, &[]);
    wait_for(addr, "first apply", &|v| {
        v["kubernetes"]["applied_revision"] == first.as_str()
    });
    Applied {
        repo,
        ns,
        daemon,
        port,
        addr,
        ferry,
        first,
    }
}

/// The source's status once `check` holds (30 s at most).
fn wait_for(
    addr: std::net::SocketAddr,
    what: &str,
    check: &dyn Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    eventually(Duration::from_secs(30), what, || {
        let v = status(addr);
        check(&v).then_some(v)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ferry_run_applies_reports_drift_and_self_heals() {
    let cp = control_plane();
    let tmp = tempfile::tempdir().unwrap();
    let Applied {
        repo,
        ns,
        daemon,
        port,
        addr,
        ferry,
        ..
    } = applied(tmp.path(), "agent");
    let wait = |what: &str, check: &dyn Fn(&serde_json::Value) -> bool| wait_for(addr, what, check);
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

    // Nothing changes for several poll and drift intervals: zero writes,
    // while the loop demonstrably ran (unchanged syncs and drift checks).
    // Every sync of the source, whatever its result.
    let unchanged = |metrics: &str| -> f64 {
        metrics
            .lines()
            .filter(|l| l.starts_with("ferry_syncs_total{source=\"platform\","))
            .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
            .sum()
    };
    let before = audited_writes(&cp.audit_log, &ns).len();
    let syncs_before = unchanged(&http_get(addr, "/metrics").1);
    let drift_check_before = status(addr)["kubernetes"]["last_drift_check"].clone();
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(
        audited_writes(&cp.audit_log, &ns).len(),
        before,
        "an idle reconcile wrote to the cluster"
    );
    let (_, metrics) = http_get(addr, "/metrics");
    assert!(
        unchanged(&metrics) >= syncs_before + 2.0,
        "the loop did not run in the window: {syncs_before} -> {}",
        unchanged(&metrics)
    );
    assert_ne!(
        status(addr)["kubernetes"]["last_drift_check"],
        drift_check_before,
        "no drift check ran in the window"
    );
    assert_series(&metrics, "ferry_drift_objects{source=\"platform\"}", 0.0);

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
    assert_series(&metrics, "ferry_drift_objects{source=\"platform\"}", 1.0);
    assert_eq!(
        cms.get("settings").await.unwrap().data.unwrap()["mode"],
        "hand-edited"
    );
    stop_ferry(ferry);

    // With self_heal, ferry takes the field back.
    let config = write_config(tmp.path(), port, daemon.port, &ns, true, "");
    let ferry = spawn_ferry(&config, &tmp.path().join("ferry-heal.log"), port, &[]);
    eventually(Duration::from_secs(30), "self-heal", || {
        let client_cms = cms.clone();
        let mode = block_on(async move {
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

/// SIGTERM while ferry waits for a workload that never gets healthy (its
/// pods never pass readiness): it stops promptly instead of sitting out
/// `health_timeout`.
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
                     template:\n    metadata:\n      labels: {app: web}\n      annotations: {stage.ferry.dev/pod: never-ready}\n    spec:\n      \
                     containers:\n        - name: web\n          image: nginx:1.27\n",
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
            "cache_dir: {}\nserver:\n  listen: 127.0.0.1:{port}\nlog:\n  level: debug\nsources:\n  - name: platform\n    url: git://127.0.0.1:{}/platform.git\n    interval: 1s\n\
             targets:\n  kubernetes:\n    source: platform\n    default_namespace: {ns}\n    health_timeout: 120s\n    kubeconfig: {}\n",
            tmp.path().join("cache").display(),
            daemon.port,
            cp.admin.display()
        ),
    )
    .unwrap();
    let log = tmp.path().join("ferry.log");
    let ferry = spawn_ferry(&config, &log, port, &[]);
    // ferry says it waits for health (the Deployment never becomes
    // healthy here); the test fails if it never gets there.
    tokio::task::block_in_place(|| {
        eventually(Duration::from_secs(20), "ferry waiting for health", || {
            std::fs::read_to_string(&log)
                .ok()?
                .contains("phase: health")
                .then_some(())
        })
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
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

/// Commit the DAGs link of `dest` points at.
fn published(dest: &Path) -> Option<String> {
    let target = std::fs::read_link(dest.join("current")).ok()?;
    Some(target.file_name()?.to_string_lossy().into_owned())
}

async fn lease_holder(api: &Api<Lease>, name: &str) -> (Option<String>, i32) {
    let spec = api.get(name).await.unwrap().spec.unwrap_or_default();
    (spec.holder_identity, spec.lease_transitions.unwrap_or(0))
}

/// Two `ferry run` on one Lease: one publishes while the other stands by
/// (not ready, publishing nothing); a clean stop hands the Lease over at
/// once, a kill -9 after it expires; a holder that finds someone else in
/// the Lease exits rather than sync without it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_leader_publishes_and_a_standby_takes_over() {
    let cp = control_plane();
    let tmp = tempfile::tempdir().unwrap();
    let repo = Repo::new(tmp.path(), "dags");
    let first = repo.commit(&[("dags/a.py", Some("a = 1\n"))], "first");
    let lease = unique_namespace("ferry");
    let dest = |who: &str| tmp.path().join(who).join("dest");
    let config = |who: &str, port: u16| {
        let path = tmp.path().join(format!("{who}.yaml"));
        std::fs::write(
            &path,
            format!(
                "cache_dir: {cache}\nserver:\n  listen: 127.0.0.1:{port}\n\
                 sources:\n  - name: dags\n    url: {url}\n    interval: 1s\n    max_backoff: 2s\n\
                 targets:\n  dags:\n    source: dags\n    subdir: dags\n    destination: {dest}\n\
                 leader_election:\n  namespace: default\n  lease_name: {lease}\n  lease_duration: 5s\n  identity: ferry-{who}\n  kubeconfig: {kc}\n",
                cache = tmp.path().join(who).join("cache").display(),
                url = repo.bare.display(),
                dest = dest(who).display(),
                kc = cp.admin.display(),
            ),
        )
        .unwrap();
        path
    };
    let client = ferry::kubernetes::client::connect(Some(&cp.admin))
        .await
        .unwrap();
    let leases: Api<Lease> = Api::namespaced(client, "default");
    let (pa, pb) = (free_port(), free_port());
    let addr = |port: u16| -> std::net::SocketAddr { format!("127.0.0.1:{port}").parse().unwrap() };

    let a = spawn_ferry(&config("a", pa), &tmp.path().join("a.log"), pa, &[]);
    eventually(Duration::from_secs(20), "a publishes", || {
        (published(&dest("a")).as_deref() == Some(first.as_str())).then_some(())
    });
    let b = spawn_ferry(&config("b", pb), &tmp.path().join("b.log"), pb, &[]);
    std::thread::sleep(Duration::from_secs(2));
    let (code, body) = http_get(addr(pb), "/readyz");
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("held by ferry-a"), "{body}");
    assert_eq!(http_get(addr(pb), "/healthz").0, 200);
    let (code, page) = http_get(addr(pb), "/");
    assert_eq!(code, 200);
    assert!(
        page.contains("standing by: the leader Lease") && page.contains("held by ferry-a"),
        "the overview says who syncs: {page}"
    );
    assert!(http_get(addr(pb), "/metrics").1.contains("ferry_leader 0"));
    assert!(http_get(addr(pa), "/metrics").1.contains("ferry_leader 1"));
    assert_eq!(published(&dest("b")), None, "the standby publishes nothing");
    assert_eq!(
        lease_holder(&leases, &lease).await.0.as_deref(),
        Some("ferry-a")
    );

    // From standing by to syncing, b keeps one socket open: a kubelet
    // probe in between waits for an answer and is never refused.
    let probing = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let prober = std::thread::spawn({
        let probing = probing.clone();
        move || {
            let (mut probes, mut refused) = (0u32, 0u32);
            while probing.load(std::sync::atomic::Ordering::Relaxed) {
                probes += 1;
                if std::net::TcpStream::connect(addr(pb)).is_err() {
                    refused += 1;
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            (probes, refused)
        }
    });

    // A clean stop releases the Lease: right after a exits nobody holds it
    // (or b already does), where an unreleased one would still name a.
    stop_ferry(a);
    let (holder, _) = lease_holder(&leases, &lease).await;
    assert_ne!(holder.as_deref(), Some("ferry-a"));
    eventually(Duration::from_secs(20), "b publishes", || {
        (published(&dest("b")).as_deref() == Some(first.as_str())).then_some(())
    });
    // Ready once its first sync is recorded, just after the link swap.
    eventually(Duration::from_secs(10), "b ready", || {
        (http_get(addr(pb), "/readyz").0 == 200).then_some(())
    });
    probing.store(false, std::sync::atomic::Ordering::Relaxed);
    let (probes, refused) = prober.join().unwrap();
    assert_eq!(
        refused, 0,
        "{refused} of {probes} connections refused while b took over"
    );

    // kill -9 of the holder: the standby takes over once the Lease expires.
    let second = repo.commit(&[("dags/b.py", Some("b = 2\n"))], "second");
    eventually(
        Duration::from_secs(20),
        "b publishes the second commit",
        || (published(&dest("b")).as_deref() == Some(second.as_str())).then_some(()),
    );
    let a = spawn_ferry(&config("a", pa), &tmp.path().join("a2.log"), pa, &[]);
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(http_get(addr(pa), "/readyz").0, 503);
    assert_eq!(published(&dest("a")).as_deref(), Some(first.as_str()));
    let mut b = b;
    b.kill().unwrap();
    b.wait().unwrap();
    eventually(
        Duration::from_secs(20),
        "a publishes the second commit",
        || (published(&dest("a")).as_deref() == Some(second.as_str())).then_some(()),
    );
    let (holder, transitions) = lease_holder(&leases, &lease).await;
    assert_eq!(holder.as_deref(), Some("ferry-a"));
    assert!(transitions >= 2, "a -> b -> a: {transitions}");

    // Someone else in the Lease: the holder stops at its next renewal.
    take_lease(&leases, &lease, "intruder").await;
    let mut a = a;
    let status = eventually(Duration::from_secs(10), "a exits", || a.try_wait().unwrap());
    assert_eq!(status.code(), Some(1));
    let log = std::fs::read_to_string(tmp.path().join("a2.log")).unwrap();
    assert!(
        log.contains("lost the leader Lease") && log.contains("intruder"),
        "{log}"
    );
}

/// Two ferry instances on one cluster, each with a source called
/// `platform` applying into the same namespace (two quickstarts, say):
/// each prunes only what it applied. Before owner-named inventories the
/// second deleted the first one's objects. An inventory under the legacy
/// name is adopted by the instance that finds it unclaimed, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_on_one_cluster_never_prune_each_other() {
    let cp = control_plane();
    let ns = unique_namespace("twins");
    let client = ferry::kubernetes::client::connect(Some(&cp.admin))
        .await
        .unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    let ns_yaml = format!("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {ns}\n");
    let cm = |name: &str| {
        format!("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {name}\ndata:\n  k: v\n")
    };
    // The owner of an inventory includes the source URL, so each repo keeps
    // one server (one URL) for the whole test.
    let start = |tmp: &Path, daemon: &Server, port: u16| {
        let config = write_config(tmp, port, daemon.port, &ns, false, "");
        spawn_ferry(&config, &tmp.join("ferry.log"), port, &[])
    };
    let applied = |port: u16, sha: &str| {
        let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        status(addr)["kubernetes"]["applied_revision"] == sha
    };

    let (a_tmp, b_tmp) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a_repo = Repo::new(a_tmp.path(), "platform");
    let b_repo = Repo::new(b_tmp.path(), "platform");
    a_repo.commit(
        &[
            ("manifests/ns.yaml", Some(&ns_yaml)),
            ("manifests/a1.yaml", Some(&cm("a1"))),
            ("manifests/a2.yaml", Some(&cm("a2"))),
        ],
        "a1",
    );
    let (pa, pb) = (free_port(), free_port());
    // A legacy inventory, as an earlier ferry left it, listing an object
    // git no longer declares: the first start of A adopts it and prunes
    // that object.
    let a_daemon = git_daemon(a_tmp.path(), free_port());
    let b_daemon = git_daemon(b_tmp.path(), free_port());
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    namespaces
        .patch(
            &ns,
            &PatchParams::apply("test-setup"),
            &Patch::Apply(serde_json::json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})),
        )
        .await
        .unwrap();
    cms.patch(
        "legacy-leftover",
        &PatchParams::apply("test-setup"),
        &Patch::Apply(serde_json::json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "legacy-leftover", "labels": {"app.kubernetes.io/managed-by": "ferry"}},
            "data": {"k": "v"}
        })),
    )
    .await
    .unwrap();
    // It lists a1 too: pruning all of an inventory needs the commit's
    // allowance (the prune guard), which is not what this test is about.
    let legacy_entries = serde_json::json!([
        {"api_version": "v1", "group": "", "kind": "ConfigMap", "namespace": ns, "name": "a1"},
        {"api_version": "v1", "group": "", "kind": "ConfigMap", "namespace": ns, "name": "legacy-leftover"}
    ]);
    cms.patch(
        "ferry-inventory-platform",
        &PatchParams::apply("test-setup"),
        &Patch::Apply(serde_json::json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "ferry-inventory-platform"},
            "data": {"objects.json": legacy_entries.to_string()}
        })),
    )
    .await
    .unwrap();

    // Both instances run; B declares b1 only.
    let b1 = b_repo.commit(
        &[
            ("manifests/ns.yaml", Some(&ns_yaml)),
            ("manifests/b1.yaml", Some(&cm("b1"))),
        ],
        "b1",
    );
    let a2 = a_repo.commit(
        &[(
            "manifests/a1.yaml",
            Some(&format!("{}  extra: x\n", cm("a1"))),
        )],
        "a2",
    );
    let a = start(a_tmp.path(), &a_daemon, pa);
    tokio::task::block_in_place(|| {
        eventually(Duration::from_secs(30), "A applied", || {
            applied(pa, &a2).then_some(())
        })
    });
    let b = start(b_tmp.path(), &b_daemon, pb);
    tokio::task::block_in_place(|| {
        eventually(Duration::from_secs(30), "B applied", || {
            applied(pb, &b1).then_some(())
        })
    });
    // A drops a2: A prunes it, and nothing of B's.
    let a3 = a_repo.commit(&[("manifests/a2.yaml", None)], "a3");
    tokio::task::block_in_place(|| {
        eventually(Duration::from_secs(30), "A applied a3", || {
            applied(pa, &a3).then_some(())
        })
    });
    // Another round of B after A's prune: it still keeps A's objects.
    let b2 = b_repo.commit(
        &[(
            "manifests/b1.yaml",
            Some(&format!("{}  more: y\n", cm("b1"))),
        )],
        "b2",
    );
    tokio::task::block_in_place(|| {
        eventually(Duration::from_secs(30), "B applied b2", || {
            applied(pb, &b2).then_some(())
        })
    });
    let names: std::collections::BTreeSet<String> = cms
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter_map(|c| c.metadata.name)
        .collect();
    for (name, present) in [
        ("a1", true),
        ("b1", true),
        ("a2", false),
        ("legacy-leftover", false),
    ] {
        assert_eq!(names.contains(name), present, "{name}: {names:?}");
    }
    // Never deleted, not even for a moment (a re-apply would hide that):
    // the only deletes are what A's git dropped and the adopted leftover
    // (the legacy inventory itself goes too, once adopted).
    let mut deleted: Vec<String> = audited_writes(&cp.audit_log, &ns)
        .into_iter()
        .filter(|w| w.starts_with("delete "))
        .filter_map(|w| {
            w.rsplit('/')
                .next()
                .map(|n| n.split('?').next().unwrap_or(n).to_string())
        })
        .collect();
    deleted.sort();
    deleted.dedup();
    assert_eq!(
        deleted,
        ["a2", "ferry-inventory-platform", "legacy-leftover"],
        "{deleted:?}"
    );
    // Two inventories of their own; the adopted legacy one is gone.
    let inventories: Vec<&String> = names
        .iter()
        .filter(|n| n.starts_with("ferry-inventory-platform"))
        .collect();
    assert_eq!(inventories.len(), 2, "{inventories:?}");
    assert!(!names.contains("ferry-inventory-platform"), "{names:?}");
    stop_ferry(a);
    stop_ferry(b);
}

/// A platform commit rejected for its content is evaluated once: it waits
/// for git (no retry every interval, `consecutive_failures` stays 1, so
/// `FerrySyncFailing` does not fire for it), while drift of the last good
/// revision is still checked. The next push is applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_platform_commit_waits_for_git_and_drift_is_still_checked() {
    let cp = control_plane();
    let tmp = tempfile::tempdir().unwrap();
    let Applied {
        repo,
        ns,
        addr,
        ferry,
        first: good,
        daemon: _daemon,
        ..
    } = applied(tmp.path(), "waits");
    let wait = |what: &str, check: &dyn Fn(&serde_json::Value) -> bool| wait_for(addr, what, check);

    // A namespace outside allowed_namespaces: rejected, nothing applied.
    let bad = repo.commit(
        &[(
            "manifests/other.yaml",
            Some("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: elsewhere\n  namespace: kube-system\n"),
        )],
        "bad",
    );
    let v = wait("the bad commit's verdict", &|v| {
        v["last_error"]["commit"] == bad.as_str()
    });
    assert_eq!(v["consecutive_failures"], 1, "{v}");
    let rejected = |metrics: &str| -> f64 {
        metrics
            .lines()
            .filter(|l| l.starts_with("ferry_syncs_total{source=\"platform\","))
            .filter(|l| !l.contains("result=\"success\"") && !l.contains("result=\"unchanged\""))
            .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
            .sum()
    };
    let failed_syncs = rejected(&http_get(addr, "/metrics").1);

    // Meanwhile a hand deletion from the last good revision is drift.
    let client = ferry::kubernetes::client::connect(Some(&cp.admin))
        .await
        .unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(client, &ns);
    cms.delete("settings", &Default::default()).await.unwrap();
    let v = wait("drift of the last good revision", &|v| {
        v["kubernetes"]["drift"].as_array().is_some_and(|d| {
            d.iter()
                .any(|o| o.as_str().is_some_and(|s| s.contains("settings")))
        })
    });
    // Several intervals (1 s) have passed: the bad commit was not retried.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (_, metrics) = http_get(addr, "/metrics");
    assert_eq!(
        rejected(&metrics),
        failed_syncs,
        "the rejected commit was evaluated again without a push"
    );
    assert_series(
        &metrics,
        "ferry_source_consecutive_failures{source=\"platform\"}",
        1.0,
    );
    let v2 = status(addr);
    assert_eq!(v2["consecutive_failures"], 1, "{v2}");
    assert_eq!(v2["kubernetes"]["applied_revision"], good.as_str(), "{v}");
    assert!(
        audited_writes(&cp.audit_log, "kube-system/configmaps/elsewhere").is_empty(),
        "a rejected object was written"
    );

    // The fix is applied at the next push.
    let fixed = repo.commit(&[("manifests/other.yaml", None)], "fixed");
    let v = wait("the fix applied", &|v| {
        v["kubernetes"]["applied_revision"] == fixed.as_str()
    });
    assert!(v["last_error"].is_null(), "{v}");
    assert_eq!(v["consecutive_failures"], 0, "{v}");
    assert!(
        cms.get_opt("settings").await.unwrap().is_some(),
        "the deleted object is back"
    );
    stop_ferry(ferry);
}

/// The prune guard, through `ferry run`: a revision that would prune at
/// least `prune_limit_percent` of the inventory, or a Namespace, is
/// refused with nothing deleted, until a commit says `Ferry-Allow-Prune:`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_prunes_and_namespace_deletions_wait_for_an_allowance_in_the_commit() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = Repo::new(tmp.path(), "platform");
    let ns = unique_namespace("guard");
    let ns_yaml = format!("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {ns}\n");
    let cm = |name: &str| format!("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {name}\n");
    let first = repo.commit(
        &[
            ("manifests/ns.yaml", Some(&ns_yaml)),
            ("manifests/a.yaml", Some(&cm("a"))),
            ("manifests/b.yaml", Some(&cm("b"))),
            ("manifests/c.yaml", Some(&cm("c"))),
        ],
        "first",
    );
    let daemon = git_daemon(tmp.path(), free_port());
    let port = free_port();
    let config = write_config(
        tmp.path(),
        port,
        daemon.port,
        &ns,
        false,
        "    prune_limit_percent: 50\n",
    );
    let ferry = spawn_ferry(&config, &tmp.path().join("ferry.log"), port, &[]);
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    wait_for(addr, "first apply", &|v| {
        v["kubernetes"]["applied_revision"] == first.as_str()
    });
    let cms: Api<ConfigMap> = Api::namespaced(crate::kube_apply::admin().await, &ns);

    // Two of the four objects (50%, the limit here): refused, nothing deleted.
    let big = repo.commit(
        &[("manifests/a.yaml", None), ("manifests/b.yaml", None)],
        "tidy up",
    );
    let v = wait_for(addr, "the big prune refused", &|v| {
        v["last_error"]["commit"] == big.as_str()
    });
    assert_eq!(v["last_error"]["kind"], "invalid_revision", "{v}");
    let message = v["last_error"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_string()
        + &v["last_error"]["problems"].to_string();
    assert!(
        message.contains("it would delete 2 of the 4 objects ferry applied (50%")
            && message.contains("Ferry-Allow-Prune: <why>"),
        "{v}"
    );
    assert!(cms.get_opt("a").await.unwrap().is_some() && cms.get_opt("b").await.unwrap().is_some());
    assert_eq!(v["kubernetes"]["applied_revision"], first.as_str());

    // The same change, allowed by the commit that makes it.
    let allowed = repo.commit(
        &[("manifests/a.yaml", None)],
        "tidy up\n\nFerry-Allow-Prune: a and b are replaced by c\n",
    );
    wait_for(addr, "the allowed prune", &|v| {
        v["kubernetes"]["applied_revision"] == allowed.as_str()
    });
    assert!(cms.get_opt("a").await.unwrap().is_none() && cms.get_opt("b").await.unwrap().is_none());

    // A Namespace, whatever the share: refused, then allowed.
    let gone = repo.commit(&[("manifests/ns.yaml", None)], "no namespace");
    let v = wait_for(addr, "the namespace prune refused", &|v| {
        v["last_error"]["commit"] == gone.as_str()
    });
    assert!(
        v.to_string().contains(&format!(
            "it would delete the Namespace(s) {ns} and everything in them"
        )),
        "{v}"
    );
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> =
        Api::all(crate::kube_apply::admin().await);
    let live = namespaces.get(&ns).await.unwrap();
    assert!(
        live.metadata.deletion_timestamp.is_none(),
        "the Namespace must stay"
    );
    // The directory stays (a missing one is refused outright); what it held goes.
    let retire = repo.commit(
        &[
            ("manifests/c.yaml", None),
            ("manifests/README.md", Some("retired\n")),
        ],
        "retire\n\nFerry-Allow-Prune: the team moved on\n",
    );
    wait_for(addr, "the allowed namespace prune", &|v| {
        v["kubernetes"]["applied_revision"] == retire.as_str()
    });
    let live = namespaces.get_opt(&ns).await.unwrap();
    assert!(
        live.is_none_or(|n| n.metadata.deletion_timestamp.is_some()),
        "the Namespace is being deleted"
    );
    stop_ferry(ferry);
}

/// A chart in the platform repo whose ConfigMap says what the chart saw of
/// the cluster: `ferry run` renders it for the live cluster (its version
/// and served API groups, asked of the API server, as `helm install`
/// would) with no version in ferry's config, and applies it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ferry_run_renders_releases_for_the_live_clusters_version_and_api_groups() {
    let tmp = tempfile::tempdir().unwrap();
    let admin = crate::kube_apply::admin().await;
    // A group only this test's CRD serves.
    let group = format!("{}.example.com", unique_namespace("caps"));
    let crd: serde_json::Value = serde_yaml_ng::from_str(&format!(
        "apiVersion: apiextensions.k8s.io/v1\nkind: CustomResourceDefinition\nmetadata:\n  name: gadgets.{group}\nspec:\n  group: {group}\n  \
         scope: Namespaced\n  names: {{plural: gadgets, singular: gadget, kind: Gadget}}\n  versions:\n    - name: v1\n      served: true\n      storage: true\n      \
         schema: {{openAPIV3Schema: {{type: object, x-kubernetes-preserve-unknown-fields: true}}}}\n"
    ))
    .unwrap();
    Api::<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition>::all(admin.clone())
        .patch(&format!("gadgets.{group}"), &PatchParams::apply("test-setup"), &Patch::Apply(&crd))
        .await
        .unwrap();
    let version = admin.apiserver_version().await.unwrap().git_version;
    let repo = Repo::new(tmp.path(), "platform");
    let ns = unique_namespace("caps");
    let template = format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: seen\ndata:\n  kube: {{{{ .Capabilities.KubeVersion.Version | quote }}}}\n  \
         gadgets: {{{{ .Capabilities.APIVersions.Has \"{group}/v1\" | quote }}}}\n"
    );
    let release = format!(
        "apiVersion: ferry.dev/v1\nkind: HelmRelease\nname: caps\nnamespace: {ns}\nchart: {{path: charts/caps}}\n"
    );
    let ns_yaml = format!("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {ns}\n");
    let first = repo.commit(
        &[
            ("manifests/ns.yaml", Some(&ns_yaml)),
            (
                "charts/caps/Chart.yaml",
                Some("apiVersion: v2\nname: caps\nversion: 0.1.0\n"),
            ),
            ("charts/caps/templates/seen.yaml", Some(&template)),
            ("releases/caps.yaml", Some(&release)),
        ],
        "first",
    );
    let daemon = git_daemon(tmp.path(), free_port());
    let port = free_port();
    let config = write_config(
        tmp.path(),
        port,
        daemon.port,
        &ns,
        false,
        &format!("    helm:\n      binary: {}\n", helm_binary().display()),
    );
    let ferry = spawn_ferry(&config, &tmp.path().join("ferry.log"), port, &[]);
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    wait_for(addr, "the release applied", &|v| {
        v["kubernetes"]["applied_revision"] == first.as_str()
    });
    let seen = Api::<ConfigMap>::namespaced(admin.clone(), &ns)
        .get("seen")
        .await
        .unwrap()
        .data
        .unwrap();
    assert_eq!(
        seen["kube"], version,
        "the live cluster's version, not helm's default v1.20"
    );
    assert_eq!(seen["gadgets"], "true", "the live cluster's API groups");
    stop_ferry(ferry);
}
