//! `ferry.yaml`: the one config file, parsed strictly.
//!
//! Every struct denies unknown keys, and every error names the key path
//! (`sources[0].auth.token_file`) and, where the YAML parser knows it, the
//! line. Secrets are never inline: only file paths and environment variable
//! names appear here, and [`crate::secret`] reads them at use time so that a
//! rotated Kubernetes Secret is picked up without a restart.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: cannot read config: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: {key}: {message}", location(path, *line))]
    Invalid {
        path: PathBuf,
        /// Key path such as `sources[0].interval`; `(root)` for the document itself.
        key: String,
        line: Option<usize>,
        message: String,
    },
}

fn location(path: &Path, line: Option<usize>) -> String {
    match line {
        Some(line) => format!("{}:{line}", path.display()),
        None => path.display().to_string(),
    }
}

impl ConfigError {
    pub fn key(&self) -> Option<&str> {
        match self {
            ConfigError::Invalid { key, .. } => Some(key),
            ConfigError::Read { .. } => None,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where bare mirrors of the sources live. Safe to lose: ferry refetches.
    #[serde(default = "default_cache_dir")]
    pub cache_dir: PathBuf,
    #[serde(default)]
    pub server: ServerConfig,
    #[serde(default)]
    pub log: LogConfig,
    pub sources: Vec<SourceConfig>,
    #[serde(default)]
    pub targets: TargetsConfig,
    #[serde(default)]
    pub github: Option<GithubConfig>,
    /// Hold a Kubernetes Lease before syncing, so two ferry processes never
    /// apply or publish at once.
    #[serde(default)]
    pub leader_election: Option<LeaderElectionConfig>,
    /// Where people are told what happened (Slack, Teams, signed webhooks).
    #[serde(default)]
    pub notifications: Vec<NotificationConfig>,
    /// Which sources are suspended (`ferry suspend`); default
    /// `<cache_dir>/suspensions.json`. State, not cache: put it on a
    /// volume that outlives the pod if a suspension must too.
    #[serde(default)]
    pub suspensions_file: Option<PathBuf>,
}

impl Config {
    pub fn suspensions_file(&self) -> PathBuf {
        self.suspensions_file
            .clone()
            .unwrap_or_else(|| self.cache_dir.join("suspensions.json"))
    }
}

/// One receiver of notifications.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotificationConfig {
    /// Names the receiver in logs, metrics and the outbox.
    pub name: String,
    #[serde(rename = "type")]
    pub kind: NotificationKind,
    /// The webhook URL, read from a file: for Slack and Teams the URL is
    /// the credential.
    pub url_file: Option<PathBuf>,
    /// The URL inline (`type: webhook` only).
    pub url: Option<String>,
    /// `type: webhook`: the body is signed with HMAC-SHA256 of this secret
    /// (`X-Ferry-Signature-256: sha256=<hex>`, as GitHub signs its webhooks).
    pub secret_file: Option<PathBuf>,
    /// Which events; empty: all of them.
    #[serde(default)]
    pub events: Vec<crate::notify::EventKind>,
    /// Which sources' events; empty: every source's.
    #[serde(default)]
    pub sources: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum NotificationKind {
    /// A Slack incoming webhook.
    Slack,
    /// A Microsoft Teams Workflows webhook (an Adaptive Card).
    Teams,
    /// Any receiver of ferry's JSON event, signed.
    Webhook,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LeaderElectionConfig {
    /// Namespace of the Lease; default: the pod's own (from its service
    /// account), else `default`.
    pub namespace: Option<String>,
    #[serde(default = "default_lease_name")]
    pub lease_name: String,
    /// How long a Lease not renewed stays held (default 15s). A successor
    /// waits this long after the holder dies; the holder stops syncing when
    /// it cannot renew within two thirds of it.
    #[serde(default = "default_lease_duration", with = "humantime_serde")]
    pub lease_duration: Duration,
    /// This process's name in the Lease; default `$POD_NAME`, else
    /// `<hostname>-<pid>`.
    pub identity: Option<String>,
    /// Cluster to hold the Lease in; default in-cluster config.
    pub kubeconfig: Option<PathBuf>,
}

fn default_prune_limit() -> u8 {
    100
}

fn default_lease_name() -> String {
    "ferry".into()
}

fn default_lease_duration() -> Duration {
    Duration::from_secs(15)
}

/// GitHub integration. With `webhook_secret_file` set, `POST /webhooks/github`
/// accepts signed deliveries; polling stays on as the fallback. With
/// credentials (`token_file`, `token_env` or `app`), ferry reports commit
/// statuses, deployments and PR previews.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GithubConfig {
    /// File holding the webhook secret (as configured on the GitHub webhook).
    pub webhook_secret_file: Option<PathBuf>,
    /// REST API root; `https://HOST/api/v3` for GitHub Enterprise Server.
    #[serde(default = "default_github_api_url")]
    pub api_url: String,
    /// How GitHub users reach ferry, for the links in statuses and
    /// deployments (e.g. `https://ferry.example.com`). Defaults to
    /// `http://<server.listen>`.
    pub external_url: Option<String>,
    /// File holding a token (fine-grained PAT or any installation token),
    /// re-read before each request so a rotated token needs no restart.
    pub token_file: Option<PathBuf>,
    /// Environment variable holding a token.
    pub token_env: Option<String>,
    /// Authenticate as a GitHub App installation instead of with a token.
    pub app: Option<GithubAppConfig>,
    /// Environment of the GitHub Deployments ferry records.
    #[serde(default = "default_environment")]
    pub environment: String,
    /// Record a GitHub Deployment for each revision ferry applies.
    #[serde(default = "yes")]
    pub deployments: bool,
    /// Plan pull requests (on `pull_request` webhooks) and comment the plan.
    #[serde(default = "yes")]
    pub previews: bool,
    /// What was reported for which commit, kept across restarts.
    /// Defaults to `<cache_dir>/github-report.json`.
    pub state_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GithubAppConfig {
    pub app_id: u64,
    pub installation_id: u64,
    /// The App's private key (PEM, as downloaded from GitHub).
    pub private_key_file: PathBuf,
}

impl GithubConfig {
    /// True when ferry has credentials to write to GitHub.
    pub fn reporting(&self) -> bool {
        self.token_file.is_some() || self.token_env.is_some() || self.app.is_some()
    }
}

fn default_github_api_url() -> String {
    "https://api.github.com".into()
}

fn default_environment() -> String {
    "production".into()
}

fn default_cache_dir() -> PathBuf {
    PathBuf::from("/var/cache/ferry")
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// The admin endpoint `ferry status`, `sync`, `suspend` and `resume`
    /// talk to; absent: none.
    #[serde(default)]
    pub admin: Option<AdminConfig>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: default_listen(),
            admin: None,
        }
    }
}

/// The admin endpoint: on an address of its own (never the public one
/// webhooks arrive on), every request with `Authorization: Bearer <token>`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    pub listen: SocketAddr,
    /// The token, read from this file at every request (rotation needs no restart).
    pub token_file: PathBuf,
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 8080))
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    #[serde(default)]
    pub format: LogFormat,
    /// A tracing filter directive, e.g. `info` or `ferry=debug,info`.
    #[serde(default = "default_log_level")]
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: LogFormat::default(),
            level: default_log_level(),
        }
    }
}

