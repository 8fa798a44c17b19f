//! DAG validation before publish: every `.py` file must parse as Python,
//! then an optional hook runs on the staged revision.
//!
//! Parse results are cached by blob id, so a commit that changes one file
//! parses one file: validation costs in proportion to the change, as
//! publishing does. With a cache directory they are also kept on disk
//! ([`super::verdicts`]), so that holds across runs and restarts too.

use std::collections::HashMap;
use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use git2::{Oid, Repository};
use serde::Serialize;

use super::snapshot::Snapshot;
use super::verdicts::VerdictFile;

pub use crate::problem::Problem;

/// (line, column, message) of a syntax error; `None` for a clean file.
pub(crate) type ParseVerdict = Option<(usize, usize, String)>;

/// Remembers parse verdicts by blob id across revisions.
#[derive(Default)]
pub struct PythonChecker {
    verdicts: HashMap<Oid, ParseVerdict>,
    /// Where verdicts are kept between processes, if anywhere.
    file: Option<VerdictFile>,
    /// Files parsed (not found in the cache) by the last check.
    parsed: usize,
}

/// Bound on remembered verdicts; far above any DAGs repo, so clearing is rare.
const MAX_CACHED: usize = 200_000;

impl PythonChecker {
    /// A checker that starts from, and adds to, the verdicts kept in
    /// `cache_dir`.
    pub fn persistent(cache_dir: &Path) -> PythonChecker {
        let file = VerdictFile::in_dir(cache_dir);
        PythonChecker {
            verdicts: file.load(MAX_CACHED),
            file: Some(file),
            parsed: 0,
        }
    }

    /// How many files the last [`PythonChecker::check`] parsed: the rest
    /// were known by their blob id.
    pub fn parsed(&self) -> usize {
        self.parsed
    }

    /// Checks every `.py` file of the snapshot. `prefix` is the subdir, used
    /// to name files by their path in the repository.
    pub fn check(&mut self, repo: &Repository, snapshot: &Snapshot, prefix: &str) -> Vec<Problem> {
        if self.verdicts.len() > MAX_CACHED {
            self.verdicts.clear();
        }
        let mut problems = Vec::new();
        let mut new = Vec::new();
        for file in snapshot.files.iter().filter(|f| f.path.ends_with(".py")) {
            let verdict = match self.verdicts.get(&file.blob) {
                Some(v) => v.clone(),
                None => {
                    let v = match repo.find_blob(file.blob) {
                        Ok(blob) => parse_python(blob.content()),
                        // Not a verdict on the file: never kept.
                        Err(e) => {
                            problems.push(Problem {
                                file: repo_path(prefix, &file.path),
                                line: None,
                                column: None,
                                document: None,
                                message: format!("cannot read blob: {}", e.message()),
                            });
                            continue;
                        }
                    };
                    self.verdicts.insert(file.blob, v.clone());
                    new.push((file.blob, v.clone()));
                    v
                }
            };
            if let Some((line, column, message)) = verdict {
                problems.push(Problem {
                    file: repo_path(prefix, &file.path),
                    line: Some(line),
                    column: Some(column),
                    document: None,
                    message,
                });
            }
        }
        self.parsed = new.len();
        if let Some(file) = &self.file {
            file.append(&new);
        }
        problems
    }
}

fn repo_path(prefix: &str, path: &str) -> String {
    let prefix = prefix.trim_matches('/');
    if prefix.is_empty() || prefix == "." {
        path.to_string()
    } else {
        format!("{prefix}/{path}")
    }
}

/// Parses Python source; returns the first syntax error as (line, column, message).
pub fn parse_python(source: &[u8]) -> ParseVerdict {
    let text = match std::str::from_utf8(source) {
        Ok(t) => t,
        Err(e) => {
            let (line, column) = line_col(&source[..e.valid_up_to()]);
            return Some((line, column, "file is not valid UTF-8".into()));
        }
    };
    match ruff_python_parser::parse_module(text) {
        Ok(_) => None,
        Err(err) => {
            let offset = usize::from(err.location.start()).min(text.len());
            let (line, column) = line_col(&text.as_bytes()[..offset]);
            Some((line, column, format!("syntax error: {}", err.error)))
        }
    }
}

/// 1-based line and column (in characters) at the end of `prefix`.
fn line_col(prefix: &[u8]) -> (usize, usize) {
    let line = prefix.iter().filter(|b| **b == b'\n').count() + 1;
    let line_start = prefix
        .iter()
        .rposition(|b| *b == b'\n')
        .map_or(0, |i| i + 1);
    let column = String::from_utf8_lossy(&prefix[line_start..])
        .chars()
        .count()
        + 1;
    (line, column)
}

/// What the validation hook said.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct HookReport {
    pub command: Vec<String>,
    pub success: bool,
    pub exit_code: Option<i32>,
    pub timed_out: bool,
    /// Combined stdout and stderr, cut to the last [`MAX_OUTPUT`] bytes.
    pub output: String,
    pub duration_ms: u64,
}

const MAX_OUTPUT: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
#[error("validation command `{program}` could not run: {source}")]
pub struct HookError {
    program: String,
    source: std::io::Error,
}

