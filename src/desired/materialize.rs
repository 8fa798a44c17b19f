//! A git tree written out as files, for the tools that read only a
//! directory (helm for a chart in the repo, kustomize for an overlay and
//! the bases it names anywhere in the repo).

use std::path::Path;

use git2::{ObjectType, Repository, Tree};

/// Writes `tree` under `out` (created); symlinks and submodules are left
/// out, so nothing written points outside `out`.
pub fn write_tree(repo: &Repository, tree: &Tree<'_>, out: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(out)?;
    for entry in tree.iter() {
        let Ok(name) = entry.name() else { continue };
        let path = out.join(name);
        match entry.kind() {
            Some(ObjectType::Tree) => {
                let sub = repo.find_tree(entry.id()).map_err(std::io::Error::other)?;
                write_tree(repo, &sub, &path)?;
            }
            Some(ObjectType::Blob) => {
                let blob = repo.find_blob(entry.id()).map_err(std::io::Error::other)?;
                std::fs::write(&path, blob.content())?;
            }
            _ => {}
        }
    }
    Ok(())
}