fn default_log_level() -> String {
    "info".into()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    pub name: String,
    /// `https://`, `http://`, `ssh://`, `git://` or `file://` URL (or a local path).
    pub url: String,
    #[serde(default = "default_branch")]
    pub branch: String,
    /// How often to poll when nothing pokes the source.
    #[serde(default = "default_interval", with = "humantime_serde")]
    pub interval: Duration,
    /// Upper bound for one fetch, connect included.
    #[serde(default = "default_fetch_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// Longest wait between retries while the remote keeps failing.
    #[serde(default = "default_max_backoff", with = "humantime_serde")]
    pub max_backoff: Duration,
    #[serde(default)]
    pub auth: AuthConfig,
    /// `owner/name` on GitHub, to match webhook deliveries. Derived from
    /// github.com URLs; set it for GitHub Enterprise or mirrors.
    pub github_repo: Option<String>,
    /// Signature policy: when set, a branch head is evaluated only if it is
    /// signed by a listed key; otherwise nothing of it applies.
    pub verify: Option<VerifyConfig>,
}

/// Who may sign a branch head. Every file is re-read at each check, so a
/// rotated key takes effect without a restart.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VerifyConfig {
    /// SSH public keys, in git's `gpg.ssh.allowedSignersFile` format.
    #[serde(default)]
    pub allowed_signers: Option<PathBuf>,
    /// OpenPGP public keys of the people who may sign (keyring files,
    /// armored or binary, as `gpg --export [--armor]` writes them).
    #[serde(default)]
    pub openpgp_keys: Vec<PathBuf>,
    /// GitHub's web-flow keys: commits GitHub made itself (merge button,
    /// squash merges, web edits, bots). Such a signature proves "made by
    /// GitHub", not "approved by a listed person"; see `github_commits`.
    #[serde(default)]
    pub github_keys: Vec<PathBuf>,
    #[serde(default)]
    pub github_commits: GithubCommits,
    #[serde(default)]
    pub expired_keys: ExpiredKeys,
}

impl VerifyConfig {
    /// Keys set under `verify`, by config key, for errors and checks.
    pub fn files(&self) -> Vec<(String, &Path)> {
        let mut files = Vec::new();
        if let Some(path) = &self.allowed_signers {
            files.push(("allowed_signers".to_string(), path.as_path()));
        }
        for (i, path) in self.openpgp_keys.iter().enumerate() {
            files.push((format!("openpgp_keys[{i}]"), path.as_path()));
        }
        for (i, path) in self.github_keys.iter().enumerate() {
            files.push((format!("github_keys[{i}]"), path.as_path()));
        }
        files
    }
}

/// Which commits signed by a `github_keys` key are accepted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GithubCommits {
    /// Every commit GitHub signed (merges, squash merges, web edits, bots).
    #[default]
    Any,
    /// Only merge commits whose second parent (the PR head) is itself
    /// signed by a listed person's key (SSH or OpenPGP).
    MergesOfSignedHeads,
}

/// An OpenPGP key past its expiry.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExpiredKeys {
    /// A signature made before the key expired stays good (as git and
    /// GitHub show it); one made after is refused.
    #[default]
    SignedBeforeExpiry,
    /// Once the key has expired, every signature by it is refused.
    Refuse,
}

impl SourceConfig {
    /// `owner/name` (lowercase) this source receives webhooks for, if any.
    pub fn github_repo(&self) -> Option<String> {
        if let Some(repo) = &self.github_repo {
            return Some(repo.trim_end_matches(".git").to_ascii_lowercase());
        }
        let rest = self
            .url
            .strip_prefix("https://github.com/")
            .or_else(|| self.url.strip_prefix("ssh://git@github.com/"))
            .or_else(|| self.url.strip_prefix("git@github.com:"))?;
        let repo = rest.trim_end_matches('/').trim_end_matches(".git");
        (repo.split('/').count() == 2).then(|| repo.to_ascii_lowercase())
    }
}

fn default_max_backoff() -> Duration {
    Duration::from_secs(300)
}

fn default_branch() -> String {
    "main".into()
}
fn default_interval() -> Duration {
    Duration::from_secs(60)
}
fn default_fetch_timeout() -> Duration {
    Duration::from_secs(120)
}

/// Credentials for one source; every secret is a file or an environment variable.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// HTTPS user name. Defaults to `x-access-token` with a token, which GitHub accepts.
    pub username: Option<String>,
    pub token_file: Option<PathBuf>,
    pub token_env: Option<String>,
    pub password_file: Option<PathBuf>,
    pub password_env: Option<String>,
    pub ssh_key_file: Option<PathBuf>,
    /// OpenSSH known_hosts file; SSH hosts not listed in it are refused.
    pub known_hosts_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetsConfig {
    pub dags: Option<DagsTargetConfig>,
    pub kubernetes: Option<KubernetesTargetConfig>,
    pub aws: Option<AwsTargetConfig>,
}

/// The platform repo's `platform.yaml`: EKS nodegroups and addons,
/// SageMaker endpoints (the `aws` cargo feature).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AwsTargetConfig {
    /// Which source holds the platform repo.
    pub source: String,
    /// Path of the declaration in the repo.
    #[serde(default = "default_platform_file")]
    pub file: String,
    /// Region when platform.yaml names none (else the default AWS chain's).
    pub region: Option<String>,
    /// AWS API endpoint override (tests, other partitions, VPC endpoints).
    pub endpoint_url: Option<String>,
    /// Delete ferry-managed SageMaker endpoints that git no longer declares.
    #[serde(default)]
    pub prune: bool,
    /// Re-read AWS state this often and report drift.
    #[serde(default = "default_aws_drift_interval", with = "humantime_serde")]
    pub drift_interval: Duration,
    /// Upper bound for one EKS update or SageMaker deployment to finish.
    #[serde(default = "default_aws_update_timeout", with = "humantime_serde")]
    pub update_timeout: Duration,
    /// How often a running update is polled.
    #[serde(default = "default_aws_poll_interval", with = "humantime_serde")]
    pub poll_interval: Duration,
    /// Fixed keys instead of the default chain: never from ferry.yaml
    /// (secrets are not inline), only for callers that hold keys already,
    /// such as tests against moto, so nothing reads the process environment.
    #[serde(skip)]
    pub static_credentials: Option<StaticCredentials>,
}

/// An AWS access key pair.
#[derive(Clone)]
pub struct StaticCredentials {
    pub access_key_id: String,
    pub secret_access_key: crate::secret::Secret,
}

impl std::fmt::Debug for StaticCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "StaticCredentials({}, <redacted>)", self.access_key_id)
    }
}

fn default_platform_file() -> String {
    "platform.yaml".into()
}

fn default_aws_drift_interval() -> Duration {
    Duration::from_secs(300)
}

fn default_aws_update_timeout() -> Duration {
    Duration::from_secs(60 * 60)
}

fn default_aws_poll_interval() -> Duration {
    Duration::from_secs(15)
}

