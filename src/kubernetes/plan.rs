//! Plan: what applying a revision would change, computed by the API server
//! itself (server-side apply in dry-run, field manager `ferry`) so defaults,
//! admission and validation are the real ones. Read-only: safe for PR
//! previews.

use std::collections::HashSet;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Namespace;
use kube::Client;
use kube::api::{Api, Patch, PatchParams};
use serde::Serialize;

use super::client::{api_for, describe};
use super::diff::{self, FieldChange, Op};
use super::discovery::Catalog;
use super::ignore::{self, Ignored};
use super::inventory::{self, Entry};
use super::last_applied::{CONCURRENCY, LastApplied};
use super::ownership::{FIELD_MANAGER, kept_because, label_as_ours};
use crate::config::KubernetesTargetConfig;
use crate::desired::manifests::{HookPhase, Manifest, ManifestError, ObjectRef, Origin};
use crate::desired::resolve::{self, Policy};
use crate::problem::Problem;
use crate::report::comment::{Section, TargetPreview};

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

/// The plan of one target for one revision: what `ferry plan` prints, the
/// PR comment shows and drift checks compare, and what apply consumes.
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    pub target: String,
    pub revision: String,
    /// Per-object results of the dry run; empty in a plan made only to be
    /// applied ([`Depth::Apply`]), whose outcome reports every object.
    pub objects: Vec<ObjectPlan>,
    /// Problems with the revision against this cluster (allow-lists, kinds
    /// the cluster does not serve, duplicates): nothing of it is applied.
    pub errors: Vec<ManifestError>,
    /// Why the prune guard refused this plan (also one of `errors`): the
    /// PR comment shows it as a warning of its own.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prune_refused: Option<String>,
    /// The Helm hooks applying would run, in order: those of each release
    /// with an object to create or update ([`Depth::Review`] only).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub hooks: Vec<PlannedHook>,
    #[serde(skip)]
    pub(crate) basis: Option<Basis>,
}

/// A Helm hook an apply would run.
#[derive(Debug, Clone, Serialize)]
pub struct PlannedHook {
    pub id: ObjectRef,
    pub origin: Origin,
    pub release: String,
    /// Serialized as `pre-install/pre-upgrade` or `post-install/post-upgrade`.
    pub phase: HookPhase,
    pub weight: i32,
}

impl PlannedHook {
    /// `Job.batch ns/migrate, pre-install/pre-upgrade of <release>  (file)`.
    pub fn title(&self) -> String {
        format!(
            "{}, {} hook of {}  ({})",
            self.id,
            self.phase.helm_names(),
            self.release,
            self.origin
        )
    }
}

/// What apply needs and the plan already found out: discovery, the
/// objects resolved against it and labelled as ferry's, the inventory, and
/// which objects are untouched since the last apply.
#[derive(Debug, Clone)]
pub(crate) struct Basis {
    pub catalog: Catalog,
    pub resolved: Vec<Manifest>,
    /// Helm hooks that run something, resolved like the rest but kept out
    /// of the dry run, the inventory and drift: they run, then may go.
    pub hooks: Vec<Manifest>,
    pub previous: Vec<Entry>,
    pub untouched: HashSet<ObjectRef>,
}

impl Plan {
    /// The plan of a revision whose manifests do not even parse: nothing
    /// is dry-run, and `errors` say why.
    pub fn refused(target: &str, revision: &str, errors: Vec<ManifestError>) -> Plan {
        Plan {
            prune_refused: None,
            target: target.to_string(),
            revision: revision.to_string(),
            objects: Vec::new(),
            errors,
            hooks: Vec::new(),
            basis: None,
        }
    }
}

/// How much a plan finds out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Depth {
    /// Enough to apply: discovery, resolution, inventory, the fast path.
    Apply,
    /// Also every changed object dry-run by the server and diffed, and
    /// every prune: for people (`ferry plan`, PR comments) and drift.
    Review,
}

