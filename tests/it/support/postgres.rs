//! A real PostgreSQL server (Debian's `postgresql` package, installed by
//! `.ci/setup`) on 127.0.0.1, in a directory of its own, stopped when
//! dropped. PostgreSQL refuses to run as root, so as root it runs as the
//! package's `postgres` user.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use super::process::{Owned, spawn_owned};
use super::{free_port, run, wait_listening};

pub struct Postgres {
    _child: Owned,
    pub port: u16,
    bin: PathBuf,
    /// The superuser's, when the server checks passwords.
    password: Option<String>,
    /// Kept for the server's life: its data and socket directory.
    _dir: tempfile::TempDir,
}

/// The newest installed server's binaries (`/usr/lib/postgresql/<major>/bin`).
fn bin_dir() -> PathBuf {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let major = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("postgres").exists().then_some((major, bin))
        })
        .collect();
    found.sort();
    found
        .pop()
        .map(|(_, bin)| bin)
        .expect("PostgreSQL is missing: run `.ci/setup` (installs Debian's postgresql)")
}

/// `program` of the server's binaries, as the `postgres` user when root.
fn as_owner(bin: &Path, program: &str) -> Command {
    if unsafe { libc::geteuid() } == 0 {
        let mut cmd = Command::new("runuser");
        cmd.args(["-u", "postgres", "--"]).arg(bin.join(program));
        cmd
    } else {
        Command::new(bin.join(program))
    }
}

impl Postgres {
    /// The server's `psql`.
    pub fn psql(&self) -> Command {
        Command::new(self.bin.join("psql"))
    }

    /// initdb and a server on a free port, trusting local connections.
    pub fn start() -> Postgres {
        Postgres::start_with(None)
    }

    /// A server that checks passwords (scram-sha-256, as RDS), its
    /// superuser's being `password`.
    pub fn start_with_passwords(password: &str) -> Postgres {
        Postgres::start_with(Some(password))
    }

    fn start_with(password: Option<&str>) -> Postgres {
        let bin = bin_dir();
        let dir = tempfile::tempdir().unwrap();
        // The server's user must reach its directory.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        let data = dir.path().join("data");
        let log = dir.path().join("postgres.log");
        let mut initdb = as_owner(&bin, "initdb");
        initdb.args(["-U", "postgres", "--no-sync", "-E", "UTF8"]);
        match password {
            None => initdb.args(["-A", "trust"]),
            Some(pw) => {
                let file = dir.path().join("pwfile");
                std::fs::write(&file, pw).unwrap();
                std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
                initdb
                    .args(["--auth-host=scram-sha-256", "--auth-local=trust"])
                    .arg(format!("--pwfile={}", file.display()))
            }
        };
        run(initdb.arg("-D").arg(&data));
        let port = free_port();
        std::fs::File::create(&log).unwrap();
        std::fs::set_permissions(&log, std::fs::Permissions::from_mode(0o666)).unwrap();
        let mut child = spawn_owned(
            as_owner(&bin, "postgres")
                .arg("-D")
                .arg(&data)
                .args(["-p", &port.to_string(), "-c", "listen_addresses=127.0.0.1"])
                .arg("-c")
                .arg(format!("unix_socket_directories={}", dir.path().display()))
                .args(["-c", "fsync=off"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(std::fs::File::options().append(true).open(&log).unwrap()),
        )
        .expect("cannot start postgres");
        wait_listening(&mut child, port, &log, Duration::from_secs(30));
        // Listening is not accepting: until recovery ends it answers "the
        // database system is starting up".
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while !Command::new(bin.join("pg_isready"))
            .args(["-q", "-h", "127.0.0.1", "-p", &port.to_string()])
            .status()
            .is_ok_and(|s| s.success())
        {
            assert!(
                std::time::Instant::now() < deadline,
                "PostgreSQL does not accept connections after 30 s:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Postgres {
            _child: child,
            port,
            bin,
            password: password.map(str::to_string),
            _dir: dir,
        }
    }

    /// Runs `sql` as the superuser in database `db`; returns what it printed
    /// (unaligned, tuples only).
    pub fn sql(&self, db: &str, sql: &str) -> String {
        let port = self.port.to_string();
        let mut psql = Command::new(self.bin.join("psql"));
        if let Some(pw) = &self.password {
            psql.env("PGPASSWORD", pw);
        }
        run(psql
            .args(["-h", "127.0.0.1", "-p", &port, "-U", "postgres", "-d", db])
            .args(["-v", "ON_ERROR_STOP=1", "-At", "-c", sql]))
        .trim()
        .to_string()
    }

    /// A database owned by a user of the same name (as each platform app
    /// gets its own), and the SQLAlchemy URL to it.
    pub fn database(&self, name: &str, password: &str) -> String {
        self.sql(
            "postgres",
            &format!("CREATE USER {name} PASSWORD '{password}'"),
        );
        self.sql("postgres", &format!("CREATE DATABASE {name} OWNER {name}"));
        format!(
            "postgresql+psycopg2://{name}:{password}@127.0.0.1:{}/{name}",
            self.port
        )
    }
}
