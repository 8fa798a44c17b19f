//! How ferry marks what it owns in a cluster: the field manager of its
//! server-side applies, the label on every object it applies, and the
//! annotation by which a team keeps an object git stopped declaring.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

pub const FIELD_MANAGER: &str = "ferry";
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
pub const MANAGED_BY_VALUE: &str = "ferry";
pub const PRUNE_ANNOTATION: &str = "ferry.dev/prune";
pub const HELM_RESOURCE_POLICY: &str = "helm.sh/resource-policy";

/// Marks an object as ferry's. Plan and apply both send the labelled
/// object, so a plan never shows the label as a change.
pub(crate) fn label_as_ours(object: &mut serde_json::Value) {
    if let Some(meta) = object.get_mut("metadata").and_then(|m| m.as_object_mut()) {
        let labels = meta
            .entry("labels")
            .or_insert_with(|| serde_json::Value::Object(Default::default()));
        if let Some(labels) = labels.as_object_mut() {
            labels.insert(
                MANAGED_BY_LABEL.into(),
                serde_json::Value::String(MANAGED_BY_VALUE.into()),
            );
        }
    }
}

/// Why an inventory entry git no longer declares is kept rather than
/// deleted, judged from its live metadata; None when it may be pruned.
pub(crate) fn kept_because(live: &ObjectMeta) -> Option<String> {
    let annotation = live
        .annotations
        .as_ref()
        .and_then(|a| a.get(PRUNE_ANNOTATION));
    if annotation.map(String::as_str) == Some("disabled") {
        return Some(format!("{PRUNE_ANNOTATION}: disabled"));
    }
    // Helm's own word for the same: a chart's objects that outlive it.
    let helm_keep = live
        .annotations
        .as_ref()
        .and_then(|a| a.get(HELM_RESOURCE_POLICY));
    if helm_keep.map(String::as_str) == Some("keep") {
        return Some(format!("{HELM_RESOURCE_POLICY}: keep"));
    }
    let label = live.labels.as_ref().and_then(|l| l.get(MANAGED_BY_LABEL));
    if label.map(String::as_str) != Some(MANAGED_BY_VALUE) {
        return Some(format!(
            "no longer labelled {MANAGED_BY_LABEL}={MANAGED_BY_VALUE}"
        ));
    }
    None
}
