//! The AWS target against the moto server (with ferry's launcher filling
//! moto's gaps): EKS nodegroups and addons, SageMaker endpoints, prune,
//! failure, throttling, and `ferry run` applying platform.yaml with drift.
#![cfg(feature = "aws")]

use crate::support;

use std::sync::atomic::AtomicBool;
use std::time::Duration;

use crate::support::moto::moto;
use crate::support::*;
use ferry::aws::target::AwsTarget;
use ferry::aws::{self, Action, Provenance};
use ferry::config::AwsTargetConfig;
use ferry::desired::platform;
use ferry::verdict::{Failure, Reason};

pub(crate) const REGION: &str = "eu-west-1";
/// Credentials for `ferry run` against moto (any value passes).
pub(crate) fn aws_env() -> [(&'static str, &'static std::path::Path); 2] {
    let testing = std::path::Path::new("testing");
    [
        ("AWS_ACCESS_KEY_ID", testing),
        ("AWS_SECRET_ACCESS_KEY", testing),
    ]
}
const ROLE: &str = "arn:aws:iam::123456789012:role/sagemaker-exec";

/// moto's keys, given to the SDK directly: no test here touches the
/// process environment, which every thread of the test binary shares.
pub(crate) fn test_credentials() -> ferry::config::StaticCredentials {
    ferry::config::StaticCredentials {
        access_key_id: "testing".into(),
        secret_access_key: ferry::secret::Secret::new("testing"),
    }
}

fn target_config(endpoint: &str, prune: bool) -> AwsTargetConfig {
    AwsTargetConfig {
        source: "platform".into(),
        file: "platform.yaml".into(),
        region: Some(REGION.into()),
        endpoint_url: Some(endpoint.into()),
        prune,
        drift_interval: Duration::from_secs(300),
        update_timeout: Duration::from_secs(30),
        poll_interval: Duration::from_millis(50),
        static_credentials: Some(test_credentials()),
    }
}

async fn eks_client() -> aws_sdk_eks::Client {
    aws_sdk_eks::Client::new(
        &aws::sdk_config(Some(REGION), Some(&moto().url), Some(&test_credentials())).await,
    )
}

async fn sagemaker_client() -> aws_sdk_sagemaker::Client {
    aws_sdk_sagemaker::Client::new(
        &aws::sdk_config(Some(REGION), Some(&moto().url), Some(&test_credentials())).await,
    )
}

async fn live_nodegroup() -> aws_sdk_eks::types::Nodegroup {
    eks_client()
        .await
        .describe_nodegroup()
        .cluster_name("ml")
        .nodegroup_name("system")
        .send()
        .await
        .unwrap()
        .nodegroup
        .unwrap()
}

/// What Terraform would have made: cluster `ml`, nodegroup `system` (1..3, 1).
async fn terraform_cluster() {
    let eks = eks_client().await;
    eks.create_cluster()
        .name("ml")
        .role_arn("arn:aws:iam::123456789012:role/eks")
        .resources_vpc_config(
            aws_sdk_eks::types::VpcConfigRequest::builder()
                .subnet_ids("subnet-1")
                .build(),
        )
        .send()
        .await
        .unwrap();
    eks.create_nodegroup()
        .cluster_name("ml")
        .nodegroup_name("system")
        .node_role("arn:aws:iam::123456789012:role/node")
        .subnets("subnet-1")
        .instance_types("m6i.large")
        .scaling_config(
            aws_sdk_eks::types::NodegroupScalingConfig::builder()
                .min_size(1)
                .max_size(3)
                .desired_size(1)
                .build(),
        )
        .labels("role", "system")
        .labels("stale", "yes")
        .send()
        .await
        .unwrap();
}

fn eks_yaml(scaling: &str, extra: &str) -> String {
    format!(
        "apiVersion: ferry.dev/v1alpha1\nkind: Platform\neks:\n  cluster: {{name: ml, region: {REGION}}}\n{extra}  nodegroups:\n    - name: system\n      scaling: {scaling}\n      labels: {{role: system, tier: core}}\n      taints:\n        - {{key: dedicated, value: system, effect: NO_SCHEDULE}}\n      instance_types: [m6i.large]\n      version: \"1.32\"\n  addons:\n    - name: vpc-cni\n      version: v1.19.0-eksbuild.1\n      configuration: {{env: {{WARM_IP_TARGET: \"2\"}}}}\n"
    )
}

fn sagemaker_yaml(endpoints: &[(&str, &str, f32)]) -> String {
    let mut out =
        "apiVersion: ferry.dev/v1alpha1\nkind: Platform\nsagemaker:\n  endpoints:\n".to_string();
    for (name, image, weight) in endpoints {
        out.push_str(&format!(
            "    - name: {name}\n      execution_role_arn: {ROLE}\n      tags: {{team: ds}}\n      variants:\n        - name: primary\n          model_name: {name}\n          image: 123456789012.dkr.ecr.{REGION}.amazonaws.com/{name}:{image}\n          model_data: s3://ml-models/{name}/{image}/model.tar.gz\n          instance_type: ml.m5.large\n          weight: {weight}\n"
        ));
    }
    out
}

/// A change's fields as `field: before -> after`.
fn field_lines(change: &ferry::aws::Change) -> Vec<String> {
    change
        .fields
        .iter()
        .map(|f| format!("{}: {} -> {}", f.field, f.before, f.after))
        .collect()
}

fn parse(text: &str) -> Result<Option<platform::Platform>, Vec<platform::PlatformError>> {
    platform::parse("platform.yaml", text).map(Some)
}

fn oid(n: u8) -> git2::Oid {
    git2::Oid::from_bytes(&[n; 20]).unwrap()
}

/// Applies revision `n` and asserts every change succeeded.
/// ferry.yaml (under `dir`) for `ferry run` on `port`: source `platform`
/// from `git daemon` on `daemon_port`, GitHub repository `repo` on the fake
/// GitHub at `api` (token `token`), platform.yaml applied to moto.
pub(crate) fn reporting_config(
    dir: &std::path::Path,
    port: u16,
    daemon_port: u16,
    api: &str,
    repo: &str,
    token: &str,
) -> std::path::PathBuf {
    let token_file = dir.join("token");
    std::fs::write(&token_file, token).unwrap();
    let config = dir.join("ferry.yaml");
    std::fs::write(
        &config,
        format!(
            "cache_dir: {cache}\nserver:\n  listen: 127.0.0.1:{port}\n\
             github:\n  api_url: {api}\n  token_file: {token}\n\
             sources:\n  - name: platform\n    url: git://127.0.0.1:{daemon_port}/platform.git\n    github_repo: {repo}\n    interval: 1s\n\
             targets:\n  aws:\n    source: platform\n    region: {REGION}\n    endpoint_url: {url}\n    poll_interval: 50ms\n",
            cache = dir.join("cache").display(),
            token = token_file.display(),
            url = moto().url,
        ),
    )
    .unwrap();
    config
}

/// The target of source `platform` (repo acme/platform) on moto.
fn platform_target(prune: bool) -> AwsTarget {
    AwsTarget::new(
        "platform",
        "acme/platform",
        target_config(&moto().url, prune),
    )
}

/// Each change of the plan: (resource, action).
fn resources(plan: &aws::AwsPlan) -> Vec<(&str, Action)> {
    plan.changes
        .iter()
        .map(|c| (c.resource.as_str(), c.action))
        .collect()
}

async fn apply_ok(
    target: &mut AwsTarget,
    n: u8,
    platform: Result<Option<platform::Platform>, Vec<platform::PlatformError>>,
) -> ferry::aws::AwsOutcome {
    let outcome = revise(target, oid(n), platform, &AtomicBool::new(false))
        .await
        .unwrap();
    assert!(outcome.succeeded(), "{:?}", outcome.results);
    outcome
}

/// The agent's way through this target: the gate's part (platform.yaml
/// parsed), a plan, and that plan applied.
async fn revise(
    target: &mut AwsTarget,
    commit: git2::Oid,
    platform: Result<Option<platform::Platform>, Vec<platform::PlatformError>>,
    cancel: &AtomicBool,
) -> Result<ferry::aws::AwsOutcome, Failure> {
    let platform = platform.map_err(|errors| {
        Failure::problems(
            Reason::Invalid,
            "not applied",
            errors.into_iter().map(Into::into).collect(),
        )
    })?;
    let plan = target.plan(commit, platform.as_ref()).await?;
    target.apply(plan, cancel).await
}

