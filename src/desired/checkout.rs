//! `ferry validate`: a platform repo's working tree checked offline, the
//! way the gate checks a commit's manifests, kustomizations, Helm releases
//! and platform.yaml, for CI on every pull request.

use std::path::{Path, PathBuf};

use crate::problem::Problem;

#[derive(Debug, thiserror::Error)]
pub enum CheckoutError {
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot snapshot the checkout to render its releases: {0}")]
    Snapshot(String),
}

/// What a checkout declares, and every problem in it.
#[derive(Debug)]
pub struct CheckoutReport {
    pub objects: usize,
    pub files: usize,
    /// Kustomization directories built.
    pub kustomizations: usize,
    /// Helm release files rendered.
    pub releases: usize,
    /// What platform.yaml declares, in words (`absent` when it is).
    pub platform: String,
    pub problems: Vec<Problem>,
}

/// What validating renders with: no cluster is asked, so the Kubernetes
/// version charts render for is given.
#[derive(Debug, Clone)]
pub struct RenderTools {
    pub helm: PathBuf,
    pub kustomize: PathBuf,
    pub kube_version: Option<String>,
    pub cache_dir: PathBuf,
}

/// Parses every `*.yaml`/`*.yml` under `dir/manifests` (a directory holding
/// a kustomization is built instead), renders every release under
/// `dir/releases`, and parses `dir/platform`.
pub fn validate(
    dir: &Path,
    manifests: &str,
    platform: &str,
    releases: &str,
    tools: &RenderTools,
) -> Result<CheckoutReport, CheckoutError> {
    let read_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| CheckoutError::Read { path, source }
    };
    let mut report = CheckoutReport {
        objects: 0,
        files: 0,
        kustomizations: 0,
        releases: 0,
        platform: "absent".to_string(),
        problems: Vec::new(),
    };
    let mut pending = vec![dir.join(manifests)];
    let mut files = Vec::new();
    let mut kustomizations = Vec::new();
    while let Some(d) = pending.pop() {
        if super::kustomize::KUSTOMIZATION_FILES
            .iter()
            .any(|k| d.join(k).is_file())
        {
            kustomizations.push(d);
            continue;
        }
        for entry in std::fs::read_dir(&d).map_err(read_err(&d))? {
            let path = entry.map_err(read_err(&d))?.path();
            if path.is_dir() {
                pending.push(path);
            } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
                files.push(path);
            }
        }
    }
    files.sort();
    kustomizations.sort();
    let relative = |path: &Path| path.strip_prefix(dir).unwrap_or(path).display().to_string();
    report.files = files.len();
    for path in &files {
        let rel = relative(path);
        let bytes = std::fs::read(path).map_err(read_err(path))?;
        let Ok(text) = std::str::from_utf8(&bytes) else {
            report.problems.push(Problem::new(
                &rel,
                crate::yaml::utf8_error_line(&bytes),
                crate::yaml::NOT_UTF8.into(),
            ));
            continue;
        };
        count(&mut report, super::manifests::parse_file(&rel, text));
    }
    report.kustomizations = kustomizations.len();
    for k in &kustomizations {
        let built = super::kustomize::build_checkout(&tools.kustomize, dir, &relative(k));
        count(&mut report, built);
    }
    if dir.join(releases).is_dir() {
        let (_scratch, repo, commit) = snapshot(dir)?;
        report.releases = std::fs::read_dir(dir.join(releases))
            .map_err(read_err(&dir.join(releases)))?
            .filter_map(Result::ok)
            .filter(|e| {
                e.path()
                    .extension()
                    .is_some_and(|x| x == "yaml" || x == "yml")
            })
            .count();
        if report.releases > 0 && tools.kube_version.is_none() {
            report.problems.push(Problem::new(
                releases,
                None,
                "releases are rendered for a Kubernetes version, and validating asks no cluster: give the cluster's with --kube-version (e.g. 1.33)".into(),
            ));
        } else {
            let settings = super::helm::HelmSettings {
                binary: tools.helm.clone(),
                cache_dir: tools.cache_dir.clone(),
                kube_version: tools.kube_version.clone(),
                api_versions: Vec::new(),
                plain_http_registries: Vec::new(),
                logins: Vec::new(),
            };
            count(
                &mut report,
                super::helm::render_all(&repo, commit, releases, &settings),
            );
        }
    }
    let platform_path = dir.join(platform);
    if platform_path.exists() {
        let text = std::fs::read_to_string(&platform_path).map_err(read_err(&platform_path))?;
        let read_file = |path: &str| -> Result<Option<Vec<u8>>, String> {
            match std::fs::read(dir.join(path)) {
                Ok(bytes) => Ok(Some(bytes)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(e.to_string()),
            }
        };
        let parsed = super::platform::parse(platform, &text).and_then(|mut p| {
            super::platform::load_smoke_payloads(&mut p, platform, &text, &read_file).map(|()| p)
        });
        match parsed {
            Ok(p) => {
                report.platform = format!(
                    "{} nodegroup(s), {} addon(s), {} endpoint(s)",
                    p.eks.as_ref().map_or(0, |e| e.nodegroups.len()),
                    p.eks.as_ref().map_or(0, |e| e.addons.len()),
                    p.sagemaker.as_ref().map_or(0, |s| s.endpoints.len())
                )
            }
            Err(errors) => report
                .problems
                .extend(errors.into_iter().map(Problem::from)),
        }
    }
    Ok(report)
}

