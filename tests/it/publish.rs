//! The DAG publisher's invariants, on a real filesystem.

use std::collections::{BTreeMap, HashMap};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use crate::support::*;
use ferry::config::{DagsTargetConfig, RetentionConfig, ValidationConfig, ValidationPolicy};
use ferry::dags::{DagsError, DagsTarget};
use git2::{Oid, Repository};

type Files = BTreeMap<String, (Vec<u8>, i32)>;

fn file(content: &str) -> (Vec<u8>, i32) {
    (content.as_bytes().to_vec(), 0o100644)
}

fn target(
    dest: &Path,
    subdir: &str,
    retention: RetentionConfig,
    validation: ValidationConfig,
) -> DagsTarget {
    DagsTarget::open(DagsTargetConfig {
        source: "dags".into(),
        subdir: subdir.into(),
        destination: dest.to_path_buf(),
        link: "current".into(),
        retention,
        validation,
        airflow: None,
    })
    .expect("open destination")
}

fn keep_all() -> RetentionConfig {
    RetentionConfig {
        keep: 1000,
        max_age: Duration::from_secs(3600),
        ..RetentionConfig::default()
    }
}

fn no_cancel() -> AtomicBool {
    AtomicBool::new(false)
}

fn live(dest: &Path) -> Option<String> {
    std::fs::read_link(dest.join("current"))
        .ok()
        .map(|t| t.file_name().unwrap().to_string_lossy().into_owned())
}

/// The files of a revision as they should appear (subdir stripped).
fn expected(files: &Files, subdir: &str) -> Vec<(String, String)> {
    let prefix = format!("{subdir}/");
    let mut out: Vec<(String, String)> = files
        .iter()
        .filter_map(|(p, (c, _))| {
            p.strip_prefix(&prefix)
                .map(|rel| (rel.to_string(), String::from_utf8_lossy(c).into_owned()))
        })
        .collect();
    out.sort();
    out
}

