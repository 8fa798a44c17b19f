//! The Kubernetes effector: plan (and, next, apply) the platform repo's
//! manifests with server-side apply, field manager `ferry`.
//! Named `kubernetes` so it never shadows the `kube` crate.

pub mod apply;
pub mod client;
pub mod diff;
pub mod discovery;
pub mod health;
pub mod inventory;
pub mod plan;
pub mod target;

use kube::Client;

use crate::config::KubernetesTargetConfig;
use crate::desired::manifests::{Manifest, ManifestError};
use crate::desired::resolve::{self, Policy};
use discovery::Catalog;
use plan::Plan;

/// Plans one revision: resolve the parsed manifests against what the
/// cluster serves, dry-run every object, and list what pruning would do to
/// inventory entries the revision drops. `manifests` is the result of
/// [`crate::desired::manifests::read`]; its errors become the plan's errors
/// and nothing is dry-run, as nothing of such a revision would be applied.
pub async fn plan_revision(
    client: &Client,
    target: &str,
    revision: &str,
    config: &KubernetesTargetConfig,
    manifests: Result<Vec<Manifest>, Vec<ManifestError>>,
) -> Result<Plan, kube::Error> {
    let mut plan = Plan {
        target: target.to_string(),
        revision: revision.to_string(),
        objects: Vec::new(),
        errors: Vec::new(),
    };
    let manifests = match manifests {
        Ok(m) => m,
        Err(errors) => {
            plan.errors = errors;
            return Ok(plan);
        }
    };
    let catalog = Catalog::discover(client).await?.with_crds_from(&manifests);
    let previous = if config.prune {
        let ns = config
            .inventory_namespace
            .as_deref()
            .unwrap_or(&config.default_namespace);
        inventory::load(client, ns, target, &config.owner).await?
    } else {
        Vec::new()
    };
    let policy = Policy {
        default_namespace: config.default_namespace.clone(),
        allowed_namespaces: config.allowed_namespaces.clone(),
        allowed_kinds: config.allowed_kinds.clone(),
    };
    match resolve::resolve(manifests, |g, k| catalog.scope(g, k), &policy) {
        Ok(mut resolved) => {
            // Apply sends the object labelled as ferry's; so must the plan.
            for m in &mut resolved {
                apply::label_as_ours(&mut m.object);
            }
            plan.objects =
                plan::plan_objects(client, &catalog, &resolved, &previous, config.force).await;
        }
        Err(errors) => plan.errors = errors,
    }
    Ok(plan)
}
