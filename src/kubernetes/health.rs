//! Health after apply, in the spirit of kstatus: an object is Current when
//! its controller has observed the applied generation and reports the
//! desired state; Failed when it reports it cannot get there; otherwise
//! InProgress until the timeout. Custom resources are read by the
//! conventions kstatus defines for any kind (`observedGeneration`, the
//! `Ready`/`Available`/`Stalled`/`Reconciling` conditions); one that gives
//! nothing to read is Unknown, treated as current, and says so.
//!
//! Everything here is pure: the live object, and what `evidence` found
//! about it (events, its pods), come in as values.

use serde::Serialize;
use serde_json::Value;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", content = "reason", rename_all = "lowercase")]
pub enum Health {
    Current,
    /// Nothing to read health from (a custom resource without conditions):
    /// counted as healthy, with the reason shown.
    Unknown(String),
    InProgress(String),
    Failed(String),
}

impl Health {
    pub fn is_final(&self) -> bool {
        !matches!(self, Health::InProgress(_))
    }

    /// Counts as healthy for the verdict.
    pub fn is_healthy(&self) -> bool {
        matches!(self, Health::Current | Health::Unknown(_))
    }
}

/// What the cluster said about an object besides its status: the newest
/// event since the apply began, and the first problem among its pods.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Evidence {
    pub event: Option<Event>,
    pub pod_problem: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub warning: bool,
    pub reason: String,
    pub message: String,
}

/// Groups Kubernetes itself serves. Any other group is a custom resource,
/// read by the generic conventions.
const BUILT_IN_GROUPS: &[&str] = &[
    "",
    "apps",
    "batch",
    "autoscaling",
    "policy",
    "admissionregistration.k8s.io",
    "apiextensions.k8s.io",
    "apiregistration.k8s.io",
    "authentication.k8s.io",
    "authorization.k8s.io",
    "certificates.k8s.io",
    "coordination.k8s.io",
    "discovery.k8s.io",
    "events.k8s.io",
    "flowcontrol.apiserver.k8s.io",
    "internal.apiserver.k8s.io",
    "networking.k8s.io",
    "node.k8s.io",
    "rbac.authorization.k8s.io",
    "resource.k8s.io",
    "scheduling.k8s.io",
    "storage.k8s.io",
    "storagemigration.k8s.io",
];

pub fn is_custom(group: &str) -> bool {
    !BUILT_IN_GROUPS.contains(&group)
}

/// True for kinds whose health is read after apply; every other built-in
/// kind is current as soon as it is applied.
pub fn is_watched(group: &str, kind: &str) -> bool {
    is_custom(group)
        || runs_pods(group, kind)
        || matches!(
            (group, kind),
            ("", "PersistentVolumeClaim" | "Pod")
                | ("apiextensions.k8s.io", "CustomResourceDefinition")
        )
}

/// True for kinds whose pods are worth reading when they are not there yet.
pub fn runs_pods(group: &str, kind: &str) -> bool {
    matches!(
        (group, kind),
        (
            "apps",
            "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet"
        ) | ("batch", "Job")
    )
}

fn int(v: &Value, path: &[&str]) -> Option<i64> {
    path.iter()
        .try_fold(v, |v, k| v.get(*k))
        .and_then(Value::as_i64)
}

fn text<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    path.iter()
        .try_fold(v, |v, k| v.get(*k))
        .and_then(Value::as_str)
}

fn condition<'a>(object: &'a Value, kind: &str) -> Option<&'a Value> {
    object
        .get("status")?
        .get("conditions")?
        .as_array()?
        .iter()
        .find(|c| c.get("type").and_then(Value::as_str) == Some(kind))
}

fn status_is(c: Option<&Value>, want: &str) -> bool {
    c.and_then(|c| c.get("status")).and_then(Value::as_str) == Some(want)
}

fn is_true(c: Option<&Value>) -> bool {
    status_is(c, "True")
}

/// A condition's message, else its reason, else `fallback`.
fn said(c: &Value, fallback: &str) -> String {
    let get = |k| c.get(k).and_then(Value::as_str).filter(|s| !s.is_empty());
    get("message")
        .or_else(|| get("reason"))
        .unwrap_or(fallback)
        .to_string()
}

