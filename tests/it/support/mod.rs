//! Real git servers and helpers for ferry's integration tests.
//!
//! Every server listens on 127.0.0.1 on a free port and is killed on drop.
//! Missing server binaries fail the test with the command that installs
//! them: `.ci/setup` (run by `.ci/run`).
#![allow(dead_code)]

pub mod browser;
pub mod cluster;
pub mod github;
pub mod ml;
pub mod moto;
pub mod outage;
pub mod postgres;
pub mod process;

pub use process::{Owned, spawn_owned};

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A port nothing listens on now, and one this test binary has not handed
/// out before: tests run in parallel threads, and the kernel may give a
/// just-released port to the next `bind(0)`. (Another process can still
/// take it before the server binds; servers are waited for with a liveness
/// check, so that shows as a clear failure, not a hang.)
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("no free port on 127.0.0.1");
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

pub fn wait_for_port(port: u16, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("nothing listens on 127.0.0.1:{port} after {timeout:?}");
}

/// Waits for `child` to listen on `port`, failing at once (with its log)
/// if it exits first: a server that could not bind, say because another
/// process took the port, is reported as such instead of as a timeout.
pub fn wait_listening(child: &mut Owned, port: u16, log: &Path, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Ok(Some(status)) = child.try_wait() {
            panic!(
                "the server meant for 127.0.0.1:{port} exited ({status}) before listening:\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        assert!(
            Instant::now() < deadline,
            "nothing listens on 127.0.0.1:{port} after {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn require_binary(path: &str) -> PathBuf {
    let p = PathBuf::from(path);
    assert!(
        p.exists(),
        "{path} is missing: run `.ci/setup` (installs lighttpd, openssh-server and the Airflow venv)"
    );
    p
}

pub fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn git(dir: &Path) -> Command {
    let mut cmd = Command::new("git");
    cmd.current_dir(dir)
        .env("GIT_AUTHOR_NAME", "test")
        .env("GIT_AUTHOR_EMAIL", "test@example.invalid")
        .env("GIT_COMMITTER_NAME", "test")
        .env("GIT_COMMITTER_EMAIL", "test@example.invalid")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("HOME", dir)
        .stdin(Stdio::null());
    cmd
}

/// A bare repository (served) plus a work tree that pushes to it.
pub struct Repo {
    pub root: PathBuf,
    pub bare: PathBuf,
    pub work: PathBuf,
    pub name: String,
}

impl Repo {
    /// Creates `<root>/<name>.git` and a clone to commit from.
    pub fn new(root: &Path, name: &str) -> Repo {
        let bare = root.join(format!("{name}.git"));
        let work = root.join(format!("{name}-work"));
        run(git(root)
            .args(["init", "-q", "--bare", "-b", "main"])
            .arg(&bare));
        // smart HTTP and git daemon serve only repos that say so or are exported;
        // uploadpack.allowAnySHA1InWant keeps shallow fetches simple for every server.
        run(git(&bare).args(["config", "http.receivepack", "false"]));
        std::fs::write(bare.join("git-daemon-export-ok"), "").unwrap();
        run(git(root).args(["init", "-q", "-b", "main"]).arg(&work));
        run(git(&work).args(["remote", "add", "origin"]).arg(&bare));
        Repo {
            root: root.to_path_buf(),
            bare,
            work,
            name: name.to_string(),
        }
    }

    /// Writes files (path, content; `None` deletes), commits and pushes `branch`.
    pub fn commit(&self, files: &[(&str, Option<&str>)], message: &str) -> String {
        for (path, content) in files {
            let full = self.work.join(path);
            match content {
                Some(text) => {
                    std::fs::create_dir_all(full.parent().unwrap()).unwrap();
                    std::fs::write(&full, text).unwrap();
                }
                None => {
                    let _ = std::fs::remove_file(&full);
                }
            }
        }
        run(git(&self.work).args(["add", "-A"]));
        run(git(&self.work).args(["commit", "-q", "--allow-empty", "-m", message]));
        self.push("main");
        self.head()
    }

    pub fn push(&self, branch: &str) {
        run(git(&self.work)
            .args(["push", "-q", "-f", "origin"])
            .arg(format!("HEAD:refs/heads/{branch}")));
    }

    pub fn head(&self) -> String {
        run(git(&self.work).args(["rev-parse", "HEAD"]))
            .trim()
            .to_string()
    }

    /// Rewrites history: a new root commit, force-pushed.
    pub fn force_push_rewrite(&self, files: &[(&str, Option<&str>)]) -> String {
        run(git(&self.work).args(["checkout", "-q", "--orphan", "rewrite"]));
        run(git(&self.work).args(["rm", "-rq", "--cached", "."]));
        for entry in std::fs::read_dir(&self.work).unwrap() {
            let entry = entry.unwrap();
            if entry.file_name() != ".git" {
                let p = entry.path();
                if p.is_dir() {
                    std::fs::remove_dir_all(p).unwrap();
                } else {
                    std::fs::remove_file(p).unwrap();
                }
            }
        }
        let head = self.commit(files, "rewritten history");
        run(git(&self.work).args(["branch", "-q", "-M", "main"]));
        head
    }

    pub fn delete_branch(&self, branch: &str) {
        run(git(&self.bare)
            .args(["update-ref", "-d"])
            .arg(format!("refs/heads/{branch}")));
    }
}

/// A server a test started; dropping it stops it (see [`Owned`]).
pub struct Server {
    _child: Owned,
    pub port: u16,
    pub log: PathBuf,
}

impl Server {
    pub fn stop(self) {}
}

/// `git daemon` serving every repo under `root` at git://127.0.0.1:port/<name>.git
pub fn git_daemon(root: &Path, port: u16) -> Server {
    let log = root.join(format!("git-daemon-{port}.log"));
    // `git daemon` would run git-daemon as its child, and killing the
    // wrapper would orphan the server: start the real binary directly.
    let exec_path = run(Command::new("git").arg("--exec-path"))
        .trim()
        .to_string();
    let mut child = spawn_owned(
        Command::new(Path::new(&exec_path).join("git-daemon"))
            .args([
                "--reuseaddr",
                "--export-all",
                "--listen=127.0.0.1",
                "--informative-errors",
            ])
            .arg(format!("--port={port}"))
            .arg(format!("--base-path={}", root.display()))
            .arg(root)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap()),
    )
    .expect("cannot start git-daemon (is git installed?)");
    wait_listening(&mut child, port, &log, Duration::from_secs(10));
    Server {
        _child: child,
        port,
        log,
    }
}

/// lighttpd + git-http-backend at http://127.0.0.1:port/git/<name>.git,
/// basic auth required (user / password).
pub fn smart_http(root: &Path, user: &str, password: &str) -> Server {
    smart_http_on(root, free_port(), user, password)
}

pub fn smart_http_on(root: &Path, port: u16, user: &str, password: &str) -> Server {
    let binary = require_binary("/usr/sbin/lighttpd");
    let dir = root.join(format!("lighttpd-{port}"));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("users"), format!("{user}:{password}\n")).unwrap();
    let backend = "/usr/lib/git-core/git-http-backend";
    require_binary(backend);
    let conf = format!(
        r#"server.document-root = "{root}"
server.bind = "127.0.0.1"
server.port = {port}
server.errorlog = "{dir}/error.log"
server.modules = ("mod_alias", "mod_setenv", "mod_auth", "mod_authn_file", "mod_cgi")
alias.url = ( "/git/" => "{backend}/" )
$HTTP["url"] =~ "^/git/" {{
  cgi.assign = ( "" => "" )
  setenv.set-environment = ( "GIT_PROJECT_ROOT" => "{root}", "GIT_HTTP_EXPORT_ALL" => "1" )
  auth.backend = "plain"
  auth.backend.plain.userfile = "{dir}/users"
  auth.require = ( "" => ( "method" => "basic", "realm" => "git", "require" => "valid-user" ) )
}}
"#,
        root = root.display(),
        dir = dir.display(),
    );
    lighttpd(&binary, &dir, port, &conf)
}

