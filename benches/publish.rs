//! ferry's publishing benchmarks. Prints figures; asserts only that each
//! measured run did the work it is timed for.
//!
//!     cargo bench --bench publish            # all three
//!     cargo bench --bench publish -- reuse   # one of: reuse, latency, rss
//!
//! 1. reuse: 10,000-file (~40 MB) repo, one file changed per commit:
//!    ferry's publish (shared directories) vs `git worktree add` of the same
//!    commit (git-sync's method), side by side; on disk and on tmpfs.
//! 2. latency: trigger -> published over 100 commits, fetched from local
//!    smart HTTP (lighttpd + git-http-backend).
//! 3. rss: resident memory of an idle `ferry run` with two sources, and of
//!    one with deploy/'s own configuration (every target on: DAGs,
//!    Kubernetes, AWS, GitHub reporting and webhooks, leader election)
//!    against the test servers (`rss-deploy`).
//! 4. webhook: signed push webhook -> published, 100 pushes, `ferry run`
//!    fetching from local smart HTTP, reporting to the fake GitHub of the
//!    tests; also push -> `success` status received by that GitHub.
//! 5. oneshot: `ferry publish-dags` (a new process per run, as an init
//!    container is) for a one-file change of the 10,000-file repo, with the
//!    parse cache of earlier runs and with none (every file parsed), beside
//!    `git worktree add` of the same commit; then one such run under
//!    `strace -f`, its calls making entries under `--dest` against the
//!    publisher's own count.
//! 6. mutations: directory entries a one-file change makes (mkdir, write,
//!    link, symlink, rename, chmod: on EFS one round trip each), in repos
//!    of 1,000, 10,000 and 100,000 files (25 files per directory, the same
//!    number of directories per level), beside what a copy of the whole
//!    tree makes.

#[path = "../tests/it/support/mod.rs"]
mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use ferry::agent::Agent;
use ferry::config::{Config, DagsTargetConfig, RetentionConfig, ValidationConfig};
use ferry::dags::DagsTarget;
use ferry::metrics::Metrics;
use ferry::status::StatusStore;
use git2::Repository;
use support::*;

fn main() {
    let filter: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let wants = |name: &str| filter.is_empty() || filter.iter().any(|f| name.contains(f.as_str()));
    if wants("reuse") {
        let disk = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
        bench_reuse(disk.path(), "disk (target/tmp)");
        // Same publish onto tmpfs: separates ferry's own cost from the disk's.
        if let Ok(shm) = tempfile::tempdir_in("/dev/shm") {
            bench_reuse(shm.path(), "tmpfs (/dev/shm)");
        }
    }
    if wants("latency") {
        bench_latency();
    }
    if wants("rss") {
        bench_rss();
        bench_rss_deploy();
    }
    if wants("webhook") {
        bench_webhook();
    }
    if wants("oneshot") {
        bench_oneshot();
    }
    if wants("mutations") {
        bench_mutations();
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx]
}

type Files = BTreeMap<String, (Vec<u8>, i32)>;

const FILES: usize = 10_000;

/// A bare repo of [`FILES`] DAG files (~4 KiB of distinct text each, ~40 MB
/// in all) at `refs/heads/main`: (repo, its files, the commit, total bytes).
fn big_repo(bare: &Path) -> (Repository, Files, git2::Oid, usize) {
    let repo = Repository::init_bare(bare).unwrap();
    let mut files = Files::new();
    let mut total = 0usize;
    for i in 0..FILES {
        let mut body = format!("# file {i}\nVALUE = {i}\n");
        while body.len() < 4000 {
            body.push_str(&format!("# padding line {i} {}\n", body.len()));
        }
        total += body.len();
        files.insert(
            format!(
                "dags/team{:02}/pipeline{:03}/task_{i:05}.py",
                i % 25,
                i % 400
            ),
            (body.into_bytes(), 0o100644),
        );
    }
    let base = build_commit(&repo, &files, None, "refs/heads/main", "base");
    (repo, files, base, total)
}

/// `rounds` commits on top of `parent`, each changing one file (spread
/// over the repo).
fn one_file_commits(
    repo: &Repository,
    files: &mut Files,
    mut parent: git2::Oid,
    rounds: usize,
) -> Vec<git2::Oid> {
    let mut commits = Vec::new();
    for round in 0..rounds {
        let key = files.keys().nth((round * 631) % FILES).unwrap().clone();
        files
            .get_mut(&key)
            .unwrap()
            .0
            .extend_from_slice(format!("CHANGED = {round}\n").as_bytes());
        parent = build_commit(repo, files, Some(parent), "refs/heads/main", "one change");
        commits.push(parent);
    }
    commits
}

