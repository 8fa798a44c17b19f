//! A real Airflow 3 reads what ferry publishes.
//!
//! The Airflow venv comes from `.ci/setup` (FERRY_AIRFLOW_PYTHON overrides
//! where its interpreter is). The ferry binary runs as the daemon, with the
//! repo's `tools/airflow_dagbag.py --check` as its validation hook.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::support::*;

fn airflow_python() -> PathBuf {
    let path = std::env::var_os("FERRY_AIRFLOW_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join(".cache/airflow-venv/bin/python")
        });
    assert!(
        path.exists(),
        "{} is missing: run `.ci/setup` to install Airflow 3 into .cache/airflow-venv",
        path.display()
    );
    path
}

fn dagbag_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tools/airflow_dagbag.py")
}

/// What Airflow sees in `folder`: (DAG ids, files with import errors).
fn airflow_sees(python: &Path, airflow_home: &Path, folder: &Path) -> (Vec<String>, Vec<String>) {
    let out = Command::new(python)
        .arg(dagbag_script())
        .arg(folder)
        .env("AIRFLOW_HOME", airflow_home)
        .env("PYTHONWARNINGS", "ignore")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let json_line = stdout
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .unwrap_or_else(|| {
            panic!(
                "no JSON from DagBag: {stdout}\n{}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    let v: serde_json::Value = serde_json::from_str(json_line).unwrap();
    let ids = v["dag_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_str().unwrap().to_string())
        .collect();
    let errors = v["import_errors"]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    (ids, errors)
}

fn copy_template(to: &Path) {
    let template = Path::new(env!("CARGO_MANIFEST_DIR")).join("dags-repo-template");
    run(Command::new("cp")
        .arg("-r")
        .arg(format!("{}/.", template.display()))
        .arg(to));
}

#[test]
fn airflow_parses_published_dags_and_never_sees_a_blocked_commit() {
    let python = airflow_python();
    let tmp = tempfile::tempdir().unwrap();
    let airflow_home = tmp.path().join("airflow-home");
    std::fs::create_dir_all(&airflow_home).unwrap();
    let repo = Repo::new(tmp.path(), "dags");
    copy_template(&repo.work);
    let first = repo.commit(&[], "template");
    let daemon = git_daemon(tmp.path(), free_port());

    let port = free_port();
    let dest = tmp.path().join("airflow-dags");
    let targets = format!(
        "  dags:\n    source: dags\n    subdir: dags\n    destination: {dest}\n    \
         validation:\n      policy: block\n      timeout: 120s\n      command: [{py:?}, {script:?}, \"--check\", \".\"]\n",
        dest = dest.display(),
        py = python.display().to_string(),
        script = dagbag_script().display().to_string(),
    );
    let config = daemon_config(tmp.path(), port, "dags", daemon.port, &targets);
    let ferry = spawn_ferry(
        &config,
        &tmp.path().join("ferry.log"),
        port,
        &[
            ("AIRFLOW_HOME", &airflow_home),
            ("PYTHONWARNINGS", Path::new("ignore")),
        ],
    );
    let addr = format!("127.0.0.1:{port}").parse().unwrap();
    let status = |want: &dyn Fn(&serde_json::Value) -> bool| {
        eventually(Duration::from_secs(90), "ferry status", || {
            let (_, body) = http_get(addr, "/api/v1/status/dags");
            let v: serde_json::Value = serde_json::from_str(&body).ok()?;
            want(&v).then_some(v)
        })
    };

    // 1. The template is published and Airflow sees exactly its DAGs.
    status(&|v| v["published_revision"] == first.as_str());
    let expected = vec![
        "diagnosis_champion".to_string(),
        "diagnosis_scoring".to_string(),
        "diagnosis_training".to_string(),
    ];
    let folder = dest.join("current");
    assert_eq!(
        airflow_sees(&python, &airflow_home, &folder),
        (expected.clone(), vec![])
    );
    let (code, ready) = http_get(addr, "/readyz");
    assert_eq!(code, 200, "{ready}");

    // 2. A syntax error: blocked; the status API names file and line.
    let broken = repo.commit(
        &[(
            "dags/broken_dag.py",
            Some("from airflow.sdk import dag\n\n@dag(schedule=None\ndef broken():\n    pass\n"),
        )],
        "broken DAG",
    );
    let v = status(&|v| v["last_error"]["commit"] == broken.as_str());
    assert_eq!(v["last_error"]["file"], "dags/broken_dag.py");
    assert_eq!(
        v["last_error"]["line"], 3,
        "the unclosed `(` is on line 3: {v}"
    );
    assert_eq!(v["last_error"]["kind"], "validation_failed");
    assert_eq!(
        v["published_revision"],
        first.as_str(),
        "the last good revision stays live"
    );
    assert_eq!(
        airflow_sees(&python, &airflow_home, &folder),
        (expected.clone(), vec![])
    );

    // 3. Valid syntax, but Airflow cannot import it: the Airflow hook blocks it.
    let import_error = repo.commit(
        &[
            ("dags/broken_dag.py", None),
            (
                "dags/needs_missing_lib.py",
                Some("import not_installed_anywhere\nfrom airflow.sdk import dag\n"),
            ),
        ],
        "import error",
    );
    let v = status(&|v| v["last_error"]["commit"] == import_error.as_str());
    let output = v["last_error"]["hook"]["output"]
        .as_str()
        .unwrap_or_default();
    assert!(
        output.contains("needs_missing_lib.py") && output.contains("not_installed_anywhere"),
        "{v}"
    );
    assert_eq!(v["published_revision"], first.as_str());
    assert_eq!(
        airflow_sees(&python, &airflow_home, &folder),
        (expected.clone(), vec![])
    );

    // 4. The fix is published and Airflow sees the new DAG.
    let fixed = repo.commit(
        &[
            ("dags/needs_missing_lib.py", None),
            (
                "dags/third.py",
                Some("from datetime import datetime\nfrom airflow.sdk import dag, task\n\n@dag(dag_id=\"third\", schedule=None, start_date=datetime(2026, 1, 1))\ndef third():\n    @task\n    def t():\n        return 1\n    t()\n\nthird()\n"),
            ),
        ],
        "fix",
    );
    let v = status(&|v| v["published_revision"] == fixed.as_str());
    assert!(v["last_error"].is_null(), "{v}");
    let (ids, errors) = airflow_sees(&python, &airflow_home, &folder);
    assert_eq!(
        ids,
        vec![
            "diagnosis_champion",
            "diagnosis_scoring",
            "diagnosis_training",
            "third"
        ]
    );
    assert!(errors.is_empty());
    assert_eq!(
        std::fs::read_link(&folder).unwrap(),
        Path::new(".ferry").join(&fixed),
        "git-sync contract: the link target's basename is the commit"
    );

    stop_ferry(ferry);
}

/// What Airflow makes of `folder` as a bundle: each DAG's file (relative
/// to the folder, and Airflow's own `relative_fileloc`) and the files that
/// failed to import.
fn airflow_bundle(python: &Path, airflow_home: &Path, folder: &Path) -> serde_json::Value {
    let script = r#"
import json, os, sys, warnings
warnings.simplefilter("ignore")
os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
from pathlib import Path
from airflow.dag_processing.dagbag import BundleDagBag
folder = sys.argv[1]
bag = BundleDagBag(dag_folder=folder, bundle_path=Path(folder))
print(json.dumps({
    "dags": {d.dag_id: [os.path.relpath(d.fileloc, folder), str(d.relative_fileloc)] for d in bag.dags.values()},
    # Airflow keys import errors by the file's path in the bundle.
    "errors": sorted(str(p) for p in bag.import_errors),
}, sort_keys=True))
"#;
    let out = Command::new(python)
        .args(["-c", script])
        .arg(folder)
        .env("AIRFLOW_HOME", airflow_home)
        .env("PYTHONWARNINGS", "ignore")
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .unwrap_or_else(|| {
            panic!(
                "no JSON from Airflow: {stdout}\n{}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    serde_json::from_str(line).unwrap()
}

/// `ferry publish-dags` of `bare`'s main into `dest`, which must succeed.
fn publish_dags(bare: &Path, dest: &Path, cache: &Path) {
    run(&mut publish_dags_command(bare, "main", "dags", dest, cache));
}

const BROKEN: &str = "from airflow.sdk import DAG  # a dag\nimport ";

/// Shared directories (a revision built from directories other revisions
/// have) read in real Airflow exactly as a plain checkout does: identical
/// subdirectories stay two directories (Airflow refuses a folder where one
/// resolved directory appears twice), `.airflowignore` rules, helper
/// packages on the bundle's path, file locations and import errors.
#[test]
fn airflow_reads_a_published_revision_exactly_as_the_checkout() {
    let python = airflow_python();
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("airflow-home");
    std::fs::create_dir_all(&home).unwrap();
    let repo = Repo::new(tmp.path(), "dags");
    let dag = "import os\nfrom datetime import datetime\nfrom airflow.sdk import DAG\n\
               team = \"_\".join(os.path.dirname(__file__).split(os.sep)[-2:])\n\
               with DAG(dag_id=f\"etl_{team}\", start_date=datetime(2026, 1, 1), schedule=None):\n    pass\n";
    let helper_dag = "from datetime import datetime\nfrom airflow.sdk import DAG\nfrom helpers.naming import NAME\n\
                      with DAG(dag_id=NAME, start_date=datetime(2026, 1, 1), schedule=None):\n    pass\n";
    let files: Vec<(String, String)> = vec![
        // Byte-identical directories, deep and shallow.
        ("dags/teams/red/etl.py".into(), dag.into()),
        ("dags/teams/red/sub/etl.py".into(), dag.into()),
        ("dags/teams/blue/etl.py".into(), dag.into()),
        ("dags/teams/blue/sub/etl.py".into(), dag.into()),
        ("dags/helpers/__init__.py".into(), String::new()),
        (
            "dags/helpers/naming.py".into(),
            "NAME = 'named_by_helper'\n".into(),
        ),
        ("dags/uses_helper.py".into(), helper_dag.into()),
        // Airflow imports only files that mention both `airflow` and `dag`.
        (
            "dags/broken_import.py".into(),
            format!("{BROKEN}no_such_module_anywhere\n"),
        ),
        (
            "dags/.airflowignore".into(),
            "ignored/\n*_draft.py\n".into(),
        ),
        (
            "dags/ignored/bad.py".into(),
            format!("{BROKEN}also_missing\n"),
        ),
        (
            "dags/teams/red/x_draft.py".into(),
            format!("{BROKEN}also_missing\n"),
        ),
    ];
    let publish = |dest: &Path| publish_dags(&repo.bare, dest, &tmp.path().join("cache"));
    let commit = |files: &[(String, String)], message: &str| {
        let refs: Vec<(&str, Option<&str>)> = files
            .iter()
            .map(|(p, c)| (p.as_str(), Some(c.as_str())))
            .collect();
        repo.commit(&refs, message)
    };
    let dest = tmp.path().join("dest");
    let first = commit(&files, "first");
    publish(&dest);
    // One file changes: the second revision shares every other directory.
    let mut second = files.clone();
    second[4].1 = "# helpers\n".into();
    let head = commit(&second, "second");
    publish(&dest);
    let revision = |commit: &str| dest.join(".ferry").join(commit).join("teams");
    assert_eq!(
        std::fs::canonicalize(revision(&head)).unwrap(),
        std::fs::canonicalize(revision(&first)).unwrap(),
        "the unchanged `teams` directory is the first revision's"
    );

    let checkout = airflow_bundle(&python, &home, &repo.work.join("dags"));
    let published = airflow_bundle(&python, &home, &dest.join("current"));
    assert_eq!(
        published, checkout,
        "Airflow reads the revision as the checkout"
    );
    let dags = checkout["dags"].as_object().unwrap();
    for id in [
        "etl_teams_red",
        "etl_teams_blue",
        "etl_red_sub",
        "etl_blue_sub",
        "named_by_helper",
    ] {
        assert!(dags.contains_key(id), "{id} missing: {checkout}");
    }
    assert_eq!(
        checkout["errors"],
        serde_json::json!(["broken_import.py"]),
        "the ignored files are not imported: {checkout}"
    );
}

/// The DAGs template a team forks, published and read in real Airflow: the
/// same DAGs, file locations and (no) import errors as its checkout.
#[test]
fn airflow_reads_the_published_template_exactly_as_the_checkout() {
    let python = airflow_python();
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("airflow-home");
    std::fs::create_dir_all(&home).unwrap();
    let repo = Repo::new(tmp.path(), "dags");
    copy_template(&repo.work);
    repo.commit(&[], "template");
    let dest = tmp.path().join("dest");
    publish_dags(&repo.bare, &dest, &tmp.path().join("cache"));

    let checkout = airflow_bundle(&python, &home, &repo.work.join("dags"));
    let published = airflow_bundle(&python, &home, &dest.join("current"));
    assert_eq!(
        published, checkout,
        "Airflow reads the revision as the checkout"
    );
    let ids: Vec<&String> = checkout["dags"].as_object().unwrap().keys().collect();
    assert_eq!(
        ids,
        [
            "diagnosis_champion",
            "diagnosis_scoring",
            "diagnosis_training"
        ],
        "{checkout}"
    );
    assert_eq!(checkout["errors"], serde_json::json!([]), "{checkout}");
}
