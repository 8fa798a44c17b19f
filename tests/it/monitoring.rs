//! ferry's alerts and dashboard with Prometheus' own tools (Debian's
//! `prometheus` package, from `.ci/setup`): the alert rules of
//! `deploy/monitoring/prometheusrule.yaml` pass `promtool check rules` and
//! their unit tests (`deploy/monitoring/tests/`), every dashboard query
//! parses, and a real Prometheus server scraping a live `ferry run` with the
//! platform template's scrape job evaluates the rules on ferry's own
//! metrics: a source that cannot be fetched makes `FerrySyncFailing`
//! pending, to fire once its `for` has passed.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};

use crate::support::*;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn prometheus_tool(name: &str) -> PathBuf {
    let path = Path::new("/usr/bin").join(name);
    assert!(
        path.exists(),
        "{} is missing: run `.ci/setup` (installs Debian's prometheus)",
        path.display()
    );
    path
}

/// The PrometheusRule's groups as a Prometheus rule file, in `dir`.
fn ferry_rules(dir: &Path) -> (PathBuf, Value) {
    let rule: Value = serde_yaml_ng::from_str(
        &std::fs::read_to_string(root().join("deploy/monitoring/prometheusrule.yaml")).unwrap(),
    )
    .unwrap();
    let groups = json!({"groups": rule["spec"]["groups"]});
    let path = dir.join("ferry.rules.yaml");
    std::fs::write(&path, serde_yaml_ng::to_string(&groups).unwrap()).unwrap();
    (path, groups)
}

fn promtool(args: &[&str], dir: &Path) -> (bool, String) {
    crate::support::ml::output(
        Command::new(prometheus_tool("promtool"))
            .args(args)
            .current_dir(dir),
    )
}

#[test]
fn ferrys_alerts_pass_promtool_and_their_unit_tests_and_the_dashboard_parses() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (_, groups) = ferry_rules(dir);
    let (ok, text) = promtool(&["check", "rules", "ferry.rules.yaml"], dir);
    assert!(ok && text.contains("SUCCESS: 7 rules found"), "{text}");
    std::fs::copy(
        root().join("deploy/monitoring/tests/ferry.rules.test.yaml"),
        dir.join("ferry.rules.test.yaml"),
    )
    .unwrap();
    let (ok, text) = promtool(&["test", "rules", "ferry.rules.test.yaml"], dir);
    assert!(ok && text.contains("SUCCESS"), "{text}");
    // Every alert has a unit test.
    let tests = std::fs::read_to_string(dir.join("ferry.rules.test.yaml")).unwrap();
    for rule in groups["groups"][0]["rules"].as_array().unwrap() {
        let name = rule["alert"].as_str().unwrap();
        assert!(
            tests.contains(&format!("alertname: {name}")),
            "no unit test of {name}"
        );
    }
    // The unit tests do catch a changed rule: FerrySyncFailing after 5m.
    let text = std::fs::read_to_string(dir.join("ferry.rules.yaml")).unwrap();
    let sooner = text.replacen("for: 10m", "for: 5m", 1);
    assert_ne!(sooner, text);
    std::fs::write(dir.join("ferry.rules.yaml"), sooner).unwrap();
    let (ok, text) = promtool(&["test", "rules", "ferry.rules.test.yaml"], dir);
    assert!(!ok && text.contains("FerrySyncFailing"), "{text}");

    // Every dashboard query is PromQL Prometheus parses (as recording rules).
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(root().join("deploy/base/dashboards/ferry.json")).unwrap(),
    )
    .unwrap();
    let exprs: Vec<&str> = dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().unwrap())
        .map(|t| t["expr"].as_str().unwrap())
        .collect();
    assert!(exprs.len() >= 10, "{exprs:?}");
    let records: Vec<Value> = exprs
        .iter()
        .enumerate()
        .map(|(i, e)| json!({"record": format!("dashboard:panel_{i}"), "expr": e}))
        .collect();
    let file = json!({"groups": [{"name": "dashboard", "rules": records}]});
    std::fs::write(
        dir.join("dashboard.rules.yaml"),
        serde_yaml_ng::to_string(&file).unwrap(),
    )
    .unwrap();
    let (ok, text) = promtool(&["check", "rules", "dashboard.rules.yaml"], dir);
    assert!(ok, "{text}");
    // And a broken query would not pass.
    std::fs::write(
        dir.join("broken.rules.yaml"),
        "groups:\n  - name: b\n    rules:\n      - record: b\n        expr: sum by (source (ferry_leader)\n",
    )
    .unwrap();
    assert!(!promtool(&["check", "rules", "broken.rules.yaml"], dir).0);
}

