//! HTTP face: health, readiness, metrics, the JSON status API and the
//! pages for people ([`crate::pages`]).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bytes::Bytes;
use serde::Serialize;
use tokio::sync::watch;

use crate::metrics::Metrics;
use crate::status::{SourceStatus, StatusStore};
use crate::webhook::{MAX_BODY, Receiver};

#[derive(Clone)]
pub struct AppState {
    pub status: StatusStore,
    pub metrics: Arc<Metrics>,
    /// Set when `github.webhook_secret_file` is configured.
    pub webhook: Option<Arc<Receiver>>,
    pub site: Arc<crate::pages::Site>,
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/api/v1/status", get(status_all))
        .route("/api/v1/status/{source}", get(status_one))
        .route(
            "/api/v1/status/{source}/revisions/{revision}",
            get(status_revision),
        )
        .route(
            "/webhooks/github",
            post(github_webhook).layer(DefaultBodyLimit::max(MAX_BODY)),
        )
        .merge(crate::pages::router())
        .with_state(state)
}

async fn github_webhook(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    match &state.webhook {
        Some(receiver) => receiver.handle(&headers, &body).into_response(),
        None => (
            StatusCode::NOT_FOUND,
            "webhooks are not configured (github.webhook_secret_file)\n",
        )
            .into_response(),
    }
}

async fn readyz(State(state): State<AppState>) -> Response {
    if state.status.ready() {
        (StatusCode::OK, "ready\n").into_response()
    } else if let Some(reason) = state.status.standby() {
        (StatusCode::SERVICE_UNAVAILABLE, format!("{reason}\n")).into_response()
    } else {
        let waiting: Vec<String> = state
            .status
            .all()
            .into_iter()
            .filter(|s| !s.first_sync_done)
            .map(|s| s.name)
            .collect();
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("waiting for the first sync of: {}\n", waiting.join(", ")),
        )
            .into_response()
    }
}

async fn metrics(State(state): State<AppState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.encode(),
    )
        .into_response()
}

#[derive(Serialize)]
struct StatusResponse {
    /// What is running, so an operator can ask a live agent.
    version: &'static str,
    commit: &'static str,
    ready: bool,
    /// Why this process does not sync (it waits for the leader Lease).
    #[serde(skip_serializing_if = "Option::is_none")]
    standby: Option<String>,
    sources: Vec<SourceStatus>,
}

async fn status_all(State(state): State<AppState>) -> Json<StatusResponse> {
    Json(status_response(&state.status))
}

fn status_response(status: &StatusStore) -> StatusResponse {
    StatusResponse {
        version: crate::build::VERSION,
        commit: crate::build::COMMIT,
        ready: status.ready(),
        standby: status.standby(),
        sources: status.all(),
    }
}

/// `/api/v1/status` as a JSON value, for printing the same document
/// elsewhere (`quickstart --once`).
pub fn status_document(status: &StatusStore) -> serde_json::Value {
    serde_json::to_value(status_response(status)).unwrap_or_default()
}

async fn status_one(State(state): State<AppState>, Path(source): Path<String>) -> Response {
    match state.status.get(&source) {
        Some(status) => Json(status).into_response(),
        None => (
            StatusCode::NOT_FOUND,
            Json(serde_json::json!({"error": format!("no source named `{source}`")})),
        )
            .into_response(),
    }
}

async fn status_revision(
    State(state): State<AppState>,
    Path((source, revision)): Path<(String, String)>,
) -> Response {
    if state.status.get(&source).is_none() {
        return (
            StatusCode::NOT_FOUND,
            Json(serde_json::json!({"error": format!("no source named `{source}`")})),
        )
            .into_response();
    }
    let records = state.status.revision(&source, &revision);
    if records.is_empty() {
        return (
            StatusCode::NOT_FOUND,
            Json(serde_json::json!({
                "error": format!("ferry has not evaluated {revision} of `{source}` since it started (it keeps the last 50 per source)")
            })),
        )
            .into_response();
    }
    Json(serde_json::json!({"source": source, "revision": revision, "records": records}))
        .into_response()
}

/// A bound listening socket that outlives the servers on it. Standing by
/// for the Lease and then syncing serve one socket in turn, so a kubelet
/// probe that arrives in between waits in the backlog instead of being
/// refused (a closed port fails liveness; the stand-up test once caught it).
pub struct Listener {
    socket: std::net::TcpListener,
    key: &'static str,
}

impl Listener {
    /// Binds `addr` (the config key `key` names it in the error), so a
    /// taken port is an immediate, clear error.
    pub async fn bind(addr: SocketAddr, key: &'static str) -> anyhow::Result<Self> {
        use anyhow::Context;
        // tokio's bind sets SO_REUSEADDR, as a restart on the same port needs.
        let socket = tokio::net::TcpListener::bind(addr)
            .await
            .and_then(|l| l.into_std())
            .with_context(|| format!("cannot listen on {addr} ({key})"))?;
        Ok(Self { socket, key })
    }

    pub fn local_addr(&self) -> anyhow::Result<SocketAddr> {
        use anyhow::Context;
        self.socket
            .local_addr()
            .context("listener has no local address")
    }
}

/// Serves ferry's routes on `listener` until `shutdown` turns true; the
/// socket stays open for the next server after this one stops.
pub fn serve(
    listener: &Listener,
    state: AppState,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    serve_on(listener, router(state), shutdown)
}

/// Binds `addr` (the config key `key` names) and serves `app` until
/// `shutdown`.
pub async fn serve_app(
    addr: SocketAddr,
    app: Router,
    shutdown: watch::Receiver<bool>,
    key: &'static str,
) -> anyhow::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    serve_on(&Listener::bind(addr, key).await?, app, shutdown)
}

fn serve_on(
    listener: &Listener,
    app: Router,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    use anyhow::Context;
    let key = listener.key;
    let local = listener.local_addr()?;
    // A second descriptor of the one socket: the server closes its own when
    // it stops, and the socket lives on in `listener`.
    let socket = listener
        .socket
        .try_clone()
        .and_then(tokio::net::TcpListener::from_std)
        .with_context(|| format!("cannot serve on {local} ({key})"))?;
    let handle = tokio::spawn(async move {
        let result = axum::serve(socket, app)
            .with_graceful_shutdown(async move {
                let _ = shutdown.wait_for(|stop| *stop).await;
            })
            .await;
        if let Err(err) = result {
            tracing::error!(error = %err, server = key, "HTTP server failed");
        }
    });
    Ok((local, handle))
}
