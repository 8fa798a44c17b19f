#![cfg(feature = "aws")]
//! A model's whole path, as the templates lay it out: real Airflow trains
//! and registers it in a real MLflow server (artifacts in moto's S3), the
//! training DAG packages it for SageMaker and opens the promotion PR on the
//! strict fake GitHub, `ferry run` previews that PR, deploys its merge to
//! moto's SageMaker, where the endpoint serves the packaged model through
//! MLflow's own scoring code, smoke-tests it and reports the GitHub
//! deployment, and the champion DAG moves `champion` only then. A model
//! that cannot answer is rolled back and moves nothing.

use std::ffi::OsString;
use std::path::Path;
use std::time::Duration;

use crate::aws::{REGION, aws_env, reporting_config, serving};
use crate::support::github::{FakeGithub, FakeState};
use crate::support::ml::{Airflow, Artifacts, mlflow_server, venv};
use crate::support::moto::moto;
use crate::support::*;

const MODEL: &str = "diagnosis-classifier";

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// A value the template's worker pod template sets.
fn worker_env(name: &str) -> String {
    let pod_template = airflow_template("config.yaml")
        .into_iter()
        .find(|d| d["metadata"]["name"] == "airflow-pod-template")
        .unwrap();
    let pod: serde_json::Value =
        serde_yaml_ng::from_str(pod_template["data"]["pod_template.yaml"].as_str().unwrap())
            .unwrap();
    pod["spec"]["containers"][0]["env"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == name)
        .unwrap_or_else(|| panic!("the worker pod template sets no {name}"))["value"]
        .as_str()
        .unwrap()
        .to_string()
}

/// The template's platform.yaml without its EKS part (no cluster here).
fn template_sagemaker() -> String {
    let text =
        std::fs::read_to_string(root().join("platform-repo-template/platform.yaml")).unwrap();
    let at = text
        .find("\nsagemaker:\n")
        .expect("the template declares sagemaker");
    format!(
        "apiVersion: ferry.dev/v1alpha1\nkind: Platform\n{}",
        &text[at + 1..]
    )
}

fn model_data(bucket: &str, version: &str) -> String {
    format!("s3://{bucket}/models/{MODEL}/{version}/model.tar.gz")
}

/// The artifact at `version`'s key, unpacked as the serving container
/// unpacks it, and whether it predicts what the registered version does.
const READ_ARTIFACT: &str = "import io, json, tarfile, tempfile\n\
import boto3, mlflow.pyfunc, numpy as np\n\
from mlplatform import data\n\
o = boto3.client('s3').get_object(Bucket=sys.argv[1], Key=sys.argv[2])\n\
body = o['Body'].read()\n\
names = tarfile.open(fileobj=io.BytesIO(body)).getnames()\n\
unpacked = tempfile.mkdtemp()\n\
tarfile.open(fileobj=io.BytesIO(body)).extractall(unpacked, filter='data')\n\
x = data.load().x_test\n\
served = mlflow.pyfunc.load_model(unpacked).predict(x)\n\
registered = mlflow.pyfunc.load_model(f'models:/diagnosis-classifier/{sys.argv[3]}').predict(x)\n\
print('ARTIFACT', json.dumps({'names': names, 'meta': o['Metadata'], 'etag': o['ETag'], 'rows': len(x), 'same': bool(np.array_equal(served, registered))}))\n";