/// Plans one revision against the cluster: resolve `manifests` against
/// what it serves, then (at [`Depth::Review`]) dry-run every object that
/// changed since `last` and list what pruning would do to inventory entries
/// the revision drops. Reads only.
pub async fn plan(
    client: &Client,
    target: &str,
    revision: &str,
    config: &KubernetesTargetConfig,
    manifests: &[Manifest],
    last: Option<&LastApplied>,
    depth: Depth,
) -> Result<Plan, kube::Error> {
    let mut plan = Plan {
        prune_refused: None,
        target: target.to_string(),
        revision: revision.to_string(),
        objects: Vec::new(),
        errors: Vec::new(),
        hooks: Vec::new(),
        basis: None,
    };
    let catalog = Catalog::discover(client).await?.with_crds_from(manifests);
    // Before resolving: a kind of a group the server cannot describe now
    // would otherwise read as unknown and refuse the commit itself.
    catalog.require(manifests.iter().map(|m| m.id.group.as_str()))?;
    let policy = Policy {
        default_namespace: config.default_namespace.clone(),
        allowed_namespaces: config.allowed_namespaces.clone(),
        allowed_kinds: config.allowed_kinds.clone(),
        cluster_scoped: config
            .cluster_scoped
            .iter()
            .map(|c| (c.kind.clone(), c.names.clone()))
            .collect(),
    };
    let mut resolved =
        match resolve::resolve(manifests.to_vec(), |g, k| catalog.scope(g, k), &policy) {
            Ok(resolved) => resolved,
            Err(errors) => {
                plan.errors = errors;
                return Ok(plan);
            }
        };
    // Apply sends the object labelled as ferry's; so must the plan.
    for m in &mut resolved {
        label_as_ours(&mut m.object);
    }
    let (hooks, resolved): (Vec<Manifest>, Vec<Manifest>) =
        resolved.into_iter().partition(|m| m.hook.is_some());
    let previous = match last {
        Some(l) => l.inventory.clone(),
        None => {
            let ns = config
                .inventory_namespace
                .as_deref()
                .unwrap_or(&config.default_namespace);
            inventory::load(client, ns, target, &config.owner).await?
        }
    };
    if config.prune {
        catalog.require(previous.iter().map(|e| e.id.group.as_str()))?;
    }
    let untouched = match last {
        Some(l) => l.untouched(client, &catalog, &resolved).await,
        None => HashSet::new(),
    };
    if depth == Depth::Review {
        let prunable: &[Entry] = if config.prune { &previous } else { &[] };
        plan.objects = plan_objects(
            client,
            &catalog,
            &resolved,
            prunable,
            config.force,
            Ignored::new(&config.ignore),
            &untouched,
        )
        .await;
        plan.hooks = planned_hooks(&plan.objects, &resolved, &hooks);
    }
    plan.basis = Some(Basis {
        catalog,
        resolved,
        hooks,
        previous,
        untouched,
    });
    Ok(plan)
}

impl Plan {
    /// The prune guard: refuses a plan whose apply would prune at least
    /// `prune_limit_percent` of the inventory, or any Namespace (and all in
    /// it), unless the commit allows it (`allowance`). Such a prune is more
    /// often a moved directory or a bad merge than a reviewed change.
    pub fn guard_prune(&mut self, config: &KubernetesTargetConfig, allowance: Option<&str>) {
        let Some(basis) = self.basis.as_ref().filter(|_| config.prune) else {
            return;
        };
        let pruned = inventory::stale(&basis.previous, &basis.resolved);
        if pruned.is_empty() {
            return;
        }
        let namespaces: Vec<&str> = pruned
            .iter()
            .filter(|e| e.id.group.is_empty() && e.id.kind == "Namespace")
            .map(|e| e.id.name.as_str())
            .collect();
        let share = pruned.len() * 100 / basis.previous.len();
        let limit = usize::from(config.prune_limit_percent);
        let why = if !namespaces.is_empty() {
            format!(
                "it would delete the Namespace(s) {} and everything in them",
                namespaces.join(", ")
            )
        } else if share >= limit {
            format!(
                "it would delete {} of the {} objects ferry applied ({share}%; the limit, \
                 prune_limit_percent, is {limit}%)",
                pruned.len(),
                basis.previous.len()
            )
        } else {
            return;
        };
        if let Some(reason) = allowance {
            tracing::warn!(target = self.target, revision = %self.revision, %reason, "prune guard lifted by the commit: {why}");
            return;
        }
        let message = format!(
            "refused to prune: {why}. If that is meant, say so in the commit message \
             with a line `Ferry-Allow-Prune: <why>`"
        );
        self.errors
            .push(ManifestError::general(&config.path, message.clone()));
        self.prune_refused = Some(message);
    }

