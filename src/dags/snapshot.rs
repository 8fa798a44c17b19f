//! The files of one commit's DAGs subdir, as ferry will publish them.
//!
//! Only regular files, directories and exec bits survive. A symlink is
//! replaced by what it points at, provided that stays inside the subdir;
//! one that escapes (or dangles, or loops) is refused, because Airflow would
//! otherwise read files ferry never validated. Submodules are skipped.

use git2::{ObjectType, Oid, Repository, Tree};

const MODE_EXEC: i32 = 0o100755;
const MODE_LINK: i32 = 0o120000;
const MODE_SUBMODULE: i32 = 0o160000;
const MAX_LINK_HOPS: usize = 16;
const MAX_DEPTH: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileEntry {
    /// `/`-separated path relative to the subdir.
    pub path: String,
    pub blob: Oid,
    pub executable: bool,
}

#[derive(Debug, Clone)]
pub struct Snapshot {
    pub commit: Oid,
    /// Directories, parents before children.
    pub dirs: Vec<String>,
    pub files: Vec<FileEntry>,
    /// Paths skipped (submodules), for the report.
    pub skipped: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("commit {commit}: directory `{subdir}` does not exist in the repository")]
    SubdirMissing { commit: Oid, subdir: String },
    #[error(
        "{path}: symlink to `{target}` resolves outside `{subdir}`; ferry publishes only files inside it (replace the link with the file, or move the target inside)"
    )]
    SymlinkEscapes {
        path: String,
        target: String,
        subdir: String,
    },
    #[error("{path}: symlink to `{target}` points at nothing in this commit")]
    SymlinkDangling { path: String, target: String },
    #[error("{path}: symlink loop or directory nested deeper than {MAX_DEPTH} levels")]
    SymlinkLoop { path: String },
    #[error("reading commit {commit}: {detail}")]
    Git { commit: Oid, detail: String },
}

/// Reads `subdir` ("" for the whole repo) of `commit`.
pub fn read(repo: &Repository, commit: Oid, subdir: &str) -> Result<Snapshot, SnapshotError> {
    let git_err = |e: git2::Error| SnapshotError::Git {
        commit,
        detail: e.message().to_string(),
    };
    let root_tree = repo
        .find_commit(commit)
        .and_then(|c| c.tree())
        .map_err(git_err)?;
    let subdir = subdir.trim_matches('/');
    let subdir = if subdir == "." { "" } else { subdir };
    let tree = if subdir.is_empty() {
        root_tree
    } else {
        let entry = root_tree
            .get_path(std::path::Path::new(subdir))
            .map_err(|_| SnapshotError::SubdirMissing {
                commit,
                subdir: subdir.to_string(),
            })?;
        if entry.kind() != Some(ObjectType::Tree) {
            return Err(SnapshotError::SubdirMissing {
                commit,
                subdir: subdir.to_string(),
            });
        }
        repo.find_tree(entry.id()).map_err(git_err)?
    };
    let mut walker = Walker {
        repo,
        root: &tree,
        subdir,
        commit,
        snapshot: Snapshot {
            commit,
            dirs: Vec::new(),
            files: Vec::new(),
            skipped: Vec::new(),
        },
    };
    walker.walk(&tree, "", 0)?;
    Ok(walker.snapshot)
}

struct Walker<'a> {
    repo: &'a Repository,
    root: &'a Tree<'a>,
    subdir: &'a str,
    commit: Oid,
    snapshot: Snapshot,
}

