//! ferry's pages in a real browser (headless Chromium through
//! ChromeDriver), against a live `ferry run` with a DAGs source (one good,
//! one broken commit) and a platform source on the test kube-apiserver
//! (a pull request whose plan updates a Secret): the link a commit status
//! carries is followed, the text a person sees is asserted, markup from
//! git is shown and never run, and no Secret value reaches a page.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use crate::github::pull_request;
use crate::support::browser::Browser;
use crate::support::github::{FakeGithub, FakeState};
use crate::support::*;

const TOKEN: &str = "ghp_pagesToken0123456789abcdefSECRET";
const SECRET: &str = "webhook-secret-pages";
const EXTERNAL: &str = "https://ferry.example.test";

/// Status line and headers of `GET path`.
fn head(addr: SocketAddr, path: &str) -> String {
    let mut stream = TcpStream::connect(addr).unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    response
        .split_once("\r\n\r\n")
        .map(|(h, _)| h.to_ascii_lowercase())
        .unwrap_or_default()
}

fn wait_final(fake: &FakeGithub, sha: &str, context: &str, state: &str) -> String {
    eventually(
        Duration::from_secs(90),
        &format!("{context} {state} on {sha}"),
        || {
            fake.with(|f| {
                f.statuses
                    .iter()
                    .rev()
                    .find(|s| s.sha == sha && s.context == context && s.state == state)
                    .map(|s| s.target_url.clone())
            })
        },
    )
}

