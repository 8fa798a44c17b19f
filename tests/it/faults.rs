//! Faults beyond a kill during publish: kills anywhere in a run (fetch,
//! mirror compaction, validation, staging, swap), damaged mirrors, and the
//! repair that must follow, against real git servers.

use crate::support;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::support::*;
use git2::{Oid, Repository};

/// Expected (path, content) of each commit, by commit id.
type Trees = Arc<Mutex<HashMap<String, Vec<(String, String)>>>>;

/// The repo under test: 300 DAG files plus a marker naming the iteration,
/// so the reader can tell which commit a revision is.
struct History {
    repo: Repository,
    files: BTreeMap<String, (Vec<u8>, i32)>,
    head: Option<Oid>,
    /// Expected (path, content) of every commit made, for the reader.
    trees: Trees,
}

impl History {
    fn new(bare: &Path) -> History {
        let repo = Repository::init_bare(bare).unwrap();
        std::fs::write(bare.join("git-daemon-export-ok"), "").unwrap();
        let mut files = BTreeMap::new();
        for i in 0..300 {
            let body = format!("N = {i}\n{}\n", "# padding\n".repeat(150));
            files.insert(
                format!("dags/d{:02}/f{i:03}.py", i % 12),
                (body.into_bytes(), 0o100644),
            );
        }
        History {
            repo,
            files,
            head: None,
            trees: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// A new head on main changing the marker and a few files.
    fn commit(&mut self, n: usize) -> Oid {
        self.files.insert(
            "dags/marker.py".into(),
            (format!("ITERATION = {n}\n").into_bytes(), 0o100644),
        );
        for k in 0..5 {
            let i = (n * 7 + k * 61) % 300;
            let body = format!("N = {i}\nCHANGED_IN = {n}\n");
            self.files.insert(
                format!("dags/d{:02}/f{i:03}.py", i % 12),
                (body.into_bytes(), 0o100644),
            );
        }
        let oid = build_commit(&self.repo, &self.files, self.head, "refs/heads/main", "c");
        self.head = Some(oid);
        let expected: Vec<(String, String)> = self
            .files
            .iter()
            .map(|(p, (c, _))| {
                (
                    p.trim_start_matches("dags/").to_string(),
                    String::from_utf8(c.clone()).unwrap(),
                )
            })
            .collect();
        self.trees.lock().unwrap().insert(oid.to_string(), expected);
        oid
    }
}

fn live(dest: &Path) -> Option<String> {
    let target = std::fs::read_link(dest.join("current")).ok()?;
    Some(target.file_name()?.to_string_lossy().into_owned())
}

/// Reads the tree the link names, if the link exists, and checks it is
/// exactly one commit's files. Returns the commit.
fn check_live(
    dest: &Path,
    trees: &Mutex<HashMap<String, Vec<(String, String)>>>,
) -> Option<String> {
    let sha = live(dest)?;
    let seen = read_tree(&dest.join(".ferry").join(&sha));
    let trees = trees.lock().unwrap();
    let want = trees
        .get(&sha)
        .unwrap_or_else(|| panic!("the link names {sha}, which is no commit of this test"));
    assert!(
        seen == *want,
        "revision {sha} is not exactly its commit's files ({} files, want {})",
        seen.len(),
        want.len()
    );
    Some(sha)
}

/// A thread that walks the live revision over and over while the test
/// runs, failing the test if it ever sees a mixed or incomplete tree.
struct Reader {
    stop: Arc<AtomicBool>,
    passes: Arc<AtomicUsize>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl Reader {
    fn start(dest: PathBuf, trees: Trees) -> Reader {
        let stop = Arc::new(AtomicBool::new(false));
        let passes = Arc::new(AtomicUsize::new(0));
        let (s, p) = (stop.clone(), passes.clone());
        let handle = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                // A revision may be pruned between readlink and the walk;
                // only a complete read of a revision counts as a pass.
                let sha = match live(&dest) {
                    Some(sha) => sha,
                    None => continue,
                };
                let dir = dest.join(".ferry").join(&sha);
                let Some(seen) = try_read_tree(&dir).ok() else {
                    continue;
                };
                let trees = trees.lock().unwrap();
                assert!(
                    trees.get(&sha) == Some(&seen),
                    "reader saw revision {sha} incomplete or mixed ({} files)",
                    seen.len()
                );
                p.fetch_add(1, Ordering::Relaxed);
            }
        });
        Reader {
            stop,
            passes,
            handle: Some(handle),
        }
    }

    fn finish(mut self) -> usize {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            h.join().expect("the reader failed");
        }
        self.passes.load(Ordering::Relaxed)
    }
}

/// The phase an interrupted run was in: the last `phase: X` its debug log
/// names (`start` before the first).
fn last_phase(log: &Path) -> String {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split("phase: ").nth(1))
        .map(|p| p.split([' ', '(']).next().unwrap_or("").trim().to_string())
        .next_back()
        .unwrap_or_else(|| "start".into())
}

fn publish_dags(url: &str, dest: &Path, cache: &Path, password: &Path, log: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ferry"));
    cmd.args([
        "--log-level",
        "debug",
        "publish-dags",
        "--repo",
        url,
        "--subdir",
        "dags",
    ])
    .arg("--dest")
    .arg(dest)
    .arg("--cache-dir")
    .arg(cache)
    // Compaction (the mirror dropped and refetched) on every other run,
    // so kills land in it too.
    .env("FERRY_MIRROR_MAX_PACKS", "1")
    .stdin(Stdio::null())
    .stdout(Stdio::null())
    .stderr(std::fs::File::create(log).unwrap());
    if url.starts_with("http") {
        cmd.args(["--username", "ferry", "--token-file"])
            .arg(password);
    }
    cmd
}

/// No staging leftovers in the destination, no trash in the cache.
fn assert_clean(dest: &Path, cache: &Path) {
    let staging = staging_leftovers(dest);
    assert!(staging.is_empty(), "{staging:?}");
    let trash = no_trash(cache);
    assert!(trash.is_empty(), "{trash:?}");
}

fn no_trash(cache: &Path) -> Vec<String> {
    std::fs::read_dir(cache)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.contains(".trash-"))
                .collect()
        })
        .unwrap_or_default()
}

/// One `ferry run` set-up of these tests: a served DAGs repo (`History`),
/// its git daemon, and a config for one DAGs source and target.
struct Scene {
    /// Holds the repo, cache and destination for the test's life.
    _tmp: tempfile::TempDir,
    history: History,
    _daemon: Server,
    port: u16,
    cache: PathBuf,
    dest: PathBuf,
    config: PathBuf,
    log: PathBuf,
}

