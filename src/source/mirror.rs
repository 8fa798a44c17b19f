//! The bare mirror on disk: opened, checked and, when damaged, replaced.
//!
//! The cache is disposable, so the rule is simple: a mirror ferry cannot
//! trust is moved aside (one `rename`, atomic) and the next fetch starts
//! afresh. Every step that removes a mirror goes through that rename first,
//! so a process killed at any instant leaves either the whole old mirror or
//! none at all under the mirror's name, never refs without their objects.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use git2::{ObjectType, Oid, Repository, TreeWalkMode, TreeWalkResult};

/// Why a mirror cannot be used as it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Damage(pub String);

impl std::fmt::Display for Damage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Suffix of mirrors set aside for deletion; removed at the next open.
const TRASH: &str = ".trash-";

/// Checks that what the mirror's refs promise is there: every ref under
/// `refs/ferry/` names a readable commit whose parents are present or
/// recorded as shallow roots, and whose whole tree (subtrees and blobs) is in
/// the object database; and that the `shallow` file names only object ids.
pub fn check(repo: &Repository) -> Result<(), Damage> {
    let shallow = shallow_roots(repo)?;
    let refs = repo
        .references_glob("refs/ferry/*")
        .map_err(|e| Damage(format!("cannot list refs: {}", e.message())))?;
    let odb = repo
        .odb()
        .map_err(|e| Damage(format!("cannot open the object database: {}", e.message())))?;
    let mut checked_trees = HashSet::new();
    for reference in refs {
        let reference =
            reference.map_err(|e| Damage(format!("unreadable ref: {}", e.message())))?;
        let name = reference.name().unwrap_or("(non-UTF-8 ref)").to_string();
        let oid = reference
            .target()
            .ok_or_else(|| Damage(format!("{name} is not a direct ref")))?;
        let commit = repo.find_commit(oid).map_err(|e| {
            Damage(format!(
                "{name} names {oid}, which is missing: {}",
                e.message()
            ))
        })?;
        for parent in commit.parent_ids() {
            if !shallow.contains(&oid) && !odb.exists(parent) {
                return Err(Damage(format!(
                    "{name}: parent {parent} of {oid} is missing and not a shallow root"
                )));
            }
        }
        let tree = commit
            .tree()
            .map_err(|e| Damage(format!("{name}: tree of {oid} is missing: {}", e.message())))?;
        if !checked_trees.insert(tree.id()) {
            continue;
        }
        let mut missing = None;
        tree.walk(TreeWalkMode::PreOrder, |dir, entry| {
            let present = match entry.kind() {
                Some(ObjectType::Tree) => repo.find_tree(entry.id()).is_ok(),
                Some(ObjectType::Blob) => odb.exists(entry.id()),
                // Submodule links (commits) are not in this repository.
                _ => true,
            };
            if present {
                TreeWalkResult::Ok
            } else {
                missing = Some(format!("{dir}{}", entry.name().unwrap_or("?")));
                TreeWalkResult::Abort
            }
        })
        .ok();
        if let Some(path) = missing {
            return Err(Damage(format!(
                "{name}: object for `{path}` in {oid} is missing"
            )));
        }
    }
    Ok(())
}

fn shallow_roots(repo: &Repository) -> Result<HashSet<Oid>, Damage> {
    let path = repo.path().join("shallow");
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(HashSet::new()),
        Err(e) => return Err(Damage(format!("cannot read {}: {e}", path.display()))),
    };
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            Oid::from_str(l.trim())
                .map_err(|_| Damage(format!("{} has a malformed line `{l}`", path.display())))
        })
        .collect()
}

/// Moves `mirror` aside and deletes it. After the rename the mirror's name is
/// free, so a kill during the (slow) deletion leaves only trash behind.
pub fn discard(mirror: &Path) -> std::io::Result<()> {
    let trash = trash_path(mirror);
    match std::fs::rename(mirror, &trash) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    }
    std::fs::remove_dir_all(&trash)
}

fn trash_path(mirror: &Path) -> PathBuf {
    let mut name = mirror.file_name().unwrap_or_default().to_os_string();
    name.push(format!(
        "{TRASH}{}-{:08x}",
        std::process::id(),
        fastrand::u32(..)
    ));
    mirror.with_file_name(name)
}

