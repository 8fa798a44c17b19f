//! Helm releases rendered into manifests: `helm template` (the pinned
//! binary) of the release's chart with its values from the commit, for the
//! cluster's Kubernetes version. What comes out is read exactly like the
//! files of `manifests/`, so plan, apply, prune, drift and previews treat
//! a release's objects as any other. A render must be deterministic: it
//! runs twice and a template whose output differs (a generated password,
//! a timestamp) is refused, since ferry would otherwise see drift and
//! re-apply on every evaluation.

use std::path::{Path, PathBuf};
use std::process::Command;

use git2::{ObjectType, Oid, Repository, Tree};

use super::chart::ChartCache;
use super::manifests::{self, Hook, HookPhase, Manifest, ManifestError};
use super::release::{self, ChartSource, Release};

/// How to render: the binary, the chart cache, and what the cluster is.
#[derive(Debug, Clone)]
pub struct HelmSettings {
    pub binary: PathBuf,
    pub cache_dir: PathBuf,
    /// `--kube-version`: charts check it (`kubeVersion`, `.Capabilities`).
    pub kube_version: Option<String>,
    /// `--api-versions`, for charts that render objects of a CRD only when
    /// the cluster serves it (ServiceMonitors, for one).
    pub api_versions: Vec<String>,
    /// OCI registries (`host:port`) spoken to over plain HTTP.
    pub plain_http_registries: Vec<String>,
    /// Credentials by chart repository URL.
    pub logins: Vec<(String, super::chart::Login)>,
}

/// Every release file in `dir` of `commit`, rendered; every problem of
/// every release. A missing directory declares no releases.
pub fn render_all(
    repo: &Repository,
    commit: Oid,
    dir: &str,
    settings: &HelmSettings,
) -> Result<Vec<Manifest>, Vec<ManifestError>> {
    let fail = |file: &str, message: String| vec![ManifestError::general(file, message)];
    let root = repo
        .find_commit(commit)
        .and_then(|c| c.tree())
        .map_err(|e| fail(dir, format!("cannot read commit {commit}: {}", e.message())))?;
    let dir = dir.trim_matches('/');
    let tree = match root.get_path(Path::new(dir)) {
        Ok(entry) if entry.kind() == Some(ObjectType::Tree) => repo
            .find_tree(entry.id())
            .map_err(|e| fail(dir, e.message().to_string()))?,
        Ok(_) => {
            return Err(fail(
                dir,
                format!("`{dir}` is a file; expected a directory of release files"),
            ));
        }
        Err(_) => return Ok(Vec::new()),
    };
    let mut files: Vec<(String, Oid)> = tree
        .iter()
        .filter(|e| e.kind() == Some(ObjectType::Blob))
        .filter_map(|e| {
            let name = e.name().ok()?.to_string();
            (name.ends_with(".yaml") || name.ends_with(".yml"))
                .then(|| (format!("{dir}/{name}"), e.id()))
        })
        .collect();
    files.sort();
    let mut manifests = Vec::new();
    let mut errors = Vec::new();
    let mut names = std::collections::HashMap::new();
    for (file, blob) in files {
        let text = match repo.find_blob(blob) {
            Ok(b) => String::from_utf8(b.content().to_vec()),
            Err(e) => {
                errors.extend(fail(&file, e.message().to_string()));
                continue;
            }
        };
        let Ok(text) = text else {
            errors.extend(fail(&file, crate::yaml::NOT_UTF8.into()));
            continue;
        };
        let release = match release::parse(&file, &text) {
            Ok(r) => r,
            Err(e) => {
                errors.extend(e.into_iter().map(|e| ManifestError {
                    origin: manifests::Origin {
                        file: e.file.clone(),
                        document: 0,
                        line: e.line.unwrap_or(0),
                    },
                    message: format!("{}: {}", e.key, e.message),
                }));
                continue;
            }
        };
        if let Some(other) = names.insert(
            (release.namespace.clone(), release.name.clone()),
            file.clone(),
        ) {
            errors.extend(fail(
                &file,
                format!(
                    "release `{}` in namespace `{}` is declared by {other} too; a release name is unique per namespace",
                    release.name, release.namespace
                ),
            ));
            continue;
        }
        match render(repo, &root, &file, &release, settings) {
            Ok(mut m) => manifests.append(&mut m),
            Err(mut e) => errors.append(&mut e),
        }
    }
    if errors.is_empty() {
        Ok(manifests)
    } else {
        Err(errors)
    }
}

