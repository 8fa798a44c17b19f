//! Git sources: one bare mirror per source, fetched on demand.
//!
//! A fetch first lists the remote's refs (one cheap round trip), so an
//! unchanged branch costs no pack negotiation at all. When the branch moved,
//! only that branch is fetched, shallow (depth 1) where the server allows it,
//! into a ferry-owned ref with a forced refspec so force-pushes are followed.
//! Nothing here deletes the last fetched commit: a vanished branch or repo is
//! an error, and whatever was published from the last good commit stays live.

mod credentials;
pub mod known_hosts;
pub mod mirror;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use git2::{Direction, FetchOptions, Oid, Repository};

use crate::config::{AuthConfig, SourceConfig};
use crate::signature::{self, SignatureError};
use credentials::CallbackState;

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("branch `{branch}` not found on {url}; the last good revision stays live")]
    BranchNotFound { branch: String, url: String },
    #[error("ref `{reference}` not found on {url}")]
    RefNotFound { reference: String, url: String },
    #[error(
        "repository {url} not found or not readable ({detail}); the last good revision stays live"
    )]
    RepoNotFound { url: String, detail: String },
    #[error("authentication to {url} failed: {detail}")]
    Auth { url: String, detail: String },
    #[error("SSH host key of {host} refused: {detail}")]
    HostKey { host: String, detail: String },
    #[error("fetch from {url} timed out after {}", humantime::format_duration(*.after))]
    Timeout { url: String, after: Duration },
    #[error("fetch from {url} cancelled")]
    Cancelled { url: String },
    #[error("cannot reach {url}: {detail}")]
    Network { url: String, detail: String },
    #[error("git error on {url} while {action}: {detail}")]
    Git {
        url: String,
        action: &'static str,
        detail: String,
    },
    #[error("mirror {path}: {detail}")]
    Mirror { path: PathBuf, detail: String },
    #[error(
        "fetch from {url} into {path}: no space left on the filesystem ({free}); the last good revision stays live and ferry retries once space is freed ({detail})"
    )]
    DiskFull {
        url: String,
        path: PathBuf,
        free: String,
        detail: String,
    },
}

impl SourceError {
    /// Whether a damaged mirror could explain this error: not when the
    /// remote or the operator decided it (credentials, host key, timeout,
    /// cancellation), nor when the remote could not be reached (so an
    /// outage does not re-check the mirror at every retry).
    fn may_be_local(&self) -> bool {
        !matches!(
            self,
            SourceError::Network { .. }
                | SourceError::Auth { .. }
                | SourceError::HostKey { .. }
                | SourceError::Timeout { .. }
                | SourceError::Cancelled { .. }
                | SourceError::BranchNotFound { .. }
                | SourceError::RefNotFound { .. }
                | SourceError::DiskFull { .. }
        )
    }
}

/// One tracked repository and its local bare mirror.
pub struct GitSource {
    pub name: String,
    pub url: String,
    pub branch: String,
    mirror: PathBuf,
    auth: AuthConfig,
    timeout: Duration,
    /// `verify`: heads must carry a signature by a listed key.
    verify: Option<crate::config::VerifyConfig>,
    /// Cleared the first time the server (or transport) refuses a shallow fetch.
    shallow: AtomicBool,
    /// Set once the mirror left by an earlier process has been checked.
    recovered: AtomicBool,
    /// Damaged mirrors replaced since the last [`GitSource::take_repairs`].
    repairs: AtomicU64,
    max_packs: usize,
}

/// What a branch fetch found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fetched {
    pub commit: Oid,
    /// False when the remote still pointed at the commit already mirrored.
    pub changed: bool,
}

impl GitSource {
    pub fn new(config: &SourceConfig, cache_dir: &Path) -> GitSource {
        GitSource {
            name: config.name.clone(),
            url: config.url.clone(),
            branch: config.branch.clone(),
            mirror: cache_dir.join(format!("{}.git", config.name)),
            auth: config.auth.clone(),
            timeout: config.timeout,
            verify: config.verify.clone(),
            // libgit2's local transport (paths, file://) cannot fetch shallow.
            shallow: AtomicBool::new(
                crate::config::url_scheme(&config.url).is_some_and(|s| s != "file"),
            ),
            recovered: AtomicBool::new(false),
            repairs: AtomicU64::new(0),
            max_packs: max_packs(),
        }
    }

