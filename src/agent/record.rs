//! What a worker tells the status API, metrics, logs and GitHub about a
//! sync. Reads only results and target-neutral summaries.

use std::sync::Arc;
use std::time::SystemTime;

use git2::Oid;

use super::memory::Conclusion;
use super::{DriftCheck, SyncResult, Worker};
use crate::metrics::{self, FileLabels, KeptLabels, KubeObjectLabels, Metrics, ResultLabels};
use crate::preview::Preview;
use crate::status::{AwsStatus, ErrorReport, KubeStatus, RevisionRecord, StatusStore, timestamp};
use crate::targets::{Outcome, Target};
use crate::verdict::Retry;

/// Makes room in the status API for what `target` will report.
pub(super) fn register(status: &StatusStore, metrics: &Metrics, source: &str, target: &Target) {
    match target {
        Target::Dags(t) => {
            let live = t.live_commit().map(|c| c.to_string());
            if let Some(live) = &live {
                metrics.set_revision(source, live);
            }
            status.update(source, |s| s.published_revision = live);
        }
        Target::Kubernetes(_) => {
            status.update(source, |s| s.kubernetes = Some(KubeStatus::default()));
        }
        #[cfg(feature = "aws")]
        Target::Aws(_) => status.update(source, |s| s.aws = Some(AwsStatus::default())),
    }
}

pub(super) fn preview(metrics: &Arc<Metrics>, source: &str, preview: &Preview) {
    metrics
        .previews
        .get_or_create(&ResultLabels {
            source: source.to_string(),
            result: preview.state.as_str().to_string(),
        })
        .inc();
}

impl Worker {
    /// Puts a result in status, metrics and logs. Returns when to try again.
    pub(super) fn record(&self, result: &SyncResult, conclusion: Option<&Conclusion>) -> Retry {
        let name = &self.source.name;
        self.status.update(name, |s| s.syncs += 1);
        let label = match result {
            SyncResult::Unchanged { .. } | SyncResult::Drift { .. } => "unchanged",
            SyncResult::Evaluated { .. } => "success",
            SyncResult::Failed { failure, .. } => failure.policy().label,
        };
        self.metrics
            .syncs
            .get_or_create(&ResultLabels {
                source: name.clone(),
                result: label.to_string(),
            })
            .inc();
        let accepted = match result {
            SyncResult::Unchanged { commit } => {
                tracing::debug!(source = %name, commit = %commit, "unchanged");
                self.memory.accepted(*commit)
            }
            SyncResult::Drift { commit, checks } => {
                for check in checks {
                    self.record_drift(check);
                }
                self.memory.accepted(*commit)
            }
            SyncResult::Evaluated { commit, outcomes } => {
                if outcomes.is_empty() {
                    tracing::info!(source = %name, commit = %commit, "fetched");
                }
                for outcome in outcomes {
                    self.record_outcome(*commit, outcome);
                }
                self.metrics.set_revision(name, &commit.to_string());
                true
            }
            SyncResult::Failed {
                commit,
                failure,
                outcomes,
            } => {
                if let Some(commit) = commit {
                    for outcome in outcomes {
                        self.record_outcome(*commit, outcome);
                    }
                }
                let policy = failure.policy();
                tracing::warn!(source = %name, kind = policy.label, commit = ?commit.map(|c| c.to_string()), error = %failure, "sync failed");
                // A fetch failure has no conclusion: it always counts.
                let count = conclusion.is_none_or(|c| c.count_failure);
                let report = ErrorReport {
                    kind: policy.label,
                    message: failure.message.clone(),
                    commit: commit.map(|c| c.to_string()),
                    file: failure.problems.first().map(|p| p.file.clone()),
                    line: failure.problems.first().and_then(|p| p.line),
                    problems: failure.problems.clone(),
                    hook: failure.hook.as_deref().cloned(),
                    at: timestamp(SystemTime::now()),
                };
                self.status.update(name, |s| {
                    s.last_error = Some(report);
                    if count {
                        s.consecutive_failures += 1;
                    }
                    s.first_sync_done = true;
                });
                if count {
                    self.metrics
                        .consecutive_failures
                        .get_or_create(&metrics::source(name))
                        .inc();
                }
                return conclusion.map_or(Retry::Backoff, |c| c.retry);
            }
        };
        if accepted {
            let now = timestamp(SystemTime::now());
            let unix = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map(|d| d.as_secs_f64())
                .unwrap_or(0.0);
            self.metrics
                .last_success
                .get_or_create(&metrics::source(name))
                .set(unix);
            self.metrics
                .consecutive_failures
                .get_or_create(&metrics::source(name))
                .set(0);
            self.status.update(name, |s| {
                s.last_success = Some(now);
                s.last_error = None;
                s.consecutive_failures = 0;
                s.first_sync_done = true;
            });
        } else {
            self.status.update(name, |s| s.first_sync_done = true);
        }
        Retry::WaitForGit
    }

