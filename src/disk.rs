//! A full disk told apart from other I/O failures, so the error says what
//! to do (free space; ferry retries by itself) and how much room is left.

use std::path::Path;

/// Replaces `path` with `bytes` whole: a temp file beside it, synced,
/// renamed over it, and the directory synced, so a crash leaves the old
/// content or the new, never part of either.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    std::fs::create_dir_all(dir)?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    std::fs::File::open(dir)?.sync_all()
}

/// `ENOSPC` or `EDQUOT`: the filesystem (or the user's quota) is full.
pub fn is_full(err: &std::io::Error) -> bool {
    // By kind too: wrappers such as tempfile's keep the kind, not the errno.
    matches!(err.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT))
        || matches!(
            err.kind(),
            std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
        )
}

/// Whether a library's error text (libgit2 reports `strerror` text) says
/// the disk is full.
pub fn says_full(message: &str) -> bool {
    let lower = message.to_ascii_lowercase();
    lower.contains("no space left on device") || lower.contains("disk quota exceeded")
}

/// Bytes available to this process on the filesystem holding `path` (or
/// its nearest existing ancestor, as the path itself may not exist yet).
pub fn free_bytes(path: &Path) -> Option<u64> {
    let existing = path.ancestors().find(|p| p.exists())?;
    let c_path = std::ffi::CString::new(existing.as_os_str().as_encoded_bytes()).ok()?;
    let mut stat = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `c_path` is NUL-terminated and `stat` is written by statvfs
    // before it is read, only on success.
    let rc = unsafe { libc::statvfs(c_path.as_ptr(), stat.as_mut_ptr()) };
    if rc != 0 {
        return None;
    }
    // SAFETY: statvfs returned 0, so it filled `stat`.
    let stat = unsafe { stat.assume_init() };
    // The field types differ between targets (u32 on some 32-bit ones).
    #[allow(clippy::useless_conversion)]
    let (blocks, size) = (u64::from(stat.f_bavail), u64::from(stat.f_frsize));
    Some(blocks.saturating_mul(size))
}

/// "12.5 MiB free" / "free space unknown", for error messages.
pub fn free_text(path: &Path) -> String {
    match free_bytes(path) {
        Some(bytes) => format!("{} free", human(bytes)),
        None => "free space unknown".to_string(),
    }
}

fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_as_people_write_them() {
        assert_eq!(human(512), "512 B");
        assert_eq!(human(1536), "1.5 KiB");
        assert_eq!(human(5 * 1024 * 1024 * 1024), "5.0 GiB");
    }

    #[test]
    fn full_is_recognised_by_errno_and_by_text() {
        assert!(is_full(&std::io::Error::from_raw_os_error(libc::ENOSPC)));
        assert!(!is_full(&std::io::Error::from_raw_os_error(libc::EACCES)));
        let wrapped = std::io::Error::new(std::io::ErrorKind::StorageFull, "at path x");
        assert!(is_full(&wrapped));
        assert!(says_full("failed to write pack: No space left on device"));
        assert!(!says_full("object not found"));
        // A path that does not exist yet is measured at its parent.
        let dir = tempfile::tempdir().unwrap();
        assert!(free_bytes(&dir.path().join("not/yet")).is_some_and(|b| b > 0));
    }
}
