//! What ferry has reported to GitHub, and what it still owes: a small JSON
//! file, replaced atomically (write, fsync, rename, fsync the directory) on
//! every change, so a restart neither re-posts a final status nor loses one
//! that was queued while GitHub was down. Everything in it can be rebuilt
//! from git and GitHub; losing it costs duplicate statuses, never wrong ones.

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Records kept per map; the oldest go first. Enough for months of commits.
const KEEP: usize = 2000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    Pending,
    Success,
    Failure,
    Error,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Pending => "pending",
            State::Success => "success",
            State::Failure => "failure",
            State::Error => "error",
        }
    }

    /// A verdict on the commit itself: evaluating it again gives the same.
    pub fn is_verdict(self) -> bool {
        matches!(self, State::Success | State::Failure)
    }
}

/// Where a status was set: a tracked branch (apply) or a PR head (preview).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Origin {
    Branch,
    Preview,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusRecord {
    pub state: State,
    pub description: String,
    pub origin: Origin,
    pub seq: u64,
    #[serde(default)]
    pub target_url: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeploymentRecord {
    /// GitHub's id, once created.
    pub id: Option<u64>,
    pub state: String,
    pub seq: u64,
    #[serde(default)]
    pub log_url: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommentRecord {
    pub id: Option<u64>,
    /// SHA-256 of the last body sent, so an identical plan is not re-sent.
    pub digest: String,
    pub seq: u64,
}

/// One thing to tell GitHub, in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Op {
    Status {
        repo: String,
        sha: String,
        context: String,
        state: State,
        description: String,
        target_url: String,
    },
    Deployment {
        repo: String,
        sha: String,
        environment: String,
        /// `in_progress`, `success`, `failure` or `error`.
        state: String,
        description: String,
        log_url: String,
    },
    Comment {
        repo: String,
        pr: u64,
        marker: String,
        body: String,
    },
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct LedgerData {
    #[serde(default)]
    pub seq: u64,
    /// `repo@sha/context`
    #[serde(default)]
    pub statuses: BTreeMap<String, StatusRecord>,
    /// `repo@sha/environment`
    #[serde(default)]
    pub deployments: BTreeMap<String, DeploymentRecord>,
    /// `repo#pr/marker`
    #[serde(default)]
    pub comments: BTreeMap<String, CommentRecord>,
    /// Not yet delivered, oldest first.
    #[serde(default)]
    pub outbox: VecDeque<Op>,
}

#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a ferry report ledger ({source}); move it aside to start afresh")]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error(
        "cannot write {path}: no space left on the filesystem ({free}); the last saved copy is kept, reports stay queued in memory, and the next change saves again"
    )]
    DiskFull { path: PathBuf, free: String },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

pub struct Ledger {
    path: PathBuf,
    pub data: LedgerData,
}

pub fn status_key(repo: &str, sha: &str, context: &str) -> String {
    format!("{repo}@{sha}/{context}")
}

pub fn comment_key(repo: &str, pr: u64, marker: &str) -> String {
    format!("{repo}#{pr}/{marker}")
}

impl Ledger {
    pub fn open(path: &Path) -> Result<Ledger, LedgerError> {
        let data = match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|source| LedgerError::Parse {
                path: path.to_path_buf(),
                source,
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => LedgerData::default(),
            Err(source) => {
                return Err(LedgerError::Read {
                    path: path.to_path_buf(),
                    source,
                });
            }
        };
        Ok(Ledger {
            path: path.to_path_buf(),
            data,
        })
    }

    pub fn next_seq(&mut self) -> u64 {
        self.data.seq += 1;
        self.data.seq
    }

    /// Writes the ledger atomically, trimming old records first.
    pub fn save(&mut self) -> Result<(), LedgerError> {
        trim(&mut self.data.statuses, |r| r.seq);
        trim(&mut self.data.deployments, |r| r.seq);
        trim(&mut self.data.comments, |r| r.seq);
        let write = |path: &Path| -> std::io::Result<()> {
            crate::disk::write_atomic(path, &serde_json::to_vec(&self.data)?)
        };
        write(&self.path).map_err(|source| {
            if crate::disk::is_full(&source) {
                return LedgerError::DiskFull {
                    path: self.path.clone(),
                    free: crate::disk::free_text(&self.path),
                };
            }
            LedgerError::Write {
                path: self.path.clone(),
                source,
            }
        })
    }
}

fn trim<T>(map: &mut BTreeMap<String, T>, seq: impl Fn(&T) -> u64) {
    if map.len() <= KEEP {
        return;
    }
    let mut seqs: Vec<u64> = map.values().map(&seq).collect();
    seqs.sort_unstable();
    let cutoff = seqs[seqs.len() - KEEP];
    map.retain(|_, v| seq(v) >= cutoff);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn survives_a_round_trip_and_trims_the_oldest() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger.json");
        let mut ledger = Ledger::open(&path).unwrap();
        for i in 0..(KEEP + 10) {
            let seq = ledger.next_seq();
            ledger.data.statuses.insert(
                status_key("o/r", &format!("{i:040x}"), "ferry/dags"),
                StatusRecord {
                    state: State::Success,
                    description: "ok".into(),
                    origin: Origin::Branch,
                    seq,
                    target_url: String::new(),
                },
            );
        }
        ledger.data.outbox.push_back(Op::Comment {
            repo: "o/r".into(),
            pr: 3,
            marker: "m".into(),
            body: "b".into(),
        });
        ledger.save().unwrap();
        let again = Ledger::open(&path).unwrap();
        assert_eq!(again.data.statuses.len(), KEEP);
        assert!(!again.data.statuses.contains_key(&status_key(
            "o/r",
            &format!("{:040x}", 0),
            "ferry/dags"
        )));
        assert_eq!(again.data.outbox.len(), 1);
        assert_eq!(again.data.seq, (KEEP + 10) as u64);
    }

    #[test]
    fn a_corrupt_file_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger.json");
        std::fs::write(&path, "{not json").unwrap();
        let err = Ledger::open(&path).err().unwrap().to_string();
        assert!(
            err.contains("ledger.json") && err.contains("move it aside"),
            "{err}"
        );
    }
}
