//! Chart archives from HTTP(S) chart repositories, fetched once and kept by
//! digest. A chart version is looked up in the repository's `index.yaml`,
//! the archive is checked against the digest the index gives (a mismatch
//! is refused, never cached), and the (repository, chart, version) -> digest
//! pin is remembered, so a warm render never touches the network and a
//! repository that is down does not stop a chart that was fetched before.

use std::path::{Path, PathBuf};
use std::time::Duration;

use sha2::{Digest, Sha256};

#[derive(Debug, thiserror::Error)]
pub enum ChartError {
    #[error("cannot fetch {url}: {message}")]
    Unreachable { url: String, message: String },
    #[error("{0}")]
    NotFound(String),
    #[error("the repository's credentials: {0}")]
    Login(String),
    #[error(
        "the archive of {chart} {version} from {url} has sha256 {got}, but the repository's index.yaml says {want}: refusing it (tampered with, or re-published under the same version)"
    )]
    Digest {
        chart: String,
        version: String,
        url: String,
        want: String,
        got: String,
    },
    #[error("{url}/index.yaml: {message}")]
    Index { url: String, message: String },
    #[error("chart cache {}: {source}", path.display())]
    Cache {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Chart archives under one directory: `sha256/<digest>.tgz`, and
/// `pins/<repository>/<chart>-<version>` holding the digest.
pub struct ChartCache {
    dir: PathBuf,
}

const FETCH_TIMEOUT: Duration = Duration::from_secs(60);

impl ChartCache {
    pub fn new(dir: &Path) -> ChartCache {
        ChartCache {
            dir: dir.to_path_buf(),
        }
    }

    /// The archive of `name` at `version` from the repository at `url`,
    /// verified; fetched only when not cached.
    pub fn archive(
        &self,
        url: &str,
        name: &str,
        version: &str,
        login: Option<&Login>,
    ) -> Result<PathBuf, ChartError> {
        let url = url.trim_end_matches('/');
        let pin = self.pin(url, name, version);
        if let Some(path) = self.pinned(&pin) {
            return Ok(path);
        }
        let index_url = format!("{url}/index.yaml");
        let basic = login.map(Login::basic).transpose()?;
        let index = get(&index_url, basic.as_deref())?;
        let (want, archive_url) = lookup(url, &index, name, version)?;
        // Credentials go only to the repository's own host.
        let same_host = url::Url::parse(&archive_url)
            .ok()
            .map(|u| u.host_str().map(str::to_string))
            == url::Url::parse(url)
                .ok()
                .map(|u| u.host_str().map(str::to_string));
        let bytes = get(&archive_url, basic.as_deref().filter(|_| same_host))?;
        let got = hex(&Sha256::digest(&bytes));
        if got != want {
            return Err(ChartError::Digest {
                chart: name.to_string(),
                version: version.to_string(),
                url: archive_url,
                want,
                got,
            });
        }
        let path = self.by_digest(&got);
        write_atomic(&path, &bytes)?;
        write_atomic(&pin, got.as_bytes())?;
        Ok(path)
    }

    /// The archive of `name` at `version` from the OCI registry path `url`
    /// (`oci://registry/path`), pulled by `helm` (which checks each layer
    /// against its digest) only when not cached; then kept by its own
    /// sha256 and pinned, so a version re-pushed later never changes what
    /// renders. With a `login`, helm reads it from a registry config of
    /// this pull's own (never from argv, which every process may read).
    pub fn oci_archive(
        &self,
        helm: &Path,
        url: &str,
        name: &str,
        version: &str,
        plain_http: bool,
        login: Option<&Login>,
    ) -> Result<PathBuf, ChartError> {
        let url = url.trim_end_matches('/');
        let pin = self.pin(url, name, version);
        if let Some(path) = self.pinned(&pin) {
            return Ok(path);
        }
        let reference = format!("{url}/{name}");
        let fail = |message: String| ChartError::Unreachable {
            url: reference.clone(),
            message,
        };
        let work = tempfile::tempdir().map_err(|e| fail(format!("no work directory: {e}")))?;
        std::fs::create_dir(work.path().join("out"))
            .map_err(|e| fail(format!("no work directory: {e}")))?;
        let mut cmd = std::process::Command::new(helm);
        cmd.args(["pull", &reference, "--version", version, "--destination"])
            .arg(work.path().join("out"));
        if plain_http {
            cmd.arg("--plain-http");
        }
        if let Some(login) = login {
            let registry = url
                .strip_prefix("oci://")
                .and_then(|rest| rest.split('/').next())
                .unwrap_or_default();
            let config = serde_json::json!({"auths": {registry: {"auth": login.encoded()?}}});
            // In the pull's own directory (private to this user, as
            // tempfile makes it), removed with it.
            let path = work.path().join("registry.json");
            write_atomic(&path, config.to_string().as_bytes())?;
            cmd.arg("--registry-config").arg(&path);
        }
        for var in ["HELM_CACHE_HOME", "HELM_CONFIG_HOME", "HELM_DATA_HOME"] {
            cmd.env(var, work.path().join("home"));
        }
        let out = cmd
            .output()
            .map_err(|e| fail(format!("cannot run `{}`: {e}", helm.display())))?;
        if !out.status.success() {
            return Err(fail(
                String::from_utf8_lossy(&out.stderr).trim().to_string(),
            ));
        }
        let archive = std::fs::read_dir(work.path().join("out"))
            .ok()
            .and_then(|mut d| d.next())
            .and_then(Result::ok)
            .map(|e| e.path())
            .ok_or_else(|| fail("helm pull wrote no archive".into()))?;
        let bytes = std::fs::read(&archive).map_err(|source| ChartError::Cache {
            path: archive.clone(),
            source,
        })?;
        let digest = hex(&Sha256::digest(&bytes));
        let path = self.by_digest(&digest);
        write_atomic(&path, &bytes)?;
        write_atomic(&pin, digest.as_bytes())?;
        Ok(path)
    }

    fn pin(&self, url: &str, name: &str, version: &str) -> PathBuf {
        self.dir
            .join("pins")
            .join(&hex(&Sha256::digest(url.as_bytes()))[..16])
            .join(format!("{name}-{version}"))
    }

    /// The cached archive a pin names, if it is there and intact.
    fn pinned(&self, pin: &Path) -> Option<PathBuf> {
        let digest = std::fs::read_to_string(pin).ok()?;
        let path = self.by_digest(digest.trim());
        std::fs::read(&path)
            .is_ok_and(|bytes| hex(&Sha256::digest(&bytes)) == digest.trim())
            .then_some(path)
    }

    fn by_digest(&self, digest: &str) -> PathBuf {
        self.dir.join("sha256").join(format!("{digest}.tgz"))
    }
}

#[derive(serde::Deserialize)]
struct Index {
    #[serde(default)]
    entries: std::collections::BTreeMap<String, Vec<IndexEntry>>,
}

#[derive(serde::Deserialize)]
struct IndexEntry {
    version: String,
    #[serde(default)]
    digest: Option<String>,
    #[serde(default)]
    urls: Vec<String>,
}

/// The digest and archive URL the index gives for `name` at `version`.
fn lookup(
    url: &str,
    index: &[u8],
    name: &str,
    version: &str,
) -> Result<(String, String), ChartError> {
    let index_err = |message: String| ChartError::Index {
        url: url.to_string(),
        message,
    };
    let index: Index = serde_yaml_ng::from_slice(index)
        .map_err(|e| index_err(format!("not a chart repository index: {e}")))?;
    let Some(versions) = index.entries.get(name) else {
        return Err(ChartError::NotFound(format!(
            "chart `{name}` is not in {url}/index.yaml; check `chart.name` and `chart.repository`"
        )));
    };
    let wanted = version.strip_prefix('v').unwrap_or(version);
    let Some(entry) = versions
        .iter()
        .find(|e| e.version.strip_prefix('v').unwrap_or(&e.version) == wanted)
    else {
        let known: Vec<&str> = versions
            .iter()
            .take(5)
            .map(|e| e.version.as_str())
            .collect();
        return Err(ChartError::NotFound(format!(
            "{url} has no version {version} of chart `{name}` (its newest: {}); check `chart.version`",
            known.join(", ")
        )));
    };
    let digest = entry
        .digest
        .clone()
        .filter(|d| d.len() == 64 && d.bytes().all(|b| b.is_ascii_hexdigit()))
        .ok_or_else(|| {
            index_err(format!(
                "{name} {version} has no sha256 `digest`, so its archive cannot be verified"
            ))
        })?
        .to_ascii_lowercase();
    let first = entry
        .urls
        .first()
        .ok_or_else(|| index_err(format!("{name} {version} lists no `urls`")))?;
    // Relative URLs are relative to the index.
    let base = url::Url::parse(&format!("{url}/"))
        .map_err(|e| index_err(format!("bad repository URL: {e}")))?;
    let archive = base
        .join(first)
        .map_err(|e| index_err(format!("bad archive URL `{first}`: {e}")))?;
    Ok((digest, archive.to_string()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), ChartError> {
    let cache = |source| ChartError::Cache {
        path: path.to_path_buf(),
        source,
    };
    crate::disk::write_atomic(path, bytes).map_err(cache)
}

/// A chart repository's HTTP basic credentials: the username, and the
/// file its password is read from at each fetch (so a rotated one is used).
#[derive(Debug, Clone)]
pub struct Login {
    pub username: String,
    pub password_file: PathBuf,
}

impl Login {
    /// The `Authorization` header value.
    fn basic(&self) -> Result<String, ChartError> {
        Ok(format!("Basic {}", self.encoded()?))
    }

    /// `user:password` in base64, as HTTP basic and registry configs carry it.
    fn encoded(&self) -> Result<String, ChartError> {
        use base64::Engine;
        let password = crate::secret::from_file(&self.password_file)
            .map_err(|e| ChartError::Login(e.to_string()))?;
        let pair = format!("{}:{}", self.username, password.expose());
        Ok(base64::engine::general_purpose::STANDARD.encode(pair))
    }
}

/// GET `url`, following redirects (see [`crate::http`]).
fn get(url: &str, authorization: Option<&str>) -> Result<Vec<u8>, ChartError> {
    let fail = |message: String| ChartError::Unreachable {
        url: url.to_string(),
        message,
    };
    let response = crate::http::send(
        crate::http::Request::get(url, FETCH_TIMEOUT).authorization(authorization),
    )
    .map_err(fail)?;
    if !response.status.is_success() {
        return Err(fail(format!("HTTP {}", response.status)));
    }
    Ok(response.body)
}

#[cfg(test)]
mod tests {
    use super::*;

    const INDEX: &str = "\
apiVersion: v1
entries:
  mlflow:
    - version: 1.11.5
      digest: ABCDEF0123456789abcdef0123456789abcdef0123456789abcdef0123456789
      urls: [mlflow-1.11.5.tgz]
    - version: 1.10.0
      digest: 0000000000000000000000000000000000000000000000000000000000000000
      urls: [https://elsewhere.example/mlflow-1.10.0.tgz]
";

    #[test]
    fn the_index_gives_the_digest_and_where_the_archive_is() {
        let (digest, url) = lookup(
            "http://127.0.0.1:1/charts",
            INDEX.as_bytes(),
            "mlflow",
            "v1.11.5",
        )
        .unwrap();
        assert_eq!(
            digest,
            "abcdef0123456789abcdef0123456789abcdef0123456789abcdef0123456789"
        );
        assert_eq!(url, "http://127.0.0.1:1/charts/mlflow-1.11.5.tgz");
        let (_, url) = lookup("http://127.0.0.1:1", INDEX.as_bytes(), "mlflow", "1.10.0").unwrap();
        assert_eq!(url, "https://elsewhere.example/mlflow-1.10.0.tgz");
        let e = lookup("http://h", INDEX.as_bytes(), "mlflow", "9.9.9").unwrap_err();
        assert!(
            e.to_string()
                .contains("no version 9.9.9 of chart `mlflow` (its newest: 1.11.5, 1.10.0)"),
            "{e}"
        );
        let e = lookup("http://h", INDEX.as_bytes(), "mlfow", "1.11.5").unwrap_err();
        assert!(
            e.to_string()
                .contains("chart `mlfow` is not in http://h/index.yaml"),
            "{e}"
        );
    }
}
