//! Secrets whose values live in AWS Secrets Manager: git declares the
//! Secret (name, namespace, type, labels) with the annotation
//! `ferry.dev/secrets-manager: <secret id>` and no values; each plan reads
//! the secret's current value and fills `data` before the Secret is
//! resolved, diffed and applied like any other object. So a Secret is in
//! ferry's inventory, pruned when git drops it, redacted in every plan,
//! and a rotated value is drift that ferry applies (see
//! [`super::plan::Plan::drift_is_only_new_secret_values`]).

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

use base64::Engine;
use serde_json::Value;

use crate::config::SecretsManagerConfig;
use crate::desired::manifests::{Manifest, ManifestError};
use crate::secret::Secret;

/// The secret id (name or ARN) the values come from.
pub const FROM: &str = "ferry.dev/secrets-manager";
/// Set for a plain-text secret: the one key its whole value goes to.
/// Without it the value must be a JSON object, each member one key.
pub const KEY: &str = "ferry.dev/secrets-manager-key";
/// Set to pick members of a JSON value (`a, b`): only these are copied,
/// and each must be there. Without it every member is.
pub const KEYS: &str = "ferry.dev/secrets-manager-keys";
/// Written by ferry: the Secrets Manager version the values are from, so
/// a rotation shows in a plan (and on the object) without any value.
pub const VERSION: &str = "ferry.dev/secrets-manager-version";

/// Where the values come from.
pub enum Store {
    #[cfg(feature = "aws")]
    SecretsManager(crate::aws::secrets_manager::SecretsManager),
    /// A local stand-in: the value of secret `id` is the file `<dir>/<id>`.
    Directory(PathBuf),
}

impl Store {
    /// The store `config` names; None for AWS in a build without it
    /// (which the config's validation refuses).
    pub async fn connect(config: &SecretsManagerConfig) -> Option<Store> {
        if let Some(dir) = &config.directory {
            return Some(Store::Directory(dir.clone()));
        }
        #[cfg(feature = "aws")]
        return Some(Store::SecretsManager(
            crate::aws::secrets_manager::SecretsManager::connect(config).await,
        ));
        #[cfg(not(feature = "aws"))]
        None
    }
}

#[derive(Debug)]
pub enum FillError {
    /// The revision's to fix (with file and line): nothing is applied.
    Refused(Vec<ManifestError>),
    /// Secrets Manager could not answer: retried.
    Unavailable(String),
}

/// What one Secret asks for.
#[derive(Debug, PartialEq)]
pub struct Request {
    /// The secret's name or ARN.
    pub id: String,
    /// The one key a plain-text value goes to.
    pub key: Option<String>,
    /// The members of a JSON value taken (None: all).
    pub keys: Option<Vec<String>>,
}

/// Whether `object` is a Secret ferry fills from Secrets Manager.
pub fn is_filled(object: &Value) -> bool {
    object["kind"] == "Secret" && annotation(object, FROM).is_some()
}

fn annotation<'a>(object: &'a Value, name: &str) -> Option<&'a str> {
    object["metadata"]["annotations"][name].as_str()
}

