//! Provisioning end to end: real agents (GPUs from the fake NVML library) build
//! environments with the real uv and python3 from the stand-in indexes, verify
//! them, run ComfyUI from them, and report every step to the real controller.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test helpers fail loudly by design

use comfyfleet_e2e::provision::{
    Fleet, comfyui_get, comfyui_port, current_environment, current_target, run_in_env, step,
};
use comfyfleet_e2e::standin::find_uv;
use serde_json::Value;

/// The machines of the first test: one per CUDA build the spec allows.
const MACHINES: [(&str, &str, &str, &str); 3] = [
    // hostname, profile, the build plan picks (driver), the GPUs' SM
    ("h100", "h100-x8-580", "2.9.0+cu130", "9.0"),
    ("rtx4090", "rtx4090-x1-570", "2.9.0+cu128", "8.9"),
    ("v100", "v100-x2-560", "2.9.0+cu126", "7.0"),
];

#[test]
fn three_machines_converge_on_one_spec_each_with_its_own_build_and_kernels() {
    let fleet = Fleet::start();
    let agents: Vec<_> = MACHINES.iter().map(|(name, profile, _, _)| fleet.agent(name, profile)).collect();
    let spec = fleet.spec(|options| options.cuda = ["cu130", "cu128", "cu126"].map(str::to_owned).to_vec());
    fleet.apply(&spec);

    // What `plan` predicts is what each machine gets.
    let spec_path = fleet.dir.path().join("spec.toml");
    let plan: Value = serde_json::from_str(
        &fleet.cli(&["plan", "-f", spec_path.to_str().unwrap(), "-o", "json"]).success(),
    )
    .unwrap();
    let started = fleet.cli(&["rollout", "start", "render-prod", "--wait", "--timeout", "5m"]).success();
    assert!(started.contains("render-prod@1: 3 assigned, 0 incompatible, 0 not targeted"), "{started}");
    assert!(started.contains("succeeded: 3 active"), "{started}");

    for ((hostname, _, torch, sm), agent) in MACHINES.iter().zip(&agents) {
        let planned = plan["machines"]
            .as_array()
            .unwrap()
            .iter()
            .find(|machine| machine["hostname"] == *hostname)
            .unwrap();
        assert_eq!(planned["torch"], *torch, "{hostname}: {planned}");
        let machine = fleet.show(&fleet.machine_id(hostname));
        assert_eq!(machine["report"]["phase"], "active", "{hostname}: {}", machine["report"]);
        let installed = current_environment(&machine);
        assert_eq!(installed["torch_version"], *torch, "{hostname}: the venv's torch is the planned build");
        assert_eq!(installed["drift"], Value::Null, "{hostname}: nothing drifted");

        // The SageAttention wheel for this machine's SM, CUDA build and Python.
        let env = current_target(agent).unwrap();
        let built_for =
            run_in_env(agent, &env, "import json, sageattention; print(json.dumps(sageattention.BUILT_FOR))");
        let built_for: Value = serde_json::from_str(&built_for).unwrap();
        assert_eq!(built_for["sm"], *sm, "{hostname}");
        assert_eq!(built_for["cuda"], planned["cuda_tag"], "{hostname}");
        let sage =
            installed["optimizations"].as_array().unwrap().iter().find(|o| o["name"] == "sageattention");
        assert_eq!(sage.unwrap()["verified"], true, "{hostname}: {installed}");
        assert!(
            machine["assignment"]["torch"] == *torch && step(&machine, "verify")["state"] == "done",
            "{machine}"
        );

        // ComfyUI runs from the new environment with that torch, and with the
        // argument tied to SageAttention because it verified.
        let stats = comfyui_get(comfyui_port(agent), "/system_stats").expect("ComfyUI answers");
        assert_eq!(stats["system"]["pytorch_version"], *torch, "{hostname}");
        let argv = stats["system"]["argv"].as_array().unwrap();
        assert!(argv.iter().any(|arg| arg == "--use-sage-attention"), "{argv:?}");

        // A custom node asking for torch==2.3.0, another for torch-cpu: neither
        // changed torch, and neither decoy was even downloaded.
        let requirements = step(&machine, "requirements")["detail"].as_str().unwrap();
        assert!(requirements.contains("ComfyUI-KJNodes: `torch==2.3.0` held at"), "{requirements}");
        assert!(requirements.contains("ComfyUI-VideoHelperSuite: `torch-cpu` held at"), "{requirements}");
        let distributions = run_in_env(
            agent,
            &env,
            "import importlib.metadata as m; print(sorted(d.metadata['Name'] for d in m.distributions()))",
        );
        assert!(
            !distributions.contains("torch-cpu") && !distributions.contains("torch_cpu"),
            "{distributions}"
        );
        assert!(
            distributions.contains("'einops'") && distributions.contains("'imageio-ffmpeg'"),
            "{distributions}"
        );
    }
    for decoy in &fleet.world.catalog.decoys {
        assert_eq!(
            fleet.world.server.requests_matching(&decoy.url_path),
            0,
            "{} was fetched",
            decoy.url_path
        );
    }

    // Sending the same revision again (a new generation) changes nothing: no uv, no
    // Python, the same ComfyUI processes.
    let uv_calls = fleet.uv_calls();
    let imports = fleet.torch_imports();
    let pids: Vec<_> = agents.iter().map(|agent| agent.comfyui_pid().unwrap()).collect();
    assert!(uv_calls > 0 && imports > 0, "the logs see the builds: {uv_calls} uv calls, {imports} imports");
    fleet.cli(&["rollout", "start", "render-prod", "--wait", "--timeout", "1m"]).success();
    for (hostname, _, _, _) in MACHINES {
        let machine = fleet.show(&fleet.machine_id(hostname));
        assert_eq!(machine["report"]["generation"], 2, "{hostname}");
        assert_eq!(machine["report"]["phase"], "active");
    }
    assert_eq!(fleet.uv_calls(), uv_calls, "re-sending the same revision started uv");
    assert_eq!(fleet.torch_imports(), imports, "re-sending the same revision started Python");
    let after: Vec<_> = agents.iter().map(|agent| agent.comfyui_pid().unwrap()).collect();
    assert_eq!(after, pids, "ComfyUI was not restarted");

    // The inventory reads the environment itself: a package changed by hand shows
    // up as drift from what verification recorded.
    let (hostname, agent) = (MACHINES[0].0, &agents[0]);
    let python = agent.data_dir.join(current_target(agent).unwrap()).join("venv/bin/python");
    let by_hand = std::process::Command::new(find_uv())
        .args(["pip", "install", "--quiet", "--python"])
        .arg(&python)
        .args(["--default-index", &format!("{}/simple", fleet.base_url()), "triton==3.4.0"])
        .env("UV_CACHE_DIR", fleet.dir.path().join("by-hand-cache"))
        .status()
        .unwrap();
    assert!(by_hand.success());
    let machine = fleet.wait_for(&fleet.machine_id(hostname), "the drift to be reported", |machine| {
        !current_environment(machine)["drift"].is_null()
    });
    let drift = &current_environment(&machine)["drift"];
    assert_eq!(drift, &serde_json::json!(["triton is 3.4.0, verified 3.5.0"]), "{machine}");
}

