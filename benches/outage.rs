//! A long outage of the git remote, GitHub and the kube-apiserver at once,
//! against `ferry run` (the scenario of the fault test, run longer):
//!
//!     cargo bench --bench outage -- [SECONDS]     (default 300)
//!
//! Prints the failed fetches, descriptors and RSS before and at their peak,
//! and how long after the return every commit was published, applied and
//! reported once. Needs the control plane (`scripts/test` or
//! tools/control-plane/start.sh) like the tests.

#[path = "../tests/it/support/mod.rs"]
mod support;

use std::time::Duration;

fn main() {
    let seconds: u64 = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(300);
    let r = support::outage::run(Duration::from_secs(seconds));
    println!("outage of {seconds} s (1 s polls, 2 s backoff cap)");
    println!("  failed fetches of the DAGs source: {}", r.failed_fetches);
    println!(
        "  open descriptors: {} before, {} at peak",
        r.fds_before, r.fds_peak
    );
    println!(
        "  RSS: {:.1} MiB before, {:.1} MiB at peak",
        r.rss_before, r.rss_peak
    );
    println!(
        "  converged {:.2} s after the return (published, applied, one status history per commit)",
        r.converged_after.as_secs_f64()
    );
}
