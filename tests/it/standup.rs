//! The platform stands up: on a cluster of its own (controllers, scheduler,
//! kwok nodes made from `platform.yaml`'s nodegroups with EKS's allocatable
//! capacity, EKS's own kube-system pods), the prerequisites Terraform
//! applies (rendered from the same template, by Terraform itself), ferry's
//! `deploy/` as Terraform's bootstrap applies it, the values of the
//! template's Secrets in Secrets Manager (a moto of its own), and then
//! `ferry run` with ferry's own service-account token and config applying
//! the whole platform template, its Secrets filled from there. It passes
//! only when ferry reports the commit healthy and the cluster agrees: every
//! workload available, every claim bound (the DAGs claims to one EFS
//! access point), nothing Pending, nothing refused, every Secret and
//! ConfigMap a pod names present; when the hub, recreated after another
//! pod took its room on the one node its EBS volume allows, preempts that
//! pod and comes back; and when a training task pod and a
//! notebook, built as Airflow's executor and KubeSpawner build them, land
//! on the nodegroup they belong to.
//!
//! What kwok cannot show: images are never pulled and containers never
//! run, so a wrong command or a missing Python package is not caught here
//! (the component tests run those); mounts are not checked by a kubelet,
//! which is why this test checks every reference itself.
#![cfg(feature = "aws")]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::support::cluster::{self, create_nodes, nodes_from_platform, spawn_provisioners};
use crate::support::*;
use ferry::kubernetes::client;
use k8s_openapi::api::core::v1::{Event, PersistentVolume, PersistentVolumeClaim, Pod};
use k8s_openapi::kube_aggregator::pkg::apis::apiregistration::v1::APIService;
use kube::Api;
use kube::api::{ListParams, PostParams};
use serde_json::{Value, json};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn kubectl(kubeconfig: &Path, args: &[&str], stdin: Option<&str>) -> String {
    let mut cmd = Command::new("kubectl");
    cmd.arg("--kubeconfig").arg(kubeconfig).args(args);
    piped(&mut cmd, stdin.unwrap_or(""))
}

/// `kubectl apply --server-side` as `manager` of what `from` names (`-f -`
/// reads `stdin`).
fn apply(kubeconfig: &Path, manager: &str, from: &[&str], stdin: Option<&str>) {
    let mut args = vec!["apply", "--server-side", "--field-manager", manager];
    args.extend_from_slice(from);
    kubectl(kubeconfig, &args, stdin);
}

/// The objects terraform/cluster.tf applies, rendered by Terraform's own
/// `templatefile` from the one template, with made-up AWS ids.
fn render_prerequisites(efs: &str, access_point: &str) -> String {
    render_terraform_template(
        "cluster-prerequisites.yaml.tftpl",
        &format!(
            "name = \"ml-platform\", kms_key_arn = \"arn:aws:kms:eu-west-1:123456789012:key/test\", \
             efs_file_system_id = \"{efs}\", efs_access_point_id = \"{access_point}\""
        ),
    )
}

/// EKS's own pods with the requests its default add-ons ask for (CoreDNS
/// two replicas, and on every node kube-proxy and the VPC CNI's aws-node):
/// capacity the platform does not get.
fn eks_system_pods() -> String {
    let on_every_node = |name: &str, cpu: &str| {
        format!(
            "---\napiVersion: apps/v1\nkind: DaemonSet\nmetadata: {{name: {name}, namespace: kube-system}}\nspec:\n  \
             selector: {{matchLabels: {{k8s-app: {name}}}}}\n  template:\n    metadata: {{labels: {{k8s-app: {name}}}}}\n    \
             spec:\n      tolerations: [{{operator: Exists}}]\n      \
             containers: [{{name: {name}, image: {name}, resources: {{requests: {{cpu: {cpu}}}}}}}]\n"
        )
    };
    format!(
        "{COREDNS}{}{}",
        on_every_node("kube-proxy", "100m"),
        on_every_node("aws-node", "25m")
    )
}

const COREDNS: &str = "\
apiVersion: apps/v1
kind: Deployment
metadata: {name: coredns, namespace: kube-system}
spec:
  replicas: 2
  selector: {matchLabels: {k8s-app: kube-dns}}
  template:
    metadata: {labels: {k8s-app: kube-dns}}
    spec:
      tolerations: [{key: CriticalAddonsOnly, operator: Exists}]
      containers:
        - name: coredns
          image: coredns
          resources: {requests: {cpu: 100m, memory: 70Mi}, limits: {memory: 170Mi}}
";

