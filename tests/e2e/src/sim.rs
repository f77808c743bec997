//! A simulated fleet for tests: starts `comfyfleet-fleetsim` against a controller,
//! waits for `ready N`, and drives it through its stdin commands. Like
//! [`crate::Process`] it is killed when dropped and prints the end of its log if the
//! test fails; unlike it, it keeps stdin and stdout as pipes, which are the
//! simulator's control channel.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::Controller;

/// How long the simulator may take to enroll and connect its first agents.
pub const READY_TIMEOUT: Duration = Duration::from_secs(120);
/// How long one command may take (`spawn` enrolls and connects).
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

/// Where `cargo build --workspace` put `comfyfleet-fleetsim`.
pub fn fleetsim_binary() -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| {
        // target/<profile>/deps/<test-binary>
        let exe = std::env::current_exe().unwrap();
        let path = exe.parent().and_then(Path::parent).unwrap().join("comfyfleet-fleetsim");
        assert!(
            path.exists(),
            "{} is missing: run `cargo build --workspace` (or the README's test command) first",
            path.display()
        );
        path
    })
}

/// How the simulated agents behave; `SimOptions::new(n)` for quick ones.
#[derive(Debug, Clone)]
pub struct SimOptions {
    pub count: usize,
    pub prepare: Duration,
    pub activate: Duration,
    pub jitter: f64,
    pub fail_prepare: f64,
    pub fail_activate: f64,
    pub spare_first_revision: bool,
    pub seed: u64,
    /// Profiles of tests/fixtures/gpu-profiles.json to cycle through; empty: all.
    pub profiles: Vec<String>,
    /// `KEY=VALUE` labels for every agent.
    pub labels: Vec<String>,
    /// More command-line arguments.
    pub extra: Vec<String>,
    /// The CPU the simulator runs on (`taskset -c`), for benchmarks that keep it off
    /// the controller's; `None`: wherever the scheduler puts it.
    pub cpu: Option<usize>,
}

impl SimOptions {
    /// `count` agents that prepare in about 200 ms and activate in about 100 ms.
    pub fn new(count: usize) -> Self {
        Self {
            count,
            prepare: Duration::from_millis(200),
            activate: Duration::from_millis(100),
            jitter: 0.2,
            fail_prepare: 0.0,
            fail_activate: 0.0,
            spare_first_revision: false,
            seed: 1,
            profiles: Vec::new(),
            labels: Vec::new(),
            extra: Vec::new(),
            cpu: None,
        }
    }
}

/// A running simulator.
pub struct SimFleet {
    /// The agents' data dir (`agent-<i>/` each).
    pub data_dir: PathBuf,
    pub events_path: PathBuf,
    pub log_path: PathBuf,
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
    exited: Option<ExitStatus>,
}

impl SimFleet {
    /// Creates a join token on `controller` and starts a simulator under `dir`.
    pub fn start(dir: &Path, controller: &Controller, options: &SimOptions) -> SimFleet {
        let token = controller.create_token(&["--ttl", "1h"]);
        Self::start_with(dir, &controller.url, Some(&token), options)
    }

