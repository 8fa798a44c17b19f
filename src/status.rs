//! What ferry knows about each source right now: the data behind
//! `/api/v1/status`, `/readyz` and (later) GitHub reports.
//!
//! Only commit ids, URLs without credentials, file paths and error messages
//! live here; config validation guarantees URLs carry no password, and error
//! messages are built from typed errors that never hold a secret.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use serde::Serialize;

use crate::dags::{DagsOutcome, HookReport, Problem, RetentionReport};
use crate::kubernetes::apply::ApplyOutcome;
use crate::suspend::Suspension;

#[derive(Debug, Clone, Serialize)]
pub struct ErrorReport {
    /// Short machine-readable kind: `fetch`, `validation`, `publish`, ...
    pub kind: &'static str,
    pub message: String,
    /// Commit the error belongs to, when known.
    pub commit: Option<String>,
    pub file: Option<String>,
    pub line: Option<usize>,
    pub problems: Vec<Problem>,
    pub hook: Option<HookReport>,
    pub at: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct SourceStatus {
    pub name: String,
    pub url: String,
    pub branch: String,
    /// Last commit fetched from the branch.
    pub revision: Option<String>,
    /// Commit the DAGs link points at (DAGs sources only).
    pub published_revision: Option<String>,
    /// Who signed `revision`, when the source verifies signatures
    /// (`principal (SHA256:fingerprint)`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signed_by: Option<String>,
    pub last_attempt: Option<String>,
    pub last_success: Option<String>,
    pub last_error: Option<ErrorReport>,
    pub consecutive_failures: u32,
    pub next_attempt: Option<String>,
    pub last_outcome: Option<DagsOutcome>,
    /// DAG revisions kept on the volume and why (DAGs sources only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retention: Option<RetentionReport>,
    /// Kubernetes target fed by this source, if any.
    pub kubernetes: Option<KubeStatus>,
    /// AWS target (platform.yaml) fed by this source, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub aws: Option<AwsStatus>,
    /// True once the first sync attempt has finished, whatever its result.
    pub first_sync_done: bool,
    /// Set while the source is suspended: nothing is applied.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub suspended: Option<Suspension>,
    /// Sync attempts begun and finished since start, whatever their
    /// result: what `ferry sync` waits on.
    pub syncs_started: u64,
    pub syncs: u64,
    /// One word for people and the CLI; see [`SourceStatus::state`].
    pub state: &'static str,
}

impl SourceStatus {
    /// `suspended`, `refused` (the head was refused and the last good
    /// revision stays: a new commit is needed), `failing` (ferry cannot
    /// finish a sync: it retries), `drifted` (the cluster or AWS differs
    /// from the applied revision), `synced`, or `pending` (no sync yet).
    pub fn state(&self) -> &'static str {
        let drifted = self
            .kubernetes
            .as_ref()
            .is_some_and(|k| !k.drift.is_empty())
            || self.aws.as_ref().is_some_and(|a| !a.drift.is_empty());
        match (&self.suspended, &self.last_error) {
            (Some(_), _) => "suspended",
            (None, Some(e)) if refusal(e.kind) => "refused",
            (None, Some(_)) => "failing",
            (None, None) if drifted => "drifted",
            (None, None) if self.first_sync_done => "synced",
            (None, None) => "pending",
        }
    }
}

