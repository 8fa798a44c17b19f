//! Git sources against real servers: git daemon, smart HTTP (lighttpd +
//! git-http-backend, basic auth) and sshd with a pinned host key.

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use crate::support::*;
use ferry::agent::Agent;
use ferry::config::Config;
use ferry::metrics::Metrics;
use ferry::source::{GitSource, SourceError};
use ferry::status::StatusStore;

fn source(yaml_auth: &str, url: &str, cache: &Path) -> GitSource {
    let text = format!("sources:\n  - name: dags\n    url: {url}\n    timeout: 20s\n{yaml_auth}");
    let config = Config::parse(&text, Path::new("test.yaml")).expect("valid test config");
    GitSource::new(&config.sources[0], cache)
}

fn no_cancel() -> AtomicBool {
    AtomicBool::new(false)
}

/// The same story over every protocol: first sync, unchanged poll, new
/// commit, force push, deleted branch (error, last good kept), branch back.
fn follow_branch(repo: &Repo, src: &GitSource) {
    let first = repo.commit(&[("dags/a.py", Some("a = 1\n"))], "first");
    let fetched = src
        .fetch_branch(&no_cancel())
        .unwrap_or_else(|e| panic!("first sync of {}: {e}", src.url));
    assert_eq!(fetched.commit.to_string(), first);
    assert!(fetched.changed);
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
        Some(rewritten.clone()),
        "the last good revision must stay"
    );

    repo.push("main");
    assert_eq!(
        src.fetch_branch(&no_cancel()).unwrap().commit.to_string(),
        rewritten
    );
}

#[test]
fn git_daemon_follows_commits_force_pushes_and_deleted_branches() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = Repo::new(tmp.path(), "dags");
    let daemon = git_daemon(tmp.path(), free_port());
    let src = source(
        "",
        &format!("git://127.0.0.1:{}/dags.git", daemon.port),
        &tmp.path().join("cache"),
    );
    follow_branch(&repo, &src);
    assert!(
        src.mirror_path().join("shallow").exists(),
        "git daemon supports shallow fetches, so the mirror should be shallow"
    );

    let missing = source(
        "",
        &format!("git://127.0.0.1:{}/nope.git", daemon.port),
        &tmp.path().join("cache2"),
    );
    let err = missing.fetch_branch(&no_cancel()).unwrap_err();
    assert!(matches!(err, SourceError::RepoNotFound { .. }), "{err:?}");
}

#[test]
fn smart_http_follows_the_branch_and_accepts_the_right_password_only() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = Repo::new(tmp.path(), "dags");
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
    follow_branch(&repo, &good);
    assert!(
        good.mirror_path().join("shallow").exists(),
        "smart HTTP allows shallow fetches"
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

    let missing = source(
        &auth("good"),
        &format!("http://127.0.0.1:{}/git/nope.git", http.port),
        &tmp.path().join("c3"),
    );
    let err = missing.fetch_branch(&no_cancel()).unwrap_err();
    assert!(matches!(err, SourceError::RepoNotFound { .. }), "{err:?}");
}

#[test]
fn ssh_follows_the_branch_with_a_pinned_host_key_and_refuses_the_rest() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = Repo::new(tmp.path(), "dags");
    let ssh = sshd(tmp.path());
    let url = format!(
        "ssh://{}@127.0.0.1:{}{}",
        ssh.user,
        ssh.server.port,
        repo.bare.display()
    );
    let auth = |key: &Path, known_hosts: &Path| {
        format!(
            "    auth:\n      ssh_key_file: {}\n      known_hosts_file: {}\n",
            key.display(),
            known_hosts.display()
        )
    };
    let src = source(
        &auth(&ssh.client_key, &ssh.known_hosts),
        &url,
        &tmp.path().join("cache"),
    );
    follow_branch(&repo, &src);

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
    let err = source(&auth(&ssh.client_key, &wrong), &url, &tmp.path().join("c1"))
        .fetch_branch(&no_cancel())
        .unwrap_err();
    assert!(matches!(err, SourceError::HostKey { .. }), "{err:?}");
    assert!(err.to_string().contains("does not match"), "{err}");

    // Host not listed at all.
    let empty = tmp.path().join("empty_known_hosts");
    std::fs::write(&empty, "").unwrap();
    let err = source(&auth(&ssh.client_key, &empty), &url, &tmp.path().join("c2"))
        .fetch_branch(&no_cancel())
        .unwrap_err();
    assert!(matches!(err, SourceError::HostKey { .. }), "{err:?}");
    assert!(err.to_string().contains("is not in"), "{err}");

    // A client key the server does not authorize.
    let err = source(
        &auth(&other, &ssh.known_hosts),
        &url,
        &tmp.path().join("c3"),
    )
    .fetch_branch(&no_cancel())
    .unwrap_err();
    assert!(matches!(err, SourceError::Auth { .. }), "{err:?}");
    let text = err.to_string();
    assert!(text.contains("ssh_key_file"), "{text}");
    let private = std::fs::read_to_string(&other).unwrap();
    let key_body = private.lines().nth(1).unwrap();
    assert!(!text.contains(key_body), "private key material in an error");
}

