//! Headless Chromium driven through ChromeDriver's WebDriver HTTP API:
//! Debian's `chromium` and `chromium-driver` (`.ci/setup` installs them).
//! A real browser renders ferry's pages, with its CSP enforced, so a test
//! reads what a person sees.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use super::{Owned, free_port, spawn_owned, wait_listening};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

pub struct Browser {
    _driver: Owned,
    addr: std::net::SocketAddr,
    session: String,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// A phone's viewport (390 x 844 CSS pixels, emulated: a desktop
    /// window cannot be narrower than 500): the pages must read on one.
    pub fn start() -> Browser {
        for binary in [CHROMIUM, CHROMEDRIVER] {
            assert!(
                Path::new(binary).exists(),
                "{binary} is missing: run .ci/setup (installs Debian's chromium and chromium-driver)"
            );
        }
        let profile = tempfile::tempdir().unwrap();
        let port = free_port();
        let log = profile.path().join("chromedriver.log");
        let mut driver = spawn_owned(
            Command::new(CHROMEDRIVER)
                .arg(format!("--port={port}"))
                .arg(format!("--log-path={}", log.display()))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
        )
        .expect("cannot start chromedriver");
        wait_listening(&mut driver, port, &log, Duration::from_secs(20));
        let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        // The machine has no internet: without the background-networking
        // flags Chromium spends its start failing to reach Google.
        let args = [
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            &format!(
                "--user-data-dir={}",
                profile.path().join("chromium").display()
            ),
        ];
        let body = serde_json::json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": args,
                "mobileEmulation": {"deviceMetrics": {"width": 390, "height": 844, "pixelRatio": 2.0}}
            }
        }}});
        let (code, text) = post(addr, "/session", &body);
        assert_eq!(code, 200, "chromedriver did not start a session: {text}");
        let reply: serde_json::Value = serde_json::from_str(&text).unwrap();
        let session = reply["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session id: {text}"))
            .to_string();
        Browser {
            _driver: driver,
            addr,
            session,
            _profile: profile,
        }
    }

    pub fn open(&self, url: &str) {
        let (code, text) = post(
            self.addr,
            &format!("/session/{}/url", self.session),
            &serde_json::json!({ "url": url }),
        );
        assert_eq!(code, 200, "cannot open {url}: {text}");
    }

    /// Runs `script` (a function body) in the page and returns its value.
    /// WebDriver evaluates it outside the page's CSP, as DevTools does.
    pub fn eval(&self, script: &str) -> serde_json::Value {
        let (code, text) = post(
            self.addr,
            &format!("/session/{}/execute/sync", self.session),
            &serde_json::json!({ "script": script, "args": [] }),
        );
        assert_eq!(code, 200, "script failed: {text}");
        let reply: serde_json::Value = serde_json::from_str(&text).unwrap();
        reply["value"].clone()
    }

    /// What a person sees: the page's rendered text.
    pub fn text(&self) -> String {
        self.eval("return document.body.innerText;")
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    pub fn url(&self) -> String {
        self.eval("return location.href;")
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// Saves a PNG of the viewport under `target/tmp/screenshots/` (kept
    /// as a CI artifact) and returns its path.
    pub fn screenshot(&self, name: &str) -> PathBuf {
        let (code, text) = http_request(
            self.addr,
            "GET",
            &format!("/session/{}/screenshot", self.session),
            &[],
        );
        assert_eq!(code, 200, "screenshot failed: {text}");
        let reply: serde_json::Value = serde_json::from_str(&text).unwrap();
        use base64::Engine;
        let png = base64::engine::general_purpose::STANDARD
            .decode(reply["value"].as_str().unwrap_or_default())
            .unwrap();
        assert!(png.starts_with(b"\x89PNG"), "not a PNG");
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("screenshots");
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!("{name}.png"));
        std::fs::write(&path, png).unwrap();
        path
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = http_request(
            self.addr,
            "DELETE",
            &format!("/session/{}", self.session),
            &[],
        );
    }
}

fn post(addr: std::net::SocketAddr, path: &str, body: &serde_json::Value) -> (u16, String) {
    http_request(addr, "POST", path, &serde_json::to_vec(body).unwrap())
}

/// One request, read up to its `Content-Length`: ChromeDriver keeps the
/// connection open whatever the request says, so reading to the end would
/// wait for a timeout on every call.
fn http_request(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    body: &[u8],
) -> (u16, String) {
    use std::io::{BufRead, BufReader, Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).expect("connect to chromedriver");
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .unwrap();
    stream.write_all(body).unwrap();
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    let code = line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let mut length = 0;
    loop {
        line.clear();
        reader.read_line(&mut line).unwrap();
        if line.trim().is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':')
            && name.eq_ignore_ascii_case("content-length")
        {
            length = value.trim().parse().unwrap_or(0);
        }
    }
    let mut bytes = vec![0; length];
    reader.read_exact(&mut bytes).unwrap();
    (code, String::from_utf8_lossy(&bytes).into_owned())
}
