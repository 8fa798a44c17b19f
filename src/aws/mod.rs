//! The AWS effector: EKS nodegroups and addons, SageMaker endpoints, as
//! `platform.yaml` declares them. Same two-step face as the Kubernetes
//! target: `plan` (read-only, also for PR previews and drift checks) and
//! `apply` (each update followed to completion with a timeout).
//!
//! ferry never creates or deletes clusters or nodegroups (Terraform's job);
//! it changes what EKS can change in place and reports the rest as drift.

pub mod eks;
pub mod sagemaker;
pub mod scaling;
pub mod secrets_manager;
pub mod target;

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use aws_config::{BehaviorVersion, Region, retry::RetryConfig};
use serde::Serialize;

use crate::config::AwsTargetConfig;
use crate::desired::platform::Platform;
use crate::report::comment::{Section, TargetPreview};

#[derive(Debug, thiserror::Error)]
pub enum AwsError {
    #[error("{0}")]
    Api(String),
}

/// A field that would change: `before` -> `after`, as text.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct FieldChange {
    pub field: String,
    pub before: String,
    pub after: String,
}

#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Create,
    Update,
    Delete,
}

/// One change to one AWS resource.
#[derive(Debug, Clone, Serialize)]
pub struct Change {
    /// `eks/ml/nodegroup/system`, `sagemaker/endpoint/churn`
    pub resource: String,
    pub action: Action,
    pub fields: Vec<FieldChange>,
    #[serde(skip)]
    pub(crate) op: Op,
}

#[derive(Debug, Clone)]
pub(crate) enum Op {
    Eks(eks::EksOp),
    SageMaker(sagemaker::SageMakerOp),
    Scaling(scaling::ScalingOp),
}

/// What applying a revision would change.
#[derive(Debug, Clone, Default, Serialize)]
pub struct AwsPlan {
    /// The clients and provenance the plan was made with, for apply.
    #[serde(skip)]
    pub(crate) basis: Option<(Clients, Provenance)>,
    pub revision: String,
    pub changes: Vec<Change>,
    /// Differences ferry will not apply (instance types, upgrades without
    /// `allow_upgrades`, endpoints to delete with prune off).
    pub drift: Vec<String>,
    /// Problems that make the revision unappliable (e.g. a nodegroup that
    /// does not exist in AWS).
    pub errors: Vec<String>,
    pub unchanged: usize,
}

impl AwsPlan {
    /// Records an in-place update of `resource`, or counts it unchanged
    /// when no field differs.
    fn update(&mut self, resource: String, fields: Vec<FieldChange>, op: Op) {
        if fields.is_empty() {
            self.unchanged += 1;
        } else {
            self.changes.push(Change {
                resource,
                action: Action::Update,
                fields,
                op,
            });
        }
    }

    /// In the PR comment's target-neutral words.
    pub fn preview(&self) -> TargetPreview {
        let plan = self;
        use Action as AwsAction;
        let count = |a: AwsAction| plan.changes.iter().filter(|c| c.action == a).count();
        let mut sections: Vec<Section> = plan
            .changes
            .iter()
            .map(|c| Section {
                title: format!(
                    "{} {}",
                    match c.action {
                        AwsAction::Create => "+",
                        AwsAction::Update => "~",
                        AwsAction::Delete => "-",
                    },
                    c.resource
                ),
                lines: c
                    .fields
                    .iter()
                    .flat_map(|f| {
                        let mut lines = Vec::new();
                        if !f.before.is_empty() {
                            lines.push(format!("- {}: {}", f.field, f.before));
                        }
                        if !f.after.is_empty() {
                            lines.push(format!("+ {}: {}", f.field, f.after));
                        }
                        lines
                    })
                    .collect(),
            })
            .collect();
        for drift in &plan.drift {
            sections.push(Section {
                title: format!(
                    "≠ not applied: {}",
                    drift.split(": ").next().unwrap_or(drift)
                ),
                lines: vec![format!("# {drift}")],
            });
        }
        TargetPreview {
            cautions: Vec::new(),
            target: "aws".into(),
            create: count(AwsAction::Create),
            update: count(AwsAction::Update),
            delete: count(AwsAction::Delete),
            unchanged: plan.unchanged,
            failed: plan.errors.len(),
            errors: plan.errors.clone(),
            sections,
        }
    }

