//! Apply: make the cluster match one revision with server-side apply
//! (field manager `ferry`), in dependency order, then prune what the
//! inventory lists and the revision no longer declares.
//!
//! An object the server refuses fails alone; the others still apply and the
//! revision's outcome is a failure. A revision with errors in the manifests
//! themselves applies nothing.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures::{FutureExt, StreamExt};
use kube::Client;
use kube::api::{DeleteParams, Patch, PatchParams, PropagationPolicy};

use crate::desired::manifests::HookPhase;
use serde::Serialize;

use super::client::{api_for, describe};
use super::discovery::Catalog;
use super::evidence;
use super::health::{self, Health};
use super::ignore::{self, Ignored};
use super::inventory::{self, Entry};
use super::last_applied::{AppliedObject, CONCURRENCY, LastApplied, digest, ferry_fields};
use super::ownership::{FIELD_MANAGER, kept_because};
use super::plan::Plan;
use crate::config::KubernetesTargetConfig;
use crate::desired::manifests::{Manifest, ManifestError, ObjectRef};

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("the revision has {} error(s); nothing was applied: {}", .0.len(), .0.first().map(|e| e.to_string()).unwrap_or_default())]
    Invalid(Vec<ManifestError>),
    #[error("cluster unavailable: {0}")]
    Cluster(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Applied,
    /// Same content as last applied and untouched since: not sent.
    Unchanged,
    Failed,
    Pruned,
    /// Removed from git but kept: annotated `ferry.dev/prune: disabled`, or
    /// no longer labelled as ferry's.
    Kept,
}

#[derive(Debug, Clone, Serialize)]
pub struct ObjectOutcome {
    pub id: ObjectRef,
    pub status: Status,
    pub error: Option<String>,
    /// For applied objects, once assessed.
    pub health: Option<Health>,
}

impl ObjectOutcome {
    /// Applied (or pruned, kept, unchanged) and, where it has a health
    /// rule, healthy.
    pub fn ok(&self) -> bool {
        self.status != Status::Failed && self.health.as_ref().is_none_or(Health::is_healthy)
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct ApplyOutcome {
    pub revision: String,
    pub objects: Vec<ObjectOutcome>,
    /// True when the revision and every live object were as last applied:
    /// nothing was written.
    pub unchanged: bool,
}

impl ApplyOutcome {
    /// Every object applied (or pruned) and every applied object healthy.
    pub fn succeeded(&self) -> bool {
        self.objects.iter().all(ObjectOutcome::ok)
    }

    pub fn count(&self, status: Status) -> usize {
        self.objects.iter().filter(|o| o.status == status).count()
    }
}

/// Apply order: what others depend on first.
fn wave(id: &ObjectRef) -> u8 {
    match (id.group.as_str(), id.kind.as_str()) {
        ("apiextensions.k8s.io", "CustomResourceDefinition") | ("", "Namespace") => 0,
        ("rbac.authorization.k8s.io", "Role" | "ClusterRole")
        | ("", "ServiceAccount" | "ConfigMap" | "Secret") => 1,
        // After the roles they bind: the API server checks a binding made
        // by anyone but an admin against the rules of the role it names,
        // and answers 404 while that role does not exist yet.
        ("rbac.authorization.k8s.io", _) => 2,
        ("", "Service") => 3,
        _ => LAST_WAVE,
    }
}

const LAST_WAVE: u8 = 4;

pub struct Applier<'a> {
    pub client: &'a Client,
    pub target: &'a str,
    pub config: &'a KubernetesTargetConfig,
    /// Set on shutdown: waits (CRDs, health) end early; writes are per
    /// object and idempotent, so the next start simply applies again.
    pub cancel: Option<&'a AtomicBool>,
}

impl Applier<'_> {
    fn inventory_namespace(&self) -> &str {
        self.config
            .inventory_namespace
            .as_deref()
            .unwrap_or(&self.config.default_namespace)
    }