/// Deletes what earlier processes set aside and were killed before deleting.
pub fn remove_trash(mirror: &Path) {
    let (Some(parent), Some(name)) = (mirror.parent(), mirror.file_name()) else {
        return;
    };
    let prefix = format!("{}{TRASH}", name.to_string_lossy());
    let Ok(entries) = std::fs::read_dir(parent) else {
        return;
    };
    for entry in entries.flatten() {
        if entry.file_name().to_string_lossy().starts_with(&prefix) {
            tracing::info!(path = %entry.path().display(), "removing a mirror set aside by an interrupted run");
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// A process killed mid-fetch leaves `*.lock` files that make every later
/// fetch fail. The mirror belongs to this agent alone (one per cache dir), so
/// at the first open in this process any lock is stale.
pub fn remove_stale_locks(mirror: &Path) {
    fn walk(dir: &Path, depth: usize) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
            if is_dir && depth < 8 && entry.file_name() != "objects" {
                walk(&path, depth + 1);
            } else if path.extension().is_some_and(|e| e == "lock") {
                tracing::info!(path = %path.display(), "removing stale git lock file");
                let _ = std::fs::remove_file(&path);
            }
        }
    }
    walk(mirror, 0);
    remove_temp_packs(mirror);
}

/// Half-written packs of a killed or failed fetch are unreferenced temp
/// files (`objects/pack/tmp_*`).
pub fn remove_temp_packs(mirror: &Path) {
    if let Ok(entries) = std::fs::read_dir(mirror.join("objects").join("pack")) {
        for entry in entries.flatten() {
            let name = entry.file_name();
            if name.to_string_lossy().starts_with("tmp_") {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
}

/// Pack files in the mirror: every fetch adds one.
pub fn pack_count(mirror: &Path) -> usize {
    std::fs::read_dir(mirror.join("objects").join("pack"))
        .map(|entries| {
            entries
                .flatten()
                .filter(|e| e.path().extension().is_some_and(|x| x == "pack"))
                .count()
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn commit(repo: &Repository, files: &[(&str, &str)], parent: Option<Oid>) -> Oid {
        let mut builder = repo.treebuilder(None).unwrap();
        for (name, body) in files {
            let blob = repo.blob(body.as_bytes()).unwrap();
            builder.insert(name, blob, 0o100644).unwrap();
        }
        let tree = repo.find_tree(builder.write().unwrap()).unwrap();
        let sig = git2::Signature::now("t", "t@example.com").unwrap();
        let parents: Vec<_> = parent
            .map(|p| repo.find_commit(p).unwrap())
            .into_iter()
            .collect();
        let parents: Vec<&git2::Commit> = parents.iter().collect();
        let oid = repo.commit(None, &sig, &sig, "m", &tree, &parents).unwrap();
        repo.reference("refs/ferry/heads/main", oid, true, "t")
            .unwrap();
        oid
    }

    fn loose_path(repo: &Repository, oid: Oid) -> PathBuf {
        let hex = oid.to_string();
        repo.path().join("objects").join(&hex[..2]).join(&hex[2..])
    }

    #[test]
    fn a_whole_mirror_passes() {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repository::init_bare(dir.path()).unwrap();
        let first = commit(&repo, &[("a.py", "A = 1\n")], None);
        commit(&repo, &[("a.py", "A = 2\n")], Some(first));
        assert_eq!(check(&repo), Ok(()));
    }

    #[test]
    fn each_kind_of_missing_object_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repository::init_bare(dir.path()).unwrap();
        let first = commit(&repo, &[("a.py", "A = 1\n")], None);
        let head = commit(&repo, &[("b.py", "B = 1\n")], Some(first));
        // A fresh handle per check: libgit2 caches objects it has read.
        let check = |repo: &Repository| check(&Repository::open_bare(repo.path()).unwrap());

        // A parent gone (what a half-deleted shallow mirror looks like)...
        std::fs::remove_file(loose_path(&repo, first)).unwrap();
        let damage = check(&repo).unwrap_err().0;
        assert!(
            damage.contains("is missing and not a shallow root"),
            "{damage}"
        );
        // ...is fine once the shallow file records the head as a root.
        std::fs::write(repo.path().join("shallow"), format!("{head}\n")).unwrap();
        assert_eq!(check(&repo), Ok(()));

        // A blob gone.
        let blob = repo
            .find_commit(head)
            .unwrap()
            .tree()
            .unwrap()
            .get(0)
            .unwrap()
            .id();
        std::fs::remove_file(loose_path(&repo, blob)).unwrap();
        let damage = check(&repo).unwrap_err().0;
        assert!(damage.contains("`b.py`"), "{damage}");

        // The commit itself gone: the ref names nothing.
        std::fs::remove_file(loose_path(&repo, head)).unwrap();
        let damage = check(&repo).unwrap_err().0;
        assert!(damage.contains("refs/ferry/heads/main names"), "{damage}");

        // A garbled shallow file.
        std::fs::write(repo.path().join("shallow"), "not-an-id\n").unwrap();
        let damage = check(&repo).unwrap_err().0;
        assert!(damage.contains("malformed line"), "{damage}");
    }

    #[test]
    fn discard_leaves_the_name_free_and_trash_is_removed_later() {
        let dir = tempfile::tempdir().unwrap();
        let mirror = dir.path().join("dags.git");
        Repository::init_bare(&mirror).unwrap();
        // What a kill between the rename and the deletion leaves.
        let trash = trash_path(&mirror);
        std::fs::rename(&mirror, &trash).unwrap();
        assert!(!mirror.exists());
        remove_trash(&mirror);
        assert!(!trash.exists());
        // And an undisturbed discard.
        Repository::init_bare(&mirror).unwrap();
        discard(&mirror).unwrap();
        assert!(!mirror.exists());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        discard(&mirror).unwrap();
    }
}
