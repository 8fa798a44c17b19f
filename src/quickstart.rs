//! `ferry quickstart`: the whole loop on one machine, no cloud account.
//!
//! Creates a working directory with two local bare repos seeded from the
//! bundled templates (`dags-repo-template/`, `platform-repo-template/`),
//! writes a `ferry.yaml` that publishes the DAGs into `<dir>/airflow/dags`
//! and, given a kubeconfig, applies the platform's manifests; returns that
//! config for the agent to run.

use std::path::{Path, PathBuf};

use anyhow::Context;
use git2::{Oid, Repository, Signature};
use include_dir::{Dir, include_dir};

use crate::config::Config;

static DAGS_TEMPLATE: Dir<'static> = include_dir!("$CARGO_MANIFEST_DIR/dags-repo-template");
static PLATFORM_TEMPLATE: Dir<'static> = include_dir!("$CARGO_MANIFEST_DIR/platform-repo-template");

pub struct Layout {
    pub dir: PathBuf,
    pub config_path: PathBuf,
    pub dags_repo: PathBuf,
    pub platform_repo: PathBuf,
    pub dags_dest: PathBuf,
    /// Stands in for Secrets Manager: the platform's Secret values.
    pub secrets_dir: PathBuf,
    pub link: String,
}

impl Layout {
    pub fn new(dir: &Path) -> Layout {
        Layout {
            dir: dir.to_path_buf(),
            config_path: dir.join("ferry.yaml"),
            dags_repo: dir.join("repos").join("dags.git"),
            platform_repo: dir.join("repos").join("platform.git"),
            dags_dest: dir.join("airflow").join("dags"),
            secrets_dir: dir.join("secrets"),
            link: "current".into(),
        }
    }

    /// The path to give Airflow as `[core] dags_folder`.
    pub fn dags_folder(&self) -> PathBuf {
        self.dags_dest.join(&self.link)
    }
}

/// Prepares the directory (idempotent: an existing repo is kept, so edits
/// pushed to it survive a second run) and returns the loaded config.
pub fn prepare(
    layout: &Layout,
    listen: std::net::SocketAddr,
    kubeconfig: Option<&Path>,
) -> anyhow::Result<(Config, bool)> {
    std::fs::create_dir_all(&layout.dir)
        .with_context(|| format!("cannot create {}", layout.dir.display()))?;
    let dir = layout
        .dir
        .canonicalize()
        .with_context(|| format!("cannot resolve {}", layout.dir.display()))?;
    let layout = Layout::new(&dir);
    let seeded = if layout.dags_repo.exists() {
        false
    } else {
        seed_repo(
            &layout.dags_repo,
            &DAGS_TEMPLATE,
            "Seed from ferry's dags-repo-template",
        )?;
        true
    };
    if !layout.platform_repo.exists() {
        seed_repo(
            &layout.platform_repo,
            &PLATFORM_TEMPLATE,
            "Seed from ferry's platform-repo-template",
        )?;
    }
    // With a cluster, its manifests are applied (without waiting for the
    // workloads: their images, secrets and volumes are the real platform's).
    // Without one the platform repo has no target, so it is no source
    // either: a source that "succeeds" while feeding nothing would mislead.
    if kubeconfig.is_some() {
        seed_secrets(&layout)?;
    }
    let (platform_source, kubernetes) = match kubeconfig {
        Some(kc) => (
            format!(
                "  - name: platform\n    url: {}\n    branch: main\n    interval: 10s\n    max_backoff: 30s\n",
                yaml_str(&layout.platform_repo)
            ),
            format!(
                "  kubernetes:\n    source: platform\n    default_namespace: default\n    \
                 allowed_namespaces: [default, airflow, mlflow, jupyterhub, monitoring, platform-db]\n    \
                 health_timeout: 0s\n    kubeconfig: {}\n    \
                 secrets_manager:\n      directory: {}\n",
                yaml_str(
                    &kc.canonicalize()
                        .with_context(|| format!("kubeconfig {}", kc.display()))?
                ),
                yaml_str(&layout.secrets_dir)
            ),
        ),
        None => (String::new(), String::new()),
    };
    let config = format!(
        "# Written by `ferry quickstart`; run it yourself with `ferry run --config {config}`.\n\
         cache_dir: {cache}\n\
         server:\n  listen: {listen}\n\
         sources:\n  - name: dags\n    url: {repo}\n    branch: main\n    interval: 10s\n    max_backoff: 30s\n\
         {platform_source}\
         targets:\n  dags:\n    source: dags\n    subdir: dags\n    destination: {dest}\n    link: {link}\n    \
         retention:\n      keep: 5\n      max_age: 10m\n{kubernetes}",
        config = layout.config_path.display(),
        cache = yaml_str(&dir.join("cache")),
        repo = yaml_str(&layout.dags_repo),
        dest = yaml_str(&layout.dags_dest),
        link = layout.link,
    );
    std::fs::write(&layout.config_path, config)
        .with_context(|| format!("cannot write {}", layout.config_path.display()))?;
    let config = Config::load(&layout.config_path)?;
    Ok((config, seeded))
}