/// Pure: what `m` asks for, if anything, or why it cannot.
pub fn request(m: &Manifest) -> Option<Result<Request, ManifestError>> {
    let o = &m.object;
    let id = o["metadata"]["annotations"].get(FROM)?;
    let refuse = |message: String| {
        Some(Err(ManifestError {
            origin: m.origin.clone(),
            message,
        }))
    };
    if o["kind"] != "Secret" || o["apiVersion"] != "v1" {
        return refuse(format!(
            "{FROM} is for a v1 Secret, not {} {}",
            o["apiVersion"].as_str().unwrap_or("?"),
            o["kind"].as_str().unwrap_or("?")
        ));
    }
    let Some(id) = id.as_str().map(str::trim).filter(|s| !s.is_empty()) else {
        return refuse(format!(
            "{FROM} must name a secret (its name or ARN) in Secrets Manager"
        ));
    };
    if o.get("data").is_some() || o.get("stringData").is_some() {
        return refuse(format!(
            "Secret {}: its values come from Secrets Manager ({id}); remove `data`/`stringData` from git",
            m.id.name
        ));
    }
    let key = match o["metadata"]["annotations"].get(KEY) {
        None => None,
        Some(k) => match k.as_str().filter(|k| valid_key(k)) {
            Some(k) => Some(k.to_string()),
            None => {
                return refuse(format!(
                    "{KEY} must be a Secret key (letters, digits, `-`, `_`, `.`)"
                ));
            }
        },
    };
    let keys = match o["metadata"]["annotations"].get(KEYS) {
        None => None,
        Some(k) => {
            let keys: Vec<String> = k
                .as_str()
                .unwrap_or_default()
                .split(',')
                .map(|k| k.trim().to_string())
                .collect();
            if keys.iter().any(|k| !valid_key(k)) {
                return refuse(format!(
                    "{KEYS} must list Secret keys, comma-separated (letters, digits, `-`, `_`, `.`)"
                ));
            }
            if key.is_some() {
                return refuse(format!(
                    "{KEY} (a plain-text value) and {KEYS} (members of a JSON one) exclude each other"
                ));
            }
            Some(keys)
        }
    };
    Some(Ok(Request {
        id: id.to_string(),
        key,
        keys,
    }))
}

/// A Secret data key as the API server accepts one.
fn valid_key(key: &str) -> bool {
    !key.is_empty()
        && key.len() <= 253
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// The Secret's keys from a secret's text: the whole text under `key`, or
/// each member of a JSON object. Says why not without quoting the value.
fn values(
    text: &str,
    key: Option<&str>,
    keys: Option<&[String]>,
) -> Result<BTreeMap<String, String>, String> {
    if let Some(key) = key {
        return Ok(BTreeMap::from([(key.to_string(), text.to_string())]));
    }
    let Ok(Value::Object(members)) = serde_json::from_str::<Value>(text) else {
        return Err(format!(
            "its value is not a JSON object; for a plain-text secret name its key with {KEY}"
        ));
    };
    if members.is_empty() {
        return Err("its value is an empty JSON object".into());
    }
    if let Some(keys) = keys
        && let Some(absent) = keys.iter().find(|k| !members.contains_key(k.as_str()))
    {
        return Err(format!(
            "it has no member `{absent}`, which {KEYS} asks for"
        ));
    }
    let mut data = BTreeMap::new();
    for (name, value) in members {
        if keys.is_some_and(|keys| !keys.contains(&name)) {
            continue;
        }
        if !valid_key(&name) {
            return Err(format!(
                "member `{name}` is not a valid Secret key (letters, digits, `-`, `_`, `.`)"
            ));
        }
        let text = match value {
            Value::String(s) => s,
            Value::Number(n) => n.to_string(),
            Value::Bool(b) => b.to_string(),
            _ => {
                return Err(format!(
                    "member `{name}` is not a string, number or boolean"
                ));
            }
        };
        data.insert(name, text);
    }
    Ok(data)
}

/// Fills every Secret of `manifests` that asks for Secrets Manager values
/// (each secret read once), leaving the rest as they are (and uncopied when
/// none asks). Reads only.
pub async fn fill<'a>(
    manifests: &'a [Manifest],
    store: Option<&Store>,
) -> Result<std::borrow::Cow<'a, [Manifest]>, FillError> {
    let mut errors = Vec::new();
    let mut asks = Vec::new();
    for (i, m) in manifests.iter().enumerate() {
        match request(m) {
            None => {}
            Some(Ok(r)) => asks.push((i, r)),
            Some(Err(e)) => errors.push(e),
        }
    }
    if asks.is_empty() && errors.is_empty() {
        return Ok(std::borrow::Cow::Borrowed(manifests));
    }
    let Some(store) = store else {
        let needs = format!(
            "values from Secrets Manager need `secrets_manager:` in ferry.yaml's kubernetes target{}",
            if cfg!(feature = "aws") {
                ""
            } else {
                " and a ferry built with the `aws` feature"
            }
        );
        errors.extend(asks.iter().map(|(i, _)| ManifestError {
            origin: manifests[*i].origin.clone(),
            message: needs.clone(),
        }));
        return Err(FillError::Refused(errors));
    };
    let mut filled = manifests.to_vec();
    let mut read = BTreeMap::new();
    for (i, ask) in asks {
        let m = &mut filled[i];
        if !read.contains_key(&ask.id) {
            match current(store, &ask.id).await {
                Ok(c) => {
                    read.insert(ask.id.clone(), c);
                }
                Err(FillError::Refused(mut e)) => {
                    // The store said no such secret: file and line are this Secret's.
                    for e in &mut e {
                        e.origin = m.origin.clone();
                    }
                    errors.extend(e);
                    continue;
                }
                Err(unavailable) => return Err(unavailable),
            }
        }
        let (version, text) = &read[&ask.id];
        let data = match values(text.expose(), ask.key.as_deref(), ask.keys.as_deref()) {
            Ok(d) => d,
            Err(why) => {
                errors.push(ManifestError {
                    origin: m.origin.clone(),
                    message: format!("Secret {}: {} in Secrets Manager: {why}", m.id.name, ask.id),
                });
                continue;
            }
        };
        let b64 = base64::engine::general_purpose::STANDARD;
        m.object["data"] = data
            .into_iter()
            .map(|(k, v)| (k, Value::String(b64.encode(v))))
            .collect::<serde_json::Map<_, _>>()
            .into();
        m.object["metadata"]["annotations"][VERSION] = Value::String(version.clone());
    }
    if errors.is_empty() {
        Ok(std::borrow::Cow::Owned(filled))
    } else {
        Err(FillError::Refused(errors))
    }
}

