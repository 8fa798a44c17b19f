//! Helm releases declared in the platform repo: one `releases/<name>.yaml`
//! each, in ferry's own small format (strict, like platform.yaml), naming
//! the chart by exact version and the values from the repo. Parsing only;
//! fetching is `chart`, rendering `helm`.

use serde::Deserialize;

use crate::yaml;

pub const API_VERSION: &str = "ferry.dev/v1";
pub const KIND: &str = "HelmRelease";

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Release {
    #[serde(rename = "apiVersion")]
    pub api_version: String,
    pub kind: String,
    /// The Helm release name (`.Release.Name` in templates).
    pub name: String,
    /// Where the release's namespaced objects go unless a template sets one.
    pub namespace: String,
    pub chart: ChartRef,
    /// Repo paths of values files, applied in order (later ones win).
    #[serde(default)]
    pub values_files: Vec<String>,
    /// Applied after the files.
    #[serde(default)]
    pub values: Option<serde_yaml_ng::Mapping>,
}

/// Either a chart repository or OCI registry (`repository`, `https://...`
/// or `oci://registry/path`, + `name` + `version`) or a chart directory in
/// the platform repo (`path`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChartRef {
    pub repository: Option<String>,
    pub name: Option<String>,
    pub version: Option<String>,
    pub path: Option<String>,
}

/// Where a release's chart comes from, once validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChartSource {
    Repository {
        url: String,
        name: String,
        version: String,
    },
    Path(String),
}

impl Release {
    pub fn source(&self) -> ChartSource {
        match (&self.chart.path, &self.chart.repository) {
            (Some(path), _) => ChartSource::Path(path.trim_end_matches('/').to_string()),
            (None, url) => ChartSource::Repository {
                url: url.clone().unwrap_or_default(),
                name: self.chart.name.clone().unwrap_or_default(),
                version: self.chart.version.clone().unwrap_or_default(),
            },
        }
    }
}

/// One problem with a release file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}:{}{key}: {message}", line.map(|l| format!("{l}: ")).unwrap_or_default())]
pub struct ReleaseError {
    pub file: String,
    pub line: Option<usize>,
    pub key: String,
    pub message: String,
}

/// Parses and validates one release file; every problem found.
pub fn parse(file: &str, text: &str) -> Result<Release, Vec<ReleaseError>> {
    let as_error = |e: yaml::YamlError| ReleaseError {
        file: file.to_string(),
        line: e.line,
        key: e.key,
        message: e.message,
    };
    let (release, unknown): (Release, _) = yaml::parse_all_unknown(text)
        .map_err(|errors| errors.into_iter().map(as_error).collect::<Vec<_>>())?;
    let mut problems: Vec<ReleaseError> = unknown.into_iter().map(as_error).collect();
    validate(&release, &mut |key: &str, message: String| {
        problems.push(ReleaseError {
            file: file.to_string(),
            line: yaml::line_of(text, key),
            key: key.to_string(),
            message,
        })
    });
    if problems.is_empty() {
        Ok(release)
    } else {
        Err(problems)
    }
}

fn validate(r: &Release, problem: &mut dyn FnMut(&str, String)) {
    if r.api_version != API_VERSION {
        problem(
            "apiVersion",
            format!("must be `{API_VERSION}` (got `{}`)", r.api_version),
        );
    }
    if r.kind != KIND {
        problem("kind", format!("must be `{KIND}` (got `{}`)", r.kind));
    }
    // Helm's own limit: the name goes into object names and labels.
    if !dns_label(&r.name, 53) {
        problem(
            "name",
            format!(
                "`{}` is not a valid release name: lowercase letters, digits and `-`, at most 53 characters",
                r.name
            ),
        );
    }
    if !dns_label(&r.namespace, 63) {
        problem(
            "namespace",
            format!("`{}` is not a valid namespace name", r.namespace),
        );
    }
    let c = &r.chart;
    match (&c.path, &c.repository) {
        (Some(_), Some(_)) => problem(
            "chart",
            "set either `path` (a chart in this repo) or `repository`, `name` and `version`, not both"
                .into(),
        ),
        (Some(path), None) => {
            if c.name.is_some() || c.version.is_some() {
                problem(
                    "chart",
                    "a chart from `path` takes its name and version from its Chart.yaml; remove `name` and `version`".into(),
                );
            }
            if !repo_path(path) {
                problem(
                    "chart.path",
                    format!("`{path}` must be a relative path inside the repo, without `..`"),
                );
            }
        }
        (None, None) => problem(
            "chart",
            "missing: set `repository` (an https:// chart repository), `name` and `version`, or `path`"
                .into(),
        ),
        (None, Some(url)) => {
            let oci_host = url.strip_prefix("oci://").map(|rest| rest.split('/').next().unwrap_or(""));
            if oci_host == Some("") {
                problem(
                    "chart.repository",
                    format!("`{url}` names no registry: write oci://<registry>/<path>"),
                );
            } else if oci_host.is_none() && !(url.starts_with("https://") || url.starts_with("http://")) {
                problem(
                    "chart.repository",
                    format!("`{url}` must be an http(s):// chart repository or an oci:// registry URL"),
                );
            }
            if c.name.as_deref().is_none_or(str::is_empty) {
                problem(
                    "chart.name",
                    "missing: the chart's name in the repository".into(),
                );
            }
            match c.version.as_deref() {
                None | Some("") => problem(
                    "chart.version",
                    "missing: the chart's exact version, e.g. `1.11.5`".into(),
                ),
                Some(v) if !exact_version(v) => problem(
                    "chart.version",
                    format!(
                        "`{v}` is not an exact version: ferry applies what git names, so ranges and wildcards are refused"
                    ),
                ),
                Some(_) => {}
            }
        }
    }
    for (i, f) in r.values_files.iter().enumerate() {
        if !repo_path(f) {
            problem(
                &format!("values_files[{i}]"),
                format!("`{f}` must be a relative path inside the repo, without `..`"),
            );
        }
    }
}