/// What the platform repo's main branch declares, one line per object,
/// read offline: a listing, not a plan (there is no cluster or AWS account
/// to compare with).
pub fn platform_summary(layout: &Layout) -> anyhow::Result<Vec<String>> {
    let repo = Repository::open_bare(&layout.platform_repo)
        .with_context(|| format!("cannot open {}", layout.platform_repo.display()))?;
    let commit = repo.refname_to_id("refs/heads/main")?;
    let manifests =
        crate::desired::manifests::read(&repo, commit, "manifests").map_err(|errors| {
            anyhow::anyhow!(
                "the platform repo has errors: {}",
                errors
                    .iter()
                    .map(|e| e.to_string())
                    .collect::<Vec<_>>()
                    .join("; ")
            )
        })?;
    let mut lines: Vec<String> = manifests
        .iter()
        .map(|m| format!("object  {}", m.id))
        .collect();
    let platform =
        crate::desired::platform::read_mirror(&layout.platform_repo, commit, "platform.yaml")
            .map_err(|errors| {
                anyhow::anyhow!(
                    "platform.yaml: {}",
                    errors
                        .iter()
                        .map(|e| e.to_string())
                        .collect::<Vec<_>>()
                        .join("; ")
                )
            })?;
    if let Some(p) = platform {
        for ng in p.eks.iter().flat_map(|e| e.nodegroups.iter()) {
            lines.push(format!(
                "aws     EKS nodegroup {} (scaling {}..{}, desired {})",
                ng.name,
                ng.scaling.min,
                ng.scaling.max,
                ng.scaling
                    .desired
                    .map_or("by the autoscaler".to_string(), |d| d.to_string())
            ));
        }
        for e in p.sagemaker.iter().flat_map(|s| s.endpoints.iter()) {
            lines.push(format!(
                "aws     SageMaker endpoint {} ({} variant(s))",
                e.name,
                e.variants.len()
            ));
        }
    }
    Ok(lines)
}

/// Local values for the platform's Secrets that name their members, where
/// none are yet (edits survive a second run): random, never the same twice,
/// so a quickstart holds no shared default password.
fn seed_secrets(layout: &Layout) -> anyhow::Result<()> {
    use crate::kubernetes::secret_values::{self, Request};
    use std::io::Read;
    let repo = Repository::open_bare(&layout.platform_repo)
        .with_context(|| format!("cannot open {}", layout.platform_repo.display()))?;
    let commit = repo.refname_to_id("refs/heads/main")?;
    let Ok(manifests) = crate::desired::manifests::read(&repo, commit, "manifests") else {
        // The first sync says what is wrong with them, with file and line.
        return Ok(());
    };
    let mut random = std::fs::File::open("/dev/urandom").context("cannot read /dev/urandom")?;
    let mut token = || -> anyhow::Result<String> {
        let mut bytes = [0u8; 24];
        random.read_exact(&mut bytes)?;
        Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
    };
    // What each Secret asks for, read as a plan reads it; one it refuses
    // is the first sync's to report.
    for Request { id, key, keys } in manifests
        .iter()
        .filter_map(|m| secret_values::request(m)?.ok())
    {
        let value = match (key, keys) {
            (Some(_), _) => token()?,
            (None, Some(keys)) => {
                let mut members = serde_json::Map::new();
                for key in keys {
                    members.insert(key, token()?.into());
                }
                serde_json::Value::Object(members).to_string()
            }
            // Every member is taken: which ones, only the pods know.
            (None, None) => continue,
        };
        let Some(path) = secret_values::file_of(&layout.secrets_dir, &id) else {
            continue;
        };
        if path.exists() {
            continue;
        }
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("cannot create {}", parent.display()))?;
        }
        write_private(&path, &value)?;
    }
    Ok(())
}