/// The template's Secrets that take their values from Secrets Manager, as
/// (namespace, name, secret id, the members each takes), each taking at
/// least the keys its pods read: what Terraform must write there (its
/// structure tests check it does).
fn secrets_the_template_fills() -> Vec<(String, String, String, BTreeSet<String>)> {
    fn key_refs(v: &Value, out: &mut BTreeSet<(String, String)>) {
        match v {
            Value::Object(o) => {
                if let (Some(name), Some(key)) = (
                    o.get("secretKeyRef").and_then(|r| r["name"].as_str()),
                    o.get("secretKeyRef").and_then(|r| r["key"].as_str()),
                ) {
                    out.insert((name.to_string(), key.to_string()));
                }
                o.values().for_each(|v| key_refs(v, out));
            }
            Value::Array(a) => a.iter().for_each(|v| key_refs(v, out)),
            // A pod template kept in a ConfigMap (Airflow's task pods).
            Value::String(s) if s.contains("secretKeyRef") => {
                key_refs(&serde_yaml_ng::from_str(s).unwrap(), out)
            }
            _ => {}
        }
    }
    let docs: Vec<Value> = template_files()
        .into_iter()
        .filter(|(path, _)| path.starts_with("manifests/") && path.ends_with(".yaml"))
        .flat_map(|(_, text)| {
            serde_yaml_ng::Deserializer::from_str(&text)
                .map(|d| <Value as serde::Deserialize>::deserialize(d).unwrap())
                .collect::<Vec<_>>()
        })
        .filter(|d| !d.is_null())
        .collect();
    let mut refs = BTreeSet::new();
    for d in &docs {
        let mut found = BTreeSet::new();
        key_refs(d, &mut found);
        let ns = d["metadata"]["namespace"].as_str().unwrap_or("airflow");
        refs.extend(found.into_iter().map(|(n, k)| (ns.to_string(), n, k)));
    }
    docs.iter()
        .filter(|d| d["kind"] == "Secret")
        .filter_map(|d| {
            let id = d["metadata"]["annotations"]["ferry.dev/secrets-manager"].as_str()?;
            let ns = d["metadata"]["namespace"].as_str().unwrap().to_string();
            let name = d["metadata"]["name"].as_str().unwrap().to_string();
            let read: BTreeSet<String> = refs
                .iter()
                .filter(|(n, s, _)| *n == ns && *s == name)
                .map(|(_, _, k)| k.clone())
                .collect();
            let taken: BTreeSet<String> =
                d["metadata"]["annotations"]["ferry.dev/secrets-manager-keys"]
                    .as_str()
                    .unwrap_or_default()
                    .split(',')
                    .map(|k| k.trim().to_string())
                    .filter(|k| !k.is_empty())
                    .collect();
            assert!(
                read.is_subset(&taken),
                "{ns}/{name}: pods read {read:?}, its annotation takes {taken:?}"
            );
            Some((ns, name, id.to_string(), taken))
        })
        .collect()
}

fn secret_yaml(ns: &str, name: &str, keys: &[String]) -> String {
    let data: BTreeMap<&str, &str> = keys.iter().map(|k| (k.as_str(), "dGVzdA==")).collect();
    serde_json::to_string(&json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": name, "namespace": ns}, "data": data,
    }))
    .unwrap()
}

/// A kubeconfig for the cluster of `admin` that authenticates with `token`.
fn token_kubeconfig(admin: &Path, token: &str, out: &Path) {
    let admin: Value = serde_yaml_ng::from_str(&std::fs::read_to_string(admin).unwrap()).unwrap();
    let cluster = &admin["clusters"][0]["cluster"];
    let config = json!({
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "c", "cluster": cluster}],
        "users": [{"name": "ferry", "user": {"token": token}}],
        "contexts": [{"name": "ferry", "context": {"cluster": "c", "user": "ferry"}}],
        "current-context": "ferry",
    });
    std::fs::write(out, serde_json::to_string(&config).unwrap()).unwrap();
}

/// deploy/base's ferry.yaml, made to run here: the platform source only
/// (a local repo, polled every 2 s), its Kubernetes target exactly as shipped plus this
/// cluster's kubeconfig and a health timeout, the leader Lease as shipped.
fn ferry_config(
    tmp: &Path,
    platform: &Path,
    port: u16,
    kubeconfig: &Path,
    secrets_manager: &str,
) -> PathBuf {
    let deploy: Value = serde_yaml_ng::from_str(
        &std::fs::read_to_string(root().join("deploy/base/config.yaml")).unwrap(),
    )
    .unwrap();
    let mut config: Value =
        serde_yaml_ng::from_str(deploy["data"]["ferry.yaml"].as_str().unwrap()).unwrap();
    config["cache_dir"] = json!(tmp.join("cache"));
    config["server"]["listen"] = json!(format!("127.0.0.1:{port}"));
    // The admin endpoint as shipped, on a port and token of this test's.
    std::fs::write(tmp.join("admin-token"), "standup-admin-token\n").unwrap();
    config["server"]["admin"]["listen"] = json!(format!("127.0.0.1:{}", free_port()));
    config["server"]["admin"]["token_file"] = json!(tmp.join("admin-token"));
    config["log"] = json!({"format": "text", "level": "info"});
    config.as_object_mut().unwrap().remove("github");
    config["leader_election"]["namespace"] = json!("ferry");
    config["leader_election"]["kubeconfig"] = json!(kubeconfig);
    config["sources"] = json!([{"name": "platform", "url": platform, "interval": "2s"}]);
    let mut kubernetes = config["targets"]["kubernetes"].clone();
    kubernetes["kubeconfig"] = json!(kubeconfig);
    kubernetes["health_timeout"] = json!("180s");
    // The shipped Secrets Manager settings, at the test's moto.
    kubernetes["secrets_manager"]["endpoint_url"] = json!(secrets_manager);
    config["targets"] = json!({"kubernetes": kubernetes});
    let path = tmp.join("ferry.yaml");
    std::fs::write(&path, serde_yaml_ng::to_string(&config).unwrap()).unwrap();
    path
}

