//! Git sources against real servers: git daemon, smart HTTP (lighttpd +
//! git-http-backend, basic auth) and sshd with a pinned host key.

mod support;

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use ferry::agent::Agent;
use ferry::config::Config;
use ferry::metrics::Metrics;
use ferry::source::{GitSource, SourceError};
use ferry::status::StatusStore;
use support::*;

fn source(yaml_auth: &str, url: &str, cache: &Path) -> GitSource {
    let text = format!("sources:\n  - name: dags\n    url: {url}\n    timeout: 20s\n{yaml_auth}");
    let config = Config::parse(&text, Path::new("test.yaml")).expect("valid test config");
    GitSource::new(&config.sources[0], cache)
}

fn no_cancel() -> AtomicBool {
    AtomicBool::new(false)
}

#[test]
fn git_daemon_follows_commits_force_pushes_and_reports_a_deleted_branch() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = Repo::new(tmp.path(), "dags");
    let first = repo.commit(&[("dags/a.py", Some("a = 1\n"))], "first");
    let daemon = git_daemon(tmp.path(), free_port());
    let src = source(
        "",
        &format!("git://127.0.0.1:{}/dags.git", daemon.port),
        &tmp.path().join("cache"),
    );

    let fetched = src.fetch_branch(&no_cancel()).unwrap();
    assert_eq!(fetched.commit.to_string(), first);
    assert!(fetched.changed);
    assert!(
        src.mirror_path().join("shallow").exists(),
        "git daemon supports shallow fetches, so the mirror should be shallow"
    );
    let again = src.fetch_branch(&no_cancel()).unwrap();
    assert!(!again.changed, "an unchanged branch must not refetch");

    let second = repo.commit(&[("dags/b.py", Some("b = 2\n"))], "second");
    assert_eq!(
        src.fetch_branch(&no_cancel()).unwrap().commit.to_string(),
        second
    );

    let rewritten = repo.force_push_rewrite(&[("dags/c.py", Some("c = 3\n"))]);
    let fetched = src.fetch_branch(&no_cancel()).unwrap();
    assert_eq!(
        fetched.commit.to_string(),
        rewritten,
        "force-push must be followed"
    );

    repo.delete_branch("main");
    let err = src.fetch_branch(&no_cancel()).unwrap_err();
    assert!(matches!(err, SourceError::BranchNotFound { .. }), "{err:?}");
    assert!(err.to_string().contains("branch `main` not found"), "{err}");
    assert_eq!(
        src.last_fetched().map(|c| c.to_string()),
        Some(rewritten),
        "the last good revision must stay"
    );
}

#[test]
fn git_daemon_missing_repo_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let daemon = git_daemon(tmp.path(), free_port());
    let src = source(
        "",
        &format!("git://127.0.0.1:{}/nope.git", daemon.port),
        &tmp.path().join("cache"),
    );
    let err = src.fetch_branch(&no_cancel()).unwrap_err();
    assert!(matches!(err, SourceError::RepoNotFound { .. }), "{err:?}");
}

#[test]
fn smart_http_with_basic_auth_accepts_the_right_password_only() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = Repo::new(tmp.path(), "dags");
    let head = repo.commit(&[("dags/a.py", Some("a = 1\n"))], "first");
    let secret = "correct-horse-battery-staple";
    let http = smart_http(tmp.path(), "ferry", secret);
    let url = format!("http://127.0.0.1:{}/git/dags.git", http.port);
    std::fs::write(tmp.path().join("good"), format!("{secret}\n")).unwrap();
    std::fs::write(tmp.path().join("bad"), "wrong-password-value\n").unwrap();
    let auth = |file: &str| {
        format!(
            "    auth:\n      username: ferry\n      password_file: {}\n",
            tmp.path().join(file).display()
        )
    };

    let good = source(&auth("good"), &url, &tmp.path().join("cache-good"));
    let fetched = good.fetch_branch(&no_cancel()).unwrap();
    assert_eq!(fetched.commit.to_string(), head);
    assert!(
        good.mirror_path().join("shallow").exists(),
        "smart HTTP allows shallow fetches"
    );
    let next = repo.commit(&[("dags/a.py", Some("a = 2\n"))], "second");
    assert_eq!(
        good.fetch_branch(&no_cancel()).unwrap().commit.to_string(),
        next
    );

    let bad = source(&auth("bad"), &url, &tmp.path().join("cache-bad"));
    let err = bad.fetch_branch(&no_cancel()).unwrap_err();
    assert!(matches!(err, SourceError::Auth { .. }), "{err:?}");
    let text = err.to_string();
    assert!(text.contains("rejected"), "{text}");
    assert!(
        text.contains("password_file"),
        "the error names where the secret came from: {text}"
    );
    assert!(
        !text.contains("wrong-password-value")
            && !format!("{err:?}").contains("wrong-password-value")
    );

    let anonymous = source("", &url, &tmp.path().join("cache-anon"));
    let err = anonymous.fetch_branch(&no_cancel()).unwrap_err();
    assert!(matches!(err, SourceError::Auth { .. }), "{err:?}");
    assert!(err.to_string().contains("asks for credentials"), "{err}");
}

