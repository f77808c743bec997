//! A real PostgreSQL server for a test: `initdb` into a temp dir, `pg_ctl start` on a
//! free loopback port, stopped (and its files removed) when dropped. As root, the
//! server runs as `nobody`, since PostgreSQL refuses to run as root.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::print_stderr)] // test helpers fail loudly by design

use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The uid and gid the server runs as when the tests run as root.
const NOBODY: (u32, u32) = (65534, 65534);

pub struct Server {
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
    running: bool,
}

/// Where PostgreSQL's server programs are: `$COMFYFLEET_PG_BINDIR`, else Debian's
/// `/usr/lib/postgresql/<newest>/bin`, else `PATH`.
pub fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("COMFYFLEET_PG_BINDIR") {
        return PathBuf::from(dir);
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|entry| {
                    let version = entry.file_name().to_str()?.parse().ok()?;
                    let bin = entry.path().join("bin");
                    bin.join("initdb").exists().then_some((version, bin))
                })
                .collect()
        })
        .unwrap_or_default();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return bin;
    }
    let found = std::env::var_os("PATH")
        .and_then(|path| std::env::split_paths(&path).find(|dir| dir.join("initdb").exists()));
    found.unwrap_or_else(|| {
        panic!("PostgreSQL is not installed (no initdb): run scripts/test, or apt-get install postgresql")
    })
}

fn is_root() -> bool {
    // The owner of a file this process just made is its effective uid.
    let probe = tempfile::tempfile().unwrap();
    std::os::unix::fs::MetadataExt::uid(&probe.metadata().unwrap()) == 0
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl Server {
    /// Starts a fresh server; panics with PostgreSQL's own words if it cannot.
    pub fn start() -> Server {
        let dir = tempfile::Builder::new().prefix("comfyfleet-pg-").tempdir().unwrap();
        let root = is_root();
        if root {
            std::os::unix::fs::chown(dir.path(), Some(NOBODY.0), Some(NOBODY.1)).unwrap();
        }
        let mut server = Server { bin: bin_dir(), port: 0, dir, running: false };
        let data = server.data_dir();
        let init = server.run_as_owner(server.bin.join("initdb"), |command| {
            command.arg("-D").arg(&data).args(["--auth=trust", "-U", "postgres", "--locale=C", "-E", "UTF8"]);
        });
        assert!(init.status.success(), "initdb failed:\n{}", String::from_utf8_lossy(&init.stderr));
        // A port picked free can be taken before the server binds it: try a few.
        for _ in 0..5 {
            server.port = free_port();
            if server.pg_ctl_start() {
                server.running = true;
                return server;
            }
        }
        panic!("PostgreSQL did not start:\n{}", server.log());
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn run_as_owner(&self, program: PathBuf, configure: impl FnOnce(&mut Command)) -> Output {
        let mut command = Command::new(program);
        configure(&mut command);
        command.current_dir(self.dir.path());
        if is_root() {
            command.uid(NOBODY.0).gid(NOBODY.1).env("HOME", self.dir.path());
        }
        command.output().unwrap()
    }

    fn pg_ctl_start(&self) -> bool {
        let data = self.data_dir();
        let log = self.dir.path().join("postgres.log");
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c max_connections=300 -c fsync=off",
            self.port,
            self.dir.path().display()
        );
        let started = self.run_as_owner(self.bin.join("pg_ctl"), |command| {
            command
                .arg("-D")
                .arg(&data)
                .arg("-l")
                .arg(&log)
                .args(["-o", &options, "-w", "-t", "60", "start"]);
        });
        started.status.success()
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("postgres.log")).unwrap_or_default()
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `postgres://postgres@127.0.0.1:PORT/NAME`.
    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    /// Creates database `name` (letters, digits and `_`) and returns its URL.
    pub fn create_database(&self, name: &str) -> String {
        assert!(name.bytes().all(|byte| byte.is_ascii_alphanumeric() || byte == b'_'), "{name}");
        let output = Command::new(self.bin.join("psql"))
            .args([
                "-X",
                "-q",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                "127.0.0.1",
                "-U",
                "postgres",
                "-d",
                "postgres",
            ])
            .args(["-p", &self.port.to_string(), "-c", &format!("CREATE DATABASE \"{name}\"")])
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "CREATE DATABASE {name}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        self.url(name)
    }

    /// Runs `statement` in database `name` with psql; its rows, one per line, columns
    /// separated by `|`.
    pub fn query(&self, name: &str, statement: &str) -> String {
        let output = Command::new(self.bin.join("psql"))
            .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-U", "postgres"])
            .args(["-d", name, "-p", &self.port.to_string(), "-c", statement])
            .output()
            .unwrap();
        assert!(output.status.success(), "{statement}: {}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    }

    /// Stops the server at once (`pg_ctl stop -m immediate`): connections drop as on a
    /// crash or a lost network.
    pub fn stop(&mut self) {
        if !self.running {
            return;
        }
        let data = self.data_dir();
        let stopped = self.run_as_owner(self.bin.join("pg_ctl"), |command| {
            command.arg("-D").arg(&data).args(["-m", "immediate", "-w", "stop"]);
        });
        if !stopped.status.success() {
            eprintln!("pg_ctl stop: {}", String::from_utf8_lossy(&stopped.stderr));
        }
        self.running = false;
    }

    /// Starts a stopped server again on the same port, with everything it held.
    pub fn restart(&mut self) {
        assert!(!self.running, "the server runs already");
        assert!(self.pg_ctl_start(), "PostgreSQL did not start again:\n{}", self.log());
        self.running = true;
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}
