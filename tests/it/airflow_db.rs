//! The platform template's Airflow on an empty PostgreSQL database, as a
//! fresh cluster starts it: the migration Job's command, the components'
//! wait-for-migrations init container, then the api-server, each run as
//! the rendered manifests declare them (real Airflow 3.3.2 from
//! `.ci/setup`, a real PostgreSQL server).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::support::postgres::Postgres;
use crate::support::*;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn airflow() -> PathBuf {
    let bin = root().join(".cache/airflow-venv/bin/airflow");
    assert!(
        bin.exists(),
        "{} is missing: run `.ci/setup`",
        bin.display()
    );
    bin
}

fn named<'a>(docs: &'a [Value], kind: &str, prefix: &str) -> &'a Value {
    docs.iter()
        .find(|d| {
            d["kind"] == kind
                && d["metadata"]["name"]
                    .as_str()
                    .is_some_and(|n| n.starts_with(prefix))
        })
        .unwrap_or_else(|| panic!("no {kind} {prefix}* in the template"))
}

fn args(container: &Value) -> Vec<String> {
    container["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .collect()
}

/// The environment a container gets: the ConfigMap it loads, then each
/// `env` entry, Secrets resolved from `secrets` (`name/key`).
fn environment(
    container: &Value,
    config: &BTreeMap<String, String>,
    secrets: &BTreeMap<&str, String>,
) -> BTreeMap<String, String> {
    assert_eq!(
        container["envFrom"][0]["configMapRef"]["name"], "airflow-config",
        "{container}"
    );
    let mut env = config.clone();
    env.extend(declared_env(container, secrets));
    env
}

/// A container's `env` entries, Secrets resolved from `secrets` (`name/key`).
fn declared_env(container: &Value, secrets: &BTreeMap<&str, String>) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    for e in container["env"].as_array().into_iter().flatten() {
        let name = e["name"].as_str().unwrap().to_string();
        let value = match e["valueFrom"]["secretKeyRef"].as_object() {
            Some(r) => {
                let at = format!(
                    "{}/{}",
                    r["name"].as_str().unwrap(),
                    r["key"].as_str().unwrap()
                );
                secrets
                    .get(at.as_str())
                    .unwrap_or_else(|| panic!("the test has no Secret {at}"))
                    .clone()
            }
            None => e["value"].as_str().unwrap().to_string(),
        };
        env.insert(name, value);
    }
    env
}

