//! Fields ferry leaves to others: a target's `ignore` rules name objects
//! (kind, name, namespace) and JSON pointers into them whose value another
//! manager decides, such as an HPA's `spec.replicas` or an injected
//! `caBundle`. Such a field is neither drift nor a change in a plan, and on
//! an object that exists ferry never sends its own value for it: with
//! server-side apply, sending a value is claiming the field, and with
//! `self_heal` (force) taking it back, which is how two controllers fight.
//!
//! What is sent instead, per field the revision declares: nothing, when
//! another manager owns the field (so that manager stays its only owner and
//! git dropping the field later resets nothing); the live value, when
//! nobody else owns it (claiming the same value conflicts with no one, and
//! not sending it would have the server reset a field ferry alone owned).
//! A new object is created as git declares it.

use std::borrow::Cow;

use serde_json::Value;

use crate::config::IgnoreRule;
use crate::desired::manifests::ObjectRef;

use super::ownership::{FIELD_MANAGER, label_as_ours};

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Key(String),
    /// `*`: every key of a map, every index of a list.
    Any,
}

/// An RFC 6901 JSON pointer whose segments may be `*`:
/// `/spec/replicas`, `/webhooks/*/clientConfig/caBundle`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(try_from = "String")]
pub struct Pointer {
    text: String,
    segments: Vec<Segment>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PointerError {
    #[error("`{0}` is not a JSON pointer: start it with `/`, e.g. `/spec/replicas`")]
    NotAPointer(String),
    #[error("`{0}`: in a JSON pointer `~` is followed by 0 (for `~`) or 1 (for `/`)")]
    BadEscape(String),
    #[error(
        "`{0}` names what identifies the object (apiVersion, kind, metadata, its name or \
         namespace); ferry cannot leave that to another manager"
    )]
    Identity(String),
}

impl TryFrom<String> for Pointer {
    type Error = PointerError;

    fn try_from(text: String) -> Result<Pointer, PointerError> {
        let Some(rest) = text.strip_prefix('/') else {
            return Err(PointerError::NotAPointer(text));
        };
        let mut segments = Vec::new();
        for raw in rest.split('/') {
            if raw == "*" {
                segments.push(Segment::Any);
                continue;
            }
            let mut key = String::new();
            let mut chars = raw.chars();
            while let Some(c) = chars.next() {
                match (c, c == '~') {
                    (_, false) => key.push(c),
                    (_, true) => match chars.next() {
                        Some('0') => key.push('~'),
                        Some('1') => key.push('/'),
                        _ => return Err(PointerError::BadEscape(text)),
                    },
                }
            }
            segments.push(Segment::Key(key));
        }
        let names = |s: &Segment, name: &str| s == &Segment::Key(name.into());
        let identity = match segments.as_slice() {
            [first] => ["apiVersion", "kind", "metadata", ""]
                .iter()
                .any(|n| names(first, n)),
            [first, second] => {
                names(first, "metadata") && ["name", "namespace"].iter().any(|n| names(second, n))
            }
            _ => false,
        };
        if identity {
            return Err(PointerError::Identity(text));
        }
        Ok(Pointer { text, segments })
    }
}

impl std::fmt::Display for Pointer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

/// One step of a concrete path in one object.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Step {
    Key(String),
    Index(usize),
}

impl Pointer {
    /// The concrete paths in `value` this pointer names, in document order.
    fn expand(&self, value: &Value) -> Vec<Vec<Step>> {
        let mut out = Vec::new();
        expand(value, &self.segments, &mut Vec::new(), &mut out);
        out
    }
}

fn expand(value: &Value, segments: &[Segment], path: &mut Vec<Step>, out: &mut Vec<Vec<Step>>) {
    let Some((first, rest)) = segments.split_first() else {
        out.push(path.clone());
        return;
    };
    let mut descend = |step: Step, child: &Value| {
        path.push(step);
        expand(child, rest, path, out);
        path.pop();
    };
    match (first, value) {
        (Segment::Any, Value::Object(map)) => {
            for (k, child) in map {
                descend(Step::Key(k.clone()), child);
            }
        }
        (Segment::Any, Value::Array(items)) => {
            for (i, child) in items.iter().enumerate() {
                descend(Step::Index(i), child);
            }
        }
        (Segment::Key(k), Value::Object(map)) => {
            if let Some(child) = map.get(k) {
                descend(Step::Key(k.clone()), child);
            }
        }
        (Segment::Key(k), Value::Array(items)) => {
            if let Some((i, child)) = k
                .parse::<usize>()
                .ok()
                .and_then(|i| Some((i, items.get(i)?)))
            {
                descend(Step::Index(i), child);
            }
        }
        _ => {}
    }
}