/// The platform repo's Kubernetes manifests.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KubernetesTargetConfig {
    /// Name of the source that feeds this target.
    pub source: String,
    /// Directory of the repo holding manifests (any depth).
    #[serde(default = "default_manifests_path")]
    pub path: String,
    /// Namespace given to namespaced objects that set none.
    #[serde(default = "default_namespace")]
    pub default_namespace: String,
    /// Namespaces objects may live in (a Namespace object counts as its own); empty allows all.
    #[serde(default)]
    pub allowed_namespaces: Vec<String>,
    /// `Kind` (core group) or `Kind.group`; empty allows all.
    #[serde(default)]
    pub allowed_kinds: Vec<String>,
    /// The cluster-scoped objects this target may apply (default: any
    /// Namespace). Anything cluster-wide a chart ships (CRDs, ClusterRoles,
    /// webhooks) is refused unless listed here, in ferry's config, which a
    /// platform-repo PR cannot change.
    #[serde(default = "default_cluster_scoped")]
    pub cluster_scoped: Vec<ClusterScoped>,
    /// Take over fields another field manager owns instead of reporting the conflict.
    #[serde(default)]
    pub force: bool,
    /// Delete objects removed from git (only those in ferry's inventory and
    /// labelled as ferry's; opt out per object with `ferry.dev/prune: disabled`).
    #[serde(default = "yes")]
    pub prune: bool,
    /// The prune guard: a revision whose apply would prune at least this
    /// share of the inventory (percent), or any Namespace, is refused
    /// unless its commit message allows it (`Ferry-Allow-Prune: <why>`).
    #[serde(default = "default_prune_limit")]
    pub prune_limit_percent: u8,
    /// Namespace of the inventory ConfigMap; defaults to `default_namespace`.
    pub inventory_namespace: Option<String>,
    /// How often to compare the cluster with the applied revision (dry run).
    #[serde(default = "default_drift_interval", with = "humantime_serde")]
    pub drift_interval: Duration,
    /// Re-apply when drift is found, taking fields back from whoever changed
    /// them (implies `force`).
    #[serde(default)]
    pub self_heal: bool,
    /// How long to wait after apply for workloads to become healthy
    /// (observed generation, ready replicas, Job completion); `0s` skips it.
    #[serde(default = "default_health_timeout", with = "humantime_serde")]
    pub health_timeout: Duration,
    /// How long to wait for a new CRD to be Established before its objects.
    #[serde(default = "default_wait_timeout", with = "humantime_serde")]
    pub wait_timeout: Duration,
    /// Fields ferry leaves to other managers (an HPA's `spec.replicas`,
    /// an injected `caBundle`): never drift or a planned change, and never
    /// sent with git's value to an object that exists.
    #[serde(default)]
    pub ignore: Vec<IgnoreRule>,
    /// Kubeconfig file; default: in-cluster service account, then `KUBECONFIG`/`~/.kube/config`.
    pub kubeconfig: Option<PathBuf>,
    /// Directory of the repo holding Helm release files (`<name>.yaml`,
    /// format `ferry.dev/v1` `HelmRelease`); absent at a commit: none.
    #[serde(default = "default_releases_path")]
    pub releases_path: String,
    /// How Helm releases are rendered.
    #[serde(default)]
    pub helm: HelmConfig,
    /// How kustomization directories under `path` are built.
    #[serde(default)]
    pub kustomize: KustomizeConfig,
    /// Where Secrets annotated `ferry.dev/secrets-manager` get their
    /// values; absent: such Secrets are refused.
    pub secrets_manager: Option<SecretsManagerConfig>,
    /// Where fetched chart archives are kept: the config's `cache_dir`.
    #[serde(skip)]
    pub cache_dir: PathBuf,
    /// Who writes this target's inventory: the source's URL, branch and the
    /// manifests path. Set when the config is parsed; it names the
    /// inventory so that two ferry instances on one cluster never share
    /// (and prune from) one. Empty: the legacy name, source only.
    #[serde(skip)]
    pub owner: String,
}

fn yes() -> bool {
    true
}

fn default_drift_interval() -> Duration {
    Duration::from_secs(300)
}

fn default_health_timeout() -> Duration {
    Duration::from_secs(300)
}

fn default_wait_timeout() -> Duration {
    Duration::from_secs(120)
}

fn default_manifests_path() -> String {
    "manifests".into()
}

/// Cluster-scoped objects of one kind a target may apply.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ClusterScoped {
    /// `Kind` (core group) or `Kind.group`, as in allowed_kinds.
    pub kind: String,
    /// The names allowed; empty: any of that kind.
    #[serde(default)]
    pub names: Vec<String>,
}

/// Fields of some objects that another manager decides (see
/// [`crate::kubernetes::ignore`]).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct IgnoreRule {
    /// `Kind` (any group) or `Kind.group`.
    pub kind: String,
    /// The object's name; `*` matches any run of characters. Absent: any.
    pub name: Option<String>,
    /// Absent: any namespace (and cluster-scoped objects).
    pub namespace: Option<String>,
    /// RFC 6901 pointers into the object; a segment `*` is any key or index.
    pub json_pointers: Vec<crate::kubernetes::ignore::Pointer>,
}

pub fn default_cluster_scoped() -> Vec<ClusterScoped> {
    vec![ClusterScoped {
        kind: "Namespace".into(),
        names: Vec::new(),
    }]
}

fn default_releases_path() -> String {
    "releases".into()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HelmConfig {
    /// The helm binary (v3.22.0, as ferry's image ships it).
    #[serde(default = "default_helm_binary")]
    pub binary: PathBuf,
    /// The Kubernetes version charts are rendered for (`--kube-version`);
    /// default: the live cluster's, asked for each revision with releases.
    pub kube_version: Option<String>,
    /// `--api-versions` beyond those the cluster serves (it is asked too),
    /// e.g. the group of a CRD the same revision installs.
    #[serde(default)]
    pub api_versions: Vec<String>,
    /// OCI registries (`host:port`) spoken to over plain HTTP, not HTTPS: a
    /// registry inside the cluster's network, or a test's.
    #[serde(default)]
    pub plain_http_registries: Vec<String>,
    /// Chart repositories and OCI registries that need credentials.
    #[serde(default)]
    pub repositories: Vec<ChartRepositoryLogin>,
}

/// One chart repository's credentials; the password from a file, never
/// inline.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChartRepositoryLogin {
    /// The repository URL exactly as releases name it.
    pub url: String,
    pub username: String,
    pub password_file: PathBuf,
}

impl Default for HelmConfig {
    fn default() -> HelmConfig {
        HelmConfig {
            binary: default_helm_binary(),
            kube_version: None,
            api_versions: Vec::new(),
            plain_http_registries: Vec::new(),
            repositories: Vec::new(),
        }
    }
}

fn default_helm_binary() -> PathBuf {
    PathBuf::from("helm")
}

/// AWS Secrets Manager, as the Kubernetes target reads it, or a local
/// directory standing in for it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretsManagerConfig {
    /// Instead of AWS: each secret's value is the file `<directory>/<secret
    /// id>` (local runs, `ferry quickstart`).
    pub directory: Option<PathBuf>,
    /// Region of the secrets (else the default AWS chain's).
    pub region: Option<String>,
    /// API endpoint override (tests, VPC endpoints).
    pub endpoint_url: Option<String>,
    /// As the AWS target's: fixed keys from callers that hold them, never
    /// from ferry.yaml.
    #[serde(skip)]
    pub static_credentials: Option<StaticCredentials>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KustomizeConfig {
    /// The kustomize binary (v5.8.2, as ferry's image ships it).
    #[serde(default = "default_kustomize_binary")]
    pub binary: PathBuf,
}

impl Default for KustomizeConfig {
    fn default() -> KustomizeConfig {
        KustomizeConfig {
            binary: default_kustomize_binary(),
        }
    }
}

fn default_kustomize_binary() -> PathBuf {
    PathBuf::from("kustomize")
}

