//! Which published revisions Airflow may still run, asked of its REST API
//! (Airflow 3, `/api/v2`) as a read-only user.
//!
//! `FerryDagBundle` names each version by its commit, so a run's
//! `bundle_version` and a DAG's `bundle_version` are revision directories.

use std::time::{Duration, SystemTime};

use serde::Deserialize;

use super::retention::{Reason, Uses};
use crate::config::AirflowConfig;
use crate::http::{self, Request};

#[derive(Debug, thiserror::Error)]
pub enum AirflowError {
    #[error("targets.dags.airflow.password_file: {0}")]
    Password(String),
    #[error("{url}: {message}")]
    Unreachable { url: String, message: String },
    #[error("{url}: Airflow refused ferry's user (HTTP {status}): {hint}")]
    Refused {
        url: String,
        status: u16,
        hint: &'static str,
    },
    #[error("{url}: HTTP {status}: {body}")]
    Status {
        url: String,
        status: u16,
        body: String,
    },
    #[error("{url}: not the answer Airflow 3's API gives: {message}")]
    Decode { url: String, message: String },
}

/// Airflow's page size cap (`[api] maximum_page_limit`, 100 by default).
const PAGE: usize = 100;
/// Enough pages for any real deployment; a bound so a misbehaving server
/// cannot keep ferry paging forever.
const MAX_PAGES: usize = 1000;

pub struct Airflow {
    config: AirflowConfig,
}

#[derive(Deserialize)]
struct Token {
    access_token: String,
}

#[derive(Deserialize)]
struct Dags {
    dags: Vec<Dag>,
}

#[derive(Deserialize)]
struct Dag {
    dag_id: String,
    bundle_name: Option<String>,
    bundle_version: Option<String>,
}

#[derive(Deserialize)]
struct Runs {
    dag_runs: Vec<Run>,
}

#[derive(Deserialize)]
struct Run {
    dag_id: String,
    dag_run_id: String,
    state: String,
    end_date: Option<String>,
    bundle_version: Option<String>,
}

impl Airflow {
    pub fn new(config: AirflowConfig) -> Airflow {
        Airflow { config }
    }

    pub fn url(&self) -> &str {
        &self.config.url
    }

    /// The revisions queued and running runs, active DAGs and runs that
    /// ended within the window use, each with who uses it.
    pub fn uses(&self, now: SystemTime) -> Result<Uses, AirflowError> {
        let bearer = format!("Bearer {}", self.token()?);
        let mut uses = Uses::new();
        let mut add = |version: Option<String>, reason: Reason| {
            if let Some(v) = version.filter(|v| !v.is_empty()) {
                uses.entry(v).or_default().push(reason);
            }
        };
        for dag in self.pages::<Dags, _>(&bearer, "/api/v2/dags?exclude_stale=true", |p| p.dags)? {
            if dag.bundle_name.as_deref() == Some(self.config.bundle.as_str()) {
                add(dag.bundle_version, Reason::Dag { dag_id: dag.dag_id });
            }
        }
        let active = "/api/v2/dags/~/dagRuns?state=queued&state=running";
        for run in self.pages::<Runs, _>(&bearer, active, |p| p.dag_runs)? {
            add(
                run.bundle_version,
                Reason::Run {
                    dag_id: run.dag_id,
                    run_id: run.dag_run_id,
                    state: run.state,
                },
            );
        }
        let since = now.checked_sub(self.config.window).unwrap_or(now);
        let ended = format!(
            "/api/v2/dags/~/dagRuns?end_date_gte={}",
            humantime::format_rfc3339_seconds(since)
        );
        for run in self.pages::<Runs, _>(&bearer, &ended, |p| p.dag_runs)? {
            // A run cleared back to queued or running is counted above.
            if matches!(run.state.as_str(), "queued" | "running") {
                continue;
            }
            add(
                run.bundle_version,
                Reason::Ended {
                    dag_id: run.dag_id,
                    run_id: run.dag_run_id,
                    end_date: run.end_date.unwrap_or_default(),
                },
            );
        }
        Ok(uses)
    }

    fn endpoint(&self, path: &str) -> String {
        format!("{}{path}", self.config.url.trim_end_matches('/'))
    }

    fn token(&self) -> Result<String, AirflowError> {
        let password = crate::secret::from_file(&self.config.password_file)
            .map_err(|e| AirflowError::Password(e.to_string()))?;
        let url = self.endpoint("/auth/token");
        let body = serde_json::json!({
            "username": self.config.username,
            "password": password.expose(),
        });
        let request = Request::post_json(&url, body.to_string().into_bytes(), self.timeout());
        let token: Token = self.call(&url, request)?;
        Ok(token.access_token)
    }

    fn timeout(&self) -> Duration {
        self.config.timeout
    }

    /// Every page of a list endpoint (`limit`/`offset`).
    fn pages<P, T>(
        &self,
        bearer: &str,
        path: &str,
        items: impl Fn(P) -> Vec<T>,
    ) -> Result<Vec<T>, AirflowError>
    where
        P: for<'de> Deserialize<'de>,
    {
        let mut all = Vec::new();
        for page in 0..MAX_PAGES {
            let sep = if path.contains('?') { '&' } else { '?' };
            let url = self.endpoint(&format!("{path}{sep}limit={PAGE}&offset={}", page * PAGE));
            let request = Request::get(&url, self.timeout()).authorization(Some(bearer));
            let got = items(self.call(&url, request)?);
            let last = got.len() < PAGE;
            all.extend(got);
            if last {
                break;
            }
        }
        Ok(all)
    }

    fn call<T: for<'de> Deserialize<'de>>(
        &self,
        url: &str,
        request: Request<'_>,
    ) -> Result<T, AirflowError> {
        let response = http::send(request).map_err(|message| AirflowError::Unreachable {
            url: url.to_string(),
            message,
        })?;
        let status = response.status;
        if status == http::StatusCode::UNAUTHORIZED || status == http::StatusCode::FORBIDDEN {
            return Err(AirflowError::Refused {
                url: url.to_string(),
                status: status.as_u16(),
                hint: if status == http::StatusCode::UNAUTHORIZED {
                    "check targets.dags.airflow.username and the password in password_file"
                } else {
                    "give the user a role that may read DAGs and DAG runs (Viewer)"
                },
            });
        }
        if !status.is_success() {
            let body = String::from_utf8_lossy(&response.body);
            return Err(AirflowError::Status {
                url: url.to_string(),
                status: status.as_u16(),
                body: body.chars().take(300).collect(),
            });
        }
        serde_json::from_slice(&response.body).map_err(|e| AirflowError::Decode {
            url: url.to_string(),
            message: e.to_string(),
        })
    }
}
