//! Plan: what applying a revision would change, computed by the API server
//! itself (server-side apply in dry-run, field manager `ferry`) so defaults,
//! admission and validation are the real ones. Read-only: safe for PR
//! previews.

use std::collections::HashSet;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Namespace;
use kube::Client;
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::discovery::ApiResource;
use serde::Serialize;

use super::apply::PRUNE_ANNOTATION;
use super::diff::{self, FieldChange};
use super::discovery::Catalog;
use super::inventory::{Entry, MANAGED_BY_LABEL, MANAGED_BY_VALUE};
use crate::desired::manifests::{Manifest, ManifestError, ObjectRef, Origin};

pub const FIELD_MANAGER: &str = "ferry";

/// Requests in flight at once; enough to hide latency, gentle on the server.
const CONCURRENCY: usize = 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Create,
    Update,
    Unchanged,
    Prune,
}

#[derive(Debug, Clone, Serialize)]
pub struct ObjectPlan {
    pub id: ObjectRef,
    pub origin: Option<Origin>,
    pub action: Action,
    pub changes: Vec<FieldChange>,
    /// The API server's refusal (e.g. 422 Invalid, 409 Conflict), verbatim.
    pub error: Option<String>,
    /// Why the plan is less precise than usual, when it is.
    pub note: Option<String>,
}

impl ObjectPlan {
    /// `!` refused, `+` create, `~` update, `-` prune; None when unchanged.
    pub fn mark(&self) -> Option<char> {
        match (&self.error, self.action) {
            (Some(_), _) => Some('!'),
            (None, Action::Create) => Some('+'),
            (None, Action::Update) => Some('~'),
            (None, Action::Prune) => Some('-'),
            (None, Action::Unchanged) => None,
        }
    }

    /// The object and where git declares it: `ConfigMap ns/name  (file:line)`.
    pub fn title(&self) -> String {
        match &self.origin {
            Some(o) => format!("{}  ({o})", self.id),
            None => self.id.to_string(),
        }
    }
}

/// The plan of one target for one revision; the PR preview renders this.
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    pub target: String,
    pub revision: String,
    pub objects: Vec<ObjectPlan>,
    /// Problems in the revision itself (parse, allow-lists, duplicates).
    pub errors: Vec<ManifestError>,
}

impl Plan {
    pub fn count(&self, action: Action) -> usize {
        self.objects
            .iter()
            .filter(|o| o.action == action && o.error.is_none())
            .count()
    }

    pub fn failed(&self) -> usize {
        self.objects.iter().filter(|o| o.error.is_some()).count() + self.errors.len()
    }

    /// A human plan, as `ferry plan` prints it.
    pub fn render_text(&self) -> String {
        let mut out = format!(
            "Plan for target `{}` at {}: {} to create, {} to update, {} to prune, {} unchanged, {} failed\n",
            self.target,
            &self.revision[..self.revision.len().min(12)],
            self.count(Action::Create),
            self.count(Action::Update),
            self.count(Action::Prune),
            self.count(Action::Unchanged),
            self.failed()
        );
        for error in &self.errors {
            out.push_str(&format!("! {error}\n"));
        }
        for object in &self.objects {
            let Some(mark) = object.mark() else {
                continue;
            };
            out.push_str(&format!("{mark} {}\n", object.title()));
            if let Some(error) = &object.error {
                out.push_str(&format!("    {error}\n"));
            }
            if let Some(note) = &object.note {
                out.push_str(&format!("    note: {note}\n"));
            }
            if object.action == Action::Update {
                for change in &object.changes {
                    let show = |v: &Option<serde_json::Value>| {
                        v.as_ref().map(|v| v.to_string()).unwrap_or_default()
                    };
                    match change.op {
                        diff::Op::Added => out.push_str(&format!(
                            "    + {}: {}\n",
                            change.path,
                            show(&change.after)
                        )),
                        diff::Op::Removed => out.push_str(&format!(
                            "    - {}: {}\n",
                            change.path,
                            show(&change.before)
                        )),
                        diff::Op::Changed => out.push_str(&format!(
                            "    ~ {}: {} -> {}\n",
                            change.path,
                            show(&change.before),
                            show(&change.after)
                        )),
                    }
                }
            }
        }
        out
    }
}

