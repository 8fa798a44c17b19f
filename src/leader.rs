//! Leader election on a Kubernetes Lease (coordination.k8s.io/v1), so two
//! ferry processes never apply or publish at once: a pod left running on a
//! partitioned node while its replacement starts, a manual scale-up, a
//! rollout with a surge.
//!
//! The protocol is client-go's: the holder renews `renewTime` every seventh
//! of the lease duration; a candidate takes the Lease over only after it has
//! watched the record stay unchanged for a whole lease duration, measured on
//! its own monotonic clock, so clock skew between nodes does not matter.
//! Every write carries the `resourceVersion` it read, so two candidates cannot
//! both win. A holder that cannot renew within two thirds of the duration
//! gives up before anyone may take over; on a clean stop it releases the
//! Lease so the successor starts at once.

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::PostParams;
use tokio::sync::{oneshot, watch};

use crate::config::LeaderElectionConfig;
use crate::kubernetes::client::{ClientError, connect};

#[derive(Debug, thiserror::Error)]
pub enum LeaderError {
    #[error("leader_election: {0}")]
    Client(#[from] ClientError),
    #[error("Lease {lease}: {source}")]
    Api {
        lease: String,
        source: Box<kube::Error>,
    },
}

/// How a held leadership ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Ended {
    /// Released on request after a clean stop.
    Released,
    /// Renewals failed for too long, or someone else holds the Lease.
    Lost(String),
}

/// The outcome of one round of reading and writing the Lease.
enum Round {
    Held,
    HeldBy(String),
    /// Another write landed between our read and write; look again.
    Conflict,
}

pub struct Elector {
    api: Api<Lease>,
    lease: String,
    identity: String,
    duration: Duration,
    /// The (holder, renewTime) last read and when it was first seen.
    observed: Option<((String, String), Instant)>,
}

impl Elector {
    pub async fn new(config: &LeaderElectionConfig) -> Result<Elector, LeaderError> {
        let client = connect(config.kubeconfig.as_deref()).await?;
        let namespace = config
            .namespace
            .clone()
            .or_else(pod_namespace)
            .unwrap_or_else(|| "default".into());
        Ok(Elector {
            lease: format!("{namespace}/{}", config.lease_name),
            api: Api::namespaced(client, &namespace),
            identity: identity_of(config),
            duration: config.lease_duration,
            observed: None,
        })
    }

    pub fn identity(&self) -> &str {
        &self.identity
    }

    pub fn lease(&self) -> &str {
        &self.lease
    }

    fn retry_period(&self) -> Duration {
        self.duration / 7
    }

    fn name(&self) -> &str {
        self.lease.rsplit('/').next().unwrap_or(&self.lease)
    }

