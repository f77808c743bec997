//! One rollout end to end with real agents of four GPU profiles (fake NVML, real
//! uv and python3, the stand-in indexes): a first revision through canary and
//! batches, an upgrade that never takes more than two machines down at once, and
//! an undo that only switches back.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test helpers fail loudly by design

use comfyfleet_e2e::provision::{Fleet, comfyui_get, comfyui_port};
use comfyfleet_e2e::rollouts::{events, max_unavailable};
use serde_json::Value;

const MACHINES: [(&str, &str); 4] = [
    ("h100", "h100-x8-580"),
    ("rtx4090", "rtx4090-x1-570"),
    ("v100", "v100-x2-560"),
    ("a100", "a100-x4-570"),
];

fn cuda(builds: &[&str]) -> Vec<String> {
    builds.iter().map(|build| (*build).to_owned()).collect()
}

fn status(fleet: &Fleet) -> Value {
    let out = fleet.cli(&["rollout", "status", "render-prod", "--machines", "-o", "json"]).success();
    serde_json::from_str(&out).unwrap()
}

fn pytorch(agent: &comfyfleet_e2e::Agent) -> String {
    let stats = comfyui_get(comfyui_port(agent), "/system_stats").expect("ComfyUI answers");
    stats["system"]["pytorch_version"].as_str().unwrap().to_owned()
}

#[test]
fn four_real_machines_roll_out_upgrade_in_batches_and_undo() {
    let fleet = Fleet::start();
    let agents: Vec<_> = MACHINES.iter().map(|(name, profile)| fleet.agent(name, profile)).collect();

    // Revision 1: the canary first, then one machine at a time.
    fleet.apply(&fleet.spec(|options| options.cuda = cuda(&["cu130", "cu128", "cu126"])));
    let first = fleet
        .cli(&[
            "rollout",
            "start",
            "render-prod",
            "--canary",
            "1",
            "--max-unavailable",
            "1",
            "--max-parallel-prepare",
            "100%",
            "--soak",
            "1s",
            "--wait",
            "--timeout",
            "5m",
        ])
        .success();
    assert!(first.contains("canary started") && first.contains("batch 3 started"), "{first}");
    assert!(first.contains("succeeded: 4 active"), "{first}");
    let one = status(&fleet);
    assert_eq!(one["counts"]["active"], 4, "{one}");
    let id = one["id"].as_u64().unwrap();
    let stored = events(&fleet.controller, id);
    assert_eq!(max_unavailable(&stored), 1, "one machine at a time");
    let builds: Vec<String> = agents.iter().map(pytorch).collect();
    assert_eq!(builds, ["2.9.0+cu130", "2.9.0+cu128", "2.9.0+cu126", "2.9.0+cu128"]);

    // Revision 2 drops cu130: every machine gets a new environment (the H100 a new
    // torch build), prepared all at once, switched at most two at a time.
    fleet.apply(&fleet.spec(|options| options.cuda = cuda(&["cu128", "cu126"])));
    let upgrade = fleet
        .cli(&[
            "rollout",
            "start",
            "render-prod",
            "--canary",
            "1",
            "--max-unavailable",
            "2",
            "--max-parallel-prepare",
            "100%",
            "--wait",
            "--timeout",
            "5m",
        ])
        .success();
    assert!(upgrade.contains("succeeded: 4 active"), "{upgrade}");
    let two = status(&fleet);
    assert_eq!((two["revision"].as_u64(), two["counts"]["active"].as_u64()), (Some(2), Some(4)), "{two}");
    let stored = events(&fleet.controller, two["id"].as_u64().unwrap());
    assert!(max_unavailable(&stored) <= 2, "at most two down at once");
    // Every machine had prepared before the last batch started switching.
    let prepared = stored.iter().filter(|event| event["kind"] == "prepared").count();
    let last_batch = stored.iter().position(|event| event["kind"] == "phase" && event["phase"] == 2).unwrap();
    let prepared_before = stored[..last_batch].iter().filter(|event| event["kind"] == "prepared").count();
    assert_eq!((prepared, prepared_before), (4, 4), "preparing runs ahead of activation");
    assert_eq!(pytorch(&agents[0]), "2.9.0+cu128", "the H100 moved to cu128");
    for (hostname, _) in MACHINES {
        let machine = fleet.show(&fleet.machine_id(hostname));
        assert_eq!(machine["report"]["revision_number"], 2, "{hostname}");
        assert_eq!(machine["report"]["phase"], "active", "{hostname}");
    }

    // Undo: back to revision 1 through the same batching, installing nothing.
    let uv_calls = fleet.uv_calls();
    let undo = fleet
        .cli(&["rollout", "undo", "render-prod", "--max-unavailable", "2", "--wait", "--timeout", "3m"])
        .success();
    assert!(undo.contains("(undo of render-prod@2)") && undo.contains("succeeded: 4 active"), "{undo}");
    assert_eq!(fleet.uv_calls(), uv_calls, "an undo only switches");
    let back: Vec<String> = agents.iter().map(pytorch).collect();
    assert_eq!(back, builds, "every machine runs revision 1's build again");
    let undone = status(&fleet);
    assert_eq!((undone["kind"].as_str(), undone["revision"].as_u64()), (Some("undo"), Some(1)));
    assert!(max_unavailable(&events(&fleet.controller, undone["id"].as_u64().unwrap())) <= 2);
}