/// Assesses one live object. `has_status` says whether its kind declares a
/// status subresource (read for custom resources only: one that has it but
/// no status yet has not been seen by its controller).
pub fn assess(group: &str, kind: &str, object: &Value, has_status: bool) -> Health {
    let generation = int(object, &["metadata", "generation"]).unwrap_or(0);
    let observed = int(object, &["status", "observedGeneration"]);
    let stale = || {
        Health::InProgress(format!(
            "controller has not observed generation {generation} yet"
        ))
    };
    let workload_stale = observed.unwrap_or(-1) < generation;
    match (group, kind) {
        ("apps", "Deployment") => {
            if workload_stale {
                return stale();
            }
            if let Some(c) = condition(object, "Progressing")
                && c.get("reason").and_then(Value::as_str) == Some("ProgressDeadlineExceeded")
            {
                return Health::Failed(said(c, "progress deadline exceeded"));
            }
            if let Some(c) = condition(object, "ReplicaFailure").filter(|c| is_true(Some(c))) {
                return Health::Failed(said(c, "cannot create pods"));
            }
            let h = replicas_ready(object, "updatedReplicas", "availableReplicas");
            let total = int(object, &["status", "replicas"]).unwrap_or(0);
            let updated = int(object, &["status", "updatedReplicas"]).unwrap_or(0);
            if h == Health::Current && total > updated {
                return Health::InProgress(format!(
                    "{} old replica(s) pending termination",
                    total - updated
                ));
            }
            h
        }
        ("apps", "ReplicaSet") => {
            if workload_stale {
                return stale();
            }
            if let Some(c) = condition(object, "ReplicaFailure").filter(|c| is_true(Some(c))) {
                return Health::Failed(said(c, "cannot create pods"));
            }
            replicas_ready(object, "replicas", "availableReplicas")
        }
        ("apps", "StatefulSet") => {
            if workload_stale {
                return stale();
            }
            statefulset(object)
        }
        ("apps", "DaemonSet") => {
            if workload_stale {
                return stale();
            }
            let want = int(object, &["status", "desiredNumberScheduled"]).unwrap_or(0);
            let available = int(object, &["status", "numberAvailable"])
                .or_else(|| int(object, &["status", "numberReady"]))
                .unwrap_or(0);
            let updated = int(object, &["status", "updatedNumberScheduled"]).unwrap_or(0);
            if available >= want && updated >= want {
                Health::Current
            } else {
                Health::InProgress(format!(
                    "{available}/{want} pods available, {updated} updated"
                ))
            }
        }
        ("batch", "Job") => {
            if is_true(condition(object, "Complete")) {
                Health::Current
            } else if let Some(c) = condition(object, "Failed").filter(|c| is_true(Some(c))) {
                let reason = c.get("reason").and_then(Value::as_str).unwrap_or("Failed");
                Health::Failed(format!("{reason}: {}", said(c, "job failed")))
            } else if object.pointer("/spec/suspend") == Some(&Value::Bool(true)) {
                Health::Current
            } else {
                let active = int(object, &["status", "active"]).unwrap_or(0);
                Health::InProgress(format!("job has not completed ({active} active)"))
            }
        }
        ("", "PersistentVolumeClaim") => match text(object, &["status", "phase"]) {
            Some("Bound") => Health::Current,
            Some("Lost") => Health::Failed("its volume is lost".into()),
            phase => Health::InProgress(phase.unwrap_or("Pending").to_string()),
        },
        ("", "Pod") => match text(object, &["status", "phase"]) {
            Some("Succeeded") => Health::Current,
            Some("Failed") => Health::Failed(
                text(object, &["status", "message"])
                    .unwrap_or("pod failed")
                    .to_string(),
            ),
            _ if is_true(condition(object, "Ready")) => Health::Current,
            phase => Health::InProgress(format!("{} and not ready", phase.unwrap_or("Pending"))),
        },
        ("apiextensions.k8s.io", "CustomResourceDefinition") => {
            if let Some(c) =
                condition(object, "NamesAccepted").filter(|c| status_is(Some(c), "False"))
            {
                Health::Failed(said(c, "names not accepted"))
            } else if is_true(condition(object, "Established")) {
                Health::Current
            } else {
                Health::InProgress("not Established yet".into())
            }
        }
        _ if is_custom(group) => custom(object, generation, observed, has_status),
        _ => Health::Current,
    }
}

