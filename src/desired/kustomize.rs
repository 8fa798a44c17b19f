//! Kustomize directories in the manifests tree: a directory holding a
//! `kustomization.yaml` is built with the pinned `kustomize build`, and what
//! it prints stands for the files below it. The commit's whole tree is
//! written out first, since an overlay names bases anywhere in the repo.

use std::path::Path;
use std::process::Command;

use git2::{Oid, Repository};

use super::manifests::{self, Manifest, ManifestError};

/// The names kustomize itself looks for, in its order.
pub const KUSTOMIZATION_FILES: [&str; 3] =
    ["kustomization.yaml", "kustomization.yml", "Kustomization"];

/// Builds each of `dirs` (repo paths) of `commit`; every problem of every
/// directory.
pub fn build_all(
    repo: &Repository,
    commit: Oid,
    dirs: &[String],
    binary: &Path,
) -> Result<Vec<Manifest>, Vec<ManifestError>> {
    if dirs.is_empty() {
        return Ok(Vec::new());
    }
    let fail = |dir: &str, message: String| vec![ManifestError::general(dir, message)];
    let tree = repo
        .find_commit(commit)
        .and_then(|c| c.tree())
        .map_err(|e| {
            fail(
                &dirs[0],
                format!("cannot read commit {commit}: {}", e.message()),
            )
        })?;
    let work = tempfile::tempdir()
        .map_err(|e| fail(&dirs[0], format!("cannot make a work directory: {e}")))?;
    let checkout = work.path().join("repo");
    super::materialize::write_tree(repo, &tree, &checkout)
        .map_err(|e| fail(&dirs[0], format!("cannot write the commit out: {e}")))?;
    let mut out = Vec::new();
    let mut errors = Vec::new();
    for dir in dirs {
        match build(binary, &checkout, dir, work.path()) {
            Ok(text) => match manifests::parse_file(&format!("{dir} (kustomize build)"), &text) {
                Ok(mut m) => out.append(&mut m),
                Err(mut e) => errors.append(&mut e),
            },
            Err(message) => errors.extend(fail(dir, message)),
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

/// Builds `dir` of a checkout on disk (`ferry validate`): its objects, or
/// what is wrong, named as the gate names them.
pub fn build_checkout(
    binary: &Path,
    checkout: &Path,
    dir: &str,
) -> Result<Vec<Manifest>, Vec<ManifestError>> {
    let fail = |message: String| vec![ManifestError::general(dir, message)];
    let work =
        tempfile::tempdir().map_err(|e| fail(format!("cannot make a work directory: {e}")))?;
    let text = build(binary, checkout, dir, work.path()).map_err(fail)?;
    manifests::parse_file(&format!("{dir} (kustomize build)"), &text)
}

fn build(binary: &Path, checkout: &Path, dir: &str, work: &Path) -> Result<String, String> {
    let output = Command::new(binary)
        .arg("build")
        .arg(checkout.join(dir))
        // No plugins or config of the host's.
        .env("HOME", work)
        .env("XDG_CONFIG_HOME", work.join("config"))
        .output()
        .map_err(|e| {
            format!(
                "cannot run `{}`: {e}; ferry builds kustomize directories with the pinned kustomize binary (targets.kubernetes.kustomize.binary)",
                binary.display()
            )
        })?;
    if !output.status.success() {
        // kustomize names paths inside the work directory; the repo's are
        // what a reader knows.
        let prefix = format!("{}/", checkout.display());
        let stderr = String::from_utf8_lossy(&output.stderr).replace(&prefix, "");
        return Err(format!("kustomize build failed: {}", stderr.trim()));
    }
    String::from_utf8(output.stdout).map_err(|_| "kustomize build printed invalid UTF-8".into())
}
