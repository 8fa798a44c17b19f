//! Publishers of one destination taking turns, and telling their own
//! leftovers from a dead one's.
//!
//! Several processes publish into one destination: the daemon and the
//! `publish-dags` init container of every Airflow pod that starts, all on
//! one EFS volume. Each change to the destination (staging, naming a
//! revision, pruning and collecting) happens in a turn: `flock` on
//! `<revisions>/.lock`, which Linux's NFS client takes to the server as a
//! whole-file lock, so it holds across hosts on EFS (unless the volume is
//! mounted with `local_lock=flock` or `local_lock=all`). NFS locks of one
//! process never exclude each other, so the threads of a process first
//! take turns on a mutex, one per destination.
//!
//! A staged revision outlives its turn (a plan waits for its apply), so
//! whatever a publisher makes under `.tmp-` carries its token, and the
//! publisher holds `<revisions>/.owners/<token>` locked while it lives. A
//! leftover is removed only when no live publisher owns it.

use std::collections::{HashMap, HashSet};
use std::fs::{self, File, TryLockError};
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock, Mutex, MutexGuard, Weak};

use super::publish::{PublishError, io_err};
use super::trees::TMP_PREFIX;

const LOCK_FILE: &str = ".lock";
const OWNERS: &str = ".owners";

/// What the publishers of one destination in this process share.
struct Shared {
    dir: PathBuf,
    lock: Mutex<File>,
    /// The tokens of this process's live publishers here: an NFS lock test
    /// from the process that holds it succeeds, so it cannot tell them.
    live: Mutex<HashSet<String>>,
}

/// Destinations open in this process, by canonical revisions directory.
static OPEN: LazyLock<Mutex<HashMap<PathBuf, Weak<Shared>>>> = LazyLock::new(Mutex::default);

/// One publisher's place among the destination's publishers.
#[derive(Clone)]
pub(super) struct Turns {
    owner: Arc<Owner>,
}

struct Owner {
    shared: Arc<Shared>,
    token: String,
    path: PathBuf,
    /// Held locked for the publisher's life; closing it frees the lock.
    _file: File,
}

impl Drop for Owner {
    fn drop(&mut self) {
        lock(&self.shared.live).remove(&self.token);
        let _ = fs::remove_file(&self.path);
    }
}

/// A turn: nobody else changes the destination until it is dropped.
pub(super) struct Turn<'a> {
    file: MutexGuard<'a, File>,
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        let _ = self.file.unlock();
    }
}

impl Turns {
    /// Joins the publishers of the destination whose revisions directory
    /// is `revisions`, under a new token.
    pub fn join(revisions: &Path) -> Result<Turns, PublishError> {
        let shared = shared(revisions)?;
        let token = format!("{:016x}", fastrand::u64(..));
        let owners = shared.dir.join(OWNERS);
        fs::create_dir_all(&owners).map_err(io_err(&owners))?;
        let path = owners.join(&token);
        // In a turn: whoever looks for leftovers meanwhile must not find
        // this file before it is locked and take its owner for dead.
        let turn = take(&shared)?;
        let file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(io_err(&path))?;
        file.lock().map_err(|source| lock_err(&path, source))?;
        drop(turn);
        lock(&shared.live).insert(token.clone());
        Ok(Turns {
            owner: Arc::new(Owner {
                shared,
                token,
                path,
                _file: file,
            }),
        })
    }

