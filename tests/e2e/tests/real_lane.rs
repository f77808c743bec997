//! The real lane: the real ComfyUI 0.3.64 and 0.33.0 sources (tests/fixtures/real),
//! each unpacked into a local git repository, built by a real agent with the real uv:
//! its real requirements.txt (0.33.0: comfy-kitchen, comfy-aimdo, comfy-angle, the
//! frontend packages, and its manager_requirements.txt's comfyui_manager, the spec
//! running the manager) resolved and installed from PyPI, with torch, torchvision and
//! torchaudio held at stand-in builds from a local index (so kornia, spandrel and
//! torchsde must accept them), plus two small custom nodes of our own whose
//! requirements name real PyPI packages, one with an install.py. The machine must
//! reach `prepared`, verified and reported: real ComfyUI cannot start on a stand-in
//! torch, so nothing is activated.
//!
//! It needs PyPI (`COMFYFLEET_REAL_LANE=skip` skips it on a machine without it, and
//! says so). uv's downloads are kept in `target/test-tools/real-lane-uv-cache`, so a
//! second run downloads nothing.
//!
//! With `COMFYFLEET_REAL_GPU=1` on a machine with an NVIDIA GPU and driver, the same
//! lane runs for real: torch comes from `COMFYFLEET_REAL_TORCH_INDEX` (default
//! download.pytorch.org, `{cuda}` replaced), the agent reads the real NVML, and the
//! machine activates: real ComfyUI starts and `/system_stats` answers with the
//! planned torch.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test helpers fail loudly by design

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use comfyfleet_e2e::git::GitRepo;
use comfyfleet_e2e::provision::{Fleet, comfyui_get, comfyui_port, free_port, step};
use comfyfleet_e2e::real_comfyui::{COMFYUI_0_3_64, COMFYUI_0_33_0, RealComfyui, real_comfyui};
use comfyfleet_e2e::standin::system_python;
use comfyfleet_e2e::{Agent, wait_until};
use serde_json::Value;

/// How long a cold build from PyPI may take on a slow CI machine.
const BUILD_TIMEOUT: Duration = Duration::from_secs(900);

/// Our own nodes: requirements that name real (small) PyPI packages, an install.py.
const NODE_A: [(&str, &str); 2] = [
    (
        "__init__.py",
        "import tabulate  # noqa: F401\n\nclass RealLaneTable:\n    RETURN_TYPES = ()\n    CATEGORY = \"comfyfleet\"\n\n    \
         @classmethod\n    def INPUT_TYPES(cls):\n        return {\"required\": {}}\n\n\
         NODE_CLASS_MAPPINGS = {\"RealLaneTable\": RealLaneTable}\n",
    ),
    ("requirements.txt", "tabulate>=0.9\nhumanize\ntorch>=2.0\n"),
];
const NODE_B: [(&str, &str); 3] = [
    (
        "__init__.py",
        "import colorama  # noqa: F401\n\nclass RealLaneColour:\n    RETURN_TYPES = ()\n    CATEGORY = \"comfyfleet\"\n\n    \
         @classmethod\n    def INPUT_TYPES(cls):\n        return {\"required\": {}}\n\n\
         NODE_CLASS_MAPPINGS = {\"RealLaneColour\": RealLaneColour}\n",
    ),
    ("requirements.txt", "colorama\n--extra-index-url https://example.invalid/simple\n"),
    (
        "install.py",
        "import importlib.metadata, sys\n\
         print('real-lane install.py in', sys.executable, 'colorama', importlib.metadata.version('colorama'))\n\
         open('installed.txt', 'w').write(sys.executable + '\\n')\n",
    ),
];

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// What one lane builds: the release, its torch, and how the spec runs the manager.
struct Lane {
    release: RealComfyui,
    torch: &'static str,
    manager: &'static str,
}

fn real_spec(
    lane: &Lane,
    comfyui: &GitRepo,
    nodes: [&GitRepo; 2],
    torch_index: &str,
    cuda: &str,
    port: u16,
) -> String {
    let python = &system_python().version;
    format!(
        r#"name = "real-lane"
python = "{python}"

[comfyui]
git = "{comfyui}"
ref = "{tag}"

[torch]
version = "{torch}"
with = ["torchvision", "torchaudio"]
cuda = {cuda}
index = "{torch_index}"

[index]
url = "https://pypi.org/simple"
trusted_hosts = ["127.0.0.1"]

[[custom_node]]
git = "{a}"
ref = "main"

[[custom_node]]
git = "{b}"
ref = "main"
install_script = true

[run]
port = {port}
health_timeout = "5m"
manager = "{manager}"
"#,
        tag = lane.release.tag,
        torch = lane.torch,
        manager = lane.manager,
        comfyui = comfyui.url(),
        a = nodes[0].url(),
        b = nodes[1].url(),
    )
}

fn uv_cache() -> PathBuf {
    let target =
        std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| repo_root().join("target"), PathBuf::from);
    target.join("test-tools/real-lane-uv-cache")
}

