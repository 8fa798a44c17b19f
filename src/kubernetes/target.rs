//! The Kubernetes target as the agent drives it: apply each new revision;
//! between revisions, look for drift every `drift_interval` (a dry-run
//! plan, so reads and dry runs only) and re-apply when `self_heal` is on.

use std::sync::atomic::AtomicBool;
use std::time::Instant;

use git2::Oid;
use kube::Client;
use serde::Serialize;

use super::apply::{Applier, ApplyError, ApplyOutcome, LastApplied};
use super::client::{self, ClientError};
use super::plan::{Action, describe};
use crate::config::KubernetesTargetConfig;
use crate::desired::manifests::{Manifest, ManifestError};

#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    #[error(transparent)]
    Connect(#[from] ClientError),
    #[error(transparent)]
    Apply(#[from] ApplyError),
    #[error("drift check failed: {0}")]
    Drift(String),
}

impl KubeError {
    /// A revision that cannot apply as written; retried when git changes.
    pub fn is_revision_error(&self) -> bool {
        matches!(self, KubeError::Apply(ApplyError::Invalid(_)))
    }
}

#[derive(Debug, Clone, Serialize)]
pub enum KubeSync {
    Applied(ApplyOutcome),
    /// Objects that differ from the applied revision, and the heal if any.
    Drift {
        drifted: Vec<String>,
        healed: Option<ApplyOutcome>,
    },
}

pub struct KubeTarget {
    pub config: KubernetesTargetConfig,
    name: String,
    client: Option<Client>,
    last: Option<LastApplied>,
    /// Last revision applied successfully (the last good one).
    applied: Option<Oid>,
    last_drift_check: Option<Instant>,
}

impl KubeTarget {
    pub fn new(name: &str, config: KubernetesTargetConfig) -> KubeTarget {
        KubeTarget {
            config,
            name: name.to_string(),
            client: None,
            last: None,
            applied: None,
            last_drift_check: None,
        }
    }

    /// True when `commit` should be applied now: it is new, or its last
    /// attempt did not succeed (retried with the agent's backoff).
    pub fn needs_apply(&self, commit: Oid) -> bool {
        self.applied != Some(commit)
    }

    pub fn drift_due(&self) -> bool {
        self.last_drift_check
            .is_none_or(|at| at.elapsed() >= self.config.drift_interval)
    }

    async fn client(&mut self) -> Result<Client, KubeError> {
        if let Some(c) = &self.client {
            return Ok(c.clone());
        }
        let c = client::connect(self.config.kubeconfig.as_deref()).await?;
        self.client = Some(c.clone());
        Ok(c)
    }

    pub async fn apply(
        &mut self,
        commit: Oid,
        manifests: Result<Vec<Manifest>, Vec<ManifestError>>,
        cancel: &AtomicBool,
    ) -> Result<ApplyOutcome, KubeError> {
        let client = self.client().await?;
        let applier = Applier {
            client: &client,
            target: &self.name,
            config: &self.config,
            cancel: Some(cancel),
        };
        let outcome = applier
            .apply(&commit.to_string(), manifests, &mut self.last)
            .await?;
        if outcome.succeeded() {
            self.applied = Some(commit);
        }
        self.last_drift_check = Some(Instant::now());
        Ok(outcome)
    }

    /// Compares the cluster with the applied revision; heals if configured.
    pub async fn check_drift(
        &mut self,
        commit: Oid,
        manifests: Result<Vec<Manifest>, Vec<ManifestError>>,
        cancel: &AtomicBool,
    ) -> Result<KubeSync, KubeError> {
        let client = self.client().await?;
        self.last_drift_check = Some(Instant::now());
        let manifests_again = manifests.clone();
        let plan = super::plan_revision(
            &client,
            &self.name,
            &commit.to_string(),
            &self.config,
            manifests,
        )
        .await
        .map_err(|e| KubeError::Drift(describe(&e)))?;
        let drifted: Vec<String> = plan
            .objects
            .iter()
            .filter(|o| o.action != Action::Unchanged || o.error.is_some())
            .map(|o| o.id.to_string())
            .collect();
        let healed = if self.config.self_heal && !drifted.is_empty() {
            // self_heal applies with force (see Applier): out-of-band edits
            // make their author own the fields, and healing takes them back.
            let applier = Applier {
                client: &client,
                target: &self.name,
                config: &self.config,
                cancel: Some(cancel),
            };
            self.last = None;
            Some(
                applier
                    .apply(&commit.to_string(), manifests_again, &mut self.last)
                    .await?,
            )
        } else {
            None
        };
        Ok(KubeSync::Drift { drifted, healed })
    }
}