fn provenance(n: u8) -> Provenance {
    Provenance {
        source: "platform".into(),
        repo: "acme/platform".into(),
        commit: oid(n).to_string(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodegroup_and_addon_changes_are_planned_then_applied() {
    let _moto = moto().lock().await;
    terraform_cluster().await;
    let config = target_config(&moto().url, false);
    let p = parse(&eks_yaml("{min: 1, max: 4, desired: 2}", ""))
        .unwrap()
        .unwrap();
    let clients = aws::clients(&p, &config).await;
    let plan = aws::plan(&clients, &p, &provenance(1), false)
        .await
        .unwrap();
    assert!(plan.errors.is_empty(), "{:?}", plan.errors);
    assert_eq!(
        resources(&plan),
        [
            ("eks/ml/nodegroup/system", Action::Update),
            ("eks/ml/addon/vpc-cni", Action::Create)
        ]
    );
    let fields = field_lines(&plan.changes[0]);
    assert!(
        fields.contains(&"scaling: min 1, max 3, desired 1 -> min 1, max 4, desired 2".to_string()),
        "{fields:?}"
    );
    assert!(
        fields.contains(&"labels.tier:  -> core".to_string())
            && fields.contains(&"labels.stale: yes -> ".to_string()),
        "{fields:?}"
    );
    // A version change without allow_upgrades is drift, not a change.
    assert!(
        plan.drift.iter().any(|d| d.contains("allow_upgrades")),
        "{:?}",
        plan.drift
    );

    let mut target = AwsTarget::new("platform", "acme/platform", config.clone());
    apply_ok(
        &mut target,
        1,
        parse(&eks_yaml("{min: 1, max: 4, desired: 2}", "")),
    )
    .await;
    let live = live_nodegroup().await;
    let s = live.scaling_config().unwrap();
    assert_eq!(
        (s.min_size(), s.max_size(), s.desired_size()),
        (Some(1), Some(4), Some(2))
    );
    let labels = live.labels().unwrap();
    assert_eq!(labels.get("tier").map(String::as_str), Some("core"));
    assert!(!labels.contains_key("stale"));
    assert_eq!(live.taints().len(), 1);
    let addon = eks_client()
        .await
        .describe_addon()
        .cluster_name("ml")
        .addon_name("vpc-cni")
        .send()
        .await
        .unwrap()
        .addon
        .unwrap();
    assert_eq!(addon.addon_version(), Some("v1.19.0-eksbuild.1"));

    // Applied state plans to nothing; an addon upgrade and, with
    // allow_upgrades, the Kubernetes version go through DescribeUpdate.
    let again = aws::plan(&clients, &p, &provenance(1), false)
        .await
        .unwrap();
    assert!(again.changes.is_empty(), "{:?}", again.changes);
    let upgraded = eks_yaml("{min: 1, max: 4, desired: 2}", "  allow_upgrades: true\n")
        .replace("v1.19.0", "v1.20.0");
    let outcome = revise(
        &mut target,
        oid(2),
        parse(&upgraded),
        &AtomicBool::new(false),
    )
    .await
    .unwrap();
    assert!(outcome.succeeded(), "{:?}", outcome.results);
    assert_eq!(outcome.results.len(), 2, "{:?}", outcome.results);
    let live = live_nodegroup().await;
    assert_eq!(live.version(), Some("1.32"));
}

/// Addons over what every new EKS cluster runs self-managed (vpc-cni,
/// kube-proxy, CoreDNS): taken over by default (`on_create: overwrite`);
/// with `none`, EKS's ConfigurationConflict comes back with what to change
/// in platform.yaml. An addon's IRSA role is planned, sent and changed like
/// any other field, and a role that is no ARN is refused with its line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn addons_take_over_self_managed_ones_with_their_roles() {
    let _moto = moto().lock().await;
    terraform_cluster().await;
    let config = target_config(&moto().url, false);
    let role = |name: &str| format!("arn:aws:iam::123456789012:role/ml-{name}");
    let yaml = |cni_role: &str, extra: &str| {
        format!(
            "apiVersion: ferry.dev/v1alpha1\nkind: Platform\neks:\n  cluster: {{name: ml, region: {REGION}}}\n  addons:\n    \
             - name: vpc-cni\n      version: v1.19.0-eksbuild.1\n      service_account_role_arn: {cni_role}\n    \
             - name: aws-ebs-csi-driver\n      version: v1.40.0-eksbuild.1\n      service_account_role_arn: {}\n{extra}",
            role("ebs-csi")
        )
    };
    let mut target = AwsTarget::new("platform", "acme/platform", config.clone());
    let p = parse(&yaml(&role("vpc-cni"), "")).unwrap().unwrap();
    let clients = aws::clients(&p, &config).await;
    let plan = aws::plan(&clients, &p, &provenance(1), false)
        .await
        .unwrap();
    let fields = field_lines(&plan.changes[0]);
    assert!(
        fields.contains(&format!(
            "service_account_role_arn:  -> {}",
            role("vpc-cni")
        )),
        "{fields:?}"
    );
    apply_ok(&mut target, 1, parse(&yaml(&role("vpc-cni"), ""))).await;
    let described = |name: &'static str| async move {
        eks_client()
            .await
            .describe_addon()
            .cluster_name("ml")
            .addon_name(name)
            .send()
            .await
            .unwrap()
            .addon
            .unwrap()
    };
    let cni = described("vpc-cni").await;
    assert_eq!(
        cni.status().map(|s| s.as_str()),
        Some("ACTIVE"),
        "taken over"
    );
    assert_eq!(
        cni.service_account_role_arn(),
        Some(role("vpc-cni").as_str())
    );
    assert_eq!(
        described("aws-ebs-csi-driver")
            .await
            .service_account_role_arn(),
        Some(role("ebs-csi").as_str())
    );

    // A new role: planned as the one change, then sent.
    let p = parse(&yaml(&role("vpc-cni-2"), "")).unwrap().unwrap();
    let plan = aws::plan(&clients, &p, &provenance(2), false)
        .await
        .unwrap();
    let changed: Vec<String> = plan
        .changes
        .iter()
        .flat_map(|c| {
            c.fields
                .iter()
                .map(move |f| format!("{} {}: {} -> {}", c.resource, f.field, f.before, f.after))
        })
        .collect();
    assert_eq!(
        changed,
        [format!(
            "eks/ml/addon/vpc-cni service_account_role_arn: {} -> {}",
            role("vpc-cni"),
            role("vpc-cni-2")
        )]
    );
    apply_ok(&mut target, 2, parse(&yaml(&role("vpc-cni-2"), ""))).await;
    assert_eq!(
        described("vpc-cni").await.service_account_role_arn(),
        Some(role("vpc-cni-2").as_str())
    );

    // kube-proxy, told not to take over: EKS's conflict, and the fix.
    let kube_proxy = "    - name: kube-proxy\n      resolve_conflicts: {on_create: none}\n";
    let outcome = revise(
        &mut target,
        oid(3),
        parse(&yaml(&role("vpc-cni-2"), kube_proxy)),
        &AtomicBool::new(false),
    )
    .await
    .unwrap();
    let failed: Vec<&str> = outcome
        .results
        .iter()
        .filter_map(|r| r.error.as_deref())
        .collect();
    assert_eq!(failed.len(), 1, "{:?}", outcome.results);
    assert!(
        failed[0].contains("addon is CREATE_FAILED: Conflicts found")
            && failed[0].contains(
                "set `resolve_conflicts: {on_create: overwrite}` on the addon in platform.yaml"
            ),
        "{}",
        failed[0]
    );

    // Not a role ARN: refused with its line, before any AWS call.
    let errors = parse(&yaml("ml-vpc-cni", "")).unwrap_err();
    assert_eq!(
        errors[0].to_string(),
        "platform.yaml:8: eks.addons[0].service_account_role_arn: `ml-vpc-cni` is not an IAM role ARN (arn:aws:iam::123456789012:role/NAME)"
    );
}

/// A nodegroup whose `desired` git leaves out is the autoscaler's to size:
/// ferry sets its bounds and never its size, but to bring the size inside
/// new bounds (which EKS would refuse otherwise).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_autoscaled_nodegroup_keeps_the_size_the_autoscaler_chose() {
    let _moto = moto().lock().await;
    terraform_cluster().await;
    let config = target_config(&moto().url, false);
    let mut target = AwsTarget::new("platform", "acme/platform", config.clone());
    let sizes = || async {
        let live = live_nodegroup().await;
        let s = live.scaling_config().unwrap();
        (
            s.min_size().unwrap(),
            s.max_size().unwrap(),
            s.desired_size().unwrap(),
        )
    };
    let autoscaled = |bounds: &str| eks_yaml(bounds, "");

    apply_ok(&mut target, 1, parse(&autoscaled("{min: 1, max: 4}"))).await;
    assert_eq!(sizes().await, (1, 4, 1), "the size stays the group's");

    // The autoscaler scales up; the next plan of the same commit leaves it.
    eks_client()
        .await
        .update_nodegroup_config()
        .cluster_name("ml")
        .nodegroup_name("system")
        .scaling_config(
            aws_sdk_eks::types::NodegroupScalingConfig::builder()
                .desired_size(3)
                .build(),
        )
        .send()
        .await
        .unwrap();
    let p = parse(&autoscaled("{min: 1, max: 4}")).unwrap().unwrap();
    let clients = aws::clients(&p, &config).await;
    let plan = aws::plan(&clients, &p, &provenance(2), false)
        .await
        .unwrap();
    let nodegroup_changes: Vec<_> = plan
        .changes
        .iter()
        .filter(|c| c.resource.contains("/nodegroup/"))
        .collect();
    assert!(nodegroup_changes.is_empty(), "{nodegroup_changes:?}");

    // New bounds below the autoscaler's size: brought inside them.
    let p = parse(&autoscaled("{min: 0, max: 2}")).unwrap().unwrap();
    let plan = aws::plan(&clients, &p, &provenance(3), false)
        .await
        .unwrap();
    let fields = field_lines(&plan.changes[0]);
    assert!(
        fields.contains(&"scaling: min 1, max 4, desired 3 -> min 0, max 2, desired 2".to_string()),
        "{fields:?}"
    );
    apply_ok(&mut target, 3, parse(&autoscaled("{min: 0, max: 2}"))).await;
    assert_eq!(sizes().await, (0, 2, 2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_scaling_is_refused_before_any_aws_call() {
    let _moto = moto().lock().await;
    // Everything AWS would be asked goes to this listener: it must hear nothing.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let config = target_config(&format!("http://{}", listener.local_addr().unwrap()), false);
    let mut target = AwsTarget::new("platform", "acme/platform", config);
    let err = revise(
        &mut target,
        oid(1),
        parse(&eks_yaml("{min: 1, max: 3, desired: 5}", "")),
        &AtomicBool::new(false),
    )
    .await
    .unwrap_err();
    assert_eq!(err.reason, Reason::Invalid);
    assert_eq!(
        err.problems[0].to_string(),
        "platform.yaml:7: eks.nodegroups[0].scaling.desired: desired 5 is outside min 1 .. max 3 (leave it out to let an autoscaler size the group)"
    );
    assert!(listener.accept().is_err(), "an AWS call was made");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nodegroup_missing_in_aws_is_an_error_and_nothing_is_applied() {
    let _moto = moto().lock().await;
    terraform_cluster().await;
    let text = eks_yaml("{min: 1, max: 4, desired: 2}", "").replace(
        "  addons:",
        "    - name: gpu\n      scaling: {min: 0, max: 2, desired: 0}\n  addons:",
    );
    let mut target = platform_target(false);
    let err = revise(&mut target, oid(1), parse(&text), &AtomicBool::new(false))
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("eks/ml/nodegroup/gpu: not found in AWS") && text.contains("Terraform"),
        "{text}"
    );
    let live = live_nodegroup().await;
    assert_eq!(
        live.scaling_config().unwrap().desired_size(),
        Some(1),
        "nothing of the revision may apply"
    );
}

pub(crate) async fn serving(name: &str) -> (String, String) {
    let sm = sagemaker_client().await;
    let endpoint = sm
        .describe_endpoint()
        .endpoint_name(name)
        .send()
        .await
        .unwrap();
    let config = endpoint.endpoint_config_name().unwrap().to_string();
    let variants = sm
        .describe_endpoint_config()
        .endpoint_config_name(&config)
        .send()
        .await
        .unwrap();
    let model = variants.production_variants()[0]
        .model_name()
        .unwrap()
        .to_string();
    let image = sm
        .describe_model()
        .model_name(&model)
        .send()
        .await
        .unwrap()
        .primary_container()
        .unwrap()
        .image()
        .unwrap()
        .to_string();
    (config, image)
}

async fn endpoint_arn(name: &str) -> String {
    sagemaker_client()
        .await
        .describe_endpoint()
        .endpoint_name(name)
        .send()
        .await
        .unwrap()
        .endpoint_arn()
        .unwrap()
        .to_string()
}

async fn endpoint_tags(name: &str) -> std::collections::BTreeMap<String, String> {
    sagemaker_client()
        .await
        .list_tags()
        .resource_arn(endpoint_arn(name).await)
        .send()
        .await
        .unwrap()
        .tags()
        .iter()
        .map(|t| (t.key().unwrap().to_string(), t.value().unwrap().to_string()))
        .collect()
}

async fn names(kind: &str) -> Vec<String> {
    let sm = sagemaker_client().await;
    let mut out: Vec<String> = if kind == "model" {
        sm.list_models()
            .send()
            .await
            .unwrap()
            .models()
            .iter()
            .map(|m| m.model_name().unwrap().to_string())
            .collect()
    } else {
        sm.list_endpoint_configs()
            .send()
            .await
            .unwrap()
            .endpoint_configs()
            .iter()
            .map(|c| c.endpoint_config_name().unwrap().to_string())
            .collect()
    };
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sagemaker_endpoints_deploy_update_reweight_fail_safely_and_prune() {
    let _moto = moto().lock().await;
    let no = AtomicBool::new(false);
    let mut target = platform_target(false);

    // Create: hashed model and config, tagged with repo and commit.
    apply_ok(
        &mut target,
        1,
        parse(&sagemaker_yaml(&[("churn", "1", 1.0), ("fraud", "7", 1.0)])),
    )
    .await;
    let (config1, image) = serving("churn").await;
    assert!(
        image.ends_with("churn:1")
            && config1.starts_with("churn-")
            && config1.len() == "churn-".len() + 8,
        "{config1}"
    );
    let sm = sagemaker_client().await;
    let tags = endpoint_tags("churn").await;
    for (key, value) in [
        ("ferry.dev/managed", "true"),
        ("ferry.dev/repo", "acme/platform"),
        ("team", "ds"),
    ] {
        assert_eq!(tags.get(key).map(String::as_str), Some(value), "{tags:?}");
    }
    assert_eq!(tags.get("ferry.dev/commit"), Some(&oid(1).to_string()));

    // New image: new model and config, UpdateEndpoint, the old ones cleaned up.
    let outcome = apply_ok(
        &mut target,
        2,
        parse(&sagemaker_yaml(&[("churn", "2", 1.0), ("fraud", "7", 1.0)])),
    )
    .await;
    let (config2, image) = serving("churn").await;
    assert!(image.ends_with("churn:2") && config2 != config1);
    assert!(
        !names("config").await.contains(&config1),
        "old config cleaned: {:?}",
        outcome.cleaned
    );
    assert_eq!(outcome.cleaned.len(), 2, "{:?}", outcome.cleaned);

    // Weight only: same config, UpdateEndpointWeightsAndCapacities.
    let p = parse(&sagemaker_yaml(&[("churn", "2", 0.5), ("fraud", "7", 1.0)]))
        .unwrap()
        .unwrap();
    let clients = aws::clients(&p, &target.config).await;
    let plan = aws::plan(&clients, &p, &provenance(3), false)
        .await
        .unwrap();
    assert_eq!(plan.changes.len(), 1);
    assert_eq!(plan.changes[0].fields[0].field, "variants.primary.weight");
    let outcome = revise(&mut target, oid(3), Ok(Some(p)), &no).await.unwrap();
    assert!(outcome.succeeded(), "{:?}", outcome.results);
    let endpoint = sm
        .describe_endpoint()
        .endpoint_name("churn")
        .send()
        .await
        .unwrap();
    assert_eq!(endpoint.endpoint_config_name(), Some(config2.as_str()));
    assert_eq!(
        endpoint.production_variants()[0].current_weight(),
        Some(0.5)
    );

    // A broken image: the deployment fails with SageMaker's reason, the
    // previous config keeps serving, nothing of it is cleaned up.
    let models_before = names("model").await;
    let outcome = revise(
        &mut target,
        oid(4),
        parse(&sagemaker_yaml(&[
            ("churn", "broken", 0.5),
            ("fraud", "7", 1.0),
        ])),
        &no,
    )
    .await
    .unwrap();
    assert!(!outcome.succeeded());
    let failure = outcome.failures().join("\n");
    assert!(
        failure.contains("did not pass the ping health check")
            && failure.contains(&format!("{config2} keeps serving")),
        "{failure}"
    );
    assert_eq!(serving("churn").await, (config2.clone(), image.clone()));
    assert!(
        names("model").await.len() > models_before.len(),
        "the new model stays for inspection"
    );
    assert_ne!(
        target.applied(),
        Some(oid(4)),
        "a failed revision is not the last good one"
    );

    // Removed from git: drift with prune off, deleted with prune on.
    let only_churn = parse(&sagemaker_yaml(&[("churn", "2", 0.5)]))
        .unwrap()
        .unwrap();
    let plan = aws::plan(&clients, &only_churn, &provenance(5), false)
        .await
        .unwrap();
    assert!(
        plan.changes.is_empty()
            && plan
                .drift
                .iter()
                .any(|d| d.contains("sagemaker/endpoint/fraud") && d.contains("prune")),
        "{plan:?}"
    );
    let mut pruning = platform_target(true);
    let outcome = revise(&mut pruning, oid(5), Ok(Some(only_churn)), &no)
        .await
        .unwrap();
    assert!(outcome.succeeded(), "{:?}", outcome.results);
    assert_eq!(endpoint_names().await, ["churn"]);
    assert!(
        names("model")
            .await
            .iter()
            .all(|m| !m.starts_with("fraud-"))
    );
    // Endpoints ferry did not make for this source: see
    // prune_deletes_only_what_this_source_made.
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoint_tags_follow_git_and_the_serving_config_stays() {
    let _moto = moto().lock().await;
    let mut target = platform_target(false);
    let yaml = sagemaker_yaml(&[("churn", "1", 1.0)]);
    apply_ok(&mut target, 1, parse(&yaml)).await;
    let (config, image) = serving("churn").await;
    // Someone tags the endpoint by hand; git owns the tags of endpoints
    // ferry created, so the next change removes it.
    sagemaker_client()
        .await
        .add_tags()
        .resource_arn(endpoint_arn("churn").await)
        .tags(
            aws_sdk_sagemaker::types::Tag::builder()
                .key("owner")
                .value("someone")
                .build(),
        )
        .send()
        .await
        .unwrap();

    let retagged =
        parse(&yaml.replace("tags: {team: ds}", "tags: {team: ml, cost-center: \"42\"}"))
            .unwrap()
            .unwrap();
    let clients = aws::clients(&retagged, &target.config).await;
    let plan = aws::plan(&clients, &retagged, &provenance(2), false)
        .await
        .unwrap();
    assert_eq!(plan.changes.len(), 1, "{}", plan.render_text());
    let fields: Vec<(&str, &str, &str)> = plan.changes[0]
        .fields
        .iter()
        .map(|f| (f.field.as_str(), f.before.as_str(), f.after.as_str()))
        .collect();
    assert_eq!(
        fields,
        [
            ("tags.cost-center", "", "42"),
            ("tags.team", "ds", "ml"),
            ("tags.owner", "someone", ""),
        ]
    );
    apply_ok(&mut target, 2, Ok(Some(retagged.clone()))).await;

    let tags = endpoint_tags("churn").await;
    assert_eq!(tags.get("team").map(String::as_str), Some("ml"));
    assert_eq!(tags.get("cost-center").map(String::as_str), Some("42"));
    assert!(!tags.contains_key("owner"), "{tags:?}");
    assert_eq!(
        tags.get("ferry.dev/managed").map(String::as_str),
        Some("true")
    );
    assert_eq!(tags.get("ferry.dev/commit"), Some(&oid(1).to_string()));
    assert_eq!(
        serving("churn").await,
        (config, image),
        "no new config for tags"
    );
    let plan = aws::plan(&clients, &retagged, &provenance(3), false)
        .await
        .unwrap();
    assert!(
        plan.changes.is_empty() && plan.unchanged == 1,
        "{}",
        plan.render_text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttling_is_retried_with_backoff() {
    let moto = moto();
    let _guard = moto.lock().await;
    terraform_cluster().await;
    let (code, _) = moto.post("/ferry-test/throttle?count=3");
    assert_eq!(code, 200);
    let mut target = AwsTarget::new("platform", "acme/platform", target_config(&moto.url, false));
    apply_ok(
        &mut target,
        1,
        parse(&eks_yaml("{min: 1, max: 4, desired: 3}", "")),
    )
    .await;
    assert_eq!(
        moto.get("/ferry-test/throttle").1,
        "{\"left\": 0}",
        "all three throttles were met and retried"
    );
    let live = live_nodegroup().await;
    assert_eq!(live.scaling_config().unwrap().desired_size(), Some(3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ferry_run_applies_platform_yaml_and_reports_drift() {
    let moto = moto();
    let _guard = moto.lock().await;
    terraform_cluster().await;
    let tmp = tempfile::tempdir().unwrap();
    let repo = Repo::new(tmp.path(), "platform");
    let commit = repo.commit(
        &[(
            "platform.yaml",
            Some(&eks_yaml("{min: 1, max: 4, desired: 2}", "")),
        )],
        "platform",
    );
    let daemon = git_daemon(tmp.path(), free_port());
    let port = free_port();
    let targets = format!(
        "  aws:\n    source: platform\n    region: {REGION}\n    endpoint_url: {url}\n    drift_interval: 1s\n    poll_interval: 50ms\n",
        url = moto.url,
    );
    let config = daemon_config(tmp.path(), port, "platform", daemon.port, &targets);
    let ferry = spawn_ferry(&config, &tmp.path().join("ferry.log"), port, &aws_env());
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let status = || -> serde_json::Value {
        serde_json::from_str(&http_get(addr, "/api/v1/status/platform").1).unwrap_or_default()
    };
    eventually(Duration::from_secs(30), "platform.yaml applied", || {
        (status()["aws"]["applied_revision"] == commit.as_str()).then_some(())
    });
    // The version in git differs and allow_upgrades is off: drift from the start.
    let drift = status()["aws"]["drift"].clone();
    assert_eq!(drift.as_array().map(Vec::len), Some(1), "{drift}");
    assert!(
        drift[0].as_str().unwrap().contains("allow_upgrades"),
        "{drift}"
    );
    // Someone scales by hand: the next drift check reports it.
    let eks = eks_client().await;
    eks.update_nodegroup_config()
        .cluster_name("ml")
        .nodegroup_name("system")
        .scaling_config(
            aws_sdk_eks::types::NodegroupScalingConfig::builder()
                .desired_size(4)
                .build(),
        )
        .send()
        .await
        .unwrap();
    eventually(Duration::from_secs(20), "scaling drift reported", || {
        let d = status()["aws"]["drift"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        d.iter()
            .any(|x| {
                x.as_str()
                    .unwrap_or("")
                    .contains("scaling: min 1, max 4, desired 4 -> min 1, max 4, desired 2")
            })
            .then_some(())
    });
    let (_, metrics) = http_get(addr, "/metrics");
    assert_series(
        &metrics,
        "ferry_aws_drift_resources{source=\"platform\"}",
        2.0,
    );
    stop_ferry(ferry);
}

/// A model promotion PR: the preview comment shows the endpoint change
/// planned against AWS, and nothing in AWS changes until merge.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_promotion_pull_request_is_previewed_against_aws_without_changing_it() {
    let moto = moto();
    let _guard = moto.lock().await;
    let fake = support::github::FakeGithub::start(support::github::FakeState {
        token: Some("t0ken".into()),
        repos: ["acme/platform".to_string()].into(),
        ..Default::default()
    });
    let tmp = tempfile::tempdir().unwrap();
    let repo = Repo::new(tmp.path(), "platform");
    let main = repo.commit(
        &[(
            "platform.yaml",
            Some(&sagemaker_yaml(&[("churn", "1", 1.0)])),
        )],
        "main",
    );
    let daemon = git_daemon(tmp.path(), free_port());
    let port = free_port();
    let config = reporting_config(
        tmp.path(),
        port,
        daemon.port,
        &fake.url(),
        "acme/platform",
        "t0ken",
    );
    let ferry = spawn_ferry(&config, &tmp.path().join("ferry.log"), port, &aws_env());
    eventually(Duration::from_secs(30), "main applied and reported", || {
        (fake.states(&main, "ferry/platform") == ["pending", "success"]).then_some(())
    });
    let before = serving("churn").await;

    // The PR, found by polling (no webhook configured).
    let work = &repo.work;
    run(git(work).args(["checkout", "-q", "-b", "promote"]));
    std::fs::write(
        work.join("platform.yaml"),
        sagemaker_yaml(&[("churn", "2", 1.0)]),
    )
    .unwrap();
    run(git(work).args(["commit", "-qam", "promote churn 2"]));
    run(git(work).args(["push", "-q", "origin", "HEAD:refs/pull/3/head"]));
    let head = repo.head();
    fake.with(|f| {
        f.pulls
            .push(("acme/platform".into(), 3, head.clone(), "main".into()))
    });
    eventually(
        Duration::from_secs(30),
        "plan status on the PR head",
        || (fake.states(&head, "ferry/plan") == ["success"]).then_some(()),
    );
    // The status goes out before the comment; wait for both.
    let body = eventually(Duration::from_secs(10), "preview comment", || {
        fake.with(|f| f.comments.first().map(|c| c.body.clone()))
    });
    assert!(body.contains("| aws | 0 | 1 | 0 | 0 | 0 |"), "{body}");
    assert!(body.contains("~ sagemaker/endpoint/churn"), "{body}");
    assert!(
        body.contains(&format!(
            "+ variants.primary.image: 123456789012.dkr.ecr.{REGION}.amazonaws.com/churn:2"
        )),
        "{body}"
    );
    assert_eq!(serving("churn").await, before, "a preview changed AWS");
    stop_ferry(ferry);
    fake.assert_nothing_rejected();
}

/// `ferry plan --target aws`: what a revision's platform.yaml would change,
/// read from AWS, text and JSON, nothing applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ferry_plan_shows_the_aws_plan_without_applying_it() {
    let moto = moto();
    let _guard = moto.lock().await;
    terraform_cluster().await;
    let tmp = tempfile::tempdir().unwrap();
    let repo = Repo::new(tmp.path(), "platform");
    repo.commit(
        &[(
            "platform.yaml",
            Some(&eks_yaml("{min: 1, max: 4, desired: 2}", "")),
        )],
        "platform",
    );
    let config = tmp.path().join("ferry.yaml");
    std::fs::write(
        &config,
        format!(
            "cache_dir: {cache}\nsources:\n  - name: platform\n    url: {url}\n\
             targets:\n  aws:\n    source: platform\n    region: {REGION}\n    endpoint_url: {endpoint}\n",
            cache = tmp.path().join("cache").display(),
            url = repo.bare.display(),
            endpoint = moto.url,
        ),
    )
    .unwrap();
    let plan = |format: &str| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_ferry"))
            .args(["plan", "--target", "aws", "--output", format, "--config"])
            .arg(&config)
            .envs(aws_env())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let text = plan("text");
    assert!(
        text.contains("1 to create, 1 to update, 0 to delete"),
        "{text}"
    );
    assert!(text.contains("~ eks/ml/nodegroup/system\n    scaling: min 1, max 3, desired 1 -> min 1, max 4, desired 2"), "{text}");
    assert!(text.contains("+ eks/ml/addon/vpc-cni"), "{text}");
    assert!(
        text.contains("# not applied: eks/ml/nodegroup/system: version differs"),
        "{text}"
    );
    let json: serde_json::Value = serde_json::from_str(&plan("json")).unwrap();
    assert_eq!(json["changes"][0]["resource"], "eks/ml/nodegroup/system");
    assert_eq!(
        live_nodegroup()
            .await
            .scaling_config()
            .unwrap()
            .desired_size(),
        Some(1),
        "a plan applies nothing"
    );
}

fn calls(moto: &support::moto::Moto, target: &str) -> u64 {
    let (_, body) = moto.get("/ferry-test/calls");
    let counts: serde_json::Value = serde_json::from_str(&body).unwrap();
    counts[target].as_u64().unwrap_or(0)
}

/// An endpoint update interrupted twice while SageMaker deploys it (held
/// in `Updating` by the test): ferry is killed (-9) and restarted, and AWS
/// is unreachable for a while. The restarted ferry follows the deployment
/// already under way instead of starting another (UpdateEndpoint is called
/// exactly once), the old config serves throughout, and once the deployment
/// settles the commit is applied and the old model and config are cleaned.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_update_cut_by_a_restart_and_an_outage_is_followed_not_redone() {
    let moto = moto();
    let _guard = moto.lock().await;
    let tmp = tempfile::tempdir().unwrap();
    let repo = Repo::new(tmp.path(), "platform");
    let first = repo.commit(
        &[(
            "platform.yaml",
            Some(&sagemaker_yaml(&[("diagnosis", "v1", 1.0)])),
        )],
        "v1",
    );
    let daemon = git_daemon(tmp.path(), free_port());
    let aws_link = Link::start(format!("127.0.0.1:{}", moto.port).parse().unwrap());
    let port = free_port();
    let config = tmp.path().join("ferry.yaml");
    std::fs::write(
        &config,
        format!(
            "cache_dir: {cache}\nserver:\n  listen: 127.0.0.1:{port}\n\
             sources:\n  - name: platform\n    url: git://127.0.0.1:{dp}/platform.git\n    interval: 1s\n    max_backoff: 1s\n\
             targets:\n  aws:\n    source: platform\n    region: {REGION}\n    endpoint_url: http://127.0.0.1:{link}\n    drift_interval: 1s\n    poll_interval: 50ms\n",
            cache = tmp.path().join("cache").display(),
            dp = daemon.port,
            link = aws_link.port,
        ),
    )
    .unwrap();
    let log = tmp.path().join("ferry.log");
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let status = || -> serde_json::Value {
        serde_json::from_str(&http_get(addr, "/api/v1/status/platform").1).unwrap_or_default()
    };
    let mut ferry = spawn_ferry(&config, &log, port, &aws_env());
    tokio::task::block_in_place(|| {
        eventually(Duration::from_secs(30), "v1 applied", || {
            (status()["aws"]["applied_revision"] == first.as_str()).then_some(())
        })
    });
    let (v1_config, _) = serving("diagnosis").await;

    // SageMaker takes its time with the next deployment.
    assert_eq!(moto.post("/ferry-test/hold?on=1").0, 200);
    let second = repo.commit(
        &[(
            "platform.yaml",
            Some(&sagemaker_yaml(&[("diagnosis", "v2", 1.0)])),
        )],
        "v2",
    );
    tokio::task::block_in_place(|| {
        eventually(Duration::from_secs(30), "UpdateEndpoint", || {
            (calls(moto, "SageMaker.UpdateEndpoint") == 1).then_some(())
        })
    });
    // Killed mid-follow, started again.
    ferry.kill_group();
    drop(ferry);
    let ferry = spawn_ferry(&config, &log, port, &aws_env());
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // AWS out of reach for a while.
    aws_link.set_up(false);
    tokio::time::sleep(Duration::from_secs(3)).await;
    aws_link.set_up(true);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // All along: still deploying, the old config serving, never applied early.
    let sm = sagemaker_client().await;
    let live = sm
        .describe_endpoint()
        .endpoint_name("diagnosis")
        .send()
        .await
        .unwrap();
    assert_eq!(
        live.endpoint_status(),
        Some(&aws_sdk_sagemaker::types::EndpointStatus::Updating)
    );
    assert_eq!(live.endpoint_config_name(), Some(v1_config.as_str()));
    // (A restarted ferry does not know what it applied before; it must
    // not claim the new revision.)
    assert_ne!(status()["aws"]["applied_revision"], second.as_str());

    // The deployment settles: applied, cleaned, and started only once.
    assert_eq!(moto.post("/ferry-test/hold?on=0").0, 200);
    tokio::task::block_in_place(|| {
        eventually(Duration::from_secs(30), "v2 applied", || {
            (status()["aws"]["applied_revision"] == second.as_str()).then_some(())
        })
    });
    let (v2_config, image) = serving("diagnosis").await;
    assert!(image.ends_with(":v2"), "{image}");
    assert_eq!(
        calls(moto, "SageMaker.UpdateEndpoint"),
        1,
        "the deployment must not be started again"
    );
    assert_eq!(calls(moto, "SageMaker.CreateEndpoint"), 1);
    assert_eq!(names("config").await, [v2_config]);
    assert_eq!(names("model").await.len(), 1);
    stop_ferry(ferry);
}

async fn endpoint_names() -> Vec<String> {
    let mut names: Vec<String> = sagemaker_client()
        .await
        .list_endpoints()
        .send()
        .await
        .unwrap()
        .endpoints()
        .iter()
        .map(|e| e.endpoint_name().unwrap().to_string())
        .collect();
    names.sort();
    names
}

/// With `prune: true`, ferry deletes only endpoints it made for this very
/// source: one made by hand (no tags), one ferry made for another source,
/// and one carrying `ferry.dev/managed=true` but no source all survive the
/// revision that drops every endpoint of this source, models and configs
/// included; the one this source made and git dropped is deleted.
/// An endpoint someone made without ferry: model, config and endpoint all
/// named `name`, serving `image`.
async fn endpoint_by_hand(name: &str, image: &str, tags: Vec<aws_sdk_sagemaker::types::Tag>) {
    use aws_sdk_sagemaker::types::{
        ContainerDefinition, ProductionVariant, ProductionVariantInstanceType,
    };
    let sm = sagemaker_client().await;
    sm.create_model()
        .model_name(name)
        .execution_role_arn(ROLE)
        .primary_container(ContainerDefinition::builder().image(image).build())
        .send()
        .await
        .unwrap();
    sm.create_endpoint_config()
        .endpoint_config_name(name)
        .production_variants(
            ProductionVariant::builder()
                .variant_name("primary")
                .model_name(name)
                .instance_type(ProductionVariantInstanceType::MlM5Large)
                .initial_instance_count(1)
                .build(),
        )
        .send()
        .await
        .unwrap();
    sm.create_endpoint()
        .endpoint_name(name)
        .endpoint_config_name(name)
        .set_tags(Some(tags))
        .send()
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prune_deletes_only_what_this_source_made() {
    use aws_sdk_sagemaker::types::Tag;
    let _moto = moto().lock().await;
    // Made by hand, and one half-tagged (managed, but no source).
    for (name, tags) in [
        ("hand-made", vec![]),
        (
            "half-tagged",
            vec![
                Tag::builder()
                    .key("ferry.dev/managed")
                    .value("true")
                    .build(),
            ],
        ),
    ] {
        endpoint_by_hand(
            name,
            &format!("123456789012.dkr.ecr.{REGION}.amazonaws.com/{name}:1"),
            tags,
        )
        .await;
    }
    // Made by ferry for another source.
    let mut other = AwsTarget::new("other", "acme/other", target_config(&moto().url, true));
    apply_ok(
        &mut other,
        1,
        parse(&sagemaker_yaml(&[("theirs", "1", 1.0)])),
    )
    .await;
    // Made by this source.
    let mut ours = platform_target(true);
    apply_ok(
        &mut ours,
        1,
        parse(&sagemaker_yaml(&[
            ("kept", "1", 1.0),
            ("dropped", "1", 1.0),
        ])),
    )
    .await;
    assert_eq!(
        endpoint_names().await,
        ["dropped", "half-tagged", "hand-made", "kept", "theirs"]
    );
    let models_before = names("model").await;

    // The revision drops `dropped`: the plan deletes it and nothing else.
    let revision = parse(&sagemaker_yaml(&[("kept", "1", 1.0)]))
        .unwrap()
        .unwrap();
    let clients = aws::clients(&revision, &ours.config).await;
    let plan = aws::plan(&clients, &revision, &provenance(2), true)
        .await
        .unwrap();
    let deletes: Vec<&str> = plan
        .changes
        .iter()
        .filter(|c| c.action == Action::Delete)
        .map(|c| c.resource.as_str())
        .collect();
    assert_eq!(deletes, ["sagemaker/endpoint/dropped"], "{plan:?}");
    apply_ok(&mut ours, 2, Ok(Some(revision))).await;
    assert_eq!(
        endpoint_names().await,
        ["half-tagged", "hand-made", "kept", "theirs"]
    );
    let models_after = names("model").await;
    let gone: Vec<&String> = models_before
        .iter()
        .filter(|m| !models_after.contains(m))
        .collect();
    assert!(
        gone.iter().all(|m| m.starts_with("dropped-")) && !gone.is_empty(),
        "only the dropped endpoint's models go: {gone:?}"
    );
    for name in ["hand-made", "half-tagged"] {
        assert!(
            models_after.contains(&name.to_string()),
            "{name} model deleted"
        );
        assert!(
            names("config").await.contains(&name.to_string()),
            "{name} config deleted"
        );
    }
}

/// A platform repo whose head holds a Namespace, a ConfigMap and
/// `platform.yaml`, served by a git daemon, and a ferry.yaml whose one
/// source feeds both the Kubernetes and the AWS target (as deploy/ does).
struct BothTargets {
    ns: String,
    head: String,
    port: u16,
    config: std::path::PathBuf,
    _daemon: Server,
}

impl BothTargets {
    /// `source_extra`: more keys of the source (e.g. `verify`).
    fn new(dir: &std::path::Path, name: &str, platform: &str, source_extra: &str) -> BothTargets {
        let repo = Repo::new(dir, "platform");
        let ns = unique_namespace(name);
        let head = repo.commit(
            &[
                (
                    "manifests/ns.yaml",
                    Some(&format!(
                        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {ns}\n"
                    )),
                ),
                (
                    "manifests/cm.yaml",
                    Some("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: settings\ndata:\n  k: v\n"),
                ),
                ("platform.yaml", Some(platform)),
            ],
            name,
        );
        let daemon = git_daemon(dir, free_port());
        let port = free_port();
        let config = dir.join("ferry.yaml");
        std::fs::write(
            &config,
            format!(
                "cache_dir: {cache}\nserver:\n  listen: 127.0.0.1:{port}\n\
                 sources:\n  - name: platform\n    url: git://127.0.0.1:{dp}/platform.git\n    interval: 1s\n    max_backoff: 1s\n{source_extra}\
                 targets:\n  kubernetes:\n    source: platform\n    default_namespace: {ns}\n    allowed_namespaces: [{ns}]\n    health_timeout: 0s\n    kubeconfig: {kc}\n\
                 \x20 aws:\n    source: platform\n    region: {REGION}\n    endpoint_url: {url}\n    poll_interval: 50ms\n",
                cache = dir.join("cache").display(),
                dp = daemon.port,
                kc = control_plane().admin.display(),
                url = moto().url,
            ),
        )
        .unwrap();
        BothTargets {
            ns,
            head,
            port,
            config,
            _daemon: daemon,
        }
    }

    /// Neither the apiserver (audit log) nor AWS (moto's call counts)
    /// received a request for the commit.
    fn assert_nothing_reached(&self, what: &str) {
        let writes = audited_writes(&control_plane().audit_log, &self.ns);
        assert!(writes.is_empty(), "{what} reached the cluster: {writes:?}");
        let (_, calls) = moto().get("/ferry-test/calls");
        assert_eq!(calls.trim(), "{}", "{what} reached AWS");
    }
}

/// A platform head that is not signed by a listed key, on a source feeding
/// both the Kubernetes and the AWS target: refused at every poll, and
/// neither the apiserver (audit log) nor AWS (moto's call counts) receives
/// a single request for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_head_reaches_neither_the_cluster_nor_aws() {
    let moto = moto();
    let _guard = moto.lock().await;
    let tmp = tempfile::tempdir().unwrap();
    let allowed = allowed_signers_of_a_stranger(tmp.path());
    let verify = format!(
        "    verify:\n      allowed_signers: {}\n",
        allowed.display()
    );
    let both = BothTargets::new(
        tmp.path(),
        "refused",
        &sagemaker_yaml(&[("diagnosis", "v1", 1.0)]),
        &verify,
    );
    let (head, port, config) = (&both.head, both.port, &both.config);
    let ferry = spawn_ferry(config, &tmp.path().join("ferry.log"), port, &aws_env());
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let refusals = || -> u64 {
        let (_, metrics) = http_get(addr, "/metrics");
        metrics
            .lines()
            .find_map(|l| {
                l.strip_prefix(
                    "ferry_syncs_total{source=\"platform\",result=\"untrusted_commit\"} ",
                )
            })
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    // Several polls, each refusing the same head: the window below is not empty.
    tokio::task::block_in_place(|| {
        eventually(Duration::from_secs(30), "three refusals", || {
            (refusals() >= 3).then_some(())
        })
    });
    let (_, body) = http_get(addr, "/api/v1/status/platform");
    let status: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(status["last_error"]["kind"], "untrusted_commit", "{status}");
    assert_eq!(status["last_error"]["commit"], head.as_str(), "{status}");
    both.assert_nothing_reached("a refused head");
    stop_ferry(ferry);
}

/// One source feeding both targets, its head with valid manifests and an
/// invalid platform.yaml: the commit is rejected whole at the gate. Neither
/// the apiserver (audit log) nor AWS (moto's call counts) hears of it, and
/// the status names the file and line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_platform_yaml_applies_nothing_of_the_same_commit() {
    let moto = moto();
    let _guard = moto.lock().await;
    let tmp = tempfile::tempdir().unwrap();
    let both = BothTargets::new(
        tmp.path(),
        "gate",
        &eks_yaml("{min: 1, max: 3, desired: 5}", ""),
        "",
    );
    let (head, port, config) = (&both.head, both.port, &both.config);
    let ferry = spawn_ferry(config, &tmp.path().join("ferry.log"), port, &aws_env());
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let status = tokio::task::block_in_place(|| {
        eventually(Duration::from_secs(30), "the head's verdict", || {
            let (_, body) = http_get(addr, "/api/v1/status/platform");
            let v: serde_json::Value = serde_json::from_str(&body).ok()?;
            (v["last_error"]["commit"] == head.as_str()).then_some(v)
        })
    });
    // A few more polls: a rejected commit must not be retried into a write.
    tokio::time::sleep(Duration::from_secs(3)).await;
    both.assert_nothing_reached("a rejected commit");
    assert_eq!(
        status["last_error"]["kind"], "validation_failed",
        "{status}"
    );
    let problem = &status["last_error"]["problems"][0];
    assert_eq!(problem["file"], "platform.yaml", "{status}");
    assert_eq!(problem["line"], 7, "{status}");
    stop_ferry(ferry);
}

async fn scaling_client() -> aws_sdk_applicationautoscaling::Client {
    aws_sdk_applicationautoscaling::Client::new(
        &aws::sdk_config(Some(REGION), Some(&moto().url), Some(&test_credentials())).await,
    )
}

/// The live scalable target of `endpoint`'s `primary` variant: (min, max)
/// and ferry's policy (target, scale-in, scale-out), if registered.
async fn live_scaling(endpoint: &str) -> Option<((i32, i32), Option<(f64, i32, i32)>)> {
    use aws_sdk_applicationautoscaling::types::{ScalableDimension, ServiceNamespace};
    let client = scaling_client().await;
    let id = format!("endpoint/{endpoint}/variant/primary");
    let targets = client
        .describe_scalable_targets()
        .service_namespace(ServiceNamespace::Sagemaker)
        .resource_ids(&id)
        .send()
        .await
        .unwrap();
    let target = targets.scalable_targets().first()?;
    let policies = client
        .describe_scaling_policies()
        .service_namespace(ServiceNamespace::Sagemaker)
        .resource_id(&id)
        .scalable_dimension(ScalableDimension::SageMakerVariantDesiredInstanceCount)
        .send()
        .await
        .unwrap();
    let policy = policies.scaling_policies().first().map(|p| {
        assert_eq!(p.policy_name(), aws::scaling::POLICY);
        let c = p.target_tracking_scaling_policy_configuration().unwrap();
        assert_eq!(
            c.predefined_metric_specification()
                .unwrap()
                .predefined_metric_type()
                .as_str(),
            "SageMakerVariantInvocationsPerInstance"
        );
        (
            c.target_value(),
            c.scale_in_cooldown().unwrap(),
            c.scale_out_cooldown().unwrap(),
        )
    });
    Some(((target.min_capacity(), target.max_capacity()), policy))
}

/// What an autoscaler does: sets the variant's instance count.
async fn autoscaler_sets_count(endpoint: &str, count: i32) {
    sagemaker_client()
        .await
        .update_endpoint_weights_and_capacities()
        .endpoint_name(endpoint)
        .desired_weights_and_capacities(
            aws_sdk_sagemaker::types::DesiredWeightAndCapacity::builder()
                .variant_name("primary")
                .desired_instance_count(count)
                .build(),
        )
        .send()
        .await
        .unwrap();
}

async fn live_count(endpoint: &str) -> Option<i32> {
    sagemaker_client()
        .await
        .describe_endpoint()
        .endpoint_name(endpoint)
        .send()
        .await
        .unwrap()
        .production_variants()[0]
        .desired_instance_count()
}

/// One endpoint `churn`, variant `primary` with `image`, `instance_type`
/// and `extra` lines under the variant (e.g. its autoscaling block).
fn scaled_yaml(image: &str, instance_type: &str, extra: &str) -> String {
    format!(
        "apiVersion: ferry.dev/v1alpha1\nkind: Platform\nsagemaker:\n  endpoints:\n    - name: churn\n      execution_role_arn: {ROLE}\n      variants:\n        - name: primary\n          model_name: churn\n          image: 123456789012.dkr.ecr.{REGION}.amazonaws.com/churn:{image}\n          model_data: s3://ml-models/churn/{image}/model.tar.gz\n          instance_type: {instance_type}\n{extra}"
    )
}

const SCALING: &str = "          autoscaling: {min: 1, max: 4, target_invocations_per_instance: 70, scale_out_cooldown: 60}\n";

/// Issue 17, autoscaling: the target and ferry's policy are created with the
/// endpoint, changed in place, re-registered around an instance type change
/// (which SageMaker refuses while the variant is registered) and removed with
/// the block; the count the autoscaler chose is never drift and survives a
/// new model; a target someone else made is reported and left alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_autoscaled_variant_keeps_the_autoscalers_count_and_follows_git() {
    let _moto = moto().lock().await;
    let no = AtomicBool::new(false);
    let mut target = platform_target(false);
    let plan_of = |text: &str, n: u8| {
        let p = parse(text).unwrap().unwrap();
        let config = target_config(&moto().url, false);
        async move {
            let clients = aws::clients(&p, &config).await;
            aws::plan(&clients, &p, &provenance(n), false)
                .await
                .unwrap()
        }
    };

    // Created after the endpoint, in the same revision.
    let v1 = scaled_yaml("1", "ml.m5.large", SCALING);
    let plan = plan_of(&v1, 1).await;
    assert_eq!(
        resources(&plan),
        [
            ("sagemaker/endpoint/churn", Action::Create),
            (
                "sagemaker/endpoint/churn/variant/primary/autoscaling",
                Action::Create
            ),
        ]
    );
    apply_ok(&mut target, 1, parse(&v1)).await;
    assert_eq!(
        live_scaling("churn").await,
        Some(((1, 4), Some((70.0, 300, 60))))
    );

    // The autoscaler scales out: not drift, nothing to apply.
    autoscaler_sets_count("churn", 3).await;
    let plan = plan_of(&v1, 2).await;
    assert!(
        plan.changes.is_empty() && plan.drift.is_empty(),
        "{}",
        plan.render_text()
    );

    // New bounds and target: one in-place change of the policy and target.
    let v3 = scaled_yaml(
        "1",
        "ml.m5.large",
        "          autoscaling: {min: 1, max: 6, target_invocations_per_instance: 50, scale_out_cooldown: 60}\n",
    );
    let plan = plan_of(&v3, 3).await;
    assert_eq!(plan.changes.len(), 1, "{}", plan.render_text());
    assert_eq!(plan.changes[0].action, Action::Update);
    assert_eq!(
        field_lines(&plan.changes[0]),
        [
            "autoscaling.max: 4 -> 6",
            "autoscaling.target_invocations_per_instance: 70 -> 50"
        ]
    );
    apply_ok(&mut target, 3, parse(&v3)).await;
    assert_eq!(
        live_scaling("churn").await,
        Some(((1, 6), Some((50.0, 300, 60))))
    );

    // A new model: deployed under autoscaling, keeping the count it chose.
    let v4 = scaled_yaml("2", "ml.m5.large", &SCALING.replace("max: 4", "max: 6"));
    apply_ok(&mut target, 4, parse(&v4)).await;
    assert!(serving("churn").await.1.ends_with("churn:2"));
    assert_eq!(live_count("churn").await, Some(3), "the autoscaler's count");
    assert_eq!(live_scaling("churn").await.unwrap().0, (1, 6));

    // A new instance type: deregistered first (or UpdateEndpoint is
    // refused), registered again once the endpoint serves.
    let v5 = scaled_yaml("2", "ml.m5.xlarge", &SCALING.replace("max: 4", "max: 6"));
    let plan = plan_of(&v5, 5).await;
    assert_eq!(
        resources(&plan),
        [
            ("sagemaker/endpoint/churn", Action::Update),
            (
                "sagemaker/endpoint/churn/variant/primary/autoscaling",
                Action::Create
            ),
        ],
        "{}",
        plan.render_text()
    );
    apply_ok(&mut target, 5, parse(&v5)).await;
    assert_eq!(
        live_scaling("churn").await,
        Some(((1, 6), Some((70.0, 300, 60))))
    );

    // The block removed: ferry's target goes and the count is git's again,
    // in the same plan.
    autoscaler_sets_count("churn", 3).await;
    let v6 = scaled_yaml("2", "ml.m5.xlarge", "");
    let plan = plan_of(&v6, 6).await;
    let lines: Vec<(String, Vec<String>)> = plan
        .changes
        .iter()
        .map(|c| (c.resource.clone(), field_lines(c)))
        .collect();
    assert_eq!(
        lines,
        [
            (
                "sagemaker/endpoint/churn".to_string(),
                vec!["variants.primary.instance_count: 3 -> 1".to_string()]
            ),
            (
                "sagemaker/endpoint/churn/variant/primary/autoscaling".to_string(),
                vec![
                    "autoscaling.min: 1 -> ".to_string(),
                    "autoscaling.max: 6 -> ".to_string()
                ]
            ),
        ]
    );
    apply_ok(&mut target, 6, parse(&v6)).await;
    assert_eq!(live_scaling("churn").await, None);
    assert_eq!(live_count("churn").await, Some(1));

    // Someone registers the variant by hand: reported, and its count is
    // left to that autoscaler.
    use aws_sdk_applicationautoscaling::types::{ScalableDimension, ServiceNamespace};
    scaling_client()
        .await
        .register_scalable_target()
        .service_namespace(ServiceNamespace::Sagemaker)
        .scalable_dimension(ScalableDimension::SageMakerVariantDesiredInstanceCount)
        .resource_id("endpoint/churn/variant/primary")
        .min_capacity(2)
        .max_capacity(5)
        .send()
        .await
        .unwrap();
    autoscaler_sets_count("churn", 2).await;
    let plan = plan_of(&v6, 7).await;
    assert!(plan.changes.is_empty(), "{}", plan.render_text());
    assert!(
        plan.drift.len() == 1
            && plan.drift[0].contains("by something other than ferry")
            && plan.drift[0].contains("2..5"),
        "{:?}",
        plan.drift
    );
    let outcome = revise(&mut target, oid(7), parse(&v6), &no).await.unwrap();
    assert!(outcome.succeeded(), "{:?}", outcome.results);
    assert_eq!(live_scaling("churn").await, Some(((2, 5), None)));
    assert_eq!(live_count("churn").await, Some(2));

    // A new instance type under that autoscaler: ferry does not take the
    // target off (it is not ferry's); SageMaker refuses, and says why.
    let xl2 = scaled_yaml("2", "ml.m5.2xlarge", "");
    let outcome = revise(&mut target, oid(10), parse(&xl2), &no)
        .await
        .unwrap();
    let failure = outcome.failures().join("\n");
    assert!(
        failure.contains("registered with Application Auto Scaling"),
        "{failure}"
    );
    assert_eq!(live_scaling("churn").await, Some(((2, 5), None)));

    // Declared again (ferry's from then on), then pruned: Application Auto
    // Scaling would keep the target of a deleted endpoint, so ferry's goes
    // first.
    let v8 = scaled_yaml("2", "ml.m5.xlarge", SCALING);
    apply_ok(&mut target, 8, parse(&v8)).await;
    assert_eq!(
        live_scaling("churn").await,
        Some(((1, 4), Some((70.0, 300, 60))))
    );
    let gone =
        parse("apiVersion: ferry.dev/v1alpha1\nkind: Platform\nsagemaker:\n  endpoints: []\n")
            .unwrap()
            .unwrap();
    let clients = aws::clients(&gone, &target_config(&moto().url, true)).await;
    let plan = aws::plan(&clients, &gone, &provenance(9), true)
        .await
        .unwrap();
    assert_eq!(
        resources(&plan),
        [
            (
                "sagemaker/endpoint/churn/variant/primary/autoscaling",
                Action::Delete
            ),
            ("sagemaker/endpoint/churn", Action::Delete),
        ]
    );
    let mut pruning = platform_target(true);
    apply_ok(&mut pruning, 9, Ok(Some(gone))).await;
    assert_eq!(live_scaling("churn").await, None);
    assert!(endpoint_names().await.is_empty());
}

/// Queues answers for moto's sagemaker-runtime: each new (endpoint,
/// request) takes the next one.
fn queue_answers(bodies: &[&str]) {
    let results: Vec<serde_json::Value> = bodies
        .iter()
        .map(|b| serde_json::json!({"Body": b, "ContentType": "application/json"}))
        .collect();
    let body = serde_json::json!({"region": REGION, "results": results}).to_string();
    let (code, text) = http_post(
        format!("127.0.0.1:{}", moto().port).parse().unwrap(),
        "/moto-api/static/sagemaker/endpoint-results",
        &[("Content-Type", "application/json")],
        body.as_bytes(),
    );
    assert_eq!(code, 201, "{text}");
}

/// platform.yaml declaring `endpoint` with a smoke test, and the payload
/// the gate reads from the same commit (`n` makes it a request moto has not
/// answered yet).
fn smoked(endpoint: &str, image: &str, n: u8) -> Option<platform::Platform> {
    let text = format!(
        "{}      smoke_test:\n        payload: smoke/{endpoint}.json\n        expect_contains: '\"predictions\"'\n",
        sagemaker_yaml(&[(endpoint, image, 1.0)])
    );
    let mut p = platform::parse("platform.yaml", &text).unwrap();
    let path = format!("smoke/{endpoint}.json");
    let read = |asked: &str| -> Result<Option<Vec<u8>>, String> {
        Ok((asked == path).then(|| format!("{{\"instances\": [[{n}]]}}").into_bytes()))
    };
    platform::load_smoke_payloads(&mut p, "platform.yaml", &text, &read).unwrap();
    Some(p)
}

/// Issue 17, smoke check: after InService ferry invokes the endpoint; an
/// answer without the expected text rolls an update back to the config
/// that served before (reported with the answer) and deletes an endpoint
/// it had just created, so nothing that does not answer is left serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deployed_model_that_does_not_answer_is_rolled_back() {
    let _moto = moto().lock().await;
    let no = AtomicBool::new(false);
    let mut target = platform_target(false);
    queue_answers(&[
        r#"{"predictions": [0.12]}"#,
        r#"{"error": "model not loaded: MLmodel missing"}"#,
        r#"{"error": "no model here either"}"#,
    ]);

    // Answers: deployed.
    apply_ok(&mut target, 1, Ok(smoked("scoring", "1", 1))).await;
    let (config1, image1) = serving("scoring").await;

    // A new model whose answer lacks the text: back to the first config.
    let outcome = revise(&mut target, oid(2), Ok(smoked("scoring", "2", 2)), &no)
        .await
        .unwrap();
    let failure = outcome.failures().join("\n");
    assert!(!outcome.succeeded());
    assert!(
        failure.contains("smoke test of scoring-")
            && failure.contains("answered without `\"predictions\"`")
            && failure.contains("model not loaded: MLmodel missing")
            && failure.contains(&format!("rolled back: {config1} serves again")),
        "{failure}"
    );
    assert_eq!(serving("scoring").await, (config1.clone(), image1));
    assert_ne!(target.applied(), Some(oid(2)));
    assert!(
        names("config").await.contains(&config1),
        "the serving config is not cleaned up"
    );

    // A new endpoint that does not answer is deleted again.
    let outcome = revise(&mut target, oid(3), Ok(smoked("fresh", "1", 3)), &no)
        .await
        .unwrap();
    let failure = outcome.failures().join("\n");
    assert!(
        failure.contains("no model here either") && failure.contains("the new endpoint is deleted"),
        "{failure}"
    );
    let endpoints = endpoint_names().await;
    assert!(!endpoints.contains(&"fresh".to_string()), "{endpoints:?}");
}

/// A creation that fails leaves an endpoint serving nothing, and SageMaker
/// updates no `Failed` endpoint: ferry deletes the one it just created (so
/// the next attempt creates it again), and a `Failed` one it finds is
/// planned as a new endpoint, deleted and created.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_new_endpoint_is_deleted_and_a_failed_one_is_created_again() {
    let _moto = moto().lock().await;
    let no = AtomicBool::new(false);
    let mut target = platform_target(false);
    let scaled = format!("{}{SCALING}", sagemaker_yaml(&[("fresh", "broken", 1.0)]));
    let outcome = revise(&mut target, oid(1), parse(&scaled), &no)
        .await
        .unwrap();
    let failure = outcome.failures().join("\n");
    assert!(
        failure.contains("did not pass the ping health check")
            && failure.contains("the new endpoint is deleted"),
        "{failure}"
    );
    assert!(endpoint_names().await.is_empty());
    // Nothing autoscales an endpoint that is not there.
    let scaling = outcome
        .results
        .iter()
        .find(|r| r.resource == "sagemaker/endpoint/fresh/variant/primary/autoscaling")
        .unwrap();
    assert_eq!(
        scaling.error.as_deref(),
        Some("not applied: sagemaker/endpoint/fresh failed")
    );
    assert_eq!(live_scaling("fresh").await, None);

    // Someone's failed creation (or a ferry stopped before it cleaned up).
    endpoint_by_hand(
        "fresh",
        &format!("123456789012.dkr.ecr.{REGION}.amazonaws.com/fresh:broken"),
        vec![],
    )
    .await;
    let sm = sagemaker_client().await;
    let status = |out: &aws_sdk_sagemaker::operation::describe_endpoint::DescribeEndpointOutput| {
        out.endpoint_status().map(|s| s.as_str().to_string())
    };
    for _ in 0..2 {
        sm.describe_endpoint()
            .endpoint_name("fresh")
            .send()
            .await
            .unwrap();
    }
    let live = sm
        .describe_endpoint()
        .endpoint_name("fresh")
        .send()
        .await
        .unwrap();
    assert_eq!(status(&live).as_deref(), Some("Failed"));

    let good = parse(&sagemaker_yaml(&[("fresh", "1", 1.0)]))
        .unwrap()
        .unwrap();
    let clients = aws::clients(&good, &target_config(&moto().url, false)).await;
    let plan = aws::plan(&clients, &good, &provenance(2), false)
        .await
        .unwrap();
    assert_eq!(
        resources(&plan),
        [("sagemaker/endpoint/fresh", Action::Create)]
    );
    let lines = field_lines(&plan.changes[0]);
    assert!(
        lines[0].starts_with("status: Failed (") && lines[0].ends_with("-> InService"),
        "{lines:?}"
    );
    apply_ok(&mut target, 2, Ok(Some(good))).await;
    let (config, image) = serving("fresh").await;
    assert!(
        config.starts_with("fresh-") && image.ends_with("fresh:1"),
        "{config} {image}"
    );
}
