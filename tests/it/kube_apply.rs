//! Applying the platform repo's manifests to a real kube-apiserver
//! (tools/control-plane). One unique namespace per test.

use crate::support::*;
use ferry::config::KubernetesTargetConfig;
use ferry::desired::manifests;
use ferry::kubernetes::apply::{Applier, ApplyError, ApplyOutcome, Status};
use ferry::kubernetes::client;
use ferry::kubernetes::last_applied::LastApplied;
use ferry::kubernetes::plan::{self, Depth};
use git2::{Oid, Repository};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use std::time::Duration;

pub(crate) async fn admin() -> kube::Client {
    client::connect(Some(&control_plane().admin)).await.unwrap()
}

pub(crate) async fn apply(
    repo: &Repository,
    at: Oid,
    config: &KubernetesTargetConfig,
    last: &mut Option<LastApplied>,
) -> Result<ApplyOutcome, ApplyError> {
    let client = admin().await;
    apply_with(&client, repo, at, config, last).await
}

/// The agent's way: the revision's manifests (the gate), a plan made for
/// applying, then that plan applied.
async fn apply_with(
    client: &kube::Client,
    repo: &Repository,
    at: Oid,
    config: &KubernetesTargetConfig,
    last: &mut Option<LastApplied>,
) -> Result<ApplyOutcome, ApplyError> {
    let manifests = manifests::read(repo, at, "manifests").map_err(ApplyError::Invalid)?;
    let plan = plan::plan(
        client,
        "platform",
        &at.to_string(),
        config,
        &manifests,
        last.as_ref(),
        Depth::Apply,
    )
    .await
    .map_err(|e| ApplyError::Cluster(e.to_string()))?;
    let applier = Applier {
        client,
        target: "platform",
        config,
        cancel: None,
    };
    applier.apply(plan, last).await
}

pub(crate) fn ns_yaml(ns: &str) -> String {
    format!("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {ns}\n")
}

fn cm(name: &str, value: &str, extra_meta: &str) -> String {
    format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {name}\n{extra_meta}data:\n  k: {value}\n"
    )
}