/// One release rendered, its objects defaulted to the release namespace.
fn render(
    repo: &Repository,
    root: &Tree<'_>,
    file: &str,
    release: &Release,
    settings: &HelmSettings,
) -> Result<Vec<Manifest>, Vec<ManifestError>> {
    let fail = |message: String| vec![ManifestError::general(file, message)];
    let kube_version = settings.kube_version.as_deref().ok_or_else(|| {
        fail(
            "the Kubernetes version to render for is not known: the cluster could not be asked (is it reachable?) and targets.kubernetes.helm.kube_version is not set in ferry's config (the cluster's version, e.g. \"1.33\")".into(),
        )
    })?;
    let work =
        tempfile::tempdir().map_err(|e| fail(format!("cannot make a work directory: {e}")))?;
    let chart = match release.source() {
        ChartSource::Repository { url, name, version } => {
            let cache = ChartCache::new(&settings.cache_dir.join("charts"));
            let login = settings
                .logins
                .iter()
                .find(|(prefix, _)| url.trim_end_matches('/') == prefix.trim_end_matches('/'))
                .map(|(_, login)| login);
            let fetched = match url.strip_prefix("oci://") {
                Some(rest) => {
                    let registry = rest.split('/').next().unwrap_or("");
                    let plain = settings.plain_http_registries.iter().any(|r| r == registry);
                    cache.oci_archive(&settings.binary, &url, &name, &version, plain, login)
                }
                None => cache.archive(&url, &name, &version, login),
            };
            fetched.map_err(|e| fail(format!("chart: {e}")))?
        }
        ChartSource::Path(path) => {
            let entry = root
                .get_path(Path::new(&path))
                .ok()
                .filter(|e| e.kind() == Some(ObjectType::Tree))
                .ok_or_else(|| {
                    fail(format!(
                        "chart.path: `{path}` is not a directory at this commit"
                    ))
                })?;
            let out = work.path().join("chart");
            let tree = repo
                .find_tree(entry.id())
                .map_err(|e| fail(e.message().to_string()))?;
            super::materialize::write_tree(repo, &tree, &out)
                .map_err(|e| fail(format!("chart.path: cannot write `{path}`: {e}")))?;
            out
        }
    };
    let mut values = Vec::new();
    for (i, path) in release.values_files.iter().enumerate() {
        let blob = root
            .get_path(Path::new(path))
            .ok()
            .and_then(|e| repo.find_blob(e.id()).ok())
            .ok_or_else(|| {
                fail(format!(
                    "values_files[{i}]: `{path}` does not exist at this commit"
                ))
            })?;
        let text = std::str::from_utf8(blob.content()).map_err(|_| {
            fail(format!(
                "values_files[{i}]: `{path}`: {}",
                crate::yaml::NOT_UTF8
            ))
        })?;
        // Helm keeps one of two equal keys silently; ferry refuses them, as
        // in manifests.
        if let Some(d) = crate::yaml::duplicate_keys(text).into_iter().next() {
            return Err(vec![ManifestError {
                origin: manifests::Origin {
                    file: path.clone(),
                    document: d.document,
                    line: d.line,
                },
                message: format!("key `{}` {}", d.key, d.message()),
            }]);
        }
        let out = work.path().join(format!("values-{i}.yaml"));
        std::fs::write(&out, blob.content())
            .map_err(|e| fail(format!("cannot write values: {e}")))?;
        values.push(out);
    }
    if let Some(inline) = &release.values {
        let out = work.path().join("values-inline.yaml");
        let text = serde_yaml_ng::to_string(inline).map_err(|e| fail(format!("values: {e}")))?;
        std::fs::write(&out, text).map_err(|e| fail(format!("cannot write values: {e}")))?;
        values.push(out);
    }
    let run = || {
        helm_template(
            settings,
            release,
            &chart,
            kube_version,
            &values,
            work.path(),
        )
    };
    let first = run().map_err(&fail)?;
    let second = run().map_err(&fail)?;
    if first != second {
        let source = differing_source(&first, &second).unwrap_or_else(|| "its output".into());
        return Err(fail(format!(
            "the chart does not render the same twice ({source} differs), so every evaluation would change it; pin the generated value in the release's values (a password, a certificate, a random suffix)"
        )));
    }
    parse_output(file, &first, &release.namespace)
}

