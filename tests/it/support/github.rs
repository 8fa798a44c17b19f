//! A strict fake of the GitHub REST API, for what ferry calls.
//!
//! Every request must carry a User-Agent, `Accept: application/vnd.github+json`,
//! a valid credential and, with a body, `Content-Type: application/json`;
//! bodies may hold only the fields GitHub's REST documentation lists, with
//! the documented types and values (e.g. a status `description` of at most
//! 140 characters). Anything else is answered 422 (401 for credentials) and
//! recorded in `rejected`, which tests assert to be empty.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use axum::body::Bytes;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

#[derive(Debug, Clone)]
pub struct Status {
    pub repo: String,
    pub sha: String,
    pub state: String,
    pub context: String,
    pub description: String,
    pub target_url: String,
}

#[derive(Debug, Clone)]
pub struct Deployment {
    pub id: u64,
    pub repo: String,
    pub sha: String,
    pub environment: String,
    /// Deployment statuses, oldest first: (state, log_url).
    pub statuses: Vec<(String, String)>,
}

#[derive(Debug, Clone)]
pub struct Comment {
    pub id: u64,
    pub repo: String,
    pub pr: u64,
    pub body: String,
    pub edits: u32,
}

#[derive(Debug, Clone)]
pub struct OpenedPull {
    pub repo: String,
    pub number: u64,
    pub title: String,
    pub head: String,
    pub base: String,
    pub body: String,
    /// `open`, or `closed` by the test; `merged` when closed by a merge.
    pub state: String,
    pub merged: bool,
}

/// Git's blob id of `text`, as the contents API reports it.
pub fn blob_sha(text: &str) -> String {
    use sha1::{Digest, Sha1};
    let mut h = Sha1::new();
    h.update(format!("blob {}\0", text.len()).as_bytes());
    h.update(text.as_bytes());
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

pub struct AppAuth {
    pub app_id: u64,
    pub installation_id: u64,
    pub public_key_pem: Vec<u8>,
    /// Lifetime of the installation tokens handed out.
    pub token_ttl: Duration,
}

#[derive(Default)]
pub struct FakeState {
    /// A token accepted as `Authorization: Bearer <token>`.
    pub token: Option<String>,
    pub app: Option<AppAuth>,
    /// Installation tokens handed out, with their expiry.
    pub issued: Vec<(String, SystemTime)>,
    /// Repositories that exist (`owner/name`, lowercase); others are 404.
    pub repos: HashSet<String>,
    /// Open pull requests: (repo, number, head SHA, base branch).
    pub pulls: Vec<(String, u64, String, String)>,
    /// Where the API lives, as on GitHub Enterprise Server (`/api/v3`);
    /// requests outside it are refused.
    pub path_prefix: Option<String>,
    /// Git content: (repo, branch) -> (commit sha, path -> file text).
    pub branches: std::collections::BTreeMap<
        (String, String),
        (String, std::collections::BTreeMap<String, String>),
    >,
    /// Files of commits no branch points at any more (what a merge left
    /// behind): (repo, sha) -> path -> file text.
    pub commits:
        std::collections::BTreeMap<(String, String), std::collections::BTreeMap<String, String>>,
    /// Pull requests opened through the API.
    pub opened: Vec<OpenedPull>,
    /// Answers to give instead of handling the next requests, in order:
    /// (HTTP status, Retry-After seconds).
    pub outage: Vec<(u16, Option<u64>)>,
    /// When set, only requests whose path contains this consume `outage`
    /// (e.g. `/statuses/`), so a test knows which calls failed.
    pub outage_path: Option<String>,
    /// Every request answered, `METHOD /path -> status`.
    pub log: Vec<String>,
    pub rejected: Vec<String>,
    pub statuses: Vec<Status>,
    pub deployments: Vec<Deployment>,
    pub comments: Vec<Comment>,
    pub next_id: u64,
    pub outage_reply: Option<(u16, Option<u64>)>,
}

pub struct FakeGithub {
    pub addr: SocketAddr,
    pub state: Arc<Mutex<FakeState>>,
}

impl FakeGithub {
    pub fn start(state: FakeState) -> FakeGithub {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(state));
        let shared = state.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                let app = axum::Router::new().fallback(
                    move |method: Method, uri: Uri, headers: HeaderMap, body: Bytes| {
                        let state = shared.clone();
                        async move { handle(&state, method, uri, headers, body) }
                    },
                );
                axum::serve(listener, app).await.unwrap();
            });
        });
        FakeGithub { addr, state }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn with<T>(&self, f: impl FnOnce(&mut FakeState) -> T) -> T {
        f(&mut self.state.lock().unwrap())
    }

    /// (state, description) of the statuses posted for `sha` in `context`.
    pub fn statuses(&self, sha: &str, context: &str) -> Vec<(String, String)> {
        self.with(|s| {
            s.statuses
                .iter()
                .filter(|st| st.sha == sha && st.context == context)
                .map(|st| (st.state.clone(), st.description.clone()))
                .collect()
        })
    }

    pub fn states(&self, sha: &str, context: &str) -> Vec<String> {
        self.statuses(sha, context)
            .into_iter()
            .map(|s| s.0)
            .collect()
    }

    pub fn assert_nothing_rejected(&self) {
        let rejected = self.with(|s| s.rejected.clone());
        assert!(
            rejected.is_empty(),
            "the fake GitHub refused: {rejected:#?}"
        );
    }
}