/// Is `kind` (a `last_error.kind`) a head refused for what it is, which
/// evaluating again would refuse again?
fn refusal(kind: &str) -> bool {
    use crate::verdict::{ALL, Retry, policy};
    ALL.iter()
        .map(|r| policy(*r))
        .any(|p| p.label == kind && p.retry == Retry::WaitForGit)
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct KubeStatus {
    /// Last revision applied with every object applied and healthy.
    pub applied_revision: Option<String>,
    pub last_apply: Option<ApplyOutcome>,
    /// Objects that differ from the applied revision at the last check.
    pub drift: Vec<String>,
    pub last_drift_check: Option<String>,
}

/// What ferry concluded about one commit: the page a GitHub status or
/// deployment links to.
#[derive(Debug, Clone, Serialize)]
pub struct RevisionRecord {
    pub revision: String,
    /// `branch` (evaluated for apply) or `preview` (a pull request head).
    pub origin: &'static str,
    pub pull_request: Option<u64>,
    /// `pending`, `success`, `failure` or `error`.
    pub state: &'static str,
    pub description: String,
    pub at: String,
    /// From `pending` to this verdict, when ferry saw both.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    /// The whole result: the plan, the problems, the outcome.
    pub detail: Option<serde_json::Value>,
    #[serde(skip)]
    pub started: Option<SystemTime>,
}

impl RevisionRecord {
    /// A record of `revision` as of now; `origin` as [`RevisionRecord::origin`].
    pub fn new(
        revision: String,
        origin: &'static str,
        pull_request: Option<u64>,
        state: &'static str,
        description: String,
        detail: Option<serde_json::Value>,
    ) -> RevisionRecord {
        let now = SystemTime::now();
        RevisionRecord {
            revision,
            origin,
            pull_request,
            state,
            description,
            at: timestamp(now),
            duration_ms: None,
            detail,
            started: Some(now),
        }
    }
}

/// Revision records kept per source (the newest).
const REVISIONS_KEPT: usize = 50;

#[derive(Debug, Clone, Default, Serialize)]
pub struct AwsStatus {
    /// Last revision whose every change applied.
    pub applied_revision: Option<String>,
    /// Each change's result, drift ferry will not fix, cleaned-up resources.
    pub last_apply: Option<serde_json::Value>,
    /// Differences between AWS and the applied revision at the last check.
    pub drift: Vec<String>,
    pub last_drift_check: Option<String>,
}

#[derive(Clone, Default)]
pub struct StatusStore {
    inner: Arc<RwLock<BTreeMap<String, SourceStatus>>>,
    revisions: Arc<RwLock<BTreeMap<String, VecDeque<RevisionRecord>>>>,
    /// Why this process does not sync yet (waiting for the leader Lease).
    standby: Arc<RwLock<Option<String>>>,
}

pub fn timestamp(at: SystemTime) -> String {
    humantime::format_rfc3339_millis(at).to_string()
}

impl StatusStore {
    pub fn register(&self, name: &str, url: &str, branch: &str) {
        let mut map = self.write();
        map.insert(
            name.to_string(),
            SourceStatus {
                name: name.to_string(),
                url: url.to_string(),
                branch: branch.to_string(),
                revision: None,
                published_revision: None,
                signed_by: None,
                last_attempt: None,
                last_success: None,
                last_error: None,
                consecutive_failures: 0,
                next_attempt: None,
                last_outcome: None,
                retention: None,
                kubernetes: None,
                aws: None,
                first_sync_done: false,
                suspended: None,
                syncs_started: 0,
                syncs: 0,
                state: "pending",
            },
        );
    }

    pub fn update(&self, name: &str, f: impl FnOnce(&mut SourceStatus)) {
        if let Some(status) = self.write().get_mut(name) {
            f(status);
            status.state = status.state();
        }
    }

    pub fn get(&self, name: &str) -> Option<SourceStatus> {
        self.read().get(name).cloned()
    }

    pub fn all(&self) -> Vec<SourceStatus> {
        self.read().values().cloned().collect()
    }

    /// Records (or replaces) what is known about one revision.
    pub fn record_revision(&self, source: &str, record: RevisionRecord) {
        let mut map = self.revisions.write().unwrap_or_else(|e| e.into_inner());
        let list = map.entry(source.to_string()).or_default();
        let (revision, origin) = (record.revision.clone(), record.origin);
        let same = |r: &RevisionRecord| r.revision == revision && r.origin == origin;
        // A verdict replaces its `pending`: the evaluation took the time
        // between them.
        let mut record = record;
        // A new `pending` starts the clock again (a held commit evaluated at last).
        let pending = list.iter().find(|r| same(r) && r.state == "pending");
        if let Some(pending) = pending.filter(|_| record.state != "pending") {
            let made = std::mem::replace(&mut record.started, pending.started);
            record.duration_ms = pending
                .started
                .zip(made)
                .and_then(|(from, to)| to.duration_since(from).ok())
                .map(|d| d.as_millis() as u64);
        }
        list.retain(|r| !same(r));
        list.push_back(record);
        while list.len() > REVISIONS_KEPT {
            list.pop_front();
        }
    }

    /// The source's records, oldest first (at most [`REVISIONS_KEPT`]).
    pub fn history(&self, source: &str) -> Vec<RevisionRecord> {
        let map = self.revisions.read().unwrap_or_else(|e| e.into_inner());
        map.get(source)
            .map(|l| l.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// The records of one revision (an apply and a preview may both exist).
    pub fn revision(&self, source: &str, revision: &str) -> Vec<RevisionRecord> {
        let map = self.revisions.read().unwrap_or_else(|e| e.into_inner());
        map.get(source)
            .map(|l| {
                l.iter()
                    .filter(|r| r.revision == revision)
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    }

    pub fn ready(&self) -> bool {
        self.standby().is_none() && self.read().values().all(|s| s.first_sync_done)
    }

    pub fn set_standby(&self, reason: Option<String>) {
        *self.standby.write().unwrap_or_else(|e| e.into_inner()) = reason;
    }

    pub fn standby(&self) -> Option<String> {
        self.standby
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    // A panic while holding the lock poisons it; the data is plain values
    // that stay consistent field by field, so keep serving them.
    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, SourceStatus>> {
        self.inner.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<String, SourceStatus>> {
        self.inner.write().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_verdict_replaces_its_pending_and_takes_the_time_between() {
        let store = StatusStore::default();
        let pending =
            || RevisionRecord::new("c".into(), "branch", None, "pending", "…".into(), None);
        store.record_revision("s", pending());
        // Announced again (held, then evaluated): the clock starts here.
        std::thread::sleep(std::time::Duration::from_millis(1000));
        store.record_revision("s", pending());
        std::thread::sleep(std::time::Duration::from_millis(30));
        let done = RevisionRecord::new("c".into(), "branch", None, "success", "ok".into(), None);
        store.record_revision("s", done);
        let history = store.history("s");
        assert_eq!(history.len(), 1);
        assert_eq!(history[0].state, "success");
        let took = history[0].duration_ms.unwrap_or_default();
        assert!((30..1000).contains(&took), "{took}");
        // A preview of the same commit is a record of its own.
        let preview = RevisionRecord::new(
            "c".into(),
            "pull_request",
            Some(1),
            "success",
            "".into(),
            None,
        );
        store.record_revision("s", preview);
        assert_eq!(store.revision("s", "c").len(), 2);
        assert_eq!(store.history("s")[1].duration_ms, None);
    }
}
