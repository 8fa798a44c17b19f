//! Kubernetes objects declared in the platform repo's `manifests/` directory.
//!
//! Reads every `*.yaml`/`*.yml` file at any depth of one commit's tree (from
//! git, not a checkout), splits multi-document files, and keeps each
//! object's file, document index and line so every later error can point at
//! its source. All errors of a revision are collected, not only the first:
//! a PR preview should list everything wrong at once.

use std::fmt;

use git2::{ObjectType, Oid, Repository, Tree};
use serde::Deserialize;

/// Where an object (or an error) comes from.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Origin {
    /// Path relative to the repository root.
    pub file: String,
    /// 0-based index of the YAML document within the file.
    pub document: usize,
    /// 1-based line where the document starts (or where the error is).
    pub line: usize,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{} (document {})",
            self.file, self.line, self.document
        )
    }
}

/// Identity of an object: what the API server keys it by.
#[derive(
    Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub struct ObjectRef {
    /// API group; `""` for the core group.
    pub group: String,
    pub kind: String,
    /// `None` until scope is known (cluster-scoped, or namespace defaulted at plan time).
    pub namespace: Option<String>,
    pub name: String,
}

impl fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = if self.group.is_empty() {
            self.kind.clone()
        } else {
            format!("{}.{}", self.kind, self.group)
        };
        match &self.namespace {
            Some(ns) => write!(f, "{kind} {ns}/{}", self.name),
            None => write!(f, "{kind} {}", self.name),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Manifest {
    pub origin: Origin,
    pub api_version: String,
    pub id: ObjectRef,
    /// The document as JSON, exactly as written.
    pub object: serde_json::Value,
    /// The namespace it goes to when it names none and is namespaced:
    /// a Helm release's; `None` for the target's `default_namespace`.
    pub default_namespace: Option<String>,
    /// The Helm release file it was rendered from, if any.
    pub release: Option<String>,
    /// Set for a Helm hook that runs something (a Job or Pod): run in its
    /// phase when its release changes, never planned, diffed or pruned.
    pub hook: Option<Hook>,
    /// A Helm hook that is configuration (a ServiceAccount, RBAC, a Secret)
    /// of the pre-install / pre-upgrade phase: applied before that phase's
    /// hooks run, as Helm creates a phase's hook resources before its Jobs
    /// (kube-prometheus-stack's certificate Job needs its ServiceAccount).
    pub before_hooks: bool,
}

/// When and how a Helm hook runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hook {
    pub phase: HookPhase,
    /// `helm.sh/hook-weight`: lower runs first.
    pub weight: i32,
    /// `helm.sh/hook-delete-policy` (Helm's default: before-hook-creation).
    pub delete_before: bool,
    pub delete_on_success: bool,
    pub delete_on_failure: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum HookPhase {
    /// pre-install / pre-upgrade: before the release's other objects; a
    /// failure applies nothing after it.
    Pre,
    /// post-install / post-upgrade: after they are applied and healthy.
    Post,
}

impl HookPhase {
    /// Helm's names for the phase.
    pub fn helm_names(self) -> &'static str {
        match self {
            HookPhase::Pre => "pre-install/pre-upgrade",
            HookPhase::Post => "post-install/post-upgrade",
        }
    }
}

/// As Helm names it, in `ferry plan --output json`.
impl serde::Serialize for HookPhase {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.helm_names())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ManifestError {
    pub origin: Origin,
    pub message: String,
}

impl ManifestError {
    /// An error about a file or directory as a whole (no document or line).
    pub fn general(file: &str, message: String) -> ManifestError {
        ManifestError {
            origin: Origin {
                file: file.to_string(),
                document: 0,
                line: 0,
            },
            message,
        }
    }
}

impl fmt::Display for ManifestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.origin, self.message)
    }
}

