//! Notifications from a running ferry to receivers on 127.0.0.1: one
//! message per event, retried while a receiver answers 500, signed where
//! asked, never holding a secret.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hmac::Mac;
use serde_json::Value;

use crate::support::*;

/// One request a receiver got: (path, headers in lowercase, body).
type Got = (String, Vec<(String, String)>, String);

/// An HTTP receiver answering 500 to its first `failures` requests, 200 after.
struct Receiver {
    port: u16,
    got: Arc<Mutex<Vec<Got>>>,
    answered_500: Arc<Mutex<usize>>,
}

impl Receiver {
    fn start(failures: usize) -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let got = Arc::new(Mutex::new(Vec::new()));
        let answered_500 = Arc::new(Mutex::new(0));
        let (g, a) = (got.clone(), answered_500.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut line = String::new();
                if reader.read_line(&mut line).is_err() {
                    continue;
                }
                let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
                let mut headers = Vec::new();
                loop {
                    let mut h = String::new();
                    if reader.read_line(&mut h).unwrap_or(0) == 0 || h.trim().is_empty() {
                        break;
                    }
                    if let Some((k, v)) = h.trim().split_once(':') {
                        headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
                    }
                }
                let length: usize = headers
                    .iter()
                    .find(|(k, _)| k == "content-length")
                    .and_then(|(_, v)| v.parse().ok())
                    .unwrap_or(0);
                let mut body = vec![0; length];
                let _ = reader.read_exact(&mut body);
                let mut failed = a.lock().unwrap();
                let status = if *failed < failures {
                    *failed += 1;
                    "500 Internal Server Error"
                } else {
                    g.lock().unwrap().push((
                        path,
                        headers,
                        String::from_utf8_lossy(&body).into_owned(),
                    ));
                    "200 OK"
                };
                drop(failed);
                let _ = write!(
                    stream,
                    "HTTP/1.1 {status}\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
                );
            }
        });
        Receiver {
            port,
            got,
            answered_500,
        }
    }

    fn got(&self) -> Vec<Got> {
        self.got.lock().unwrap().clone()
    }
}

#[test]
fn people_are_told_once_per_event_retried_signed_and_without_secrets() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = Repo::new(tmp.path(), "dags");
    let good = repo.commit(&[("dags/a.py", Some("a = 1\n"))], "good");
    let daemon = git_daemon(tmp.path(), free_port());
    let slack = Receiver::start(2);
    let teams = Receiver::start(0);
    let hook = Receiver::start(1);
    // The Slack URL is a credential (its path holds the token).
    let slack_url = format!(
        "http://127.0.0.1:{}/services/T000/B000/slackSecretToken123",
        slack.port
    );
    std::fs::write(tmp.path().join("slack-url"), format!("{slack_url}\n")).unwrap();
    std::fs::write(
        tmp.path().join("teams-url"),
        format!(
            "http://127.0.0.1:{}/workflows/teamsSecretSig456",
            teams.port
        ),
    )
    .unwrap();
    let secret = "webhookSecret789";
    std::fs::write(tmp.path().join("hook-secret"), secret).unwrap();
    let port = free_port();
    let dest = tmp.path().join("dest");
    let config = dags_daemon_config(tmp.path(), port, daemon.port, &dest);
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str(&format!(
        "notifications:\n\
         \x20 - {{name: data-science, type: slack, url_file: {slack}, events: [dags_blocked]}}\n\
         \x20 - {{name: oncall, type: teams, url_file: {teams}, sources: [dags]}}\n\
         \x20 - {{name: audit, type: webhook, url: http://127.0.0.1:{hp}/ferry, secret_file: {secret}}}\n",
        slack = tmp.path().join("slack-url").display(),
        teams = tmp.path().join("teams-url").display(),
        hp = hook.port,
        secret = tmp.path().join("hook-secret").display(),
    ));
    std::fs::write(&config, text).unwrap();
    let ferry = spawn_ferry(&config, &tmp.path().join("ferry.log"), port, &[]);
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();

    // A publish, then a blocked commit.
    eventually(Duration::from_secs(30), "the first publish told", || {
        (teams.got().len() == 1 && hook.got().len() == 1).then_some(())
    });
    let bad = repo.commit(&[("dags/b.py", Some("def broken(:\n"))], "bad");
    eventually(Duration::from_secs(60), "the block told everyone", || {
        (slack.got().len() == 1 && teams.got().len() == 2 && hook.got().len() == 2).then_some(())
    });
    // Settle: a later poll must not tell anyone again.
    std::thread::sleep(Duration::from_secs(3));
    let (_, metrics) = http_get(addr, "/metrics");
    stop_ferry(ferry);

    // Slack: only what it asked for, after two 500s, linking the revision page.
    assert_eq!(*slack.answered_500.lock().unwrap(), 2);
    let slack_got = slack.got();
    assert_eq!(slack_got.len(), 1, "{slack_got:#?}");
    assert_eq!(slack_got[0].0, "/services/T000/B000/slackSecretToken123");
    let body: Value = serde_json::from_str(&slack_got[0].2).unwrap();
    let text = body["text"].as_str().unwrap();
    assert!(
        text.contains("ferry `dags`: ")
            && text.contains("dags/b.py:1")
            && text.contains(&format!(
                "<http://127.0.0.1:{port}/sources/dags/revisions/{bad}|"
            )),
        "{text}"
    );

    // Teams: both events, as Adaptive Cards.
    let teams_got = teams.got();
    let card = |i: usize| -> Value { serde_json::from_str(&teams_got[i].2).unwrap() };
    assert_eq!(card(0)["attachments"][0]["content"]["type"], "AdaptiveCard");
    assert!(
        card(0)["attachments"][0]["content"]["actions"][0]["url"]
            .as_str()
            .unwrap()
            .ends_with(&format!("/revisions/{good}"))
    );

    // The webhook: every event once, in order, each signed over its body.
    let hook_got = hook.got();
    let events: Vec<(String, String)> = hook_got
        .iter()
        .map(|(_, _, body)| {
            let v: Value = serde_json::from_str(body).unwrap();
            (
                v["event"].as_str().unwrap().to_string(),
                v["commit"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        events,
        [
            ("dags_published".to_string(), good.clone()),
            ("dags_blocked".to_string(), bad.clone())
        ]
    );
    for (path, headers, body) in &hook_got {
        assert_eq!(path, "/ferry");
        let header = |name: &str| {
            headers
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
                .unwrap_or_default()
        };
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
        mac.update(body.as_bytes());
        let want: String = mac
            .finalize()
            .into_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(header("x-ferry-signature-256"), format!("sha256={want}"));
        assert!(!header("x-ferry-event").is_empty());
    }

    // No secret in any message, nor in ferry's log.
    let log = std::fs::read_to_string(tmp.path().join("ferry.log")).unwrap();
    for secret in ["slackSecretToken123", "teamsSecretSig456", secret] {
        for (_, _, body) in slack_got.iter().chain(&teams_got).chain(&hook_got) {
            assert!(!body.contains(secret), "{secret} in {body}");
        }
        assert!(!log.contains(secret), "{secret} in the log:\n{log}");
    }
    assert_series(
        &metrics,
        "ferry_notifications_total{receiver=\"data-science\",outcome=\"retried\"}",
        2.0,
    );
    assert_series(
        &metrics,
        "ferry_notifications_queued{receiver=\"audit\"}",
        0.0,
    );
}
