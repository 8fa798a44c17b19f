//! What the agent drives for one source: apply new revisions of
//! platform.yaml, and re-read AWS every `drift_interval` to report drift.

use std::sync::atomic::AtomicBool;
use std::time::Instant;

use git2::Oid;
use serde::Serialize;

use super::{AwsError, AwsOutcome, Limits, Provenance};
use crate::config::AwsTargetConfig;
use crate::desired::platform::{Platform, PlatformError};

#[derive(Debug, Clone, Serialize)]
pub enum AwsSync {
    Applied(AwsOutcome),
    /// Differences between AWS and the applied revision.
    Drift(Vec<String>),
}

pub struct AwsTarget {
    pub config: AwsTargetConfig,
    source: String,
    repo: String,
    applied: Option<Oid>,
    last_drift_check: Option<Instant>,
}

impl AwsTarget {
    pub fn new(source: &str, repo: &str, config: AwsTargetConfig) -> AwsTarget {
        AwsTarget {
            config,
            source: source.to_string(),
            repo: repo.to_string(),
            applied: None,
            last_drift_check: None,
        }
    }

    pub fn needs_apply(&self, commit: Oid) -> bool {
        self.applied != Some(commit)
    }

    pub fn drift_due(&self) -> bool {
        self.last_drift_check
            .is_none_or(|at| at.elapsed() >= self.config.drift_interval)
    }

    fn provenance(&self, commit: Oid) -> Provenance {
        Provenance {
            source: self.source.clone(),
            repo: self.repo.clone(),
            commit: commit.to_string(),
        }
    }

    /// Validates, plans and applies `commit`. A revision without the file
    /// declares nothing, and nothing is touched.
    pub async fn apply(
        &mut self,
        commit: Oid,
        platform: Result<Option<Platform>, Vec<PlatformError>>,
        cancel: &AtomicBool,
    ) -> Result<AwsOutcome, AwsError> {
        let platform = platform.map_err(AwsError::Invalid)?;
        let Some(platform) = platform else {
            self.applied = Some(commit);
            self.last_drift_check = Some(Instant::now());
            return Ok(AwsOutcome {
                revision: commit.to_string(),
                results: Vec::new(),
                drift: Vec::new(),
                cleaned: Vec::new(),
            });
        };
        let clients = super::clients(&platform, &self.config).await;
        let provenance = self.provenance(commit);
        let plan = super::plan(&clients, &platform, &provenance, self.config.prune).await?;
        if !plan.errors.is_empty() {
            // Nothing is applied from a revision AWS cannot take whole.
            return Err(AwsError::Api(plan.errors.join("; ")));
        }
        let outcome = super::apply(
            &clients,
            &plan,
            &provenance,
            &Limits::from(&self.config),
            cancel,
        )
        .await;
        if outcome.succeeded() {
            self.applied = Some(commit);
        }
        self.last_drift_check = Some(Instant::now());
        Ok(outcome)
    }

    /// Plans the applied revision again: every change it would make, and
    /// every difference it will not make, is drift.
    pub async fn check_drift(
        &mut self,
        commit: Oid,
        platform: Result<Option<Platform>, Vec<PlatformError>>,
    ) -> Result<Vec<String>, AwsError> {
        self.last_drift_check = Some(Instant::now());
        let Some(platform) = platform.map_err(AwsError::Invalid)? else {
            return Ok(Vec::new());
        };
        let clients = super::clients(&platform, &self.config).await;
        let plan = super::plan(
            &clients,
            &platform,
            &self.provenance(commit),
            self.config.prune,
        )
        .await?;
        let mut drift: Vec<String> = plan
            .changes
            .iter()
            .map(|c| {
                let fields: Vec<String> = c
                    .fields
                    .iter()
                    .map(|f| format!("{}: {} -> {}", f.field, f.before, f.after))
                    .collect();
                format!("{}: {}", c.resource, fields.join(", "))
            })
            .collect();
        drift.extend(plan.drift);
        drift.extend(plan.errors);
        Ok(drift)
    }
}