fn helm_template(
    settings: &HelmSettings,
    release: &Release,
    chart: &Path,
    kube_version: &str,
    values: &[PathBuf],
    work: &Path,
) -> Result<String, String> {
    let mut cmd = Command::new(&settings.binary);
    cmd.arg("template")
        .arg(&release.name)
        .arg(chart)
        .args(["--namespace", &release.namespace])
        .args(["--kube-version", kube_version])
        .arg("--include-crds")
        .arg("--skip-tests");
    for v in &settings.api_versions {
        cmd.args(["--api-versions", v]);
    }
    for v in values {
        cmd.arg("--values").arg(v);
    }
    // Nothing from the host's helm config (repositories, plugins, registry
    // logins) reaches a render: what git names is what renders.
    for (var, sub) in [
        ("HELM_CACHE_HOME", "cache"),
        ("HELM_CONFIG_HOME", "config"),
        ("HELM_DATA_HOME", "data"),
    ] {
        cmd.env(var, work.join(sub));
    }
    let output = cmd.output().map_err(|e| {
        format!(
            "cannot run `{}`: {e}; ferry renders Helm releases with the pinned helm binary (targets.kubernetes.helm.binary)",
            settings.binary.display()
        )
    })?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        return Err(format!("helm template failed: {}", stderr.trim()));
    }
    String::from_utf8(output.stdout).map_err(|_| "helm template printed invalid UTF-8".into())
}

/// The rendered documents, each named by the release file and the template
/// it came from (helm's `# Source:` line).
fn parse_output(
    file: &str,
    output: &str,
    namespace: &str,
) -> Result<Vec<Manifest>, Vec<ManifestError>> {
    let mut manifests = Vec::new();
    let mut errors = Vec::new();
    for document in split_documents(output) {
        let source = document
            .lines()
            .find_map(|l| l.strip_prefix("# Source: "))
            .unwrap_or("(no source)");
        let name = format!("{file} ({source})");
        let expanded = expand_list(document);
        match manifests::parse_file(&name, expanded.as_deref().unwrap_or(document)) {
            Ok(parsed) => {
                for mut m in parsed {
                    m.release = Some(file.to_string());
                    match hook(&m) {
                        HookKind::None => {}
                        // Runs only on `helm uninstall` or `rollback`, which
                        // ferry never does (a removed release is pruned).
                        HookKind::Skipped => continue,
                        HookKind::Runs(h) => m.hook = Some(h),
                        HookKind::Configuration(phase) => {
                            m.before_hooks = phase == HookPhase::Pre;
                        }
                    }
                    m.default_namespace = Some(namespace.to_string());
                    manifests.push(m);
                }
            }
            Err(mut e) => errors.append(&mut e),
        }
    }
    if errors.is_empty() {
        Ok(manifests)
    } else {
        Err(errors)
    }
}

enum HookKind {
    /// Not a hook.
    None,
    Skipped,
    Runs(Hook),
    /// A hook that is configuration, of its earliest phase: applied as any
    /// object, and before the hooks of that phase.
    Configuration(HookPhase),
}