/// Reads `dir` of `commit`, which must exist; unreadable git objects are
/// errors. A directory holding a kustomization is an error here: read it
/// with [`read_with`] and a kustomize binary.
pub fn read(
    repo: &Repository,
    commit: Oid,
    dir: &str,
) -> Result<Vec<Manifest>, Vec<ManifestError>> {
    read_with(repo, commit, dir, None)
}

/// [`read`], with every directory that holds a kustomization (at any depth,
/// `dir` itself included) built by `kustomize` instead of read file by file.
pub fn read_with(
    repo: &Repository,
    commit: Oid,
    dir: &str,
    kustomize: Option<&std::path::Path>,
) -> Result<Vec<Manifest>, Vec<ManifestError>> {
    let fail = |message: String| vec![ManifestError::general(dir, message)];
    let root = repo
        .find_commit(commit)
        .and_then(|c| c.tree())
        .map_err(|e| fail(format!("cannot read commit {commit}: {}", e.message())))?;
    let dir = dir.trim_matches('/');
    let tree = match root.get_path(std::path::Path::new(dir)) {
        Ok(entry) if entry.kind() == Some(ObjectType::Tree) => repo
            .find_tree(entry.id())
            .map_err(|e| fail(format!("cannot read {dir}: {}", e.message())))?,
        Ok(_) => {
            return Err(fail(format!(
                "`{dir}` is a file; expected a directory of manifests"
            )));
        }
        // Read as "nothing declared", a moved or deleted directory would
        // prune everything ferry applied, Namespaces included.
        Err(_) => {
            return Err(fail(format!(
                "`{dir}/` does not exist at this commit; the Kubernetes target reads its \
                 manifests from there (targets.kubernetes.path). Restore it, or point `path` \
                 where the manifests moved"
            )));
        }
    };
    let mut files = Vec::new();
    let mut kustomizations = Vec::new();
    collect_yaml(repo, &tree, dir, &mut files, &mut kustomizations)
        .map_err(|e| fail(e.message().to_string()))?;
    files.sort();
    let mut manifests = Vec::new();
    let mut errors = Vec::new();
    match kustomize {
        Some(binary) => match super::kustomize::build_all(repo, commit, &kustomizations, binary) {
            Ok(mut built) => manifests.append(&mut built),
            Err(mut e) => errors.append(&mut e),
        },
        None => errors.extend(kustomizations.iter().map(|k| {
            ManifestError::general(
                k,
                "holds a kustomization, and this reader builds none".into(),
            )
        })),
    }
    for (path, blob) in files {
        let content = match repo.find_blob(blob) {
            Ok(b) => b.content().to_vec(),
            Err(e) => {
                errors.extend(fail(format!("{path}: {}", e.message())));
                continue;
            }
        };
        match std::str::from_utf8(&content) {
            Ok(text) => match parse_file(&path, text) {
                Ok(mut m) => manifests.append(&mut m),
                Err(mut e) => errors.append(&mut e),
            },
            Err(_) => errors.push(ManifestError {
                origin: Origin {
                    file: path,
                    document: 0,
                    line: crate::yaml::utf8_error_line(&content).unwrap_or(1),
                },
                message: crate::yaml::NOT_UTF8.into(),
            }),
        }
    }
    if errors.is_empty() {
        Ok(manifests)
    } else {
        Err(errors)
    }
}

/// The YAML files below `tree`, except those of a directory holding a
/// kustomization: that directory goes to `kustomizations`, and what it
/// builds stands for every file below it.
fn collect_yaml(
    repo: &Repository,
    tree: &Tree<'_>,
    prefix: &str,
    out: &mut Vec<(String, Oid)>,
    kustomizations: &mut Vec<String>,
) -> Result<(), git2::Error> {
    if super::kustomize::KUSTOMIZATION_FILES
        .iter()
        .any(|name| tree.get_name(name).is_some())
    {
        kustomizations.push(prefix.to_string());
        return Ok(());
    }
    for entry in tree.iter() {
        let name = String::from_utf8_lossy(entry.name_bytes()).into_owned();
        let path = if prefix.is_empty() {
            name.clone()
        } else {
            format!("{prefix}/{name}")
        };
        match entry.kind() {
            Some(ObjectType::Tree) => collect_yaml(
                repo,
                &repo.find_tree(entry.id())?,
                &path,
                out,
                kustomizations,
            )?,
            Some(ObjectType::Blob) if name.ends_with(".yaml") || name.ends_with(".yml") => {
                out.push((path, entry.id()))
            }
            _ => {}
        }
    }
    Ok(())
}

