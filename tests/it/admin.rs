//! Operating a running ferry from a terminal: `ferry status`, `sync`,
//! `suspend` and `resume` against `ferry run` applying a platform repo to
//! the test cluster, through the admin endpoint and its bearer token.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use crate::support::*;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;

fn ferry(args: &[&str], config: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(args)
        .arg("--config")
        .arg(config)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn cm(mode: &str) -> String {
    format!("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: settings\ndata:\n  mode: {mode}\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suspend_holds_back_a_commit_across_a_restart_and_resume_applies_it() {
    let cp = control_plane();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let repo = Repo::new(dir, "platform");
    let ns = unique_namespace("admin");
    let first = repo.commit(
        &[
            ("manifests/ns.yaml", Some(&crate::kube_apply::ns_yaml(&ns))),
            ("manifests/cm.yaml", Some(&cm("calm"))),
        ],
        "first",
    );
    let daemon = git_daemon(dir, free_port());
    let (port, admin_port) = (free_port(), free_port());
    let token = dir.join("admin-token");
    std::fs::write(&token, "s3cret-admin-token\n").unwrap();
    let config = dir.join("ferry.yaml");
    std::fs::write(
        &config,
        format!(
            "cache_dir: {cache}\nserver:\n  listen: 127.0.0.1:{port}\n  admin:\n    listen: 127.0.0.1:{admin_port}\n    token_file: {token}\n\
             sources:\n  - name: platform\n    url: git://127.0.0.1:{git}/platform.git\n    interval: 1s\n\
             targets:\n  kubernetes:\n    source: platform\n    default_namespace: {ns}\n    allowed_namespaces: [{ns}]\n    \
             drift_interval: 1s\n    self_heal: true\n    health_timeout: 0s\n    kubeconfig: {kc}\n",
            cache = dir.join("cache").display(),
            token = token.display(),
            git = daemon.port,
            kc = cp.admin.display(),
        ),
    )
    .unwrap();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let admin: std::net::SocketAddr = format!("127.0.0.1:{admin_port}").parse().unwrap();
    let status = || -> serde_json::Value {
        serde_json::from_str(&http_get(addr, "/api/v1/status/platform").1).unwrap_or_default()
    };
    let wait = |what: &str, check: &dyn Fn(&serde_json::Value) -> bool| {
        eventually(Duration::from_secs(30), what, || {
            let v = status();
            check(&v).then_some(v)
        })
    };
    let mut ferry_run = spawn_ferry(&config, &dir.join("ferry.log"), port, &[]);
    wait("first apply", &|v| {
        v["kubernetes"]["applied_revision"] == first.as_str()
    });

    // The endpoint answers only with the token, and never on the public port.
    let bearer = |t: &str| format!("Bearer {t}");
    let wrong = bearer("wrong");
    for headers in [&[][..], &[("Authorization", wrong.as_str())][..]] {
        let (code, body) = http_request(admin, "GET", "/admin/v1/status", headers, &[]);
        assert_eq!(code, 401, "{body}");
    }
    let (code, _) = http_request(
        addr,
        "POST",
        "/admin/v1/sources/platform/suspend",
        &[],
        b"{}",
    );
    assert_eq!(code, 404, "the public port serves no admin route");
    let (code, body) = http_request(
        admin,
        "GET",
        "/admin/v1/sources/nope",
        &[("Authorization", &bearer("s3cret-admin-token"))],
        &[],
    );
    assert_eq!(code, 404, "{body}");
    assert!(body.contains("sources: platform"), "{body}");

    let out = ferry(&["status"], &config);
    assert!(out.status.success(), "{}", text(&out));
    let table = text(&out);
    assert!(table.starts_with("SOURCE"), "{table}");
    assert!(
        table
            .lines()
            .nth(1)
            .is_some_and(|l| l.starts_with("platform")
                && l.contains("synced")
                && l.contains(&first[..12])),
        "{table}"
    );

    // Suspended: a new commit is fetched but nothing is written.
    let out = ferry(
        &["suspend", "platform", "--reason", "freeze for the audit"],
        &config,
    );
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("suspended since"), "{}", text(&out));
    let v = status();
    assert_eq!(v["state"], "suspended", "{v}");
    assert_eq!(v["suspended"]["reason"], "freeze for the audit", "{v}");
    assert_series(
        &http_get(addr, "/metrics").1,
        "ferry_source_suspended{source=\"platform\"}",
        1.0,
    );
    let writes = audited_writes(&cp.audit_log, &ns).len();
    let second = repo.commit(&[("manifests/cm.yaml", Some(&cm("busy")))], "second");
    wait("the second commit fetched", &|v| {
        v["revision"] == second.as_str()
    });
    // The held commit's page (where its GitHub status links) says why it waits.
    let held = format!("/sources/platform/revisions/{second}");
    eventually(Duration::from_secs(10), "the held commit's page", || {
        let (code, page) = http_get(addr, &held);
        (code == 200 && page.contains("`platform` is suspended (freeze for the audit)"))
            .then_some(())
    });
    let (_, overview) = http_get(addr, "/");
    assert!(
        overview.contains(">suspended</span>") && overview.contains("freeze for the audit"),
        "{overview}"
    );
    // A hand edit is drift, reported and (suspended) not healed.
    let client = ferry::kubernetes::client::connect(Some(&cp.admin))
        .await
        .unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(client, &ns);
    cms.patch(
        "settings",
        &kube::api::PatchParams::apply("kubectl-edit").force(),
        &kube::api::Patch::Apply(serde_json::json!({
            "apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "settings"}, "data": {"mode": "hand-edited"}
        })),
    )
    .await
    .unwrap();
    wait("drift reported while suspended", &|v| {
        v["kubernetes"]["drift"]
            .as_array()
            .is_some_and(|d| !d.is_empty())
    });
    let out = ferry(&["sync", "platform"], &config);
    assert!(!out.status.success());
    assert!(text(&out).contains("is suspended since"), "{}", text(&out));

    // It survives a restart.
    stop_ferry(ferry_run);
    ferry_run = spawn_ferry(&config, &dir.join("ferry-2.log"), port, &[]);
    let v = wait("restarted, still suspended", &|v| {
        v["state"] == "suspended" && v["syncs"].as_u64() >= Some(3)
    });
    assert_eq!(v["revision"], second.as_str(), "{v}");
    // One write only: the hand edit; ferry wrote nothing.
    assert_eq!(
        audited_writes(&cp.audit_log, &ns).len(),
        writes + 1,
        "a suspended source wrote to the cluster"
    );
    assert_eq!(
        cms.get("settings").await.unwrap().data.unwrap()["mode"],
        "hand-edited"
    );

    // Resumed: what waited is applied, the hand edit healed.
    let resumed = std::time::Instant::now();
    let out = ferry(&["resume", "platform"], &config);
    assert!(out.status.success(), "{}", text(&out));
    wait("the second commit applied", &|v| {
        v["kubernetes"]["applied_revision"] == second.as_str()
    });
    let (_, record) = http_get(addr, &format!("/api/v1/status/platform/revisions/{second}"));
    let record: serde_json::Value = serde_json::from_str(&record).unwrap();
    assert_eq!(record["records"][0]["state"], "success", "{record}");
    // Announced again when evaluated: the time it was held (a restart
    // ago) is not counted as the sync's.
    let took = record["records"][0]["duration_ms"]
        .as_u64()
        .unwrap_or(u64::MAX);
    assert!(took <= resumed.elapsed().as_millis() as u64, "{record}");
    assert_eq!(
        cms.get("settings").await.unwrap().data.unwrap()["mode"],
        "busy"
    );
    assert_series(
        &http_get(addr, "/metrics").1,
        "ferry_source_suspended{source=\"platform\"}",
        0.0,
    );

    // `sync` waits for a sync that starts after it asks, and says how it ended.
    let before = status()["syncs"].as_u64().unwrap();
    let out = ferry(&["sync", "platform", "--timeout", "30s"], &config);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).starts_with(&format!("platform: synced at {}", &second[..12])),
        "{}",
        text(&out)
    );
    assert!(status()["syncs"].as_u64().unwrap() > before);
    let out = ferry(&["status", "platform", "--output", "json"], &config);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["state"], "synced", "{v}");
    stop_ferry(ferry_run);
}
