//! Prometheus metrics, exposed on `/metrics` in the text format.

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceLabels {
    pub source: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub source: String,
    /// `success`, `unchanged`, `fetch_error`, `validation_failed`, `publish_error`
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RevisionLabels {
    pub source: String,
    pub revision: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FileLabels {
    pub source: String,
    /// `written` or `linked`
    pub how: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReceiverLabels {
    pub receiver: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NotificationLabels {
    pub receiver: String,
    /// `ok`, `retried`, `refused`
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KeptLabels {
    pub source: String,
    /// `live`, `newest`, `recent`, `airflow_run`, `airflow_dag`, `airflow_ended_run`
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BuildLabels {
    pub version: String,
    pub commit: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GithubLabels {
    /// `status`, `deployment`, `comment`
    pub op: String,
    /// `ok`, `retried`, `refused`
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KubeObjectLabels {
    pub source: String,
    /// `applied`, `failed`, `pruned`, `kept`
    pub status: String,
}

type HistogramFamily = Family<SourceLabels, Histogram, fn() -> Histogram>;

fn duration_histogram() -> Histogram {
    Histogram::new([
        0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
    ])
}

pub struct Metrics {
    registry: Registry,
    pub sync_duration: HistogramFamily,
    pub fetch_duration: HistogramFamily,
    pub syncs: Family<ResultLabels, Counter>,
    pub last_success: Family<SourceLabels, Gauge<f64, AtomicU64>>,
    pub revision: Family<RevisionLabels, Gauge>,
    pub files_published: Family<FileLabels, Counter>,
    pub consecutive_failures: Family<SourceLabels, Gauge>,
    /// 1 while the source is suspended (`ferry suspend`).
    pub suspended: Family<SourceLabels, Gauge>,
    pub drift_objects: Family<SourceLabels, Gauge>,
    pub aws_drift: Family<SourceLabels, Gauge>,
    pub webhooks: Family<WebhookLabels, Counter>,
    pub kube_objects: Family<KubeObjectLabels, Counter>,
    pub github_requests: Family<GithubLabels, Counter>,
    pub github_outbox: Gauge,
    pub previews: Family<ResultLabels, Counter>,
    /// 1 while this process holds the leader Lease (or runs without one).
    pub leader: Gauge,
    /// Damaged git mirrors replaced by a fresh fetch.
    pub mirror_repairs: Family<SourceLabels, Counter>,
    /// DAG revisions on the volume after the last retention pass.
    pub revisions_kept: Family<SourceLabels, Gauge>,
    /// Of those, how many each rule holds (one revision may count under several).
    pub revisions_kept_by: Family<KeptLabels, Gauge>,
    pub bytes_kept: Family<SourceLabels, Gauge>,
    /// 1 when Airflow answered the last retention pass, 0 when it could not be asked.
    pub airflow_up: Family<SourceLabels, Gauge>,
    pub notifications: Family<NotificationLabels, Counter>,
    pub notifications_queued: Family<ReceiverLabels, Gauge>,
    /// Last revision label set per source, so a new revision replaces it.
    live_revision: Mutex<Vec<RevisionLabels>>,
}

impl Metrics {
    pub fn new() -> Arc<Metrics> {
        let mut registry = Registry::with_prefix("ferry");
        let sync_duration: HistogramFamily = Family::new_with_constructor(duration_histogram);
        let fetch_duration: HistogramFamily = Family::new_with_constructor(duration_histogram);
        let syncs = Family::<ResultLabels, Counter>::default();
        let last_success = Family::<SourceLabels, Gauge<f64, AtomicU64>>::default();
        let revision = Family::<RevisionLabels, Gauge>::default();
        let files_published = Family::<FileLabels, Counter>::default();
        let consecutive_failures = Family::<SourceLabels, Gauge>::default();
        let drift_objects = Family::<SourceLabels, Gauge>::default();
        let aws_drift = Family::<SourceLabels, Gauge>::default();
        registry.register(
            "aws_drift_resources",
            "Differences between AWS (EKS, SageMaker) and the applied platform.yaml at the last check",
            aws_drift.clone(),
        );
        let webhooks = Family::<WebhookLabels, Counter>::default();
        registry.register(
            "webhooks",
            "GitHub webhook deliveries by event and outcome",
            webhooks.clone(),
        );
        let kube_objects = Family::<KubeObjectLabels, Counter>::default();
        let github_requests = Family::<GithubLabels, Counter>::default();
        registry.register(
            "github_reports",
            "Reports sent to GitHub by kind and outcome (retried: GitHub unavailable or rate limiting; refused: dropped)",
            github_requests.clone(),
        );
        let github_outbox = Gauge::default();
        registry.register(
            "github_outbox",
            "Reports waiting to be delivered to GitHub",
            github_outbox.clone(),
        );
        let previews = Family::<ResultLabels, Counter>::default();
        let build = Family::<BuildLabels, Gauge>::default();
        build
            .get_or_create(&BuildLabels {
                version: crate::build::VERSION.into(),
                commit: crate::build::COMMIT.into(),
            })
            .set(1);
        registry.register(
            "build_info",
            "The running ferry's version and commit (value is always 1)",
            build,
        );
        let mirror_repairs = Family::<SourceLabels, Counter>::default();
        registry.register(
            "mirror_repairs",
            "Damaged git mirrors (left by a killed run or a full disk) replaced and fetched afresh",
            mirror_repairs.clone(),
        );
        let leader = Gauge::default();
        registry.register(
            "leader",
            "1 while this process may sync (it holds the leader Lease, or leader election is off)",
            leader.clone(),
        );
        registry.register(
            "previews",
            "Pull request previews by result",
            previews.clone(),
        );
        registry.register(
            "drift_objects",
            "Kubernetes objects that differ from the applied revision at the last drift check",
            drift_objects.clone(),
        );
        registry.register(
            "kube_objects",
            "Kubernetes objects handled by applies, by outcome",
            kube_objects.clone(),
        );
        registry.register(
            "sync_duration_seconds",
            "Duration of one sync (fetch, validate, publish) of a source",
            sync_duration.clone(),
        );
        registry.register(
            "fetch_duration_seconds",
            "Duration of one git fetch (ref listing included)",
            fetch_duration.clone(),
        );
        registry.register("syncs", "Syncs by result", syncs.clone());
        registry.register(
            "last_success_timestamp_seconds",
            "Unix time of the last successful sync",
            last_success.clone(),
        );
        registry.register(
            "revision_info",
            "Commit currently live for the source (value is always 1)",
            revision.clone(),
        );
        registry.register(
            "dags_files_published",
            "Files placed into DAG revisions: written fresh, hardlinked into a new directory, or in a directory shared with earlier revisions",
            files_published.clone(),
        );
        registry.register(
            "source_consecutive_failures",
            "Failed syncs since the last success",
            consecutive_failures.clone(),
        );
        let suspended = Family::<SourceLabels, Gauge>::default();
        registry.register(
            "source_suspended",
            "1 while the source is suspended: fetched and checked for drift, nothing applied",
            suspended.clone(),
        );
        let revisions_kept = Family::<SourceLabels, Gauge>::default();
        registry.register(
            "dags_revisions_kept",
            "DAG revisions on the volume after the last retention pass, the live one included",
            revisions_kept.clone(),
        );
        let revisions_kept_by = Family::<KeptLabels, Gauge>::default();
        registry.register(
            "dags_revisions_kept_by",
            "DAG revisions each retention rule holds (a revision held by several rules counts under each)",
            revisions_kept_by.clone(),
        );
        let bytes_kept = Family::<SourceLabels, Gauge>::default();
        registry.register(
            "dags_bytes_kept",
            "Bytes the DAG revisions on the volume take (a file hardlinked into several counts once)",
            bytes_kept.clone(),
        );
        let airflow_up = Family::<SourceLabels, Gauge>::default();
        registry.register(
            "dags_airflow_up",
            "1 when Airflow said which revisions it still runs at the last retention pass; 0 when it could not be asked (pruning then follows keep and max_age only)",
            airflow_up.clone(),
        );
        let notifications = Family::<NotificationLabels, Counter>::default();
        registry.register(
            "notifications",
            "Notification delivery attempts by receiver and outcome (retried: the receiver failed or did not answer; refused: dropped)",
            notifications.clone(),
        );
        let notifications_queued = Family::<ReceiverLabels, Gauge>::default();
        registry.register(
            "notifications_queued",
            "Notifications waiting to be delivered, by receiver",
            notifications_queued.clone(),
        );
        Arc::new(Metrics {
            notifications,
            notifications_queued,
            revisions_kept,
            revisions_kept_by,
            bytes_kept,
            airflow_up,
            registry,
            sync_duration,
            fetch_duration,
            syncs,
            last_success,
            revision,
            files_published,
            consecutive_failures,
            suspended,
            drift_objects,
            aws_drift,
            webhooks,
            kube_objects,
            github_requests,
            github_outbox,
            previews,
            leader,
            mirror_repairs,
            live_revision: Mutex::new(Vec::new()),
        })
    }

    /// Creates a source's series at zero, so they exist from the start:
    /// dashboards show 0 instead of "no data", and alerts need no `absent()`.
    /// `airflow`: the DAGs target asks Airflow before pruning; its gauge
    /// starts at 0 (not asked yet) and the first retention pass sets it.
    pub fn init_source(&self, source: &str, dags: bool, airflow: bool, kube: bool, aws: bool) {
        let labels = SourceLabels {
            source: source.to_string(),
        };
        let _ = self.sync_duration.get_or_create(&labels);
        let _ = self.fetch_duration.get_or_create(&labels);
        let _ = self.consecutive_failures.get_or_create(&labels);
        let _ = self.suspended.get_or_create(&labels);
        let _ = self.last_success.get_or_create(&labels);
        let _ = self.mirror_repairs.get_or_create(&labels);
        for result in ["success", "unchanged"] {
            let _ = self.syncs.get_or_create(&ResultLabels {
                source: source.to_string(),
                result: result.into(),
            });
        }
        if dags {
            for how in ["written", "linked"] {
                let _ = self.files_published.get_or_create(&FileLabels {
                    source: source.to_string(),
                    how: how.into(),
                });
            }
            let _ = self.revisions_kept.get_or_create(&labels);
            let _ = self.bytes_kept.get_or_create(&labels);
            for reason in crate::dags::Reason::LABELS {
                let _ = self.revisions_kept_by.get_or_create(&KeptLabels {
                    source: source.to_string(),
                    reason: reason.into(),
                });
            }
        }
        if airflow {
            let _ = self.airflow_up.get_or_create(&labels);
        }
        if kube {
            let _ = self.drift_objects.get_or_create(&labels);
            let _ = self.kube_objects.get_or_create(&KubeObjectLabels {
                source: source.to_string(),
                status: "applied".into(),
            });
        }
        if aws {
            let _ = self.aws_drift.get_or_create(&labels);
        }
    }

    /// The same for GitHub reporting and previews.
    pub fn init_github(&self, sources: &[String]) {
        for op in ["status", "deployment", "comment"] {
            let _ = self.github_requests.get_or_create(&GithubLabels {
                op: op.into(),
                outcome: "ok".into(),
            });
        }
        for source in sources {
            let _ = self.previews.get_or_create(&ResultLabels {
                source: source.clone(),
                result: "success".into(),
            });
        }
    }

    pub fn set_revision(&self, source: &str, revision: &str) {
        let labels = RevisionLabels {
            source: source.to_string(),
            revision: revision.to_string(),
        };
        let mut live = self.live_revision.lock().unwrap_or_else(|e| e.into_inner());
        live.retain(|old| {
            if old.source == source && old.revision != revision {
                self.revision.remove(old);
                false
            } else {
                true
            }
        });
        if !live.contains(&labels) {
            live.push(labels.clone());
        }
        self.revision.get_or_create(&labels).set(1);
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WebhookLabels {
    pub event: String,
    /// `triggered`, `preview`, `ignored`, `duplicate`, `pong`, `unauthorized`, `bad_request`
    pub outcome: String,
}

pub fn source(name: &str) -> SourceLabels {
    SourceLabels {
        source: name.to_string(),
    }
}