/// Parses one file's documents. Empty documents (a trailing `---`, comments
/// only) are skipped but still counted, so indexes match what editors show.
pub fn parse_file(path: &str, text: &str) -> Result<Vec<Manifest>, Vec<ManifestError>> {
    // Before parsing: a deserializer would keep one of the values silently.
    let duplicates = crate::yaml::duplicate_keys(text);
    if !duplicates.is_empty() {
        return Err(duplicates
            .into_iter()
            .map(|d| ManifestError {
                origin: Origin {
                    file: path.to_string(),
                    document: d.document,
                    line: d.line,
                },
                message: format!("key `{}` {}", d.key, d.message()),
            })
            .collect());
    }
    if let Some(flow) = crate::yaml::flow_duplicate(text) {
        return Err(vec![ManifestError {
            origin: Origin {
                file: path.to_string(),
                document: 0,
                line: flow.line.unwrap_or(1),
            },
            message: flow.message,
        }]);
    }
    let starts = document_lines(text);
    let mut manifests = Vec::new();
    let mut errors = Vec::new();
    for (index, document) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        let doc_line = starts.get(index).copied().unwrap_or(1);
        let origin = |line: usize| Origin {
            file: path.to_string(),
            document: index,
            line,
        };
        let value = match serde_json::Value::deserialize(document) {
            Ok(v) => v,
            Err(e) => {
                let line = e.location().map_or(doc_line, |l| l.line());
                let message = e.to_string();
                let message = message
                    .split(" at line ")
                    .next()
                    .unwrap_or(&message)
                    .to_string();
                errors.push(ManifestError {
                    origin: origin(line),
                    message: format!("invalid YAML: {message}"),
                });
                // The parser cannot resync after a syntax error in this file.
                break;
            }
        };
        if value.is_null() {
            continue;
        }
        match to_manifest(value) {
            Ok((api_version, id, object)) => manifests.push(Manifest {
                origin: origin(doc_line),
                api_version,
                id,
                object,
                default_namespace: None,
                release: None,
                hook: None,
                before_hooks: false,
            }),
            Err(message) => errors.push(ManifestError {
                origin: origin(doc_line),
                message,
            }),
        }
    }
    if errors.is_empty() {
        Ok(manifests)
    } else {
        Err(errors)
    }
}

fn to_manifest(value: serde_json::Value) -> Result<(String, ObjectRef, serde_json::Value), String> {
    let serde_json::Value::Object(map) = &value else {
        return Err(
            "a Kubernetes object must be a mapping with apiVersion, kind and metadata".into(),
        );
    };
    let text = |key: &str| {
        map.get(key)
            .and_then(|v| v.as_str())
            .filter(|s| !s.is_empty())
    };
    let api_version = text("apiVersion").ok_or("missing or empty `apiVersion` (e.g. `apps/v1`)")?;
    let kind = text("kind").ok_or("missing or empty `kind` (e.g. `Deployment`)")?;
    if kind == "List" || (kind.ends_with("List") && map.contains_key("items")) {
        return Err(format!(
            "`{kind}` documents are not supported: write each item as its own document after `---`"
        ));
    }
    let metadata = map
        .get("metadata")
        .and_then(|m| m.as_object())
        .ok_or("missing `metadata` mapping")?;
    let name = metadata
        .get("name")
        .and_then(|n| n.as_str())
        .filter(|n| !n.is_empty())
        .ok_or_else(|| {
            if metadata.contains_key("generateName") {
                "`metadata.generateName` is not supported: GitOps needs a stable `metadata.name`"
                    .to_string()
            } else {
                "missing `metadata.name`".to_string()
            }
        })?;
    let namespace = match metadata.get("namespace") {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::String(ns)) if !ns.is_empty() => Some(ns.clone()),
        Some(_) => return Err("`metadata.namespace` must be a non-empty string".into()),
    };
    let group = match api_version.split_once('/') {
        Some((group, _)) => group.to_string(),
        None => String::new(),
    };
    let id = ObjectRef {
        group,
        kind: kind.to_string(),
        namespace,
        name: name.to_string(),
    };
    Ok((api_version.to_string(), id, value))
}