fn default_namespace() -> String {
    "default".into()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DagsTargetConfig {
    /// Name of the source that feeds this target.
    pub source: String,
    /// Directory inside the repo to publish (default `dags`, as the DAGs
    /// template lays it out, so its `tests/` never reach Airflow); `""` or
    /// `.` publishes the whole repo.
    #[serde(default = "default_subdir")]
    pub subdir: String,
    /// Volume root. Revisions live in `<destination>/.ferry/<sha>`.
    pub destination: PathBuf,
    /// Name of the symlink in `destination` that Airflow's `dags_folder` points at.
    #[serde(default = "default_link")]
    pub link: String,
    #[serde(default)]
    pub retention: RetentionConfig,
    #[serde(default)]
    pub validation: ValidationConfig,
    /// Airflow's API, asked before pruning which revisions Airflow may
    /// still run (the `FerryDagBundle` versions of its runs and DAGs).
    #[serde(default)]
    pub airflow: Option<AirflowConfig>,
}

/// A read-only Airflow user ferry asks which revisions are still in use.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AirflowConfig {
    /// The API server's base URL, e.g. `http://airflow-api-server.airflow.svc:8080`.
    pub url: String,
    pub username: String,
    /// Read at each check, so a rotated password is used.
    pub password_file: PathBuf,
    /// The name `FerryDagBundle` is configured under in Airflow.
    #[serde(default = "default_bundle")]
    pub bundle: String,
    /// Revisions of runs that ended within this window are kept too, so a
    /// failed task can still be cleared and re-run on its own code.
    #[serde(default = "default_window", with = "humantime_serde")]
    pub window: Duration,
    #[serde(default = "default_airflow_timeout", with = "humantime_serde")]
    pub timeout: Duration,
}

fn default_bundle() -> String {
    "dags-folder".into()
}

fn default_window() -> Duration {
    Duration::from_secs(24 * 3600)
}

fn default_airflow_timeout() -> Duration {
    Duration::from_secs(10)
}

fn default_link() -> String {
    "current".into()
}

/// A superseded revision is removed only when it is outside the newest `keep`
/// AND was superseded more than `max_age` ago, so tasks that started on it
/// can finish.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionConfig {
    #[serde(default = "default_keep")]
    pub keep: usize,
    #[serde(default = "default_max_age", with = "humantime_serde")]
    pub max_age: Duration,
    /// How often the daemon looks again for what it may remove, besides
    /// after each publish: ages pass and Airflow's runs end between commits.
    #[serde(default = "default_retention_interval", with = "humantime_serde")]
    pub interval: Duration,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        RetentionConfig {
            keep: default_keep(),
            max_age: default_max_age(),
            interval: default_retention_interval(),
        }
    }
}

fn default_retention_interval() -> Duration {
    Duration::from_secs(60)
}

fn default_subdir() -> String {
    "dags".into()
}