    /// Waits for this publisher's turn.
    pub fn take(&self) -> Result<Turn<'_>, PublishError> {
        take(&self.owner.shared)
    }

    /// A name for something this publisher makes: `.tmp-<token>-<rest>`.
    pub fn tmp_name(&self, rest: &str) -> String {
        format!("{TMP_PREFIX}{}-{rest}", self.owner.token)
    }

    /// Whether `name` (an entry under `.tmp-`, or `.<link>.tmp-...`) is a
    /// leftover: no live publisher owns it. Asked during a turn, so no
    /// publisher is joining meanwhile.
    pub fn is_leftover(&self, name: &str) -> bool {
        let Some(token) = token_of(name) else {
            return false;
        };
        if lock(&self.owner.shared.live).contains(token) {
            return false;
        }
        !self.owner_lives(token)
    }

    /// Removes the owner files of publishers that are gone, once their
    /// leftovers are. The caller has the turn.
    pub fn forget_the_gone(&self) -> Result<(), PublishError> {
        let owners = self.owner.shared.dir.join(OWNERS);
        for entry in fs::read_dir(&owners).map_err(io_err(&owners))? {
            let entry = entry.map_err(io_err(&owners))?;
            let token = entry.file_name().to_string_lossy().into_owned();
            if !lock(&self.owner.shared.live).contains(&token) && !self.owner_lives(&token) {
                let _ = fs::remove_file(entry.path());
            }
        }
        Ok(())
    }

    /// Whether the publisher `token` (of another process) still holds its
    /// owner file.
    fn owner_lives(&self, token: &str) -> bool {
        let owner = self.owner.shared.dir.join(OWNERS).join(token);
        match fs::OpenOptions::new().read(true).write(true).open(&owner) {
            Err(err) => err.kind() != std::io::ErrorKind::NotFound,
            Ok(file) => match file.try_lock() {
                Ok(()) => false,
                // Alive, or cannot tell: either way, keep what it owns.
                Err(TryLockError::WouldBlock | TryLockError::Error(_)) => true,
            },
        }
    }
}

fn take(shared: &Shared) -> Result<Turn<'_>, PublishError> {
    let file = lock(&shared.lock);
    file.lock()
        .map_err(|source| lock_err(&shared.dir.join(LOCK_FILE), source))?;
    Ok(Turn { file })
}

/// The token in `.tmp-<token>-...` or `.<link>.tmp-<token>-...`. Names an older ferry left (`.tmp-<sha>-<pid>-..`)
/// give a token nobody owns, so they are leftovers, as they were then.
fn token_of(name: &str) -> Option<&str> {
    let at = name.find(TMP_PREFIX)?;
    let rest = &name[at + TMP_PREFIX.len()..];
    let end = rest.find(['-', '.']).unwrap_or(rest.len());
    (end > 0).then(|| &rest[..end])
}

fn shared(revisions: &Path) -> Result<Arc<Shared>, PublishError> {
    let dir = fs::canonicalize(revisions).map_err(io_err(revisions))?;
    let mut open = lock(&OPEN);
    open.retain(|_, shared| shared.strong_count() > 0);
    if let Some(shared) = open.get(&dir).and_then(Weak::upgrade) {
        return Ok(shared);
    }
    let path = dir.join(LOCK_FILE);
    // Read and write: NFS grants an exclusive lock only on a file open
    // for writing.
    let file = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(io_err(&path))?;
    let shared = Arc::new(Shared {
        dir: dir.clone(),
        lock: Mutex::new(file),
        live: Mutex::default(),
    });
    open.insert(dir, Arc::downgrade(&shared));
    Ok(shared)
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

fn lock_err(path: &Path, source: std::io::Error) -> PublishError {
    PublishError::Lock {
        path: path.to_path_buf(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_read_from_every_kind_of_name() {
        assert_eq!(token_of(".tmp-00ab-c0ffee"), Some("00ab"));
        assert_eq!(token_of(".current.tmp-00ab-link"), Some("00ab"));
        assert_eq!(token_of(".tmp-del-c0ffee"), Some("del"));
        assert_eq!(token_of(".tmp-"), None);
        assert_eq!(token_of("c0ffee"), None);
    }

    #[test]
    fn a_live_publisher_owns_its_names_and_a_gone_one_leaves_leftovers() {
        let dir = tempfile::tempdir().unwrap();
        let first = Turns::join(dir.path()).unwrap();
        let second = Turns::join(dir.path()).unwrap();
        let name = first.tmp_name("abc");
        assert!(!second.is_leftover(&name));
        assert!(!second.is_leftover(&format!(".current{name}")));
        let owners = || fs::read_dir(dir.path().join(OWNERS)).unwrap().count();
        assert_eq!(owners(), 2);
        drop(first);
        assert!(second.is_leftover(&name));
        assert!(second.is_leftover(".tmp-del-abc"));
        assert!(!second.is_leftover(&second.tmp_name("x")));
        assert_eq!(
            owners(),
            1,
            "a publisher removes its owner file when it goes"
        );
        let _turn = second.take().unwrap();
    }
}