impl Scene {
    /// `top` is added before `sources:` (e.g. `log:`), `source` to the
    /// source and `target` to the DAGs target, each as YAML lines.
    fn new(top: &str, source: &str, target: &str) -> Scene {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("srv");
        std::fs::create_dir_all(&root).unwrap();
        let history = History::new(&root.join("dags.git"));
        let daemon = git_daemon(&root, free_port());
        let port = free_port();
        let (cache, dest) = (tmp.path().join("cache"), tmp.path().join("dest"));
        let config = tmp.path().join("ferry.yaml");
        std::fs::write(
            &config,
            format!(
                "cache_dir: {cache}\nserver:\n  listen: 127.0.0.1:{port}\n{top}\
                 sources:\n  - name: dags\n    url: git://127.0.0.1:{dp}/dags.git\n{source}\
                 targets:\n  dags:\n    source: dags\n    subdir: dags\n    destination: {dest}\n{target}",
                cache = cache.display(),
                dp = daemon.port,
                dest = dest.display(),
            ),
        )
        .unwrap();
        let log = tmp.path().join("ferry.log");
        Scene {
            _tmp: tmp,
            history,
            _daemon: daemon,
            port,
            cache,
            dest,
            config,
            log,
        }
    }

    fn addr(&self) -> std::net::SocketAddr {
        std::net::SocketAddr::from(([127, 0, 0, 1], self.port))
    }
}

/// The production wedge: kill -9 of `ferry publish-dags` at uniformly
/// spread moments from process start to exit, alternating git daemon and
/// smart HTTP. After every kill an uninterrupted run must publish the head
/// (the cache is disposable, a kill must never wedge it), and the link must
/// always name one complete commit, as a concurrent reader checks.
#[test]
fn kill_9_anywhere_in_publish_dags_never_wedges_the_mirror() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("srv");
    std::fs::create_dir_all(&root).unwrap();
    let mut history = History::new(&root.join("dags.git"));
    let daemon = git_daemon(&root, free_port());
    let http = smart_http(&root, "ferry", "s3cret-pw");
    let password = tmp.path().join("pw");
    std::fs::write(&password, "s3cret-pw\n").unwrap();
    let urls = [
        format!("git://127.0.0.1:{}/dags.git", daemon.port),
        format!("http://127.0.0.1:{}/git/dags.git", http.port),
    ];
    let dest = tmp.path().join("dest");
    let cache = tmp.path().join("cache");
    let log = tmp.path().join("run.log");

    // Warm-up runs time a whole run on each transport, to spread the kills over.
    let mut durations = Vec::new();
    for n in 0..6 {
        history.commit(n);
        let started = Instant::now();
        let status = publish_dags(&urls[n % 2], &dest, &cache, &password, &log)
            .status()
            .unwrap();
        assert!(
            status.success(),
            "{}",
            std::fs::read_to_string(&log).unwrap()
        );
        durations.push(started.elapsed());
    }
    let reader = Reader::start(dest.clone(), history.trees.clone());

    let kills = 200;
    let mut phases: BTreeMap<String, usize> = BTreeMap::new();
    let mut repairs = 0;
    // Undisturbed runs under the same load (the reader, the servers) keep
    // the spread matched to what a run takes now.
    let mut recent: Vec<Duration> = durations;
    for run in 0..kills {
        let head = history.commit(100 + run);
        let url = &urls[run % 2];
        let mut window = recent[recent.len().saturating_sub(21)..].to_vec();
        window.sort();
        let full = window[window.len() / 2];
        let mut child =
            spawn_owned(&mut publish_dags(url, &dest, &cache, &password, &log)).unwrap();
        std::thread::sleep(full.mul_f64(fastrand::f64() * 1.1));
        let finished = child.try_wait().unwrap().is_some();
        child.kill_group();
        let _ = child.wait();
        drop(child);
        let phase = if finished {
            "finished".to_string()
        } else {
            last_phase(&log)
        };
        *phases.entry(phase).or_default() += 1;
        check_live(&dest, &history.trees).expect("the link is gone");

        // The next run, undisturbed, publishes the head.
        let started = Instant::now();
        let status = publish_dags(url, &dest, &cache, &password, &log)
            .status()
            .unwrap();
        recent.push(started.elapsed());
        let text = std::fs::read_to_string(&log).unwrap();
        assert!(
            status.success(),
            "run {run} after a kill in phase {:?} failed:\n{text}",
            phases.iter().last()
        );
        assert!(!text.contains("not found or not readable"), "{text}");
        if text.contains("mirror damaged") {
            repairs += 1;
        }
        assert_eq!(check_live(&dest, &history.trees), Some(head.to_string()));
        assert_clean(&dest, &cache);
    }
    let passes = reader.finish();
    recent.sort();
    eprintln!(
        "{kills} kills over runs of median {:?}; phase at the kill: {phases:?}; mirrors repaired: {repairs}; reader passes: {passes}",
        recent[recent.len() / 2]
    );
    let interrupted: usize = phases
        .iter()
        .filter(|(p, _)| p.as_str() != "finished")
        .map(|(_, n)| n)
        .sum();
    assert!(
        interrupted >= kills / 2,
        "only {interrupted} kills interrupted a run: {phases:?}"
    );
    for phase in ["fetch", "stage"] {
        assert!(
            phases.contains_key(phase),
            "no kill landed in {phase}: {phases:?}"
        );
    }
    assert!(passes > kills, "the reader made only {passes} passes");
}

/// The state the wedge left (refs kept, packs gone) and a ref naming a
/// commit the mirror lacks: the next `publish-dags` repairs the mirror,
/// says so, and publishes; it never blames the remote.
#[test]
fn a_mirror_with_refs_but_no_objects_is_repaired_not_misreported() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("srv");
    std::fs::create_dir_all(&root).unwrap();
    let mut history = History::new(&root.join("dags.git"));
    let daemon = git_daemon(&root, free_port());
    let url = format!("git://127.0.0.1:{}/dags.git", daemon.port);
    let (dest, cache, log) = (
        tmp.path().join("dest"),
        tmp.path().join("cache"),
        tmp.path().join("log"),
    );
    let run = || {
        let mut cmd = publish_dags(&url, &dest, &cache, Path::new("/nonexistent"), &log);
        cmd.env_remove("FERRY_MIRROR_MAX_PACKS");
        let status = cmd.status().unwrap();
        (status.success(), std::fs::read_to_string(&log).unwrap())
    };
    history.commit(1);
    assert!(run().0);
    let mirror = cache.join("dags.git");

    // 1. Every pack removed, refs kept.
    for entry in std::fs::read_dir(mirror.join("objects/pack")).unwrap() {
        std::fs::remove_file(entry.unwrap().path()).unwrap();
    }
    let head = history.commit(2);
    let (ok, text) = run();
    assert!(ok, "{text}");
    assert!(text.contains("mirror damaged"), "{text}");
    assert!(!text.contains("not found or not readable"), "{text}");
    assert_eq!(live(&dest), Some(head.to_string()));

    // 2. The tracking ref rewritten to a commit that is not there.
    std::fs::write(
        mirror.join("refs/ferry/heads/main"),
        "1111111111111111111111111111111111111111\n",
    )
    .unwrap();
    let head = history.commit(3);
    let (ok, text) = run();
    assert!(ok, "{text}");
    assert!(
        text.contains("names 1111111111111111111111111111111111111111, which is missing"),
        "{text}"
    );
    assert_eq!(live(&dest), Some(head.to_string()));

    // 3. A mirror killed between "set aside" and "deleted": the trash goes.
    let trash = cache.join("dags.git.trash-1-deadbeef");
    std::fs::create_dir_all(trash.join("objects")).unwrap();
    let (ok, text) = run();
    assert!(ok, "{text}");
    assert!(!trash.exists());
    // An undamaged mirror is not replaced.
    assert!(!text.contains("mirror damaged"), "{text}");
}

