//! The two templates a team forks, proven against real components: the
//! DAGs template's own tests and its training DAG (`dag.test()`) in a real
//! Airflow 3 with a real MLflow server and the strict fake GitHub; the
//! platform template dry-run on the real kube-apiserver and checked by
//! `kubernetes-validate --strict`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::support::github::{FakeGithub, FakeState};
use crate::support::*;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn venv(name: &str, bin: &str) -> PathBuf {
    let path = root().join(".cache").join(name).join("bin").join(bin);
    assert!(
        path.exists(),
        "{} is missing: run .ci/setup",
        path.display()
    );
    path
}

fn output(cmd: &mut Command) -> (bool, String) {
    let out = cmd.output().unwrap();
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn the_dags_template_passes_its_own_tests_in_real_airflow() {
    let home = tempfile::tempdir().unwrap();
    let template = root().join("dags-repo-template");
    let (ok, text) = output(
        Command::new(venv("airflow-venv", "python"))
            .args(["-m", "unittest", "discover", "-v", "-s", "tests", "-t", "."])
            .current_dir(&template)
            .env("AIRFLOW_HOME", home.path())
            .env("PYTHONWARNINGS", "ignore"),
    );
    assert!(ok, "{text}");
    assert!(
        text.contains("Ran 15 tests") && text.contains("OK"),
        "{text}"
    );
}

/// An MLflow tracking server (SQLite backend, local artifacts), stopped on drop.
struct Mlflow {
    // The server, its uvicorn worker, huey consumer and job runner: one
    // process group, stopped together when this is dropped.
    _child: Owned,
    url: String,
}

fn mlflow_server(dir: &Path) -> Mlflow {
    let port = free_port();
    let child = spawn_owned(
        Command::new(venv("mlflow-venv", "mlflow"))
            .args([
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
            .arg("--artifacts-destination")
            .arg(dir.join("artifacts"))
            .arg("--serve-artifacts")
            .stdout(std::fs::File::create(dir.join("mlflow.log")).unwrap())
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

#[test]
fn a_trained_model_is_proposed_by_pr_and_becomes_champion_once_deployed() {
    let tmp = tempfile::tempdir().unwrap();
    let mlflow = mlflow_server(tmp.path());
    let platform =
        std::fs::read_to_string(root().join("platform-repo-template/platform.yaml")).unwrap();
    // The promotion settings as the worker pod template sets them.
    let pod_template = airflow_template("config.yaml")
        .into_iter()
        .find(|d| d["metadata"]["name"] == "airflow-pod-template")
        .unwrap();
    let pod: serde_json::Value =
        serde_yaml_ng::from_str(pod_template["data"]["pod_template.yaml"].as_str().unwrap())
            .unwrap();
    let env = |name: &str| -> String {
        pod["spec"]["containers"][0]["env"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == name)
            .unwrap_or_else(|| panic!("the worker pod template sets no {name}"))["value"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let (repo, bucket) = (env("PLATFORM_REPO"), env("MODEL_ARTIFACT_BUCKET"));
    let base_commit = "b".repeat(40);
    let fake = FakeGithub::start(FakeState {
        token: Some("ghp_dags".into()),
        repos: [repo.clone()].into(),
        branches: [(
            (repo.clone(), "main".to_string()),
            (
                base_commit,
                [("platform.yaml".to_string(), platform.clone())].into(),
            ),
        )]
        .into(),
        ..FakeState::default()
    });
    // S3 as moto serves it, holding the bucket Terraform creates.
    let s3_port = free_port();
    let _s3 = spawn_owned(
        Command::new(venv("moto-venv", "moto_server"))
            .args(["-H", "127.0.0.1", "-p", &s3_port.to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(tmp.path().join("moto.log")).unwrap()),
    )
    .unwrap();
    wait_for_port(s3_port, Duration::from_secs(30));
    let s3_addr: std::net::SocketAddr = format!("127.0.0.1:{s3_port}").parse().unwrap();
    let (code, body) = http_request(s3_addr, "PUT", &format!("/{bucket}"), &[], &[]);
    assert_eq!(code, 200, "CreateBucket: {body}");
    // An IP endpoint has no bucket subdomains.
    let aws_config = tmp.path().join("aws-config");
    std::fs::write(
        &aws_config,
        "[default]\ns3 =\n    addressing_style = path\n",
    )
    .unwrap();

    let home = tmp.path().join("airflow");
    let python = venv("airflow-venv", "python");
    let airflow = |cmd: &mut Command| -> (bool, String) {
        output(
            cmd.env("AWS_ENDPOINT_URL", format!("http://{s3_addr}"))
                .env("AWS_CONFIG_FILE", &aws_config)
                .env("AWS_ACCESS_KEY_ID", "testing")
                .env("AWS_SECRET_ACCESS_KEY", "testing")
                .env("AWS_DEFAULT_REGION", "eu-west-1")
                .env("AIRFLOW_HOME", &home)
                .env("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
                .env(
                    "AIRFLOW__CORE__DAGS_FOLDER",
                    root().join("dags-repo-template/dags"),
                )
                .env("PYTHONWARNINGS", "ignore")
                .env("MLFLOW_TRACKING_URI", &mlflow.url)
                .env("GITHUB_TOKEN", "ghp_dags")
                .env("GITHUB_API_URL", fake.url())
                .env("PLATFORM_REPO", &repo)
                .env("MODEL_ARTIFACT_BUCKET", &bucket),
        )
    };
    let (ok, text) = airflow(Command::new(venv("airflow-venv", "airflow")).args(["db", "migrate"]));
    assert!(ok, "airflow db migrate: {text}");
    // Runs one DAG of the template with dag.test(), as Airflow would parse it.
    let run_dag = |dag_id: &str| {
        let script = "import sys\n\
            from pathlib import Path\n\
            from airflow.dag_processing.dagbag import BundleDagBag\n\
            folder = Path(sys.argv[1])\n\
            bag = BundleDagBag(dag_folder=str(folder), bundle_path=folder)\n\
            assert not bag.import_errors, bag.import_errors\n\
            dag = bag.get_dag(sys.argv[2])\n\
            for t in dag.tasks: t.retries = 0  # fail fast: dag.test() waits out retry_delay\n\
            run = dag.test()\n\
            print('DAG RUN STATE', run.state)\n\
            sys.exit(0 if str(run.state) == 'success' else 1)\n";
        let (ok, text) = airflow(
            Command::new(&python)
                .args(["-c", script])
                .arg(root().join("dags-repo-template/dags"))
                .arg(dag_id),
        );
        assert!(ok, "dag.test() of {dag_id}:\n{text}");
        text
    };
    run_dag("diagnosis_training");

    // The model version is in the registry, under review: `challenger`,
    // and not `champion` while the endpoint does not serve it.
    let addr: std::net::SocketAddr = mlflow.url.trim_start_matches("http://").parse().unwrap();
    let alias = |name: &str| -> Option<String> {
        let (code, body) = http_get(
            addr,
            &format!(
                "/api/2.0/mlflow/registered-models/alias?name=diagnosis-classifier&alias={name}"
            ),
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
    };
    assert_eq!(
        (alias("challenger"), alias("champion")),
        (Some("1".into()), None)
    );

    // The artifact the PR names exists, as MLflow's SageMaker container
    // unpacks it: MLmodel at the root of model.tar.gz.
    let read_artifact = "import boto3, io, json, sys, tarfile\n\
        o = boto3.client('s3').get_object(Bucket=sys.argv[1], Key=sys.argv[2])\n\
        names = tarfile.open(fileobj=io.BytesIO(o['Body'].read())).getnames()\n\
        print(json.dumps({'names': names, 'meta': o['Metadata'], 'etag': o['ETag']}))\n";
    let artifact = |version: &str| -> serde_json::Value {
        let key = format!("models/diagnosis-classifier/{version}/model.tar.gz");
        let (ok, text) = airflow(
            Command::new(&python)
                .args(["-c", read_artifact, &bucket])
                .arg(&key),
        );
        assert!(ok, "s3://{bucket}/{key}: {text}");
        serde_json::from_str(text.lines().next().unwrap()).unwrap()
    };
    let v1 = artifact("1");
    let names: Vec<&str> = v1["names"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_str().unwrap())
        .collect();
    assert!(
        names.contains(&"MLmodel")
            && names
                .iter()
                .all(|n| !n.starts_with('/') && !n.starts_with("model/")),
        "{names:?}"
    );
    assert!(
        names.iter().any(|n| n.ends_with(".skops")),
        "the model itself: {names:?}"
    );
    assert_eq!(v1["meta"]["mlflow-model-version"], "diagnosis-classifier/1");
    // A retry of the task finds it there and writes nothing.
    let (ok, text) = airflow(Command::new(&python).args([
        "-c",
        "import sys; sys.path.insert(0, sys.argv[2])\n\
         from mlplatform import packaging\n\
         print(packaging.package('diagnosis-classifier', '1', sys.argv[1]))",
        &bucket,
        root().join("dags-repo-template/dags").to_str().unwrap(),
    ]));
    assert!(ok && text.contains("'written': False"), "{text}");
    assert_eq!(artifact("1")["etag"], v1["etag"]);

    // Exactly one PR, whose diff points the endpoint at that version.
    let opened = fake.with(|f| f.opened.clone());
    assert_eq!(opened.len(), 1, "{opened:#?}");
    let pr = &opened[0];
    assert_eq!(
        (pr.repo.as_str(), pr.base.as_str(), pr.head.as_str()),
        (repo.as_str(), "main", "promote/diagnosis-classifier-v1")
    );
    let head =
        fake.with(|f| f.branches[&(repo.clone(), pr.head.clone())].1["platform.yaml"].clone());
    let changed: Vec<(&str, &str)> = platform
        .lines()
        .zip(head.lines())
        .filter(|(a, b)| a != b)
        .collect();
    assert_eq!(
        changed,
        [(
            "          model_data: s3://ml-platform-models/models/diagnosis-classifier/3/model.tar.gz",
            "          model_data: s3://ml-platform-models/models/diagnosis-classifier/1/model.tar.gz"
        )],
        "one bucket: the template's, the DAG's and terraform's"
    );
    assert_eq!(bucket, "ml-platform-models");
    assert_eq!(platform.lines().count(), head.lines().count());
    ferry::desired::platform::parse("platform.yaml", &head)
        .expect("the promoted platform.yaml is valid");

    // Nothing deployed yet: the follower changes nothing.
    let text = run_dag("diagnosis_champion");
    assert!(
        text.contains("no successful deployment to `production` yet"),
        "{text}"
    );
    assert_eq!(
        (alias("challenger"), alias("champion")),
        (Some("1".into()), None)
    );

    // A reviewer rejects the PR: its challenger is withdrawn.
    fake.with(|f| f.opened[0].state = "closed".into());
    run_dag("diagnosis_champion");
    assert_eq!((alias("challenger"), alias("champion")), (None, None));

    // The next training run proposes version 2, which is merged...
    run_dag("diagnosis_training");
    assert_eq!(
        (alias("challenger"), alias("champion")),
        (Some("2".into()), None)
    );
    let (pr2, head2) = fake.with(|f| {
        let pr = f.opened.last().unwrap().clone();
        let files = f.branches[&(repo.clone(), pr.head.clone())].1.clone();
        (pr, files)
    });
    assert_eq!(pr2.head, "promote/diagnosis-classifier-v2");
    assert_eq!(
        artifact("2")["meta"]["mlflow-model-version"],
        "diagnosis-classifier/2"
    );
    let merge = "a".repeat(40);
    fake.with(|f| {
        let p = f.opened.last_mut().unwrap();
        (p.state, p.merged) = ("closed".into(), true);
        f.branches.insert(
            (repo.clone(), "main".into()),
            (merge.clone(), head2.clone()),
        );
    });
    // ... and ferry's deployment of the merge fails (the smoke test rolled
    // the endpoint back): version 2 serves nowhere, so nothing moves.
    fake.with(|f| f.deployed(&repo, &merge, "production", &["in_progress", "failure"]));
    run_dag("diagnosis_champion");
    assert_eq!(
        (alias("challenger"), alias("champion")),
        (Some("2".into()), None)
    );

    // The retry succeeds: version 2 is champion, and no longer challenger.
    // The merge commit is gone from every branch by then; its files are
    // still read at that commit, not at the branch's head.
    fake.with(|f| {
        f.deployed(&repo, &merge, "production", &["in_progress", "success"]);
        let next = "c".repeat(40);
        f.commits
            .insert((repo.clone(), merge.clone()), head2.clone());
        f.branches.insert(
            (repo.clone(), "main".into()),
            (
                next,
                [("platform.yaml".to_string(), platform.clone())].into(),
            ),
        );
    });
    let text = run_dag("diagnosis_champion");
    assert!(text.contains("champion: v2 (the first)"), "{text}");
    assert_eq!(
        (alias("challenger"), alias("champion")),
        (None, Some("2".into()))
    );
    fake.assert_nothing_rejected();
}

fn template_manifests() -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut dirs = vec![root().join("platform-repo-template/manifests")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "yaml") {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

#[test]
fn the_platform_template_passes_kubernetes_validate_strict() {
    let files = template_manifests();
    assert!(files.len() >= 8, "{files:?}");
    let (ok, text) = output(
        Command::new(venv("lint-venv", "kubernetes-validate"))
            .args(["--strict", "--kubernetes-version", "1.37.0"])
            .args(&files),
    );
    assert!(ok, "{text}");
    assert!(!text.contains("ERROR"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_platform_template_is_accepted_by_the_apiserver() {
    use k8s_openapi::api::core::v1::Namespace;
    use kube::api::{Api, Patch, PatchParams};

    // As ferry's own identity: deploy/base's ClusterRole, nothing more.
    let cp = control_plane();
    let admin = ferry::kubernetes::client::connect(Some(&cp.admin))
        .await
        .unwrap();
    grant_ferrys_cluster_role(&admin).await;
    let client = ferry::kubernetes::client::connect(Some(&cp.restricted))
        .await
        .unwrap();
    // Commit the template as a platform repo, as a team's fork would be.
    let tmp = tempfile::tempdir().unwrap();
    let repo = git2::Repository::init_bare(tmp.path().join("platform.git")).unwrap();
    let mut files = Vec::new();
    for path in template_manifests() {
        let rel = path
            .strip_prefix(root().join("platform-repo-template"))
            .unwrap();
        files.push((
            rel.to_string_lossy().into_owned(),
            std::fs::read_to_string(&path).unwrap(),
        ));
    }
    let files: Vec<(&str, String)> = files.iter().map(|(p, c)| (p.as_str(), c.clone())).collect();
    let commit = commit_files(&repo, &files);
    let manifests = ferry::desired::manifests::read(&repo, commit, "manifests");
    let manifests = manifests.unwrap_or_else(|e| panic!("ferry cannot parse the template: {e:#?}"));
    // The namespaces exist for real (apply creates them first; a plan
    // dry-runs objects only in namespaces that exist).
    let namespaces: Api<Namespace> = Api::all(client.clone());
    for m in manifests.iter().filter(|m| m.id.kind == "Namespace") {
        namespaces
            .patch(
                &m.id.name,
                &PatchParams::apply("ferry-test"),
                &Patch::Apply(&m.object),
            )
            .await
            .unwrap();
    }
    let plan = assert_dry_run_accepted(&client, "default", manifests).await;
    assert!(plan.objects.len() >= 30, "{}", plan.objects.len());
    // Every object was dry-run, except the bindings of roles the template
    // itself creates while those roles do not exist yet (on a cluster where
    // the quickstart test has applied the template they do): the server
    // checks a binding against its role, which only the apply creates
    // (applied for real, as ferry's identity, by that quickstart test in
    // tests/cli.rs).
    let noted: Vec<String> = plan
        .objects
        .iter()
        .filter(|o| o.note.is_some())
        .map(|o| format!("{} ({})", o.id, o.note.as_deref().unwrap_or_default()))
        .collect();
    assert!(noted.len() <= 2, "{noted:#?}");
    assert!(
        noted
            .iter()
            .all(|n| n.contains("RoleBinding") && n.contains("binds a role this revision creates")),
        "{noted:#?}"
    );
}