#[test]
fn ssh_with_pinned_host_key_and_refusal_of_unknown_or_wrong_keys() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = Repo::new(tmp.path(), "dags");
    let head = repo.commit(&[("dags/a.py", Some("a = 1\n"))], "first");
    let ssh = sshd(tmp.path());
    let url = format!(
        "ssh://{}@127.0.0.1:{}{}",
        ssh.user,
        ssh.server.port,
        repo.bare.display()
    );
    let auth = |known_hosts: &Path| {
        format!(
            "    auth:\n      ssh_key_file: {}\n      known_hosts_file: {}\n",
            ssh.client_key.display(),
            known_hosts.display()
        )
    };

    let src = source(&auth(&ssh.known_hosts), &url, &tmp.path().join("cache"));
    let fetched = src.fetch_branch(&no_cancel()).unwrap_or_else(|e| {
        panic!(
            "{e}\nsshd log:\n{}",
            std::fs::read_to_string(&ssh.server.log).unwrap_or_default()
        )
    });
    assert_eq!(fetched.commit.to_string(), head);

    // Same host, another key: refused as a possible man-in-the-middle.
    let other = tmp.path().join("other_key");
    run(Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&other));
    let other_pub = std::fs::read_to_string(other.with_extension("pub")).unwrap();
    let mut f = other_pub.split_whitespace();
    let wrong = tmp.path().join("wrong_known_hosts");
    std::fs::write(
        &wrong,
        format!(
            "[127.0.0.1]:{} {} {}\n",
            ssh.server.port,
            f.next().unwrap(),
            f.next().unwrap()
        ),
    )
    .unwrap();
    let err = source(&auth(&wrong), &url, &tmp.path().join("cache-wrong"))
        .fetch_branch(&no_cancel())
        .unwrap_err();
    assert!(matches!(err, SourceError::HostKey { .. }), "{err:?}");
    assert!(err.to_string().contains("does not match"), "{err}");

    // Host not listed at all.
    let empty = tmp.path().join("empty_known_hosts");
    std::fs::write(&empty, "").unwrap();
    let err = source(&auth(&empty), &url, &tmp.path().join("cache-empty"))
        .fetch_branch(&no_cancel())
        .unwrap_err();
    assert!(matches!(err, SourceError::HostKey { .. }), "{err:?}");
    assert!(err.to_string().contains("is not in"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_backs_off_while_the_server_is_down_and_recovers() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = Repo::new(tmp.path(), "dags");
    let head = repo.commit(&[("dags/a.py", Some("a = 1\n"))], "first");
    let port = free_port();
    let dest = tmp.path().join("out");
    let text = format!(
        "cache_dir: {cache}\nsources:\n  - name: dags\n    url: git://127.0.0.1:{port}/dags.git\n    interval: 1s\n    max_backoff: 2s\n    timeout: 5s\n\
         targets:\n  dags:\n    source: dags\n    subdir: dags\n    destination: {dest}\n",
        cache = tmp.path().join("cache").display(),
        dest = dest.display()
    );
    let config = Config::parse(&text, Path::new("test.yaml")).unwrap();
    let status = StatusStore::default();
    let agent = Agent::new(&config, status.clone(), Metrics::new()).unwrap();
    let (tx, rx) = tokio::sync::watch::channel(false);
    let running = tokio::spawn(agent.run(rx));

    let st = status.clone();
    tokio::task::spawn_blocking(move || {
        eventually(Duration::from_secs(20), "three failed attempts", || {
            st.get("dags").filter(|s| s.consecutive_failures >= 3)
        })
    })
    .await
    .unwrap();
    let down = status.get("dags").unwrap();
    let error = down.last_error.expect("error recorded");
    assert_eq!(error.kind, "fetch_error");
    assert!(
        error.message.contains(&format!("127.0.0.1:{port}")),
        "{}",
        error.message
    );
    assert!(
        !running.is_finished(),
        "an outage must never stop the agent"
    );
    assert!(
        down.first_sync_done,
        "readiness means the first attempt finished"
    );

    let root = tmp.path().to_path_buf();
    let _daemon = tokio::task::spawn_blocking(move || git_daemon(&root, port))
        .await
        .unwrap();
    let st = status.clone();
    let recovered = tokio::task::spawn_blocking(move || {
        eventually(
            Duration::from_secs(20),
            "recovery after the server returns",
            || st.get("dags").filter(|s| s.published_revision.is_some()),
        )
    })
    .await
    .unwrap();
    assert_eq!(recovered.published_revision.as_deref(), Some(head.as_str()));
    assert_eq!(recovered.consecutive_failures, 0);
    assert!(recovered.last_error.is_none());
    assert!(dest.join("current/a.py").exists());

    tx.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(10), running)
        .await
        .expect("graceful stop")
        .unwrap();
}