    /// Waits until this process holds the Lease; false when `shutdown`
    /// came first. `waiting` is told who holds it meanwhile.
    pub async fn acquire(
        &mut self,
        shutdown: &mut watch::Receiver<bool>,
        mut waiting: impl FnMut(&str),
    ) -> bool {
        loop {
            match self.try_acquire_or_renew().await {
                Ok(Round::Held) => return true,
                Ok(Round::HeldBy(holder)) => waiting(&holder),
                Ok(Round::Conflict) => {}
                Err(err) => {
                    tracing::warn!(lease = %self.lease, error = %err, "cannot read or take the leader Lease; retrying");
                    waiting("(unknown: the Lease cannot be read)");
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(self.retry_period()) => {}
                _ = shutdown.wait_for(|stop| *stop) => return false,
            }
        }
    }

    /// Renews the Lease until `release` fires (then gives it up) or
    /// leadership is lost.
    pub async fn hold(mut self, mut release: oneshot::Receiver<()>) -> Ended {
        let renew_deadline = self.duration * 2 / 3;
        let mut renewed = Instant::now();
        loop {
            tokio::select! {
                _ = tokio::time::sleep(self.retry_period()) => {}
                _ = &mut release => {
                    if let Err(err) = self.release().await {
                        tracing::warn!(lease = %self.lease, error = %err, "cannot release the leader Lease; the successor waits for it to expire");
                    }
                    return Ended::Released;
                }
            }
            let round = self.try_acquire_or_renew().await;
            match round {
                Ok(Round::Held) => renewed = Instant::now(),
                Ok(Round::HeldBy(holder)) => {
                    return Ended::Lost(format!("the Lease is now held by {holder}"));
                }
                Ok(Round::Conflict) | Err(_) if renewed.elapsed() >= renew_deadline => {
                    let why = match round {
                        Err(err) => err.to_string(),
                        _ => "conflicting writes".into(),
                    };
                    return Ended::Lost(format!(
                        "no renewal for {}s: {why}",
                        renewed.elapsed().as_secs()
                    ));
                }
                Ok(Round::Conflict) => {}
                Err(err) => {
                    tracing::warn!(lease = %self.lease, error = %err, "cannot renew the leader Lease; retrying");
                }
            }
        }
    }

    async fn try_acquire_or_renew(&mut self) -> Result<Round, LeaderError> {
        let now = MicroTime(Timestamp::now());
        let seconds = i32::try_from(self.duration.as_secs()).unwrap_or(i32::MAX);
        let Some(mut lease) = self.read().await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.name().to_string()),
                    ..ObjectMeta::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(self.identity.clone()),
                    lease_duration_seconds: Some(seconds),
                    acquire_time: Some(now.clone()),
                    renew_time: Some(now),
                    lease_transitions: Some(0),
                    ..LeaseSpec::default()
                }),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(Round::Held),
                Err(kube::Error::Api(e)) if e.code == 409 => Ok(Round::Conflict),
                Err(e) => Err(self.error(e)),
            };
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.clone().unwrap_or_default();
        let record = (
            holder.clone(),
            spec.renew_time
                .as_ref()
                .map(|t| t.0.to_string())
                .unwrap_or_default(),
        );
        let observed_at = match &self.observed {
            Some((seen, at)) if *seen == record => *at,
            _ => {
                let at = Instant::now();
                self.observed = Some((record, at));
                at
            }
        };
        let theirs = spec
            .lease_duration_seconds
            .map(|s| Duration::from_secs(u64::try_from(s).unwrap_or(0)))
            .unwrap_or(self.duration);
        if !holder.is_empty() && holder != self.identity && observed_at.elapsed() < theirs {
            return Ok(Round::HeldBy(holder));
        }
        let mut next = spec.clone();
        if holder != self.identity {
            next.acquire_time = Some(now.clone());
            next.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
            tracing::info!(lease = %self.lease, previous = %holder, "taking over the leader Lease");
        }
        next.holder_identity = Some(self.identity.clone());
        next.lease_duration_seconds = Some(seconds);
        next.renew_time = Some(now);
        lease.spec = Some(next);
        // The resourceVersion read above makes this a compare-and-swap.
        match self
            .api
            .replace(self.name(), &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(Round::Held),
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(Round::Conflict),
            Err(e) => Err(self.error(e)),
        }
    }

    /// Empties the holder so a successor need not wait for expiry.
    async fn release(&mut self) -> Result<(), LeaderError> {
        let Some(mut lease) = self.read().await? else {
            return Ok(());
        };
        let Some(spec) = lease.spec.as_mut() else {
            return Ok(());
        };
        if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
            return Ok(());
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(MicroTime(Timestamp::now()));
        self.api
            .replace(self.name(), &PostParams::default(), &lease)
            .await
            .map(|_| ())
            .map_err(|e| self.error(e))
    }

    async fn read(&self) -> Result<Option<Lease>, LeaderError> {
        self.api
            .get_opt(self.name())
            .await
            .map_err(|e| self.error(e))
    }

    fn error(&self, source: kube::Error) -> LeaderError {
        LeaderError::Api {
            lease: self.lease.clone(),
            source: Box::new(source),
        }
    }
}

/// The namespace of the pod's service account, when in a pod.
fn pod_namespace() -> Option<String> {
    std::fs::read_to_string("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

fn default_identity() -> String {
    if let Ok(pod) = std::env::var("POD_NAME")
        && !pod.is_empty()
    {
        return pod;
    }
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "ferry".into());
    format!("{host}-{}", std::process::id())
}

/// Who this process is in the Lease (`identity`, else `$POD_NAME`, else
/// `<hostname>-<pid>`).
pub fn identity_of(config: &crate::config::LeaderElectionConfig) -> String {
    config.identity.clone().unwrap_or_else(default_identity)
}