/// The DAGs target of `dags/` into `dest`, pruning in the background as
/// the agent's does. Retention defaults (keep 5, 1 h): in production
/// pruning is rare and off the critical path; its cost is measured apart.
fn agent_dags_target(dest: &Path) -> DagsTarget {
    let mut dags = DagsTarget::open(DagsTargetConfig {
        source: "dags".into(),
        subdir: "dags".into(),
        destination: dest.to_path_buf(),
        link: "current".into(),
        retention: RetentionConfig::default(),
        validation: ValidationConfig::default(),
        airflow: None,
    })
    .unwrap();
    dags.set_background_prune(true);
    dags
}

fn bench_reuse(dest_root: &Path, label: &str) {
    const ROUNDS: usize = 15;
    let tmp = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let bare = tmp.path().join("big.git");
    let (repo, mut files, base, total) = big_repo(&bare);
    let commits = one_file_commits(&repo, &mut files, base, ROUNDS);

    let dest = dest_root.join("dest");
    let mut dags = agent_dags_target(&dest);
    let cancel = AtomicBool::new(false);
    let first_started = Instant::now();
    dags.sync(&repo, base, &cancel).unwrap();
    let first = first_started.elapsed();

    let mut ferry_times = Vec::new();
    let mut written = 0;
    let mut linked = 0;
    let mut shared = 0;
    let mut mutations = Vec::new();
    for oid in &commits {
        let started = Instant::now();
        let outcome = dags.sync(&repo, *oid, &cancel).unwrap();
        ferry_times.push(started.elapsed());
        // A timed run that published nothing would flatter the figure.
        assert!(outcome.published, "{oid} was not published");
        let s = outcome.stats;
        assert_eq!(s.files_written, 1, "{oid}: one file written: {s:?}");
        assert_eq!(
            s.files_written + s.files_linked + s.files_shared,
            FILES,
            "{oid}: every other file reused: {s:?}"
        );
        assert_eq!(dags.live_commit(), Some(*oid));
        written += s.files_written;
        linked += s.files_linked;
        shared += s.files_shared;
        mutations.push(s.mutations);
    }

    // Cost of retiring one 10,000-file revision (runs after the swap).
    let pruner = ferry::dags::Publisher::open(
        &dest,
        "current",
        RetentionConfig {
            keep: 1,
            max_age: Duration::ZERO,
            ..RetentionConfig::default()
        },
    )
    .unwrap();
    let before = pruner.revisions().len();
    let started = Instant::now();
    let removed = pruner
        .prune(std::time::SystemTime::now(), &Default::default())
        .unwrap()
        .remove;
    let prune_time = started.elapsed();

    // git-sync's repository is a packed clone: pack this one the same way,
    // so the worktree reads objects as git-sync's would.
    run(git(tmp.path())
        .arg("-C")
        .arg(&bare)
        .args(["repack", "-a", "-d", "-q"]));
    run(git(tmp.path()).arg("-C").arg(&bare).args(["prune-packed"]));
    let mut worktree_times = Vec::new();
    for (n, oid) in commits.iter().enumerate() {
        let wt = dest_root.join(format!("wt{n}"));
        worktree_times.push(timed_worktree(&bare, &wt, &oid.to_string(), |wt| {
            let checked_out = count_files(&wt.join("dags"));
            assert_eq!(
                checked_out, FILES,
                "worktree {n} checked out {checked_out} files"
            );
        }));
    }
    ferry_times.sort();
    worktree_times.sort();
    let ferry_p50 = percentile(&ferry_times, 0.5);
    let wt_p50 = percentile(&worktree_times, 0.5);
    println!(
        "== reuse: {FILES} files, {:.1} MB, one file changed per commit; destination on {label}",
        total as f64 / 1e6
    );
    println!(
        "   ferry first publish (all files written):   {:8.1} ms",
        ms(first)
    );
    println!(
        "   ferry publish, 1 file changed ({:2} runs):  p50 {:6.1} ms   p95 {:6.1} ms   max {:6.1} ms   ({} written, {} hardlinked, {} in shared directories)",
        ferry_times.len(),
        ms(ferry_p50),
        ms(percentile(&ferry_times, 0.95)),
        ms(*ferry_times.last().unwrap()),
        written,
        linked,
        shared
    );
    mutations.sort();
    println!(
        "   directory entries made per publish: min {} max {} (the changed file's 3 directories, rebuilt; before shared directories: ~{})",
        mutations[0],
        mutations[mutations.len() - 1],
        FILES + 425
    );
    println!(
        "   prune (off the critical path): {} of {before} revisions removed in {:6.1} ms ({:.1} ms each)",
        removed.len(),
        ms(prune_time),
        ms(prune_time) / removed.len().max(1) as f64
    );
    println!(
        "   git worktree add (git-sync), packed repo, {} runs: p50 {:6.1} ms   min {:6.1} ms",
        worktree_times.len(),
        ms(wt_p50),
        ms(worktree_times[0])
    );
    println!(
        "   speed-up: median vs median {:.1}x, best vs best {:.1}x   [target: <= 50 ms and >= 20x]",
        wt_p50.as_secs_f64() / ferry_p50.as_secs_f64(),
        worktree_times[0].as_secs_f64() / ferry_times[0].as_secs_f64()
    );
}