#[test]
fn prometheus_scraping_ferry_as_the_template_configures_it_evaluates_ferrys_alerts() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    // A source ferry cannot fetch: nothing listens there.
    let port = free_port();
    let config = dir.join("ferry.yaml");
    std::fs::write(
        &config,
        format!(
            "cache_dir: {cache}\nserver:\n  listen: 127.0.0.1:{port}\n\
             sources:\n  - name: unreachable\n    url: git://127.0.0.1:{gone}/gone.git\n    interval: 1s\n    max_backoff: 1s\n\
             targets:\n  dags:\n    source: unreachable\n    destination: {dest}\n",
            cache = dir.join("cache").display(),
            gone = free_port(),
            dest = dir.join("dags").display(),
        ),
    )
    .unwrap();
    let ferry = spawn_ferry(&config, &dir.join("ferry.log"), port, &[]);

    // The template's Prometheus configuration, its ferry job pointed at
    // this ferry (the Service name is the cluster's), evaluating ferry's
    // rules; intervals of 1 s instead of 30 s so the test need not wait.
    let text = std::fs::read_to_string(
        root().join("platform-repo-template/manifests/monitoring/prometheus.yaml"),
    )
    .unwrap();
    let template: Value = serde_yaml_ng::from_str(text.split("\n---\n").next().unwrap()).unwrap();
    let mut prometheus: Value =
        serde_yaml_ng::from_str(template["data"]["prometheus.yml"].as_str().unwrap()).unwrap();
    let jobs = prometheus["scrape_configs"].as_array_mut().unwrap();
    let job = jobs
        .iter_mut()
        .find(|j| j["job_name"] == "ferry")
        .expect("the template scrapes ferry");
    assert_eq!(
        job["static_configs"][0]["targets"][0],
        "ferry.ferry.svc:8080"
    );
    job["static_configs"][0]["targets"][0] = json!(format!("127.0.0.1:{port}"));
    jobs.retain(|j| j["job_name"] == "ferry");
    prometheus["global"]["scrape_interval"] = json!("1s");
    prometheus["global"]["evaluation_interval"] = json!("1s");
    let (rules, _) = ferry_rules(dir);
    prometheus["rule_files"] = json!([rules]);
    std::fs::write(
        dir.join("prometheus.yml"),
        serde_yaml_ng::to_string(&prometheus).unwrap(),
    )
    .unwrap();
    let web = free_port();
    let log = dir.join("prometheus.log");
    let _server = spawn_owned(
        Command::new(prometheus_tool("prometheus"))
            .arg(format!(
                "--config.file={}",
                dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("tsdb").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{web}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap()),
    )
    .unwrap();
    wait_for_port(web, Duration::from_secs(30));
    let api: std::net::SocketAddr = format!("127.0.0.1:{web}").parse().unwrap();
    let ask = |path: &str| -> Value {
        let (code, body) = http_get(api, path);
        if code != 200 {
            return Value::Null;
        }
        serde_json::from_str(&body).unwrap_or(Value::Null)
    };
    // ferry scraped, up.
    eventually(Duration::from_secs(60), "Prometheus scraping ferry", || {
        let v = ask("/api/v1/targets");
        v["data"]["activeTargets"]
            .as_array()?
            .iter()
            .any(|t| t["labels"]["job"] == "ferry" && t["health"] == "up")
            .then_some(())
    });
    // More than 3 failures in a row: FerrySyncFailing pending for this
    // source, with its `for` of 10 minutes ahead (the unit tests show it
    // fires after that, and not before).
    let alert = eventually(Duration::from_secs(60), "FerrySyncFailing pending", || {
        let v = ask("/api/v1/alerts");
        v["data"]["alerts"]
            .as_array()?
            .iter()
            .find(|a| {
                a["labels"]["alertname"] == "FerrySyncFailing"
                    && a["labels"]["source"] == "unreachable"
            })
            .cloned()
    });
    assert_eq!(alert["state"], "pending", "{alert}");
    assert!(
        alert["annotations"]["summary"]
            .as_str()
            .unwrap()
            .contains("cannot sync source unreachable"),
        "{alert}"
    );
    let rules = ask("/api/v1/rules");
    let rule = rules["data"]["groups"][0]["rules"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "FerrySyncFailing")
        .unwrap()
        .clone();
    assert_eq!(rule["duration"], 600, "{rule}");
    assert_eq!(rule["health"], "ok", "{rule}");
    // The leader alert stays quiet: this ferry (no leader election) says
    // it leads.
    let v = ask("/api/v1/query?query=ferry_leader");
    assert_eq!(v["data"]["result"][0]["value"][1], "1", "{v}");
    assert!(
        !ask("/api/v1/alerts")
            .to_string()
            .contains("FerryNotSyncing"),
        "{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    stop_ferry(ferry);
}
