//! The `ferry` command line: errors are reported here, with context.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use tokio::sync::watch;

use ferry::agent::{Agent, SyncResult};
use ferry::config::{
    AuthConfig, Config, DagsTargetConfig, LogFormat, RetentionConfig, SourceConfig, TargetsConfig,
    ValidationConfig, ValidationPolicy,
};
use ferry::dags::DagsTarget;
use ferry::metrics::Metrics;
use ferry::quickstart::{self, Layout};
use ferry::server::{self, AppState};
use ferry::source::GitSource;
use ferry::status::StatusStore;

#[derive(Parser)]
#[command(
    name = "ferry",
    version = ferry::build::LONG_VERSION,
    about = "GitOps agent for an ML platform: publishes Airflow DAGs atomically and reconciles platform config from git.",
    after_help = "Start here:  ferry quickstart --once\nDocs:        README.md (config reference, how ferry differs from git-sync)"
)]
struct Cli {
    /// Log format; overrides `log.format` in ferry.yaml.
    #[arg(long, global = true, value_enum, env = "FERRY_LOG_FORMAT")]
    log_format: Option<LogFormat>,
    /// Log filter (e.g. `debug`, `ferry=debug,info`); overrides `log.level`.
    #[arg(long, global = true, env = "FERRY_LOG_LEVEL")]
    log_level: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the agent: watch every source, publish, serve status and metrics.
    #[command(
        after_help = "Example:\n  ferry run --config /etc/ferry/ferry.yaml\n  ferry --log-format json run --config ferry.yaml\n\n\
        Stops cleanly on SIGTERM or Ctrl-C: an in-flight fetch is abandoned, a publish in progress completes."
    )]
    Run {
        #[arg(long, short, default_value = "ferry.yaml")]
        config: PathBuf,
    },
    /// Try ferry locally: seed a git repo from the DAGs template and publish it.
    #[command(
        after_help = "Example:\n  ferry quickstart --once                 # publish once, print what happened, exit\n  \
        ferry quickstart --dir /tmp/fq          # keep running; push to the printed repo to see a new publish\n\n\
        Needs no cloud account and no Docker. Running it again keeps the repo (and your pushes)."
    )]
    Quickstart {
        /// Working directory (created if missing).
        #[arg(long, default_value = "ferry-quickstart")]
        dir: PathBuf,
        /// Exit after the first publish instead of running until Ctrl-C.
        #[arg(long)]
        once: bool,
        /// Address of the status API and metrics.
        #[arg(long, default_value = "127.0.0.1:8484")]
        listen: SocketAddr,
        /// Apply the platform template's manifests to this cluster too
        /// (without it the platform plan is shown, nothing applied).
        #[arg(long)]
        kubeconfig: Option<PathBuf>,
    },
    /// Validate a config file and exit non-zero with the offending key if it is wrong.
    #[command(
        after_help = "Example:\n  ferry check-config ferry.yaml\n  ferry check-config --skip-files deploy/ferry.yaml && kubectl apply -k deploy/\n\n\
        Checks what `ferry run` checks at start, including the files it reads then (webhook secret,\n\
        GitHub token or App key, allowed signers); --skip-files leaves those out, for a config whose\n\
        files exist only where ferry runs (mounted Secrets)."
    )]
    CheckConfig {
        file: PathBuf,
        /// Do not check the secret and policy files the config names.
        #[arg(long)]
        skip_files: bool,
    },
    /// Check a platform repo checkout offline: manifests and platform.yaml parse and validate.
    #[command(
        after_help = "Example:\n  ferry validate .                  # in a platform repo checkout (CI on every PR)\n  \
        ferry validate ~/src/platform --manifests manifests --platform platform.yaml\n\n\
        Needs no cluster and no cloud account; `ferry plan` and ferry's PR comment show what would change."
    )]
    Validate {
        /// The platform repo checkout.
        dir: PathBuf,
        /// Directory of the Kubernetes manifests, relative to DIR.
        #[arg(long, default_value = "manifests")]
        manifests: String,
        /// The AWS declaration, relative to DIR (skipped when absent).
        #[arg(long, default_value = "platform.yaml")]
        platform: String,
    },
    /// Show what a platform revision would change in the cluster; writes nothing.
    #[command(after_help = "Example:\n  ferry plan --config ferry.yaml\n  \
        ferry plan --config ferry.yaml --revision refs/pull/42/head --output json\n\n\
        Every object is checked by the API server (server-side apply, dry run, field manager `ferry`).\n\
        Exits 1 when the revision has errors or the server would refuse an object;\n\
        with --detailed-exitcode, 0 means no changes and 2 means changes.")]
    Plan {
        #[arg(long, short, default_value = "ferry.yaml")]
        config: PathBuf,
        /// Branch, full ref (refs/pull/N/head) or commit of the branch; default: the tracked branch.
        #[arg(long)]
        revision: Option<String>,
        #[arg(long, value_enum, default_value = "text")]
        output: OutputFormat,
        /// Which target to plan; default: kubernetes if configured, else aws.
        #[arg(long, value_enum)]
        target: Option<PlanTarget>,
        /// Exit 0 when nothing would change, 2 when something would, 1 on
        /// errors (Terraform's convention, for CI).
        #[arg(long)]
        detailed_exitcode: bool,
    },
    /// Fetch one ref and publish its DAGs once (for init containers).
    #[command(
        after_help = "Example (init container, so Airflow starts with DAGs in place):\n  \
        ferry publish-dags --repo https://github.com/acme/dags.git --ref main \\\n      \
        --dest /opt/airflow/dags --subdir dags --token-file /var/run/secrets/ferry/token\n\n\
        Airflow's dags_folder is then /opt/airflow/dags/current. Exits non-zero, publishing nothing, if a DAG does not parse."
    )]
    PublishDags(Box<PublishDagsArgs>),
}