fn default_keep() -> usize {
    5
}
fn default_max_age() -> Duration {
    Duration::from_secs(3600)
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ValidationPolicy {
    /// A revision with an invalid DAG is not published; the last good one stays live.
    #[default]
    Block,
    /// Publish anyway and report the problems.
    Warn,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ValidationConfig {
    #[serde(default)]
    pub policy: ValidationPolicy,
    /// argv of a hook run in the staged revision directory (also passed as
    /// `FERRY_STAGED_DIR`); a non-zero exit fails validation.
    #[serde(default)]
    pub command: Vec<String>,
    #[serde(default = "default_validate_timeout", with = "humantime_serde")]
    pub timeout: Duration,
}

impl Default for ValidationConfig {
    fn default() -> Self {
        ValidationConfig {
            policy: ValidationPolicy::default(),
            command: Vec::new(),
            timeout: default_validate_timeout(),
        }
    }
}

fn default_validate_timeout() -> Duration {
    Duration::from_secs(120)
}

impl Config {
    /// Reads, parses and validates `path`, and checks the files it names
    /// that ferry reads at start: what `ferry run` refuses, `check-config`
    /// refuses too.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let config = Config::load_unchecked(path)?;
        config.check_files(path)?;
        Ok(config)
    }

    /// [`Config::load`] without [`Config::check_files`], for checking a
    /// config away from the machine (or cluster) whose files it names.
    pub fn load_unchecked(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Config::parse(&text, path)
    }

    /// The files ferry reads at start (secrets and policies), readable and
    /// well-formed: webhook secret, GitHub token or App key, allowed signers.
    /// Secrets are read and dropped, never printed.
    pub fn check_files(&self, path: &Path) -> Result<(), ConfigError> {
        let invalid = |key: String, message: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            key,
            line: None,
            message,
        };
        for (i, source) in self.sources.iter().enumerate() {
            if let Some(verify) = &source.verify {
                crate::signature::Policy::check(verify)
                    .map_err(|(key, e)| invalid(format!("sources[{i}].verify.{key}"), e))?;
            }
        }
        if let Some(github) = &self.github {
            let files = [
                (
                    "github.webhook_secret_file",
                    github.webhook_secret_file.as_ref(),
                ),
                ("github.token_file", github.token_file.as_ref()),
                (
                    "github.app.private_key_file",
                    github.app.as_ref().map(|a| &a.private_key_file),
                ),
            ];
            for (key, file) in files {
                if let Some(file) = file {
                    crate::secret::from_file(file)
                        .map_err(|e| invalid(key.into(), e.to_string()))?;
                }
            }
        }
        if let Some(admin) = &self.server.admin {
            crate::secret::from_file(&admin.token_file)
                .map_err(|e| invalid("server.admin.token_file".into(), e.to_string()))?;
        }
        for (i, n) in self.notifications.iter().enumerate() {
            for (key, file) in [("url_file", &n.url_file), ("secret_file", &n.secret_file)] {
                if let Some(file) = file {
                    crate::secret::from_file(file)
                        .map_err(|e| invalid(format!("notifications[{i}].{key}"), e.to_string()))?;
                }
            }
        }
        if let Some(airflow) = self.targets.dags.as_ref().and_then(|d| d.airflow.as_ref()) {
            crate::secret::from_file(&airflow.password_file)
                .map_err(|e| invalid("targets.dags.airflow.password_file".into(), e.to_string()))?;
        }
        if let Some(kube) = &self.targets.kubernetes {
            for (i, repo) in kube.helm.repositories.iter().enumerate() {
                crate::secret::from_file(&repo.password_file).map_err(|e| {
                    invalid(
                        format!("targets.kubernetes.helm.repositories[{i}].password_file"),
                        e.to_string(),
                    )
                })?;
            }
        }
        Ok(())
    }

    /// Parses and validates; `path` is only used to name the file in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let config: Config = crate::yaml::parse(text).map_err(|e| ConfigError::Invalid {
            path: path.to_path_buf(),
            key: e.key,
            line: e.line,
            message: e.message,
        })?;
        config.validate(path).map_err(|err| match err {
            ConfigError::Invalid {
                path,
                key,
                line: None,
                message,
            } => ConfigError::Invalid {
                line: crate::yaml::line_of(text, &key),
                path,
                key,
                message,
            },
            other => other,
        })?;
        let mut config = config;
        if let Some(kube) = config.targets.kubernetes.as_mut()
            && let Some(source) = config.sources.iter().find(|s| s.name == kube.source)
        {
            kube.owner = format!("{}#{}:{}", source.url, source.branch, kube.path);
        }
        if let Some(kube) = config.targets.kubernetes.as_mut() {
            kube.cache_dir = config.cache_dir.clone();
        }
        Ok(config)
    }

    pub fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let invalid = |key: String, message: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            key,
            line: None,
            message,
        };
        if self.sources.is_empty() {
            return Err(invalid(
                "sources".into(),
                "at least one source is required".into(),
            ));
        }
        if let Some(admin) = &self.server.admin
            && admin.listen.port() == self.server.listen.port()
        {
            return Err(invalid(
                "server.admin.listen".into(),
                format!(
                    "{} shares its port with server.listen, which webhooks reach: give the admin endpoint \
                     a port of its own, e.g. 127.0.0.1:9091",
                    admin.listen
                ),
            ));
        }
        if let Some(leader) = &self.leader_election {
            if leader.lease_duration < Duration::from_secs(3) {
                return Err(invalid(
                    "leader_election.lease_duration".into(),
                    "must be at least 3s (renewals happen every seventh of it)".into(),
                ));
            }
            if !valid_name(&leader.lease_name) {
                return Err(invalid(
                    "leader_election.lease_name".into(),
                    format!(
                        "`{}` is not a valid name: use 1-63 lowercase letters, digits and `-`",
                        leader.lease_name
                    ),
                ));
            }
        }
        let mut names = HashSet::new();
        for (i, source) in self.sources.iter().enumerate() {
            let key = |k: &str| format!("sources[{i}].{k}");
            if !valid_name(&source.name) {
                return Err(invalid(
                    key("name"),
                    format!(
                        "`{}` is not a valid name: use 1-63 lowercase letters, digits and `-`",
                        source.name
                    ),
                ));
            }
            if !names.insert(source.name.as_str()) {
                return Err(invalid(
                    key("name"),
                    format!("duplicate source name `{}`", source.name),
                ));
            }
            if source.branch.is_empty() || git2::Branch::name_is_valid(&source.branch) != Ok(true) {
                return Err(invalid(
                    key("branch"),
                    format!("`{}` is not a valid branch name", source.branch),
                ));
            }
            if source.interval < Duration::from_secs(1) {
                return Err(invalid(key("interval"), "must be at least 1s".into()));
            }
            if let Some(verify) = &source.verify {
                if verify.files().is_empty() {
                    return Err(invalid(
                        key("verify"),
                        "lists no keys: set allowed_signers (SSH), openpgp_keys or github_keys"
                            .into(),
                    ));
                }
                if verify.github_commits == GithubCommits::MergesOfSignedHeads
                    && verify.allowed_signers.is_none()
                    && verify.openpgp_keys.is_empty()
                {
                    return Err(invalid(
                        key("verify.github_commits"),
                        "merges_of_signed_heads needs the keys of the people who sign PR heads: set allowed_signers or openpgp_keys".into(),
                    ));
                }
            }
            if source.max_backoff < Duration::from_secs(1) {
                return Err(invalid(key("max_backoff"), "must be at least 1s".into()));
            }
            if source.timeout < Duration::from_secs(1) {
                return Err(invalid(key("timeout"), "must be at least 1s".into()));
            }
            validate_auth(&source.url, &source.auth)
                .map_err(|(k, message)| invalid(key(k), message))?;
        }
        if let Some(dags) = &self.targets.dags {
            if !names.contains(dags.source.as_str()) {
                return Err(invalid(
                    "targets.dags.source".into(),
                    format!(
                        "no source named `{}`; defined sources: {}",
                        dags.source,
                        self.sources
                            .iter()
                            .map(|s| s.name.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                ));
            }
            if dags.link.is_empty()
                || dags.link.contains('/')
                || dags.link.starts_with('.')
                || dags.link == ".ferry"
            {
                return Err(invalid(
                    "targets.dags.link".into(),
                    format!(
                        "`{}` must be a plain file name that does not start with `.`",
                        dags.link
                    ),
                ));
            }
            if dags.retention.keep == 0 {
                return Err(invalid(
                    "targets.dags.retention.keep".into(),
                    "must be at least 1 (the live revision is always kept; keep counts superseded ones Airflow may still run)".into(),
                ));
            }
            if Path::new(&dags.subdir).is_absolute() || dags.subdir.split('/').any(|c| c == "..") {
                return Err(invalid(
                    "targets.dags.subdir".into(),
                    "must be a relative path inside the repository".into(),
                ));
            }
            if let Some(airflow) = &dags.airflow {
                let parsed = url::Url::parse(&airflow.url);
                if !parsed
                    .as_ref()
                    .is_ok_and(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some())
                {
                    return Err(invalid(
                        "targets.dags.airflow.url".into(),
                        format!(
                            "`{}` is not an http(s) URL; give the API server's base URL, e.g. http://airflow-api-server.airflow.svc:8080",
                            airflow.url
                        ),
                    ));
                }
                if parsed.is_ok_and(|u| !u.username().is_empty() || u.password().is_some()) {
                    return Err(invalid(
                        "targets.dags.airflow.url".into(),
                        "the URL carries credentials; use username and password_file instead"
                            .into(),
                    ));
                }
            }
            if dags
                .validation
                .command
                .first()
                .is_some_and(|c| c.is_empty())
            {
                return Err(invalid(
                    "targets.dags.validation.command".into(),
                    "the first element must be the program to run".into(),
                ));
            }
        }
        let mut receivers = HashSet::new();
        for (i, n) in self.notifications.iter().enumerate() {
            let key = |k: &str| format!("notifications[{i}].{k}");
            if !valid_name(&n.name) || !receivers.insert(n.name.as_str()) {
                return Err(invalid(
                    key("name"),
                    format!(
                        "`{}` must be a unique name of 1-63 lowercase letters, digits and `-`",
                        n.name
                    ),
                ));
            }
            match (&n.url, &n.url_file) {
                (Some(_), Some(_)) | (None, None) => {
                    return Err(invalid(
                        key("url_file"),
                        "set one of url_file and url".into(),
                    ));
                }
                (Some(_), None) if n.kind != NotificationKind::Webhook => {
                    return Err(invalid(
                        key("url"),
                        "a Slack or Teams webhook URL is its credential: put it in a file and set url_file".into(),
                    ));
                }
                (Some(url), None) => {
                    let parsed = url::Url::parse(url);
                    if !parsed
                        .as_ref()
                        .is_ok_and(|u| matches!(u.scheme(), "http" | "https"))
                    {
                        return Err(invalid(
                            key("url"),
                            format!("`{url}` is not an http(s) URL"),
                        ));
                    }
                    if parsed.is_ok_and(|u| u.password().is_some() || u.query().is_some()) {
                        return Err(invalid(
                            key("url"),
                            "the URL carries credentials or a query; put it in a file and set url_file".into(),
                        ));
                    }
                }
                (None, Some(_)) => {}
            }
            if n.secret_file.is_some() && n.kind != NotificationKind::Webhook {
                return Err(invalid(
                    key("secret_file"),
                    "only `type: webhook` signs its body; Slack and Teams authenticate by the URL"
                        .into(),
                ));
            }
            if let Some(unknown) = n.sources.iter().find(|s| !names.contains(s.as_str())) {
                return Err(invalid(
                    key("sources"),
                    format!("no source is named `{unknown}`"),
                ));
            }
        }
        for (i, source) in self.sources.iter().enumerate() {
            if let Some(repo) = &source.github_repo
                && (repo.split('/').count() != 2 || repo.split('/').any(str::is_empty))
            {
                return Err(invalid(
                    format!("sources[{i}].github_repo"),
                    format!("`{repo}` must be `owner/name`"),
                ));
            }
        }
        if let Some(github) = &self.github {
            let credentials = [
                github.token_file.is_some(),
                github.token_env.is_some(),
                github.app.is_some(),
            ];
            if credentials.iter().filter(|c| **c).count() > 1 {
                return Err(invalid(
                    "github".into(),
                    "set one of token_file, token_env and app, not several".into(),
                ));
            }
            for (key, url) in [
                ("github.api_url", Some(&github.api_url)),
                ("github.external_url", github.external_url.as_ref()),
            ] {
                if let Some(url) = url
                    && !(url.starts_with("https://") || url.starts_with("http://"))
                {
                    return Err(invalid(
                        key.into(),
                        format!("`{url}` must be an http:// or https:// URL"),
                    ));
                }
            }
            // GitHub links (status "Details", deployments) must lead
            // somewhere: not to the unspecified address ferry listens on.
            let effective = github
                .external_url
                .clone()
                .unwrap_or_else(|| format!("http://{}", self.server.listen));
            if github.reporting() && unroutable(&effective) {
                return Err(invalid(
                    "github.external_url".into(),
                    format!(
                        "GitHub statuses would link to {effective}, which nobody can open; set github.external_url to the URL people reach ferry at (e.g. https://ferry.example.com)"
                    ),
                ));
            }
            if github.environment.trim().is_empty() {
                return Err(invalid(
                    "github.environment".into(),
                    "must not be empty (e.g. `production`)".into(),
                ));
            }
        }
        if let Some(aws) = &self.targets.aws {
            if !names.contains(aws.source.as_str()) {
                return Err(invalid(
                    "targets.aws.source".into(),
                    format!("no source named `{}`", aws.source),
                ));
            }
            if !cfg!(feature = "aws") {
                return Err(invalid(
                    "targets.aws".into(),
                    "this ferry was built without the `aws` feature; use a default build".into(),
                ));
            }
            if aws.poll_interval.is_zero() {
                return Err(invalid(
                    "targets.aws.poll_interval".into(),
                    "must be more than 0s".into(),
                ));
            }
        }
        if let Some(kube) = &self.targets.kubernetes {
            if !names.contains(kube.source.as_str()) {
                return Err(invalid(
                    "targets.kubernetes.source".into(),
                    format!("no source named `{}`", kube.source),
                ));
            }
            if !valid_name(&kube.default_namespace) {
                return Err(invalid(
                    "targets.kubernetes.default_namespace".into(),
                    format!("`{}` is not a valid namespace name", kube.default_namespace),
                ));
            }
            if !kube.allowed_namespaces.is_empty()
                && !kube.allowed_namespaces.contains(&kube.default_namespace)
            {
                return Err(invalid(
                    "targets.kubernetes.default_namespace".into(),
                    format!(
                        "`{}` is not in allowed_namespaces; objects without a namespace would all be refused",
                        kube.default_namespace
                    ),
                ));
            }
            if let Some(k) = kube
                .allowed_kinds
                .iter()
                .find(|k| k.is_empty() || k.contains('/'))
            {
                return Err(invalid(
                    "targets.kubernetes.allowed_kinds".into(),
                    format!(
                        "`{k}`: write `Kind` for the core group or `Kind.group` (e.g. `Deployment.apps`)"
                    ),
                ));
            }
            if let Some((i, c)) = kube
                .cluster_scoped
                .iter()
                .enumerate()
                .find(|(_, c)| c.kind.is_empty() || c.kind.contains('/'))
            {
                return Err(invalid(
                    format!("targets.kubernetes.cluster_scoped[{i}].kind"),
                    format!(
                        "`{}`: write `Kind` for the core group or `Kind.group` (e.g. `ClusterRole.rbac.authorization.k8s.io`)",
                        c.kind
                    ),
                ));
            }
            if let Some((i, r)) = kube.ignore.iter().enumerate().find(|(_, r)| {
                r.kind.is_empty() || r.kind.contains('/') || r.json_pointers.is_empty()
            }) {
                let (key, message) = if r.json_pointers.is_empty() {
                    (
                        "json_pointers",
                        "list the fields to leave to others, e.g. [/spec/replicas]".to_string(),
                    )
                } else {
                    (
                        "kind",
                        format!(
                            "`{}`: write `Kind` (any group) or `Kind.group` (e.g. `Deployment.apps`)",
                            r.kind
                        ),
                    )
                };
                return Err(invalid(
                    format!("targets.kubernetes.ignore[{i}].{key}"),
                    message,
                ));
            }
            if let Some(sm) = &kube.secrets_manager {
                match &sm.directory {
                    Some(_) if sm.region.is_some() || sm.endpoint_url.is_some() => {
                        return Err(invalid(
                            "targets.kubernetes.secrets_manager.directory".into(),
                            "a directory stands in for AWS: give it or region/endpoint_url, not both"
                                .into(),
                        ));
                    }
                    None if !cfg!(feature = "aws") => {
                        return Err(invalid(
                            "targets.kubernetes.secrets_manager".into(),
                            "this ferry was built without the `aws` feature: use a default build, or `directory`"
                                .into(),
                        ));
                    }
                    _ => {}
                }
            }
            if !(1..=100).contains(&kube.prune_limit_percent) {
                return Err(invalid(
                    "targets.kubernetes.prune_limit_percent".into(),
                    format!(
                        "{} is not a share: give 1 to 100 (100, the default, refuses pruning all of the inventory)",
                        kube.prune_limit_percent
                    ),
                ));
            }
        }
        Ok(())
    }

    pub fn source(&self, name: &str) -> Option<&SourceConfig> {
        self.sources.iter().find(|s| s.name == name)
    }
}