async fn current(store: &Store, id: &str) -> Result<(String, Secret), FillError> {
    let refused = |message: String| FillError::Refused(vec![ManifestError::general("", message)]);
    match store {
        #[cfg(feature = "aws")]
        Store::SecretsManager(sm) => {
            use crate::aws::secrets_manager::ReadError;
            match sm.current(id).await {
                Ok(c) => Ok((c.version, c.text)),
                Err(e @ (ReadError::Missing { .. } | ReadError::Binary { .. })) => {
                    Err(refused(e.to_string()))
                }
                Err(e @ ReadError::Unavailable { .. }) => {
                    Err(FillError::Unavailable(e.to_string()))
                }
            }
        }
        Store::Directory(dir) => {
            let Some(path) = file_of(dir, id) else {
                return Err(refused(format!(
                    "{id}: not a path inside the secrets directory {}",
                    dir.display()
                )));
            };
            let read = std::fs::File::open(&path).and_then(|mut file| {
                use std::io::Read;
                let modified = file.metadata()?.modified()?;
                let mut text = String::new();
                file.read_to_string(&mut text)?;
                Ok((text, modified))
            });
            match read {
                Ok((text, modified)) => {
                    let at = modified
                        .duration_since(std::time::UNIX_EPOCH)
                        .unwrap_or_default();
                    Ok((format!("file-{}", at.as_nanos()), Secret::new(text)))
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(refused(format!(
                    "{id}: not found: no file {} in the directory standing in for Secrets Manager",
                    path.display()
                ))),
                Err(e) => Err(FillError::Unavailable(format!(
                    "cannot read {}: {e}",
                    path.display()
                ))),
            }
        }
    }
}

/// `<dir>/<id>`, for an id that stays inside `dir`.
pub fn file_of(dir: &Path, id: &str) -> Option<PathBuf> {
    let rel = Path::new(id);
    rel.components()
        .all(|c| matches!(c, Component::Normal(_)))
        .then(|| dir.join(rel))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::desired::manifests::parse_file;

    fn one(yaml: &str) -> Manifest {
        parse_file("manifests/s.yaml", yaml).unwrap().remove(0)
    }

    #[test]
    fn a_secret_asks_by_annotation_and_other_objects_are_left_alone() {
        let asks = one(
            "apiVersion: v1\nkind: Secret\nmetadata:\n  name: db\n  annotations:\n    ferry.dev/secrets-manager: ml-platform/airflow-db\n",
        );
        assert_eq!(
            request(&asks).unwrap().unwrap(),
            Request {
                id: "ml-platform/airflow-db".into(),
                key: None,
                keys: None,
            }
        );
        let plain =
            one("apiVersion: v1\nkind: Secret\nmetadata:\n  name: db\nstringData:\n  a: b\n");
        assert!(request(&plain).is_none());
        let keyed = one(
            "apiVersion: v1\nkind: Secret\nmetadata:\n  name: gh\n  annotations:\n    ferry.dev/secrets-manager: arn:aws:secretsmanager:eu-west-1:1:secret:gh\n    ferry.dev/secrets-manager-key: token\n",
        );
        assert_eq!(
            request(&keyed).unwrap().unwrap().key.as_deref(),
            Some("token")
        );
    }

    #[test]
    fn values_in_git_a_wrong_kind_or_key_are_refused_with_the_line() {
        let refused = |yaml: &str| {
            let e = request(&one(yaml)).unwrap().unwrap_err();
            assert_eq!(e.origin.file, "manifests/s.yaml");
            assert_eq!(e.origin.line, 1);
            e.message
        };
        let with_data = refused(
            "apiVersion: v1\nkind: Secret\nmetadata:\n  name: db\n  annotations:\n    ferry.dev/secrets-manager: x\nstringData:\n  a: b\n",
        );
        assert!(
            with_data.contains("remove `data`/`stringData`"),
            "{with_data}"
        );
        let cm = refused(
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: db\n  annotations:\n    ferry.dev/secrets-manager: x\n",
        );
        assert!(cm.contains("v1 Secret, not v1 ConfigMap"), "{cm}");
        let empty = refused(
            "apiVersion: v1\nkind: Secret\nmetadata:\n  name: db\n  annotations:\n    ferry.dev/secrets-manager: ' '\n",
        );
        assert!(empty.contains("must name a secret"), "{empty}");
        let key = refused(
            "apiVersion: v1\nkind: Secret\nmetadata:\n  name: db\n  annotations:\n    ferry.dev/secrets-manager: x\n    ferry.dev/secrets-manager-key: a/b\n",
        );
        assert!(key.contains("must be a Secret key"), "{key}");
        let both = refused(
            "apiVersion: v1\nkind: Secret\nmetadata:\n  name: db\n  annotations:\n    ferry.dev/secrets-manager: x\n    ferry.dev/secrets-manager-key: a\n    ferry.dev/secrets-manager-keys: a, b\n",
        );
        assert!(both.contains("exclude each other"), "{both}");
        let listed = refused(
            "apiVersion: v1\nkind: Secret\nmetadata:\n  name: db\n  annotations:\n    ferry.dev/secrets-manager: x\n    ferry.dev/secrets-manager-keys: a,,b\n",
        );
        assert!(listed.contains("must list Secret keys"), "{listed}");
    }

    #[test]
    fn a_json_object_becomes_keys_and_anything_else_is_explained_without_the_value() {
        let data = values(
            r#"{"username": "airflow", "port": 5432, "ssl": true}"#,
            None,
            None,
        )
        .unwrap();
        assert_eq!(data["username"], "airflow");
        assert_eq!(data["port"], "5432");
        assert_eq!(data["ssl"], "true");
        // Picked members only, and each must be there.
        let rds = r#"{"username": "platform_admin", "password": "hunter2", "engine": "postgres"}"#;
        let picked = ["username".to_string(), "password".to_string()];
        let data = values(rds, None, Some(&picked)).unwrap();
        assert_eq!(data.keys().collect::<Vec<_>>(), ["password", "username"]);
        let absent = values(r#"{"username": "hunter2"}"#, None, Some(&picked)).unwrap_err();
        assert!(absent.contains("no member `password`"), "{absent}");
        assert!(!absent.contains("hunter2"), "{absent}");
        let whole = values("ghp_value", Some("token"), None).unwrap();
        assert_eq!(whole["token"], "ghp_value");
        for (text, why) in [
            ("hunter2-not-json", "not a JSON object"),
            (r#"["hunter2"]"#, "not a JSON object"),
            ("{}", "empty JSON object"),
            (r#"{"a": {"b": "hunter2"}}"#, "member `a` is not a string"),
            (
                r#"{"a/b": "hunter2"}"#,
                "member `a/b` is not a valid Secret key",
            ),
        ] {
            let e = values(text, None, None).unwrap_err();
            assert!(e.contains(why), "{text}: {e}");
            assert!(!e.contains("hunter2"), "{e}");
        }
    }

    #[tokio::test]
    async fn without_a_store_an_asking_secret_is_refused_and_others_pass() {
        let plain = one("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: c\n");
        assert_eq!(
            fill(std::slice::from_ref(&plain), None)
                .await
                .unwrap()
                .len(),
            1
        );
        let asks = one(
            "apiVersion: v1\nkind: Secret\nmetadata:\n  name: db\n  annotations:\n    ferry.dev/secrets-manager: x\n",
        );
        match fill(&[plain, asks], None).await {
            Err(FillError::Refused(e)) => {
                assert_eq!(e.len(), 1);
                assert!(
                    e[0].message.contains("`secrets_manager:`"),
                    "{}",
                    e[0].message
                );
            }
            other => panic!("{other:?}"),
        }
    }
}

#[cfg(test)]
mod directory {
    use super::*;
    use crate::desired::manifests::parse_file;

    #[tokio::test]
    async fn a_directory_stands_in_for_secrets_manager_and_keeps_ids_inside_it() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(tmp.path().join("ml-platform/airflow")).unwrap();
        std::fs::write(
            tmp.path().join("ml-platform/airflow/airflow-db"),
            r#"{"sql_alchemy_conn": "postgresql://a:hunter2@h/a", "extra": "x"}"#,
        )
        .unwrap();
        let store = Store::Directory(tmp.path().to_path_buf());
        let secret = |id: &str| {
            parse_file(
                "manifests/s.yaml",
                &format!(
                    "apiVersion: v1\nkind: Secret\nmetadata:\n  name: db\n  annotations:\n    ferry.dev/secrets-manager: {id}\n    ferry.dev/secrets-manager-keys: sql_alchemy_conn\n"
                ),
            )
            .unwrap()
        };
        let declared = secret("ml-platform/airflow/airflow-db");
        let filled = fill(&declared, Some(&store)).await.unwrap();
        let data = filled[0].object["data"].as_object().unwrap();
        assert_eq!(data.len(), 1, "{:?}", data.keys());
        let b64 = base64::engine::general_purpose::STANDARD;
        assert_eq!(
            b64.decode(data["sql_alchemy_conn"].as_str().unwrap())
                .unwrap(),
            b"postgresql://a:hunter2@h/a"
        );
        assert!(
            filled[0].object["metadata"]["annotations"][VERSION]
                .as_str()
                .unwrap()
                .starts_with("file-")
        );
        for (id, why) in [
            ("ml-platform/airflow/nothing", "not found: no file"),
            ("../outside", "not a path inside"),
            ("/etc/passwd", "not a path inside"),
        ] {
            match fill(&secret(id), Some(&store)).await {
                Err(FillError::Refused(e)) => {
                    assert!(e[0].message.contains(why), "{id}: {}", e[0].message);
                    assert_eq!(e[0].origin.file, "manifests/s.yaml");
                }
                _ => panic!("{id} was not refused"),
            }
        }
    }
}