#[test]
fn concurrent_reader_never_sees_two_commits_or_a_missing_file() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = Repository::init_bare(tmp.path().join("repo.git")).unwrap();
    let dest = tmp.path().join("dest");
    let retention = RetentionConfig {
        keep: 2,
        max_age: Duration::from_secs(2),
        ..RetentionConfig::default()
    };
    let mut dags = target(&dest, "dags", retention, ValidationConfig::default());

    // Commit n: 30 files that change every time, 30 that never do, and a
    // file that exists only in even commits (so a missing file shows).
    let mut commits = Vec::new();
    let mut expectations: HashMap<String, Vec<(String, String)>> = HashMap::new();
    let mut parent = None;
    for n in 0..220 {
        let mut files = Files::new();
        for i in 0..30 {
            files.insert(
                format!("dags/changing/f{i:02}.py"),
                file(&format!("REV = {n}\nFILE = {i}\n")),
            );
            files.insert(
                format!("dags/static/s{i:02}.py"),
                file(&format!("STATIC = {i}\n")),
            );
        }
        if n % 2 == 0 {
            files.insert("dags/even.py".into(), file(&format!("EVEN = {n}\n")));
        }
        let oid = build_commit(
            &repo,
            &files,
            parent,
            "refs/heads/main",
            &format!("commit {n}"),
        );
        parent = Some(oid);
        expectations.insert(oid.to_string(), expected(&files, "dags"));
        commits.push(oid);
    }
    dags.sync(&repo, commits[0], &no_cancel()).unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let walks = Arc::new(AtomicUsize::new(0));
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let readers: Vec<_> = (0..2)
        .map(|_| {
            let (stop, walks, failures, dest) =
                (stop.clone(), walks.clone(), failures.clone(), dest.clone());
            let expectations = expectations.clone();
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    // Resolve the link once per walk, as pin_symlink_on_refresh does.
                    let target = std::fs::read_link(dest.join("current")).unwrap();
                    let sha = target.file_name().unwrap().to_string_lossy().into_owned();
                    let seen = read_tree(&dest.join(&target));
                    if seen != expectations[&sha] {
                        failures
                            .lock()
                            .unwrap()
                            .push(format!("revision {sha} read as {} files", seen.len()));
                    }
                    walks.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();

    let mut reused = 0;
    for oid in &commits[1..] {
        let outcome = dags.sync(&repo, *oid, &no_cancel()).unwrap();
        assert!(outcome.published);
        reused += outcome.stats.files_linked + outcome.stats.files_shared;
        // Only the directories on changed paths are made: the 30 static
        // files' directory is reused whole, nothing in it made again.
        assert!(
            outcome.stats.files_shared >= 30,
            "{oid}: {:?}",
            outcome.stats
        );
        // The root and `changing/` made (mkdir, chmod, rename each), the
        // root's two subdirectory links, the staged link; then the rename
        // into place, the new link and its rename, the superseded marker.
        assert_eq!(
            outcome.stats.mutations,
            outcome.stats.files_written + outcome.stats.files_linked + 2 * 3 + 2 + 1 + 4,
            "{oid}: {:?}",
            outcome.stats
        );
    }
    stop.store(true, Ordering::Relaxed);
    for r in readers {
        r.join().unwrap();
    }
    let failures = failures.lock().unwrap();
    assert!(
        failures.is_empty(),
        "{} bad walks, first: {}",
        failures.len(),
        failures[0]
    );
    assert!(
        walks.load(Ordering::Relaxed) > 50,
        "readers must actually have raced the publisher"
    );
    assert_eq!(
        live(&dest).as_deref(),
        Some(commits.last().unwrap().to_string().as_str())
    );
    // The 30 static files were reused every time, never rewritten.
    assert!(reused >= 30 * 219, "only {reused} files reused");
}

#[test]
fn unchanged_files_are_hardlinked_and_modes_kept() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = Repository::init_bare(tmp.path().join("repo.git")).unwrap();
    let dest = tmp.path().join("dest");
    let mut dags = target(&dest, "", keep_all(), ValidationConfig::default());
    let mut files = Files::new();
    files.insert("a.py".into(), file("a = 1\n"));
    files.insert("lib/b.py".into(), file("b = 1\n"));
    files.insert(
        "bin/run.sh".into(),
        (b"#!/bin/sh\necho hi\n".to_vec(), 0o100755),
    );
    let c1 = build_commit(&repo, &files, None, "refs/heads/main", "one");
    let first = dags.sync(&repo, c1, &no_cancel()).unwrap();
    assert_eq!(
        (first.stats.files_written, first.stats.files_linked),
        (3, 0)
    );

    files.insert("a.py".into(), file("a = 2\n"));
    let c2 = build_commit(&repo, &files, Some(c1), "refs/heads/main", "two");
    let second = dags.sync(&repo, c2, &no_cancel()).unwrap();
    // `lib/` and `bin/` are the same directories as before; only the root,
    // where `a.py` changed, is new.
    assert_eq!(
        (
            second.stats.files_written,
            second.stats.files_linked,
            second.stats.files_shared
        ),
        (1, 0, 2)
    );
    let r1 = dest.join(".ferry").join(c1.to_string());
    let r2 = dest.join(".ferry").join(c2.to_string());
    let ino = |p: PathBuf| std::fs::metadata(p).unwrap().ino();
    assert_eq!(ino(r1.join("lib/b.py")), ino(r2.join("lib/b.py")));
    assert_eq!(ino(r1.join("lib")), ino(r2.join("lib")));
    assert_ne!(ino(r1.join("a.py")), ino(r2.join("a.py")));
    // Shared, so sealed: nobody adds to a directory another revision has.
    let dir_mode = |p: PathBuf| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(dir_mode(r2.join("lib")), 0o555);
    assert_eq!(dir_mode(r2.clone()), 0o555);
    assert_eq!(
        std::fs::read_to_string(r1.join("a.py")).unwrap(),
        "a = 1\n",
        "old revision untouched"
    );
    let mode = |p: PathBuf| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(r2.join("bin/run.sh")), 0o755);
    assert_eq!(mode(r2.join("a.py")), 0o644);

    // A restarted agent rebuilds the live snapshot from git and still reuses.
    drop(dags);
    let mut restarted = target(&dest, "", keep_all(), ValidationConfig::default());
    files.insert("a.py".into(), file("a = 3\n"));
    let c3 = build_commit(&repo, &files, Some(c2), "refs/heads/main", "three");
    let third = restarted.sync(&repo, c3, &no_cancel()).unwrap();
    assert_eq!(
        (
            third.stats.files_written,
            third.stats.files_linked,
            third.stats.files_shared
        ),
        (1, 0, 2)
    );
    // Publishing the live commit again is a no-op.
    let again = restarted.sync(&repo, c3, &no_cancel()).unwrap();
    assert!(!again.published);

    // A file beside an unchanged one: that one is hardlinked into the new directory.
    files.insert("lib/c.py".into(), file("c = 1\n"));
    let c4 = build_commit(&repo, &files, Some(c3), "refs/heads/main", "four");
    let fourth = restarted.sync(&repo, c4, &no_cancel()).unwrap();
    assert_eq!(
        (
            fourth.stats.files_written,
            fourth.stats.files_linked,
            fourth.stats.files_shared
        ),
        (1, 2, 1),
        "{:?}",
        fourth.stats
    );
    let r4 = dest.join(".ferry").join(c4.to_string());
    assert_eq!(ino(r1.join("lib/b.py")), ino(r4.join("lib/b.py")));
    assert_ne!(ino(r1.join("lib")), ino(r4.join("lib")));
}

