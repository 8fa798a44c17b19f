//! The DAGs target: validate one commit of the DAGs repo and publish it
//! atomically into the folder Airflow reads.

pub mod airflow;
mod dirmode;
pub mod publish;
pub mod retention;
pub mod snapshot;
mod trees;
mod turns;
pub mod validate;
mod verdicts;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use git2::{Oid, Repository};
use serde::Serialize;

use crate::config::{DagsTargetConfig, ValidationPolicy};
pub use publish::{PublishError, PublishStats, Publisher};
pub use retention::{Kept, Reason};
pub use snapshot::{Snapshot, SnapshotError};
pub use validate::{HookError, HookReport, Problem, PythonChecker};

#[derive(Debug, thiserror::Error)]
pub enum DagsError {
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    #[error("{}", blocked_message(problems, hook))]
    Blocked {
        commit: Oid,
        problems: Vec<Problem>,
        hook: Option<HookReport>,
    },
    #[error(transparent)]
    Publish(#[from] PublishError),
    #[error(transparent)]
    Hook(#[from] HookError),
    #[error("validation of {commit} cancelled by shutdown; nothing was published")]
    Cancelled { commit: Oid },
}

impl DagsError {
    /// The first file problem, for status lines that name one file and line.
    pub fn problems(&self) -> &[Problem] {
        match self {
            DagsError::Blocked { problems, .. } => problems,
            _ => &[],
        }
    }

    pub fn hook(&self) -> Option<&HookReport> {
        match self {
            DagsError::Blocked { hook, .. } => hook.as_ref(),
            _ => None,
        }
    }
}

fn blocked_message(problems: &[Problem], hook: &Option<HookReport>) -> String {
    let mut parts = Vec::new();
    if let Some(first) = problems.first() {
        let more = match problems.len() {
            1 => String::new(),
            n => format!(" (and {} more)", n - 1),
        };
        parts.push(format!("{first}{more}"));
    }
    if let Some(hook) = hook.as_ref().filter(|h| !h.success) {
        let why = if hook.timed_out {
            "timed out".to_string()
        } else {
            match hook.exit_code {
                Some(code) => format!("exited with {code}"),
                None => "was killed".to_string(),
            }
        };
        let last_line = hook
            .output
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("");
        parts.push(format!("validation command {why}: {last_line}"));
    }
    format!(
        "not published, the last good revision stays live: {}",
        parts.join("; ")
    )
}

/// What one sync of the DAGs target did.
#[derive(Debug, Clone, Serialize)]
pub struct DagsOutcome {
    pub commit: String,
    /// False when the commit was already live.
    pub published: bool,
    pub stats: PublishStats,
    /// Problems published anyway under the `warn` policy.
    pub warnings: Vec<Problem>,
    pub hook: Option<HookReport>,
    pub skipped: Vec<String>,
    /// Revisions removed by this sync (synchronous pruning only; the agent
    /// prunes in the background and logs what it removed).
    pub pruned: Vec<String>,
    pub duration_ms: u64,
}

/// A revision staged and checked, not yet live.
pub struct DagsPlan {
    pub commit: Oid,
    /// None when the revision is already live.
    staged: Option<publish::Staged>,
    snapshot: Snapshot,
    pub warnings: Vec<Problem>,
    pub hook: Option<HookReport>,
    started: Instant,
}

impl DagsPlan {
    pub fn files(&self) -> usize {
        self.snapshot.files.len()
    }

    pub fn is_live(&self) -> bool {
        self.staged.is_none()
    }
}

/// What the last retention pass kept and removed.
#[derive(Debug, Clone, Serialize)]
pub struct RetentionReport {
    pub at: String,
    /// Every revision on the volume, the live one first, with why it stays.
    pub kept: Vec<Kept>,
    /// Removed by this pass.
    pub removed: Vec<String>,
    /// What the kept revisions take on the volume; 0 in a one-publish run,
    /// which does not measure it.
    pub bytes_kept: u64,
    /// Set when `targets.dags.airflow` is configured.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub airflow: Option<AirflowCheck>,
    /// Why the pass could not look at or remove revisions (nothing was lost).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Whether Airflow said what it still runs.
#[derive(Debug, Clone, Serialize)]
pub struct AirflowCheck {
    pub url: String,
    pub answered: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

pub struct DagsTarget {
    config: DagsTargetConfig,
    publisher: Publisher,
    checker: PythonChecker,
    /// Snapshot of the live revision: the base for hardlink reuse.
    live: Option<Snapshot>,
    /// Prune on a helper thread after the link swap, so deleting an old
    /// revision (one unlink per file) never delays the next publish.
    background_prune: bool,
    pruner: Option<std::thread::JoinHandle<()>>,
    last_prune: Option<Instant>,
    airflow: Option<Arc<airflow::Airflow>>,
    /// Written by the pruning thread, read by the worker that reports it.
    retention: Arc<Mutex<Option<RetentionReport>>>,
    /// Whether a retention pass measures the bytes kept (see [`Self::for_one_publish`]).
    measure_bytes: bool,
}

impl DagsTarget {
    /// Opens the destination, cleaning up after any interrupted publish.
    pub fn open(config: DagsTargetConfig) -> Result<DagsTarget, PublishError> {
        let publisher =
            Publisher::open(&config.destination, &config.link, config.retention.clone())?;
        Ok(DagsTarget {
            publisher,
            checker: PythonChecker::default(),
            live: None,
            background_prune: false,
            pruner: None,
            last_prune: None,
            airflow: config
                .airflow
                .clone()
                .map(|a| Arc::new(airflow::Airflow::new(a))),
            retention: Arc::default(),
            measure_bytes: true,
            config,
        })
    }

    /// For a process that publishes once and exits (`ferry publish-dags`):
    /// skips what only a long-lived agent reports or spreads over many
    /// publishes, the bytes kept (a read of every directory once per
    /// process) and the collection of stored directories at the first
    /// prune, so that a run costs in proportion to the change. Collection
    /// still follows every prune that removes a revision.
    pub fn for_one_publish(&mut self) {
        self.measure_bytes = false;
        self.publisher.collect_only_after_removals();
    }

    /// Keeps parse verdicts in `cache_dir` across runs (see [`PythonChecker::persistent`]).
    pub fn keep_verdicts_in(&mut self, cache_dir: &std::path::Path) {
        self.checker = PythonChecker::persistent(cache_dir);
    }

    /// The agent prunes in the background; one-shot runs prune before exiting.
    pub fn set_background_prune(&mut self, on: bool) {
        self.background_prune = on;
    }

    pub fn config(&self) -> &DagsTargetConfig {
        &self.config
    }

    pub fn publisher(&self) -> &Publisher {
        &self.publisher
    }

    /// The commit Airflow currently sees.
    pub fn live_commit(&self) -> Option<Oid> {
        self.publisher.current()
    }

    /// Validates `commit` and, if the policy allows, publishes it: the
    /// one-shot path (`ferry publish-dags`), the gate's DAGs part and then
    /// [`DagsTarget::plan`] and [`DagsTarget::apply`].
    pub fn sync(
        &mut self,
        repo: &Repository,
        commit: Oid,
        cancel: &AtomicBool,
    ) -> Result<DagsOutcome, DagsError> {
        // Phase lines let kill drills tell where an interrupted run stopped.
        tracing::debug!(%commit, "phase: validate");
        let snapshot = snapshot::read(repo, commit, &self.config.subdir)?;
        let problems = self.checker.check(repo, &snapshot, &self.config.subdir);
        let python = snapshot
            .files
            .iter()
            .filter(|f| f.path.ends_with(".py"))
            .count();
        tracing::info!(
            "{} of {python} Python files parsed, the rest known by blob id",
            self.checker.parsed()
        );
        if !problems.is_empty() && self.config.validation.policy == ValidationPolicy::Block {
            return Err(DagsError::Blocked {
                commit,
                problems,
                hook: None,
            });
        }
        let plan = self.plan(repo, snapshot, problems, cancel)?;
        Ok(self.apply(plan)?)
    }

    /// Stages `snapshot` (already checked; `warnings` are its problems under
    /// the `warn` policy) next to the live revision, reusing its unchanged
    /// files, and runs the validation command in it. Nothing live changes:
    /// the plan is published by [`DagsTarget::apply`] or thrown away by
    /// [`DagsTarget::discard`].
    pub fn plan(
        &mut self,
        repo: &Repository,
        snapshot: Snapshot,
        warnings: Vec<Problem>,
        cancel: &AtomicBool,
    ) -> Result<DagsPlan, DagsError> {
        let started = Instant::now();
        let commit = snapshot.commit;
        let current = self.publisher.current();
        if current == Some(commit) {
            // Already live, so it passed validation when it was published.
            return Ok(DagsPlan {
                commit,
                staged: None,
                snapshot,
                warnings,
                hook: None,
                started,
            });
        }
        self.ensure_live_snapshot(repo, current);
        tracing::debug!(%commit, "phase: stage");
        let staged = self.publisher.stage(repo, &snapshot, self.live.as_ref())?;
        let hook = if self.config.validation.command.is_empty() {
            None
        } else {
            let report = validate::run_hook(
                &self.config.validation.command,
                staged.path(),
                commit,
                self.config.validation.timeout,
                cancel,
            );
            let report = match report {
                Ok(_) if cancel.load(Ordering::Relaxed) => {
                    self.publisher.discard(staged);
                    return Err(DagsError::Cancelled { commit });
                }
                Ok(r) => r,
                Err(err) => {
                    self.publisher.discard(staged);
                    return Err(err.into());
                }
            };
            if !report.success && self.config.validation.policy == ValidationPolicy::Block {
                self.publisher.discard(staged);
                return Err(DagsError::Blocked {
                    commit,
                    problems: warnings,
                    hook: Some(report),
                });
            }
            Some(report)
        };
        Ok(DagsPlan {
            commit,
            staged: Some(staged),
            snapshot,
            warnings,
            hook,
            started,
        })
    }

    /// Publishes `plan`: one atomic link swap, then pruning.
    pub fn apply(&mut self, plan: DagsPlan) -> Result<DagsOutcome, PublishError> {
        let DagsPlan {
            commit,
            staged,
            snapshot,
            warnings,
            hook,
            started,
        } = plan;
        let skipped = snapshot.skipped.clone();
        let Some(staged) = staged else {
            self.live = Some(snapshot);
            return Ok(DagsOutcome {
                commit: commit.to_string(),
                published: false,
                stats: PublishStats::default(),
                warnings,
                hook: None,
                skipped,
                pruned: Vec::new(),
                duration_ms: elapsed_ms(started),
            });
        };
        let mut stats = staged.stats;
        tracing::debug!(%commit, "phase: swap");
        stats.mutations += self.publisher.publish(staged)?;
        tracing::debug!(%commit, "phase: prune");
        self.live = Some(snapshot);
        let pruned = self.prune();
        Ok(DagsOutcome {
            commit: commit.to_string(),
            published: true,
            stats,
            warnings,
            hook,
            skipped,
            pruned,
            duration_ms: elapsed_ms(started),
        })
    }

    /// Throws a plan away: its staged directory is removed.
    pub fn discard(&self, plan: DagsPlan) {
        if let Some(staged) = plan.staged {
            self.publisher.discard(staged);
        }
    }

    /// Removes the revisions no retention rule holds. Synchronously it
    /// returns what it removed; in the background it returns nothing and
    /// logs instead. Pruning is housekeeping: a failure never fails a publish.
    fn prune(&mut self) -> Vec<String> {
        self.last_prune = Some(Instant::now());
        let publisher = self.publisher.clone();
        let airflow = self.airflow.clone();
        let slot = self.retention.clone();
        let measure = self.measure_bytes;
        let job = move || {
            let previous = slot.lock().ok().and_then(|r| r.clone());
            let report = retain(&publisher, airflow.as_deref(), previous.as_ref(), measure);
            let removed = report.removed.clone();
            if let Ok(mut slot) = slot.lock() {
                *slot = Some(report);
            }
            removed
        };
        if !self.background_prune {
            return job();
        }
        if self.pruner.as_ref().is_some_and(|h| !h.is_finished()) {
            return Vec::new(); // one at a time; the next pass catches up
        }
        self.pruner = Some(std::thread::spawn(move || {
            job();
        }));
        Vec::new()
    }

    /// Between publishes: ages pass and Airflow's runs end, so the daemon
    /// looks again every `retention.interval`.
    pub fn housekeeping(&mut self) {
        let due = self
            .last_prune
            .is_none_or(|at| at.elapsed() >= self.config.retention.interval);
        if due && self.publisher.current().is_some() {
            self.prune();
        }
    }

    /// The last retention pass, for the status API and metrics.
    pub fn retention(&self) -> Option<RetentionReport> {
        self.retention.lock().ok().and_then(|r| r.clone())
    }

    /// After a restart the live revision's snapshot is rebuilt from git so
    /// the first publish can reuse its files too.
    fn ensure_live_snapshot(&mut self, repo: &Repository, current: Option<Oid>) {
        let Some(current) = current else {
            self.live = None;
            return;
        };
        if self.live.as_ref().is_some_and(|s| s.commit == current) {
            return;
        }
        self.live = snapshot::read(repo, current, &self.config.subdir).ok();
    }
}

fn elapsed_ms(started: Instant) -> u64 {
    u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// One retention pass: ask Airflow (if configured), then remove what no
/// rule holds. When Airflow cannot be asked, only `keep` and `max_age` hold
/// revisions, and the report says so.
fn retain(
    publisher: &Publisher,
    airflow: Option<&airflow::Airflow>,
    previous: Option<&RetentionReport>,
    measure_bytes: bool,
) -> RetentionReport {
    let now = SystemTime::now();
    let (uses, check) = match airflow {
        None => (retention::Uses::new(), None),
        Some(a) => match a.uses(now) {
            Ok(uses) => (
                uses,
                Some(AirflowCheck {
                    url: a.url().to_string(),
                    answered: true,
                    error: None,
                }),
            ),
            Err(err) => {
                tracing::warn!(error = %err, "cannot ask Airflow which DAG revisions it still runs; pruning by retention.keep and max_age only");
                (
                    retention::Uses::new(),
                    Some(AirflowCheck {
                        url: a.url().to_string(),
                        answered: false,
                        error: Some(format!(
                            "{err}; pruning by retention.keep and max_age only until Airflow answers"
                        )),
                    }),
                )
            }
        },
    };
    let (decision, error) = match publisher.prune(now, &uses) {
        Ok(decision) => (decision, None),
        Err(err) => {
            tracing::warn!(error = %err, "cannot prune old DAG revisions");
            (retention::Decision::default(), Some(err.to_string()))
        }
    };
    let removed: Vec<String> = decision.remove.iter().map(|o| o.to_string()).collect();
    if !removed.is_empty() {
        tracing::info!(revisions = ?removed, "pruned old DAG revisions");
    }
    // Revisions never change, so the bytes they take change only with the
    // set kept: measure only then (the store reads only directories it has
    // not read before: one stat per new file, a round trip each on EFS).
    let commits = |kept: &[Kept]| {
        let mut c: Vec<&str> = kept.iter().map(|k| k.commit.as_str()).collect();
        c.sort_unstable();
        c.join(",")
    };
    let bytes_kept = match previous {
        _ if !measure_bytes => 0,
        Some(p) if p.error.is_none() && commits(&p.kept) == commits(&decision.kept) => p.bytes_kept,
        _ => publisher.bytes_on_disk(),
    };
    RetentionReport {
        at: crate::status::timestamp(now),
        kept: decision.kept,
        removed,
        bytes_kept,
        airflow: check,
        error,
    }
}
