//! Notifications to people: Slack incoming webhooks, Microsoft Teams
//! Workflows webhooks and a generic signed JSON webhook.
//!
//! Like GitHub reports, a notification is queued in a persisted outbox
//! (`<cache_dir>/notifications.json`, written atomically) and delivered by
//! a task of its own per receiver, so a slow or failing receiver never
//! delays a sync or another receiver. A receiver that answers 5xx, 429 or
//! not at all is retried with backoff; one that refuses (other 4xx) drops
//! that message, logged. Messages carry the event's one-line text and a
//! link to the revision page, never a secret.

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use hmac::Mac;
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, watch};

use crate::backoff::Backoff;
use crate::config::{NotificationConfig, NotificationKind};
use crate::metrics::Metrics;

const TIMEOUT: Duration = Duration::from_secs(15);
const MAX_BACKOFF: Duration = Duration::from_secs(300);
/// Per receiver; past it the oldest messages go (logged), so a receiver
/// gone for weeks cannot grow the file without bound.
const MAX_QUEUED: usize = 1000;

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    DagsPublished,
    DagsBlocked,
    PlatformApplied,
    PlatformFailed,
    DriftFound,
    DriftHealed,
    /// This process took the leader Lease (a standby taking over, or the first start).
    LeaderAcquired,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::DagsPublished => "dags_published",
            EventKind::DagsBlocked => "dags_blocked",
            EventKind::PlatformApplied => "platform_applied",
            EventKind::PlatformFailed => "platform_failed",
            EventKind::DriftFound => "drift_found",
            EventKind::DriftHealed => "drift_healed",
            EventKind::LeaderAcquired => "leader_acquired",
        }
    }

    fn bad(self) -> bool {
        matches!(
            self,
            EventKind::DagsBlocked | EventKind::PlatformFailed | EventKind::DriftFound
        )
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub kind: EventKind,
    /// The source it is about (absent for leader changes).
    pub source: Option<String>,
    pub commit: Option<String>,
    /// One line for a person.
    pub text: String,
    /// The revision page, when ferry knows its external URL.
    pub url: Option<String>,
    pub at: String,
}