#[test]
fn retention_removes_old_revisions_only_after_the_window() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = Repository::init_bare(tmp.path().join("repo.git")).unwrap();
    let dest = tmp.path().join("dest");
    let window = Duration::from_secs(600);
    let mut dags = target(
        &dest,
        "",
        RetentionConfig {
            keep: 1,
            max_age: window,
            ..RetentionConfig::default()
        },
        ValidationConfig::default(),
    );
    let mut commits = Vec::new();
    let mut parent = None;
    let mut trees = HashMap::new();
    for n in 0..5 {
        let mut files = Files::new();
        files.insert("a.py".into(), file(&format!("n = {n}\n")));
        files.insert("jobs/job.py".into(), file(&format!("job = {n}\n")));
        files.insert("lib/util.py".into(), file("shared = True\n"));
        trees.insert(
            n,
            vec![
                ("a.py".to_string(), format!("n = {n}\n")),
                ("jobs/job.py".to_string(), format!("job = {n}\n")),
                ("lib/util.py".to_string(), "shared = True\n".to_string()),
            ],
        );
        let oid = build_commit(&repo, &files, parent, "refs/heads/main", "c");
        parent = Some(oid);
        dags.sync(&repo, oid, &no_cancel()).unwrap();
        commits.push(oid);
        std::thread::sleep(Duration::from_millis(20));
    }
    let on_disk = |d: &DagsTarget| {
        let mut v = d.publisher().revisions();
        v.sort();
        v
    };
    assert_eq!(
        on_disk(&dags).len(),
        5,
        "inside the window nothing is removed"
    );
    // Each revision wrote its own `a.py` (6 bytes) and `jobs/job.py` (8);
    // `lib/util.py` (14) is one file in one stored `lib/` all five share.
    assert_eq!(dags.publisher().bytes_on_disk(), 5 * (6 + 8) + 14);
    let removed = dags
        .publisher()
        .prune(SystemTime::now() + window / 2, &Default::default())
        .unwrap()
        .remove;
    assert!(removed.is_empty(), "still inside the window: {removed:?}");

    let removed = dags
        .publisher()
        .prune(SystemTime::now() + window * 2, &Default::default())
        .unwrap()
        .remove;
    let mut expected_removed = commits[..3].to_vec();
    expected_removed.sort();
    let mut removed_sorted = removed.clone();
    removed_sorted.sort();
    assert_eq!(
        removed_sorted, expected_removed,
        "the live one and the newest superseded one stay"
    );
    let mut left = vec![commits[3], commits[4]];
    left.sort();
    assert_eq!(on_disk(&dags), left);
    assert_eq!(live(&dest), Some(commits[4].to_string()));
    assert_eq!(
        dags.publisher().bytes_on_disk(),
        2 * (6 + 8) + 14,
        "the removed revisions' files are no longer counted"
    );
    let leftovers: Vec<_> = std::fs::read_dir(dest.join(".ferry"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| {
            n.starts_with(".tmp-") || commits[..3].iter().any(|c| n.starts_with(&c.to_string()))
        })
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    // What only the removed revisions reached is gone from the store; what
    // a kept one reaches is whole: two roots, two `jobs/`, one shared `lib/`.
    let stored: Vec<_> = std::fs::read_dir(dest.join(".ferry/.trees"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(stored.len(), 5, "{stored:?}");
    for (n, commit) in [(3, commits[3]), (4, commits[4])] {
        assert_eq!(
            read_tree(&dest.join(".ferry").join(commit.to_string())),
            trees[&n]
        );
    }
}

#[test]
fn symlinks_inside_are_materialized_and_escaping_ones_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = Repository::init_bare(tmp.path().join("repo.git")).unwrap();
    let dest = tmp.path().join("dest");
    let mut dags = target(&dest, "dags", keep_all(), ValidationConfig::default());
    let mut files = Files::new();
    files.insert("dags/common/util.py".into(), file("X = 1\n"));
    files.insert(
        "dags/util.py".into(),
        (b"common/util.py".to_vec(), 0o120000),
    );
    files.insert("dags/shared".into(), (b"common".to_vec(), 0o120000));
    files.insert("secrets.txt".into(), file("outside the subdir\n"));
    let good = build_commit(&repo, &files, None, "refs/heads/main", "links");
    dags.sync(&repo, good, &no_cancel()).unwrap();
    let rev = dest.join("current");
    let meta = std::fs::symlink_metadata(rev.join("util.py")).unwrap();
    assert!(
        meta.file_type().is_file(),
        "a link inside the subdir becomes a regular file"
    );
    assert_eq!(
        std::fs::read_to_string(rev.join("util.py")).unwrap(),
        "X = 1\n"
    );
    // A directory of its own, not the one `common` resolves to: Airflow
    // refuses a folder where one resolved directory appears twice.
    assert!(rev.join("shared").is_dir());
    assert_ne!(
        std::fs::canonicalize(rev.join("shared")).unwrap(),
        std::fs::canonicalize(rev.join("common")).unwrap()
    );
    assert_eq!(
        std::fs::read_to_string(rev.join("shared/util.py")).unwrap(),
        "X = 1\n"
    );

    files.insert(
        "dags/leak.py".into(),
        (b"../secrets.txt".to_vec(), 0o120000),
    );
    let bad = build_commit(&repo, &files, Some(good), "refs/heads/main", "escape");
    let err = dags.sync(&repo, bad, &no_cancel()).unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, DagsError::Snapshot(_)), "{err:?}");
    assert!(
        text.contains("dags/leak.py") && text.contains("outside"),
        "{text}"
    );
    assert_eq!(
        live(&dest),
        Some(good.to_string()),
        "the last good revision stays live"
    );

    let mut abs = files.clone();
    abs.remove("dags/leak.py");
    abs.insert("dags/passwd".into(), (b"/etc/passwd".to_vec(), 0o120000));
    let absolute = build_commit(&repo, &abs, Some(good), "refs/heads/main", "absolute");
    assert!(dags.sync(&repo, absolute, &no_cancel()).is_err());
    assert_eq!(live(&dest), Some(good.to_string()));
}