fn get<'a>(value: &'a Value, path: &[Step]) -> Option<&'a Value> {
    path.iter().try_fold(value, |v, step| match step {
        Step::Key(k) => v.get(k),
        Step::Index(i) => v.get(i),
    })
}

fn get_mut<'a>(value: &'a mut Value, path: &[Step]) -> Option<&'a mut Value> {
    path.iter().try_fold(value, |v, step| match step {
        Step::Key(k) => v.get_mut(k),
        Step::Index(i) => v.get_mut(i),
    })
}

/// Removes the values at `paths`, latest first so that list indexes of the
/// ones still to go stay right.
fn remove_all(value: &mut Value, mut paths: Vec<Vec<Step>>) {
    paths.sort();
    paths.dedup();
    for path in paths.iter().rev() {
        let Some((last, parent)) = path.split_last() else {
            continue;
        };
        match (get_mut(value, parent), last) {
            (Some(Value::Object(map)), Step::Key(k)) => {
                map.remove(k);
            }
            (Some(Value::Array(items)), Step::Index(i)) if *i < items.len() => {
                items.remove(*i);
            }
            _ => {}
        }
    }
}

/// The rules of a target, ready to match objects.
#[derive(Debug, Clone, Copy)]
pub struct Ignored<'a> {
    rules: &'a [IgnoreRule],
}

impl<'a> Ignored<'a> {
    pub fn new(rules: &'a [IgnoreRule]) -> Ignored<'a> {
        Ignored { rules }
    }

    /// The pointers that apply to the object `id`.
    pub fn pointers(&self, id: &ObjectRef) -> Vec<&'a Pointer> {
        self.rules
            .iter()
            .filter(|r| r.matches(id))
            .flat_map(|r| &r.json_pointers)
            .collect()
    }
}

impl IgnoreRule {
    fn matches(&self, id: &ObjectRef) -> bool {
        // `Kind` alone matches that kind in any group: a rule is a filter,
        // and a forgotten group should not make it silently match nothing.
        let kind = match self.kind.split_once('.') {
            Some((kind, group)) => kind == id.kind && group == id.group,
            None => self.kind == id.kind,
        };
        kind && self.name.as_deref().is_none_or(|n| glob(n, &id.name))
            && self
                .namespace
                .as_deref()
                .is_none_or(|ns| id.namespace.as_deref() == Some(ns))
    }
}

/// `*` matches any run of characters; everything else itself.
fn glob(pattern: &str, name: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or_default();
    let Some(mut rest) = name.strip_prefix(first) else {
        return false;
    };
    let parts: Vec<&str> = parts.collect();
    let Some((last, middle)) = parts.split_last() else {
        return rest.is_empty();
    };
    for part in middle {
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

/// `value` without what `pointers` name: what a plan compares, on both
/// sides, so an ignored field is never a change.
pub(crate) fn strip<'v>(value: &'v Value, pointers: &[&Pointer]) -> Cow<'v, Value> {
    if pointers.is_empty() {
        return Cow::Borrowed(value);
    }
    let mut value = value.clone();
    for pointer in pointers {
        let paths = pointer.expand(&value);
        remove_all(&mut value, paths);
    }
    Cow::Owned(value)
}

/// What ferry sends for an object git declares as `desired` (labelled as
/// ferry's) and that is `live` (None: it does not exist yet), given the
/// pointers that apply to it. See the module comment for why.
pub(crate) fn to_send(desired: &Value, live: Option<&Value>, pointers: &[&Pointer]) -> Value {
    let Some(live) = live.filter(|_| !pointers.is_empty()) else {
        return desired.clone();
    };
    let mut object = desired.clone();
    let mut give_away = Vec::new();
    for pointer in pointers {
        for path in pointer.expand(desired) {
            match get(live, &path) {
                Some(value) if !owned_by_others(live, &path) => {
                    if let Some(slot) = get_mut(&mut object, &path) {
                        *slot = value.clone();
                    }
                }
                _ => give_away.push(path),
            }
        }
    }
    remove_all(&mut object, give_away);
    // A rule over all labels must not take ferry's own away.
    label_as_ours(&mut object);
    object
}

