//! A provisioning fleet for tests: the stand-in indexes and repositories served, a
//! controller, and agents that build environments with the real uv and python3.
//! Every agent finds uv on its PATH through a shim that logs each call, and the
//! stand-in torch logs each import, so a test can show that no uv or Python process
//! ran.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

use crate::standin::{
    CatalogOptions, GPU_PROFILE_VARIABLE, IMPORT_LOG_VARIABLE, StandinWorld, TestSpecOptions, find_uv,
};
use crate::{Agent, CliOutput, Controller, profile, test_dir, wait_until};

/// How long a test waits for a machine to converge: a build takes a few seconds
/// here, much longer on a loaded 2-core CI machine.
pub const CONVERGE_TIMEOUT: Duration = Duration::from_secs(120);

pub struct Fleet {
    pub world: StandinWorld,
    pub controller: Controller,
    /// Every call of uv by any agent: one line each.
    pub uv_log: PathBuf,
    /// Every Python process that imported the stand-in torch: one line each.
    pub import_log: PathBuf,
    shims: PathBuf,
    token: String,
    // Last: the directory outlives every process in it.
    pub dir: tempfile::TempDir,
}

/// A port nobody listens on now (for ComfyUI; the agent binds it later).
pub fn free_port() -> u16 {
    free_ports(1)[0]
}

/// `n` distinct ports nobody listens on now, each chosen by the kernel (bind to port
/// 0). Never `port + 1`: the kernel hands out even ephemeral ports to outgoing
/// connections and odd ones to `bind(0)`, so the neighbour of a free port is the
/// likeliest port to be taken by the time ComfyUI binds it.
pub fn free_ports(n: usize) -> Vec<u16> {
    // All held at once, so the kernel cannot hand the same one out twice.
    let listeners: Vec<TcpListener> = (0..n).map(|_| TcpListener::bind("127.0.0.1:0").unwrap()).collect();
    listeners.iter().map(|listener| listener.local_addr().unwrap().port()).collect()
}

/// A port nobody listens on now, followed by `n - 1` more: the ports of a machine's
/// `n` ComfyUIs (one per GPU, `--comfyui-port` + its index).
pub fn free_port_run(n: usize) -> u16 {
    loop {
        let first = free_port();
        let rest: Option<Vec<TcpListener>> = (1..n)
            .map(|offset| u16::try_from(usize::from(first) + offset).ok())
            .map(|port| port.and_then(|port| TcpListener::bind(("127.0.0.1", port)).ok()))
            .collect();
        if rest.is_some() {
            return first;
        }
    }
}

/// How many GPUs a profile of gpu-profiles.json has.
fn gpu_count(profile: &Value) -> usize {
    profile["gpus"]
        .as_array()
        .map(|gpus| gpus.iter().map(|gpu| gpu["count"].as_u64().unwrap_or(1)).sum::<u64>())
        .and_then(|count| usize::try_from(count).ok())
        .unwrap_or(1)
}

impl Fleet {
    pub fn start() -> Fleet {
        Self::start_with(&CatalogOptions::new(&crate::standin::system_python().tag))
    }

    pub fn start_with(options: &CatalogOptions) -> Fleet {
        Self::start_with_controller(options, &[])
    }

    /// As [`Fleet::start_with`], the controller started with `controller_args` too.
    pub fn start_with_controller(options: &CatalogOptions, controller_args: &[&str]) -> Fleet {
        let dir = test_dir();
        let world = StandinWorld::create(&dir.path().join("standin"), options, 0);
        let controller = Controller::start_with(&dir.path().join("controller"), 0, controller_args);
        let token = controller.create_token(&["--ttl", "1h"]);
        let shims = dir.path().join("shims");
        std::fs::create_dir_all(&shims).unwrap();
        let uv_log = dir.path().join("uv-calls.log");
        let import_log = dir.path().join("torch-imports.log");
        std::fs::write(&uv_log, "").unwrap();
        std::fs::write(&import_log, "").unwrap();
        let shim = shims.join("uv");
        std::fs::write(
            &shim,
            format!(
                "#!/bin/sh\necho \"$*\" >> '{}'\nexec '{}' \"$@\"\n",
                uv_log.display(),
                find_uv().display()
            ),
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&shim, std::fs::Permissions::from_mode(0o755)).unwrap();
        Fleet { world, controller, uv_log, import_log, shims, token, dir }
    }

    pub fn base_url(&self) -> String {
        self.world.server.base_url()
    }

    /// The standard test spec with the stand-in repositories and `edit` applied.
    pub fn spec(&self, edit: impl FnOnce(&mut TestSpecOptions)) -> String {
        let mut options =
            TestSpecOptions::new(&self.world.repos.comfyui.url(), crate::standin::repos::COMFYUI_TAG);
        options.name = "render-prod".to_owned();
        options.custom_nodes = self.world.repos.custom_nodes();
        edit(&mut options);
        self.world.catalog.test_spec(&self.base_url(), &options)
    }