/// The template's files (not its .github/): (path in the repo, content).
fn template_files() -> Vec<(String, String)> {
    let template = root().join("platform-repo-template");
    let mut files = Vec::new();
    let mut dirs = vec![template.clone()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.file_name().is_some_and(|n| n == ".github") {
                continue;
            }
            if path.is_dir() {
                dirs.push(path);
            } else {
                let rel = path
                    .strip_prefix(&template)
                    .unwrap()
                    .to_string_lossy()
                    .to_string();
                files.push((rel, std::fs::read_to_string(&path).unwrap()));
            }
        }
    }
    files
}

fn commit(repo: &Repo, files: &[(String, String)], message: &str) -> String {
    let refs: Vec<(&str, Option<&str>)> = files
        .iter()
        .map(|(p, c)| (p.as_str(), Some(c.as_str())))
        .collect();
    repo.commit(&refs, message)
}

fn tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// Waits until ferry reports `head` applied and healthy, and returns its
/// status; fails with what was not healthy if ferry reports a failure.
async fn wait_applied(
    ferry: &mut Owned,
    addr: std::net::SocketAddr,
    head: &str,
    log: &Path,
) -> Value {
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        if let Ok(Some(exit)) = ferry.try_wait() {
            panic!(
                "ferry exited ({exit}) before applying {head}; log tail:\n{}",
                tail(log)
            );
        }
        // A process that is exiting refuses connections a moment before
        // try_wait sees it go: ask again rather than lose its log.
        if std::net::TcpStream::connect(addr).is_err() {
            assert!(
                Instant::now() < deadline,
                "ferry stopped listening on {addr}; log tail:\n{}",
                tail(log)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        }
        let (_, body) = http_get(addr, "/api/v1/status/platform");
        let v: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
        if v["kubernetes"]["applied_revision"] == head {
            return v;
        }
        if v["last_error"]["commit"] == head || Instant::now() > deadline {
            let failed: Vec<String> = v["kubernetes"]["last_apply"]["objects"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|o| {
                    o["status"] == "failed"
                        || o["health"]["state"]
                            .as_str()
                            .is_some_and(|s| s != "current" && s != "unknown")
                })
                .map(|o| {
                    format!(
                        "{}/{} {}: {} {}",
                        o["id"]["namespace"],
                        o["id"]["kind"],
                        o["id"]["name"],
                        o["error"],
                        o["health"]
                    )
                })
                .collect();
            panic!(
                "ferry did not report {head} healthy:\n{}\n\nnot healthy:\n{}\n\nlog tail:\n{}",
                v["last_error"],
                failed.join("\n"),
                tail(log)
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The template's manifests with every Deployment and StatefulSet given a
/// new pod-template annotation: the second commit of day two, after which
/// every workload rolls (surging where its strategy does).
fn rolled(files: &[(String, String)]) -> Vec<(String, String)> {
    files
        .iter()
        .filter(|(path, _)| path.starts_with("manifests/"))
        .map(|(path, text)| {
            let mut docs = Vec::new();
            for doc in serde_yaml_ng::Deserializer::from_str(text) {
                let mut v: Value = serde::Deserialize::deserialize(doc).unwrap();
                if v.is_null() {
                    continue;
                }
                if matches!(v["kind"].as_str(), Some("Deployment" | "StatefulSet")) {
                    v["spec"]["template"]["metadata"]["annotations"]["ferry.dev/rollout"] =
                        json!("2");
                }
                docs.push(serde_yaml_ng::to_string(&v).unwrap());
            }
            (path.clone(), docs.join("---\n"))
        })
        .collect()
}

fn pod_names(pod: &Value) -> (BTreeSet<String>, BTreeSet<String>) {
    let mut secrets = BTreeSet::new();
    let mut config_maps = BTreeSet::new();
    let spec = &pod["spec"];
    for v in spec["volumes"].as_array().into_iter().flatten() {
        if let Some(s) = v["secret"]["secretName"].as_str() {
            secrets.insert(s.to_string());
        }
        if let Some(c) = v["configMap"]["name"].as_str() {
            config_maps.insert(c.to_string());
        }
    }
    let containers = spec["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .chain(spec["initContainers"].as_array().into_iter().flatten());
    for c in containers {
        for e in c["env"].as_array().into_iter().flatten() {
            if let Some(s) = e["valueFrom"]["secretKeyRef"]["name"].as_str() {
                secrets.insert(format!(
                    "{s}#{}",
                    e["valueFrom"]["secretKeyRef"]["key"].as_str().unwrap_or("")
                ));
            }
            if let Some(s) = e["valueFrom"]["configMapKeyRef"]["name"].as_str() {
                config_maps.insert(s.to_string());
            }
        }
        for e in c["envFrom"].as_array().into_iter().flatten() {
            if let Some(s) = e["secretRef"]["name"].as_str() {
                secrets.insert(s.to_string());
            }
            if let Some(s) = e["configMapRef"]["name"].as_str() {
                config_maps.insert(s.to_string());
            }
        }
    }
    (secrets, config_maps)
}

/// What a real kubelet would refuse that kwok does not check: a Secret, a
/// Secret key or a ConfigMap a pod names that does not exist.
async fn missing_references(client: &kube::Client, pods: &[Pod]) -> Vec<String> {
    let mut missing = Vec::new();
    for pod in pods {
        let ns = pod.metadata.namespace.clone().unwrap_or_default();
        let name = pod.metadata.name.clone().unwrap_or_default();
        let (secrets, config_maps) = pod_names(&serde_json::to_value(pod).unwrap());
        let secret_api: Api<k8s_openapi::api::core::v1::Secret> =
            Api::namespaced(client.clone(), &ns);
        for s in secrets {
            let (secret, key) = s
                .split_once('#')
                .map_or((s.as_str(), None), |(n, k)| (n, Some(k)));
            match secret_api.get_opt(secret).await.unwrap() {
                None => missing.push(format!("{ns}/{name}: Secret {secret}")),
                Some(found) => {
                    if let Some(key) = key
                        && !found.data.unwrap_or_default().contains_key(key)
                    {
                        missing.push(format!("{ns}/{name}: key {key} of Secret {secret}"));
                    }
                }
            }
        }
        let cm_api: Api<k8s_openapi::api::core::v1::ConfigMap> =
            Api::namespaced(client.clone(), &ns);
        for c in config_maps {
            if cm_api.get_opt(&c).await.unwrap().is_none() {
                missing.push(format!("{ns}/{name}: ConfigMap {c}"));
            }
        }
    }
    missing
}

/// A pod for one task as Airflow's KubernetesExecutor makes it: the pod
/// template the platform ships (the live ConfigMap), named and placed in
/// the executor's namespace.
async fn task_pod(client: &kube::Client) -> Pod {
    let cms: Api<k8s_openapi::api::core::v1::ConfigMap> =
        Api::namespaced(client.clone(), "airflow");
    let template = cms.get("airflow-pod-template").await.unwrap();
    let text = template.data.unwrap()["pod_template.yaml"].clone();
    let mut pod: Value = serde_yaml_ng::from_str(&text).unwrap();
    pod["metadata"]["name"] = json!("train-diagnosis-classifier-1");
    pod["metadata"]["namespace"] = json!("airflow");
    pod["metadata"]["labels"] = json!({"kubernetes_executor": "True", "dag_id": "train"});
    serde_json::from_value(pod).unwrap()
}

/// A notebook pod and its home claim as KubeSpawner makes them from the
/// hub's jupyterhub_config.py (the live ConfigMap), run with a stand-in
/// `c` that records what it sets.
async fn notebook(client: &kube::Client) -> (Pod, PersistentVolumeClaim) {
    let cms: Api<k8s_openapi::api::core::v1::ConfigMap> =
        Api::namespaced(client.clone(), "jupyterhub");
    let config = cms.get("hub-config").await.unwrap().data.unwrap()["jupyterhub_config.py"].clone();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("jupyterhub_config.py");
    std::fs::write(&file, config).unwrap();
    let recorder = format!(
        "{HUB_CONFIG_RECORDER}print(json.dumps({{k: vars(v) for k, v in c.__dict__.items()}}, default=str))\n"
    );
    // With the hub's environment: its settings ConfigMap (envFrom).
    let settings = cms.get("hub-settings").await.unwrap().data.unwrap();
    let out = run(Command::new("python3")
        .arg("-c")
        .arg(&recorder)
        .arg(&file)
        .envs(&settings));
    let c: Value = serde_json::from_str(&out).unwrap();
    let k = &c["KubeSpawner"];
    let user = "alice";
    let fill = |v: &Value| -> Value {
        serde_json::from_str(
            &serde_json::to_string(v)
                .unwrap()
                .replace("{username}", user),
        )
        .unwrap()
    };
    let quantity = |v: &Value| match v {
        Value::Number(n) => json!(n.to_string()),
        other => other.clone(),
    };
    let pod = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": format!("jupyter-{user}"), "namespace": "jupyterhub",
                     "labels": {"component": "singleuser-server", "hub.jupyter.org/username": user}},
        "spec": {
            "serviceAccountName": k["service_account"],
            "automountServiceAccountToken": k["automount_service_account_token"],
            "securityContext": {"fsGroup": k["fs_gid"], "runAsUser": k["uid"]},
            "nodeSelector": k.get("node_selector").cloned().unwrap_or(json!({})),
            "tolerations": k.get("tolerations").cloned().unwrap_or(json!([])),
            "containers": [{
                "name": "notebook", "image": k["image"],
                "resources": {
                    "requests": {"cpu": quantity(&k["cpu_guarantee"]), "memory": k["mem_guarantee"]},
                    "limits": {"cpu": quantity(&k["cpu_limit"]), "memory": k["mem_limit"]},
                },
                "securityContext": k["container_security_context"],
                "volumeMounts": fill(&k["volume_mounts"]),
            }],
            "volumes": fill(&k["volumes"]),
        },
    });
    let claim = json!({
        "apiVersion": "v1", "kind": "PersistentVolumeClaim",
        "metadata": {"name": fill(&k["pvc_name_template"]), "namespace": "jupyterhub"},
        "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": k["storage_class"],
                 "resources": {"requests": {"storage": k["storage_capacity"]}}},
    });
    (
        serde_json::from_value(pod).unwrap(),
        serde_json::from_value(claim).unwrap(),
    )
}

/// The EKS nodegroup a live node belongs to, by the label EKS gives it.
async fn nodegroup_of(client: &kube::Client, node: &str) -> Option<String> {
    let node = Api::<k8s_openapi::api::core::v1::Node>::all(client.clone())
        .get(node)
        .await
        .ok()?;
    node.metadata
        .labels?
        .get("eks.amazonaws.com/nodegroup")
        .cloned()
}

fn node_of(pod: &Pod) -> Option<String> {
    pod.spec.as_ref().and_then(|s| s.node_name.clone())
}

/// Millicores of a CPU quantity ("250m", "2").
fn millicores(q: &str) -> i64 {
    match q.strip_suffix('m') {
        Some(m) => m.parse().unwrap(),
        None => (q.parse::<f64>().unwrap() * 1000.0) as i64,
    }
}

/// The CPU (millicores) no pod on `node` has asked for.
async fn free_cpu(client: &kube::Client, node: &str) -> i64 {
    let allocatable = Api::<k8s_openapi::api::core::v1::Node>::all(client.clone())
        .get(node)
        .await
        .unwrap()
        .status
        .and_then(|s| s.allocatable)
        .and_then(|a| a.get("cpu").map(|q| millicores(&q.0)))
        .unwrap();
    let requested: i64 = Api::<Pod>::all(client.clone())
        .list(&ListParams::default().fields(&format!("spec.nodeName={node}")))
        .await
        .unwrap()
        .items
        .iter()
        .filter(|p| {
            !matches!(
                p.status.as_ref().and_then(|s| s.phase.as_deref()),
                Some("Succeeded" | "Failed")
            )
        })
        .flat_map(|p| p.spec.iter().flat_map(|s| &s.containers))
        .filter_map(|c| c.resources.as_ref()?.requests.as_ref()?.get("cpu"))
        .map(|q| millicores(&q.0))
        .sum();
    allocatable - requested
}

/// The hub's pods, polled until `done` holds of them (or 60 s pass).
async fn hub_pods(client: &kube::Client, done: impl Fn(&[Pod]) -> bool) -> Vec<Pod> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let pods = Api::<Pod>::namespaced(client.clone(), "jupyterhub")
            .list(&ListParams::default().labels("app.kubernetes.io/component=hub"))
            .await
            .unwrap()
            .items;
        if done(&pods) || Instant::now() > deadline {
            return pods;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn one_ready(pods: &[Pod]) -> bool {
    matches!(pods, [pod] if is_running_and_ready(pod))
}

/// Scales the hub's Deployment as an admin would (ferry is stopped).
async fn scale_hub(client: &kube::Client, replicas: i32) {
    Api::<k8s_openapi::api::apps::v1::Deployment>::namespaced(client.clone(), "jupyterhub")
        .patch(
            "hub",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(json!({"spec": {"replicas": replicas}})),
        )
        .await
        .unwrap();
}

/// A pod of the default priority pinned to `node` that asks for `cpu`
/// millicores: whatever took the room a recreated pod left there (a
/// rollout's surged pods do).
fn squatter(node: &str, cpu: i64) -> Pod {
    serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "squatter", "namespace": "default"},
        "spec": {
            "nodeSelector": {"kubernetes.io/hostname": node},
            "containers": [{"name": "squatter", "image": "squatter",
                "resources": {"requests": {"cpu": format!("{cpu}m")}}}],
        },
    }))
    .unwrap()
}