/// User + system CPU of the children waited for so far.
fn children_cpu() -> Duration {
    // SAFETY: getrusage only writes the struct it is given.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

fn bench_oneshot() {
    const ROUNDS: usize = 7;
    let tmp = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let bare = tmp.path().join("big.git");
    let (repo, mut files, base, _) = big_repo(&bare);
    let cache = tmp.path().join("cache");
    let dest = tmp.path().join("dest");
    let publish = |commit: git2::Oid| -> (Duration, Duration, String) {
        let cpu = children_cpu();
        let started = Instant::now();
        let (_, stderr) = publish_dags(None, &bare, &dest, &cache, commit);
        (started.elapsed(), children_cpu() - cpu, stderr)
    };
    publish(base);

    let mut runs: Vec<(&str, Vec<Duration>, Vec<Duration>)> = Vec::new();
    for (label, warm) in [("warm parse cache", true), ("no parse cache", false)] {
        let (mut wall, mut cpu) = (Vec::new(), Vec::new());
        // One commit at a time: publish-dags publishes the branch head.
        for _ in 0..ROUNDS {
            let head = repo.refname_to_id("refs/heads/main").unwrap();
            let commit = one_file_commits(&repo, &mut files, head, 1)[0];
            if !warm {
                for file in verdict_files(&cache) {
                    std::fs::remove_file(file).unwrap();
                }
            }
            let (took, used, stderr) = publish(commit);
            let want = if warm {
                format!("1 of {FILES} Python files parsed")
            } else {
                format!("{FILES} of {FILES} Python files parsed")
            };
            assert!(stderr.contains(&want), "{label}: {stderr}");
            wall.push(took);
            cpu.push(used);
        }
        wall.sort();
        cpu.sort();
        runs.push((label, wall, cpu));
    }
    // The anchor: checking out the same kind of commit, as git-sync does.
    run(git(tmp.path())
        .arg("-C")
        .arg(&bare)
        .args(["repack", "-a", "-d", "-q"]));
    let mut worktree = Vec::new();
    for n in 0..ROUNDS {
        let head = repo.refname_to_id("refs/heads/main").unwrap();
        let commit = one_file_commits(&repo, &mut files, head, 1)[0];
        let wt = tmp.path().join(format!("wt{n}"));
        worktree.push(timed_worktree(&bare, &wt, &commit.to_string(), |_| {}));
    }
    worktree.sort();
    println!(
        "== oneshot: `ferry publish-dags`, {FILES}-file repo, one file changed per run ({ROUNDS} runs each)"
    );
    for (label, wall, cpu) in &runs {
        println!(
            "   ferry, {label:17}  wall p50 {:7.1} ms  min {:7.1} ms   CPU p50 {:7.1} ms",
            ms(percentile(wall, 0.5)),
            ms(wall[0]),
            ms(percentile(cpu, 0.5))
        );
    }
    println!(
        "   git worktree add (git-sync), packed  wall p50 {:7.1} ms  min {:7.1} ms   [target: ferry warm <= 150 ms]",
        ms(percentile(&worktree, 0.5)),
        ms(worktree[0])
    );
    strace_cross_check(&repo, &mut files, &bare, &cache, &tmp.path().join("traced"));
}

/// Runs `ferry publish-dags` for `commit` (under `wrapper`, a command and
/// its arguments, when given); returns its stdout and stderr.
fn publish_dags(
    wrapper: Option<&[&str]>,
    bare: &Path,
    dest: &Path,
    cache: &Path,
    commit: git2::Oid,
) -> (String, String) {
    let ferry = env!("CARGO_BIN_EXE_ferry");
    let mut cmd = match wrapper {
        Some([program, args @ ..]) => {
            let mut cmd = std::process::Command::new(program);
            cmd.args(args).arg(ferry);
            cmd
        }
        _ => std::process::Command::new(ferry),
    };
    let out = cmd
        .args(["publish-dags", "--subdir", "dags", "--repo"])
        .arg(bare)
        .arg("--dest")
        .arg(dest)
        .arg("--cache-dir")
        .arg(cache)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    // A run that published something else would flatter the figure.
    assert!(
        out.status.success() && stdout.contains(&format!("published {commit}")),
        "{stdout}{stderr}"
    );
    (stdout, stderr)
}

/// The publisher's own count of directory entries against what the kernel
/// was asked to do under `--dest`, by `strace -f` of one `publish-dags`
/// publishing a one-file change beside one earlier revision (so that no
/// retention pass removes anything in the same run).
fn strace_cross_check(
    repo: &Repository,
    files: &mut Files,
    bare: &Path,
    cache: &Path,
    dest: &Path,
) {
    const CALLS: &str = "mkdir,mkdirat,link,linkat,symlink,symlinkat,rename,renameat,renameat2,chmod,fchmodat,open,openat,creat,unlink,unlinkat,rmdir";
    if std::process::Command::new("strace")
        .arg("-V")
        .output()
        .is_err()
    {
        println!("   (strace is not installed: no cross-check)");
        return;
    }
    let head = repo.refname_to_id("refs/heads/main").unwrap();
    publish_dags(None, bare, dest, cache, head);
    let commit = one_file_commits(repo, files, head, 1)[0];
    let trace = dest.with_extension("strace");
    let trace_arg = trace.to_str().unwrap();
    let wrapper = ["strace", "-f", "-qq", "-z", "-e", CALLS, "-o", trace_arg];
    let (stdout, _) = publish_dags(Some(&wrapper), bare, dest, cache, commit);
    let counted: usize = stdout
        .rsplit_once(" reused, ")
        .and_then(|(_, rest)| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .expect("publish-dags prints the entries it made");
    let dest_str = dest.to_str().unwrap();
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for line in std::fs::read_to_string(&trace).unwrap().lines() {
        // `PID call(args) = 0`: an open counts only when it creates.
        let Some((call, args)) = line.split_once(' ').and_then(|(_, l)| l.split_once('(')) else {
            continue;
        };
        let call = call.trim();
        let creates = !call.starts_with("open") || args.contains("O_CREAT");
        if args.contains(dest_str) && creates {
            *seen.entry(call.to_string()).or_default() += 1;
        }
    }
    let total: usize = seen.values().sum();
    let each: Vec<String> = seen.iter().map(|(c, n)| format!("{c} {n}")).collect();
    println!(
        "   cross-check, one publish-dags of a one-file change: ferry counted {counted} directory entries; strace -f saw {total} successful calls making them under --dest ({})",
        each.join(", ")
    );
}

fn count_files(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let path = e.unwrap().path();
            if path.is_dir() { count_files(&path) } else { 1 }
        })
        .sum()
}

