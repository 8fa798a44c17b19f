//! The long-outage scenario, shared by the fault test (20 s) and
//! `cargo bench --bench outage` (longer): git remote, GitHub and the
//! kube-apiserver unreachable at once, behind links the scenario cuts, with
//! commits pushed meanwhile. Invariants are asserted here (ferry stays up
//! and healthy, names what fails, and afterwards every commit is published,
//! applied and reported with exactly one status history); the figures are
//! returned for the caller to judge or print.

use std::time::{Duration, Instant};

use super::github::{FakeGithub, FakeState};
use super::{
    Link, Repo, eventually, free_port, git_daemon, http_get, proc_mib, spawn_ferry,
    unique_namespace,
};

pub struct OutageReport {
    /// Consecutive failed fetches of the DAGs source at the end of the outage.
    pub failed_fetches: u64,
    pub fds_before: usize,
    pub fds_peak: usize,
    pub rss_before: f64,
    pub rss_peak: f64,
    /// From the links coming back to every commit published, applied and
    /// reported.
    pub converged_after: Duration,
}

pub fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

/// Runs the scenario with an outage of `length` (polls every 1 s, backoff
/// capped at 2 s, so every loop retries many times).
pub fn run(length: Duration) -> OutageReport {
    let cp = super::control_plane();
    let tmp = tempfile::tempdir().unwrap();
    let dags = Repo::new(tmp.path(), "dags");
    let platform = Repo::new(tmp.path(), "platform");
    let ns = unique_namespace("outage");
    let ns_yaml = format!("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {ns}\n");
    let cm = |mode: &str| {
        format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: settings\ndata:\n  mode: {mode}\n"
        )
    };
    let d1 = dags.commit(&[("dags/a.py", Some("A = 1\n"))], "d1");
    let p1 = platform.commit(
        &[
            ("manifests/ns.yaml", Some(&ns_yaml)),
            ("manifests/cm.yaml", Some(&cm("one"))),
        ],
        "p1",
    );
    let daemon = git_daemon(tmp.path(), free_port());
    let github = FakeGithub::start(FakeState {
        token: Some("ghp_outageTest0123456789".into()),
        repos: ["acme/dags".to_string(), "acme/platform".to_string()].into(),
        ..Default::default()
    });
    std::fs::write(tmp.path().join("token"), "ghp_outageTest0123456789\n").unwrap();
    // Every way out of ferry goes through a link the test can cut.
    let git_link = Link::start(format!("127.0.0.1:{}", daemon.port).parse().unwrap());
    let github_link = Link::start(github.addr);
    let kubeconfig_text = std::fs::read_to_string(&cp.admin).unwrap();
    let api_port: u16 = kubeconfig_text
        .split("https://127.0.0.1:")
        .nth(1)
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|p| p.parse().ok())
        .expect("apiserver port in the kubeconfig");
    let api_link = Link::start(format!("127.0.0.1:{api_port}").parse().unwrap());
    let kubeconfig = tmp.path().join("via-link.kubeconfig");
    std::fs::write(
        &kubeconfig,
        kubeconfig_text.replace(
            &format!("https://127.0.0.1:{api_port}"),
            &format!("https://127.0.0.1:{}", api_link.port),
        ),
    )
    .unwrap();
    let port = free_port();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let config = tmp.path().join("ferry.yaml");
    std::fs::write(
        &config,
        format!(
            "cache_dir: {cache}\nserver:\n  listen: 127.0.0.1:{port}\n\
             github:\n  api_url: http://127.0.0.1:{gh}\n  external_url: https://ferry.example.test\n  token_file: {token}\n  deployments: false\n  previews: false\n\
             sources:\n\
             \x20 - name: dags\n    url: git://127.0.0.1:{git}/dags.git\n    github_repo: acme/dags\n    interval: 1s\n    max_backoff: 2s\n    timeout: 5s\n\
             \x20 - name: platform\n    url: git://127.0.0.1:{git}/platform.git\n    github_repo: acme/platform\n    interval: 1s\n    max_backoff: 2s\n    timeout: 5s\n\
             targets:\n  dags:\n    source: dags\n    subdir: dags\n    destination: {dest}\n\
             \x20 kubernetes:\n    source: platform\n    default_namespace: {ns}\n    allowed_namespaces: [{ns}]\n    health_timeout: 0s\n    kubeconfig: {kc}\n",
            cache = tmp.path().join("cache").display(),
            gh = github_link.port,
            token = tmp.path().join("token").display(),
            git = git_link.port,
            dest = tmp.path().join("dest").display(),
            kc = kubeconfig.display(),
        ),
    )
    .unwrap();
    let log = tmp.path().join("ferry.log");
    let mut ferry = spawn_ferry(&config, &log, port, &[]);
    let pid = ferry.id();
    let get = move |path: &str| http_get(addr, path);
    let status = move |source: &str| -> serde_json::Value {
        serde_json::from_str(&get(&format!("/api/v1/status/{source}")).1).unwrap_or_default()
    };
    let states = |sha: &str, context: &str| github.states(sha, context);
    let converged = |d: &str, p: &str| {
        status("dags")["published_revision"] == d
            && status("platform")["kubernetes"]["applied_revision"] == p
            && states(d, "ferry/dags").last().map(String::as_str) == Some("success")
            && states(p, "ferry/platform").last().map(String::as_str) == Some("success")
    };
    eventually(Duration::from_secs(30), "first round", || {
        converged(&d1, &p1).then_some(())
    });
    // ...and ferry has heard GitHub's answers: cutting the link while an
    // answer is on its way would make ferry send that report again, as it
    // must when it cannot know the report arrived.
    eventually(Duration::from_secs(30), "the outbox empty", || {
        let metrics = get("/metrics").1;
        (super::series(&metrics, "ferry_github_outbox") == Some(0.0)).then_some(())
    });
    let fds_before = open_fds(pid);
    let rss_before = proc_mib(pid, "VmRSS:");

    // GitHub goes first: the next commits are published and applied, but
    // their reports wait in the outbox, whose backoff grows all outage long.
    github_link.set_up(false);
    let d2 = dags.commit(&[("dags/b.py", Some("B = 2\n"))], "d2");
    let p2 = platform.commit(&[("manifests/cm.yaml", Some(&cm("two")))], "p2");
    eventually(
        Duration::from_secs(30),
        "d2 and p2 while GitHub is down",
        || {
            (status("dags")["published_revision"] == d2.as_str()
                && status("platform")["kubernetes"]["applied_revision"] == p2.as_str())
            .then_some(())
        },
    );
    // Then git and the apiserver too; new commits on both repos meanwhile.
    git_link.set_up(false);
    api_link.set_up(false);
    let d3 = dags.commit(&[("dags/c.py", Some("C = 3\n"))], "d3");
    let p3 = platform.commit(&[("manifests/cm.yaml", Some(&cm("three")))], "p3");
    let outage = Instant::now();
    let mut fds_peak = 0;
    let mut rss_peak = 0.0f64;
    let mut failures_seen = 0;
    while outage.elapsed() < length {
        assert!(
            ferry.try_wait().unwrap().is_none(),
            "ferry exited during the outage"
        );
        assert_eq!(get("/healthz").0, 200);
        let v = status("dags");
        if v["last_error"]["kind"] == "fetch_error" {
            failures_seen = failures_seen.max(v["consecutive_failures"].as_u64().unwrap_or(0));
        }
        fds_peak = fds_peak.max(open_fds(pid));
        rss_peak = rss_peak.max(proc_mib(pid, "VmRSS:"));
        std::thread::sleep(Duration::from_millis(250));
    }
    let dags_status = status("dags");
    assert!(
        dags_status["last_error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains(&format!("127.0.0.1:{}", git_link.port))),
        "the status must name the unreachable remote: {dags_status}"
    );
    assert_eq!(dags_status["published_revision"], d2.as_str());

    for link in [&git_link, &github_link, &api_link] {
        link.set_up(true);
    }
    let back = Instant::now();
    eventually(
        Duration::from_secs(120),
        "convergence after the outage",
        || converged(&d3, &p3).then_some(()),
    );
    let converged_after = back.elapsed();
    // Each commit has exactly one status history: pending, then its verdict.
    for (sha, context) in [
        (&d1, "ferry/dags"),
        (&d2, "ferry/dags"),
        (&d3, "ferry/dags"),
        (&p1, "ferry/platform"),
        (&p2, "ferry/platform"),
        (&p3, "ferry/platform"),
    ] {
        assert_eq!(
            states(sha, context),
            ["pending", "success"],
            "{context} {sha}"
        );
    }
    github.assert_nothing_rejected();
    super::stop_ferry(ferry);
    OutageReport {
        failed_fetches: failures_seen,
        fds_before,
        fds_peak,
        rss_before,
        rss_peak,
        converged_after,
    }
}