    /// Applies what `plan` planned (discovery, resolved objects, inventory
    /// and the untouched ones are the plan's, not found out again). A plan
    /// with errors applies nothing.
    pub async fn apply(
        &self,
        plan: Plan,
        last: &mut Option<LastApplied>,
    ) -> Result<ApplyOutcome, ApplyError> {
        // Events carry whole seconds: a second of slack keeps those of the
        // apply's own first second. A pod refused while later waves were
        // still being applied is reported all the same.
        let started =
            k8s_openapi::jiff::Timestamp::now() - k8s_openapi::jiff::SignedDuration::from_secs(1);
        let revision = plan.revision.as_str();
        let basis = match plan.basis {
            Some(basis) if plan.errors.is_empty() => basis,
            _ => return Err(ApplyError::Invalid(plan.errors)),
        };
        let cluster = |e: kube::Error| ApplyError::Cluster(describe(&e));
        let mut catalog = basis.catalog;
        let mut resolved = basis.resolved;
        resolved.sort_by_key(|m| wave(&m.id));
        let untouched = basis.untouched;
        let same_set = last.as_ref().is_some_and(|l| {
            l.objects.len() == resolved.len()
                && resolved.iter().all(|m| l.objects.contains_key(&m.id))
        });
        if same_set && untouched.len() == resolved.len() {
            return Ok(ApplyOutcome {
                revision: revision.to_string(),
                objects: Vec::new(),
                unchanged: true,
            });
        }

        let previous = basis.previous;
        let hooks = basis.hooks;
        let mut outcomes = Vec::new();
        // A release's hooks run when any of its objects changes (a new
        // release: all of them), as `helm upgrade` runs them.
        let changed: HashSet<&str> = resolved
            .iter()
            .filter(|m| !untouched.contains(&m.id))
            .filter_map(|m| m.release.as_deref())
            .collect();

        let mut applied: HashMap<ObjectRef, AppliedObject> = HashMap::new();
        for m in resolved.iter().filter(|m| untouched.contains(&m.id)) {
            if let Some(kept) = last.as_ref().and_then(|l| l.objects.get(&m.id)) {
                applied.insert(m.id.clone(), kept.clone());
            }
            outcomes.push(ObjectOutcome {
                id: m.id.clone(),
                status: Status::Unchanged,
                error: None,
                health: None,
            });
        }
        // The configuration the pre hooks of the changing releases use:
        // applied (in wave order) just before those hooks run.
        let early = |m: &Manifest| {
            m.before_hooks && m.release.as_deref().is_some_and(|r| changed.contains(r))
        };
        for w in 0..=LAST_WAVE {
            // Pre hooks once Namespaces and CRDs are in (Helm, too, needs
            // those first), before anything else of the revision.
            if w == 1 {
                let before = outcomes.len();
                for sub in 1..=LAST_WAVE {
                    let batch: Vec<&Manifest> = resolved
                        .iter()
                        .filter(|m| wave(&m.id) == sub && early(m) && !untouched.contains(&m.id))
                        .collect();
                    self.apply_batch(&mut catalog, &batch, &mut applied, &mut outcomes)
                        .await?;
                }
                let ready = outcomes[before..].iter().all(ObjectOutcome::ok);
                if !ready
                    || !self
                        .run_hooks(&catalog, &hooks, HookPhase::Pre, &changed, &mut outcomes)
                        .await
                {
                    *last = None;
                    return Ok(ApplyOutcome {
                        revision: revision.to_string(),
                        objects: outcomes,
                        unchanged: false,
                    });
                }
            }
            let batch: Vec<&Manifest> = resolved
                .iter()
                .filter(|m| wave(&m.id) == w && !untouched.contains(&m.id) && !early(m))
                .collect();
            self.apply_batch(&mut catalog, &batch, &mut applied, &mut outcomes)
                .await?;
            if w == 0 && !batch.is_empty() {
                self.wait_for_crds(&resolved, &outcomes).await;
            }
        }

        let stale = inventory::stale(&previous, &resolved);
        let mut inventory: Vec<Entry> = resolved
            .iter()
            .map(|m| Entry {
                api_version: m.api_version.clone(),
                id: m.id.clone(),
            })
            .collect();
        if self.config.prune {
            let mut stale = stale;
            stale.sort_by_key(|e| std::cmp::Reverse(wave(&e.id)));
            for entry in stale {
                let outcome = self.prune_one(&catalog, entry).await;
                if outcome.status == Status::Failed {
                    // Keep it listed so the next apply tries again.
                    inventory.push(entry.clone());
                }
                outcomes.push(outcome);
            }
        } else {
            inventory.extend(stale.into_iter().cloned());
        }
        let listed =
            |entries: &[Entry]| entries.iter().map(|e| e.id.clone()).collect::<HashSet<_>>();
        if last.is_none() || listed(&inventory) != listed(&previous) {
            inventory::save(
                self.client,
                self.inventory_namespace(),
                self.target,
                &self.config.owner,
                revision,
                &inventory,
            )
            .await
            .map_err(cluster)?;
        }
        self.wait_healthy(&catalog, &resolved, &mut outcomes, started)
            .await;
        if outcomes.iter().all(ObjectOutcome::ok) {
            self.run_hooks(&catalog, &hooks, HookPhase::Post, &changed, &mut outcomes)
                .await;
        }

        let outcome = ApplyOutcome {
            revision: revision.to_string(),
            objects: outcomes,
            unchanged: false,
        };
        *last = outcome.succeeded().then_some(LastApplied {
            objects: applied,
            inventory,
        });
        Ok(outcome)
    }