    /// `comfyfleet apply` of `text`; returns what it printed.
    pub fn apply(&self, text: &str) -> String {
        let path = self.dir.path().join("spec.toml");
        std::fs::write(&path, text).unwrap();
        self.controller.cli(&["apply", "-f", path.to_str().unwrap()]).success()
    }

    /// Starts an agent with `profile_name` from gpu-profiles.json, its ComfyUI on a
    /// free port, uv from the logging shim on PATH.
    pub fn agent(&self, name: &str, profile_name: &str) -> Agent {
        self.agent_with(name, profile_name, &[], None)
    }

    /// As [`Fleet::agent`], with extra flags, and `path` as the agent's PATH (default:
    /// the shims, then the test's PATH).
    pub fn agent_with(&self, name: &str, profile_name: &str, extra: &[&str], path: Option<&str>) -> Agent {
        // One ComfyUI per GPU, on consecutive ports.
        let port = free_port_run(gpu_count(&profile(profile_name)).max(1)).to_string();
        let default_path = format!("{}:{}", self.shims.display(), std::env::var("PATH").unwrap_or_default());
        let path = path.map_or(default_path, str::to_owned);
        let import_log = self.import_log.to_string_lossy().into_owned();
        let mut args = vec![
            "--comfyui-port",
            port.as_str(),
            "--python-downloads",
            "never",
            "--pass-env",
            IMPORT_LOG_VARIABLE,
            // The stand-in torch sees the GPUs the fake NVML library reports.
            "--pass-env",
            GPU_PROFILE_VARIABLE,
            "--inventory-interval",
            "1s",
        ];
        args.extend_from_slice(extra);
        let agent = Agent::start_with_env(
            self.dir.path(),
            name,
            &profile(profile_name),
            &self.controller.url,
            Some(&self.token),
            &args,
            &[("PATH", path.as_str()), (IMPORT_LOG_VARIABLE, import_log.as_str())],
        );
        wait_until(Duration::from_secs(20), "the agent to come online", || {
            self.controller.machine(name).filter(|machine| machine["online"] == true).map(|_| ())
        });
        agent
    }

    /// A spec's `[[optimization.wheel]]` block for a SageAttention wheel said to have
    /// kernels for SM 8.0/8.6/8.9/9.0/12.0 but built without the 8.6 ones (a
    /// mislabelled or partial build): verified on an RTX 4090 or an A100, failing on
    /// an RTX A6000.
    pub fn partial_sageattention(&self) -> String {
        let partial = crate::standin::fat_sageattention_with(
            &self.world.catalog.root,
            "sageattention/partial",
            &["8.0", "8.9", "9.0", "12.0"],
            "cu128",
        );
        format!(
            "\n  [[optimization.wheel]]\n  compute = [\"8.0\", \"8.6\", \"8.9\", \"9.0\", \"12.0\"]\n  python = \"cp39-abi3\"\n  \
             cuda = \"cu128\"\n  torch = \">=2.9\"\n  url = \"{}{}\"\n  sha256 = \"{}\"\n",
            self.base_url(),
            partial.url_path,
            partial.wheel.sha256
        )
    }

    /// The id of the machine with this hostname.
    pub fn machine_id(&self, hostname: &str) -> String {
        let machine = self.controller.machine(hostname).unwrap_or_else(|| panic!("no machine {hostname}"));
        machine["id"].as_str().unwrap().to_owned()
    }

    pub fn cli(&self, args: &[&str]) -> CliOutput {
        self.controller.cli(args)
    }

    /// `machines show ID -o json`.
    pub fn show(&self, id: &str) -> Value {
        serde_json::from_str(&self.cli(&["machines", "show", id, "-o", "json"]).success()).unwrap()
    }

    /// Waits until the machine's report satisfies `done`; returns the machine.
    pub fn wait_for(&self, id: &str, what: &str, done: impl Fn(&Value) -> bool) -> Value {
        wait_until(CONVERGE_TIMEOUT, what, || {
            let machine = self.show(id);
            done(&machine).then_some(machine)
        })
    }

    /// Waits until the machine reports `phase` for the generation it was assigned.
    pub fn wait_for_phase(&self, id: &str, phase: &str) -> Value {
        self.wait_for(id, &format!("machine {id} to be {phase}"), |machine| {
            let report = &machine["report"];
            report["generation"] == machine["assignment"]["generation"] && report["phase"] == phase
        })
    }

    pub fn uv_calls(&self) -> usize {
        std::fs::read_to_string(&self.uv_log).unwrap().lines().count()
    }

    pub fn torch_imports(&self) -> usize {
        std::fs::read_to_string(&self.import_log).unwrap().lines().count()
    }
}

/// The report's step `name`.
pub fn step<'a>(machine: &'a Value, name: &str) -> &'a Value {
    find_step(machine, name).unwrap_or_else(|| panic!("no step {name} in {}", machine["report"]))
}