/// `ferry run` counts repairs in `ferry_mirror_repairs_total`: once for a
/// mirror found damaged at start, once more for one damaged while it runs
/// (the failed fetch leads to the check, the repair and a second fetch).
#[test]
fn ferry_run_repairs_a_damaged_mirror_and_counts_it() {
    let mut scene = Scene::new("", "    interval: 1s\n    max_backoff: 1s\n", "");
    let (port, addr) = (scene.port, scene.addr());
    let (cache, dest) = (scene.cache.clone(), scene.dest.clone());
    let (config, log) = (scene.config.clone(), scene.log.clone());
    let repairs = || {
        let (_, metrics) = http_get(addr, "/metrics");
        metrics
            .lines()
            .find(|l| l.starts_with("ferry_mirror_repairs_total{source=\"dags\"} "))
            .map(str::to_string)
    };
    let wait_live = |sha: Oid| {
        eventually(Duration::from_secs(20), "publish", || {
            (live(&dest)? == sha.to_string()).then_some(())
        })
    };
    let drop_packs = || {
        for entry in std::fs::read_dir(cache.join("dags.git/objects/pack")).unwrap() {
            std::fs::remove_file(entry.unwrap().path()).unwrap();
        }
    };
    let first = scene.history.commit(1);
    let ferry = spawn_ferry(&config, &log, port, &[]);
    wait_live(first);
    assert_eq!(
        repairs().as_deref(),
        Some("ferry_mirror_repairs_total{source=\"dags\"} 0")
    );
    stop_ferry(ferry);

    drop_packs();
    let second = scene.history.commit(2);
    let ferry = spawn_ferry(&config, &log, port, &[]);
    wait_live(second);
    assert_eq!(
        repairs().as_deref(),
        Some("ferry_mirror_repairs_total{source=\"dags\"} 1")
    );

    drop_packs();
    let third = scene.history.commit(3);
    wait_live(third);
    assert_eq!(
        repairs().as_deref(),
        Some("ferry_mirror_repairs_total{source=\"dags\"} 2")
    );
    let (_, status) = http_get(addr, "/api/v1/status/dags");
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(status["consecutive_failures"], 0, "{status}");
    stop_ferry(ferry);
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("mirror damaged"), "{text}");
    assert!(!text.contains("not found or not readable"), "{text}");
}

