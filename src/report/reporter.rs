//! The reporter: turns what the agent and the previewer learn into GitHub
//! commit statuses, deployments and PR comments, in order, without ever
//! making a sync wait for GitHub.
//!
//! Callers only append to the ledger's outbox (persisted before the call
//! returns); one task delivers the outbox head first. GitHub down or rate
//! limiting: the head is retried with backoff (or as long as GitHub asks)
//! while syncing carries on; GitHub refusing a request for good (a 404 on a
//! repository the token cannot see, a 422): logged, counted, dropped.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::Method;
use serde_json::json;
use sha2::{Digest, Sha256};
use tokio::sync::{Notify, watch};

use super::client::{GithubClient, GithubError};
use super::ledger::{
    CommentRecord, DeploymentRecord, Ledger, Op, Origin, State, StatusRecord, comment_key,
    status_key,
};
use crate::backoff::Backoff;
use crate::config::GithubConfig;
use crate::metrics::{GithubLabels, Metrics};

/// GitHub's limit on a commit status description.
pub const DESCRIPTION_LIMIT: usize = 140;
/// Longest wait between two delivery attempts when GitHub is down.
const MAX_BACKOFF: Duration = Duration::from_secs(300);

/// Where one source's results go.
#[derive(Debug, Clone)]
pub struct Subject {
    pub source: String,
    /// `owner/name`
    pub repo: String,
    /// `ferry/dags` or `ferry/platform`
    pub context: String,
}

struct Inner {
    client: GithubClient,
    ledger: Mutex<Ledger>,
    wake: Notify,
    external_url: String,
    environment: String,
    deployments: bool,
    metrics: Arc<Metrics>,
}

#[derive(Clone)]
pub struct Reporter(Arc<Inner>);

