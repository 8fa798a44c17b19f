//! Leader failover of two `ferry run` processes on one Lease of the test
//! kube-apiserver, with deploy/'s settings (15 s Lease). Prints figures;
//! asserts nothing.
//!
//!     cargo bench --bench failover            # 3 rounds of each
//!     cargo bench --bench failover -- 5       # rounds
//!
//! Each round commits, waits for the holder to publish it, then either
//! SIGTERMs the holder (clean stop: it releases the Lease) or SIGKILLs it
//! (the standby must wait out the Lease), and times signal -> the standby's
//! DAGs link pointing at that commit. The stopped process comes back as the
//! next round's standby.

#[path = "../tests/it/support/mod.rs"]
mod support;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use support::Owned;

use support::*;

struct Node {
    name: &'static str,
    config: PathBuf,
    dest: PathBuf,
    port: u16,
    child: Option<Owned>,
    runs: usize,
}

fn published(dest: &Path) -> Option<String> {
    let target = std::fs::read_link(dest.join("current")).ok()?;
    Some(target.file_name()?.to_string_lossy().into_owned())
}

fn wait_published(dest: &Path, commit: &str, timeout: Duration) {
    eventually(timeout, "publish", || {
        (published(dest).as_deref() == Some(commit)).then_some(())
    });
}

impl Node {
    fn start(&mut self, log_dir: &Path) {
        self.runs += 1;
        let log = log_dir.join(format!("{}-{}.log", self.name, self.runs));
        self.child = Some(spawn_ferry(&self.config, &log, self.port, &[]));
    }

    fn ready(&self) -> bool {
        let addr = format!("127.0.0.1:{}", self.port).parse().unwrap();
        http_get(addr, "/readyz").0 == 200
    }
}

fn main() {
    let rounds: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(3);
    let cp = control_plane();
    let tmp = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let repo = Repo::new(tmp.path(), "dags");
    let mut head = repo.commit(&[("dags/a.py", Some("a = 0\n"))], "start");
    let lease = unique_namespace("failover");
    let mut nodes: Vec<Node> = ["a", "b"]
        .into_iter()
        .map(|name| {
            let port = free_port();
            let dir = tmp.path().join(name);
            let config = tmp.path().join(format!("{name}.yaml"));
            std::fs::write(
                &config,
                format!(
                    "cache_dir: {cache}\nserver:\n  listen: 127.0.0.1:{port}\n\
                     sources:\n  - name: dags\n    url: {url}\n    interval: 1s\n    max_backoff: 2s\n\
                     targets:\n  dags:\n    source: dags\n    subdir: dags\n    destination: {dest}\n\
                     leader_election:\n  namespace: default\n  lease_name: {lease}\n  identity: ferry-{name}\n  kubeconfig: {kc}\n",
                    cache = dir.join("cache").display(),
                    url = repo.bare.display(),
                    dest = dir.join("dest").display(),
                    kc = cp.admin.display(),
                ),
            )
            .unwrap();
            Node {
                name,
                config,
                dest: dir.join("dest"),
                port,
                child: None,
                runs: 0,
            }
        })
        .collect();
    nodes[0].start(tmp.path());
    wait_published(&nodes[0].dest, &head, Duration::from_secs(30));
    nodes[1].start(tmp.path());
    std::thread::sleep(Duration::from_secs(2));
    let (mut holder, mut standby) = (0, 1);
    let mut results: Vec<(&str, Duration)> = Vec::new();
    for round in 0..rounds * 2 {
        let kill = round % 2 == 1;
        head = repo.commit(
            &[("dags/a.py", Some(&format!("a = {}\n", round + 1)))],
            "next",
        );
        wait_published(&nodes[holder].dest, &head, Duration::from_secs(30));
        assert!(!nodes[standby].ready(), "the standby must not be ready");
        // The stop lands anywhere in the holder's renewal period, not right
        // after a renewal the bench happens to line up with.
        std::thread::sleep(Duration::from_millis(fastrand::u64(0..2200)));
        let mut child = nodes[holder].child.take().unwrap();
        let before_stop = published(&nodes[standby].dest);
        let started = Instant::now();
        if kill {
            child.kill().unwrap();
            child.wait().unwrap();
        } else {
            stop_ferry(child);
        }
        if kill {
            // A standby that acted before the Lease expired would print a
            // better number: nothing may move for most of the Lease.
            let quiet = Duration::from_secs(LEASE_SECONDS * 2 / 3);
            while started.elapsed() < quiet {
                assert_eq!(
                    published(&nodes[standby].dest),
                    before_stop,
                    "the standby published {:?} after a kill -9, before the Lease expired",
                    started.elapsed()
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        wait_published(&nodes[standby].dest, &head, Duration::from_secs(60));
        let took = started.elapsed();
        results.push((if kill { "kill -9" } else { "SIGTERM" }, took));
        println!(
            "round {}: {:<8} ferry-{} -> ferry-{} publishing: {:>6} ms",
            round + 1,
            if kill { "kill -9" } else { "SIGTERM" },
            nodes[holder].name,
            nodes[standby].name,
            took.as_millis()
        );
        nodes[holder].start(tmp.path());
        std::mem::swap(&mut holder, &mut standby);
        std::thread::sleep(Duration::from_secs(2));
    }
    for how in ["SIGTERM", "kill -9"] {
        let mut times: Vec<Duration> = results
            .iter()
            .filter(|(h, _)| *h == how)
            .map(|(_, t)| *t)
            .collect();
        times.sort();
        if times.is_empty() {
            continue;
        }
        println!(
            "{how:<8} holder -> standby publishing, {} rounds: min {} ms, median {} ms, max {} ms",
            times.len(),
            times[0].as_millis(),
            times[times.len() / 2].as_millis(),
            times[times.len() - 1].as_millis()
        );
    }
    for node in &mut nodes {
        if let Some(child) = node.child.take() {
            stop_ferry(child);
        }
    }
}

/// deploy/'s Lease duration, which the configs above leave at its default.
const LEASE_SECONDS: u64 = 15;
