//! Secrets whose values live in AWS Secrets Manager (moto), filled by
//! `ferry run` into Kubernetes Secrets on a real kube-apiserver: the first
//! apply, a rotation reaching the cluster at a drift check without
//! `self_heal` (and not while other drift is there too), a secret that does not exist refusing its commit and
//! keeping what is applied, prune, and no value in any log, status, page
//! or metric.
#![cfg(feature = "aws")]

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::Api;
use kube::api::{Patch, PatchParams};

use crate::aws::{REGION, aws_env, test_credentials};
use crate::support::moto::moto;
use crate::support::*;

/// Secrets Manager of the moto server at `url`.
pub(crate) async fn secrets_client(url: &str) -> aws_sdk_secretsmanager::Client {
    aws_sdk_secretsmanager::Client::new(
        &ferry::aws::sdk_config(Some(REGION), Some(url), Some(&test_credentials())).await,
    )
}

fn status(addr: std::net::SocketAddr) -> serde_json::Value {
    let (_, body) = http_get(addr, "/api/v1/status/platform");
    serde_json::from_str(&body).unwrap_or(serde_json::Value::Null)
}

/// The Secret's keys and values as text, and its version annotation.
async fn live(api: &Api<Secret>, name: &str) -> Option<(BTreeMap<String, String>, String)> {
    let s = api.get_opt(name).await.ok()??;
    let data = s
        .data?
        .into_iter()
        .map(|(k, v)| (k, String::from_utf8(v.0).unwrap()))
        .collect();
    let version = s
        .metadata
        .annotations?
        .get("ferry.dev/secrets-manager-version")?
        .clone();
    Some((data, version))
}

fn secret_yaml(name: &str, id: &str, key: Option<&str>) -> String {
    let key = key
        .map(|k| format!("    ferry.dev/secrets-manager-key: {k}\n"))
        .unwrap_or_default();
    format!(
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: {name}\n  annotations:\n    ferry.dev/secrets-manager: {id}\n{key}type: Opaque\n"
    )
}

