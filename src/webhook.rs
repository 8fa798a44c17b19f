//! `POST /webhooks/github`: signed deliveries poke the right source.
//!
//! Every request is authenticated before anything else is looked at: the
//! `X-Hub-Signature-256` HMAC over the raw body, compared in constant time,
//! with the secret re-read from its file (rotation needs no restart). Only
//! then is a delivery id remembered, so unauthenticated traffic cannot fill
//! the dedupe memory. A push to a tracked branch pokes that source's
//! trigger; polling stays on, so a lost delivery costs one interval.

use std::collections::{HashSet, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use axum::http::{HeaderMap, StatusCode};
use hmac::{Hmac, Mac};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use serde::Deserialize;
use sha2::Sha256;

use crate::metrics::WebhookLabels;
use crate::secret;
use crate::trigger::PreviewQueue;
use crate::trigger::Trigger;

/// GitHub's own limit for webhook payloads is 25 MB; ferry needs far less.
pub const MAX_BODY: usize = 5 * 1024 * 1024;
/// Delivery ids remembered for deduplication (oldest forgotten first).
const REMEMBERED: usize = 4096;

/// One tracked (repository, branch) and the source it pokes.
pub struct Route {
    pub repo: String,
    pub branch: String,
    pub source: String,
    pub trigger: Trigger,
    /// Present when the source takes pull request previews.
    pub previews: Option<PreviewQueue>,
}

pub struct Receiver {
    secret_file: PathBuf,
    routes: Vec<Route>,
    seen: Mutex<(HashSet<String>, VecDeque<String>)>,
    pub counts: Family<WebhookLabels, Counter>,
}

#[derive(Deserialize)]
struct PushEvent {
    #[serde(rename = "ref")]
    reference: String,
    repository: Repository,
}

#[derive(Deserialize)]
struct PullRequestEvent {
    action: String,
    number: u64,
    pull_request: PullRequest,
    repository: Repository,
}

#[derive(Deserialize)]
struct PullRequest {
    head: GitRef,
    base: GitRef,
}

#[derive(Deserialize)]
struct GitRef {
    #[serde(rename = "ref")]
    reference: String,
    sha: String,
}

#[derive(Deserialize)]
struct Repository {
    full_name: String,
}

impl Receiver {
    pub fn new(
        secret_file: PathBuf,
        routes: Vec<Route>,
        counts: Family<WebhookLabels, Counter>,
    ) -> Arc<Receiver> {
        // Present from the start (at zero), like every other series.
        let _ = counts.get_or_create(&WebhookLabels {
            event: "push".into(),
            outcome: "triggered".into(),
        });
        Arc::new(Receiver {
            secret_file,
            routes,
            seen: Mutex::new((HashSet::new(), VecDeque::new())),
            counts,
        })
    }

    fn count(&self, event: &str, outcome: &str) {
        self.counts
            .get_or_create(&WebhookLabels {
                event: event.to_string(),
                outcome: outcome.to_string(),
            })
            .inc();
    }

    /// Handles one delivery; returns the HTTP status and a short message.
    pub fn handle(&self, headers: &HeaderMap, body: &[u8]) -> (StatusCode, String) {
        let header = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
        };
        let event = header("x-github-event").to_string();
        let event_label = if event.is_empty() {
            "unknown"
        } else {
            event.as_str()
        };
        let secret = match secret::from_file(&self.secret_file) {
            Ok(s) => s,
            Err(err) => {
                tracing::error!(error = %err, "webhook secret unreadable; refusing deliveries");
                return (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "webhook secret unavailable\n".into(),
                );
            }
        };
        if !signature_valid(
            secret.expose().as_bytes(),
            header("x-hub-signature-256"),
            body,
        ) {
            self.count(event_label, "unauthorized");
            return (
                StatusCode::UNAUTHORIZED,
                "missing or invalid X-Hub-Signature-256\n".into(),
            );
        }
        let delivery = header("x-github-delivery").to_string();
        if !delivery.is_empty() && !self.remember(&delivery) {
            self.count(event_label, "duplicate");
            return (
                StatusCode::OK,
                format!("delivery {delivery} already handled\n"),
            );
        }
        let body = match json_payload(header("content-type"), body) {
            Ok(payload) => payload,
            Err((status, message)) => {
                self.count(event_label, "bad_request");
                return (status, message);
            }
        };
        let body = body.as_ref();
        match event.as_str() {
            "ping" => {
                self.count("ping", "pong");
                (StatusCode::OK, "pong\n".into())
            }
            "push" => {
                let Ok(push) = serde_json::from_slice::<PushEvent>(body) else {
                    self.count("push", "bad_request");
                    return (
                        StatusCode::BAD_REQUEST,
                        "push payload without ref or repository.full_name\n".into(),
                    );
                };
                let repo = push.repository.full_name.to_ascii_lowercase();
                let poked: Vec<&str> = self
                    .routes
                    .iter()
                    .filter(|r| {
                        r.repo == repo && push.reference == format!("refs/heads/{}", r.branch)
                    })
                    .map(|r| {
                        r.trigger.poke();
                        r.source.as_str()
                    })
                    .collect();
                if poked.is_empty() {
                    self.count("push", "ignored");
                    (
                        StatusCode::ACCEPTED,
                        format!("ignored: {} {} is not tracked\n", repo, push.reference),
                    )
                } else {
                    tracing::info!(repo = %repo, reference = %push.reference, sources = ?poked, %delivery, "webhook: sync triggered");
                    self.count("push", "triggered");
                    (
                        StatusCode::OK,
                        format!("sync triggered: {}\n", poked.join(", ")),
                    )
                }
            }
            "pull_request" => self.pull_request(body, &delivery),
            other => {
                self.count(event_label, "ignored");
                (StatusCode::ACCEPTED, format!("ignored event `{other}`\n"))
            }
        }
    }

    /// `opened`, `synchronize` and `reopened` on a PR against a tracked
    /// branch queue a preview of its head and poke the source's worker.
    fn pull_request(&self, body: &[u8], delivery: &str) -> (StatusCode, String) {
        let Ok(event) = serde_json::from_slice::<PullRequestEvent>(body) else {
            self.count("pull_request", "bad_request");
            return (
                StatusCode::BAD_REQUEST,
                "pull_request payload without action, number, pull_request.head/base or repository.full_name\n".into(),
            );
        };
        if !matches!(event.action.as_str(), "opened" | "synchronize" | "reopened") {
            self.count("pull_request", "ignored");
            return (
                StatusCode::ACCEPTED,
                format!("ignored: pull_request `{}`\n", event.action),
            );
        }
        let repo = event.repository.full_name.to_ascii_lowercase();
        let mut queued = Vec::new();
        for route in &self.routes {
            if route.repo != repo || route.branch != event.pull_request.base.reference {
                continue;
            }
            if let Some(previews) = &route.previews {
                previews.request(event.number, &event.pull_request.head.sha);
                route.trigger.poke();
                queued.push(route.source.as_str());
            }
        }
        if queued.is_empty() {
            self.count("pull_request", "ignored");
            return (
                StatusCode::ACCEPTED,
                format!(
                    "ignored: no source previews {repo} pull requests into `{}`\n",
                    event.pull_request.base.reference
                ),
            );
        }
        tracing::info!(repo = %repo, pr = event.number, head = %event.pull_request.head.sha, head_ref = %event.pull_request.head.reference, sources = ?queued, %delivery, "webhook: preview queued");
        self.count("pull_request", "preview");
        (
            StatusCode::OK,
            format!("preview queued: {}\n", queued.join(", ")),
        )
    }

    /// True when the id is new; remembers it, forgetting the oldest.
    fn remember(&self, delivery: &str) -> bool {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        let (set, order) = &mut *seen;
        if !set.insert(delivery.to_string()) {
            return false;
        }
        order.push_back(delivery.to_string());
        if order.len() > REMEMBERED
            && let Some(old) = order.pop_front()
        {
            set.remove(&old);
        }
        true
    }
}