/// Runs the hook in `staged` with a timeout. Output goes through a temp file
/// so a chatty hook can never block on a full pipe.
pub fn run_hook(
    command: &[String],
    staged: &Path,
    commit: Oid,
    timeout: Duration,
    cancel: &AtomicBool,
) -> Result<HookReport, HookError> {
    let program = command.first().cloned().unwrap_or_default();
    let hook_err = |source| HookError {
        program: program.clone(),
        source,
    };
    let mut log = tempfile::tempfile().map_err(hook_err)?;
    let started = Instant::now();
    use std::os::unix::process::CommandExt;
    let mut child = Command::new(&program)
        .args(&command[1..])
        // Its own process group, so whatever the hook starts can be
        // stopped with it (a killed `sh` would orphan its `sleep`).
        .process_group(0)
        .current_dir(staged)
        .env("FERRY_STAGED_DIR", staged)
        .env("FERRY_COMMIT", commit.to_string())
        // The staged tree becomes a published revision: keep bytecode out of it.
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .stdin(Stdio::null())
        .stdout(log.try_clone().map_err(hook_err)?)
        .stderr(log.try_clone().map_err(hook_err)?)
        .spawn()
        .map_err(hook_err)?;
    let mut timed_out = false;
    let status = loop {
        if let Some(status) = child.try_wait().map_err(hook_err)? {
            break Some(status);
        }
        if started.elapsed() >= timeout || cancel.load(Ordering::Relaxed) {
            timed_out = started.elapsed() >= timeout;
            kill_group(child.id());
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    // A hook that exited may have left processes behind; none may outlive
    // it, least of all one still writing into a tree about to be published.
    kill_group(child.id());
    use std::io::Seek;
    let mut output = Vec::new();
    log.seek(std::io::SeekFrom::Start(0)).map_err(hook_err)?;
    log.read_to_end(&mut output).map_err(hook_err)?;
    let mut output = String::from_utf8_lossy(&output).into_owned();
    if output.len() > MAX_OUTPUT {
        let mut cut = output.len() - MAX_OUTPUT;
        while !output.is_char_boundary(cut) {
            cut += 1;
        }
        output = format!("[... {cut} bytes cut ...]\n{}", &output[cut..]);
    }
    if timed_out {
        output.push_str(&format!(
            "\n[ferry: killed after {}]",
            humantime::format_duration(timeout)
        ));
    }
    Ok(HookReport {
        command: command.to_vec(),
        success: status.is_some_and(|s| s.success()),
        exit_code: status.and_then(|s| s.code()),
        timed_out,
        output,
        duration_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
    })
}

/// SIGKILL to the hook's process group (its pgid is its pid).
fn kill_group(pid: u32) {
    if let Ok(pid) = i32::try_from(pid) {
        // SAFETY: kill(2) with a negative pid signals a process group; no
        // memory is involved. ESRCH (the group is gone) is fine.
        unsafe { libc::kill(-pid, libc::SIGKILL) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alive(pid: i32) -> bool {
        // Zombies count as gone: they run nothing.
        std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
            !stat
                .rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .starts_with('Z')
        })
    }

    #[test]
    fn a_timed_out_or_finished_hook_leaves_no_process_behind() {
        let dir = tempfile::tempdir().unwrap();
        let never = AtomicBool::new(false);
        for (script, timeout) in [
            // Times out while its child sleeps.
            (
                "sleep 30 & echo $! > grandchild; wait",
                Duration::from_millis(300),
            ),
            // Exits at once, leaving a background child.
            (
                "sleep 30 & echo $! > grandchild; exit 0",
                Duration::from_secs(30),
            ),
        ] {
            let command = vec!["sh".to_string(), "-c".to_string(), script.to_string()];
            let report = run_hook(&command, dir.path(), Oid::ZERO_SHA1, timeout, &never).unwrap();
            let pid: i32 = std::fs::read_to_string(dir.path().join("grandchild"))
                .unwrap()
                .trim()
                .parse()
                .unwrap();
            let deadline = Instant::now() + Duration::from_secs(5);
            while alive(pid) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            assert!(!alive(pid), "{script}: grandchild {pid} survived the hook");
            assert_eq!(
                report.timed_out,
                timeout < Duration::from_secs(1),
                "{script}"
            );
        }
    }

    #[test]
    fn valid_python_passes() {
        assert_eq!(
            parse_python(b"from airflow.sdk import dag\n\nx = 1\n"),
            None
        );
    }

    #[test]
    fn syntax_error_reports_line_and_column() {
        let (line, column, message) = parse_python(b"import os\n\ndef f(:\n    pass\n").unwrap();
        assert_eq!(line, 3);
        assert_eq!(column, 7);
        assert!(message.starts_with("syntax error"), "{message}");
    }

    #[test]
    fn invalid_utf8_is_reported_where_it_starts() {
        let (line, _, message) = parse_python(b"x = 1\ny = '\xff'\n").unwrap();
        assert_eq!(line, 2);
        assert!(message.contains("UTF-8"));
    }

    #[test]
    fn hook_output_exit_code_and_timeout() {
        let dir = tempfile::tempdir().unwrap();
        let cancel = AtomicBool::new(false);
        let cmd = |s: &str| vec!["sh".to_string(), "-c".to_string(), s.to_string()];
        let ok = run_hook(
            &cmd("echo hi; pwd"),
            dir.path(),
            Oid::ZERO_SHA1,
            Duration::from_secs(5),
            &cancel,
        )
        .unwrap();
        assert!(ok.success);
        assert!(ok.output.contains("hi"));
        let bad = run_hook(
            &cmd("echo broken >&2; exit 3"),
            dir.path(),
            Oid::ZERO_SHA1,
            Duration::from_secs(5),
            &cancel,
        )
        .unwrap();
        assert!(!bad.success);
        assert_eq!(bad.exit_code, Some(3));
        assert!(bad.output.contains("broken"));
        let slow = run_hook(
            &cmd("sleep 5"),
            dir.path(),
            Oid::ZERO_SHA1,
            Duration::from_millis(200),
            &cancel,
        )
        .unwrap();
        assert!(slow.timed_out && !slow.success);
    }
}