#[derive(clap::Args)]
struct PublishDagsArgs {
    /// Repository URL (https, ssh, git, file) or local path.
    #[arg(long)]
    repo: String,
    /// Branch name, or a full ref such as refs/pull/12/head.
    #[arg(long = "ref", default_value = "main")]
    reference: String,
    /// Destination root; the link and .ferry/ are created inside it.
    #[arg(long)]
    dest: PathBuf,
    /// Directory inside the repo to publish, as the DAGs target's `subdir`
    /// (`""` or `.` for the whole repo).
    #[arg(long, default_value = "dags")]
    subdir: String,
    /// Name of the symlink Airflow reads through.
    #[arg(long, default_value = "current")]
    link: String,
    /// Where to keep the bare mirror between runs.
    #[arg(long, default_value = "/tmp/ferry-cache")]
    cache_dir: PathBuf,
    #[arg(long, value_enum, default_value = "block")]
    policy: PolicyArg,
    #[arg(long, default_value = "120s", value_parser = humantime::parse_duration)]
    timeout: Duration,
    #[arg(long)]
    username: Option<String>,
    /// File holding an HTTPS token (or password with --username).
    #[arg(long)]
    token_file: Option<PathBuf>,
    #[arg(long)]
    ssh_key_file: Option<PathBuf>,
    #[arg(long)]
    known_hosts_file: Option<PathBuf>,
    /// Publish only a commit signed by an SSH key listed in this file (git's
    /// allowed signers format), as `verify.allowed_signers` does for `ferry run`.
    #[arg(long)]
    allowed_signers: Option<PathBuf>,
}

/// What `ferry plan` found, mapped to an exit code at the edge.
enum PlanOutcome {
    Failed,
    NoChanges,
    Changes,
}

impl PlanOutcome {
    fn of(failed: bool, changes: bool) -> PlanOutcome {
        match (failed, changes) {
            (true, _) => PlanOutcome::Failed,
            (false, true) => PlanOutcome::Changes,
            (false, false) => PlanOutcome::NoChanges,
        }
    }