    /// Applies `batch` (one wave) concurrently, each outcome added to
    /// `outcomes` and each applied object to `applied`.
    async fn apply_batch(
        &self,
        catalog: &mut Catalog,
        batch: &[&Manifest],
        applied: &mut HashMap<ObjectRef, AppliedObject>,
        outcomes: &mut Vec<ObjectOutcome>,
    ) -> Result<(), ApplyError> {
        if batch.is_empty() {
            return Ok(());
        }
        if catalog_needs_refresh(catalog, batch) {
            // Kinds from CRDs of this revision: served only once established.
            *catalog = Catalog::discover(self.client)
                .await
                .map_err(|e| ApplyError::Cluster(describe(&e)))?;
        }
        let results: Vec<(ObjectOutcome, Option<AppliedObject>)> =
            futures::stream::iter(0..batch.len())
                .map(|i| self.apply_one(catalog, batch[i]))
                .buffered(CONCURRENCY)
                .collect()
                .await;
        for (outcome, known) in results {
            if let Some(known) = known {
                applied.insert(outcome.id.clone(), known);
            }
            outcomes.push(outcome);
        }
        Ok(())
    }

    async fn apply_one(
        &self,
        catalog: &Catalog,
        m: &Manifest,
    ) -> (ObjectOutcome, Option<AppliedObject>) {
        let fail = |error: String| {
            (
                ObjectOutcome {
                    id: m.id.clone(),
                    status: Status::Failed,
                    error: Some(error),
                    health: None,
                },
                None,
            )
        };
        let Some(resource) = catalog.api_resource(&m.api_version, &m.id.kind) else {
            let why = catalog
                .unavailable(&m.id.group)
                .map(|why| format!(" now: {why}"))
                .unwrap_or_default();
            return fail(format!(
                "the cluster does not serve {} {}{why}",
                m.api_version, m.id.kind
            ));
        };
        let api = api_for(self.client, &resource, m.id.namespace.as_deref());
        let mut params = PatchParams::apply(FIELD_MANAGER);
        // Healing drift means taking fields back from whoever changed them.
        if self.config.force || self.config.self_heal {
            params = params.force();
        }
        // Fields left to others need the live object to know what to send.
        let pointers = Ignored::new(&self.config.ignore).pointers(&m.id);
        let object = if pointers.is_empty() {
            std::borrow::Cow::Borrowed(&m.object)
        } else {
            let live = match api.get_opt(&m.id.name).await {
                Ok(live) => live.and_then(|l| serde_json::to_value(l).ok()),
                Err(err) => return fail(describe(&err)),
            };
            std::borrow::Cow::Owned(ignore::to_send(&m.object, live.as_ref(), &pointers))
        };
        match api
            .patch(&m.id.name, &params, &Patch::Apply(&*object))
            .await
        {
            Ok(applied) => (
                ObjectOutcome {
                    id: m.id.clone(),
                    status: Status::Applied,
                    error: None,
                    health: None,
                },
                applied
                    .metadata
                    .resource_version
                    .clone()
                    .map(|resource_version| AppliedObject {
                        api_version: m.api_version.clone(),
                        resource_version,
                        digest: digest(&m.object),
                        fields: ferry_fields(&applied.metadata),
                    }),
            ),
            Err(err) => fail(describe(&err)),
        }
    }

