//! The ML side of the platform for tests: the Python environments
//! `.ci/setup` installs, a real MLflow tracking server, and Airflow commands
//! run as the DAGs template's worker pods would run them.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use super::{Owned, eventually, free_port, http_get, spawn_owned, wait_for_port};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// A program of one of `.cache/<name>`'s virtualenvs.
pub fn venv(name: &str, bin: &str) -> PathBuf {
    let path = root().join(".cache").join(name).join("bin").join(bin);
    assert!(
        path.exists(),
        "{} is missing: run .ci/setup",
        path.display()
    );
    path
}

/// Runs `cmd`: (success, stdout and stderr).
pub fn output(cmd: &mut Command) -> (bool, String) {
    let out = cmd.output().unwrap();
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// An MLflow tracking server (SQLite backend, proxied artifacts), stopped
/// on drop.
pub struct Mlflow {
    // The server, its uvicorn worker, huey consumer and job runner: one
    // process group, stopped together when this is dropped.
    _child: Owned,
    pub url: String,
}

/// Where an MLflow server keeps artifacts: a local directory, or an S3
/// bucket (`s3://...`) at an S3 endpoint (moto), as the platform's server
/// keeps them in the artifacts bucket.
pub enum Artifacts<'a> {
    Local,
    S3 {
        destination: &'a str,
        endpoint: &'a str,
    },
}

pub fn mlflow_server(dir: &Path, artifacts: Artifacts) -> Mlflow {
    let port = free_port();
    let mut cmd = Command::new(venv("mlflow-venv", "mlflow"));
    cmd.args([
        "server",
        "--host",
        "127.0.0.1",
        "--port",
        &port.to_string(),
        "--workers",
        "1",
    ])
    .arg("--backend-store-uri")
    .arg(format!("sqlite:///{}", dir.join("mlflow.db").display()))
    .arg("--serve-artifacts")
    .arg("--artifacts-destination");
    match artifacts {
        Artifacts::Local => {
            cmd.arg(dir.join("artifacts"));
        }
        Artifacts::S3 {
            destination,
            endpoint,
        } => {
            cmd.arg(destination)
                .env("MLFLOW_S3_ENDPOINT_URL", endpoint)
                .env("AWS_ACCESS_KEY_ID", "testing")
                .env("AWS_SECRET_ACCESS_KEY", "testing")
                .env("AWS_DEFAULT_REGION", "eu-west-1");
        }
    }
    let child = spawn_owned(
        cmd.stdout(std::fs::File::create(dir.join("mlflow.log")).unwrap())
            .stderr(std::fs::File::create(dir.join("mlflow.err")).unwrap()),
    )
    .unwrap();
    let url = format!("http://127.0.0.1:{port}");
    wait_for_port(port, Duration::from_secs(120));
    eventually(Duration::from_secs(120), "MLflow server health", || {
        (http_get(format!("127.0.0.1:{port}").parse().unwrap(), "/health").0 == 200).then_some(())
    });
    Mlflow { _child: child, url }
}

impl Mlflow {
    /// The version `alias` of `model` points at, None when it points nowhere.
    pub fn alias(&self, model: &str, alias: &str) -> Option<String> {
        let addr = self.url.trim_start_matches("http://").parse().unwrap();
        let (code, body) = http_get(
            addr,
            &format!("/api/2.0/mlflow/registered-models/alias?name={model}&alias={alias}"),
        );
        if code == 200 {
            let version: serde_json::Value = serde_json::from_str(&body).unwrap();
            return Some(
                version["model_version"]["version"]
                    .as_str()
                    .unwrap()
                    .to_string(),
            );
        }
        assert!(
            body.contains("RESOURCE_DOES_NOT_EXIST") || body.contains("not found"),
            "{code} {body}"
        );
        None
    }
}

/// Airflow (`.cache/airflow-venv`) with the DAGs template's folder and the
/// environment its worker pods get: every command runs with `env`.
pub struct Airflow {
    pub home: PathBuf,
    pub env: Vec<(String, OsString)>,
}

impl Airflow {
    /// `airflow db migrate` into a fresh SQLite database under `home`.
    pub fn new(home: PathBuf, env: Vec<(String, OsString)>) -> Airflow {
        let airflow = Airflow { home, env };
        let (ok, text) =
            airflow.run(Command::new(venv("airflow-venv", "airflow")).args(["db", "migrate"]));
        assert!(ok, "airflow db migrate: {text}");
        airflow
    }

    pub fn dags() -> PathBuf {
        root().join("dags-repo-template/dags")
    }

    pub fn run(&self, cmd: &mut Command) -> (bool, String) {
        output(
            cmd.envs(self.env.iter().map(|(k, v)| (k, v)))
                .env("AIRFLOW_HOME", &self.home)
                .env("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
                .env("AIRFLOW__CORE__DAGS_FOLDER", Self::dags())
                .env("PYTHONWARNINGS", "ignore"),
        )
    }

    /// `script` in Airflow's Python with the DAGs folder on `sys.path` (as
    /// a task runs), `args` as `sys.argv[1..]`; its output, which must
    /// succeed.
    pub fn python(&self, script: &str, args: &[&str]) -> String {
        let (ok, text) = self.run(
            Command::new(venv("airflow-venv", "python"))
                .arg("-c")
                .arg(format!(
                    "import sys; sys.path.insert(0, {:?})\n{script}",
                    Self::dags().display().to_string()
                ))
                .args(args),
        );
        assert!(ok, "{script}\n{text}");
        text
    }

    /// One run of DAG `dag_id` with dag.test(), parsed as the dag-processor
    /// parses the bundle; its output, which must end in success.
    pub fn dag_test(&self, dag_id: &str) -> String {
        let script = "from pathlib import Path\n\
            from airflow.dag_processing.dagbag import BundleDagBag\n\
            folder = Path(sys.argv[1])\n\
            bag = BundleDagBag(dag_folder=str(folder), bundle_path=folder)\n\
            assert not bag.import_errors, bag.import_errors\n\
            dag = bag.get_dag(sys.argv[2])\n\
            for t in dag.tasks: t.retries = 0  # fail fast: dag.test() waits out retry_delay\n\
            run = dag.test()\n\
            print('DAG RUN STATE', run.state)\n\
            sys.exit(0 if str(run.state) == 'success' else 1)\n";
        self.python(script, &[Self::dags().to_str().unwrap(), dag_id])
    }
}