#[test]
fn a_reviewer_follows_a_status_link_to_a_readable_page_that_runs_nothing_and_shows_no_secret() {
    let cp = control_plane();
    let tmp = tempfile::tempdir().unwrap();
    let dags = Repo::new(tmp.path(), "dags");
    let platform = Repo::new(tmp.path(), "platform");
    let daemon = git_daemon(tmp.path(), free_port());
    let fake = FakeGithub::start(FakeState {
        token: Some(TOKEN.into()),
        repos: ["acme/dags".to_string(), "acme/platform".to_string()].into(),
        ..FakeState::default()
    });
    std::fs::write(tmp.path().join("token"), TOKEN).unwrap();
    std::fs::write(tmp.path().join("secret"), SECRET).unwrap();
    let ns = unique_namespace("pages");

    let good = dags.commit(&[("dags/good.py", Some("a = 1\n"))], "good");
    let main = platform.commit(
        &[
            (
                "manifests/ns.yaml",
                Some(&format!("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {ns}\n")),
            ),
            ("manifests/cm.yaml", Some("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: settings\ndata:\n  mode: calm\n")),
            ("manifests/secret.yaml", Some("apiVersion: v1\nkind: Secret\nmetadata:\n  name: creds\nstringData:\n  password: old-hunter2\n")),
        ],
        "main",
    );
    let port = free_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let config = tmp.path().join("ferry.yaml");
    std::fs::write(
        &config,
        format!(
            "cache_dir: {cache}\nserver:\n  listen: {addr}\n\
             github:\n  api_url: {api}\n  external_url: {EXTERNAL}\n  webhook_secret_file: {secret}\n  token_file: {token}\n\
             sources:\n\
             \x20 - name: dags\n    url: git://127.0.0.1:{dp}/dags.git\n    github_repo: acme/dags\n    interval: 1s\n\
             \x20 - name: platform\n    url: git://127.0.0.1:{dp}/platform.git\n    github_repo: acme/platform\n    interval: 1h\n\
             targets:\n\
             \x20 dags:\n    source: dags\n    subdir: dags\n    destination: {dest}\n\
             \x20 kubernetes:\n    source: platform\n    default_namespace: {ns}\n    allowed_namespaces: [{ns}]\n    health_timeout: 20s\n    kubeconfig: {kc}\n",
            cache = tmp.path().join("cache").display(),
            api = fake.url(),
            secret = tmp.path().join("secret").display(),
            token = tmp.path().join("token").display(),
            dp = daemon.port,
            dest = tmp.path().join("dest").display(),
            kc = cp.admin.display(),
        ),
    )
    .unwrap();
    let log = tmp.path().join("ferry.log");
    let ferry = spawn_ferry(&config, &log, port, &[]);
    wait_final(&fake, &good, "ferry/dags", "success");
    wait_final(&fake, &main, "ferry/platform", "success");

    // A broken DAG, and a file whose name is markup.
    let broken = dags.commit(
        &[
            (
                "dags/broken.py",
                Some("import os\n\ndef broken(:\n    pass\n"),
            ),
            (
                "dags/zz-<script>document.title='pwned'<\\script>.py",
                Some("x = (\n"),
            ),
        ],
        "broken",
    );
    let link = wait_final(&fake, &broken, "ferry/dags", "failure");
    assert_eq!(
        link,
        format!("{EXTERNAL}/sources/dags/revisions/{broken}"),
        "a status links to the revision page"
    );

    // A pull request that changes a Secret, and puts markup in a value.
    let pr = pull_request(
        &platform,
        7,
        &[
            (
                "manifests/cm.yaml",
                "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: settings\ndata:\n  mode: bold\n  note: \"<script>document.title='pwned'</script>\"\n",
            ),
            (
                "manifests/secret.yaml",
                "apiVersion: v1\nkind: Secret\nmetadata:\n  name: creds\nstringData:\n  password: new-hunter3\n",
            ),
        ],
    );
    let body = serde_json::to_vec(&serde_json::json!({
        "action": "opened",
        "number": 7,
        "pull_request": {"head": {"ref": "feature-7", "sha": pr}, "base": {"ref": "main", "sha": "0".repeat(40)}},
        "repository": {"full_name": "acme/platform"}
    }))
    .unwrap();
    let signature = ferry::webhook::sign(SECRET.as_bytes(), &body);
    let (code, text) = http_post(
        addr,
        "/webhooks/github",
        &[
            ("X-GitHub-Event", "pull_request"),
            ("X-GitHub-Delivery", "pr-7"),
            ("X-Hub-Signature-256", &signature),
            ("Content-Type", "application/json"),
        ],
        &body,
    );
    assert_eq!(code, 200, "{text}");
    let pr_link = wait_final(&fake, &pr, "ferry/plan", "success");
    let comment = eventually(Duration::from_secs(30), "plan comment", || {
        fake.with(|f| f.comments.first().map(|c| c.body.clone()))
    });
    assert!(
        comment.contains(&format!("({EXTERNAL}/sources/platform/revisions/{pr})")),
        "the PR comment links to the page:\n{comment}"
    );

    let local = |url: &str| url.replace(EXTERNAL, &format!("http://{addr}"));
    let browser = Browser::start();
    let scripts = "return document.getElementsByTagName('script').length;";

    // The blocked DAG commit, reached from its status.
    browser.open(&local(&link));
    assert!(
        browser
            .url()
            .ends_with(&format!("/sources/dags/revisions/{broken}"))
    );
    let seen = browser.text();
    browser.screenshot("dags-refused");
    assert!(seen.contains("Refused:"), "{seen}");
    assert!(seen.contains("dags/broken.py:3"), "{seen}");
    assert!(
        seen.contains("zz-<script>document.title='pwned'<\\script>.py"),
        "markup in a file name is shown as text:\n{seen}"
    );
    assert_eq!(browser.eval(scripts), 0, "nothing from git became a script");
    assert_ne!(browser.eval("return document.title;"), "pwned");
    let href = browser
        .eval("return [...document.querySelectorAll('.problems a')].map(a => a.href).join(' ');");
    assert!(
        href.as_str().unwrap_or_default().contains(&format!(
            "{}/acme/dags/blob/{broken}/dags/broken.py#L3",
            fake.url()
        )),
        "the problem links to its line at that commit: {href}"
    );
    // The overview: both sources, each state in words.
    browser.open(&format!("http://{addr}/"));
    let seen = browser.text();
    browser.screenshot("overview");
    for want in [
        "dags",
        "platform",
        "refused",
        "synced",
        &good[..12],
        &main[..12],
    ] {
        assert!(seen.contains(want), "overview lacks {want:?}:\n{seen}");
    }

    // The DAGs history: both evaluations, newest first, with the first problem.
    browser.open(&format!("http://{addr}/sources/dags"));
    let seen = browser.text();
    browser.screenshot("dags-history");
    let (newest, oldest) = (seen.find(&broken[..12]), seen.find(&good[..12]));
    assert!(
        newest.is_some() && oldest.is_some() && newest < oldest,
        "{seen}"
    );
    assert!(seen.contains("dags/broken.py:3:"), "{seen}");
    assert!(seen.contains("1 file(s) written"), "{seen}");

    // The good DAG commit: files and link target.
    browser.open(&format!("http://{addr}/sources/dags/revisions/{good}"));
    let seen = browser.text();
    assert!(
        seen.contains(&format!(
            "{}/current now points at",
            tmp.path().join("dest").display()
        )),
        "{seen}"
    );

    // The platform PR head: the plan with its field diff, the Secret masked.
    browser.open(&local(&pr_link));
    let seen = browser.text();
    browser.screenshot("platform-preview");
    assert!(seen.contains("pull request #7"), "{seen}");
    assert!(seen.contains("+ data.mode: \"bold\""), "{seen}");
    assert!(seen.contains("- data.mode: \"calm\""), "{seen}");
    assert!(seen.contains("data.password: \"<redacted>\""), "{seen}");
    assert!(
        seen.contains("+ data.note: \"<script>document.title='pwned'</script>\""),
        "{seen}"
    );
    assert!(
        !seen.contains("hunter"),
        "a Secret value on the page:\n{seen}"
    );
    assert_eq!(browser.eval(scripts), 0);
    assert_ne!(browser.eval("return document.title;"), "pwned");

    // The platform branch head: each object applied, with its health.
    browser.open(&format!("http://{addr}/sources/platform/revisions/{main}"));
    let seen = browser.text();
    browser.screenshot("platform-applied");
    assert!(seen.contains("As the head of the branch"), "{seen}");
    assert!(seen.contains(&format!("Secret {ns}/creds")), "{seen}");
    assert!(seen.contains("applied"), "{seen}");
    assert!(seen.contains("current"), "a health column: {seen}");

    // Readable on a phone: nothing wider than its 390 px viewport.
    let wide = browser.eval("return document.documentElement.scrollWidth;");
    assert!(
        wide.as_u64().unwrap_or(9999) <= 390,
        "page is {wide} px wide"
    );

    // The raw HTML too: no Secret value, and a policy that refuses scripts.
    for page in [
        format!("/sources/platform/revisions/{pr}"),
        format!("/sources/platform/revisions/{main}"),
        "/sources/platform".to_string(),
        "/".to_string(),
    ] {
        let (code, html) = http_get(addr, &page);
        assert_eq!(code, 200, "{page}");
        assert!(!html.contains("hunter"), "{page}:\n{html}");
        assert!(!html.contains("<script"), "{page}:\n{html}");
        let headers = head(addr, &page);
        assert!(
            headers.contains(&format!(
                "content-security-policy: {}",
                ferry::pages::CONTENT_SECURITY_POLICY
            )),
            "{headers}"
        );
    }
    let (code, html) = http_get(addr, &format!("/sources/dags/revisions/{}", "0".repeat(40)));
    assert_eq!(code, 404);
    assert!(html.contains("has not evaluated"), "{html}");
    // The JSON the page shows is still served, and offered by the page.
    let (code, _) = http_get(addr, &format!("/api/v1/status/dags/revisions/{broken}"));
    assert_eq!(code, 200);
    drop(browser);
    stop_ferry(ferry);
    fake.assert_nothing_rejected();
}