/// kill -9 of `ferry run` at spread moments from process start to the
/// publish of the head: a restart always publishes the head, with no
/// staging or trash left, and the link is always complete.
#[test]
fn kill_9_of_ferry_run_anywhere_then_a_restart_publishes() {
    let scene = Scene::new("log:\n  level: debug\n", "    interval: 1h\n", "");
    let mut history = scene.history;
    let (cache, dest) = (scene.cache.clone(), scene.dest.clone());
    let (config, log) = (scene.config.clone(), scene.log.clone());
    let port = scene.port;
    let start = || {
        spawn_owned(
            Command::new(env!("CARGO_BIN_EXE_ferry"))
                .args(["run", "--config"])
                .arg(&config)
                .env("FERRY_MIRROR_MAX_PACKS", "1")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&log).unwrap()),
        )
        .unwrap()
    };
    // Published by this process (its status API says so), not merely live
    // from an earlier run.
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let until_live = |sha: Oid| {
        eventually(Duration::from_secs(20), "publish", || {
            std::net::TcpStream::connect(addr).ok()?;
            let (_, body) = http_get(addr, "/api/v1/status/dags");
            let v: serde_json::Value = serde_json::from_str(&body).ok()?;
            (v["published_revision"].as_str()? == sha.to_string() && v["first_sync_done"] == true)
                .then_some(())
        });
        assert_eq!(live(&dest), Some(sha.to_string()));
    };
    // Time from start to published, to spread the kills over.
    let mut durations = Vec::new();
    for n in 0..3 {
        let head = history.commit(n);
        let started = Instant::now();
        let mut ferry = start();
        until_live(head);
        durations.push(started.elapsed());
        let _ = ferry.signal_and_wait(libc::SIGTERM, Duration::from_secs(30));
    }
    let reader = Reader::start(dest.clone(), history.trees.clone());
    let kills = 60;
    let mut phases: BTreeMap<String, usize> = BTreeMap::new();
    let mut recent = durations;
    for run in 0..kills {
        let head = history.commit(100 + run);
        // Start -> published as the undisturbed runs measure it (which
        // includes the polling of the status API, so it errs long).
        let mut window = recent[recent.len().saturating_sub(11)..].to_vec();
        window.sort();
        let full = window[window.len() / 2];
        let mut ferry = start();
        std::thread::sleep(full.mul_f64(fastrand::f64()));
        let phase = if live(&dest) == Some(head.to_string()) {
            "published".to_string()
        } else {
            last_phase(&log)
        };
        ferry.kill_group();
        drop(ferry);
        *phases.entry(phase).or_default() += 1;
        check_live(&dest, &history.trees).expect("the link is gone");

        let started = Instant::now();
        let mut ferry = start();
        until_live(head);
        recent.push(started.elapsed());
        unsafe { libc::kill(ferry.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(30);
        while ferry.try_wait().unwrap().is_none() {
            if Instant::now() > deadline {
                panic!(
                    "ferry did not stop:\n{}",
                    std::fs::read_to_string(&log).unwrap()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let status = ferry.wait().unwrap();
        assert!(
            status.success(),
            "{status:?}\n{}",
            std::fs::read_to_string(&log).unwrap()
        );
        assert_clean(&dest, &cache);
    }
    let passes = reader.finish();
    recent.sort();
    let full = recent[recent.len() / 2];
    eprintln!(
        "{kills} kills of ferry run over {full:?}; phase at the kill: {phases:?}; reader passes: {passes}"
    );
    let published = phases.get("published").copied().unwrap_or(0);
    assert!(
        published < kills / 2,
        "most kills came too late: {phases:?}"
    );
}

/// SIGTERM while the first sync runs (its validation hook sleeping), with
/// an hour until the next poll: ferry stops within seconds, not after the
/// interval (a shutdown seen during the sync used to be missed by the wait
/// after it), and the hook's own child dies with it.
#[test]
fn sigterm_during_a_sync_stops_at_once_whatever_the_interval() {
    let marker_dir = tempfile::tempdir().unwrap();
    let marker = marker_dir.path().join("hook-pid");
    let mut scene = Scene::new(
        "",
        "    interval: 1h\n",
        &format!(
            "    validation:\n      command: [sh, -c, \"sleep 300 & echo $! > {}; wait\"]\n",
            marker.display()
        ),
    );
    scene.history.commit(1);
    let mut ferry = spawn_ferry(&scene.config, &scene.log, scene.port, &[]);
    let sleeper: i32 = eventually(Duration::from_secs(20), "the hook to start", || {
        std::fs::read_to_string(&marker).ok()?.trim().parse().ok()
    });
    let asked = Instant::now();
    let status = ferry.signal_and_wait(libc::SIGTERM, Duration::from_secs(15));
    assert!(status.success(), "{status:?}");
    assert!(
        asked.elapsed() < Duration::from_secs(10),
        "took {:?}",
        asked.elapsed()
    );
    let gone = |pid: i32| {
        std::fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |s| {
            s.rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .starts_with('Z')
        })
    };
    eventually(Duration::from_secs(5), "the hook's child to die", || {
        gone(sleeper).then_some(())
    });
}

/// SIGTERM while a publish that cannot be interrupted (staging a large
/// commit) runs: the publish completes, and ferry exits right after it
/// instead of sleeping through its one-hour interval.
#[test]
fn sigterm_during_a_publish_exits_when_it_completes() {
    let mut scene = Scene::new("log:\n  level: debug\n", "    interval: 1h\n", "");
    for i in 0..20_000 {
        scene.history.files.insert(
            format!("dags/d{:03}/f{i:05}.py", i % 200),
            (format!("N = {i}\n").into_bytes(), 0o100644),
        );
    }
    let big = scene.history.commit(1);
    let (dest, log) = (scene.dest.clone(), scene.log.clone());
    let mut ferry = spawn_ferry(&scene.config, &log, scene.port, &[]);
    eventually(Duration::from_secs(60), "staging to start", || {
        std::fs::read_to_string(&log)
            .ok()?
            .contains("phase: stage")
            .then_some(())
    });
    let asked = Instant::now();
    let status = ferry.signal_and_wait(libc::SIGTERM, Duration::from_secs(60));
    assert!(status.success(), "{status:?}");
    let text = std::fs::read_to_string(&log).unwrap();
    let (signal, done) = (text.find("shutting down"), text.find("phase: prune"));
    assert!(
        signal.is_some() && done.is_some() && signal < done,
        "the signal must arrive before the publish completed:\n{text}"
    );
    assert!(
        asked.elapsed() < Duration::from_secs(20),
        "took {:?}",
        asked.elapsed()
    );
    assert_eq!(live(&dest), Some(big.to_string()));
}

/// Under `umask 077`, as some base images and init systems set it, every
/// published directory is still `rwxr-xr-x` and files keep git's modes
/// (Airflow runs as another user than ferry); and logs written to a file
/// carry no terminal colour codes.
#[test]
fn published_modes_ignore_the_umask_and_logs_to_a_file_have_no_colour() {
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("srv");
    std::fs::create_dir_all(&root).unwrap();
    let bare = root.join("dags.git");
    let repo = Repository::init_bare(&bare).unwrap();
    let mut files = BTreeMap::new();
    files.insert("dags/a.py".to_string(), (b"A = 1\n".to_vec(), 0o100644));
    files.insert(
        "dags/sub/deep/b.py".to_string(),
        (b"B = 1\n".to_vec(), 0o100644),
    );
    files.insert(
        "dags/bin/run.sh".to_string(),
        (b"#!/bin/sh\n".to_vec(), 0o100755),
    );
    let head = build_commit(&repo, &files, None, "refs/heads/main", "c");
    let dest = tmp.path().join("dest");
    let log = tmp.path().join("log");
    let mut cmd = publish_dags(
        bare.to_str().unwrap(),
        &dest,
        &tmp.path().join("cache"),
        Path::new("/nonexistent"),
        &log,
    );
    // SAFETY: umask(2) in the child between fork and exec; async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            libc::umask(0o077);
            Ok(())
        });
    }
    let status = cmd.status().unwrap();
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(status.success(), "{text}");
    assert!(
        !text.contains('\u{1b}'),
        "colour codes in a log file:\n{text:?}"
    );
    assert!(text.contains("phase: swap"), "{text}");
    let revision = dest.join(".ferry").join(head.to_string());
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&dest.join(".ferry")), 0o755);
    // A revision's directories are shared with the revisions that have
    // them, so read-only (for everyone, never unreadable to Airflow).
    for dir in [
        revision.clone(),
        revision.join("sub"),
        revision.join("sub/deep"),
        revision.join("bin"),
    ] {
        assert_eq!(mode(&dir), 0o555, "{}", dir.display());
    }
    assert_eq!(mode(&revision.join("a.py")), 0o644);
    assert_eq!(mode(&revision.join("sub/deep/b.py")), 0o644);
    assert_eq!(mode(&revision.join("bin/run.sh")), 0o755);
}

/// A small tmpfs mounted for one test (the tests run as root, as CI does),
/// unmounted when dropped.
struct SmallDisk {
    path: PathBuf,
}

impl SmallDisk {
    fn mount(path: PathBuf, size: &str) -> SmallDisk {
        std::fs::create_dir_all(&path).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&path)
            .output()
            .expect("cannot run mount");
        assert!(
            out.status.success(),
            "this test mounts a small tmpfs and needs root (CI runs as root): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        SmallDisk { path }
    }

    /// Fills the disk with `filler`, leaving about `leave` bytes free.
    fn fill_leaving(&self, leave: u64) {
        use std::io::Write;
        let filler = self.path.join("filler");
        let mut file = std::fs::File::create(&filler).unwrap();
        let chunk = vec![0xA5u8; 64 * 1024];
        while file.write_all(&chunk).is_ok() {}
        let len = file.metadata().unwrap().len();
        file.set_len(len.saturating_sub(leave)).unwrap();
    }