fn config(dir: &Path, port: u16, git_port: u16, ns: &str) -> std::path::PathBuf {
    let path = dir.join("ferry.yaml");
    std::fs::write(
        &path,
        format!(
            "cache_dir: {cache}\nserver:\n  listen: 127.0.0.1:{port}\n\
             sources:\n  - name: platform\n    url: git://127.0.0.1:{git_port}/platform.git\n    interval: 1s\n    max_backoff: 2s\n\
             targets:\n  kubernetes:\n    source: platform\n    default_namespace: {ns}\n    allowed_namespaces: [{ns}]\n    \
             drift_interval: 1s\n    health_timeout: 0s\n    kubeconfig: {kc}\n    \
             secrets_manager:\n      region: {REGION}\n      endpoint_url: {url}\n",
            cache = dir.join("cache").display(),
            kc = control_plane().admin.display(),
            url = moto().url,
        ),
    )
    .unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_manager_values_reach_the_cluster_rotate_and_never_leak() {
    let cp = control_plane();
    let _moto = moto().lock().await;
    let sm = secrets_client(&moto().url).await;
    let password = "pw-7c1f0a9e-first";
    let rotated = "pw-3b8d2e64-rotated";
    let token = "ghp_5e0c4d2a9b7f-token";
    let db = |pw: &str| {
        serde_json::json!({"username": "airflow", "password": pw, "port": 5432}).to_string()
    };
    let created = sm
        .create_secret()
        .name("ml-platform/airflow-db")
        .secret_string(db(password))
        .send()
        .await
        .unwrap();
    sm.create_secret()
        .name("ml-platform/airflow-github")
        .secret_string(token)
        .send()
        .await
        .unwrap();

    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let repo = Repo::new(dir, "platform");
    let ns = unique_namespace("secrets");
    let ns_yaml = format!("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {ns}\n");
    let first = repo.commit(
        &[
            ("manifests/ns.yaml", Some(&ns_yaml)),
            (
                "manifests/cm.yaml",
                Some("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: settings\ndata:\n  mode: calm\n"),
            ),
            (
                "manifests/db.yaml",
                Some(&secret_yaml("airflow-db", "ml-platform/airflow-db", None)),
            ),
            (
                "manifests/github.yaml",
                Some(&secret_yaml(
                    "airflow-github",
                    "ml-platform/airflow-github",
                    Some("token"),
                )),
            ),
        ],
        "secrets from Secrets Manager",
    );
    let daemon = git_daemon(dir, free_port());
    let port = free_port();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let log = dir.join("ferry.log");
    let ferry = spawn_ferry(&config(dir, port, daemon.port, &ns), &log, port, &aws_env());
    let wait = |what: &str, check: &dyn Fn(&serde_json::Value) -> bool| {
        eventually(Duration::from_secs(30), what, || {
            let v = status(addr);
            check(&v).then_some(v)
        })
    };
    wait("first apply", &|v| {
        v["kubernetes"]["applied_revision"] == first.as_str()
    });
    let client = ferry::kubernetes::client::connect(Some(&cp.admin))
        .await
        .unwrap();
    let secrets: Api<Secret> = Api::namespaced(client, &ns);
    let (data, version) = live(&secrets, "airflow-db").await.unwrap();
    assert_eq!(
        data,
        BTreeMap::from([
            ("username".into(), "airflow".into()),
            ("password".into(), password.into()),
            ("port".into(), "5432".into()),
        ])
    );
    assert_eq!(Some(version.as_str()), created.version_id());
    let (data, _) = live(&secrets, "airflow-github").await.unwrap();
    assert_eq!(data, BTreeMap::from([("token".into(), token.into())]));

    // A rotation: no commit, no self_heal; the next drift check applies it.
    let put = sm
        .put_secret_value()
        .secret_id("ml-platform/airflow-db")
        .secret_string(db(rotated))
        .send()
        .await
        .unwrap();
    let new_version = put.version_id().unwrap().to_string();
    assert_ne!(new_version, version);
    let fetch = secrets.clone();
    eventually(Duration::from_secs(30), "the rotated value", || {
        let (data, version) = block_on(live(&fetch, "airflow-db"))?;
        (data["password"] == rotated && version == new_version).then_some(())
    });
    assert_eq!(
        status(addr)["kubernetes"]["applied_revision"],
        first.as_str(),
        "a rotation is not a new revision"
    );

    // Other drift beside a rotation: without self_heal neither is applied
    // (only drift that is all new secret values is), and both are reported.
    let cms: Api<ConfigMap> = Api::namespaced(secrets.clone().into_client(), &ns);
    let hand_edit = |mode: &'static str| {
        let cms = cms.clone();
        async move {
            let cm = serde_json::json!({
                "apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "settings"},
                "data": {"mode": mode}
            });
            cms.patch(
                "settings",
                &PatchParams::apply("kubectl-edit").force(),
                &Patch::Apply(&cm),
            )
            .await
            .unwrap();
        }
    };
    hand_edit("hand-edited").await;
    let third = "pw-91d0c2aa-third";
    sm.put_secret_value()
        .secret_id("ml-platform/airflow-db")
        .secret_string(db(third))
        .send()
        .await
        .unwrap();
    let v = wait("both drifts reported", &|v| {
        v["kubernetes"]["drift"]
            .as_array()
            .is_some_and(|d| d.len() == 2)
    });
    let drift = v["kubernetes"]["drift"].to_string();
    assert!(
        drift.contains("settings") && drift.contains("airflow-db"),
        "{drift}"
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        live(&secrets, "airflow-db").await.unwrap().0["password"],
        rotated,
        "mixed drift was applied without self_heal"
    );
    // The hand edit put back, the rotation alone is drift again: applied.
    hand_edit("calm").await;
    let fetch = secrets.clone();
    eventually(Duration::from_secs(30), "the third value", || {
        let (data, _) = block_on(live(&fetch, "airflow-db"))?;
        (data["password"] == third).then_some(())
    });

    // A commit naming a secret that does not exist is refused with its
    // file and line, and nothing of it is applied: the Secrets stay.
    let missing = repo.commit(
        &[(
            "manifests/mlflow.yaml",
            Some(&secret_yaml(
                "mlflow-db",
                "ml-platform/no-such-secret",
                None,
            )),
        )],
        "a secret nobody created",
    );
    let v = wait("the missing secret refused", &|v| {
        v["last_error"]["commit"] == missing.as_str()
    });
    let error = &v["last_error"];
    assert_eq!(
        error["problems"][0]["file"], "manifests/mlflow.yaml",
        "{error}"
    );
    assert_eq!(error["problems"][0]["line"], 1, "{error}");
    let message = error["problems"][0]["message"].as_str().unwrap();
    assert!(
        message.contains("ml-platform/no-such-secret: not found in Secrets Manager"),
        "{message}"
    );
    assert_eq!(v["kubernetes"]["applied_revision"], first.as_str());
    assert!(secrets.get_opt("mlflow-db").await.unwrap().is_none());
    assert!(live(&secrets, "airflow-db").await.is_some());

    // Git drops a Secret: pruned, like any object of ferry's.
    let dropped = repo.commit(
        &[
            ("manifests/mlflow.yaml", None),
            ("manifests/github.yaml", None),
        ],
        "no more github token",
    );
    wait("the drop applied", &|v| {
        v["kubernetes"]["applied_revision"] == dropped.as_str()
    });
    assert!(secrets.get_opt("airflow-github").await.unwrap().is_none());
    assert_eq!(
        live(&secrets, "airflow-db").await.unwrap().0["password"],
        third
    );

    // No value in anything ferry says.
    let (_, metrics) = http_get(addr, "/metrics");
    let (_, overview) = http_get(addr, "/");
    let (_, source_page) = http_get(addr, "/sources/platform");
    let said = [
        std::fs::read_to_string(&log).unwrap(),
        status(addr).to_string(),
        metrics,
        overview,
        source_page,
    ]
    .join("\n");
    for value in [password, rotated, third, token] {
        for form in secret_forms(value) {
            assert!(!said.contains(&form), "{value} leaked (as {form})");
        }
    }
    stop_ferry(ferry);
}
