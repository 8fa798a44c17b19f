//! One enum, one face: every target plans a [`Desired`] read-only into a
//! [`Plan`] (for apply, `ferry plan`, PR previews and drift alike) and
//! applies exactly the plan it is given into an [`Outcome`]. The agent,
//! the preview and the CLI drive targets only through this face; the
//! `aws` feature lives at one variant here, not at every call site.

use std::sync::atomic::AtomicBool;

use git2::Oid;

use crate::config::{Config, SourceConfig};
use crate::dags::{DagsError, DagsOutcome, DagsPlan, DagsTarget, PublishError};
use crate::desired::helm::HelmSettings;
use crate::desired::{DagsFeed, Desired, Feeds, ReleasesFeed};
use crate::kubernetes::apply::{ApplyOutcome, Status};
use crate::kubernetes::health::Health;
use crate::kubernetes::plan::{self as kube_plan, Depth};
use crate::kubernetes::target::KubeTarget;
use crate::report::comment::TargetPreview;
use crate::verdict::{Failure, Reason};

// One of each lives for the whole process and is never moved in a hot
// path, so the variants' sizes do not matter (and boxing one only flags the
// other with a feature set that leaves it alone).
#[allow(clippy::large_enum_variant)]
pub enum Target {
    Dags(DagsTarget),
    Kubernetes(KubeTarget),
    #[cfg(feature = "aws")]
    Aws(crate::aws::target::AwsTarget),
}

/// What a plan is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// To be applied next: a plan the revision cannot take is a failure.
    Apply,
    /// For people and drift: every change and every problem, listed.
    Review,
}

pub enum Plan {
    Dags(DagsPlan),
    Kubernetes(kube_plan::Plan),
    #[cfg(feature = "aws")]
    Aws(crate::aws::AwsPlan),
}

#[derive(Debug, Clone, serde::Serialize)]
#[serde(untagged)]
pub enum Outcome {
    Dags(DagsOutcome),
    Kubernetes(ApplyOutcome),
    #[cfg(feature = "aws")]
    Aws(crate::aws::AwsOutcome),
}

/// The targets `source` feeds, in apply order (DAGs, Kubernetes, AWS).
/// With `scratch`, a DAGs target stages there instead of its destination:
/// a preview's, which must never touch the volume Airflow reads.
pub fn for_source(
    config: &Config,
    source: &SourceConfig,
    scratch: Option<&std::path::Path>,
) -> Result<Vec<Target>, PublishError> {
    let mut targets = Vec::new();
    if let Some(dags) = config
        .targets
        .dags
        .as_ref()
        .filter(|d| d.source == source.name)
    {
        let target = match scratch {
            Some(dir) => {
                let mut dags = dags.clone();
                dags.destination = dir.to_path_buf();
                DagsTarget::open(dags)?
            }
            None => {
                let mut target = DagsTarget::open(dags.clone())?;
                target.set_background_prune(true);
                target
            }
        };
        targets.push(Target::Dags(target));
    }
    if let Some(k) = config
        .targets
        .kubernetes
        .as_ref()
        .filter(|k| k.source == source.name)
    {
        targets.push(Target::Kubernetes(KubeTarget::new(&source.name, k.clone())));
    }
    #[cfg(feature = "aws")]
    if let Some(a) = config
        .targets
        .aws
        .as_ref()
        .filter(|a| a.source == source.name)
    {
        let repo = source.github_repo().unwrap_or_else(|| source.url.clone());
        targets.push(Target::Aws(crate::aws::target::AwsTarget::new(
            &source.name,
            &repo,
            a.clone(),
        )));
    }
    Ok(targets)
}

/// What the gate must read of each commit for `targets`.
pub fn feeds(targets: &[Target]) -> Feeds {
    let mut feeds = Feeds::default();
    for target in targets {
        match target {
            Target::Dags(t) => {
                feeds.dags = Some(DagsFeed {
                    subdir: t.config().subdir.clone(),
                    policy: t.config().validation.policy,
                })
            }
            Target::Kubernetes(t) => {
                feeds.manifests = Some(t.config.path.clone());
                feeds.kustomize = Some(t.config.kustomize.binary.clone());
                feeds.releases = Some(ReleasesFeed {
                    dir: t.config.releases_path.clone(),
                    helm: HelmSettings {
                        binary: t.config.helm.binary.clone(),
                        cache_dir: t.config.cache_dir.clone(),
                        kube_version: t.config.helm.kube_version.clone(),
                        api_versions: t.config.helm.api_versions.clone(),
                        plain_http_registries: t.config.helm.plain_http_registries.clone(),
                        logins: t
                            .config
                            .helm
                            .repositories
                            .iter()
                            .map(|r| {
                                let login = crate::desired::chart::Login {
                                    username: r.username.clone(),
                                    password_file: r.password_file.clone(),
                                };
                                (r.url.clone(), login)
                            })
                            .collect(),
                    },
                });
            }
            #[cfg(feature = "aws")]
            Target::Aws(t) => feeds.platform = Some(t.config.file.clone()),
        }
    }
    feeds
}

