//! Suspended sources: while a source is suspended ferry fetches it and
//! reports drift, but applies nothing, prunes nothing and heals nothing, as
//! `flux suspend` does. Kept in a small JSON file, written whole and
//! renamed into place, so a suspension survives restarts and a crash never
//! leaves half a file; an unreadable file is an error at start, because
//! forgetting a suspension would apply what someone meant to hold back.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Suspension {
    /// Why, in the words of whoever suspended it (required).
    pub reason: String,
    /// When (RFC 3339).
    pub since: String,
}

#[derive(Debug, thiserror::Error)]
pub enum SuspendError {
    #[error("cannot read the suspensions file {}: {source}", .path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "the suspensions file {} is not ferry's ({source}); fix or delete it \
         (deleting resumes every source)",
        .path.display()
    )]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("cannot write the suspensions file {}: {source}", .path.display())]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Cheap to clone: the admin endpoint writes it, every worker reads it.
#[derive(Clone)]
pub struct Suspensions {
    path: PathBuf,
    map: Arc<Mutex<BTreeMap<String, Suspension>>>,
}

impl Suspensions {
    /// Loads `path`; a file that does not exist suspends nothing.
    pub fn open(path: &Path) -> Result<Suspensions, SuspendError> {
        let map = match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|source| SuspendError::Parse {
                path: path.to_path_buf(),
                source,
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(source) => {
                return Err(SuspendError::Read {
                    path: path.to_path_buf(),
                    source,
                });
            }
        };
        Ok(Suspensions {
            path: path.to_path_buf(),
            map: Arc::new(Mutex::new(map)),
        })
    }

    pub fn get(&self, source: &str) -> Option<Suspension> {
        self.lock().get(source).cloned()
    }

    /// Puts `source`'s suspension (or its absence) in status and metrics;
    /// true while it is suspended.
    pub fn show(
        &self,
        source: &str,
        status: &crate::status::StatusStore,
        metrics: &crate::metrics::Metrics,
    ) -> bool {
        let suspension = self.get(source);
        let suspended = suspension.is_some();
        metrics
            .suspended
            .get_or_create(&crate::metrics::source(source))
            .set(i64::from(suspended));
        status.update(source, |s| s.suspended = suspension);
        suspended
    }

    /// Suspends `source` (again: the new reason replaces the old, the
    /// time stays). Written to disk before it returns.
    pub fn suspend(
        &self,
        source: &str,
        reason: &str,
        now: String,
    ) -> Result<Suspension, SuspendError> {
        let mut map = self.lock();
        let mut next = map.clone();
        let entry = next
            .entry(source.to_string())
            .and_modify(|s| s.reason = reason.to_string())
            .or_insert_with(|| Suspension {
                reason: reason.to_string(),
                since: now,
            })
            .clone();
        self.save(&next)?;
        *map = next;
        Ok(entry)
    }

    /// Resumes `source`; the suspension it had, if any.
    pub fn resume(&self, source: &str) -> Result<Option<Suspension>, SuspendError> {
        let mut map = self.lock();
        let mut next = map.clone();
        let was = next.remove(source);
        if was.is_some() {
            self.save(&next)?;
            *map = next;
        }
        Ok(was)
    }

    fn save(&self, map: &BTreeMap<String, Suspension>) -> Result<(), SuspendError> {
        let body = serde_json::to_vec_pretty(map).unwrap_or_default();
        crate::disk::write_atomic(&self.path, &body).map_err(|source| SuspendError::Write {
            path: self.path.clone(),
            source,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Suspension>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_suspension_survives_reopening_and_a_bad_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state/suspensions.json");
        let s = Suspensions::open(&path).unwrap();
        assert_eq!(s.get("platform"), None);
        let first = s.suspend("platform", "freeze", "t1".into()).unwrap();
        assert_eq!(first.since, "t1");
        // Suspending again changes the reason, not the time.
        let again = s
            .suspend("platform", "freeze for the audit", "t2".into())
            .unwrap();
        assert_eq!(
            (again.since.as_str(), again.reason.as_str()),
            ("t1", "freeze for the audit")
        );
        let reopened = Suspensions::open(&path).unwrap();
        assert_eq!(reopened.get("platform"), Some(again.clone()));
        assert_eq!(reopened.resume("platform").unwrap(), Some(again));
        assert_eq!(Suspensions::open(&path).unwrap().get("platform"), None);
        assert_eq!(reopened.resume("platform").unwrap(), None);

        std::fs::write(&path, "{not json").unwrap();
        let err = Suspensions::open(&path).err().unwrap().to_string();
        assert!(err.contains("fix or delete it"), "{err}");
    }
}