    /// Drift found (once per new set of differences) or healed.
    fn notify_drift(&self, check: &DriftCheck, healed: bool, remaining: &[String]) {
        use crate::notify::{Event, EventKind};
        let Some(notifier) = &self.notifier else {
            return;
        };
        let before = self
            .status
            .get(&self.source.name)
            .map(|s| match check.target {
                "kubernetes" => s.kubernetes.map(|k| k.drift).unwrap_or_default(),
                _ => s.aws.map(|a| a.drift).unwrap_or_default(),
            })
            .unwrap_or_default();
        let commit = check.applied.to_string();
        let (kind, text) = if healed && !check.drifted.is_empty() {
            (
                EventKind::DriftHealed,
                format!(
                    "{}: {} difference(s) from git healed ({})",
                    check.target,
                    check.drifted.len(),
                    check.drifted.join(", ")
                ),
            )
        } else if !remaining.is_empty() && remaining != before.as_slice() {
            (
                EventKind::DriftFound,
                format!(
                    "{}: {} difference(s) from git: {}",
                    check.target,
                    remaining.len(),
                    remaining.join(", ")
                ),
            )
        } else {
            return;
        };
        notifier.notify(Event::new(
            kind,
            Some(&self.source.name),
            Some(&commit),
            &text,
        ));
    }

    /// The last retention pass of a DAGs target, in status and metrics.
    /// It may have run in the background since the last sync.
    pub(super) fn record_housekeeping(&self) {
        let name = &self.source.name;
        for target in &self.targets {
            let Target::Dags(t) = target else { continue };
            let Some(report) = t.retention() else {
                continue;
            };
            let source = metrics::source(name);
            self.metrics
                .revisions_kept
                .get_or_create(&source)
                .set(report.kept.len() as i64);
            self.metrics
                .bytes_kept
                .get_or_create(&source)
                .set(i64::try_from(report.bytes_kept).unwrap_or(i64::MAX));
            for label in crate::dags::Reason::LABELS {
                let n = report
                    .kept
                    .iter()
                    .filter(|k| k.reasons.iter().any(|r| r.label() == label))
                    .count();
                self.metrics
                    .revisions_kept_by
                    .get_or_create(&KeptLabels {
                        source: name.clone(),
                        reason: label.to_string(),
                    })
                    .set(n as i64);
            }
            if let Some(check) = &report.airflow {
                self.metrics
                    .airflow_up
                    .get_or_create(&source)
                    .set(i64::from(check.answered));
            }
            self.status.update(name, |s| s.retention = Some(report));
        }
    }

    /// One target's outcome, in its part of the status and its metrics.
    fn record_outcome(&self, commit: Oid, outcome: &Outcome) {
        let name = &self.source.name;
        let ok = outcome.succeeded();
        match outcome {
            Outcome::Dags(o) => {
                if o.published {
                    tracing::info!(source = %name, commit = %o.commit, files_written = o.stats.files_written, files_linked = o.stats.files_linked, files_shared = o.stats.files_shared, mutations = o.stats.mutations, duration_ms = o.duration_ms, pruned = o.pruned.len(), "published DAGs");
                }
                for warning in &o.warnings {
                    tracing::warn!(source = %name, commit = %o.commit, problem = %warning, "published with a DAG problem (policy: warn)");
                }
                for (how, n) in [
                    ("written", o.stats.files_written),
                    ("linked", o.stats.files_linked),
                    ("shared", o.stats.files_shared),
                ] {
                    self.metrics
                        .files_published
                        .get_or_create(&FileLabels {
                            source: name.clone(),
                            how: how.into(),
                        })
                        .inc_by(n as u64);
                }
                self.metrics.set_revision(name, &o.commit);
                let o = o.clone();
                self.status.update(name, |s| {
                    s.published_revision = Some(o.commit.clone());
                    s.last_outcome = Some(o);
                });
            }
            Outcome::Kubernetes(o) => {
                tracing::info!(source = %name, commit = %commit, objects = o.objects.len(), unchanged = o.unchanged, "applied to Kubernetes");
                for object in &o.objects {
                    let status = format!("{:?}", object.status).to_lowercase();
                    self.metrics
                        .kube_objects
                        .get_or_create(&KubeObjectLabels {
                            source: name.clone(),
                            status,
                        })
                        .inc();
                }
                let o = o.clone();
                self.status.update(name, |s| {
                    let k = s.kubernetes.get_or_insert_with(KubeStatus::default);
                    if ok {
                        k.applied_revision = Some(commit.to_string());
                        k.drift.clear();
                    }
                    k.last_apply = Some(o);
                });
            }
            #[cfg(feature = "aws")]
            Outcome::Aws(o) => {
                tracing::info!(source = %name, commit = %commit, changes = o.results.len(), cleaned = o.cleaned.len(), "applied to AWS");
                let value = serde_json::to_value(o).ok();
                let drift = o.drift.clone();
                self.metrics
                    .aws_drift
                    .get_or_create(&metrics::source(name))
                    .set(drift.len() as i64);
                let now = timestamp(SystemTime::now());
                self.status.update(name, |s| {
                    let a = s.aws.get_or_insert_with(AwsStatus::default);
                    if ok {
                        a.applied_revision = Some(commit.to_string());
                        a.drift = drift;
                        a.last_drift_check = Some(now);
                    }
                    a.last_apply = value;
                });
            }
        }
    }

