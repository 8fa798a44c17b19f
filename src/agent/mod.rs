//! The loop: per source, single-flight: trigger -> fetch -> verify ->
//! desired (the gate) -> plan every target -> apply every plan -> report.
//!
//! Each source has one worker task that owns its state (targets, memory),
//! so a source never syncs twice at once; pokes that arrive mid-sync
//! coalesce into one follow-up sync. A failing remote backs off with jitter
//! and never stops the worker. On shutdown an in-flight fetch is cancelled,
//! waits (health, AWS updates) end early, while a publish runs to its end:
//! its last step is one atomic rename, so there is no half-swapped state.

mod memory;
mod record;

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use futures::FutureExt;
use git2::Oid;
use tokio::sync::watch;

use crate::backoff::Backoff;
use crate::config::{Config, SourceConfig};
use crate::dags::PythonChecker;
use crate::desired::{self, Feeds};
use crate::metrics::{self, Metrics};
use crate::report::{Reporter, Subject};
use crate::revision::{Origin, Revision};
use crate::source::GitSource;
use crate::status::{StatusStore, timestamp};
use crate::suspend::Suspensions;
use crate::targets::{self, Outcome, Purpose, Target};
use crate::trigger::PreviewQueue;
use crate::trigger::Trigger;
use crate::verdict::{Failure, Reason, Retry};
use memory::{Conclusion, Memory, Next};

/// What one sync did, as the worker records and reports it.
#[derive(Debug)]
pub enum SyncResult {
    /// Nothing new since the last evaluation, and no drift check due.
    Unchanged { commit: Oid },
    /// The commit passed the gate and every target applied it (no
    /// outcomes: a source that feeds no target was fetched).
    Evaluated { commit: Oid, outcomes: Vec<Outcome> },
    /// The applied revisions were compared with what is live.
    Drift {
        commit: Oid,
        checks: Vec<DriftCheck>,
    },
    Failed {
        commit: Option<Oid>,
        failure: Failure,
        /// What targets applied before one failed.
        outcomes: Vec<Outcome>,
    },
}

#[derive(Debug)]
pub struct DriftCheck {
    pub target: &'static str,
    /// The revision checked: the target's last good one.
    pub applied: Oid,
    pub drifted: Vec<String>,
    pub healed: Option<Outcome>,
}

struct Worker {
    source: Arc<GitSource>,
    source_config: SourceConfig,
    config: Arc<Config>,
    targets: Vec<Target>,
    feeds: Feeds,
    checker: PythonChecker,
    memory: Memory,
    trigger: Trigger,
    status: StatusStore,
    metrics: Arc<Metrics>,
    /// Where results go on GitHub, when reporting is on and the source
    /// names its repository.
    report: Option<(Reporter, Subject)>,
    previews: PreviewQueue,
    notifier: Option<crate::notify::Notifier>,
    /// Previews on: webhooks queue them, and open PRs are polled every
    /// `interval` in case a webhook was lost.
    previews_enabled: bool,
    last_pull_poll: Option<Instant>,
    suspensions: Suspensions,
}

/// What the webhook receiver needs of one source.
pub struct SourceHandle {
    pub name: String,
    pub trigger: Trigger,
    /// Set when this source takes pull request previews.
    pub previews: Option<PreviewQueue>,
}

pub struct Agent {
    workers: Vec<Worker>,
    suspensions: Suspensions,
    status: StatusStore,
    metrics: Arc<Metrics>,
    notifier: Option<crate::notify::Notifier>,
}