pub fn api_for(
    client: &Client,
    resource: &ApiResource,
    namespace: Option<&str>,
) -> Api<DynamicObject> {
    match namespace {
        Some(ns) => Api::namespaced_with(client.clone(), ns, resource),
        None => Api::all_with(client.clone(), resource),
    }
}

/// Plans every object (dry-run apply and GET, concurrently) plus the prunes
/// of `previous` (the inventory) that `manifests` no longer declare.
pub async fn plan_objects(
    client: &Client,
    catalog: &Catalog,
    manifests: &[Manifest],
    previous: &[Entry],
    force: bool,
) -> Vec<ObjectPlan> {
    let absent = absent_namespaces(client, manifests).await;
    let declared: HashSet<&str> = manifests
        .iter()
        .filter(|m| m.id.group.is_empty() && m.id.kind == "Namespace")
        .map(|m| m.id.name.as_str())
        .collect();
    let mut objects: Vec<ObjectPlan> = futures::stream::iter(0..manifests.len())
        .map(|i| {
            let m = &manifests[i];
            let ns = m.id.namespace.as_deref();
            let context = match ns {
                Some(ns) if absent.contains(ns) && declared.contains(ns) => {
                    NamespaceState::CreatedByRevision
                }
                Some(ns) if absent.contains(ns) => NamespaceState::Missing,
                _ => NamespaceState::Exists,
            };
            plan_one(client, catalog, m, force, context)
        })
        .buffered(CONCURRENCY)
        .collect()
        .await;
    // A binding's dry run is checked against the role it names, which a
    // dry run of the same revision has not created: for anyone but an
    // admin the server answers 404. Apply orders roles first, so that is
    // a note, not a failure.
    for (plan, manifest) in objects.iter_mut().zip(manifests) {
        if plan.error.as_deref().is_some_and(|e| e.contains("(404"))
            && binds_a_role_the_revision_creates(manifest, manifests)
        {
            plan.error = None;
            plan.note = Some(
                "binds a role this revision creates, so the server checks it only at apply".into(),
            );
        }
    }
    for entry in previous {
        if manifests.iter().any(|m| m.id == entry.id) {
            continue;
        }
        if let Some(prune) = plan_prune(client, catalog, entry).await {
            objects.push(prune);
        }
    }
    objects
}

fn binds_a_role_the_revision_creates(binding: &Manifest, manifests: &[Manifest]) -> bool {
    let is_binding = binding.id.group == "rbac.authorization.k8s.io"
        && matches!(
            binding.id.kind.as_str(),
            "RoleBinding" | "ClusterRoleBinding"
        );
    let role_ref = &binding.object["roleRef"];
    let (Some(kind), Some(name)) = (role_ref["kind"].as_str(), role_ref["name"].as_str()) else {
        return false;
    };
    is_binding
        && manifests.iter().any(|m| {
            m.id.group == "rbac.authorization.k8s.io"
                && m.id.kind == kind
                && m.id.name == name
                // A Role is namespaced: the binding's own namespace.
                && (kind == "ClusterRole" || m.id.namespace == binding.id.namespace)
        })
}

/// What apply would do with an inventory entry git no longer declares:
/// delete it, or keep it (opted out, or no longer labelled as ferry's).
async fn plan_prune(client: &Client, catalog: &Catalog, entry: &Entry) -> Option<ObjectPlan> {
    let mut plan = ObjectPlan {
        id: entry.id.clone(),
        origin: None,
        action: Action::Prune,
        changes: Vec::new(),
        error: None,
        note: None,
    };
    let resource = catalog.api_resource(&entry.api_version, &entry.id.kind)?;
    let api = api_for(client, &resource, entry.id.namespace.as_deref());
    let live = match api.get_opt(&entry.id.name).await {
        Ok(Some(live)) => live,
        Ok(None) => return None, // already gone
        Err(err) => {
            plan.error = Some(describe(&err));
            return Some(plan);
        }
    };
    let meta = &live.metadata;
    let annotation = meta
        .annotations
        .as_ref()
        .and_then(|a| a.get(PRUNE_ANNOTATION));
    let label = meta.labels.as_ref().and_then(|l| l.get(MANAGED_BY_LABEL));
    if annotation.map(String::as_str) == Some("disabled") {
        plan.action = Action::Unchanged;
        plan.note = Some(format!(
            "removed from git but kept: {PRUNE_ANNOTATION}: disabled"
        ));
    } else if label.map(String::as_str) != Some(MANAGED_BY_VALUE) {
        plan.action = Action::Unchanged;
        plan.note = Some(format!(
            "removed from git but kept: not labelled {MANAGED_BY_LABEL}={MANAGED_BY_VALUE}"
        ));
    }
    Some(plan)
}

