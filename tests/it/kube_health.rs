//! Health on real rollouts: the controller-manager turns what ferry applies
//! into ReplicaSets, Pods, claims and Jobs, the scheduler places the pods
//! on kwok's simulated nodes, and kwok runs them (or, asked by the
//! annotation `stage.ferry.dev/pod`, keeps them unready or fails them).
//! No status here is written by a test, except a custom resource's, by
//! the small controller the CRD test runs.

use std::time::Duration;

use crate::kube_apply::{admin, apply, ns_yaml};
use crate::support::cluster::general_nodes;
use crate::support::*;
use ferry::kubernetes::apply::ApplyOutcome;
use ferry::kubernetes::health::Health;
use git2::Repository;
use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::{ListParams, Patch, PatchParams};

fn health_of<'a>(out: &'a ApplyOutcome, kind: &str, name: &str) -> &'a Health {
    out.objects
        .iter()
        .find(|o| o.id.kind == kind && o.id.name == name)
        .and_then(|o| o.health.as_ref())
        .unwrap_or_else(|| panic!("no health for {kind}/{name} in {out:#?}"))
}

fn failed_reason(h: &Health) -> &str {
    match h {
        Health::Failed(r) => r,
        other => panic!("expected a failure, got {other:?}"),
    }
}

/// A Deployment of `replicas` on the shared general nodes, with extra
/// pod-template annotations and spec lines.
fn deployment(name: &str, replicas: u32, image: &str, annotations: &str, spec: &str) -> String {
    format!(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: {name}\nspec:\n  replicas: {replicas}\n{spec}  \
         selector:\n    matchLabels: {{app: {name}}}\n  template:\n    metadata:\n      labels: {{app: {name}}}\n      \
         annotations: {{{annotations}}}\n    spec:\n      nodeSelector: {{ferry.dev/test-pool: general}}\n      \
         containers:\n        - name: main\n          image: {image}\n"
    )
}

struct Case {
    _tmp: tempfile::TempDir,
    repo: Repository,
    ns: String,
    config: ferry::config::KubernetesTargetConfig,
}

impl Case {
    async fn new(prefix: &str, health_timeout: Duration) -> Case {
        general_nodes(&admin().await).await;
        let tmp = tempfile::tempdir().unwrap();
        let repo = Repository::init_bare(tmp.path().join("platform.git")).unwrap();
        let ns = unique_namespace(prefix);
        let mut config = kube_target(&ns, false);
        config.health_timeout = health_timeout;
        Case {
            _tmp: tmp,
            repo,
            ns,
            config,
        }
    }