    /// A human plan, as `ferry plan --target aws` prints it.
    pub fn render_text(&self) -> String {
        let count = |a: Action| self.changes.iter().filter(|c| c.action == a).count();
        let mut out = format!(
            "Plan for target `aws` at {}: {} to create, {} to update, {} to delete, {} unchanged, {} error(s)\n",
            &self.revision[..self.revision.len().min(12)],
            count(Action::Create),
            count(Action::Update),
            count(Action::Delete),
            self.unchanged,
            self.errors.len()
        );
        for e in &self.errors {
            out.push_str(&format!("! {e}\n"));
        }
        for c in &self.changes {
            let mark = match c.action {
                Action::Create => '+',
                Action::Update => '~',
                Action::Delete => '-',
            };
            out.push_str(&format!("{mark} {}\n", c.resource));
            for f in &c.fields {
                out.push_str(&format!("    {}: {} -> {}\n", f.field, f.before, f.after));
            }
        }
        for d in &self.drift {
            out.push_str(&format!("# not applied: {d}\n"));
        }
        out
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct ChangeResult {
    pub resource: String,
    pub action: Action,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct AwsOutcome {
    pub revision: String,
    pub results: Vec<ChangeResult>,
    pub drift: Vec<String>,
    /// Old ferry-made SageMaker models and configs removed after success.
    pub cleaned: Vec<String>,
}

impl AwsOutcome {
    pub fn succeeded(&self) -> bool {
        self.results.iter().all(|r| r.error.is_none())
    }

    pub fn failures(&self) -> Vec<String> {
        self.results
            .iter()
            .filter_map(|r| Some(format!("{}: {}", r.resource, r.error.as_ref()?)))
            .collect()
    }
}

/// How ferry labels what it creates, and where it looks for its own.
#[derive(Debug, Clone)]
pub struct Provenance {
    pub source: String,
    pub repo: String,
    pub commit: String,
}

/// Clients for one revision's regions.
#[derive(Debug, Clone)]
pub struct Clients {
    pub eks: Option<aws_sdk_eks::Client>,
    pub sagemaker: Option<SageMakerClients>,
}

/// What serving an endpoint takes: the control plane, invocations (smoke
/// tests) and Application Auto Scaling, in one region.
#[derive(Debug, Clone)]
pub struct SageMakerClients {
    pub control: aws_sdk_sagemaker::Client,
    pub runtime: aws_sdk_sagemakerruntime::Client,
    pub scaling: aws_sdk_applicationautoscaling::Client,
}

/// Settings the effectors share.
#[derive(Debug, Clone)]
pub struct Limits {
    pub update_timeout: Duration,
    pub poll_interval: Duration,
}

impl Limits {
    pub fn from(config: &AwsTargetConfig) -> Limits {
        Limits {
            update_timeout: config.update_timeout,
            poll_interval: config.poll_interval,
        }
    }
}

/// An SDK config from the default chain (IRSA in EKS, the environment in
/// tests), with ferry's region/endpoint overrides, one rustls+ring HTTP
/// client and standard retries (throttling and 5xx, with backoff).
pub async fn sdk_config(
    region: Option<&str>,
    endpoint_url: Option<&str>,
    credentials: Option<&crate::config::StaticCredentials>,
) -> aws_config::SdkConfig {
    use aws_smithy_http_client::tls;
    let http = aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(
            tls::rustls_provider::CryptoMode::Ring,
        ))
        .build_https();
    let mut loader = aws_config::defaults(BehaviorVersion::latest())
        .http_client(http)
        .retry_config(
            RetryConfig::standard()
                .with_max_attempts(6)
                .with_initial_backoff(Duration::from_millis(200))
                .with_max_backoff(Duration::from_secs(20)),
        );
    if let Some(region) = region {
        loader = loader.region(Region::new(region.to_string()));
    }
    if let Some(url) = endpoint_url {
        loader = loader.endpoint_url(url);
    }
    if let Some(c) = credentials {
        loader = loader.credentials_provider(aws_sdk_sagemaker::config::Credentials::new(
            c.access_key_id.clone(),
            c.secret_access_key.expose().to_string(),
            None,
            None,
            "ferry",
        ));
    }
    loader.load().await
}

/// Clients for the services `platform` uses.
pub async fn clients(platform: &Platform, config: &AwsTargetConfig) -> Clients {
    let eks_region = platform
        .eks
        .as_ref()
        .and_then(|e| e.cluster.region.clone())
        .or_else(|| config.region.clone());
    let eks = match &platform.eks {
        Some(_) => Some(aws_sdk_eks::Client::new(
            &sdk_config(
                eks_region.as_deref(),
                config.endpoint_url.as_deref(),
                config.static_credentials.as_ref(),
            )
            .await,
        )),
        None => None,
    };
    let sagemaker = match &platform.sagemaker {
        Some(sm) => {
            let region = sm
                .region
                .clone()
                .or(eks_region)
                .or_else(|| config.region.clone());
            let sdk = sdk_config(
                region.as_deref(),
                config.endpoint_url.as_deref(),
                config.static_credentials.as_ref(),
            )
            .await;
            Some(SageMakerClients {
                control: aws_sdk_sagemaker::Client::new(&sdk),
                runtime: aws_sdk_sagemakerruntime::Client::new(&sdk),
                scaling: aws_sdk_applicationautoscaling::Client::new(&sdk),
            })
        }
        None => None,
    };
    Clients { eks, sagemaker }
}

/// Plans every declared resource against AWS. Read-only.
pub async fn plan(
    clients: &Clients,
    platform: &Platform,
    provenance: &Provenance,
    prune: bool,
) -> Result<AwsPlan, AwsError> {
    let mut plan = AwsPlan {
        revision: provenance.commit.clone(),
        basis: Some((clients.clone(), provenance.clone())),
        ..AwsPlan::default()
    };
    if let (Some(eks), Some(client)) = (&platform.eks, &clients.eks) {
        eks::plan(client, eks, &mut plan).await?;
    }
    if let Some(clients) = &clients.sagemaker {
        let declared = platform
            .sagemaker
            .as_ref()
            .map(|s| s.endpoints.as_slice())
            .unwrap_or_default();
        sagemaker::plan(clients, declared, provenance, prune, &mut plan).await?;
    }
    Ok(plan)
}

/// Applies a plan: EKS first, then SageMaker; a failing change fails alone
/// and the others still apply. Each update is followed to its end.
pub async fn apply(
    clients: &Clients,
    plan: &AwsPlan,
    provenance: &Provenance,
    limits: &Limits,
    cancel: &AtomicBool,
) -> AwsOutcome {
    let mut outcome = AwsOutcome {
        revision: plan.revision.clone(),
        results: Vec::new(),
        drift: plan.drift.clone(),
        cleaned: Vec::new(),
    };
    for change in &plan.changes {
        if cancel.load(Ordering::Relaxed) {
            outcome.results.push(ChangeResult {
                resource: change.resource.clone(),
                action: change.action,
                error: Some("not applied: ferry is shutting down".into()),
            });
            continue;
        }
        // A variant's autoscaling follows its endpoint's deployment: with
        // that failed, its target would scale what does not serve (or a
        // deleted endpoint).
        if let Some(parent) = outcome.results.iter().find(|r| {
            r.error.is_some()
                && change
                    .resource
                    .strip_prefix(r.resource.as_str())
                    .is_some_and(|rest| rest.starts_with('/'))
        }) {
            outcome.results.push(ChangeResult {
                resource: change.resource.clone(),
                action: change.action,
                error: Some(format!("not applied: {} failed", parent.resource)),
            });
            continue;
        }
        let started = Instant::now();
        let result = match (&change.op, &clients.eks, &clients.sagemaker) {
            (Op::Eks(op), Some(client), _) => eks::apply(client, op, limits, cancel).await,
            (Op::SageMaker(op), _, Some(clients)) => {
                sagemaker::apply(
                    clients,
                    op,
                    provenance,
                    limits,
                    cancel,
                    &mut outcome.cleaned,
                )
                .await
            }
            (Op::Scaling(op), _, Some(clients)) => scaling::apply(&clients.scaling, op).await,
            _ => Err("no client for this service".to_string()),
        };
        match &result {
            Ok(()) => {
                tracing::info!(resource = %change.resource, action = ?change.action, duration_ms = started.elapsed().as_millis() as u64, "AWS change applied")
            }
            Err(e) => {
                tracing::warn!(resource = %change.resource, action = ?change.action, error = %e, "AWS change failed")
            }
        }
        outcome.results.push(ChangeResult {
            resource: change.resource.clone(),
            action: change.action,
            error: result.err(),
        });
    }
    outcome
}

/// Polls `check` every `poll_interval` until it gives a final value,
/// fails, the timeout passes or ferry shuts down.
pub(crate) async fn follow<T, F, Fut>(
    what: &str,
    limits: &Limits,
    cancel: &AtomicBool,
    mut check: F,
) -> Result<T, String>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Option<T>, String>>,
{
    let deadline = Instant::now() + limits.update_timeout;
    loop {
        if let Some(done) = check().await? {
            return Ok(done);
        }
        if cancel.load(Ordering::Relaxed) {
            return Err(format!(
                "{what}: stopped following (ferry is shutting down); it continues in AWS"
            ));
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "{what}: not finished after {} (targets.aws.update_timeout)",
                humantime::format_duration(limits.update_timeout)
            ));
        }
        tokio::time::sleep(limits.poll_interval).await;
    }
}

