//! The admin endpoint: what `ferry status`, `sync`, `suspend` and `resume`
//! talk to. It listens on an address of its own (config validation keeps
//! it off the public port webhooks reach) and answers only requests that
//! carry the bearer token of `server.admin.token_file`, read at every
//! request so that rotating it needs no restart.

pub mod client;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::extract::{Path, Query, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use tokio::sync::watch;

use crate::metrics::Metrics;
use crate::status::{StatusStore, timestamp};
use crate::suspend::Suspensions;
use crate::trigger::Trigger;

#[derive(Clone)]
pub struct AdminState {
    pub status: StatusStore,
    pub metrics: Arc<Metrics>,
    pub suspensions: Suspensions,
    pub triggers: HashMap<String, Trigger>,
    pub token_file: PathBuf,
}

/// How long `sync` waits by default, and at most.
const SYNC_WAIT: Duration = Duration::from_secs(300);
const SYNC_WAIT_MAX: Duration = Duration::from_secs(3600);

pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/admin/v1/status", get(status_all))
        .route("/admin/v1/sources/{source}", get(status_one))
        .route("/admin/v1/sources/{source}/sync", post(sync))
        .route("/admin/v1/sources/{source}/suspend", post(suspend))
        .route("/admin/v1/sources/{source}/resume", post(resume))
        .layer(middleware::from_fn_with_state(state.clone(), authorize))
        .with_state(state)
}

fn error(code: StatusCode, message: String) -> Response {
    (code, Json(serde_json::json!({ "error": message }))).into_response()
}

async fn authorize(State(state): State<AdminState>, request: Request, next: Next) -> Response {
    let token = match crate::secret::from_file(&state.token_file) {
        Ok(token) => token,
        Err(e) => {
            tracing::error!(error = %e, "admin request refused: the token cannot be read");
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                "ferry cannot read its admin token (server.admin.token_file); see its log".into(),
            );
        }
    };
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match presented {
        Some(p) if same(p.as_bytes(), token.expose().as_bytes()) => next.run(request).await,
        _ => {
            let mut response = error(
                StatusCode::UNAUTHORIZED,
                "send `Authorization: Bearer <the token in server.admin.token_file>`".into(),
            );
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
            response
        }
    }
}

/// Equal, in time that does not depend on where they differ.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn status_all(State(state): State<AdminState>) -> Json<serde_json::Value> {
    Json(crate::server::status_document(&state.status))
}

async fn status_one(State(state): State<AdminState>, Path(source): Path<String>) -> Response {
    match state.status.get(&source) {
        Some(status) => Json(status).into_response(),
        None => unknown(&state, &source),
    }
}

fn unknown(state: &AdminState, source: &str) -> Response {
    let mut names: Vec<&str> = state.triggers.keys().map(String::as_str).collect();
    names.sort();
    error(
        StatusCode::NOT_FOUND,
        format!("no source named `{source}` (sources: {})", names.join(", ")),
    )
}

#[derive(Deserialize)]
struct SyncQuery {
    /// How long to wait for the sync, e.g. `5m`.
    timeout: Option<String>,
}

/// Starts a sync now and answers with the source's status once it has
/// finished: a sync that began after this request, not one in flight.
async fn sync(
    State(state): State<AdminState>,
    Path(source): Path<String>,
    Query(query): Query<SyncQuery>,
) -> Response {
    let (Some(trigger), Some(before)) = (state.triggers.get(&source), state.status.get(&source))
    else {
        return unknown(&state, &source);
    };
    if let Some(s) = state.suspensions.get(&source) {
        return error(
            StatusCode::CONFLICT,
            format!(
                "`{source}` is suspended since {} ({}): `ferry resume {source}` first",
                s.since, s.reason
            ),
        );
    }
    let wait = match query.timeout.as_deref().map(humantime::parse_duration) {
        None => SYNC_WAIT,
        Some(Ok(d)) => d.min(SYNC_WAIT_MAX),
        Some(Err(e)) => return error(StatusCode::BAD_REQUEST, format!("timeout: {e}")),
    };
    // Finished counts every sync begun before; the one to wait for begins
    // after this poke.
    let wanted = before.syncs_started + 1;
    trigger.poke();
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let now = state.status.get(&source);
        if let Some(now) = now.filter(|s| s.syncs >= wanted) {
            return Json(now).into_response();
        }
        if tokio::time::Instant::now() >= deadline {
            return error(
                StatusCode::GATEWAY_TIMEOUT,
                format!(
                    "`{source}` did not finish a sync in {} (it goes on; `ferry status {source}` shows it)",
                    humantime::format_duration(wait)
                ),
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[derive(Deserialize)]
struct SuspendBody {
    reason: String,
}

async fn suspend(
    State(state): State<AdminState>,
    Path(source): Path<String>,
    body: Option<Json<SuspendBody>>,
) -> Response {
    if !state.triggers.contains_key(&source) {
        return unknown(&state, &source);
    }
    let Some(reason) = body
        .map(|Json(b)| b.reason.trim().to_string())
        .filter(|r| !r.is_empty())
    else {
        return error(
            StatusCode::BAD_REQUEST,
            "say why: a JSON body {\"reason\": \"...\"} (ferry suspend SOURCE --reason TEXT)"
                .into(),
        );
    };
    match state
        .suspensions
        .suspend(&source, &reason, timestamp(SystemTime::now()))
    {
        Ok(suspension) => {
            tracing::warn!(source = %source, reason = %suspension.reason, "suspended: nothing is applied until `ferry resume`");
            // Said at once, not at the worker's next sync.
            state
                .suspensions
                .show(&source, &state.status, &state.metrics);
            Json(suspension).into_response()
        }
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

async fn resume(State(state): State<AdminState>, Path(source): Path<String>) -> Response {
    let Some(trigger) = state.triggers.get(&source) else {
        return unknown(&state, &source);
    };
    match state.suspensions.resume(&source) {
        Ok(was) => {
            if was.is_some() {
                tracing::info!(source = %source, "resumed");
            }
            // Said at once, not at the worker's next sync.
            state
                .suspensions
                .show(&source, &state.status, &state.metrics);
            // What waited is applied now, not at the next poll.
            trigger.poke();
            Json(serde_json::json!({ "resumed": was.is_some(), "was": was })).into_response()
        }
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// Binds `addr` and serves until `shutdown` turns true.
pub async fn serve(
    addr: SocketAddr,
    state: AdminState,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    crate::server::serve_app(addr, router(state), shutdown, "server.admin.listen").await
}

#[cfg(test)]
mod tests {
    #[test]
    fn tokens_compare_whole() {
        assert!(super::same(b"s3cret", b"s3cret"));
        assert!(!super::same(b"s3cret", b"s3creT"));
        assert!(!super::same(b"s3cret", b"s3cre"));
        assert!(!super::same(b"", b"x"));
    }
}
