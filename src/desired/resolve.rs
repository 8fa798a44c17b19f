//! From parsed manifests to the exact set of objects a target owns:
//! namespaces defaulted, scope checked, allow-lists enforced, duplicates
//! refused. Whether a kind is namespaced comes from a scope oracle (the
//! cluster's discovery, plus CRDs declared in the same revision), so this
//! stays a pure function.

use std::collections::HashMap;

use super::manifests::{Manifest, ManifestError, ObjectRef, Origin};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Namespaced,
    Cluster,
}

/// What a target allows. Empty lists allow everything.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    pub default_namespace: String,
    pub allowed_namespaces: Vec<String>,
    /// `Kind` for the core group, `Kind.group` otherwise (`Deployment.apps`).
    pub allowed_kinds: Vec<String>,
    /// Cluster-scoped objects allowed: (`Kind.group`, names; empty: any).
    pub cluster_scoped: Vec<(String, Vec<String>)>,
}

/// Scopes of the custom resources that CRDs in `manifests` define, so a CRD
/// and its first objects can arrive in one revision.
pub fn crd_scopes(manifests: &[Manifest]) -> HashMap<(String, String), Scope> {
    manifests
        .iter()
        .filter(|m| m.id.group == "apiextensions.k8s.io" && m.id.kind == "CustomResourceDefinition")
        .filter_map(|m| {
            let spec = m.object.get("spec")?;
            let group = spec.get("group")?.as_str()?.to_string();
            let kind = spec.get("names")?.get("kind")?.as_str()?.to_string();
            let scope = match spec.get("scope")?.as_str()? {
                "Cluster" => Scope::Cluster,
                _ => Scope::Namespaced,
            };
            Some(((group, kind), scope))
        })
        .collect()
}

pub fn kind_name(id: &ObjectRef) -> String {
    if id.group.is_empty() {
        id.kind.clone()
    } else {
        format!("{}.{}", id.kind, id.group)
    }
}