#[test]
fn broken_python_is_blocked_with_file_and_line_or_published_under_warn() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = Repository::init_bare(tmp.path().join("repo.git")).unwrap();
    let dest = tmp.path().join("dest");
    let mut dags = target(&dest, "dags", keep_all(), ValidationConfig::default());
    let mut files = Files::new();
    files.insert("dags/ok.py".into(), file("x = 1\n"));
    let good = build_commit(&repo, &files, None, "refs/heads/main", "good");
    dags.sync(&repo, good, &no_cancel()).unwrap();

    files.insert(
        "dags/broken.py".into(),
        file("import os\n\n\ndef f(:\n    pass\n"),
    );
    let bad = build_commit(&repo, &files, Some(good), "refs/heads/main", "bad");
    let err = dags.sync(&repo, bad, &no_cancel()).unwrap_err();
    let problems = err.problems();
    assert_eq!(problems.len(), 1);
    assert_eq!(problems[0].file, "dags/broken.py");
    assert_eq!(problems[0].line, Some(4));
    assert!(err.to_string().contains("dags/broken.py:4:"), "{err}");
    assert_eq!(live(&dest), Some(good.to_string()));
    assert_eq!(
        dags.publisher().revisions(),
        vec![good],
        "nothing of the bad commit is on disk"
    );

    let mut warn = target(
        &dest,
        "dags",
        keep_all(),
        ValidationConfig {
            policy: ValidationPolicy::Warn,
            ..ValidationConfig::default()
        },
    );
    let outcome = warn.sync(&repo, bad, &no_cancel()).unwrap();
    assert!(outcome.published);
    assert_eq!(outcome.warnings.len(), 1);
    assert_eq!(live(&dest), Some(bad.to_string()));
}