/// lighttpd with `conf`, its files in `dir`, once it listens on `port`.
fn lighttpd(binary: &Path, dir: &Path, port: u16, conf: &str) -> Server {
    let conf_path = dir.join("lighttpd.conf");
    std::fs::write(&conf_path, conf).unwrap();
    let mut child = spawn_owned(
        Command::new(binary)
            .arg("-D")
            .arg("-f")
            .arg(&conf_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("stderr.log")).unwrap()),
    )
    .expect("cannot start lighttpd");
    wait_listening(
        &mut child,
        port,
        &dir.join("stderr.log"),
        Duration::from_secs(10),
    );
    Server {
        _child: child,
        port,
        log: dir.join("error.log"),
    }
}

pub struct Ssh {
    pub server: Server,
    pub client_key: PathBuf,
    pub known_hosts: PathBuf,
    pub user: String,
    pub dir: PathBuf,
}

/// sshd on a high port with its own host key; `client_key` may log in.
pub fn sshd(root: &Path) -> Ssh {
    sshd_on(root, free_port())
}

/// Keys live in `<root>/sshd-<port>` and are reused when the same port is
/// started again, so a client configured earlier still trusts the host.
pub fn sshd_on(root: &Path, port: u16) -> Ssh {
    let sshd = require_binary("/usr/sbin/sshd");
    let dir = root.join(format!("sshd-{port}"));
    std::fs::create_dir_all(&dir).unwrap();
    let keygen = |path: &Path| {
        if !path.exists() {
            run(Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-C", "ferry-test", "-f"])
                .arg(path));
        }
    };
    let host_key = dir.join("host_ed25519");
    let client_key = dir.join("client_ed25519");
    keygen(&host_key);
    keygen(&client_key);
    std::fs::copy(dir.join("client_ed25519.pub"), dir.join("authorized_keys")).unwrap();
    let host_pub = std::fs::read_to_string(dir.join("host_ed25519.pub")).unwrap();
    let mut fields = host_pub.split_whitespace();
    let (kind, key) = (fields.next().unwrap(), fields.next().unwrap());
    let known_hosts = dir.join("known_hosts");
    std::fs::write(&known_hosts, format!("[127.0.0.1]:{port} {kind} {key}\n")).unwrap();
    // sshd insists on its privilege-separation directory.
    let _ = std::fs::create_dir_all("/run/sshd");
    let user = run(Command::new("id").arg("-un")).trim().to_string();
    let conf = format!(
        "Port {port}\nListenAddress 127.0.0.1\nHostKey {dir}/host_ed25519\nAuthorizedKeysFile {dir}/authorized_keys\n\
         PasswordAuthentication no\nKbdInteractiveAuthentication no\nPubkeyAuthentication yes\n\
         PermitRootLogin prohibit-password\nStrictModes no\nUsePAM no\nPidFile {dir}/sshd.pid\n",
        dir = dir.display()
    );
    let conf_path = dir.join("sshd_config");
    std::fs::write(&conf_path, conf).unwrap();
    let log = dir.join("sshd.log");
    let mut child = spawn_owned(
        Command::new(sshd)
            .args(["-D", "-e", "-f"])
            .arg(&conf_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap()),
    )
    .expect("cannot start sshd");
    wait_listening(&mut child, port, &log, Duration::from_secs(10));
    Ssh {
        server: Server {
            _child: child,
            port,
            log,
        },
        client_key,
        known_hosts,
        user,
        dir,
    }
}

/// Minimal HTTP/1.1 GET against ferry's server: (status, body).
pub fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    http_request(addr, "GET", path, &[], &[])
}

/// Minimal HTTP/1.1 POST: (status, body).
pub fn http_post(
    addr: std::net::SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, String) {
    http_request(addr, "POST", path, headers, body)
}

/// One HTTP/1.1 request on a fresh connection: (status, decoded body).
pub fn http_request(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).expect("connect to ferry");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        request.push_str(&format!("{k}: {v}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).unwrap();
    // The server may answer (413) before reading a large body; that is fine.
    let _ = stream.write_all(body);
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response);
    let response = String::from_utf8_lossy(&response).into_owned();
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    // axum answers small bodies unchunked; decode chunked ones anyway.
    let body = if response
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(&body)
    } else {
        body
    };
    (status, body)
}

