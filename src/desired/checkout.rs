//! `ferry validate`: a platform repo's working tree checked offline, the
//! way the gate checks a commit's manifests and platform.yaml, for CI on
//! every pull request.

use std::path::{Path, PathBuf};

use crate::problem::Problem;

#[derive(Debug, thiserror::Error)]
#[error("cannot read {}: {source}", path.display())]
pub struct CheckoutError {
    path: PathBuf,
    source: std::io::Error,
}

/// What a checkout declares, and every problem in it.
#[derive(Debug)]
pub struct CheckoutReport {
    pub objects: usize,
    pub files: usize,
    /// What platform.yaml declares, in words (`absent` when it is).
    pub platform: String,
    pub problems: Vec<Problem>,
}

/// Parses every `*.yaml`/`*.yml` under `dir/manifests` and `dir/platform`.
pub fn validate(
    dir: &Path,
    manifests: &str,
    platform: &str,
) -> Result<CheckoutReport, CheckoutError> {
    let read_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| CheckoutError { path, source }
    };
    let mut report = CheckoutReport {
        objects: 0,
        files: 0,
        platform: "absent".to_string(),
        problems: Vec::new(),
    };
    let mut pending = vec![dir.join(manifests)];
    let mut files = Vec::new();
    while let Some(d) = pending.pop() {
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
    report.files = files.len();
    for path in &files {
        let rel = path.strip_prefix(dir).unwrap_or(path).display().to_string();
        let bytes = std::fs::read(path).map_err(read_err(path))?;
        let Ok(text) = std::str::from_utf8(&bytes) else {
            report.problems.push(Problem::new(
                &rel,
                crate::yaml::utf8_error_line(&bytes),
                crate::yaml::NOT_UTF8.into(),
            ));
            continue;
        };
        match super::manifests::parse_file(&rel, text) {
            Ok(found) => report.objects += found.len(),
            Err(errors) => report
                .problems
                .extend(errors.into_iter().map(Problem::from)),
        }
    }
    let platform_path = dir.join(platform);
    if platform_path.exists() {
        let text = std::fs::read_to_string(&platform_path).map_err(read_err(&platform_path))?;
        match super::platform::parse(platform, &text) {
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
