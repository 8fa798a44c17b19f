//! The loop: per source, single-flight: trigger -> fetch -> validate ->
//! publish -> report.
//!
//! Each source has one worker task, so a source never syncs twice at once;
//! pokes that arrive mid-sync coalesce into one follow-up sync (a `Notify`
//! permit). A failing remote backs off exponentially with jitter and never
//! stops the worker, let alone the process. On shutdown an in-flight fetch is
//! cancelled, while a publish runs to its end: its last step is one atomic
//! rename, so there is no half-swapped state to leave behind either way.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use git2::Oid;
use tokio::sync::{Notify, watch};

use crate::config::{Config, DagsTargetConfig, KubernetesTargetConfig};
use crate::dags::{DagsError, DagsOutcome, DagsTarget};
use crate::kubernetes::target::{KubeSync, KubeTarget};
use crate::metrics::{self, FileLabels, KubeObjectLabels, Metrics, ResultLabels};
use crate::preview::{self, PreviewQueue, PreviewTarget};
use crate::report::{Reporter, State, Subject};
use crate::source::{GitSource, SourceError};
use crate::status::{ErrorReport, KubeStatus, RevisionRecord, StatusStore, timestamp};

/// Pokes one source's worker; cheap to clone and to call from anywhere.
#[derive(Clone, Default)]
pub struct Trigger(Arc<Notify>);

impl Trigger {
    pub fn poke(&self) {
        self.0.notify_one();
    }
}

/// Result of one sync, as the worker records it.
#[derive(Debug)]
pub enum SyncResult {
    /// Nothing new since the last evaluation.
    Unchanged {
        commit: Oid,
    },
    /// A source without a target was fetched.
    Fetched {
        commit: Oid,
    },
    Published(DagsOutcome),
    /// The Kubernetes target applied a revision or checked for drift.
    Kube {
        commit: Oid,
        sync: KubeSync,
    },
    /// The AWS target applied platform.yaml or checked for drift (after the
    /// Kubernetes target, when the source feeds both).
    #[cfg(feature = "aws")]
    Aws {
        commit: Oid,
        sync: crate::aws::target::AwsSync,
        kube: Option<KubeSync>,
    },
    Failed(SyncFailure),
}

#[derive(Debug)]
pub struct SyncFailure {
    pub kind: &'static str,
    pub commit: Option<Oid>,
    pub error: String,
    /// A bad commit: retried only when the branch moves. Otherwise the same
    /// sync is retried with backoff.
    pub commit_rejected: bool,
    pub dags: Option<DagsError>,
}

impl SyncResult {
    fn label(&self) -> &'static str {
        match self {
            SyncResult::Unchanged { .. } => "unchanged",
            SyncResult::Fetched { .. } | SyncResult::Published(_) | SyncResult::Kube { .. } => {
                "success"
            }
            #[cfg(feature = "aws")]
            SyncResult::Aws { .. } => "success",
            SyncResult::Failed(f) => f.kind,
        }
    }
}

struct Worker {
    source: GitSource,
    dags: Option<Mutex<DagsTarget>>,
    kube: Option<tokio::sync::Mutex<KubeTarget>>,
    #[cfg(feature = "aws")]
    aws: Option<tokio::sync::Mutex<crate::aws::target::AwsTarget>>,
    interval: Duration,
    max_backoff: Duration,
    trigger: Trigger,
    status: StatusStore,
    metrics: Arc<Metrics>,
    /// Last commit fully evaluated, and whether it was accepted.
    evaluated: Mutex<Option<(Oid, bool)>>,
    /// Where results go on GitHub, when reporting is on and the source
    /// names its repository.
    report: Option<(Reporter, Subject)>,
    /// Last commit whose evaluation was announced (`pending`), so retries
    /// of the same commit do not announce it again.
    announced: Mutex<Option<Oid>>,
    previews: PreviewQueue,
    /// Previews on: webhooks queue them, and open PRs are polled every
    /// `interval` in case a webhook was lost.
    previews_enabled: bool,
    last_pull_poll: Mutex<Option<Instant>>,
    dags_config: Option<DagsTargetConfig>,
    kube_config: Option<KubernetesTargetConfig>,
    #[cfg(feature = "aws")]
    aws_config: Option<crate::config::AwsTargetConfig>,
    cache_dir: std::path::PathBuf,
}

/// What the webhook receiver needs of one source.
pub struct SourceHandle {
    pub name: String,
    pub trigger: Trigger,
    /// Set when this source takes pull request previews.
    pub previews: Option<PreviewQueue>,
}

