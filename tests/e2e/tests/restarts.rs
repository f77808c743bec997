//! kill -9 of the agent at every step of building and switching: each restart
//! converges, `current` never points at an incomplete environment, and a ComfyUI
//! running a render keeps running through it. The agent here has no uv: it fetches
//! the uv wheel it pins from the stand-in index and checks its sha256.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test helpers fail loudly by design

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use comfyfleet_e2e::Agent;
use comfyfleet_e2e::provision::{
    Fleet, comfyui_get, comfyui_port, current_target, path_without_uv, pinned_uv_wheel, queue_render, step,
    step_is,
};
use comfyfleet_e2e::standin::{CatalogOptions, system_python};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// The build steps a kill is aimed at: every one that lasts long enough.
const PREPARE_STEPS: [&str; 8] =
    ["uv", "comfyui", "custom-nodes", "venv", "torch", "requirements", "optimizations", "verify"];

fn fleet_serving_uv() -> Fleet {
    let mut options = CatalogOptions::new(&system_python().tag);
    options.extra_wheels.push(pinned_uv_wheel());
    Fleet::start_with(&options)
}

/// The step the environment under construction is in, from its progress file.
fn running_step(agent: &Agent) -> Option<String> {
    let envs = std::fs::read_dir(agent.data_dir.join("envs")).ok()?;
    envs.flatten().find_map(|env| {
        let text = std::fs::read_to_string(env.path().join(".comfyfleet/progress.json")).ok()?;
        let progress: Value = serde_json::from_str(&text).ok()?;
        progress["running"].as_str().map(str::to_owned)
    })
}

/// `current` points at nothing, or at an environment that is complete.
fn assert_current_is_complete(agent: &Agent) {
    if let Some(target) = current_target(agent) {
        let env: PathBuf = agent.data_dir.join(target);
        assert!(env.join(".complete").is_file(), "current points at {}, which is incomplete", env.display());
    }
}

/// Where a step comes in the agent's build (steps too quick to be killed inside,
/// such as `install-scripts` with no script to run, are not aimed at).
fn position(step: &str) -> usize {
    let steps = comfyfleet_agent::executor::STEPS;
    steps.iter().position(|name| *name == step).unwrap_or(steps.len())
}