fn dns_label(s: &str, max: usize) -> bool {
    !s.is_empty()
        && s.len() <= max
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

fn repo_path(p: &str) -> bool {
    !p.is_empty() && !p.starts_with('/') && !p.split('/').any(|part| part == "..")
}

/// `1.2.3`, optionally `v`-prefixed, with a pre-release or build suffix:
/// one version, never a range.
fn exact_version(v: &str) -> bool {
    let v = v.strip_prefix('v').unwrap_or(v);
    let core = v.split(['-', '+']).next().unwrap_or("");
    let parts: Vec<&str> = core.split('.').collect();
    parts.len() == 3
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-+.".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "\
apiVersion: ferry.dev/v1
kind: HelmRelease
name: mlflow
namespace: mlflow
chart:
  repository: https://community-charts.github.io/helm-charts
  name: mlflow
  version: 1.11.5
values_files: [values/mlflow.yaml]
values:
  replicaCount: 2
";

    #[test]
    fn a_release_names_its_chart_by_exact_version() {
        let r = parse("releases/mlflow.yaml", GOOD).unwrap();
        assert_eq!(
            r.source(),
            ChartSource::Repository {
                url: "https://community-charts.github.io/helm-charts".into(),
                name: "mlflow".into(),
                version: "1.11.5".into()
            }
        );
        assert_eq!(r.values_files, ["values/mlflow.yaml"]);
    }

    #[test]
    fn every_problem_is_named_with_its_key_and_line() {
        let text = GOOD
            .replace("version: 1.11.5", "version: ^1.11")
            .replace("name: mlflow\nnamespace", "name: MLflow\nnamespace")
            .replace("values:\n", "valuse:\n");
        let errors = parse("releases/mlflow.yaml", &text).unwrap_err();
        let shown: Vec<String> = errors.iter().map(ToString::to_string).collect();
        assert!(
            shown
                .iter()
                .any(|e| e.starts_with("releases/mlflow.yaml:10: valuse")),
            "{shown:?}"
        );
        assert!(
            shown
                .iter()
                .any(|e| e.starts_with("releases/mlflow.yaml:3: name: `MLflow`")),
            "{shown:?}"
        );
        assert!(
            shown
                .iter()
                .any(|e| e.contains("chart.version: `^1.11` is not an exact version")),
            "{shown:?}"
        );
    }

    #[test]
    fn a_chart_is_from_a_repository_or_a_path_never_both() {
        let both = GOOD.replace(
            "  version: 1.11.5\n",
            "  version: 1.11.5\n  path: charts/x\n",
        );
        let e = parse("r.yaml", &both).unwrap_err();
        assert!(e[0].message.contains("not both"), "{e:?}");
        let path = "apiVersion: ferry.dev/v1\nkind: HelmRelease\nname: x\nnamespace: y\nchart: {path: ../x}\n";
        let e = parse("r.yaml", path).unwrap_err();
        assert_eq!(e[0].key, "chart.path");
        for v in ["1.2.3", "v1.2.3", "1.2.3-rc.1", "1.2.3+build.5"] {
            assert!(exact_version(v), "{v}");
        }
        for v in ["1.2", "1.x", ">=1.2.3", "1.2.3 || 2.0.0", "*", "~1.2.3"] {
            assert!(!exact_version(v), "{v}");
        }
    }
}
