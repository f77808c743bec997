//! Switching environments on a running machine: a tampered wheel changes nothing,
//! an upgrade waits for the render in flight, a ComfyUI that fails its health check
//! is switched back, and a rollback is a switch without an install.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test helpers fail loudly by design

use std::path::Path;
use std::time::{Duration, Instant};

use comfyfleet_e2e::provision::{
    Fleet, comfyui_get, comfyui_port, current_target, find_step, queue_render, step, step_is,
};
use comfyfleet_e2e::wait_until;
use sha2::{Digest, Sha256};

fn pytorch_version(port: u16) -> Option<String> {
    comfyui_get(port, "/system_stats")?["system"]["pytorch_version"].as_str().map(str::to_owned)
}

fn cuda(builds: &[&str]) -> Vec<String> {
    builds.iter().map(|build| (*build).to_owned()).collect()
}

#[test]
fn a_wheel_whose_bytes_do_not_match_its_sha256_fails_the_build_and_touches_nothing() {
    let fleet = Fleet::start();
    let agent = fleet.agent("rtx4090", "rtx4090-x1-570");
    let id = fleet.machine_id("rtx4090");
    fleet.apply(&fleet.spec(|options| options.cuda = cuda(&["cu128"])));
    fleet.cli(&["rollout", "start", "render-prod", "--wait", "--timeout", "3m"]).success();
    let before = current_target(&agent).unwrap();
    let pid = agent.comfyui_pid().unwrap();

    // The cu126 build's SageAttention wheel for SM 8.9 arrives tampered with.
    let wheel = fleet.world.catalog.sageattention_for("8.9", "cu126", "2.9").wheel.clone();
    let tampered = b"not the wheel the spec pins".to_vec();
    let actual = hex::encode(Sha256::digest(&tampered));
    fleet.world.server.replace(&wheel.url_path, tampered);
    fleet.apply(&fleet.spec(|options| options.cuda = cuda(&["cu126"])));
    let failed = fleet.cli(&["rollout", "start", "render-prod", "--wait", "--timeout", "3m"]).failure();
    assert!(failed.contains("failed"), "{failed}");

    let machine = fleet.show(&id);
    assert_eq!(machine["report"]["phase"], "failed", "{}", machine["report"]);
    let optimizations = step(&machine, "optimizations");
    assert_eq!(optimizations["state"], "failed");
    let detail = optimizations["detail"].as_str().unwrap();
    let url = format!("{}{}", fleet.base_url(), wheel.url_path);
    assert!(detail.contains(&url), "names the URL: {detail}");
    assert!(detail.contains(&wheel.wheel.sha256) && detail.contains(&actual), "names both hashes: {detail}");
    assert!(machine["report"]["error"].as_str().unwrap().contains(&actual));

    // `current` and the running ComfyUI are untouched.
    assert_eq!(current_target(&agent).unwrap(), before);
    assert_eq!(agent.comfyui_pid(), Some(pid));
    assert_eq!(pytorch_version(comfyui_port(&agent)).as_deref(), Some("2.9.0+cu128"));
    let failed_env =
        agent.data_dir.join("envs").join(&machine["report"]["revision_id"].as_str().unwrap()[..16]);
    assert!(!failed_env.join(".complete").exists(), "the failed environment is not complete");
    // The failure is not retried in a loop: only a new rollout retries it.
    let uv_calls = fleet.uv_calls();
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(fleet.uv_calls(), uv_calls);
}

