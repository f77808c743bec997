//! The end-to-end harness: starts the real `comfyfleet-controller`, `comfyfleet-agent`
//! and `comfyfleet` binaries on loopback, each in its own temporary data dir, with GPUs
//! from the fake NVML library. Every process is killed when its handle drops; when a
//! test fails, the logs of its processes are printed. [`sim`] runs a simulated fleet
//! of thousands of agents in one process (`comfyfleet-fleetsim`, from [`fleetsim`]).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::print_stderr)]

pub mod browser;
pub mod fleetsim;
pub mod git;
pub mod grpc;
pub mod observe;
mod process;
pub mod provision;
pub mod real_comfyui;
pub mod rollouts;
pub mod sim;
pub mod standin;

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::Value;

pub use process::Process;

/// Where `cargo build --workspace` put the binaries and the fake NVML library.
pub struct Binaries {
    pub controller: PathBuf,
    pub agent: PathBuf,
    pub cli: PathBuf,
    pub fake_nvml: PathBuf,
}

pub fn binaries() -> &'static Binaries {
    static BINARIES: OnceLock<Binaries> = OnceLock::new();
    BINARIES.get_or_init(|| {
        // target/<profile>/deps/<test-binary>
        let exe = std::env::current_exe().unwrap();
        let profile_dir = exe.parent().and_then(Path::parent).unwrap().to_owned();
        let find = |name: &str| {
            let path = profile_dir.join(name);
            assert!(
                path.exists(),
                "{} is missing: run `cargo build --workspace` (or the README's test command) first",
                path.display()
            );
            path
        };
        Binaries {
            controller: find("comfyfleet-controller"),
            agent: find("comfyfleet-agent"),
            cli: find("comfyfleet"),
            fake_nvml: find("libcomfyfleet_fake_nvml.so"),
        }
    })
}

/// The machine profiles of tests/fixtures/gpu-profiles.json.
pub fn profiles() -> &'static serde_json::Map<String, Value> {
    static PROFILES: OnceLock<serde_json::Map<String, Value>> = OnceLock::new();
    PROFILES.get_or_init(|| {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/gpu-profiles.json");
        let text = std::fs::read_to_string(&path).unwrap();
        let json: Value = serde_json::from_str(&text).unwrap();
        json["profiles"].as_object().unwrap().clone()
    })
}

pub fn profile(name: &str) -> Value {
    profiles().get(name).unwrap_or_else(|| panic!("no profile {name} in gpu-profiles.json")).clone()
}

