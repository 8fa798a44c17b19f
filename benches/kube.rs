//! Kubernetes target benchmark against the test kube-apiserver. Prints
//! figures; asserts nothing.
//!
//!     cargo bench --bench kube
//!
//! 1,000 generated objects (400 ConfigMaps, 300 Services, 300 Deployments):
//! first apply, no-op reconcile (time and writes counted in the audit log),
//! a 10-object change; then `ferry run` applies the same set into a fresh
//! namespace and its peak RSS is read from /proc.

#[path = "../tests/it/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use ferry::desired::manifests;
use ferry::kubernetes::plan::Depth;
use ferry::kubernetes::target::KubeTarget;
use git2::Repository;
use support::*;

fn objects(ns: &str, generation: usize, changed: usize) -> Vec<(String, String)> {
    let mut files = vec![(
        "manifests/ns.yaml".to_string(),
        format!("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {ns}\n"),
    )];
    for i in 0..400 {
        let value = if i < changed { generation } else { 0 };
        files.push((
            format!("manifests/config/cm-{i:03}.yaml"),
            format!("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: cm-{i:03}\ndata:\n  value: \"{value}\"\n  owner: team-{}\n", i % 7),
        ));
    }
    for i in 0..300 {
        files.push((
            format!("manifests/services/svc-{i:03}.yaml"),
            format!(
                "apiVersion: v1\nkind: Service\nmetadata:\n  name: svc-{i:03}\nspec:\n  selector: {{app: app-{i:03}}}\n  ports:\n    - port: 80\n      targetPort: 8080\n"
            ),
        ));
        files.push((
            format!("manifests/apps/app-{i:03}.yaml"),
            format!(
                "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: app-{i:03}\nspec:\n  replicas: 1\n  selector:\n    matchLabels: {{app: app-{i:03}}}\n  \
                 template:\n    metadata:\n      labels: {{app: app-{i:03}}}\n    spec:\n      containers:\n        - name: app\n          image: registry.example/app:1\n          \
                 resources:\n            requests: {{cpu: 10m, memory: 32Mi}}\n"
            ),
        ));
    }
    files
}

fn commit(repo: &Repository, files: &[(String, String)]) -> git2::Oid {
    let refs: Vec<(&str, String)> = files.iter().map(|(p, c)| (p.as_str(), c.clone())).collect();
    commit_files(repo, &refs)
}

fn main() {
    let cp = control_plane();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let tmp = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let repo = Repository::init_bare(tmp.path().join("platform.git")).unwrap();
    let ns = unique_namespace("bench");
    let config = kube_target(&ns, false);

    let r1 = commit(&repo, &objects(&ns, 1, 0));
    let r2 = commit(&repo, &objects(&ns, 2, 10));
    let (first, noop, noop_writes, change, change_writes) = runtime.block_on(async {
        // The agent's way: a plan made for applying, then that plan applied.
        let mut target = KubeTarget::new(
            "bench",
            ferry::config::KubernetesTargetConfig {
                kubeconfig: Some(cp.admin.clone()),
                ..config.clone()
            },
        );
        let cancel = std::sync::atomic::AtomicBool::new(false);
        // Applies a revision: (outcome, time taken, writes the audit log saw).
        let mut timed = async |rev: git2::Oid| {
            let writes_before = audited_writes(&cp.audit_log, &ns).len();
            // Timed from reading the commit, as the agent's gate does.
            let started = Instant::now();
            let manifests = manifests::read(&repo, rev, "manifests").unwrap();
            let plan = target.plan(rev, &manifests, Depth::Apply).await.unwrap();
            let out = target.apply(plan, &cancel).await.unwrap();
            let took = started.elapsed();
            (
                out,
                took,
                audited_writes(&cp.audit_log, &ns).len() - writes_before,
            )
        };
        let (out, first, _) = timed(r1).await;
        assert!(
            out.succeeded(),
            "first apply failed: {:?}",
            out.objects.iter().find(|o| o.error.is_some())
        );
        let (out, noop, noop_writes) = timed(r1).await;
        assert!(
            out.unchanged,
            "the same revision again changed: {:?}",
            out.objects
                .iter()
                .filter(|o| o.status != ferry::kubernetes::apply::Status::Unchanged)
                .take(3)
                .collect::<Vec<_>>()
        );
        let (out, change, change_writes) = timed(r2).await;
        assert!(out.succeeded());
        (first, noop, noop_writes, change, change_writes)
    });
    println!(
        "== kube: 1,001 objects (1 Namespace, 400 ConfigMaps, 300 Services, 300 Deployments), test kube-apiserver v1.37.2"
    );
    println!(
        "   first apply:            {:7.2} s    [target <= 30 s]",
        first.as_secs_f64()
    );
    println!(
        "   no-op reconcile:        {:7.3} s, {noop_writes} writes    [target <= 1 s, 0 writes]",
        noop.as_secs_f64()
    );
    println!(
        "   10-object change:       {:7.2} s, {change_writes} writes (only changed objects are sent)",
        change.as_secs_f64()
    );

    // Peak RSS of the real binary applying the same set into a fresh namespace.
    let served = Repo::new(tmp.path(), "served");
    let ns2 = unique_namespace("bench-rss");
    for (path, content) in objects(&ns2, 1, 0) {
        let full = served.work.join(&path);
        std::fs::create_dir_all(full.parent().unwrap()).unwrap();
        std::fs::write(full, content).unwrap();
    }
    let head = served.commit(&[], "objects");
    let daemon = git_daemon(tmp.path(), free_port());
    let port = free_port();
    let config_path = tmp.path().join("ferry.yaml");
    std::fs::write(
        &config_path,
        format!(
            "cache_dir: {}\nserver:\n  listen: 127.0.0.1:{port}\nsources:\n  - name: platform\n    url: git://127.0.0.1:{}/served.git\n    interval: 5s\n\
             targets:\n  kubernetes:\n    source: platform\n    default_namespace: {ns2}\n    health_timeout: 0s\n    kubeconfig: {}\n",
            tmp.path().join("cache").display(),
            daemon.port,
            cp.admin.display()
        ),
    )
    .unwrap();
    let child = spawn_ferry(&config_path, &tmp.path().join("ferry.log"), port, &[]);
    let addr = format!("127.0.0.1:{port}").parse().unwrap();
    let started = Instant::now();
    eventually(Duration::from_secs(120), "ferry run to apply", || {
        let (_, body) = http_get(addr, "/api/v1/status/platform");
        body.contains(&format!("\"applied_revision\":\"{head}\""))
            .then_some(())
    });
    let applied_in = started.elapsed();
    println!(
        "   `ferry run` first apply: {:7.2} s; peak RSS (VmHWM) {:.1} MiB, now {:.1} MiB    [target peak <= 120 MiB]",
        applied_in.as_secs_f64(),
        proc_mib(child.id(), "VmHWM:"),
        proc_mib(child.id(), "VmRSS:")
    );
    stop_ferry(child);
}