impl Event {
    pub fn new(kind: EventKind, source: Option<&str>, commit: Option<&str>, text: &str) -> Event {
        Event {
            kind,
            source: source.map(str::to_string),
            commit: commit.map(str::to_string),
            text: crate::report::reporter::one_line(text, 1000),
            url: None,
            at: crate::status::timestamp(SystemTime::now()),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Queued {
    id: String,
    event: Event,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Outbox {
    #[serde(default)]
    seq: u64,
    /// By receiver name, oldest first.
    #[serde(default)]
    queues: BTreeMap<String, VecDeque<Queued>>,
}

struct Inner {
    receivers: Vec<NotificationConfig>,
    outbox: Mutex<Outbox>,
    path: PathBuf,
    external_url: Option<String>,
    wake: Notify,
    metrics: Arc<Metrics>,
}

/// The notification outbox and its delivery tasks.
#[derive(Clone)]
pub struct Notifier(Arc<Inner>);

#[derive(Debug, thiserror::Error)]
enum DeliveryError {
    #[error("{0}")]
    Retry(String),
    #[error("{0}")]
    Refused(String),
}

impl Notifier {
    /// None when no receiver is configured. Messages left by the last run
    /// are delivered first.
    pub fn open(
        receivers: &[NotificationConfig],
        cache_dir: &Path,
        external_url: Option<&str>,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<Option<Notifier>> {
        if receivers.is_empty() {
            return Ok(None);
        }
        let path = cache_dir.join("notifications.json");
        let mut outbox: Outbox = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|err| {
                tracing::warn!(path = %path.display(), error = %err, "unreadable notification outbox; starting empty");
                Outbox::default()
            }),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Outbox::default(),
            Err(err) => {
                return Err(anyhow::anyhow!(
                    "cannot read the notification outbox {}: {err}",
                    path.display()
                ));
            }
        };
        // Receivers removed from the config take their queues with them.
        outbox
            .queues
            .retain(|name, _| receivers.iter().any(|r| &r.name == name));
        count_queued(&metrics, receivers, &outbox);
        Ok(Some(Notifier(Arc::new(Inner {
            receivers: receivers.to_vec(),
            outbox: Mutex::new(outbox),
            path,
            external_url: external_url.map(|u| u.trim_end_matches('/').to_string()),
            wake: Notify::new(),
            metrics,
        }))))
    }

    /// Queues `event` for every receiver that wants it; never blocks on
    /// delivery.
    pub fn notify(&self, mut event: Event) {
        if let (Some(base), Some(source), Some(commit)) =
            (&self.0.external_url, &event.source, &event.commit)
        {
            event.url = Some(crate::pages::revision_url(base, source, commit));
        }
        let wanted: Vec<&NotificationConfig> = self
            .0
            .receivers
            .iter()
            .filter(|r| r.events.is_empty() || r.events.contains(&event.kind))
            .filter(|r| {
                r.sources.is_empty()
                    || event
                        .source
                        .as_ref()
                        .is_none_or(|s| r.sources.iter().any(|x| x == s))
            })
            .collect();
        if wanted.is_empty() {
            return;
        }
        self.change(|outbox| {
            for r in wanted {
                outbox.seq += 1;
                let queue = outbox.queues.entry(r.name.clone()).or_default();
                queue.push_back(Queued {
                    id: format!("{}-{}", std::process::id(), outbox.seq),
                    event: event.clone(),
                });
                while queue.len() > MAX_QUEUED {
                    if let Some(old) = queue.pop_front() {
                        tracing::warn!(receiver = %r.name, event = old.event.kind.as_str(), "notification outbox full; dropping the oldest message");
                    }
                }
            }
        });
        self.0.wake.notify_waiters();
    }

    fn change(&self, f: impl FnOnce(&mut Outbox)) {
        let mut outbox = self.0.outbox.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut outbox);
        count_queued(&self.0.metrics, &self.0.receivers, &outbox);
        if let Err(err) = save(&self.0.path, &outbox) {
            // Delivery goes on from memory; only a restart could lose these.
            tracing::warn!(path = %self.0.path.display(), error = %err, "cannot save the notification outbox");
        }
    }

    /// Delivers every receiver's queue until `shutdown`.
    pub async fn run(self, shutdown: watch::Receiver<bool>) {
        let mut tasks = tokio::task::JoinSet::new();
        for receiver in self.0.receivers.clone() {
            tasks.spawn(self.clone().deliver_to(receiver, shutdown.clone()));
        }
        while tasks.join_next().await.is_some() {}
    }

    async fn deliver_to(self, receiver: NotificationConfig, mut shutdown: watch::Receiver<bool>) {
        let mut backoff = Backoff::new(MAX_BACKOFF);
        loop {
            if *shutdown.borrow() {
                return;
            }
            // Registered before looking, so a message queued meanwhile wakes us.
            let woken = self.0.wake.notified();
            let head = {
                let outbox = self.0.outbox.lock().unwrap_or_else(|e| e.into_inner());
                outbox
                    .queues
                    .get(&receiver.name)
                    .and_then(|q| q.front().cloned())
            };
            let Some(queued) = head else {
                tokio::select! {
                    _ = woken => continue,
                    _ = shutdown.wait_for(|stop| *stop) => return,
                }
            };
            let r = receiver.clone();
            let q = queued.clone();
            let sent = tokio::task::spawn_blocking(move || send(&r, &q))
                .await
                .unwrap_or_else(|e| Err(DeliveryError::Retry(e.to_string())));
            let outcome = match &sent {
                Ok(()) => "ok",
                Err(DeliveryError::Refused(_)) => "refused",
                Err(DeliveryError::Retry(_)) => "retried",
            };
            self.0
                .metrics
                .notifications
                .get_or_create(&crate::metrics::NotificationLabels {
                    receiver: receiver.name.clone(),
                    outcome: outcome.into(),
                })
                .inc();
            match sent {
                Err(DeliveryError::Retry(why)) => {
                    let delay = backoff.next_delay();
                    tracing::warn!(receiver = %receiver.name, error = %why, retry_in_ms = delay.as_millis() as u64, "cannot deliver a notification; will retry");
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = shutdown.wait_for(|stop| *stop) => return,
                    }
                    continue;
                }
                Err(DeliveryError::Refused(why)) => {
                    tracing::error!(receiver = %receiver.name, error = %why, event = queued.event.kind.as_str(), "the receiver refused a notification; dropping it");
                }
                Ok(()) => {
                    tracing::debug!(receiver = %receiver.name, event = queued.event.kind.as_str(), "notification delivered");
                }
            }
            backoff.reset();
            self.change(|outbox| {
                if let Some(queue) = outbox.queues.get_mut(&receiver.name)
                    && queue.front() == Some(&queued)
                {
                    queue.pop_front();
                }
            });
        }
    }
}

fn count_queued(metrics: &Metrics, receivers: &[NotificationConfig], outbox: &Outbox) {
    for r in receivers {
        let queued = outbox.queues.get(&r.name).map_or(0, VecDeque::len);
        metrics
            .notifications_queued
            .get_or_create(&crate::metrics::ReceiverLabels {
                receiver: r.name.clone(),
            })
            .set(queued as i64);
    }
}

fn save(path: &Path, outbox: &Outbox) -> std::io::Result<()> {
    crate::disk::write_atomic(path, &serde_json::to_vec(outbox)?)
}

/// The receiver's body for `queued`.
fn body(kind: NotificationKind, queued: &Queued) -> serde_json::Value {
    let event = &queued.event;
    let mark = if event.kind.bad() { "🔴" } else { "🟢" };
    let what = match &event.source {
        Some(source) => format!("{mark} ferry `{source}`: {}", event.text),
        None => format!("{mark} ferry: {}", event.text),
    };
    match kind {
        NotificationKind::Slack => {
            let text = match &event.url {
                Some(url) => format!("{what}\n<{url}|What ferry concluded>"),
                None => what,
            };
            serde_json::json!({ "text": text })
        }
        NotificationKind::Teams => {
            let actions: Vec<serde_json::Value> = event
                .url
                .iter()
                .map(|url| serde_json::json!({"type": "Action.OpenUrl", "title": "What ferry concluded", "url": url}))
                .collect();
            serde_json::json!({
                "type": "message",
                "attachments": [{
                    "contentType": "application/vnd.microsoft.card.adaptive",
                    "content": {
                        "type": "AdaptiveCard",
                        "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
                        "version": "1.4",
                        "body": [{"type": "TextBlock", "text": what, "wrap": true}],
                        "actions": actions,
                    }
                }]
            })
        }
        NotificationKind::Webhook => serde_json::json!({
            "id": queued.id,
            "event": event.kind.as_str(),
            "source": event.source,
            "commit": event.commit,
            "text": event.text,
            "url": event.url,
            "at": event.at,
        }),
    }
}

/// One delivery attempt (blocking).
fn send(receiver: &NotificationConfig, queued: &Queued) -> Result<(), DeliveryError> {
    let url = match (&receiver.url, &receiver.url_file) {
        (Some(url), _) => url.clone(),
        (None, Some(file)) => crate::secret::from_file(file)
            .map_err(|e| DeliveryError::Retry(format!("url_file: {e}")))?
            .expose()
            .to_string(),
        (None, None) => return Err(DeliveryError::Refused("no URL configured".into())),
    };
    let bytes = body(receiver.kind, queued).to_string().into_bytes();
    let mut request = crate::http::Request::post_json(&url, bytes.clone(), TIMEOUT)
        .header("X-Ferry-Event", queued.event.kind.as_str().to_string())
        .header("X-Ferry-Delivery", queued.id.clone());
    if let Some(file) = &receiver.secret_file {
        let secret = crate::secret::from_file(file)
            .map_err(|e| DeliveryError::Retry(format!("secret_file: {e}")))?;
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.expose().as_bytes())
            .map_err(|e| DeliveryError::Refused(e.to_string()))?;
        mac.update(&bytes);
        let signature = crate::report::reporter::hex(&mac.finalize().into_bytes());
        request = request.header("X-Ferry-Signature-256", format!("sha256={signature}"));
    }
    // The URL may be the credential (Slack, Teams): errors name the receiver, not it.
    let response =
        crate::http::send(request).map_err(|e| DeliveryError::Retry(redact(&e, &url)))?;
    let status = response.status;
    if status.is_success() {
        return Ok(());
    }
    let said = String::from_utf8_lossy(&response.body)
        .chars()
        .take(200)
        .collect::<String>();
    let message = format!("HTTP {status}: {}", redact(&said, &url));
    if status.is_server_error() || status == crate::http::StatusCode::TOO_MANY_REQUESTS {
        Err(DeliveryError::Retry(message))
    } else {
        Err(DeliveryError::Refused(message))
    }
}