fn dechunk(body: &str) -> String {
    let mut out = String::new();
    let mut rest = body;
    while let Some((size, tail)) = rest.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 {
            break;
        }
        out.push_str(&tail[..n]);
        rest = &tail[n + 2..];
    }
    out
}

/// Polls `check` every 20 ms until it returns Some, or panics after `timeout`.
pub fn eventually<T>(timeout: Duration, what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check() {
            return v;
        }
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Reads every file under `dir` into (relative path, content), sorted.
pub fn read_tree(dir: &Path) -> Vec<(String, String)> {
    try_read_tree(dir)
        .unwrap_or_else(|e| panic!("cannot read the tree under {}: {e}", dir.display()))
}

/// [`read_tree`] that reports instead of panicking when anything vanishes
/// under it (retention renames a revision away before deleting it).
pub fn try_read_tree(dir: &Path) -> std::io::Result<Vec<(String, String)>> {
    fn walk(base: &Path, dir: &Path, out: &mut Vec<(String, String)>) -> std::io::Result<()> {
        for entry in std::fs::read_dir(dir)? {
            let path = entry?.path();
            if path.is_dir() {
                walk(base, &path, out)?;
            } else {
                let rel = path
                    .strip_prefix(base)
                    .unwrap_or(&path)
                    .to_string_lossy()
                    .into_owned();
                out.push((rel, std::fs::read_to_string(&path)?));
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out)?;
    out.sort();
    Ok(out)
}

/// Creates a commit in `repo` whose tree holds exactly `files`
/// (path -> (content, mode)), and points `refname` at it. Much faster than
/// the git CLI for the hundreds of commits the invariant tests need.
pub fn build_commit(
    repo: &git2::Repository,
    files: &std::collections::BTreeMap<String, (Vec<u8>, i32)>,
    parent: Option<git2::Oid>,
    refname: &str,
    message: &str,
) -> git2::Oid {
    use std::collections::BTreeMap;
    #[derive(Default)]
    struct Node {
        files: BTreeMap<String, (git2::Oid, i32)>,
        dirs: BTreeMap<String, Node>,
    }
    fn write(repo: &git2::Repository, node: &Node) -> git2::Oid {
        let mut builder = repo.treebuilder(None).unwrap();
        for (name, (oid, mode)) in &node.files {
            builder.insert(name, *oid, *mode).unwrap();
        }
        for (name, child) in &node.dirs {
            builder.insert(name, write(repo, child), 0o040000).unwrap();
        }
        builder.write().unwrap()
    }
    let mut root = Node::default();
    for (path, (content, mode)) in files {
        let blob = repo.blob(content).unwrap();
        let mut parts: Vec<&str> = path.split('/').collect();
        let name = parts.pop().unwrap();
        let mut node = &mut root;
        for part in parts {
            node = node.dirs.entry(part.to_string()).or_default();
        }
        node.files.insert(name.to_string(), (blob, *mode));
    }
    let tree = repo.find_tree(write(repo, &root)).unwrap();
    let sig = git2::Signature::now("test", "test@example.invalid").unwrap();
    let parents: Vec<git2::Commit> = parent
        .map(|p| repo.find_commit(p).unwrap())
        .into_iter()
        .collect();
    let parent_refs: Vec<&git2::Commit> = parents.iter().collect();
    let oid = repo
        .commit(None, &sig, &sig, message, &tree, &parent_refs)
        .unwrap();
    repo.reference(refname, oid, true, message).unwrap();
    oid
}

/// Names of staging or deletion leftovers (`.tmp-*`) in a destination.
pub fn staging_leftovers(dest: &Path) -> Vec<String> {
    std::fs::read_dir(dest.join(".ferry"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".tmp-"))
        .collect()
}

/// `ferry run --config <config>` with stderr in `log`; returns once its
/// server listens on `port`. Dropped, it is killed with whatever it started.
/// Writes `<dir>/ferry.yaml` for a daemon on 127.0.0.1:`port` with one
/// source, `name`, polled every second from the git daemon on `git_port`,
/// and `targets` (YAML, indented as under `targets:`). Returns its path.
pub fn daemon_config(dir: &Path, port: u16, name: &str, git_port: u16, targets: &str) -> PathBuf {
    let path = dir.join("ferry.yaml");
    std::fs::write(
        &path,
        format!(
            "cache_dir: {cache}\nserver:\n  listen: 127.0.0.1:{port}\n\
             sources:\n  - name: {name}\n    url: git://127.0.0.1:{git_port}/{name}.git\n    interval: 1s\n\
             targets:\n{targets}",
            cache = dir.join("cache").display(),
        ),
    )
    .unwrap();
    path
}

/// [`daemon_config`] for source `dags` published whole into `dest`.
pub fn dags_daemon_config(dir: &Path, port: u16, git_port: u16, dest: &Path) -> PathBuf {
    let targets = format!(
        "  dags:\n    source: dags\n    destination: {}\n",
        dest.display()
    );
    daemon_config(dir, port, "dags", git_port, &targets)
}

pub fn spawn_ferry(config: &Path, log: &Path, port: u16, envs: &[(&str, &Path)]) -> Owned {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ferry"));
    cmd.args(["run", "--config"])
        .arg(config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap());
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let mut child = spawn_owned(&mut cmd).expect("cannot start ferry");
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Ok(Some(status)) = child.try_wait() {
            panic!(
                "ferry exited ({status}) before listening:\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        assert!(
            Instant::now() < deadline,
            "ferry does not listen on {port} after 10 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child
}

/// Sends SIGTERM and asserts a clean exit within 30 s.
pub fn stop_ferry(mut child: Owned) {
    let status = child.signal_and_wait(libc::SIGTERM, Duration::from_secs(30));
    assert!(
        status.success(),
        "SIGTERM must stop ferry cleanly: {status:?}"
    );
}

/// A running control plane (tools/control-plane, started with
/// `--workloads`: kube-apiserver, etcd, controller-manager, scheduler and
/// kwok). `.ci/run` starts one and exports FERRY_TEST_KUBECONFIG*; otherwise
/// the first test that asks starts one for this test binary, torn down when
/// the binary exits. It has no nodes until a test makes them (`nodes`).
pub struct ControlPlane {
    pub admin: PathBuf,
    pub restricted: PathBuf,
    pub audit_log: PathBuf,
}

pub fn control_plane() -> &'static ControlPlane {
    static CP: std::sync::OnceLock<ControlPlane> = std::sync::OnceLock::new();
    CP.get_or_init(|| {
        if let (Some(admin), Some(restricted), Some(audit)) = (
            std::env::var_os("FERRY_TEST_KUBECONFIG"),
            std::env::var_os("FERRY_TEST_KUBECONFIG_RESTRICTED"),
            std::env::var_os("FERRY_TEST_AUDIT_LOG"),
        ) {
            return ControlPlane {
                admin: admin.into(),
                restricted: restricted.into(),
                audit_log: audit.into(),
            };
        }
        // Kept for the life of the test binary; the watchdog stops the daemons.
        let dir = tempfile::tempdir().unwrap().keep();
        start_control_plane(&dir, true);
        ControlPlane {
            admin: dir.join("admin.kubeconfig"),
            restricted: dir.join("ferry.kubeconfig"),
            audit_log: dir.join("audit.log"),
        }
    })
}

/// Starts tools/control-plane in `dir` (with controllers, scheduler and
/// kwok when `workloads`), stopped by its watchdog when this test binary
/// exits.
pub fn start_control_plane(dir: &Path, workloads: bool) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tools/control-plane/start.sh");
    let out = Command::new(&script)
        .arg(dir)
        .args(workloads.then_some("--workloads"))
        .arg("--owner-pid")
        .arg(std::process::id().to_string())
        .output()
        .expect("cannot run tools/control-plane/start.sh");
    assert!(
        out.status.success(),
        "control plane did not start (needs Go; builds once):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A control plane of one test's own (so restarting its apiserver, or
/// sizing its nodes, touches no other test), stopped when dropped.
pub struct PrivateControlPlane {
    pub dir: tempfile::TempDir,
}

impl PrivateControlPlane {
    pub fn start(workloads: bool) -> PrivateControlPlane {
        let dir = tempfile::tempdir().unwrap();
        start_control_plane(dir.path(), workloads);
        PrivateControlPlane { dir }
    }

    pub fn admin(&self) -> PathBuf {
        self.dir.path().join("admin.kubeconfig")
    }

    pub fn audit_log(&self) -> PathBuf {
        self.dir.path().join("audit.log")
    }

    /// The kubeconfig of user `ferry`, who may do only what RBAC grants it.
    pub fn restricted(&self) -> PathBuf {
        self.dir.path().join("ferry.kubeconfig")
    }

    /// kill -9 of the apiserver, then the same server again; returns when ready.
    pub fn restart_apiserver(&self) {
        let script =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tools/control-plane/restart-apiserver.sh");
        let out = Command::new(script).arg(self.dir.path()).output().unwrap();
        assert!(
            out.status.success(),
            "apiserver did not come back: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for PrivateControlPlane {
    fn drop(&mut self) {
        let stop = Path::new(env!("CARGO_MANIFEST_DIR")).join("tools/control-plane/stop.sh");
        let _ = Command::new(stop).arg(self.dir.path()).status();
    }
}

/// A namespace name no other test (or earlier run) uses.
pub fn unique_namespace(prefix: &str) -> String {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("{prefix}-{}-{n}-{:x}", std::process::id(), nanos & 0xffff)
}

/// Audit-log write events (not dry runs) whose URI mentions `needle`.
pub fn audited_writes(audit_log: &Path, needle: &str) -> Vec<String> {
    audit_writes(audit_log)
        .into_iter()
        .filter(|(_, uri)| uri.contains(needle))
        .map(|(verb, uri)| format!("{verb} {uri}"))
        .collect()
}

/// True for the users the cluster's own components write as: the
/// controllers (each with its kube-system service account), the scheduler,
/// kwok playing the kubelets, and the apiserver itself.
fn is_control_plane_user(user: &str) -> bool {
    user.starts_with("system:kube-")
        || user.starts_with("system:serviceaccount:kube-system:")
        || user.starts_with("system:node:")
        || user == "system:apiserver"
        || user == "kwok"
}

/// Every completed write in the audit log that was not a dry run and not
/// made by the control plane itself: (verb, request URI).
pub fn audit_writes(audit_log: &Path) -> Vec<(String, String)> {
    let text = std::fs::read_to_string(audit_log).unwrap_or_default();
    text.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|e| e["stage"] == "ResponseComplete")
        .filter(|e| !is_control_plane_user(e["user"]["username"].as_str().unwrap_or("")))
        .filter_map(|e| {
            let uri = e["requestURI"].as_str()?.to_string();
            let verb = e["verb"].as_str().unwrap_or("?").to_string();
            (!uri.contains("dryRun=")).then_some((verb, uri))
        })
        .collect()
}

/// A Kubernetes target config for tests: everything in `ns`.
pub fn kube_target(ns: &str, force: bool) -> ferry::config::KubernetesTargetConfig {
    ferry::config::KubernetesTargetConfig {
        source: "platform".into(),
        path: "manifests".into(),
        default_namespace: ns.into(),
        allowed_namespaces: vec![],
        allowed_kinds: vec![],
        // Tests of CRDs apply them; nothing else cluster-wide.
        cluster_scoped: vec![
            ferry::config::ClusterScoped {
                kind: "Namespace".into(),
                names: vec![],
            },
            ferry::config::ClusterScoped {
                kind: "CustomResourceDefinition.apiextensions.k8s.io".into(),
                names: vec![],
            },
        ],
        force,
        prune: true,
        prune_limit_percent: 100,
        drift_interval: Duration::from_secs(300),
        self_heal: false,
        inventory_namespace: None,
        wait_timeout: Duration::from_secs(60),
        // Most tests check what is applied, not how it runs: those that
        // check health set this.
        health_timeout: Duration::ZERO,
        kubeconfig: None,
        ignore: Vec::new(),
        owner: String::new(),
        releases_path: "releases".into(),
        secrets_manager: None,
        helm: ferry::config::HelmConfig {
            binary: helm_binary(),
            kube_version: Some("1.37".into()),
            api_versions: Vec::new(),
            plain_http_registries: Vec::new(),
            repositories: Vec::new(),
        },
        kustomize: ferry::config::KustomizeConfig {
            binary: kustomize_binary(),
        },
        cache_dir: std::env::temp_dir().join("ferry-test-charts"),
    }
}

/// kube-prometheus-stack's values for the render benchmark, as its README
/// figures were measured: admission webhooks off (the tests apply them, and
/// run their certificate hook Jobs, with the chart's defaults), Grafana's
/// password pinned (the chart makes one up otherwise).
pub const KUBE_PROMETHEUS_VALUES: &str = "\
prometheusOperator:
  admissionWebhooks:
    enabled: false
    patch:
      enabled: false
  tls:
    enabled: false
grafana:
  adminPassword: from-a-sealed-value
";

/// The helm binary `.ci/setup` builds (tools/render/build.sh).
pub fn helm_binary() -> PathBuf {
    render_binary("helm")
}

/// The kustomize binary `.ci/setup` builds (tools/render/build.sh).
pub fn kustomize_binary() -> PathBuf {
    render_binary("kustomize")
}

fn render_binary(name: &str) -> PathBuf {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(".cache/render/bin")
        .join(name);
    require_binary(path.to_str().unwrap())
}

/// A static HTTP server (lighttpd) of `root`: a Helm chart repository when
/// `root` holds an `index.yaml` and the archives it names.
pub fn static_http(root: &Path) -> Server {
    static_http_with(root, None)
}

/// [`static_http`], asking every request for HTTP basic `user:password`.
pub fn static_http_with(root: &Path, login: Option<(&str, &str)>) -> Server {
    let binary = require_binary("/usr/sbin/lighttpd");
    let port = free_port();
    let dir = tempfile::tempdir().unwrap().keep();
    let mut conf = format!(
        "server.document-root = \"{root}\"\nserver.bind = \"127.0.0.1\"\nserver.port = {port}\nserver.errorlog = \"{dir}/error.log\"\nmimetype.assign = (\".yaml\" => \"text/yaml\", \".tgz\" => \"application/gzip\")\n",
        root = root.display(),
        dir = dir.display(),
    );
    if let Some((user, password)) = login {
        std::fs::write(dir.join("users"), format!("{user}:{password}\n")).unwrap();
        conf.push_str(&format!(
            "server.modules = (\"mod_auth\", \"mod_authn_file\")\nauth.backend = \"plain\"\nauth.backend.plain.userfile = \"{}/users\"\n\
             auth.require = ( \"\" => ( \"method\" => \"basic\", \"realm\" => \"charts\", \"require\" => \"valid-user\" ) )\n",
            dir.display()
        ));
    }
    lighttpd(&binary, &dir, port, &conf)
}

/// Commits exactly `files` (path, content) on top of `main`.
pub fn commit_files(repo: &git2::Repository, files: &[(&str, String)]) -> git2::Oid {
    let files: std::collections::BTreeMap<String, (Vec<u8>, i32)> = files
        .iter()
        .map(|(p, c)| (p.to_string(), (c.clone().into_bytes(), 0o100644)))
        .collect();
    let parent = repo.refname_to_id("refs/heads/main").ok();
    build_commit(repo, &files, parent, "refs/heads/main", "rev")
}

/// A plain TCP forwarder from 127.0.0.1:`port` to `target` (TLS passes
/// through untouched), for "server down, then back" tests. Runs until the
/// test process exits.
pub fn tcp_forward(port: u16, target: std::net::SocketAddr) {
    let listener = TcpListener::bind(("127.0.0.1", port)).expect("forward port taken");
    std::thread::spawn(move || {
        for client in listener.incoming().flatten() {
            let Ok(server) = TcpStream::connect(target) else {
                continue;
            };
            let (mut c2, mut s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
            let (mut c1, mut s1) = (client, server);
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut c1, &mut s1);
                let _ = s1.shutdown(std::net::Shutdown::Write);
            });
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut s2, &mut c2);
                let _ = c2.shutdown(std::net::Shutdown::Write);
            });
        }
    });
}

/// The value of one whole series line in Prometheus text (`name{labels}`
/// exactly, so `x{a="b"} 1` never matches `x{a="b"} 12`).
pub fn series(metrics: &str, name_and_labels: &str) -> Option<f64> {
    metrics.lines().find_map(|line| {
        let (series, value) = line.rsplit_once(' ')?;
        (series == name_and_labels).then(|| value.parse().ok())?
    })
}

/// Fails the test unless the series exists with exactly `value`.
pub fn assert_series(metrics: &str, name_and_labels: &str, value: f64) {
    assert_eq!(
        series(metrics, name_and_labels),
        Some(value),
        "{name_and_labels} in:\n{metrics}"
    );
}

/// A field of /proc/<pid>/status (e.g. `VmHWM:`) in MiB.
pub fn proc_mib(pid: u32, key: &str) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<f64>().ok())
        .map_or(f64::NAN, |kib| kib / 1024.0)
}