#[test]
fn an_upgrade_waits_for_the_render_a_bad_comfyui_is_switched_back_and_rollback_installs_nothing() {
    let fleet = Fleet::start();
    let agent = fleet.agent("rtx4090", "rtx4090-x1-570");
    let id = fleet.machine_id("rtx4090");
    fleet.apply(&fleet.spec(|options| options.cuda = cuda(&["cu128"])));
    fleet.cli(&["rollout", "start", "render-prod", "--wait", "--timeout", "3m"]).success();
    let port = comfyui_port(&agent);
    let first = current_target(&agent).unwrap();

    // A render is running when the torch build changes.
    let gate = fleet.dir.path().join("render-may-finish");
    let prompt = queue_render(port, &gate);
    wait_until(Duration::from_secs(10), "the render to run", || {
        let queue = comfyui_get(port, "/queue")?;
        (queue["queue_running"].as_array()?.len() == 1).then_some(())
    });
    fleet.apply(&fleet.spec(|options| options.cuda = cuda(&["cu126"])));
    fleet.cli(&["rollout", "start", "render-prod"]).success();
    fleet.wait_for(&id, "the switch to wait for the render", |machine| {
        machine["report"]["phase"] == "activating"
            && step_is(machine, "drain", "running")
            && find_step(machine, "drain")
                .and_then(|s| s["detail"].as_str())
                .is_some_and(|d| d.contains("1 running"))
    });
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(current_target(&agent).unwrap(), first, "nothing switched while the render runs");
    assert_eq!(pytorch_version(port).as_deref(), Some("2.9.0+cu128"));
    std::fs::write(&gate, "done").unwrap();
    let machine = fleet.wait_for_phase(&id, "active");
    let second = current_target(&agent).unwrap();
    assert_ne!(second, first);
    assert_eq!(pytorch_version(port).as_deref(), Some("2.9.0+cu126"));
    assert!(step(&machine, "drain")["detail"].as_str().unwrap().starts_with("queue empty after"));
    let output = std::fs::read_dir(agent.data_dir.join("shared/output")).unwrap().count();
    assert_eq!(output, 1, "the render finished and wrote its output ({prompt})");
    // The second environment took what it shares with the first from uv's cache:
    // hardlinks to the same files, and every shared wheel downloaded once.
    let numpy = |env: &Path| {
        let site =
            agent.data_dir.join(env).join("venv/lib").read_dir().unwrap().next().unwrap().unwrap().path();
        std::fs::metadata(site.join("site-packages/numpy/__init__.py")).unwrap()
    };
    use std::os::unix::fs::MetadataExt;
    let (one, two) = (numpy(&first), numpy(&second));
    assert_eq!((one.dev(), one.ino()), (two.dev(), two.ino()), "numpy is hardlinked from the cache");
    assert!(one.nlink() >= 3, "the cache and both environments share the file");
    let wheel = &fleet.world.catalog.index_wheel("numpy").url_path;
    assert_eq!(fleet.world.server.count(wheel).requests, 1, "numpy's wheel was fetched once");

    // A ComfyUI that cannot start fails its health check and is switched back.
    let broken = fleet.world.repos.comfyui.commit_crash_at_start();
    fleet.apply(&fleet.spec(|options| {
        options.cuda = cuda(&["cu126"]);
        options.comfyui_ref = broken.clone();
        options.health_timeout = "20s".to_owned();
    }));
    let failed = fleet.cli(&["rollout", "start", "render-prod", "--wait", "--timeout", "3m"]).failure();
    assert!(failed.contains("failed"), "{failed}");
    // The agent switched back itself; the rollout's auto-rollback then assigned the
    // previous revision again, so what the controller wants is what runs.
    let status = wait_until(Duration::from_secs(60), "the failed machine to be rolled back", || {
        let text = fleet.cli(&["rollout", "status", "render-prod", "-o", "json"]).success();
        let status: serde_json::Value = serde_json::from_str(&text).unwrap();
        (status["machines"][0]["status"] == "rolled_back").then_some(status)
    });
    assert_eq!(status["state"], "paused", "{status}");
    assert_eq!(status["budget_exceeded"], true, "{status}");
    let row = &status["machines"][0];
    assert_eq!(row["status"], "rolled_back", "{status}");
    let error = row["detail"].as_str().unwrap();
    assert!(error.starts_with("health: ComfyUI exited"), "{error}");
    assert!(error.contains("broken build"), "the reason from ComfyUI's log: {error}");
    assert!(error.contains("switched back to render-prod@2"), "{error}");
    assert!(error.ends_with("(back on render-prod@2)"), "{error}");
    let machine = fleet.wait_for_phase(&id, "active");
    assert_eq!(machine["assignment"]["reason"], "rollback");
    assert_eq!(machine["assignment"]["revision_number"], 2);
    assert_eq!(current_target(&agent).unwrap(), second, "current is back on the previous revision");
    assert_eq!(pytorch_version(port).as_deref(), Some("2.9.0+cu126"), "the previous ComfyUI runs again");

    // Rollback: back to revision 1, still on disk, without installing anything.
    let uv_calls = fleet.uv_calls();
    let started = Instant::now();
    let rolled = fleet.cli(&["machines", "rollback", &id, "--wait", "--timeout", "1m"]).success();
    let elapsed = started.elapsed();
    assert!(rolled.contains("rolling back to render-prod@1"), "{rolled}");
    let machine = fleet.show(&id);
    assert_eq!(machine["report"]["phase"], "active");
    assert_eq!(machine["assignment"]["reason"], "rollback");
    assert_eq!(current_target(&agent).unwrap(), first);
    assert_eq!(pytorch_version(port).as_deref(), Some("2.9.0+cu128"));
    assert_eq!(fleet.uv_calls(), uv_calls, "a rollback installs nothing");
    let switch_ms: u64 = ["drain", "switch", "start", "health"]
        .iter()
        .map(|name| step(&machine, name)["duration_ms"].as_u64().unwrap())
        .sum();
    eprintln!("rollback: {switch_ms} ms on the agent, {} ms from the CLI", elapsed.as_millis());
    assert!(switch_ms < 2000, "the rollback took {switch_ms} ms on the agent");
}
