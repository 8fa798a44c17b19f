//! The test cluster's simulated machines: kwok nodes made from the
//! nodegroups `platform.yaml` declares, with the allocatable CPU, memory
//! and pod count EKS gives those instance types, and the labels and taints
//! EKS puts on them; plus the two CSI provisioners EKS runs (EBS for `gp3`,
//! EFS access points for `efs-sc`), played by a loop that does what their
//! external-provisioner sidecars do: create a PersistentVolume for each
//! claim waiting on them. The PV binder of the real controller-manager
//! then binds it, and the scheduler places pods by the PV's zone.

use std::collections::BTreeMap;
use std::time::Duration;

use ferry::desired::platform::{self, Nodegroup};
use k8s_openapi::api::core::v1::{Node, PersistentVolume, PersistentVolumeClaim};
use k8s_openapi::api::storage::v1::StorageClass;
use kube::Client;
use kube::api::{Api, ListParams, PostParams};
use serde_json::{Value, json};

/// An EC2 instance type as a node: vCPUs, memory (GiB) and the pod limit
/// of an EKS managed nodegroup (`(ENIs × (IPv4 per ENI − 1)) + 2` from
/// amazon-eks-ami's eni-max-pods, capped at 110 below 30 vCPUs).
struct Instance {
    name: &'static str,
    vcpus: u32,
    memory_gib: u32,
    max_pods: u32,
}

const INSTANCES: &[Instance] = &[
    Instance {
        name: "t3.large",
        vcpus: 2,
        memory_gib: 8,
        max_pods: 35,
    },
    Instance {
        name: "m5.large",
        vcpus: 2,
        memory_gib: 8,
        max_pods: 29,
    },
    Instance {
        name: "m6i.large",
        vcpus: 2,
        memory_gib: 8,
        max_pods: 29,
    },
    Instance {
        name: "m6i.xlarge",
        vcpus: 4,
        memory_gib: 16,
        max_pods: 58,
    },
    Instance {
        name: "m6i.2xlarge",
        vcpus: 8,
        memory_gib: 32,
        max_pods: 58,
    },
    Instance {
        name: "c6i.xlarge",
        vcpus: 4,
        memory_gib: 8,
        max_pods: 58,
    },
    Instance {
        name: "c6i.2xlarge",
        vcpus: 8,
        memory_gib: 16,
        max_pods: 58,
    },
    Instance {
        name: "c6i.4xlarge",
        vcpus: 16,
        memory_gib: 32,
        max_pods: 110,
    },
    Instance {
        name: "g5.xlarge",
        vcpus: 4,
        memory_gib: 16,
        max_pods: 58,
    },
];

/// What the kubelet of an EKS AMI node reports. Capacity memory is the
/// kernel's MemTotal, about 5% under the nominal size; the AMI reserves
/// for the kubelet 6% of the first core, 1% of the second, 0.5% of the
/// third and fourth and 0.25% of the rest, and 255 MiB + 11 MiB per pod,
/// and evicts below 100 MiB free.
fn capacity(instance: &Instance) -> (Value, Value) {
    let cores = instance.vcpus;
    let reserved_millicores = 60
        + if cores > 1 { 10 } else { 0 }
        + 5 * cores.saturating_sub(2).min(2)
        + (cores.saturating_sub(4) * 25).div_ceil(10);
    let memory_mib = instance.memory_gib * 1024 * 95 / 100;
    let reserved_mib = 255 + 11 * instance.max_pods + 100;
    let capacity = json!({
        "cpu": cores.to_string(),
        "memory": format!("{memory_mib}Mi"),
        "pods": instance.max_pods.to_string(),
        "ephemeral-storage": "20Gi",
    });
    let allocatable = json!({
        "cpu": format!("{}m", cores * 1000 - reserved_millicores),
        "memory": format!("{}Mi", memory_mib - reserved_mib),
        "pods": instance.max_pods.to_string(),
        "ephemeral-storage": "18Gi",
    });
    (capacity, allocatable)
}

/// EKS's taint effects (`NO_SCHEDULE`) as Kubernetes spells them.
fn effect(eks: &str) -> &'static str {
    match eks {
        "NO_EXECUTE" => "NoExecute",
        "PREFER_NO_SCHEDULE" => "PreferNoSchedule",
        _ => "NoSchedule",
    }
}

