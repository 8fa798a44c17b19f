//! The CLI's side of the admin endpoint: requests, and what people read
//! (a table of sources, one source's verdict).

use std::time::Duration;

use serde_json::Value;

use crate::http::{Method, Request, StatusCode, send};
use crate::secret::Secret;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "cannot reach ferry's admin endpoint at {url}: {message} (is `ferry run` up, with server.admin set?)"
    )]
    Unreachable { url: String, message: String },
    #[error("ferry refused ({status}): {message}")]
    Refused { status: StatusCode, message: String },
    #[error("ferry's answer is not JSON: {0}")]
    Garbled(String),
}

pub struct Admin {
    base: String,
    authorization: String,
}

/// Requests other than `sync` answer at once.
const TIMEOUT: Duration = Duration::from_secs(30);

impl Admin {
    /// `base` is the endpoint's URL (`http://127.0.0.1:9091`).
    pub fn new(base: &str, token: &Secret) -> Admin {
        Admin {
            base: base.trim_end_matches('/').to_string(),
            authorization: format!("Bearer {}", token.expose()),
        }
    }

    /// The URL of the admin endpoint `listen` names: an unspecified address
    /// (`0.0.0.0`) is reached on loopback.
    pub fn url_of(listen: std::net::SocketAddr) -> String {
        let ip = match listen.ip() {
            ip if ip.is_unspecified() && ip.is_ipv4() => "127.0.0.1".to_string(),
            ip if ip.is_unspecified() => "[::1]".to_string(),
            std::net::IpAddr::V6(ip) => format!("[{ip}]"),
            ip => ip.to_string(),
        };
        format!("http://{ip}:{}", listen.port())
    }

    /// Every source, or one.
    pub fn status(&self, source: Option<&str>) -> Result<Value, ClientError> {
        match source {
            Some(s) => self.call(
                Method::GET,
                &format!("/admin/v1/sources/{s}"),
                None,
                TIMEOUT,
            ),
            None => self.call(Method::GET, "/admin/v1/status", None, TIMEOUT),
        }
    }

    /// Syncs `source` now; its status once that sync has finished.
    pub fn sync(&self, source: &str, wait: Duration) -> Result<Value, ClientError> {
        let path = format!(
            "/admin/v1/sources/{source}/sync?timeout={}s",
            wait.as_secs().max(1)
        );
        self.call(Method::POST, &path, Some(Vec::new()), wait + TIMEOUT)
    }

    pub fn suspend(&self, source: &str, reason: &str) -> Result<Value, ClientError> {
        let body = serde_json::json!({ "reason": reason })
            .to_string()
            .into_bytes();
        self.call(
            Method::POST,
            &format!("/admin/v1/sources/{source}/suspend"),
            Some(body),
            TIMEOUT,
        )
    }

    pub fn resume(&self, source: &str) -> Result<Value, ClientError> {
        self.call(
            Method::POST,
            &format!("/admin/v1/sources/{source}/resume"),
            Some(Vec::new()),
            TIMEOUT,
        )
    }

    fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
        timeout: Duration,
    ) -> Result<Value, ClientError> {
        let url = format!("{}{path}", self.base);
        let request = match (method, body) {
            (Method::POST, body) => Request::post_json(&url, body.unwrap_or_default(), timeout),
            _ => Request::get(&url, timeout),
        }
        .authorization(Some(&self.authorization));
        let response = send(request).map_err(|message| ClientError::Unreachable {
            url: self.base.clone(),
            message,
        })?;
        let value: Value = serde_json::from_slice(&response.body).map_err(|_| {
            ClientError::Garbled(
                String::from_utf8_lossy(&response.body)
                    .chars()
                    .take(200)
                    .collect(),
            )
        })?;
        if !response.status.is_success() {
            return Err(ClientError::Refused {
                status: response.status,
                message: value["error"]
                    .as_str()
                    .unwrap_or("(no message)")
                    .to_string(),
            });
        }
        Ok(value)
    }
}

fn text(v: &Value) -> &str {
    v.as_str().unwrap_or("-")
}

fn short(v: &Value) -> String {
    v.as_str()
        .map_or("-".into(), |s| s.chars().take(12).collect())
}

