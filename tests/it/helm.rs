//! Helm releases in the platform repo: real charts (`tests/fixtures/charts`)
//! served by a real HTTP server on 127.0.0.1, rendered by the pinned helm,
//! planned and applied to the real kube-apiserver through the same gate,
//! plan and apply as plain manifests.

use std::path::{Path, PathBuf};

use crate::kube_apply::{admin, ns_yaml};
use crate::support::*;
use ferry::config::KubernetesTargetConfig;
use ferry::kubernetes::apply::Applier;
use ferry::kubernetes::last_applied::LastApplied;
use ferry::kubernetes::plan::{self, Action, Depth, Plan};
use git2::{Oid, Repository};
use k8s_openapi::api::apps::v1::Deployment;
use kube::Api;

pub(crate) fn shared_charts() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/charts")
}

/// A copy of the shared chart repository, so a test may tamper with it.
fn chart_repo_copy(dir: &Path) -> PathBuf {
    let out = dir.join("charts");
    std::fs::create_dir_all(&out).unwrap();
    for entry in std::fs::read_dir(shared_charts()).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), out.join(entry.file_name())).unwrap();
    }
    out
}

async fn plan_of(
    client: &kube::Client,
    at: Oid,
    config: &KubernetesTargetConfig,
    manifests: &[ferry::desired::manifests::Manifest],
    last: Option<&LastApplied>,
    depth: Depth,
) -> Plan {
    plan::plan(
        client,
        "platform",
        &at.to_string(),
        config,
        manifests,
        last,
        depth,
    )
    .await
    .unwrap()
}

/// A release file: `name` in `ns` of `chart` at `version` from the
/// repository `repo`, then `rest` (values keys, already indented).
fn helm_release(
    name: &str,
    ns: &str,
    repo: &str,
    chart: &str,
    version: &str,
    rest: &str,
) -> String {
    format!(
        "apiVersion: ferry.dev/v1\nkind: HelmRelease\nname: {name}\nnamespace: {ns}\nchart:\n  repository: {repo}\n  name: {chart}\n  version: {version}\n{rest}"
    )
}

const YACE: &str = "prometheus-yet-another-cloudwatch-exporter";

/// One test's chart repository (a copy of the shared one, changed by
/// `edit`, then served), platform repo and target config.
struct World {
    tmp: tempfile::TempDir,
    server: Server,
    url: String,
    mirror: PathBuf,
    repo: Repository,
    config: KubernetesTargetConfig,
}

fn world(ns: &str, edit: impl FnOnce(&Path)) -> World {
    world_with(ns, edit, None)
}

/// [`world`], its chart repository asking for HTTP basic `login`.
fn world_with(ns: &str, edit: impl FnOnce(&Path), login: Option<(&str, &str)>) -> World {
    let tmp = tempfile::tempdir().unwrap();
    let charts = chart_repo_copy(tmp.path());
    edit(&charts);
    let server = static_http_with(&charts, login);
    let url = format!("http://127.0.0.1:{}", server.port);
    let mirror = tmp.path().join("platform.git");
    let repo = Repository::init_bare(&mirror).unwrap();
    let mut config = kube_target(ns, false);
    config.cache_dir = tmp.path().join("cache");
    World {
        tmp,
        server,
        url,
        mirror,
        repo,
        config,
    }
}

/// What a plan would change, as `Action Kind ns/name`.
fn changed(plan: &Plan) -> Vec<String> {
    plan.objects
        .iter()
        .filter(|o| o.action != Action::Unchanged)
        .map(|o| format!("{:?} {}", o.action, o.id))
        .collect()
}

fn release(ns: &str, repo: &str, version: &str, values: &str) -> String {
    helm_release(
        "cw",
        ns,
        repo,
        YACE,
        version,
        &format!("values_files: [values/cloudwatch.yaml]\nvalues:\n{values}"),
    )
}

const CW_VALUES: &str = "fullnameOverride: cloudwatch\naws:\n  role: null\n";