/// Returns (key below `auth` or `url`, message) on error.
/// An http(s) URL whose host is the unspecified address (`0.0.0.0`, `[::]`).
fn unroutable(url: &str) -> bool {
    let host = url
        .split_once("://")
        .map_or(url, |(_, rest)| rest)
        .split('/')
        .next()
        .unwrap_or("");
    let host = host.rsplit_once(':').map_or(host, |(h, port)| {
        if port.chars().all(|c| c.is_ascii_digit()) {
            h
        } else {
            host
        }
    });
    matches!(host, "0.0.0.0" | "[::]" | "::" | "[0:0:0:0:0:0:0:0]")
}

fn validate_auth(url: &str, auth: &AuthConfig) -> Result<(), (&'static str, String)> {
    let scheme = url_scheme(url);
    if matches!(scheme, Some("http" | "https")) && url_has_password(url) {
        return Err((
            "url",
            "the URL carries a password; put it in auth.password_file or auth.token_file instead"
                .into(),
        ));
    }
    let secrets = [
        auth.token_file.is_some(),
        auth.token_env.is_some(),
        auth.password_file.is_some(),
        auth.password_env.is_some(),
    ]
    .iter()
    .filter(|s| **s)
    .count();
    if secrets > 1 {
        return Err((
            "auth",
            "set only one of token_file, token_env, password_file, password_env".into(),
        ));
    }
    let is_ssh = scheme == Some("ssh") || (scheme.is_none() && is_scp_like(url));
    if auth.ssh_key_file.is_some() || auth.known_hosts_file.is_some() {
        if !is_ssh {
            return Err((
                "auth.ssh_key_file",
                "SSH keys need an ssh:// or user@host:path URL".into(),
            ));
        }
        if secrets > 0 {
            return Err((
                "auth",
                "an SSH source takes ssh_key_file and known_hosts_file, not a token or password"
                    .into(),
            ));
        }
    }
    if is_ssh {
        if auth.ssh_key_file.is_none() {
            return Err((
                "auth.ssh_key_file",
                "an SSH URL needs auth.ssh_key_file (a private key file)".into(),
            ));
        }
        if auth.known_hosts_file.is_none() {
            return Err((
                "auth.known_hosts_file",
                "an SSH URL needs auth.known_hosts_file: ferry refuses hosts it cannot verify"
                    .into(),
            ));
        }
    }
    if secrets > 0 && !matches!(scheme, Some("http" | "https")) {
        return Err((
            "auth",
            "tokens and passwords are only sent over http(s) URLs".into(),
        ));
    }
    if (auth.password_file.is_some() || auth.password_env.is_some()) && auth.username.is_none() {
        return Err((
            "auth.username",
            "a password needs a username (or use token_file for token auth)".into(),
        ));
    }
    Ok(())
}