#[derive(Clone, Copy)]
enum NamespaceState {
    Exists,
    CreatedByRevision,
    Missing,
}

/// Namespaces the objects live in that the cluster does not have (yet).
async fn absent_namespaces(client: &Client, manifests: &[Manifest]) -> HashSet<String> {
    let wanted: HashSet<&str> = manifests
        .iter()
        .filter_map(|m| m.id.namespace.as_deref())
        .collect();
    let api: Api<Namespace> = Api::all(client.clone());
    let mut absent = HashSet::new();
    for ns in wanted {
        // An error other than "not found" is left to the object's own request to report.
        if let Ok(None) = api.get_opt(ns).await {
            absent.insert(ns.to_string());
        }
    }
    absent
}

async fn plan_one(
    client: &Client,
    catalog: &Catalog,
    manifest: &Manifest,
    force: bool,
    namespace: NamespaceState,
) -> ObjectPlan {
    let mut plan = ObjectPlan {
        id: manifest.id.clone(),
        origin: Some(manifest.origin.clone()),
        action: Action::Create,
        changes: Vec::new(),
        error: None,
        note: None,
    };
    match namespace {
        NamespaceState::Exists => {}
        NamespaceState::CreatedByRevision => {
            plan.note = Some(
                "its namespace is created by this revision, so the server checks it only at apply"
                    .into(),
            );
            return plan;
        }
        NamespaceState::Missing => {
            plan.error = Some(format!(
                "namespace `{}` does not exist and this revision does not create it",
                manifest.id.namespace.as_deref().unwrap_or_default()
            ));
            return plan;
        }
    }
    if catalog.is_pending(&manifest.id.group, &manifest.id.kind) {
        plan.note = Some(
            "its CRD is created by this revision, so the server checks it only at apply".into(),
        );
        return plan;
    }
    let Some(resource) = catalog.api_resource(&manifest.api_version, &manifest.id.kind) else {
        plan.error = Some(format!(
            "the cluster does not serve {}",
            manifest.api_version
        ));
        return plan;
    };
    let api = api_for(client, &resource, manifest.id.namespace.as_deref());
    let live = match api.get_opt(&manifest.id.name).await {
        Ok(live) => live,
        Err(err) => {
            plan.error = Some(describe(&err));
            return plan;
        }
    };
    let mut params = PatchParams::apply(FIELD_MANAGER).dry_run();
    if force {
        params = params.force();
    }
    let is_secret = manifest.id.group.is_empty() && manifest.id.kind == "Secret";
    let before = live
        .as_ref()
        .and_then(|l| serde_json::to_value(l).ok())
        .unwrap_or_else(|| serde_json::json!({}));
    match api
        .patch(&manifest.id.name, &params, &Patch::Apply(&manifest.object))
        .await
    {
        Ok(after) => {
            let after = serde_json::to_value(&after).unwrap_or_default();
            plan.changes = diff::diff(&before, &after, is_secret);
            plan.action = match (&live, plan.changes.is_empty()) {
                (None, _) => Action::Create,
                (Some(_), true) => Action::Unchanged,
                (Some(_), false) => Action::Update,
            };
        }
        Err(err) => {
            plan.action = if live.is_some() {
                Action::Update
            } else {
                Action::Create
            };
            plan.error = Some(describe(&err));
        }
    }
    plan
}

/// The server's own words, with its HTTP code; a conflict names the
/// other field manager (the server's message already does).
pub fn describe(err: &kube::Error) -> String {
    match err {
        kube::Error::Api(status) => {
            format!("{} ({} {})", status.message, status.code, status.reason)
        }
        other => other.to_string(),
    }
}