/// Fills in what `feeds` needs from the cluster to render `revision`'s Helm
/// releases, when the config leaves it to the cluster: its version and
/// served API versions, asked of the Kubernetes target (so a chart's
/// `.Capabilities` are the live cluster's, as with `helm install`). Only
/// for a revision that declares releases: others need no call.
pub async fn render_context(
    targets: &mut [Target],
    feeds: &mut Feeds,
    revision: &crate::revision::Revision,
) {
    let Some(releases) = feeds.releases.as_mut() else {
        return;
    };
    if !crate::desired::declares(revision, &releases.dir) {
        return;
    }
    for target in targets {
        if let Target::Kubernetes(t) = target {
            let configured = t.config.helm.kube_version.is_some();
            if let Some(c) = t.capabilities().await {
                if !configured {
                    releases.helm.kube_version = Some(c.kube_version);
                }
                let mut api_versions = t.config.helm.api_versions.clone();
                api_versions.extend(c.api_versions);
                releases.helm.api_versions = api_versions;
            }
        }
    }
}

impl Target {
    /// `dags`, `kubernetes` or `aws`: the key of its part of the status API.
    pub fn name(&self) -> &'static str {
        match self {
            Target::Dags(_) => "dags",
            Target::Kubernetes(_) => "kubernetes",
            #[cfg(feature = "aws")]
            Target::Aws(_) => "aws",
        }
    }

    /// The last revision applied in full (for DAGs: the live one).
    pub fn applied(&self) -> Option<Oid> {
        match self {
            Target::Dags(t) => t.live_commit(),
            Target::Kubernetes(t) => t.applied(),
            #[cfg(feature = "aws")]
            Target::Aws(t) => t.applied(),
        }
    }

    /// Due for a drift check of the applied revision (DAGs have no drift:
    /// a published revision never changes).
    pub fn drift_due(&self) -> bool {
        match self {
            Target::Dags(_) => false,
            Target::Kubernetes(t) => t.applied().is_some() && t.drift_due(),
            #[cfg(feature = "aws")]
            Target::Aws(t) => t.applied().is_some() && t.drift_due(),
        }
    }

    pub fn drift_checked(&mut self) {
        match self {
            Target::Dags(_) => {}
            Target::Kubernetes(t) => t.drift_checked(),
            #[cfg(feature = "aws")]
            Target::Aws(t) => t.drift_checked(),
        }
    }

    /// Work between syncs that changes nothing git declares (DAG
    /// retention); runs in the background where it takes long.
    pub fn housekeeping(&mut self) {
        if let Target::Dags(t) = self {
            t.housekeeping();
        }
    }

    /// Heals drift by applying the drift plan: Kubernetes `self_heal`, or
    /// drift that is only new values of Secrets kept in Secrets Manager.
    pub fn heals(&self, plan: &Plan) -> bool {
        match (self, plan) {
            (Target::Kubernetes(t), Plan::Kubernetes(p)) => {
                t.config.self_heal || p.drift_is_only_new_secret_values()
            }
            _ => false,
        }
    }

    /// Plans this target's part of `desired`. Reads only (a DAGs plan
    /// stages files beside the live revision, which Airflow never reads).
    pub async fn plan(
        &mut self,
        desired: &Desired,
        purpose: Purpose,
        cancel: &AtomicBool,
    ) -> Result<Plan, Failure> {
        let commit = desired.revision.commit;
        let missing = |part: &str| {
            Failure::new(
                Reason::Internal,
                format!("the {part} of {commit} were not read"),
            )
        };
        match self {
            Target::Dags(t) => {
                let dags = desired.dags.as_ref().ok_or_else(|| missing("DAGs"))?;
                let repo = desired.revision.open().map_err(|e| {
                    Failure::new(
                        Reason::PublishFailed,
                        format!("cannot open the mirror: {}", e.message()),
                    )
                })?;
                let plan = tokio::task::block_in_place(|| {
                    t.plan(&repo, dags.snapshot.clone(), dags.warnings.clone(), cancel)
                });
                plan.map(Plan::Dags).map_err(dags_failure)
            }
            Target::Kubernetes(t) => {
                let manifests = desired
                    .manifests
                    .as_deref()
                    .ok_or_else(|| missing("manifests"))?;
                let depth = match purpose {
                    Purpose::Apply => Depth::Apply,
                    Purpose::Review => Depth::Review,
                };
                let mut plan = t.plan(commit, manifests, depth).await?;
                plan.guard_prune(&t.config, desired.allow_prune.as_deref());
                if purpose == Purpose::Apply && !plan.errors.is_empty() {
                    return Err(Failure::problems(
                        Reason::Refused,
                        "nothing was applied",
                        plan.problems(),
                    ));
                }
                Ok(Plan::Kubernetes(plan))
            }
            #[cfg(feature = "aws")]
            Target::Aws(t) => {
                let platform = desired
                    .platform
                    .as_ref()
                    .ok_or_else(|| missing("platform declaration"))?;
                let plan = t.plan(commit, platform.as_ref()).await?;
                if purpose == Purpose::Apply && !plan.errors.is_empty() {
                    return Err(Failure::problems(
                        Reason::Refused,
                        "nothing was applied",
                        plan.problems(&t.config.file),
                    ));
                }
                Ok(Plan::Aws(plan))
            }
        }
    }

    /// Applies `plan`, which this target made. An outcome may still hold
    /// failed changes: see [`Outcome::failure`].
    pub async fn apply(&mut self, plan: Plan, cancel: &AtomicBool) -> Result<Outcome, Failure> {
        match (self, plan) {
            (Target::Dags(t), Plan::Dags(p)) => tokio::task::block_in_place(|| t.apply(p))
                .map(Outcome::Dags)
                .map_err(|e| dags_failure(e.into())),
            (Target::Kubernetes(t), Plan::Kubernetes(p)) => {
                t.apply(p, cancel).await.map(Outcome::Kubernetes)
            }
            #[cfg(feature = "aws")]
            (Target::Aws(t), Plan::Aws(p)) => t.apply(p, cancel).await.map(Outcome::Aws),
            _ => Err(Failure::new(
                Reason::Internal,
                "a plan was given to a target that did not make it",
            )),
        }
    }

    /// Throws away a plan that will not be applied.
    pub fn discard(&mut self, plan: Plan) {
        if let (Target::Dags(t), Plan::Dags(p)) = (self, plan) {
            t.discard(p);
        }
    }
}