impl Agent {
    /// Builds the workers and recovers every DAGs destination (removing
    /// half-written revisions) before anything syncs.
    pub fn new(
        config: &Config,
        status: StatusStore,
        metrics: Arc<Metrics>,
        reporter: Option<Reporter>,
    ) -> anyhow::Result<Agent> {
        use anyhow::Context;
        std::fs::create_dir_all(&config.cache_dir)
            .with_context(|| format!("cannot create cache_dir {}", config.cache_dir.display()))?;
        let shortest = config
            .sources
            .iter()
            .map(|s| s.timeout)
            .min()
            .unwrap_or(Duration::from_secs(60));
        crate::source::set_network_timeouts(shortest.min(Duration::from_secs(30)), shortest);
        let shared = Arc::new(config.clone());
        // Unreadable, it stops the start: forgetting a suspension would
        // apply what someone meant to hold back.
        let suspensions = Suspensions::open(&config.suspensions_file())?;
        let mut workers = Vec::new();
        for source_config in &config.sources {
            let source = GitSource::new(source_config, &config.cache_dir);
            status.register(&source.name, &source.url, &source.branch);
            let targets = targets::for_source(config, source_config, None)
                .with_context(|| format!("cannot open the targets of source `{}`", source.name))?;
            for target in &targets {
                record::register(&status, &metrics, &source.name, target);
            }
            let platform = targets.iter().any(|t| !matches!(t, Target::Dags(_)));
            let context = if platform {
                Some("ferry/platform")
            } else if !targets.is_empty() {
                Some("ferry/dags")
            } else {
                None
            };
            let report = match (&reporter, context, source_config.github_repo()) {
                (Some(r), Some(context), Some(repo)) => Some((
                    r.clone(),
                    Subject {
                        source: source.name.clone(),
                        repo,
                        context: context.to_string(),
                    },
                )),
                (Some(_), Some(_), None) => {
                    tracing::warn!(source = %source.name, "not reporting to GitHub: set github_repo (the URL is not a github.com one)");
                    None
                }
                _ => None,
            };
            let has = |name: &str| targets.iter().any(|t| t.name() == name);
            let asks_airflow = targets
                .iter()
                .any(|t| matches!(t, Target::Dags(d) if d.config().airflow.is_some()));
            metrics.init_source(
                &source.name,
                has("dags"),
                asks_airflow,
                has("kubernetes"),
                has("aws"),
            );
            // Kept on disk, so a restart parses only what changed.
            let checker = match has("dags") {
                true => PythonChecker::persistent(&config.cache_dir),
                false => PythonChecker::default(),
            };
            workers.push(Worker {
                source: Arc::new(source),
                source_config: source_config.clone(),
                config: shared.clone(),
                feeds: targets::feeds(&targets),
                targets,
                checker,
                memory: Memory::default(),
                trigger: Trigger::default(),
                status: status.clone(),
                metrics: metrics.clone(),
                report,
                previews: PreviewQueue::default(),
                notifier: None,
                previews_enabled: config.github.as_ref().is_some_and(|g| g.previews),
                last_pull_poll: None,
                suspensions: suspensions.clone(),
            });
        }
        if reporter.is_some() {
            let reporting: Vec<String> = workers
                .iter()
                .filter(|w| w.report.is_some())
                .map(|w| w.source.name.clone())
                .collect();
            metrics.init_github(&reporting);
        }
        for worker in &workers {
            worker.show_suspension();
        }
        Ok(Agent {
            workers,
            suspensions,
            status,
            metrics,
            notifier: None,
        })
    }

    pub fn status(&self) -> StatusStore {
        self.status.clone()
    }

    /// Tell people (notifications) what the workers conclude; [`Agent::run`]
    /// delivers them.
    pub fn set_notifier(&mut self, notifier: crate::notify::Notifier) {
        for worker in &mut self.workers {
            worker.notifier = Some(notifier.clone());
        }
        self.notifier = Some(notifier);
    }

    pub fn metrics(&self) -> Arc<Metrics> {
        self.metrics.clone()
    }

    /// Which sources are suspended: the admin endpoint changes them.
    pub fn suspensions(&self) -> Suspensions {
        self.suspensions.clone()
    }

    /// Triggers by source name.
    pub fn triggers(&self) -> HashMap<String, Trigger> {
        self.workers
            .iter()
            .map(|w| (w.source.name.clone(), w.trigger.clone()))
            .collect()
    }

    /// What the webhook receiver pokes, per source. Previews need a place
    /// to report to, so sources without one take none.
    pub fn handles(&self, previews: bool) -> Vec<SourceHandle> {
        self.workers
            .iter()
            .map(|w| SourceHandle {
                name: w.source.name.clone(),
                trigger: w.trigger.clone(),
                previews: (previews && w.takes_previews()).then(|| w.previews.clone()),
            })
            .collect()
    }