/// One simulated node of `group`, number `index`, in one of `region`'s
/// three zones (EKS spreads a nodegroup over its subnets' zones).
pub fn node(group: &Nodegroup, region: &str, index: usize) -> Value {
    let instance_type = group
        .instance_types
        .as_ref()
        .and_then(|t| t.first())
        .map(String::as_str)
        .unwrap_or("m6i.large");
    let instance = INSTANCES
        .iter()
        .find(|i| i.name == instance_type)
        .unwrap_or_else(|| {
            panic!("no capacity known for instance type {instance_type}: add it to INSTANCES")
        });
    let (capacity, allocatable) = capacity(instance);
    let name = format!("{}-{index}", group.name);
    let zone = format!("{region}{}", ['a', 'b', 'c'][index % 3]);
    let mut labels: BTreeMap<String, String> = group.labels.clone().unwrap_or_default();
    for (k, v) in [
        ("eks.amazonaws.com/nodegroup", group.name.as_str()),
        ("eks.amazonaws.com/capacityType", "ON_DEMAND"),
        ("node.kubernetes.io/instance-type", instance_type),
        ("topology.kubernetes.io/region", region),
        ("topology.kubernetes.io/zone", zone.as_str()),
        ("kubernetes.io/os", "linux"),
        ("kubernetes.io/arch", "amd64"),
        ("kubernetes.io/hostname", name.as_str()),
        ("type", "kwok"),
    ] {
        labels.insert(k.into(), v.into());
    }
    let taints: Vec<Value> = group
        .taints
        .iter()
        .flatten()
        .map(|t| json!({"key": t.key, "value": t.value, "effect": effect(&t.effect)}))
        .collect();
    json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": labels, "annotations": {"kwok.x-k8s.io/node": "fake"}},
        "spec": {"taints": taints},
        "status": {"capacity": capacity, "allocatable": allocatable},
    })
}

/// The nodes of every nodegroup in `platform_yaml`, `count(group)` each.
pub fn nodes_from_platform(platform_yaml: &str, count: impl Fn(&Nodegroup) -> usize) -> Vec<Value> {
    let platform = platform::parse("platform.yaml", platform_yaml)
        .unwrap_or_else(|e| panic!("platform.yaml does not parse: {e:?}"));
    let eks = platform
        .eks
        .expect("platform.yaml declares no eks: section");
    let region = eks.cluster.region.as_deref().unwrap_or("eu-west-1");
    eks.nodegroups
        .iter()
        .flat_map(|g| (0..count(g)).map(move |i| node(g, region, i)))
        .collect()
}

/// Creates `nodes` (those that exist already are left alone) and waits
/// until kwok has made each Ready and the node lifecycle controller has
/// lifted the not-ready taint.
pub async fn create_nodes(client: &Client, nodes: &[Value]) {
    let api: Api<Node> = Api::all(client.clone());
    for n in nodes {
        let node: Node = serde_json::from_value(n.clone()).unwrap();
        match api.create(&PostParams::default(), &node).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            Err(e) => panic!("cannot create node: {e}"),
        }
    }
    let names: Vec<String> = nodes
        .iter()
        .map(|n| n["metadata"]["name"].as_str().unwrap().to_string())
        .collect();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let mut waiting = Vec::new();
        for name in &names {
            let node = api.get(name).await.unwrap();
            let ready = node
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
            let tainted = node
                .spec
                .as_ref()
                .and_then(|s| s.taints.as_ref())
                .is_some_and(|t| t.iter().any(|t| t.key.starts_with("node.kubernetes.io/")));
            if !ready || tainted {
                waiting.push(name.clone());
            }
        }
        if waiting.is_empty() {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "nodes not Ready and untainted after 60 s: {waiting:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Nodes for tests that only need somewhere to run pods: two large ones
/// that carry no taint, shared by every test of the binary.
pub async fn general_nodes(client: &Client) {
    static MADE: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();
    MADE.get_or_init(|| general_nodes_on(client)).await;
}

/// The nodes of [`general_nodes`], made on a cluster of a test's own.
pub async fn general_nodes_on(client: &Client) {
    let group: Nodegroup = serde_json::from_value(json!({
        "name": "general",
        "scaling": {"min": 2, "max": 2, "desired": 2},
        "labels": {"ferry.dev/test-pool": "general"},
        "instance_types": ["m6i.2xlarge"],
    }))
    .unwrap();
    let nodes: Vec<Value> = (0..2).map(|i| node(&group, "eu-west-1", i)).collect();
    create_nodes(client, &nodes).await;
}

/// Plays the EBS and EFS CSI drivers' provisioners until dropped: each
/// claim the PV controller hands to one of them (annotation
/// `volume.kubernetes.io/storage-provisioner`) and, for
/// WaitForFirstConsumer classes, whose pod the scheduler has placed
/// (`volume.kubernetes.io/selected-node`) gets a new volume: an EBS volume
/// in that node's zone, or a new EFS access point on the class's file
/// system, as the real drivers make.
pub fn spawn_provisioners(client: Client) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            provision_once(&client).await;
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    })
}