/// The JSON document of a delivery. GitHub sends either JSON or, when the
/// webhook's "Content type" is `application/x-www-form-urlencoded`, a form
/// whose `payload` field holds the JSON. The signature covers the raw body
/// either way, so this runs after it was checked.
fn json_payload<'a>(
    content_type: &str,
    body: &'a [u8],
) -> Result<std::borrow::Cow<'a, [u8]>, (StatusCode, String)> {
    let media = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    match media.as_str() {
        "" | "application/json" => Ok(std::borrow::Cow::Borrowed(body)),
        "application/x-www-form-urlencoded" => form_urlencoded::parse(body)
            .find(|(key, _)| key == "payload")
            .map(|(_, value)| std::borrow::Cow::Owned(value.into_owned().into_bytes()))
            .ok_or_else(|| {
                (
                    StatusCode::BAD_REQUEST,
                    "form-encoded delivery without a `payload` field\n".to_string(),
                )
            }),
        other => Err((
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!(
                "unsupported Content-Type `{other}`: set the GitHub webhook's \"Content type\" to application/json\n"
            ),
        )),
    }
}

/// `sha256=<hex>` HMAC-SHA256 of `body`; compared in constant time.
pub fn signature_valid(secret: &[u8], header: &str, body: &[u8]) -> bool {
    let Some(hex) = header.strip_prefix("sha256=") else {
        return false;
    };
    let Some(expected) = decode_hex(hex) else {
        return false;
    };
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret) else {
        return false;
    };
    mac.update(body);
    mac.verify_slice(&expected).is_ok()
}