fn statefulset(object: &Value) -> Health {
    let want = int(object, &["spec", "replicas"]).unwrap_or(1);
    let ready = int(object, &["status", "readyReplicas"]).unwrap_or(0);
    let updated = int(object, &["status", "updatedReplicas"]).unwrap_or(0);
    if ready < want {
        return Health::InProgress(format!("{ready}/{want} replicas ready, {updated} updated"));
    }
    if text(object, &["spec", "updateStrategy", "type"]) == Some("OnDelete") {
        return Health::Current;
    }
    // With a partition, only the ordinals at or above it are updated: the
    // rollout is done when those are.
    let partition = int(
        object,
        &["spec", "updateStrategy", "rollingUpdate", "partition"],
    )
    .unwrap_or(0);
    if partition > 0 {
        let due = (want - partition).max(0);
        return if updated >= due {
            Health::Current
        } else {
            Health::InProgress(format!(
                "{updated}/{due} replicas above partition {partition} updated"
            ))
        };
    }
    let current = text(object, &["status", "currentRevision"]);
    let update = text(object, &["status", "updateRevision"]);
    if updated < want || (update.is_some() && current != update) {
        return Health::InProgress(format!(
            "{updated}/{want} replicas on revision {}",
            update.unwrap_or("?")
        ));
    }
    Health::Current
}

/// The generic conventions, for any custom resource.
fn custom(object: &Value, generation: i64, observed: Option<i64>, has_status: bool) -> Health {
    if let Some(observed) = observed
        && observed < generation
    {
        return Health::InProgress(format!(
            "controller has not observed generation {generation} yet"
        ));
    }
    if let Some(c) = condition(object, "Stalled").filter(|c| is_true(Some(c))) {
        return Health::Failed(said(c, "stalled"));
    }
    if let Some(c) = condition(object, "Reconciling").filter(|c| is_true(Some(c))) {
        return Health::InProgress(said(c, "reconciling"));
    }
    for kind in ["Ready", "Available"] {
        if let Some(c) = condition(object, kind) {
            return match c.get("status").and_then(Value::as_str) {
                Some("True") => Health::Current,
                _ => Health::InProgress(format!("{kind}: {}", said(c, "not yet"))),
            };
        }
    }
    let status_empty = object
        .get("status")
        .and_then(Value::as_object)
        .is_none_or(|s| s.is_empty());
    if has_status && status_empty {
        return Health::InProgress("no status yet: its controller has not reported".into());
    }
    Health::Unknown("no Ready, Available, Stalled or Reconciling condition to read".into())
}

fn replicas_ready(object: &Value, updated_key: &str, ready_key: &str) -> Health {
    let want = int(object, &["spec", "replicas"]).unwrap_or(1);
    let updated = int(object, &["status", updated_key]).unwrap_or(0);
    let ready = int(object, &["status", ready_key]).unwrap_or(0);
    if updated >= want && ready >= want {
        Health::Current
    } else {
        Health::InProgress(format!("{ready}/{want} replicas ready, {updated} updated"))
    }
}

/// What keeps one pod from running and being ready, as its scheduler or
/// kubelet put it: unschedulable, a container waiting (image pull, crash
/// loop, missing config), a failed phase, or a failing readiness check.
pub fn pod_problem(pod: &Value) -> Option<String> {
    let name = text(pod, &["metadata", "name"]).unwrap_or("?");
    if pod.pointer("/metadata/deletionTimestamp").is_some() {
        return None;
    }
    if let Some(c) = condition(pod, "PodScheduled").filter(|c| status_is(Some(c), "False")) {
        return Some(format!(
            "pod {name} is not scheduled: {}",
            said(c, "Unschedulable")
        ));
    }
    match text(pod, &["status", "phase"]) {
        Some("Succeeded") => return None,
        Some("Failed") => {
            let why = terminated(pod)
                .or_else(|| text(pod, &["status", "message"]).map(str::to_string))
                .unwrap_or_else(|| "failed".into());
            return Some(format!("pod {name} failed: {why}"));
        }
        _ => {}
    }
    let statuses = pod
        .pointer("/status/containerStatuses")
        .and_then(Value::as_array);
    for s in statuses.into_iter().flatten() {
        if let Some(w) = s.pointer("/state/waiting") {
            let reason = w.get("reason").and_then(Value::as_str).unwrap_or("");
            if !reason.is_empty() && reason != "ContainerCreating" && reason != "PodInitializing" {
                let msg = w.get("message").and_then(Value::as_str).unwrap_or("");
                return Some(format!("pod {name}: {reason} {msg}").trim_end().to_string());
            }
        }
    }
    if text(pod, &["status", "phase"]) == Some("Running")
        && status_is(condition(pod, "Ready"), "False")
    {
        let c = condition(pod, "Ready")?;
        return Some(format!(
            "pod {name} is running but not ready ({})",
            said(c, "not ready")
        ));
    }
    None
}

