//! Atomic publishing of revisions into the volume Airflow reads.
//!
//! Layout under the destination root:
//!
//! ```text
//! <dest>/<link>                 -> .ferry/<sha>   (relative symlink; basename is the commit)
//! <dest>/.ferry/<sha>           -> .trees/<key>   a revision: its root directory in the store
//! <dest>/.ferry/.trees/         directories shared between revisions (see `trees`)
//! <dest>/.ferry/<sha>.superseded  empty file; its mtime is when <sha> stopped being live
//! <dest>/.ferry/.tmp-*          staging and deletion in progress; removed at start
//!                               once no live publisher owns them (see `turns`)
//! <dest>/.ferry/.lock           taken for each change, by every publisher
//! <dest>/.ferry/.owners/<token>  held locked by each live publisher
//! ```
//!
//! A revision only ever appears by `rename` of a link to a complete, synced
//! stored tree, and the link only ever changes by `rename` of a new symlink
//! over it. So at every instant, crash or not, the link names a complete
//! revision. Stored directories and the files hardlinked between them are
//! shared by every revision that has them, which is why they must never be
//! written to. (Revisions an older ferry wrote as plain directories stay
//! readable and are pruned the same way.)

use std::collections::HashSet;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use git2::{Oid, Repository};

use super::dirmode;
use super::retention::{self, Decision, Uses};
use super::snapshot::{FileEntry, Snapshot};
use super::trees::{self, Keys, Previous, Store};
use super::turns::Turns;
use crate::config::RetentionConfig;

const REVISIONS: &str = ".ferry";
const TREES: &str = ".trees";
const TMP_PREFIX: &str = trees::TMP_PREFIX;
const SUPERSEDED: &str = ".superseded";

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: no space left on the filesystem ({free}); nothing was published, the live revision stays, and ferry retries once space is freed", path.display())]
    DiskFull { path: PathBuf, free: String },
    #[error("{}: cannot lock: {source}; publishers of one destination take turns by this lock, so mount an NFS or EFS volume with locking (not `nolock`)", path.display())]
    Lock {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: exists and is not a symlink; move it away so ferry can manage the link", path.display())]
    LinkOccupied { path: PathBuf },
    #[error("reading blob {blob} for {path}: {detail}")]
    Blob {
        path: String,
        blob: Oid,
        detail: String,
    },
}

pub(super) fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> PublishError + '_ {
    move |source| {
        if crate::disk::is_full(&source) {
            // The destination, not the staging file that happened to fail:
            // that is what to free space on, and it stays the same across
            // retries (so the status is not re-posted for each).
            let dest = path
                .ancestors()
                .find(|p| p.file_name().is_some_and(|n| n == REVISIONS))
                .and_then(Path::parent)
                .unwrap_or(path);
            return PublishError::DiskFull {
                path: dest.to_path_buf(),
                free: crate::disk::free_text(dest),
            };
        }
        PublishError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// Counts for one publish.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct PublishStats {
    /// Files written from git (new or changed content).
    pub files_written: usize,
    /// Unchanged files hardlinked into a new directory beside a changed one.
    pub files_linked: usize,
    /// Files in directories reused whole from the store: nothing written.
    pub files_shared: usize,
    pub bytes_written: u64,
    /// Directory entries made, renamed or replaced, from staging to the
    /// link swap (pruning aside): what a publish costs on a network
    /// filesystem, one round trip each.
    pub mutations: usize,
}

/// A commit and the keys of its directories.
type KeysOf = (Oid, Arc<Keys>);

#[derive(Clone)]
pub struct Publisher {
    dest: PathBuf,
    link: String,
    retention: RetentionConfig,
    store: Arc<Store>,
    /// Taken while a revision's trees are chosen and linked, while one is
    /// named, and while trees are collected, by every publisher of the
    /// destination in any process: a collection must see every tree a
    /// revision in the making reuses.
    turns: Turns,
    /// Set once this publisher collected: later runs collect only after
    /// a prune removed something.
    collected: Arc<std::sync::atomic::AtomicBool>,
    /// The keys of the last revision staged: the next one's previous.
    last_keys: Arc<Mutex<Option<KeysOf>>>,
}

/// A fully written revision that is not yet published.
pub struct Staged {
    dir: PathBuf,
    commit: Oid,
    pub stats: PublishStats,
}

impl Staged {
    pub fn path(&self) -> &Path {
        &self.dir
    }
}

