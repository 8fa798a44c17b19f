//! Content-addressed directories shared between revisions: each directory
//! of a revision is stored once, under a key of its path and everything
//! below it, and a revision is its root's key. A one-file change makes new
//! directories only on the changed file's path; each holds its files
//! (hardlinked when unchanged) and its subdirectories as relative symlinks
//! to their stored directories. So a publish writes in proportion to the
//! change, not to the repo: that matters most on EFS, where every
//! directory entry made is a network round trip.
//!
//! The path is part of the key so that no two directories of one revision
//! resolve to one stored directory: Airflow walks DAG folders with
//! `os.walk(followlinks=True)` and refuses a folder in which one resolved
//! directory appears twice.
//!
//! ```text
//! <store>/<key>/            a stored directory, never modified once named
//! <store>/<key>/<file>      regular file (hardlinked across directories)
//! <store>/<key>/<sub>       -> ../<sub's key>
//! <store>/.tmp-*            being written or deleted; removed at start
//! ```
//!
//! A stored directory gets its name only by `rename` of a complete, synced
//! one, after every directory it links to got theirs; so whatever reaches
//! a key reaches a complete tree. Collection marks what the revisions
//! reach and removes the rest, each doomed directory renamed out of its
//! name first.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use git2::{Oid, Repository};
use sha2::{Digest, Sha256};

use super::dirmode;
use super::publish::{PublishError, PublishStats, io_err, sync_tree, write_file};
use super::snapshot::Snapshot;
use super::turns::Turns;

pub(super) const TMP_PREFIX: &str = ".tmp-";

/// Up to this many new files and directories are synced one by one; more
/// (a first publish) with one `syncfs`.
const FSYNC_AT_MOST: usize = 64;

/// Each directory of a snapshot (`""` is the root) and its key.
pub(super) struct Keys {
    by_dir: HashMap<String, String>,
}

impl Keys {
    pub fn of(snapshot: &Snapshot) -> Keys {
        let mut children: HashMap<&str, Vec<&str>> = HashMap::new();
        for dir in &snapshot.dirs {
            children.entry(parent(dir)).or_default().push(dir);
        }
        let mut files: HashMap<&str, Vec<usize>> = HashMap::new();
        for (i, file) in snapshot.files.iter().enumerate() {
            files.entry(parent(&file.path)).or_default().push(i);
        }
        // Deepest first: a directory's key covers its subdirectories' keys.
        let mut order: Vec<&str> = snapshot
            .dirs
            .iter()
            .map(String::as_str)
            .filter(|d| !d.is_empty())
            .collect();
        order.sort_by_key(|d| std::cmp::Reverse(depth(d)));
        order.push("");
        let mut by_dir: HashMap<String, String> = HashMap::with_capacity(order.len());
        for dir in order {
            // (name, kind, id): files by mode and blob, directories by key.
            let mut entries: Vec<(&str, u8, Vec<u8>)> = Vec::new();
            for &i in files.get(dir).into_iter().flatten() {
                let f = &snapshot.files[i];
                let kind = if f.executable { b'x' } else { b'f' };
                entries.push((name(&f.path), kind, f.blob.as_bytes().to_vec()));
            }
            for &sub in children.get(dir).into_iter().flatten() {
                let key = by_dir.get(sub).cloned().unwrap_or_default();
                entries.push((name(sub), b'd', key.into_bytes()));
            }
            entries.sort_unstable();
            let mut hash = Sha256::new();
            hash.update(dir.as_bytes());
            hash.update([0]);
            for (name, kind, id) in &entries {
                hash.update(name.as_bytes());
                hash.update([0, *kind]);
                hash.update(id);
            }
            by_dir.insert(dir.to_string(), hex(&hash.finalize()[..16]));
        }
        Keys { by_dir }
    }

    pub fn root(&self) -> &str {
        self.get("")
    }

    pub fn get(&self, dir: &str) -> &str {
        self.by_dir.get(dir).map(String::as_str).unwrap_or_default()
    }
}

fn parent(path: &str) -> &str {
    path.rsplit_once('/').map_or("", |(p, _)| p)
}

fn name(path: &str) -> &str {
    path.rsplit_once('/').map_or(path, |(_, n)| n)
}

