//! Directories Airflow can read whatever ferry's umask.

use std::path::Path;

/// Published directories are `rwxr-xr-x` whatever the umask: Airflow runs
/// as another user than ferry, and a umask of 077 would make revisions
/// unreadable to it.
pub(super) const DIR_MODE: u32 = 0o755;

/// `mkdir` with [`DIR_MODE`]: the umask is applied by the kernel, so the mode
/// is set again only when the umask removed some of its bits.
pub(super) fn create_dir_readable(path: &Path) -> std::io::Result<()> {
    std::fs::create_dir(path)?;
    set_dir_mode_if_masked(path)
}

pub(super) fn set_dir_mode_if_masked(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    if umask() & DIR_MODE != 0 {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(DIR_MODE))?;
    }
    Ok(())
}

/// The process umask, read once without changing it (`umask(2)` can only
/// be read by setting it, which would race with other threads creating
/// files). Unknown means "assume it masks something".
fn umask() -> u32 {
    static UMASK: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    *UMASK.get_or_init(|| {
        std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|status| {
                status
                    .lines()
                    .find_map(|l| l.strip_prefix("Umask:"))
                    .and_then(|v| u32::from_str_radix(v.trim(), 8).ok())
            })
            .unwrap_or(0o777)
    })
}
