//! Airflow 3 runs each DAG run on the revision it started on, through the
//! platform template's FerryDagBundle, and ferry keeps a revision while
//! Airflow may still run it.
//!
//! Real Airflow 3.3.2 from `.ci/setup` (api-server, dag-processor and
//! scheduler, as the template's Deployments run them; LocalExecutor on
//! SQLite in place of KubernetesExecutor on RDS) with the bundle module and
//! `dag_bundle_config_list` taken from the template's ConfigMaps.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};

use crate::support::*;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn airflow_bin(name: &str) -> PathBuf {
    let bin = root().join(".cache/airflow-venv/bin").join(name);
    assert!(
        bin.exists(),
        "{} is missing: run `.ci/setup` to install Airflow 3 into .cache/airflow-venv",
        bin.display()
    );
    bin
}

/// The ConfigMaps of the template's `manifests/airflow/<file>`, by name.
fn template_config_map(file: &str, name: &str) -> Value {
    airflow_template(file)
        .into_iter()
        .find(|d| d["kind"] == "ConfigMap" && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no ConfigMap {name} in {file}"))
}

#[test]
fn the_template_embeds_the_bundle_module_as_it_is_in_ferry_airflow() {
    let embedded = template_config_map("ferry-bundle.yaml", "airflow-ferry-bundle");
    let module = std::fs::read_to_string(root().join("ferry-airflow/ferry_airflow.py")).unwrap();
    assert!(
        embedded["data"]["ferry_airflow.py"].as_str() == Some(module.as_str()),
        "platform-repo-template/manifests/airflow/ferry-bundle.yaml holds another \
         ferry_airflow.py than ferry-airflow/: run scripts/embed-airflow-bundle"
    );
}

#[test]
fn the_bundle_module_passes_its_own_tests_in_real_airflow() {
    let home = tempfile::tempdir().unwrap();
    let out = Command::new(airflow_bin("python"))
        .args(["-m", "unittest", "-v", "test_ferry_airflow"])
        .current_dir(root().join("ferry-airflow"))
        .env("AIRFLOW_HOME", home.path())
        .env("PYTHONWARNINGS", "ignore")
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("Ran 7 tests"), "{text}");
}

const DAG: &str = r#"from datetime import datetime
from airflow.sdk import dag, task

CODE = "{code}"

@dag(dag_id="pinned", schedule=None, start_date=datetime(2026, 1, 1), catchup=False)
def pinned():
    @task(retries=0)
    def which():
        print("RUNNING CODE", CODE)
    which()

pinned()
"#;

/// Airflow's api-server, dag-processor and scheduler on one home.
struct Airflow {
    api: std::net::SocketAddr,
    home: PathBuf,
    log_dir: PathBuf,
    api_server: Option<Owned>,
    _processor: Owned,
    _scheduler: Owned,
}

