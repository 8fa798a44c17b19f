//! Task start overhead of FerryDagBundle against GitDagBundle
//! (apache-airflow-providers-git 1.0.1) on the same repository history,
//! side by side in one run. Prints figures; asserts only that both bundles
//! serve the same file.
//!
//!     cargo bench --bench airflow_bundle
//!
//! Each task start is a fresh process with a fresh, empty bundle storage
//! directory, as a KubernetesExecutor pod has, running the two calls
//! Airflow's task runner times as `bundle_prepare_ms` (build the bundle at
//! the run's version, `initialize()`; tools/bench_bundle_start.py).
//! GitDagBundle clones the repository (a local `file://` remote here: no
//! network, so its figures are a floor) then checks the version out;
//! FerryDagBundle resolves the revision ferry already published on the
//! shared volume. "written" is the bytes each start leaves in its storage.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use ferry::config::{DagsTargetConfig, RetentionConfig, ValidationConfig};
use ferry::dags::DagsTarget;

/// The history: this many commits, each rewriting a blob of this size
/// (random, so it does not compress): ~75 MiB of packed history.
const COMMITS: usize = 150;
const BLOB: usize = 512 * 1024;
const STARTS: usize = 7;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn main() {
    let python = root().join(".cache/airflow-venv/bin/python");
    if !python.exists() {
        eprintln!("{} is missing: run .ci/setup first", python.display());
        std::process::exit(1);
    }
    let tmp = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let bare = tmp.path().join("dags.git");
    let head = build_history(&bare);
    let pack = dir_bytes(&bare.join("objects"));

    // ferry publishes the head once, as its daemon does on the shared volume.
    let dest = tmp.path().join("volume");
    let mut dags = DagsTarget::open(DagsTargetConfig {
        source: "dags".into(),
        subdir: String::new(),
        destination: dest.clone(),
        link: "current".into(),
        retention: RetentionConfig::default(),
        validation: ValidationConfig::default(),
        airflow: None,
    })
    .unwrap();
    let repo = git2::Repository::open_bare(&bare).unwrap();
    let started = Instant::now();
    dags.sync(&repo, head, &AtomicBool::new(false)).unwrap();
    let publish = started.elapsed();

    let home = tmp.path().join("airflow-home");
    std::fs::create_dir_all(home.join("config")).unwrap();
    std::fs::copy(
        root().join("ferry-airflow/ferry_airflow.py"),
        home.join("config/ferry_airflow.py"),
    )
    .unwrap();
    let url = format!("file://{}", bare.display());
    let bundles = [
        (
            "FerryDagBundle",
            serde_json::json!([{"name": "dags-folder", "classpath": "ferry_airflow.FerryDagBundle",
                "kwargs": {"path": dest}}]),
        ),
        (
            "GitDagBundle",
            serde_json::json!([{"name": "dags-folder",
                "classpath": "airflow.providers.git.bundles.git.GitDagBundle",
                "kwargs": {"tracking_ref": "main", "repo_url": url}}]),
        ),
    ];
    println!(
        "history: {COMMITS} commits, {:.1} MiB of objects; ferry published the head in {} ms",
        mib(pack),
        publish.as_millis()
    );
    println!(
        "{STARTS} task starts per bundle, medians; each in a fresh process and an empty bundle storage"
    );
    println!(
        "{:<16} {:>18} {:>18} {:>16}",
        "bundle", "bundle_prepare_ms", "process_ms", "written_MiB"
    );
    let mut results = Vec::new();
    let mut served = Vec::new();
    for (name, config) in &bundles {
        let mut prepare = Vec::new();
        let mut process = Vec::new();
        let mut written = Vec::new();
        for n in 0..STARTS {
            let storage = tmp.path().join(format!("storage-{name}-{n}"));
            let started = Instant::now();
            let out = Command::new(&python)
                .arg(root().join("tools/bench_bundle_start.py"))
                .arg(head.to_string())
                .arg("dags/pinned.py")
                .env("AIRFLOW_HOME", &home)
                .env("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
                .env(
                    "AIRFLOW__DAG_PROCESSOR__DAG_BUNDLE_CONFIG_LIST",
                    config.to_string(),
                )
                .env("AIRFLOW__DAG_PROCESSOR__DAG_BUNDLE_STORAGE_PATH", &storage)
                .env(
                    "AIRFLOW_CONN_GIT_DEFAULT",
                    serde_json::json!({"conn_type": "git", "host": url}).to_string(),
                )
                .env("PYTHONWARNINGS", "ignore")
                .stdin(Stdio::null())
                .output()
                .unwrap();
            process.push(started.elapsed().as_secs_f64() * 1000.0);
            let stdout = String::from_utf8_lossy(&out.stdout);
            let line = stdout.lines().rev().find(|l| l.starts_with('{'));
            let Some(line) = line.filter(|_| out.status.success()) else {
                panic!(
                    "{name} task start failed:\n{stdout}\n{}",
                    String::from_utf8_lossy(&out.stderr)
                );
            };
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            prepare.push(v["prepare_ms"].as_f64().unwrap());
            served.push(v["dag_file"].as_str().unwrap().to_string());
            written.push(dir_bytes(&storage) as f64);
        }
        let row = (median(&prepare), median(&process), median(&written));
        println!(
            "{:<16} {:>18.1} {:>18.1} {:>16.2}",
            name,
            row.0,
            row.1,
            row.2 / 1048576.0
        );
        results.push(row);
    }
    served.dedup();
    assert_eq!(served.len(), 1, "both bundles serve the head's DAG file");
    let (ferry, git) = (results[0], results[1]);
    println!(
        "ratio ferry/git: bundle_prepare {:.4}, process {:.2}, written {:.6}",
        ferry.0 / git.0,
        ferry.1 / git.1,
        ferry.2 / git.2.max(1.0)
    );
}

/// A bare repo whose `main` has COMMITS commits, each rewriting a random
/// blob and the DAG file (git fast-import, so it takes seconds).
fn build_history(bare: &Path) -> git2::Oid {
    let init = Command::new("git")
        .args(["init", "-q", "--bare", "-b", "main"])
        .arg(bare)
        .status()
        .unwrap();
    assert!(init.success());
    let mut import = Command::new("git")
        .args(["fast-import", "--quiet"])
        .current_dir(bare)
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = std::io::BufWriter::new(import.stdin.take().unwrap());
    let mut rng = fastrand::Rng::with_seed(7);
    let mut blob = vec![0u8; BLOB];
    for n in 0..COMMITS {
        rng.fill(&mut blob);
        write!(stdin, "blob\nmark :{}\ndata {}\n", 3 * n + 1, blob.len()).unwrap();
        stdin.write_all(&blob).unwrap();
        let dag = format!(
            "from datetime import datetime\nfrom airflow.sdk import dag, task\n\nCODE = {n}\n\n\
             @dag(dag_id=\"pinned\", schedule=None, start_date=datetime(2026, 1, 1))\ndef pinned():\n    \
             @task\n    def which():\n        print(CODE)\n    which()\n\npinned()\n"
        );
        write!(
            stdin,
            "\nblob\nmark :{}\ndata {}\n{dag}\n",
            3 * n + 2,
            dag.len()
        )
        .unwrap();
        let message = format!("commit {n}");
        write!(
            stdin,
            "commit refs/heads/main\nmark :{}\ncommitter bench <bench@example.com> {} +0000\ndata {}\n{message}\n",
            3 * n + 3,
            1_700_000_000 + n,
            message.len()
        )
        .unwrap();
        if n > 0 {
            writeln!(stdin, "from :{}", 3 * n).unwrap();
        }
        writeln!(stdin, "M 100644 :{} data/blob.bin", 3 * n + 1).unwrap();
        writeln!(stdin, "M 100644 :{} dags/pinned.py\n", 3 * n + 2).unwrap();
    }
    drop(stdin);
    assert!(import.wait().unwrap().success(), "git fast-import failed");
    let repo = git2::Repository::open_bare(bare).unwrap();
    repo.refname_to_id("refs/heads/main").unwrap()
}

/// Bytes of the regular files under `dir` (symlinks not followed).
fn dir_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack: Vec<PathBuf> = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(meta) = entry.path().symlink_metadata() else {
                continue;
            };
            if meta.is_dir() {
                stack.push(entry.path());
            } else if meta.is_file() {
                total += meta.len();
            }
        }
    }
    total
}

fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / 1048576.0
}
