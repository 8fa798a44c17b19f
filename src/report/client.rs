//! One authenticated GitHub REST call at a time, classified for retrying.
//!
//! octocrab supplies the transport, the base URL (GitHub Enterprise Server
//! too) and authentication, including GitHub App installation tokens that it
//! refreshes before they expire. Its typed builders do not hand back
//! response headers, and ferry needs them (`Retry-After`,
//! `X-RateLimit-Remaining`, `X-RateLimit-Reset`) to respect rate limits, so
//! every call goes through octocrab's raw `_get`/`_post`/`_patch`; retrying
//! is the reporter's job (one policy for 5xx, rate limits and outages), so
//! octocrab's own retry layer is left out.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use http::{HeaderMap, Method};
use octocrab::Octocrab;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::config::GithubConfig;
use crate::secret;

/// GitHub asks clients that hit a secondary rate limit without a
/// `Retry-After` to wait at least a minute.
const SECONDARY_LIMIT_WAIT: Duration = Duration::from_secs(60);
/// Never sleep longer than this on a server's say-so.
const MAX_WAIT: Duration = Duration::from_secs(15 * 60);

#[derive(Debug, thiserror::Error)]
pub enum GithubError {
    /// Worth retrying: 5xx, rate limits, network errors, bad credentials
    /// (which an operator can rotate without restarting ferry).
    #[error("{what}")]
    Unavailable {
        what: String,
        retry_after: Option<Duration>,
    },
    /// GitHub refused this request for good (e.g. 404 no access, 422).
    #[error("GitHub refused {method} {path}: HTTP {status}: {message}")]
    Refused {
        method: Method,
        path: String,
        status: u16,
        message: String,
    },
}

enum Auth {
    TokenFile(PathBuf),
    TokenEnv(String),
    App {
        app_id: u64,
        installation_id: u64,
        key_file: PathBuf,
    },
}

pub struct GithubClient {
    api_url: String,
    auth: Auth,
    /// The client and a fingerprint of the credential it was built from:
    /// a rotated token or key builds a new one; an App client is kept, so
    /// its cached installation token is reused until it nears expiry.
    /// Shared, not cloned: cloning an `Octocrab` copies its token cache,
    /// and a refreshed installation token would be lost with the copy.
    cached: Mutex<Option<([u8; 32], Arc<Octocrab>)>>,
    /// One request at a time: GitHub asks integrations not to send
    /// concurrent requests (secondary rate limits), and a renewed App token
    /// is then fetched once, not once per concurrent caller.
    gate: tokio::sync::Mutex<()>,
}

impl GithubClient {
    /// None when the config has no credentials.
    pub fn from_config(config: &GithubConfig) -> Option<GithubClient> {
        let auth = if let Some(file) = &config.token_file {
            Auth::TokenFile(file.clone())
        } else if let Some(var) = &config.token_env {
            Auth::TokenEnv(var.clone())
        } else if let Some(app) = &config.app {
            Auth::App {
                app_id: app.app_id,
                installation_id: app.installation_id,
                key_file: app.private_key_file.clone(),
            }
        } else {
            return None;
        };
        Some(GithubClient {
            api_url: config.api_url.trim_end_matches('/').to_string(),
            auth,
            cached: Mutex::new(None),
            gate: tokio::sync::Mutex::new(()),
        })
    }

    fn octocrab(&self) -> Result<Arc<Octocrab>, GithubError> {
        let unavailable = |what: String| GithubError::Unavailable {
            what,
            retry_after: None,
        };
        let credential = match &self.auth {
            Auth::TokenFile(file) => secret::from_file(file).map(|s| s.expose().to_string()),
            Auth::TokenEnv(var) => secret::from_env(var).map(|s| s.expose().to_string()),
            Auth::App { key_file, .. } => {
                secret::from_file(key_file).map(|s| s.expose().to_string())
            }
        }
        .map_err(|e| unavailable(format!("GitHub credentials: {e}")))?;
        let fingerprint: [u8; 32] = Sha256::digest(credential.as_bytes()).into();
        let mut cached = self.cached.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((f, client)) = &*cached
            && *f == fingerprint
        {
            return Ok(client.clone());
        }
        let builder = Octocrab::builder()
            .base_uri(self.api_url.as_str())
            .map_err(|e| unavailable(format!("github.api_url `{}`: {e}", self.api_url)))?
            .set_connect_timeout(Some(Duration::from_secs(10)))
            .set_read_timeout(Some(Duration::from_secs(30)))
            .add_header(
                http::header::USER_AGENT,
                concat!("ferry/", env!("CARGO_PKG_VERSION")).to_string(),
            )
            .add_header(http::header::ACCEPT, "application/vnd.github+json".into())
            .add_header(
                http::HeaderName::from_static("x-github-api-version"),
                "2022-11-28".into(),
            );
        let client = match &self.auth {
            Auth::TokenFile(_) | Auth::TokenEnv(_) => builder.personal_token(credential).build(),
            Auth::App {
                app_id,
                installation_id,
                key_file,
            } => {
                let key =
                    octocrab::EncodingKey::from_rsa_pem(credential.as_bytes()).map_err(|e| {
                        unavailable(format!(
                            "github.app.private_key_file {}: not an RSA private key in PEM: {e}",
                            key_file.display()
                        ))
                    })?;
                builder
                    .app((*app_id).into(), key)
                    .build()
                    .and_then(|c| c.installation((*installation_id).into()))
            }
        }
        .map_err(|e| unavailable(format!("cannot build the GitHub client: {e}")))?;
        let client = Arc::new(client);
        *cached = Some((fingerprint, client.clone()));
        Ok(client)
    }