fn deployment(image: &str) -> String {
    format!(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\nspec:\n  selector:\n    matchLabels: {{app: web}}\n  \
         template:\n    metadata:\n      labels: {{app: web}}\n    spec:\n      containers:\n        - name: web\n          image: {image}\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_update_and_prune_across_three_revisions() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = Repository::init_bare(tmp.path().join("platform.git")).unwrap();
    let ns = unique_namespace("apply");
    let config = kube_target(&ns, false);
    let client = admin().await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    let mut last = None;

    // 1: namespace, three ConfigMaps (one opted out of pruning), a Deployment.
    let r1 = commit_files(
        &repo,
        &[
            ("manifests/ns.yaml", ns_yaml(&ns)),
            ("manifests/a.yaml", cm("a", "one", "")),
            ("manifests/b.yaml", cm("b", "one", "")),
            (
                "manifests/keep.yaml",
                cm(
                    "keep",
                    "one",
                    "  annotations:\n    ferry.dev/prune: disabled\n",
                ),
            ),
            ("manifests/web.yaml", deployment("nginx:1.27")),
        ],
    );
    let out = apply(&repo, r1, &config, &mut last).await.unwrap();
    assert!(out.succeeded(), "{out:?}");
    assert_eq!(out.count(Status::Applied), 5);
    let a = cms.get("a").await.unwrap();
    assert_eq!(
        a.metadata.labels.unwrap()["app.kubernetes.io/managed-by"],
        "ferry"
    );
    // Something ferry never declared, in the same namespace.
    cms.create(&PostParams::default(), &serde_json::from_value(serde_json::json!({
        "metadata": {"name": "hand-made", "labels": {"app.kubernetes.io/managed-by": "ferry"}}, "data": {"k": "v"}
    })).unwrap()).await.unwrap();

    // 2: a changes, b and keep are removed from git, the image changes.
    let r2 = commit_files(
        &repo,
        &[
            ("manifests/ns.yaml", ns_yaml(&ns)),
            ("manifests/a.yaml", cm("a", "two", "")),
            ("manifests/web.yaml", deployment("nginx:1.28")),
        ],
    );
    // The plan shows the prune before it happens, and what pruning keeps.
    let plan = plan_manifests(
        &client,
        "platform",
        &r2.to_string(),
        &config,
        manifests::read(&repo, r2, "manifests"),
        None,
    )
    .await;
    let planned = |name: &str| plan.objects.iter().find(|o| o.id.name == name).cloned();
    assert_eq!(
        planned("b").unwrap().action,
        ferry::kubernetes::plan::Action::Prune
    );
    let keep = planned("keep").unwrap();
    assert_eq!(keep.action, ferry::kubernetes::plan::Action::Unchanged);
    assert!(keep.note.unwrap().contains("ferry.dev/prune: disabled"));
    assert!(
        planned("hand-made").is_none(),
        "never in the inventory, never in a plan"
    );
    assert!(
        plan.render_text().contains("- ConfigMap"),
        "{}",
        plan.render_text()
    );

    let out = apply(&repo, r2, &config, &mut last).await.unwrap();
    assert!(out.succeeded(), "{out:?}");
    let status = |name: &str| {
        out.objects
            .iter()
            .find(|o| o.id.name == name)
            .map(|o| o.status)
    };
    assert_eq!(status("b"), Some(Status::Pruned));
    assert_eq!(status("keep"), Some(Status::Kept));
    assert_eq!(cms.get("a").await.unwrap().data.unwrap()["k"], "two");
    assert!(cms.get_opt("b").await.unwrap().is_none(), "b is pruned");
    assert!(
        cms.get_opt("keep").await.unwrap().is_some(),
        "opted out of pruning"
    );
    assert!(
        cms.get_opt("hand-made").await.unwrap().is_some(),
        "never in the inventory, never deleted"
    );
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    let image = deployments
        .get("web")
        .await
        .unwrap()
        .spec
        .template
        .spec
        .unwrap()
        .containers[0]
        .image
        .clone();
    assert_eq!(image.as_deref(), Some("nginx:1.28"));

    // 3: the Deployment goes too.
    let r3 = commit_files(
        &repo,
        &[
            ("manifests/ns.yaml", ns_yaml(&ns)),
            ("manifests/a.yaml", cm("a", "two", "")),
        ],
    );
    let out = apply(&repo, r3, &config, &mut last).await.unwrap();
    assert!(out.succeeded(), "{out:?}");
    assert!(deployments.get_opt("web").await.unwrap().is_none());
    // `keep` left the inventory: a later revision never prunes it either.
    let out = apply(&repo, r3, &config, &mut None).await.unwrap();
    assert!(out.objects.iter().all(|o| o.id.name != "keep"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crd_and_its_custom_resource_in_one_revision() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = Repository::init_bare(tmp.path().join("platform.git")).unwrap();
    let ns = unique_namespace("crd");
    let group = format!("{ns}.example.com");
    let crd = format!(
        "apiVersion: apiextensions.k8s.io/v1\nkind: CustomResourceDefinition\nmetadata:\n  name: widgets.{group}\nspec:\n  group: {group}\n  \
         scope: Namespaced\n  names:\n    kind: Widget\n    plural: widgets\n    singular: widget\n    listKind: WidgetList\n  \
         versions:\n    - name: v1\n      served: true\n      storage: true\n      schema:\n        openAPIV3Schema:\n          type: object\n          \
         properties:\n            spec:\n              type: object\n              properties:\n                size:\n                  type: integer\n"
    );
    // The custom resource sorts before its CRD in the repo; ordering must not care.
    let r = commit_files(
        &repo,
        &[
            (
                "manifests/0-widget.yaml",
                format!(
                    "apiVersion: {group}/v1\nkind: Widget\nmetadata:\n  name: w\nspec:\n  size: 3\n"
                ),
            ),
            ("manifests/crd.yaml", crd),
            ("manifests/ns.yaml", ns_yaml(&ns)),
        ],
    );
    let out = apply(&repo, r, &kube_target(&ns, false), &mut None)
        .await
        .unwrap();
    assert!(out.succeeded(), "{out:?}");
    assert_eq!(out.count(Status::Applied), 3);
    let client = admin().await;
    let resource = kube::discovery::ApiResource {
        group: group.clone(),
        version: "v1".into(),
        api_version: format!("{group}/v1"),
        kind: "Widget".into(),
        plural: "widgets".into(),
    };
    let widgets: Api<kube::api::DynamicObject> = Api::namespaced_with(client, &ns, &resource);
    assert_eq!(widgets.get("w").await.unwrap().data["spec"]["size"], 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_object_fails_alone_and_conflicts_name_the_other_manager() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = Repository::init_bare(tmp.path().join("platform.git")).unwrap();
    let ns = unique_namespace("errors");
    let client = admin().await;
    let r0 = commit_files(&repo, &[("manifests/ns.yaml", ns_yaml(&ns))]);
    apply(&repo, r0, &kube_target(&ns, false), &mut None)
        .await
        .unwrap();
    // Another manager owns data.k of `owned`.
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    let theirs = serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "owned"}, "data": {"k": "theirs"}});
    cms.patch("owned", &PatchParams::apply("helm"), &Patch::Apply(&theirs))
        .await
        .unwrap();

    let bad_service = "apiVersion: v1\nkind: Service\nmetadata:\n  name: bad\nspec:\n  ports:\n    - port: 99999\n";
    let r1 = commit_files(
        &repo,
        &[
            ("manifests/ns.yaml", ns_yaml(&ns)),
            ("manifests/bad.yaml", bad_service.into()),
            ("manifests/good.yaml", cm("good", "v", "")),
            ("manifests/owned.yaml", cm("owned", "ours", "")),
        ],
    );
    let out = apply(&repo, r1, &kube_target(&ns, false), &mut None)
        .await
        .unwrap();
    assert!(!out.succeeded());
    let by = |name: &str| {
        out.objects
            .iter()
            .find(|o| o.id.name == name)
            .unwrap()
            .clone()
    };
    let bad = by("bad");
    assert_eq!(bad.status, Status::Failed);
    assert!(bad.error.as_deref().unwrap().contains("422"), "{bad:?}");
    let owned = by("owned");
    assert_eq!(owned.status, Status::Failed);
    assert!(
        owned.error.as_deref().unwrap().contains("helm"),
        "{owned:?}"
    );
    assert_eq!(by("good").status, Status::Applied, "the others still apply");
    assert!(cms.get_opt("good").await.unwrap().is_some());

    let out = apply(&repo, r1, &kube_target(&ns, true), &mut None)
        .await
        .unwrap();
    assert_eq!(
        out.objects
            .iter()
            .find(|o| o.id.name == "owned")
            .unwrap()
            .status,
        Status::Applied
    );
    assert_eq!(
        cms.get("owned").await.unwrap().data.unwrap()["k"],
        "ours",
        "force takes the field"
    );
}

/// A commit that moves or deletes `manifests/` is refused whole: read as
/// "nothing declared", it would prune everything ferry applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_without_the_manifests_directory_is_refused_and_prunes_nothing() {
    let cp = control_plane();
    let tmp = tempfile::tempdir().unwrap();
    let repo = Repository::init_bare(tmp.path().join("platform.git")).unwrap();
    let ns = unique_namespace("gone");
    let config = kube_target(&ns, false);
    let mut last = None;
    let r1 = commit_files(
        &repo,
        &[
            ("manifests/ns.yaml", ns_yaml(&ns)),
            ("manifests/a.yaml", cm("a", "one", "")),
        ],
    );
    assert!(
        apply(&repo, r1, &config, &mut last)
            .await
            .unwrap()
            .succeeded()
    );
    let writes = audited_writes(&cp.audit_log, &ns).len();

    // The directory renamed: the same objects under another path.
    let r2 = commit_files(
        &repo,
        &[
            ("k8s/ns.yaml", ns_yaml(&ns)),
            ("k8s/a.yaml", cm("a", "one", "")),
        ],
    );
    match apply(&repo, r2, &config, &mut last).await {
        Err(ApplyError::Invalid(errors)) => {
            let text = errors[0].to_string();
            assert!(
                text.contains("`manifests/` does not exist at this commit")
                    && text.contains("targets.kubernetes.path"),
                "{text}"
            );
        }
        other => panic!("a missing manifests/ must be refused, got {other:?}"),
    }
    assert_eq!(
        audited_writes(&cp.audit_log, &ns).len(),
        writes,
        "nothing written, nothing pruned"
    );
    let cms: Api<ConfigMap> = Api::namespaced(admin().await, &ns);
    assert!(cms.get_opt("a").await.unwrap().is_some());

    // Emptying the directory on purpose still prunes, as before.
    let r3 = commit_files(
        &repo,
        &[("manifests/README.md", "kept on purpose\n".into())],
    );
    let out = apply(&repo, r3, &config, &mut last).await.unwrap();
    assert!(
        out.objects
            .iter()
            .any(|o| o.id.name == "a" && o.status == Status::Pruned),
        "{out:?}"
    );
}

