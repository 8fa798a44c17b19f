//! Python parse verdicts kept on disk by blob id, so that a one-shot
//! `ferry publish-dags` (what init containers run) and a restarted
//! `ferry run` parse only the files that changed, not the whole repo.
//!
//! One append-only file in the cache directory, a line per verdict:
//! `<blob id> <verdict as JSON>`. It is only a cache, so every failure
//! to read or write it is logged and otherwise ignored, and deleting it
//! costs one full parse. Several processes may share it: each appends
//! whole lines in writes under the page size to a file opened `O_APPEND`,
//! which the kernel places at the end whole; a line cut short by a crash
//! (or anything that does not read back as a verdict) is skipped on load.
//! The file is named for the ferry version, whose parser decides the
//! verdicts: an upgrade starts a new one and leaves the old to be deleted.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use git2::Oid;

use super::validate::ParseVerdict;

/// Lines per write stay below this, so that concurrent appends never interleave.
const CHUNK: usize = 4000;

/// The file is rewritten without duplicates once it holds this many more
/// lines than verdicts (several processes appending the same ones).
const SLACK: usize = 10_000;

pub(crate) struct VerdictFile {
    path: PathBuf,
}

impl VerdictFile {
    pub(crate) fn in_dir(cache_dir: &Path) -> VerdictFile {
        VerdictFile {
            path: cache_dir.join(format!("python-verdicts-{}.log", env!("CARGO_PKG_VERSION"))),
        }
    }

    /// Every verdict the file holds (none if it cannot be read). Compacts
    /// it when duplicates dominate, and empties it past `max` verdicts.
    pub(crate) fn load(&self, max: usize) -> HashMap<Oid, ParseVerdict> {
        let text = match std::fs::read(&self.path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return HashMap::new(),
            Err(e) => {
                tracing::warn!(path = %self.path.display(), error = %e, "cannot read the parse cache; parsing every file");
                return HashMap::new();
            }
        };
        let mut verdicts = HashMap::new();
        let mut lines = 0;
        for line in text.split(|b| *b == b'\n') {
            lines += 1;
            if let Some((oid, verdict)) = parse_line(line) {
                verdicts.insert(oid, verdict);
            }
        }
        if verdicts.len() > max {
            verdicts.clear();
            self.rewrite(&verdicts);
        } else if lines > verdicts.len() + SLACK {
            self.rewrite(&verdicts);
        }
        verdicts
    }

    /// Appends `new` verdicts, whole lines per write.
    pub(crate) fn append(&self, new: &[(Oid, ParseVerdict)]) {
        if new.is_empty() {
            return;
        }
        let result = (|| -> std::io::Result<()> {
            if let Some(dir) = self.path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            let mut file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.path)?;
            let mut chunk = Vec::with_capacity(CHUNK);
            for (oid, verdict) in new {
                let line = format_line(oid, verdict);
                if line.len() > CHUNK {
                    // One verdict this long is a message nobody needs cached.
                    continue;
                }
                if chunk.len() + line.len() > CHUNK {
                    file.write_all(&chunk)?;
                    chunk.clear();
                }
                chunk.extend_from_slice(&line);
            }
            file.write_all(&chunk)
        })();
        if let Err(e) = result {
            tracing::warn!(path = %self.path.display(), error = %e, "cannot write the parse cache");
        }
    }

    /// Replaces the file with `verdicts`, atomically.
    fn rewrite(&self, verdicts: &HashMap<Oid, ParseVerdict>) {
        let body: Vec<u8> = verdicts
            .iter()
            .flat_map(|(oid, verdict)| format_line(oid, verdict))
            .collect();
        if let Err(e) = crate::disk::write_atomic(&self.path, &body) {
            tracing::warn!(path = %self.path.display(), error = %e, "cannot compact the parse cache");
        }
    }
}

fn format_line(oid: &Oid, verdict: &ParseVerdict) -> Vec<u8> {
    let json = serde_json::to_string(verdict).unwrap_or_else(|_| "null".into());
    format!("{oid} {json}\n").into_bytes()
}

fn parse_line(line: &[u8]) -> Option<(Oid, ParseVerdict)> {
    let line = std::str::from_utf8(line).ok()?;
    let (oid, json) = line.split_once(' ')?;
    if oid.len() != 40 {
        return None;
    }
    let oid = Oid::from_str(oid).ok()?;
    let verdict: ParseVerdict = serde_json::from_str(json).ok()?;
    Some((oid, verdict))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn oid(n: u8) -> Oid {
        Oid::from_bytes(&[n; 20]).unwrap()
    }

    #[test]
    fn verdicts_survive_a_reload_and_torn_or_foreign_lines_are_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let file = VerdictFile::in_dir(&dir.path().join("cache"));
        assert!(file.load(100).is_empty());
        file.append(&[
            (oid(1), None),
            (oid(2), Some((3, 7, "syntax error: \"x\"\nnext".into()))),
        ]);
        // A crash mid-line, and lines that are not verdicts.
        let mut raw = std::fs::OpenOptions::new()
            .append(true)
            .open(&file.path)
            .unwrap();
        raw.write_all(b"0303030303030303030303030303030303030303 [4,1,\"cut sh")
            .unwrap();
        raw.write_all(b"\nnot a verdict\n\xff\xfe\n").unwrap();
        drop(raw);
        file.append(&[(oid(4), None)]);
        let loaded = file.load(100);
        assert_eq!(loaded.len(), 3, "{loaded:?}");
        assert_eq!(loaded[&oid(1)], None);
        assert_eq!(
            loaded[&oid(2)],
            Some((3, 7, "syntax error: \"x\"\nnext".into()))
        );
        assert_eq!(loaded[&oid(4)], None);
        assert!(!loaded.contains_key(&oid(3)));
    }

    #[test]
    fn duplicates_are_compacted_and_an_oversized_file_starts_over() {
        let dir = tempfile::tempdir().unwrap();
        let file = VerdictFile::in_dir(dir.path());
        let same: Vec<(Oid, ParseVerdict)> = (0..SLACK + 10).map(|_| (oid(9), None)).collect();
        file.append(&same);
        assert_eq!(file.load(100).len(), 1);
        // Compacted to the one verdict it holds.
        let text = std::fs::read_to_string(&file.path).unwrap();
        assert_eq!(text.lines().count(), 1, "{text}");

        file.append(&[(oid(1), None), (oid(2), None)]);
        assert!(file.load(2).is_empty());
        assert!(file.load(100).is_empty());
    }
}