/// The header value GitHub would send for `body`.
pub fn sign(secret: &[u8], body: &[u8]) -> String {
    let mut mac = match Hmac::<Sha256>::new_from_slice(secret) {
        Ok(m) => m,
        Err(_) => return String::new(),
    };
    mac.update(body);
    let digest = mac.finalize().into_bytes();
    format!(
        "sha256={}",
        digest
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    )
}

fn decode_hex(hex: &str) -> Option<Vec<u8>> {
    if !hex.len().is_multiple_of(2) {
        return None;
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_githubs_documented_test_vector() {
        // From GitHub's "Validating webhook deliveries" page.
        let header = sign(b"It's a Secret to Everybody", b"Hello, World!");
        assert_eq!(
            header,
            "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
        );
    }

    #[test]
    fn form_deliveries_yield_their_payload_and_other_types_are_refused() {
        let json = br#"{"ref":"refs/heads/main"}"#;
        assert_eq!(
            json_payload("application/json; charset=utf-8", json)
                .unwrap()
                .as_ref(),
            json
        );
        let form = b"payload=%7B%22ref%22%3A%22refs%2Fheads%2Fmain%22%7D";
        assert_eq!(
            json_payload("application/x-www-form-urlencoded", form)
                .unwrap()
                .as_ref(),
            json
        );
        let (status, message) =
            json_payload("application/x-www-form-urlencoded", b"other=1").unwrap_err();
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(message.contains("`payload`"), "{message}");
        let (status, message) = json_payload("text/xml", json).unwrap_err();
        assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
        assert!(message.contains("application/json"), "{message}");
    }

    #[test]
    fn signatures_verify_and_reject() {
        let body = br#"{"zen":"Keep it logically awesome."}"#;
        let header = sign(b"s3cret", body);
        assert!(header.starts_with("sha256=") && header.len() == 7 + 64);
        assert!(signature_valid(b"s3cret", &header, body));
        assert!(!signature_valid(b"other", &header, body));
        assert!(!signature_valid(b"s3cret", &header, b"tampered"));
        assert!(!signature_valid(b"s3cret", "", body));
        assert!(!signature_valid(b"s3cret", "sha1=abcd", body));
        assert!(!signature_valid(b"s3cret", "sha256=zz", body));
    }
}