    /// Waits (bounded by `wait_timeout`) until every CRD of the revision is Established.
    async fn wait_for_crds(&self, resolved: &[Manifest], outcomes: &[ObjectOutcome]) {
        let crds: Vec<&str> = resolved
            .iter()
            .filter(|m| {
                m.id.kind == "CustomResourceDefinition" && m.id.group == "apiextensions.k8s.io"
            })
            .filter(|m| {
                outcomes
                    .iter()
                    .any(|o| o.id == m.id && o.status == Status::Applied)
            })
            .map(|m| m.id.name.as_str())
            .collect();
        let api: kube::Api<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition> =
            kube::Api::all(self.client.clone());
        let deadline = Instant::now() + self.config.wait_timeout;
        for name in crds {
            loop {
                let established = api.get_opt(name).await.ok().flatten().is_some_and(|crd| {
                    crd.status
                        .and_then(|s| s.conditions)
                        .unwrap_or_default()
                        .iter()
                        .any(|c| c.type_ == "Established" && c.status == "True")
                });
                if established || Instant::now() >= deadline || self.cancelled() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }

    /// Polls applied objects that have a health rule until each is Current
    /// or Failed, or `health_timeout` passes (then InProgress becomes Failed).
    /// Evidence is read from events since `since`, when the apply began.
    async fn wait_healthy(
        &self,
        catalog: &Catalog,
        resolved: &[Manifest],
        outcomes: &mut [ObjectOutcome],
        since: k8s_openapi::jiff::Timestamp,
    ) {
        if self.config.health_timeout.is_zero() {
            return;
        }
        tracing::debug!(target = self.target, "phase: health");
        let api_version: HashMap<&ObjectRef, &str> = resolved
            .iter()
            .map(|m| (&m.id, m.api_version.as_str()))
            .collect();
        for o in outcomes.iter_mut().filter(|o| o.status == Status::Applied) {
            o.health = Some(if health::is_watched(&o.id.group, &o.id.kind) {
                Health::InProgress("not assessed yet".into())
            } else {
                Health::Current
            });
        }
        let deadline = Instant::now() + self.config.health_timeout;
        // Why an object is not healthy yet costs two more lists (events,
        // pods): read every few seconds, and on the last round, not on
        // every 250 ms poll.
        let mut next_evidence = Instant::now() + EVIDENCE_EVERY;
        loop {
            let now = Instant::now();
            let with_evidence = now >= next_evidence || now + POLL >= deadline;
            if with_evidence {
                next_evidence = now + EVIDENCE_EVERY;
            }
            if self.cancelled() {
                for o in outcomes.iter_mut() {
                    if let Some(Health::InProgress(reason)) = &o.health {
                        o.health =
                            Some(Health::Failed(format!("shutdown before healthy: {reason}")));
                    }
                }
                return;
            }
            let pending: Vec<usize> = outcomes
                .iter()
                .enumerate()
                .filter(|(_, o)| o.health.as_ref().is_some_and(|h| !h.is_final()))
                .map(|(i, _)| i)
                .collect();
            if pending.is_empty() {
                return;
            }
            let assessed: Vec<(usize, Option<Health>)> = futures::stream::iter(pending)
                .map(|i| {
                    let id = outcomes[i].id.clone();
                    let version = api_version
                        .get(&id)
                        .copied()
                        .unwrap_or_default()
                        .to_string();
                    async move {
                        let resource = catalog.api_resource(&version, &id.kind)?;
                        let api = api_for(self.client, &resource, id.namespace.as_deref());
                        let live = api.get_opt(&id.name).await.ok().flatten()?;
                        let value = serde_json::to_value(&live).ok()?;
                        let has_status = catalog.has_status(&id.group, &id.kind);
                        let assessed = health::assess(&id.group, &id.kind, &value, has_status);
                        if assessed.is_final() || !with_evidence {
                            return Some(assessed);
                        }
                        let ns = id.namespace.as_deref();
                        let found =
                            evidence::gather(self.client, &id.group, &id.kind, ns, &value, since)
                                .await;
                        Some(health::refine(assessed, &found))
                    }
                    .map(move |h| (i, h))
                })
                .buffered(CONCURRENCY)
                .collect()
                .await;
            for (i, h) in assessed {
                if let Some(h) = h {
                    outcomes[i].health = Some(h);
                }
            }
            if Instant::now() >= deadline {
                let after = humantime::format_duration(self.config.health_timeout);
                for o in outcomes.iter_mut() {
                    if let Some(Health::InProgress(reason)) = &o.health {
                        o.health = Some(Health::Failed(format!(
                            "not healthy after {after}: {reason}"
                        )));
                    }
                }
                return;
            }
            tokio::time::sleep(POLL).await;
        }
    }

    fn cancelled(&self) -> bool {
        self.cancel.is_some_and(|c| c.load(Ordering::Relaxed))
    }

    async fn prune_one(&self, catalog: &Catalog, entry: &Entry) -> ObjectOutcome {
        let outcome = |status: Status, error: Option<String>| ObjectOutcome {
            id: entry.id.clone(),
            status,
            error,
            health: None,
        };
        let Some(resource) = catalog.api_resource(&entry.api_version, &entry.id.kind) else {
            if let Some(why) = catalog.unavailable(&entry.id.group) {
                // Unknown is not gone: keep the entry and try again.
                return outcome(
                    Status::Failed,
                    Some(format!("the API server cannot serve it now: {why}")),
                );
            }
            // The kind is gone (its CRD was removed): so are its objects.
            return outcome(Status::Pruned, None);
        };
        let api = api_for(self.client, &resource, entry.id.namespace.as_deref());
        let live = match api.get_opt(&entry.id.name).await {
            Ok(Some(live)) => live,
            Ok(None) => return outcome(Status::Pruned, None),
            Err(err) => return outcome(Status::Failed, Some(describe(&err))),
        };
        if let Some(why) = kept_because(&live.metadata) {
            return outcome(Status::Kept, Some(why));
        }
        let params = DeleteParams {
            propagation_policy: Some(PropagationPolicy::Background),
            ..DeleteParams::default()
        };
        match api.delete(&entry.id.name, &params).await {
            Ok(_) => outcome(Status::Pruned, None),
            Err(kube::Error::Api(status)) if status.code == 404 => outcome(Status::Pruned, None),
            Err(err) => outcome(Status::Failed, Some(describe(&err))),
        }
    }
}

/// How often health is polled, and how often the evidence of an object
/// still in progress is read.
const POLL: Duration = Duration::from_millis(250);
const EVIDENCE_EVERY: Duration = Duration::from_secs(2);

fn catalog_needs_refresh(catalog: &Catalog, batch: &[&Manifest]) -> bool {
    batch
        .iter()
        .any(|m| catalog.is_pending(&m.id.group, &m.id.kind))
}
