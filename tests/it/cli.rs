//! The `ferry` binary as users meet it: config errors, help, quickstart,
//! one-shot publishing, the HTTP endpoints and shutdown.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::support::*;

fn ferry(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

const BASE: &str = "sources:
  - name: dags
    url: https://example.com/dags.git
    branch: main
targets:
  dags:
    source: dags
    destination: /tmp/ferry-dags
";

#[test]
fn each_bad_config_gives_one_clear_error_naming_the_key() {
    let tmp = tempfile::tempdir().unwrap();
    let cases: &[(&str, &str, &str)] = &[
        // (find, replace with, key the error must name)
        ("sources:", "sourcs:", "sourcs"),
        (
            "    branch: main\n",
            "    brnach: main\n",
            "sources[0].brnach",
        ),
        (
            "    branch: main\n",
            "    branch: main\n    interval: often\n",
            "sources[0].interval",
        ),
        (
            "    branch: main\n",
            "    branch: main\n    timeout: [1]\n",
            "sources[0].timeout",
        ),
        (
            "    url: https://example.com/dags.git\n",
            "",
            "sources[0].url",
        ),
        (
            "sources:",
            "server:\n  listen: not-an-address\nsources:",
            "server.listen",
        ),
        ("sources:", "log:\n  format: xml\nsources:", "log.format"),
        (
            "    source: dags\n",
            "    source: platform\n",
            "targets.dags.source",
        ),
        (
            "    destination: /tmp/ferry-dags\n",
            "    destination: /tmp/ferry-dags\n    link: ../up\n",
            "targets.dags.link",
        ),
        (
            "    destination: /tmp/ferry-dags\n",
            "    destination: /tmp/ferry-dags\n    retention:\n      keep: -1\n",
            "targets.dags.retention.keep",
        ),
        (
            "    destination: /tmp/ferry-dags\n",
            "    destination: /tmp/ferry-dags\n    validation:\n      policy: maybe\n",
            "targets.dags.validation.policy",
        ),
        (
            "    destination: /tmp/ferry-dags\n",
            "    destination: /tmp/ferry-dags\n    subdir: ../../etc\n",
            "targets.dags.subdir",
        ),
        (
            "https://example.com/dags.git",
            "ssh://git@example.com/dags.git",
            "sources[0].auth.ssh_key_file",
        ),
        (
            "https://example.com/dags.git",
            "https://bot:hunter2@example.com/dags.git",
            "sources[0].url",
        ),
        (
            "    branch: main\n",
            "    branch: main\n    auth:\n      token: abc\n",
            "sources[0].auth.token",
        ),
        (
            "    branch: main\n",
            "    branch: main\n    auth:\n      token_file: /a\n      token_env: B\n",
            "sources[0].auth",
        ),
        ("  - name: dags\n", "  - name: Dags_1\n", "sources[0].name"),
        (
            "    destination: /tmp/ferry-dags\n",
            "    destination: /tmp/ferry-dags\n  kubernetes:\n    source: platform\n",
            "targets.kubernetes.source",
        ),
        (
            "    destination: /tmp/ferry-dags\n",
            "    destination: /tmp/ferry-dags\n  kubernetes:\n    source: dags\n    default_namespace: web\n    allowed_namespaces: [airflow]\n",
            "targets.kubernetes.default_namespace",
        ),
        (
            "    destination: /tmp/ferry-dags\n",
            "    destination: /tmp/ferry-dags\n  kubernetes:\n    source: dags\n    drift_interval: sometimes\n",
            "targets.kubernetes.drift_interval",
        ),
        (
            "    destination: /tmp/ferry-dags\n",
            "    destination: /tmp/ferry-dags\n    retention:\n      keep: 0\n",
            "targets.dags.retention.keep",
        ),
        // Reporting on, no external URL, listening on every address: the
        // links GitHub would show lead nowhere.
        (
            "targets:\n",
            "server:\n  listen: 0.0.0.0:8080\ngithub:\n  token_env: GITHUB_TOKEN\ntargets:\n",
            "github.external_url",
        ),
        // What `ferry run` reads at start must be there.
        (
            "targets:\n",
            "github:\n  webhook_secret_file: /nonexistent/webhook-secret\ntargets:\n",
            "github.webhook_secret_file",
        ),
    ];
    for (find, replace, key) in cases {
        assert!(BASE.contains(find), "bad test case: {find:?}");
        let path = tmp.path().join("ferry.yaml");
        std::fs::write(&path, BASE.replacen(find, replace, 1)).unwrap();
        let out = ferry(&["check-config", path.to_str().unwrap()]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "case {key}: {stderr}");
        let lines: Vec<&str> = stderr.lines().collect();
        assert_eq!(
            lines.len(),
            1,
            "case {key}: one error line expected, got: {stderr}"
        );
        assert!(lines[0].starts_with("error: "), "{stderr}");
        assert!(
            lines[0].contains(&format!(": {key}: ")),
            "case {key}: the error must name the key: {stderr}"
        );
        assert!(
            lines[0].contains("ferry.yaml"),
            "case {key}: the error must name the file: {stderr}"
        );
        assert!(
            !stderr.contains("hunter2"),
            "a password in the config must not be echoed"
        );
        assert!(!stderr.contains("panicked"));
    }
    let path = tmp.path().join("ok.yaml");
    std::fs::write(&path, BASE).unwrap();
    let out = ferry(&["check-config", path.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("ok (1 source(s): dags; targets: dags"));

    let out = ferry(&[
        "check-config",
        tmp.path().join("missing.yaml").to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing.yaml: cannot read config"));
}

/// The README's configuration reference is a config ferry accepts, with
/// the Kubernetes target block added to it: docs cannot drift from code.
#[test]
fn the_readme_configuration_reference_is_valid() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let section = readme.split("## Configuration reference").nth(1).unwrap();
    let blocks: Vec<&str> = section
        .split("```yaml\n")
        .skip(1)
        .map(|b| b.split("```").next().unwrap())
        .collect();
    let (full, kube) = (blocks[0], blocks[1]);
    let kube = kube.strip_prefix("targets:\n").unwrap();
    let config = full.replace("targets:\n", &format!("targets:\n{kube}"));
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("readme.yaml");
    std::fs::write(&path, config).unwrap();
    // The README's paths exist only where ferry runs.
    let out = ferry(&["check-config", "--skip-files", path.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let full = ferry(&["check-config", path.to_str().unwrap()]);
    assert!(
        !full.status.success(),
        "ferry run would refuse it: its secret files are missing"
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("kubernetes (from source `platform`), aws (from source `platform`, platform.yaml); github: webhooks, reporting to https://api.github.com, deployments to `production`, PR previews)"), "{}", String::from_utf8_lossy(&out.stdout));
}

/// `ferry validate` accepts the platform template and names file and line
/// of what is wrong in a broken copy.
#[test]
fn validate_checks_a_platform_checkout_offline() {
    let template = concat!(env!("CARGO_MANIFEST_DIR"), "/platform-repo-template");
    let out = ferry(&["validate", template]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("platform.yaml: 2 nodegroup(s), 2 addon(s), 1 endpoint(s)"),
        "{stdout}"
    );
    let tmp = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(tmp.path().join("manifests")).unwrap();
    std::fs::write(tmp.path().join("manifests/cm.yaml"), "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: a\n---\nkind: ConfigMap\nmetadata: {name: b}\n").unwrap();
    std::fs::write(
        tmp.path().join("platform.yaml"),
        "apiVersion: ferry.dev/v1alpha1\nkind: Platform\neks:\n  cluster: {name: c}\n  nodegroups:\n    - name: a\n      scaling: {min: 1, max: 2, desired: 3}\n",
    )
    .unwrap();
    let out = ferry(&["validate", tmp.path().to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("manifests/cm.yaml:6 (document 1): missing or empty `apiVersion`"),
        "{stderr}"
    );
    assert!(stderr.contains("platform.yaml:7: eks.nodegroups[0].scaling.desired: desired 3 is outside min 1 .. max 2"), "{stderr}");
    assert!(stderr.contains("2 problem(s)"), "{stderr}");
}

/// A key given twice is refused with both lines, in manifests,
/// platform.yaml (block and flow mappings) and ferry.yaml; a file that is
/// not UTF-8 is refused naming the line of its first bad byte.
#[test]
fn duplicate_keys_and_bad_bytes_are_refused_with_their_lines() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(tmp.path().join("manifests")).unwrap();
    std::fs::write(
        tmp.path().join("manifests/cm.yaml"),
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: a\ndata:\n  mode: calm\n  mode: busy\n",
    )
    .unwrap();
    std::fs::write(
        tmp.path().join("manifests/latin1.yaml"),
        b"apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: caf\xe9\n".as_slice(),
    )
    .unwrap();
    std::fs::write(
        tmp.path().join("platform.yaml"),
        "apiVersion: ferry.dev/v1alpha1\nkind: Platform\nsagemaker:\n  endpoints: []\nsagemaker:\n  endpoints: []\n",
    )
    .unwrap();
    let out = ferry(&["validate", tmp.path().to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("manifests/cm.yaml:7 (document 0): key `mode` given twice in one mapping (first at line 6)"),
        "{stderr}"
    );
    assert!(
        stderr.contains("platform.yaml:5: sagemaker: given twice in one mapping (first at line 3)"),
        "{stderr}"
    );
    assert!(
        stderr.contains("manifests/latin1.yaml:4: not valid UTF-8"),
        "{stderr}"
    );
    assert!(stderr.contains("3 problem(s)"), "{stderr}");

    // Flow mappings, in ferry.yaml: the parser's own refusal, with its line.
    let config = tmp.path().join("ferry.yaml");
    std::fs::write(
        &config,
        "sources:\n  - name: dags\n    url: https://github.com/acme/dags.git\n    auth: {username: a, username: b}\n",
    )
    .unwrap();
    let out = ferry(&["check-config", "--skip-files", config.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("duplicate entry with key"), "{stderr}");
    assert!(stderr.contains(":4"), "the line is named: {stderr}");
}

#[test]
fn every_subcommand_help_teaches_with_an_example() {
    for sub in [
        "run",
        "quickstart",
        "check-config",
        "plan",
        "publish-dags",
        "validate",
    ] {
        let out = ferry(&[sub, "--help"]);
        assert!(out.status.success());
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains("Example"),
            "`ferry {sub} --help` has no example:\n{text}"
        );
        assert!(
            text.contains(&format!("ferry {sub}")),
            "`ferry {sub} --help` example does not use it:\n{text}"
        );
    }
}

/// With a cluster, quickstart applies the platform template too.
#[test]
fn quickstart_applies_the_platform_template_to_a_reachable_cluster() {
    let cp = control_plane();
    // As ferry's own identity: deploy/base's ClusterRole, nothing more.
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let admin = ferry::kubernetes::client::connect(Some(&cp.admin))
            .await
            .unwrap();
        grant_ferrys_cluster_role(&admin).await;
    });
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("qs");
    let listen = format!("127.0.0.1:{}", free_port());
    let out = ferry(&[
        "quickstart",
        "--once",
        "--dir",
        dir.to_str().unwrap(),
        "--listen",
        &listen,
        "--kubeconfig",
        cp.restricted.to_str().unwrap(),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("applied            platform @"), "{stdout}");
    // The document /api/v1/status serves, not another shape.
    let start = stdout
        .find("status (as served on /api/v1/status):")
        .unwrap();
    let json = &stdout[start..];
    let v: serde_json::Value = serde_json::from_str(&json[json.find('{').unwrap()..]).unwrap();
    assert_eq!(v["version"], env!("CARGO_PKG_VERSION"));
    let platform = v["sources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "platform")
        .unwrap();
    let objects = platform["kubernetes"]["last_apply"]["objects"]
        .as_array()
        .unwrap();
    assert_eq!(objects.len(), 55, "{platform}");
    assert!(objects.iter().all(|o| o["error"].is_null()), "{platform}");
    // The Secrets hold the values quickstart wrote for them, readable by
    // their owner only.
    use std::os::unix::fs::PermissionsExt;
    let file = dir.join("secrets/ml-platform/airflow/airflow-db");
    assert_eq!(
        std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let written: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    let live = tokio::runtime::Runtime::new().unwrap().block_on(async {
        let admin = ferry::kubernetes::client::connect(Some(&cp.admin))
            .await
            .unwrap();
        kube::Api::<k8s_openapi::api::core::v1::Secret>::namespaced(admin, "airflow")
            .get("airflow-db")
            .await
            .unwrap()
    });
    let data = live.data.unwrap();
    assert_eq!(data.len(), 1);
    assert_eq!(
        String::from_utf8(data["sql_alchemy_conn"].0.clone()).unwrap(),
        written["sql_alchemy_conn"].as_str().unwrap()
    );
}

#[test]
fn quickstart_once_publishes_the_template_and_is_rerunnable() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("qs");
    let listen = format!("127.0.0.1:{}", free_port());
    let out = ferry(&[
        "quickstart",
        "--once",
        "--dir",
        dir.to_str().unwrap(),
        "--listen",
        &listen,
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("published          dags @"), "{stdout}");
    // The platform template: listed offline (not called a plan: nothing
    // was compared with a cluster or AWS), and not a source at all without
    // a cluster, so nothing claims to have succeeded for it.
    assert!(
        stdout.contains("The platform repo declares 58 object(s) and AWS resource(s) (a listing: no cluster given"),
        "{stdout}"
    );
    assert!(
        stdout.contains("object  Deployment.apps airflow/airflow-scheduler"),
        "{stdout}"
    );
    assert!(
        stdout.contains("aws     SageMaker endpoint diagnosis (1 variant(s))"),
        "{stdout}"
    );
    assert!(!stdout.contains("up to date         platform"), "{stdout}");
    let start = stdout
        .find("status (as served on /api/v1/status):")
        .unwrap();
    let json = &stdout[start..];
    let v: serde_json::Value = serde_json::from_str(&json[json.find('{').unwrap()..]).unwrap();
    let sources: Vec<&str> = v["sources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(sources, ["dags"]);
    let folder = dir.canonicalize().unwrap().join("airflow/dags/current");
    assert!(
        stdout.contains(&folder.display().to_string()),
        "prints the dags_folder: {stdout}"
    );
    let published = read_tree(&folder);
    let names: Vec<&str> = published.iter().map(|(p, _)| p.as_str()).collect();
    assert_eq!(
        names,
        vec![
            ".airflowignore",
            "diagnosis_champion.py",
            "diagnosis_scoring.py",
            "diagnosis_training.py",
            "mlplatform/__init__.py",
            "mlplatform/data.py",
            "mlplatform/packaging.py",
            "mlplatform/promotion.py",
            "mlplatform/registry.py",
            "mlplatform/training.py",
        ]
    );
    let template = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("dags-repo-template/dags/diagnosis_training.py"),
    )
    .unwrap();
    assert_eq!(published[3].1, template);
    let out = ferry(&["check-config", dir.join("ferry.yaml").to_str().unwrap()]);
    assert!(out.status.success(), "quickstart writes a valid config");

    let again = ferry(&[
        "quickstart",
        "--once",
        "--dir",
        dir.to_str().unwrap(),
        "--listen",
        &listen,
    ]);
    let stdout = String::from_utf8_lossy(&again.stdout);
    assert!(again.status.success());
    assert!(
        stdout.contains("reusing git repo") && stdout.contains("up to date"),
        "{stdout}"
    );

    // A broken manifest on the platform repo's head is reported; the DAGs
    // loop still starts.
    let platform = git2::Repository::open_bare(dir.join("repos/platform.git")).unwrap();
    let head = platform.refname_to_id("refs/heads/main").unwrap();
    // The head's files, plus one that does not parse.
    let mut files = std::collections::BTreeMap::new();
    let tree = platform.find_commit(head).unwrap().tree().unwrap();
    tree.walk(git2::TreeWalkMode::PreOrder, |dir, entry| {
        if entry.kind() == Some(git2::ObjectType::Blob) {
            let blob = platform.find_blob(entry.id()).unwrap();
            let path = format!("{dir}{}", entry.name().unwrap());
            files.insert(path, (blob.content().to_vec(), 0o100644));
        }
        git2::TreeWalkResult::Ok
    })
    .unwrap();
    files.insert(
        "manifests/broken.yaml".to_string(),
        (b"kind: [unclosed\n".to_vec(), 0o100644),
    );
    build_commit(&platform, &files, Some(head), "refs/heads/main", "broken");
    let broken = ferry(&[
        "quickstart",
        "--once",
        "--dir",
        dir.to_str().unwrap(),
        "--listen",
        &listen,
    ]);
    let stdout = String::from_utf8_lossy(&broken.stdout);
    assert!(broken.status.success(), "{stdout}");
    assert!(
        stdout.contains("The platform repo's head has problems")
            && stdout.contains("manifests/broken.yaml"),
        "{stdout}"
    );
}

#[test]
fn publish_dags_one_shot_refuses_broken_dags_and_unsigned_heads() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = Repo::new(tmp.path(), "dags");
    let good = repo.commit(&[("dags/a.py", Some("a = 1\n"))], "good");
    let dest = tmp.path().join("dest");
    let cache = tmp.path().join("cache");
    let publish = |extra: &[&str]| {
        let mut args = vec![
            "publish-dags",
            "--repo",
            repo.bare.to_str().unwrap(),
            "--ref",
            "main",
            "--subdir",
            "dags",
            "--dest",
            dest.to_str().unwrap(),
            "--cache-dir",
            cache.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        ferry(&args)
    };
    let out = publish(&[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains(&format!("published {good}")));

    repo.commit(&[("dags/b.py", Some("x = 1\ny = = 2\n"))], "broken");
    let out = publish(&[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr.contains("dags/b.py:2:"), "{stderr}");
    assert_eq!(
        std::fs::read_link(dest.join("current")).unwrap(),
        Path::new(".ferry").join(&good)
    );

    // With --allowed-signers an unsigned head is refused before publishing.
    let allowed = allowed_signers_of_a_stranger(tmp.path());
    let unsigned = repo.commit(&[("dags/b.py", Some("b = 2\n"))], "fixed, unsigned");
    let out = publish(&["--allowed-signers", allowed.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("commit {unsigned} is not signed")),
        "{stderr}"
    );
    assert_eq!(
        std::fs::read_link(dest.join("current")).unwrap(),
        Path::new(".ferry").join(&good)
    );

    let out = ferry(&[
        "publish-dags",
        "--repo",
        "ssh://git@example.com/r.git",
        "--dest",
        dest.to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr.contains("--ssh-key-file"),
        "flags are checked like the config: {stderr}"
    );
}

/// One-shot runs (each a new process, as init containers are) share parse
/// verdicts through the cache directory: a run parses only the files no
/// earlier run saw, a cached syntax error still blocks, and a deleted
/// cache costs one full parse.
#[test]
fn publish_dags_one_shot_parses_only_what_no_earlier_run_saw() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = Repo::new(tmp.path(), "dags");
    let files: Vec<(String, String)> = (0..20)
        .map(|i| (format!("dags/team/dag_{i:02}.py"), format!("N = {i}\n")))
        .collect();
    let refs: Vec<(&str, Option<&str>)> = files
        .iter()
        .map(|(p, c)| (p.as_str(), Some(c.as_str())))
        .collect();
    repo.commit(&refs, "twenty DAGs");
    let dest = tmp.path().join("dest");
    let cache = tmp.path().join("cache");
    let publish = || {
        let out = ferry(&[
            "publish-dags",
            "--repo",
            repo.bare.to_str().unwrap(),
            "--subdir",
            "dags",
            "--dest",
            dest.to_str().unwrap(),
            "--cache-dir",
            cache.to_str().unwrap(),
        ]);
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        (out.status.code(), stderr)
    };
    let parsed = |stderr: &str, want: &str| {
        assert!(
            stderr.contains(&format!("{want} Python files parsed")),
            "wanted {want}: {stderr}"
        );
    };
    let (code, stderr) = publish();
    assert_eq!(code, Some(0), "{stderr}");
    parsed(&stderr, "20 of 20");

    repo.commit(&[("dags/team/dag_03.py", Some("N = 33\n"))], "one change");
    let (code, stderr) = publish();
    assert_eq!(code, Some(0), "{stderr}");
    parsed(&stderr, "1 of 20");

    repo.commit(
        &[("dags/team/broken.py", Some("x = 1\ny = = 2\n"))],
        "broken",
    );
    for want in ["1 of 21", "0 of 21"] {
        let (code, stderr) = publish();
        assert_eq!(code, Some(1), "{stderr}");
        parsed(&stderr, want);
        assert!(stderr.contains("dags/team/broken.py:2:"), "{stderr}");
    }

    // Only a cache: deleting it costs a full parse, nothing else.
    let kept = verdict_files(&cache);
    assert_eq!(kept.len(), 1, "{kept:?}");
    std::fs::remove_file(&kept[0]).unwrap();
    let (code, stderr) = publish();
    assert_eq!(code, Some(1), "{stderr}");
    parsed(&stderr, "21 of 21");
    assert!(stderr.contains("dags/team/broken.py:2:"), "{stderr}");
}

/// Endpoints, readiness before and after the first sync, metric names, and a
/// SIGTERM during a long validation that leaves the last revision live.
#[test]
fn server_endpoints_readiness_metrics_and_sigterm() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = Repo::new(tmp.path(), "dags");
    let first = repo.commit(&[("dags/a.py", Some("a = 1\n"))], "first");
    let daemon = git_daemon(tmp.path(), free_port());
    let port = free_port();
    let dest = tmp.path().join("dest");
    let marker = tmp.path().join("hook-started");
    let targets = format!(
        "  dags:\n    source: dags\n    subdir: dags\n    destination: {dest}\n    \
         validation:\n      command: [sh, -c, \"touch {marker}; sleep 2; grep -q SLOW a.py && sleep 60; exit 0\"]\n",
        dest = dest.display(),
        marker = marker.display(),
    );
    let config = daemon_config(tmp.path(), port, "dags", daemon.port, &targets);
    let mut child = spawn_ferry(&config, &tmp.path().join("ferry.log"), port, &[]);
    let addr = format!("127.0.0.1:{port}").parse().unwrap();
    assert_eq!(http_get(addr, "/healthz").0, 200);
    let (code, body) = http_get(addr, "/readyz");
    assert_eq!(code, 503, "not ready during the first sync: {body}");
    assert!(body.contains("dags"));

    eventually(Duration::from_secs(20), "readiness", || {
        (http_get(addr, "/readyz").0 == 200).then_some(())
    });
    let (_, status) = http_get(addr, "/api/v1/status");
    let v: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(v["ready"], true);
    assert_eq!(v["sources"][0]["published_revision"], first.as_str());
    assert_eq!(http_get(addr, "/api/v1/status/nope").0, 404);

    let (code, metrics) = http_get(addr, "/metrics");
    assert_eq!(code, 200);
    for needle in [
        "ferry_sync_duration_seconds_bucket{",
        "ferry_fetch_duration_seconds_count{source=\"dags\"}",
        "ferry_last_success_timestamp_seconds{source=\"dags\"}",
    ] {
        assert!(metrics.contains(needle), "missing {needle} in:\n{metrics}");
    }
    for (line, value) in [
        (
            "ferry_syncs_total{source=\"dags\",result=\"success\"}".to_string(),
            1.0,
        ),
        (
            format!("ferry_revision_info{{source=\"dags\",revision=\"{first}\"}}"),
            1.0,
        ),
        (
            "ferry_dags_files_published_total{source=\"dags\",how=\"written\"}".to_string(),
            1.0,
        ),
    ] {
        assert_series(&metrics, &line, value);
    }

    // A commit whose validation hangs; SIGTERM while it runs.
    std::fs::remove_file(&marker).unwrap();
    repo.commit(&[("dags/a.py", Some("a = 2  # SLOW\n"))], "slow");
    eventually(Duration::from_secs(20), "the slow hook to start", || {
        marker.exists().then_some(())
    });
    std::thread::sleep(Duration::from_millis(2500));
    let asked = Instant::now();
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let exit = child.wait().unwrap();
    assert!(exit.success(), "{exit:?}");
    assert!(
        asked.elapsed() < Duration::from_secs(10),
        "shutdown took {:?}",
        asked.elapsed()
    );
    assert_eq!(
        std::fs::read_link(dest.join("current")).unwrap(),
        Path::new(".ferry").join(&first)
    );
    let leftovers = staging_leftovers(&dest).len();
    assert_eq!(
        leftovers, 0,
        "a cancelled validation removes its staging dir"
    );
}

/// What a newcomer types first: `--version` names the commit (so does a
/// running agent, in its status API and `ferry_build_info`); a bad
/// `--log-level` is an error, not a silent `info`; `--log-level` wins over
/// `RUST_LOG`; an OS error is printed once; a usage error exits 1 (2 is
/// reserved for `plan --detailed-exitcode`).
#[test]
fn versions_log_levels_and_errors_read_right() {
    let out = ferry(&["--version"]);
    assert!(out.status.success());
    let version = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let commit = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    if let Some(commit) = &commit {
        assert_eq!(
            version,
            format!("ferry {} (commit {commit})", env!("CARGO_PKG_VERSION"))
        );
    }

    let out = ferry(&["--log-level", "ferry=[", "check-config", "ferry.yaml"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("--log-level `ferry=[` is not a log filter"),
        "{err}"
    );

    let out = ferry(&["check-config", "/nonexistent/ferry.yaml"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.matches("os error 2").count(), 1, "{err}");

    let out = ferry(&["no-such-command"]);
    assert_eq!(out.status.code(), Some(1));

    // --log-level beats RUST_LOG: warn hides publish-dags' info lines.
    let tmp = tempfile::tempdir().unwrap();
    let repo = Repo::new(tmp.path(), "dags");
    repo.commit(&[("dags/a.py", Some("a = 1\n"))], "first");
    let publish = |flag: Option<&str>| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_ferry"));
        if let Some(level) = flag {
            cmd.args(["--log-level", level]);
        }
        cmd.args(["publish-dags", "--subdir", "dags", "--repo"])
            .arg(&repo.bare)
            .arg("--dest")
            .arg(tmp.path().join("dest"))
            .arg("--cache-dir")
            .arg(tmp.path().join("cache"))
            .env("RUST_LOG", "debug");
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    assert!(
        publish(None).contains("DEBUG"),
        "RUST_LOG applies without the flag"
    );
    let quiet = publish(Some("warn"));
    assert!(
        !quiet.contains("DEBUG") && !quiet.contains("INFO"),
        "{quiet}"
    );

    // A running agent says what it is.
    let port = free_port();
    let config = tmp.path().join("run.yaml");
    std::fs::write(
        &config,
        format!(
            "cache_dir: {}\nserver:\n  listen: 127.0.0.1:{port}\nsources:\n  - name: dags\n    url: {}\n    interval: 1h\n\
             targets:\n  dags:\n    source: dags\n    subdir: dags\n    destination: {}\n",
            tmp.path().join("run-cache").display(),
            repo.bare.display(),
            tmp.path().join("run-dest").display()
        ),
    )
    .unwrap();
    let agent = spawn_ferry(&config, &tmp.path().join("run.log"), port, &[]);
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let (_, body) = http_get(addr, "/api/v1/status");
    let status: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(status["version"], env!("CARGO_PKG_VERSION"));
    let live_commit = status["commit"].as_str().unwrap().to_string();
    if let Some(commit) = &commit {
        assert_eq!(&live_commit, commit);
    }
    let (_, metrics) = http_get(addr, "/metrics");
    assert_series(
        &metrics,
        &format!(
            "ferry_build_info{{version=\"{}\",commit=\"{live_commit}\"}}",
            env!("CARGO_PKG_VERSION")
        ),
        1.0,
    );
    stop_ferry(agent);
}

/// `publish-dags` publishes `dags/` unless told otherwise, as the DAGs
/// target does: the template's `tests/` never reach Airflow.
#[test]
fn publish_dags_publishes_the_dags_folder_by_default() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = Repo::new(tmp.path(), "dags");
    repo.commit(
        &[
            ("dags/a.py", Some("a = 1\n")),
            ("tests/test_a.py", Some("import unittest\n")),
        ],
        "first",
    );
    let dest = tmp.path().join("dest");
    let out = ferry(&[
        "publish-dags",
        "--repo",
        repo.bare.to_str().unwrap(),
        "--dest",
        dest.to_str().unwrap(),
        "--cache-dir",
        tmp.path().join("cache").to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let published = read_tree(&dest.join("current"));
    let files: Vec<&str> = published.iter().map(|(p, _)| p.as_str()).collect();
    assert_eq!(files, ["a.py"]);
    // The DAGs target's default is the same.
    let config = ferry::config::Config::parse(
        "sources:\n  - name: d\n    url: https://e.com/d.git\ntargets:\n  dags:\n    source: d\n    destination: /tmp/x\n",
        Path::new("ferry.yaml"),
    )
    .unwrap();
    assert_eq!(config.targets.dags.unwrap().subdir, "dags");
}

/// The running quickstart's "try a change" hint clones into its own
/// directory, not a fixed /tmp path another user or run may hold.
#[test]
fn the_quickstart_hint_points_into_its_own_directory() {
    use std::io::BufRead;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("qs");
    let listen = format!("127.0.0.1:{}", free_port());
    let mut child = spawn_owned(
        Command::new(env!("CARGO_BIN_EXE_ferry"))
            .args(["quickstart", "--dir"])
            .arg(&dir)
            .args(["--listen", &listen])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null()),
    )
    .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let mut seen = Vec::new();
    let hint = loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let line = rx
            .recv_timeout(left)
            .unwrap_or_else(|_| panic!("no hint in:\n{}", seen.join("\n")));
        if line.contains("git clone") {
            break line;
        }
        seen.push(line);
    };
    let work = dir.canonicalize().unwrap().join("dags-work");
    assert!(hint.contains(&work.display().to_string()), "{hint}");
    assert!(!hint.contains("/tmp/dags-work"), "{hint}");
    child.kill_group();
}

/// `check-config` says which helm and kustomize the Kubernetes target
/// renders with, and names a missing one with the key to set, without
/// failing: a platform repo without releases needs neither.
#[test]
fn check_config_names_the_render_tools_and_a_missing_one() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("ferry.yaml");
    std::fs::write(
        &path,
        format!(
            "sources:\n  - name: platform\n    url: https://example.com/platform.git\n\
             targets:\n  kubernetes:\n    source: platform\n    helm: {{binary: {}}}\n    kustomize: {{binary: /nonexistent/kustomize}}\n",
            helm_binary().display()
        ),
    )
    .unwrap();
    let out = ferry(&["check-config", path.to_str().unwrap()]);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stderr}");
    assert!(stdout.contains("  helm v3.22"), "{stdout}");
    assert!(
        stderr.contains("warning: kustomize not found at /nonexistent/kustomize")
            && stderr.contains("kustomization directories will be refused until targets.kubernetes.kustomize.binary names kustomize v5.8.2"),
        "{stderr}"
    );

    // A chart repository's password file is read at start, like every
    // secret file: a missing one stops `ferry run` (and check-config).
    std::fs::write(
        &path,
        "sources:\n  - name: platform\n    url: https://example.com/platform.git\n\
         targets:\n  kubernetes:\n    source: platform\n    helm:\n      repositories:\n        \
         - {url: https://charts.example.com, username: ci, password_file: /nonexistent/chart-password}\n",
    )
    .unwrap();
    let out = ferry(&["check-config", path.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("targets.kubernetes.helm.repositories[0].password_file")
            && stderr.contains("/nonexistent/chart-password"),
        "{stderr}"
    );

    // So is the Airflow user's.
    std::fs::write(
        &path,
        "sources:\n  - name: dags\n    url: https://example.com/dags.git\n\
         targets:\n  dags:\n    source: dags\n    destination: /tmp/ferry-dags\n    airflow:\n      \
         url: http://airflow:8080\n      username: ferry\n      password_file: /nonexistent/airflow-password\n",
    )
    .unwrap();
    let out = ferry(&["check-config", path.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("targets.dags.airflow.password_file")
            && stderr.contains("/nonexistent/airflow-password"),
        "{stderr}"
    );
}

/// `ferry validate` builds kustomizations and renders releases of a
/// working tree as the gate does (a chart in the repo here, so nothing is
/// fetched), names their problems, and asks for the Kubernetes version
/// rather than guessing one.
#[test]
fn validate_builds_kustomizations_and_renders_releases() {
    let tmp = tempfile::tempdir().unwrap();
    let write = |path: &str, text: &str| {
        let full = tmp.path().join(path);
        std::fs::create_dir_all(full.parent().unwrap()).unwrap();
        std::fs::write(full, text).unwrap();
    };
    write(
        "manifests/plain.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: plain\n",
    );
    write(
        "manifests/web/kustomization.yaml",
        "resources: [cm.yaml]\nnamePrefix: web-\n",
    );
    write(
        "manifests/web/cm.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: settings\n",
    );
    write(
        "charts/local/Chart.yaml",
        "apiVersion: v2\nname: local\nversion: 0.1.0\nkubeVersion: \">= 1.30.0-0\"\n",
    );
    write(
        "charts/local/templates/cm.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: local\ndata:\n  size: {{ .Values.size | quote }}\n",
    );
    write(
        "releases/local.yaml",
        "apiVersion: ferry.dev/v1\nkind: HelmRelease\nname: local\nnamespace: apps\nchart: {path: charts/local}\nvalues: {size: 3}\n",
    );
    let dir = tmp.path().to_str().unwrap().to_string();
    let (helm, kustomize) = (helm_binary(), kustomize_binary());
    let tools = [
        "--helm",
        helm.to_str().unwrap(),
        "--kustomize",
        kustomize.to_str().unwrap(),
    ];
    let validate = |extra: &[&str]| {
        let mut args = vec!["validate", dir.as_str()];
        args.extend_from_slice(&tools);
        args.extend_from_slice(extra);
        ferry(&args)
    };

    let out = validate(&["--kube-version", "1.33"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("ok: 3 object(s) from 1 file(s) and 1 kustomization(s) under manifests/ and 1 release(s) under releases/"),
        "{stdout}"
    );

    // The chart refuses an old cluster; the version is asked for, not guessed.
    let out = validate(&["--kube-version", "1.20"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("releases/local.yaml: helm template failed")
            && stderr.contains("kubeVersion"),
        "{stderr}"
    );
    let out = validate(&[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("give the cluster's with --kube-version"),
        "{stderr}"
    );

    // A broken overlay is named with kustomize's own words.
    write(
        "manifests/web/kustomization.yaml",
        "resources: [missing.yaml]\n",
    );
    let out = validate(&["--kube-version", "1.33"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("manifests/web: kustomize build failed") && stderr.contains("missing.yaml"),
        "{stderr}"
    );
}