fn terminated(pod: &Value) -> Option<String> {
    let statuses = pod.pointer("/status/containerStatuses")?.as_array()?;
    statuses.iter().find_map(|s| {
        let t = s.pointer("/state/terminated")?;
        let code = t.get("exitCode").and_then(Value::as_i64).unwrap_or(0);
        (code != 0).then(|| {
            let container = s.get("name").and_then(Value::as_str).unwrap_or("?");
            let reason = t.get("reason").and_then(Value::as_str).unwrap_or("Error");
            format!("container {container} exited with code {code} ({reason})")
        })
    })
}

/// Adds what the evidence says to an assessment still in progress. A
/// controller that cannot create pods at all (`FailedCreate`: refused by
/// admission such as Pod Security, or by a quota) will not get there by
/// waiting, so that ends the wait with the admission's own message.
pub fn refine(health: Health, evidence: &Evidence) -> Health {
    let Health::InProgress(reason) = health else {
        return health;
    };
    if let Some(e) = &evidence.event
        && e.warning
        && e.reason == "FailedCreate"
    {
        return Health::Failed(format!("{}: {}", e.reason, e.message));
    }
    let mut reason = reason;
    if let Some(p) = &evidence.pod_problem {
        reason = format!("{reason}; {p}");
    }
    if let Some(e) = &evidence.event {
        reason = format!("{reason}; {}: {}", e.reason, e.message);
    }
    Health::InProgress(reason)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn deployment_states() {
        let mut d = json!({"metadata": {"generation": 2}, "spec": {"replicas": 3}, "status": {"observedGeneration": 1}});
        assert!(matches!(
            assess("apps", "Deployment", &d, true),
            Health::InProgress(_)
        ));
        d["status"] = json!({"observedGeneration": 2, "replicas": 3, "updatedReplicas": 3, "availableReplicas": 1});
        assert_eq!(
            assess("apps", "Deployment", &d, true),
            Health::InProgress("1/3 replicas ready, 3 updated".into())
        );
        d["status"]["availableReplicas"] = json!(3);
        assert_eq!(assess("apps", "Deployment", &d, true), Health::Current);
        d["status"]["replicas"] = json!(4);
        assert_eq!(
            assess("apps", "Deployment", &d, true),
            Health::InProgress("1 old replica(s) pending termination".into())
        );
        d["status"]["conditions"] = json!([{"type": "ReplicaFailure", "status": "True", "reason": "FailedCreate", "message": "forbidden"}]);
        assert_eq!(
            assess("apps", "Deployment", &d, true),
            Health::Failed("forbidden".into())
        );
        d["status"]["conditions"] = json!([{"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded", "message": "stuck"}]);
        assert_eq!(
            assess("apps", "Deployment", &d, true),
            Health::Failed("stuck".into())
        );
    }

    #[test]
    fn statefulset_partition_and_revisions() {
        let mut s = json!({"metadata": {"generation": 1}, "spec": {"replicas": 3,
            "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"partition": 2}}},
            "status": {"observedGeneration": 1, "readyReplicas": 3, "updatedReplicas": 1,
                       "currentRevision": "a", "updateRevision": "b"}});
        assert_eq!(assess("apps", "StatefulSet", &s, true), Health::Current);
        s["status"]["updatedReplicas"] = json!(0);
        assert!(!assess("apps", "StatefulSet", &s, true).is_final());
        s["spec"]["updateStrategy"]["rollingUpdate"]["partition"] = json!(0);
        s["status"]["updatedReplicas"] = json!(3);
        assert_eq!(
            assess("apps", "StatefulSet", &s, true),
            Health::InProgress("3/3 replicas on revision b".into())
        );
        s["status"]["currentRevision"] = json!("b");
        assert_eq!(assess("apps", "StatefulSet", &s, true), Health::Current);
    }

    #[test]
    fn jobs_claims_crds_and_the_rest() {
        let done = json!({"status": {"conditions": [{"type": "Complete", "status": "True"}]}});
        assert_eq!(assess("batch", "Job", &done, true), Health::Current);
        let failed = json!({"status": {"conditions": [{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded", "message": "Job has reached the specified backoff limit"}]}});
        assert_eq!(
            assess("batch", "Job", &failed, true),
            Health::Failed(
                "BackoffLimitExceeded: Job has reached the specified backoff limit".into()
            )
        );
        let pvc = json!({"status": {"phase": "Pending"}});
        assert!(!assess("", "PersistentVolumeClaim", &pvc, true).is_final());
        assert!(
            !assess(
                "apiextensions.k8s.io",
                "CustomResourceDefinition",
                &json!({}),
                true
            )
            .is_final()
        );
        assert_eq!(assess("", "ConfigMap", &json!({}), false), Health::Current);
        assert!(is_watched("example.com", "Widget"));
        assert!(!is_watched("", "ConfigMap"));
    }

    #[test]
    fn custom_resources_by_the_generic_conventions() {
        let cr = |status: Value| json!({"metadata": {"generation": 2}, "status": status});
        let a = |v: &Value, has_status| assess("example.com", "Widget", v, has_status);
        assert!(
            matches!(a(&json!({"metadata": {"generation": 1}}), true), Health::InProgress(r) if r.contains("no status yet"))
        );
        assert!(matches!(
            a(&json!({"metadata": {"generation": 1}}), false),
            Health::Unknown(_)
        ));
        assert!(matches!(
            a(&cr(json!({"phase": "Whatever"})), true),
            Health::Unknown(_)
        ));
        assert!(!a(&cr(json!({"observedGeneration": 1, "conditions": [{"type": "Ready", "status": "True"}]})), true).is_final());
        assert_eq!(
            a(
                &cr(
                    json!({"observedGeneration": 2, "conditions": [{"type": "Ready", "status": "True"}]})
                ),
                true
            ),
            Health::Current
        );
        assert_eq!(
            a(
                &cr(
                    json!({"conditions": [{"type": "Ready", "status": "False", "message": "waiting for the bucket"}]})
                ),
                true
            ),
            Health::InProgress("Ready: waiting for the bucket".into())
        );
        assert_eq!(
            a(
                &cr(
                    json!({"conditions": [{"type": "Ready", "status": "True"}, {"type": "Stalled", "status": "True", "message": "bad spec"}]})
                ),
                true
            ),
            Health::Failed("bad spec".into())
        );
        assert!(!a(&cr(json!({"conditions": [{"type": "Ready", "status": "True"}, {"type": "Reconciling", "status": "True"}]})), true).is_final());
        assert_eq!(
            a(
                &cr(json!({"conditions": [{"type": "Available", "status": "True"}]})),
                true
            ),
            Health::Current
        );
        assert!(Health::Unknown(String::new()).is_healthy());
    }

    #[test]
    fn pod_problems_and_refinement() {
        let pending = json!({"metadata": {"name": "p"}, "status": {"phase": "Pending", "conditions": [
            {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": "0/2 nodes are available: 2 Insufficient cpu."}]}});
        assert_eq!(
            pod_problem(&pending).as_deref(),
            Some("pod p is not scheduled: 0/2 nodes are available: 2 Insufficient cpu.")
        );
        let waiting = json!({"metadata": {"name": "p"}, "status": {"phase": "Pending", "containerStatuses": [
            {"name": "c", "state": {"waiting": {"reason": "CreateContainerConfigError", "message": "secret \"db\" not found"}}}]}});
        assert_eq!(
            pod_problem(&waiting).as_deref(),
            Some("pod p: CreateContainerConfigError secret \"db\" not found")
        );
        let ok = json!({"metadata": {"name": "p"}, "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}});
        assert_eq!(pod_problem(&ok), None);

        let refused = Evidence {
            event: Some(Event {
                warning: true,
                reason: "FailedCreate".into(),
                message: "violates PodSecurity".into(),
            }),
            pod_problem: None,
        };
        assert_eq!(
            refine(Health::InProgress("0/1".into()), &refused),
            Health::Failed("FailedCreate: violates PodSecurity".into())
        );
        assert_eq!(refine(Health::Current, &refused), Health::Current);
        let waiting = Evidence {
            event: None,
            pod_problem: Some("pod p is not scheduled".into()),
        };
        assert_eq!(
            refine(Health::InProgress("0/1".into()), &waiting),
            Health::InProgress("0/1; pod p is not scheduled".into())
        );
    }
}