    fn exit_code(&self, detailed: bool) -> ExitCode {
        match (self, detailed) {
            (PlanOutcome::Failed, _) => ExitCode::FAILURE,
            (PlanOutcome::Changes, true) => ExitCode::from(2),
            _ => ExitCode::SUCCESS,
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum PlanTarget {
    Kubernetes,
    Aws,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum OutputFormat {
    Text,
    Json,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum PolicyArg {
    Block,
    Warn,
}

fn main() -> ExitCode {
    // Usage errors exit 1 like every other error: 2 belongs to
    // `plan --detailed-exitcode` ("changes"), and must not be ambiguous.
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => {
            let _ = err.print();
            return if err.use_stderr() {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(16)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("error: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(dispatch(cli)) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {}", chain(&err));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes, each once: many errors already name their
/// source in their message, which `{:#}` would print a second time.
fn chain(err: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in err.chain() {
        let text = cause.to_string();
        if out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

async fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    if let Some(level) = &cli.log_level {
        ferry::logging::check_flag(level).map_err(anyhow::Error::msg)?;
    }
    let log = |config_format: LogFormat, config_level: &str| -> anyhow::Result<()> {
        ferry::logging::init(
            cli.log_format.unwrap_or(config_format),
            cli.log_level.as_deref(),
            config_level,
        )
        .map_err(anyhow::Error::msg)
    };
    match cli.command {
        Command::Run { ref config } => {
            let config = Config::load(config)?;
            log(config.log.format, &config.log.level)?;
            run(config).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Validate {
            ref dir,
            ref manifests,
            ref platform,
        } => validate_checkout(dir, manifests, platform),
        Command::CheckConfig {
            ref file,
            skip_files,
        } => {
            let config = if skip_files {
                Config::load_unchecked(file)?
            } else {
                Config::load(file)?
            };
            let mut targets = Vec::new();
            if let Some(d) = &config.targets.dags {
                targets.push(format!("dags (from source `{}`)", d.source));
            }
            if let Some(k) = &config.targets.kubernetes {
                targets.push(format!("kubernetes (from source `{}`)", k.source));
            }
            if let Some(a) = &config.targets.aws {
                targets.push(format!("aws (from source `{}`, {})", a.source, a.file));
            }
            let targets = if targets.is_empty() {
                "none".to_string()
            } else {
                targets.join(", ")
            };
            let github = match &config.github {
                None => "off".to_string(),
                Some(g) => {
                    let mut parts = Vec::new();
                    if g.webhook_secret_file.is_some() {
                        parts.push("webhooks".to_string());
                    }
                    if g.reporting() {
                        parts.push(format!("reporting to {}", g.api_url));
                        if g.deployments {
                            parts.push(format!("deployments to `{}`", g.environment));
                        }
                        if g.previews {
                            parts.push("PR previews".into());
                        }
                    }
                    if parts.is_empty() {
                        "off".into()
                    } else {
                        parts.join(", ")
                    }
                }
            };
            let leader = match &config.leader_election {
                Some(l) => format!(
                    "; leader election: Lease {}/{}",
                    l.namespace.as_deref().unwrap_or("(pod's namespace)"),
                    l.lease_name
                ),
                None => String::new(),
            };
            println!(
                "{}: ok ({} source(s): {}; targets: {targets}; github: {github}{leader})",
                file.display(),
                config.sources.len(),
                config
                    .sources
                    .iter()
                    .map(|s| match s.verify {
                        Some(_) => format!("{} (signed heads only)", s.name),
                        None => s.name.clone(),
                    })
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Quickstart {
            ref dir,
            once,
            listen,
            ref kubeconfig,
        } => {
            log(LogFormat::Text, "info")?;
            quickstart_cmd(dir, once, listen, kubeconfig.as_deref()).await
        }
        Command::Plan {
            ref config,
            ref revision,
            output,
            target,
            detailed_exitcode,
        } => {
            let config = Config::load_unchecked(config)?;
            log(config.log.format, &config.log.level)?;
            let target = target.unwrap_or(if config.targets.kubernetes.is_some() {
                PlanTarget::Kubernetes
            } else {
                PlanTarget::Aws
            });
            let outcome = match target {
                PlanTarget::Kubernetes => plan_cmd(config, revision.clone(), output).await?,
                #[cfg(feature = "aws")]
                PlanTarget::Aws => plan_aws_cmd(config, revision.clone(), output).await?,
                #[cfg(not(feature = "aws"))]
                PlanTarget::Aws => {
                    anyhow::bail!("this ferry was built without the `aws` feature")
                }
            };
            Ok(outcome.exit_code(detailed_exitcode))
        }
        Command::PublishDags(ref args) => {
            log(LogFormat::Text, "info")?;
            publish_dags(args).await
        }
    }
}

fn shutdown_signal() -> watch::Receiver<bool> {
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutting down: finishing in-flight work (signal again to exit now)");
        let _ = tx.send(true);
        wait_for_signal().await;
        tracing::warn!("second signal: exiting now; published revisions stay consistent");
        std::process::exit(130);
    });
    rx
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

async fn run(config: Config) -> anyhow::Result<()> {
    let status = StatusStore::default();
    let metrics = Metrics::new();
    let shutdown = shutdown_signal();
    // Leadership before anything touches the DAGs volume, the cluster or
    // GitHub: even opening the DAGs target cleans up staging directories.
    let holding = match &config.leader_election {
        Some(leader) => {
            match stand_by(leader, config.server.listen, &status, &metrics, &shutdown).await? {
                Some(holding) => Some(holding),
                None => return Ok(()),
            }
        }
        None => None,
    };
    let reporter = match &config.github {
        Some(github) => ferry::report::Reporter::open(
            github,
            &config.cache_dir,
            config.server.listen,
            metrics.clone(),
        )
        .context("cannot start reporting to GitHub")?,
        None => None,
    };
    if reporter.is_some() {
        tracing::info!("reporting to GitHub: commit statuses, deployments, PR previews");
    }
    let agent = Agent::new(&config, status.clone(), metrics.clone(), reporter.clone())?;
    let webhook = webhook_receiver(&config, &agent)?;
    let sources = config.sources.len();
    serve_and_run(
        agent,
        reporter,
        config.server.listen,
        webhook,
        shutdown,
        |addr| {
            tracing::info!(%addr, sources, "ferry running");
        },
    )
    .await?;
    if let Some(holding) = holding {
        let _ = holding.release.send(());
        let _ = holding.task.await;
    }
    tracing::info!("stopped");
    Ok(())
}

/// A held leader Lease: renewed by `task` until `release` fires.
struct Holding {
    release: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

/// Serves health, readiness (503 with the holder's name) and metrics until
/// this process holds the leader Lease; None when a signal came first. A
/// lost Lease ends the process (exit 1) so nothing syncs without it.
async fn stand_by(
    config: &ferry::config::LeaderElectionConfig,
    listen: SocketAddr,
    status: &StatusStore,
    metrics: &Arc<Metrics>,
    shutdown: &watch::Receiver<bool>,
) -> anyhow::Result<Option<Holding>> {
    let mut elector = ferry::leader::Elector::new(config).await?;
    let lease = elector.lease().to_string();
    status.set_standby(Some(format!("standing by for the leader Lease {lease}")));
    let (stop_server, server_stop) = watch::channel(false);
    let state = AppState {
        status: status.clone(),
        metrics: metrics.clone(),
        webhook: None,
    };
    let (addr, server) = server::serve(listen, state, server_stop).await?;
    tracing::info!(%addr, identity = elector.identity(), lease = %lease, "standing by for the leader Lease");
    let acquired = elector
        .acquire(&mut shutdown.clone(), |holder| {
            status.set_standby(Some(format!(
                "standing by: the leader Lease {lease} is held by {holder}"
            )))
        })
        .await;
    let _ = stop_server.send(true);
    let _ = server.await;
    status.set_standby(None);
    if !acquired {
        tracing::info!("stopped while standing by");
        return Ok(None);
    }
    tracing::info!(identity = elector.identity(), lease = %lease, "holding the leader Lease");
    let (release, release_rx) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(async move {
        if let ferry::leader::Ended::Lost(why) = elector.hold(release_rx).await {
            tracing::error!(reason = %why, "lost the leader Lease; exiting so that nothing syncs without it");
            std::process::exit(1);
        }
    });
    Ok(Some(Holding { release, task }))
}

/// Serves HTTP and runs the agent until SIGTERM or Ctrl-C; `listening` is
/// told the bound address first.
async fn serve_and_run(
    agent: Agent,
    reporter: Option<ferry::report::Reporter>,
    listen: SocketAddr,
    webhook: Option<Arc<ferry::webhook::Receiver>>,
    shutdown: watch::Receiver<bool>,
    listening: impl FnOnce(SocketAddr),
) -> anyhow::Result<()> {
    agent.metrics().leader.set(1);
    let state = AppState {
        status: agent.status(),
        metrics: agent.metrics(),
        webhook,
    };
    let (addr, server) = server::serve(listen, state, shutdown.clone()).await?;
    listening(addr);
    let reporting = reporter.map(|r| tokio::spawn(r.run(shutdown.clone())));
    agent.run(shutdown).await;
    let _ = server.await;
    if let Some(reporting) = reporting {
        let _ = reporting.await;
    }
    Ok(())
}

/// The webhook receiver, when configured: one route per source that has a
/// GitHub repository. (`Config::load` has checked the secret file.)
fn webhook_receiver(
    config: &Config,
    agent: &Agent,
) -> anyhow::Result<Option<Arc<ferry::webhook::Receiver>>> {
    let Some(secret_file) = config
        .github
        .as_ref()
        .and_then(|g| g.webhook_secret_file.clone())
    else {
        return Ok(None);
    };
    let previews = config.github.as_ref().is_some_and(|g| g.previews);
    let mut handles = agent.handles(previews);
    let routes: Vec<ferry::webhook::Route> = config
        .sources
        .iter()
        .filter_map(|s| {
            let at = handles.iter().position(|h| h.name == s.name)?;
            let handle = handles.swap_remove(at);
            Some(ferry::webhook::Route {
                repo: s.github_repo()?,
                branch: s.branch.clone(),
                source: s.name.clone(),
                trigger: handle.trigger,
                previews: handle.previews,
            })
        })
        .collect();
    if routes.is_empty() {
        tracing::warn!(
            "webhooks enabled, but no source has a GitHub repository (set sources[].github_repo)"
        );
    }
    Ok(Some(ferry::webhook::Receiver::new(
        secret_file,
        routes,
        agent.metrics().webhooks.clone(),
    )))
}

async fn quickstart_cmd(
    dir: &Path,
    once: bool,
    listen: SocketAddr,
    kubeconfig: Option<&Path>,
) -> anyhow::Result<ExitCode> {
    let layout = Layout::new(dir);
    let (config, seeded) = quickstart::prepare(&layout, listen, kubeconfig)?;
    let layout = Layout::new(&layout.dir.canonicalize()?);
    println!("ferry quickstart in {}", layout.dir.display());
    if seeded {
        println!(
            "  created git repo   {} (from dags-repo-template/)",
            layout.dags_repo.display()
        );
    } else {
        println!("  reusing git repo   {}", layout.dags_repo.display());
    }
    println!(
        "  platform repo      {} (from platform-repo-template/)",
        layout.platform_repo.display()
    );
    println!("  wrote config       {}", layout.config_path.display());

    let status = StatusStore::default();
    let metrics = Metrics::new();
    let agent = Agent::new(&config, status.clone(), metrics.clone(), None)?;
    let results = agent.sync_once().await;
    let mut ok = true;
    for (source, result) in &results {
        match result {
            SyncResult::Published(o) if !o.published => {
                println!("  up to date         {source} @ {}", &o.commit[..12]);
            }
            SyncResult::Published(o) => println!(
                "  published          {source} @ {} ({} files written, {} reused) in {} ms",
                &o.commit[..12],
                o.stats.files_written,
                o.stats.files_linked,
                o.duration_ms
            ),
            SyncResult::Unchanged { commit } | SyncResult::Fetched { commit } => {
                println!(
                    "  up to date         {source} @ {}",
                    &commit.to_string()[..12]
                );
            }
            #[cfg(feature = "aws")]
            SyncResult::Aws { commit, .. } => {
                println!(
                    "  applied            {source} @ {} to AWS",
                    &commit.to_string()[..12]
                );
            }
            SyncResult::Kube { commit, .. } => {
                println!(
                    "  applied            {source} @ {} to Kubernetes",
                    &commit.to_string()[..12]
                );
            }
            SyncResult::Failed(f) => {
                ok = false;
                println!("  FAILED             {source}: {}", f.error);
            }
        }
    }
    println!("  Airflow dags_folder {}", layout.dags_folder().display());
    if kubeconfig.is_none() {
        // A listing of what the repo declares, not a plan; a broken head is
        // reported, it does not stop the DAGs loop from starting.
        match quickstart::platform_summary(&layout) {
            Ok(lines) => {
                println!(
                    "\nThe platform repo declares {} object(s) and AWS resource(s) (a listing: no cluster given, nothing planned or applied; pass --kubeconfig to apply the manifests):",
                    lines.len()
                );
                for line in &lines {
                    println!("  {line}");
                }
            }
            Err(err) => println!("\nThe platform repo's head has problems: {err}"),
        }
    }
    if once {
        let json = serde_json::to_string_pretty(&server::status_document(&status))?;
        println!("\nstatus (as served on /api/v1/status):\n{json}");
        return Ok(if ok {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        });
    }
    let repo = layout.dags_repo.display().to_string();
    let work = layout.dir.join("dags-work").display().to_string();
    serve_and_run(
        agent,
        None,
        config.server.listen,
        None,
        shutdown_signal(),
        |addr| {
            println!("  status API         http://{addr}/api/v1/status   (metrics: /metrics)");
            println!(
                "\nTry a change:\n  git clone {repo} {work} && cd {work}\n  \
             # edit dags/*.py, then: git commit -am 'my change' && git push\n\
             ferry polls every 10s. Ctrl-C to stop."
            );
        },
    )
    .await?;
    Ok(ExitCode::SUCCESS)
}

/// `ferry validate`: every manifest document and platform.yaml, offline.
fn validate_checkout(dir: &Path, manifests: &str, platform: &str) -> anyhow::Result<ExitCode> {
    let mut problems: Vec<String> = Vec::new();
    let mut objects = 0usize;
    let root = dir.join(manifests);
    let mut pending = vec![root.clone()];
    let mut files = Vec::new();
    while let Some(d) = pending.pop() {
        let entries =
            std::fs::read_dir(&d).with_context(|| format!("cannot read {}", d.display()))?;
        for entry in entries {
            let path = entry?.path();
            if path.is_dir() {
                pending.push(path);
            } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
                files.push(path);
            }
        }
    }
    files.sort();
    for path in &files {
        let rel = path.strip_prefix(dir).unwrap_or(path).display().to_string();
        let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {rel}"))?;
        match ferry::desired::manifests::parse_file(&rel, &text) {
            Ok(found) => objects += found.len(),
            Err(errors) => problems.extend(errors.iter().map(|e| e.to_string())),
        }
    }
    let platform_path = dir.join(platform);
    let mut declared = "absent".to_string();
    if platform_path.exists() {
        let text = std::fs::read_to_string(&platform_path)
            .with_context(|| format!("cannot read {}", platform_path.display()))?;
        match ferry::desired::platform::parse(platform, &text) {
            Ok(p) => {
                declared = format!(
                    "{} nodegroup(s), {} addon(s), {} endpoint(s)",
                    p.eks.as_ref().map_or(0, |e| e.nodegroups.len()),
                    p.eks.as_ref().map_or(0, |e| e.addons.len()),
                    p.sagemaker.as_ref().map_or(0, |s| s.endpoints.len())
                )
            }
            Err(errors) => problems.extend(errors.iter().map(|e| e.to_string())),
        }
    }
    if problems.is_empty() {
        println!(
            "ok: {objects} object(s) in {} file(s) under {manifests}/; {platform}: {declared}",
            files.len()
        );
        Ok(ExitCode::SUCCESS)
    } else {
        for p in &problems {
            eprintln!("error: {p}");
        }
        eprintln!(
            "{} problem(s); fix them and run `ferry validate` again",
            problems.len()
        );
        Ok(ExitCode::FAILURE)
    }
}

/// `ferry plan --target aws`: platform.yaml at a revision against AWS.
#[cfg(feature = "aws")]
async fn plan_aws_cmd(
    config: Config,
    revision: Option<String>,
    output: OutputFormat,
) -> anyhow::Result<PlanOutcome> {
    let target = config
        .targets
        .aws
        .clone()
        .context("the config has no targets.aws: nothing to plan")?;
    let source_config = source_of(&config, &target.source, "targets.aws")?;
    let file = target.file.clone();
    let (commit, platform) = fetch_revision(
        &config,
        source_config.clone(),
        revision,
        move |repo, commit| ferry::desired::platform::read_mirror(repo.path(), commit, &file),
    )
    .await?;
    let platform = match platform {
        Ok(Some(p)) => p,
        Ok(None) => {
            println!(
                "{} is absent at {commit}: nothing declared, nothing to plan",
                target.file
            );
            return Ok(PlanOutcome::NoChanges);
        }
        Err(errors) => {
            for e in &errors {
                eprintln!("error: {e}");
            }
            return Ok(PlanOutcome::Failed);
        }
    };
    let provenance = ferry::aws::Provenance {
        source: source_config.name.clone(),
        repo: source_config
            .github_repo()
            .unwrap_or_else(|| source_config.url.clone()),
        commit: commit.to_string(),
    };
    let clients = ferry::aws::clients(&platform, &target).await;
    let plan = ferry::aws::plan(&clients, &platform, &provenance, target.prune)
        .await
        .context("cannot plan against AWS")?;
    match output {
        OutputFormat::Text => print!("{}", plan.render_text()),
        OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&plan)?),
    }
    Ok(PlanOutcome::of(
        !plan.errors.is_empty(),
        !plan.changes.is_empty(),
    ))
}

/// The source a target names (`key` is the target's config path).
fn source_of(
    config: &Config,
    name: &str,
    key: &str,
) -> anyhow::Result<ferry::config::SourceConfig> {
    config
        .source(name)
        .cloned()
        .with_context(|| format!("{key}.source names no source"))
}

/// Fetches `revision` (default: the tracked branch) of a source into its
/// mirror and reads what `read` wants from that commit.
async fn fetch_revision<T: Send + 'static>(
    config: &Config,
    source_config: ferry::config::SourceConfig,
    revision: Option<String>,
    read: impl FnOnce(&git2::Repository, git2::Oid) -> T + Send + 'static,
) -> anyhow::Result<(git2::Oid, T)> {
    std::fs::create_dir_all(&config.cache_dir)
        .with_context(|| format!("cannot create cache_dir {}", config.cache_dir.display()))?;
    let cache_dir = config.cache_dir.clone();
    tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
        ferry::source::set_network_timeouts(Duration::from_secs(30), source_config.timeout);
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
        // A plan is read-only, so an untrusted revision is still planned; say
        // that `ferry run` would refuse it.
        match source.verify(commit) {
            Ok(Some(signed)) => eprintln!(
                "commit {commit} signed by {} ({})",
                signed.principal, signed.fingerprint
            ),
            Ok(None) => {}
            Err(err) => eprintln!("warning: {err}; `ferry run` would not apply this revision"),
        }
        let repo = source.open()?;
        Ok((commit, read(&repo, commit)))
    })
    .await
    .context("fetch task failed")?
}

async fn plan_cmd(
    config: Config,
    revision: Option<String>,
    output: OutputFormat,
) -> anyhow::Result<PlanOutcome> {
    let target = config
        .targets
        .kubernetes
        .clone()
        .context("the config has no targets.kubernetes: nothing to plan")?;
    let source_config = source_of(&config, &target.source, "targets.kubernetes")?;
    let path = target.path.clone();
    let (commit, manifests) =
        fetch_revision(&config, source_config, revision, move |repo, commit| {
            ferry::desired::manifests::read(repo, commit, &path)
        })
        .await?;
    let client = ferry::kubernetes::client::connect(target.kubeconfig.as_deref()).await?;
    let plan = ferry::kubernetes::plan_revision(
        &client,
        // The agent names the target (and its inventory) after its source.
        &target.source,
        &commit.to_string(),
        &target,
        manifests,
    )
    .await
    .map_err(|e| anyhow::anyhow!(ferry::kubernetes::plan::describe(&e)))
    .context("cannot plan against the cluster")?;
    match output {
        OutputFormat::Text => print!("{}", plan.render_text()),
        OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&plan)?),
    }
    let changes = plan
        .objects
        .iter()
        .any(|o| o.action != ferry::kubernetes::plan::Action::Unchanged);
    Ok(PlanOutcome::of(plan.failed() > 0, changes))
}

async fn publish_dags(args: &PublishDagsArgs) -> anyhow::Result<ExitCode> {
    let source_config = SourceConfig {
        name: "dags".into(),
        url: args.repo.clone(),
        branch: if args.reference.starts_with("refs/") {
            "main".into()
        } else {
            args.reference.clone()
        },
        interval: Duration::from_secs(60),
        timeout: args.timeout,
        max_backoff: Duration::from_secs(300),
        github_repo: None,
        verify: args
            .allowed_signers
            .clone()
            .map(|allowed_signers| ferry::config::VerifyConfig { allowed_signers }),
        auth: AuthConfig {
            username: args.username.clone(),
            token_file: args.token_file.clone().filter(|_| args.username.is_none()),
            password_file: args.token_file.clone().filter(|_| args.username.is_some()),
            ssh_key_file: args.ssh_key_file.clone(),
            known_hosts_file: args.known_hosts_file.clone(),
            ..AuthConfig::default()
        },
    };
    let target_config = DagsTargetConfig {
        source: "dags".into(),
        subdir: args.subdir.clone(),
        destination: args.dest.clone(),
        link: args.link.clone(),
        retention: RetentionConfig::default(),
        validation: ValidationConfig {
            policy: match args.policy {
                PolicyArg::Block => ValidationPolicy::Block,
                PolicyArg::Warn => ValidationPolicy::Warn,
            },
            ..ValidationConfig::default()
        },
    };
    // Same checks as ferry.yaml, so the flags cannot say what the file could not.
    let config = Config {
        cache_dir: args.cache_dir.clone(),
        server: Default::default(),
        log: Default::default(),
        sources: vec![source_config.clone()],
        targets: TargetsConfig {
            dags: Some(target_config.clone()),
            kubernetes: None,
            aws: None,
        },
        github: None,
        leader_election: None,
    };
    if let Err(err) = config.validate(Path::new("(flags)")) {
        let flag = err
            .key()
            .and_then(|k| k.rsplit('.').next())
            .unwrap_or("")
            .replace('_', "-");
        bail!("--{flag}: {err}");
    }
    std::fs::create_dir_all(&args.cache_dir)
        .with_context(|| format!("cannot create --cache-dir {}", args.cache_dir.display()))?;
    std::fs::create_dir_all(&args.dest)
        .with_context(|| format!("cannot create --dest {}", args.dest.display()))?;

    let reference = args.reference.clone();
    let outcome = tokio::task::spawn_blocking(move || -> anyhow::Result<ExitCode> {
        ferry::source::set_network_timeouts(Duration::from_secs(30), source_config.timeout);
        // Opening the target first removes what a killed earlier run left
        // in the destination, whatever this run's fetch then does.
        let mut target = DagsTarget::open(target_config)?;
        let source = GitSource::new(&source_config, &config.cache_dir);
        let cancel = AtomicBool::new(false);
        tracing::debug!("phase: fetch");
        let fetched = if reference.starts_with("refs/") {
            source.fetch_ref(&reference, "refs/ferry/oneshot", &cancel)?
        } else {
            source.fetch_branch(&cancel)?
        };
        tracing::debug!(commit = %fetched.commit, "phase: verify");
        if let Some(signed) = source.verify(fetched.commit)? {
            eprintln!(
                "commit {} signed by {} ({})",
                fetched.commit, signed.principal, signed.fingerprint
            );
        }
        let repo = source.open()?;
        match target.sync(&repo, fetched.commit, &Arc::new(AtomicBool::new(false))) {
            Ok(outcome) => {
                for warning in &outcome.warnings {
                    eprintln!("warning: {warning}");
                }
                println!(
                    "{} {} -> {} ({} files written, {} reused)",
                    if outcome.published {
                        "published"
                    } else {
                        "already live:"
                    },
                    outcome.commit,
                    target.publisher().link_path().display(),
                    outcome.stats.files_written,
                    outcome.stats.files_linked
                );
                Ok(ExitCode::SUCCESS)
            }
            Err(err) => {
                for problem in err.problems() {
                    eprintln!("{problem}");
                }
                if let Some(hook) = err.hook() {
                    eprintln!("{}", hook.output);
                }
                eprintln!("error: {err}");
                Ok(ExitCode::FAILURE)
            }
        }
    })
    .await
    .context("publish task failed")??;
    Ok(outcome)
}