#[test]
fn validate_command_runs_on_the_staged_tree_and_can_block() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = Repository::init_bare(tmp.path().join("repo.git")).unwrap();
    let dest = tmp.path().join("dest");
    let seen = tmp.path().join("hook-saw");
    let script = format!(
        "echo \"$FERRY_STAGED_DIR\" > {seen}; test -f ok.py || exit 9; \
         if grep -rq FORBIDDEN .; then echo \"dags/x.py uses FORBIDDEN\"; exit 1; fi",
        seen = seen.display()
    );
    let validation = ValidationConfig {
        command: vec!["sh".into(), "-c".into(), script],
        ..ValidationConfig::default()
    };
    let mut dags = target(&dest, "dags", keep_all(), validation);
    let mut files = Files::new();
    files.insert("dags/ok.py".into(), file("x = 1\n"));
    let good = build_commit(&repo, &files, None, "refs/heads/main", "good");
    let outcome = dags.sync(&repo, good, &no_cancel()).unwrap();
    assert!(outcome.hook.as_ref().unwrap().success);
    let staged = std::fs::read_to_string(&seen).unwrap();
    assert!(
        staged.contains("/.ferry/.tmp-"),
        "hook must run in the staged revision, ran in {staged}"
    );

    files.insert("dags/x.py".into(), file("# FORBIDDEN\n"));
    let bad = build_commit(&repo, &files, Some(good), "refs/heads/main", "bad");
    let err = dags.sync(&repo, bad, &no_cancel()).unwrap_err();
    let hook = err.hook().expect("hook report kept");
    assert_eq!(hook.exit_code, Some(1));
    assert!(hook.output.contains("uses FORBIDDEN"));
    assert!(
        err.to_string().contains("validation command exited with 1"),
        "{err}"
    );
    assert_eq!(live(&dest), Some(good.to_string()));
    let tmp_left = staging_leftovers(&dest).len();
    assert_eq!(tmp_left, 0, "a blocked staging dir is removed");
}

#[test]
fn leftovers_of_an_interrupted_publish_are_removed_at_start() {
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("dest");
    std::fs::create_dir_all(dest.join(".ferry/.tmp-deadbeef-1-0/sub")).unwrap();
    std::fs::write(dest.join(".ferry/.tmp-deadbeef-1-0/sub/x.py"), "half").unwrap();
    std::os::unix::fs::symlink(".ferry/whatever", dest.join(".current.tmp-77")).unwrap();
    // A stored directory half made, and one a collection was removing
    // (sealed read-only, as stored directories are).
    std::fs::create_dir_all(dest.join(".ferry/.trees/.tmp-0a1b-1-0")).unwrap();
    let doomed = dest.join(".ferry/.trees/.tmp-del-0a1b");
    std::fs::create_dir_all(&doomed).unwrap();
    std::fs::write(doomed.join("x.py"), "x").unwrap();
    std::fs::set_permissions(&doomed, std::fs::Permissions::from_mode(0o555)).unwrap();
    let _dags = target(&dest, "", keep_all(), ValidationConfig::default());
    assert!(!dest.join(".ferry/.tmp-deadbeef-1-0").exists());
    assert_eq!(
        std::fs::read_dir(dest.join(".ferry/.trees"))
            .unwrap()
            .count(),
        0,
        "the store's leftovers are removed"
    );
    assert!(std::fs::symlink_metadata(dest.join(".current.tmp-77")).is_err());

    // A real directory where the link belongs is refused, not clobbered.
    let occupied = tmp.path().join("occupied");
    std::fs::create_dir_all(occupied.join("current")).unwrap();
    let err = DagsTarget::open(DagsTargetConfig {
        source: "dags".into(),
        subdir: String::new(),
        destination: occupied.clone(),
        link: "current".into(),
        retention: keep_all(),
        validation: ValidationConfig::default(),
        airflow: None,
    })
    .err()
    .expect("occupied link path must be refused");
    assert!(err.to_string().contains("not a symlink"), "{err}");
}