/// Dry-runs `manifests` (server-side apply, nothing written) on the test
/// apiserver and fails the test on any refusal; returns the plan.
pub async fn assert_dry_run_accepted(
    client: &kube::Client,
    default_namespace: &str,
    manifests: Vec<ferry::desired::manifests::Manifest>,
) -> ferry::kubernetes::plan::Plan {
    let mut config = kube_target(default_namespace, false);
    config.prune = false;
    // What the API server accepts is the question here (deploy/ is applied
    // by Terraform, not ferry): every kind present may be cluster-wide.
    config.cluster_scoped = manifests
        .iter()
        .map(|m| ferry::config::ClusterScoped {
            kind: ferry::desired::resolve::kind_name(&m.id),
            names: vec![],
        })
        .collect();
    let plan = plan_manifests(client, "check", "rev", &config, Ok(manifests), None).await;
    assert!(plan.errors.is_empty(), "{:#?}", plan.errors);
    let refused: Vec<String> = plan
        .objects
        .iter()
        .filter_map(|o| Some(format!("{}: {}", o.id, o.error.as_ref()?)))
        .collect();
    assert!(
        refused.is_empty(),
        "the API server refused:\n{}",
        refused.join("\n")
    );
    plan
}

/// A key pair for signing commits (`gpg.format=ssh`) as `<dir>/<name>`;
/// returns the private key path and the public key line.
pub fn signing_key(dir: &Path, name: &str) -> (PathBuf, String) {
    let key = dir.join(name);
    run(Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", name, "-f"])
        .arg(&key));
    let public = std::fs::read_to_string(key.with_extension("pub")).unwrap();
    (key, public.trim().to_string())
}

