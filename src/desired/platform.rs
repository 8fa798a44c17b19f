//! `platform.yaml`: what the platform repo declares beside its manifests,
//! the EKS and SageMaker state ferry keeps. Parsed strictly and validated
//! completely before any AWS call: every error names the file, the key and
//! its line.
//!
//! ```yaml
//! apiVersion: ferry.dev/v1alpha1
//! kind: Platform
//! eks:
//!   cluster: {name: ml-platform, region: eu-west-1}
//!   allow_upgrades: false
//!   nodegroups:
//!     - name: system
//!       scaling: {min: 2, max: 4, desired: 2}
//!   addons:
//!     - {name: vpc-cni, version: v1.19.0-eksbuild.1}
//! sagemaker:
//!   endpoints:
//!     - name: churn
//!       execution_role_arn: arn:aws:iam::123456789012:role/sagemaker-exec
//!       variants:
//!         - {name: primary, model_name: churn, image: ..., model_data: s3://..., instance_type: ml.m5.large}
//! ```

use std::collections::{BTreeMap, HashSet};

use serde::{Deserialize, Serialize};

use crate::yaml;

pub const API_VERSION: &str = "ferry.dev/v1alpha1";
pub const KIND: &str = "Platform";

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Platform {
    #[serde(rename = "apiVersion")]
    pub api_version: String,
    pub kind: String,
    pub eks: Option<Eks>,
    pub sagemaker: Option<SageMaker>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Eks {
    pub cluster: Cluster,
    /// Let ferry change nodegroup Kubernetes/AMI release versions.
    #[serde(default)]
    pub allow_upgrades: bool,
    #[serde(default)]
    pub nodegroups: Vec<Nodegroup>,
    #[serde(default)]
    pub addons: Vec<Addon>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Cluster {
    pub name: String,
    pub region: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Nodegroup {
    pub name: String,
    pub scaling: Scaling,
    /// Authoritative when set: labels not listed are removed.
    pub labels: Option<BTreeMap<String, String>>,
    /// Authoritative when set: taints not listed are removed.
    pub taints: Option<Vec<Taint>>,
    /// Kubernetes version (`1.31`); applied only with `allow_upgrades`.
    pub version: Option<String>,
    /// AMI release version; applied only with `allow_upgrades`.
    pub release_version: Option<String>,
    /// Cannot change in place: a difference is reported as drift.
    pub instance_types: Option<Vec<String>>,
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Scaling {
    pub min: i32,
    pub max: i32,
    /// None: an autoscaler (Cluster Autoscaler, Karpenter) owns the size
    /// between `min` and `max`, and ferry never changes it (but to bring it
    /// inside new bounds).
    #[serde(default)]
    pub desired: Option<i32>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq, PartialOrd, Ord)]
#[serde(deny_unknown_fields)]
pub struct Taint {
    pub key: String,
    #[serde(default)]
    pub value: String,
    /// `NO_SCHEDULE`, `NO_EXECUTE` or `PREFER_NO_SCHEDULE`, as EKS spells them.
    pub effect: String,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Addon {
    pub name: String,
    pub version: Option<String>,
    /// Sent to EKS as JSON `configurationValues`.
    pub configuration: Option<serde_json::Value>,
    /// The IAM role (IRSA) the addon's service account assumes: the EBS CSI
    /// driver's, or vpc-cni's instead of the node role.
    pub service_account_role_arn: Option<String>,
    #[serde(default)]
    pub resolve_conflicts: ResolveConflicts,
}

/// How EKS treats fields the addon's Kubernetes objects hold already that
/// differ from the addon's: on a fresh cluster vpc-cni, kube-proxy and
/// CoreDNS run self-managed, so creating them as addons without
/// `overwrite` fails with ConfigurationConflict.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ResolveConflicts {
    #[serde(default = "overwrite")]
    pub on_create: ConflictMode,
    /// `preserve` keeps what someone changed in the cluster on an upgrade.
    #[serde(default = "preserve")]
    pub on_update: ConflictMode,
}

impl Default for ResolveConflicts {
    fn default() -> ResolveConflicts {
        ResolveConflicts {
            on_create: ConflictMode::Overwrite,
            on_update: ConflictMode::Preserve,
        }
    }
}

fn overwrite() -> ConflictMode {
    ConflictMode::Overwrite
}

fn preserve() -> ConflictMode {
    ConflictMode::Preserve
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ConflictMode {
    None,
    Overwrite,
    Preserve,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SageMaker {
    pub region: Option<String>,
    #[serde(default)]
    pub endpoints: Vec<Endpoint>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Endpoint {
    pub name: String,
    pub execution_role_arn: String,
    pub variants: Vec<Variant>,
    #[serde(default)]
    pub data_capture: DataCapture,
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    /// Invoked after each deployment of a new config; an answer without
    /// the expected text rolls the endpoint back.
    pub smoke_test: Option<SmokeTest>,
}

impl Endpoint {
    /// Whether git declares autoscaling on `variant`.
    pub fn autoscales(&self, variant: &str) -> bool {
        self.variants
            .iter()
            .any(|v| v.name == variant && v.autoscaling.is_some())
    }
}

/// A request the deployed model must answer before ferry calls its
/// deployment a success.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SmokeTest {
    /// A file of the platform repo (path from its root): the request body.
    pub payload: String,
    #[serde(default = "json")]
    pub content_type: String,
    /// Text the answer's body must contain.
    pub expect_contains: String,
    /// The payload's bytes, read from the same commit as platform.yaml.
    #[serde(skip)]
    pub body: Vec<u8>,
}

fn json() -> String {
    "application/json".into()
}

/// SageMaker's limit for a real-time invocation's body.
pub const MAX_SMOKE_PAYLOAD: usize = 6 * 1024 * 1024;

/// Target tracking on invocations per instance (Application Auto Scaling).
/// While it is declared, the autoscaler owns the variant's instance count.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Autoscaling {
    pub min: i32,
    pub max: i32,
    pub target_invocations_per_instance: f64,
    /// Seconds.
    #[serde(default = "cooldown")]
    pub scale_in_cooldown: i32,
    /// Seconds.
    #[serde(default = "cooldown")]
    pub scale_out_cooldown: i32,
}

/// Application Auto Scaling's default for SageMaker variants.
fn cooldown() -> i32 {
    300
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DataCapture {
    #[serde(default)]
    pub enabled: bool,
    /// `s3://bucket/prefix`; required when enabled.
    pub destination: Option<String>,
    #[serde(default = "hundred")]
    pub sampling_percentage: i32,
}

fn hundred() -> i32 {
    100
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Variant {
    pub name: String,
    /// The registered model this variant serves (e.g. `churn`, MLflow's name).
    pub model_name: String,
    pub image: String,
    pub model_data: String,
    pub instance_type: String,
    #[serde(default = "one")]
    pub initial_instance_count: i32,
    #[serde(default = "one_f")]
    pub weight: f32,
    pub autoscaling: Option<Autoscaling>,
}

fn one() -> i32 {
    1
}

fn one_f() -> f32 {
    1.0
}

/// One problem with platform.yaml.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[error("{file}:{}{key}: {message}", line.map(|l| format!("{l}: ")).unwrap_or_default())]
pub struct PlatformError {
    pub file: String,
    pub line: Option<usize>,
    pub key: String,
    pub message: String,
}

impl PlatformError {
    /// A problem at `key` of `file`, on the line of `text` that holds it.
    fn at(file: &str, text: &str, key: String, message: String) -> PlatformError {
        PlatformError {
            file: file.to_string(),
            line: yaml::line_of(text, &key),
            key,
            message,
        }
    }
}

/// Every problem, or none.
fn found(problems: Vec<PlatformError>) -> Result<(), Vec<PlatformError>> {
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems)
    }
}

/// Parses and validates; every error found, not only the first.
pub fn parse(file: &str, text: &str) -> Result<Platform, Vec<PlatformError>> {
    let as_problem = |e: yaml::YamlError| PlatformError {
        file: file.to_string(),
        line: e.line,
        key: e.key,
        message: e.message,
    };
    // Unknown keys are listed with everything else, not one at a time.
    let (platform, unknown): (Platform, _) = yaml::parse_all_unknown(text)
        .map_err(|errors| errors.into_iter().map(as_problem).collect::<Vec<_>>())?;
    let mut problems: Vec<PlatformError> = unknown.into_iter().map(as_problem).collect();
    validate(&platform, &mut |key: String, message: String| {
        problems.push(PlatformError::at(file, text, key, message))
    });
    found(problems).map(|()| platform)
}

fn validate(p: &Platform, problem: &mut dyn FnMut(String, String)) {
    if p.api_version != API_VERSION {
        problem(
            "apiVersion".into(),
            format!("`{}` is not supported; use `{API_VERSION}`", p.api_version),
        );
    }
    if p.kind != KIND {
        problem("kind".into(), format!("must be `{KIND}`, not `{}`", p.kind));
    }
    if let Some(eks) = &p.eks {
        if eks.cluster.name.trim().is_empty() {
            problem("eks.cluster.name".into(), "must not be empty".into());
        }
        if let Some(region) = &eks.cluster.region
            && !valid_region(region)
        {
            problem(
                "eks.cluster.region".into(),
                format!("`{region}` is not an AWS region name (e.g. eu-west-1)"),
            );
        }
        duplicates(
            eks.nodegroups.iter().map(|n| n.name.as_str()),
            "eks.nodegroups",
            problem,
        );
        duplicates(
            eks.addons.iter().map(|a| a.name.as_str()),
            "eks.addons",
            problem,
        );
        for (i, ng) in eks.nodegroups.iter().enumerate() {
            let key = |k: &str| format!("eks.nodegroups[{i}].{k}");
            let s = ng.scaling;
            if s.min < 0 || s.max < 1 || s.min > s.max {
                problem(
                    key("scaling"),
                    format!(
                        "min {} and max {} must satisfy 0 <= min <= max, max >= 1",
                        s.min, s.max
                    ),
                );
            } else if let Some(desired) = s.desired
                && (desired < s.min || desired > s.max)
            {
                problem(
                    key("scaling.desired"),
                    format!(
                        "desired {desired} is outside min {} .. max {} (leave it out to let an autoscaler size the group)",
                        s.min, s.max
                    ),
                );
            }
            for (j, t) in ng.taints.iter().flatten().enumerate() {
                if !matches!(
                    t.effect.as_str(),
                    "NO_SCHEDULE" | "NO_EXECUTE" | "PREFER_NO_SCHEDULE"
                ) {
                    problem(
                        format!("eks.nodegroups[{i}].taints[{j}].effect"),
                        format!(
                            "`{}` must be NO_SCHEDULE, NO_EXECUTE or PREFER_NO_SCHEDULE",
                            t.effect
                        ),
                    );
                }
            }
        }
        for (i, addon) in eks.addons.iter().enumerate() {
            if addon.configuration.as_ref().is_some_and(|c| !c.is_object()) {
                problem(
                    format!("eks.addons[{i}].configuration"),
                    "must be a mapping (sent as JSON configurationValues)".into(),
                );
            }
            if let Some(arn) = &addon.service_account_role_arn
                && !valid_role_arn(arn)
            {
                problem(
                    format!("eks.addons[{i}].service_account_role_arn"),
                    format!("`{arn}` is not an IAM role ARN (arn:aws:iam::123456789012:role/NAME)"),
                );
            }
        }
    }
    if let Some(sm) = &p.sagemaker {
        if let Some(region) = &sm.region
            && !valid_region(region)
        {
            problem(
                "sagemaker.region".into(),
                format!("`{region}` is not an AWS region name (e.g. eu-west-1)"),
            );
        }
        duplicates(
            sm.endpoints.iter().map(|e| e.name.as_str()),
            "sagemaker.endpoints",
            problem,
        );
        for (i, e) in sm.endpoints.iter().enumerate() {
            let key = |k: &str| format!("sagemaker.endpoints[{i}].{k}");
            if !valid_sagemaker_name(&e.name) || e.name.len() > 40 {
                problem(
                    key("name"),
                    format!(
                        "`{}`: 1-40 of [a-zA-Z0-9-], starting and ending alphanumeric (ferry appends -<hash> to name models and configs)",
                        e.name
                    ),
                );
            }
            if !valid_role_arn(&e.execution_role_arn) {
                problem(
                    key("execution_role_arn"),
                    format!(
                        "`{}` is not an IAM role ARN (arn:aws:iam::123456789012:role/NAME)",
                        e.execution_role_arn
                    ),
                );
            }
            if e.variants.is_empty() {
                problem(key("variants"), "at least one variant is required".into());
            }
            if e.data_capture.enabled {
                match &e.data_capture.destination {
                    None => problem(
                        key("data_capture.destination"),
                        "required when data capture is enabled (s3://bucket/prefix)".into(),
                    ),
                    Some(d) if !valid_s3_url(d) => problem(
                        key("data_capture.destination"),
                        format!("`{d}` is not an S3 URL (s3://bucket/prefix)"),
                    ),
                    _ => {}
                }
                if !(1..=100).contains(&e.data_capture.sampling_percentage) {
                    problem(
                        key("data_capture.sampling_percentage"),
                        "must be 1..=100".into(),
                    );
                }
            }
            if e.tags.len() > MAX_ENDPOINT_TAGS {
                problem(
                    key("tags"),
                    format!(
                        "{} tags; at most {MAX_ENDPOINT_TAGS} (SageMaker allows 50 per resource and ferry adds 5 of its own)",
                        e.tags.len()
                    ),
                );
            }
            for (k, v) in &e.tags {
                if let Some(why) = tag_problem(k, v) {
                    problem(key("tags"), format!("tag `{k}`: {why}"));
                }
            }
            duplicates(
                e.variants.iter().map(|v| v.name.as_str()),
                &key("variants"),
                problem,
            );
            for (j, v) in e.variants.iter().enumerate() {
                let key = |k: &str| format!("sagemaker.endpoints[{i}].variants[{j}].{k}");
                if !valid_sagemaker_name(&v.name) {
                    problem(key("name"), format!("`{}`: 1-63 of [a-zA-Z0-9-]", v.name));
                }
                if !valid_s3_url(&v.model_data) {
                    problem(
                        key("model_data"),
                        format!("`{}` is not an S3 URL (s3://bucket/key)", v.model_data),
                    );
                }
                if v.image.trim().is_empty() || v.image.contains(char::is_whitespace) {
                    problem(
                        key("image"),
                        format!("`{}` is not a container image reference", v.image),
                    );
                }
                if !v.instance_type.starts_with("ml.") {
                    problem(
                        key("instance_type"),
                        format!(
                            "`{}` is not a SageMaker instance type (ml.m5.large, ...)",
                            v.instance_type
                        ),
                    );
                }
                if v.initial_instance_count < 1 {
                    problem(key("initial_instance_count"), "must be at least 1".into());
                }
                if !(v.weight >= 0.0 && v.weight.is_finite()) {
                    problem(key("weight"), "must be a number >= 0".into());
                }
                if let Some(a) = &v.autoscaling {
                    let key = |k: &str| key(&format!("autoscaling.{k}"));
                    if a.min < 1 {
                        problem(key("min"), "must be at least 1".into());
                    }
                    if a.max < a.min {
                        problem(key("max"), format!("{} is below min ({})", a.max, a.min));
                    }
                    if !(a.target_invocations_per_instance > 0.0
                        && a.target_invocations_per_instance.is_finite())
                    {
                        problem(
                            key("target_invocations_per_instance"),
                            "must be a number > 0 (invocations per instance per minute)".into(),
                        );
                    }
                    for (k, c) in [
                        ("scale_in_cooldown", a.scale_in_cooldown),
                        ("scale_out_cooldown", a.scale_out_cooldown),
                    ] {
                        if !(0..=86_400).contains(&c) {
                            problem(key(k), "seconds, 0..=86400".into());
                        }
                    }
                    if a.min <= a.max && !(a.min..=a.max).contains(&v.initial_instance_count) {
                        problem(
                            format!(
                                "sagemaker.endpoints[{i}].variants[{j}].initial_instance_count"
                            ),
                            format!(
                                "{} is outside autoscaling's min..max ({}..{}): the endpoint would start at a size the autoscaler then changes",
                                v.initial_instance_count, a.min, a.max
                            ),
                        );
                    }
                }
            }
        }
    }
}

/// A file of the repo by path: its bytes, None when absent.
pub type ReadFile<'a> = dyn Fn(&str) -> Result<Option<Vec<u8>>, String> + 'a;

/// Reads each endpoint's smoke-test payload with `read` (a path of the
/// repo -> its bytes, None when absent), so the plan carries the bytes of
/// the same commit; every problem names the key and its line in `text`.
pub fn load_smoke_payloads(
    platform: &mut Platform,
    file: &str,
    text: &str,
    read: &ReadFile<'_>,
) -> Result<(), Vec<PlatformError>> {
    let mut problems = Vec::new();
    let endpoints = platform
        .sagemaker
        .as_mut()
        .map(|s| s.endpoints.as_mut_slice())
        .unwrap_or_default();
    for (i, endpoint) in endpoints.iter_mut().enumerate() {
        let Some(smoke) = endpoint.smoke_test.as_mut() else {
            continue;
        };
        let key = format!("sagemaker.endpoints[{i}].smoke_test.payload");
        let path = smoke.payload.trim_start_matches("./");
        let inside = !path.starts_with('/') && !path.split('/').any(|part| part == "..");
        let message = match if inside { read(path) } else { Ok(None) } {
            Ok(Some(bytes)) if bytes.len() > MAX_SMOKE_PAYLOAD => Some(format!(
                "`{path}` is {} bytes; SageMaker takes at most {MAX_SMOKE_PAYLOAD} in one invocation",
                bytes.len()
            )),
            Ok(Some(bytes)) => {
                smoke.body = bytes;
                None
            }
            Ok(None) => Some(format!(
                "`{path}` is not a file of this commit (give its path from the repository root)"
            )),
            Err(e) => Some(format!("`{path}`: {e}")),
        };
        if let Some(message) = message {
            problems.push(PlatformError::at(file, text, key, message));
        }
    }
    found(problems)
}

/// SageMaker's 50 tags per resource, less the 5 provenance tags ferry adds.
const MAX_ENDPOINT_TAGS: usize = 45;

/// Keys git may not declare: AWS reserves `aws:`, ferry writes its
/// provenance under `ferry.dev/` and would overwrite them.
pub fn reserved_tag_key(key: &str) -> bool {
    key.starts_with("aws:") || key.starts_with("ferry.dev/")
}

/// SageMaker's tag rules: key 1-128, value 0-256 characters, letters,
/// digits, spaces and `_ . : / = + - @`.
fn tag_problem(key: &str, value: &str) -> Option<String> {
    let allowed = |t: &str| {
        t.chars()
            .all(|c| c.is_alphanumeric() || c == ' ' || "_.:/=+-@".contains(c))
    };
    if reserved_tag_key(key) {
        Some("keys starting with `aws:` or `ferry.dev/` are reserved for AWS and ferry".into())
    } else if key.is_empty() || key.chars().count() > 128 {
        Some("a key is 1-128 characters".into())
    } else if value.chars().count() > 256 {
        Some("a value is at most 256 characters".into())
    } else if !allowed(key) || !allowed(value) {
        Some("use letters, digits, spaces and _ . : / = + - @ only".into())
    } else {
        None
    }
}

fn duplicates<'a>(
    names: impl Iterator<Item = &'a str>,
    list: &str,
    problem: &mut dyn FnMut(String, String),
) {
    let mut seen = HashSet::new();
    for (i, name) in names.enumerate() {
        if !seen.insert(name) {
            problem(
                format!("{list}[{i}].name"),
                format!("`{name}` is declared twice"),
            );
        }
    }
}

fn valid_region(region: &str) -> bool {
    let parts: Vec<&str> = region.split('-').collect();
    parts.len() >= 3
        && parts.iter().all(|p| {
            !p.is_empty()
                && p.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        })
        && parts
            .last()
            .is_some_and(|p| p.chars().all(|c| c.is_ascii_digit()))
}

fn valid_sagemaker_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

/// `arn:<partition>:iam::<12 digits>:role/<path/name>`
pub fn valid_role_arn(arn: &str) -> bool {
    let parts: Vec<&str> = arn.splitn(6, ':').collect();
    let [prefix, partition, service, region, account, resource] = parts.as_slice() else {
        return false;
    };
    *prefix == "arn"
        && matches!(*partition, "aws" | "aws-cn" | "aws-us-gov")
        && *service == "iam"
        && region.is_empty()
        && account.len() == 12
        && account.chars().all(|c| c.is_ascii_digit())
        && resource.strip_prefix("role/").is_some_and(|name| {
            !name.is_empty()
                && name.len() <= 512
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "+=,.@_-/".contains(c))
        })
}

/// `s3://bucket/key`, bucket per S3's naming rules.
pub fn valid_s3_url(url: &str) -> bool {
    let Some(rest) = url.strip_prefix("s3://") else {
        return false;
    };
    let (bucket, key) = rest.split_once('/').unwrap_or((rest, ""));
    (3..=63).contains(&bucket.len())
        && bucket
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
        && bucket.starts_with(|c: char| c.is_ascii_alphanumeric())
        && bucket.ends_with(|c: char| c.is_ascii_alphanumeric())
        && !key.is_empty()
}

/// Reads `file` at `commit` of a bare mirror; None when the file is absent.
pub fn read_mirror(
    mirror: &std::path::Path,
    commit: git2::Oid,
    file: &str,
) -> Result<Option<Platform>, Vec<PlatformError>> {
    let repo = git2::Repository::open_bare(mirror)
        .map_err(|e| general(file, format!("cannot open the mirror: {}", e.message())))?;
    read(&repo, commit, file)
}

fn general(file: &str, message: String) -> Vec<PlatformError> {
    vec![PlatformError {
        file: file.to_string(),
        line: None,
        key: "(file)".into(),
        message,
    }]
}

/// Reads `file` at `commit`; None when the file is absent.
pub fn read(
    repo: &git2::Repository,
    commit: git2::Oid,
    file: &str,
) -> Result<Option<Platform>, Vec<PlatformError>> {
    let general = |message: String| general(file, message);
    let tree = repo
        .find_commit(commit)
        .and_then(|c| c.tree())
        .map_err(|e| general(format!("cannot read commit {commit}: {}", e.message())))?;
    let entry = match tree.get_path(std::path::Path::new(file)) {
        Ok(entry) => entry,
        Err(e) if e.code() == git2::ErrorCode::NotFound => return Ok(None),
        Err(e) => return Err(general(e.message().to_string())),
    };
    let blob = repo
        .find_blob(entry.id())
        .map_err(|e| general(format!("not a file: {}", e.message())))?;
    let text = std::str::from_utf8(blob.content()).map_err(|_| {
        vec![PlatformError {
            file: file.to_string(),
            line: crate::yaml::utf8_error_line(blob.content()),
            key: "(file)".into(),
            message: crate::yaml::NOT_UTF8.into(),
        }]
    })?;
    let mut platform = parse(file, text)?;
    let read_blob = |path: &str| -> Result<Option<Vec<u8>>, String> {
        match tree.get_path(std::path::Path::new(path)) {
            Ok(entry) => match entry.to_object(repo).map(|o| o.into_blob()) {
                Ok(Ok(blob)) => Ok(Some(blob.content().to_vec())),
                _ => Err("not a file".into()),
            },
            Err(e) if e.code() == git2::ErrorCode::NotFound => Ok(None),
            Err(e) => Err(e.message().to_string()),
        }
    };
    load_smoke_payloads(&mut platform, file, text, &read_blob)?;
    Ok(Some(platform))
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "apiVersion: ferry.dev/v1alpha1
kind: Platform
eks:
  cluster:
    name: ml
    region: eu-west-1
  nodegroups:
    - name: system
      scaling: {min: 1, max: 3, desired: 2}
      taints:
        - {key: dedicated, value: training, effect: NO_SCHEDULE}
  addons:
    - name: vpc-cni
      version: v1.19.0-eksbuild.1
      configuration: {env: {WARM_IP_TARGET: \"2\"}}
sagemaker:
  endpoints:
    - name: churn
      execution_role_arn: arn:aws:iam::123456789012:role/service-role/sm-exec
      variants:
        - name: primary
          model_name: churn
          image: 123456789012.dkr.ecr.eu-west-1.amazonaws.com/churn:3
          model_data: s3://ml-models/churn/3/model.tar.gz
          instance_type: ml.m5.large
";

    #[test]
    fn the_example_parses() {
        let p = parse("platform.yaml", GOOD).unwrap();
        assert_eq!(p.eks.unwrap().nodegroups[0].scaling.desired, Some(2));
        assert_eq!(p.sagemaker.unwrap().endpoints[0].variants[0].weight, 1.0);
    }

    #[test]
    fn every_problem_is_named_with_file_key_and_line() {
        let bad = GOOD
            .replace("desired: 2", "desired: 7")
            .replace("role/service-role/sm-exec", "user/bob")
            .replace(
                "s3://ml-models/churn/3/model.tar.gz",
                "https://bucket/model.tar.gz",
            )
            .replace(
                "    - name: system\n",
                "    - name: system\n      scaling: {min: 1, max: 3, desired: 1}\n      name: x\n",
            );
        // The duplicate-key edit makes YAML itself refuse; check separately.
        assert!(parse("platform.yaml", &bad).is_err());
        let bad = GOOD
            .replace("desired: 2", "desired: 7")
            .replace("role/service-role/sm-exec", "user/bob")
            .replace(
                "s3://ml-models/churn/3/model.tar.gz",
                "https://bucket/model.tar.gz",
            );
        let errors = parse("platform.yaml", &bad).unwrap_err();
        let text: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
        assert_eq!(text.len(), 3, "{text:#?}");
        assert_eq!(
            text[0],
            "platform.yaml:9: eks.nodegroups[0].scaling.desired: desired 7 is outside min 1 .. max 3 (leave it out to let an autoscaler size the group)"
        );
        assert!(
            text[1].starts_with("platform.yaml:19: sagemaker.endpoints[0].execution_role_arn: "),
            "{}",
            text[1]
        );
        assert!(
            text[2]
                .starts_with("platform.yaml:24: sagemaker.endpoints[0].variants[0].model_data: "),
            "{}",
            text[2]
        );
        let unknown = GOOD.replace("  nodegroups:", "  nodegroup_list: []\n  nodegroups:");
        let err = &parse("platform.yaml", &unknown).unwrap_err()[0];
        assert_eq!(
            (err.key.as_str(), err.line),
            ("eks.nodegroup_list", Some(7)),
            "{err}"
        );
        // Unknown keys do not hide the other problems: two typos and a
        // value out of range, all three named with their lines.
        let many = GOOD
            .replace("  nodegroups:", "  nodegroup_list: []\n  nodegroups:")
            .replace("      taints:", "      tains: []\n      taints:")
            .replace("desired: 2", "desired: 7");
        let errors = parse("platform.yaml", &many).unwrap_err();
        let text: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
        assert_eq!(text.len(), 3, "{text:#?}");
        assert!(
            text[0].starts_with("platform.yaml:7: eks.nodegroup_list: unknown field"),
            "{}",
            text[0]
        );
        assert!(
            text[1].starts_with("platform.yaml:11: eks.nodegroups[0].tains: unknown field"),
            "{}",
            text[1]
        );
        assert!(
            text[2].starts_with("platform.yaml:10: eks.nodegroups[0].scaling.desired: desired 7"),
            "{}",
            text[2]
        );
        let dup = GOOD.replace("  addons:\n", "  addons:\n    - name: vpc-cni\n");
        let err = &parse("platform.yaml", &dup).unwrap_err()[0];
        assert_eq!(err.key, "eks.addons[1].name", "{err}");
    }

    #[test]
    fn autoscaling_and_smoke_tests_are_checked_with_their_lines() {
        let scaled = GOOD.replace(
            "          instance_type: ml.m5.large\n",
            "          instance_type: ml.m5.large\n          initial_instance_count: 5\n          autoscaling: {min: 2, max: 1, target_invocations_per_instance: 0, scale_in_cooldown: 90000}\n",
        );
        let errors = parse("platform.yaml", &scaled).unwrap_err();
        let text: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
        assert_eq!(text.len(), 3, "{text:#?}");
        assert!(
            text[0].starts_with(
                "platform.yaml:27: sagemaker.endpoints[0].variants[0].autoscaling.max: 1 is below min (2)"
            ),
            "{text:#?}"
        );
        assert!(
            text[1].contains("autoscaling.target_invocations_per_instance: must be a number > 0")
        );
        assert!(text[2].contains("autoscaling.scale_in_cooldown: seconds, 0..=86400"));
        let outside = scaled.replace(
            "{min: 2, max: 1, target_invocations_per_instance: 0, scale_in_cooldown: 90000}",
            "{min: 1, max: 4, target_invocations_per_instance: 70}",
        );
        let err = &parse("platform.yaml", &outside).unwrap_err()[0];
        assert_eq!(
            (err.key.as_str(), err.line),
            (
                "sagemaker.endpoints[0].variants[0].initial_instance_count",
                Some(26)
            ),
            "{err}"
        );
        let fine = outside.replace("initial_instance_count: 5", "initial_instance_count: 2");
        let p = parse("platform.yaml", &fine).unwrap();
        let a = p.sagemaker.unwrap().endpoints[0].variants[0]
            .autoscaling
            .clone()
            .unwrap();
        assert_eq!(
            (a.min, a.max, a.scale_in_cooldown, a.scale_out_cooldown),
            (1, 4, 300, 300)
        );

        let smoked = GOOD.replace(
            "    - name: churn\n",
            "    - name: churn\n      smoke_test: {payload: smoke/churn.json, expect_contains: '['}\n",
        );
        let mut p = parse("platform.yaml", &smoked).unwrap();
        // Outside the repository is never read, from a checkout either.
        let outside = smoked.replace("smoke/churn.json", "../../etc/passwd");
        let mut q = parse("platform.yaml", &outside).unwrap();
        let refused = load_smoke_payloads(&mut q, "platform.yaml", &outside, &|path| {
            panic!("read {path}")
        })
        .unwrap_err();
        assert!(
            refused[0].message.contains("is not a file of this commit"),
            "{}",
            refused[0]
        );
        let missing =
            load_smoke_payloads(&mut p, "platform.yaml", &smoked, &|_| Ok(None)).unwrap_err();
        assert_eq!(
            missing[0].to_string(),
            "platform.yaml:19: sagemaker.endpoints[0].smoke_test.payload: `smoke/churn.json` is not a file of this commit (give its path from the repository root)"
        );
        let huge = load_smoke_payloads(&mut p, "platform.yaml", &smoked, &|_| {
            Ok(Some(vec![b'x'; MAX_SMOKE_PAYLOAD + 1]))
        })
        .unwrap_err();
        assert!(
            huge[0].message.contains("SageMaker takes at most"),
            "{}",
            huge[0]
        );
        load_smoke_payloads(&mut p, "platform.yaml", &smoked, &|path| {
            assert_eq!(path, "smoke/churn.json");
            Ok(Some(b"[[1,2]]".to_vec()))
        })
        .unwrap();
        let smoke = p.sagemaker.unwrap().endpoints[0]
            .smoke_test
            .clone()
            .unwrap();
        assert_eq!(
            (smoke.body.as_slice(), smoke.content_type.as_str()),
            (&b"[[1,2]]"[..], "application/json")
        );
    }

    #[test]
    fn the_template_is_valid() {
        let text = include_str!("../../platform-repo-template/platform.yaml");
        let p = parse("platform.yaml", text).unwrap_or_else(|e| panic!("{e:#?}"));
        let eks = p.eks.unwrap();
        assert_eq!(eks.nodegroups.len(), 2);
        assert!(
            eks.nodegroups[1]
                .taints
                .as_ref()
                .is_some_and(|t| t[0].effect == "NO_SCHEDULE")
        );
        assert_eq!(
            p.sagemaker.unwrap().endpoints[0].variants[0].model_name,
            "diagnosis-classifier"
        );
    }

    #[test]
    fn endpoint_tags_follow_sagemaker_rules_and_leave_ferrys_keys_alone() {
        let with_tags = |tags: &str| {
            GOOD.replace(
                "      variants:\n",
                &format!("      tags: {tags}\n      variants:\n"),
            )
        };
        assert!(
            parse(
                "platform.yaml",
                &with_tags("{team: ds, cost-center: \"42\"}")
            )
            .is_ok()
        );
        for (tags, says) in [
            (
                "{ferry.dev/commit: abc}",
                "tag `ferry.dev/commit`: keys starting with",
            ),
            ("{\"aws:owner\": x}", "tag `aws:owner`: keys starting with"),
            ("{team: \"d;s\"}", "tag `team`: use letters"),
            ("{\"\": x}", "tag ``: a key is 1-128"),
        ] {
            let errors = parse("platform.yaml", &with_tags(tags)).unwrap_err();
            assert_eq!(errors.len(), 1, "{tags}: {errors:#?}");
            assert_eq!(errors[0].key, "sagemaker.endpoints[0].tags", "{tags}");
            assert_eq!(errors[0].line, Some(20), "{tags}");
            assert!(errors[0].message.starts_with(says), "{tags}: {}", errors[0]);
        }
        let many: Vec<String> = (0..46).map(|i| format!("k{i}: v")).collect();
        let errors = parse(
            "platform.yaml",
            &with_tags(&format!("{{{}}}", many.join(", "))),
        )
        .unwrap_err();
        assert!(
            errors[0].message.starts_with("46 tags; at most 45"),
            "{}",
            errors[0]
        );
    }

    #[test]
    fn arns_and_s3_urls() {
        assert!(valid_role_arn("arn:aws:iam::123456789012:role/a/b-c_d"));
        assert!(valid_role_arn("arn:aws-cn:iam::123456789012:role/x"));
        assert!(!valid_role_arn("arn:aws:iam::12345:role/x"));
        assert!(!valid_role_arn("arn:aws:iam::123456789012:user/x"));
        assert!(!valid_role_arn("arn:aws:s3:::bucket"));
        assert!(valid_s3_url("s3://my-bucket.v2/k/model.tar.gz"));
        assert!(!valid_s3_url("s3://My_Bucket/k"));
        assert!(!valid_s3_url("s3://bucket"));
        assert!(!valid_s3_url("s3://ab/k"));
    }
}
