//! Field-level diff between a live object and what a server-side apply
//! would make of it.
//!
//! Both sides come from the API server (the live GET and the dry-run apply),
//! so defaults are filled the same way on both and a diff shows only what
//! the revision changes. Fields the server owns (resourceVersion,
//! managedFields, status, ...) are dropped first. Secret values are compared
//! but never shown.

use serde::Serialize;
use serde_json::Value;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Op {
    Added,
    Changed,
    Removed,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FieldChange {
    /// Dotted path, list indexes in brackets: `spec.template.spec.containers[0].image`.
    pub path: String,
    pub op: Op,
    pub before: Option<Value>,
    pub after: Option<Value>,
}

pub const REDACTED: &str = "<redacted>";

/// Removes what the server owns or stamps, so only declared state compares.
pub fn normalize(object: &Value) -> Value {
    let mut object = object.clone();
    if let Some(map) = object.as_object_mut() {
        map.remove("status");
        if let Some(meta) = map.get_mut("metadata").and_then(|m| m.as_object_mut()) {
            for key in [
                "managedFields",
                "resourceVersion",
                "generation",
                "uid",
                "creationTimestamp",
                "selfLink",
            ] {
                meta.remove(key);
            }
            if let Some(annotations) = meta.get_mut("annotations").and_then(|a| a.as_object_mut()) {
                annotations.remove("kubectl.kubernetes.io/last-applied-configuration");
                if annotations.is_empty() {
                    meta.remove("annotations");
                }
            }
        }
    }
    object
}

/// Changes from `before` to `after` (both normalized by the caller or not;
/// this normalizes again, cheaply). `secret` masks `data`/`stringData` values.
pub fn diff(before: &Value, after: &Value, secret: bool) -> Vec<FieldChange> {
    let mut changes = Vec::new();
    walk(
        "",
        Some(&normalize(before)),
        Some(&normalize(after)),
        &mut changes,
    );
    if secret {
        for change in &mut changes {
            if is_secret_value(&change.path) {
                change.before = change
                    .before
                    .as_ref()
                    .map(|_| Value::String(REDACTED.into()));
                change.after = change
                    .after
                    .as_ref()
                    .map(|_| Value::String(REDACTED.into()));
            }
        }
    }
    changes
}

fn is_secret_value(path: &str) -> bool {
    path == "data"
        || path == "stringData"
        || path.starts_with("data.")
        || path.starts_with("stringData.")
}

fn join(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_string()
    } else if key.contains('.') || key.contains('/') {
        // Keys such as `app.kubernetes.io/name` stay readable and unambiguous.
        format!("{prefix}[{key:?}]")
    } else {
        format!("{prefix}.{key}")
    }
}

fn walk(path: &str, before: Option<&Value>, after: Option<&Value>, out: &mut Vec<FieldChange>) {
    match (before, after) {
        (Some(Value::Object(b)), Some(Value::Object(a))) => {
            let mut keys: Vec<&String> = b.keys().chain(a.keys()).collect();
            keys.sort();
            keys.dedup();
            for key in keys {
                walk(
                    &join(path, key),
                    b.get(key.as_str()),
                    a.get(key.as_str()),
                    out,
                );
            }
        }
        (Some(Value::Array(b)), Some(Value::Array(a))) if b.len() == a.len() => {
            for (i, (bv, av)) in b.iter().zip(a).enumerate() {
                walk(&format!("{path}[{i}]"), Some(bv), Some(av), out);
            }
        }
        (Some(b), Some(a)) if b == a => {}
        (Some(b), Some(a)) => out.push(FieldChange {
            path: path.to_string(),
            op: Op::Changed,
            before: Some(b.clone()),
            after: Some(a.clone()),
        }),
        (None, Some(a)) => out.push(FieldChange {
            path: path.to_string(),
            op: Op::Added,
            before: None,
            after: Some(a.clone()),
        }),
        (Some(b), None) => out.push(FieldChange {
            path: path.to_string(),
            op: Op::Removed,
            before: Some(b.clone()),
            after: None,
        }),
        (None, None) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn server_fields_are_ignored_and_leaf_changes_reported() {
        let live = json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "resourceVersion": "7", "uid": "u", "managedFields": [{}], "labels": {"app.kubernetes.io/name": "web"}},
            "spec": {"replicas": 2, "template": {"spec": {"containers": [{"name": "c", "image": "web:1"}]}}},
            "status": {"readyReplicas": 2}
        });
        let next = json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "resourceVersion": "8", "labels": {"app.kubernetes.io/name": "web", "tier": "front"}},
            "spec": {"template": {"spec": {"containers": [{"name": "c", "image": "web:2"}]}}}
        });
        let changes = diff(&live, &next, false);
        let summary: Vec<(String, Op)> = changes.iter().map(|c| (c.path.clone(), c.op)).collect();
        assert_eq!(
            summary,
            vec![
                ("metadata.labels.tier".to_string(), Op::Added),
                ("spec.replicas".to_string(), Op::Removed),
                (
                    "spec.template.spec.containers[0].image".to_string(),
                    Op::Changed
                ),
            ]
        );
        assert!(diff(&live, &live, false).is_empty());
    }

    #[test]
    fn secret_values_are_masked_but_changes_still_seen() {
        let before = json!({"kind": "Secret", "data": {"password": "b2xk", "user": "dQ=="}});
        let after = json!({"kind": "Secret", "data": {"password": "bmV3", "user": "dQ=="}, "stringData": {"token": "t0p"}});
        let changes = diff(&before, &after, true);
        assert_eq!(changes.len(), 2);
        let text = serde_json::to_string(&changes).unwrap();
        assert!(
            !text.contains("b2xk") && !text.contains("bmV3") && !text.contains("t0p"),
            "{text}"
        );
        assert_eq!(changes[0].path, "data.password");
        assert_eq!(changes[0].op, Op::Changed);
    }
}