fn depth(dir: &str) -> usize {
    dir.matches('/').count() + usize::from(!dir.is_empty())
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// The live revision a new one is built beside: its directory (followed
/// through its links) and, when it is stored here, its keys.
pub(super) struct Previous<'a> {
    pub dir: PathBuf,
    pub snapshot: &'a Snapshot,
    /// None when the previous revision is not in this store (written by an
    /// older ferry): every directory is then checked, once.
    pub keys: Option<Arc<Keys>>,
}

pub(super) struct Store {
    dir: PathBuf,
    /// `.tmp-<token>-`: what this publisher names its work in progress.
    tmp_prefix: String,
    /// What each stored directory read so far holds. A named directory
    /// never changes, so each is read once per process: reachability and
    /// the bytes kept then cost a read per new directory, not per
    /// directory of every revision (a round trip each on EFS).
    listings: Mutex<HashMap<String, Arc<Listing>>>,
}

/// One stored directory: the keys it links to, and its files as
/// (inode, bytes), so that a file hardlinked into many directories is
/// counted once.
#[derive(Default)]
struct Listing {
    subkeys: Vec<String>,
    files: Vec<(u64, u64)>,
}

impl Store {
    /// Opens `dir`, removing what an interrupted run left half-made. The
    /// caller has the turn.
    pub fn open(dir: &Path, turns: &Turns) -> Result<Store, PublishError> {
        if !dir.is_dir() {
            dirmode::create_dir_readable(dir).map_err(io_err(dir))?;
        }
        for entry in fs::read_dir(dir).map_err(io_err(dir))? {
            let entry = entry.map_err(io_err(dir))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with(TMP_PREFIX) && turns.is_leftover(&name) {
                let path = entry.path();
                tracing::info!(path = %path.display(), "removing leftover of an interrupted publish");
                remove(&path)?;
            }
        }
        Ok(Store {
            dir: dir.to_path_buf(),
            tmp_prefix: turns.tmp_name(""),
            listings: Mutex::default(),
        })
    }

    pub fn path(&self, key: &str) -> PathBuf {
        self.dir.join(key)
    }

