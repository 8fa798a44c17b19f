//! The `ferry` command line: errors are reported here, with context.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};

use ferry::agent::Agent;
use ferry::config::{
    AuthConfig, Config, DagsTargetConfig, LogFormat, RetentionConfig, SourceConfig, TargetsConfig,
    ValidationConfig, ValidationPolicy,
};
use ferry::metrics::Metrics;
use ferry::quickstart::{self, Layout};
use ferry::server;
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
        /// Directory of the Helm release files, relative to DIR (skipped when absent).
        #[arg(long, default_value = "releases")]
        releases: String,
        /// The Kubernetes version releases render for (the cluster's, e.g. 1.33); needed when DIR has releases.
        #[arg(long)]
        kube_version: Option<String>,
        /// The helm binary releases render with.
        #[arg(long, default_value = "helm")]
        helm: PathBuf,
        /// The kustomize binary kustomization directories build with.
        #[arg(long, default_value = "kustomize")]
        kustomize: PathBuf,
        /// Where fetched chart archives are kept (by digest).
        #[arg(long, env = "FERRY_CHART_CACHE")]
        chart_cache: Option<PathBuf>,
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
    /// Show every source (or one) of a running ferry: state, live revision, what needs attention.
    #[command(
        after_help = "Example:\n  ferry status                       # reads server.admin from ./ferry.yaml\n  \
        kubectl -n ferry exec deploy/ferry -- ferry status --config /etc/ferry/ferry.yaml\n  \
        ferry status platform --output json"
    )]
    Status {
        source: Option<String>,
        #[arg(long, short, value_enum, default_value = "text")]
        output: OutputFormat,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Sync a source now, wait for that sync to finish, print its verdict (exit 1 unless synced).
    #[command(after_help = "Example:\n  ferry sync dags\n  ferry sync platform --timeout 15m")]
    Sync {
        source: String,
        /// How long to wait for the sync to finish.
        #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
        timeout: Duration,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Stop applying a source (no apply, prune or self-heal; drift still reported) until `ferry resume`.
    #[command(
        after_help = "Example:\n  ferry suspend platform --reason \"freeze for the quarterly audit\"\n\n\
        The suspension is kept in suspensions_file (default <cache_dir>/suspensions.json) and survives restarts."
    )]
    Suspend {
        source: String,
        /// Why (required): shown in the status API, `ferry status` and the log.
        #[arg(long)]
        reason: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Resume a suspended source; what waited is applied at once.
    Resume {
        source: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
}

/// Where the admin endpoint is: `--admin-url` and `--token-file`, or
/// `server.admin` of the config file.
#[derive(clap::Args)]
struct AdminArgs {
    /// The config of the running ferry (its server.admin block).
    #[arg(long, short, default_value = "ferry.yaml")]
    config: PathBuf,
    /// The admin endpoint's URL, instead of the config's server.admin.listen.
    #[arg(long, env = "FERRY_ADMIN_URL", requires = "token_file")]
    admin_url: Option<String>,
    /// The bearer token's file, instead of the config's server.admin.token_file.
    #[arg(long, env = "FERRY_ADMIN_TOKEN_FILE")]
    token_file: Option<PathBuf>,
}

impl AdminArgs {
    fn connect(&self) -> anyhow::Result<ferry::admin::client::Admin> {
        use ferry::admin::client::Admin;
        let (url, token_file) = match (&self.admin_url, &self.token_file) {
            (Some(url), Some(file)) => (url.clone(), file.clone()),
            _ => {
                let config = Config::load_unchecked(&self.config)?;
                let admin = config.server.admin.with_context(|| {
                    format!(
                        "{}: no server.admin block, so ferry serves no admin endpoint; add one \
                         (listen, token_file) or pass --admin-url and --token-file",
                        self.config.display()
                    )
                })?;
                (
                    Admin::url_of(admin.listen),
                    self.token_file.clone().unwrap_or(admin.token_file),
                )
            }
        };
        let token = ferry::secret::from_file(&token_file)?;
        Ok(Admin::new(&url, &token))
    }
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
            ferry::daemon::run(config).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Validate {
            ref dir,
            ref manifests,
            ref platform,
            ref releases,
            ref kube_version,
            ref helm,
            ref kustomize,
            ref chart_cache,
        } => {
            let tools = ferry::desired::checkout::RenderTools {
                helm: helm.clone(),
                kustomize: kustomize.clone(),
                kube_version: kube_version.clone(),
                cache_dir: chart_cache.clone().unwrap_or_else(|| {
                    std::env::var_os("HOME")
                        .map(|h| PathBuf::from(h).join(".cache/ferry"))
                        .unwrap_or_else(|| std::env::temp_dir().join("ferry"))
                }),
            };
            validate_checkout(dir, manifests, platform, releases, &tools)
        }
        Command::CheckConfig {
            ref file,
            skip_files,
        } => {
            let config = if skip_files {
                Config::load_unchecked(file)?
            } else {
                Config::load(file)?
            };
            println!("{}: ok ({})", file.display(), config.summary());
            // The tools are the machine's, not the file's: said, never fatal
            // (a platform repo without releases needs neither).
            if let Some(kube) = &config.targets.kubernetes {
                for (ok, line) in
                    ferry::desired::tools::check(&kube.helm.binary, &kube.kustomize.binary)
                {
                    if ok {
                        println!("  {line}");
                    } else {
                        eprintln!("warning: {line}");
                    }
                }
            }
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
            let target = match target {
                PlanTarget::Kubernetes => "kubernetes",
                PlanTarget::Aws => "aws",
            };
            let outcome = plan_cmd(config, target, revision.clone(), output).await?;
            Ok(outcome.exit_code(detailed_exitcode))
        }
        Command::PublishDags(ref args) => {
            log(LogFormat::Text, "info")?;
            publish_dags(args).await
        }
        Command::Status {
            ref source,
            output,
            ref admin,
        } => {
            let admin = admin.connect()?;
            let answer = admin.status(source.as_deref())?;
            match (output, source) {
                (OutputFormat::Json, _) => println!("{}", serde_json::to_string_pretty(&answer)?),
                (OutputFormat::Text, Some(_)) => {
                    let table = serde_json::json!({ "sources": [answer] });
                    print!("{}", ferry::admin::client::render_table(&table));
                }
                (OutputFormat::Text, None) => {
                    print!("{}", ferry::admin::client::render_table(&answer))
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Sync {
            ref source,
            timeout,
            ref admin,
        } => {
            let status = admin.connect()?.sync(source, timeout)?;
            let (good, sentence) = ferry::admin::client::verdict(&status);
            println!("{sentence}");
            Ok(if good {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::Suspend {
            ref source,
            ref reason,
            ref admin,
        } => {
            let s = admin.connect()?.suspend(source, reason)?;
            println!(
                "{source}: suspended since {} ({}); nothing is applied until `ferry resume {source}`",
                s["since"].as_str().unwrap_or("now"),
                s["reason"].as_str().unwrap_or(reason)
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Resume {
            ref source,
            ref admin,
        } => {
            let answer = admin.connect()?.resume(source)?;
            if answer["resumed"].as_bool() == Some(true) {
                println!("{source}: resumed; syncing now");
            } else {
                println!("{source}: was not suspended");
            }
            Ok(ExitCode::SUCCESS)
        }
    }
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
    let mut agent = Agent::new(&config, status.clone(), metrics.clone(), None)?;
    let results = agent.sync_once().await;
    let (lines, ok) = quickstart::results(&results);
    for line in &lines {
        println!("  {line}");
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
    let listener = server::Listener::bind(config.server.listen, "server.listen").await?;
    ferry::daemon::serve_and_run(
        agent,
        None,
        &config,
        None,
        listener,
        ferry::daemon::shutdown_signal(),
        |addr| {
            println!(
                "  status pages       http://{addr}/   (JSON: /api/v1/status, metrics: /metrics)"
            );
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
fn validate_checkout(
    dir: &Path,
    manifests: &str,
    platform: &str,
    releases: &str,
    tools: &ferry::desired::checkout::RenderTools,
) -> anyhow::Result<ExitCode> {
    let report = ferry::desired::checkout::validate(dir, manifests, platform, releases, tools)?;
    if report.problems.is_empty() {
        println!(
            "ok: {} object(s) from {} file(s) and {} kustomization(s) under {manifests}/ and {} release(s) under {releases}/; {platform}: {}",
            report.objects, report.files, report.kustomizations, report.releases, report.platform
        );
        return Ok(ExitCode::SUCCESS);
    }
    for p in &report.problems {
        eprintln!("error: {p}");
    }
    eprintln!(
        "{} problem(s); fix them and run `ferry validate` again",
        report.problems.len()
    );
    Ok(ExitCode::FAILURE)
}

/// `ferry plan`: one target's plan of a revision, printed; nothing is applied.
async fn plan_cmd(
    config: Config,
    target: &'static str,
    revision: Option<String>,
    output: OutputFormat,
) -> anyhow::Result<PlanOutcome> {
    let run = ferry::oneshot::plan(&config, target, revision).await?;
    let commit = run.revision.commit;
    if let Some(by) = &run.revision.signed_by {
        eprintln!("commit {commit} signed by {by}");
    }
    if let Some(why) = &run.untrusted {
        eprintln!("warning: {why}; `ferry run` would not apply this revision");
    }
    let plan = match run.plan {
        Ok(plan) => plan,
        Err(rejection) => {
            for p in &rejection.problems {
                eprintln!("error: {p}");
            }
            eprintln!(
                "{} problem(s) in {}: `ferry run` would apply nothing of it",
                rejection.problems.len(),
                run.revision.short()
            );
            return Ok(PlanOutcome::Failed);
        }
    };
    match output {
        OutputFormat::Text => print!("{}", plan.render_text()),
        OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&plan.to_json())?),
    }
    Ok(PlanOutcome::of(plan.failed() > 0, plan.changes()))
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
            .map(|allowed_signers| ferry::config::VerifyConfig {
                allowed_signers: Some(allowed_signers),
                ..Default::default()
            }),
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
        airflow: None,
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
        notifications: Vec::new(),
        suspensions_file: None,
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
    let published =
        tokio::task::spawn_blocking(move || ferry::oneshot::publish_dags(&config, &reference))
            .await
            .context("publish task failed")??;
    match published {
        Ok(p) => {
            if let Some(by) = &p.signed_by {
                eprintln!("commit {} signed by {by}", p.outcome.commit);
            }
            for warning in &p.outcome.warnings {
                eprintln!("warning: {warning}");
            }
            println!(
                "{} {} -> {} ({} files written, {} reused, {} directory entries made)",
                if p.outcome.published {
                    "published"
                } else {
                    "already live:"
                },
                p.outcome.commit,
                p.link.display(),
                p.outcome.stats.files_written,
                p.outcome.stats.files_linked + p.outcome.stats.files_shared,
                p.outcome.stats.mutations
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
}