/// A platform repo of the Namespace `ns` and a release of the CloudWatch
/// exporter at `version` from `url`, with inline `values`.
fn cloudwatch_files(
    ns: &str,
    url: &str,
    version: &str,
    values: &str,
) -> Vec<(&'static str, String)> {
    vec![
        ("manifests/ns.yaml", ns_yaml(ns)),
        (
            "releases/cloudwatch.yaml",
            release(ns, url, version, values),
        ),
        ("values/cloudwatch.yaml", CW_VALUES.to_string()),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_from_a_chart_repository_is_rendered_planned_applied_and_pruned() {
    let ns = unique_namespace("helm");
    let World {
        tmp: _tmp,
        server,
        url,
        mirror,
        repo,
        config,
    } = world(&ns, |_| {});
    let client = admin().await;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    let mut last = None;

    // 1: a namespace and a release of the CloudWatch exporter.
    let files = |version: &str, values: &str| cloudwatch_files(&ns, &url, version, values);
    let r1 = commit_files(&repo, &files("0.47.0", "  replicaCount: 1\n"));
    let rendered = gate(&mirror, r1, &config).unwrap();
    let kinds: Vec<String> = rendered.iter().map(|m| m.id.kind.clone()).collect();
    assert_eq!(
        kinds,
        [
            "Namespace",
            "ServiceAccount",
            "ConfigMap",
            "Service",
            "Deployment"
        ],
        "the chart's test Pod is skipped"
    );
    assert!(
        rendered[4].origin.file.starts_with(
            "releases/cloudwatch.yaml (prometheus-yet-another-cloudwatch-exporter/templates/deployment.yaml)"
        ),
        "{}",
        rendered[4].origin
    );
    gate_and_apply_ok(&client, &mirror, r1, &config, &mut last).await;
    let live = deployments.get("cloudwatch").await.unwrap();
    assert_eq!(live.spec.replicas, Some(1));
    assert_eq!(
        live.metadata.labels.as_ref().unwrap()["app.kubernetes.io/managed-by"],
        "ferry",
        "ferry's label, not the chart's `Helm`"
    );

    // 2: a values change plans only what it changes.
    let r2 = commit_files(&repo, &files("0.47.0", "  replicaCount: 2\n"));
    let manifests = gate(&mirror, r2, &config).unwrap();
    let plan = plan_of(
        &client,
        r2,
        &config,
        &manifests,
        last.as_ref(),
        Depth::Review,
    )
    .await;
    let changed = changed(&plan);
    assert_eq!(
        changed,
        [format!("Update Deployment.apps {ns}/cloudwatch")],
        "{:?}",
        plan.objects
    );
    gate_and_apply_ok(&client, &mirror, r2, &config, &mut last).await;
    assert_eq!(
        deployments.get("cloudwatch").await.unwrap().spec.replicas,
        Some(2)
    );

    // 3: a version the repository does not have: the commit is refused,
    // naming the release file and what to fix.
    let r3 = commit_files(&repo, &files("9.9.9", "  replicaCount: 3\n"));
    let problems = gate(&mirror, r3, &config).unwrap_err();
    assert!(
        problems.iter().any(|p| p.starts_with("releases/cloudwatch.yaml")
            && p.contains("has no version 9.9.9 of chart `prometheus-yet-another-cloudwatch-exporter` (its newest: 0.47.0)")
            && p.contains("check `chart.version`")),
        "{problems:?}"
    );

    // 4: the repository goes down. A chart fetched before still renders
    // (from the cache, by digest); one never fetched is an error naming
    // the repository, and the cluster keeps the last good state.
    drop(server);
    let r4 = commit_files(
        &repo,
        &files("0.47.0", "  replicaCount: 2\n  podLabels: {team: ml}\n"),
    );
    assert!(
        gate(&mirror, r4, &config).is_ok(),
        "the cached chart renders offline"
    );
    let mlflow = helm_release("mlflow", &ns, &url, "mlflow", "1.11.5", "");
    let mut with_mlflow = files("0.47.0", "  replicaCount: 2\n");
    with_mlflow.push(("releases/mlflow.yaml", mlflow));
    let r5 = commit_files(&repo, &with_mlflow);
    let problems = gate(&mirror, r5, &config).unwrap_err();
    assert!(
        problems
            .iter()
            .any(|p| p.starts_with("releases/mlflow.yaml")
                && p.contains(&format!("cannot fetch {url}/index.yaml"))),
        "{problems:?}"
    );
    assert_eq!(
        deployments.get("cloudwatch").await.unwrap().spec.replicas,
        Some(2)
    );

    // 5: the release removed from git: its objects are pruned, the
    // Namespace stays.
    let r6 = commit_files(&repo, &[("manifests/ns.yaml", ns_yaml(&ns))]);
    gate_and_apply_ok(&client, &mirror, r6, &config, &mut last).await;
    assert!(deployments.get_opt("cloudwatch").await.unwrap().is_none());
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    assert!(namespaces.get_opt(&ns).await.unwrap().is_some());
}

/// Adds `version` of the CloudWatch exporter chart to the chart repository
/// `charts`: 0.47.0 with its pods labelled `generation: <version>` by
/// default, packaged and indexed by the pinned helm, as a chart
/// maintainer's release would be.
fn publish_yace_version(charts: &Path, version: &str) {
    let work = tempfile::tempdir().unwrap();
    let archive = charts.join(format!("{YACE}-0.47.0.tgz"));
    run(std::process::Command::new("tar")
        .arg("-xzf")
        .arg(&archive)
        .arg("-C")
        .arg(work.path()));
    let chart = work.path().join(YACE);
    let edit = |file: &str, from: &str, to: &str| {
        let path = chart.join(file);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains(from), "{file} has no `{from}`");
        std::fs::write(&path, text.replacen(from, to, 1)).unwrap();
    };
    edit(
        "Chart.yaml",
        "version: 0.47.0",
        &format!("version: {version}"),
    );
    edit(
        "values.yaml",
        "podLabels: {}",
        &format!("podLabels: {{generation: \"{version}\"}}"),
    );
    let helm = helm_binary();
    run(std::process::Command::new(&helm)
        .arg("package")
        .arg(&chart)
        .arg("-d")
        .arg(charts));
    run(std::process::Command::new(&helm)
        .args(["repo", "index"])
        .arg(charts)
        .arg("--merge")
        .arg(charts.join("index.yaml")));
}

/// A chart upgrade from the repository: the new version is fetched,
/// verified and cached beside the old one; the plan updates exactly the
/// objects whose rendering changed (each carries the chart's version in
/// `helm.sh/chart`) and nothing else; and going back is served from the
/// cache with the repository down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chart_version_bump_updates_what_the_new_version_renders_and_can_go_back() {
    let ns = unique_namespace("helm-bump");
    let World {
        tmp: _tmp,
        server,
        url,
        mirror,
        repo,
        config,
    } = world(&ns, |charts| publish_yace_version(charts, "0.48.0"));
    let client = admin().await;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    let mut last = None;
    let files = |version: &str| cloudwatch_files(&ns, &url, version, "  replicaCount: 1\n");
    let chart_label = |d: &Deployment| d.metadata.labels.as_ref().unwrap()["helm.sh/chart"].clone();
    let pod_label = |d: &Deployment| {
        d.spec
            .template
            .metadata
            .as_ref()
            .unwrap()
            .labels
            .as_ref()
            .unwrap()
            .get("generation")
            .cloned()
    };

    let r1 = commit_files(&repo, &files("0.47.0"));
    gate_and_apply_ok(&client, &mirror, r1, &config, &mut last).await;
    let live = deployments.get("cloudwatch").await.unwrap();
    assert_eq!(chart_label(&live), format!("{YACE}-0.47.0"));
    assert_eq!(pod_label(&live), None);

    let r2 = commit_files(&repo, &files("0.48.0"));
    let manifests = gate(&mirror, r2, &config).unwrap();
    let plan = plan_of(
        &client,
        r2,
        &config,
        &manifests,
        last.as_ref(),
        Depth::Review,
    )
    .await;
    let mut updated = changed(&plan);
    updated.sort();
    assert_eq!(
        updated,
        [
            format!("Update ConfigMap {ns}/cloudwatch"),
            format!("Update Deployment.apps {ns}/cloudwatch"),
            format!("Update Service {ns}/cloudwatch"),
            format!("Update ServiceAccount {ns}/cloudwatch"),
        ],
        "every object of the release, not the Namespace: {:?}",
        plan.objects
    );
    gate_and_apply_ok(&client, &mirror, r2, &config, &mut last).await;
    let live = deployments.get("cloudwatch").await.unwrap();
    assert_eq!(chart_label(&live), format!("{YACE}-0.48.0"));
    assert_eq!(pod_label(&live).as_deref(), Some("0.48.0"));
    let cached = std::fs::read_dir(config.cache_dir.join("charts/sha256"))
        .unwrap()
        .count();
    assert_eq!(cached, 2, "both versions cached, each by its digest");

    // Back to 0.47.0 with the repository down: from the cache.
    drop(server);
    let r3 = commit_files(&repo, &files("0.47.0"));
    gate_and_apply_ok(&client, &mirror, r3, &config, &mut last).await;
    let live = deployments.get("cloudwatch").await.unwrap();
    assert_eq!(chart_label(&live), format!("{YACE}-0.47.0"));
    assert_eq!(
        pod_label(&live),
        None,
        "the label the newer version added is gone"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tampered_archive_is_refused_and_never_cached() {
    let World {
        tmp: _tmp,
        server: _server,
        url,
        mirror,
        repo,
        config,
    } = world("helm-tamper", |charts| {
        let archive = charts.join("prometheus-yet-another-cloudwatch-exporter-0.47.0.tgz");
        let mut bytes = std::fs::read(&archive).unwrap();
        bytes.extend_from_slice(b"\0\0\0\0");
        std::fs::write(&archive, &bytes).unwrap();
    });
    let at = commit_files(
        &repo,
        &[
            (
                "releases/cloudwatch.yaml",
                release("helm-tamper", &url, "0.47.0", "  replicaCount: 1\n"),
            ),
            ("values/cloudwatch.yaml", CW_VALUES.to_string()),
        ],
    );
    let problems = gate(&mirror, at, &config).unwrap_err();
    assert!(
        problems.iter().any(|p| p
            .contains("prometheus-yet-another-cloudwatch-exporter-0.47.0.tgz has sha256")
            && p.contains("but the repository's index.yaml says")
            && p.contains("refusing it")),
        "{problems:?}"
    );
    let cached = config.cache_dir.join("charts/sha256");
    assert!(
        std::fs::read_dir(&cached).map(|d| d.count()).unwrap_or(0) == 0,
        "nothing was cached"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renders_that_differ_and_bad_values_are_refused_with_their_file() {
    let ns = unique_namespace("helm-rules");
    let World {
        tmp: _tmp,
        server: _server,
        url,
        mirror,
        repo,
        config,
    } = world(&ns, |_| {});
    let client = admin().await;

    // The MLflow chart makes up a Flask secret key on every render.
    let mlflow = |values: &str| {
        helm_release(
            "mlflow",
            &ns,
            &url,
            "mlflow",
            "1.11.5",
            &format!("values:\n{values}"),
        )
    };
    let at = commit_files(
        &repo,
        &[("releases/mlflow.yaml", mlflow("  replicaCount: 1\n"))],
    );
    let problems = gate(&mirror, at, &config).unwrap_err();
    assert!(
        problems
            .iter()
            .any(|p| p.starts_with("releases/mlflow.yaml")
                && p.contains(
                    "does not render the same twice (`mlflow/templates/flask_secret.yaml` differs)"
                )),
        "{problems:?}"
    );
    // Pinned by values, it renders, its pre-install Secret hook with it,
    // and the API server accepts every object.
    let at = commit_files(
        &repo,
        &[
            ("manifests/ns.yaml", ns_yaml(&ns)),
            (
                "releases/mlflow.yaml",
                mlflow("  flaskServerSecretKey: from-a-sealed-value\n"),
            ),
        ],
    );
    let manifests = gate(&mirror, at, &config).unwrap();
    assert!(
        manifests
            .iter()
            .any(|m| m.id.name == "mlflow-flask-server-secret-key" && m.id.kind == "Secret"),
        "{:?}",
        manifests
            .iter()
            .map(|m| m.id.to_string())
            .collect::<Vec<_>>()
    );
    let plan = plan_of(&client, at, &config, &manifests, None, Depth::Review).await;
    assert!(plan.errors.is_empty(), "{:?}", plan.errors);
    let refused: Vec<_> = plan.objects.iter().filter(|o| o.error.is_some()).collect();
    assert!(refused.is_empty(), "{refused:?}");

    // A chart in the repo (`path`) with a values file that gives a key
    // twice: named where it is.
    let chart_yaml = "apiVersion: v2\nname: local\nversion: 0.1.0\n";
    let cm = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: local\ndata:\n  size: {{ .Values.size | quote }}\n";
    let local = format!(
        "apiVersion: ferry.dev/v1\nkind: HelmRelease\nname: local\nnamespace: {ns}\nchart: {{path: charts/local}}\nvalues_files: [values/local.yaml]\n"
    );
    let at = commit_files(
        &repo,
        &[
            ("charts/local/Chart.yaml", chart_yaml.to_string()),
            ("charts/local/templates/cm.yaml", cm.to_string()),
            ("releases/local.yaml", local),
            (
                "values/local.yaml",
                "size: 1\nother: x\nsize: 2\n".to_string(),
            ),
        ],
    );
    let problems = gate(&mirror, at, &config).unwrap_err();
    assert!(
        problems
            .iter()
            .any(|p| p.starts_with("values/local.yaml:3") && p.contains("`size`")),
        "{problems:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_prometheus_stack_applies_its_crds_then_its_prometheus_and_monitors() {
    // Its own cluster: the chart's CRDs, ClusterRoles and admission
    // webhooks are cluster-wide. With controllers and nodes: the webhook
    // certificate's hook Jobs run.
    let cluster = PrivateControlPlane::start(true);
    let client = ferry::kubernetes::client::connect(Some(&cluster.admin()))
        .await
        .unwrap();
    crate::support::cluster::general_nodes_on(&client).await;
    let World {
        tmp: _tmp,
        server: _server,
        url,
        mirror,
        repo,
        mut config,
    } = world("monitoring", |_| {});
    let at = commit_files(
        &repo,
        &[
            ("manifests/ns.yaml", ns_yaml("monitoring")),
            (
                "releases/monitoring.yaml",
                helm_release(
                    "kps",
                    "monitoring",
                    &url,
                    "kube-prometheus-stack",
                    "88.5.3",
                    "values_files: [values/monitoring.yaml]\n",
                ),
            ),
            // The chart's defaults but Grafana's made-up password: admission
            // webhooks on, their certificate made by hook Jobs.
            (
                "values/monitoring.yaml",
                "grafana:\n  adminPassword: from-a-sealed-value\n".to_string(),
            ),
        ],
    );
    let manifests = gate(&mirror, at, &config).unwrap();
    let count = |kind: &str| manifests.iter().filter(|m| m.id.kind == kind).count();
    assert_eq!(count("CustomResourceDefinition"), 10);
    assert!(count("ServiceMonitor") >= 10 && count("PrometheusRule") >= 30);
    let hooks: Vec<String> = manifests
        .iter()
        .filter(|m| m.hook.is_some())
        .map(|m| m.id.name.clone())
        .collect();
    assert_eq!(
        hooks,
        [
            "kps-kube-prometheus-stack-admission-create",
            "kps-kube-prometheus-stack-admission-patch"
        ]
    );
    let before_hooks: Vec<String> = manifests
        .iter()
        .filter(|m| m.before_hooks)
        .map(|m| m.id.kind.clone())
        .collect();
    assert_eq!(
        before_hooks,
        [
            "ServiceAccount",
            "ClusterRole",
            "ClusterRoleBinding",
            "Role",
            "RoleBinding"
        ],
        "the Jobs' identity, applied before they run"
    );
    // Its ClusterRoles and bindings are refused until ferry's config names
    // them, each refusal saying what to add.
    let plan = plan_of(&client, at, &config, &manifests, None, Depth::Review).await;
    let cluster_wide: Vec<(String, String)> = manifests
        .iter()
        .filter(|m| {
            m.id.kind.starts_with("ClusterRole") || m.id.kind.ends_with("WebhookConfiguration")
        })
        .map(|m| (format!("{}.{}", m.id.kind, m.id.group), m.id.name.clone()))
        .collect();
    assert!(cluster_wide.len() >= 8, "{cluster_wide:?}");
    for (kind, name) in &cluster_wide {
        assert!(
            plan.errors.iter().any(|e| e.message.contains(&format!(
                "add `{{kind: {kind}, names: [{name}]}}` to targets.kubernetes.cluster_scoped"
            ))),
            "{kind} {name}: {:?}",
            plan.errors
        );
    }
    assert_eq!(plan.errors.len(), cluster_wide.len(), "{:?}", plan.errors);
    for (kind, name) in cluster_wide {
        config.cluster_scoped.push(ferry::config::ClusterScoped {
            kind,
            names: vec![name],
        });
    }
    // Applied as ferry's own identity, with the roles deploy/ ships for a
    // platform that installs charts (deploy/cluster-scoped): the chart's
    // CRDs, ClusterRoles and bindings, and its custom resources.
    grant_cluster_roles(
        &client,
        &[
            "deploy/base/clusterrole.yaml",
            "deploy/cluster-scoped/clusterrole.yaml",
        ],
    )
    .await;
    let client = ferry::kubernetes::client::connect(Some(&cluster.restricted()))
        .await
        .unwrap();
    let mut last = None;
    let plan = plan_of(&client, at, &config, &manifests, None, Depth::Apply).await;
    assert!(plan.errors.is_empty(), "{:?}", plan.errors);
    let applier = Applier {
        client: &client,
        target: "platform",
        config: &config,
        cancel: None,
    };
    let out = applier.apply(plan, &mut last).await.unwrap();
    let failed: Vec<_> = out.objects.iter().filter(|o| !o.ok()).collect();
    assert!(out.succeeded(), "{failed:?}");
    // The certificate Jobs ran, in their phases: `create` before the
    // webhook configurations, `patch` once the rest was applied (both then
    // deleted, as their hook-succeeded policy says).
    let position = |name: &str| out.objects.iter().position(|o| o.id.name == name).unwrap();
    let create = position("kps-kube-prometheus-stack-admission-create");
    let patch = position("kps-kube-prometheus-stack-admission-patch");
    let webhook = out
        .objects
        .iter()
        .position(|o| o.id.kind == "ValidatingWebhookConfiguration")
        .unwrap();
    let operator = out
        .objects
        .iter()
        .position(|o| o.id.kind == "Deployment" && o.id.name.ends_with("-operator"))
        .unwrap();
    assert!(
        create < webhook && webhook < patch && operator < patch,
        "{create} {webhook} {operator} {patch}"
    );
    let jobs: Api<k8s_openapi::api::batch::v1::Job> = Api::namespaced(client.clone(), "monitoring");
    assert!(
        jobs.get_opt("kps-kube-prometheus-stack-admission-create")
            .await
            .unwrap()
            .is_none()
    );
    let prometheus = kube::api::ApiResource {
        group: "monitoring.coreos.com".into(),
        version: "v1".into(),
        api_version: "monitoring.coreos.com/v1".into(),
        kind: "Prometheus".into(),
        plural: "prometheuses".into(),
    };
    let live: Api<kube::api::DynamicObject> =
        Api::namespaced_with(client.clone(), "monitoring", &prometheus);
    assert!(
        live.get_opt("kps-kube-prometheus-stack-prometheus")
            .await
            .unwrap()
            .is_some()
    );
    // Nothing changed: the next plan of the same commit is all unchanged.
    let manifests = gate(&mirror, at, &config).unwrap();
    let plan = plan_of(
        &client,
        at,
        &config,
        &manifests,
        last.as_ref(),
        Depth::Review,
    )
    .await;
    let changed = changed(&plan);
    assert!(changed.is_empty(), "{changed:?}");
}

/// A chart with a pre-upgrade Job (deleted once it succeeds), a ConfigMap,
/// and a post-upgrade Job (kept, so recreated on the next upgrade): Jobs
/// run to completion on the test cluster's kwok nodes.
fn hooked_chart(ns: &str, fail_migration: bool) -> Vec<(&'static str, String)> {
    let job = |name: &str, phase: &str, policy: &str, annotations: &str| {
        format!(
            "apiVersion: batch/v1\nkind: Job\nmetadata:\n  name: {name}\n  annotations:\n    helm.sh/hook: {phase}\n{policy}\
             spec:\n  backoffLimit: 0\n  template:\n    metadata:\n      annotations: {{{annotations}}}\n    spec:\n      restartPolicy: Never\n      \
             nodeSelector: {{ferry.dev/test-pool: general}}\n      containers: [{{name: run, image: busybox}}]\n"
        )
    };
    let fail = if fail_migration {
        "stage.ferry.dev/pod: fail"
    } else {
        ""
    };
    vec![
        ("charts/hooked/Chart.yaml", "apiVersion: v2\nname: hooked\nversion: 0.1.0\n".to_string()),
        (
            "charts/hooked/templates/settings.yaml",
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: settings\ndata:\n  v: {{ .Values.v | quote }}\n".to_string(),
        ),
        (
            "charts/hooked/templates/migrate.yaml",
            job("migrate", "pre-install,pre-upgrade", "    helm.sh/hook-delete-policy: before-hook-creation,hook-succeeded\n", fail),
        ),
        ("charts/hooked/templates/notify.yaml", job("notify", "post-install,post-upgrade", "", "")),
        (
            "releases/hooked.yaml",
            format!("apiVersion: ferry.dev/v1\nkind: HelmRelease\nname: hooked\nnamespace: {ns}\nchart: {{path: charts/hooked}}\nvalues_files: [values/hooked.yaml]\n"),
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hook_jobs_run_in_their_phase_and_a_failed_one_applies_nothing_after_it() {
    if std::env::var_os("FERRY_TEST_WORKLOADS").is_none() {
        panic!("needs the test cluster's controllers and kwok nodes: run it with scripts/test");
    }
    let ns = unique_namespace("hooks");
    let World {
        tmp: _tmp,
        server: _server,
        mirror,
        repo,
        config,
        ..
    } = world(&ns, |_| {});
    let client = admin().await;
    crate::support::cluster::general_nodes(&client).await;
    let jobs: Api<k8s_openapi::api::batch::v1::Job> = Api::namespaced(client.clone(), &ns);
    let settings = |client: kube::Client, ns: String| async move {
        Api::<k8s_openapi::api::core::v1::ConfigMap>::namespaced(client, &ns)
            .get_opt("settings")
            .await
            .unwrap()
            .and_then(|c| c.data)
            .map(|d| d["v"].clone())
    };
    let commit = |v: &str, fail: bool| {
        let mut files = hooked_chart(&ns, fail);
        files.push(("manifests/ns.yaml", ns_yaml(&ns)));
        files.push(("values/hooked.yaml", format!("v: {v}\n")));
        commit_files(&repo, &files)
    };
    let mut last = None;

    // 1: install. The migration ran and, having succeeded, is gone; the
    // post hook ran after the ConfigMap and is kept, complete.
    let r1 = commit("one", false);
    gate_and_apply_ok(&client, &mirror, r1, &config, &mut last).await;
    assert_eq!(
        settings(client.clone(), ns.clone()).await.as_deref(),
        Some("one")
    );
    assert!(
        jobs.get_opt("migrate").await.unwrap().is_none(),
        "hook-succeeded deletes it"
    );
    let notify = jobs.get("notify").await.unwrap();
    let complete = |j: &k8s_openapi::api::batch::v1::Job| {
        j.status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|c| {
                c.iter()
                    .any(|c| c.type_ == "Complete" && c.status == "True")
            })
    };
    assert!(complete(&notify), "{notify:?}");
    let notify_uid = notify.metadata.uid.clone();

    // 2: no change, no hook runs (a no-op makes no writes).
    gate_and_apply_ok(&client, &mirror, r1, &config, &mut last).await;
    assert_eq!(jobs.get("notify").await.unwrap().metadata.uid, notify_uid);

    // The plan of an unchanged release runs no hook; the plan of an
    // upgrade (what `ferry plan` prints and the PR comment shows) lists
    // the hooks its apply runs, in order.
    let hooks_of = |plan: &Plan| -> Vec<String> {
        plan.hooks
            .iter()
            .map(|h| format!("{} {}", h.phase.helm_names(), h.id))
            .collect()
    };
    let manifests = gate(&mirror, r1, &config).unwrap();
    let plan = plan_of(&client, r1, &config, &manifests, None, Depth::Review).await;
    assert_eq!(hooks_of(&plan), Vec::<String>::new(), "{:?}", plan.objects);
    let r3 = commit("two", false);
    let manifests = gate(&mirror, r3, &config).unwrap();
    let plan = plan_of(&client, r3, &config, &manifests, None, Depth::Review).await;
    assert_eq!(
        hooks_of(&plan),
        [
            format!("pre-install/pre-upgrade Job.batch {ns}/migrate"),
            format!("post-install/post-upgrade Job.batch {ns}/notify"),
        ]
    );
    let preview = plan.preview();
    let titles: Vec<&str> = preview.sections.iter().map(|s| s.title.as_str()).collect();
    assert!(
        titles.iter().any(|t| t.starts_with(&format!(
            "▶ Job.batch {ns}/migrate, pre-install/pre-upgrade hook of releases/hooked.yaml  (releases/hooked.yaml (hooked/templates/migrate.yaml"
        ))),
        "{titles:?}"
    );
    assert!(
        plan.render_text().contains(&format!(
            "> runs Job.batch {ns}/notify, post-install/post-upgrade hook"
        )),
        "{}",
        plan.render_text()
    );

    // 3: an upgrade: the post hook, a Job (immutable), is run anew.
    gate_and_apply_ok(&client, &mirror, r3, &config, &mut last).await;
    assert_eq!(
        settings(client.clone(), ns.clone()).await.as_deref(),
        Some("two")
    );
    let notify = jobs.get("notify").await.unwrap();
    assert_ne!(
        notify.metadata.uid, notify_uid,
        "recreated, as before-hook-creation says"
    );
    assert!(complete(&notify));

    // 4: a migration that fails: the release's objects are not touched.
    let r4 = commit("three", true);
    let out = gate_and_apply(&client, &mirror, r4, &config, &mut last).await;
    assert!(!out.succeeded());
    let failed: Vec<_> = out.objects.iter().filter(|o| o.error.is_some()).collect();
    assert_eq!(failed.len(), 1, "{:?}", out.objects);
    let error = failed[0].error.as_deref().unwrap();
    assert!(
        error.starts_with(&format!("Helm hook Job.batch {ns}/migrate (pre-install/pre-upgrade of releases/hooked.yaml) failed"))
            && error.ends_with("nothing after it was applied"),
        "{error}"
    );
    assert_eq!(
        settings(client.clone(), ns.clone()).await.as_deref(),
        Some("two")
    );
}

/// The AWS load balancer controller (CRDs, webhooks, a rendered `List`, a
/// webhook certificate the chart makes up unless values give one) and
/// zero-to-jupyterhub (hub secrets it makes up unless given): with those
/// values pinned, each renders the same twice and every object passes the
/// API server's dry run, once ferry's config lists their cluster-wide
/// objects.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_load_balancer_controller_and_jupyterhub_render_and_pass_the_dry_run() {
    let cluster = PrivateControlPlane::start(false);
    let client = ferry::kubernetes::client::connect(Some(&cluster.admin()))
        .await
        .unwrap();
    let World {
        tmp: _tmp,
        server: _server,
        url,
        mirror,
        repo,
        mut config,
    } = world("jupyterhub", |_| {});
    let pem =
        |what: &str| format!("\"-----BEGIN {what}-----\\nMIIBpinned\\n-----END {what}-----\\n\"");
    let release = |name: &str, ns: &str, chart: &str, version: &str, values: &str| {
        helm_release(
            name,
            ns,
            &url,
            chart,
            version,
            &format!("values:\n{values}"),
        )
    };
    let lbc = release(
        "lbc",
        "kube-system",
        "aws-load-balancer-controller",
        "3.5.0",
        &format!(
            "  clusterName: ml-platform\n  webhookTLS:\n    caCert: {}\n    cert: {}\n    key: {}\n",
            pem("CERTIFICATE"),
            pem("CERTIFICATE"),
            pem("RSA PRIVATE KEY")
        ),
    );
    let hub = release(
        "jh",
        "jupyterhub",
        "jupyterhub",
        "4.4.0",
        "  hub:\n    config:\n      ConfigurableHTTPProxy: {auth_token: pinned-proxy-token}\n      JupyterHub: {cookie_secret: 0123456789abcdef0123456789abcdef}\n      \
         CryptKeeper: {keys: [0123456789abcdef0123456789abcdef]}\n  prePuller:\n    hook: {enabled: false}\n",
    );
    let at = commit_files(
        &repo,
        &[
            ("manifests/ns.yaml", ns_yaml("jupyterhub")),
            ("releases/lbc.yaml", lbc),
            ("releases/jupyterhub.yaml", hub),
        ],
    );
    let manifests = gate(&mirror, at, &config).unwrap();
    let kinds = |release: &str| -> Vec<String> {
        let mut k: Vec<String> = manifests
            .iter()
            .filter(|m| m.release.as_deref() == Some(release))
            .map(|m| m.id.kind.clone())
            .collect();
        k.sort();
        k.dedup();
        k
    };
    assert!(
        kinds("releases/lbc.yaml")
            .iter()
            .any(|k| k == "IngressClass")
            && kinds("releases/lbc.yaml")
                .iter()
                .any(|k| k == "MutatingWebhookConfiguration"),
        "the List's items and the webhooks: {:?}",
        kinds("releases/lbc.yaml")
    );
    assert!(
        kinds("releases/jupyterhub.yaml")
            .iter()
            .any(|k| k == "StatefulSet")
    );
    // What ferry's config must list for these two charts.
    for m in &manifests {
        if m.id.kind != "Namespace" {
            config.cluster_scoped.push(ferry::config::ClusterScoped {
                kind: ferry::desired::resolve::kind_name(&m.id),
                names: vec![m.id.name.clone()],
            });
        }
    }
    let plan = plan_of(&client, at, &config, &manifests, None, Depth::Review).await;
    assert!(plan.errors.is_empty(), "{:#?}", plan.errors);
    let refused: Vec<String> = plan
        .objects
        .iter()
        .filter_map(|o| Some(format!("{}: {}", o.id, o.error.as_ref()?)))
        .collect();
    assert!(refused.is_empty(), "{refused:#?}");
    assert!(plan.objects.len() >= 30, "{}", plan.objects.len());
}

/// A chart from an OCI registry (distribution's, on 127.0.0.1): pulled by
/// helm once, kept by its digest, rendered and applied like one from a
/// chart repository; the registry down, the cached chart still renders and
/// a version never pulled is an error naming the reference.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chart_from_an_oci_registry_is_pulled_once_and_applied() {
    let tmp = tempfile::tempdir().unwrap();
    let registry = oci_registry(tmp.path());
    let host = format!("127.0.0.1:{}", registry.port);
    let push = std::process::Command::new(helm_binary())
        .arg("push")
        .arg(shared_charts().join("prometheus-yet-another-cloudwatch-exporter-0.47.0.tgz"))
        .arg(format!("oci://{host}/charts"))
        .arg("--plain-http")
        .env("HELM_CONFIG_HOME", tmp.path().join("helm"))
        .env("HELM_CACHE_HOME", tmp.path().join("helm"))
        .env("HELM_DATA_HOME", tmp.path().join("helm"))
        .output()
        .unwrap();
    assert!(
        push.status.success(),
        "{}",
        String::from_utf8_lossy(&push.stderr)
    );
    let mirror = tmp.path().join("platform.git");
    let repo = Repository::init_bare(&mirror).unwrap();
    let ns = unique_namespace("oci");
    let mut config = kube_target(&ns, false);
    config.cache_dir = tmp.path().join("cache");
    config.helm.plain_http_registries = vec![host.clone()];
    let oci = format!("oci://{host}/charts");
    let release = |version: &str| {
        helm_release(
            "cw",
            &ns,
            &oci,
            YACE,
            version,
            "values: {fullnameOverride: cloudwatch}\n",
        )
    };
    let files = |version: &str| {
        vec![
            ("manifests/ns.yaml", ns_yaml(&ns)),
            ("releases/cloudwatch.yaml", release(version)),
        ]
    };
    let client = admin().await;
    let mut last = None;
    let at = commit_files(&repo, &files("0.47.0"));
    gate_and_apply_ok(&client, &mirror, at, &config, &mut last).await;
    let live = Api::<Deployment>::namespaced(client.clone(), &ns)
        .get("cloudwatch")
        .await
        .unwrap();
    assert_eq!(
        live.metadata.labels.unwrap()["helm.sh/chart"],
        "prometheus-yet-another-cloudwatch-exporter-0.47.0"
    );
    let cached: Vec<_> = std::fs::read_dir(config.cache_dir.join("charts/sha256"))
        .unwrap()
        .collect();
    assert_eq!(cached.len(), 1, "kept by its digest");

    drop(registry);
    assert!(
        gate(&mirror, at, &config).is_ok(),
        "the cached chart renders with the registry down"
    );
    let missing = commit_files(&repo, &files("0.48.0"));
    let problems = gate(&mirror, missing, &config).unwrap_err();
    assert!(
        problems
            .iter()
            .any(|p| p.starts_with("releases/cloudwatch.yaml")
                && p.contains(&format!(
                    "cannot fetch oci://{host}/charts/prometheus-yet-another-cloudwatch-exporter"
                ))),
        "{problems:?}"
    );
}

/// A private chart repository (HTTP basic auth): refused without the
/// credentials ferry's config gives, fetched with them, and the password,
/// read from its file, appears in no problem.
#[test]
fn a_private_oci_registry_is_pulled_from_with_the_credentials_of_ferrys_config() {
    let tmp = tempfile::tempdir().unwrap();
    let password = "oci-hunter2";
    let registry = oci_registry_with(tmp.path(), Some(("ci", password)));
    let host = format!("127.0.0.1:{}", registry.port);
    let helm = |args: &[&str], stdin: &str| {
        use std::io::Write;
        let mut child = std::process::Command::new(helm_binary())
            .args(args)
            .env("HELM_CONFIG_HOME", tmp.path().join("helm"))
            .env("HELM_CACHE_HOME", tmp.path().join("helm"))
            .env("HELM_DATA_HOME", tmp.path().join("helm"))
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(stdin.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "helm {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    helm(
        &[
            "registry",
            "login",
            &host,
            "--plain-http",
            "--username",
            "ci",
            "--password-stdin",
        ],
        password,
    );
    let archive = shared_charts().join(format!("{YACE}-0.47.0.tgz"));
    helm(
        &[
            "push",
            archive.to_str().unwrap(),
            &format!("oci://{host}/charts"),
            "--plain-http",
        ],
        "",
    );

    let mirror = tmp.path().join("platform.git");
    let repo = Repository::init_bare(&mirror).unwrap();
    let mut config = kube_target("private-oci", false);
    config.cache_dir = tmp.path().join("cache");
    config.helm.plain_http_registries = vec![host.clone()];
    let oci = format!("oci://{host}/charts");
    let at = commit_files(
        &repo,
        &[
            ("manifests/ns.yaml", ns_yaml("private-oci")),
            (
                "releases/cloudwatch.yaml",
                helm_release("cw", "private-oci", &oci, YACE, "0.47.0", ""),
            ),
        ],
    );
    let refused = |config: &KubernetesTargetConfig, why: &str| {
        let problems = gate(&mirror, at, config).unwrap_err();
        assert!(
            problems
                .iter()
                .any(|p| p.starts_with("releases/cloudwatch.yaml")
                    && p.contains(&format!("cannot fetch oci://{host}/charts/{YACE}"))
                    && p.contains(why)),
            "{problems:?}"
        );
        assert!(
            !problems
                .iter()
                .any(|p| p.contains(password) || p.contains("not-it"))
        );
    };
    refused(&config, "basic credential not found");

    let password_file = tmp.path().join("oci-password");
    std::fs::write(&password_file, "not-it\n").unwrap();
    config.helm.repositories = vec![ferry::config::ChartRepositoryLogin {
        url: oci.clone(),
        username: "ci".into(),
        password_file: password_file.clone(),
    }];
    refused(&config, "401");

    std::fs::write(&password_file, format!("{password}\n")).unwrap();
    let manifests = gate(&mirror, at, &config).unwrap();
    assert!(manifests.iter().any(|m| m.id.kind == "Deployment"));
    let cached = std::fs::read_dir(config.cache_dir.join("charts/sha256"))
        .unwrap()
        .count();
    assert_eq!(cached, 1);
}

#[test]
fn a_private_chart_repository_is_fetched_with_the_credentials_of_ferrys_config() {
    let password = "chart-hunter2";
    let World {
        tmp,
        server: _server,
        url,
        mirror,
        repo,
        mut config,
    } = world_with("private", |_| {}, Some(("ci", password)));
    let at = commit_files(
        &repo,
        &[
            ("manifests/ns.yaml", ns_yaml("private")),
            (
                "releases/cloudwatch.yaml",
                helm_release("cw", "private", &url, YACE, "0.47.0", ""),
            ),
        ],
    );
    let problems = gate(&mirror, at, &config).unwrap_err();
    assert!(
        problems
            .iter()
            .any(|p| p.contains(&format!("cannot fetch {url}/index.yaml: HTTP 401"))),
        "{problems:?}"
    );
    let password_file = tmp.path().join("chart-password");
    std::fs::write(&password_file, format!("{password}\n")).unwrap();
    config.helm.repositories = vec![ferry::config::ChartRepositoryLogin {
        url: url.clone(),
        username: "ci".into(),
        password_file: password_file.clone(),
    }];
    let manifests = gate(&mirror, at, &config).unwrap();
    assert!(manifests.iter().any(|m| m.id.kind == "Deployment"));

    // A wrong password: refused, and never shown.
    std::fs::write(&password_file, "not-it\n").unwrap();
    std::fs::remove_dir_all(&config.cache_dir).unwrap();
    let problems = gate(&mirror, at, &config).unwrap_err();
    assert!(
        problems.iter().any(|p| p.contains("HTTP 401")),
        "{problems:?}"
    );
    assert!(
        !problems
            .iter()
            .any(|p| p.contains("not-it") || p.contains(password))
    );
}
