//! The one-shot commands: `ferry plan` and `ferry publish-dags` fetch one
//! revision and take it through the same gate and target face as the
//! agent, once. They return what happened; `main` prints it.

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use anyhow::Context;

use crate::config::{Config, SourceConfig};
use crate::dags::{DagsError, DagsOutcome, DagsTarget};
use crate::desired::{self, Rejection};
use crate::revision::{Origin, Revision};
use crate::source::GitSource;
use crate::targets::{self, Plan, Purpose};

/// What `ferry plan` found.
pub struct PlanRun {
    pub revision: Revision,
    /// Why `ferry run` would refuse the revision's signature.
    pub untrusted: Option<String>,
    /// The target's plan, or the gate's rejection of the commit.
    pub plan: Result<Plan, Rejection>,
}

/// `target`'s plan (`kubernetes` or `aws`) of `revision`, made exactly as
/// the agent makes it before applying (the same gate, the same plan), at
/// review depth. Nothing is applied.
pub async fn plan(
    config: &Config,
    target: &str,
    revision: Option<String>,
) -> anyhow::Result<PlanRun> {
    let source_name = match target {
        "kubernetes" => config.targets.kubernetes.as_ref().map(|t| t.source.clone()),
        _ => config.targets.aws.as_ref().map(|t| t.source.clone()),
    }
    .with_context(|| format!("the config has no targets.{target}: nothing to plan"))?;
    let source_config = config
        .source(&source_name)
        .cloned()
        .with_context(|| format!("targets.{target}.source names no source"))?;
    // Only the target planned: opening a DAGs target would clean staging
    // directories on a volume a running agent may be writing.
    let mut only = config.clone();
    only.targets.dags = None;
    if target == "kubernetes" {
        only.targets.aws = None;
    } else {
        only.targets.kubernetes = None;
    }
    let mut found = targets::for_source(&only, &source_config, None)?;
    let Some(mut planner) = found.pop() else {
        anyhow::bail!("this ferry was built without the `{target}` target");
    };
    let mut feeds = targets::feeds(std::slice::from_ref(&planner));
    let (revision, untrusted, ()) = fetch_revision(config, source_config, revision, |_| ()).await?;
    targets::render_context(std::slice::from_mut(&mut planner), &mut feeds, &revision).await;
    let desired =
        tokio::task::block_in_place(|| desired::read(&revision, &feeds, &mut Default::default()));
    let plan = match desired {
        Ok(desired) => {
            let cancel = AtomicBool::new(false);
            Ok(planner.plan(&desired, Purpose::Review, &cancel).await?)
        }
        Err(rejection) => Err(rejection),
    };
    Ok(PlanRun {
        revision,
        untrusted,
        plan,
    })
}

/// What `ferry publish-dags` did.
pub struct Published {
    pub outcome: DagsOutcome,
    /// The link Airflow reads through.
    pub link: PathBuf,
    pub signed_by: Option<String>,
}

/// Fetches `reference` (a branch, or a full ref) of the config's one
/// source and publishes its DAGs once into its one DAGs target. Blocking.
/// The outer error is ferry's (fetch, signature, destination); the inner
/// one is the commit's (a DAG that does not parse, a failed hook).
pub fn publish_dags(
    config: &Config,
    reference: &str,
) -> anyhow::Result<Result<Published, DagsError>> {
    let source_config = config.sources.first().context("no source")?;
    let target_config = config.targets.dags.clone().context("no DAGs target")?;
    crate::source::set_network_timeouts(Duration::from_secs(30), source_config.timeout);
    // Opening the target first removes what a killed earlier run left
    // in the destination, whatever this run's fetch then does.
    let mut target = DagsTarget::open(target_config)?;
    target.keep_verdicts_in(&config.cache_dir);
    target.for_one_publish();
    let source = GitSource::new(source_config, &config.cache_dir);
    let cancel = AtomicBool::new(false);
    tracing::debug!("phase: fetch");
    let fetched = if reference.starts_with("refs/") {
        source.fetch_ref(reference, "refs/ferry/oneshot", &cancel)?
    } else {
        source.fetch_branch(&cancel)?
    };
    tracing::debug!(commit = %fetched.commit, "phase: verify");
    let signed_by = source
        .verify(fetched.commit)?
        .map(|s| format!("{} ({})", s.principal, s.fingerprint));
    let repo = source.open()?;
    Ok(target
        .sync(&repo, fetched.commit, &cancel)
        .map(|outcome| Published {
            outcome,
            link: target.publisher().link_path(),
            signed_by,
        }))
}

/// Fetches `revision` (default: the tracked branch) of a source into its
/// mirror and reads what `read` wants from that commit. Returns also why
/// `ferry run` would refuse its signature: a plan is read-only, so an
/// untrusted revision is still planned.
pub async fn fetch_revision<T: Send + 'static>(
    config: &Config,
    source_config: SourceConfig,
    revision: Option<String>,
    read: impl FnOnce(&Revision) -> T + Send + 'static,
) -> anyhow::Result<(Revision, Option<String>, T)> {
    std::fs::create_dir_all(&config.cache_dir)
        .with_context(|| format!("cannot create cache_dir {}", config.cache_dir.display()))?;
    let cache_dir = config.cache_dir.clone();
    tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
        crate::source::set_network_timeouts(Duration::from_secs(30), source_config.timeout);
        let source = GitSource::new(&source_config, &cache_dir);
        let cancel = AtomicBool::new(false);
        let commit = match revision.as_deref() {
            None => source.fetch_branch(&cancel)?.commit,
            Some(r) if r.starts_with("refs/") => source.fetch_ref(r, "refs/ferry/plan", &cancel)?.commit,
            Some(r) if (4..=40).contains(&r.len()) && r.chars().all(|c| c.is_ascii_hexdigit()) => {
                source.fetch_branch(&cancel)?;
                // Full or abbreviated, as git accepts it.
                let found = source.open()?.revparse_single(r).and_then(|o| o.peel_to_commit()).map(|c| c.id());
                found.map_err(|_| anyhow::anyhow!(
                    "commit {r} is not in ferry's mirror of `{}`, which holds the head of `{}` (fetched shallow) and the refs asked for; pass a branch, or a ref such as refs/pull/N/head, whose head is that commit",
                    source.name, source.branch
                ))?
            }
            Some(branch) => source.fetch_ref(&format!("refs/heads/{branch}"), "refs/ferry/plan", &cancel)?.commit,
        };
        let (signed_by, untrusted) = match source.verify(commit) {
            Ok(signed) => (
                signed.map(|s| format!("{} ({})", s.principal, s.fingerprint)),
                None,
            ),
            Err(err) => (None, Some(err.to_string())),
        };
        let revision = Revision {
            source: source.name.clone(),
            commit,
            mirror: source.mirror_path().to_path_buf(),
            origin: Origin::Requested,
            signed_by,
        };
        let read = read(&revision);
        Ok((revision, untrusted, read))
    })
    .await
    .context("fetch task failed")?
}
