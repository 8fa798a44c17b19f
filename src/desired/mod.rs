//! Desired state: one commit, read once into what it declares for every
//! target its source feeds. This is the gate: any problem in any part (a
//! DAG that does not parse, a bad manifest, a bad platform.yaml) rejects the
//! whole commit before any target sees it. Reads git objects and parses;
//! talks to no live system.

pub mod chart;
pub mod checkout;
pub mod helm;
pub mod kustomize;
pub mod manifests;
mod materialize;
pub mod platform;
pub mod release;
pub mod resolve;
pub mod tools;

use crate::config::ValidationPolicy;
use crate::dags::{PythonChecker, Snapshot, snapshot};
use crate::problem::Problem;
use crate::revision::Revision;
use manifests::{Manifest, ManifestError};
use platform::{Platform, PlatformError};

/// Which parts of a commit the targets fed by one source read.
#[derive(Debug, Clone, Default)]
pub struct Feeds {
    pub dags: Option<DagsFeed>,
    /// The Kubernetes target's manifests directory.
    pub manifests: Option<String>,
    /// Its Helm release files, rendered into more manifests.
    pub releases: Option<ReleasesFeed>,
    /// The kustomize binary that builds kustomization directories of the
    /// manifests tree.
    pub kustomize: Option<std::path::PathBuf>,
    /// The AWS target's declaration file (`platform.yaml`).
    pub platform: Option<String>,
}

#[derive(Debug, Clone)]
pub struct ReleasesFeed {
    pub dir: String,
    pub helm: helm::HelmSettings,
}

#[derive(Debug, Clone)]
pub struct DagsFeed {
    pub subdir: String,
    pub policy: ValidationPolicy,
}

/// Everything one accepted commit declares.
pub struct Desired {
    pub revision: Revision,
    pub dags: Option<DagsDesired>,
    pub manifests: Option<Vec<Manifest>>,
    /// `Some(None)`: the source feeds AWS and the file is absent, which
    /// declares nothing (and changes nothing).
    pub platform: Option<Option<Platform>>,
    /// Why the commit may prune what the prune guard would refuse: the
    /// value of its `Ferry-Allow-Prune:` line, when it has one.
    pub allow_prune: Option<String>,
}

pub struct DagsDesired {
    pub snapshot: Snapshot,
    /// Problems published anyway under the `warn` policy.
    pub warnings: Vec<Problem>,
}

/// A commit the gate refused, with every problem found in every part.
#[derive(Debug, Clone)]
pub struct Rejection {
    pub problems: Vec<Problem>,
}

/// Reads every part of `revision` that `feeds` names. `checker` remembers
/// Python verdicts by blob, so an unchanged file is parsed once per process.
pub fn read(
    revision: &Revision,
    feeds: &Feeds,
    checker: &mut PythonChecker,
) -> Result<Desired, Rejection> {
    let repo = revision.open().map_err(|e| Rejection {
        problems: vec![Problem::new(
            "",
            None,
            format!("cannot open the mirror: {}", e.message()),
        )],
    })?;
    let mut problems = Vec::new();
    let dags = feeds.dags.as_ref().and_then(|feed| {
        let snapshot = match snapshot::read(&repo, revision.commit, &feed.subdir) {
            Ok(s) => s,
            Err(e) => {
                problems.push(Problem::new("", None, e.to_string()));
                return None;
            }
        };
        let found = checker.check(&repo, &snapshot, &feed.subdir);
        if feed.policy == ValidationPolicy::Block {
            problems.extend(found);
            Some(DagsDesired {
                snapshot,
                warnings: Vec::new(),
            })
        } else {
            Some(DagsDesired {
                snapshot,
                warnings: found,
            })
        }
    });
    let manifests = feeds.manifests.as_ref().and_then(|dir| {
        let mut read =
            manifests::read_with(&repo, revision.commit, dir, feeds.kustomize.as_deref());
        if let Some(releases) = &feeds.releases {
            let rendered = helm::render_all(&repo, revision.commit, &releases.dir, &releases.helm);
            read = match (read, rendered) {
                (Ok(mut files), Ok(mut rendered)) => {
                    files.append(&mut rendered);
                    Ok(files)
                }
                (Ok(_), Err(e)) | (Err(e), Ok(_)) => Err(e),
                (Err(mut a), Err(mut b)) => {
                    a.append(&mut b);
                    Err(a)
                }
            };
        }
        read.map_err(|errors| problems.extend(errors.into_iter().map(Problem::from)))
            .ok()
    });
    let platform = feeds.platform.as_ref().and_then(|file| {
        platform::read(&repo, revision.commit, file)
            .map_err(|errors| problems.extend(errors.into_iter().map(Problem::from)))
            .ok()
    });
    if !problems.is_empty() {
        return Err(Rejection { problems });
    }
    let allow_prune = repo
        .find_commit(revision.commit)
        .ok()
        .and_then(|c| allow_prune(&String::from_utf8_lossy(c.message_bytes())));
    Ok(Desired {
        revision: revision.clone(),
        dags,
        manifests,
        platform,
        allow_prune,
    })
}

/// Whether `path` exists at `revision` (cheap: one tree lookup).
pub fn declares(revision: &Revision, path: &str) -> bool {
    revision
        .open()
        .ok()
        .and_then(|repo| {
            let tree = repo.find_commit(revision.commit).ok()?.tree().ok()?;
            tree.get_path(std::path::Path::new(path.trim_matches('/')))
                .ok()
        })
        .is_some()
}

/// The reason a commit message gives on a `Ferry-Allow-Prune: <why>` line
/// (a git trailer; the key is case-insensitive, the reason required).
pub fn allow_prune(message: &str) -> Option<String> {
    message.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        let value = value.trim();
        (key.trim().eq_ignore_ascii_case("ferry-allow-prune") && !value.is_empty())
            .then(|| value.to_string())
    })
}

impl From<ManifestError> for Problem {
    fn from(e: ManifestError) -> Problem {
        let line = (e.origin.line > 0).then_some(e.origin.line);
        Problem {
            // As ManifestError says it: `file:line (document N): message`.
            // A whole-file error (no line) is about no one document.
            document: line.map(|_| e.origin.document),
            ..Problem::new(&e.origin.file, line, e.message)
        }
    }
}

impl From<PlatformError> for Problem {
    fn from(e: PlatformError) -> Problem {
        Problem::new(&e.file, e.line, format!("{}: {}", e.key, e.message))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_prune_allowance_is_a_trailer_with_a_reason() {
        let allow = super::allow_prune;
        assert_eq!(
            allow("Retire JupyterHub\n\nFerry-Allow-Prune: the team moved to SageMaker Studio\n")
                .as_deref(),
            Some("the team moved to SageMaker Studio")
        );
        assert_eq!(
            allow("x\n\nferry-allow-prune:  yes \n").as_deref(),
            Some("yes")
        );
        assert_eq!(allow("x\n\nFerry-Allow-Prune:\n"), None);
        assert_eq!(allow("Prune the old configmaps"), None);
    }
}
