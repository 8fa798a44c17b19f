//! `ferry quickstart`: the whole loop on one machine, no cloud account.
//!
//! Creates a working directory with a local bare repo seeded from the
//! bundled `dags-repo-template/`, writes a `ferry.yaml` that publishes it into
//! `<dir>/airflow/dags`, and returns that config for the agent to run.

use std::path::{Path, PathBuf};

use anyhow::Context;
use git2::{Oid, Repository, Signature};
use include_dir::{Dir, include_dir};

use crate::config::Config;

static DAGS_TEMPLATE: Dir<'static> = include_dir!("$CARGO_MANIFEST_DIR/dags-repo-template");

pub struct Layout {
    pub dir: PathBuf,
    pub config_path: PathBuf,
    pub dags_repo: PathBuf,
    pub dags_dest: PathBuf,
    pub link: String,
}

impl Layout {
    pub fn new(dir: &Path) -> Layout {
        Layout {
            dir: dir.to_path_buf(),
            config_path: dir.join("ferry.yaml"),
            dags_repo: dir.join("repos").join("dags.git"),
            dags_dest: dir.join("airflow").join("dags"),
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
pub fn prepare(layout: &Layout, listen: std::net::SocketAddr) -> anyhow::Result<(Config, bool)> {
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
    let config = format!(
        "# Written by `ferry quickstart`; run it yourself with `ferry run --config {config}`.\n\
         cache_dir: {cache}\n\
         server:\n  listen: {listen}\n\
         sources:\n  - name: dags\n    url: {repo}\n    branch: main\n    interval: 10s\n    max_backoff: 30s\n\
         targets:\n  dags:\n    source: dags\n    subdir: dags\n    destination: {dest}\n    link: {link}\n    \
         retention:\n      keep: 5\n      max_age: 10m\n",
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