    /// One request; `path` is relative to `api_url` (e.g. `/repos/o/r/...`).
    /// Returns the decoded JSON body of a 2xx answer.
    pub async fn request(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, GithubError> {
        let _turn = self.gate.lock().await;
        let client = self.octocrab()?;
        let sent = match method {
            Method::GET => client._get(path).await,
            Method::POST => client._post(path, body).await,
            Method::PATCH => client._patch(path, body).await,
            _ => {
                return Err(GithubError::Refused {
                    method,
                    path: path.to_string(),
                    status: 0,
                    message: "ferry does not send this method".into(),
                });
            }
        };
        let response = sent.map_err(|e| GithubError::Unavailable {
            what: format!("{method} {path}: cannot reach GitHub: {}", error_chain(&e)),
            retry_after: None,
        })?;
        let status = response.status();
        let headers = response.headers().clone();
        let text = client
            .body_to_string(response)
            .await
            .map_err(|e| GithubError::Unavailable {
                what: format!("{method} {path}: reading the answer: {e}"),
                retry_after: None,
            })?;
        if status.is_success() {
            if text.trim().is_empty() {
                return Ok(Value::Null);
            }
            return serde_json::from_str(&text).map_err(|e| GithubError::Unavailable {
                what: format!("{method} {path}: answer is not JSON: {e}"),
                retry_after: None,
            });
        }
        let message = serde_json::from_str::<Value>(&text)
            .ok()
            .and_then(|v| v["message"].as_str().map(str::to_string))
            .unwrap_or_else(|| text.chars().take(200).collect());
        let code = status.as_u16();
        if let Some(wait) = rate_limit_wait(code, &headers, &message, SystemTime::now()) {
            return Err(GithubError::Unavailable {
                what: format!("{method} {path}: rate limited (HTTP {code}): {message}"),
                retry_after: Some(wait),
            });
        }
        if status.is_server_error() || code == 401 || code == 408 {
            return Err(GithubError::Unavailable {
                what: format!("{method} {path}: HTTP {code}: {message}"),
                retry_after: None,
            });
        }
        Err(GithubError::Refused {
            method,
            path: path.to_string(),
            status: code,
            message,
        })
    }
}

/// How long GitHub asks to wait, when the answer is a rate limit: primary
/// (`X-RateLimit-Remaining: 0`, wait for `X-RateLimit-Reset`) or secondary
/// (`Retry-After`, or a minute when it is absent).
fn rate_limit_wait(
    status: u16,
    headers: &HeaderMap,
    message: &str,
    now: SystemTime,
) -> Option<Duration> {
    if status != 403 && status != 429 {
        return None;
    }
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if let Some(secs) = header("retry-after").and_then(|v| v.trim().parse::<u64>().ok()) {
        return Some(Duration::from_secs(secs).min(MAX_WAIT));
    }
    if header("x-ratelimit-remaining") == Some("0") {
        let reset = header("x-ratelimit-reset")
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(|t| SystemTime::UNIX_EPOCH + Duration::from_secs(t));
        let wait = reset
            .and_then(|r| r.duration_since(now).ok())
            .unwrap_or(SECONDARY_LIMIT_WAIT);
        return Some(wait.min(MAX_WAIT));
    }
    if status == 429 || message.to_ascii_lowercase().contains("rate limit") {
        return Some(SECONDARY_LIMIT_WAIT);
    }
    None
}

fn error_chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn rate_limits_are_read_from_githubs_headers() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
        let retry_after = headers(&[("retry-after", "7")]);
        assert_eq!(
            rate_limit_wait(403, &retry_after, "secondary", now),
            Some(Duration::from_secs(7))
        );
        let primary = headers(&[
            ("x-ratelimit-remaining", "0"),
            ("x-ratelimit-reset", "1042"),
        ]);
        assert_eq!(
            rate_limit_wait(403, &primary, "API rate limit exceeded", now),
            Some(Duration::from_secs(42))
        );
        let secondary = headers(&[]);
        assert_eq!(
            rate_limit_wait(
                403,
                &secondary,
                "You have exceeded a secondary rate limit",
                now
            ),
            Some(SECONDARY_LIMIT_WAIT)
        );
        // A plain permission problem is not a rate limit.
        assert_eq!(
            rate_limit_wait(
                403,
                &secondary,
                "Resource not accessible by integration",
                now
            ),
            None
        );
        assert_eq!(rate_limit_wait(500, &retry_after, "", now), None);
        let huge = headers(&[("retry-after", "999999")]);
        assert_eq!(rate_limit_wait(429, &huge, "", now), Some(MAX_WAIT));
    }
}