/// The agent as a process: wrong credentials give a clear error on the
/// status API and in the logs, and the secret appears in neither.
#[test]
fn wrong_credentials_never_print_the_secret() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = Repo::new(tmp.path(), "dags");
    repo.commit(&[("dags/a.py", Some("a = 1\n"))], "first");
    let http = smart_http(tmp.path(), "ferry", "the-real-password");
    let leaked = "wrong-but-still-secret-9f8e7d";
    std::fs::write(tmp.path().join("pw"), leaked).unwrap();
    let port = free_port();
    let config = tmp.path().join("ferry.yaml");
    std::fs::write(
        &config,
        format!(
            "cache_dir: {cache}\nserver:\n  listen: 127.0.0.1:{port}\nlog:\n  level: debug\n\
             sources:\n  - name: dags\n    url: http://127.0.0.1:{hp}/git/dags.git\n    interval: 1s\n    max_backoff: 1s\n    \
             auth:\n      username: ferry\n      password_file: {pw}\n",
            cache = tmp.path().join("cache").display(),
            hp = http.port,
            pw = tmp.path().join("pw").display()
        ),
    )
    .unwrap();
    let log = tmp.path().join("ferry.log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["--log-format", "json", "run", "--config"])
        .arg(&config)
        .env("GIT_TRACE", "1")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    wait_for_port(port, Duration::from_secs(10));
    let addr = format!("127.0.0.1:{port}").parse().unwrap();
    let body = eventually(Duration::from_secs(20), "two failed attempts", || {
        let (_, body) = http_get(addr, "/api/v1/status/dags");
        let v: serde_json::Value = serde_json::from_str(&body).ok()?;
        (v["consecutive_failures"].as_u64()? >= 2).then_some(body)
    });
    let (_, metrics) = http_get(addr, "/metrics");
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().unwrap();
    assert!(
        status.success(),
        "SIGTERM must stop ferry cleanly: {status:?}"
    );
    let logs = std::fs::read_to_string(&log).unwrap();
    assert!(
        body.contains("rejected the configured credentials"),
        "{body}"
    );
    assert!(
        logs.contains("rejected the configured credentials"),
        "{logs}"
    );
    for (what, text) in [
        ("status API", &body),
        ("logs", &logs),
        ("metrics", &metrics),
    ] {
        assert!(!text.contains(leaked), "the secret leaked into the {what}");
    }
    // Every log line is JSON.
    for line in logs.lines().filter(|l| !l.trim().is_empty()) {
        serde_json::from_str::<serde_json::Value>(line)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
    }
}