/// 1-based line where each document starts: line 1, then the line after
/// each `---` marker at column 0.
fn document_lines(text: &str) -> Vec<usize> {
    let mut starts = Vec::new();
    let mut first_content = None;
    for (i, line) in text.lines().enumerate() {
        let is_marker = line == "---" || line.starts_with("--- ") || line.starts_with("---\t");
        if is_marker {
            // A marker before any content opens the first document rather
            // than ending an empty one.
            if first_content.is_none() && starts.is_empty() {
                starts.push(i + 2);
                first_content = Some(i);
                continue;
            }
            starts.push(i + 2);
        } else if first_content.is_none()
            && !line.trim().is_empty()
            && !line.trim_start().starts_with('#')
        {
            first_content = Some(i);
            starts.push(i + 1);
        }
    }
    if starts.is_empty() {
        starts.push(1);
    }
    starts
}

#[cfg(test)]
mod tests {
    use super::*;

    const TWO: &str = "# namespaces\napiVersion: v1\nkind: Namespace\nmetadata:\n  name: airflow\n---\napiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\n  namespace: airflow\nspec: {}\n";

    #[test]
    fn multi_document_files_keep_index_and_line() {
        let m = parse_file("manifests/a.yaml", TWO).unwrap();
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].id.to_string(), "Namespace airflow");
        assert_eq!((m[0].origin.document, m[0].origin.line), (0, 2));
        assert_eq!(m[1].id.to_string(), "Deployment.apps airflow/web");
        assert_eq!((m[1].origin.document, m[1].origin.line), (1, 7));
    }

    #[test]
    fn leading_marker_and_empty_documents() {
        let text = "---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: a\n---\n---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: b\n";
        let m = parse_file("f.yaml", text).unwrap();
        assert_eq!(m.len(), 2);
        assert_eq!((m[0].origin.document, m[0].origin.line), (0, 2));
        assert_eq!((m[1].origin.document, m[1].origin.line), (2, 8));
    }

    #[test]
    fn errors_name_file_document_and_line() {
        let text = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: ok\n---\nkind: ConfigMap\nmetadata:\n  name: x\n";
        let errs = parse_file("manifests/cm.yaml", text).unwrap_err();
        assert_eq!(errs.len(), 1);
        assert_eq!(
            errs[0].origin,
            Origin {
                file: "manifests/cm.yaml".into(),
                document: 1,
                line: 6
            }
        );
        assert!(errs[0].message.contains("apiVersion"), "{}", errs[0]);

        let bad = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: [unclosed\n";
        let errs = parse_file("manifests/bad.yaml", bad).unwrap_err();
        assert!(errs[0].message.starts_with("invalid YAML"), "{}", errs[0]);
        assert_eq!(errs[0].origin.line, 5, "{}", errs[0]);

        let generate = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  generateName: x-\n";
        assert!(
            parse_file("g.yaml", generate).unwrap_err()[0]
                .message
                .contains("generateName")
        );
        let list = "apiVersion: v1\nkind: List\nitems: []\n";
        assert!(
            parse_file("l.yaml", list).unwrap_err()[0]
                .message
                .contains("not supported")
        );
    }
}