/// A DAGs failure, typed: the commit's fault waits for git.
fn dags_failure(err: DagsError) -> Failure {
    let reason = match &err {
        DagsError::Blocked { .. } | DagsError::Snapshot(_) => Reason::Invalid,
        DagsError::Cancelled { .. } => Reason::Internal,
        DagsError::Publish(_) | DagsError::Hook(_) => Reason::PublishFailed,
    };
    Failure {
        reason,
        message: err.to_string(),
        problems: err.problems().to_vec(),
        hook: err.hook().cloned().map(Box::new),
    }
}

impl Plan {
    /// Would applying it change anything?
    pub fn changes(&self) -> bool {
        match self {
            Plan::Dags(p) => !p.is_live(),
            Plan::Kubernetes(p) => p.changes(),
            #[cfg(feature = "aws")]
            Plan::Aws(p) => !p.changes.is_empty(),
        }
    }

    /// Problems it found (objects the server refuses count).
    pub fn failed(&self) -> usize {
        match self {
            Plan::Dags(_) => 0,
            Plan::Kubernetes(p) => p.failed(),
            #[cfg(feature = "aws")]
            Plan::Aws(p) => p.errors.len(),
        }
    }

    /// Differences between the live state and the revision planned.
    pub fn drifted(&self) -> Vec<String> {
        match self {
            Plan::Dags(_) => Vec::new(),
            Plan::Kubernetes(p) => p.drifted(),
            #[cfg(feature = "aws")]
            Plan::Aws(p) => p.drifted(),
        }
    }

    /// The first problem, for one-line status descriptions.
    pub fn first_problem(&self) -> Option<String> {
        match self {
            Plan::Dags(_) => None,
            Plan::Kubernetes(p) => p.first_problem(),
            #[cfg(feature = "aws")]
            Plan::Aws(p) => p.errors.first().cloned(),
        }
    }

    /// In the PR comment's target-neutral words (platform targets).
    pub fn preview(&self) -> Option<TargetPreview> {
        match self {
            Plan::Dags(_) => None,
            Plan::Kubernetes(p) => Some(p.preview()),
            #[cfg(feature = "aws")]
            Plan::Aws(p) => Some(p.preview()),
        }
    }

    /// As `ferry plan` prints it.
    pub fn render_text(&self) -> String {
        match self {
            Plan::Dags(p) => format!(
                "Plan for target `dags` at {}: {} file(s), {}\n",
                &p.commit.to_string()[..12],
                p.files(),
                if p.is_live() {
                    "already live"
                } else {
                    "staged, would publish"
                }
            ),
            Plan::Kubernetes(p) => p.render_text(),
            #[cfg(feature = "aws")]
            Plan::Aws(p) => p.render_text(),
        }
    }