fn bench_latency() {
    const COMMITS: usize = 100;
    let tmp = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let served = Repo::new(tmp.path(), "dags");
    served.commit(&[("dags/a.py", Some("a = 0\n"))], "first");
    let http = smart_http(tmp.path(), "ferry", "bench-password");
    std::fs::write(tmp.path().join("pw"), "bench-password").unwrap();
    let text = format!(
        "cache_dir: {cache}\nsources:\n  - name: dags\n    url: http://127.0.0.1:{port}/git/dags.git\n    interval: 1h\n    \
         auth:\n      username: ferry\n      password_file: {pw}\n\
         targets:\n  dags:\n    source: dags\n    subdir: dags\n    destination: {dest}\n",
        cache = tmp.path().join("cache").display(),
        port = http.port,
        pw = tmp.path().join("pw").display(),
        dest = tmp.path().join("dest").display()
    );
    let config = Config::parse(&text, Path::new("bench.yaml")).unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let status = StatusStore::default();
    let agent = runtime
        .block_on(async { Agent::new(&config, status.clone(), Metrics::new(), None) })
        .unwrap();
    let trigger = agent.triggers().remove("dags").unwrap();
    let (tx, rx) = tokio::sync::watch::channel(false);
    let handle = runtime.spawn(agent.run(rx));
    eventually(Duration::from_secs(30), "first publish", || {
        status.get("dags").and_then(|s| s.published_revision)
    });

    let repo = Repository::open_bare(&served.bare).unwrap();
    let mut files = Files::new();
    for i in 0..50 {
        files.insert(
            format!("dags/m{i:02}.py"),
            (format!("M = {i}\n").into_bytes(), 0o100644),
        );
    }
    let mut parent = repo.refname_to_id("refs/heads/main").ok();
    let mut latencies = Vec::new();
    for n in 0..COMMITS {
        files.insert(
            "dags/a.py".into(),
            (format!("a = {n}\n").into_bytes(), 0o100644),
        );
        let oid = build_commit(&repo, &files, parent, "refs/heads/main", "bench");
        parent = Some(oid);
        let sha = oid.to_string();
        let started = Instant::now();
        trigger.poke();
        loop {
            if status
                .get("dags")
                .and_then(|s| s.published_revision)
                .as_deref()
                == Some(sha.as_str())
            {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "commit {n} never published"
            );
            std::thread::sleep(Duration::from_micros(500));
        }
        latencies.push(started.elapsed());
    }
    let _ = tx.send(true);
    runtime.block_on(handle).unwrap();
    latencies.sort();
    println!(
        "== latency: trigger -> published, {COMMITS} commits over local smart HTTP (basic auth)"
    );
    println!(
        "   p50 {:6.1} ms   p95 {:6.1} ms   max {:6.1} ms   [target: p95 <= 1000 ms]",
        ms(percentile(&latencies, 0.5)),
        ms(percentile(&latencies, 0.95)),
        ms(*latencies.last().unwrap())
    );
}

