//! What the cluster serves: for each (group, kind), its plural and scope.
//! Feeds the desired-state resolver (scope) and every dynamic API call.

use std::collections::{BTreeMap, HashMap};

use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::APIResourceList;
use k8s_openapi::kube_aggregator::pkg::apis::apiregistration::v1::APIService;
use kube::api::ListParams;
use kube::core::Status;
use kube::discovery::ApiResource;
use kube::{Api, Client};

use super::client::describe;

use crate::desired::manifests::Manifest;
use crate::desired::resolve::{self, Scope};

#[derive(Debug, Clone)]
struct Served {
    plural: String,
    scope: Scope,
    /// Has a `status` subresource: a controller is expected to report.
    status: bool,
}

/// How long one group's discovery may take. kube's client retries a 503
/// for minutes inside one request; a group's list answers in milliseconds
/// when its server is up.
const GROUP_TIMEOUT: Duration = Duration::from_secs(5);

/// The group versions (`v1beta1` of `metrics.k8s.io`: `metrics.k8s.io/v1beta1`)
/// whose APIService is not Available, with the API server's reason. Empty
/// when APIServices cannot be read (no RBAC to list them): discovery then
/// relies on [`GROUP_TIMEOUT`] alone.
async fn unavailable_apiservices(client: &Client) -> BTreeMap<String, String> {
    let api: Api<APIService> = Api::all(client.clone());
    let list = match api.list(&ListParams::default()).await {
        Ok(list) => list,
        Err(err) => {
            tracing::debug!(error = %describe(&err), "cannot read APIServices; discovery asks every group");
            return BTreeMap::new();
        }
    };
    list.items
        .into_iter()
        .filter_map(|service| {
            let spec = service.spec?;
            let group_version = format!("{}/{}", spec.group?, spec.version?);
            let available = service
                .status
                .and_then(|s| s.conditions)
                .unwrap_or_default()
                .into_iter()
                .find(|c| c.type_ == "Available")?;
            (available.status != "True").then(|| {
                (
                    group_version,
                    format!(
                        "APIService {} is not available: {}",
                        service.metadata.name.unwrap_or_default(),
                        available
                            .message
                            .unwrap_or_else(|| available.reason.unwrap_or_default())
                    ),
                )
            })
        })
        .collect()
}

#[derive(Debug, Clone, Default)]
pub struct Catalog {
    served: HashMap<(String, String), Served>,
    /// Kinds that CRDs in the revision define but the cluster does not serve yet.
    pending: HashMap<(String, String), Served>,
    /// Groups the API server lists but cannot describe now, with why: an
    /// aggregated API (metrics.k8s.io) whose pods are down answers 503.
    unavailable: BTreeMap<String, String>,
}

impl Catalog {
    /// Asks the API server what it serves. A group whose server does not
    /// answer is recorded as unavailable rather than failing discovery:
    /// one broken APIService (metrics-server restarting, say) must not stop
    /// every apply, as it does not stop kubectl. Only a revision that uses
    /// such a group waits for it ([`Catalog::require`]).
    pub async fn discover(client: &Client) -> Result<Catalog, kube::Error> {
        let mut catalog = Catalog::default();
        let down = unavailable_apiservices(client).await;
        for version in client.list_core_api_versions().await?.versions {
            let list = client.list_core_api_resources(&version).await?;
            catalog.add("", &list);
        }
        for group in client.list_api_groups().await?.groups {
            // The preferred version first: its kinds and plurals win.
            let mut versions: Vec<String> = group
                .preferred_version
                .iter()
                .map(|v| v.group_version.clone())
                .collect();
            for v in &group.versions {
                if !versions.contains(&v.group_version) {
                    versions.push(v.group_version.clone());
                }
            }
            for group_version in versions {
                // Asking a group whose APIService is down would only be
                // answered 503, after the client's own retries (minutes).
                let answer = match down.get(&group_version) {
                    Some(why) => Err(why.clone()),
                    None => tokio::time::timeout(
                        GROUP_TIMEOUT,
                        client.list_api_group_resources(&group_version),
                    )
                    .await
                    .map_err(|_| format!("no answer in {}s", GROUP_TIMEOUT.as_secs()))
                    .and_then(|r| r.map_err(|e| describe(&e))),
                };
                match answer {
                    Ok(list) => catalog.add(&group.name, &list),
                    Err(why) => {
                        catalog
                            .unavailable
                            .entry(group.name.clone())
                            .or_insert_with(|| format!("{group_version}: {why}"));
                    }
                }
            }
        }
        if !catalog.unavailable.is_empty() {
            tracing::debug!(groups = ?catalog.unavailable, "API groups the server cannot describe now");
        }
        Ok(catalog)
    }

    fn add(&mut self, group: &str, list: &APIResourceList) {
        for resource in &list.resources {
            // Subresources (pods/status) are not objects one declares.
            if resource.name.contains('/') {
                continue;
            }
            let status_name = format!("{}/status", resource.name);
            self.served
                .entry((group.to_string(), resource.kind.clone()))
                .or_insert_with(|| Served {
                    plural: resource.name.clone(),
                    scope: if resource.namespaced {
                        Scope::Namespaced
                    } else {
                        Scope::Cluster
                    },
                    status: list.resources.iter().any(|r| r.name == status_name),
                });
        }
    }

    /// Why `group` cannot be used now, when the server lists it but does
    /// not describe it.
    pub fn unavailable(&self, group: &str) -> Option<&str> {
        self.unavailable.get(group).map(String::as_str)
    }

    /// Fails, as a transient cluster error (503, retried with backoff and
    /// never held against the commit), when one of `groups` is
    /// unavailable: its kinds, scopes and live objects are unknown, and an
    /// entry of it could otherwise pass for pruned.
    pub fn require<'a>(
        &self,
        groups: impl IntoIterator<Item = &'a str>,
    ) -> Result<(), kube::Error> {
        for group in groups {
            if let Some(why) = self.unavailable(group) {
                let message = format!(
                    "the API server cannot serve the group `{group}` now ({why}), and this revision declares or prunes objects of it: \
                     ferry retries; `kubectl get apiservices` shows which server is down"
                );
                return Err(kube::Error::Api(
                    Status::failure(&message, "ServiceUnavailable")
                        .with_code(503)
                        .boxed(),
                ));
            }
        }
        Ok(())
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