/// An allowed signers file (`<dir>/allowed_signers`) listing a fresh key
/// that signs nothing, for sources whose heads must be refused.
pub fn allowed_signers_of_a_stranger(dir: &Path) -> PathBuf {
    let (_, public) = signing_key(dir, "stranger");
    let allowed = dir.join("allowed_signers");
    std::fs::write(&allowed, format!("ci@example.com {public}\n")).unwrap();
    allowed
}

/// A TCP forwarder that can be cut: while down, every open connection is
/// shut and new ones are closed on accept, as if the server were gone.
/// For outage tests of git remotes, GitHub and the apiserver at once.
pub struct Link {
    pub port: u16,
    up: std::sync::Arc<std::sync::atomic::AtomicBool>,
    open: std::sync::Arc<std::sync::Mutex<Vec<TcpStream>>>,
}

impl Link {
    pub fn start(target: std::net::SocketAddr) -> Link {
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::sync::{Arc, Mutex};
        let listener = TcpListener::bind("127.0.0.1:0").expect("no port for a link");
        let port = listener.local_addr().unwrap().port();
        let up = Arc::new(AtomicBool::new(true));
        let open: Arc<Mutex<Vec<TcpStream>>> = Arc::new(Mutex::new(Vec::new()));
        let (up2, open2) = (up.clone(), open.clone());
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                if !up2.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                let Ok(server) = TcpStream::connect(target) else {
                    continue;
                };
                {
                    let mut open = open2.lock().unwrap();
                    open.retain(|s| s.peer_addr().is_ok());
                    open.push(client.try_clone().unwrap());
                    open.push(server.try_clone().unwrap());
                }
                let (mut c2, mut s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                let (mut c1, mut s1) = (client, server);
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut c1, &mut s1);
                    let _ = s1.shutdown(std::net::Shutdown::Both);
                });
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut s2, &mut c2);
                    let _ = c2.shutdown(std::net::Shutdown::Both);
                });
            }
        });
        Link { port, up, open }
    }

    pub fn addr(&self) -> std::net::SocketAddr {
        std::net::SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    pub fn set_up(&self, up: bool) {
        self.up.store(up, std::sync::atomic::Ordering::SeqCst);
        if !up {
            for stream in self.open.lock().unwrap().drain(..) {
                let _ = stream.shutdown(std::net::Shutdown::Both);
            }
        }
    }
}