pub struct Agent {
    workers: Vec<Arc<Worker>>,
    status: StatusStore,
    metrics: Arc<Metrics>,
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
        let mut workers = Vec::new();
        for source_config in &config.sources {
            let source = GitSource::new(source_config, &config.cache_dir);
            status.register(&source.name, &source.url, &source.branch);
            let dags = match &config.targets.dags {
                Some(dags) if dags.source == source.name => {
                    let mut target = DagsTarget::open(dags.clone()).with_context(|| {
                        format!(
                            "cannot open DAGs destination {}",
                            dags.destination.display()
                        )
                    })?;
                    target.set_background_prune(true);
                    let live = target.live_commit().map(|c| c.to_string());
                    if let Some(live) = &live {
                        metrics.set_revision(&source.name, live);
                    }
                    status.update(&source.name, |s| s.published_revision = live);
                    Some(Mutex::new(target))
                }
                _ => None,
            };
            let kube = config
                .targets
                .kubernetes
                .as_ref()
                .filter(|k| k.source == source.name)
                .map(|k| tokio::sync::Mutex::new(KubeTarget::new(&source.name, k.clone())));
            if kube.is_some() {
                status.update(&source.name, |s| s.kubernetes = Some(KubeStatus::default()));
            }
            #[cfg(feature = "aws")]
            let aws = config
                .targets
                .aws
                .as_ref()
                .filter(|a| a.source == source.name)
                .map(|a| {
                    status.update(&source.name, |s| {
                        s.aws = Some(crate::status::AwsStatus::default())
                    });
                    let repo = source_config
                        .github_repo()
                        .unwrap_or_else(|| source.url.clone());
                    tokio::sync::Mutex::new(crate::aws::target::AwsTarget::new(
                        &source.name,
                        &repo,
                        a.clone(),
                    ))
                });
            #[cfg(feature = "aws")]
            let platform_target = kube.is_some() || aws.is_some();
            #[cfg(not(feature = "aws"))]
            let platform_target = kube.is_some();
            let context = if platform_target {
                Some("ferry/platform")
            } else if dags.is_some() {
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
            #[cfg(feature = "aws")]
            let has_aws = aws.is_some();
            #[cfg(not(feature = "aws"))]
            let has_aws = false;
            metrics.init_source(&source.name, dags.is_some(), kube.is_some(), has_aws);
            workers.push(Arc::new(Worker {
                source,
                dags,
                kube,
                #[cfg(feature = "aws")]
                aws,
                interval: source_config.interval,
                max_backoff: source_config.max_backoff,
                trigger: Trigger::default(),
                status: status.clone(),
                metrics: metrics.clone(),
                evaluated: Mutex::new(None),
                report,
                announced: Mutex::new(None),
                previews: PreviewQueue::default(),
                previews_enabled: config.github.as_ref().is_some_and(|g| g.previews),
                last_pull_poll: Mutex::new(None),
                dags_config: config
                    .targets
                    .dags
                    .clone()
                    .filter(|d| d.source == source_config.name),
                kube_config: config
                    .targets
                    .kubernetes
                    .clone()
                    .filter(|k| k.source == source_config.name),
                #[cfg(feature = "aws")]
                aws_config: config
                    .targets
                    .aws
                    .clone()
                    .filter(|a| a.source == source_config.name),
                cache_dir: config.cache_dir.clone(),
            }));
        }
        if reporter.is_some() {
            let reporting: Vec<String> = workers
                .iter()
                .filter(|w| w.report.is_some())
                .map(|w| w.source.name.clone())
                .collect();
            metrics.init_github(&reporting);
        }
        Ok(Agent {
            workers,
            status,
            metrics,
        })
    }

    pub fn status(&self) -> StatusStore {
        self.status.clone()
    }

    pub fn metrics(&self) -> Arc<Metrics> {
        self.metrics.clone()
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
                previews: (previews
                    && w.previews_enabled
                    && w.report.is_some()
                    && (w.dags_config.is_some() || w.is_platform()))
                .then(|| w.previews.clone()),
            })
            .collect()
    }

    /// Syncs every source once, in order (quickstart `--once`, one-shot CLI).
    pub async fn sync_once(&self) -> Vec<(String, SyncResult)> {
        let cancel = Arc::new(AtomicBool::new(false));
        let mut results = Vec::new();
        for worker in &self.workers {
            let result = worker.clone().sync(cancel.clone()).await;
            worker.record(&result);
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
        while let Some(joined) = tasks.join_next().await {
            if let Err(err) = joined {
                tracing::error!(error = %err, "source worker ended abnormally");
            }
        }
    }
}

impl Worker {
    /// Feeds the Kubernetes or the AWS target: the platform repo.
    fn is_platform(&self) -> bool {
        #[cfg(feature = "aws")]
        if self.aws_config.is_some() {
            return true;
        }
        self.kube_config.is_some()
    }

