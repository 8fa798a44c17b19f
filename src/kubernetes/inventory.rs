//! The inventory: every object ferry applied for a target, kept in the
//! cluster as one ConfigMap (`ferry-inventory-<target>`). Pruning deletes
//! only what is listed here (and labelled as ferry's), so objects created
//! by hand or by other tools are never touched.

use k8s_openapi::api::core::v1::ConfigMap;
use kube::Client;
use kube::api::{Api, Patch, PatchParams};
use serde::{Deserialize, Serialize};

use super::plan::FIELD_MANAGER;
use crate::desired::manifests::ObjectRef;

pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
pub const MANAGED_BY_VALUE: &str = "ferry";
const KEY: &str = "objects.json";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub api_version: String,
    #[serde(flatten)]
    pub id: ObjectRef,
}

pub fn name(target: &str) -> String {
    format!("ferry-inventory-{target}")
}

/// The target's inventory; empty when it does not exist yet.
pub async fn load(
    client: &Client,
    namespace: &str,
    target: &str,
) -> Result<Vec<Entry>, kube::Error> {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    let Some(cm) = api.get_opt(&name(target)).await? else {
        return Ok(Vec::new());
    };
    let text = cm
        .data
        .as_ref()
        .and_then(|d| d.get(KEY))
        .cloned()
        .unwrap_or_default();
    // A damaged inventory must not stop applies; it only limits pruning.
    Ok(serde_json::from_str(&text).unwrap_or_else(|err| {
        tracing::warn!(%err, target, "inventory unreadable; nothing will be pruned this time");
        Vec::new()
    }))
}

pub async fn save(
    client: &Client,
    namespace: &str,
    target: &str,
    revision: &str,
    entries: &[Entry],
) -> Result<(), kube::Error> {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    let body = serde_json::json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": name(target),
            "namespace": namespace,
            "labels": { MANAGED_BY_LABEL: MANAGED_BY_VALUE },
            "annotations": { "ferry.dev/revision": revision },
        },
        "data": { KEY: serde_json::to_string(entries).unwrap_or_else(|_| "[]".into()) },
    });
    api.patch(
        &name(target),
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&body),
    )
    .await?;
    Ok(())
}