    fn free(&self) {
        std::fs::remove_file(self.path.join("filler")).unwrap();
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

/// ENOSPC while staging (a commit whose files are larger than what is
/// left, though its pack is small), while fetching (random text larger than
/// what is left) and while saving the GitHub report ledger (on the same
/// disk): the live revision stays complete, the ledger on disk stays whole,
/// the status names the path and the free space, and once space is freed
/// the next retry publishes and the queued reports are delivered, with no
/// restart.
#[test]
fn a_full_disk_keeps_the_live_revision_and_recovers_without_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("srv");
    std::fs::create_dir_all(&root).unwrap();
    let mut history = History::new(&root.join("dags.git"));
    let first = history.commit(1);
    let daemon = git_daemon(&root, free_port());
    let disk = SmallDisk::mount(tmp.path().join("small"), "24m");
    let github = support::github::FakeGithub::start(support::github::FakeState {
        token: Some("ghp_diskFullTest0123456789".into()),
        repos: ["acme/dags".to_string()].into(),
        ..Default::default()
    });
    std::fs::write(tmp.path().join("token"), "ghp_diskFullTest0123456789\n").unwrap();
    let port = free_port();
    let dest = disk.path.join("dest");
    // The report ledger on a disk of its own, to fill it at a chosen moment.
    let ledger_disk = SmallDisk::mount(tmp.path().join("ledger"), "1m");
    let ledger = ledger_disk.path.join("github-report.json");
    let config = tmp.path().join("ferry.yaml");
    std::fs::write(
        &config,
        format!(
            "cache_dir: {cache}\nserver:\n  listen: 127.0.0.1:{port}\n\
             github:\n  api_url: {api}\n  external_url: https://ferry.example.test\n  token_file: {token}\n  deployments: false\n  state_file: {ledger}\n\
             sources:\n  - name: dags\n    url: git://127.0.0.1:{dp}/dags.git\n    github_repo: acme/dags\n    interval: 1s\n    max_backoff: 1s\n\
             targets:\n  dags:\n    source: dags\n    subdir: dags\n    destination: {dest}\n",
            cache = disk.path.join("cache").display(),
            api = github.url(),
            token = tmp.path().join("token").display(),
            ledger = ledger.display(),
            dp = daemon.port,
            dest = dest.display(),
        ),
    )
    .unwrap();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let status = || -> serde_json::Value {
        serde_json::from_str(&http_get(addr, "/api/v1/status/dags").1).unwrap()
    };
    let statuses = |sha: Oid| github.states(&sha.to_string(), "ferry/dags");
    let log = tmp.path().join("ferry.log");
    let ferry = spawn_ferry(&config, &log, port, &[]);
    eventually(Duration::from_secs(20), "first publish", || {
        (statuses(first).last()? == "success").then_some(())
    });
    assert_eq!(live(&dest), Some(first.to_string()));

    // Staging: 400 distinct 16 KiB files (6 MiB on disk) that pack to a few KiB.
    for i in 0..400 {
        let body = format!("N = {i}\n{}", "x = 1\n".repeat(2700));
        history.files.insert(
            format!("dags/big/f{i:03}.py"),
            (body.into_bytes(), 0o100644),
        );
    }
    disk.fill_leaving(1024 * 1024);
    let before = std::fs::read(&ledger).unwrap();
    ledger_disk.fill_leaving(0);
    let second = history.commit(2);
    let error = eventually(Duration::from_secs(20), "a disk-full error", || {
        let v = status();
        let message = v["last_error"]["message"].as_str()?.to_string();
        message.contains("no space left").then_some(message)
    });
    assert!(
        error.starts_with(&format!("{}: no space left", dest.display())),
        "{error}"
    );
    assert!(error.contains("B free)"), "{error}");
    check_live(&dest, &history.trees);
    assert_eq!(live(&dest), Some(first.to_string()));
    assert!(
        staging_leftovers(&dest).is_empty(),
        "{:?}",
        staging_leftovers(&dest)
    );
    // The ledger could not be saved: the log says so, naming it, and the
    // copy on disk is the last good one.
    let deadline = Instant::now() + Duration::from_secs(20);
    while !std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .any(|l| l.contains(&ledger.display().to_string()) && l.contains("no space left"))
    {
        assert!(
            Instant::now() < deadline,
            "no ledger error logged:\n{}",
            std::fs::read_to_string(&log).unwrap()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        std::fs::read(&ledger).unwrap() == before,
        "the ledger on disk must stay the last good copy"
    );
    disk.free();
    ledger_disk.free();
    eventually(
        Duration::from_secs(20),
        "publish after space returned",
        || (live(&dest)? == second.to_string()).then_some(()),
    );
    check_live(&dest, &history.trees);
    // What was reported while the disk was full reaches GitHub: `pending`
    // first, success last.
    eventually(Duration::from_secs(20), "second commit's status", || {
        (statuses(second).last()? == "success").then_some(())
    });
    // Exactly: pending, one error however many retries failed the same
    // way, success.
    assert_eq!(
        statuses(second),
        ["pending", "error", "success"],
        "{:?}",
        github.statuses(&second.to_string(), "ferry/dags")
    );
    // And the ledger is saved again, with what was reported meanwhile.
    eventually(Duration::from_secs(20), "the ledger saved again", || {
        let saved = String::from_utf8(std::fs::read(&ledger).ok()?).ok()?;
        saved.contains(&second.to_string()).then_some(())
    });

    // Fetching: 3 MiB of random letters (compressed, still over 2 MiB),
    // with 256 KiB left.
    let noise: String = (0..3 * 1024 * 1024)
        .map(|_| fastrand::alphanumeric())
        .collect();
    history
        .files
        .insert("dags/data/noise.txt".into(), (noise.into_bytes(), 0o100644));
    disk.fill_leaving(256 * 1024);
    let third = history.commit(3);
    let error = eventually(Duration::from_secs(20), "a disk-full fetch error", || {
        let v = status();
        let message = v["last_error"]["message"].as_str()?.to_string();
        (v["last_error"]["kind"] == "fetch_error" && message.contains("no space left"))
            .then_some(message)
    });
    assert!(
        error.contains(&disk.path.join("cache").display().to_string()),
        "{error}"
    );
    assert!(error.contains(" free"), "{error}");
    assert_eq!(live(&dest), Some(second.to_string()));
    disk.free();
    eventually(
        Duration::from_secs(30),
        "publish after space returned",
        || (statuses(third).last()? == "success").then_some(()),
    );
    assert_eq!(live(&dest), Some(third.to_string()));
    assert_eq!(status()["consecutive_failures"], 0);
    github.assert_nothing_rejected();
    stop_ferry(ferry);
}

/// Writes by ferry (not dry runs) to configmaps in `ns`: (verb, name).
fn configmap_writes(audit_log: &Path, ns: &str) -> Vec<(String, String)> {
    let prefix = format!("/api/v1/namespaces/{ns}/configmaps/");
    audit_writes(audit_log)
        .into_iter()
        .filter_map(|(verb, uri)| {
            let name = uri.strip_prefix(&prefix)?.split('?').next()?.to_string();
            Some((verb, name))
        })
        .collect()
}

fn configmaps(prefix: &str, range: std::ops::Range<usize>, size: usize) -> String {
    range
        .map(|i| {
            format!(
                "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {prefix}-{i:03}\ndata:\n  payload: \"{}\"\n---\n",
                "x".repeat(size)
            )
        })
        .collect()
}

/// The apiserver killed (-9) and restarted while ferry applies a revision
/// of 600 new objects that also drops ten: ferry retries until the revision
/// is applied, the inventory (watched throughout) never loses an object both
/// revisions declare, and the only deletes are of the ten git dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_apiserver_restart_mid_apply_is_retried_and_prunes_nothing_by_mistake() {
    use k8s_openapi::api::core::v1::ConfigMap;
    let cp = PrivateControlPlane::start(false);
    let tmp = tempfile::tempdir().unwrap();
    let repo = Repo::new(tmp.path(), "platform");
    let ns = "restart-test";
    let ns_yaml = format!("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {ns}\n");
    let first = repo.commit(
        &[
            ("manifests/ns.yaml", Some(&ns_yaml)),
            ("manifests/a.yaml", Some(&configmaps("a", 0..40, 10))),
        ],
        "first",
    );
    let daemon = git_daemon(tmp.path(), free_port());
    let port = free_port();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let config = tmp.path().join("ferry.yaml");
    std::fs::write(
        &config,
        format!(
            "cache_dir: {cache}\nserver:\n  listen: 127.0.0.1:{port}\n\
             sources:\n  - name: platform\n    url: git://127.0.0.1:{dp}/platform.git\n    interval: 1s\n    max_backoff: 1s\n\
             targets:\n  kubernetes:\n    source: platform\n    default_namespace: {ns}\n    allowed_namespaces: [{ns}]\n    \
             health_timeout: 0s\n    kubeconfig: {kc}\n",
            cache = tmp.path().join("cache").display(),
            dp = daemon.port,
            kc = cp.admin().display(),
        ),
    )
    .unwrap();
    let log = tmp.path().join("ferry.log");
    let ferry = spawn_ferry(&config, &log, port, &[]);
    let applied = |sha: &str| {
        let (_, body) = http_get(addr, "/api/v1/status/platform");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        v["kubernetes"]["applied_revision"] == sha
    };
    eventually(Duration::from_secs(30), "first apply", || {
        applied(&first).then_some(())
    });

    // Watch the inventory: it must always list every object both revisions
    // declare (a-010 .. a-039), whenever it can be read.
    let client = ferry::kubernetes::client::connect(Some(&cp.admin()))
        .await
        .unwrap();
    let inventories: kube::Api<ConfigMap> = kube::Api::namespaced(client.clone(), ns);
    let inventory_name = ferry::kubernetes::inventory::name(
        "platform",
        &format!(
            "git://127.0.0.1:{}/platform.git#main:manifests",
            daemon.port
        ),
    );
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut reads = 0;
            while !stop.load(Ordering::Relaxed) {
                if let Ok(cm) = inventories.get(&inventory_name).await {
                    let text = cm.data.unwrap_or_default()["objects.json"].clone();
                    for i in 10..40 {
                        let name = format!("\"a-{i:03}\"");
                        assert!(text.contains(&name), "the inventory lost a-{i:03}: {text}");
                    }
                    reads += 1;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            reads
        })
    };