    /// Makes every directory of `snapshot` the store lacks. Unchanged files
    /// are hardlinked from `previous`; what cannot be linked is written.
    pub fn build(
        &self,
        repo: &Repository,
        snapshot: &Snapshot,
        keys: &Keys,
        previous: Option<&Previous>,
        stats: &mut PublishStats,
    ) -> Result<(), PublishError> {
        let mut dirs: Vec<&str> = snapshot
            .dirs
            .iter()
            .map(String::as_str)
            .filter(|d| !d.is_empty())
            .collect();
        dirs.push("");
        // A directory the previous revision has by the same key exists with
        // everything below it; only the others are looked at, one `stat` each.
        let missing: Vec<&str> = dirs
            .into_iter()
            .filter(|d| {
                let key = keys.get(d);
                let known = previous
                    .and_then(|p| p.keys.as_ref())
                    .is_some_and(|k| k.get(d) == key);
                !known && !self.path(key).is_dir()
            })
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        let wanted: HashSet<&str> = missing.iter().copied().collect();
        let mut files: HashMap<&str, Vec<usize>> = HashMap::new();
        let mut subdirs: HashMap<&str, Vec<&str>> = HashMap::new();
        for (i, file) in snapshot.files.iter().enumerate() {
            let dir = parent(&file.path);
            if wanted.contains(dir) {
                files.entry(dir).or_default().push(i);
            }
        }
        for dir in &snapshot.dirs {
            if wanted.contains(parent(dir)) {
                subdirs.entry(parent(dir)).or_default().push(dir);
            }
        }
        // The previous revision's files in the directories to make: what
        // can be hardlinked (the whole manifest would cost O(repo)).
        let manifest: HashMap<&str, (Oid, bool)> = previous
            .map(|p| {
                p.snapshot
                    .files
                    .iter()
                    .filter(|f| wanted.contains(parent(&f.path)))
                    .map(|f| (f.path.as_str(), (f.blob, f.executable)))
                    .collect()
            })
            .unwrap_or_default();
        let mut made: Vec<(usize, PathBuf, PathBuf)> = Vec::new();
        let mut written: Vec<PathBuf> = Vec::new();
        let result = (|| {
            for &dir in &missing {
                let key = keys.get(dir);
                let tmp = self.dir.join(format!(
                    "{}{key}-{:08x}",
                    self.tmp_prefix,
                    fastrand::u32(..)
                ));
                dirmode::create_dir_readable(&tmp).map_err(io_err(&tmp))?;
                stats.mutations += 1;
                made.push((depth(dir), tmp.clone(), self.path(key)));
                for &i in files.get(dir).into_iter().flatten() {
                    let file = &snapshot.files[i];
                    let to = tmp.join(name(&file.path));
                    let linked = previous.is_some_and(|p| {
                        manifest.get(file.path.as_str()) == Some(&(file.blob, file.executable))
                            && fs::hard_link(p.dir.join(&file.path), &to).is_ok()
                    });
                    if linked {
                        stats.files_linked += 1;
                    } else {
                        write_file(repo, file, &to, stats)?;
                        written.push(to);
                    }
                    stats.mutations += 1;
                }
                for &sub in subdirs.get(dir).into_iter().flatten() {
                    let to = tmp.join(name(sub));
                    let target = Path::new("..").join(keys.get(sub));
                    std::os::unix::fs::symlink(&target, &to).map_err(io_err(&to))?;
                    stats.mutations += 1;
                }
                // Shared by every revision that has it: nobody may add to it
                // (a validation hook, Python writing bytecode).
                fs::set_permissions(&tmp, fs::Permissions::from_mode(SEALED))
                    .map_err(io_err(&tmp))?;
                stats.mutations += 1;
            }
            // Durable before named, and named deepest first: a name only
            // ever leads to complete directories. The renames need no
            // fsync of their own: a journaling filesystem commits metadata
            // in the order it was made (and NFS makes each rename stable
            // before answering), so once the revision's rename is synced,
            // by the publish, every rename before it is too.
            if written.len() + made.len() > FSYNC_AT_MOST {
                sync_tree(&self.dir)?;
            } else {
                // A few entries: syncing them alone does not wait for
                // whatever else the filesystem has to write (the fetch's
                // objects, other tenants of the volume).
                // One at a time: tried from 8 threads, concurrent fsyncs
                // were 3x slower here (ext4), not batched into one commit.
                for path in written.iter().chain(made.iter().map(|(_, tmp, _)| tmp)) {
                    fs::File::open(path)
                        .and_then(|f| f.sync_all())
                        .map_err(io_err(path))?;
                }
            }
            made.sort_by_key(|(depth, _, _)| std::cmp::Reverse(*depth));
            for (_, tmp, stored) in &made {
                if stored.is_dir() {
                    // Another process on this volume made it meanwhile.
                    remove(tmp)?;
                } else {
                    fs::rename(tmp, stored).map_err(io_err(stored))?;
                    stats.mutations += 1;
                }
            }
            Ok(())
        })();
        if result.is_err() {
            for (_, tmp, _) in &made {
                let _ = remove(tmp);
            }
        }
        result
    }

    /// What the stored directory `key` holds; None when it is not stored.
    fn listing(&self, key: &str) -> Option<Arc<Listing>> {
        use std::os::unix::fs::MetadataExt;
        let cached = self.listings.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(listing) = cached.get(key) {
            return Some(listing.clone());
        }
        drop(cached);
        let mut listing = Listing::default();
        for entry in fs::read_dir(self.path(key)).ok()?.flatten() {
            let Ok(meta) = entry.metadata() else { continue };
            if meta.file_type().is_symlink() {
                if let Ok(target) = fs::read_link(entry.path())
                    && let Some(sub) = key_of(&target)
                {
                    listing.subkeys.push(sub);
                }
            } else if meta.is_file() {
                listing.files.push((meta.ino(), meta.len()));
            }
        }
        let listing = Arc::new(listing);
        self.listings
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key.to_string(), listing.clone());
        Some(listing)
    }

    /// Every key `roots` reach.
    pub fn reachable(&self, roots: impl IntoIterator<Item = String>) -> HashSet<String> {
        let mut seen = HashSet::new();
        let mut stack: Vec<String> = roots.into_iter().collect();
        while let Some(key) = stack.pop() {
            if !seen.insert(key.clone()) {
                continue;
            }
            if let Some(listing) = self.listing(&key) {
                stack.extend(listing.subkeys.iter().cloned());
            }
        }
        seen
    }

    /// The bytes of the files of the stored directories `keys`, each inode
    /// once; `seen` holds the inodes counted already.
    pub fn bytes(&self, keys: &HashSet<String>, seen: &mut HashSet<u64>) -> u64 {
        let mut total = 0;
        for key in keys {
            for &(inode, bytes) in self.listing(key).iter().flat_map(|l| l.files.iter()) {
                if seen.insert(inode) {
                    total += bytes;
                }
            }
        }
        total
    }

    /// Removes every stored directory not in `keep`; returns how many.
    pub fn collect(&self, keep: &HashSet<String>) -> Result<usize, PublishError> {
        let mut removed = 0;
        for entry in fs::read_dir(&self.dir).map_err(io_err(&self.dir))? {
            let entry = entry.map_err(io_err(&self.dir))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with(TMP_PREFIX) || keep.contains(&name) {
                continue;
            }
            let doomed = self.dir.join(format!("{TMP_PREFIX}del-{name}"));
            self.listings
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&name);
            fs::rename(entry.path(), &doomed).map_err(io_err(&doomed))?;
            remove(&doomed)?;
            removed += 1;
        }
        Ok(removed)
    }
}