/// The forms in which `secret` could leak: as is, percent-encoded, and
/// base64 (standard and URL-safe) at each of the three alignments it can
/// have inside a longer encoded value (a Basic auth header, a JSON blob), so
/// the check does not depend on where the secret sat in what was encoded.
pub fn secret_forms(secret: &str) -> Vec<String> {
    use base64::Engine;
    let mut forms = vec![
        secret.to_string(),
        form_urlencoded::byte_serialize(secret.as_bytes()).collect(),
    ];
    for engine in [
        &base64::engine::general_purpose::STANDARD_NO_PAD,
        &base64::engine::general_purpose::URL_SAFE_NO_PAD,
    ] {
        for offset in 0..3usize {
            let mut bytes = vec![b'x'; offset];
            bytes.extend_from_slice(secret.as_bytes());
            let encoded = engine.encode(&bytes);
            // Characters that depend on the neighbouring bytes are dropped.
            let start = (offset * 4).div_ceil(3);
            let end = encoded.len().saturating_sub(3);
            if end > start + 8 {
                forms.push(encoded[start..end].to_string());
            }
        }
    }
    forms.sort();
    forms.dedup();
    forms
}

/// Fails if any form of `secret` (see [`secret_forms`]) appears on any of
/// the named output surfaces.
pub fn assert_no_secret(what: &str, secret: &str, surfaces: &[(&str, &str)]) {
    assert!(
        secret.len() >= 12,
        "test secrets must be long enough to search for"
    );
    for form in secret_forms(secret) {
        for (surface, text) in surfaces {
            assert!(
                !text.contains(&form),
                "the {what} leaked into the {surface} (as `{form}`)"
            );
        }
    }
}

/// Writes `holder` into a Lease, renewed now and never again: another
/// process taking the Lease, as far as its holder can tell.
pub async fn take_lease(
    leases: &kube::Api<k8s_openapi::api::coordination::v1::Lease>,
    name: &str,
    holder: &str,
) {
    // The holder renews meanwhile (a compare-and-swap on resourceVersion,
    // as ferry's own writes): read again and retry on a conflict.
    for _ in 0..50 {
        let mut taken = leases.get(name).await.unwrap();
        if let Some(spec) = taken.spec.as_mut() {
            spec.holder_identity = Some(holder.into());
            spec.renew_time = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime(
                k8s_openapi::jiff::Timestamp::now(),
            ));
        }
        match leases.replace(name, &Default::default(), &taken).await {
            Ok(_) => return,
            Err(kube::Error::Api(status)) if status.code == 409 => continue,
            Err(err) => panic!("cannot take the Lease {name}: {err}"),
        }
    }
    panic!("the Lease {name} kept changing under every attempt to take it");
}

/// Binds deploy/base's ClusterRole to the restricted user, as deploy/ binds it
/// to ferry's ServiceAccount.
pub async fn grant_ferrys_cluster_role(admin: &kube::Client) {
    grant_cluster_roles(admin, &["deploy/base/clusterrole.yaml"]).await;
}