fn reply(status: u16, body: Value) -> Response {
    (
        StatusCode::from_u16(status).unwrap(),
        [("content-type", "application/json; charset=utf-8")],
        body.to_string(),
    )
        .into_response()
}

fn handle(
    state: &Mutex<FakeState>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut s = state.lock().unwrap();
    let what = format!("{method} {}", uri.path());
    let (status, answer) = answer(&mut s, &method, &uri, &headers, &body);
    let injected = s.outage_reply.is_some();
    if !injected && matches!(status, 400 | 401 | 403 | 404 | 422) {
        s.rejected.push(format!("{what} -> {status}: {answer}"));
    }
    s.log.push(format!("{what} -> {status}"));
    let mut response = reply(status, answer);
    if let Some((_, Some(after))) = s.outage_reply.take() {
        response
            .headers_mut()
            .insert("retry-after", after.to_string().parse().unwrap());
    }
    response
}

/// The query's pairs, refusing a parameter GitHub's endpoint does not take
/// (a typo the real API would silently ignore).
fn known_query(uri: &Uri, known: &[&str]) -> Result<Vec<(String, String)>, String> {
    let pairs: Vec<(String, String)> = uri
        .query()
        .unwrap_or("")
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    match pairs.iter().find(|(k, _)| !known.contains(&k.as_str())) {
        Some((k, _)) => Err(format!("unknown query parameter `{k}`")),
        None => Ok(pairs),
    }
}

impl FakeState {
    /// A deployment ferry would have made for `sha`, with these statuses
    /// (oldest first).
    pub fn deployed(&mut self, repo: &str, sha: &str, environment: &str, statuses: &[&str]) {
        let id = self.next_id();
        self.deployments.push(Deployment {
            id,
            repo: repo.to_string(),
            sha: sha.to_string(),
            environment: environment.to_string(),
            statuses: statuses
                .iter()
                .map(|s| (s.to_string(), String::new()))
                .collect(),
        });
    }