#[test]
fn killing_the_agent_at_every_step_never_breaks_the_machine() {
    let fleet = fleet_serving_uv();
    let path = path_without_uv(fleet.dir.path());
    let mut agent = fleet.agent_with("a100", "a100-x4-570", &[], Some(&path));
    let id = fleet.machine_id("a100");
    // Slow every download a little, so each step that talks to the index lasts
    // long enough to be killed inside.
    fleet.world.server.set_delay("/", Duration::from_millis(150));
    fleet.apply(&fleet.spec(|options| options.cuda = vec!["cu128".to_owned()]));
    fleet.cli(&["rollout", "start", "render-prod"]).success();

    let mut killed_in = Vec::new();
    for target in PREPARE_STEPS {
        let deadline = Instant::now() + Duration::from_secs(90);
        let step = loop {
            if let Some(step) = running_step(&agent).filter(|step| position(step) >= position(target)) {
                break step;
            }
            assert!(Instant::now() < deadline, "the agent never reached {target}");
            std::thread::sleep(Duration::from_millis(1));
        };
        agent.process.kill();
        killed_in.push(step);
        assert_current_is_complete(&agent);
        agent.restart();
    }
    fleet.world.server.clear_delays();
    let machine = fleet.wait_for_phase(&id, "active");
    assert_current_is_complete(&agent);
    // Every step lasts at least tens of milliseconds and the progress file is read
    // every millisecond, so each kill lands inside the step it was aimed at.
    assert_eq!(killed_in, PREPARE_STEPS, "a kill landed in another step than aimed at");
    let uv = step(&machine, "uv")["detail"].as_str().unwrap();
    assert!(uv.contains("fetched"), "{uv}");
    assert!(agent.data_dir.join("tools/uv-0.13.9/uv").is_file());
    let port = comfyui_port(&agent);
    assert_eq!(comfyui_get(port, "/system_stats").unwrap()["system"]["pytorch_version"], "2.9.0+cu128");
    let first = current_target(&agent).unwrap();

    // Killed while draining for an upgrade: the render and ComfyUI live on, and
    // the restarted agent drains again before it switches.
    let gate = fleet.dir.path().join("render-may-finish");
    queue_render(port, &gate);
    let pid = agent.comfyui_pid().unwrap();
    fleet.apply(&fleet.spec(|options| options.cuda = vec!["cu126".to_owned()]));
    fleet.cli(&["rollout", "start", "render-prod"]).success();
    let draining =
        |machine: &Value| machine["report"]["phase"] == "activating" && step_is(machine, "drain", "running");
    fleet.wait_for(&id, "the drain", draining);
    agent.process.kill();
    assert_eq!(current_target(&agent).unwrap(), first);
    assert_eq!(agent.comfyui_pid(), Some(pid), "ComfyUI outlives the agent");
    assert_eq!(comfyui_get(port, "/queue").unwrap()["queue_running"].as_array().unwrap().len(), 1);
    agent.restart();
    fleet.wait_for(&id, "the drain after the restart", draining);
    std::fs::write(&gate, "done").unwrap();
    fleet.wait_for_phase(&id, "active");
    let second = current_target(&agent).unwrap();
    assert_ne!(second, first);
    assert_current_is_complete(&agent);

    // Killed during the health check of a slow ComfyUI: `current` already points at
    // the new (complete) environment; the restarted agent finishes the check.
    let slow = fleet.world.repos.comfyui.commit_slow_start(4);
    fleet.apply(&fleet.spec(|options| {
        options.cuda = vec!["cu126".to_owned()];
        options.comfyui_ref = slow.clone();
    }));
    fleet.cli(&["rollout", "start", "render-prod"]).success();
    fleet.wait_for(&id, "the health check", |machine| step_is(machine, "health", "running"));
    agent.process.kill();
    assert_current_is_complete(&agent);
    assert!(agent.data_dir.join("journal/activating.json").is_file(), "the activation is journaled");
    agent.restart();
    let machine = fleet.wait_for_phase(&id, "active");
    assert_eq!(step(&machine, "health")["state"], "done");
    let third = current_target(&agent).unwrap();
    assert_ne!(third, second);
    assert!(!agent.data_dir.join("journal/activating.json").exists());
    let stats = comfyui_get(port, "/system_stats").unwrap();
    assert!(
        stats["system"]["argv"][0].as_str().unwrap().contains(third.to_str().unwrap()),
        "ComfyUI runs from the new environment: {stats}"
    );
    // Old environments beyond the two kept are gone; the three newest remain.
    let envs = std::fs::read_dir(agent.data_dir.join("envs")).unwrap().count();
    assert_eq!(envs, 3, "current plus two previous");
}

#[test]
fn a_uv_wheel_that_does_not_match_the_pinned_sha256_is_refused() {
    let fleet = fleet_serving_uv();
    let wheel = pinned_uv_wheel();
    let name = wheel.file_name().unwrap().to_str().unwrap().to_owned();
    let tampered = b"#!/bin/sh\necho pwned\n".to_vec();
    let actual = hex::encode(Sha256::digest(&tampered));
    fleet.world.server.replace(&fleet.world.catalog.index_wheel("uv").url_path, tampered);
    let path = path_without_uv(fleet.dir.path());
    let agent = fleet.agent_with("a100", "a100-x4-570", &[], Some(&path));
    let id = fleet.machine_id("a100");
    fleet.apply(&fleet.spec(|options| options.cuda = vec!["cu128".to_owned()]));
    fleet.cli(&["rollout", "start", "render-prod", "--wait", "--timeout", "1m"]).failure();
    let machine = fleet.show(&id);
    let uv = step(&machine, "uv");
    assert_eq!(uv["state"], "failed");
    let detail = uv["detail"].as_str().unwrap();
    assert!(detail.contains(&actual) && detail.contains(&name), "{detail}");
    assert!(!Path::new(&agent.data_dir).join("tools/uv-0.13.9/uv").exists(), "nothing unpacked");
}
