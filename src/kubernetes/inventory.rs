//! The inventory: every object ferry applied for a target, kept in the
//! cluster as one ConfigMap (`ferry-inventory-<target>-<owner hash>`).
//! Pruning deletes only what is listed here (and labelled as ferry's), so
//! objects created by hand or by other tools are never touched. The owner
//! (source URL, branch, manifests path) is in the name and in an
//! annotation, so two ferry instances on one cluster never prune from each
//! other's inventory.

use std::collections::HashSet;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::Client;
use kube::api::{Api, Patch, PatchParams};
use serde::{Deserialize, Serialize};

use super::ownership::{FIELD_MANAGER, MANAGED_BY_LABEL, MANAGED_BY_VALUE};
use crate::desired::manifests::{Manifest, ObjectRef};

const KEY: &str = "objects.json";
const OWNER_ANNOTATION: &str = "ferry.dev/owner";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub api_version: String,
    #[serde(flatten)]
    pub id: ObjectRef,
}

/// The inventory's ConfigMap name for `target` written by `owner`.
/// The entries of `previous` that `declared` no longer holds: what a prune
/// deletes, what the plan lists as prunes and what the prune guard weighs.
pub fn stale<'a>(previous: &'a [Entry], declared: &[Manifest]) -> Vec<&'a Entry> {
    let declared: HashSet<&ObjectRef> = declared.iter().map(|m| &m.id).collect();
    previous
        .iter()
        .filter(|e| !declared.contains(&e.id))
        .collect()
}

pub fn name(target: &str, owner: &str) -> String {
    if owner.is_empty() {
        return legacy_name(target);
    }
    use sha2::Digest;
    let digest = sha2::Sha256::digest(owner.as_bytes());
    let hex: String = digest[..4].iter().map(|b| format!("{b:02x}")).collect();
    format!("ferry-inventory-{target}-{hex}")
}

/// What ferry before owner-named inventories called it.
fn legacy_name(target: &str) -> String {
    format!("ferry-inventory-{target}")
}

/// The target's inventory; empty when it does not exist yet. An inventory
/// under the legacy name is adopted once, and only if no other instance
/// has claimed it (it carries no owner, or ours).
pub async fn load(
    client: &Client,
    namespace: &str,
    target: &str,
    owner: &str,
) -> Result<Vec<Entry>, kube::Error> {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    if let Some(cm) = api.get_opt(&name(target, owner)).await? {
        return Ok(entries(&cm, target));
    }
    if owner.is_empty() {
        return Ok(Vec::new());
    }
    let Some(legacy) = api.get_opt(&legacy_name(target)).await? else {
        return Ok(Vec::new());
    };
    let claimed = legacy
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(OWNER_ANNOTATION))
        .filter(|o| o.as_str() != owner);
    if let Some(other) = claimed {
        tracing::warn!(
            inventory = %legacy_name(target),
            namespace,
            other = %other,
            ours = owner,
            "not adopting an inventory written by another ferry instance; starting an inventory of our own"
        );
        return Ok(Vec::new());
    }
    tracing::info!(from = %legacy_name(target), to = %name(target, owner), namespace, "adopting the inventory of an earlier ferry");
    Ok(entries(&legacy, target))
}

fn entries(cm: &ConfigMap, target: &str) -> Vec<Entry> {
    let text = cm
        .data
        .as_ref()
        .and_then(|d| d.get(KEY))
        .cloned()
        .unwrap_or_default();
    // A damaged inventory must not stop applies; it only limits pruning.
    serde_json::from_str(&text).unwrap_or_else(|err| {
        tracing::warn!(%err, target, "inventory unreadable; nothing will be pruned this time");
        Vec::new()
    })
}

pub async fn save(
    client: &Client,
    namespace: &str,
    target: &str,
    owner: &str,
    revision: &str,
    entries: &[Entry],
) -> Result<(), kube::Error> {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    let name = name(target, owner);
    let body = serde_json::json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": { MANAGED_BY_LABEL: MANAGED_BY_VALUE },
            "annotations": { "ferry.dev/revision": revision, OWNER_ANNOTATION: owner },
        },
        "data": { KEY: serde_json::to_string(entries).unwrap_or_else(|_| "[]".into()) },
    });
    api.patch(
        &name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&body),
    )
    .await?;
    // An adopted legacy inventory is ours now, under our name: remove it,
    // unless another instance claimed it meanwhile.
    if !owner.is_empty()
        && let Some(legacy) = api.get_opt(&legacy_name(target)).await?
        && legacy
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(OWNER_ANNOTATION))
            .is_none_or(|o| o == owner)
    {
        api.delete(&legacy_name(target), &Default::default())
            .await?;
    }
    Ok(())
}