/// kill -9 of `ferry publish-dags` at random points: the link always names a
/// complete revision, and the next run cleans up and succeeds.
#[test]
fn kill_9_at_random_points_always_leaves_a_complete_revision() {
    let tmp = tempfile::tempdir().unwrap();
    let bare = tmp.path().join("repo.git");
    let repo = Repository::init_bare(&bare).unwrap();
    let dest = tmp.path().join("dest");
    let cache = tmp.path().join("cache");
    // Two branches whose trees differ in every file, large enough that a
    // publish takes long enough to be interrupted in every phase.
    let mut trees: HashMap<String, Vec<(String, String)>> = HashMap::new();
    let mut tips: Vec<Oid> = Vec::new();
    for branch in ["a", "b", "c"] {
        let mut files = Files::new();
        for i in 0..1500 {
            let body = format!("BRANCH = {branch:?}\nI = {i}\n{}\n", "#".repeat(2000));
            files.insert(format!("dir{:02}/f{i:04}.py", i % 37), file(&body));
        }
        // Shared files exercise the hardlink path under kill too.
        for i in 0..300 {
            files.insert(format!("shared/s{i:03}.py"), file(&format!("S = {i}\n")));
        }
        let oid = build_commit(&repo, &files, None, &format!("refs/heads/{branch}"), "tree");
        trees.insert(
            oid.to_string(),
            expected(
                &files
                    .iter()
                    .map(|(k, v)| (format!("x/{k}"), v.clone()))
                    .collect(),
                "x",
            ),
        );
        tips.push(oid);
    }
    let publish = |branch: &str| {
        // The whole repository: these trees have no dags/ folder.
        publish_dags_command(&bare, branch, "", &dest, &cache)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    };
    // Each run must really publish, not find its revision already on disk
    // and only swap the link: drop the target's directory first (as
    // retention would), unless it is the live one.
    let forget = |branch: usize| {
        let sha = tips[branch].to_string();
        if live(&dest).as_deref() != Some(sha.as_str()) {
            let _ = std::fs::remove_dir_all(dest.join(".ferry").join(&sha));
        }
    };
    // Warm up (first fetch into the mirror), then time a comparable publish
    // to spread the kills over it.
    assert!(publish("a").wait().unwrap().success());
    let mut timings: Vec<Duration> = [1usize, 2, 0]
        .iter()
        .map(|&b| {
            forget(b);
            let started = Instant::now();
            assert!(publish(["a", "b", "c"][b]).wait().unwrap().success());
            started.elapsed()
        })
        .collect();
    let median = |timings: &[Duration]| {
        let mut recent = timings[timings.len().saturating_sub(5)..].to_vec();
        recent.sort();
        recent[recent.len() / 2]
    };
    let mut full = median(&timings);
    let check = |run: usize| {
        let sha = live(&dest).unwrap_or_else(|| panic!("run {run}: link missing"));
        let seen = read_tree(&dest.join(".ferry").join(&sha));
        assert!(
            seen == trees[&sha],
            "run {run}: revision {sha} is incomplete ({} files)",
            seen.len()
        );
        // Every revision-named directory is complete, not only the live one.
        for entry in std::fs::read_dir(dest.join(".ferry")).unwrap() {
            let name = entry.unwrap().file_name().to_string_lossy().into_owned();
            if let Some(tree) = trees.get(&name) {
                assert!(
                    read_tree(&dest.join(".ferry").join(&name)) == *tree,
                    "run {run}: {name} incomplete"
                );
            }
        }
    };
    let mut killed_mid_run = 0;
    let mut runs = 0;
    // At least 60 runs, and on until 36 kills landed mid-publish: other
    // tests share this machine (one test binary), so the share of kills
    // that land mid-run varies with their load; the number checked does not.
    for run in 0..200 {
        if run >= 60 && killed_mid_run >= 36 {
            break;
        }
        runs = run + 1;
        // Never the live commit: publishing that would be a no-op.
        let live_now = live(&dest);
        let target = (0..3)
            .map(|k| (run + k) % 3)
            .find(|&b| live_now.as_deref() != Some(tips[b].to_string().as_str()))
            .unwrap();
        forget(target);
        // Re-time now and then: the machine's load changes while the test
        // runs, and the spread must follow what a run takes now.
        if run % 10 == 9 {
            let started = Instant::now();
            assert!(publish(["a", "b", "c"][target]).wait().unwrap().success());
            timings.push(started.elapsed());
            full = median(&timings);
            check(run);
            continue;
        }
        let mut child = publish(["a", "b", "c"][target]);
        // Run times vary, so the tail of this spread still reaches the
        // last phases (rename, link swap) of slower runs.
        let delay = full.mul_f64(fastrand_f64(run) * 1.1);
        std::thread::sleep(delay);
        if child.try_wait().unwrap().is_none() {
            killed_mid_run += 1;
        } else {
            // The run was shorter than the spread assumed (the machine got
            // faster, or less loaded): tighten it until the next re-timing.
            full = full.mul_f64(0.85);
        }
        let _ = child.kill();
        let _ = child.wait();
        check(run);
    }
    // Every tenth run re-times the spread instead of killing.
    let kills = runs - runs / 10;
    eprintln!("{killed_mid_run} of {kills} kills landed mid-publish");
    assert!(
        killed_mid_run >= 36,
        "only {killed_mid_run} of {kills} kills landed mid-publish"
    );
    // After all that, an uninterrupted run cleans up and publishes.
    let status = publish("c").wait().unwrap();
    assert!(status.success());
    assert_eq!(live(&dest), Some(tips[2].to_string()));
    check(999);
    let tmp_left = staging_leftovers(&dest);
    assert!(tmp_left.is_empty(), "{tmp_left:?}");
}