fn bench_rss() {
    let tmp = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let dags = Repo::new(tmp.path(), "dags");
    dags.commit(&[("dags/a.py", Some("a = 1\n"))], "first");
    let platform = Repo::new(tmp.path(), "platform");
    platform.commit(
        &[(
            "manifests/ns.yaml",
            Some("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: x\n"),
        )],
        "first",
    );
    let daemon = git_daemon(tmp.path(), free_port());
    let port = free_port();
    let config = tmp.path().join("ferry.yaml");
    std::fs::write(
        &config,
        format!(
            "cache_dir: {cache}\nserver:\n  listen: 127.0.0.1:{port}\n\
             sources:\n  - name: dags\n    url: git://127.0.0.1:{dp}/dags.git\n    interval: 2s\n  \
             - name: platform\n    url: git://127.0.0.1:{dp}/platform.git\n    interval: 2s\n\
             targets:\n  dags:\n    source: dags\n    subdir: dags\n    destination: {dest}\n",
            cache = tmp.path().join("cache").display(),
            dp = daemon.port,
            dest = tmp.path().join("dest").display()
        ),
    )
    .unwrap();
    let child = spawn_ferry(&config, &tmp.path().join("ferry.log"), port, &[]);
    let addr = format!("127.0.0.1:{port}").parse().unwrap();
    eventually(Duration::from_secs(30), "ready", || {
        (http_get(addr, "/readyz").0 == 200).then_some(())
    });
    // Idle for several poll intervals, with scrapes, as in production.
    for _ in 0..5 {
        std::thread::sleep(Duration::from_secs(2));
        let _ = http_get(addr, "/metrics");
        let _ = http_get(addr, "/api/v1/status");
    }
    println!("== rss: idle `ferry run`, two sources polled every 2 s, 10 s idle with scrapes");
    println!(
        "   VmRSS {:5.1} MiB   VmHWM (peak) {:5.1} MiB   [target: <= 40 MiB]",
        proc_mib(child.id(), "VmRSS:"),
        proc_mib(child.id(), "VmHWM:")
    );
    stop_ferry(child);
}