    /// Starts a simulator under `dir` (its data in `dir/fleetsim/`, events in
    /// `dir/fleetsim-events.jsonl`, log in `dir/fleetsim.log`); `token` may be left
    /// out when every agent is enrolled already.
    pub fn start_with(dir: &Path, url: &str, token: Option<&str>, options: &SimOptions) -> SimFleet {
        let data_dir = dir.join("fleetsim");
        let events_path = dir.join("fleetsim-events.jsonl");
        let log_path = dir.join("fleetsim.log");
        let mut command = match options.cpu {
            // taskset execs the simulator: the child's id stays the simulator's.
            Some(cpu) => {
                let mut pinned = Command::new("taskset");
                pinned.args(["--cpu-list", &cpu.to_string()]).arg(fleetsim_binary());
                pinned
            }
            None => Command::new(fleetsim_binary()),
        };
        command
            .arg("--controller")
            .arg(url)
            .arg("--data-dir")
            .arg(&data_dir)
            .arg("--events")
            .arg(&events_path)
            .args(["--count", &options.count.to_string()])
            .args(["--prepare", &format!("{}ms", options.prepare.as_millis())])
            .args(["--activate", &format!("{}ms", options.activate.as_millis())])
            .args(["--jitter", &options.jitter.to_string()])
            .args(["--fail-prepare", &options.fail_prepare.to_string()])
            .args(["--fail-activate", &options.fail_activate.to_string()])
            .args(["--seed", &options.seed.to_string()])
            .args(["--max-backoff", "1s"])
            .env_remove("COMFYFLEET_JOIN_TOKEN")
            .env_remove("COMFYFLEET_CONTROLLER");
        if options.spare_first_revision {
            command.arg("--spare-first-revision");
        }
        for profile in &options.profiles {
            command.args(["--profile", profile]);
        }
        for label in &options.labels {
            command.args(["--label", label]);
        }
        command.args(&options.extra);
        if let Some(token) = token {
            command.env("COMFYFLEET_JOIN_TOKEN", token);
        }
        let log = std::fs::File::create(&log_path).unwrap();
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", fleetsim_binary().display()));
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().unwrap();
        let (sender, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if sender.send(line).is_err() {
                    break;
                }
            }
        });
        let mut fleet = SimFleet { data_dir, events_path, log_path, child, stdin, lines, exited: None };
        let ready = fleet.next_line(READY_TIMEOUT, "`ready`");
        assert_eq!(ready, format!("ready {}", options.count), "the simulator's first line");
        fleet
    }

    /// The simulator's log (stderr) so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    fn next_line(&mut self, timeout: Duration, what: &str) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            match self.lines.recv_timeout(Duration::from_millis(200)) {
                Ok(line) => return line,
                Err(RecvTimeoutError::Disconnected) => {
                    let status = self.child.wait().ok();
                    self.exited = status;
                    panic!(
                        "the simulator exited ({status:?}) while a test waited for {what}:\n{}",
                        self.log()
                    );
                }
                Err(RecvTimeoutError::Timeout) => {
                    assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
                }
            }
        }
    }

    /// Sends one command; its answer after `ok` (`Ok`) or `error` (`Err`).
    pub fn command(&mut self, line: &str) -> Result<String, String> {
        let stdin = self.stdin.as_mut().expect("the simulator's stdin is closed");
        writeln!(stdin, "{line}").and_then(|()| stdin.flush()).unwrap();
        let answer = self.next_line(COMMAND_TIMEOUT, &format!("the answer to `{line}`"));
        if let Some(rest) = answer.strip_prefix("ok") {
            Ok(rest.trim_start().to_owned())
        } else if let Some(rest) = answer.strip_prefix("error") {
            Err(rest.trim_start().to_owned())
        } else {
            panic!("`{line}` was answered `{answer}`, neither ok nor error");
        }
    }

    fn ok(&mut self, line: &str) -> String {
        self.command(line).unwrap_or_else(|error| panic!("`{line}` failed: {error}"))
    }

    /// Stops agent `index`'s link; returns its machine id.
    pub fn offline(&mut self, index: usize) -> String {
        let answer = self.ok(&format!("offline {index}"));
        answer.rsplit(' ').next().unwrap_or_default().to_owned()
    }

    /// Starts agent `index`'s link again and waits for its session; its machine id.
    pub fn online(&mut self, index: usize) -> String {
        let answer = self.ok(&format!("online {index}"));
        answer.rsplit(' ').next().unwrap_or_default().to_owned()
    }

    /// Enrolls and connects `count` more agents; their machine ids.
    pub fn spawn(&mut self, count: usize) -> Vec<String> {
        let answer = self.ok(&format!("spawn {count}"));
        let ids = answer.strip_prefix("spawned").unwrap_or_else(|| panic!("`spawn` answered `{answer}`"));
        ids.split_whitespace().map(str::to_owned).collect()
    }

    /// No more simulated failures.
    pub fn fix(&mut self) {
        self.ok("fix");
    }

    /// Every agent's machine id, by index.
    pub fn ids(&mut self) -> Vec<String> {
        self.ok("ids").split_whitespace().map(str::to_owned).collect()
    }

    /// `{"agents", "online", "connected", "refused", "phases": {…}}`.
    pub fn stats(&mut self) -> Value {
        serde_json::from_str(&self.ok("stats")).unwrap()
    }

    /// The events file, parsed (what is flushed so far: at most 100 ms behind).
    pub fn events(&self) -> Vec<Value> {
        let text = std::fs::read_to_string(&self.events_path).unwrap_or_default();
        // A line being written may be incomplete; only whole lines count.
        text.lines().filter_map(|line| serde_json::from_str(line).ok()).collect()
    }

    /// Closes stdin, which stops the simulator cleanly; its exit status.
    pub fn stop(&mut self, timeout: Duration) -> ExitStatus {
        drop(self.stdin.take());
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                self.exited = Some(status);
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "the simulator did not stop within {timeout:?}:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for SimFleet {
    fn drop(&mut self) {
        if self.exited.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if std::thread::panicking() {
            let log = self.log();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            eprintln!("----- comfyfleet-fleetsim (last {} lines) -----", tail.len());
            for line in tail.iter().rev() {
                eprintln!("{line}");
            }
        }
    }
}