fn redact(text: &str, url: &str) -> String {
    text.replace(url, "<receiver URL>")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queued(kind: EventKind, url: Option<&str>) -> Queued {
        let mut event = Event::new(
            kind,
            Some("dags"),
            Some("abc"),
            "not published: dags/a.py:3: syntax error",
        );
        event.url = url.map(str::to_string);
        Queued {
            id: "1-1".into(),
            event,
        }
    }

    #[test]
    fn each_receiver_gets_its_own_shape_with_the_link() {
        let q = queued(
            EventKind::DagsBlocked,
            Some("https://ferry.example/sources/dags/revisions/abc"),
        );
        let slack = body(NotificationKind::Slack, &q);
        assert_eq!(
            slack["text"],
            "🔴 ferry `dags`: not published: dags/a.py:3: syntax error\n<https://ferry.example/sources/dags/revisions/abc|What ferry concluded>"
        );
        let teams = body(NotificationKind::Teams, &q);
        let card = &teams["attachments"][0]["content"];
        assert_eq!(card["type"], "AdaptiveCard");
        assert_eq!(
            card["actions"][0]["url"],
            "https://ferry.example/sources/dags/revisions/abc"
        );
        let hook = body(NotificationKind::Webhook, &q);
        assert_eq!(hook["event"], "dags_blocked");
        assert_eq!(hook["commit"], "abc");
    }
}
