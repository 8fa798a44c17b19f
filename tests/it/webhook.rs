//! `POST /webhooks/github` on a running `ferry run`: signed pushes trigger a
//! sync at once; everything unsigned, replayed, oversized or untracked does not.

use std::time::{Duration, Instant};

use crate::support::*;
use ferry::webhook::sign;

const SECRET: &str = "webhook-secret-7c1f0e";

fn syncs(addr: std::net::SocketAddr) -> u64 {
    let (_, metrics) = http_get(addr, "/metrics");
    metrics
        .lines()
        .filter(|l| l.starts_with("ferry_syncs_total{source=\"dags\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

fn published(addr: std::net::SocketAddr) -> Option<String> {
    let (_, body) = http_get(addr, "/api/v1/status/dags");
    let v: serde_json::Value = serde_json::from_str(&body).ok()?;
    v["published_revision"].as_str().map(str::to_string)
}

fn push_body(reference: &str, n: usize) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "ref": reference,
        "after": format!("{n:040x}"),
        "repository": {"full_name": "Acme/DAGs", "clone_url": "https://github.com/Acme/DAGs.git"}
    }))
    .unwrap()
}

#[test]
fn signed_pushes_sync_at_once_and_nothing_else_does() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = Repo::new(tmp.path(), "dags");
    let first = repo.commit(&[("dags/a.py", Some("a = 1\n"))], "first");
    let daemon = git_daemon(tmp.path(), free_port());
    std::fs::write(tmp.path().join("secret"), format!("{SECRET}\n")).unwrap();
    let port = free_port();
    let config = tmp.path().join("ferry.yaml");
    std::fs::write(
        &config,
        format!(
            "cache_dir: {cache}\nserver:\n  listen: 127.0.0.1:{port}\ngithub:\n  webhook_secret_file: {secret}\n\
             sources:\n  - name: dags\n    url: git://127.0.0.1:{dp}/dags.git\n    github_repo: acme/dags\n    interval: 1h\n\
             targets:\n  dags:\n    source: dags\n    subdir: dags\n    destination: {dest}\n",
            cache = tmp.path().join("cache").display(),
            secret = tmp.path().join("secret").display(),
            dp = daemon.port,
            dest = tmp.path().join("dest").display(),
        ),
    )
    .unwrap();
    let log = tmp.path().join("ferry.log");
    let ferry = spawn_ferry(&config, &log, port, &[]);
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    eventually(Duration::from_secs(20), "first sync", || {
        (published(addr)? == first).then_some(())
    });
    let post = |event: &str, delivery: &str, signature: Option<String>, body: &[u8]| {
        let mut headers = vec![
            ("X-GitHub-Event", event),
            ("X-GitHub-Delivery", delivery),
            ("Content-Type", "application/json"),
        ];
        let sig;
        if let Some(s) = signature {
            sig = s;
            headers.push(("X-Hub-Signature-256", sig.as_str()));
        }
        http_post(addr, "/webhooks/github", &headers, body)
    };

    // Unsigned or wrongly signed: 401, and nothing syncs.
    let second = repo.commit(&[("dags/b.py", Some("b = 2\n"))], "second");
    let body = push_body("refs/heads/main", 2);
    let before = syncs(addr);
    assert_eq!(post("push", "d-1", None, &body).0, 401);
    assert_eq!(
        post("push", "d-2", Some(sign(b"not-the-secret", &body)), &body).0,
        401
    );
    assert_eq!(
        post(
            "push",
            "d-3",
            Some(sign(SECRET.as_bytes(), b"other body")),
            &body
        )
        .0,
        401
    );
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        syncs(addr),
        before,
        "an unauthenticated delivery triggered a sync"
    );
    assert_eq!(published(addr).as_deref(), Some(first.as_str()));

    // Signed push to the tracked branch: published within a second.
    let started = Instant::now();
    let (code, text) = post("push", "d-4", Some(sign(SECRET.as_bytes(), &body)), &body);
    assert_eq!(code, 200, "{text}");
    eventually(Duration::from_secs(5), "webhook-triggered publish", || {
        (published(addr)? == second).then_some(())
    });
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "took {:?}",
        started.elapsed()
    );

    // The same delivery again (GitHub redelivers): ignored.
    let third = repo.commit(&[("dags/c.py", Some("c = 3\n"))], "third");
    let before = syncs(addr);
    let (code, text) = post("push", "d-4", Some(sign(SECRET.as_bytes(), &body)), &body);
    assert_eq!(code, 200);
    assert!(text.contains("already handled"), "{text}");
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(syncs(addr), before);
    assert_eq!(published(addr).as_deref(), Some(second.as_str()));

    // Other branch, other events: 202 and counted; ping: 200.
    let other = push_body("refs/heads/feature", 5);
    assert_eq!(
        post("push", "d-5", Some(sign(SECRET.as_bytes(), &other)), &other).0,
        202
    );
    let issue = br#"{"action":"opened"}"#;
    assert_eq!(
        post("issues", "d-6", Some(sign(SECRET.as_bytes(), issue)), issue).0,
        202
    );
    let ping = br#"{"zen":"Design for failure."}"#;
    assert_eq!(
        post("ping", "d-7", Some(sign(SECRET.as_bytes(), ping)), ping).0,
        200
    );
    // Over 5 MiB: refused before anything else.
    let huge = vec![b' '; 5 * 1024 * 1024 + 1];
    assert_eq!(
        post("push", "d-8", Some(sign(SECRET.as_bytes(), &huge)), &huge).0,
        413
    );

    let (_, metrics) = http_get(addr, "/metrics");
    for (line, value) in [
        (
            "ferry_webhooks_total{event=\"push\",outcome=\"unauthorized\"}",
            3.0,
        ),
        (
            "ferry_webhooks_total{event=\"push\",outcome=\"triggered\"}",
            1.0,
        ),
        (
            "ferry_webhooks_total{event=\"push\",outcome=\"duplicate\"}",
            1.0,
        ),
        (
            "ferry_webhooks_total{event=\"push\",outcome=\"ignored\"}",
            1.0,
        ),
        (
            "ferry_webhooks_total{event=\"issues\",outcome=\"ignored\"}",
            1.0,
        ),
        ("ferry_webhooks_total{event=\"ping\",outcome=\"pong\"}", 1.0),
    ] {
        assert_series(&metrics, line, value);
    }
    // A content type GitHub never sends: 415 naming the webhook setting.
    let signed = sign(SECRET.as_bytes(), &body);
    let (code, text) = http_post(
        addr,
        "/webhooks/github",
        &[
            ("X-GitHub-Event", "push"),
            ("X-GitHub-Delivery", "d-9"),
            ("Content-Type", "text/plain"),
            ("X-Hub-Signature-256", &signed),
        ],
        &body,
    );
    assert_eq!(code, 415, "{text}");
    assert!(
        text.contains("\"Content type\" to application/json"),
        "{text}"
    );
    assert_eq!(published(addr).as_deref(), Some(second.as_str()));
    // The webhook's other content type, a form whose `payload` field holds
    // the JSON (signed over the raw form body), syncs the pending commit.
    let form = form_urlencoded::Serializer::new(String::new())
        .append_pair("payload", std::str::from_utf8(&body).unwrap())
        .finish();
    let signed = sign(SECRET.as_bytes(), form.as_bytes());
    let (code, text) = http_post(
        addr,
        "/webhooks/github",
        &[
            ("X-GitHub-Event", "push"),
            ("X-GitHub-Delivery", "d-10"),
            ("Content-Type", "application/x-www-form-urlencoded"),
            ("X-Hub-Signature-256", &signed),
        ],
        form.as_bytes(),
    );
    assert_eq!(code, 200, "{text}");
    eventually(Duration::from_secs(5), "third commit", || {
        (published(addr)? == third).then_some(())
    });

    stop_ferry(ferry);
    let logs = std::fs::read_to_string(&log).unwrap();
    assert!(
        !logs.contains(SECRET),
        "the webhook secret leaked into the logs"
    );
}