    /// Syncs every source once, in order (quickstart `--once`).
    pub async fn sync_once(&mut self) -> Vec<(String, SyncResult)> {
        let cancel = Arc::new(AtomicBool::new(false));
        let mut results = Vec::new();
        for worker in &mut self.workers {
            let (result, conclusion) = worker.sync_guarded(&cancel).await;
            worker.record(&result, conclusion.as_ref());
            worker.record_housekeeping();
            results.push((worker.source.name.clone(), result));
        }
        results
    }

    /// Runs every worker until `shutdown` turns true.
    pub async fn run(self, shutdown: watch::Receiver<bool>) {
        let mut tasks = tokio::task::JoinSet::new();
        for worker in self.workers {
            tasks.spawn(worker.run(shutdown.clone()));
        }
        if let Some(notifier) = self.notifier {
            tasks.spawn(notifier.run(shutdown.clone()));
        }
        while let Some(joined) = tasks.join_next().await {
            if let Err(err) = joined {
                tracing::error!(error = %err, "source worker ended abnormally");
            }
        }
    }
}

impl Worker {
    /// Puts the source's suspension (or its absence) in status and
    /// metrics; true while it is suspended.
    fn show_suspension(&self) -> bool {
        self.suspensions
            .show(&self.source.name, &self.status, &self.metrics)
    }

    fn takes_previews(&self) -> bool {
        self.previews_enabled && self.report.is_some() && !self.targets.is_empty()
    }