/// Resolves every manifest or returns every problem found.
pub fn resolve(
    manifests: Vec<Manifest>,
    scope_of: impl Fn(&str, &str) -> Option<Scope>,
    policy: &Policy,
) -> Result<Vec<Manifest>, Vec<ManifestError>> {
    let mut errors = Vec::new();
    let mut seen: HashMap<ObjectRef, Origin> = HashMap::new();
    let mut resolved = Vec::new();
    for mut manifest in manifests {
        let err = |message: String| ManifestError {
            origin: manifest.origin.clone(),
            message,
        };
        let kind = kind_name(&manifest.id);
        if !policy.allowed_kinds.is_empty() && !policy.allowed_kinds.iter().any(|k| k == &kind) {
            errors.push(err(format!(
                "kind `{kind}` is not in this target's allowed_kinds ({}); add it there or move the object to another target",
                policy.allowed_kinds.join(", ")
            )));
            continue;
        }
        match scope_of(&manifest.id.group, &manifest.id.kind) {
            None => {
                errors.push(err(format!(
                    "unknown kind `{kind}` (apiVersion {}): the cluster does not serve it and no CRD in this revision defines it",
                    manifest.api_version
                )));
                continue;
            }
            Some(Scope::Cluster) => {
                if let Some(ns) = &manifest.id.namespace {
                    errors.push(err(format!(
                        "{kind} is cluster-scoped but sets metadata.namespace `{ns}`; remove it"
                    )));
                    continue;
                }
                let name = &manifest.id.name;
                let allowed = policy
                    .cluster_scoped
                    .iter()
                    .any(|(k, names)| k == &kind && (names.is_empty() || names.contains(name)));
                if !allowed {
                    let listed: Vec<String> = policy
                        .cluster_scoped
                        .iter()
                        .map(|(k, names)| match names.as_slice() {
                            [] => k.clone(),
                            names => format!("{k} {}", names.join(", ")),
                        })
                        .collect();
                    errors.push(err(format!(
                        "{kind} `{name}` is cluster-scoped, and this target applies only the cluster-scoped objects ferry's config allows ({}). \
                         If it belongs to the platform, add `{{kind: {kind}, names: [{name}]}}` to targets.kubernetes.cluster_scoped in ferry's config \
                         and grant ferry's ClusterRole that kind (deploy/cluster-scoped); a platform-repo PR cannot do either, by design",
                        listed.join("; ")
                    )));
                    continue;
                }
            }
            Some(Scope::Namespaced) => {
                let ns = manifest
                    .id
                    .namespace
                    .clone()
                    .or_else(|| manifest.default_namespace.clone())
                    .unwrap_or_else(|| policy.default_namespace.clone());
                if let Some(meta) = manifest
                    .object
                    .get_mut("metadata")
                    .and_then(|m| m.as_object_mut())
                {
                    meta.insert("namespace".into(), serde_json::Value::String(ns.clone()));
                }
                manifest.id.namespace = Some(ns);
            }
        }
        // A Namespace object counts as being "in" the namespace it creates.
        let namespace = if manifest.id.group.is_empty() && manifest.id.kind == "Namespace" {
            Some(manifest.id.name.clone())
        } else {
            manifest.id.namespace.clone()
        };
        if let Some(ns) = namespace
            && !policy.allowed_namespaces.is_empty()
            && !policy.allowed_namespaces.contains(&ns)
        {
            errors.push(err(format!(
                "namespace `{ns}` is not in this target's allowed_namespaces ({})",
                policy.allowed_namespaces.join(", ")
            )));
            continue;
        }
        if let Some(first) = seen.get(&manifest.id) {
            errors.push(err(format!(
                "duplicate object {}: already declared at {first}",
                manifest.id
            )));
            continue;
        }
        seen.insert(manifest.id.clone(), manifest.origin.clone());
        resolved.push(manifest);
    }
    if errors.is_empty() {
        Ok(resolved)
    } else {
        Err(errors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::desired::manifests::parse_file;

    fn builtin(group: &str, kind: &str) -> Option<Scope> {
        match (group, kind) {
            ("", "Namespace")
            | ("rbac.authorization.k8s.io", "ClusterRole")
            | ("apiextensions.k8s.io", "CustomResourceDefinition") => Some(Scope::Cluster),
            ("", "ConfigMap") | ("apps", "Deployment") => Some(Scope::Namespaced),
            _ => None,
        }
    }

    fn policy() -> Policy {
        Policy {
            default_namespace: "platform".into(),
            allowed_namespaces: vec!["platform".into(), "airflow".into()],
            allowed_kinds: vec![],
            cluster_scoped: vec![
                ("Namespace".into(), vec![]),
                (
                    "CustomResourceDefinition.apiextensions.k8s.io".into(),
                    vec![],
                ),
            ],
        }
    }

    const CM: &str = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: cfg\n";

    #[test]
    fn namespaced_objects_get_the_default_namespace() {
        let m = resolve(parse_file("a.yaml", CM).unwrap(), builtin, &policy()).unwrap();
        assert_eq!(m[0].id.namespace.as_deref(), Some("platform"));
        assert_eq!(m[0].object["metadata"]["namespace"], "platform");
    }

    #[test]
    fn duplicates_are_named_with_both_places() {
        let text = format!("{CM}---\n{CM}");
        let errs = resolve(parse_file("a.yaml", &text).unwrap(), builtin, &policy()).unwrap_err();
        assert_eq!(errs.len(), 1);
        assert_eq!(errs[0].origin.document, 1);
        assert!(
            errs[0]
                .message
                .contains("already declared at a.yaml:1 (document 0)"),
            "{}",
            errs[0]
        );
    }

    #[test]
    fn allow_lists_scope_and_unknown_kinds() {
        let outside =
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: x\n  namespace: kube-system\n";
        let e = resolve(parse_file("a.yaml", outside).unwrap(), builtin, &policy()).unwrap_err();
        assert!(
            e[0].message
                .contains("`kube-system` is not in this target's allowed_namespaces"),
            "{}",
            e[0]
        );

        let ns = "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: kube-public\n";
        assert!(resolve(parse_file("n.yaml", ns).unwrap(), builtin, &policy()).is_err());

        let kinds = Policy {
            allowed_kinds: vec!["ConfigMap".into()],
            ..policy()
        };
        let dep = "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: d\n";
        let e = resolve(parse_file("d.yaml", dep).unwrap(), builtin, &kinds).unwrap_err();
        assert!(
            e[0].message
                .contains("kind `Deployment.apps` is not in this target's allowed_kinds"),
            "{}",
            e[0]
        );

        let cluster_ns = "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRole\nmetadata:\n  name: r\n  namespace: platform\n";
        let e = resolve(
            parse_file("r.yaml", cluster_ns).unwrap(),
            builtin,
            &policy(),
        )
        .unwrap_err();
        assert!(e[0].message.contains("cluster-scoped"), "{}", e[0]);

        let unknown = "apiVersion: example.com/v1\nkind: Widget\nmetadata:\n  name: w\n";
        let e = resolve(parse_file("w.yaml", unknown).unwrap(), builtin, &policy()).unwrap_err();
        assert!(
            e[0].message.contains("unknown kind `Widget.example.com`"),
            "{}",
            e[0]
        );
    }

    #[test]
    fn cluster_scoped_objects_need_their_kind_and_name_allowed() {
        let role = |name: &str| {
            format!(
                "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRole\nmetadata:\n  name: {name}\n"
            )
        };
        let e = resolve(
            parse_file("r.yaml", &role("operator")).unwrap(),
            builtin,
            &policy(),
        )
        .unwrap_err();
        assert!(
            e[0].message.contains(
                "ClusterRole.rbac.authorization.k8s.io `operator` is cluster-scoped, and this target applies only \
                 the cluster-scoped objects ferry's config allows (Namespace; CustomResourceDefinition.apiextensions.k8s.io). \
                 If it belongs to the platform, add `{kind: ClusterRole.rbac.authorization.k8s.io, names: [operator]}` \
                 to targets.kubernetes.cluster_scoped"
            ),
            "{}",
            e[0]
        );
        let named = Policy {
            cluster_scoped: vec![(
                "ClusterRole.rbac.authorization.k8s.io".into(),
                vec!["operator".into()],
            )],
            ..policy()
        };
        assert!(
            resolve(
                parse_file("r.yaml", &role("operator")).unwrap(),
                builtin,
                &named
            )
            .is_ok()
        );
        let e = resolve(
            parse_file("r.yaml", &role("admin-ish")).unwrap(),
            builtin,
            &named,
        )
        .unwrap_err();
        assert!(
            e[0].message
                .contains("(ClusterRole.rbac.authorization.k8s.io operator)"),
            "{}",
            e[0]
        );
    }

    #[test]
    fn a_crd_in_the_same_revision_defines_its_kind() {
        let text = "apiVersion: apiextensions.k8s.io/v1\nkind: CustomResourceDefinition\nmetadata:\n  name: widgets.example.com\n\
                    spec:\n  group: example.com\n  scope: Namespaced\n  names:\n    kind: Widget\n    plural: widgets\n---\n\
                    apiVersion: example.com/v1\nkind: Widget\nmetadata:\n  name: w\n";
        let parsed = parse_file("w.yaml", text).unwrap();
        let crds = crd_scopes(&parsed);
        let m = resolve(
            parsed,
            |g, k| builtin(g, k).or_else(|| crds.get(&(g.to_string(), k.to_string())).copied()),
            &policy(),
        )
        .unwrap();
        assert_eq!(m[1].id.namespace.as_deref(), Some("platform"));
    }
}