    fn next_id(&mut self) -> u64 {
        self.next_id += 1;
        1000 + self.next_id
    }
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> &'a str {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

fn unprocessable(message: String) -> (u16, Value) {
    (
        422,
        json!({ "message": message, "documentation_url": "https://docs.github.com/rest" }),
    )
}

/// Checks `body` is an object with only `allowed` keys, all `required` ones,
/// and each of the given JSON type.
fn check_body(body: &Value, fields: &[(&str, &str, bool)]) -> Result<(), String> {
    let Some(map) = body.as_object() else {
        return Err("body must be a JSON object".into());
    };
    for key in map.keys() {
        if !fields.iter().any(|(k, _, _)| k == key) {
            return Err(format!("unknown field `{key}`"));
        }
    }
    for (key, kind, required) in fields {
        match map.get(*key) {
            None if *required => return Err(format!("missing required field `{key}`")),
            None => {}
            Some(v) => {
                let ok = match *kind {
                    "string" => v.is_string(),
                    "boolean" => v.is_boolean(),
                    "array" => v.is_array(),
                    "object" => v.is_object() || v.is_string(),
                    _ => false,
                };
                if !ok {
                    return Err(format!("field `{key}` must be a {kind}"));
                }
            }
        }
    }
    Ok(())
}

fn answer(
    s: &mut FakeState,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &[u8],
) -> (u16, Value) {
    let targeted = s
        .outage_path
        .as_deref()
        .is_none_or(|part| uri.path().contains(part));
    if let Some((status, after)) = (targeted && !s.outage.is_empty()).then(|| s.outage.remove(0)) {
        s.outage_reply = Some((status, after));
        let message = if status == 403 {
            "You have exceeded a secondary rate limit. Please wait a few minutes before you try again."
        } else {
            "Server Error"
        };
        return (status, json!({ "message": message }));
    }
    if header(headers, "user-agent").is_empty() {
        return (
            403,
            json!({"message": "Request forbidden by administrative rules. Please make sure your request has a User-Agent header"}),
        );
    }
    if !header(headers, "accept").contains("application/vnd.github+json") {
        return unprocessable(format!(
            "Accept must be application/vnd.github+json, got `{}`",
            header(headers, "accept")
        ));
    }
    let json_body: Value = if body.is_empty() {
        Value::Null
    } else {
        if !header(headers, "content-type").starts_with("application/json") {
            return unprocessable("a body needs Content-Type: application/json".into());
        }
        match serde_json::from_slice(body) {
            Ok(v) => v,
            Err(e) => {
                return (
                    400,
                    json!({"message": format!("Problems parsing JSON: {e}")}),
                );
            }
        }
    };
    let full_path = uri.path().to_string();
    let path = match &s.path_prefix {
        Some(prefix) => match full_path.strip_prefix(prefix.as_str()) {
            Some(rest) => rest.to_string(),
            None => return unprocessable(format!("{full_path} is outside the API root {prefix}")),
        },
        None => full_path,
    };
    let path: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let auth = header(headers, "authorization").to_string();
    if let ["app", "installations", id, "access_tokens"] = path.as_slice() {
        if *method != Method::POST {
            return unprocessable(format!("{method} not allowed here"));
        }
        return access_token(s, id, &auth);
    }
    let now = SystemTime::now();
    let bearer = auth.strip_prefix("Bearer ").unwrap_or("");
    let authorized = (!bearer.is_empty() && s.token.as_deref() == Some(bearer))
        || s.issued.iter().any(|(t, exp)| t == bearer && *exp > now);
    if !authorized {
        return (
            401,
            json!({"message": "Bad credentials", "documentation_url": "https://docs.github.com/rest"}),
        );
    }
    let repo_of = |owner: &str, name: &str| format!("{owner}/{name}").to_ascii_lowercase();
    match (method.clone(), path.as_slice()) {
        (Method::POST, ["repos", owner, name, "statuses", sha]) => {
            let repo = repo_of(owner, name);
            if !s.repos.contains(&repo) {
                return (404, json!({"message": "Not Found"}));
            }
            if sha.len() != 40 || !sha.chars().all(|c| c.is_ascii_hexdigit()) {
                return unprocessable(format!("No commit found for SHA: {sha}"));
            }
            if let Err(e) = check_body(
                &json_body,
                &[
                    ("state", "string", true),
                    ("target_url", "string", false),
                    ("description", "string", false),
                    ("context", "string", false),
                ],
            ) {
                return unprocessable(e);
            }
            let state = json_body["state"].as_str().unwrap_or("");
            if !["error", "failure", "pending", "success"].contains(&state) {
                return unprocessable(format!(
                    "state `{state}` is not one of error, failure, pending, success"
                ));
            }
            let description = json_body["description"].as_str().unwrap_or("").to_string();
            if description.chars().count() > 140 {
                return unprocessable("description is too long (maximum is 140 characters)".into());
            }
            let target_url = json_body["target_url"].as_str().unwrap_or("").to_string();
            if !target_url.is_empty() && !target_url.starts_with("http") {
                return unprocessable("target_url must be an http(s) URL".into());
            }
            let status = Status {
                repo,
                sha: sha.to_string(),
                state: state.to_string(),
                context: json_body["context"]
                    .as_str()
                    .unwrap_or("default")
                    .to_string(),
                description,
                target_url,
            };
            let id = s.next_id();
            s.statuses.push(status.clone());
            (
                201,
                json!({"id": id, "state": status.state, "context": status.context, "description": status.description, "target_url": status.target_url}),
            )
        }
        (Method::POST, ["repos", owner, name, "deployments"]) => {
            let repo = repo_of(owner, name);
            if !s.repos.contains(&repo) {
                return (404, json!({"message": "Not Found"}));
            }
            if let Err(e) = check_body(
                &json_body,
                &[
                    ("ref", "string", true),
                    ("task", "string", false),
                    ("auto_merge", "boolean", false),
                    ("required_contexts", "array", false),
                    ("payload", "object", false),
                    ("environment", "string", false),
                    ("description", "string", false),
                    ("transient_environment", "boolean", false),
                    ("production_environment", "boolean", false),
                ],
            ) {
                return unprocessable(e);
            }
            let id = s.next_id();
            let deployment = Deployment {
                id,
                repo,
                sha: json_body["ref"].as_str().unwrap_or("").to_string(),
                environment: json_body["environment"]
                    .as_str()
                    .unwrap_or("production")
                    .to_string(),
                statuses: Vec::new(),
            };
            s.deployments.push(deployment.clone());
            (
                201,
                json!({"id": id, "sha": deployment.sha, "ref": deployment.sha, "environment": deployment.environment}),
            )
        }
        (Method::POST, ["repos", owner, name, "deployments", id, "statuses"]) => {
            let repo = repo_of(owner, name);
            if let Err(e) = check_body(
                &json_body,
                &[
                    ("state", "string", true),
                    ("target_url", "string", false),
                    ("log_url", "string", false),
                    ("description", "string", false),
                    ("environment", "string", false),
                    ("environment_url", "string", false),
                    ("auto_inactive", "boolean", false),
                ],
            ) {
                return unprocessable(e);
            }
            let state = json_body["state"].as_str().unwrap_or("").to_string();
            if ![
                "error",
                "failure",
                "inactive",
                "in_progress",
                "queued",
                "pending",
                "success",
            ]
            .contains(&state.as_str())
            {
                return unprocessable(format!("state `{state}` is not a deployment status state"));
            }
            if json_body["description"]
                .as_str()
                .is_some_and(|d| d.chars().count() > 140)
            {
                return unprocessable("description is too long (maximum is 140 characters)".into());
            }
            let log_url = json_body["log_url"].as_str().unwrap_or("").to_string();
            let Some(d) = s
                .deployments
                .iter_mut()
                .find(|d| d.repo == repo && id.parse() == Ok(d.id))
            else {
                return (404, json!({"message": "Not Found"}));
            };
            d.statuses.push((state.clone(), log_url));
            (201, json!({"id": d.statuses.len(), "state": state}))
        }
        (Method::GET, ["repos", owner, name, "deployments"]) => {
            let repo = repo_of(owner, name);
            let query = match known_query(
                uri,
                &["sha", "ref", "task", "environment", "per_page", "page"],
            ) {
                Ok(q) => q,
                Err(e) => return unprocessable(e),
            };
            let get = |k: &str| {
                query
                    .iter()
                    .find(|(key, _)| key == k)
                    .map(|(_, v)| v.as_str())
            };
            let per_page: usize = get("per_page").and_then(|p| p.parse().ok()).unwrap_or(30);
            if per_page == 0 || per_page > 100 {
                return unprocessable("per_page must be 1..=100".into());
            }
            if get("page").and_then(|p| p.parse::<u32>().ok()).unwrap_or(1) > 1 {
                return (200, json!([]));
            }
            // Newest first, as GitHub lists them.
            let list: Vec<Value> = s
                .deployments
                .iter()
                .rev()
                .filter(|d| d.repo == repo)
                .filter(|d| get("environment").is_none_or(|e| e == d.environment))
                .filter(|d| get("sha").is_none_or(|sha| sha == d.sha))
                .take(per_page)
                .map(|d| json!({"id": d.id, "sha": d.sha, "ref": d.sha, "environment": d.environment}))
                .collect();
            (200, Value::Array(list))
        }
        (Method::GET, ["repos", owner, name, "deployments", id, "statuses"]) => {
            let repo = repo_of(owner, name);
            let query = match known_query(uri, &["per_page", "page"]) {
                Ok(q) => q,
                Err(e) => return unprocessable(e),
            };
            let per_page: usize = query
                .iter()
                .find(|(k, _)| k == "per_page")
                .and_then(|(_, v)| v.parse().ok())
                .unwrap_or(30);
            let Some(d) = s
                .deployments
                .iter()
                .find(|d| d.repo == repo && id.parse() == Ok(d.id))
            else {
                return (404, json!({"message": "Not Found"}));
            };
            let list: Vec<Value> = d
                .statuses
                .iter()
                .rev()
                .take(per_page)
                .map(|(state, log_url)| json!({"state": state, "log_url": log_url}))
                .collect();
            (200, Value::Array(list))
        }
        (Method::GET, ["repos", owner, name, "git", "ref", "heads", branch @ ..]) => {
            let repo = repo_of(owner, name);
            let branch = branch.join("/");
            match s.branches.get(&(repo, branch.clone())) {
                Some((sha, _)) => (
                    200,
                    json!({"ref": format!("refs/heads/{branch}"), "object": {"sha": sha, "type": "commit"}}),
                ),
                None => (404, json!({"message": "Not Found"})),
            }
        }
        (Method::GET, ["repos", owner, name, "contents", file @ ..]) => {
            let repo = repo_of(owner, name);
            let path = file.join("/");
            let query = uri.query().unwrap_or("");
            let Some(branch) = query.split('&').find_map(|kv| kv.strip_prefix("ref=")) else {
                return unprocessable("ferry's callers always pass ?ref=".into());
            };
            // `ref` is a branch or a commit, as on GitHub.
            let files = s
                .branches
                .get(&(repo.clone(), branch.to_string()))
                .map(|(_, files)| files)
                .or_else(|| {
                    s.branches
                        .iter()
                        .find(|((r, _), (sha, _))| *r == repo && sha == branch)
                        .map(|(_, (_, files))| files)
                })
                .or_else(|| s.commits.get(&(repo.clone(), branch.to_string())));
            match files.and_then(|files| files.get(&path)) {
                Some(text) => {
                    use base64::Engine;
                    let encoded = base64::engine::general_purpose::STANDARD.encode(text.as_bytes());
                    (
                        200,
                        json!({"type": "file", "encoding": "base64", "path": path, "content": encoded, "sha": blob_sha(text)}),
                    )
                }
                None => (404, json!({"message": "Not Found"})),
            }
        }
        (Method::POST, ["repos", owner, name, "git", "refs"]) => {
            let repo = repo_of(owner, name);
            if let Err(e) = check_body(
                &json_body,
                &[("ref", "string", true), ("sha", "string", true)],
            ) {
                return unprocessable(e);
            }
            let reference = json_body["ref"].as_str().unwrap_or("");
            let Some(branch) = reference
                .strip_prefix("refs/heads/")
                .filter(|b| !b.is_empty())
            else {
                return unprocessable(format!(
                    "`{reference}` is not a valid ref name (refs/heads/...)"
                ));
            };
            let sha = json_body["sha"].as_str().unwrap_or("").to_string();
            if s.branches.contains_key(&(repo.clone(), branch.to_string())) {
                return unprocessable("Reference already exists".into());
            }
            let Some(files) = s
                .branches
                .iter()
                .find(|((r, _), (c, _))| *r == repo && *c == sha)
                .map(|(_, (_, f))| f.clone())
            else {
                return unprocessable(format!("Object does not exist: {sha}"));
            };
            s.branches
                .insert((repo, branch.to_string()), (sha.clone(), files));
            (
                201,
                json!({"ref": reference, "object": {"sha": sha, "type": "commit"}}),
            )
        }
        (Method::PUT, ["repos", owner, name, "contents", file @ ..]) => {
            use base64::Engine;
            let repo = repo_of(owner, name);
            let path = file.join("/");
            if let Err(e) = check_body(
                &json_body,
                &[
                    ("message", "string", true),
                    ("content", "string", true),
                    ("sha", "string", false),
                    ("branch", "string", false),
                    ("committer", "object", false),
                    ("author", "object", false),
                ],
            ) {
                return unprocessable(e);
            }
            let branch = json_body["branch"].as_str().unwrap_or("main").to_string();
            let Ok(bytes) = base64::engine::general_purpose::STANDARD
                .decode(json_body["content"].as_str().unwrap_or(""))
            else {
                return unprocessable("content is not valid Base64".into());
            };
            let Ok(text) = String::from_utf8(bytes) else {
                return unprocessable("the fake stores UTF-8 text only".into());
            };
            let next = format!("{:040x}", s.next_id());
            let Some((commit, files)) = s.branches.get_mut(&(repo, branch.clone())) else {
                return (404, json!({"message": "Branch not found"}));
            };
            match (files.get(&path), json_body["sha"].as_str()) {
                (Some(old), Some(sha)) if blob_sha(old) == sha => {}
                (Some(_), _) => {
                    return (
                        409,
                        json!({"message": format!("{path} does not match the given sha")}),
                    );
                }
                (None, Some(_)) => return unprocessable("sha given for a new file".into()),
                (None, None) => {}
            }
            files.insert(path.clone(), text.clone());
            *commit = next.clone();
            (
                200,
                json!({"content": {"path": path, "sha": blob_sha(&text)}, "commit": {"sha": next}}),
            )
        }
        (Method::POST, ["repos", owner, name, "pulls"]) => {
            let repo = repo_of(owner, name);
            if let Err(e) = check_body(
                &json_body,
                &[
                    ("title", "string", true),
                    ("head", "string", true),
                    ("base", "string", true),
                    ("body", "string", false),
                    ("draft", "boolean", false),
                    ("maintainer_can_modify", "boolean", false),
                ],
            ) {
                return unprocessable(e);
            }
            let head = json_body["head"].as_str().unwrap_or("").to_string();
            let base = json_body["base"].as_str().unwrap_or("").to_string();
            let (Some(h), Some(b)) = (
                s.branches.get(&(repo.clone(), head.clone())),
                s.branches.get(&(repo.clone(), base.clone())),
            ) else {
                return unprocessable("head or base branch does not exist".into());
            };
            if h.1 == b.1 {
                return unprocessable(format!("No commits between {base} and {head}"));
            }
            let number = s.opened.len() as u64 + 1;
            s.opened.push(OpenedPull {
                repo: repo.clone(),
                number,
                title: json_body["title"].as_str().unwrap_or("").to_string(),
                head: head.clone(),
                base: base.clone(),
                body: json_body["body"].as_str().unwrap_or("").to_string(),
                state: "open".into(),
                merged: false,
            });
            (
                201,
                json!({"number": number, "html_url": format!("https://github.com/{repo}/pull/{number}"), "head": {"ref": head}, "base": {"ref": base}}),
            )
        }
        (Method::GET, ["repos", owner, name, "pulls"]) => {
            let repo = repo_of(owner, name);
            let query: Vec<(&str, &str)> = uri
                .query()
                .unwrap_or("")
                .split('&')
                .filter_map(|kv| kv.split_once('='))
                .collect();
            let get = |k: &str| query.iter().find(|(key, _)| *key == k).map(|(_, v)| *v);
            if let Some((k, _)) = query.iter().find(|(k, _)| {
                ![
                    "state",
                    "head",
                    "base",
                    "sort",
                    "direction",
                    "per_page",
                    "page",
                ]
                .contains(k)
            }) {
                return unprocessable(format!("unknown query parameter `{k}`"));
            }
            if !matches!(get("state"), None | Some("open" | "closed" | "all")) {
                return unprocessable("state must be open, closed or all".into());
            }
            if get("per_page")
                .and_then(|p| p.parse::<u32>().ok())
                .is_some_and(|p| p == 0 || p > 100)
            {
                return unprocessable("per_page must be 1..=100".into());
            }
            if get("page").and_then(|p| p.parse::<u32>().ok()).unwrap_or(1) > 1 {
                return (200, json!([]));
            }
            let state = get("state").unwrap_or("open");
            let mut list: Vec<Value> = s
                .pulls
                .iter()
                .filter(|(r, _, _, base)| *r == repo && get("base").is_none_or(|b| b == base))
                .filter(|_| state != "closed" && get("head").is_none())
                .map(|(_, n, sha, base)| json!({"number": n, "state": "open", "head": {"sha": sha}, "base": {"ref": base}}))
                .collect();
            // Those opened through the API, newest first; `head` is
            // `owner:branch`.
            let owner_prefix = format!("{owner}:");
            list.extend(
                s.opened
                    .iter()
                    .rev()
                    .filter(|p| p.repo == repo && get("base").is_none_or(|b| b == p.base))
                    .filter(|p| state == "all" || state == p.state)
                    .filter(|p| {
                        get("head").is_none_or(|h| h.strip_prefix(&owner_prefix) == Some(p.head.as_str()))
                    })
                    .map(|p| {
                        let sha = s.branches.get(&(repo.clone(), p.head.clone())).map(|b| b.0.clone());
                        json!({
                            "number": p.number,
                            "state": p.state,
                            "merged_at": if p.merged { json!("2026-12-01T00:00:00Z") } else { Value::Null },
                            "html_url": format!("https://github.com/{repo}/pull/{}", p.number),
                            "head": {"ref": p.head, "sha": sha},
                            "base": {"ref": p.base},
                        })
                    }),
            );
            (200, Value::Array(list))
        }
        (Method::GET, ["repos", owner, name, "issues", number, "comments"]) => {
            let repo = repo_of(owner, name);
            let Ok(pr) = number.parse::<u64>() else {
                return unprocessable(format!("`{number}` is not an issue number"));
            };
            let query = uri.query().unwrap_or("");
            let page: usize = query
                .split('&')
                .find_map(|kv| kv.strip_prefix("page=")?.parse().ok())
                .unwrap_or(1);
            let per_page: usize = query
                .split('&')
                .find_map(|kv| kv.strip_prefix("per_page=")?.parse().ok())
                .unwrap_or(30);
            if per_page == 0 || per_page > 100 || page == 0 {
                return unprocessable("per_page must be 1..=100 and page >= 1".into());
            }
            let list: Vec<Value> = s
                .comments
                .iter()
                .filter(|c| c.repo == repo && c.pr == pr)
                .skip((page - 1) * per_page)
                .take(per_page)
                .map(|c| json!({"id": c.id, "body": c.body}))
                .collect();
            (200, Value::Array(list))
        }
        (Method::POST, ["repos", owner, name, "issues", number, "comments"]) => {
            let repo = repo_of(owner, name);
            if !s.repos.contains(&repo) {
                return (404, json!({"message": "Not Found"}));
            }
            let Ok(pr) = number.parse::<u64>() else {
                return unprocessable(format!("`{number}` is not an issue number"));
            };
            if let Err(e) = check_body(&json_body, &[("body", "string", true)]) {
                return unprocessable(e);
            }
            let text = json_body["body"].as_str().unwrap_or("").to_string();
            if text.chars().count() > 65_536 {
                return unprocessable("Body is too long (maximum is 65536 characters)".into());
            }
            let id = s.next_id();
            s.comments.push(Comment {
                id,
                repo,
                pr,
                body: text.clone(),
                edits: 0,
            });
            (201, json!({"id": id, "body": text}))
        }
        (Method::PATCH, ["repos", owner, name, "issues", "comments", id]) => {
            let repo = repo_of(owner, name);
            if let Err(e) = check_body(&json_body, &[("body", "string", true)]) {
                return unprocessable(e);
            }
            let text = json_body["body"].as_str().unwrap_or("").to_string();
            if text.chars().count() > 65_536 {
                return unprocessable("Body is too long (maximum is 65536 characters)".into());
            }
            let Some(c) = s
                .comments
                .iter_mut()
                .find(|c| c.repo == repo && id.parse() == Ok(c.id))
            else {
                return (404, json!({"message": "Not Found"}));
            };
            c.body = text.clone();
            c.edits += 1;
            (200, json!({"id": c.id, "body": text}))
        }
        _ => unprocessable(format!(
            "the fake GitHub does not know {method} {}",
            uri.path()
        )),
    }
}

/// `POST /app/installations/{id}/access_tokens`: the JWT must be RS256,
/// signed by the App's key, issued by its id and valid for at most 10 min.
fn access_token(s: &mut FakeState, id: &str, auth: &str) -> (u16, Value) {
    let Some(app) = &s.app else {
        return unprocessable("no GitHub App configured".into());
    };
    if id.parse() != Ok(app.installation_id) {
        return (404, json!({"message": "Not Found"}));
    }
    let Some(jwt) = auth.strip_prefix("Bearer ") else {
        return (
            401,
            json!({"message": "A JSON web token could not be decoded"}),
        );
    };
    let key = match jsonwebtoken::DecodingKey::from_rsa_pem(&app.public_key_pem) {
        Ok(k) => k,
        Err(e) => return unprocessable(format!("bad public key in the fake: {e}")),
    };
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
    // GitHub's own examples put the app id in `iss` as a number, which
    // jsonwebtoken's `iss` check (strings only) refuses: checked below.
    validation.required_spec_claims = ["exp".to_string()].into();
    validation.validate_aud = false;
    let claims = match jsonwebtoken::decode::<Value>(jwt, &key, &validation) {
        Ok(data) => data.claims,
        Err(e) => {
            return (
                401,
                json!({"message": format!("'Issuer' or signature invalid: {e}")}),
            );
        }
    };
    let iss = claims["iss"]
        .as_u64()
        .or_else(|| claims["iss"].as_str()?.parse().ok());
    let (iat, exp) = (
        claims["iat"].as_u64().unwrap_or(0),
        claims["exp"].as_u64().unwrap_or(0),
    );
    if iss != Some(app.app_id) || exp.saturating_sub(iat) > 660 {
        return (
            401,
            json!({"message": "'Issuer' claim ('iss') must be the app id and the token valid for at most 10 minutes"}),
        );
    }
    let ttl = app.token_ttl;
    let token = format!("ghs_fake{:08}", s.issued.len() + 1);
    let expires = SystemTime::now() + ttl;
    s.issued.push((token.clone(), expires));
    let expires_at = humantime::format_rfc3339_seconds(expires).to_string();
    (
        201,
        json!({"token": token, "expires_at": expires_at, "permissions": {"statuses": "write"}}),
    )
}