    fn record_drift(&self, check: &DriftCheck) {
        let name = &self.source.name;
        let healed = check.healed.as_ref().is_some_and(|h| h.succeeded());
        let remaining = if healed {
            Vec::new()
        } else {
            check.drifted.clone()
        };
        if !check.drifted.is_empty() {
            tracing::warn!(source = %name, target = check.target, differences = ?check.drifted, healed = check.healed.is_some(), "drift detected");
        }
        let now = timestamp(SystemTime::now());
        self.notify_drift(check, healed, &remaining);
        match check.target {
            "kubernetes" => {
                self.metrics
                    .drift_objects
                    .get_or_create(&metrics::source(name))
                    .set(remaining.len() as i64);
                let heal = match &check.healed {
                    Some(Outcome::Kubernetes(o)) => Some(o.clone()),
                    _ => None,
                };
                self.status.update(name, |s| {
                    let k = s.kubernetes.get_or_insert_with(KubeStatus::default);
                    k.drift = remaining;
                    k.last_drift_check = Some(now);
                    if let Some(h) = heal {
                        k.last_apply = Some(h);
                    }
                });
            }
            _ => {
                self.metrics
                    .aws_drift
                    .get_or_create(&metrics::source(name))
                    .set(remaining.len() as i64);
                self.status.update(name, |s| {
                    let a = s.aws.get_or_insert_with(AwsStatus::default);
                    a.drift = remaining;
                    a.last_drift_check = Some(now);
                });
            }
        }
    }

    /// Marks the start of a commit's evaluation: status API and, when
    /// reporting, `pending` on GitHub. The memory decides it is once.
    pub(super) fn announce(&self, commit: Oid, what: &str) {
        let sha = commit.to_string();
        let description = format!("ferry is {what}");
        self.status.record_revision(
            &self.source.name,
            RevisionRecord::new(
                sha.clone(),
                "branch",
                None,
                "pending",
                description.clone(),
                None,
            ),
        );
        if let Some((reporter, subject)) = &self.report {
            reporter.started(subject, &sha, &description);
        }
    }

    /// The final word on an evaluated commit, when the memory says there
    /// is one to give: status API and GitHub.
    pub(super) fn report(&self, result: &SyncResult, conclusion: &Conclusion) {
        let Some(state) = conclusion.report else {
            return;
        };
        let (commit, description, detail) = match result {
            SyncResult::Evaluated { commit, outcomes } => {
                let description = match outcomes.as_slice() {
                    [] => "nothing to apply".to_string(),
                    [one] => one.summary(),
                    many => many
                        .iter()
                        .map(|o| format!("{}: {}", o.target(), o.summary()))
                        .collect::<Vec<_>>()
                        .join("; "),
                };
                let detail: serde_json::Map<String, serde_json::Value> = outcomes
                    .iter()
                    .map(|o| {
                        (
                            o.target().to_string(),
                            serde_json::to_value(o).unwrap_or_default(),
                        )
                    })
                    .collect();
                (
                    *commit,
                    description,
                    Some(serde_json::Value::Object(detail)),
                )
            }
            SyncResult::Failed {
                commit: Some(commit),
                failure,
                ..
            } => (
                *commit,
                failure.message.clone(),
                Some(serde_json::json!({
                    "kind": failure.policy().label,
                    "problems": failure.problems,
                    "hook": failure.hook,
                })),
            ),
            _ => return,
        };
        let commit = commit.to_string();
        self.status.record_revision(
            &self.source.name,
            RevisionRecord::new(
                commit.clone(),
                "branch",
                None,
                state.as_str(),
                description.clone(),
                detail,
            ),
        );
        if let Some((reporter, subject)) = &self.report {
            reporter.finished(subject, &commit, state, &description);
        }
        if let Some(notifier) = &self.notifier {
            use crate::notify::{Event, EventKind};
            let dags_only = self.targets.iter().all(|t| matches!(t, Target::Dags(_)));
            let kind = match (state, dags_only) {
                (crate::report::State::Pending, _) => return,
                (crate::report::State::Success, true) => EventKind::DagsPublished,
                (crate::report::State::Success, false) => EventKind::PlatformApplied,
                (_, true) => EventKind::DagsBlocked,
                (_, false) => EventKind::PlatformFailed,
            };
            notifier.notify(Event::new(
                kind,
                Some(&self.source.name),
                Some(&commit),
                &description,
            ));
        }
    }
}
