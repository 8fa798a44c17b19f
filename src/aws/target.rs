//! The AWS target as the agent drives it: plan `platform.yaml` against
//! AWS, apply that plan, and remember the last good revision and when its
//! drift was last checked.

use std::sync::atomic::AtomicBool;
use std::time::Instant;

use git2::Oid;

use super::{AwsError, AwsOutcome, AwsPlan, Limits, Provenance};
use crate::config::AwsTargetConfig;
use crate::desired::platform::Platform;
use crate::problem::Problem;
use crate::verdict::{Failure, Reason};

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

    /// The last revision applied in full.
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

    /// Plans `platform` (None: the file is absent, which declares nothing)
    /// of `commit` against AWS. Reads only.
    pub async fn plan(&self, commit: Oid, platform: Option<&Platform>) -> Result<AwsPlan, Failure> {
        let Some(platform) = platform else {
            return Ok(AwsPlan {
                revision: commit.to_string(),
                ..AwsPlan::default()
            });
        };
        let provenance = Provenance {
            source: self.source.clone(),
            repo: self.repo.clone(),
            commit: commit.to_string(),
        };
        let clients = super::clients(platform, &self.config).await;
        super::plan(&clients, platform, &provenance, self.config.prune)
            .await
            .map_err(|AwsError::Api(message)| {
                Failure::new(
                    Reason::AwsUnavailable,
                    format!("cannot plan against AWS: {message}"),
                )
            })
    }

    /// Applies `plan`; each update is followed to its end. A plan with
    /// errors (e.g. a nodegroup missing in AWS) applies nothing.
    pub async fn apply(
        &mut self,
        plan: AwsPlan,
        cancel: &AtomicBool,
    ) -> Result<AwsOutcome, Failure> {
        if !plan.errors.is_empty() {
            return Err(Failure::problems(
                Reason::Refused,
                "not applied",
                plan.problems(&self.config.file),
            ));
        }
        let commit = Oid::from_str(&plan.revision).ok();
        let outcome = match &plan.basis {
            None => AwsOutcome {
                revision: plan.revision.clone(),
                results: Vec::new(),
                drift: Vec::new(),
                cleaned: Vec::new(),
            },
            Some((clients, provenance)) => {
                super::apply(
                    clients,
                    &plan,
                    provenance,
                    &Limits::from(&self.config),
                    cancel,
                )
                .await
            }
        };
        if outcome.succeeded() {
            self.applied = commit;
        }
        self.drift_checked();
        Ok(outcome)
    }
}

impl AwsPlan {
    /// Problems that make the revision unappliable, against `file`.
    pub fn problems(&self, file: &str) -> Vec<Problem> {
        self.errors
            .iter()
            .map(|e| Problem::new(file, None, e.clone()))
            .collect()
    }

    /// Every change it would make and every difference it will not make:
    /// the drift of an applied revision.
    pub fn drifted(&self) -> Vec<String> {
        let mut drift: Vec<String> = self
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
        drift.extend(self.drift.iter().cloned());
        drift.extend(self.errors.iter().cloned());
        drift
    }
}