/// The deployment controller writes a Deployment's status and revision
/// annotation after every apply, so its resourceVersion moves while ferry's
/// fields stay: a no-op reconcile must still send nothing, and a change to
/// a field ferry applied must still be noticed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_controller_writing_status_keeps_the_no_op_free_and_a_new_image_is_noticed() {
    let cp = control_plane();
    let tmp = tempfile::tempdir().unwrap();
    let repo = Repository::init_bare(tmp.path().join("platform.git")).unwrap();
    let ns = unique_namespace("status-noop");
    let config = kube_target(&ns, false);
    let mut last = None;
    let r1 = commit_files(
        &repo,
        &[
            ("manifests/ns.yaml", ns_yaml(&ns)),
            ("manifests/web.yaml", deployment("nginx:1.27")),
        ],
    );
    let first = apply(&repo, r1, &config, &mut last).await.unwrap();
    assert!(first.succeeded(), "{first:?}");
    let deployments: Api<Deployment> = Api::namespaced(admin().await, &ns);
    let applied = deployments
        .get("web")
        .await
        .unwrap()
        .metadata
        .resource_version;
    let handle = tokio::runtime::Handle::current();
    eventually(
        Duration::from_secs(30),
        "the controller writes the Deployment",
        || {
            let live =
                tokio::task::block_in_place(|| handle.block_on(deployments.get("web"))).ok()?;
            let rollout = live.status.and_then(|s| s.observed_generation).is_some();
            (rollout && live.metadata.resource_version != applied).then_some(())
        },
    );

    let writes = audited_writes(&cp.audit_log, &ns).len();
    let again = apply(&repo, r1, &config, &mut last).await.unwrap();
    assert!(again.unchanged, "{again:?}");
    assert_eq!(
        audited_writes(&cp.audit_log, &ns).len(),
        writes,
        "the no-op reconcile wrote"
    );

    // `kubectl set image`'s way: someone else takes a field ferry applied.
    let patch = serde_json::json!({"spec": {"template": {"spec": {"containers": [{"name": "web", "image": "nginx:1.28"}]}}}});
    deployments
        .patch("web", &PatchParams::default(), &Patch::Strategic(&patch))
        .await
        .unwrap();
    let mut forcing = config.clone();
    forcing.force = true;
    let repaired = apply(&repo, r1, &forcing, &mut last).await.unwrap();
    assert!(
        !repaired.unchanged,
        "the fast path must notice the new image"
    );
    assert!(repaired.succeeded(), "{repaired:?}");
    let live = deployments.get("web").await.unwrap();
    let image = live.spec.template.spec.unwrap().containers[0].image.clone();
    assert_eq!(image.as_deref(), Some("nginx:1.27"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_revisions_apply_nothing_and_a_no_op_makes_zero_writes() {
    let cp = control_plane();
    let tmp = tempfile::tempdir().unwrap();
    let repo = Repository::init_bare(tmp.path().join("platform.git")).unwrap();
    let ns = unique_namespace("noop");
    let mut config = kube_target(&ns, false);
    config.allowed_namespaces = vec![ns.clone()];
    let mut last = None;
    let r1 = commit_files(
        &repo,
        &[
            ("manifests/ns.yaml", ns_yaml(&ns)),
            ("manifests/a.yaml", cm("a", "one", "")),
        ],
    );
    let first = apply(&repo, r1, &config, &mut last).await.unwrap();
    assert!(first.succeeded(), "{first:?}");

    let writes = audited_writes(&cp.audit_log, &ns).len();
    let again = apply(&repo, r1, &config, &mut last).await.unwrap();
    assert!(again.unchanged);
    assert_eq!(
        audited_writes(&cp.audit_log, &ns).len(),
        writes,
        "the no-op reconcile wrote"
    );

    // An out-of-band change breaks the fast path; the apply repairs it.
    let cms: Api<ConfigMap> = Api::namespaced(admin().await, &ns);
    let patch = serde_json::json!({"data": {"k": "tampered"}});
    cms.patch("a", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    let contested = apply(&repo, r1, &config, &mut last).await.unwrap();
    assert!(!contested.unchanged, "the fast path must notice the change");
    // The patch made another field manager own data.k: without force, that is a conflict.
    let a = contested.objects.iter().find(|o| o.id.name == "a").unwrap();
    assert_eq!(a.status, Status::Failed);
    assert!(a.error.as_deref().unwrap().contains("409"), "{a:?}");
    let mut forcing = config.clone();
    forcing.force = true;
    let repaired = apply(&repo, r1, &forcing, &mut last).await.unwrap();
    assert!(repaired.succeeded(), "{repaired:?}");
    assert_eq!(cms.get("a").await.unwrap().data.unwrap()["k"], "one");

    // Outside the allow-list: refused before any request.
    let outside =
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: x\n  namespace: kube-system\n";
    let r2 = commit_files(
        &repo,
        &[
            ("manifests/ns.yaml", ns_yaml(&ns)),
            ("manifests/x.yaml", outside.into()),
        ],
    );
    let writes = audited_writes(&cp.audit_log, &ns).len()
        + audited_writes(&cp.audit_log, "kube-system").len();
    let err = apply(&repo, r2, &config, &mut last).await.unwrap_err();
    assert!(
        err.to_string().contains("manifests/x.yaml:1")
            && err.to_string().contains("allowed_namespaces"),
        "{err}"
    );
    let after = audited_writes(&cp.audit_log, &ns).len()
        + audited_writes(&cp.audit_log, "kube-system").len();
    assert_eq!(after, writes, "an invalid revision must apply nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_restricted_user_applies_what_ferrys_role_allows_and_is_refused_the_rest() {
    let cp = control_plane();
    let tmp = tempfile::tempdir().unwrap();
    let repo = Repository::init_bare(tmp.path().join("platform.git")).unwrap();
    let ns = unique_namespace("rbac");
    // Bind the repo's own ClusterRole to the restricted user, as deploy/ does.
    grant_ferrys_cluster_role(&admin().await).await;

    let escalation = format!(
        "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRoleBinding\nmetadata:\n  name: {ns}-admin\n\
         roleRef:\n  apiGroup: rbac.authorization.k8s.io\n  kind: ClusterRole\n  name: cluster-admin\n\
         subjects:\n  - apiGroup: rbac.authorization.k8s.io\n    kind: User\n    name: ferry\n"
    );
    let r = commit_files(
        &repo,
        &[
            ("manifests/ns.yaml", ns_yaml(&ns)),
            ("manifests/cm.yaml", cm("allowed", "yes", "")),
            ("manifests/web.yaml", deployment("nginx:1.27")),
            ("manifests/escalate.yaml", escalation),
        ],
    );
    let restricted = client::connect(Some(&cp.restricted)).await.unwrap();
    let mut config = kube_target(&ns, false);
    // By default ferry's config refuses it before the API server sees it...
    let refused = apply_with(&restricted, &repo, r, &config, &mut None).await;
    assert!(
        matches!(&refused, Err(ApplyError::Invalid(e)) if e.iter().any(|e| e.message.contains("is cluster-scoped, and this target applies only"))),
        "{refused:?}"
    );
    // ...and allowed there, the API server still refuses what ferry's role
    // does not grant.
    config.cluster_scoped.push(ferry::config::ClusterScoped {
        kind: "ClusterRoleBinding.rbac.authorization.k8s.io".into(),
        names: vec![format!("{ns}-admin")],
    });
    let out = apply_with(&restricted, &repo, r, &config, &mut None)
        .await
        .unwrap();
    let by = |name: &str| {
        out.objects
            .iter()
            .find(|o| o.id.name == name)
            .unwrap()
            .clone()
    };
    assert_eq!(by(&ns).status, Status::Applied);
    assert_eq!(by("allowed").status, Status::Applied);
    assert_eq!(by("web").status, Status::Applied);
    let refused = by(&format!("{ns}-admin"));
    assert_eq!(refused.status, Status::Failed);
    assert!(
        refused.error.as_deref().unwrap().contains("403")
            && refused.error.as_deref().unwrap().contains("forbidden"),
        "{refused:?}"
    );
    assert!(!out.succeeded());
    let crbs: Api<k8s_openapi::api::rbac::v1::ClusterRoleBinding> = Api::all(admin().await);
    assert!(
        crbs.get_opt(&format!("{ns}-admin"))
            .await
            .unwrap()
            .is_none()
    );
}

/// An object ferry applied (so it is in the inventory) that someone then
/// took over, by removing ferry's `managed-by` label or setting another
/// manager's, is kept when git drops it: listed as kept with the reason,
/// never deleted, while an untouched sibling is pruned.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_inventoried_object_someone_took_over_is_kept_not_pruned() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = Repository::init_bare(tmp.path().join("platform.git")).unwrap();
    let ns = unique_namespace("adopted");
    let config = kube_target(&ns, false);
    let client = admin().await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    let mut last = None;
    let r1 = commit_files(
        &repo,
        &[
            ("manifests/ns.yaml", ns_yaml(&ns)),
            ("manifests/unlabelled.yaml", cm("unlabelled", "one", "")),
            ("manifests/helm.yaml", cm("helm-owned", "one", "")),
            ("manifests/plain.yaml", cm("plain", "one", "")),
        ],
    );
    let out = apply(&repo, r1, &config, &mut last).await.unwrap();
    assert!(out.succeeded(), "{out:?}");
    // Taken over: one loses ferry's label, one gets another manager's.
    for (name, value) in [
        ("unlabelled", serde_json::Value::Null),
        ("helm-owned", "Helm".into()),
    ] {
        cms.patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({
                "metadata": {"labels": {"app.kubernetes.io/managed-by": value}}
            })),
        )
        .await
        .unwrap();
    }
    let r2 = commit_files(&repo, &[("manifests/ns.yaml", ns_yaml(&ns))]);
    let out = apply(&repo, r2, &config, &mut last).await.unwrap();
    assert!(out.succeeded(), "{out:?}");
    let outcome = |name: &str| {
        out.objects
            .iter()
            .find(|o| o.id.name == name)
            .cloned()
            .unwrap()
    };
    for name in ["unlabelled", "helm-owned"] {
        let o = outcome(name);
        assert_eq!(o.status, Status::Kept, "{o:?}");
        assert!(
            o.error
                .as_deref()
                .is_some_and(|e| e.contains("no longer labelled")),
            "{o:?}"
        );
        assert!(
            cms.get_opt(name).await.unwrap().is_some(),
            "{name} was deleted"
        );
    }
    assert_eq!(outcome("plain").status, Status::Pruned);
    assert!(cms.get_opt("plain").await.unwrap().is_none());
}