/// A model of the same name trained on 29 of the 30 features: it loads and
/// serves, but cannot answer the requests production (and the smoke test)
/// sends. Registered, packaged and nominated as the DAG would.
const MISFIT: &str = "import mlflow, mlflow.sklearn\n\
from sklearn.linear_model import LogisticRegression\n\
from mlplatform import data, packaging, registry\n\
ds = data.load()\n\
model = LogisticRegression(max_iter=5000).fit(ds.x_train[:, :29], ds.y_train)\n\
info = mlflow.sklearn.log_model(model, name='model', registered_model_name='diagnosis-classifier')\n\
version = str(info.registered_model_version)\n\
packaging.package('diagnosis-classifier', version, sys.argv[1])\n\
registry.nominate('diagnosis-classifier', version)\n\
print('MISFIT', version)\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trained_model_is_packaged_proposed_deployed_smoke_tested_and_crowned() {
    let moto = moto();
    let _guard = moto.lock().await;
    let moto_addr: std::net::SocketAddr = format!("127.0.0.1:{}", moto.port).parse().unwrap();
    let airflow_python = venv("airflow-venv", "python");
    let (code, body) = http_post(
        moto_addr,
        "/ferry-test/serve",
        &[("Content-Type", "application/json")],
        serde_json::json!({"python": airflow_python})
            .to_string()
            .as_bytes(),
    );
    assert_eq!(code, 200, "{body}");
    // The buckets Terraform creates: packaged models, MLflow's artifacts.
    let (repo, bucket) = (
        worker_env("PLATFORM_REPO"),
        worker_env("MODEL_ARTIFACT_BUCKET"),
    );
    let artifacts_bucket = "ml-platform-mlflow-artifacts";
    for b in [bucket.as_str(), artifacts_bucket] {
        let (code, body) = http_request(moto_addr, "PUT", &format!("/{b}"), &[], &[]);
        assert_eq!(code, 200, "CreateBucket {b}: {body}");
    }
    let tmp = tempfile::tempdir().unwrap();
    let mlflow = mlflow_server(
        tmp.path(),
        Artifacts::S3 {
            destination: &format!("s3://{artifacts_bucket}"),
            endpoint: &moto.url,
        },
    );

    // The platform repo: git for ferry, the same files through the fake
    // GitHub's API for the DAGs.
    let platform = template_sagemaker();
    let smoke = std::fs::read_to_string(root().join("platform-repo-template/smoke/diagnosis.json"))
        .unwrap();
    let git_repo = Repo::new(tmp.path(), "platform");
    let m0 = git_repo.commit(
        &[
            ("platform.yaml", Some(&platform)),
            ("smoke/diagnosis.json", Some(&smoke)),
        ],
        "the template",
    );
    let files = |text: &str| -> std::collections::BTreeMap<String, String> {
        [
            ("platform.yaml".to_string(), text.to_string()),
            ("smoke/diagnosis.json".to_string(), smoke.clone()),
        ]
        .into()
    };
    let fake = FakeGithub::start(FakeState {
        token: Some("ghp_platform".into()),
        repos: [repo.clone()].into(),
        branches: [(
            (repo.clone(), "main".to_string()),
            (m0.clone(), files(&platform)),
        )]
        .into(),
        ..FakeState::default()
    });
    let daemon = git_daemon(tmp.path(), free_port());
    let port = free_port();
    let config = reporting_config(
        tmp.path(),
        port,
        daemon.port,
        &fake.url(),
        &repo,
        "ghp_platform",
    );
    let ferry = spawn_ferry(&config, &tmp.path().join("ferry.log"), port, &aws_env());
    let ferry_addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let final_state = |sha: &str| {
        let sha = sha.to_string();
        let fake = &fake;
        move || {
            fake.statuses(&sha, "ferry/platform")
                .into_iter()
                .rfind(|(state, _)| state != "pending")
        }
    };

    // The template's example version was never packaged: SageMaker cannot
    // download it, and ferry says so.
    let (state, description) =
        eventually(Duration::from_secs(60), "main's verdict", final_state(&m0));
    assert_eq!(state, "failure", "{description}");
    let status: serde_json::Value =
        serde_json::from_str(&http_get(ferry_addr, "/api/v1/status/platform").1).unwrap();
    assert!(
        status.to_string().contains("Failed to download model data"),
        "{status}"
    );

    // The training DAG: registered, packaged where the PR says, proposed.
    let s3_config = tmp.path().join("aws-config");
    // An IP endpoint has no bucket subdomains.
    std::fs::write(&s3_config, "[default]\ns3 =\n    addressing_style = path\n").unwrap();
    let env: Vec<(String, OsString)> = [
        ("AWS_ENDPOINT_URL", OsString::from(&moto.url)),
        ("AWS_CONFIG_FILE", s3_config.clone().into()),
        ("AWS_ACCESS_KEY_ID", "testing".into()),
        ("AWS_SECRET_ACCESS_KEY", "testing".into()),
        ("AWS_DEFAULT_REGION", REGION.into()),
        ("MLFLOW_TRACKING_URI", OsString::from(&mlflow.url)),
        ("GITHUB_TOKEN", "ghp_platform".into()),
        ("GITHUB_API_URL", OsString::from(fake.url())),
        ("PLATFORM_REPO", OsString::from(&repo)),
        ("MODEL_ARTIFACT_BUCKET", OsString::from(&bucket)),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let airflow = Airflow::new(tmp.path().join("airflow"), env);
    airflow.dag_test("diagnosis_training");
    assert_eq!(
        (
            mlflow.alias(MODEL, "challenger"),
            mlflow.alias(MODEL, "champion")
        ),
        (Some("1".into()), None),
        "under review, not champion"
    );
    let opened = fake.with(|f| f.opened.clone());
    assert_eq!(opened.len(), 1, "{opened:#?}");
    assert_eq!(opened[0].head, "promote/diagnosis-classifier-v1");
    let proposed = fake
        .with(|f| f.branches[&(repo.clone(), opened[0].head.clone())].1["platform.yaml"].clone());
    let changed: Vec<(&str, &str)> = platform
        .lines()
        .zip(proposed.lines())
        .filter(|(a, b)| a != b)
        .collect();
    let (v3, v1) = (model_data(&bucket, "3"), model_data(&bucket, "1"));
    assert_eq!(
        changed,
        [(
            format!("          model_data: {v3}").as_str(),
            format!("          model_data: {v1}").as_str()
        )],
        "one bucket: the template's, the DAG's and terraform's"
    );

    let artifact = |version: &str| -> serde_json::Value {
        let key = format!("models/{MODEL}/{version}/model.tar.gz");
        let text = airflow.python(READ_ARTIFACT, &[&bucket, &key, version]);
        let line = text
            .lines()
            .find_map(|l| l.strip_prefix("ARTIFACT "))
            .unwrap();
        serde_json::from_str(line).unwrap()
    };
    let packaged = artifact("1");
    let names: Vec<&str> = packaged["names"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_str().unwrap())
        .collect();
    assert!(
        names.contains(&"MLmodel")
            && names
                .iter()
                .all(|n| !n.starts_with('/') && !n.contains("..")),
        "MLmodel at the root: {names:?}"
    );
    assert_eq!(
        packaged["meta"]["mlflow-model-version"],
        "diagnosis-classifier/1"
    );
    assert_eq!(
        (packaged["same"].as_bool(), packaged["rows"].as_u64()),
        (Some(true), Some(143)),
        "the unpacked artifact predicts as the registered model"
    );
    // A retry of the task writes nothing.
    let again = airflow.python(
        "from mlplatform import packaging\nprint(packaging.package('diagnosis-classifier', '1', sys.argv[1]))",
        &[&bucket],
    );
    assert!(again.contains("'written': False"), "{again}");
    assert_eq!(artifact("1")["etag"], packaged["etag"]);

    // A reviewer closes the PR: its challenger is withdrawn, nothing else.
    fake.with(|f| f.opened[0].state = "closed".into());
    airflow.dag_test("diagnosis_champion");
    assert_eq!(
        (
            mlflow.alias(MODEL, "challenger"),
            mlflow.alias(MODEL, "champion")
        ),
        (None, None)
    );
    // ... and reopens it. ferry previews its head (found by polling).
    fake.with(|f| f.opened[0].state = "open".into());
    let work = &git_repo.work;
    std::fs::write(work.join("platform.yaml"), &proposed).unwrap();
    run(git(work).args(["commit", "-qam", "Promote diagnosis-classifier v1"]));
    run(git(work).args(["push", "-q", "origin", "HEAD:refs/pull/1/head"]));
    let m1 = git_repo.head();
    fake.with(|f| f.pulls.push((repo.clone(), 1, m1.clone(), "main".into())));
    eventually(
        Duration::from_secs(60),
        "plan status on the PR head",
        || (fake.states(&m1, "ferry/plan") == ["success"]).then_some(()),
    );
    let comment = eventually(Duration::from_secs(10), "preview comment", || {
        fake.with(|f| f.comments.first().map(|c| c.body.clone()))
    });
    // The template's endpoint never came up, so the PR creates it, from the
    // artifact the DAG packaged.
    assert!(
        comment.contains("+ sagemaker/endpoint/diagnosis"),
        "{comment}"
    );
    assert!(comment.contains(&v1), "{comment}");

    // Merged: deployed, the smoke test answered by the model itself.
    git_repo.push("main");
    fake.with(|f| {
        f.opened[0].state = "closed".into();
        f.opened[0].merged = true;
        f.branches.insert(
            (repo.clone(), "main".into()),
            (m1.clone(), files(&proposed)),
        );
    });
    let (state, description) = eventually(
        Duration::from_secs(180),
        "the merge's verdict",
        final_state(&m1),
    );
    assert_eq!(
        state,
        "success",
        "{description}: {}",
        http_get(ferry_addr, "/api/v1/status/platform").1
    );
    let (config1, _) = serving("diagnosis").await;
    let deployed = fake.with(|f| {
        f.deployments
            .iter()
            .filter(|d| d.sha == m1)
            .flat_map(|d| d.statuses.iter().map(|s| s.0.clone()))
            .collect::<Vec<_>>()
    });
    assert_eq!(
        deployed.last().map(String::as_str),
        Some("success"),
        "{deployed:?}"
    );
    let text = airflow.dag_test("diagnosis_champion");
    assert!(text.contains("champion: v1 (the first)"), "{text}");
    assert_eq!(
        (
            mlflow.alias(MODEL, "challenger"),
            mlflow.alias(MODEL, "champion")
        ),
        (None, Some("1".into()))
    );

    // A model that cannot answer production's requests is merged: it
    // deploys, fails its smoke test, and v1 serves again; champion stays.
    let misfit = airflow.python(MISFIT, &[&bucket]);
    let v2 = misfit
        .lines()
        .find_map(|l| l.strip_prefix("MISFIT "))
        .unwrap()
        .trim()
        .to_string();
    let broken = proposed.replace(&v1, &model_data(&bucket, &v2));
    let m2 = git_repo.commit(&[("platform.yaml", Some(&broken))], "Promote the misfit");
    fake.with(|f| {
        f.commits
            .insert((repo.clone(), m1.clone()), files(&proposed));
        f.branches
            .insert((repo.clone(), "main".into()), (m2.clone(), files(&broken)));
    });
    let (state, description) = eventually(
        Duration::from_secs(180),
        "the misfit's verdict",
        final_state(&m2),
    );
    assert_eq!(state, "failure", "{description}");
    let status: serde_json::Value =
        serde_json::from_str(&http_get(ferry_addr, "/api/v1/status/platform").1).unwrap();
    let error = status["last_error"].to_string();
    assert!(
        error.contains("smoke test of diagnosis-")
            && error.contains("did not answer")
            && error.contains(&format!("rolled back: {config1} serves again")),
        "{status}"
    );
    assert_eq!(serving("diagnosis").await.0, config1, "v1 serves");
    airflow.dag_test("diagnosis_champion");
    assert_eq!(
        (
            mlflow.alias(MODEL, "challenger"),
            mlflow.alias(MODEL, "champion")
        ),
        (Some(v2), Some("1".into())),
        "a failed deployment moves nothing"
    );
    stop_ferry(ferry);
    fake.assert_nothing_rejected();
}