/// What ferry does with a Helm hook. Hooks that run something (Jobs, Pods)
/// run in their phase; a hook that is configuration (a Secret, a
/// ConfigMap, a hook Job's ServiceAccount and RBAC) is applied as any other
/// object and kept, since ferry's apply order already puts configuration
/// before the workloads that read it (which is what such hooks are for),
/// and, when it is of the pre phase, before that phase's hooks run.
fn hook(m: &Manifest) -> HookKind {
    let Some(annotations) = m.object.pointer("/metadata/annotations") else {
        return HookKind::None;
    };
    let Some(phases) = annotations.get("helm.sh/hook").and_then(|h| h.as_str()) else {
        return HookKind::None;
    };
    let phases: Vec<&str> = phases.split(',').map(str::trim).collect();
    let phase = if phases
        .iter()
        .any(|p| matches!(*p, "pre-install" | "pre-upgrade"))
    {
        HookPhase::Pre
    } else if phases
        .iter()
        .any(|p| matches!(*p, "post-install" | "post-upgrade"))
    {
        HookPhase::Post
    } else {
        return HookKind::Skipped;
    };
    if !matches!(m.id.kind.as_str(), "Job" | "Pod") {
        return HookKind::Configuration(phase);
    }
    let weight = annotations
        .get("helm.sh/hook-weight")
        .and_then(|w| w.as_str())
        .and_then(|w| w.trim().parse().ok())
        .unwrap_or(0);
    let policy = annotations
        .get("helm.sh/hook-delete-policy")
        .and_then(|p| p.as_str());
    let has = |name: &str| policy.is_some_and(|p| p.split(',').any(|x| x.trim() == name));
    HookKind::Runs(Hook {
        phase,
        weight,
        delete_before: policy.is_none() || has("before-hook-creation"),
        delete_on_success: has("hook-succeeded"),
        delete_on_failure: has("hook-failed"),
    })
}

/// A `List` a template renders (the AWS load balancer controller's
/// IngressClass does) as one document per item, as kubectl applies it;
/// None when the document is no List.
fn expand_list(document: &str) -> Option<String> {
    let value: serde_json::Value = serde_yaml_ng::from_str(document).ok()?;
    let kind = value.get("kind")?.as_str()?;
    let items = value.get("items")?.as_array()?;
    if !(kind == "List" || kind.ends_with("List")) {
        return None;
    }
    let mut out = String::new();
    for item in items {
        out.push_str("---\n");
        out.push_str(&serde_yaml_ng::to_string(item).ok()?);
    }
    Some(out)
}

/// Documents of a multi-document YAML stream, split at `---` lines.
fn split_documents(text: &str) -> Vec<&str> {
    let mut docs = Vec::new();
    let mut start = 0;
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        if line.trim_end() == "---" {
            if !text[start..offset].trim().is_empty() {
                docs.push(&text[start..offset]);
            }
            start = offset + line.len();
        }
        offset += line.len();
    }
    if !text[start..].trim().is_empty() {
        docs.push(&text[start..]);
    }
    docs
}

fn differing_source(a: &str, b: &str) -> Option<String> {
    let (da, db) = (split_documents(a), split_documents(b));
    da.iter()
        .zip(db.iter())
        .find(|(x, y)| x != y)
        .and_then(|(x, _)| x.lines().find_map(|l| l.strip_prefix("# Source: ")))
        .map(|s| format!("`{s}`"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rendered_list_is_its_items() {
        let list = "apiVersion: v1\nkind: List\nitems:\n  - {apiVersion: v1, kind: ConfigMap, metadata: {name: a}}\n  - {apiVersion: v1, kind: ConfigMap, metadata: {name: b}}\n";
        let parsed = parse_output(
            "releases/r.yaml",
            &format!("---\n# Source: c/templates/l.yaml\n{list}"),
            "ns",
        )
        .unwrap();
        let names: Vec<&str> = parsed.iter().map(|m| m.id.name.as_str()).collect();
        assert_eq!(names, ["a", "b"]);
        assert_eq!(parsed[0].default_namespace.as_deref(), Some("ns"));
        assert_eq!(
            expand_list("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\n"),
            None
        );
    }

    #[test]
    fn rendered_documents_are_split_at_document_markers_only() {
        let out = "---\n# Source: c/templates/a.yaml\nkind: A\ndata: |\n  x --- y\n---\n# Source: c/templates/b.yaml\nkind: B\n";
        let docs = split_documents(out);
        assert_eq!(docs.len(), 2);
        assert!(docs[0].contains("x --- y"));
        let other = out.replace("kind: B", "kind: C");
        assert_eq!(
            differing_source(out, &other).as_deref(),
            Some("`c/templates/b.yaml`")
        );
    }
}