/// Applies each ClusterRole file of this repo (`deploy/...`) and binds it to
/// the restricted user, as deploy/ binds them to ferry's ServiceAccount.
pub async fn grant_cluster_roles(admin: &kube::Client, files: &[&str]) {
    use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
    use kube::api::{Api, Patch, PatchParams};
    for file in files {
        let role_yaml =
            std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(file)).unwrap();
        let role: serde_json::Value = serde_yaml_ng::from_str(&role_yaml).unwrap();
        let name = role["metadata"]["name"].as_str().unwrap().to_string();
        Api::<ClusterRole>::all(admin.clone())
            .patch(
                &name,
                &PatchParams::apply("test-setup").force(),
                &Patch::Apply(&role),
            )
            .await
            .unwrap();
        let binding_name = format!("{name}-test-user");
        let binding = serde_json::json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
            "metadata": {"name": binding_name},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "ferry"}]
        });
        Api::<ClusterRoleBinding>::all(admin.clone())
            .patch(
                &binding_name,
                &PatchParams::apply("test-setup").force(),
                &Patch::Apply(&binding),
            )
            .await
            .unwrap();
    }
}

/// Plans `manifests` as `ferry plan` does (a review-depth plan); manifests
/// that do not parse give a plan of their errors, as the gate lists them.
pub async fn plan_manifests(
    client: &kube::Client,
    target: &str,
    revision: &str,
    config: &ferry::config::KubernetesTargetConfig,
    manifests: Result<
        Vec<ferry::desired::manifests::Manifest>,
        Vec<ferry::desired::manifests::ManifestError>,
    >,
    last: Option<&ferry::kubernetes::last_applied::LastApplied>,
) -> ferry::kubernetes::plan::Plan {
    use ferry::kubernetes::plan::{self, Depth, Plan};
    match manifests {
        Ok(m) => plan::plan(client, target, revision, config, &m, last, Depth::Review)
            .await
            .unwrap(),
        Err(errors) => Plan::refused(target, revision, errors),
    }
}

/// The gate's reading of `at` in the bare repo `mirror`, with the feeds a
/// Kubernetes target of `config` gives it (ferry's own `targets::feeds`:
/// manifests, Kustomize, Helm releases): every object, or every problem as
/// `file:line: message`.
pub fn gate(
    mirror: &Path,
    at: git2::Oid,
    config: &ferry::config::KubernetesTargetConfig,
) -> Result<Vec<ferry::desired::manifests::Manifest>, Vec<String>> {
    let target = ferry::targets::Target::Kubernetes(ferry::kubernetes::target::KubeTarget::new(
        "platform",
        config.clone(),
    ));
    let feeds = ferry::targets::feeds(std::slice::from_ref(&target));
    let revision = ferry::revision::Revision {
        source: "platform".into(),
        commit: at,
        mirror: mirror.to_path_buf(),
        origin: ferry::revision::Origin::Branch,
        signed_by: None,
    };
    ferry::desired::read(&revision, &feeds, &mut Default::default())
        .map(|d| d.manifests.unwrap_or_default())
        .map_err(|r| r.problems.iter().map(ToString::to_string).collect())
}

/// What the gate reads of `at`, planned for applying and applied, as the
/// agent does; the outcome, whatever it is.
pub async fn gate_and_apply(
    client: &kube::Client,
    mirror: &Path,
    at: git2::Oid,
    config: &ferry::config::KubernetesTargetConfig,
    last: &mut Option<ferry::kubernetes::last_applied::LastApplied>,
) -> ferry::kubernetes::apply::ApplyOutcome {
    use ferry::kubernetes::plan::{self, Depth};
    let manifests = gate(mirror, at, config).unwrap();
    let plan = plan::plan(
        client,
        "platform",
        &at.to_string(),
        config,
        &manifests,
        last.as_ref(),
        Depth::Apply,
    )
    .await
    .unwrap();
    let applier = ferry::kubernetes::apply::Applier {
        client,
        target: "platform",
        config,
        cancel: None,
    };
    applier.apply(plan, last).await.unwrap()
}

/// [`gate_and_apply`], which must succeed.
pub async fn gate_and_apply_ok(
    client: &kube::Client,
    mirror: &Path,
    at: git2::Oid,
    config: &ferry::config::KubernetesTargetConfig,
    last: &mut Option<ferry::kubernetes::last_applied::LastApplied>,
) {
    let out = gate_and_apply(client, mirror, at, config, last).await;
    assert!(out.succeeded(), "{out:?}");
}

/// An OCI registry (distribution, the reference implementation, built by
/// tools/render/build.sh) on 127.0.0.1, plain HTTP, storage in `dir`.
pub fn oci_registry(dir: &Path) -> Server {
    oci_registry_with(dir, None)
}

/// [`oci_registry`], asking for HTTP basic `user:password` (htpasswd,
/// bcrypt made by the system's libcrypt).
pub fn oci_registry_with(dir: &Path, login: Option<(&str, &str)>) -> Server {
    let binary = render_binary("registry");
    let port = free_port();
    let conf = dir.join("registry.yml");
    let mut text = format!(
        "version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\nlog:\n  level: error\n",
        dir.join("data").display()
    );
    if let Some((user, password)) = login {
        let htpasswd = dir.join("htpasswd");
        std::fs::write(&htpasswd, format!("{user}:{}\n", bcrypt(password))).unwrap();
        text.push_str(&format!(
            "auth:\n  htpasswd:\n    realm: charts\n    path: {}\n",
            htpasswd.display()
        ));
    }
    std::fs::write(&conf, text).unwrap();
    let mut child = spawn_owned(
        Command::new(binary)
            .arg("serve")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("registry.log")).unwrap()),
    )
    .expect("cannot start the registry");
    wait_listening(
        &mut child,
        port,
        &dir.join("registry.log"),
        Duration::from_secs(10),
    );
    Server {
        _child: child,
        port,
        log: dir.join("registry.log"),
    }
}

/// `ferry publish-dags` of `reference`'s `subdir` (`""`: the whole repo)
/// from `bare` into `dest`, its mirror in `cache`.
pub fn publish_dags_command(
    bare: &Path,
    reference: &str,
    subdir: &str,
    dest: &Path,
    cache: &Path,
) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ferry"));
    cmd.args([
        "publish-dags",
        "--subdir",
        subdir,
        "--ref",
        reference,
        "--repo",
    ])
    .arg(bare)
    .arg("--dest")
    .arg(dest)
    .arg("--cache-dir")
    .arg(cache);
    cmd
}