#[test]
fn mirror_pack_count_stays_bounded_over_many_fetches() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = Repo::new(tmp.path(), "dags");
    let daemon = git_daemon(tmp.path(), free_port());
    let src = source(
        "",
        &format!("git://127.0.0.1:{}/dags.git", daemon.port),
        &tmp.path().join("cache"),
    );
    let packs = || {
        std::fs::read_dir(src.mirror_path().join("objects/pack"))
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .path()
                    .extension()
                    .is_some_and(|x| x == "pack")
            })
            .count()
    };
    let mut most = 0;
    for n in 0..ferry::source::MAX_PACKS + 15 {
        let head = repo.commit(&[("dags/a.py", Some(&format!("a = {n}\n")))], "c");
        assert_eq!(
            src.fetch_branch(&no_cancel()).unwrap().commit.to_string(),
            head
        );
        most = most.max(packs());
    }
    assert!(most <= ferry::source::MAX_PACKS + 1, "{most} packs");
    assert!(
        packs() < 20,
        "the mirror was not started afresh: {} packs",
        packs()
    );
}

/// Runs the agent against `url` while nothing listens, checks it backs off
/// and stays up, then starts the server and checks it recovers.
async fn down_then_back<S: Send + 'static>(
    tmp: &Path,
    url: String,
    auth_yaml: String,
    head: String,
    start: impl FnOnce() -> S + Send + 'static,
) -> S {
    let dest = tmp.join("out");
    let text = format!(
        "cache_dir: {cache}\nsources:\n  - name: dags\n    url: {url}\n    interval: 1s\n    max_backoff: 2s\n    timeout: 5s\n{auth_yaml}\
         targets:\n  dags:\n    source: dags\n    subdir: dags\n    destination: {dest}\n",
        cache = tmp.join("cache").display(),
        dest = dest.display()
    );
    let config = Config::parse(&text, Path::new("test.yaml")).unwrap();
    let status = StatusStore::default();
    let agent = Agent::new(&config, status.clone(), Metrics::new(), None).unwrap();
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
    assert!(error.message.contains("127.0.0.1"), "{}", error.message);
    assert!(
        !running.is_finished(),
        "an outage must never stop the agent"
    );
    assert!(
        down.first_sync_done,
        "readiness means the first attempt finished"
    );

    let server = tokio::task::spawn_blocking(start).await.unwrap();
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
    server
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_rides_out_an_outage_of_each_kind_of_server() {
    // git daemon
    let tmp = tempfile::tempdir().unwrap();
    let repo = Repo::new(tmp.path(), "dags");
    let head = repo.commit(&[("dags/a.py", Some("a = 1\n"))], "first");
    let port = free_port();
    let root = tmp.path().to_path_buf();
    down_then_back(
        tmp.path(),
        format!("git://127.0.0.1:{port}/dags.git"),
        String::new(),
        head,
        move || git_daemon(&root, port),
    )
    .await;

    // smart HTTP with basic auth
    let tmp = tempfile::tempdir().unwrap();
    let repo = Repo::new(tmp.path(), "dags");
    let head = repo.commit(&[("dags/a.py", Some("a = 1\n"))], "first");
    let port = free_port();
    std::fs::write(tmp.path().join("pw"), "pw-123").unwrap();
    let auth = format!(
        "    auth:\n      username: u\n      password_file: {}\n",
        tmp.path().join("pw").display()
    );
    let root = tmp.path().to_path_buf();
    down_then_back(
        tmp.path(),
        format!("http://127.0.0.1:{port}/git/dags.git"),
        auth,
        head,
        move || smart_http_on(&root, port, "u", "pw-123"),
    )
    .await;

    // SSH: keys and known_hosts are made first, then the server goes away.
    let tmp = tempfile::tempdir().unwrap();
    let repo = Repo::new(tmp.path(), "dags");
    let head = repo.commit(&[("dags/a.py", Some("a = 1\n"))], "first");
    let port = free_port();
    let ssh = sshd_on(tmp.path(), port);
    let url = format!("ssh://{}@127.0.0.1:{port}{}", ssh.user, repo.bare.display());
    let auth = format!(
        "    auth:\n      ssh_key_file: {}\n      known_hosts_file: {}\n",
        ssh.client_key.display(),
        ssh.known_hosts.display()
    );
    drop(ssh);
    let root = tmp.path().to_path_buf();
    down_then_back(tmp.path(), url, auth, head, move || sshd_on(&root, port)).await;
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
    let child = spawn_owned(
        Command::new(env!("CARGO_BIN_EXE_ferry"))
            .args(["--log-format", "json", "run", "--config"])
            .arg(&config)
            .env("GIT_TRACE", "1")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap()),
    )
    .unwrap();
    wait_for_port(port, Duration::from_secs(10));
    let addr = format!("127.0.0.1:{port}").parse().unwrap();
    let body = eventually(Duration::from_secs(20), "two failed attempts", || {
        let (_, body) = http_get(addr, "/api/v1/status/dags");
        let v: serde_json::Value = serde_json::from_str(&body).ok()?;
        (v["consecutive_failures"].as_u64()? >= 2).then_some(body)
    });
    let (_, metrics) = http_get(addr, "/metrics");
    stop_ferry(child);
    let logs = std::fs::read_to_string(&log).unwrap();
    assert!(
        body.contains("rejected the configured credentials"),
        "{body}"
    );
    assert!(
        logs.contains("rejected the configured credentials"),
        "{logs}"
    );
    assert_no_secret(
        "git password",
        leaked,
        &[
            ("status API", &body),
            ("logs", &logs),
            ("metrics", &metrics),
        ],
    );
    // Every log line is JSON.
    for line in logs.lines().filter(|l| !l.trim().is_empty()) {
        serde_json::from_str::<serde_json::Value>(line)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
    }
}
