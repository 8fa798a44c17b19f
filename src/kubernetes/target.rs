//! The Kubernetes target as the agent drives it: plan a revision against
//! the cluster, apply that plan, and remember what the last good apply
//! left (the fast path) and when drift was last checked.

use std::sync::atomic::AtomicBool;
use std::time::Instant;

use git2::Oid;
use kube::Client;

use super::apply::{Applier, ApplyError, ApplyOutcome};
use super::client::{self, describe};
use super::last_applied::LastApplied;
use super::plan::{self, Depth, Plan};
use super::secret_values::{self, FillError, Store};
use crate::config::KubernetesTargetConfig;
use crate::desired::manifests::Manifest;
use crate::verdict::{Failure, Reason};

pub struct KubeTarget {
    pub config: KubernetesTargetConfig,
    name: String,
    client: Option<Client>,
    /// Secrets Manager, once a revision asked for a value from it.
    store: Option<Store>,
    last: Option<LastApplied>,
    /// Last revision applied with every object applied and healthy.
    applied: Option<Oid>,
    last_drift_check: Option<Instant>,
    /// What the cluster last said it is, for rendering charts.
    capabilities: Option<Capabilities>,
}

/// The cluster as a chart's `.Capabilities` see it.
#[derive(Debug, Clone)]
pub struct Capabilities {
    /// `v1.37.2`.
    pub kube_version: String,
    /// Every served `group/version` (`v1` for the core group).
    pub api_versions: Vec<String>,
}

impl KubeTarget {
    pub fn new(name: &str, config: KubernetesTargetConfig) -> KubeTarget {
        KubeTarget {
            config,
            name: name.to_string(),
            client: None,
            store: None,
            last: None,
            applied: None,
            last_drift_check: None,
            capabilities: None,
        }
    }

    pub fn applied(&self) -> Option<Oid> {
        self.applied
    }

    pub fn drift_due(&self) -> bool {
        self.last_drift_check
            .is_none_or(|at| at.elapsed() >= self.config.drift_interval)
    }

    pub fn drift_checked(&mut self) {
        self.last_drift_check = Some(Instant::now());
    }

    async fn client(&mut self) -> Result<Client, Failure> {
        if let Some(c) = &self.client {
            return Ok(c.clone());
        }
        let c = client::connect(self.config.kubeconfig.as_deref())
            .await
            .map_err(|e| Failure::new(Reason::ClusterUnavailable, e.to_string()))?;
        self.client = Some(c.clone());
        Ok(c)
    }

    /// The cluster's version and served API versions, asked now; what it
    /// said last time when it cannot be reached (None if it never could).
    pub async fn capabilities(&mut self) -> Option<Capabilities> {
        if let Ok(client) = self.client().await {
            let asked = async {
                let version = client.apiserver_version().await?;
                let groups = client.list_api_groups().await?;
                let core = client.list_core_api_versions().await?;
                let mut api_versions: Vec<String> = core.versions;
                for group in groups.groups {
                    api_versions.extend(group.versions.into_iter().map(|v| v.group_version));
                }
                Ok::<_, kube::Error>(Capabilities {
                    kube_version: version.git_version,
                    api_versions,
                })
            };
            match asked.await {
                Ok(c) => self.capabilities = Some(c),
                Err(e) => {
                    tracing::warn!(error = %describe(&e), "cannot ask the cluster its version for rendering charts; using what it said last")
                }
            }
        }
        self.capabilities.clone()
    }

    /// The store Secrets are filled from, when ferry.yaml names one;
    /// connected the first time a revision asks for a value.
    async fn store(&mut self, asked: bool) -> Option<&Store> {
        if asked
            && self.store.is_none()
            && let Some(config) = &self.config.secrets_manager
        {
            self.store = Store::connect(config).await;
        }
        self.store.as_ref()
    }

    /// Plans `manifests` of `commit`, Secrets filled from Secrets Manager
    /// as they are now. Reads only; objects untouched since the last good
    /// apply are not dry-run again.
    pub async fn plan(
        &mut self,
        commit: Oid,
        manifests: &[Manifest],
        depth: Depth,
    ) -> Result<Plan, Failure> {
        let client = self.client().await?;
        let asked = manifests
            .iter()
            .any(|m| secret_values::is_filled(&m.object));
        let filled = match secret_values::fill(manifests, self.store(asked).await).await {
            Ok(filled) => filled,
            Err(FillError::Refused(errors)) => {
                return Ok(Plan::refused(&self.name, &commit.to_string(), errors));
            }
            Err(FillError::Unavailable(message)) => {
                return Err(Failure::new(Reason::AwsUnavailable, message));
            }
        };
        plan::plan(
            &client,
            &self.name,
            &commit.to_string(),
            &self.config,
            &filled,
            self.last.as_ref(),
            depth,
        )
        .await
        .map_err(|e| {
            Failure::new(
                Reason::ClusterUnavailable,
                format!("cannot plan against the cluster: {}", describe(&e)),
            )
        })
    }

    /// Applies `plan` and waits for health. The outcome may hold failed
    /// objects; the last good revision stays recorded then.
    pub async fn apply(
        &mut self,
        plan: Plan,
        cancel: &AtomicBool,
    ) -> Result<ApplyOutcome, Failure> {
        let client = self.client().await?;
        let commit = Oid::from_str(&plan.revision).ok();
        let applier = Applier {
            client: &client,
            target: &self.name,
            config: &self.config,
            cancel: Some(cancel),
        };
        let outcome = applier
            .apply(plan, &mut self.last)
            .await
            .map_err(|e| match e {
                ApplyError::Invalid(errors) => Failure::problems(
                    Reason::Refused,
                    "nothing was applied",
                    errors.into_iter().map(Into::into).collect(),
                ),
                ApplyError::Cluster(message) => Failure::new(
                    Reason::ClusterUnavailable,
                    format!("cluster unavailable: {message}"),
                ),
            })?;
        if outcome.succeeded() {
            self.applied = commit;
        }
        self.drift_checked();
        Ok(outcome)
    }
}