    /// How many damaged mirrors were replaced since the last call.
    pub fn take_repairs(&self) -> u64 {
        self.repairs.swap(0, Ordering::Relaxed)
    }

    /// Checks `commit` against the signature policy: `Ok(None)` when the
    /// source has none.
    pub fn verify(&self, commit: Oid) -> Result<Option<signature::Verified>, SignatureError> {
        let Some(verify) = &self.verify else {
            return Ok(None);
        };
        let policy = signature::Policy::load(verify)?;
        let repo = self.open().map_err(|e| SignatureError::Git {
            commit,
            message: e.to_string(),
        })?;
        policy.verify(&repo, commit).map(Some)
    }

    pub fn mirror_path(&self) -> &Path {
        &self.mirror
    }

    /// Local ref that holds the last fetched commit of the tracked branch.
    pub fn tracking_ref(&self) -> String {
        format!("refs/ferry/heads/{}", self.branch)
    }

    /// Opens the mirror, creating it when missing. The first open in a
    /// process, which may follow a kill at any point of an earlier one,
    /// checks the mirror and replaces it when it is damaged (the cache is
    /// disposable: everything in it is refetched).
    pub fn open(&self) -> Result<Repository, SourceError> {
        if self.recovered.swap(true, Ordering::Relaxed) {
            return self.open_or_init();
        }
        mirror::remove_trash(&self.mirror);
        mirror::remove_stale_locks(&self.mirror);
        let repo = self.open_or_init()?;
        match mirror::check(&repo) {
            Ok(()) => Ok(repo),
            Err(damage) => {
                drop(repo);
                self.repair(&damage)
            }
        }
    }

    fn open_or_init(&self) -> Result<Repository, SourceError> {
        match Repository::open_bare(&self.mirror) {
            Ok(repo) => Ok(repo),
            Err(_) if !self.mirror.exists() => self.init(),
            Err(err) => self.repair(&mirror::Damage(format!(
                "not a readable repository: {}",
                err.message()
            ))),
        }
    }

    fn init(&self) -> Result<Repository, SourceError> {
        Repository::init_bare(&self.mirror).map_err(|e| SourceError::Mirror {
            path: self.mirror.clone(),
            detail: e.message().to_string(),
        })
    }

    /// Replaces a damaged mirror with an empty one; the next fetch refills it.
    fn repair(&self, damage: &mirror::Damage) -> Result<Repository, SourceError> {
        tracing::warn!(source = %self.name, mirror = %self.mirror.display(), %damage, "mirror damaged (an interrupted run or a full disk); replacing it and fetching afresh");
        self.repairs.fetch_add(1, Ordering::Relaxed);
        self.discard()?;
        self.init()
    }

    fn discard(&self) -> Result<(), SourceError> {
        mirror::discard(&self.mirror).map_err(|e| SourceError::Mirror {
            path: self.mirror.clone(),
            detail: format!("cannot remove it: {e}"),
        })
    }

    /// The commit last fetched for the tracked branch, if any.
    pub fn last_fetched(&self) -> Option<Oid> {
        let repo = Repository::open_bare(&self.mirror).ok()?;
        let oid = repo.refname_to_id(&self.tracking_ref()).ok()?;
        repo.find_commit(oid).ok().map(|c| c.id())
    }

    /// Fetches the tracked branch. Blocking: call from a blocking thread.
    pub fn fetch_branch(&self, cancel: &AtomicBool) -> Result<Fetched, SourceError> {
        let remote_ref = format!("refs/heads/{}", self.branch);
        self.fetch_ref(&remote_ref, &self.tracking_ref(), cancel)
            .map_err(|err| match err {
                SourceError::RefNotFound { url, .. } => SourceError::BranchNotFound {
                    branch: self.branch.clone(),
                    url,
                },
                other => other,
            })
    }