impl Reporter {
    /// None when `github` has no credentials. A commit whose apply was
    /// interrupted by a restart (last word `pending`) is marked `error`
    /// here, before the agent evaluates it again.
    pub fn open(
        config: &GithubConfig,
        cache_dir: &Path,
        listen: std::net::SocketAddr,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<Option<Reporter>> {
        let Some(client) = GithubClient::from_config(config) else {
            return Ok(None);
        };
        let path = config
            .state_file
            .clone()
            .unwrap_or_else(|| cache_dir.join("github-report.json"));
        let mut ledger = open_ledger(&path)?;
        let external_url = config
            .external_url
            .clone()
            .unwrap_or_else(|| format!("http://{listen}"))
            .trim_end_matches('/')
            .to_string();
        recover_interrupted(&mut ledger);
        ledger.save()?;
        metrics.github_outbox.set(ledger.data.outbox.len() as i64);
        Ok(Some(Reporter(Arc::new(Inner {
            client,
            ledger: Mutex::new(ledger),
            wake: Notify::new(),
            external_url,
            environment: config.environment.clone(),
            deployments: config.deployments,
            metrics,
        }))))
    }

    /// The page of one revision of a source.
    pub fn revision_url(&self, source: &str, sha: &str) -> String {
        crate::pages::revision_url(&self.0.external_url, source, sha)
    }

    fn change(&self, f: impl FnOnce(&mut Ledger)) {
        let mut ledger = self.0.ledger.lock().unwrap_or_else(|e| e.into_inner());
        let before = ledger.data.outbox.len();
        f(&mut ledger);
        if let Err(err) = ledger.save() {
            // The op is still queued in memory; only a crash before the next
            // successful save could lose it.
            tracing::error!(error = %err, "cannot save the GitHub report ledger");
        }
        let after = ledger.data.outbox.len();
        self.0.metrics.github_outbox.set(after as i64);
        if after > before {
            self.0.wake.notify_one();
        }
    }

    /// Work on a tracked-branch commit begins: `pending`, and a deployment
    /// `in_progress`. Skipped when the commit already has a verdict (a
    /// restart re-evaluating a commit it reported before).
    pub fn started(&self, subject: &Subject, sha: &str, description: &str) {
        let target_url = self.revision_url(&subject.source, sha);
        let environment = self.0.environment.clone();
        let deployments = self.0.deployments;
        self.change(|ledger| {
            let key = status_key(&subject.repo, sha, &subject.context);
            if ledger
                .data
                .statuses
                .get(&key)
                .is_some_and(|r| r.origin == Origin::Branch && r.state.is_verdict())
            {
                return;
            }
            set_status(
                ledger,
                subject,
                sha,
                State::Pending,
                description,
                &target_url,
                Origin::Branch,
            );
            if deployments {
                set_deployment(
                    ledger,
                    subject,
                    sha,
                    &environment,
                    "in_progress",
                    description,
                    &target_url,
                );
            }
        });
    }

    /// The result of a tracked-branch commit. Never called before apply
    /// and health are final.
    pub fn finished(&self, subject: &Subject, sha: &str, state: State, description: &str) {
        let target_url = self.revision_url(&subject.source, sha);
        let environment = self.0.environment.clone();
        let deployments = self.0.deployments;
        self.change(|ledger| {
            let key = status_key(&subject.repo, sha, &subject.context);
            let description = one_line(description, DESCRIPTION_LIMIT);
            let same = ledger.data.statuses.get(&key).is_some_and(|r| {
                r.origin == Origin::Branch
                    && r.state == state
                    && (r.state.is_verdict() || r.description == description)
            });
            if !same {
                set_status(
                    ledger,
                    subject,
                    sha,
                    state,
                    &description,
                    &target_url,
                    Origin::Branch,
                );
            }
            if deployments {
                set_deployment(
                    ledger,
                    subject,
                    sha,
                    &environment,
                    state.as_str(),
                    &description,
                    &target_url,
                );
            }
        });
    }

    /// A status on a pull request's head commit.
    pub fn preview_status(
        &self,
        subject: &Subject,
        context: &str,
        sha: &str,
        state: State,
        description: &str,
    ) {
        let target_url = self.revision_url(&subject.source, sha);
        let subject = Subject {
            context: context.to_string(),
            ..subject.clone()
        };
        self.change(|ledger| {
            let key = status_key(&subject.repo, sha, context);
            let description = one_line(description, DESCRIPTION_LIMIT);
            if ledger
                .data
                .statuses
                .get(&key)
                .is_some_and(|r| r.state == state && r.description == description)
            {
                return;
            }
            set_status(
                ledger,
                &subject,
                sha,
                state,
                &description,
                &target_url,
                Origin::Preview,
            );
        });
    }

    /// Creates or edits the one comment carrying `marker` on a pull request.
    pub fn comment(&self, repo: &str, pr: u64, marker: &str, body: String) {
        self.change(|ledger| {
            let key = comment_key(repo, pr, marker);
            let digest = hex(&Sha256::digest(body.as_bytes()));
            if ledger.data.comments.get(&key).is_some_and(|c| c.digest == digest) {
                return;
            }
            // An undelivered older version of this comment is superseded.
            ledger.data.outbox.retain(|op| {
                !matches!(op, Op::Comment { repo: r, pr: p, marker: m, .. } if r == repo && *p == pr && m == marker)
            });
            let seq = ledger.next_seq();
            let id = ledger.data.comments.get(&key).and_then(|c| c.id);
            ledger.data.comments.insert(key, CommentRecord { id, digest, seq });
            ledger.data.outbox.push_back(Op::Comment {
                repo: repo.to_string(),
                pr,
                marker: marker.to_string(),
                body,
            });
        });
    }

    /// Open pull requests into `branch` as (number, head SHA): the polling
    /// fallback for a lost `pull_request` webhook. Read directly, not queued.
    pub async fn open_pulls(
        &self,
        repo: &str,
        branch: &str,
    ) -> Result<Vec<(u64, String)>, GithubError> {
        let mut pulls = Vec::new();
        for page in 1..=10 {
            let list = self
                .0
                .client
                .request(
                    Method::GET,
                    &format!(
                        "/repos/{repo}/pulls?state=open&base={}&per_page=100&page={page}",
                        query_escape(branch)
                    ),
                    None,
                )
                .await?;
            let items = list.as_array().cloned().unwrap_or_default();
            pulls.extend(items.iter().filter_map(|p| {
                Some((
                    p["number"].as_u64()?,
                    p["head"]["sha"].as_str()?.to_string(),
                ))
            }));
            if items.len() < 100 {
                break;
            }
        }
        Ok(pulls)
    }

    /// True when some status for `sha` in `context` was recorded, i.e. the
    /// commit was previewed (or evaluated) already.
    pub fn has_status(&self, repo: &str, sha: &str, context: &str) -> bool {
        let ledger = self.0.ledger.lock().unwrap_or_else(|e| e.into_inner());
        ledger
            .data
            .statuses
            .contains_key(&status_key(repo, sha, context))
    }

    /// Delivers the outbox until `shutdown`; what is left stays in the
    /// ledger for the next start.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let mut backoff = Backoff::new(MAX_BACKOFF);
        let mut failing_since: Option<std::time::Instant> = None;
        loop {
            if *shutdown.borrow() {
                break;
            }
            let head = {
                let ledger = self.0.ledger.lock().unwrap_or_else(|e| e.into_inner());
                ledger.data.outbox.front().cloned()
            };
            let Some(op) = head else {
                tokio::select! {
                    _ = self.0.wake.notified() => continue,
                    _ = shutdown.wait_for(|stop| *stop) => break,
                }
            };
            let kind = op_kind(&op);
            match self.deliver(&op).await {
                Ok(()) => {
                    if let Some(since) = failing_since.take() {
                        tracing::info!(
                            after_s = since.elapsed().as_secs(),
                            "GitHub reachable again; delivering queued reports"
                        );
                    }
                    backoff.reset();
                    self.count(kind, "ok");
                    self.pop(&op);
                }
                Err(err @ GithubError::Refused { .. }) => {
                    tracing::error!(error = %err, op = kind, "GitHub refused a report; dropping it");
                    self.count(kind, "refused");
                    self.pop(&op);
                }
                Err(GithubError::Unavailable { what, retry_after }) => {
                    self.count(kind, "retried");
                    let asked = retry_after.is_some();
                    let delay = retry_after.unwrap_or_else(|| backoff.next_delay());
                    if failing_since.is_none() {
                        failing_since = Some(std::time::Instant::now());
                        tracing::warn!(error = %what, retry_in_ms = delay.as_millis() as u64, "cannot report to GitHub; will retry (syncing continues)");
                    } else {
                        tracing::debug!(error = %what, retry_in_ms = delay.as_millis() as u64, "GitHub still unavailable");
                    }
                    // After a long outage the backoff is minutes; a report
                    // queued meanwhile (a sync just worked, so the network
                    // may be back) tries again at once. A wait GitHub asked
                    // for (Retry-After, rate limits) is always kept.
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = self.0.wake.notified(), if !asked => {}
                        _ = shutdown.wait_for(|stop| *stop) => break,
                    }
                }
            }
        }
    }

    fn count(&self, op: &str, outcome: &str) {
        self.0
            .metrics
            .github_requests
            .get_or_create(&GithubLabels {
                op: op.into(),
                outcome: outcome.into(),
            })
            .inc();
    }

    fn pop(&self, op: &Op) {
        self.change(|ledger| {
            if ledger.data.outbox.front() == Some(op) {
                ledger.data.outbox.pop_front();
            }
        });
    }

    async fn deliver(&self, op: &Op) -> Result<(), GithubError> {
        let client = &self.0.client;
        match op {
            Op::Status {
                repo,
                sha,
                context,
                state,
                description,
                target_url,
            } => {
                let body = json!({
                    "state": state.as_str(),
                    "target_url": target_url,
                    "description": description,
                    "context": context,
                });
                client
                    .request(
                        Method::POST,
                        &format!("/repos/{repo}/statuses/{sha}"),
                        Some(&body),
                    )
                    .await?;
                tracing::info!(repo = %repo, sha = %sha, context = %context, state = state.as_str(), "commit status reported");
                Ok(())
            }
            Op::Deployment {
                repo,
                sha,
                environment,
                state,
                description,
                log_url,
            } => {
                let key = status_key(repo, sha, environment);
                let known = {
                    let ledger = self.0.ledger.lock().unwrap_or_else(|e| e.into_inner());
                    ledger.data.deployments.get(&key).and_then(|d| d.id)
                };
                let id =
                    match known {
                        Some(id) => id,
                        None => {
                            let body = json!({
                                "ref": sha,
                                "task": "deploy",
                                "environment": environment,
                                "description": description,
                                "auto_merge": false,
                                // ferry's own pending status must not block it.
                                "required_contexts": [],
                                "transient_environment": false,
                                "production_environment": environment == "production",
                            });
                            let created = client
                                .request(
                                    Method::POST,
                                    &format!("/repos/{repo}/deployments"),
                                    Some(&body),
                                )
                                .await?;
                            let id =
                                created["id"].as_u64().ok_or_else(|| GithubError::Refused {
                                    method: Method::POST,
                                    path: format!("/repos/{repo}/deployments"),
                                    status: 200,
                                    message: "the answer has no deployment id".into(),
                                })?;
                            // Remembered at once: a retry of the status below
                            // must not create a second deployment.
                            self.change(|ledger| {
                                let seq = ledger.next_seq();
                                let entry = ledger.data.deployments.entry(key).or_insert(
                                    DeploymentRecord {
                                        id: None,
                                        state: state.clone(),
                                        seq,
                                        log_url: log_url.clone(),
                                    },
                                );
                                entry.id = Some(id);
                            });
                            id
                        }
                    };
                let body = json!({
                    "state": state,
                    "log_url": log_url,
                    "description": description,
                    "auto_inactive": true,
                });
                client
                    .request(
                        Method::POST,
                        &format!("/repos/{repo}/deployments/{id}/statuses"),
                        Some(&body),
                    )
                    .await?;
                tracing::info!(repo = %repo, sha = %sha, deployment = id, state = %state, "deployment status reported");
                Ok(())
            }
            Op::Comment {
                repo,
                pr,
                marker,
                body,
            } => {
                let key = comment_key(repo, *pr, marker);
                let known = {
                    let ledger = self.0.ledger.lock().unwrap_or_else(|e| e.into_inner());
                    ledger.data.comments.get(&key).and_then(|c| c.id)
                };
                let id = match known {
                    Some(id) => Some(id),
                    None => self.find_comment(repo, *pr, marker).await?,
                };
                let payload = json!({ "body": body });
                let edited = match id {
                    Some(id) => match client
                        .request(
                            Method::PATCH,
                            &format!("/repos/{repo}/issues/comments/{id}"),
                            Some(&payload),
                        )
                        .await
                    {
                        Ok(_) => Some(id),
                        // Deleted by someone: write a new one.
                        Err(GithubError::Refused { status: 404, .. }) => None,
                        Err(e) => return Err(e),
                    },
                    None => None,
                };
                let id = match edited {
                    Some(id) => id,
                    None => {
                        let created = client
                            .request(
                                Method::POST,
                                &format!("/repos/{repo}/issues/{pr}/comments"),
                                Some(&payload),
                            )
                            .await?;
                        created["id"].as_u64().unwrap_or_default()
                    }
                };
                tracing::info!(repo = %repo, pr = pr, comment = id, edited = edited.is_some(), "preview comment written");
                self.change(|ledger| {
                    if let Some(c) = ledger.data.comments.get_mut(&key) {
                        c.id = Some(id);
                    }
                });
                Ok(())
            }
        }
    }

    /// The comment carrying `marker` on a PR, if ferry wrote one before
    /// (its ledger may be new).
    async fn find_comment(
        &self,
        repo: &str,
        pr: u64,
        marker: &str,
    ) -> Result<Option<u64>, GithubError> {
        for page in 1..=30 {
            let list = self
                .0
                .client
                .request(
                    Method::GET,
                    &format!("/repos/{repo}/issues/{pr}/comments?per_page=100&page={page}"),
                    None,
                )
                .await?;
            let Some(items) = list.as_array() else {
                return Ok(None);
            };
            if let Some(found) = items
                .iter()
                .find(|c| c["body"].as_str().is_some_and(|b| b.starts_with(marker)))
            {
                return Ok(found["id"].as_u64());
            }
            if items.len() < 100 {
                break;
            }
        }
        Ok(None)
    }
}