impl Walker<'_> {
    fn walk(&mut self, tree: &Tree<'_>, prefix: &str, depth: usize) -> Result<(), SnapshotError> {
        if depth > MAX_DEPTH {
            return Err(SnapshotError::SymlinkLoop {
                path: prefix.to_string(),
            });
        }
        for entry in tree.iter() {
            let name = String::from_utf8_lossy(entry.name_bytes()).into_owned();
            let path = join(prefix, &name);
            match entry.filemode() {
                MODE_SUBMODULE => self.snapshot.skipped.push(path),
                MODE_LINK => self.materialize_link(&path, entry.id(), depth)?,
                _ if entry.kind() == Some(ObjectType::Tree) => {
                    let sub = self
                        .repo
                        .find_tree(entry.id())
                        .map_err(|e| self.git_err(e))?;
                    self.snapshot.dirs.push(path.clone());
                    self.walk(&sub, &path, depth + 1)?;
                }
                mode => self.snapshot.files.push(FileEntry {
                    path,
                    blob: entry.id(),
                    executable: mode == MODE_EXEC,
                }),
            }
        }
        Ok(())
    }

    fn materialize_link(
        &mut self,
        path: &str,
        blob: Oid,
        depth: usize,
    ) -> Result<(), SnapshotError> {
        let mut link_path = path.to_string();
        let mut link_blob = blob;
        for _ in 0..MAX_LINK_HOPS {
            let target = self.link_target(link_blob)?;
            let resolved =
                resolve(&link_path, &target).ok_or_else(|| SnapshotError::SymlinkEscapes {
                    path: self.repo_path(path),
                    target: target.clone(),
                    subdir: if self.subdir.is_empty() {
                        ".".into()
                    } else {
                        self.subdir.to_string()
                    },
                })?;
            let entry = if resolved.is_empty() {
                None
            } else {
                self.root.get_path(std::path::Path::new(&resolved)).ok()
            };
            let Some(entry) = entry else {
                if resolved.is_empty() {
                    // A link to the subdir root always loops back into itself.
                    return Err(SnapshotError::SymlinkLoop {
                        path: self.repo_path(path),
                    });
                }
                return Err(SnapshotError::SymlinkDangling {
                    path: self.repo_path(path),
                    target,
                });
            };
            match entry.filemode() {
                MODE_LINK => {
                    link_path = resolved;
                    link_blob = entry.id();
                }
                MODE_SUBMODULE => {
                    self.snapshot.skipped.push(path.to_string());
                    return Ok(());
                }
                _ if entry.kind() == Some(ObjectType::Tree) => {
                    if path == resolved || path.starts_with(&format!("{resolved}/")) {
                        return Err(SnapshotError::SymlinkLoop {
                            path: self.repo_path(path),
                        });
                    }
                    let sub = self
                        .repo
                        .find_tree(entry.id())
                        .map_err(|e| self.git_err(e))?;
                    self.snapshot.dirs.push(path.to_string());
                    return self.walk(&sub, path, depth + 1);
                }
                mode => {
                    self.snapshot.files.push(FileEntry {
                        path: path.to_string(),
                        blob: entry.id(),
                        executable: mode == MODE_EXEC,
                    });
                    return Ok(());
                }
            }
        }
        Err(SnapshotError::SymlinkLoop {
            path: self.repo_path(path),
        })
    }

    fn link_target(&self, blob: Oid) -> Result<String, SnapshotError> {
        let blob = self.repo.find_blob(blob).map_err(|e| self.git_err(e))?;
        Ok(String::from_utf8_lossy(blob.content()).into_owned())
    }

    fn repo_path(&self, path: &str) -> String {
        join(self.subdir, path)
    }

    fn git_err(&self, e: git2::Error) -> SnapshotError {
        SnapshotError::Git {
            commit: self.commit,
            detail: e.message().to_string(),
        }
    }
}

fn join(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_string()
    } else {
        format!("{prefix}/{name}")
    }
}

/// Resolves a link target relative to the link's directory, within the
/// subdir root. `None` when it is absolute or climbs out of the root.
fn resolve(link_path: &str, target: &str) -> Option<String> {
    if target.starts_with('/') {
        return None;
    }
    let mut parts: Vec<&str> = link_path.split('/').collect();
    parts.pop();
    for component in target.split('/') {
        match component {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            other => parts.push(other),
        }
    }
    Some(parts.join("/"))
}

#[cfg(test)]
mod tests {
    use super::resolve;

    #[test]
    fn link_resolution_stays_inside_the_root() {
        assert_eq!(resolve("a/b.py", "c.py").as_deref(), Some("a/c.py"));
        assert_eq!(resolve("a/b.py", "../c.py").as_deref(), Some("c.py"));
        assert_eq!(resolve("b.py", "../c.py"), None);
        assert_eq!(resolve("a/b.py", "../../c.py"), None);
        assert_eq!(resolve("a/b.py", "/etc/passwd"), None);
        assert_eq!(resolve("a/b", "./x/../y").as_deref(), Some("a/y"));
    }
}