fn bench_webhook() {
    const PUSHES: usize = 100;
    let secret = "bench-webhook-secret";
    let tmp = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let served = Repo::new(tmp.path(), "dags");
    served.commit(&[("dags/a.py", Some("a = 0\n"))], "first");
    let http = smart_http(tmp.path(), "ferry", "bench-password");
    std::fs::write(tmp.path().join("pw"), "bench-password").unwrap();
    std::fs::write(tmp.path().join("secret"), secret).unwrap();
    std::fs::write(tmp.path().join("token"), "bench-token").unwrap();
    let github = support::github::FakeGithub::start(support::github::FakeState {
        token: Some("bench-token".into()),
        repos: ["acme/dags".to_string()].into(),
        ..Default::default()
    });
    let port = free_port();
    let config = tmp.path().join("ferry.yaml");
    std::fs::write(
        &config,
        format!(
            "cache_dir: {cache}\nserver:\n  listen: 127.0.0.1:{port}\ngithub:\n  webhook_secret_file: {secret_file}\n  token_file: {token}\n  api_url: {api}\n\
             sources:\n  - name: dags\n    url: http://127.0.0.1:{hp}/git/dags.git\n    github_repo: acme/dags\n    interval: 1h\n    \
             auth:\n      username: ferry\n      password_file: {pw}\n\
             targets:\n  dags:\n    source: dags\n    subdir: dags\n    destination: {dest}\n",
            cache = tmp.path().join("cache").display(),
            secret_file = tmp.path().join("secret").display(),
            token = tmp.path().join("token").display(),
            api = github.url(),
            hp = http.port,
            pw = tmp.path().join("pw").display(),
            dest = tmp.path().join("dest").display()
        ),
    )
    .unwrap();
    let ferry = spawn_ferry(&config, &tmp.path().join("ferry.log"), port, &[]);
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let published = || {
        let (_, body) = http_get(addr, "/api/v1/status/dags");
        serde_json::from_str::<serde_json::Value>(&body).ok()?["published_revision"]
            .as_str()
            .map(str::to_string)
    };
    eventually(Duration::from_secs(30), "first publish", &published);
    let repo = Repository::open_bare(&served.bare).unwrap();
    let mut files = Files::new();
    let mut parent = repo.refname_to_id("refs/heads/main").ok();
    let mut latencies = Vec::new();
    let mut reported = Vec::new();
    for n in 0..PUSHES {
        files.insert(
            "dags/a.py".into(),
            (format!("a = {n}\n").into_bytes(), 0o100644),
        );
        let oid = build_commit(&repo, &files, parent, "refs/heads/main", "bench");
        parent = Some(oid);
        let sha = oid.to_string();
        let body = serde_json::to_vec(&serde_json::json!({"ref": "refs/heads/main", "after": sha, "repository": {"full_name": "acme/dags"}})).unwrap();
        let signature = ferry::webhook::sign(secret.as_bytes(), &body);
        let delivery = format!("bench-{n}");
        let started = Instant::now();
        let (code, _) = http_post(
            addr,
            "/webhooks/github",
            &[
                ("X-GitHub-Event", "push"),
                ("X-GitHub-Delivery", &delivery),
                ("X-Hub-Signature-256", &signature),
            ],
            &body,
        );
        assert_eq!(code, 200);
        while published().as_deref() != Some(sha.as_str()) {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "push {n} never published"
            );
            std::thread::sleep(Duration::from_millis(2));
        }
        latencies.push(started.elapsed());
        while github.states(&sha, "ferry/dags").last().map(String::as_str) != Some("success") {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "push {n} never reported"
            );
            std::thread::sleep(Duration::from_millis(2));
        }
        reported.push(started.elapsed());
    }
    stop_ferry(ferry);
    github.assert_nothing_rejected();
    latencies.sort();
    reported.sort();
    println!(
        "== webhook: signed push -> DAGs published, {PUSHES} pushes, `ferry run` over local smart HTTP (basic auth)"
    );
    println!(
        "   p50 {:6.1} ms   p95 {:6.1} ms   max {:6.1} ms   [target: p95 <= 1000 ms]",
        ms(percentile(&latencies, 0.5)),
        ms(percentile(&latencies, 0.95)),
        ms(*latencies.last().unwrap())
    );
    println!(
        "   push -> `success` status at GitHub: p50 {:6.1} ms   p95 {:6.1} ms   max {:6.1} ms",
        ms(percentile(&reported, 0.5)),
        ms(percentile(&reported, 0.95)),
        ms(*reported.last().unwrap())
    );
}