/// Running and ready; or, for a Job's pod (Airflow's database migration),
/// done: Succeeded.
fn is_running_and_ready(pod: &Pod) -> bool {
    let status = pod.status.as_ref();
    let phase = status.and_then(|s| s.phase.as_deref());
    let of_job = pod
        .metadata
        .owner_references
        .iter()
        .flatten()
        .any(|o| o.kind == "Job");
    if of_job {
        return phase == Some("Succeeded");
    }
    phase == Some("Running")
        && status
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_platform_template_and_ferry_stand_up_on_the_nodes_the_platform_declares() {
    let started = Instant::now();
    let tmp = tempfile::tempdir().unwrap();
    // A cluster of its own, so capacity is what the platform declares and
    // nothing else runs there.
    let cluster = PrivateControlPlane::start(true);
    let admin_kc = cluster.admin();
    let admin = client::connect(Some(&admin_kc)).await.unwrap();

    // The machines: every nodegroup at its desired size; EKS's own pods.
    let platform_yaml =
        std::fs::read_to_string(root().join("platform-repo-template/platform.yaml")).unwrap();
    let nodes = nodes_from_platform(&platform_yaml, |g| {
        g.scaling.desired.unwrap_or(g.scaling.min).max(0) as usize
    });
    create_nodes(&admin, &nodes).await;
    apply(
        &admin_kc,
        "test-setup",
        &["-f", "-"],
        Some(&eks_system_pods()),
    );
    let _provisioners = AbortOnDrop(spawn_provisioners(admin.clone()));

    // What Terraform applies before ferry, from the same template.
    let (efs, access_point) = ("fs-0123456789abcdef0", "fsap-0123456789abcdef0");
    let prerequisites = render_prerequisites(efs, access_point);
    apply(&admin_kc, "terraform", &["-f", "-"], Some(&prerequisites));
    apply(
        &admin_kc,
        "terraform",
        &["-f", "-"],
        Some(&render_cluster_addons()),
    );

    // What terraform/secrets.tf writes (and step 5 of its README puts):
    // every key the pods read of every Secret the template fills.
    let filled = secrets_the_template_fills();
    assert!(
        filled.len() >= 9 && filled.iter().all(|(_, _, _, keys)| !keys.is_empty()),
        "the template's Secrets and the members they take: {filled:?}"
    );
    let moto = crate::support::moto::private();
    let sm = crate::secrets::secrets_client(&moto.url).await;
    // RDS names its master secret itself: the template names it by ARN,
    // which a team replaces with Terraform's output (as this test does).
    let mut replace = Vec::new();
    for (_, _, id, keys) in &filled {
        // And one member no Secret takes, as RDS's secret has (engine, ...).
        let value: BTreeMap<&str, String> = keys
            .iter()
            .map(|k| (k.as_str(), format!("standup-{k}")))
            .chain([("not-taken", "x".to_string())])
            .collect();
        let name = if id.starts_with("arn:") {
            "rds-db-standup"
        } else {
            id
        };
        let made = sm
            .create_secret()
            .name(name)
            .secret_string(serde_json::to_string(&value).unwrap())
            .send()
            .await
            .unwrap();
        if id.starts_with("arn:") {
            replace.push((id.clone(), made.arn().unwrap().to_string()));
        }
    }
    // ferry's own Secret is the one made by hand (terraform/README, step 5).
    let ferry_keys = [
        "token".to_string(),
        "webhook-secret".to_string(),
        "airflow-password".to_string(),
        "admin-token".to_string(),
    ];
    let secrets = format!(
        "---\napiVersion: v1\nkind: Namespace\nmetadata: {{name: ferry}}\n---\n{}\n",
        secret_yaml("ferry", "ferry-github", &ferry_keys)
    );
    apply(&admin_kc, "test-setup", &["-f", "-"], Some(&secrets));

    // ferry's bootstrap, as terraform/bootstrap.tf runs it: deploy/base on
    // a cluster without the Prometheus operator (deploy/monitoring waits).
    bootstrap_ferry(&admin_kc, "ghcr.io/ferry-dev/ferry:0.1.0");

    // ferry runs with its own ServiceAccount's token: the rights deploy/
    // gives it are the rights it has.
    let token = kubectl(
        &admin_kc,
        &[
            "create",
            "token",
            "ferry",
            "-n",
            "ferry",
            "--duration",
            "1h",
        ],
        None,
    );
    let ferry_kc = tmp.path().join("ferry.kubeconfig");
    token_kubeconfig(&admin_kc, token.trim(), &ferry_kc);
    let repo = Repo::new(tmp.path(), "platform");
    let files: Vec<(String, String)> = template_files()
        .into_iter()
        .map(|(path, mut text)| {
            for (from, to) in &replace {
                text = text.replace(from.as_str(), to);
            }
            (path, text)
        })
        .collect();
    let head = commit(&repo, &files, "the platform template");
    let port = free_port();
    let config = ferry_config(tmp.path(), &repo.bare, port, &ferry_kc, &moto.url);
    let log = tmp.path().join("ferry.log");
    let mut ferry = spawn_ferry(
        &config,
        &log,
        port,
        &[
            ("POD_NAME", Path::new("ferry-standup")),
            ("AWS_ACCESS_KEY_ID", Path::new("testing")),
            ("AWS_SECRET_ACCESS_KEY", Path::new("testing")),
        ],
    );
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let status = wait_applied(&mut ferry, addr, &head, &log).await;
    // Every Secret holds what Secrets Manager holds, of the members it takes.
    for (ns, name, _, keys) in &filled {
        let live = Api::<k8s_openapi::api::core::v1::Secret>::namespaced(admin.clone(), ns)
            .get(name)
            .await
            .unwrap();
        let data: BTreeMap<String, String> = live
            .data
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, String::from_utf8(v.0).unwrap()))
            .collect();
        let expected: BTreeMap<String, String> = keys
            .iter()
            .map(|k| (k.clone(), format!("standup-{k}")))
            .collect();
        assert_eq!(data, expected, "Secret {ns}/{name}");
    }
    let applied = status["kubernetes"]["last_apply"]["objects"]
        .as_array()
        .unwrap()
        .len();
    let stood_up = started.elapsed();

    // metrics-server's API is registered and, with no real server behind
    // simulated pods, unavailable (as while metrics-server restarts):
    // ferry stood the platform up regardless.
    // (Asking the group itself would only be answered 503 after the
    // client's minutes of retries.)
    let metrics = Api::<APIService>::all(admin.clone())
        .get("v1beta1.metrics.k8s.io")
        .await
        .unwrap();
    let available = metrics
        .status
        .and_then(|s| s.conditions)
        .unwrap_or_default()
        .into_iter()
        .find(|c| c.type_ == "Available");
    assert!(
        available.as_ref().is_some_and(|c| c.status == "False"),
        "metrics.k8s.io is not marked unavailable: {available:?}"
    );

    // The cluster agrees: nothing Pending, nothing refused, every claim
    // bound, the DAGs claims on ferry's access point. Every problem is
    // listed, not only the first.
    let mut problems = Vec::new();
    let pods: Vec<Pod> = Api::<Pod>::all(admin.clone())
        .list(&ListParams::default())
        .await
        .unwrap()
        .items;
    for p in pods.iter().filter(|p| !is_running_and_ready(p)) {
        let why = ferry::kubernetes::health::pod_problem(&serde_json::to_value(p).unwrap());
        problems.push(format!(
            "pod {}/{} not running and ready: {}",
            p.metadata.namespace.as_deref().unwrap_or(""),
            p.metadata.name.as_deref().unwrap_or(""),
            why.unwrap_or_else(|| format!("{:?}", p.status.as_ref().and_then(|s| s.phase.clone())))
        ));
    }
    let events: Vec<Event> = Api::<Event>::all(admin.clone())
        .list(&ListParams::default())
        .await
        .unwrap()
        .items;
    for e in events
        .iter()
        .filter(|e| e.reason.as_deref() == Some("FailedCreate"))
    {
        problems.push(format!(
            "refused: {}",
            e.message.clone().unwrap_or_default()
        ));
    }
    problems.extend(
        missing_references(&admin, &pods)
            .await
            .into_iter()
            .map(|m| format!("a kubelet would not start {m}")),
    );
    let claims = Api::<PersistentVolumeClaim>::all(admin.clone())
        .list(&ListParams::default())
        .await
        .unwrap()
        .items;
    let volumes: BTreeMap<String, PersistentVolume> = Api::<PersistentVolume>::all(admin.clone())
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|v| (v.metadata.name.clone().unwrap(), v))
        .collect();
    let mut dags_handles = BTreeMap::new();
    for claim in &claims {
        let id = format!(
            "{}/{}",
            claim.metadata.namespace.as_deref().unwrap(),
            claim.metadata.name.as_deref().unwrap()
        );
        let phase = claim.status.as_ref().and_then(|s| s.phase.clone());
        if phase.as_deref() != Some("Bound") {
            problems.push(format!("claim {id} is {phase:?}, not Bound"));
        }
        if id.ends_with("-dags") {
            let handle = claim
                .spec
                .as_ref()
                .and_then(|s| s.volume_name.as_ref())
                .and_then(|v| volumes.get(v))
                .and_then(|pv| {
                    pv.spec
                        .as_ref()?
                        .csi
                        .as_ref()
                        .map(|c| c.volume_handle.clone())
                });
            dags_handles.insert(id, handle);
        }
    }
    let want_dags: BTreeSet<&str> = [
        "airflow/airflow-dags",
        "jupyterhub/jupyterhub-dags",
        "ferry/ferry-dags",
    ]
    .into();
    if dags_handles
        .keys()
        .map(String::as_str)
        .collect::<BTreeSet<_>>()
        != want_dags
    {
        problems.push(format!(
            "DAGs claims are {:?}, want {want_dags:?}",
            dags_handles.keys()
        ));
    }
    let ours = format!("{efs}::{access_point}");
    for (id, handle) in &dags_handles {
        if handle.as_deref() != Some(ours.as_str()) {
            problems.push(format!(
                "claim {id} mounts {handle:?}, not the access point ferry publishes into ({ours})"
            ));
        }
    }
    assert!(
        problems.is_empty(),
        "the platform did not stand up:\n{}",
        problems.join("\n")
    );

    // Day two: a commit that rolls every workload at once (an image bump
    // would) must roll out too: surged pods need room on the nodes.
    let head2 = commit(&repo, &rolled(&files), "roll every workload");
    wait_applied(&mut ferry, addr, &head2, &log).await;

    // ferry holds its Lease, taken with the service-account token.
    let leases: Api<k8s_openapi::api::coordination::v1::Lease> =
        Api::namespaced(admin.clone(), "ferry");
    let lease = leases.get("ferry").await.unwrap();
    assert_eq!(
        lease.spec.unwrap().holder_identity.as_deref(),
        Some("ferry-standup")
    );
    let ferry_pod = pods
        .iter()
        .find(|p| p.metadata.namespace.as_deref() == Some("ferry"))
        .expect("ferry's pod");
    assert!(is_running_and_ready(ferry_pod));
    stop_ferry(ferry);

    // The hub's claim is an EBS volume, so the hub fits on one node only.
    // When it is recreated (Recreate strategy: the old pod goes first) and
    // something else takes the room it left there, it must win that room
    // back by priority, or it stays Pending for good: what the day-two
    // rollout hit on a loaded machine, made certain here.
    let running = hub_pods(&admin, one_ready).await;
    let hub_node = node_of(&running[0]).expect("the hub runs");
    scale_hub(&admin, 0).await;
    assert!(hub_pods(&admin, <[Pod]>::is_empty).await.is_empty());
    let room = free_cpu(&admin, &hub_node).await;
    Api::<Pod>::namespaced(admin.clone(), "default")
        .create(&PostParams::default(), &squatter(&hub_node, room))
        .await
        .unwrap();
    scale_hub(&admin, 1).await;
    let back = hub_pods(&admin, one_ready).await;
    let squatter_left = Api::<Pod>::namespaced(admin.clone(), "default")
        .get_opt("squatter")
        .await
        .unwrap();
    assert!(
        one_ready(&back) && node_of(&back[0]).as_deref() == Some(hub_node.as_str()),
        "the hub did not come back on {hub_node} ({room}m taken by another pod): {:?}",
        back.iter()
            .map(|p| ferry::kubernetes::health::pod_problem(&serde_json::to_value(p).unwrap()))
            .collect::<Vec<_>>()
    );
    assert!(
        squatter_left.is_none_or(|p| p.metadata.deletion_timestamp.is_some()),
        "the hub is back but the pod that took its room was not preempted"
    );

    // Headroom: a training task and a notebook schedule on the nodegroup
    // they belong to, never on the system nodes the platform runs on.
    let task = task_pod(&admin).await;
    let (notebook_pod, home) = notebook(&admin).await;
    Api::<Pod>::namespaced(admin.clone(), "airflow")
        .create(&PostParams::default(), &task)
        .await
        .unwrap();
    Api::<PersistentVolumeClaim>::namespaced(admin.clone(), "jupyterhub")
        .create(&PostParams::default(), &home)
        .await
        .unwrap();
    Api::<Pod>::namespaced(admin.clone(), "jupyterhub")
        .create(&PostParams::default(), &notebook_pod)
        .await
        .unwrap();
    // With cpu-training at its desired size the pods wait for a node of
    // their own (the cluster autoscaler adds one; here the test does, from
    // the same nodegroup), and none lands on a system node meanwhile.
    let training = {
        let platform = ferry::desired::platform::parse("platform.yaml", &platform_yaml).unwrap();
        platform
            .eks
            .unwrap()
            .nodegroups
            .into_iter()
            .find(|g| g.name == "cpu-training")
            .unwrap()
    };
    let extra = cluster::node(
        &training,
        "eu-west-1",
        training
            .scaling
            .desired
            .unwrap_or(training.scaling.min)
            .max(0) as usize,
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    for (ns, name) in [
        ("airflow", "train-diagnosis-classifier-1"),
        ("jupyterhub", "jupyter-alice"),
    ] {
        let pod = Api::<Pod>::namespaced(admin.clone(), ns)
            .get(name)
            .await
            .unwrap();
        if let Some(node) = node_of(&pod) {
            assert_eq!(
                nodegroup_of(&admin, &node).await.as_deref(),
                Some("cpu-training"),
                "{ns}/{name} landed on {node}"
            );
        }
    }
    create_nodes(&admin, &[extra]).await;
    for (ns, name) in [
        ("airflow", "train-diagnosis-classifier-1"),
        ("jupyterhub", "jupyter-alice"),
    ] {
        let api = Api::<Pod>::namespaced(admin.clone(), ns);
        let deadline = Instant::now() + Duration::from_secs(60);
        let pod = loop {
            let pod = api.get(name).await.unwrap();
            if is_running_and_ready(&pod) {
                break pod;
            }
            assert!(
                Instant::now() < deadline,
                "{ns}/{name} did not start: {:?}",
                pod.status
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        };
        let node = node_of(&pod).unwrap();
        assert_eq!(
            nodegroup_of(&admin, &node).await.as_deref(),
            Some("cpu-training"),
            "{ns}/{name} runs on {node}"
        );
    }
    let missing = missing_references(
        &admin,
        &[
            Api::<Pod>::namespaced(admin.clone(), "airflow")
                .get("train-diagnosis-classifier-1")
                .await
                .unwrap(),
            Api::<Pod>::namespaced(admin.clone(), "jupyterhub")
                .get("jupyter-alice")
                .await
                .unwrap(),
        ],
    )
    .await;
    assert!(missing.is_empty(), "{missing:?}");
    eprintln!(
        "stand-up: {applied} objects applied and healthy in {:.1} s (cluster start included); whole test {:.1} s",
        stood_up.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
}

/// Aborts a spawned task when dropped (the provisioners end with the test).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
