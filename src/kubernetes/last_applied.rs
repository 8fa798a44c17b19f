//! What the last successful apply left behind, for the fast path: an
//! object whose content is what ferry last sent and whose live
//! resourceVersion is still the one that apply produced has not changed,
//! so a plan need not dry-run it and an apply need not send it.

use std::collections::{HashMap, HashSet};

use futures::StreamExt;
use kube::Client;

use super::client::api_for;
use super::discovery::Catalog;
use super::inventory::Entry;
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
}

#[derive(Debug, Clone, Default)]
pub struct LastApplied {
    pub(crate) objects: HashMap<ObjectRef, AppliedObject>,
    pub(crate) inventory: Vec<Entry>,
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
                (live.metadata.resource_version.as_ref() == Some(&known.resource_version))
                    .then(|| m.id.clone())
            })
            .buffered(CONCURRENCY)
            .collect()
            .await;
        checks.into_iter().flatten().collect()
    }
}