    /// Fetches one remote ref (a branch, or `refs/pull/N/head` for previews)
    /// into `local_ref`, forced, so rewritten history is followed.
    pub fn fetch_ref(
        &self,
        remote_ref: &str,
        local_ref: &str,
        cancel: &AtomicBool,
    ) -> Result<Fetched, SourceError> {
        let err = match self.fetch_ref_once(remote_ref, local_ref, cancel) {
            Ok(fetched) => return Ok(fetched),
            Err(err) => err,
        };
        // A pack cut short (full disk, timeout) must not hold on to the
        // space it took.
        mirror::remove_temp_packs(&self.mirror);
        if !err.may_be_local() {
            return Err(err);
        }
        // The remote may be fine and the mirror broken (objects lost to a
        // kill or a full disk): then repair and try once more, so the
        // error, if any, is about the remote.
        let damage = Repository::open_bare(&self.mirror)
            .map_err(|e| mirror::Damage(format!("not a readable repository: {}", e.message())))
            .and_then(|repo| mirror::check(&repo));
        match damage {
            Ok(()) => Err(err),
            Err(damage) => {
                self.repair(&damage)?;
                self.fetch_ref_once(remote_ref, local_ref, cancel)
            }
        }
    }

    fn fetch_ref_once(
        &self,
        remote_ref: &str,
        local_ref: &str,
        cancel: &AtomicBool,
    ) -> Result<Fetched, SourceError> {
        let repo = self.open()?;
        let repo = self.compact_if_needed(repo)?;
        let deadline = Instant::now() + self.timeout;
        let state = CallbackState::new(&self.auth, &self.url, deadline, cancel);

        let mut remote = repo
            .remote_anonymous(&self.url)
            .map_err(|e| self.classify(e, &state, "opening the remote"))?;
        let advertised = {
            let connection = remote
                .connect_auth(Direction::Fetch, Some(state.callbacks()), None)
                .map_err(|e| self.classify(e, &state, "connecting"))?;
            let heads = connection
                .list()
                .map_err(|e| self.classify(e, &state, "listing refs"))?;
            heads
                .iter()
                .find(|h| h.name() == remote_ref)
                .map(|h| h.oid())
        };
        let Some(advertised) = advertised else {
            return Err(SourceError::RefNotFound {
                reference: remote_ref.to_string(),
                url: self.url.clone(),
            });
        };
        if let Ok(current) = repo.refname_to_id(local_ref)
            && current == advertised
            && repo.find_commit(current).is_ok()
        {
            return Ok(Fetched {
                commit: current,
                changed: false,
            });
        }

        let refspec = format!("+{remote_ref}:{local_ref}");
        let result = self.fetch_once(&mut remote, &refspec, &state);
        let result = match result {
            Err(err) if self.shallow.load(Ordering::Relaxed) && is_shallow_refusal(&err) => {
                tracing::info!(source = %self.name, "remote refuses shallow fetches; fetching full history from now on");
                self.shallow.store(false, Ordering::Relaxed);
                self.fetch_once(&mut remote, &refspec, &state)
            }
            other => other,
        };
        result.map_err(|e| self.classify(e, &state, "fetching"))?;

        let commit = repo
            .refname_to_id(local_ref)
            .and_then(|oid| repo.find_commit(oid))
            .map_err(|e| self.classify(e, &state, "resolving the fetched ref"))?;
        Ok(Fetched {
            commit: commit.id(),
            changed: true,
        })
    }

    /// Every fetch adds a pack and libgit2 cannot repack, so lookups would
    /// slow down forever. Past `max_packs` the mirror is dropped and the
    /// next fetch starts afresh (shallow: one commit's objects).
    fn compact_if_needed(&self, repo: Repository) -> Result<Repository, SourceError> {
        let packs = mirror::pack_count(&self.mirror);
        if packs <= self.max_packs {
            return Ok(repo);
        }
        drop(repo);
        tracing::info!(source = %self.name, packs, "phase: compact (mirror has too many packs; starting it afresh)");
        self.discard()?;
        self.init()
    }

