//! Kustomize directories in the manifests tree, built by the pinned
//! kustomize through the same gate, then planned and applied to the real
//! kube-apiserver like plain files.

use crate::kube_apply::{admin, ns_yaml};
use crate::support::*;
use git2::Repository;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;
use kube::api::ListParams;

const BASE: &str = "resources: [deployment.yaml]\n";
const DEPLOYMENT: &str = "\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
spec:
  replicas: 1
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
        - name: web
          image: nginx:1.27
          envFrom: [{configMapRef: {name: web-config}}]
";

fn overlay(ns: &str, greeting: &str, patch: &str) -> String {
    format!(
        "namespace: {ns}\nresources: [../../kustomize/base]\npatches:\n  - path: {patch}\nconfigMapGenerator:\n  - name: web-config\n    literals: [GREETING={greeting}]\n"
    )
}

const REPLICAS: &str =
    "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\nspec:\n  replicas: 3\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_overlay_is_built_with_its_patch_and_its_generated_config_rolls_and_prunes() {
    let tmp = tempfile::tempdir().unwrap();
    let mirror = tmp.path().join("platform.git");
    let repo = Repository::init_bare(&mirror).unwrap();
    let ns = unique_namespace("kustomize");
    let config = kube_target(&ns, false);
    let client = admin().await;
    let mut last = None;
    let files = |greeting: &str, patch: &str| {
        vec![
            ("manifests/ns.yaml", ns_yaml(&ns)),
            // Plain YAML beside the overlay is read as always.
            (
                "manifests/plain.yaml",
                "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: plain\ndata: {k: v}\n"
                    .to_string(),
            ),
            (
                "manifests/web/kustomization.yaml",
                overlay(&ns, greeting, patch),
            ),
            ("manifests/web/replicas.yaml", REPLICAS.to_string()),
            // The base lives outside manifests/, so only the overlay is built.
            ("kustomize/base/kustomization.yaml", BASE.to_string()),
            ("kustomize/base/deployment.yaml", DEPLOYMENT.to_string()),
        ]
    };
    let r1 = commit_files(&repo, &files("hello", "replicas.yaml"));
    let manifests = gate(&mirror, r1, &config).unwrap();
    let web = manifests
        .iter()
        .find(|m| m.id.kind == "Deployment")
        .expect("the overlay's Deployment");
    assert_eq!(web.origin.file, "manifests/web (kustomize build)");
    assert_eq!(web.object["spec"]["replicas"], 3, "the patch is applied");
    gate_and_apply_ok(&client, &mirror, r1, &config, &mut last).await;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    let live = deployments.get("web").await.unwrap();
    assert_eq!(live.spec.replicas, Some(3));
    let configs = |client: kube::Client, ns: String| async move {
        let mut names: Vec<String> = Api::<ConfigMap>::namespaced(client, &ns)
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .filter_map(|c| c.metadata.name)
            .filter(|n| n.starts_with("web-config-") || n == "plain")
            .collect();
        names.sort();
        names
    };
    let before = configs(client.clone(), ns.clone()).await;
    assert_eq!(before.len(), 2, "{before:?}");

    // 2: a new greeting: a new generated ConfigMap (its name is a hash of
    // its content), the Deployment rolls to it, the old one is pruned.
    let r2 = commit_files(&repo, &files("bonjour", "replicas.yaml"));
    gate_and_apply_ok(&client, &mirror, r2, &config, &mut last).await;
    let after = configs(client.clone(), ns.clone()).await;
    assert_eq!(after.len(), 2, "{after:?}");
    assert_ne!(before, after);
    let env_from = deployments
        .get("web")
        .await
        .unwrap()
        .spec
        .template
        .spec
        .unwrap()
        .containers[0]
        .env_from
        .clone()
        .unwrap();
    let referenced = env_from[0].config_map_ref.as_ref().unwrap().name.clone();
    assert!(after.contains(&referenced), "{referenced} in {after:?}");

    // 3: a patch file that is not there: the commit is refused naming the
    // overlay and kustomize's own words, without ferry's work paths.
    let r3 = commit_files(&repo, &files("bonjour", "missing.yaml"));
    let problems = gate(&mirror, r3, &config).unwrap_err();
    assert!(
        problems
            .iter()
            .any(|p| p.starts_with("manifests/web: kustomize build failed")
                && p.contains("missing.yaml")
                && !p.contains("/tmp/")),
        "{problems:?}"
    );
}
