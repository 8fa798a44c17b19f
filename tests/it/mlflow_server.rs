//! The platform template's MLflow tracking server as its Deployment declares
//! it (command, arguments with the kubelet's `$(VAR)` expansion, env), from
//! a venv of exactly its image's requirements
//! (`platform-repo-template/images/mlflow-server/requirements.txt`), on a
//! real PostgreSQL with a user and database of its own and moto's S3 as the
//! artifacts bucket: it answers `/health` and `/metrics`, takes the Host
//! header Airflow's workers send and refuses others, and the DAGs
//! template's training code logs, registers and loads a model through it,
//! its artifacts landing in the bucket.
#![cfg(feature = "aws")]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::support::ml::{output, venv};
use crate::support::moto::moto;
use crate::support::postgres::Postgres;
use crate::support::*;

/// `$(NAME)` in `arg` replaced from `env`, as the kubelet expands
/// container arguments.
fn expand(arg: &str, env: &[(String, String)]) -> String {
    env.iter().fold(arg.to_string(), |a, (k, v)| {
        a.replace(&format!("$({k})"), v)
    })
}

/// One GET with the Host header `host`: the status code.
fn get_as(port: u16, host: &str, path: &str) -> u16 {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tracking_server_runs_as_declared_on_postgres_and_s3() {
    let moto = moto();
    let _lock = moto.lock().await;
    let moto_addr = format!("127.0.0.1:{}", moto.port).parse().unwrap();
    let pg = Postgres::start_with_passwords("superuser-pass");
    // What the template's database bootstrap makes (tested in airflow_db.rs),
    // and the URL as terraform/secrets.tf writes it.
    let url = pg.database("mlflow", "mlflow-pass");

    let docs = template_manifests("mlflow/mlflow.yaml");
    let deployment = docs
        .iter()
        .find(|d| d["kind"] == "Deployment")
        .expect("the MLflow Deployment");
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    let image = container["image"].as_str().unwrap();
    let pinned = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("platform-repo-template/images/mlflow-server/requirements.txt"),
    )
    .unwrap();
    // Tagged <MLflow version>-<digest of the image's files>.
    let version = image.rsplit(':').next().unwrap().split('-').next().unwrap();
    assert!(image.contains("/ml-platform/mlflow-server:"), "{image}");
    assert!(
        pinned.lines().any(|l| l == format!("mlflow=={version}")),
        "the image is tagged with the MLflow its requirements pin: {image}"
    );

    // The artifacts bucket Terraform makes, here in moto.
    let destination = container["args"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|a| a.as_str()?.strip_prefix("--artifacts-destination="))
        .next()
        .expect("--artifacts-destination");
    let bucket = destination
        .trim_start_matches("s3://")
        .split('/')
        .next()
        .unwrap();
    let (code, body) = http_request(moto_addr, "PUT", &format!("/{bucket}"), &[], &[]);
    assert_eq!(code, 200, "CreateBucket {bucket}: {body}");

    // The environment: the Secret's URL as terraform/secrets.tf writes it
    // (the driver named: SQLAlchemy 2.1's default for `postgresql://` is
    // psycopg 3, which the image does not have; without sslmode=require, as
    // this server has no certificate), the declared
    // values, and what IRSA and the VPC give a pod: credentials and the
    // S3 endpoint.
    let mut env: Vec<(String, String)> = Vec::new();
    for e in container["env"].as_array().unwrap() {
        let name = e["name"].as_str().unwrap().to_string();
        let value = match &e["valueFrom"]["secretKeyRef"] {
            Value::Null => e["value"].as_str().unwrap().to_string(),
            r => {
                assert_eq!(
                    (&r["name"], &r["key"]),
                    (&"mlflow-db".into(), &"uri".into())
                );
                url.clone()
            }
        };
        env.push((name, value));
    }
    env.extend(
        [
            ("MLFLOW_S3_ENDPOINT_URL", moto.url.as_str()),
            ("AWS_ACCESS_KEY_ID", "testing"),
            ("AWS_SECRET_ACCESS_KEY", "testing"),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string())),
    );
    // Mounts where the pod has them: /tmp is an emptyDir.
    let tmp = tempfile::tempdir().unwrap();
    let mount = container["volumeMounts"][0]["mountPath"].as_str().unwrap();
    let port = free_port();
    let command: Vec<String> = container["command"]
        .as_array()
        .unwrap()
        .iter()
        .chain(container["args"].as_array().unwrap())
        .map(|a| expand(a.as_str().unwrap(), &env))
        .map(|a| {
            // The container's port is the pod's own; here a free one.
            if a == "--port=5000" {
                format!("--port={port}")
            } else {
                a.replace(
                    &format!("={mount}/"),
                    &format!("={}/", tmp.path().display()),
                )
            }
        })
        .collect();
    assert_eq!(command[..2], ["mlflow", "server"]);
    assert!(
        command.iter().any(|a| a == &format!("--port={port}")),
        "{command:?}"
    );
    let log = tmp.path().join("mlflow.log");
    let _server = spawn_owned(
        Command::new(venv("mlflow-venv", "mlflow"))
            .args(&command[1..])
            .env_clear()
            .env("PATH", venv("mlflow-venv", "mlflow").parent().unwrap())
            .env("HOME", tmp.path())
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap()),
    )
    .unwrap();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(180);
    while !(TcpStream::connect(addr).is_ok() && http_get(addr, "/health").0 == 200) {
        assert!(
            std::time::Instant::now() < deadline,
            "MLflow's /health does not answer after 180 s:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(250));
    }

    // The DAGs template's training code through it, from the workers' venv.
    let dags = Path::new(env!("CARGO_MANIFEST_DIR")).join("dags-repo-template/dags");
    let script = "import sys, mlflow\n\
        from mlplatform import data, training, registry\n\
        ds = data.load()\n\
        trained = training.train(ds, c_grid=(1.0,), folds=2)\n\
        out = registry.log_and_register(trained, data.validate(ds), 'server-test', 'server-test')\n\
        model = mlflow.sklearn.load_model(f\"models:/server-test/{out['version']}\")\n\
        print('VERSION', out['version'], 'PREDICTED', len(model.predict(ds.x_test)))\n";
    let s3_config = tmp.path().join("aws-config");
    std::fs::write(&s3_config, "[default]\ns3 =\n    addressing_style = path\n").unwrap();
    let (ok, text) = output(
        Command::new(venv("airflow-venv", "python"))
            .args(["-c", script])
            .env("PYTHONPATH", &dags)
            .env("MLFLOW_TRACKING_URI", format!("http://127.0.0.1:{port}"))
            .env("PYTHONWARNINGS", "ignore"),
    );
    assert!(
        ok && text.contains("VERSION 1 PREDICTED"),
        "{text}\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    // Its rows in Postgres, its artifacts in the bucket.
    assert_eq!(
        pg.sql("mlflow", "SELECT name FROM registered_models"),
        "server-test"
    );
    let (code, listing) = http_get(moto_addr, &format!("/{bucket}?list-type=2"));
    assert_eq!(code, 200, "{listing}");
    assert!(
        listing.contains("MLmodel"),
        "no model in s3://{bucket}: {listing}"
    );

    // Metrics for Prometheus, asked by pod IP as it scrapes; the Service
    // name Airflow's workers and the notebooks use is taken; any other
    // Host is refused (DNS rebinding).
    let (code, metrics) = http_get(addr, "/metrics");
    assert_eq!(code, 200, "{metrics}");
    assert!(metrics.contains("mlflow_http_request_total"), "{metrics}");
    assert_eq!(get_as(port, "10.0.3.17:5000", "/metrics"), 200);
    assert_eq!(
        get_as(
            port,
            "mlflow.mlflow.svc:5000",
            "/api/2.0/mlflow/experiments/search?max_results=1"
        ),
        200
    );
    assert_eq!(
        get_as(
            port,
            "mlflow.attacker.example",
            "/api/2.0/mlflow/experiments/search?max_results=1"
        ),
        403
    );
}