pub(crate) fn url_scheme(url: &str) -> Option<&str> {
    url.split_once("://").map(|(s, _)| s)
}

fn url_has_password(url: &str) -> bool {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split('/').next().unwrap_or("");
    authority
        .rsplit_once('@')
        .is_some_and(|(userinfo, _)| userinfo.contains(':'))
}

/// `git@github.com:org/repo.git`
fn is_scp_like(url: &str) -> bool {
    match url.split_once(':') {
        Some((host, _)) => host.contains('@') && !host.contains('/'),
        None => false,
    }
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !name.starts_with('-')
}

impl Config {
    /// What the config sets up, in one line (`ferry check-config`).
    pub fn summary(&self) -> String {
        let mut targets = Vec::new();
        if let Some(d) = &self.targets.dags {
            match &d.airflow {
                Some(a) => targets.push(format!(
                    "dags (from source `{}`, retention follows Airflow at {})",
                    d.source, a.url
                )),
                None => targets.push(format!("dags (from source `{}`)", d.source)),
            }
        }
        if let Some(k) = &self.targets.kubernetes {
            targets.push(format!("kubernetes (from source `{}`)", k.source));
        }
        if let Some(a) = &self.targets.aws {
            targets.push(format!("aws (from source `{}`, {})", a.source, a.file));
        }
        let targets = if targets.is_empty() {
            "none".to_string()
        } else {
            targets.join(", ")
        };
        let github = match &self.github {
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
        let leader = match &self.leader_election {
            Some(l) => format!(
                "; leader election: Lease {}/{}",
                l.namespace.as_deref().unwrap_or("(pod's namespace)"),
                l.lease_name
            ),
            None => String::new(),
        };
        format!(
            "{} source(s): {}; targets: {targets}; github: {github}{leader}",
            self.sources.len(),
            self.sources
                .iter()
                .map(|s| match s.verify {
                    Some(_) => format!("{} (signed heads only)", s.name),
                    None => s.name.clone(),
                })
                .collect::<Vec<_>>()
                .join(", ")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("ferry.yaml"))
    }

    const MINIMAL: &str = "sources:\n  - name: dags\n    url: https://example.com/dags.git\n";

    #[test]
    fn minimal_config_gets_defaults() {
        let config = parse(MINIMAL).unwrap();
        assert_eq!(config.sources[0].branch, "main");
        assert_eq!(config.sources[0].interval, Duration::from_secs(60));
        assert_eq!(config.server.listen.port(), 8080);
        assert!(config.targets.dags.is_none());
    }

    #[test]
    fn unknown_key_is_named_with_its_path_and_line() {
        let err = parse(&format!("{MINIMAL}    brnach: dev\n")).unwrap_err();
        assert_eq!(err.key(), Some("sources[0].brnach"));
        let text = err.to_string();
        assert!(
            text.starts_with("ferry.yaml:4: sources[0].brnach: unknown field `brnach`"),
            "{text}"
        );
    }

    #[test]
    fn wrong_type_names_the_key() {
        let err = parse(&format!("{MINIMAL}    interval: often\n")).unwrap_err();
        assert_eq!(err.key(), Some("sources[0].interval"));
        let err = parse(&format!("{MINIMAL}server:\n  listen: 12\n")).unwrap_err();
        assert_eq!(err.key(), Some("server.listen"));
    }

    #[test]
    fn inline_password_in_url_is_refused() {
        let err = parse("sources:\n  - name: a\n    url: https://u:hunter2@example.com/r.git\n")
            .unwrap_err();
        assert_eq!(err.key(), Some("sources[0].url"));
        assert!(!err.to_string().contains("hunter2"));
    }

    #[test]
    fn a_bad_allowed_signers_file_is_refused_at_start_with_its_line() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("allowed_signers");
        std::fs::write(
            &file,
            "# team
alice@example.com ssh-ed25519
",
        )
        .unwrap();
        let text = format!(
            "{MINIMAL}    verify:\n      allowed_signers: {}\n",
            file.display()
        );
        let checked = |text: &str| {
            let config = parse(text).expect("the file itself is valid");
            config.check_files(Path::new("ferry.yaml"))
        };
        let err = checked(&text).unwrap_err();
        assert_eq!(err.key(), Some("sources[0].verify.allowed_signers"));
        assert!(
            err.to_string()
                .contains(&format!("{}:2: expected the base64 key", file.display())),
            "{err}"
        );
        std::fs::remove_file(&file).unwrap();
        let err = checked(&text).unwrap_err();
        assert!(
            err.to_string().contains("cannot read allowed signers file"),
            "{err}"
        );
    }

    #[test]
    fn leader_election_defaults_and_limits() {
        let config = parse(&format!("{MINIMAL}leader_election: {{}}\n")).unwrap();
        let leader = config.leader_election.unwrap();
        assert_eq!(
            (leader.lease_name.as_str(), leader.lease_duration),
            ("ferry", Duration::from_secs(15))
        );
        let err = parse(&format!(
            "{MINIMAL}leader_election:\n  lease_duration: 1s\n"
        ))
        .unwrap_err();
        assert_eq!(err.key(), Some("leader_election.lease_duration"));
        let err = parse(&format!(
            "{MINIMAL}leader_election:\n  lease_name: Ferry_1\n"
        ))
        .unwrap_err();
        assert_eq!(err.key(), Some("leader_election.lease_name"));
    }

    #[test]
    fn ssh_without_known_hosts_is_refused() {
        let err = parse(
            "sources:\n  - name: a\n    url: ssh://git@example.com/r.git\n    auth:\n      ssh_key_file: /k\n",
        )
        .unwrap_err();
        assert_eq!(err.key(), Some("sources[0].auth.known_hosts_file"));
    }