/// The documents of a file of the platform template's Airflow manifests
/// (`platform-repo-template/manifests/airflow/<file>`).
pub fn airflow_template(file: &str) -> Vec<serde_json::Value> {
    template_manifests(&format!("airflow/{file}"))
}

/// Python that runs the jupyterhub_config.py at `sys.argv[1]` with a
/// stand-in `c` recording what it sets (`c.<Class>.<trait>`), as the hub
/// loads it; a script goes on from there with `c`.
pub const HUB_CONFIG_RECORDER: &str = "import json, sys, types\n\
    class C:\n    def __getattr__(self, name):\n        return self.__dict__.setdefault(name, types.SimpleNamespace())\n\
    c = C()\nexec(compile(open(sys.argv[1]).read(), 'jupyterhub_config.py', 'exec'), {'c': c, 'get_config': lambda: c})\n";

/// Runs a future to completion from synchronous polling code (an
/// `eventually` check) inside a multi-threaded tokio test.
pub fn block_on<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::task::block_in_place(|| tokio::runtime::Handle::current().block_on(f))
}

/// The documents of `platform-repo-template/manifests/<file>`.
pub fn template_manifests(file: &str) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("platform-repo-template/manifests")
            .join(file),
    )
    .unwrap();
    serde_yaml_ng::Deserializer::from_str(&text)
        .map(|d| <serde_json::Value as serde::Deserialize>::deserialize(d).unwrap())
        .filter(|d| !d.is_null())
        .collect()
}

/// deploy/bootstrap.sh, as terraform/bootstrap.tf runs it, against the
/// cluster of `kubeconfig` with ferry's `image`; must succeed. Returns what
/// it said on stderr.
pub fn bootstrap_ferry(kubeconfig: &Path, image: &str) -> String {
    let out = Command::new(Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/bootstrap.sh"))
        .env("KUBECONFIG", kubeconfig)
        .env("IMAGE", image)
        .env("ROLE", "arn:aws:iam::123456789012:role/ml-platform-ferry")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "deploy/bootstrap.sh: {stderr}");
    stderr
}

/// `password`'s bcrypt hash, as htpasswd files hold it: libxcrypt
/// (Debian's libcrypt1) makes it, through Python's ctypes.
fn bcrypt(password: &str) -> String {
    let script = "import ctypes, sys\n\
        c = ctypes.CDLL('libcrypt.so.1')\n\
        c.crypt_gensalt.restype = c.crypt.restype = ctypes.c_char_p\n\
        c.crypt_gensalt.argtypes = [ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p, ctypes.c_int]\n\
        c.crypt.argtypes = [ctypes.c_char_p, ctypes.c_char_p]\n\
        print(c.crypt(sys.argv[1].encode(), c.crypt_gensalt(b'$2b$', 5, None, 0)).decode())\n";
    let out = Command::new("python3")
        .args(["-c", script, password])
        .output()
        .unwrap();
    let hash = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(
        out.status.success() && hash.starts_with("$2b$"),
        "bcrypt: {hash} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    hash
}

/// The parse-verdict files ferry keeps in `cache` (one per ferry version).
pub fn verdict_files(cache: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(cache)
        .map(|entries| {
            entries
                .flatten()
                .filter(|e| {
                    e.file_name()
                        .to_string_lossy()
                        .starts_with("python-verdicts-")
                })
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default()
}

/// Times `git worktree add` of `commit` from `bare` into `wt` (git-sync's
/// way of checking out a commit), then removes the worktree.
pub fn timed_worktree(bare: &Path, wt: &Path, commit: &str, check: impl FnOnce(&Path)) -> Duration {
    let git = |args: &[&str]| {
        let out = Command::new("git")
            .arg("-C")
            .arg(bare)
            .args(args)
            .output()
            .expect("git runs");
        assert!(
            out.status.success(),
            "git {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let wt_str = wt.to_str().expect("UTF-8 path");
    let started = Instant::now();
    git(&["worktree", "add", "--quiet", "--detach", wt_str, commit]);
    let took = started.elapsed();
    check(wt);
    git(&["worktree", "remove", "--force", wt_str]);
    took
}

/// Runs `cmd` with `stdin` as its input; its stdout, or a panic with
/// everything it said.
pub fn piped(cmd: &mut Command, stdin: &str) -> String {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    {
        use std::io::Write;
        let mut input = child.stdin.take().unwrap();
        input.write_all(stdin.as_bytes()).unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The add-ons terraform/addons.tf applies (Cluster Autoscaler, NVIDIA
/// device plugin, metrics-server), rendered the same way.
pub fn render_cluster_addons() -> String {
    render_terraform_template(
        "cluster-addons.yaml.tftpl",
        "cluster_name = \"ml-platform\", region = \"eu-west-1\", \
         cluster_autoscaler_role_arn = \"arn:aws:iam::123456789012:role/ml-platform-cluster-autoscaler\", \
         cluster_autoscaler_version = \"v1.33.0\"",
    )
}

/// `templatefile` of terraform/templates/`file` with `vars` (HCL object
/// attributes), by `terraform console`.
pub fn render_terraform_template(file: &str, vars: &str) -> String {
    let template = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("terraform/templates")
        .join(file);
    let expr = format!("templatefile(\"{}\", {{{vars}}})\n", template.display());
    let terraform = std::env::var("FERRY_TERRAFORM").unwrap_or_else(|_| "terraform".into());
    let empty = tempfile::tempdir().unwrap();
    let text = piped(
        Command::new(&terraform)
            .arg("console")
            .current_dir(empty.path()),
        &expr,
    );
    // A multi-line string prints as a heredoc.
    let body = text
        .trim()
        .strip_prefix("<<EOT")
        .and_then(|t| t.strip_suffix("EOT"))
        .unwrap_or_else(|| panic!("unexpected terraform console output:\n{text}"));
    body.trim_start_matches('\n').to_string()
}