/// deploy/base's ferry.yaml, with only what points outside this machine
/// replaced: sources, GitHub, the cluster, AWS and paths.
fn bench_rss_deploy() {
    let cp = control_plane();
    let moto = support::moto::moto();
    let tmp = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let dags = Repo::new(tmp.path(), "ml-dags");
    dags.commit(&[("dags/a.py", Some("a = 1\n"))], "first");
    let platform = Repo::new(tmp.path(), "ml-platform");
    let ns = unique_namespace("airflow");
    platform.commit(
        &[
            (
                "manifests/ns.yaml",
                Some(&format!("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {ns}\n")),
            ),
            (
                "manifests/cm.yaml",
                Some("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: settings\ndata:\n  k: v\n"),
            ),
            (
                "platform.yaml",
                Some("apiVersion: ferry.dev/v1alpha1\nkind: Platform\nsagemaker:\n  endpoints:\n    - name: diagnosis\n      execution_role_arn: arn:aws:iam::123456789012:role/sagemaker-exec\n      variants:\n        - name: primary\n          model_name: diagnosis\n          image: 123456789012.dkr.ecr.eu-west-1.amazonaws.com/diagnosis:1\n          model_data: s3://ml-models/diagnosis/1/model.tar.gz\n          instance_type: ml.m5.large\n"),
            ),
        ],
        "first",
    );
    let daemon = git_daemon(tmp.path(), free_port());
    let github = support::github::FakeGithub::start(support::github::FakeState {
        token: Some("bench-token-0123456789".into()),
        repos: ["acme/ml-dags".to_string(), "acme/ml-platform".to_string()].into(),
        ..Default::default()
    });
    std::fs::write(tmp.path().join("token"), "bench-token-0123456789").unwrap();
    std::fs::write(tmp.path().join("webhook-secret"), "bench-webhook-secret").unwrap();

    let manifest: serde_yaml_ng::Value = serde_yaml_ng::from_str(
        &std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/base/config.yaml"),
        )
        .unwrap(),
    )
    .unwrap();
    let mut config: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(manifest["data"]["ferry.yaml"].as_str().unwrap()).unwrap();
    let port = free_port();
    let set = |v: &mut serde_yaml_ng::Value, path: &[&str], value: serde_yaml_ng::Value| {
        let mut at = v;
        for key in &path[..path.len() - 1] {
            at = at
                .get_mut(*key)
                .unwrap_or_else(|| panic!("deploy config has no {key}"));
        }
        at[path[path.len() - 1]] = value;
    };
    let path = |p: &Path| serde_yaml_ng::Value::from(p.display().to_string());
    set(&mut config, &["cache_dir"], path(&tmp.path().join("cache")));
    set(
        &mut config,
        &["server", "listen"],
        format!("127.0.0.1:{port}").into(),
    );
    set(&mut config, &["log", "format"], "text".into());
    std::fs::write(tmp.path().join("admin-token"), "bench-admin-token").unwrap();
    set(
        &mut config,
        &["server", "admin", "listen"],
        format!("127.0.0.1:{}", free_port()).into(),
    );
    set(
        &mut config,
        &["server", "admin", "token_file"],
        path(&tmp.path().join("admin-token")),
    );
    // Nothing answers there: retention keeps by age and says so.
    std::fs::write(tmp.path().join("airflow-password"), "bench-airflow").unwrap();
    set(
        &mut config,
        &["targets", "dags", "airflow", "password_file"],
        path(&tmp.path().join("airflow-password")),
    );
    for (i, name) in ["ml-dags", "ml-platform"].into_iter().enumerate() {
        let source = &mut config["sources"][i];
        source["url"] = format!("git://127.0.0.1:{}/{name}.git", daemon.port).into();
        source["github_repo"] = format!("acme/{name}").into();
        if let Some(map) = source.as_mapping_mut() {
            map.remove("auth");
        }
    }
    set(&mut config, &["github", "api_url"], github.url().into());
    set(
        &mut config,
        &["github", "token_file"],
        path(&tmp.path().join("token")),
    );
    set(
        &mut config,
        &["github", "webhook_secret_file"],
        path(&tmp.path().join("webhook-secret")),
    );
    set(
        &mut config,
        &["github", "state_file"],
        path(&tmp.path().join("cache/github-report.json")),
    );
    set(
        &mut config,
        &["targets", "dags", "destination"],
        path(&tmp.path().join("dest")),
    );
    set(
        &mut config,
        &["targets", "kubernetes", "kubeconfig"],
        path(&cp.admin),
    );
    set(
        &mut config,
        &["targets", "kubernetes", "allowed_namespaces"],
        vec![ns.clone()].into(),
    );
    set(
        &mut config,
        &["targets", "kubernetes", "default_namespace"],
        ns.clone().into(),
    );
    set(
        &mut config,
        &["targets", "kubernetes", "inventory_namespace"],
        ns.clone().into(),
    );
    set(
        &mut config,
        &["targets", "aws", "endpoint_url"],
        moto.url.clone().into(),
    );
    set(
        &mut config,
        &["leader_election", "namespace"],
        "default".into(),
    );
    set(
        &mut config,
        &["leader_election", "lease_name"],
        unique_namespace("ferry").into(),
    );
    set(
        &mut config,
        &["leader_election", "kubeconfig"],
        path(&cp.admin),
    );
    set(
        &mut config,
        &["leader_election", "identity"],
        "ferry-bench".into(),
    );
    let file = tmp.path().join("ferry.yaml");
    std::fs::write(&file, serde_yaml_ng::to_string(&config).unwrap()).unwrap();
    let testing = Path::new("testing");
    let child = spawn_ferry(
        &file,
        &tmp.path().join("ferry.log"),
        port,
        &[
            ("AWS_ACCESS_KEY_ID", testing),
            ("AWS_SECRET_ACCESS_KEY", testing),
        ],
    );
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    // Worked: both sources applied, the status reported.
    let status = |source: &str| -> serde_json::Value {
        serde_json::from_str(&http_get(addr, &format!("/api/v1/status/{source}")).1)
            .unwrap_or_default()
    };
    eventually(Duration::from_secs(60), "both sources synced", || {
        (status("dags")["published_revision"].is_string()
            && status("platform")["kubernetes"]["applied_revision"].is_string()
            && status("platform")["aws"]["applied_revision"].is_string())
        .then_some(())
    });
    for _ in 0..5 {
        std::thread::sleep(Duration::from_secs(2));
        let _ = http_get(addr, "/metrics");
        let _ = http_get(addr, "/api/v1/status");
    }
    println!(
        "== rss: `ferry run` with deploy/base's configuration (DAGs, Kubernetes, AWS, GitHub, Lease) after its first sync, 10 s idle with scrapes"
    );
    println!(
        "   VmRSS {:5.1} MiB   VmHWM (peak) {:5.1} MiB   [target: <= 40 MiB idle]",
        proc_mib(child.id(), "VmRSS:"),
        proc_mib(child.id(), "VmHWM:")
    );
    stop_ferry(child);
    github.assert_nothing_rejected();
}

