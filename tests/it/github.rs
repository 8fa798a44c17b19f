//! Reporting to GitHub from a running `ferry run`, against the strict fake
//! GitHub API in `support/github.rs`: commit statuses, deployments, PR
//! previews, outages, restarts, App tokens, and no secret in the logs.

use crate::support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::support::github::{FakeGithub, FakeState};
use crate::support::*;
use ferry::webhook::sign;

const TOKEN: &str = "ghp_fakeToken0123456789abcdefSECRET";
const SECRET: &str = "webhook-secret-9d2e44";
const EXTERNAL: &str = "https://ferry.example.test";

struct Setup {
    tmp: tempfile::TempDir,
    repo: Repo,
    daemon: Server,
    fake: FakeGithub,
    port: u16,
    addr: SocketAddr,
}

fn fake_with_token() -> FakeGithub {
    FakeGithub::start(FakeState {
        token: Some(TOKEN.into()),
        repos: ["acme/dags".to_string(), "acme/platform".to_string()].into(),
        ..FakeState::default()
    })
}

fn setup(name: &str, fake: FakeGithub) -> Setup {
    let tmp = tempfile::tempdir().unwrap();
    let repo = Repo::new(tmp.path(), name);
    let daemon = git_daemon(tmp.path(), free_port());
    std::fs::write(tmp.path().join("token"), format!("{TOKEN}\n")).unwrap();
    std::fs::write(tmp.path().join("secret"), format!("{SECRET}\n")).unwrap();
    let port = free_port();
    Setup {
        addr: format!("127.0.0.1:{port}").parse().unwrap(),
        tmp,
        repo,
        daemon,
        fake,
        port,
    }
}

impl Setup {
    /// A DAGs config; `auth` is the `github` credential lines, `extra`
    /// goes under `targets.dags`.
    fn dags_config(&self, file: &str, auth: &str, interval: &str, extra: &str) -> PathBuf {
        let path = self.tmp.path().join(file);
        let api = self.fake.url()
            + &self
                .fake
                .with(|f| f.path_prefix.clone())
                .unwrap_or_default();
        std::fs::write(
            &path,
            format!(
                "cache_dir: {cache}\nserver:\n  listen: 127.0.0.1:{port}\nlog:\n  level: trace\n\
                 github:\n  api_url: {api}\n  external_url: {EXTERNAL}/\n  webhook_secret_file: {secret}\n  environment: staging\n{auth}\
                 sources:\n  - name: dags\n    url: git://127.0.0.1:{dp}/dags.git\n    github_repo: Acme/DAGs\n    interval: {interval}\n    max_backoff: 2s\n\
                 targets:\n  dags:\n    source: dags\n    subdir: dags\n    destination: {dest}\n{extra}",
                cache = self.tmp.path().join("cache").display(),
                port = self.port,
                api = api,
                secret = self.tmp.path().join("secret").display(),
                dp = self.daemon.port,
                dest = self.tmp.path().join("dest").display(),
            ),
        )
        .unwrap();
        path
    }

    fn token_auth(&self) -> String {
        format!(
            "  token_file: {}\n",
            self.tmp.path().join("token").display()
        )
    }

    fn webhook(&self, event: &str, delivery: &str, body: &serde_json::Value) -> (u16, String) {
        let body = serde_json::to_vec(body).unwrap();
        let signature = sign(SECRET.as_bytes(), &body);
        http_post(
            self.addr,
            "/webhooks/github",
            &[
                ("X-GitHub-Event", event),
                ("X-GitHub-Delivery", delivery),
                ("X-Hub-Signature-256", &signature),
                ("Content-Type", "application/json"),
            ],
            &body,
        )
    }

    fn push_webhook(&self, n: usize) {
        let (code, text) = self.webhook(
            "push",
            &format!("push-{n}"),
            &serde_json::json!({"ref": "refs/heads/main", "repository": {"full_name": "acme/dags"}}),
        );
        assert_eq!(code, 200, "{text}");
    }

    fn pr_webhook(&self, action: &str, pr: u64, head: &str, delivery: &str) -> (u16, String) {
        let repo = self.repo.name.clone();
        self.webhook(
            "pull_request",
            delivery,
            &serde_json::json!({
                "action": action,
                "number": pr,
                "pull_request": {
                    "head": {"ref": format!("feature-{pr}"), "sha": head},
                    "base": {"ref": "main", "sha": "0".repeat(40)}
                },
                "repository": {"full_name": format!("acme/{repo}")}
            }),
        )
    }

    fn published(&self) -> Option<String> {
        let (_, body) = http_get(self.addr, "/api/v1/status/dags");
        let v: serde_json::Value = serde_json::from_str(&body).ok()?;
        v["published_revision"].as_str().map(str::to_string)
    }
}