/// The report's step `name`, if the report has it.
pub fn find_step<'a>(machine: &'a Value, name: &str) -> Option<&'a Value> {
    machine["report"]["steps"].as_array()?.iter().find(|step| step["name"] == name)
}

/// Whether the report's step `name` is in `state`.
pub fn step_is(machine: &Value, name: &str, state: &str) -> bool {
    find_step(machine, name).is_some_and(|step| step["state"] == state)
}

/// The installed environment `current` points at.
pub fn current_environment(machine: &Value) -> &Value {
    machine["environments"]["installed"]
        .as_array()
        .and_then(|installed| installed.iter().find(|environment| environment["current"] == true))
        .unwrap_or_else(|| panic!("no current environment in {}", machine["environments"]))
}

/// `GET http://127.0.0.1:PORT/PATH` of a local ComfyUI, as JSON (std only).
pub fn comfyui_get(port: u16, path: &str) -> Option<Value> {
    comfyui_request(port, "GET", path, None)
}

/// `POST /prompt` to a local ComfyUI: a render that runs until `wait_for_file` exists.
pub fn queue_render(port: u16, wait_for_file: &Path) -> Value {
    let body =
        serde_json::json!({ "prompt": { "wait_for_file": wait_for_file }, "client_id": "test" }).to_string();
    comfyui_request(port, "POST", "/prompt", Some(&body)).expect("ComfyUI takes the prompt")
}

fn comfyui_request(port: u16, method: &str, path: &str, body: Option<&str>) -> Option<Value> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let body = body.unwrap_or("");
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    if !head.starts_with("HTTP/1.1 200") && !head.starts_with("HTTP/1.0 200") {
        return None;
    }
    serde_json::from_str(body).ok()
}

/// The port the machine's ComfyUI was started on (from its `--comfyui-port`).
pub fn comfyui_port(agent: &Agent) -> u16 {
    let text = std::fs::read_to_string(agent.data_dir.join("run/comfyui.json")).unwrap();
    let json: Value = serde_json::from_str(&text).unwrap();
    u16::try_from(json["launch"]["port"].as_u64().unwrap()).unwrap()
}

/// Where `current` points, relative to the data dir (`envs/…`), if anywhere.
pub fn current_target(agent: &Agent) -> Option<PathBuf> {
    std::fs::read_link(agent.data_dir.join("current")).ok()
}

/// Python in an environment of the agent, running `code`; its stdout.
pub fn run_in_env(agent: &Agent, env_relative: &Path, code: &str) -> String {
    let python = agent.data_dir.join(env_relative).join("venv/bin/python");
    let output = std::process::Command::new(python).args(["-c", code]).output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

/// The uv wheel the agent pins, fetched by `scripts/test` into
/// `$COMFYFLEET_TEST_UV_WHEELS`, for an index that serves it to an agent without uv.
pub fn pinned_uv_wheel() -> PathBuf {
    let dir = std::env::var_os("COMFYFLEET_TEST_UV_WHEELS")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/test-tools/wheels"));
    let version = comfyfleet_agent_uv_version();
    std::fs::read_dir(&dir)
        .ok()
        .and_then(|entries| {
            entries.flatten().map(|entry| entry.path()).find(|path| {
                path.file_name().and_then(|name| name.to_str()).is_some_and(|name| {
                    name.starts_with(&format!("uv-{version}-")) && name.contains(std::env::consts::ARCH)
                })
            })
        })
        .unwrap_or_else(|| {
            panic!(
                "no uv {version} wheel in {}: run scripts/test, which downloads it (or set COMFYFLEET_TEST_UV_WHEELS)",
                dir.display()
            )
        })
}

/// The uv version the agent pins (from its source, so the test follows it).
fn comfyfleet_agent_uv_version() -> String {
    let source = include_str!("../../../config/src/uv_pin.rs");
    source
        .lines()
        .find_map(|line| line.strip_prefix("pub const PINNED_UV_VERSION: &str = \""))
        .and_then(|rest| rest.strip_suffix("\";"))
        .expect("config/src/uv_pin.rs pins a uv version")
        .to_owned()
}

/// A PATH with git and python3 but no uv: an agent on it must fetch its own uv.
pub fn path_without_uv(dir: &Path) -> String {
    let bin = dir.join("bin-without-uv");
    std::fs::create_dir_all(&bin).unwrap();
    let python = &crate::standin::system_python();
    let git = which("git");
    for (name, target) in [
        ("git".to_owned(), git),
        ("python3".to_owned(), python.executable.clone()),
        (format!("python{}", python.version), python.executable.clone()),
    ] {
        let link = bin.join(name);
        if !link.exists() {
            std::os::unix::fs::symlink(target, link).unwrap();
        }
    }
    bin.to_string_lossy().into_owned()
}

fn which(name: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| panic!("{name} is not on PATH"))
}