    /// Commits the namespace (with `ns_extra` metadata lines) plus `files`
    /// and applies that revision as the agent does.
    async fn apply(&self, ns_extra: &str, files: &[(&str, String)]) -> ApplyOutcome {
        let mut all = vec![(
            "manifests/ns.yaml",
            format!("{}{ns_extra}", ns_yaml(&self.ns)),
        )];
        all.extend(files.iter().map(|(p, c)| (*p, c.clone())));
        let at = commit_files(&self.repo, &all);
        apply(&self.repo, at, &self.config, &mut None)
            .await
            .unwrap()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_goes_available_and_one_whose_pods_never_get_ready_fails_with_the_deployments_message()
 {
    let case = Case::new("rollout", Duration::from_secs(60)).await;
    let out = case
        .apply(
            "",
            &[(
                "manifests/web.yaml",
                deployment("web", 2, "nginx:1.27", "", ""),
            )],
        )
        .await;
    assert_eq!(
        health_of(&out, "Deployment", "web"),
        &Health::Current,
        "{out:#?}"
    );
    assert!(out.succeeded());

    // The new pods run but never pass readiness: the Deployment controller
    // gives up after its progress deadline, and ferry says so in the
    // Deployment's own words, well before its own 60 s timeout.
    let started = std::time::Instant::now();
    let out = case
        .apply(
            "",
            &[(
                "manifests/web.yaml",
                deployment(
                    "web",
                    2,
                    "nginx:1.28",
                    "stage.ferry.dev/pod: never-ready",
                    "  progressDeadlineSeconds: 4\n",
                ),
            )],
        )
        .await;
    let reason = failed_reason(health_of(&out, "Deployment", "web"));
    assert!(reason.contains("has timed out progressing"), "{reason}");
    assert!(
        started.elapsed() < Duration::from_secs(40),
        "{:?}",
        started.elapsed()
    );
    assert!(!out.succeeded());

    // The old ReplicaSet still serves both replicas: maxUnavailable rounds
    // down to 0 of 2, so the rollout never took one away.
    let sets: Api<ReplicaSet> = Api::namespaced(admin().await, &case.ns);
    let sets = sets.list(&ListParams::default()).await.unwrap().items;
    let old = sets
        .iter()
        .find(|rs| {
            serde_json::to_value(rs)
                .unwrap()
                .pointer("/spec/template/spec/containers/0/image")
                == Some(&serde_json::json!("nginx:1.27"))
        })
        .expect("the old ReplicaSet");
    assert_eq!(
        old.status.as_ref().unwrap().available_replicas,
        Some(2),
        "{old:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_that_cannot_be_scheduled_time_out_with_the_schedulers_reason() {
    let case = Case::new("unschedulable", Duration::from_secs(8)).await;
    let pinned = deployment("web", 1, "nginx:1.27", "", "").replace(
        "ferry.dev/test-pool: general",
        "ferry.dev/test-pool: nowhere",
    );
    let out = case.apply("", &[("manifests/web.yaml", pinned)]).await;
    let reason = failed_reason(health_of(&out, "Deployment", "web"));
    assert!(reason.contains("not healthy after 8s"), "{reason}");
    assert!(
        reason.contains("is not scheduled")
            && reason.contains("didn't match Pod's node affinity/selector"),
        "{reason}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_refused_by_pod_security_are_reported_with_the_admission_message() {
    let case = Case::new("podsecurity", Duration::from_secs(60)).await;
    let restricted = "  labels:\n    pod-security.kubernetes.io/enforce: restricted\n";
    // A plain container violates "restricted" (no runAsNonRoot, no seccomp...).
    let sts = "apiVersion: apps/v1\nkind: StatefulSet\nmetadata:\n  name: db\nspec:\n  serviceName: db\n  replicas: 1\n  \
               selector:\n    matchLabels: {app: db}\n  template:\n    metadata:\n      labels: {app: db}\n    spec:\n      \
               containers:\n        - name: db\n          image: postgres:17\n";
    let started = std::time::Instant::now();
    let out = case
        .apply(
            restricted,
            &[
                (
                    "manifests/web.yaml",
                    deployment("web", 1, "nginx:1.27", "", ""),
                ),
                ("manifests/db.yaml", sts.to_string()),
            ],
        )
        .await;
    for kind in ["Deployment", "StatefulSet"] {
        let name = if kind == "Deployment" { "web" } else { "db" };
        let reason = failed_reason(health_of(&out, kind, name));
        assert!(
            reason.contains("violates PodSecurity \"restricted:latest\""),
            "{kind}: {reason}"
        );
        assert!(!reason.contains("not healthy after"), "{kind}: {reason}");
    }
    assert!(
        started.elapsed() < Duration::from_secs(40),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statefulset_rolling_update_honours_its_partition() {
    let case = Case::new("sts", Duration::from_secs(60)).await;
    let sts = |image: &str, partition: u32| {
        format!(
            "apiVersion: apps/v1\nkind: StatefulSet\nmetadata:\n  name: db\nspec:\n  serviceName: db\n  replicas: 3\n  \
             podManagementPolicy: Parallel\n  updateStrategy:\n    type: RollingUpdate\n    rollingUpdate: {{partition: {partition}}}\n  \
             selector:\n    matchLabels: {{app: db}}\n  template:\n    metadata:\n      labels: {{app: db}}\n    spec:\n      \
             nodeSelector: {{ferry.dev/test-pool: general}}\n      containers:\n        - name: db\n          image: {image}\n"
        )
    };
    let out = case
        .apply("", &[("manifests/db.yaml", sts("postgres:16", 0))])
        .await;
    assert_eq!(
        health_of(&out, "StatefulSet", "db"),
        &Health::Current,
        "{out:#?}"
    );

    // Partition 2: only db-2 moves to the new revision; that is the rollout done.
    let out = case
        .apply("", &[("manifests/db.yaml", sts("postgres:17", 2))])
        .await;
    assert_eq!(
        health_of(&out, "StatefulSet", "db"),
        &Health::Current,
        "{out:#?}"
    );
    let pods: Api<Pod> = Api::namespaced(admin().await, &case.ns);
    let image = |pod: &Pod| {
        pod.spec.as_ref().unwrap().containers[0]
            .image
            .clone()
            .unwrap()
    };
    let by_name = |name: &str| {
        let pods = pods.clone();
        let name = name.to_string();
        async move { pods.get(&name).await.unwrap() }
    };
    assert_eq!(image(&by_name("db-2").await), "postgres:17");
    assert_eq!(image(&by_name("db-0").await), "postgres:16");

    // Partition 0: every replica on the update revision.
    let out = case
        .apply("", &[("manifests/db.yaml", sts("postgres:17", 0))])
        .await;
    assert_eq!(
        health_of(&out, "StatefulSet", "db"),
        &Health::Current,
        "{out:#?}"
    );
    for name in ["db-0", "db-1", "db-2"] {
        assert_eq!(image(&by_name(name).await), "postgres:17", "{name}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemonsets_jobs_and_claims() {
    let case = Case::new("kinds", Duration::from_secs(15)).await;
    let ds = "apiVersion: apps/v1\nkind: DaemonSet\nmetadata:\n  name: agent\nspec:\n  selector:\n    matchLabels: {app: agent}\n  \
              template:\n    metadata:\n      labels: {app: agent}\n    spec:\n      nodeSelector: {ferry.dev/test-pool: general}\n      \
              containers:\n        - name: agent\n          image: fluent-bit:4\n";
    let job = |name: &str, annotations: &str| {
        format!(
            "apiVersion: batch/v1\nkind: Job\nmetadata:\n  name: {name}\nspec:\n  backoffLimit: 0\n  template:\n    metadata:\n      \
             annotations: {{{annotations}}}\n    spec:\n      restartPolicy: Never\n      nodeSelector: {{ferry.dev/test-pool: general}}\n      \
             containers:\n        - name: task\n          image: busybox\n"
        )
    };
    let claim = "apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata:\n  name: data\nspec:\n  accessModes: [ReadWriteOnce]\n  \
                 storageClassName: missing\n  resources:\n    requests: {storage: 1Gi}\n";
    let out = case
        .apply(
            "",
            &[
                ("manifests/ds.yaml", ds.to_string()),
                ("manifests/ok.yaml", job("migrate", "")),
                (
                    "manifests/bad.yaml",
                    job("backfill", "stage.ferry.dev/pod: fail"),
                ),
                ("manifests/claim.yaml", claim.to_string()),
            ],
        )
        .await;
    // One pod on each of the two general nodes.
    assert_eq!(
        health_of(&out, "DaemonSet", "agent"),
        &Health::Current,
        "{out:#?}"
    );
    assert_eq!(
        health_of(&out, "Job", "migrate"),
        &Health::Current,
        "{out:#?}"
    );
    let reason = failed_reason(health_of(&out, "Job", "backfill"));
    assert!(reason.starts_with("BackoffLimitExceeded"), "{reason}");
    // A claim no provisioner can serve stays Pending: at the timeout it
    // fails with the PV controller's own event.
    let reason = failed_reason(health_of(&out, "PersistentVolumeClaim", "data"));
    assert!(
        reason.contains("not healthy after 15s: Pending")
            && reason
                .contains("ProvisioningFailed: storageclass.storage.k8s.io \"missing\" not found"),
        "{reason}"
    );
}

/// Health of custom resources, read by the generic conventions: a CRD with
/// a status subresource whose objects a small controller (here, in the
/// test) reports on, and one without status whose objects say nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn custom_resources_by_their_conditions_and_unknown_when_they_have_none() {
    let case = Case::new("crs", Duration::from_secs(20)).await;
    let suffix = case.ns.replace('-', "");
    let group = format!("{suffix}.example.com");
    let crd = |kind: &str, plural: &str, status: bool| {
        let sub = if status {
            "      subresources: {status: {}}\n"
        } else {
            ""
        };
        format!(
            "apiVersion: apiextensions.k8s.io/v1\nkind: CustomResourceDefinition\nmetadata:\n  name: {plural}.{group}\nspec:\n  \
             group: {group}\n  scope: Namespaced\n  names: {{kind: {kind}, plural: {plural}, singular: {}}}\n  versions:\n    \
             - name: v1\n      served: true\n      storage: true\n{sub}      schema:\n        openAPIV3Schema:\n          type: object\n          \
             x-kubernetes-preserve-unknown-fields: true\n",
            kind.to_lowercase()
        )
    };
    let cr = |kind: &str, name: &str| {
        format!(
            "apiVersion: {group}/v1\nkind: {kind}\nmetadata:\n  name: {name}\nspec:\n  size: 1\n"
        )
    };
    // The controller: `good` becomes Ready for the generation it saw,
    // `stuck` reports Stalled.
    let client = admin().await;
    let resource = kube::discovery::ApiResource {
        group: group.clone(),
        version: "v1".into(),
        api_version: format!("{group}/v1"),
        kind: "Bucket".into(),
        plural: "buckets".into(),
    };
    let buckets: Api<kube::api::DynamicObject> =
        Api::namespaced_with(client.clone(), &case.ns, &resource);
    let controller = tokio::spawn(async move {
        let mut reported = std::collections::HashSet::new();
        while reported.len() < 2 {
            tokio::time::sleep(Duration::from_millis(500)).await;
            for name in ["good", "stuck"] {
                let Ok(Some(b)) = buckets.get_opt(name).await else {
                    continue;
                };
                let generation = b.metadata.generation.unwrap_or(1);
                let condition = if name == "good" {
                    serde_json::json!({"type": "Ready", "status": "True", "reason": "Provisioned"})
                } else {
                    serde_json::json!({"type": "Stalled", "status": "True", "reason": "QuotaExceeded", "message": "bucket quota exceeded"})
                };
                let status = serde_json::json!({"status": {"observedGeneration": generation, "conditions": [condition]}});
                if buckets
                    .patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
                    .await
                    .is_ok()
                {
                    reported.insert(name);
                }
            }
        }
    });
    let out = case
        .apply(
            "",
            &[
                (
                    "manifests/crds.yaml",
                    format!(
                        "{}---\n{}",
                        crd("Bucket", "buckets", true),
                        crd("Note", "notes", false)
                    ),
                ),
                ("manifests/good.yaml", cr("Bucket", "good")),
                ("manifests/stuck.yaml", cr("Bucket", "stuck")),
                ("manifests/note.yaml", cr("Note", "hello")),
            ],
        )
        .await;
    controller.await.unwrap();
    assert_eq!(
        health_of(&out, "Bucket", "good"),
        &Health::Current,
        "{out:#?}"
    );
    assert_eq!(
        failed_reason(health_of(&out, "Bucket", "stuck")),
        "bucket quota exceeded"
    );
    match health_of(&out, "Note", "hello") {
        Health::Unknown(reason) => assert!(reason.contains("no Ready"), "{reason}"),
        other => panic!("a resource with nothing to read is unknown, got {other:?}"),
    }
    // The status API says so in words, and an unknown counts as healthy.
    let json = serde_json::to_value(&out).unwrap();
    let note = json["objects"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["id"]["name"] == "hello")
        .unwrap();
    assert_eq!(note["health"]["state"], "unknown", "{note}");
    assert_eq!(
        out.objects
            .iter()
            .filter(|o| !o.health.as_ref().is_none_or(Health::is_healthy))
            .count(),
        1
    );
}