impl Publisher {
    /// Opens the destination and removes leftovers of an interrupted run.
    pub fn open(
        dest: &Path,
        link: &str,
        retention: RetentionConfig,
    ) -> Result<Publisher, PublishError> {
        let revisions = dest.join(REVISIONS);
        fs::create_dir_all(&revisions).map_err(io_err(&revisions))?;
        dirmode::set_dir_mode_if_masked(&revisions).map_err(io_err(&revisions))?;
        let turns = Turns::join(&revisions)?;
        // One turn for all the clearing up: each is a lock round trip on EFS.
        let held = turns.clone();
        let turn = held.take()?;
        let store = Store::open(&revisions.join(TREES), &turns)?;
        let publisher = Publisher {
            dest: dest.to_path_buf(),
            link: link.to_string(),
            retention,
            store: Arc::new(store),
            turns,
            collected: Arc::default(),
            last_keys: Arc::default(),
        };
        publisher.remove_leftovers()?;
        drop(turn);
        let link_path = publisher.link_path();
        if let Ok(meta) = fs::symlink_metadata(&link_path)
            && !meta.file_type().is_symlink()
        {
            return Err(PublishError::LinkOccupied { path: link_path });
        }
        Ok(publisher)
    }

    /// Collects stored directories only after a prune removed a revision,
    /// not also at the first prune: for a process that publishes once,
    /// where "first" is every run.
    pub fn collect_only_after_removals(&self) {
        self.collected
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn link_path(&self) -> PathBuf {
        self.dest.join(&self.link)
    }

    fn revisions_dir(&self) -> PathBuf {
        self.dest.join(REVISIONS)
    }

    pub fn revision_dir(&self, commit: Oid) -> PathBuf {
        self.revisions_dir().join(commit.to_string())
    }

    /// Removes what interrupted publishers left: what no live one owns.
    /// The caller has the turn.
    fn remove_leftovers(&self) -> Result<(), PublishError> {
        let revisions = self.revisions_dir();
        for entry in fs::read_dir(&revisions).map_err(io_err(&revisions))? {
            let entry = entry.map_err(io_err(&revisions))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with(TMP_PREFIX) && self.turns.is_leftover(&name) {
                tracing::info!(path = %entry.path().display(), "removing leftover of an interrupted publish");
                remove_any(&entry.path())?;
            }
        }
        let tmp_link_prefix = format!(".{}{TMP_PREFIX}", self.link);
        for entry in fs::read_dir(&self.dest).map_err(io_err(&self.dest))? {
            let entry = entry.map_err(io_err(&self.dest))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with(&tmp_link_prefix) && self.turns.is_leftover(&name) {
                remove_any(&entry.path())?;
            }
        }
        self.turns.forget_the_gone()
    }

    /// The commit the link points at, if it points at a revision.
    pub fn current(&self) -> Option<Oid> {
        let target = fs::read_link(self.link_path()).ok()?;
        let name = target.file_name()?.to_str()?;
        let oid = Oid::from_str(name).ok()?;
        self.revision_dir(oid).is_dir().then_some(oid)
    }

    /// Builds `snapshot` in the store, reusing every directory the store
    /// has and hardlinking unchanged files from `previous` (the live
    /// revision) into the directories it lacks, and stages a link to its
    /// root. Everything is on disk when this returns.
    pub fn stage(
        &self,
        repo: &Repository,
        snapshot: &Snapshot,
        previous: Option<&Snapshot>,
    ) -> Result<Staged, PublishError> {
        let _turn = self.turns.take()?;
        let keys = Arc::new(Keys::of(snapshot));
        let last = self
            .last_keys
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .replace((snapshot.commit, keys.clone()));
        let previous = previous
            .map(|p| (p, self.revision_dir(p.commit)))
            .filter(|(_, dir)| dir.is_dir())
            .map(|(p, dir)| {
                let known = last.filter(|(c, _)| *c == p.commit).map(|(_, k)| k);
                Previous {
                    keys: trees::stored_keys(&dir, p, known),
                    dir,
                    snapshot: p,
                }
            });
        let mut stats = PublishStats::default();
        self.store
            .build(repo, snapshot, &keys, previous.as_ref(), &mut stats)?;
        stats.files_shared = snapshot
            .files
            .len()
            .saturating_sub(stats.files_written + stats.files_linked);
        let dir = self.revisions_dir().join(self.turns.tmp_name(&format!(
            "{}-{:08x}",
            snapshot.commit,
            fastrand::u32(..)
        )));
        let target = Path::new(TREES).join(keys.root());
        std::os::unix::fs::symlink(&target, &dir).map_err(io_err(&dir))?;
        stats.mutations += 1;
        Ok(Staged {
            dir,
            commit: snapshot.commit,
            stats,
        })
    }

    /// Drops a staged revision that will not be published.
    pub fn discard(&self, staged: Staged) {
        if let Err(err) = remove_any(&staged.dir) {
            tracing::warn!(path = %staged.dir.display(), error = %err, "cannot remove staged revision");
        }
    }

    /// Makes a staged revision live: rename into place, then swap the link.
    /// Returns the directory entries it made.
    pub fn publish(&self, staged: Staged) -> Result<usize, PublishError> {
        let commit = staged.commit;
        let final_dir = self.revision_dir(commit);
        let mut made = 0;
        let _turn = self.turns.take()?;
        if final_dir.is_dir() {
            // Published before (a revert, or a crash between rename and
            // swap): complete by construction, so keep it.
            self.discard(staged);
        } else {
            fs::rename(&staged.dir, &final_dir).map_err(io_err(&final_dir))?;
            sync_dir(&self.revisions_dir())?;
            made += 1;
        }
        Ok(made + self.swap_link(commit)?)
    }

    /// Points the link at an existing revision. Returns the directory
    /// entries it made: none when the link already points there. The
    /// caller has the turn.
    fn swap_link(&self, commit: Oid) -> Result<usize, PublishError> {
        let previous = self.current();
        if previous == Some(commit) {
            return Ok(0);
        }
        let link = self.link_path();
        let tmp = self
            .dest
            .join(format!(".{}{}", self.link, self.turns.tmp_name("link")));
        let _ = fs::remove_file(&tmp);
        let target = Path::new(REVISIONS).join(commit.to_string());
        std::os::unix::fs::symlink(&target, &tmp).map_err(io_err(&tmp))?;
        if let Err(source) = fs::rename(&tmp, &link) {
            let _ = fs::remove_file(&tmp);
            return Err(PublishError::Io { path: link, source });
        }
        sync_dir(&self.dest)?;
        let Some(old) = previous else {
            return Ok(2);
        };
        let marker = self.revisions_dir().join(format!("{old}{SUPERSEDED}"));
        fs::File::create(&marker).map_err(io_err(&marker))?;
        Ok(3)
    }

    /// Removes the superseded revisions no retention rule holds (see
    /// [`super::retention`]); `uses` is what Airflow still runs. Returns
    /// what was removed and what was kept, with why.
    pub fn prune(&self, now: SystemTime, uses: &Uses) -> Result<Decision, PublishError> {
        let current = self.current();
        let revisions = self.revisions_dir();
        let mut superseded: Vec<(SystemTime, Oid)> = Vec::new();
        for entry in fs::read_dir(&revisions).map_err(io_err(&revisions))? {
            let entry = entry.map_err(io_err(&revisions))?;
            let name = entry.file_name();
            let Some(oid) = name.to_str().and_then(|n| Oid::from_str(n).ok()) else {
                continue;
            };
            if name.len() < 40 || Some(oid) == current {
                continue;
            }
            let marker = revisions.join(format!("{oid}{SUPERSEDED}"));
            // Never live (published but not linked): its own age counts.
            let since = fs::metadata(&marker)
                .or_else(|_| entry.metadata())
                .and_then(|m| m.modified())
                .unwrap_or(now);
            superseded.push((since, oid));
        }
        let mut decision = retention::decide(current, superseded, &self.retention, uses, now);
        let mut removed = Vec::new();
        let _turn = self.turns.take()?;
        for oid in std::mem::take(&mut decision.remove) {
            // Re-read the link: a publish may have made `oid` live meanwhile
            // (pruning runs beside the next publish in the agent).
            if self.current() == Some(oid) {
                continue;
            }
            // Rename first: a half-deleted directory must never look complete.
            let doomed = revisions.join(format!("{TMP_PREFIX}del-{oid}"));
            let dir = self.revision_dir(oid);
            fs::rename(&dir, &doomed).map_err(io_err(&dir))?;
            remove_any(&doomed)?;
            let _ = fs::remove_file(revisions.join(format!("{oid}{SUPERSEDED}")));
            removed.push(oid);
        }
        let first = !self
            .collected
            .swap(true, std::sync::atomic::Ordering::Relaxed);
        if first || !removed.is_empty() {
            self.collect()?;
        }
        decision.remove = removed;
        Ok(decision)
    }

    /// Removes the stored directories no revision (nor a staged one)
    /// reaches. The caller has the turn.
    fn collect(&self) -> Result<usize, PublishError> {
        let (roots, _) = self.roots()?;
        let keep: HashSet<String> = self.store.reachable(roots);
        let removed = self.store.collect(&keep)?;
        if removed > 0 {
            tracing::info!(
                removed,
                kept = keep.len(),
                "removed stored directories no revision reaches"
            );
        }
        Ok(removed)
    }

    /// Bytes the revisions on disk take, each file counted once however
    /// many revisions share it by hardlink.
    pub fn bytes_on_disk(&self) -> u64 {
        use std::os::unix::fs::MetadataExt;
        let Ok((roots, plain)) = self.roots() else {
            return 0;
        };
        let mut seen = HashSet::new();
        let mut total = self.store.bytes(&self.store.reachable(roots), &mut seen);
        // Revisions written before the store: each walked whole.
        let mut stack = plain;
        while let Some(dir) = stack.pop() {
            let Ok(entries) = fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.flatten() {
                let Ok(meta) = entry.metadata() else { continue };
                if meta.is_dir() {
                    stack.push(entry.path());
                } else if meta.is_file() && seen.insert(meta.ino()) {
                    total += meta.len();
                }
            }
        }
        total
    }

    /// The store keys the revisions (and staged ones) link to, and the
    /// revisions that are plain directories (written before the store).
    fn roots(&self) -> Result<(Vec<String>, Vec<PathBuf>), PublishError> {
        let revisions = self.revisions_dir();
        let (mut roots, mut plain) = (Vec::new(), Vec::new());
        for entry in fs::read_dir(&revisions).map_err(io_err(&revisions))? {
            let entry = entry.map_err(io_err(&revisions))?;
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            if kind.is_symlink() {
                if let Ok(target) = fs::read_link(entry.path())
                    && let Some(key) = trees::key_of(&target)
                {
                    roots.push(key);
                }
            } else if kind.is_dir() && !entry.file_name().to_string_lossy().starts_with('.') {
                plain.push(entry.path());
            }
        }
        Ok((roots, plain))
    }

    /// Revisions present on disk, for tests and the status API.
    pub fn revisions(&self) -> Vec<Oid> {
        let Ok(entries) = fs::read_dir(self.revisions_dir()) else {
            return Vec::new();
        };
        entries
            .filter_map(|e| e.ok())
            .filter(|e| e.path().is_dir())
            .filter_map(|e| e.file_name().to_str().and_then(|n| Oid::from_str(n).ok()))
            .collect()
    }
}

/// Writes `file`'s blob at `target` with its mode.
pub(super) fn write_file(
    repo: &Repository,
    file: &FileEntry,
    target: &Path,
    stats: &mut PublishStats,
) -> Result<(), PublishError> {
    let blob = repo.find_blob(file.blob).map_err(|e| PublishError::Blob {
        path: file.path.clone(),
        blob: file.blob,
        detail: e.message().to_string(),
    })?;
    let mode = if file.executable { 0o755 } else { 0o644 };
    let mut out = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(target)
        .map_err(io_err(target))?;
    out.write_all(blob.content()).map_err(io_err(target))?;
    // The umask may have dropped bits from `mode`; the repo's mode wins.
    out.set_permissions(fs::Permissions::from_mode(mode))
        .map_err(io_err(target))?;
    stats.files_written += 1;
    stats.bytes_written += blob.size() as u64;
    Ok(())
}

fn remove_any(path: &Path) -> Result<(), PublishError> {
    let meta = fs::symlink_metadata(path).map_err(io_err(path))?;
    if meta.is_dir() {
        fs::remove_dir_all(path).map_err(io_err(path))
    } else {
        fs::remove_file(path).map_err(io_err(path))
    }
}

fn sync_dir(dir: &Path) -> Result<(), PublishError> {
    fs::File::open(dir)
        .and_then(|f| f.sync_all())
        .map_err(io_err(dir))
}

/// Makes everything written under `dir` durable. On Linux one `syncfs`
/// flushes every new file and directory entry at once, far cheaper than an
/// fsync per file; elsewhere the whole system is synced.
pub(super) fn sync_tree(dir: &Path) -> Result<(), PublishError> {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        let handle = fs::File::open(dir).map_err(io_err(dir))?;
        // SAFETY: syncfs only reads the descriptor, which `handle` keeps open.
        let rc = unsafe { libc::syncfs(handle.as_raw_fd()) };
        if rc != 0 {
            return Err(PublishError::Io {
                path: dir.to_path_buf(),
                source: std::io::Error::last_os_error(),
            });
        }
        Ok(())
    }
    #[cfg(not(target_os = "linux"))]
    {
        // SAFETY: sync takes no arguments and cannot fail.
        unsafe { libc::sync() };
        let _ = dir;
        Ok(())
    }
}