/// Branch names may hold `/`, `#` or `&`; a query value may not.
fn query_escape(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            other => format!("%{other:02X}"),
        })
        .collect()
}

fn op_kind(op: &Op) -> &'static str {
    match op {
        Op::Status { .. } => "status",
        Op::Deployment { .. } => "deployment",
        Op::Comment { .. } => "comment",
    }
}

fn set_status(
    ledger: &mut Ledger,
    subject: &Subject,
    sha: &str,
    state: State,
    description: &str,
    target_url: &str,
    origin: Origin,
) {
    let description = one_line(description, DESCRIPTION_LIMIT);
    let seq = ledger.next_seq();
    ledger.data.statuses.insert(
        status_key(&subject.repo, sha, &subject.context),
        StatusRecord {
            state,
            description: description.clone(),
            origin,
            seq,
            target_url: target_url.to_string(),
        },
    );
    ledger.data.outbox.push_back(Op::Status {
        repo: subject.repo.clone(),
        sha: sha.to_string(),
        context: subject.context.clone(),
        state,
        description,
        target_url: target_url.to_string(),
    });
}

fn set_deployment(
    ledger: &mut Ledger,
    subject: &Subject,
    sha: &str,
    environment: &str,
    state: &str,
    description: &str,
    log_url: &str,
) {
    let key = status_key(&subject.repo, sha, environment);
    let previous = ledger.data.deployments.get(&key).cloned();
    if let Some(p) = &previous
        && (p.state == state
            || (state == "in_progress" && matches!(p.state.as_str(), "success" | "failure")))
    {
        return;
    }
    let seq = ledger.next_seq();
    ledger.data.deployments.insert(
        key,
        DeploymentRecord {
            id: previous.and_then(|p| p.id),
            state: state.to_string(),
            seq,
            log_url: log_url.to_string(),
        },
    );
    ledger.data.outbox.push_back(Op::Deployment {
        repo: subject.repo.clone(),
        sha: sha.to_string(),
        environment: environment.to_string(),
        state: state.to_string(),
        description: one_line(description, DESCRIPTION_LIMIT),
        log_url: log_url.to_string(),
    });
}