impl Airflow {
    fn start(tmp: &Path, dest: &Path) -> Airflow {
        let home = tmp.join("airflow-home");
        std::fs::create_dir_all(home.join("config")).unwrap();
        // The module exactly as the template mounts it at $AIRFLOW_HOME/config.
        let bundle = template_config_map("ferry-bundle.yaml", "airflow-ferry-bundle");
        std::fs::write(
            home.join("config/ferry_airflow.py"),
            bundle["data"]["ferry_airflow.py"].as_str().unwrap(),
        )
        .unwrap();
        // The template's bundle list, pointed at this test's volume.
        let config = template_config_map("config.yaml", "airflow-config");
        let mut bundles: Value = serde_json::from_str(
            config["data"]["AIRFLOW__DAG_PROCESSOR__DAG_BUNDLE_CONFIG_LIST"]
                .as_str()
                .expect("the template configures dag_bundle_config_list"),
        )
        .unwrap();
        assert_eq!(bundles[0]["name"], "dags-folder");
        assert_eq!(bundles[0]["kwargs"]["path"], "/opt/airflow/dags");
        bundles[0]["kwargs"]["path"] = json!(dest);
        std::fs::write(
            tmp.join("passwords.json"),
            r#"{"ferry": "ferry-pass", "admin": "admin-pass"}"#,
        )
        .unwrap();
        let port = free_port();
        let env = |cmd: &mut Command| {
            cmd.env("AIRFLOW_HOME", &home)
                .env("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
                .env("AIRFLOW__CORE__EXECUTOR", "LocalExecutor")
                .env(
                    "AIRFLOW__DAG_PROCESSOR__DAG_BUNDLE_CONFIG_LIST",
                    bundles.to_string(),
                )
                .env(
                    "AIRFLOW__DAG_PROCESSOR__DAG_BUNDLE_STORAGE_PATH",
                    tmp.join("bundles"),
                )
                .env("AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL", "1")
                .env("AIRFLOW__DAG_PROCESSOR__BUNDLE_REFRESH_CHECK_INTERVAL", "1")
                // Airflow's own cleanup of bundle usage records runs often
                // here, against a bundle that keeps no local copies.
                .env("AIRFLOW__DAG_PROCESSOR__STALE_BUNDLE_CLEANUP_INTERVAL", "3")
                .env(
                    "AIRFLOW__DAG_PROCESSOR__STALE_BUNDLE_CLEANUP_AGE_THRESHOLD",
                    "1",
                )
                .env(
                    "AIRFLOW__DAG_PROCESSOR__STALE_BUNDLE_CLEANUP_MIN_VERSIONS",
                    "1",
                )
                .env("AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC", "1")
                .env(
                    "AIRFLOW__API_AUTH__JWT_SECRET",
                    "ferry-test-jwt-secret-0123456789abcdef",
                )
                .env(
                    "AIRFLOW__CORE__EXECUTION_API_SERVER_URL",
                    format!("http://127.0.0.1:{port}/execution/"),
                )
                .env(
                    "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS",
                    "ferry:viewer,admin:admin",
                )
                .env(
                    "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE",
                    tmp.join("passwords.json"),
                )
                .env("PYTHONWARNINGS", "ignore")
                .stdin(Stdio::null())
                .stdout(Stdio::null());
        };
        let mut migrate = Command::new(airflow_bin("airflow"));
        env(&mut migrate);
        let out = migrate
            .args(["db", "migrate"])
            .stdout(Stdio::piped())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "airflow db migrate: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let log_dir = tmp.join("airflow-logs");
        std::fs::create_dir_all(&log_dir).unwrap();
        let spawn = |args: &[&str], log: &str| {
            let mut cmd = Command::new(airflow_bin("airflow"));
            env(&mut cmd);
            let file = std::fs::File::create(log_dir.join(log)).unwrap();
            cmd.args(args)
                .stdout(file.try_clone().unwrap())
                .stderr(file);
            spawn_owned(&mut cmd).unwrap()
        };
        let mut api_server = spawn(&["api-server", "--port", &port.to_string()], "api.log");
        let processor = spawn(&["dag-processor"], "dag-processor.log");
        let scheduler = spawn(&["scheduler"], "scheduler.log");
        wait_listening(
            &mut api_server,
            port,
            &log_dir.join("api.log"),
            Duration::from_secs(120),
        );
        Airflow {
            api: format!("127.0.0.1:{port}").parse().unwrap(),
            home,
            log_dir,
            api_server: Some(api_server),
            _processor: processor,
            _scheduler: scheduler,
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.api)
    }

    /// One API call as the admin user.
    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let login = json!({"username": "admin", "password": "admin-pass"}).to_string();
        let json = [("Content-Type", "application/json")];
        let (code, token) = http_post(self.api, "/auth/token", &json, login.as_bytes());
        assert!((200..300).contains(&code), "token: {code} {token}");
        let token: Value = serde_json::from_str(&token).unwrap();
        let bearer = format!("Bearer {}", token["access_token"].as_str().unwrap());
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let (code, answer) = http_request(
            self.api,
            method,
            path,
            &[
                ("Content-Type", "application/json"),
                ("Authorization", &bearer),
            ],
            body.as_bytes(),
        );
        assert!(
            (200..300).contains(&code),
            "{method} {path}: {code} {answer}"
        );
        serde_json::from_str(&answer).unwrap_or(Value::Null)
    }

    /// The version Airflow last parsed `pinned` at.
    fn dag_version(&self) -> Option<String> {
        let dag = self.call("GET", "/api/v2/dags?dag_id_pattern=pinned", None);
        dag["dags"][0]["bundle_version"]
            .as_str()
            .map(str::to_string)
    }