    async fn run(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let mut backoff = Backoff::new(self.max_backoff);
        loop {
            if *shutdown.borrow() {
                break;
            }
            let cancel = Arc::new(AtomicBool::new(false));
            let sync = tokio::spawn(self.clone().sync(cancel.clone()));
            tokio::pin!(sync);
            let result = tokio::select! {
                r = &mut sync => r,
                _ = stopped(&mut shutdown) => {
                    // Abort a fetch; a publish in progress finishes (see module docs).
                    cancel.store(true, Ordering::Relaxed);
                    sync.await
                }
            };
            let result = match result {
                Ok(result) => result,
                Err(err) => SyncResult::Failed(SyncFailure {
                    kind: "internal_error",
                    commit: None,
                    error: format!("sync task failed: {err}"),
                    commit_rejected: false,
                    dags: None,
                }),
            };
            let retry_soon = self.record(&result);
            if !cancel.load(Ordering::Relaxed) {
                // A sync cut short by shutdown has no result to report; the
                // commit stays `pending` and the next start settles it.
                self.report(&result);
                self.poll_pulls().await;
                self.run_previews(&cancel).await;
            }
            let delay = if retry_soon {
                backoff.next_delay()
            } else {
                backoff.reset();
                self.interval
            };
            self.status.update(&self.source.name, |s| {
                s.next_attempt = Some(timestamp(SystemTime::now() + delay));
            });
            // A shutdown that arrived during the sync was already seen by
            // the select above; `stopped` still returns at once.
            tokio::select! {
                _ = stopped(&mut shutdown) => break,
                _ = self.trigger.0.notified() => {
                    tracing::debug!(source = %self.source.name, "triggered");
                }
                _ = tokio::time::sleep(delay) => {}
            }
        }
        tracing::info!(source = %self.source.name, "worker stopped");
    }

    async fn sync(self: Arc<Self>, cancel: Arc<AtomicBool>) -> SyncResult {
        let started = Instant::now();
        let worker = self.clone();
        let blocking_cancel = cancel.clone();
        let result =
            tokio::task::spawn_blocking(move || worker.sync_blocking(&blocking_cancel)).await;
        let result = result.unwrap_or_else(|err| {
            SyncResult::Failed(SyncFailure {
                kind: "internal_error",
                commit: None,
                error: format!("sync panicked: {err}"),
                commit_rejected: false,
                dags: None,
            })
        });
        let result = match (&self.kube, result) {
            (Some(kube), SyncResult::Fetched { commit } | SyncResult::Unchanged { commit }) => {
                self.sync_kubernetes(kube, commit, &cancel).await
            }
            (_, other) => other,
        };
        #[cfg(feature = "aws")]
        let result = match (&self.aws, result) {
            (Some(aws), SyncResult::Fetched { commit } | SyncResult::Unchanged { commit }) => {
                self.sync_aws(aws, commit, None, &cancel).await
            }
            (Some(aws), SyncResult::Kube { commit, sync }) => {
                self.sync_aws(aws, commit, Some(sync), &cancel).await
            }
            (_, other) => other,
        };
        self.metrics
            .sync_duration
            .get_or_create(&metrics::source(&self.source.name))
            .observe(started.elapsed().as_secs_f64());
        result
    }

