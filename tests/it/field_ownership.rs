//! Fields another controller owns, with the test cluster's real
//! kube-controller-manager: HorizontalPodAutoscalers scale Deployments
//! ferry applies. Left to the HPA the server-side-apply way (git omits
//! `replicas`) or by an `ignore` rule (git declares it, as charts do),
//! `spec.replicas` is neither drift nor taken back; declared with neither,
//! it is drift a self-healing ferry would fight over.

use crate::kube_apply::{admin, apply, ns_yaml};
use crate::support::*;
use ferry::config::IgnoreRule;
use ferry::desired::manifests;
use ferry::kubernetes::ignore::Pointer;
use ferry::kubernetes::plan::{Action, Plan};
use git2::{Oid, Repository};
use k8s_openapi::api::apps::v1::Deployment;
use kube::Api;
use std::time::Duration;

fn deployment(name: &str, image: &str, replicas: Option<u32>) -> String {
    let replicas = replicas.map_or(String::new(), |r| format!("  replicas: {r}\n"));
    format!(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: {name}\nspec:\n{replicas}  \
         selector:\n    matchLabels: {{app: {name}}}\n  template:\n    metadata:\n      labels: {{app: {name}}}\n    \
         spec:\n      containers:\n        - name: web\n          image: {image}\n"
    )
}

/// Three replicas at least: the controller scales up to that without any
/// metrics, so no metrics server is needed.
fn hpa(name: &str) -> String {
    format!(
        "apiVersion: autoscaling/v2\nkind: HorizontalPodAutoscaler\nmetadata:\n  name: {name}\nspec:\n  \
         scaleTargetRef: {{apiVersion: apps/v1, kind: Deployment, name: {name}}}\n  minReplicas: 3\n  maxReplicas: 5\n  \
         metrics:\n    - type: Resource\n      resource: {{name: cpu, target: {{type: Utilization, averageUtilization: 50}}}}\n"
    )
}

/// `omitted` leaves replicas out, `ruled` declares 1 under an ignore rule,
/// `fought` declares 1 with no rule; each has its HPA.
fn revision(repo: &Repository, ns: &str, image: &str) -> Oid {
    let mut files = vec![("manifests/ns.yaml".to_string(), ns_yaml(ns))];
    for (name, replicas) in [("omitted", None), ("ruled", Some(1)), ("fought", Some(1))] {
        files.push((
            format!("manifests/{name}.yaml"),
            format!("{}---\n{}", deployment(name, image, replicas), hpa(name)),
        ));
    }
    let files: Vec<(&str, String)> = files.iter().map(|(p, c)| (p.as_str(), c.clone())).collect();
    commit_files(repo, &files)
}

async fn review(
    repo: &Repository,
    at: Oid,
    config: &ferry::config::KubernetesTargetConfig,
) -> Plan {
    plan_manifests(
        &admin().await,
        "platform",
        &at.to_string(),
        config,
        manifests::read(repo, at, "manifests"),
        None,
    )
    .await
}

/// Waits (60 s at most) for the HPA to have scaled `name` to 3.
async fn scaled_to_3(deployments: &Api<Deployment>, name: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let d = deployments.get(name).await.unwrap();
        if d.spec.replicas == Some(3) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the HPA did not scale {name} to 3 in 60 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn object<'p>(plan: &'p Plan, name: &str) -> &'p ferry::kubernetes::plan::ObjectPlan {
    plan.objects
        .iter()
        .find(|o| o.id.kind == "Deployment" && o.id.name == name)
        .unwrap_or_else(|| panic!("no Deployment {name} in {plan:#?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ferry_and_a_real_hpa_do_not_fight_over_replicas() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = Repository::init_bare(tmp.path().join("platform.git")).unwrap();
    let ns = unique_namespace("hpa");
    // The settings that fight hardest: self_heal takes fields back (force).
    let mut config = kube_target(&ns, true);
    config.self_heal = true;
    config.ignore = vec![IgnoreRule {
        kind: "Deployment.apps".into(),
        name: Some("rule*".into()),
        namespace: None,
        json_pointers: vec![Pointer::try_from("/spec/replicas".to_string()).unwrap()],
    }];
    let deployments: Api<Deployment> = Api::namespaced(admin().await, &ns);
    let replicas = async |name: &str| {
        let d = deployments.get(name).await.unwrap();
        d.spec.replicas.unwrap_or_default()
    };
    let mut last = None;

    let r1 = revision(&repo, &ns, "web:1");
    let out = apply(&repo, r1, &config, &mut last).await.unwrap();
    assert!(out.succeeded(), "{out:?}");
    for name in ["omitted", "ruled", "fought"] {
        scaled_to_3(&deployments, name).await;
    }

    // The drift check's plan: only the Deployment that declares replicas
    // with no rule differs, and it would be set back to git's 1.
    let plan = review(&repo, r1, &config).await;
    let fought = object(&plan, "fought");
    assert_eq!(fought.action, Action::Update, "{fought:?}");
    assert_eq!(fought.changes.len(), 1, "{fought:?}");
    assert_eq!(fought.changes[0].path, "spec.replicas");
    assert_eq!(fought.changes[0].before, Some(3.into()));
    assert_eq!(fought.changes[0].after, Some(1.into()));
    for name in ["omitted", "ruled"] {
        let o = object(&plan, name);
        assert_eq!(o.action, Action::Unchanged, "{o:?}");
        assert!(o.error.is_none(), "{o:?}");
    }
    let drifted = plan.drifted();
    assert_eq!(drifted.len(), 1, "{drifted:?}");
    assert!(drifted[0].contains("fought"), "{drifted:?}");

    // A new image, applied with force: the two that leave replicas to the
    // HPA keep its 3 and take the image.
    let r2 = revision(&repo, &ns, "web:2");
    let out = apply(&repo, r2, &config, &mut last).await.unwrap();
    assert!(out.succeeded(), "{out:?}");
    for name in ["omitted", "ruled"] {
        assert_eq!(replicas(name).await, 3, "{name}");
        let d = deployments.get(name).await.unwrap();
        let spec = d.spec.template.spec.unwrap();
        assert_eq!(spec.containers[0].image.as_deref(), Some("web:2"));
        // ferry owns no replicas. On `ruled` the HPA's controller does
        // (it changed a value ferry had set), so git dropping the field
        // later resets nothing; on `omitted` the value was a default, and
        // a scale through the subresource records no owner.
        let fields = d.metadata.managed_fields.unwrap_or_default();
        let ours = fields
            .iter()
            .find(|f| f.manager.as_deref() == Some("ferry"))
            .and_then(|f| f.fields_v1.as_ref())
            .map(|f| f.0.clone())
            .unwrap_or_default();
        assert!(ours["f:spec"]["f:template"].is_object(), "{ours}");
        assert!(ours["f:spec"].get("f:replicas").is_none(), "{name}: {ours}");
        assert!(
            name == "omitted"
                || fields.iter().any(|f| f.manager.as_deref() != Some("ferry")
                    && f.fields_v1
                        .as_ref()
                        .is_some_and(|v| v.0["f:spec"].get("f:replicas").is_some())),
            "{name}: nobody else owns replicas: {fields:?}"
        );
    }
    // Forced back to 1, `fought` is scaled up again: the fight. Once it
    // is, the next drift check again finds only that one.
    scaled_to_3(&deployments, "fought").await;
    let plan = review(&repo, r2, &config).await;
    let drifted = plan.drifted();
    assert_eq!(drifted.len(), 1, "{drifted:?}");
    assert!(drifted[0].contains("fought"), "{drifted:?}");
}