/// Deterministic spread over [0, 1) so a failure can be replayed.
fn fastrand_f64(run: usize) -> f64 {
    let x = (run as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 11;
    (x as f64) / ((1u64 << 53) as f64)
}

/// Every revision under `dest` holds exactly the files of its commit.
fn assert_revisions_complete(dest: &Path, trees: &HashMap<String, Vec<(String, String)>>) {
    for entry in std::fs::read_dir(dest.join(".ferry")).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        let Some(want) = trees.get(&name) else {
            continue;
        };
        let got = read_tree(&dest.join(".ferry").join(&name));
        assert!(
            &got == want,
            "revision {name} is not its commit's tree: {} files, {} expected",
            got.len(),
            want.len()
        );
    }
}

/// The files of a revision of the whole repository, as they should appear.
fn whole(files: &Files) -> Vec<(String, String)> {
    files
        .iter()
        .map(|(p, (c, _))| (p.clone(), String::from_utf8_lossy(c).into_owned()))
        .collect()
}

fn read_tree(root: &Path) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if std::fs::metadata(&path).unwrap().is_dir() {
                stack.push(path);
            } else {
                let rel = path
                    .strip_prefix(root)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned();
                out.push((rel, std::fs::read_to_string(&path).unwrap()));
            }
        }
    }
    out.sort();
    out
}