#[test]
fn airflow_starts_on_an_empty_postgres_database_as_the_template_runs_it() {
    let pg = Postgres::start();
    let url = pg.database("airflow", "airflow-db-pass");
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    std::fs::create_dir_all(&home).unwrap();

    let components = airflow_template("components.yaml");
    let job = named(&components, "Job", "airflow-db-migrate-");
    let api = named(&components, "Deployment", "airflow-api-server");
    let migrate = &job["spec"]["template"]["spec"]["containers"][0];
    let server = &api["spec"]["template"]["spec"]["containers"][0];
    let wait = &api["spec"]["template"]["spec"]["initContainers"][0];
    // One Airflow: the Job and the init container run the components' image.
    assert_eq!(migrate["image"], server["image"]);
    assert_eq!(wait["image"], server["image"]);
    // Tagged <Airflow version>-<digest of the image's files>.
    let version = server["image"]
        .as_str()
        .unwrap()
        .rsplit(':')
        .next()
        .unwrap()
        .split('-')
        .next()
        .unwrap();
    assert_eq!(
        job["metadata"]["name"],
        format!("airflow-db-migrate-{}", version.replace('.', "-")),
        "named by the version it migrates to"
    );
    // Every Airflow component waits for the schema.
    for d in components.iter().filter(|d| {
        d["kind"] == "Deployment"
            && d["spec"]["template"]["spec"]["containers"][0]["image"] == server["image"]
    }) {
        let init = &d["spec"]["template"]["spec"]["initContainers"][0];
        assert_eq!(args(init), args(wait), "{}", d["metadata"]["name"]);
    }

    let config_docs = airflow_template("config.yaml");
    let config_map = named(&config_docs, "ConfigMap", "airflow-config");
    let mut config: BTreeMap<String, String> = config_map["data"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
        .collect();
    // What only the cluster has: S3 for task logs, the StatsD exporter's
    // Service, the Kubernetes API for the executor.
    config.insert("AIRFLOW__LOGGING__REMOTE_LOGGING".into(), "False".into());
    config.insert("AIRFLOW__METRICS__STATSD_ON".into(), "False".into());
    config.insert("AIRFLOW__CORE__EXECUTOR".into(), "LocalExecutor".into());
    let fernet = "Vm1xdTQ3WXJhVlBxWnJ2aG5WbG9ZVEhjcUJBVm55Zzk=";
    let secrets = BTreeMap::from([
        ("airflow-db/sql_alchemy_conn", url.clone()),
        (
            "airflow-api/jwt_secret",
            "ferry-test-jwt-secret-0123456789abcdef".to_string(),
        ),
        ("airflow-api/fernet_key", fernet.to_string()),
    ]);
    // `airflow <args>` with exactly what `container` would get.
    let command = |container: &Value, args: &[String]| {
        let mut cmd = Command::new(airflow());
        cmd.args(args)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap())
            .env("AIRFLOW_HOME", &home)
            .env("PYTHONWARNINGS", "ignore")
            .envs(environment(container, &config, &secrets))
            .stdin(Stdio::null());
        cmd
    };
    let run = |container: &Value, args: &[String], timeout: Duration| {
        let started = std::time::Instant::now();
        let out = command(container, args).output().unwrap();
        assert!(
            started.elapsed() < timeout,
            "{args:?} took {:?}",
            started.elapsed()
        );
        out
    };
    let run_ok = |container: &Value, args: &[String], timeout: Duration| {
        let out = run(container, args, timeout);
        assert!(
            out.status.success(),
            "airflow {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };

    // An empty database: the components' gate holds them back (the
    // template waits 600 s; here 5).
    let mut impatient = args(wait);
    let at = impatient
        .iter()
        .position(|a| a == "--migration-wait-timeout")
        .unwrap();
    impatient[at + 1] = "5".into();
    let out = run(wait, &impatient, Duration::from_secs(120));
    assert!(
        !out.status.success(),
        "no schema yet, yet check-migrations passed"
    );

    // The Job, exactly as declared: the schema is made.
    run_ok(migrate, &args(migrate), Duration::from_secs(300));
    assert_eq!(
        pg.sql("airflow", "SELECT count(*) FROM alembic_version"),
        "1"
    );
    // Idempotent: the same Job run again (a retry) changes nothing.
    run_ok(migrate, &args(migrate), Duration::from_secs(300));
    // ...and the gate, as declared, opens at once.
    run_ok(wait, &args(wait), Duration::from_secs(120));

    // The Fernet key of the Secret encrypts what Airflow stores.
    let mut add = vec!["connections", "add", "warehouse", "--conn-uri"]
        .into_iter()
        .map(String::from)
        .collect::<Vec<_>>();
    add.push("postgres://etl:warehouse-secret@db.internal:5432/dw".into());
    run_ok(server, &add, Duration::from_secs(120));
    let stored = pg.sql(
        "airflow",
        "SELECT is_encrypted, password FROM connection WHERE conn_id = 'warehouse'",
    );
    assert!(stored.starts_with("t|"), "{stored}");
    assert!(!stored.contains("warehouse-secret"), "{stored}");

    // The api-server, as the Deployment runs it, serves on the migrated
    // database and says so.
    let mut serve = args(server);
    let port = free_port();
    let at = serve.iter().position(|a| a == "--port").unwrap();
    serve[at + 1] = port.to_string();
    let log = tmp.path().join("api-server.log");
    let mut cmd = command(server, &serve);
    cmd.stdout(std::fs::File::create(&log).unwrap())
        .stderr(std::fs::File::options().append(true).open(&log).unwrap());
    let mut child = spawn_owned(&mut cmd).unwrap();
    wait_listening(&mut child, port, &log, Duration::from_secs(120));
    let probe = &server["readinessProbe"]["httpGet"]["path"];
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let health: Value = eventually(Duration::from_secs(60), "api-server health", || {
        let (status, body) = http_get(addr, probe.as_str()?);
        (status == 200).then(|| serde_json::from_str(&body).ok())?
    });
    assert_eq!(
        health["metadatabase"]["status"],
        "healthy",
        "{health}\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
}

/// The template's database bootstrap (manifests/platform-db/), its Job's
/// command and script as declared, on a PostgreSQL that checks passwords,
/// run as a master user that is no superuser (as RDS's is not): each
/// application gets its own user and database, nobody else may connect to
/// it, a second run changes a password Secrets Manager changed and nothing
/// else.
#[test]
fn the_database_bootstrap_gives_each_application_its_own_user_and_database() {
    let pg = Postgres::start_with_passwords("superuser-pass");
    // What RDS makes: the master user (CREATEROLE, CREATEDB, no
    // superuser) and its database `platform`.
    pg.sql(
        "postgres",
        "CREATE ROLE platform_admin LOGIN CREATEROLE CREATEDB PASSWORD 'master-pass'",
    );
    pg.sql("postgres", "CREATE DATABASE platform OWNER platform_admin");

    let docs = template_manifests("platform-db/database-users.yaml");
    let job = named(&docs, "Job", "database-users");
    let script = named(&docs, "ConfigMap", "database-users");
    let pod = &job["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    // The ConfigMap where the Job mounts it.
    let mount = container["volumeMounts"][0]["mountPath"].as_str().unwrap();
    assert_eq!(
        pod["volumes"][0]["configMap"]["name"],
        script["metadata"]["name"]
    );
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("sql");
    std::fs::create_dir_all(&dir).unwrap();
    for (name, text) in script["data"].as_object().unwrap() {
        std::fs::write(dir.join(name), text.as_str().unwrap()).unwrap();
    }
    let command: Vec<String> = container["command"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().replace(mount, &dir.to_string_lossy()))
        .collect();
    assert_eq!(command[0], "psql");

    let bootstrap = |airflow_pw: &str, mlflow_pw: &str| {
        let secrets = BTreeMap::from([
            ("app-users/host", "127.0.0.1".to_string()),
            ("app-users/airflow", airflow_pw.to_string()),
            ("app-users/mlflow", mlflow_pw.to_string()),
            ("master/username", "platform_admin".to_string()),
            ("master/password", "master-pass".to_string()),
        ]);
        let mut env = declared_env(container, &secrets);
        assert_eq!(env["PGSSLMODE"], "require", "RDS forces TLS");
        // This server listens on a port of the test's and has no
        // certificate: the only two values that differ from the cluster.
        env.insert("PGPORT".into(), pg.port.to_string());
        env.insert("PGSSLMODE".into(), "disable".into());
        let out = pg
            .psql()
            .args(&command[1..])
            .env_clear()
            .envs(&env)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "the bootstrap failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            !said.contains(airflow_pw) && !said.contains(mlflow_pw),
            "the bootstrap printed a password: {said}"
        );
    };
    let connects = |user: &str, password: &str, db: &str| {
        pg.psql()
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &pg.port.to_string(),
                "-U",
                user,
                "-d",
                db,
            ])
            .args([
                "-At",
                "-c",
                "CREATE TABLE IF NOT EXISTS t (x int); SELECT current_user",
            ])
            .env("PGPASSWORD", password)
            .output()
            .unwrap()
            .status
            .success()
    };

    bootstrap("airflow-pass-1", "mlflow-pass-1");
    // Each owns its database and may create its tables there (Airflow's
    // and MLflow's migrations do), and nobody else's.
    assert!(connects("airflow", "airflow-pass-1", "airflow"));
    assert!(connects("mlflow", "mlflow-pass-1", "mlflow"));
    assert!(!connects("airflow", "airflow-pass-1", "mlflow"));
    assert!(!connects("mlflow", "mlflow-pass-1", "airflow"));
    assert!(!connects("airflow", "wrong", "airflow"));
    assert_eq!(
        pg.sql(
            "postgres",
            "SELECT datdba::regrole FROM pg_database WHERE datname = 'mlflow'"
        ),
        "mlflow"
    );

    // Again, MLflow's password changed in Secrets Manager: it takes the
    // new one, the databases and their tables stay.
    bootstrap("airflow-pass-1", "mlflow-pass-2");
    assert!(connects("mlflow", "mlflow-pass-2", "mlflow"));
    assert!(!connects("mlflow", "mlflow-pass-1", "mlflow"));
    assert!(connects("airflow", "airflow-pass-1", "airflow"));
    assert_eq!(
        pg.sql(
            "airflow",
            "SELECT count(*) FROM pg_tables WHERE tablename = 't'"
        ),
        "1"
    );
}