/// `r-xr-xr-x`: stored directories are read-only once written.
const SEALED: u32 = 0o555;

/// Removes a stored (or half-made) directory, or anything else found in
/// the store: a directory holds only files and symlinks, so opening it for
/// writing again is enough.
fn remove(path: &Path) -> Result<(), PublishError> {
    if fs::symlink_metadata(path).is_ok_and(|m| m.is_dir()) {
        let _ = fs::set_permissions(path, fs::Permissions::from_mode(dirmode::DIR_MODE));
        fs::remove_dir_all(path).map_err(io_err(path))
    } else {
        fs::remove_file(path).map_err(io_err(path))
    }
}

/// The key a revision's symlink (`<store name>/<key>`) names, if any.
pub(super) fn key_of(link_target: &Path) -> Option<String> {
    link_target
        .file_name()
        .and_then(|n| n.to_str())
        .map(str::to_string)
}

/// The previous revision's keys (`known`, when they were computed for its
/// commit already), when its directory is a link into the store to the
/// root they give; else it was written another way.
pub(super) fn stored_keys(
    revision: &Path,
    snapshot: &Snapshot,
    known: Option<Arc<Keys>>,
) -> Option<Arc<Keys>> {
    let target = fs::read_link(revision).ok()?;
    let keys = known.unwrap_or_else(|| Arc::new(Keys::of(snapshot)));
    (key_of(&target)? == keys.root()).then_some(keys)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dags::snapshot::FileEntry;

    fn snapshot(files: &[(&str, u8)]) -> Snapshot {
        let mut dirs = std::collections::BTreeSet::new();
        for (path, _) in files {
            let mut dir = parent(path);
            while !dir.is_empty() {
                dirs.insert(dir.to_string());
                dir = parent(dir);
            }
        }
        Snapshot {
            commit: Oid::ZERO_SHA1,
            dirs: dirs.into_iter().collect(),
            files: files
                .iter()
                .map(|(path, n)| FileEntry {
                    path: path.to_string(),
                    blob: Oid::from_bytes(&[*n; 20]).unwrap(),
                    executable: false,
                })
                .collect(),
            skipped: Vec::new(),
        }
    }

    #[test]
    fn a_change_gives_new_keys_only_on_its_path() {
        let before = Keys::of(&snapshot(&[
            ("a/b/x.py", 1),
            ("a/c/y.py", 2),
            ("d/z.py", 3),
        ]));
        let after = Keys::of(&snapshot(&[
            ("a/b/x.py", 9),
            ("a/c/y.py", 2),
            ("d/z.py", 3),
        ]));
        for dir in ["", "a", "a/b"] {
            assert_ne!(before.get(dir), after.get(dir), "{dir}");
        }
        for dir in ["a/c", "d"] {
            assert_eq!(before.get(dir), after.get(dir), "{dir}");
        }
    }

    #[test]
    fn identical_directories_at_two_paths_are_two_directories() {
        let keys = Keys::of(&snapshot(&[("red/sub/etl.py", 1), ("blue/sub/etl.py", 1)]));
        assert_ne!(keys.get("red/sub"), keys.get("blue/sub"));
        assert_ne!(keys.get("red"), keys.get("blue"));
        // A file's mode is part of its directory's content.
        let mut exec = snapshot(&[("red/sub/etl.py", 1), ("blue/sub/etl.py", 1)]);
        exec.files[0].executable = true;
        assert_ne!(Keys::of(&exec).get("red/sub"), keys.get("red/sub"));
    }
}