/// Commits `files` on top of main and pushes it as `refs/pull/<pr>/head`
/// only, as GitHub does for a pull request.
pub(crate) fn pull_request(repo: &Repo, pr: u64, files: &[(&str, &str)]) -> String {
    let work = &repo.work;
    let _ = run(git(work).args(["checkout", "-q", "-B", &format!("pr-{pr}"), "main"]));
    for (path, content) in files {
        let full = work.join(path);
        std::fs::create_dir_all(full.parent().unwrap()).unwrap();
        std::fs::write(full, content).unwrap();
    }
    run(git(work).args(["add", "-A"]));
    run(git(work).args(["commit", "-q", "-m", &format!("PR {pr}")]));
    run(git(work).args([
        "push",
        "-q",
        "-f",
        "origin",
        &format!("HEAD:refs/pull/{pr}/head"),
    ]));
    let head = repo.head();
    run(git(work).args(["checkout", "-q", "main"]));
    head
}

fn wait_states(fake: &FakeGithub, sha: &str, context: &str, want: &[&str]) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while fake.states(sha, context) != want {
        if std::time::Instant::now() > deadline {
            let (log, rejected) = fake.with(|f| (f.log.clone(), f.rejected.clone()));
            panic!(
                "statuses on {sha} in {context}: want {want:?}, have {:?}\nrequests: {log:#?}\nrejected: {rejected:#?}",
                fake.states(sha, context)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn log_text(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// Neither secret, in any encoding, on any of the surfaces.
fn assert_no_secrets(surfaces: &[(&str, &str)]) {
    assert_no_secret("GitHub token", TOKEN, surfaces);
    assert_no_secret("webhook secret", SECRET, surfaces);
}

#[test]
fn dag_commits_get_statuses_and_deployments_and_no_secret_is_logged() {
    let s = setup("dags", fake_with_token());
    let good = s.repo.commit(&[("dags/a.py", Some("a = 1\n"))], "good");
    let config = s.dags_config("ferry.yaml", &s.token_auth(), "1h", "");
    let log = s.tmp.path().join("ferry.log");
    let ferry = spawn_ferry(&config, &log, s.port, &[]);

    wait_states(&s.fake, &good, "ferry/dags", &["pending", "success"]);
    let statuses = s.fake.with(|f| f.statuses.clone());
    let url = format!("{EXTERNAL}/sources/dags/revisions/{good}");
    assert!(
        statuses
            .iter()
            .all(|st| st.repo == "acme/dags" && st.target_url == url),
        "{statuses:#?}"
    );
    assert!(
        statuses[1].description.starts_with("published 1 file(s)"),
        "{statuses:#?}"
    );
    // The JSON of the page the status links to, on ferry's own server.
    let (code, page) = http_get(s.addr, &format!("/api/v1/status/dags/revisions/{good}"));
    assert_eq!(code, 200, "{page}");
    assert!(page.contains("\"state\":\"success\""), "{page}");
    let deployment = eventually(
        Duration::from_secs(10),
        "deployment of the good commit",
        || {
            s.fake.with(|f| {
                f.deployments
                    .iter()
                    .find(|d| d.sha == good && d.statuses.len() == 2)
                    .cloned()
            })
        },
    );
    assert_eq!(deployment.environment, "staging");
    assert_eq!(deployment.statuses[0].0, "in_progress");
    assert_eq!(deployment.statuses[1], ("success".to_string(), url));

    // A broken DAG: pending, then failure naming file and line; no deployment success.
    let bad = s
        .repo
        .commit(&[("dags/bad.py", Some("x = 1\ndef broken(:\n"))], "bad");
    s.push_webhook(1);
    wait_states(&s.fake, &bad, "ferry/dags", &["pending", "failure"]);
    let (_, description) = s.fake.statuses(&bad, "ferry/dags").pop().unwrap();
    assert!(description.contains("dags/bad.py:2"), "{description}");
    assert!(description.chars().count() <= 140);
    eventually(Duration::from_secs(10), "failed deployment", || {
        s.fake.with(|f| {
            f.deployments
                .iter()
                .any(|d| {
                    d.sha == bad
                        && d.statuses
                            .iter()
                            .map(|x| x.0.as_str())
                            .eq(["in_progress", "failure"])
                })
                .then_some(())
        })
    });
    assert_eq!(
        s.published().as_deref(),
        Some(good.as_str()),
        "the last good commit stays live"
    );
    assert_eq!(
        s.fake.with(|f| f.deployments.len()),
        2,
        "one deployment per evaluated commit"
    );

    // Every surface ferry writes to, while it still serves them.
    let (_, status_api) = http_get(s.addr, "/api/v1/status");
    let (_, revision_page) = http_get(s.addr, &format!("/api/v1/status/dags/revisions/{bad}"));
    let (_, metrics) = http_get(s.addr, "/metrics");
    stop_ferry(ferry);
    s.fake.assert_nothing_rejected();
    let ledger = std::fs::read_to_string(s.tmp.path().join("cache/github-report.json")).unwrap();
    let sent = s
        .fake
        .with(|f| format!("{:?}{:?}{:?}", f.statuses, f.deployments, f.comments));
    assert_no_secrets(&[
        ("log", &log_text(&log)),
        ("ledger", &ledger),
        ("status API", &status_api),
        ("revision page", &revision_page),
        ("metrics", &metrics),
        ("statuses and deployments sent to GitHub", &sent),
    ]);
    assert!(
        log_text(&log).contains("commit status reported"),
        "debug logging was on and ran"
    );
}

#[test]
fn a_github_outage_is_retried_while_syncing_goes_on() {
    let s = setup("dags", fake_with_token());
    // Three server errors and a secondary rate limit with Retry-After.
    s.fake.with(|f| {
        f.outage = vec![(502, None), (503, None), (500, None), (403, Some(1))];
        // Only commit statuses fail, so the retries are known to be reports.
        f.outage_path = Some("/statuses/".into());
        // Served under an API root, as GitHub Enterprise Server is.
        f.path_prefix = Some("/api/v3".into());
    });
    let first = s.repo.commit(&[("dags/a.py", Some("a = 1\n"))], "first");
    let config = s.dags_config("ferry.yaml", &s.token_auth(), "1s", "");
    let log = s.tmp.path().join("ferry.log");
    let ferry = spawn_ferry(&config, &log, s.port, &[]);

    eventually(Duration::from_secs(10), "first publish", || {
        (s.published()? == first).then_some(())
    });
    let second = s.repo.commit(&[("dags/b.py", Some("b = 2\n"))], "second");
    eventually(
        Duration::from_secs(10),
        "second publish while GitHub is down",
        || (s.published()? == second).then_some(()),
    );
    // Backoff (0.5-1 s, 1-2 s, 2-4 s) plus Retry-After 1 s: nothing could be
    // delivered yet, yet both commits are live.
    assert!(
        s.fake.with(|f| f.statuses.is_empty()),
        "GitHub was meant to be down"
    );

    wait_states(&s.fake, &first, "ferry/dags", &["pending", "success"]);
    wait_states(&s.fake, &second, "ferry/dags", &["pending", "success"]);
    let failed = s.fake.with(|f| {
        f.log
            .iter()
            .filter(|l| l.ends_with("50") || l.contains("-> 50") || l.ends_with("403"))
            .count()
    });
    assert_eq!(failed, 4, "{:#?}", s.fake.with(|f| f.log.clone()));
    let (_, metrics) = http_get(s.addr, "/metrics");
    assert_series(
        &metrics,
        "ferry_github_reports_total{op=\"status\",outcome=\"retried\"}",
        4.0,
    );
    assert!(log_text(&log).contains("cannot report to GitHub; will retry"));
    stop_ferry(ferry);
    s.fake.assert_nothing_rejected();
}

#[test]
fn a_dags_pull_request_gets_one_comment_edited_in_place() {
    let s = setup("dags", fake_with_token());
    let main = s.repo.commit(&[("dags/a.py", Some("a = 1\n"))], "main");
    let config = s.dags_config("ferry.yaml", &s.token_auth(), "1h", "");
    let log = s.tmp.path().join("ferry.log");
    let ferry = spawn_ferry(&config, &log, s.port, &[]);
    wait_states(&s.fake, &main, "ferry/dags", &["pending", "success"]);

    let head1 = pull_request(&s.repo, 7, &[("dags/new.py", "n = 1\n")]);
    let (code, text) = s.pr_webhook("opened", 7, &head1, "pr-1");
    assert_eq!(code, 200, "{text}");
    wait_states(&s.fake, &head1, "ferry/dags", &["success"]);
    let comment = eventually(Duration::from_secs(20), "preview comment", || {
        s.fake.with(|f| f.comments.first().cloned())
    });
    assert_eq!(
        (comment.repo.as_str(), comment.pr, comment.edits),
        ("acme/dags", 7, 0)
    );
    assert!(
        comment
            .body
            .starts_with("<!-- ferry:preview source=dags -->"),
        "{}",
        comment.body
    );
    assert!(
        comment.body.contains("✅ 2 file(s) checked"),
        "{}",
        comment.body
    );

    // New push to the PR: the same comment is edited, now with the problem.
    let head2 = pull_request(
        &s.repo,
        7,
        &[
            ("dags/new.py", "n = 1\n"),
            ("dags/broken.py", "ok = 1\n\nif True\n    pass\n"),
        ],
    );
    let (code, text) = s.pr_webhook("synchronize", 7, &head2, "pr-2");
    assert_eq!(code, 200, "{text}");
    wait_states(&s.fake, &head2, "ferry/dags", &["failure"]);
    let comment = eventually(Duration::from_secs(20), "edited comment", || {
        s.fake
            .with(|f| f.comments.first().filter(|c| c.edits == 1).cloned())
    });
    assert_eq!(
        s.fake.with(|f| f.comments.len()),
        1,
        "exactly one comment per PR"
    );
    assert!(
        comment.body.contains("| `dags/broken.py` | 3 |"),
        "{}",
        comment.body
    );
    assert!(comment.body.contains(&head2[..12]));

    // Closing is not a preview; nothing live changed.
    let (code, _) = s.pr_webhook("closed", 7, &head2, "pr-3");
    assert_eq!(code, 202);
    assert_eq!(s.published().as_deref(), Some(main.as_str()));
    let revisions: Vec<String> = std::fs::read_dir(s.tmp.path().join("dest/.ferry"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        revisions.iter().all(|r| r != &head1 && r != &head2),
        "{revisions:?}"
    );
    let (_, status_api) = http_get(s.addr, "/api/v1/status");
    stop_ferry(ferry);
    s.fake.assert_nothing_rejected();
    let comments = s.fake.with(|f| format!("{:?}", f.comments));
    assert_no_secrets(&[
        ("log", &log_text(&log)),
        ("status API", &status_api),
        ("PR comments", &comments),
    ]);
}

#[test]
fn a_pull_request_whose_webhook_was_lost_is_found_by_polling() {
    let s = setup("dags", fake_with_token());
    let main = s.repo.commit(&[("dags/a.py", Some("a = 1\n"))], "main");
    let head = pull_request(&s.repo, 9, &[("dags/b.py", "def f(:\n")]);
    s.fake.with(|f| {
        f.pulls
            .push(("acme/dags".into(), 9, head.clone(), "main".into()));
        f.pulls
            .push(("acme/dags".into(), 10, "f".repeat(40), "release".into()));
    });
    let config = s.dags_config("ferry.yaml", &s.token_auth(), "1s", "");
    let ferry = spawn_ferry(&config, &s.tmp.path().join("ferry.log"), s.port, &[]);
    wait_states(&s.fake, &main, "ferry/dags", &["pending", "success"]);
    wait_states(&s.fake, &head, "ferry/dags", &["failure"]);
    let comment = eventually(Duration::from_secs(10), "comment", || {
        s.fake.with(|f| f.comments.first().cloned())
    });
    assert_eq!(comment.pr, 9);
    assert!(
        comment.body.contains("| `dags/b.py` | 1 |"),
        "{}",
        comment.body
    );
    // Later polls see the preview recorded and ask for nothing more; the
    // polls themselves are counted, so the window is known to hold some.
    let polls = || {
        s.fake.with(|f| {
            f.log
                .iter()
                .filter(|l| l.starts_with("GET ") && l.contains("/pulls"))
                .count()
        })
    };
    let polls_before = polls();
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        polls() >= polls_before + 2,
        "no polls in the window: {polls_before} -> {}",
        polls()
    );
    let (comments, statuses) = s.fake.with(|f| (f.comments.len(), f.statuses.len()));
    assert_eq!(
        (comments, statuses),
        (1, 3),
        "{:#?}",
        s.fake.with(|f| f.log.clone())
    );
    assert!(
        s.fake.with(|f| f
            .log
            .iter()
            .filter(|l| l.starts_with("GET /repos/acme/dags/pulls"))
            .count())
            >= 3
    );
    stop_ferry(ferry);
    s.fake.assert_nothing_rejected();
}

#[test]
fn a_restart_neither_reposts_nor_loses_a_final_status() {
    let s = setup("dags", fake_with_token());
    let first = s.repo.commit(&[("dags/a.py", Some("a = 1\n"))], "first");
    let passing = s.dags_config(
        "pass.yaml",
        &s.token_auth(),
        "1h",
        "    validation:\n      command: [\"true\"]\n",
    );
    // Delivery is at least once: a stop between GitHub's answer and the
    // ledger noting it (or with a report still queued: the deployment's
    // status follows the commit's) sends that report again. Wait for the note.
    let ledger = s.tmp.path().join("cache/github-report.json");
    let outbox_emptied = || {
        eventually(
            Duration::from_secs(10),
            "the ledger's outbox emptied",
            || {
                let saved: serde_json::Value =
                    serde_json::from_slice(&std::fs::read(&ledger).ok()?).ok()?;
                saved["outbox"].as_array()?.is_empty().then_some(())
            },
        )
    };
    let ferry = spawn_ferry(&passing, &s.tmp.path().join("run1.log"), s.port, &[]);
    wait_states(&s.fake, &first, "ferry/dags", &["pending", "success"]);
    outbox_emptied();
    stop_ferry(ferry);

    // Same commit after a restart: evaluated again, reported never again.
    let writes = || {
        s.fake
            .with(|f| f.log.iter().filter(|l| l.starts_with("POST")).count())
    };
    let requests_before = writes();
    let ferry = spawn_ferry(&passing, &s.tmp.path().join("run2.log"), s.port, &[]);
    eventually(Duration::from_secs(10), "ready", || {
        (http_get(s.addr, "/readyz").0 == 200).then_some(())
    });
    std::thread::sleep(Duration::from_secs(1));
    stop_ferry(ferry);
    assert_eq!(
        writes(),
        requests_before,
        "{:#?}",
        s.fake.with(|f| f.log.clone())
    );

    // Killed in the middle of evaluating a commit: `error`, then evaluated again.
    let second = s.repo.commit(&[("dags/b.py", Some("b = 2\n"))], "second");
    let slow = s.dags_config(
        "slow.yaml",
        &s.token_auth(),
        "1h",
        "    validation:\n      command: [\"sleep\", \"60\"]\n      timeout: 5m\n",
    );
    let mut ferry = spawn_ferry(&slow, &s.tmp.path().join("run3.log"), s.port, &[]);
    wait_states(&s.fake, &second, "ferry/dags", &["pending"]);
    eventually(Duration::from_secs(10), "deployment in progress", || {
        s.fake.with(|f| {
            f.deployments
                .iter()
                .any(|d| d.sha == second && d.statuses.len() == 1)
                .then_some(())
        })
    });
    outbox_emptied();
    ferry.kill().unwrap();
    ferry.wait().unwrap();
    let ferry = spawn_ferry(&passing, &s.tmp.path().join("run4.log"), s.port, &[]);
    wait_states(
        &s.fake,
        &second,
        "ferry/dags",
        &["pending", "error", "pending", "success"],
    );
    let (_, why) = s.fake.statuses(&second, "ferry/dags")[1].clone();
    assert!(why.contains("restarted"), "{why}");
    let deployment = s
        .fake
        .with(|f| f.deployments.iter().find(|d| d.sha == second).cloned())
        .unwrap();
    eventually(Duration::from_secs(10), "deployment settled", || {
        let d = s
            .fake
            .with(|f| f.deployments.iter().find(|d| d.sha == second).cloned())?;
        d.statuses
            .iter()
            .map(|x| x.0.as_str())
            .eq(["in_progress", "error", "in_progress", "success"])
            .then_some(())
    });
    assert_eq!(
        s.fake
            .with(|f| f.deployments.iter().filter(|d| d.sha == second).count()),
        1,
        "{deployment:?}"
    );
    stop_ferry(ferry);
    s.fake.assert_nothing_rejected();
}

#[test]
fn a_github_app_installation_token_is_used_and_refreshed() {
    let tmp = tempfile::tempdir().unwrap();
    let key = tmp.path().join("app.pem");
    run(std::process::Command::new("openssl")
        .args(["genrsa", "-traditional", "-out"])
        .arg(&key)
        .arg("2048"));
    let public = run(std::process::Command::new("openssl")
        .args(["rsa", "-pubout", "-in"])
        .arg(&key));
    let fake = FakeGithub::start(FakeState {
        app: Some(support::github::AppAuth {
            app_id: 4242,
            installation_id: 77,
            public_key_pem: public.into_bytes(),
            // octocrab renews a token with less than 30 s left: these are
            // stale two seconds after they are issued.
            token_ttl: Duration::from_secs(32),
        }),
        repos: ["acme/dags".to_string()].into(),
        ..FakeState::default()
    });
    let s = setup("dags", fake);
    let first = s.repo.commit(&[("dags/a.py", Some("a = 1\n"))], "first");
    let auth = format!(
        "  app:\n    app_id: 4242\n    installation_id: 77\n    private_key_file: {}\n",
        key.display()
    );
    let config = s.dags_config("ferry.yaml", &auth, "1h", "");
    let log = s.tmp.path().join("ferry.log");
    let ferry = spawn_ferry(&config, &log, s.port, &[]);
    wait_states(&s.fake, &first, "ferry/dags", &["pending", "success"]);
    assert_eq!(
        s.fake.with(|f| f.issued.len()),
        1,
        "one token serves a burst of requests"
    );
    std::thread::sleep(Duration::from_secs(3));
    let second = s.repo.commit(&[("dags/b.py", Some("b = 2\n"))], "second");
    s.push_webhook(2);
    wait_states(&s.fake, &second, "ferry/dags", &["pending", "success"]);
    assert_eq!(
        s.fake.with(|f| f.issued.len()),
        2,
        "the token was renewed before it expired"
    );
    stop_ferry(ferry);
    s.fake.assert_nothing_rejected();
    let issued = s.fake.with(|f| f.issued.clone());
    let text = log_text(&log);
    for (token, _) in issued {
        assert!(!text.contains(&token), "an installation token leaked");
    }
}

#[test]
fn a_platform_pull_request_is_planned_without_writing_anything() {
    let cp = control_plane();
    let s = setup("platform", fake_with_token());
    let ns = unique_namespace("preview");
    let ns_yaml = format!("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {ns}\n");
    let main = s.repo.commit(
        &[
            ("manifests/ns.yaml", Some(&ns_yaml)),
            ("manifests/cm.yaml", Some("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: settings\ndata:\n  mode: calm\n")),
            ("manifests/secret.yaml", Some("apiVersion: v1\nkind: Secret\nmetadata:\n  name: creds\nstringData:\n  password: old-hunter2\n")),
        ],
        "main",
    );
    let config = s.tmp.path().join("ferry.yaml");
    std::fs::write(
        &config,
        format!(
            "cache_dir: {cache}\nserver:\n  listen: 127.0.0.1:{port}\n\
             github:\n  api_url: {api}\n  external_url: {EXTERNAL}\n  webhook_secret_file: {secret}\n  token_file: {token}\n\
             sources:\n  - name: platform\n    url: git://127.0.0.1:{dp}/platform.git\n    github_repo: acme/platform\n    interval: 1h\n\
             targets:\n  kubernetes:\n    source: platform\n    default_namespace: {ns}\n    allowed_namespaces: [{ns}]\n    health_timeout: 0s\n    kubeconfig: {kc}\n",
            cache = s.tmp.path().join("cache").display(),
            port = s.port,
            api = s.fake.url(),
            secret = s.tmp.path().join("secret").display(),
            token = s.tmp.path().join("token").display(),
            dp = s.daemon.port,
            kc = cp.admin.display(),
        ),
    )
    .unwrap();
    let log = s.tmp.path().join("ferry.log");
    let ferry = spawn_ferry(&config, &log, s.port, &[]);
    wait_states(&s.fake, &main, "ferry/platform", &["pending", "success"]);
    let writes_before = audited_writes(&cp.audit_log, &ns).len();

    let head = pull_request(
        &s.repo,
        12,
        &[
            (
                "manifests/cm.yaml",
                "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: settings\ndata:\n  mode: bold\n",
            ),
            (
                "manifests/secret.yaml",
                "apiVersion: v1\nkind: Secret\nmetadata:\n  name: creds\nstringData:\n  password: new-hunter3\n",
            ),
            (
                "manifests/extra.yaml",
                "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: extra\ndata:\n  k: v\n",
            ),
        ],
    );
    let (code, text) = s.pr_webhook("opened", 12, &head, "pr-12");
    assert_eq!(code, 200, "{text}");
    wait_states(&s.fake, &head, "ferry/plan", &["success"]);
    let comment = eventually(Duration::from_secs(30), "plan comment", || {
        s.fake.with(|f| f.comments.first().cloned())
    });
    let body = comment.body;
    assert!(
        body.starts_with("<!-- ferry:preview source=platform -->"),
        "{body}"
    );
    assert!(
        body.contains("| kubernetes | 1 | 2 | 0 | 1 | 0 |"),
        "{body}"
    );
    assert!(body.contains("<summary><code>+ ConfigMap"), "{body}");
    assert!(body.contains("data.mode: \"bold\""), "{body}");
    assert!(
        body.contains("&lt;redacted&gt;") || body.contains("<redacted>"),
        "{body}"
    );
    assert!(
        !body.contains("hunter"),
        "Secret data must be masked:\n{body}"
    );
    let (_, description) = s.fake.statuses(&head, "ferry/plan")[0].clone();
    assert_eq!(description, "plan: 1 to create, 2 to update, 0 to delete");
    assert_eq!(
        audited_writes(&cp.audit_log, &ns).len(),
        writes_before,
        "a preview wrote to the cluster"
    );
    assert!(
        s.fake.states(&head, "ferry/platform").is_empty(),
        "a PR head is not applied"
    );
    stop_ferry(ferry);
    s.fake.assert_nothing_rejected();
}

fn sign_commits_with(repo: &Repo, key: Option<&Path>) {
    match key {
        Some(key) => {
            run(git(&repo.work).args(["config", "gpg.format", "ssh"]));
            run(git(&repo.work).args(["config", "user.signingkey"]).arg(key));
            run(git(&repo.work).args(["config", "commit.gpgsign", "true"]));
        }
        None => {
            run(git(&repo.work).args(["config", "commit.gpgsign", "false"]));
        }
    }
}

#[test]
fn only_heads_signed_by_a_listed_key_are_published() {
    let s = setup("dags", fake_with_token());
    let (trusted, trusted_pub) = signing_key(s.tmp.path(), "trusted");
    let (stranger, stranger_pub) = signing_key(s.tmp.path(), "stranger");
    let allowed = s.tmp.path().join("allowed_signers");
    std::fs::write(&allowed, format!("alice@example.com {trusted_pub}\n")).unwrap();
    sign_commits_with(&s.repo, Some(&trusted));
    let good = s.repo.commit(&[("dags/a.py", Some("a = 1\n"))], "signed");
    let config = s.dags_config("ferry.yaml", &s.token_auth(), "1h", "");
    let text = std::fs::read_to_string(&config).unwrap().replace(
        "    max_backoff: 2s\n",
        &format!(
            "    max_backoff: 2s\n    verify:\n      allowed_signers: {}\n",
            allowed.display()
        ),
    );
    std::fs::write(&config, text).unwrap();
    let ferry = spawn_ferry(&config, &s.tmp.path().join("ferry.log"), s.port, &[]);

    wait_states(&s.fake, &good, "ferry/dags", &["pending", "success"]);
    assert_eq!(s.published().as_deref(), Some(good.as_str()));
    assert!(s.tmp.path().join("dest/current/a.py").exists());
    let (_, body) = http_get(s.addr, "/api/v1/status/dags");
    let status: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(
        status["signed_by"]
            .as_str()
            .is_some_and(|by| by.starts_with("alice@example.com (SHA256:")),
        "{body}"
    );

    // Unsigned, then signed by a key not in the file: refused, reported on
    // that commit, and the last good commit stays published.
    sign_commits_with(&s.repo, None);
    let unsigned = s.repo.commit(&[("dags/b.py", Some("b = 2\n"))], "unsigned");
    s.push_webhook(1);
    wait_states(&s.fake, &unsigned, "ferry/dags", &["pending", "failure"]);
    let (_, description) = s.fake.statuses(&unsigned, "ferry/dags").pop().unwrap();
    assert!(description.contains("is not signed"), "{description}");
    assert!(description.chars().count() <= 140);
    sign_commits_with(&s.repo, Some(&stranger));
    let unlisted = s.repo.commit(&[("dags/c.py", Some("c = 3\n"))], "stranger");
    s.push_webhook(2);
    wait_states(&s.fake, &unlisted, "ferry/dags", &["pending", "failure"]);
    let (_, body) = http_get(s.addr, &format!("/api/v1/status/dags/revisions/{unlisted}"));
    assert!(
        body.contains("a key not listed") && body.contains("SHA256:"),
        "{body}"
    );
    assert_eq!(s.published().as_deref(), Some(good.as_str()));
    assert!(!s.tmp.path().join("dest/current/c.py").exists());

    // The file is re-read at every check: listing the stranger's key makes
    // the same head acceptable at the next poll, without a push or restart.
    std::fs::write(
        &allowed,
        format!("alice@example.com {trusted_pub}\nbob@example.com {stranger_pub}\n"),
    )
    .unwrap();
    s.push_webhook(3);
    wait_states(
        &s.fake,
        &unlisted,
        "ferry/dags",
        &["pending", "failure", "success"],
    );
    assert_eq!(s.published().as_deref(), Some(unlisted.as_str()));

    // Signed by the listed key again: published.
    sign_commits_with(&s.repo, Some(&trusted));
    let next = s
        .repo
        .commit(&[("dags/d.py", Some("d = 4\n"))], "signed again");
    s.push_webhook(4);
    wait_states(&s.fake, &next, "ferry/dags", &["pending", "success"]);
    assert_eq!(s.published().as_deref(), Some(next.as_str()));

    // The policy file gone at run time: the head is not evaluated (`error`,
    // the operator's to fix), and what is published stays.
    std::fs::remove_file(&allowed).unwrap();
    let orphan = s
        .repo
        .commit(&[("dags/e.py", Some("e = 5\n"))], "no policy file");
    s.push_webhook(5);
    wait_states(&s.fake, &orphan, "ferry/dags", &["pending", "error"]);
    let (_, description) = s.fake.statuses(&orphan, "ferry/dags").pop().unwrap();
    assert!(
        description.contains("cannot read allowed signers file"),
        "{description}"
    );
    assert_eq!(s.published().as_deref(), Some(next.as_str()));
    stop_ferry(ferry);
}

/// The leak search itself finds a secret wherever base64 put it.
#[test]
fn secret_search_finds_a_secret_inside_a_basic_auth_header() {
    use base64::Engine;
    let header = base64::engine::general_purpose::STANDARD.encode("ferry:s3cret-pass-phrase");
    let found = |secret: &str| {
        support::secret_forms(secret)
            .iter()
            .any(|f| header.contains(f.as_str()))
    };
    assert!(found("s3cret-pass-phrase"));
    assert!(!found("another-pass-phrase"));
}

/// A PR that changes a Helm release's values gets the rendered objects'
/// plan in its comment, computed by the API server, nothing written.
#[test]
fn a_chart_values_pull_request_shows_the_rendered_change() {
    let cp = control_plane();
    let s = setup("platform", fake_with_token());
    let charts = static_http(&crate::helm::shared_charts());
    let ns = unique_namespace("chart-preview");
    let ns_yaml = format!("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {ns}\n");
    let release = |replicas: u32| {
        format!(
            "apiVersion: ferry.dev/v1\nkind: HelmRelease\nname: cw\nnamespace: {ns}\nchart:\n  repository: http://127.0.0.1:{}\n  \
             name: prometheus-yet-another-cloudwatch-exporter\n  version: 0.47.0\nvalues:\n  fullnameOverride: cloudwatch\n  replicaCount: {replicas}\n",
            charts.port
        )
    };
    let main = s.repo.commit(
        &[
            ("manifests/ns.yaml", Some(&ns_yaml)),
            ("releases/cloudwatch.yaml", Some(&release(1))),
        ],
        "main",
    );
    let config = s.tmp.path().join("ferry.yaml");
    std::fs::write(
        &config,
        format!(
            "cache_dir: {cache}\nserver:\n  listen: 127.0.0.1:{port}\n\
             github:\n  api_url: {api}\n  external_url: {EXTERNAL}\n  webhook_secret_file: {secret}\n  token_file: {token}\n\
             sources:\n  - name: platform\n    url: git://127.0.0.1:{dp}/platform.git\n    github_repo: acme/platform\n    interval: 1h\n\
             targets:\n  kubernetes:\n    source: platform\n    default_namespace: {ns}\n    allowed_namespaces: [{ns}]\n    health_timeout: 0s\n    kubeconfig: {kc}\n    \
             helm: {{binary: {helm}}}\n",
            cache = s.tmp.path().join("cache").display(),
            port = s.port,
            api = s.fake.url(),
            secret = s.tmp.path().join("secret").display(),
            token = s.tmp.path().join("token").display(),
            dp = s.daemon.port,
            kc = cp.admin.display(),
            helm = helm_binary().display(),
        ),
    )
    .unwrap();
    let log = s.tmp.path().join("ferry.log");
    let ferry = spawn_ferry(&config, &log, s.port, &[]);
    wait_states(&s.fake, &main, "ferry/platform", &["pending", "success"]);
    let writes_before = audited_writes(&cp.audit_log, &ns).len();

    let head = pull_request(&s.repo, 14, &[("releases/cloudwatch.yaml", &release(2))]);
    let (code, text) = s.pr_webhook("opened", 14, &head, "pr-14");
    assert_eq!(code, 200, "{text}");
    wait_states(&s.fake, &head, "ferry/plan", &["success"]);
    let body = eventually(Duration::from_secs(30), "plan comment", || {
        s.fake.with(|f| f.comments.first().cloned())
    })
    .body;
    assert!(body.contains("| kubernetes | 0 | 1 | 0 |"), "{body}");
    assert!(body.contains("Deployment.apps"), "{body}");
    assert!(body.contains("spec.replicas: 2"), "{body}");
    let (_, description) = s.fake.statuses(&head, "ferry/plan")[0].clone();
    assert_eq!(description, "plan: 0 to create, 1 to update, 0 to delete");
    assert_eq!(
        audited_writes(&cp.audit_log, &ns).len(),
        writes_before,
        "a preview wrote to the cluster"
    );
    stop_ferry(ferry);
    s.fake.assert_nothing_rejected();
}