    let second = repo.commit(
        &[
            ("manifests/a.yaml", Some(&configmaps("a", 10..40, 10))),
            ("manifests/b.yaml", Some(&configmaps("b", 0..600, 2000))),
        ],
        "second",
    );
    // Kill the apiserver once ferry is well into the new objects.
    let audit = cp.audit_log();
    let b_written = |audit: &Path| {
        configmap_writes(audit, ns)
            .into_iter()
            .filter(|(verb, name)| verb == "patch" && name.starts_with("b-"))
            .map(|(_, name)| name)
            .collect::<std::collections::BTreeSet<_>>()
            .len()
    };
    let (cp, b_before) = tokio::task::block_in_place(|| {
        eventually(Duration::from_secs(30), "ferry applying b-*", || {
            (b_written(&audit) >= 30).then_some(())
        });
        let at_kill = b_written(&audit);
        cp.restart_apiserver();
        (cp, at_kill)
    });
    assert!(
        b_before < 600,
        "the restart came after the apply ({b_before} of 600 written)"
    );

    let second_done = second.clone();
    tokio::task::block_in_place(|| {
        eventually(
            Duration::from_secs(60),
            "second apply after the restart",
            || applied(&second_done).then_some(()),
        )
    });
    stop.store(true, Ordering::Relaxed);
    let reads = watcher.await.unwrap();
    assert!(reads > 5, "the inventory was read only {reads} times");

    let all = kube::Api::<ConfigMap>::namespaced(client, ns)
        .list(&Default::default())
        .await
        .unwrap();
    let names: std::collections::BTreeSet<String> = all
        .items
        .iter()
        .filter_map(|c| c.metadata.name.clone())
        .collect();
    for i in 0..600 {
        assert!(names.contains(&format!("b-{i:03}")), "b-{i:03} missing");
    }
    for i in 0..40 {
        assert_eq!(names.contains(&format!("a-{i:03}")), i >= 10, "a-{i:03}");
    }
    let deleted: Vec<String> = configmap_writes(&cp.audit_log(), ns)
        .into_iter()
        .filter(|(verb, _)| verb == "delete")
        .map(|(_, name)| name)
        .collect();
    let expected: Vec<String> = (0..10).map(|i| format!("a-{i:03}")).collect();
    let mut sorted = deleted.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted, expected, "deletes: {deleted:?}");
    eprintln!(
        "apiserver restarted after {b_before} of 600 new objects; inventory read {reads} times"
    );
    stop_ferry(ferry);
}

/// Git remote, GitHub and the kube-apiserver all unreachable at once for a
/// long outage (compressed: 20 s of 1 s polls and a 2 s backoff cap, so
/// every loop retries many times; `cargo bench --bench outage` runs it
/// longer), with new commits pushed meanwhile: ferry stays up and healthy,
/// says what fails, holds its memory and descriptors, and within about one
/// interval of the return publishes, applies and reports each commit exactly
/// once (support/outage.rs asserts the invariants).
#[test]
fn a_long_outage_of_everything_is_ridden_out_and_converges_once() {
    let r = support::outage::run(Duration::from_secs(20));
    assert!(
        r.failed_fetches >= 5,
        "only {} failed fetches in the outage",
        r.failed_fetches
    );
    assert!(
        r.fds_peak <= r.fds_before + 8,
        "descriptors grew from {} to {}",
        r.fds_before,
        r.fds_peak
    );
    assert!(
        r.rss_peak < r.rss_before + 20.0,
        "RSS grew from {:.1} to {:.1} MiB",
        r.rss_before,
        r.rss_peak
    );
    assert!(
        r.converged_after < Duration::from_secs(6),
        "converged {:?} after the return",
        r.converged_after
    );
    eprintln!(
        "outage 20 s: {} failed fetches, fds {} -> peak {}, RSS {:.1} -> peak {:.1} MiB; converged {:?} after the return",
        r.failed_fetches, r.fds_before, r.fds_peak, r.rss_before, r.rss_peak, r.converged_after
    );
}