/// Does a manager other than ferry own the field at `path` of `live`, by
/// its `metadata.managedFields`?
fn owned_by_others(live: &Value, path: &[Step]) -> bool {
    let Some(entries) = live
        .pointer("/metadata/managedFields")
        .and_then(Value::as_array)
    else {
        return false;
    };
    entries
        .iter()
        .filter(|e| e["manager"].as_str() != Some(FIELD_MANAGER))
        .any(|e| owns(&e["fieldsV1"], live, path))
}

/// Walks a `fieldsV1` set along `path`: maps by `f:<key>`, list items by
/// `k:{<merge key>}`, `v:<value>` or `i:<index>`, matched against the live
/// item. Reaching the node means the manager owns the field or part of it.
fn owns(fields: &Value, live: &Value, path: &[Step]) -> bool {
    let mut node = fields;
    let mut at = live;
    for step in path {
        let next = match step {
            Step::Key(k) => node.get(format!("f:{k}")).zip(at.get(k)),
            Step::Index(i) => at
                .get(i)
                .and_then(|item| Some((item_node(node, *i, item)?, item))),
        };
        match next {
            Some((n, a)) => {
                node = n;
                at = a;
            }
            None => return false,
        }
    }
    true
}

fn item_node<'a>(node: &'a Value, index: usize, item: &Value) -> Option<&'a Value> {
    let map = node.as_object()?;
    if let Some(n) = map.get(&format!("i:{index}")) {
        return Some(n);
    }
    map.iter().find_map(|(key, n)| {
        if let Some(keys) = key.strip_prefix("k:") {
            let keys: serde_json::Map<String, Value> = serde_json::from_str(keys).ok()?;
            keys.iter()
                .all(|(field, value)| item.get(field) == Some(value))
                .then_some(n)
        } else {
            let value: Value = serde_json::from_str(key.strip_prefix("v:")?).ok()?;
            (&value == item).then_some(n)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pointer(text: &str) -> Pointer {
        Pointer::try_from(text.to_string()).unwrap()
    }

    #[test]
    fn pointers_parse_escapes_and_refuse_the_objects_identity() {
        let p = pointer("/metadata/annotations/example.com~1inject~0x");
        assert_eq!(p.segments[2], Segment::Key("example.com/inject~x".into()));
        assert_eq!(
            pointer("/webhooks/*/clientConfig").segments[1],
            Segment::Any
        );
        for (text, want) in [
            (
                "spec/replicas",
                PointerError::NotAPointer("spec/replicas".into()),
            ),
            ("/a~2", PointerError::BadEscape("/a~2".into())),
            (
                "/metadata/name",
                PointerError::Identity("/metadata/name".into()),
            ),
            ("/kind", PointerError::Identity("/kind".into())),
            ("/", PointerError::Identity("/".into())),
        ] {
            assert_eq!(Pointer::try_from(text.to_string()), Err(want));
        }
        assert!(Pointer::try_from("/metadata/labels".to_string()).is_ok());
    }

    #[test]
    fn rules_match_kind_with_or_without_group_name_globs_and_namespace() {
        let rule = |kind: &str, name: Option<&str>, namespace: Option<&str>| IgnoreRule {
            kind: kind.into(),
            name: name.map(Into::into),
            namespace: namespace.map(Into::into),
            json_pointers: vec![pointer("/spec/replicas")],
        };
        let id = ObjectRef {
            group: "apps".into(),
            kind: "Deployment".into(),
            namespace: Some("ml".into()),
            name: "mlflow-tracking".into(),
        };
        for (r, want) in [
            (rule("Deployment", None, None), true),
            (rule("Deployment.apps", Some("mlflow-*"), Some("ml")), true),
            (rule("Deployment.extensions", None, None), false),
            (rule("StatefulSet", None, None), false),
            (rule("Deployment", Some("airflow-*"), None), false),
            (rule("Deployment", Some("*-tracking"), None), true),
            (rule("Deployment", Some("mlflow"), None), false),
            (rule("Deployment", None, Some("airflow")), false),
        ] {
            assert_eq!(r.matches(&id), want, "{r:?}");
        }
    }

    #[test]
    fn strip_removes_every_match_and_only_those() {
        let object = json!({"webhooks": [
            {"name": "a", "clientConfig": {"caBundle": "AAA", "service": {"name": "s"}}},
            {"name": "b", "clientConfig": {"caBundle": "BBB"}},
        ]});
        let stripped = strip(&object, &[&pointer("/webhooks/*/clientConfig/caBundle")]);
        assert_eq!(
            *stripped,
            json!({"webhooks": [
                {"name": "a", "clientConfig": {"service": {"name": "s"}}},
                {"name": "b", "clientConfig": {}},
            ]})
        );
        assert_eq!(*strip(&object, &[&pointer("/spec/replicas")]), object);
    }

    /// A Deployment whose replicas the HPA changed (so it owns them) and
    /// whose `caBundle`-like annotation nobody else owns.
    fn live() -> Value {
        json!({
            "metadata": {"name": "web", "annotations": {"a": "live"}, "managedFields": [
                {"manager": "ferry", "operation": "Apply",
                 "fieldsV1": {"f:metadata": {"f:annotations": {"f:a": {}}}, "f:spec": {"f:template": {}}}},
                {"manager": "kube-controller-manager", "operation": "Update", "subresource": "scale",
                 "fieldsV1": {"f:spec": {"f:replicas": {}}}},
                {"manager": "injector", "operation": "Update",
                 "fieldsV1": {"f:spec": {"f:template": {"f:spec": {"f:containers": {
                     "k:{\"name\":\"web\"}": {"f:env": {}}}}}}}},
            ]},
            "spec": {"replicas": 3, "template": {"spec": {"containers": [
                {"name": "web", "image": "web:1", "env": [{"name": "X", "value": "injected"}]}]}}}
        })
    }

    #[test]
    fn to_send_gives_away_fields_others_own_and_holds_the_live_value_of_the_rest() {
        let desired = json!({
            "metadata": {"name": "web", "annotations": {"a": "git"}},
            "spec": {"replicas": 1, "template": {"spec": {"containers": [
                {"name": "web", "image": "web:2", "env": [{"name": "X", "value": "git"}]}]}}}
        });
        let pointers = [
            &pointer("/spec/replicas"),
            &pointer("/metadata/annotations/a"),
            &pointer("/spec/template/spec/containers/*/env"),
            &pointer("/spec/paused"),
        ];
        let sent = to_send(&desired, Some(&live()), &pointers);
        // Owned by the HPA and by the injector: not sent at all.
        assert_eq!(sent.pointer("/spec/replicas"), None);
        assert_eq!(sent.pointer("/spec/template/spec/containers/0/env"), None);
        // Owned by ferry alone: the live value, so the server resets nothing.
        assert_eq!(
            sent.pointer("/metadata/annotations/a"),
            Some(&json!("live"))
        );
        // Everything else as git says, ferry's label included.
        assert_eq!(
            sent.pointer("/spec/template/spec/containers/0/image"),
            Some(&json!("web:2"))
        );
        assert_eq!(
            sent.pointer("/metadata/labels/app.kubernetes.io~1managed-by"),
            Some(&json!("ferry"))
        );
        // A new object is created as declared.
        assert_eq!(to_send(&desired, None, &pointers), desired);
    }

    #[test]
    fn list_items_are_found_by_index_value_or_merge_key() {
        let live = json!({"spec": {"items": [{"name": "x", "v": 1}, {"name": "y", "v": 2}], "tags": ["a", "b"]}});
        let fields = json!({"f:spec": {
            "f:items": {"k:{\"name\":\"y\"}": {"f:v": {}}},
            "f:tags": {"v:\"b\"": {}},
        }});
        let path = |p: &str| pointer(p).expand(&live).remove(0);
        assert!(owns(&fields, &live, &path("/spec/items/1/v")));
        assert!(!owns(&fields, &live, &path("/spec/items/0/v")));
        assert!(owns(&fields, &live, &path("/spec/tags/1")));
        assert!(!owns(&fields, &live, &path("/spec/tags/0")));
        let by_index = json!({"f:spec": {"f:tags": {"i:0": {}}}});
        assert!(owns(&by_index, &live, &path("/spec/tags/0")));
    }
}
