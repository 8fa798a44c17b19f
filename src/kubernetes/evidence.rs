//! What the cluster says about an object that is not healthy yet, besides
//! its status: the newest event about it since the apply began, and the
//! first problem among its pods (unschedulable, crash looping, refused).
//! Read only while an object is in progress, so a healthy rollout costs
//! no extra requests. Reading is best effort: a forbidden or failed list
//! leaves the evidence empty, never the assessment wrong.

use k8s_openapi::api::core::v1::{Event as CoreEvent, Pod};
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::api::{Api, ListParams};
use serde_json::Value;

use super::health::{self, Event, Evidence};

/// Gathers evidence for the live `object` of `group`/`kind` in `namespace`.
pub async fn gather(
    client: &Client,
    group: &str,
    kind: &str,
    namespace: Option<&str>,
    object: &Value,
    since: Timestamp,
) -> Evidence {
    let Some(ns) = namespace else {
        return Evidence::default();
    };
    let uid = object.pointer("/metadata/uid").and_then(Value::as_str);
    let event = match uid {
        Some(uid) => newest_event(client, ns, uid, since, kind == "PersistentVolumeClaim").await,
        None => None,
    };
    let pod_problem = if health::runs_pods(group, kind) {
        first_pod_problem(client, ns, object).await
    } else {
        None
    };
    Evidence { event, pod_problem }
}

/// The newest event about `uid` since `since`: a Warning when there is
/// one, or (for claims, whose waiting is told in Normal events such as
/// `WaitForFirstConsumer` and `ExternalProvisioning`) any event.
async fn newest_event(
    client: &Client,
    ns: &str,
    uid: &str,
    since: Timestamp,
    normal_too: bool,
) -> Option<Event> {
    let api: Api<CoreEvent> = Api::namespaced(client.clone(), ns);
    let params = ListParams::default().fields(&format!("involvedObject.uid={uid}"));
    let events = api.list(&params).await.ok()?.items;
    let when = |e: &CoreEvent| {
        e.last_timestamp
            .as_ref()
            .map(|t| t.0)
            .or_else(|| e.event_time.as_ref().map(|t| t.0))
            .or_else(|| e.metadata.creation_timestamp.as_ref().map(|t| t.0))
    };
    let recent = || {
        events
            .iter()
            .filter(|e| when(e).is_some_and(|t| t >= since))
    };
    let warning = |e: &CoreEvent| e.type_.as_deref() == Some("Warning");
    let pick = recent()
        .filter(|e| warning(e))
        .max_by_key(|e| when(e))
        .or_else(|| {
            normal_too
                .then(|| recent().max_by_key(|e| when(e)))
                .flatten()
        })?;
    Some(Event {
        warning: warning(pick),
        reason: pick.reason.clone().unwrap_or_default(),
        message: pick.message.clone().unwrap_or_default(),
    })
}

/// The first problem among the pods the workload's selector matches.
async fn first_pod_problem(client: &Client, ns: &str, object: &Value) -> Option<String> {
    let labels = object.pointer("/spec/selector/matchLabels")?.as_object()?;
    if labels.is_empty() {
        return None;
    }
    let selector = labels
        .iter()
        .filter_map(|(k, v)| Some(format!("{k}={}", v.as_str()?)))
        .collect::<Vec<_>>()
        .join(",");
    let api: Api<Pod> = Api::namespaced(client.clone(), ns);
    let pods = api
        .list(&ListParams::default().labels(&selector))
        .await
        .ok()?;
    pods.items.iter().find_map(|p| {
        let value = serde_json::to_value(p).ok()?;
        health::pod_problem(&value)
    })
}