/// Bytes received on every network interface but loopback, from /proc/net/dev.
fn received_bytes() -> u64 {
    let text = std::fs::read_to_string("/proc/net/dev").unwrap_or_default();
    text.lines()
        .skip(2)
        .filter_map(|line| line.split_once(':'))
        .filter(|(interface, _)| interface.trim() != "lo")
        .filter_map(|(_, counters)| counters.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

fn directory_size(path: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(path) else { return 0 };
    entries
        .flatten()
        .map(|entry| match entry.file_type() {
            Ok(kind) if kind.is_dir() => directory_size(&entry.path()),
            Ok(kind) if kind.is_file() => entry.metadata().map_or(0, |meta| meta.len()),
            _ => 0,
        })
        .sum()
}

#[test]
fn the_real_comfyui_builds_from_pypi_with_its_real_requirements() {
    let Some((machine, installed, record)) =
        real_lane(&Lane { release: COMFYUI_0_3_64, torch: "2.9.0", manager: "off" })
    else {
        return;
    };
    assert_eq!(installed["comfyui-frontend-package"], "1.27.10", "ComfyUI 0.3.64's own pin");
    assert!(installed.get("comfyui-manager").is_none(), "{installed}");
    // The real checkout and what the agent reads from it.
    assert_eq!(record["comfyui"]["database_url"], true, "0.3.64 takes --database-url: {}", record["comfyui"]);
    assert_eq!(record["comfyui"]["builtin_manager"], false, "{}", record["comfyui"]);
    let requirements = step(&machine, "requirements")["detail"].as_str().unwrap();
    assert!(!requirements.contains("comfy-kitchen"), "{requirements}");
}

#[test]
fn the_real_comfyui_0_33_builds_from_pypi_with_its_real_requirements_and_the_manager_package() {
    let Some((machine, installed, record)) =
        real_lane(&Lane { release: COMFYUI_0_33_0, torch: "2.11.0", manager: "on" })
    else {
        return;
    };
    for (package, version) in [
        ("comfyui-frontend-package", "1.49.6"),
        ("comfyui-workflow-templates", "0.11.44"),
        ("comfyui-embedded-docs", "0.5.10"),
        ("comfy-kitchen", "0.2.31"),
        ("comfy-aimdo", "0.4.13"),
        ("comfyui-manager", "4.2.2"),
    ] {
        assert_eq!(installed[package], version, "ComfyUI 0.33.0's pin of {package}: {installed}");
    }
    for package in ["comfy-angle", "blake3", "simpleeval", "pyopengl"] {
        assert!(installed.get(package).is_some(), "{package} is missing: {installed}");
    }
    let comfyui = &record["comfyui"];
    assert_eq!(
        (comfyui["builtin_manager"].as_bool(), comfyui["models_directory"].as_bool()),
        (Some(true), Some(true))
    );
    assert_eq!(comfyui["migrations"].as_array().map(Vec::len), Some(6), "{comfyui}");
    let requirements = step(&machine, "requirements")["detail"].as_str().unwrap();
    if machine["assignment"]["torch"].as_str().unwrap_or_default().ends_with("+cu128") {
        assert!(requirements.contains("comfy-kitchen CUDA ops off: torch 2.11.0+cu128"), "{requirements}");
    }
}

/// Builds `lane` to `prepared` (to `active` on a real GPU) and returns the machine,
/// the venv's distributions and the environment's completion record (what the agent
/// read from the real checkout); none when skipped.
#[allow(clippy::print_stderr)] // the lane says what it did, and when it was skipped
fn real_lane(lane: &Lane) -> Option<(Value, Value, Value)> {
    if std::env::var("COMFYFLEET_REAL_LANE").as_deref() == Ok("skip") {
        eprintln!("COMFYFLEET_REAL_LANE=skip: the real lane did not run");
        return None;
    }
    let real_gpu = std::env::var("COMFYFLEET_REAL_GPU").as_deref() == Ok("1");
    // The real lane reaches PyPI (and, on a GPU machine, download.pytorch.org), named
    // here: behind a sandbox's proxy their names may resolve to reserved addresses.
    let fleet = Fleet::start_with_controller(
        &comfyfleet_e2e::standin::CatalogOptions::new(&system_python().tag),
        &[
            "--git-allow-file",
            "--source-allow-host",
            "127.0.0.1",
            "--source-allow-host",
            "pypi.org",
            "--source-allow-host",
            "files.pythonhosted.org",
            "--source-allow-host",
            "download.pytorch.org",
            "--source-allow-host",
            "download-r2.pytorch.org",
        ],
    );
    let comfyui = real_comfyui(fleet.dir.path(), lane.release);
    let node_a = GitRepo::create(&fleet.dir.path().join("nodes/ComfyUI-RealLaneA"), &NODE_A);
    let node_b = GitRepo::create(&fleet.dir.path().join("nodes/ComfyUI-RealLaneB"), &NODE_B);
    let cache = uv_cache();
    std::fs::create_dir_all(&cache).unwrap();
    let cached_before = directory_size(&cache);
    let received_before = received_bytes();
    let cache_flag = cache.to_str().unwrap().to_owned();

    let (agent, torch_index, cuda): (Agent, String, &str) = if real_gpu {
        let index = std::env::var("COMFYFLEET_REAL_TORCH_INDEX")
            .unwrap_or_else(|_| "https://download.pytorch.org/whl/{cuda}".to_owned());
        let agent = fleet.agent_with(
            "real",
            "rtx4090-x1-570",
            &["--uv-cache-dir", &cache_flag, "--nvml-lib", "libnvidia-ml.so.1"],
            None,
        );
        (agent, index, r#"["cu130", "cu128", "cu126"]"#)
    } else {
        let agent = fleet.agent_with("real", "rtx4090-x1-570", &["--uv-cache-dir", &cache_flag], None);
        (agent, format!("{}/whl/{{cuda}}", fleet.base_url()), r#"["cu128"]"#)
    };
    let id = fleet.machine_id("real");
    fleet.apply(&real_spec(lane, &comfyui, [&node_a, &node_b], &torch_index, cuda, free_port()));

    let started = Instant::now();
    if real_gpu {
        fleet.cli(&["rollout", "start", "real-lane", "--wait", "--timeout", "30m"]).success();
    } else {
        // Build only: the rollout is held before any activation.
        fleet.cli(&["rollout", "start", "real-lane"]).success();
        fleet.cli(&["rollout", "pause", "real-lane"]).success();
    }
    let machine = wait_until(BUILD_TIMEOUT, "the real ComfyUI to be built", || {
        let machine = fleet.show(&id);
        let phase = machine["report"]["phase"].as_str().unwrap_or_default().to_owned();
        assert_ne!(
            phase,
            "failed",
            "the real lane failed: {}",
            fleet.cli(&["machines", "show", &id]).success()
        );
        let wanted = if real_gpu { "active" } else { "prepared" };
        (phase == wanted).then_some(machine)
    });
    let elapsed = started.elapsed();
    let unpacked = directory_size(&cache).saturating_sub(cached_before);
    eprintln!(
        "real lane: {} in {:.0} s; {} MiB received from the network, {} MiB added to uv's cache ({} MiB in it)",
        machine["report"]["phase"],
        elapsed.as_secs_f64(),
        received_bytes().saturating_sub(received_before) >> 20,
        unpacked >> 20,
        directory_size(&cache) >> 20
    );

    // The real requirements resolved from PyPI around the held torch.
    let requirements = step(&machine, "requirements")["detail"].as_str().unwrap().to_owned();
    assert!(requirements.contains("ComfyUI-RealLaneB: ignored `--extra-index-url"), "{requirements}");
    let verify = step(&machine, "verify")["detail"].as_str().unwrap();
    assert!(verify.contains("covers every GPU"), "{verify}");
    let scripts = step(&machine, "install-scripts");
    assert!(scripts["detail"].as_str().unwrap().contains("ComfyUI-RealLaneB's install.py ran"), "{scripts}");
    let env =
        agent.data_dir.join("envs").read_dir().unwrap().flatten().map(|entry| entry.path()).next().unwrap();
    let python = env.join("venv/bin/python");
    let listed = Command::new(&python)
        .args([
            "-c",
            "import json, re, importlib.metadata as m; \
             print(json.dumps({re.sub(r'[-_.]+', '-', d.metadata['Name']).lower(): d.version for d in m.distributions()}))",
        ])
        .output()
        .unwrap();
    let installed: Value = serde_json::from_slice(&listed.stdout).unwrap();
    let planned = machine["assignment"]["torch"].as_str().unwrap();
    assert_eq!(installed["torch"], planned, "torch is the planned build, not PyPI's: {installed}");
    for package in [
        "comfyui-frontend-package",
        "comfyui-workflow-templates",
        "transformers",
        "kornia",
        "spandrel",
        "torchsde",
        "alembic",
        "av",
        "tabulate",
        "humanize",
        "colorama",
    ] {
        assert!(installed.get(package).is_some(), "{package} is missing: {installed}");
    }
    assert!(env.join("ComfyUI/custom_nodes/ComfyUI-RealLaneB/installed.txt").exists());

    if real_gpu {
        let stats = comfyui_get(comfyui_port(&agent), "/system_stats").unwrap();
        assert_eq!(stats["system"]["pytorch_version"], planned);
        assert!(!machine["gpus"].as_array().unwrap().is_empty());
    } else {
        assert!(agent.comfyui_pid().is_none(), "nothing was activated");
        assert_eq!(machine["gpus"][0]["name"], "NVIDIA GeForce RTX 4090");
    }
    let record: Value = serde_json::from_slice(&std::fs::read(env.join(".complete")).unwrap()).unwrap();
    Some((machine, installed, record))
}