    async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        let mut backoff = Backoff::new(self.source_config.max_backoff);
        loop {
            if *shutdown.borrow() {
                break;
            }
            // Set on shutdown by a task of its own, so that a sync blocked
            // in git or in a validation command sees it too.
            let cancel = Arc::new(AtomicBool::new(false));
            let watcher = tokio::spawn({
                let cancel = cancel.clone();
                let mut shutdown = shutdown.clone();
                async move {
                    stopped(&mut shutdown).await;
                    cancel.store(true, Ordering::Relaxed);
                }
            });
            let (result, conclusion) = self.sync_guarded(&cancel).await;
            watcher.abort();
            let retry = self.record(&result, conclusion.as_ref());
            for target in &mut self.targets {
                target.housekeeping();
            }
            self.record_housekeeping();
            if !cancel.load(Ordering::Relaxed) {
                // A sync cut short by shutdown has no result to report; the
                // commit stays `pending` and the next start settles it.
                if let Some(conclusion) = &conclusion {
                    self.report(&result, conclusion);
                }
                self.poll_pulls().await;
                self.run_previews(&cancel).await;
            }
            let delay = if retry == Retry::Backoff {
                backoff.next_delay()
            } else {
                backoff.reset();
                self.source_config.interval
            };
            self.status.update(&self.source.name, |s| {
                s.next_attempt = Some(timestamp(SystemTime::now() + delay));
            });
            tokio::select! {
                _ = stopped(&mut shutdown) => break,
                _ = self.trigger.poked() => {
                    tracing::debug!(source = %self.source.name, "triggered");
                }
                _ = tokio::time::sleep(delay) => {}
            }
        }
        tracing::info!(source = %self.source.name, "worker stopped");
    }

    /// A sync, with a panic turned into an internal error so that one bug
    /// never stops the source.
    async fn sync_guarded(&mut self, cancel: &Arc<AtomicBool>) -> (SyncResult, Option<Conclusion>) {
        let started = Instant::now();
        let result = AssertUnwindSafe(self.sync(cancel)).catch_unwind().await;
        self.metrics
            .sync_duration
            .get_or_create(&metrics::source(&self.source.name))
            .observe(started.elapsed().as_secs_f64());
        result.unwrap_or_else(|panic| {
            let why = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            let failure = Failure::new(Reason::Internal, format!("sync panicked: {why}"));
            (
                SyncResult::Failed {
                    commit: None,
                    failure,
                    outcomes: Vec::new(),
                },
                None,
            )
        })
    }

    async fn sync(&mut self, cancel: &Arc<AtomicBool>) -> (SyncResult, Option<Conclusion>) {
        let name = self.source.name.clone();
        self.status.update(&name, |s| {
            s.last_attempt = Some(timestamp(SystemTime::now()));
            s.syncs_started += 1;
        });
        let head = match self.fetch(cancel).await {
            Ok(head) => head,
            Err(failure) => {
                let result = SyncResult::Failed {
                    commit: None,
                    failure,
                    outcomes: Vec::new(),
                };
                return (result, None);
            }
        };
        let commit = head.revision.commit;
        self.status
            .update(&name, |s| s.revision = Some(commit.to_string()));
        // Before anything else looks at the commit: an untrusted head
        // reaches neither the gate nor the targets' drift checks.
        if let Some(failure) = head.untrusted {
            if self.memory.announce(commit) {
                self.announce(commit, "verifying the commit signature");
            }
            let conclusion = self.memory.conclude(commit, Err(&failure));
            let result = SyncResult::Failed {
                commit: Some(commit),
                failure,
                outcomes: Vec::new(),
            };
            return (result, Some(conclusion));
        }
        let drift_due = self.targets.iter().any(|t| t.drift_due());
        if self.show_suspension() {
            // A new commit waits for `ferry resume`, and its status says
            // so; drift of what is applied is still reported, never healed.
            if !self.targets.is_empty() && self.memory.hold(commit) {
                let reason = self
                    .suspensions
                    .get(&name)
                    .map(|s| s.reason)
                    .unwrap_or_default();
                self.announce(
                    commit,
                    &format!("holding this commit: `{name}` is suspended ({reason}); `ferry resume {name}` applies it"),
                );
            }
            if drift_due {
                let checks = self.check_drift(&head.revision, cancel, false).await;
                return (SyncResult::Drift { commit, checks }, None);
            }
            return (SyncResult::Unchanged { commit }, None);
        }
        match self.memory.next(commit, drift_due) {
            Next::Idle => (SyncResult::Unchanged { commit }, None),
            Next::CheckDrift => {
                let checks = self.check_drift(&head.revision, cancel, true).await;
                (SyncResult::Drift { commit, checks }, None)
            }
            Next::Evaluate { announce } => {
                if announce && !self.targets.is_empty() {
                    self.memory.announce(commit);
                    let what = match self.targets.first().map(|t| t.name()) {
                        Some("dags") => "validating and publishing the DAGs",
                        Some("kubernetes") => "applying to Kubernetes and waiting for health",
                        _ => "applying to AWS and following the updates",
                    };
                    self.announce(commit, what);
                }
                let (result, outcomes) = self.evaluate(&head.revision, cancel).await;
                let conclusion = self.memory.conclude(commit, result.as_ref().map(|_| ()));
                let result = match result {
                    Ok(()) => SyncResult::Evaluated { commit, outcomes },
                    Err(failure) => SyncResult::Failed {
                        commit: Some(commit),
                        failure,
                        outcomes,
                    },
                };
                (result, Some(conclusion))
            }
        }
    }

    /// Fetches the branch head and checks its signature.
    async fn fetch(&self, cancel: &Arc<AtomicBool>) -> Result<Head, Failure> {
        let name = &self.source.name;
        let started = Instant::now();
        tracing::debug!(source = %name, "phase: fetch");
        let source = self.source.clone();
        // The fetch blocks in git; the cancel flag is what stops it.
        let flag = cancel.clone();
        let fetched = tokio::task::spawn_blocking(move || {
            let fetched = source.fetch_branch(&flag)?;
            let verified = source.verify(fetched.commit);
            Ok::<_, crate::source::SourceError>((fetched, verified))
        })
        .await;
        self.metrics
            .fetch_duration
            .get_or_create(&metrics::source(name))
            .observe(started.elapsed().as_secs_f64());
        let repairs = self.source.take_repairs();
        if repairs > 0 {
            self.metrics
                .mirror_repairs
                .get_or_create(&metrics::source(name))
                .inc_by(repairs);
        }
        let (fetched, verified) = match fetched {
            Ok(Ok(x)) => x,
            Ok(Err(err)) => return Err(Failure::new(Reason::FetchFailed, err.to_string())),
            Err(err) => {
                return Err(Failure::new(
                    Reason::Internal,
                    format!("fetch task failed: {err}"),
                ));
            }
        };
        let commit = fetched.commit;
        let (signed_by, untrusted) = match verified {
            Ok(signed) => (
                signed.map(|v| format!("{} ({})", v.principal, v.fingerprint)),
                None,
            ),
            Err(err) => {
                let reason = if err.rejects_commit() {
                    Reason::Untrusted
                } else {
                    Reason::VerifyUnavailable
                };
                (None, Some(Failure::new(reason, err.to_string())))
            }
        };
        self.status
            .update(name, |s| s.signed_by = signed_by.clone());
        Ok(Head {
            untrusted,
            revision: Revision {
                source: name.clone(),
                commit,
                mirror: self.source.mirror_path().to_path_buf(),
                origin: Origin::Branch,
                signed_by,
            },
        })
    }

    /// The gate, then every target planned, then every plan applied. A
    /// commit the gate or any plan refuses reaches no target.
    async fn evaluate(
        &mut self,
        revision: &Revision,
        cancel: &AtomicBool,
    ) -> (Result<(), Failure>, Vec<Outcome>) {
        tracing::debug!(source = %revision.source, commit = %revision.commit, "phase: validate");
        targets::render_context(&mut self.targets, &mut self.feeds, revision).await;
        let desired =
            tokio::task::block_in_place(|| desired::read(revision, &self.feeds, &mut self.checker));
        let desired = match desired {
            Ok(d) => d,
            Err(rejection) => {
                let what = "rejected, nothing was applied";
                let failure = Failure::problems(Reason::Invalid, what, rejection.problems);
                return (Err(failure), Vec::new());
            }
        };
        let mut planned = Vec::new();
        for target in &mut self.targets {
            planned.push(target.plan(&desired, Purpose::Apply, cancel).await);
        }
        // What the commit declares is in the plans now; applies and health
        // waits can be long, so its copy is not kept through them.
        drop(desired);
        let plans = match targets::all_or_nothing(
            planned
                .into_iter()
                .enumerate()
                .map(|(i, p)| p.map(|p| (i, p)))
                .collect(),
        ) {
            Ok(plans) => plans,
            Err((failure, made)) => {
                for (i, plan) in made {
                    self.targets[i].discard(plan);
                }
                return (Err(failure), Vec::new());
            }
        };
        let mut outcomes = Vec::new();
        for (i, plan) in plans {
            let target = &mut self.targets[i];
            match target.apply(plan, cancel).await {
                Ok(outcome) => {
                    let failure = outcome.failure();
                    outcomes.push(outcome);
                    if let Some(failure) = failure {
                        return (Err(failure), outcomes);
                    }
                }
                Err(failure) => return (Err(failure), outcomes),
            }
        }
        (Ok(()), outcomes)
    }

    /// Plans each due target's last good revision again: every change the
    /// plan would make is drift; `self_heal` applies that plan.
    async fn check_drift(
        &mut self,
        head: &Revision,
        cancel: &AtomicBool,
        heal: bool,
    ) -> Vec<DriftCheck> {
        let mut checks = Vec::new();
        // Targets fed by one source usually hold the same last good commit:
        // it is read once for all of them.
        let mut read: Option<(Oid, Result<desired::Desired, desired::Rejection>)> = None;
        for i in 0..self.targets.len() {
            let target = &self.targets[i];
            let (true, Some(applied)) = (target.drift_due(), target.applied()) else {
                continue;
            };
            if read.as_ref().is_none_or(|(c, _)| *c != applied) {
                let revision = Revision {
                    commit: applied,
                    ..head.clone()
                };
                targets::render_context(&mut self.targets, &mut self.feeds, &revision).await;
                let desired = tokio::task::block_in_place(|| {
                    desired::read(&revision, &self.feeds, &mut self.checker)
                });
                read = Some((applied, desired));
            }
            let Some((_, desired)) = &read else {
                continue;
            };
            let target = &mut self.targets[i];
            target.drift_checked();
            let desired = match desired {
                Ok(d) => d,
                Err(rejection) => {
                    tracing::warn!(source = %head.source, target = target.name(), problems = rejection.problems.len(), "the applied revision no longer reads; drift not checked");
                    continue;
                }
            };
            let plan = match target.plan(desired, Purpose::Review, cancel).await {
                Ok(plan) => plan,
                Err(failure) => {
                    tracing::warn!(source = %head.source, target = target.name(), error = %failure, "drift check failed");
                    continue;
                }
            };
            let drifted = plan.drifted();
            let healed = if heal && target.heals(&plan) && !drifted.is_empty() {
                match target.apply(plan, cancel).await {
                    Ok(outcome) => Some(outcome),
                    Err(failure) => {
                        tracing::warn!(source = %head.source, target = target.name(), error = %failure, "self-heal failed");
                        None
                    }
                }
            } else {
                target.discard(plan);
                None
            };
            checks.push(DriftCheck {
                target: target.name(),
                applied,
                drifted,
                healed,
            });
        }
        checks
    }

    /// Previews the pull requests that webhooks (or polling) asked for.
    async fn run_previews(&mut self, cancel: &AtomicBool) {
        let Some((reporter, subject)) = &self.report else {
            return;
        };
        for (pr, announced_sha) in self.previews.take() {
            let started = Instant::now();
            let preview =
                crate::preview::run(&self.source, &self.config, &self.source_config, pr, cancel)
                    .await;
            record::preview(&self.metrics, &self.source.name, &preview);
            tracing::info!(source = %self.source.name, pr, sha = %preview.sha, state = preview.state.as_str(), duration_ms = started.elapsed().as_millis() as u64, "previewed pull request");
            if preview.sha.is_empty() {
                tracing::warn!(source = %self.source.name, pr, announced = %announced_sha, error = %preview.description, "preview failed");
                continue;
            }
            if preview.sha != announced_sha {
                tracing::info!(source = %self.source.name, pr, announced = %announced_sha, fetched = %preview.sha, "the PR moved on since the webhook; previewed its newest head");
            }
            self.status
                .record_revision(&self.source.name, preview.record());
            reporter.preview_status(
                subject,
                preview.context,
                &preview.sha,
                preview.state,
                &preview.description,
            );
            if !preview.comment.is_empty() {
                let page = reporter.revision_url(&self.source.name, &preview.sha);
                reporter.comment(
                    &subject.repo,
                    pr,
                    &crate::report::comment::marker(&self.source.name),
                    format!(
                        "{}\n[What ferry concluded, in full]({page})\n",
                        preview.comment
                    ),
                );
            }
        }
    }

    /// Queues previews of open pull requests whose head has none yet: the
    /// fallback for lost `pull_request` webhooks, one API call per interval.
    async fn poll_pulls(&mut self) {
        if !self.takes_previews() {
            return;
        }
        let Some((reporter, subject)) = &self.report else {
            return;
        };
        if self
            .last_pull_poll
            .is_some_and(|at| at.elapsed() < self.source_config.interval)
        {
            return;
        }
        self.last_pull_poll = Some(Instant::now());
        let context = if self.targets.iter().any(|t| !matches!(t, Target::Dags(_))) {
            "ferry/plan"
        } else {
            "ferry/dags"
        };
        match reporter
            .open_pulls(&subject.repo, &self.source.branch)
            .await
        {
            Ok(pulls) => {
                for (pr, sha) in pulls {
                    if !reporter.has_status(&subject.repo, &sha, context) {
                        tracing::info!(source = %self.source.name, pr, sha = %sha, "open pull request without a preview; queueing one");
                        self.previews.request(pr, &sha);
                    }
                }
            }
            Err(err) => {
                tracing::debug!(source = %self.source.name, error = %err, "cannot list open pull requests; webhooks still queue previews");
            }
        }
    }
}

/// A fetched branch head, trusted or not.
struct Head {
    /// Why its signature is refused, when it is.
    untrusted: Option<Failure>,
    revision: Revision,
}

/// Resolves once `shutdown` is true, also when it already was (unlike
/// `changed`, which a change seen by an earlier `select!` never wakes).
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}