fn bench_mutations() {
    println!("== mutations: directory entries one publish makes, a one-file change at depth 3");
    for total in [1_000usize, 10_000, 100_000] {
        let tmp = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
        let repo = Repository::init_bare(tmp.path().join("repo.git")).unwrap();
        // `dags/aNN/bNN/fNNNNN.py`: 25 files per leaf, as many directories
        // in `dags/` as in each of them.
        let leaves = total / 25;
        let fanout = (leaves as f64).sqrt().ceil() as usize;
        let mut files = Files::new();
        for i in 0..total {
            let leaf = i / 25;
            files.insert(
                format!(
                    "dags/a{:03}/b{:03}/f{i:06}.py",
                    leaf / fanout,
                    leaf % fanout
                ),
                (format!("VALUE = {i}\n").into_bytes(), 0o100644),
            );
        }
        let base = build_commit(&repo, &files, None, "refs/heads/main", "base");
        let dest = tmp.path().join("dest");
        let mut dags = agent_dags_target(&dest);
        let cancel = AtomicBool::new(false);
        dags.sync(&repo, base, &cancel).unwrap();
        let mut parent = base;
        let mut counts = Vec::new();
        let mut times = Vec::new();
        let mut publishes = Vec::new();
        for round in 0..7 {
            let key = files.keys().nth((round * 7919) % total).unwrap().clone();
            files
                .get_mut(&key)
                .unwrap()
                .0
                .extend_from_slice(format!("CHANGED = {round}\n").as_bytes());
            parent = build_commit(&repo, &files, Some(parent), "refs/heads/main", "one change");
            let started = Instant::now();
            let outcome = dags.sync(&repo, parent, &cancel).unwrap();
            times.push(started.elapsed());
            assert!(
                outcome.published && outcome.stats.files_written == 1,
                "{:?}",
                outcome.stats
            );
            counts.push(outcome.stats.mutations);
            // From the plan's start: stage and link swap (the tree walk and
            // the parse-cache lookups before them are in the whole sync).
            publishes.push(Duration::from_millis(outcome.duration_ms));
        }
        counts.sort();
        times.sort();
        publishes.sort();
        let dirs = 1 + fanout + leaves;
        println!(
            "   {total:>7} files ({dirs:>5} directories, {fanout} per level):  {:>3}-{:<3} entries per publish  (a whole copy: {:>6})   publish p50 {:4.0} ms   whole sync p50 {:6.1} ms",
            counts[0],
            counts[counts.len() - 1],
            total + dirs,
            ms(percentile(&publishes, 0.5)),
            ms(percentile(&times, 0.5))
        );
    }
}
