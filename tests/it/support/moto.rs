//! The moto server (AWS APIs) with ferry's launcher (`tools/moto/ferry_moto.py`),
//! one per test binary, from `.cache/moto-venv` (installed by `.ci/setup`).
//! Tests that use it hold [`Moto::lock`] and start from `POST /moto-api/reset`.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

pub struct Moto {
    pub url: String,
    pub port: u16,
    _child: Mutex<Child>,
    /// Async, as the tests hold it across awaits (each on its own runtime).
    serial: tokio::sync::Mutex<()>,
}

pub fn moto() -> &'static Moto {
    static MOTO: OnceLock<Moto> = OnceLock::new();
    MOTO.get_or_init(private)
}

/// A server of the caller's own, stopped when dropped: for a long test
/// whose state another test's reset must not wipe.
pub fn private() -> Moto {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let python = root.join(".cache/moto-venv/bin/python");
    assert!(
        python.exists(),
        "{} is missing: run .ci/setup (it installs moto from tools/moto/requirements.txt)",
        python.display()
    );
    let port = super::free_port();
    let log = std::env::temp_dir().join(format!("ferry-moto-{port}.log"));
    let child = Command::new(python)
        .arg(root.join("tools/moto/ferry_moto.py"))
        .args(["--port", &port.to_string()])
        // The server also watches this process, for the static one (never dropped).
        .args(["--owner-pid", &std::process::id().to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("cannot start moto");
    super::wait_for_port(port, Duration::from_secs(30));
    Moto {
        url: format!("http://127.0.0.1:{port}"),
        port,
        _child: Mutex::new(child),
        serial: tokio::sync::Mutex::new(()),
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        if let Ok(child) = self._child.get_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Moto {
    /// Serializes the tests of this binary on the one server and resets it.
    pub async fn lock(&self) -> tokio::sync::MutexGuard<'_, ()> {
        let guard = self.serial.lock().await;
        let (code, body) = self.post("/moto-api/reset");
        assert_eq!(code, 200, "moto reset: {body}");
        let (code, _) = self.post("/ferry-test/throttle?count=0");
        assert_eq!(code, 200);
        guard
    }

    pub fn post(&self, path: &str) -> (u16, String) {
        super::http_post(
            format!("127.0.0.1:{}", self.port).parse().unwrap(),
            path,
            &[],
            b"",
        )
    }

    pub fn get(&self, path: &str) -> (u16, String) {
        super::http_get(format!("127.0.0.1:{}", self.port).parse().unwrap(), path)
    }
}