    pub fn count(&self, action: Action) -> usize {
        self.objects
            .iter()
            .filter(|o| o.action == action && o.error.is_none())
            .count()
    }

    pub fn failed(&self) -> usize {
        self.objects.iter().filter(|o| o.error.is_some()).count() + self.errors.len()
    }

    /// Would applying change anything (create, update, prune)?
    pub fn changes(&self) -> bool {
        self.objects.iter().any(|o| o.action != Action::Unchanged)
    }

    /// The revision's problems against this cluster, with file and line.
    pub fn problems(&self) -> Vec<Problem> {
        self.errors.iter().cloned().map(Problem::from).collect()
    }

    /// Objects that differ from the revision, or that the server refuses:
    /// the drift of an applied revision.
    pub fn drifted(&self) -> Vec<String> {
        self.objects
            .iter()
            .filter(|o| o.action != Action::Unchanged || o.error.is_some())
            .map(|o| o.id.to_string())
            .collect()
    }

    /// Whether all the drift is Secrets whose values Secrets Manager now
    /// holds differently (a rotation, or a hand edit of a value): applied
    /// at a drift check even without `self_heal`, as the store, not the
    /// cluster, is where those values are kept. Any other drift, or a
    /// refusal, leaves the plan to `self_heal`.
    pub fn drift_is_only_new_secret_values(&self) -> bool {
        let Some(basis) = &self.basis else {
            return false;
        };
        let filled: HashSet<&ObjectRef> = basis
            .resolved
            .iter()
            .filter(|m| super::secret_values::is_filled(&m.object))
            .map(|m| &m.id)
            .collect();
        let mut drifted = self
            .objects
            .iter()
            .filter(|o| o.action != Action::Unchanged || o.error.is_some())
            .peekable();
        drifted.peek().is_some()
            && self.errors.is_empty()
            && drifted
                .all(|o| o.action == Action::Update && o.error.is_none() && filled.contains(&o.id))
    }

    /// The first thing a reviewer must see: a revision error or a refusal.
    pub fn first_problem(&self) -> Option<String> {
        self.errors.first().map(|e| e.to_string()).or_else(|| {
            self.objects
                .iter()
                .find_map(|o| Some(format!("{}: {}", o.id, o.error.as_ref()?)))
        })
    }

    /// In the PR comment's target-neutral words.
    pub fn preview(&self) -> TargetPreview {
        let mut sections = Vec::new();
        // Failures first: they are what a reviewer must see.
        let mut objects: Vec<_> = self.objects.iter().collect();
        objects.sort_by_key(|o| o.error.is_none());
        for object in objects {
            let mark = match object.mark() {
                None => continue,
                Some('!') => "❌".to_string(),
                Some(m) => m.to_string(),
            };
            let mut lines = Vec::new();
            if let Some(error) = &object.error {
                lines.push(format!("! {error}"));
            }
            if let Some(note) = &object.note {
                lines.push(format!("# {note}"));
            }
            for change in &object.changes {
                let show = |v: &Option<serde_json::Value>| {
                    v.as_ref().map(|v| v.to_string()).unwrap_or_default()
                };
                lines.push(match change.op {
                    Op::Added => format!("+ {}: {}", change.path, show(&change.after)),
                    Op::Removed => format!("- {}: {}", change.path, show(&change.before)),
                    Op::Changed => format!(
                        "- {}: {}\n+ {}: {}",
                        change.path,
                        show(&change.before),
                        change.path,
                        show(&change.after)
                    ),
                });
            }
            if object.action == Action::Prune && lines.is_empty() {
                lines.push("- (deleted: no longer in the revision)".into());
            }
            sections.push(Section {
                title: format!("{mark} {}", object.title()),
                lines,
            });
        }
        for hook in &self.hooks {
            sections.push(Section {
                title: format!("▶ {}", hook.title()),
                lines: vec![match hook.phase {
                    HookPhase::Pre => format!(
                        "runs before the release's other objects (weight {}), awaited to completion; if it fails, nothing after it is applied",
                        hook.weight
                    ),
                    HookPhase::Post => format!(
                        "runs once the release's other objects are applied and healthy (weight {}); if it fails, the apply fails",
                        hook.weight
                    ),
                }],
            });
        }
        TargetPreview {
            target: "kubernetes".into(),
            create: self.count(Action::Create),
            update: self.count(Action::Update),
            delete: self.count(Action::Prune),
            unchanged: self.count(Action::Unchanged),
            failed: self.failed(),
            errors: self.errors.iter().map(|e| e.to_string()).collect(),
            cautions: self.prune_refused.iter().cloned().collect(),
            sections,
        }
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
                        Op::Added => out.push_str(&format!(
                            "    + {}: {}\n",
                            change.path,
                            show(&change.after)
                        )),
                        Op::Removed => out.push_str(&format!(
                            "    - {}: {}\n",
                            change.path,
                            show(&change.before)
                        )),
                        Op::Changed => out.push_str(&format!(
                            "    ~ {}: {} -> {}\n",
                            change.path,
                            show(&change.before),
                            show(&change.after)
                        )),
                    }
                }
            }
        }
        for hook in &self.hooks {
            out.push_str(&format!("> runs {}\n", hook.title()));
        }
        out
    }
}