/// The leader Lease taken away while the holder applies a large revision:
/// the holder exits at its next renewal, part-way through; each object it
/// applied is whole (server-side apply is atomic per object), and the
/// standby, once the Lease is free, completes the revision, inventory and
/// prune included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_lost_mid_apply_is_completed_by_the_next_leader() {
    use k8s_openapi::api::coordination::v1::Lease;
    use k8s_openapi::api::core::v1::ConfigMap;
    let cp = control_plane();
    let tmp = tempfile::tempdir().unwrap();
    let repo = Repo::new(tmp.path(), "platform");
    let ns = unique_namespace("lease-apply");
    let lease = unique_namespace("ferry-lease");
    let ns_yaml = format!("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {ns}\n");
    let first = repo.commit(
        &[
            ("manifests/ns.yaml", Some(&ns_yaml)),
            ("manifests/a.yaml", Some(&configmaps("a", 0..20, 10))),
        ],
        "first",
    );
    let daemon = git_daemon(tmp.path(), free_port());
    let config = |who: &str, port: u16| {
        let path = tmp.path().join(format!("{who}.yaml"));
        std::fs::write(
            &path,
            format!(
                "cache_dir: {cache}\nserver:\n  listen: 127.0.0.1:{port}\n\
                 sources:\n  - name: platform\n    url: git://127.0.0.1:{dp}/platform.git\n    interval: 1s\n    max_backoff: 1s\n\
                 targets:\n  kubernetes:\n    source: platform\n    default_namespace: {ns}\n    allowed_namespaces: [{ns}]\n    \
                 health_timeout: 0s\n    kubeconfig: {kc}\n\
                 leader_election:\n  namespace: default\n  lease_name: {lease}\n  lease_duration: 3s\n  identity: ferry-{who}\n  kubeconfig: {kc}\n",
                cache = tmp.path().join(who).join("cache").display(),
                dp = daemon.port,
                kc = cp.admin.display(),
            ),
        )
        .unwrap();
        path
    };
    let (pa, pb) = (free_port(), free_port());
    let applied = |port: u16, sha: &str| {
        let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        // The server restarts when a standby becomes the leader: a refused
        // connection then means "not yet".
        if std::net::TcpStream::connect(addr).is_err() {
            return false;
        }
        let (_, body) = http_get(addr, "/api/v1/status/platform");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        v["kubernetes"]["applied_revision"] == sha
    };
    let mut a = spawn_ferry(&config("a", pa), &tmp.path().join("a.log"), pa, &[]);
    tokio::task::block_in_place(|| {
        eventually(
            Duration::from_secs(30),
            "a applies the first revision",
            || applied(pa, &first).then_some(()),
        )
    });
    let b = spawn_ferry(&config("b", pb), &tmp.path().join("b.log"), pb, &[]);

    let second = repo.commit(
        &[
            ("manifests/a.yaml", Some(&configmaps("a", 5..20, 10))),
            ("manifests/b.yaml", Some(&configmaps("b", 0..1000, 2000))),
        ],
        "second",
    );
    let b_written = || {
        configmap_writes(&cp.audit_log, &ns)
            .into_iter()
            .filter(|(verb, name)| verb == "patch" && name.starts_with("b-"))
            .map(|(_, name)| name)
            .collect::<std::collections::BTreeSet<_>>()
            .len()
    };
    tokio::task::block_in_place(|| {
        eventually(Duration::from_secs(30), "a applying b-*", || {
            (b_written() >= 20).then_some(())
        })
    });
    // Someone else in the Lease (and never renewing it).
    let client = ferry::kubernetes::client::connect(Some(&cp.admin))
        .await
        .unwrap();
    let leases: kube::Api<Lease> = kube::Api::namespaced(client.clone(), "default");
    take_lease(&leases, &lease, "intruder").await;
    let exit = tokio::task::block_in_place(|| {
        eventually(Duration::from_secs(10), "a exits", || a.try_wait().unwrap())
    });
    let at_exit = b_written();
    assert_eq!(exit.code(), Some(1));
    assert!(
        at_exit < 1000,
        "a finished the apply ({at_exit} of 1000) before it noticed"
    );
    let log = std::fs::read_to_string(tmp.path().join("a.log")).unwrap();
    assert!(
        log.contains("lost the leader Lease") && log.contains("intruder"),
        "{log}"
    );
    // Nothing more from a: once the requests it had in flight (up to the
    // apply concurrency) are answered, the count stays while nobody holds
    // the Lease.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let settled = b_written();
    assert!(settled <= at_exit + 16, "{settled} after {at_exit}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(b_written(), settled, "writes after the holder exited");

    tokio::task::block_in_place(|| {
        eventually(
            Duration::from_secs(40),
            "b completes the second revision",
            || applied(pb, &second).then_some(()),
        )
    });
    let names: std::collections::BTreeSet<String> = kube::Api::<ConfigMap>::namespaced(client, &ns)
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter_map(|c| c.metadata.name)
        .collect();
    for i in 0..1000 {
        assert!(names.contains(&format!("b-{i:03}")), "b-{i:03} missing");
    }
    for i in 0..20 {
        assert_eq!(names.contains(&format!("a-{i:03}")), i >= 5, "a-{i:03}");
    }
    let inventory = ferry::kubernetes::inventory::name(
        "platform",
        &format!(
            "git://127.0.0.1:{}/platform.git#main:manifests",
            daemon.port
        ),
    );
    assert!(names.contains(&inventory), "{names:?}");
    eprintln!("lease taken after {at_exit} of 1000 objects; the standby completed the revision");
    stop_ferry(b);
}