#[test]
fn a_550_driver_runs_a_cu128_build_under_minor_compatibility_and_says_so() {
    let fleet = Fleet::start();
    let _agent = fleet.agent("l40s", "l40s-x2-550");
    let id = fleet.machine_id("l40s");
    let spec_path = fleet.dir.path().join("spec.toml");
    let plan = || fleet.cli(&["plan", "-f", spec_path.to_str().unwrap()]).success();

    // Under the default rule the 550 driver (CUDA 12.4) is refused, with the hint.
    fleet.apply(&fleet.spec(|options| options.cuda = vec!["cu128".to_owned()]));
    let refused = plan();
    assert!(refused.contains("incompatible"), "{refused}");
    assert!(
        refused.contains(
            "would run cu128 under CUDA minor-version compatibility: set torch.driver_compat = \"minor\""
        ),
        "{refused}"
    );

    // Under `minor` it gets cu128, marked as such in plan, machines show and the JSON.
    fleet.apply(&fleet.spec(|options| {
        options.cuda = vec!["cu128".to_owned()];
        options.torch_extra = "driver_compat = \"minor\"\n".to_owned();
    }));
    let planned = plan();
    assert!(planned.contains("2.9.0+cu128 (minor compat)"), "{planned}");
    fleet.cli(&["rollout", "start", "render-prod", "--wait", "--timeout", "3m"]).success();
    let shown = fleet.cli(&["machines", "show", &id]).success();
    assert!(
        shown.contains(
            "torch:       2.9.0+cu128 (planned; runs on this driver through CUDA minor-version compatibility)"
        ),
        "{shown}"
    );
    let machine = fleet.show(&id);
    assert_eq!(machine["assignment"]["driver_compat"], "minor", "{machine}");
    assert_eq!(machine["report"]["phase"], "active");
}
