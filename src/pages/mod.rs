//! Read-only HTML pages for people: the overview, a source's history and
//! the revision page every commit status, deployment, PR comment and
//! notification links to. Server-rendered, no script at all, sent with a
//! Content-Security-Policy that would refuse one: a page shows what git
//! and the cluster said, and never runs it.

mod history;
mod html;
mod overview;
mod revision;
mod view;

use std::collections::BTreeMap;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::config::Config;
use crate::server::AppState;

/// Scripts, frames, forms, plugins and other origins' resources are all
/// refused; only ferry's own stylesheet loads.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; style-src 'self'; img-src 'self'; \
     base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

const STYLESHEET: &str = include_str!("ferry.css");

/// What the pages know from the config: where ferry is mounted and where
/// each source's commits can be read on the web.
#[derive(Debug, Clone, Default)]
pub struct Site {
    /// Path prefix of `github.external_url` (`""` at the root).
    pub base: String,
    pub leader_election: bool,
    sources: BTreeMap<String, SourceSite>,
}

#[derive(Debug, Clone, Default)]
struct SourceSite {
    /// `https://github.com/owner/name`, when the source is on GitHub.
    web: Option<String>,
    /// `<destination>/<link>` of the DAGs target this source feeds.
    dags_link: Option<String>,
}

impl Site {
    pub fn from_config(config: &Config) -> Site {
        let github = config.github.as_ref();
        let base = github
            .and_then(|g| g.external_url.as_deref())
            .and_then(|u| url::Url::parse(u).ok())
            .map(|u| u.path().trim_end_matches('/').to_string())
            .unwrap_or_default();
        let web_root = github
            .map(|g| web_root(&g.api_url))
            .unwrap_or_else(|| "https://github.com".to_string());
        let sources = config
            .sources
            .iter()
            .map(|s| {
                let dags_link = config
                    .targets
                    .dags
                    .as_ref()
                    .filter(|d| d.source == s.name)
                    .map(|d| d.destination.join(&d.link).display().to_string());
                let web = s.github_repo().map(|repo| format!("{web_root}/{repo}"));
                (s.name.clone(), SourceSite { web, dags_link })
            })
            .collect();
        Site {
            base,
            leader_election: config.leader_election.is_some(),
            sources,
        }
    }

    fn home(&self) -> String {
        format!("{}/", self.base)
    }

    fn source_page(&self, source: &str) -> String {
        format!("{}/sources/{}", self.base, html::path_escape(source))
    }

    fn revision_page(&self, source: &str, sha: &str) -> String {
        format!(
            "{}/revisions/{}",
            self.source_page(source),
            html::path_escape(sha)
        )
    }

    /// ferry's page of a commit, its short id as the text.
    fn revision_link(&self, source: &str, sha: &str) -> String {
        html::link(&self.revision_page(source, sha), &sha[..sha.len().min(12)])
    }

    /// The commit on GitHub when the source is there, else its short id.
    fn commit_link(&self, source: &str, sha: &str) -> String {
        let text = &sha[..sha.len().min(12)];
        match self.web(source) {
            Some(web) => format!(
                "<a href=\"{}\"><code>{}</code></a>",
                html::esc(&format!("{web}/commit/{}", html::path_escape(sha))),
                html::esc(text)
            ),
            None => format!("<code>{}</code>", html::esc(text)),
        }
    }

    fn web(&self, source: &str) -> Option<&str> {
        self.sources.get(source)?.web.as_deref()
    }

    fn dags_link(&self, source: &str) -> Option<&str> {
        self.sources.get(source)?.dags_link.as_deref()
    }
}

/// The revision page under `external_url` (no trailing `/`): what commit
/// statuses, deployments, PR comments and notifications link to.
pub fn revision_url(external_url: &str, source: &str, sha: &str) -> String {
    format!(
        "{}/sources/{}/revisions/{}",
        external_url.trim_end_matches('/'),
        html::path_escape(source),
        html::path_escape(sha)
    )
}

/// GitHub's web root from its API root: `https://api.github.com` ->
/// `https://github.com`; Enterprise `https://ghe/api/v3` -> `https://ghe`.
fn web_root(api_url: &str) -> String {
    let trimmed = api_url.trim_end_matches('/');
    if let Some(root) = trimmed.strip_suffix("/api/v3") {
        return root.to_string();
    }
    match url::Url::parse(trimmed) {
        Ok(u) if u.host_str() == Some("api.github.com") => "https://github.com".to_string(),
        Ok(u) => u.origin().ascii_serialization(),
        Err(_) => "https://github.com".to_string(),
    }
}

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/", get(overview_page))
        .route("/sources/{source}", get(source_page))
        .route("/sources/{source}/revisions/{revision}", get(revision_page))
        .route("/assets/ferry.css", get(stylesheet))
}

async fn overview_page(State(state): State<AppState>) -> Response {
    let sources = state.status.all();
    let standby = state.status.standby();
    page(
        StatusCode::OK,
        overview::render(&state.site, &sources, standby.as_deref()),
    )
}

async fn source_page(State(state): State<AppState>, Path(source): Path<String>) -> Response {
    match state.status.get(&source) {
        Some(status) => page(
            StatusCode::OK,
            history::render(&state.site, &status, &state.status.history(&source)),
        ),
        None => not_found(
            &state.site,
            &format!("There is no source named “{source}”."),
        ),
    }
}

async fn revision_page(
    State(state): State<AppState>,
    Path((source, sha)): Path<(String, String)>,
) -> Response {
    if state.status.get(&source).is_none() {
        return not_found(
            &state.site,
            &format!("There is no source named “{source}”."),
        );
    }
    let records = state.status.revision(&source, &sha);
    if records.is_empty() {
        return not_found(
            &state.site,
            &format!(
                "ferry has not evaluated {sha} of “{source}” since it started (it keeps the last 50 evaluations per source)."
            ),
        );
    }
    page(
        StatusCode::OK,
        revision::render(&state.site, &source, &sha, &records),
    )
}

async fn stylesheet() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "max-age=3600"),
        ],
        STYLESHEET,
    )
        .into_response()
}

fn not_found(site: &Site, message: &str) -> Response {
    let body = html::Layout {
        base: &site.base,
        title: "Not found",
        crumbs: &[
            (site.home(), "ferry".into()),
            (String::new(), "Not found".into()),
        ],
        json: &format!("{}/api/v1/status", site.base),
    }
    .render(&format!(
        "<h1>Not found</h1>\n<p>{}</p>\n",
        html::esc(message)
    ));
    page(StatusCode::NOT_FOUND, body)
}

fn page(code: StatusCode, body: String) -> Response {
    let mut response = (code, body).into_response();
    let headers = response.headers_mut();
    let fixed = [
        (header::CONTENT_TYPE, "text/html; charset=utf-8"),
        (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "same-origin"),
        // What ferry concluded changes from one sync to the next.
        (header::CACHE_CONTROL, "no-cache"),
    ];
    for (name, value) in fixed {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn github_web_root_follows_the_api_root() {
        assert_eq!(web_root("https://api.github.com"), "https://github.com");
        assert_eq!(web_root("https://api.github.com/"), "https://github.com");
        assert_eq!(
            web_root("https://ghe.acme.io/api/v3/"),
            "https://ghe.acme.io"
        );
        assert_eq!(web_root("http://127.0.0.1:8080"), "http://127.0.0.1:8080");
    }
}