/// The hooks an apply of `objects` would run: as the applier decides, those
/// of every release with an object that changes, each phase in Helm's
/// order.
fn planned_hooks(
    objects: &[ObjectPlan],
    resolved: &[Manifest],
    hooks: &[Manifest],
) -> Vec<PlannedHook> {
    let changing: HashSet<&ObjectRef> = objects
        .iter()
        .filter(|o| matches!(o.action, Action::Create | Action::Update))
        .map(|o| &o.id)
        .collect();
    let changed: HashSet<&str> = resolved
        .iter()
        .filter(|m| changing.contains(&m.id))
        .filter_map(|m| m.release.as_deref())
        .collect();
    [HookPhase::Pre, HookPhase::Post]
        .into_iter()
        .flat_map(|phase| super::hooks::due(hooks, phase, &changed))
        .filter_map(|m| {
            let hook = m.hook.as_ref()?;
            Some(PlannedHook {
                id: m.id.clone(),
                origin: m.origin.clone(),
                release: m.release.clone()?,
                phase: hook.phase,
                weight: hook.weight,
            })
        })
        .collect()
}

/// Plans every object (dry-run apply and GET, concurrently; `untouched`
/// ones are unchanged without asking) plus the prunes of `previous` (the
/// inventory) that `manifests` no longer declare.
async fn plan_objects(
    client: &Client,
    catalog: &Catalog,
    manifests: &[Manifest],
    previous: &[Entry],
    force: bool,
    ignored: Ignored<'_>,
    untouched: &HashSet<ObjectRef>,
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
            async move {
                if untouched.contains(&m.id) {
                    return ObjectPlan {
                        id: m.id.clone(),
                        origin: Some(m.origin.clone()),
                        action: Action::Unchanged,
                        changes: Vec::new(),
                        error: None,
                        note: None,
                    };
                }
                plan_one(client, catalog, m, force, ignored, context).await
            }
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
    for entry in inventory::stale(previous, manifests) {
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
    if let Some(why) = kept_because(&live.metadata) {
        plan.action = Action::Unchanged;
        plan.note = Some(format!("removed from git but kept: {why}"));
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
    ignored: Ignored<'_>,
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
    // Dry-run what apply would send, and leave out of the comparison what
    // other managers decide: neither is ferry's to change.
    let pointers = ignored.pointers(&manifest.id);
    let object = ignore::to_send(
        &manifest.object,
        live.is_some().then_some(&before),
        &pointers,
    );
    match api
        .patch(&manifest.id.name, &params, &Patch::Apply(&object))
        .await
    {
        Ok(after) => {
            let after = serde_json::to_value(&after).unwrap_or_default();
            plan.changes = diff::diff(
                &ignore::strip(&before, &pointers),
                &ignore::strip(&after, &pointers),
                is_secret,
            );
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