    fn fetch_once(
        &self,
        remote: &mut git2::Remote<'_>,
        refspec: &str,
        state: &CallbackState<'_>,
    ) -> Result<(), git2::Error> {
        let mut options = FetchOptions::new();
        options.remote_callbacks(state.callbacks());
        options.download_tags(git2::AutotagOption::None);
        options.update_fetchhead(false);
        if self.shallow.load(Ordering::Relaxed) {
            // merges_of_signed_heads checks the signature of the head's
            // second parent (the PR head), so that commit must be here too.
            let strict = self.verify.as_ref().is_some_and(|v| {
                v.github_commits == crate::config::GithubCommits::MergesOfSignedHeads
            });
            options.depth(if strict { 2 } else { 1 });
        }
        remote.fetch(&[refspec], Some(&mut options), None)
    }

    fn classify(
        &self,
        err: git2::Error,
        state: &CallbackState<'_>,
        action: &'static str,
    ) -> SourceError {
        let url = self.url.clone();
        if let Some(detail) = state.host_key_error() {
            return SourceError::HostKey {
                host: credentials::host_of(&self.url).0,
                detail,
            };
        }
        if let Some(detail) = state.auth_error() {
            return SourceError::Auth { url, detail };
        }
        if state.timed_out() {
            return SourceError::Timeout {
                url,
                after: self.timeout,
            };
        }
        if state.cancelled() {
            return SourceError::Cancelled { url };
        }
        let detail = err.message().trim().to_string();
        if crate::disk::says_full(&detail) {
            return SourceError::DiskFull {
                url,
                path: self.mirror.clone(),
                free: crate::disk::free_text(&self.mirror),
                detail,
            };
        }
        // Missing or corrupt local objects are the mirror's fault, never a
        // sign that the remote repository is gone.
        if matches!(
            err.class(),
            git2::ErrorClass::Odb | git2::ErrorClass::Object | git2::ErrorClass::Zlib
        ) || err.code() == git2::ErrorCode::NotFound && detail.contains("no match for id")
        {
            return SourceError::Mirror {
                path: self.mirror.clone(),
                detail: format!("damaged while {action}: {detail}"),
            };
        }
        let lower = detail.to_ascii_lowercase();
        if lower.contains("404")
            || lower.contains("not found")
            || lower.contains("does not appear to be a git repository")
            || lower.contains("not exported")
            || lower.contains("no such repository")
            || lower.contains("could not find repository")
            || lower.contains("failed to resolve path")
        {
            return SourceError::RepoNotFound { url, detail };
        }
        if lower.contains("401") || lower.contains("403") || err.code() == git2::ErrorCode::Auth {
            return SourceError::Auth { url, detail };
        }
        match err.class() {
            git2::ErrorClass::Net
            | git2::ErrorClass::Http
            | git2::ErrorClass::Ssh
            | git2::ErrorClass::Os
            | git2::ErrorClass::Ssl => SourceError::Network { url, detail },
            _ => SourceError::Git {
                url,
                action,
                detail,
            },
        }
    }
}

/// Packs a mirror may hold before it is started afresh.
pub const MAX_PACKS: usize = 50;

/// `FERRY_MIRROR_MAX_PACKS` lowers the limit, to exercise compaction (tests,
/// kill drills); unset or invalid means [`MAX_PACKS`].
fn max_packs() -> usize {
    std::env::var("FERRY_MIRROR_MAX_PACKS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(MAX_PACKS)
}

fn is_shallow_refusal(err: &git2::Error) -> bool {
    err.message().to_ascii_lowercase().contains("shallow")
}

/// Sets libgit2's socket timeouts (process-wide). Call once at start-up.
pub fn set_network_timeouts(connect: Duration, io: Duration) {
    let ms = |d: Duration| i32::try_from(d.as_millis()).unwrap_or(i32::MAX);
    // SAFETY: git2 documents these as unsafe only because they mutate global
    // libgit2 state; ferry calls this once before any fetch starts.
    unsafe {
        if let Err(err) = git2::opts::set_server_connect_timeout_in_milliseconds(ms(connect)) {
            tracing::warn!(error = %err.message(), "cannot set git connect timeout");
        }
        if let Err(err) = git2::opts::set_server_timeout_in_milliseconds(ms(io)) {
            tracing::warn!(error = %err.message(), "cannot set git I/O timeout");
        }
    }
}