/// An aggregated API whose server is down (metrics.k8s.io while
/// metrics-server restarts: the API server lists the group and answers 503
/// for it) holds back only what uses it. Before, discovery failed as a
/// whole and ferry applied nothing at all until the APIService recovered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unavailable_aggregated_api_holds_back_only_what_uses_it() {
    use ferry::kubernetes::inventory::{self, Entry};
    use ferry::kubernetes::plan::{self, Depth};
    use k8s_openapi::api::core::v1::{ConfigMap, Service};
    use k8s_openapi::kube_aggregator::pkg::apis::apiregistration::v1::APIService;
    use kube::api::{Api, Patch, PatchParams};

    let cp = PrivateControlPlane::start(false);
    let client = ferry::kubernetes::client::connect(Some(&cp.admin()))
        .await
        .unwrap();
    let setup = PatchParams::apply("test-setup");
    // metrics-server's APIService, with a Service no pod backs.
    let service: Service = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "metrics-server", "namespace": "kube-system"},
        "spec": {"selector": {"k8s-app": "metrics-server"}, "ports": [{"port": 443, "targetPort": 10250}]},
    }))
    .unwrap();
    Api::<Service>::namespaced(client.clone(), "kube-system")
        .patch("metrics-server", &setup, &Patch::Apply(&service))
        .await
        .unwrap();
    let apiservice: APIService = serde_json::from_value(serde_json::json!({
        "apiVersion": "apiregistration.k8s.io/v1", "kind": "APIService",
        "metadata": {"name": "v1beta1.metrics.k8s.io"},
        "spec": {
            "group": "metrics.k8s.io", "version": "v1beta1",
            "service": {"name": "metrics-server", "namespace": "kube-system", "port": 443},
            "insecureSkipTLSVerify": true, "groupPriorityMinimum": 100, "versionPriority": 100,
        },
    }))
    .unwrap();
    Api::<APIService>::all(client.clone())
        .patch("v1beta1.metrics.k8s.io", &setup, &Patch::Apply(&apiservice))
        .await
        .unwrap();
    // The API server marks it unavailable (no endpoints) and answers 503
    // for the group from then on.
    let apiservices: Api<APIService> = Api::all(client.clone());
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let service = apiservices.get("v1beta1.metrics.k8s.io").await.unwrap();
        let down = service
            .status
            .and_then(|s| s.conditions)
            .unwrap_or_default()
            .iter()
            .any(|c| c.type_ == "Available" && c.status == "False");
        if down {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the APIService never became unavailable"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // A revision that uses nothing of it applies.
    let tmp = tempfile::tempdir().unwrap();
    let repo = Repo::new(tmp.path(), "platform");
    let ns = "aggregated";
    let config = kube_target(ns, false);
    let first = repo.commit(
        &[
            (
                "manifests/ns.yaml",
                Some(&format!(
                    "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {ns}\n"
                )),
            ),
            ("manifests/a.yaml", Some(&configmaps("a", 0..3, 10))),
        ],
        "first",
    );
    let first = Oid::from_str(&first).unwrap();
    let mut last = None;
    gate_and_apply_ok(&client, &repo.bare, first, &config, &mut last).await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    assert!(cms.get_opt("a-000").await.unwrap().is_some());

    // One that declares an object of it waits, as a cluster error (retried,
    // never held against the commit), and says which group and why.
    let second = repo.commit(
        &[(
            "manifests/metrics.yaml",
            Some("apiVersion: metrics.k8s.io/v1beta1\nkind: NodeMetrics\nmetadata:\n  name: n1\n"),
        )],
        "second",
    );
    let second = Oid::from_str(&second).unwrap();
    let manifests = gate(&repo.bare, second, &config).unwrap();
    let err = plan::plan(
        &client,
        "platform",
        &second.to_string(),
        &config,
        &manifests,
        last.as_ref(),
        Depth::Apply,
    )
    .await
    .expect_err("a revision using an unavailable group is not planned");
    let message = ferry::kubernetes::client::describe(&err);
    assert!(
        message.contains("`metrics.k8s.io`") && message.contains("503"),
        "{message}"
    );

    // An inventory entry of it is not taken for pruned: the plan waits and
    // the inventory keeps listing it.
    let metrics_entry: Entry = serde_json::from_value(serde_json::json!({
        "api_version": "metrics.k8s.io/v1beta1", "group": "metrics.k8s.io",
        "kind": "NodeMetrics", "namespace": null, "name": "n0",
    }))
    .unwrap();
    let mut entries = inventory::load(&client, ns, "platform", &config.owner)
        .await
        .unwrap();
    entries.push(metrics_entry.clone());
    inventory::save(
        &client,
        ns,
        "platform",
        &config.owner,
        &first.to_string(),
        &entries,
    )
    .await
    .unwrap();
    let manifests = gate(&repo.bare, first, &config).unwrap();
    let err = plan::plan(
        &client,
        "platform",
        &first.to_string(),
        &config,
        &manifests,
        None,
        Depth::Apply,
    )
    .await
    .expect_err("pruning an unavailable group's object waits");
    let message = ferry::kubernetes::client::describe(&err);
    assert!(message.contains("`metrics.k8s.io`"), "{message}");
    let kept = inventory::load(&client, ns, "platform", &config.owner)
        .await
        .unwrap();
    assert!(kept.iter().any(|e| e.id == metrics_entry.id), "{kept:?}");
    assert!(cms.get_opt("a-000").await.unwrap().is_some());
}

/// An API server that answers 503 (with `Retry-After: 1`, as a kube-apiserver
/// shedding load does) to its first `busy` requests and `/version` after
/// that; counts the requests.
fn busy_apiserver(busy: usize) -> (u16, Arc<AtomicUsize>) {
    use std::io::{BufRead, BufReader, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = Arc::new(AtomicUsize::new(0));
    let count = seen.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            // One request per connection is all the test needs; read its head.
            let mut line = String::new();
            while reader.read_line(&mut line).is_ok_and(|n| n > 0) && line != "\r\n" {
                line.clear();
            }
            let n = count.fetch_add(1, Ordering::SeqCst);
            let response = if n < busy {
                let body = r#"{"kind":"Status","apiVersion":"v1","status":"Failure","message":"the server is currently unable to handle the request","reason":"ServiceUnavailable","code":503}"#;
                format!(
                    "HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                )
            } else {
                let body = r#"{"major":"1","minor":"37","gitVersion":"v1.37.0","gitCommit":"","gitTreeState":"","buildDate":"","goVersion":"","compiler":"","platform":""}"#;
                format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                )
            };
            let _ = stream.write_all(response.as_bytes());
        }
    });
    (port, seen)
}

fn plain_kubeconfig(dir: &Path, port: u16) -> PathBuf {
    let path = dir.join("kubeconfig");
    std::fs::write(
        &path,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster: {{server: \"http://127.0.0.1:{port}\"}}\n\
             users:\n- name: u\n  user: {{}}\ncontexts:\n- name: x\n  context: {{cluster: c, user: u}}\ncurrent-context: x\n"
        ),
    )
    .unwrap();
    path
}

/// A busy API server holds a request for seconds, not minutes: a few tries
/// (honouring `Retry-After`), then the error goes to ferry's own backoff;
/// a server that recovers within them answers the request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_apiserver_is_tried_a_few_times_within_seconds_then_reported() {
    let tmp = tempfile::tempdir().unwrap();
    let (port, seen) = busy_apiserver(usize::MAX);
    let client = ferry::kubernetes::client::connect(Some(&plain_kubeconfig(tmp.path(), port)))
        .await
        .unwrap();
    let started = Instant::now();
    let err = client.apiserver_version().await.unwrap_err();
    let took = started.elapsed();
    assert_eq!(
        seen.load(Ordering::SeqCst),
        1 + ferry::kubernetes::client::RETRIES as usize,
        "{err}"
    );
    // Retry-After: 1 before each try again, and no more.
    assert!(
        took >= Duration::from_secs(ferry::kubernetes::client::RETRIES as u64)
            && took < Duration::from_secs(15),
        "{took:?}"
    );
    assert!(
        ferry::kubernetes::client::describe(&err).contains("503"),
        "{err}"
    );

    let (port, seen) = busy_apiserver(2);
    let dir = tmp.path().join("recovers");
    std::fs::create_dir_all(&dir).unwrap();
    let client = ferry::kubernetes::client::connect(Some(&plain_kubeconfig(&dir, port)))
        .await
        .unwrap();
    let version = client.apiserver_version().await.unwrap();
    assert_eq!(version.git_version, "v1.37.0");
    assert_eq!(seen.load(Ordering::SeqCst), 3);
}