    #[test]
    fn github_reporting_takes_one_credential_and_real_urls() {
        let base = "sources:\n  - name: a\n    url: https://e.com/a.git\ngithub:\n";
        let ok = parse(&format!(
            "{base}  token_file: /t\n  api_url: https://ghe.example.com/api/v3\n  external_url: https://ferry.example.com\n"
        ))
        .unwrap();
        let github = ok.github.unwrap();
        assert!(github.reporting() && github.deployments && github.previews);
        assert_eq!(github.environment, "production");
        let err = parse(&format!("{base}  token_file: /t\n  token_env: T\n")).unwrap_err();
        assert_eq!(err.key(), Some("github"));
        assert!(
            err.to_string()
                .contains("set one of token_file, token_env and app"),
            "{err}"
        );
        // Reporting with links to the address ferry listens on by default.
        let err = parse(&format!("{base}  token_file: /t\n")).unwrap_err();
        assert_eq!(err.key(), Some("github.external_url"));
        assert!(err.to_string().contains("http://0.0.0.0:8080"), "{err}");
        assert!(unroutable("http://[::]:8080/x") && !unroutable("https://ferry.example.com"));
        let err = parse(&format!("{base}  external_url: ferry.example.com\n")).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("ferry.yaml:5: github.external_url: "),
            "{err}"
        );
        let err = parse(&format!(
            "{base}  app:\n    app_id: 1\n    private_key_file: /k\n"
        ))
        .unwrap_err();
        assert!(err.to_string().contains("installation_id"), "{err}");
        assert!(
            !parse(&format!("{base}  webhook_secret_file: /s\n"))
                .unwrap()
                .github
                .unwrap()
                .reporting()
        );
    }

    #[test]
    fn semantic_errors_carry_the_line_of_the_key() {
        let text = "sources:\n  - name: a\n    url: https://e.com/a.git\n  - name: b\n    url: ssh://git@e.com/b.git\n    auth:\n      ssh_key_file: /k\n";
        let err = parse(text).unwrap_err();
        assert_eq!(err.key(), Some("sources[1].auth.known_hosts_file"));
        // The missing key itself has no line; its nearest parent, `auth`, does.
        assert!(err.to_string().starts_with("ferry.yaml:6: "), "{err}");
        assert_eq!(crate::yaml::line_of(text, "sources[1].url"), Some(5));
        assert_eq!(crate::yaml::line_of(text, "sources[0].name"), Some(2));
        assert_eq!(crate::yaml::line_of(text, "targets.dags"), None);
    }

    #[test]
    fn ignore_rules_parse_pointers_and_name_the_bad_one_with_its_line() {
        let kube = |rules: &str| {
            format!("{MINIMAL}targets:\n  kubernetes:\n    source: dags\n    ignore:\n{rules}")
        };
        let config = parse(&kube(
            "      - kind: Deployment.apps\n        name: web-*\n        json_pointers: [/spec/replicas, /webhooks/*/clientConfig/caBundle]\n",
        ))
        .unwrap();
        let rules = config.targets.kubernetes.unwrap().ignore;
        assert_eq!(
            rules[0].json_pointers[1].to_string(),
            "/webhooks/*/clientConfig/caBundle"
        );

        let err = parse(&kube(
            "      - kind: Deployment\n        json_pointers:\n          - /spec/replicas\n          - spec.template\n",
        ))
        .unwrap_err();
        assert_eq!(
            err.key(),
            Some("targets.kubernetes.ignore[0].json_pointers[1]")
        );
        assert!(err.to_string().starts_with("ferry.yaml:11: "), "{err}");
        assert!(err.to_string().contains("start it with `/`"), "{err}");

        let err = parse(&kube(
            "      - kind: Deployment\n        json_pointers: []\n",
        ))
        .unwrap_err();
        assert_eq!(
            err.key(),
            Some("targets.kubernetes.ignore[0].json_pointers")
        );
        assert!(err.to_string().starts_with("ferry.yaml:9: "), "{err}");
    }

    #[test]
    fn dags_target_must_name_a_defined_source() {
        let err = parse(&format!(
            "{MINIMAL}targets:\n  dags:\n    source: nope\n    destination: /tmp/x\n"
        ))
        .unwrap_err();
        assert_eq!(err.key(), Some("targets.dags.source"));
        assert!(err.to_string().contains("defined sources: dags"));
    }

    #[test]
    fn the_airflow_block_takes_an_api_url_and_a_password_file_only() {
        let dags = |airflow: &str| {
            format!(
                "{MINIMAL}targets:\n  dags:\n    source: dags\n    destination: /tmp/x\n    airflow:\n{airflow}"
            )
        };
        let config = parse(&dags(
            "      url: http://airflow-api-server.airflow.svc:8080\n      username: ferry\n      password_file: /run/p\n",
        ))
        .unwrap();
        let airflow = config.targets.dags.unwrap().airflow.unwrap();
        assert_eq!(airflow.bundle, "dags-folder");
        assert_eq!(airflow.window, Duration::from_secs(86400));

        let err = parse(&dags(
            "      url: airflow-api-server:8080\n      username: ferry\n      password_file: /run/p\n",
        ))
        .unwrap_err();
        assert_eq!(err.key(), Some("targets.dags.airflow.url"));
        assert!(err.to_string().starts_with("ferry.yaml:9: "), "{err}");

        let err = parse(&dags(
            "      url: http://ferry:hunter2@airflow:8080\n      username: ferry\n      password_file: /run/p\n",
        ))
        .unwrap_err();
        assert!(
            err.to_string().contains("use username and password_file"),
            "{err}"
        );
        assert!(!err.to_string().contains("hunter2"), "{err}");

        let err = parse(&dags(
            "      url: http://airflow:8080\n      username: ferry\n      password: hunter2\n",
        ))
        .unwrap_err();
        assert!(err.to_string().contains("password"), "{err}");
    }

    #[test]
    fn verify_needs_keys_and_the_strict_github_rule_needs_peoples_keys() {
        let err = parse(&format!("{MINIMAL}    verify: {{}}\n")).unwrap_err();
        assert_eq!(err.key(), Some("sources[0].verify"));
        assert!(err.to_string().contains("lists no keys"), "{err}");
        let err = parse(&format!(
            "{MINIMAL}    verify:\n      github_keys: [/k/web-flow.gpg]\n      github_commits: merges_of_signed_heads\n"
        ))
        .unwrap_err();
        assert_eq!(err.key(), Some("sources[0].verify.github_commits"));
        let config = parse(&format!(
            "{MINIMAL}    verify:\n      openpgp_keys: [/k/team.asc]\n      github_keys: [/k/web-flow.gpg]\n      expired_keys: refuse\n"
        ))
        .unwrap();
        let verify = config.sources[0].verify.as_ref().unwrap();
        assert_eq!(verify.expired_keys, ExpiredKeys::Refuse);
        assert_eq!(verify.github_commits, GithubCommits::Any);
        let err = parse(&format!(
            "{MINIMAL}    verify:\n      openpgp_keys: [/k/team.asc]\n      expired_keys: sometimes\n"
        ))
        .unwrap_err();
        assert!(err.to_string().contains("expired_keys"), "{err}");
    }

    #[test]
    fn a_keyring_that_is_not_one_is_refused_at_start_naming_its_key() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("team.asc");
        std::fs::write(&file, "not a key\n").unwrap();
        let config = parse(&format!(
            "{MINIMAL}    verify:\n      openpgp_keys: [{}]\n",
            file.display()
        ))
        .unwrap();
        let err = config.check_files(Path::new("ferry.yaml")).unwrap_err();
        assert_eq!(err.key(), Some("sources[0].verify.openpgp_keys[0]"));
        assert!(err.to_string().contains("team.asc"), "{err}");
    }

    #[test]
    fn notification_receivers_keep_their_urls_secret_and_name_real_sources() {
        let with = |n: &str| parse(&format!("{MINIMAL}notifications:\n  - {n}\n"));
        let config =
            with("{name: ds, type: slack, url_file: /run/slack, events: [dags_blocked]}").unwrap();
        assert_eq!(
            config.notifications[0].events,
            [crate::notify::EventKind::DagsBlocked]
        );
        let err = with("{name: ds, type: slack, url: https://hooks.slack.com/services/T/B/x}")
            .unwrap_err();
        assert_eq!(err.key(), Some("notifications[0].url"));
        assert!(err.to_string().contains("url_file"), "{err}");
        assert!(!err.to_string().contains("hooks.slack.com"), "{err}");
        let err = with("{name: a, type: webhook, url: https://x.example/h, sources: [nope]}")
            .unwrap_err();
        assert_eq!(err.key(), Some("notifications[0].sources"));
        let err = with("{name: a, type: teams, url_file: /f, secret_file: /s}").unwrap_err();
        assert_eq!(err.key(), Some("notifications[0].secret_file"));
        let err = with("{name: a, type: webhook, url: https://x.example/h, events: [everything]}")
            .unwrap_err();
        assert!(err.to_string().contains("events"), "{err}");
        assert!(
            with("{name: a, type: webhook, url: https://x.example/h, secret_file: /s}").is_ok()
        );
    }
}
