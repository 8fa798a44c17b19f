//! Connecting to the cluster.

use std::path::Path;

use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("kubeconfig {path}: {detail}")]
    Kubeconfig { path: String, detail: String },
    #[error("no cluster configuration found (not in a pod, no KUBECONFIG or ~/.kube/config): {0}")]
    Infer(String),
    #[error("cannot build a Kubernetes client: {0}")]
    Build(String),
}

/// From `kubeconfig` when given; otherwise in-cluster, then the usual
/// kubeconfig locations.
pub async fn connect(kubeconfig: Option<&Path>) -> Result<Client, ClientError> {
    let config = match kubeconfig {
        Some(path) => {
            let err = |detail: String| ClientError::Kubeconfig {
                path: path.display().to_string(),
                detail,
            };
            let file = Kubeconfig::read_from(path).map_err(|e| err(e.to_string()))?;
            Config::from_custom_kubeconfig(file, &KubeConfigOptions::default())
                .await
                .map_err(|e| err(e.to_string()))?
        }
        None => Config::infer()
            .await
            .map_err(|e| ClientError::Infer(e.to_string()))?,
    };
    Client::try_from(config).map_err(|e| ClientError::Build(e.to_string()))
}

/// The API for objects of `resource`, in `namespace` or cluster-wide.
pub fn api_for(
    client: &Client,
    resource: &kube::discovery::ApiResource,
    namespace: Option<&str>,
) -> kube::Api<kube::api::DynamicObject> {
    match namespace {
        Some(ns) => kube::Api::namespaced_with(client.clone(), ns, resource),
        None => kube::Api::all_with(client.clone(), resource),
    }
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