async fn provision_once(client: &Client) {
    let claims: Api<PersistentVolumeClaim> = Api::all(client.clone());
    let Ok(claims) = claims.list(&ListParams::default()).await else {
        return;
    };
    let classes: Api<StorageClass> = Api::all(client.clone());
    let volumes: Api<PersistentVolume> = Api::all(client.clone());
    let nodes: Api<Node> = Api::all(client.clone());
    for claim in claims.items {
        let annotations = claim.metadata.annotations.clone().unwrap_or_default();
        let Some(driver) = annotations.get("volume.kubernetes.io/storage-provisioner") else {
            continue;
        };
        let phase = claim.status.as_ref().and_then(|s| s.phase.as_deref());
        if phase != Some("Pending")
            || claim
                .spec
                .as_ref()
                .and_then(|s| s.volume_name.as_ref())
                .is_some()
        {
            continue;
        }
        let spec = claim.spec.clone().unwrap_or_default();
        let Some(class_name) = spec.storage_class_name.clone() else {
            continue;
        };
        let Ok(class) = classes.get(&class_name).await else {
            continue;
        };
        let params = class.parameters.clone().unwrap_or_default();
        let uid = claim.metadata.uid.clone().unwrap_or_default();
        let (source, affinity) = match driver.as_str() {
            "ebs.csi.aws.com" => {
                let Some(node) = annotations.get("volume.kubernetes.io/selected-node") else {
                    continue;
                };
                let Ok(node) = nodes.get(node).await else {
                    continue;
                };
                let zone = node
                    .metadata
                    .labels
                    .unwrap_or_default()
                    .get("topology.kubernetes.io/zone")
                    .cloned()
                    .unwrap_or_default();
                (
                    json!({"driver": driver, "volumeHandle": format!("vol-{}", &uid[..8.min(uid.len())]), "fsType": "ext4"}),
                    Some(
                        json!({"required": {"nodeSelectorTerms": [{"matchExpressions": [
                        {"key": "topology.kubernetes.io/zone", "operator": "In", "values": [zone]}]}]}}),
                    ),
                )
            }
            "efs.csi.aws.com" => {
                let fs = params.get("fileSystemId").cloned().unwrap_or_default();
                (
                    json!({"driver": driver, "volumeHandle": format!("{fs}::fsap-{}", &uid[..8.min(uid.len())])}),
                    None,
                )
            }
            _ => continue,
        };
        let name = format!("pvc-{uid}");
        let storage = spec
            .resources
            .as_ref()
            .and_then(|r| r.requests.as_ref())
            .and_then(|r| r.get("storage"))
            .map(|q| q.0.clone())
            .unwrap_or_else(|| "1Gi".into());
        let pv = json!({
            "apiVersion": "v1",
            "kind": "PersistentVolume",
            "metadata": {"name": name, "annotations": {"pv.kubernetes.io/provisioned-by": driver}},
            "spec": {
                "capacity": {"storage": storage},
                "accessModes": spec.access_modes.clone().unwrap_or_default(),
                "persistentVolumeReclaimPolicy": class.reclaim_policy.clone().unwrap_or_else(|| "Delete".into()),
                "storageClassName": class_name,
                "csi": source,
                "nodeAffinity": affinity,
                "claimRef": {
                    "apiVersion": "v1", "kind": "PersistentVolumeClaim",
                    "namespace": claim.metadata.namespace, "name": claim.metadata.name, "uid": uid,
                },
            },
        });
        let pv: PersistentVolume = serde_json::from_value(pv).unwrap();
        let _ = volumes.create(&PostParams::default(), &pv).await;
    }
}
