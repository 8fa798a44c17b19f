//! What this binary is: version and commit (set by build.rs).

pub const VERSION: &str = env!("CARGO_PKG_VERSION");
pub const COMMIT: &str = env!("FERRY_GIT_COMMIT");
/// `ferry --version`.
pub const LONG_VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("FERRY_GIT_COMMIT"),
    ")"
);