/// A file only its owner reads.
fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    file.write_all(text.as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))
}

fn yaml_str(path: &Path) -> String {
    serde_json::to_string(&path.display().to_string()).unwrap_or_default()
}

/// Creates a bare repo whose `main` holds the files of `template`.
pub fn seed_repo(path: &Path, template: &Dir<'_>, message: &str) -> anyhow::Result<Oid> {
    let repo = Repository::init_bare(path)
        .with_context(|| format!("cannot create repository {}", path.display()))?;
    let tree = write_tree(&repo, template)?;
    let tree = repo.find_tree(tree)?;
    let sig = Signature::now("ferry quickstart", "quickstart@ferry.invalid")?;
    let commit = repo.commit(Some("refs/heads/main"), &sig, &sig, message, &tree, &[])?;
    repo.set_head("refs/heads/main")?;
    Ok(commit)
}

fn write_tree(repo: &Repository, dir: &Dir<'_>) -> anyhow::Result<Oid> {
    let mut builder = repo.treebuilder(None)?;
    for file in dir.files() {
        let name = file_name(file.path())?;
        let blob = repo.blob(file.contents())?;
        builder.insert(name, blob, 0o100644)?;
    }
    for sub in dir.dirs() {
        let name = file_name(sub.path())?;
        let tree = write_tree(repo, sub)?;
        builder.insert(name, tree, 0o040000)?;
    }
    Ok(builder.write()?)
}

fn file_name(path: &Path) -> anyhow::Result<&str> {
    path.file_name()
        .and_then(|n| n.to_str())
        .with_context(|| format!("template path {} has no UTF-8 name", path.display()))
}

/// One line per source of what the first sync did, and whether all went well.
pub fn results(results: &[(String, crate::agent::SyncResult)]) -> (Vec<String>, bool) {
    use crate::agent::SyncResult;
    use crate::targets::Outcome;
    let mut lines = Vec::new();
    let mut ok = true;
    for (source, result) in results {
        match result {
            SyncResult::Evaluated { commit, outcomes } => {
                let short = &commit.to_string()[..12];
                if outcomes.is_empty() {
                    lines.push(format!("up to date         {source} @ {short}"));
                }
                for outcome in outcomes {
                    lines.push(match outcome {
                        Outcome::Dags(o) if !o.published => {
                            format!("up to date         {source} @ {short}")
                        }
                        Outcome::Dags(o) => format!(
                            "published          {source} @ {short} ({} files written, {} reused) in {} ms",
                            o.stats.files_written, o.stats.files_linked + o.stats.files_shared, o.duration_ms
                        ),
                        other => format!(
                            "applied            {source} @ {short} to {}: {}",
                            other.target(),
                            other.summary()
                        ),
                    });
                }
            }
            SyncResult::Unchanged { commit } | SyncResult::Drift { commit, .. } => {
                lines.push(format!(
                    "up to date         {source} @ {}",
                    &commit.to_string()[..12]
                ));
            }
            SyncResult::Failed { failure, .. } => {
                ok = false;
                lines.push(format!("FAILED             {source}: {failure}"));
            }
        }
    }
    (lines, ok)
}