/// A publisher in another process (an init container beside the daemon,
/// on one volume) publishing between this one's stage and publish removes
/// nothing of what this one staged, and both revisions end complete.
#[test]
fn a_publisher_in_another_process_keeps_what_a_live_one_staged() {
    let tmp = tempfile::tempdir().unwrap();
    let bare = tmp.path().join("repo.git");
    let repo = Repository::init_bare(&bare).unwrap();
    let dest = tmp.path().join("dest");
    let mut trees = HashMap::new();
    let mut tips = Vec::new();
    for branch in ["main", "other"] {
        let mut files = Files::new();
        for i in 0..20 {
            files.insert(
                format!("d{}/f{i}.py", i % 4),
                file(&format!("{branch} = {i}\n")),
            );
        }
        files.insert("same/x.py".into(), file("x = 1\n"));
        let oid = build_commit(&repo, &files, None, &format!("refs/heads/{branch}"), "t");
        trees.insert(oid.to_string(), whole(&files));
        tips.push(oid);
    }
    // The validation hook runs while this publisher's revision is staged:
    // there, another process publishes `other` (and prunes and collects).
    let hook = publish_dags_command(&bare, "other", "", &dest, &tmp.path().join("cache"));
    let argv: Vec<String> = std::iter::once(hook.get_program())
        .chain(hook.get_args())
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let validation = ValidationConfig {
        command: argv,
        ..ValidationConfig::default()
    };
    let mut dags = target(&dest, "", keep_all(), validation);
    let outcome = dags
        .sync(&repo, tips[0], &no_cancel())
        .expect("publish after another process published meanwhile");
    let hook = outcome.hook.expect("hook ran");
    assert!(hook.success, "publish-dags in the hook: {}", hook.output);
    assert_eq!(live(&dest), Some(tips[0].to_string()));
    let revisions: Vec<String> = std::fs::read_dir(dest.join(".ferry"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    for tip in &tips {
        assert!(
            revisions.contains(&tip.to_string()),
            "{tip} in {revisions:?}"
        );
    }
    assert_revisions_complete(&dest, &trees);
    assert!(
        staging_leftovers(&dest).is_empty(),
        "{:?}",
        staging_leftovers(&dest)
    );
}

/// Processes publishing into one destination at once (every Airflow pod's
/// init container at a rollout) take turns: each succeeds, each revision
/// left is complete, and nothing stays half made.
#[test]
fn publishers_in_many_processes_take_turns() {
    let tmp = tempfile::tempdir().unwrap();
    let bare = tmp.path().join("repo.git");
    let repo = Repository::init_bare(&bare).unwrap();
    let dest = tmp.path().join("dest");
    let branches = ["a", "b", "c", "d"];
    let mut trees = HashMap::new();
    for branch in branches {
        let mut files = Files::new();
        for i in 0..300 {
            files.insert(
                format!("d{:02}/f{i}.py", i % 12),
                file(&format!("{branch} = {i}\n")),
            );
        }
        for i in 0..100 {
            files.insert(format!("shared/s{i}.py"), file(&format!("S = {i}\n")));
        }
        let oid = build_commit(&repo, &files, None, &format!("refs/heads/{branch}"), "t");
        trees.insert(oid.to_string(), whole(&files));
    }
    let workers: Vec<_> = (0..3)
        .map(|w| {
            let (bare, dest) = (bare.clone(), dest.clone());
            let cache = tmp.path().join(format!("cache-{w}"));
            std::thread::spawn(move || {
                for round in 0..6 {
                    let branch = branches[(w + round) % branches.len()];
                    // Retention's default: old revisions pruned and
                    // collected while others publish.
                    run(&mut publish_dags_command(&bare, branch, "", &dest, &cache));
                }
            })
        })
        .collect();
    for worker in workers {
        worker.join().unwrap();
    }
    let live = live(&dest).expect("a revision is live");
    assert!(trees.contains_key(&live));
    assert_revisions_complete(&dest, &trees);
    assert!(
        staging_leftovers(&dest).is_empty(),
        "{:?}",
        staging_leftovers(&dest)
    );
    assert_eq!(
        std::fs::read_dir(dest.join(".ferry/.owners"))
            .unwrap()
            .count(),
        0,
        "every publisher removed its owner file"
    );
}
