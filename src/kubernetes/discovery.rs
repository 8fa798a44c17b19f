//! What the cluster serves: for each (group, kind), its plural and scope.
//! Feeds the desired-state resolver (scope) and every dynamic API call.

use std::collections::HashMap;

use kube::Client;
use kube::discovery::{ApiResource, Discovery, Scope as KubeScope};

use crate::desired::manifests::Manifest;
use crate::desired::resolve::{self, Scope};

#[derive(Debug, Clone)]
struct Served {
    plural: String,
    scope: Scope,
    /// Has a `status` subresource: a controller is expected to report.
    status: bool,
}

#[derive(Debug, Clone, Default)]
pub struct Catalog {
    served: HashMap<(String, String), Served>,
    /// Kinds that CRDs in the revision define but the cluster does not serve yet.
    pending: HashMap<(String, String), Served>,
}

impl Catalog {
    /// Asks the API server what it serves.
    pub async fn discover(client: &Client) -> Result<Catalog, kube::Error> {
        let discovery = Discovery::new(client.clone()).run().await?;
        let mut served = HashMap::new();
        for group in discovery.groups() {
            for (resource, caps) in group.recommended_resources() {
                // Subresources (pods/status) are not objects one declares.
                if resource.plural.contains('/') {
                    continue;
                }
                let scope = match caps.scope {
                    KubeScope::Cluster => Scope::Cluster,
                    KubeScope::Namespaced => Scope::Namespaced,
                };
                let status = caps
                    .subresources
                    .iter()
                    .any(|(sub, _)| sub.plural == "status");
                served.insert(
                    (resource.group.clone(), resource.kind.clone()),
                    Served {
                        plural: resource.plural.clone(),
                        scope,
                        status,
                    },
                );
            }
        }
        Ok(Catalog {
            served,
            pending: HashMap::new(),
        })
    }

    /// Adds the kinds that CRDs in `manifests` define and the cluster does
    /// not serve yet, so their objects resolve in the same revision.
    pub fn with_crds_from(mut self, manifests: &[Manifest]) -> Catalog {
        for ((group, kind), scope) in resolve::crd_scopes(manifests) {
            if self.served.contains_key(&(group.clone(), kind.clone())) {
                continue;
            }
            let spec = manifests
                .iter()
                .filter(|m| m.id.kind == "CustomResourceDefinition")
                .filter_map(|m| m.object.get("spec"))
                .find(|s| {
                    s.get("group").and_then(|g| g.as_str()) == Some(group.as_str())
                        && s.get("names")
                            .and_then(|n| n.get("kind"))
                            .and_then(|k| k.as_str())
                            == Some(kind.as_str())
                });
            let plural = spec
                .and_then(|s| s.get("names")?.get("plural")?.as_str().map(str::to_string))
                .unwrap_or_else(|| kind.to_lowercase() + "s");
            let status = spec
                .and_then(|s| s.get("versions")?.as_array())
                .is_some_and(|versions| {
                    versions
                        .iter()
                        .any(|v| v.pointer("/subresources/status").is_some())
                });
            self.pending.insert(
                (group, kind),
                Served {
                    plural,
                    scope,
                    status,
                },
            );
        }
        self
    }

    pub fn scope(&self, group: &str, kind: &str) -> Option<Scope> {
        let key = (group.to_string(), kind.to_string());
        self.served
            .get(&key)
            .or_else(|| self.pending.get(&key))
            .map(|s| s.scope)
    }

    /// True when the kind has a `status` subresource.
    pub fn has_status(&self, group: &str, kind: &str) -> bool {
        let key = (group.to_string(), kind.to_string());
        self.served
            .get(&key)
            .or_else(|| self.pending.get(&key))
            .is_some_and(|s| s.status)
    }

    /// True when the kind exists only through a CRD of this revision.
    pub fn is_pending(&self, group: &str, kind: &str) -> bool {
        let key = (group.to_string(), kind.to_string());
        !self.served.contains_key(&key) && self.pending.contains_key(&key)
    }

    /// The resource for an object's own apiVersion (which may differ from
    /// the version discovery prefers; the plural is the same across versions).
    pub fn api_resource(&self, api_version: &str, kind: &str) -> Option<ApiResource> {
        let (group, version) = match api_version.split_once('/') {
            Some((g, v)) => (g.to_string(), v.to_string()),
            None => (String::new(), api_version.to_string()),
        };
        let key = (group.clone(), kind.to_string());
        let served = self.served.get(&key).or_else(|| self.pending.get(&key))?;
        Some(ApiResource {
            group,
            version,
            api_version: api_version.to_string(),
            kind: kind.to_string(),
            plural: served.plural.clone(),
        })
    }
}