fn count(
    report: &mut CheckoutReport,
    read: Result<Vec<super::manifests::Manifest>, Vec<super::manifests::ManifestError>>,
) {
    match read {
        Ok(found) => report.objects += found.len(),
        Err(errors) => report
            .problems
            .extend(errors.into_iter().map(Problem::from)),
    }
}

/// The checkout as a commit of a scratch repository (without `.git`), so
/// releases render from exactly what the gate would read: chart paths and
/// values files as git objects.
fn snapshot(dir: &Path) -> Result<(tempfile::TempDir, git2::Repository, git2::Oid), CheckoutError> {
    let fail = |e: git2::Error| CheckoutError::Snapshot(e.message().to_string());
    let scratch = tempfile::tempdir().map_err(|e| CheckoutError::Snapshot(e.to_string()))?;
    let repo = git2::Repository::init_bare(scratch.path()).map_err(fail)?;
    let tree = write_tree(&repo, dir)?;
    let signature =
        git2::Signature::now("ferry validate", "validate@ferry.invalid").map_err(fail)?;
    let tree = repo.find_tree(tree).map_err(fail)?;
    let commit = repo
        .commit(None, &signature, &signature, "checkout", &tree, &[])
        .map_err(fail)?;
    drop(tree);
    Ok((scratch, repo, commit))
}

fn write_tree(repo: &git2::Repository, dir: &Path) -> Result<git2::Oid, CheckoutError> {
    let fail = |e: git2::Error| CheckoutError::Snapshot(e.message().to_string());
    let read_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| CheckoutError::Read { path, source }
    };
    let mut builder = repo.treebuilder(None).map_err(fail)?;
    for entry in std::fs::read_dir(dir).map_err(read_err(dir))? {
        let entry = entry.map_err(read_err(dir))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if name == ".git" {
            continue;
        }
        let kind = entry.file_type().map_err(read_err(&entry.path()))?;
        if kind.is_dir() {
            let sub = write_tree(repo, &entry.path())?;
            builder.insert(name, sub, 0o040000).map_err(fail)?;
        } else if kind.is_file() {
            let bytes = std::fs::read(entry.path()).map_err(read_err(&entry.path()))?;
            let blob = repo.blob(&bytes).map_err(fail)?;
            builder.insert(name, blob, 0o100644).map_err(fail)?;
        }
    }
    builder.write().map_err(fail)
}