const RESTARTED: &str =
    "ferry restarted before this commit's result was known; evaluating it again";

/// Commits left `pending` (or deployments `in_progress`) by a previous run
/// get `error`; the agent then evaluates them again from scratch.
fn recover_interrupted(ledger: &mut Ledger) {
    let pending: Vec<(String, StatusRecord)> = ledger
        .data
        .statuses
        .iter()
        .filter(|(_, r)| r.origin == Origin::Branch && r.state == State::Pending)
        .map(|(k, r)| (k.clone(), r.clone()))
        .collect();
    for (key, record) in pending {
        let Some((repo, sha, context)) = split_key(&key) else {
            continue;
        };
        tracing::warn!(
            repo,
            sha,
            context,
            "commit was being evaluated when ferry stopped; marking it `error` and evaluating it again"
        );
        let seq = ledger.next_seq();
        ledger.data.statuses.insert(
            key.clone(),
            StatusRecord {
                state: State::Error,
                description: RESTARTED.into(),
                seq,
                ..record.clone()
            },
        );
        ledger.data.outbox.push_back(Op::Status {
            repo: repo.to_string(),
            sha: sha.to_string(),
            context: context.to_string(),
            state: State::Error,
            description: RESTARTED.into(),
            target_url: record.target_url.clone(),
        });
    }
    let interrupted: Vec<(String, DeploymentRecord)> = ledger
        .data
        .deployments
        .iter()
        .filter(|(_, d)| d.state == "in_progress")
        .map(|(k, d)| (k.clone(), d.clone()))
        .collect();
    for (key, record) in interrupted {
        let Some((repo, sha, environment)) = split_key(&key) else {
            continue;
        };
        let seq = ledger.next_seq();
        ledger.data.deployments.insert(
            key.clone(),
            DeploymentRecord {
                state: "error".into(),
                seq,
                ..record.clone()
            },
        );
        ledger.data.outbox.push_back(Op::Deployment {
            repo: repo.to_string(),
            sha: sha.to_string(),
            environment: environment.to_string(),
            state: "error".into(),
            description: RESTARTED.into(),
            log_url: record.log_url.clone(),
        });
    }
}