/// Polls `check` until it returns `Some`, or fails the test after `timeout`.
pub fn wait_until<T>(timeout: Duration, what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// What a CLI run printed.
#[derive(Debug)]
pub struct CliOutput {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl CliOutput {
    pub fn success(self) -> String {
        assert!(self.status.success(), "comfyfleet failed ({}): {}{}", self.status, self.stdout, self.stderr);
        self.stdout
    }

    pub fn failure(self) -> String {
        assert!(!self.status.success(), "comfyfleet should have failed but printed: {}", self.stdout);
        self.stderr
    }
}

/// Runs `comfyfleet` with `config` as its admin.toml.
pub fn cli(config: &Path, args: &[&str]) -> CliOutput {
    let output = Command::new(&binaries().cli)
        .arg("--config")
        .arg(config)
        .args(args)
        .env_remove("COMFYFLEET_CONFIG")
        .output()
        .unwrap();
    CliOutput {
        status: output.status,
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// Runs `comfyfleet-controller --data-dir DIR ARGS…` to its end (a subcommand, or a
/// start expected to be refused); its status and stdout + stderr. Killed after 60 s.
pub fn controller_command(data_dir: &Path, args: &[&str]) -> (ExitStatus, String) {
    let mut child = Command::new(&binaries().controller)
        .arg("--data-dir")
        .arg(data_dir)
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("comfyfleet-controller {args:?} still runs after 60 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let output = child.wait_with_output().unwrap();
    let text =
        format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    (output.status, text)
}

/// A running controller with its own data dir.
pub struct Controller {
    pub data_dir: PathBuf,
    pub process: Process,
    pub url: String,
    pub port: u16,
}

impl Controller {
    /// Starts a controller on a free loopback port.
    pub fn start(data_dir: &Path) -> Controller {
        Self::start_with(data_dir, 0, &[])
    }

    /// Starts a controller on `port` (0: any free one), with extra arguments.
    pub fn start_with(data_dir: &Path, port: u16, extra: &[&str]) -> Controller {
        Self::start_with_env(data_dir, port, extra, &[])
    }

    /// As [`Controller::start_with`], with extra environment variables.
    pub fn start_with_env(data_dir: &Path, port: u16, extra: &[&str], env: &[(&str, &str)]) -> Controller {
        let admin = data_dir.join("admin.toml");
        let before = std::fs::read_to_string(&admin).ok();
        let mut command = Command::new(&binaries().controller);
        command.arg("--data-dir").arg(data_dir).arg("--listen").arg(format!("127.0.0.1:{port}")).args(extra);
        if !extra.contains(&"--heartbeat-interval") {
            command.args(["--heartbeat-interval", "1s"]);
        }
        // The tests' repositories are local and their stand-in indexes on 127.0.0.1;
        // the example spec's wheels are on a `.example` host that is never contacted. A
        // test that names a source policy gets only it.
        if !extra.iter().any(|arg| arg.starts_with("--git-") || arg.starts_with("--source-")) {
            command.args([
                "--git-allow-file",
                "--source-allow-host",
                "127.0.0.1",
                "--source-allow-host",
                "*.example",
            ]);
        }
        // apply locks with uv: the tests' uv, where there is one.
        if let Some(uv) = standin::try_find_uv() {
            command.env("COMFYFLEET_UV", uv);
        }
        command.envs(env.iter().copied());
        let log = data_dir.with_extension("log");
        let mut process = Process::spawn("controller", command, &log);
        let url = wait_until(Duration::from_secs(20), "the controller to write admin.toml", || {
            process.assert_running();
            let text = std::fs::read_to_string(&admin).ok()?;
            // On a restart with port 0 the old file is there until rewritten.
            if port == 0 && before.as_deref() == Some(text.as_str()) {
                return None;
            }
            let config: toml::Value = toml::from_str(&text).ok()?;
            Some(config["server"].as_str()?.to_owned())
        });
        let port: u16 = url.rsplit(':').next().unwrap().parse().unwrap();
        wait_until(Duration::from_secs(20), "the controller to accept connections", || {
            process.assert_running();
            TcpStream::connect(("127.0.0.1", port)).ok()
        });
        Controller { data_dir: data_dir.to_owned(), process, url, port }
    }

    pub fn admin_config(&self) -> PathBuf {
        self.data_dir.join("admin.toml")
    }

    pub fn cli(&self, args: &[&str]) -> CliOutput {
        cli(&self.admin_config(), args)
    }

    /// `comfyfleet machines -o json`, parsed.
    pub fn machines(&self) -> Vec<Value> {
        self.machines_with(&[])
    }

    pub fn machines_with(&self, extra: &[&str]) -> Vec<Value> {
        let mut args = vec!["machines", "-o", "json"];
        args.extend_from_slice(extra);
        serde_json::from_str(&self.cli(&args).success()).unwrap()
    }

    /// The machine with this hostname, if listed.
    pub fn machine(&self, hostname: &str) -> Option<Value> {
        self.machines().into_iter().find(|machine| machine["hostname"] == hostname)
    }

    pub fn create_token(&self, args: &[&str]) -> String {
        let mut all = vec!["token", "create"];
        all.extend_from_slice(args);
        self.cli(&all).success().trim().to_owned()
    }

    pub fn kill(&mut self) {
        self.process.kill();
    }
}

/// A running agent with a profile from gpu-profiles.json and its own data dir.
/// Dropping it kills the agent and the ComfyUI it runs (which, by design, would
/// outlive the agent).
pub struct Agent {
    pub name: String,
    pub data_dir: PathBuf,
    pub profile_path: PathBuf,
    pub process: Process,
    url: String,
    extra: Vec<String>,
    env: Vec<(String, String)>,
}

impl Agent {
    /// Starts an agent named `name` (its reported hostname) with `profile`; `token`
    /// is passed when given (first start).
    pub fn start(
        root: &Path,
        name: &str,
        profile: &Value,
        url: &str,
        token: Option<&str>,
        extra: &[&str],
    ) -> Agent {
        Self::start_with_env(root, name, profile, url, token, extra, &[])
    }

    /// As [`Agent::start`], with extra environment variables (kept for restarts).
    pub fn start_with_env(
        root: &Path,
        name: &str,
        profile: &Value,
        url: &str,
        token: Option<&str>,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Agent {
        let data_dir = root.join(name);
        let profile_path = root.join(format!("{name}.profile.json"));
        write_profile(&profile_path, profile);
        let extra: Vec<String> = extra.iter().map(|s| (*s).to_owned()).collect();
        let env: Vec<(String, String)> =
            env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        let process = spawn_agent(name, &data_dir, &profile_path, url, token, &extra, &env, 0);
        Agent { name: name.to_owned(), data_dir, profile_path, process, url: url.to_owned(), extra, env }
    }

    /// The ComfyUI process the agent runs (its first instance), from its pid file, if alive.
    pub fn comfyui_pid(&self) -> Option<i32> {
        live_pid(&self.data_dir.join("run/comfyui.json"))
    }

    /// kill -9 of every ComfyUI process group the agent runs (one per instance).
    pub fn kill_comfyui(&self) {
        let Ok(entries) = std::fs::read_dir(self.data_dir.join("run")) else { return };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !(name.starts_with("comfyui") && name.ends_with(".json")) {
                continue;
            }
            if let Some(pid) = live_pid(&entry.path()).and_then(rustix::process::Pid::from_raw) {
                let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
            }
        }
    }

    /// Starts the agent again on its data dir, without a token.
    pub fn restart(&mut self) {
        self.process.kill();
        let generation = self.process.generation() + 1;
        self.process = spawn_agent(
            &self.name,
            &self.data_dir,
            &self.profile_path,
            &self.url,
            None,
            &self.extra,
            &self.env,
            generation,
        );
    }

    /// Waits for the agent to exit by itself; returns its status and log.
    pub fn wait_exit(&mut self, timeout: Duration) -> (ExitStatus, String) {
        let status = self.process.wait_exit(timeout);
        (status, self.process.log())
    }

    pub fn machine_id(&self) -> Option<String> {
        let text = std::fs::read_to_string(self.data_dir.join("identity/machine.toml")).ok()?;
        let value: toml::Value = toml::from_str(&text).ok()?;
        Some(value["machine_id"].as_str()?.to_owned())
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.process.kill();
        self.kill_comfyui();
    }
}

/// The pid a ComfyUI pid file names, if that process is alive.
fn live_pid(pid_file: &Path) -> Option<i32> {
    let text = std::fs::read_to_string(pid_file).ok()?;
    let pid = serde_json::from_str::<Value>(&text).ok()?["pid"].as_i64()?;
    let pid = i32::try_from(pid).ok()?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let state = stat.rsplit(')').next()?.split_whitespace().next()?;
    (state != "Z").then_some(pid)
}

#[allow(clippy::too_many_arguments)]
fn spawn_agent(
    name: &str,
    data_dir: &Path,
    profile_path: &Path,
    url: &str,
    token: Option<&str>,
    extra: &[String],
    env: &[(String, String)],
    generation: u32,
) -> Process {
    let mut command = Command::new(&binaries().agent);
    command
        .arg("--controller")
        .arg(url)
        .arg("--data-dir")
        .arg(data_dir)
        .arg("--hostname-override")
        .arg(name)
        .args(["--max-backoff", "2s"])
        .args(extra)
        .env("COMFYFLEET_FAKE_NVML_PROFILE", profile_path)
        .env_remove("COMFYFLEET_JOIN_TOKEN")
        .envs(env.iter().map(|(k, v)| (k, v)));
    if let Some(token) = token {
        command.env("COMFYFLEET_JOIN_TOKEN", token);
    }
    if !extra.iter().any(|arg| arg == "--nvml-lib") {
        command.arg("--nvml-lib").arg(&binaries().fake_nvml);
    }
    let log = data_dir.with_extension(format!("{generation}.log"));
    Process::spawn_generation(&format!("agent {name}"), command, &log, generation)
}

/// Writes a profile atomically (the fake NVML re-reads it while agents run).
pub fn write_profile(path: &Path, profile: &Value) {
    let temporary = path.with_extension("tmp");
    std::fs::write(&temporary, serde_json::to_vec_pretty(profile).unwrap()).unwrap();
    std::fs::rename(&temporary, path).unwrap();
}

/// A fresh directory for one test's processes.
pub fn test_dir() -> tempfile::TempDir {
    tempfile::Builder::new().prefix("comfyfleet-e2e-").tempdir().unwrap()
}
