//! Connecting to the cluster.

use std::path::Path;
use std::time::Duration;

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
    client_for(config)
}

/// What a request the API server answers 429, 503 or 504 gets: a few more
/// tries within seconds (its `Retry-After` honoured), then the error, so
/// ferry's own backoff decides. kube's default layer tries 15 times with
/// delays doubling towards 1000 s: a busy or restarting API server would
/// hold one request of an apply (and its cancellation) for minutes.
fn retry_policy() -> kube::client::retry::RetryPolicy {
    kube::client::retry::RetryPolicy::new(
        Duration::from_millis(200),
        Duration::from_secs(2),
        RETRIES,
        true,
    )
    .unwrap_or_default()
}

/// Tries again after the first answer, at most.
pub const RETRIES: u32 = 4;

fn client_for(mut config: Config) -> Result<Client, ClientError> {
    config.default_retry = false;
    let builder = kube::client::ClientBuilder::try_from(config)
        .map_err(|e| ClientError::Build(e.to_string()))?;
    Ok(builder
        .with_layer(&tower::layer::layer_fn(Shared::new))
        .with_layer(&tower::retry::RetryLayer::new(retry_policy()))
        .build())
}

/// The client's boxed service made cloneable, as a retry needs a copy of
/// the service for each try: one service behind a lock, taken only to start
/// a request (the response is awaited outside it).
struct Shared<S>(std::sync::Arc<tokio::sync::Mutex<S>>);

// Not derived: that would ask S to be Clone, which is the point.
impl<S> Clone for Shared<S> {
    fn clone(&self) -> Shared<S> {
        Shared(self.0.clone())
    }
}

impl<S> Shared<S> {
    fn new(service: S) -> Shared<S> {
        Shared(std::sync::Arc::new(tokio::sync::Mutex::new(service)))
    }
}

impl<S, Req> tower::Service<Req> for Shared<S>
where
    S: tower::Service<Req> + Send + 'static,
    S::Future: Send + 'static,
    Req: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = futures::future::BoxFuture<'static, Result<S::Response, S::Error>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), S::Error>> {
        // Readiness is the inner service's, asked under the lock in `call`.
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Req) -> Self::Future {
        use tower::ServiceExt;
        let inner = self.0.clone();
        Box::pin(async move {
            let response = {
                let mut service = inner.lock().await;
                service.ready().await?.call(req)
            };
            response.await
        })
    }
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