    fn sync_blocking(&self, cancel: &AtomicBool) -> SyncResult {
        let name = &self.source.name;
        self.status.update(name, |s| {
            s.last_attempt = Some(timestamp(SystemTime::now()))
        });
        let fetch_started = Instant::now();
        tracing::debug!(source = %name, "phase: fetch");
        let fetched = self.source.fetch_branch(cancel);
        self.metrics
            .fetch_duration
            .get_or_create(&metrics::source(name))
            .observe(fetch_started.elapsed().as_secs_f64());
        let repairs = self.source.take_repairs();
        if repairs > 0 {
            self.metrics
                .mirror_repairs
                .get_or_create(&metrics::source(name))
                .inc_by(repairs);
        }
        let fetched = match fetched {
            Ok(f) => f,
            Err(err) => return fetch_failure(err),
        };
        let commit = fetched.commit;
        self.status
            .update(name, |s| s.revision = Some(commit.to_string()));
        // Before the "already evaluated" shortcut: an untrusted head must not
        // reach the targets' drift checks either.
        match self.source.verify(commit) {
            Ok(signed) => {
                let signed_by = signed.map(|v| format!("{} ({})", v.principal, v.fingerprint));
                self.status.update(name, |s| s.signed_by = signed_by);
            }
            Err(err) => {
                self.status.update(name, |s| s.signed_by = None);
                self.announce(commit, "verifying the commit signature");
                // Not recorded as evaluated: once the allowed signers file
                // lists the key, the next poll evaluates this same commit.
                let rejected = err.rejects_commit();
                return SyncResult::Failed(SyncFailure {
                    kind: if rejected {
                        "untrusted_commit"
                    } else {
                        "verify_error"
                    },
                    commit: Some(commit),
                    error: err.to_string(),
                    commit_rejected: rejected,
                    dags: None,
                });
            }
        }

        let evaluated = *self.evaluated.lock().unwrap_or_else(|e| e.into_inner());
        if evaluated.map(|(c, _)| c) == Some(commit) {
            return SyncResult::Unchanged { commit };
        }
        let Some(dags) = &self.dags else {
            self.set_evaluated(commit, true);
            return SyncResult::Fetched { commit };
        };
        self.announce(commit, "validating and publishing the DAGs");
        let repo = match self.source.open() {
            Ok(repo) => repo,
            Err(err) => return fetch_failure(err),
        };
        let mut target = dags.lock().unwrap_or_else(|e| e.into_inner());
        match target.sync(&repo, commit, cancel) {
            Ok(outcome) => {
                self.set_evaluated(commit, true);
                SyncResult::Published(outcome)
            }
            Err(err) => {
                let rejected = matches!(err, DagsError::Blocked { .. } | DagsError::Snapshot(_));
                if rejected {
                    self.set_evaluated(commit, false);
                }
                SyncResult::Failed(SyncFailure {
                    kind: if rejected {
                        "validation_failed"
                    } else {
                        "publish_error"
                    },
                    commit: Some(commit),
                    error: err.to_string(),
                    commit_rejected: rejected,
                    dags: Some(err),
                })
            }
        }
    }

    /// Applies a new (or not yet successfully applied) revision, or checks
    /// for drift when it is due; otherwise nothing.
    async fn sync_kubernetes(
        &self,
        kube: &tokio::sync::Mutex<KubeTarget>,
        commit: Oid,
        cancel: &AtomicBool,
    ) -> SyncResult {
        let mut target = kube.lock().await;
        let apply = target.needs_apply(commit);
        if !apply && !target.drift_due() {
            return SyncResult::Unchanged { commit };
        }
        if apply {
            self.announce(commit, "applying to Kubernetes and waiting for health");
        }
        let mirror = self.source.mirror_path().to_path_buf();
        let path = target.config.path.clone();
        let manifests = tokio::task::spawn_blocking(move || {
            crate::desired::manifests::read_mirror(&mirror, commit, &path)
        })
        .await
        .unwrap_or_else(|e| {
            Err(vec![crate::desired::manifests::ManifestError::general(
                "",
                format!("reading manifests panicked: {e}"),
            )])
        });
        let result = if apply {
            target
                .apply(commit, manifests, cancel)
                .await
                .map(KubeSync::Applied)
        } else {
            target.check_drift(commit, manifests, cancel).await
        };
        match result {
            Ok(KubeSync::Applied(outcome)) if !outcome.succeeded() => {
                let failed: Vec<String> = outcome
                    .objects
                    .iter()
                    .filter_map(|o| {
                        let why = o.error.clone().or_else(|| match &o.health {
                            Some(crate::kubernetes::health::Health::Failed(r)) => Some(r.clone()),
                            _ => None,
                        })?;
                        Some(format!("{}: {why}", o.id))
                    })
                    .collect();
                let error = format!(
                    "{} object(s) failed; the last good revision stays recorded: {}",
                    failed.len(),
                    failed.first().cloned().unwrap_or_default()
                );
                self.record_kube(commit, &KubeSync::Applied(outcome));
                SyncResult::Failed(SyncFailure {
                    kind: "apply_failed",
                    commit: Some(commit),
                    error,
                    commit_rejected: false,
                    dags: None,
                })
            }
            Ok(sync) => SyncResult::Kube { commit, sync },
            Err(err) => SyncResult::Failed(SyncFailure {
                kind: if err.is_revision_error() {
                    "invalid_revision"
                } else {
                    "cluster_error"
                },
                commit: Some(commit),
                error: err.to_string(),
                commit_rejected: err.is_revision_error(),
                dags: None,
            }),
        }
    }

