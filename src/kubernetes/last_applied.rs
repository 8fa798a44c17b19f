//! What the last successful apply left behind, for the fast path: an
//! object whose content is what ferry last sent and whose live
//! resourceVersion is still the one that apply produced has not changed,
//! so a plan need not dry-run it and an apply need not send it. Nor has
//! one whose resourceVersion moved while ferry's own field set stayed as
//! that apply left it: a controller wrote its status or annotations of
//! its own (a Deployment's, after every rollout). Whoever changes or
//! removes a field ferry applied takes it out of ferry's set (an update
//! takes ownership; a forced apply too), so that still counts as touched.

use std::collections::{HashMap, HashSet};

use futures::StreamExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Client;

use super::client::api_for;
use super::discovery::Catalog;
use super::inventory::Entry;
use super::ownership::FIELD_MANAGER;
use crate::desired::manifests::{Manifest, ObjectRef};

/// Requests in flight at once; enough to hide latency, gentle on the server.
pub(crate) const CONCURRENCY: usize = 16;

/// One object as the last successful apply left it.
#[derive(Debug, Clone)]
pub(crate) struct AppliedObject {
    pub api_version: String,
    pub resource_version: String,
    /// Digest of the object ferry sent.
    pub digest: u64,
    /// Digest of ferry's entries in the object's managedFields after it.
    pub fields: Option<u64>,
}

#[derive(Debug, Clone, Default)]
pub struct LastApplied {
    pub(crate) objects: HashMap<ObjectRef, AppliedObject>,
    pub(crate) inventory: Vec<Entry>,
}

/// Digest of the fields `meta` records as applied by ferry (per API
/// version and subresource; not their times), if it records any.
pub(crate) fn ferry_fields(meta: &ObjectMeta) -> Option<u64> {
    let mine: Vec<serde_json::Value> = meta
        .managed_fields
        .iter()
        .flatten()
        .filter(|e| {
            e.manager.as_deref() == Some(FIELD_MANAGER) && e.operation.as_deref() == Some("Apply")
        })
        .map(|e| {
            serde_json::json!([
                e.api_version,
                e.subresource,
                e.fields_v1.as_ref().map(|f| &f.0)
            ])
        })
        .collect();
    (!mine.is_empty()).then(|| digest(&serde_json::Value::Array(mine)))
}

pub(crate) fn digest(object: &serde_json::Value) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    object.to_string().hash(&mut h);
    h.finish()
}

impl LastApplied {
    /// Reads only: the objects of `resolved` untouched since this apply.
    pub(crate) async fn untouched(
        &self,
        client: &Client,
        catalog: &Catalog,
        resolved: &[Manifest],
    ) -> HashSet<ObjectRef> {
        let checks: Vec<Option<ObjectRef>> = futures::stream::iter(0..resolved.len())
            .map(|i| async move {
                let m = &resolved[i];
                let known = self.objects.get(&m.id)?;
                if known.digest != digest(&m.object) || known.api_version != m.api_version {
                    return None;
                }
                let resource = catalog.api_resource(&known.api_version, &m.id.kind)?;
                let api = api_for(client, &resource, m.id.namespace.as_deref());
                let live = api.get_opt(&m.id.name).await.ok()??;
                let same_version =
                    live.metadata.resource_version.as_ref() == Some(&known.resource_version);
                let same_fields =
                    known.fields.is_some() && ferry_fields(&live.metadata) == known.fields;
                (same_version || same_fields).then(|| m.id.clone())
            })
            .buffered(CONCURRENCY)
            .collect()
            .await;
        checks.into_iter().flatten().collect()
    }
}