/// An SDK error in one line: the service's code and message, or the cause.
pub(crate) fn describe<E>(
    err: &aws_smithy_runtime_api::client::result::SdkError<
        E,
        aws_smithy_runtime_api::http::Response,
    >,
) -> String
where
    E: aws_smithy_types::error::metadata::ProvideErrorMetadata + std::error::Error + 'static,
{
    use aws_smithy_runtime_api::client::result::SdkError;
    match err {
        SdkError::ServiceError(e) => {
            let inner = e.err();
            match (inner.code(), inner.message()) {
                (Some(code), Some(message)) => format!("{code}: {message}"),
                (Some(code), None) => code.to_string(),
                _ => inner.to_string(),
            }
        }
        other => {
            let mut text = other.to_string();
            let mut source = std::error::Error::source(other);
            while let Some(s) = source {
                text.push_str(": ");
                text.push_str(&s.to_string());
                source = s.source();
            }
            text
        }
    }
}

/// The service error code, if the error is one.
pub(crate) fn code<E>(
    err: &aws_smithy_runtime_api::client::result::SdkError<
        E,
        aws_smithy_runtime_api::http::Response,
    >,
) -> Option<String>
where
    E: aws_smithy_types::error::metadata::ProvideErrorMetadata,
{
    err.as_service_error()
        .and_then(|e| e.code().map(str::to_string))
}