    /// Applies platform.yaml of a new (or not yet applied) revision to AWS,
    /// or checks for drift when due. `kube` is what the Kubernetes target
    /// did before, carried into the result.
    #[cfg(feature = "aws")]
    async fn sync_aws(
        &self,
        aws: &tokio::sync::Mutex<crate::aws::target::AwsTarget>,
        commit: Oid,
        kube: Option<KubeSync>,
        cancel: &AtomicBool,
    ) -> SyncResult {
        use crate::aws::target::AwsSync;
        let mut target = aws.lock().await;
        let apply = target.needs_apply(commit);
        if !apply && !target.drift_due() {
            return match kube {
                Some(sync) => SyncResult::Kube { commit, sync },
                None => SyncResult::Unchanged { commit },
            };
        }
        if apply {
            self.announce(commit, "applying to AWS and following the updates");
        }
        let mirror = self.source.mirror_path().to_path_buf();
        let file = target.config.file.clone();
        let platform = tokio::task::spawn_blocking(move || {
            crate::desired::platform::read_mirror(&mirror, commit, &file)
        })
        .await
        .unwrap_or_else(|e| {
            Err(vec![crate::desired::platform::PlatformError {
                file: String::new(),
                line: None,
                key: "(file)".into(),
                message: format!("reading platform.yaml panicked: {e}"),
            }])
        });
        let result = if apply {
            target
                .apply(commit, platform, cancel)
                .await
                .map(AwsSync::Applied)
        } else {
            target
                .check_drift(commit, platform)
                .await
                .map(AwsSync::Drift)
        };
        // Whatever AWS did, the Kubernetes part is recorded on its own.
        let failed = |kind: &'static str, error: String, rejected: bool| {
            SyncResult::Failed(SyncFailure {
                kind,
                commit: Some(commit),
                error,
                commit_rejected: rejected,
                dags: None,
            })
        };
        match result {
            Ok(AwsSync::Applied(outcome)) if !outcome.succeeded() => {
                if let Some(k) = &kube {
                    self.record_kube(commit, k);
                }
                let failures = outcome.failures();
                self.record_aws(commit, &AwsSync::Applied(outcome));
                failed(
                    "apply_failed",
                    format!(
                        "{} AWS change(s) failed; the last good revision stays recorded: {}",
                        failures.len(),
                        failures.first().cloned().unwrap_or_default()
                    ),
                    false,
                )
            }
            Ok(sync) => SyncResult::Aws { commit, sync, kube },
            Err(err) => {
                if let Some(k) = &kube {
                    self.record_kube(commit, k);
                }
                if err.is_revision_error() {
                    failed("invalid_revision", err.to_string(), true)
                } else {
                    failed("aws_error", err.to_string(), false)
                }
            }
        }
    }

    /// Puts an AWS result in status and metrics.
    #[cfg(feature = "aws")]
    fn record_aws(&self, commit: Oid, sync: &crate::aws::target::AwsSync) {
        use crate::aws::target::AwsSync;
        let name = &self.source.name;
        let now = timestamp(SystemTime::now());
        match sync {
            AwsSync::Applied(outcome) => {
                let value = serde_json::to_value(outcome).ok();
                let ok = outcome.succeeded();
                let drift = outcome.drift.clone();
                self.metrics
                    .aws_drift
                    .get_or_create(&metrics::source(name))
                    .set(drift.len() as i64);
                self.status.update(name, |s| {
                    let a = s.aws.get_or_insert_with(Default::default);
                    if ok {
                        a.applied_revision = Some(commit.to_string());
                        a.drift = drift;
                        a.last_drift_check = Some(now);
                    }
                    a.last_apply = value;
                });
            }
            AwsSync::Drift(drift) => {
                if !drift.is_empty() {
                    tracing::warn!(source = %name, differences = ?drift, "AWS drift detected");
                }
                self.metrics
                    .aws_drift
                    .get_or_create(&metrics::source(name))
                    .set(drift.len() as i64);
                let drift = drift.clone();
                self.status.update(name, |s| {
                    let a = s.aws.get_or_insert_with(Default::default);
                    a.drift = drift;
                    a.last_drift_check = Some(now);
                });
            }
        }
    }

    /// Puts a Kubernetes result in status and metrics.
    fn record_kube(&self, commit: Oid, sync: &KubeSync) {
        let name = &self.source.name;
        match sync {
            KubeSync::Applied(outcome) => {
                for o in &outcome.objects {
                    let status = format!("{:?}", o.status).to_lowercase();
                    self.metrics
                        .kube_objects
                        .get_or_create(&KubeObjectLabels {
                            source: name.clone(),
                            status,
                        })
                        .inc();
                }
                let outcome = outcome.clone();
                self.status.update(name, |s| {
                    let k = s.kubernetes.get_or_insert_with(KubeStatus::default);
                    if outcome.succeeded() {
                        k.applied_revision = Some(commit.to_string());
                        k.drift.clear();
                    }
                    k.last_apply = Some(outcome);
                });
            }
            KubeSync::Drift { drifted, healed } => {
                let remaining = if healed.as_ref().is_some_and(|h| h.succeeded()) {
                    Vec::new()
                } else {
                    drifted.clone()
                };
                self.metrics
                    .drift_objects
                    .get_or_create(&metrics::source(name))
                    .set(remaining.len() as i64);
                if !drifted.is_empty() {
                    tracing::warn!(source = %name, objects = ?drifted, healed = healed.is_some(), "drift detected");
                }
                let healed = healed.clone();
                self.status.update(name, |s| {
                    let k = s.kubernetes.get_or_insert_with(KubeStatus::default);
                    k.drift = remaining;
                    k.last_drift_check = Some(timestamp(SystemTime::now()));
                    if let Some(h) = healed {
                        k.last_apply = Some(h);
                    }
                });
            }
        }
    }

    /// Marks the start of a commit's evaluation (once per commit): status
    /// API and, when reporting, `pending` on GitHub.
    fn announce(&self, commit: Oid, what: &str) {
        {
            let mut announced = self.announced.lock().unwrap_or_else(|e| e.into_inner());
            if *announced == Some(commit) {
                return;
            }
            *announced = Some(commit);
        }
        let sha = commit.to_string();
        self.status.record_revision(
            &self.source.name,
            RevisionRecord {
                revision: sha.clone(),
                origin: "branch",
                pull_request: None,
                state: "pending",
                description: format!("ferry is {what}"),
                at: timestamp(SystemTime::now()),
                detail: None,
            },
        );
        if let Some((reporter, subject)) = &self.report {
            reporter.started(subject, &sha, &format!("ferry is {what}"));
        }
    }

    /// The final word on an evaluated commit: status API and GitHub.
    fn report(&self, result: &SyncResult) {
        let (commit, state, description, detail) = match result {
            SyncResult::Published(outcome) => {
                let description = if !outcome.published {
                    "already live".to_string()
                } else if outcome.warnings.is_empty() {
                    format!(
                        "published {} file(s) in {} ms",
                        outcome.stats.files_written + outcome.stats.files_linked,
                        outcome.duration_ms
                    )
                } else {
                    format!(
                        "published with {} DAG warning(s) (policy: warn): {}",
                        outcome.warnings.len(),
                        outcome.warnings[0]
                    )
                };
                (
                    outcome.commit.clone(),
                    State::Success,
                    description,
                    serde_json::to_value(outcome).ok(),
                )
            }
            SyncResult::Kube {
                commit,
                sync: KubeSync::Applied(outcome),
            } => (
                commit.to_string(),
                State::Success,
                format!(
                    "{} object(s) in sync, all healthy; {} sent, {} pruned",
                    outcome.objects.len(),
                    outcome.count(crate::kubernetes::apply::Status::Applied),
                    outcome.count(crate::kubernetes::apply::Status::Pruned)
                ),
                serde_json::to_value(outcome).ok(),
            ),
            #[cfg(feature = "aws")]
            SyncResult::Aws { commit, sync, kube } => {
                let mut parts = Vec::new();
                if let Some(KubeSync::Applied(k)) = kube {
                    parts.push(format!(
                        "Kubernetes: {} object(s) in sync, all healthy",
                        k.objects.len()
                    ));
                }
                if let crate::aws::target::AwsSync::Applied(a) = sync {
                    parts.push(format!("AWS: {} change(s) applied", a.results.len()));
                    if !a.drift.is_empty() {
                        parts.push(format!("{} difference(s) left as drift", a.drift.len()));
                    }
                }
                (
                    commit.to_string(),
                    State::Success,
                    parts.join("; "),
                    serde_json::to_value(sync).ok(),
                )
            }
            SyncResult::Failed(failure) => {
                let Some(commit) = failure.commit else {
                    return; // no commit evaluated (e.g. the fetch failed)
                };
                let state = match failure.kind {
                    "validation_failed" | "invalid_revision" | "apply_failed"
                    | "untrusted_commit" => State::Failure,
                    // e.g. a nodegroup missing in AWS: the commit cannot apply as is
                    "aws_error" if failure.error.contains("not found in AWS") => State::Failure,
                    _ => State::Error,
                };
                let description = match failure.dags.as_ref().and_then(|d| d.problems().first()) {
                    Some(problem) => format!("DAG check failed: {problem}"),
                    None => failure.error.clone(),
                };
                (commit.to_string(), state, description, None)
            }
            _ => return,
        };
        if self
            .announced
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .map(|c| c.to_string())
            != Some(commit.clone())
        {
            // Not announced: nothing was evaluated anew (e.g. a drift check).
            return;
        }
        self.status.record_revision(
            &self.source.name,
            RevisionRecord {
                revision: commit.clone(),
                origin: "branch",
                pull_request: None,
                state: state.as_str(),
                description: description.clone(),
                at: timestamp(SystemTime::now()),
                detail,
            },
        );
        if let Some((reporter, subject)) = &self.report {
            reporter.finished(subject, &commit, state, &description);
        }
    }

    /// Queues previews of open pull requests whose head has none yet: the
    /// fallback for lost `pull_request` webhooks, one API call per interval.
    async fn poll_pulls(&self) {
        let Some((reporter, subject)) = &self.report else {
            return;
        };
        if !self.previews_enabled || (self.dags_config.is_none() && !self.is_platform()) {
            return;
        }
        {
            let mut last = self
                .last_pull_poll
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if last.is_some_and(|at| at.elapsed() < self.interval) {
                return;
            }
            *last = Some(Instant::now());
        }
        let context = if self.is_platform() {
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

    /// Previews the pull requests that webhooks (or polling) asked for.
    async fn run_previews(&self, cancel: &AtomicBool) {
        let Some((reporter, subject)) = &self.report else {
            return;
        };
        for (pr, announced_sha) in self.previews.take() {
            #[cfg(feature = "aws")]
            let aws_config = self.aws_config.as_ref();
            #[cfg(not(feature = "aws"))]
            let aws_config: Option<&()> = None;
            let target = match (&self.kube_config, aws_config, &self.dags_config) {
                (kube, aws, _) if kube.is_some() || aws.is_some() => PreviewTarget::Platform {
                    kubernetes: kube.as_ref(),
                    #[cfg(feature = "aws")]
                    aws,
                },
                (_, _, Some(d)) => PreviewTarget::Dags(d),
                _ => return,
            };
            let started = Instant::now();
            let preview = preview::run(&self.source, target, pr, &self.cache_dir, cancel).await;
            let result = if preview.state == State::Error {
                "error"
            } else {
                preview.state.as_str()
            };
            self.metrics
                .previews
                .get_or_create(&ResultLabels {
                    source: self.source.name.clone(),
                    result: result.to_string(),
                })
                .inc();
            tracing::info!(source = %self.source.name, pr, sha = %preview.sha, state = preview.state.as_str(), duration_ms = started.elapsed().as_millis() as u64, "previewed pull request");
            if preview.sha.is_empty() {
                tracing::warn!(source = %self.source.name, pr, announced = %announced_sha, error = %preview.description, "preview failed");
                continue;
            }
            if preview.sha != announced_sha {
                tracing::info!(source = %self.source.name, pr, announced = %announced_sha, fetched = %preview.sha, "the PR moved on since the webhook; previewed its newest head");
            }
            self.status.record_revision(
                &self.source.name,
                RevisionRecord {
                    revision: preview.sha.clone(),
                    origin: "preview",
                    pull_request: Some(pr),
                    state: preview.state.as_str(),
                    description: preview.description.clone(),
                    at: timestamp(SystemTime::now()),
                    detail: Some(preview.detail),
                },
            );
            reporter.preview_status(
                subject,
                preview.context,
                &preview.sha,
                preview.state,
                &preview.description,
            );
            if !preview.comment.is_empty() {
                reporter.comment(
                    &subject.repo,
                    pr,
                    &crate::report::comment::marker(&self.source.name),
                    preview.comment,
                );
            }
        }
    }

    fn set_evaluated(&self, commit: Oid, accepted: bool) {
        *self.evaluated.lock().unwrap_or_else(|e| e.into_inner()) = Some((commit, accepted));
    }

    /// Records a result in status, metrics and logs. Returns true when the
    /// sync should be retried with backoff rather than at the next interval.
    fn record(&self, result: &SyncResult) -> bool {
        let name = &self.source.name;
        let now = timestamp(SystemTime::now());
        self.metrics
            .syncs
            .get_or_create(&ResultLabels {
                source: name.clone(),
                result: result.label().to_string(),
            })
            .inc();
        let accepted = match result {
            SyncResult::Unchanged { commit } => {
                let accepted = self
                    .evaluated
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .is_some_and(|(c, ok)| c == *commit && ok);
                tracing::debug!(source = %name, commit = %commit, "unchanged");
                accepted
            }
            SyncResult::Kube { commit, sync } => {
                if let KubeSync::Applied(outcome) = sync {
                    tracing::info!(source = %name, commit = %commit, objects = outcome.objects.len(), unchanged = outcome.unchanged, "applied to Kubernetes");
                }
                self.record_kube(*commit, sync);
                self.metrics.set_revision(name, &commit.to_string());
                true
            }
            #[cfg(feature = "aws")]
            SyncResult::Aws { commit, sync, kube } => {
                if let Some(k) = kube {
                    self.record_kube(*commit, k);
                }
                if let crate::aws::target::AwsSync::Applied(outcome) = sync {
                    tracing::info!(source = %name, commit = %commit, changes = outcome.results.len(), cleaned = outcome.cleaned.len(), "applied to AWS");
                }
                self.record_aws(*commit, sync);
                self.metrics.set_revision(name, &commit.to_string());
                true
            }
            SyncResult::Fetched { commit } => {
                tracing::info!(source = %name, commit = %commit, "fetched");
                self.metrics.set_revision(name, &commit.to_string());
                true
            }
            SyncResult::Published(outcome) => {
                if outcome.published {
                    tracing::info!(
                        source = %name,
                        commit = %outcome.commit,
                        files_written = outcome.stats.files_written,
                        files_linked = outcome.stats.files_linked,
                        duration_ms = outcome.duration_ms,
                        pruned = outcome.pruned.len(),
                        "published DAGs"
                    );
                }
                for warning in &outcome.warnings {
                    tracing::warn!(source = %name, commit = %outcome.commit, problem = %warning, "published with a DAG problem (policy: warn)");
                }
                for (how, n) in [
                    ("written", outcome.stats.files_written),
                    ("linked", outcome.stats.files_linked),
                ] {
                    self.metrics
                        .files_published
                        .get_or_create(&FileLabels {
                            source: name.clone(),
                            how: how.into(),
                        })
                        .inc_by(n as u64);
                }
                self.metrics.set_revision(name, &outcome.commit);
                let outcome = outcome.clone();
                self.status.update(name, |s| {
                    s.published_revision = Some(outcome.commit.clone());
                    s.last_outcome = Some(outcome);
                });
                true
            }
            SyncResult::Failed(failure) => {
                tracing::warn!(source = %name, kind = failure.kind, commit = ?failure.commit.map(|c| c.to_string()), error = %failure.error, "sync failed");
                let problems = failure
                    .dags
                    .as_ref()
                    .map(|d| d.problems().to_vec())
                    .unwrap_or_default();
                let hook = failure.dags.as_ref().and_then(|d| d.hook().cloned());
                let report = ErrorReport {
                    kind: failure.kind,
                    message: failure.error.clone(),
                    commit: failure.commit.map(|c| c.to_string()),
                    file: problems.first().map(|p| p.file.clone()),
                    line: problems.first().and_then(|p| p.line),
                    problems,
                    hook,
                    at: now.clone(),
                };
                self.status.update(name, |s| {
                    s.last_error = Some(report);
                    s.consecutive_failures += 1;
                    s.first_sync_done = true;
                });
                self.metrics
                    .consecutive_failures
                    .get_or_create(&metrics::source(name))
                    .inc();
                return !failure.commit_rejected;
            }
        };
        if accepted {
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
        false
    }
}

/// Resolves once `shutdown` is true, also when it already was (unlike
/// `changed`, which a change seen by an earlier `select!` never wakes).
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}

fn fetch_failure(err: SourceError) -> SyncResult {
    SyncResult::Failed(SyncFailure {
        kind: "fetch_error",
        commit: None,
        error: err.to_string(),
        commit_rejected: false,
        dags: None,
    })
}

/// Exponential backoff with "equal jitter": each delay is drawn from
/// [d/2, d] with d doubling from 1 s up to the cap, so many agents that lost
/// the same server do not come back in lockstep.
pub struct Backoff {
    attempt: u32,
    cap: Duration,
}

impl Backoff {
    pub fn new(cap: Duration) -> Backoff {
        Backoff { attempt: 0, cap }
    }

    pub fn next_delay(&mut self) -> Duration {
        let exp = Duration::from_secs(1).saturating_mul(1u32 << self.attempt.min(16));
        self.attempt = self.attempt.saturating_add(1);
        let d = exp.min(self.cap);
        let half = d / 2;
        half + half.mul_f64(fastrand::f64())
    }

    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::Backoff;
    use std::time::Duration;

    #[test]
    fn backoff_grows_is_capped_and_jittered() {
        let mut b = Backoff::new(Duration::from_secs(10));
        let delays: Vec<Duration> = (0..8).map(|_| b.next_delay()).collect();
        assert!(delays[0] >= Duration::from_millis(500) && delays[0] <= Duration::from_secs(1));
        assert!(delays[3] >= Duration::from_secs(4) && delays[3] <= Duration::from_secs(8));
        assert!(delays.iter().all(|d| *d <= Duration::from_secs(10)));
        assert!(delays[7] >= Duration::from_secs(5));
        b.reset();
        assert!(b.next_delay() <= Duration::from_secs(1));
    }
}