/// `repo@sha/rest` -> (repo, sha, rest)
fn split_key(key: &str) -> Option<(&str, &str, &str)> {
    let (repo, rest) = key.split_once('@')?;
    let (sha, tail) = rest.split_once('/')?;
    Some((repo, sha, tail))
}

fn open_ledger(path: &Path) -> anyhow::Result<Ledger> {
    match Ledger::open(path) {
        Ok(l) => Ok(l),
        Err(err @ super::ledger::LedgerError::Parse { .. }) => {
            // A damaged ledger costs duplicate statuses, not wrong ones:
            // keep it for inspection and start afresh rather than not at all.
            let aside = PathBuf::from(format!("{}.corrupt", path.display()));
            tracing::error!(error = %err, moved_to = %aside.display(), "GitHub report ledger unreadable; starting a new one");
            std::fs::rename(path, &aside)?;
            Ok(Ledger::open(path)?)
        }
        Err(err) => Err(err.into()),
    }
}

/// One line of at most `limit` characters (an ellipsis marks a cut).
pub fn one_line(text: &str, limit: usize) -> String {
    let flat: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if flat.chars().count() <= limit {
        return flat;
    }
    let mut cut: String = flat.chars().take(limit - 1).collect();
    cut.push('…');
    cut
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptions_are_one_line_within_githubs_limit() {
        assert_eq!(one_line("a\n  b\tc", 140), "a b c");
        let long = "x".repeat(300);
        let cut = one_line(&long, DESCRIPTION_LIMIT);
        assert_eq!(cut.chars().count(), DESCRIPTION_LIMIT);
        assert!(cut.ends_with('…'));
        let accents = "é".repeat(200);
        assert_eq!(one_line(&accents, 140).chars().count(), 140);
    }

    #[test]
    fn an_interrupted_commit_becomes_error_once() {
        let dir = tempfile::tempdir().unwrap();
        let mut ledger = Ledger::open(&dir.path().join("l.json")).unwrap();
        let subject = Subject {
            source: "dags".into(),
            repo: "o/r".into(),
            context: "ferry/dags".into(),
        };
        set_status(
            &mut ledger,
            &subject,
            "abc",
            State::Pending,
            "publishing",
            "http://x",
            Origin::Branch,
        );
        set_status(
            &mut ledger,
            &Subject {
                context: "ferry/plan".into(),
                ..subject.clone()
            },
            "def",
            State::Pending,
            "planning",
            "http://x",
            Origin::Preview,
        );
        ledger.data.outbox.clear();
        recover_interrupted(&mut ledger);
        assert_eq!(ledger.data.outbox.len(), 1, "{:?}", ledger.data.outbox);
        assert!(
            matches!(&ledger.data.outbox[0], Op::Status { sha, state: State::Error, description, .. } if sha == "abc" && description == RESTARTED)
        );
        ledger.data.outbox.clear();
        recover_interrupted(&mut ledger);
        assert!(ledger.data.outbox.is_empty());
    }
}