/// `ferry status`: one line per source.
pub fn render_table(document: &Value) -> String {
    let mut rows = vec![[
        "SOURCE".to_string(),
        "BRANCH".into(),
        "STATE".into(),
        "APPLIED".into(),
        "HEAD".into(),
        "LAST SUCCESS".into(),
        "NEXT ATTEMPT".into(),
    ]];
    for s in document["sources"].as_array().into_iter().flatten() {
        rows.push([
            text(&s["name"]).to_string(),
            text(&s["branch"]).to_string(),
            text(&s["state"]).to_string(),
            short(live_revision(s)),
            short(&s["revision"]),
            text(&s["last_success"]).to_string(),
            text(&s["next_attempt"]).to_string(),
        ]);
    }
    let widths: Vec<usize> = (0..7)
        .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in &rows {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    if let Some(why) = document["standby"].as_str() {
        out.push_str(&format!("this ferry is not the leader: {why}\n"));
    }
    for s in document["sources"].as_array().into_iter().flatten() {
        if let Some(line) = attention(s) {
            out.push_str(&format!("{}: {line}\n", text(&s["name"])));
        }
    }
    out
}

/// What is live: the DAGs link, else what the Kubernetes or AWS target applied.
fn live_revision(s: &Value) -> &Value {
    [
        &s["published_revision"],
        &s["kubernetes"]["applied_revision"],
        &s["aws"]["applied_revision"],
    ]
    .into_iter()
    .find(|v| v.is_string())
    .unwrap_or(&Value::Null)
}

/// The line a source's state needs, if it needs one.
fn attention(s: &Value) -> Option<String> {
    if let Some(sus) = s["suspended"].as_object() {
        return Some(format!(
            "suspended since {} ({}): nothing is applied; `ferry resume {}`",
            text(&sus["since"].clone()),
            text(&sus["reason"].clone()),
            text(&s["name"])
        ));
    }
    if let Some(e) = s["last_error"].as_object() {
        let place = match (
            e.get("file").and_then(Value::as_str),
            e.get("line").and_then(Value::as_u64),
        ) {
            (Some(f), Some(l)) => format!(" ({f}:{l})"),
            (Some(f), None) => format!(" ({f})"),
            _ => String::new(),
        };
        return Some(format!(
            "{}{place}: {}",
            e.get("kind").and_then(Value::as_str).unwrap_or("error"),
            e.get("message").and_then(Value::as_str).unwrap_or("")
        ));
    }
    let drift: Vec<&str> = [&s["kubernetes"]["drift"], &s["aws"]["drift"]]
        .into_iter()
        .filter_map(Value::as_array)
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    (!drift.is_empty()).then(|| format!("drifted: {}", drift.join(", ")))
}

/// One source's verdict in a sentence, and whether it is good (synced, or
/// drifted with nothing failing).
pub fn verdict(s: &Value) -> (bool, String) {
    let name = text(&s["name"]);
    let state = text(&s["state"]);
    let live = short(live_revision(s));
    let sentence = match attention(s) {
        Some(line) => format!("{name}: {state} at {live}; {line}"),
        None => format!("{name}: {state} at {live}"),
    };
    (matches!(state, "synced" | "drifted"), sentence)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_table_lines_up_and_says_what_needs_attention() {
        let doc = json!({"sources": [
            {"name": "dags", "branch": "main", "state": "refused", "published_revision": "0123456789abcdef",
             "revision": "fedcba9876543210", "last_success": "2026-12-01T10:00:00Z", "next_attempt": null,
             "last_error": {"kind": "validation_failed", "message": "syntax error", "file": "dags/broken.py", "line": 3}},
            {"name": "platform", "branch": "main", "state": "suspended", "kubernetes": {"applied_revision": "aaaabbbbccccdddd", "drift": []},
             "revision": "aaaabbbbccccdddd", "suspended": {"reason": "audit", "since": "2026-12-01T11:00:00Z"}},
        ]});
        let table = render_table(&doc);
        let lines: Vec<&str> = table.lines().collect();
        assert!(lines[0].starts_with("SOURCE    BRANCH  STATE"), "{table}");
        assert!(
            lines[1].contains("refused") && lines[1].contains("0123456789ab"),
            "{table}"
        );
        assert!(lines[2].contains("aaaabbbbcccc"), "{table}");
        assert_eq!(lines[0].find("STATE"), lines[1].find("refused"), "{table}");
        assert!(
            table.contains("dags: validation_failed (dags/broken.py:3): syntax error"),
            "{table}"
        );
        assert!(
            table.contains("platform: suspended since 2026-12-01T11:00:00Z (audit)"),
            "{table}"
        );
        let (ok, sentence) = verdict(&doc["sources"][0]);
        assert!(!ok);
        assert!(
            sentence.starts_with("dags: refused at 0123456789ab; validation_failed"),
            "{sentence}"
        );
    }

    #[test]
    fn unspecified_listen_addresses_are_reached_on_loopback() {
        assert_eq!(
            Admin::url_of("0.0.0.0:9091".parse().unwrap()),
            "http://127.0.0.1:9091"
        );
        assert_eq!(
            Admin::url_of("[::]:9091".parse().unwrap()),
            "http://[::1]:9091"
        );
        assert_eq!(
            Admin::url_of("10.0.0.5:9091".parse().unwrap()),
            "http://10.0.0.5:9091"
        );
    }
}