    pub fn to_json(&self) -> serde_json::Value {
        match self {
            Plan::Dags(p) => serde_json::json!({
                "commit": p.commit.to_string(),
                "files": p.files(),
                "live": p.is_live(),
                "warnings": p.warnings,
                "hook": p.hook,
            }),
            Plan::Kubernetes(p) => serde_json::to_value(p).unwrap_or_default(),
            #[cfg(feature = "aws")]
            Plan::Aws(p) => serde_json::to_value(p).unwrap_or_default(),
        }
    }
}

impl Outcome {
    /// The target it is the outcome of.
    pub fn target(&self) -> &'static str {
        match self {
            Outcome::Dags(_) => "dags",
            Outcome::Kubernetes(_) => "kubernetes",
            #[cfg(feature = "aws")]
            Outcome::Aws(_) => "aws",
        }
    }

    /// The failure an applied plan still ended in: a change refused, an
    /// object not healthy. None when everything succeeded.
    pub fn failure(&self) -> Option<Failure> {
        let (failed, what) = match self {
            Outcome::Dags(_) => return None,
            Outcome::Kubernetes(o) => {
                let failed: Vec<String> = o
                    .objects
                    .iter()
                    .filter_map(|o| {
                        let why = o.error.clone().or_else(|| match &o.health {
                            Some(Health::Failed(r)) => Some(r.clone()),
                            _ => None,
                        })?;
                        Some(format!("{}: {why}", o.id))
                    })
                    .collect();
                (failed, "object(s)")
            }
            #[cfg(feature = "aws")]
            Outcome::Aws(o) => (o.failures(), "AWS change(s)"),
        };
        if failed.is_empty() && self.succeeded() {
            return None;
        }
        Some(Failure::new(
            Reason::ApplyFailed,
            format!(
                "{} {what} failed; the last good revision stays recorded: {}",
                failed.len(),
                failed.first().cloned().unwrap_or_default()
            ),
        ))
    }

    pub fn succeeded(&self) -> bool {
        match self {
            Outcome::Dags(_) => true,
            Outcome::Kubernetes(o) => o.succeeded(),
            #[cfg(feature = "aws")]
            Outcome::Aws(o) => o.succeeded(),
        }
    }

    /// One line for a commit status.
    pub fn summary(&self) -> String {
        match self {
            Outcome::Dags(o) if !o.published => "already live".to_string(),
            Outcome::Dags(o) if o.warnings.is_empty() => format!(
                "published {} file(s) in {} ms",
                o.stats.files_written + o.stats.files_linked + o.stats.files_shared,
                o.duration_ms
            ),
            Outcome::Dags(o) => format!(
                "published with {} DAG warning(s) (policy: warn): {}",
                o.warnings.len(),
                o.warnings[0]
            ),
            Outcome::Kubernetes(o) => format!(
                "{} object(s) in sync, all healthy; {} sent, {} pruned",
                o.objects.len(),
                o.count(Status::Applied),
                o.count(Status::Pruned)
            ),
            #[cfg(feature = "aws")]
            Outcome::Aws(o) if o.drift.is_empty() => {
                format!("{} AWS change(s) applied", o.results.len())
            }
            #[cfg(feature = "aws")]
            Outcome::Aws(o) => format!(
                "{} AWS change(s) applied; {} difference(s) left as drift",
                o.results.len(),
                o.drift.len()
            ),
        }
    }
}

/// Plans only if every target planned: otherwise the first failure, and
/// the plans made so far to throw away. The gate's second half: a commit
/// one target refuses reaches no target.
pub fn all_or_nothing<P>(planned: Vec<Result<P, Failure>>) -> Result<Vec<P>, (Failure, Vec<P>)> {
    let mut plans = Vec::new();
    let mut failure = None;
    for p in planned {
        match p {
            Ok(p) => plans.push(p),
            Err(f) => {
                failure.get_or_insert(f);
            }
        }
    }
    match failure {
        None => Ok(plans),
        Some(f) => Err((f, plans)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_refusing_target_means_no_plan_is_applied() {
        let refused = || Failure::new(Reason::Refused, "no");
        let all = all_or_nothing(vec![Ok(1), Ok(2)]);
        assert_eq!(all.ok(), Some(vec![1, 2]));
        let (failure, discard) = all_or_nothing(vec![Ok(1), Err(refused()), Ok(3)]).unwrap_err();
        assert_eq!(failure.reason, Reason::Refused);
        assert_eq!(discard, vec![1, 3], "every plan made is thrown away");
    }
}