    fn trigger(&self, run_id: &str) -> Value {
        self.call(
            "POST",
            "/api/v2/dags/pinned/dagRuns",
            Some(json!({"dag_run_id": run_id, "logical_date": null})),
        )
    }

    fn run(&self, run_id: &str) -> Value {
        self.call(
            "GET",
            &format!("/api/v2/dags/pinned/dagRuns/{run_id}"),
            None,
        )
    }

    /// What the task of `run_id` logged, attempt `try_number`.
    fn task_log(&self, run_id: &str, try_number: u32) -> String {
        let path = self.home.join(format!(
            "logs/dag_id=pinned/run_id={run_id}/task_id=which/attempt={try_number}.log"
        ));
        std::fs::read_to_string(path).unwrap_or_default()
    }

    fn wait_run(&self, run_id: &str, state: &str) -> Value {
        eventually(
            Duration::from_secs(120),
            &format!("{run_id} {state}"),
            || {
                let run = self.run(run_id);
                std::thread::sleep(Duration::from_millis(300));
                (run["state"] == state).then_some(run)
            },
        )
    }

    fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.log_dir.join(name)).unwrap_or_default()
    }
}

#[test]
fn dag_runs_run_on_their_own_revision_and_ferry_keeps_it_while_airflow_may_run_it() {
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("airflow-dags");
    let repo = Repo::new(tmp.path(), "dags");
    let a = repo.commit(
        &[("dags/pinned.py", Some(&DAG.replace("{code}", "A")))],
        "A",
    );
    let daemon = git_daemon(tmp.path(), free_port());
    let mut airflow = Airflow::start(tmp.path(), &dest);

    std::fs::write(tmp.path().join("airflow-password"), "ferry-pass\n").unwrap();
    let port = free_port();
    // Static rules alone would keep only the newest superseded revision,
    // and none of them for long.
    let targets = format!(
        "  dags:\n    source: dags\n    destination: {dest}\n    \
         retention: {{keep: 1, max_age: 0s, interval: 1s}}\n    \
         airflow:\n      url: {url}\n      username: ferry\n      password_file: {password}\n      window: 6s\n",
        dest = dest.display(),
        url = airflow.url(),
        password = tmp.path().join("airflow-password").display(),
    );
    let config = daemon_config(tmp.path(), port, "dags", daemon.port, &targets);
    let ferry = spawn_ferry(&config, &tmp.path().join("ferry.log"), port, &[]);
    let addr = format!("127.0.0.1:{port}").parse().unwrap();
    let status = |what: &str, want: &dyn Fn(&Value) -> bool| -> Value {
        eventually(Duration::from_secs(120), what, || {
            let (_, body) = http_get(addr, "/api/v1/status/dags");
            let v: Value = serde_json::from_str(&body).ok()?;
            want(&v).then_some(v)
        })
    };
    let kept_because = |v: &Value, commit: &str| -> Vec<Value> {
        v["retention"]["kept"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|k| k["commit"] == commit)
            .map(|k| k["reasons"].as_array().unwrap().clone())
            .unwrap_or_default()
    };
    let on_disk = |commit: &str| dest.join(".ferry").join(commit).is_dir();
    let parsed_at = |commit: &str| {
        eventually(
            Duration::from_secs(120),
            &format!("Airflow parses {commit}"),
            || {
                std::thread::sleep(Duration::from_millis(300));
                (airflow.dag_version().as_deref() == Some(commit)).then_some(())
            },
        )
    };

    // 1. Revision A, published by ferry and parsed by the real dag-processor,
    //    pins the first run (created paused, so it waits).
    status("A published", &|v| v["published_revision"] == a.as_str());
    parsed_at(&a);
    assert_eq!(airflow.trigger("run_a")["bundle_version"], a.as_str());

    // 2. B changes the DAG; the second run is pinned to B.
    let b = repo.commit(
        &[("dags/pinned.py", Some(&DAG.replace("{code}", "B")))],
        "B",
    );
    status("B published", &|v| v["published_revision"] == b.as_str());
    parsed_at(&b);
    assert_eq!(airflow.trigger("run_b")["bundle_version"], b.as_str());

    // 3. C: keep 1 and max_age 0 would drop A, but run A is queued on it.
    let c = repo.commit(
        &[("dags/pinned.py", Some(&DAG.replace("{code}", "C")))],
        "C",
    );
    status("C published", &|v| v["published_revision"] == c.as_str());
    let v = status("A kept for run_a", &|v| {
        kept_because(v, &c) == [json!({"kind": "live"})]
            && kept_because(v, &a)
                .iter()
                .any(|r| r["kind"] == "run" && r["run_id"] == "run_a")
    });
    assert_eq!(v["retention"]["airflow"]["answered"], true, "{v}");
    assert!(v["retention"]["bytes_kept"].as_u64().unwrap() > 0, "{v}");
    assert!(on_disk(&a));
    let (_, metrics) = http_get(addr, "/metrics");
    assert_series(&metrics, "ferry_dags_airflow_up{source=\"dags\"}", 1.0);
    assert_series(&metrics, "ferry_dags_revisions_kept{source=\"dags\"}", 3.0);
    assert_series(
        &metrics,
        "ferry_dags_revisions_kept_by{source=\"dags\",reason=\"airflow_run\"}",
        2.0,
    );

    // 4. Both runs go: each task runs its own run's code while the link
    //    points at C.
    airflow.call(
        "PATCH",
        "/api/v2/dags/pinned",
        Some(json!({"is_paused": false})),
    );
    airflow.wait_run("run_a", "success");
    airflow.wait_run("run_b", "success");
    assert_eq!(
        std::fs::read_link(dest.join("current")).unwrap(),
        Path::new(".ferry").join(&c)
    );
    for (run, code) in [("run_a", "A"), ("run_b", "B")] {
        let log = airflow.task_log(run, 1);
        assert!(
            log.contains(&format!("RUNNING CODE {code}")),
            "{run} must run revision {code}'s code:\n{log}"
        );
    }

    // 5. Ended runs hold their revision for the window, then it goes.
    let v = status("A kept as an ended run's", &|v| {
        kept_because(v, &a).iter().any(|r| r["kind"] == "ended")
    });
    assert!(on_disk(&a), "{v}");
    status("A removed after the window", &|v| {
        v["retention"]["removed"]
            .as_array()
            .is_some_and(|r| r.iter().any(|c| c == a.as_str()))
            || (!on_disk(&a) && kept_because(v, &a).is_empty())
    });
    assert!(!on_disk(&a));
    assert!(on_disk(&c), "the live revision stays");

    // 6. A task of run A cleared after A is gone fails with the bundle's
    //    message, naming the revision and the settings.
    airflow.call(
        "POST",
        "/api/v2/dags/pinned/clearTaskInstances",
        Some(json!({"dag_run_id": "run_a", "dry_run": false, "only_failed": false})),
    );
    airflow.wait_run("run_a", "failed");
    let log = airflow.task_log("run_a", 2);
    assert!(
        log.contains(&format!("revision {a} of the DAGs is no longer in"))
            && log.contains("targets.dags.retention.keep"),
        "the failed task names the missing revision and what to change:\n{log}"
    );

    // 7. Airflow's API down: ferry prunes by keep/max_age only, and says so.
    drop(airflow.api_server.take());
    let d = repo.commit(
        &[("dags/pinned.py", Some(&DAG.replace("{code}", "D")))],
        "D",
    );
    let v = status("Airflow unreachable reported", &|v| {
        v["published_revision"] == d.as_str() && v["retention"]["airflow"]["answered"] == false
    });
    let error = v["retention"]["airflow"]["error"].as_str().unwrap();
    assert!(
        error.contains(&airflow.url()) && error.contains("retention.keep and max_age only"),
        "{error}"
    );
    status("B pruned by the static rules", &|_| {
        (!on_disk(&b)).then_some(()).is_some()
    });
    assert!(on_disk(&c), "keep 1: the newest superseded revision stays");
    let (_, metrics) = http_get(addr, "/metrics");
    assert_series(&metrics, "ferry_dags_airflow_up{source=\"dags\"}", 0.0);

    // Airflow's own stale-bundle cleanup ran against this bundle and never failed.
    for log in ["dag-processor.log", "scheduler.log"] {
        let text = airflow.log(log);
        assert!(
            !text.contains("Error removing stale bundle versions")
                && !text.contains("FileNotFoundError"),
            "{log}:\n{text}"
        );
    }
    assert!(
        airflow
            .log("dag-processor.log")
            .contains("checking bundle for stale versions. bundle_name=dags-folder"),
        "the cleanup ran"
    );
    stop_ferry(ferry);
}
