//! One ComfyUI per GPU, with a real agent on the fake NVML's 8× H100 machine: eight
//! stand-in ComfyUIs, each seeing only its GPU (by UUID) on its own port with its own
//! database and temp directory; adopted after `kill -9` of the agent; drained
//! together; and one instance failing its health check switches the machine back.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test helpers fail loudly by design

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use comfyfleet_e2e::Agent;
use comfyfleet_e2e::provision::{Fleet, comfyui_get, current_target, queue_render, step, step_is};
use serde_json::Value;

const GPUS: usize = 8;

/// Instance `i`'s pid file: `run/comfyui.json` for the first, `run/comfyui-<i>.json` after.
fn pid_file(agent: &Agent, instance: usize) -> PathBuf {
    let name = if instance == 0 { "comfyui.json".to_owned() } else { format!("comfyui-{instance}.json") };
    agent.data_dir.join("run").join(name)
}

fn pid_record(agent: &Agent, instance: usize) -> Value {
    serde_json::from_str(&std::fs::read_to_string(pid_file(agent, instance)).unwrap()).unwrap()
}

/// Field 5 of /proc/PID/stat: the process group.
fn process_group(pid: i64) -> i64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    stat.rsplit(')').next().unwrap().split_whitespace().nth(2).unwrap().parse().unwrap()
}

fn alive(pid: i64) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit(')').next().and_then(|rest| rest.split_whitespace().next()) != Some("Z")
    })
}

/// Every instance's pid, port and `/system_stats`, checked against its GPU.
/// The report's instances: (GPUs, port, pid, state) each.
fn reported(machine: &Value) -> Vec<(Value, u64, i64, String)> {
    machine["report"]["instances"]
        .as_array()
        .unwrap_or(&Vec::new())
        .iter()
        .map(|instance| {
            (
                instance["gpus"].clone(),
                instance["port"].as_u64().unwrap(),
                instance["pid"].as_i64().unwrap(),
                instance["state"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn expected(pids: &[i64], base_port: u16, state: &str) -> Vec<(Value, u64, i64, String)> {
    pids.iter()
        .enumerate()
        .map(|(gpu, pid)| {
            (serde_json::json!([gpu]), u64::from(base_port) + gpu as u64, *pid, state.to_owned())
        })
        .collect()
}

fn check_instances(agent: &Agent, uuids: &[String], base_port: u16, env: &Path) -> Vec<i64> {
    let mut pids = Vec::new();
    let mut databases = BTreeSet::new();
    for (instance, uuid) in uuids.iter().enumerate() {
        let record = pid_record(agent, instance);
        let pid = record["pid"].as_i64().unwrap();
        let port = u16::try_from(record["launch"]["port"].as_u64().unwrap()).unwrap();
        assert_eq!(usize::from(port), usize::from(base_port) + instance, "port = base + index");
        assert_eq!(record["launch"]["gpus"], serde_json::json!([instance]));
        assert!(alive(pid), "instance {instance} runs");
        assert_eq!(process_group(pid), pid, "instance {instance} is its own process group");
        let stats =
            comfyui_get(port, "/system_stats").unwrap_or_else(|| panic!("instance {instance} answers"));
        let system = &stats["system"];
        assert_eq!(system["cuda_visible_devices"].as_str(), Some(uuid.as_str()), "instance {instance}");
        assert_eq!(system["cuda_device_order"], "PCI_BUS_ID");
        let argv: Vec<&str> =
            system["argv"].as_array().unwrap().iter().map(|a| a.as_str().unwrap()).collect();
        assert!(argv[0].contains(env.to_str().unwrap()), "runs from {}: {argv:?}", env.display());
        let after = |flag: &str| argv[argv.iter().position(|arg| *arg == flag).unwrap() + 1].to_owned();
        let database = after("--database-url");
        let path = PathBuf::from(database.strip_prefix("sqlite:///").unwrap());
        assert!(path.is_file(), "instance {instance}'s database {} exists", path.display());
        databases.insert(path);
        let temp = PathBuf::from(after("--temp-directory"));
        assert_eq!(temp, agent.data_dir.join(format!("instances/{instance}")));
        assert!(temp.join("temp").is_dir());
        // Models, input, output and user files are shared.
        assert_eq!(after("--output-directory"), agent.data_dir.join("shared/output").to_str().unwrap());
        assert_eq!(after("--user-directory"), agent.data_dir.join("shared/user").to_str().unwrap());
        pids.push(pid);
    }
    assert_eq!(databases.len(), GPUS, "eight databases: {databases:?}");
    assert!(databases.contains(&agent.data_dir.join("shared/database/comfyui.db")));
    assert!(!pid_file(agent, GPUS).exists(), "no ninth instance");
    pids
}

#[test]
fn per_gpu_runs_eight_comfyuis_adopted_after_a_kill_and_one_failing_switches_the_machine_back() {
    let fleet = Fleet::start();
    let mut agent = fleet.agent("h100", "h100-x8-580");
    let id = fleet.machine_id("h100");
    let spec = |edit: &dyn Fn(&mut comfyfleet_e2e::standin::TestSpecOptions)| {
        fleet.spec(|options| {
            options.cuda = vec!["cu128".to_owned()];
            edit(options);
        })
    };
    fleet.apply(&spec(&|_| {}));
    fleet.cli(&["rollout", "start", "render-prod", "--wait", "--timeout", "4m"]).success();
    let machine = fleet.show(&id);
    assert_eq!(machine["report"]["phase"], "active", "{}", machine["report"]);
    let uuids: Vec<String> = machine["gpus"]
        .as_array()
        .unwrap()
        .iter()
        .map(|gpu| gpu["uuid"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(uuids.len(), GPUS);
    let base_port = u16::try_from(pid_record(&agent, 0)["launch"]["port"].as_u64().unwrap()).unwrap();
    let first = agent.data_dir.join(current_target(&agent).unwrap());
    let pids = check_instances(&agent, &uuids, base_port, &first);
    let start = step(&machine, "start")["detail"].as_str().unwrap().to_owned();
    assert!(start.starts_with("8 ComfyUIs: ComfyUI instance 0 (GPU 0, port"), "{start}");
    let health = step(&machine, "health")["detail"].as_str().unwrap().to_owned();
    assert_eq!(health.matches("/system_stats reports pytorch").count(), GPUS, "{health}");
    assert_eq!(reported(&machine), expected(&pids, base_port, "healthy"));
    assert!(
        machine["report"]["instances"][7]["health"].as_str().unwrap().starts_with("/system_stats reports")
    );
    let shown = fleet.cli(&["machines", "show", &id]).success();
    assert!(shown.contains("Instances:") && shown.contains("INSTANCE  GPUS  PORT"), "{shown}");
    let row = format!("7         7     {}  {}  healthy", base_port + 7, pids[7]);
    assert!(shown.contains(&row), "{row:?} in {shown}");

    // kill -9 of the agent: the eight keep running, and the new agent adopts them
    // (it starts none of its own).
    agent.process.kill();
    agent.restart();
    fleet.wait_for(&id, "the agent back online", |machine| machine["online"] == true);
    std::thread::sleep(Duration::from_secs(5));
    let adopted = check_instances(&agent, &uuids, base_port, &first);
    assert_eq!(adopted, pids, "the same eight processes, adopted");
    fleet.wait_for(&id, "the adopted instances in the report", |machine| {
        reported(machine) == expected(&pids, base_port, "running")
    });

    // A render on instance 5 holds the switch of all eight; the new revision's
    // ComfyUI cannot start on GPU 3, so the whole machine goes back.
    let gate = fleet.dir.path().join("render-on-gpu-5.done");
    queue_render(base_port + 5, &gate);
    let broken = fleet.world.repos.comfyui.commit_crash_on_devices(&uuids[3]);
    fleet.apply(&spec(&|options| options.comfyui_ref = broken.clone()));
    fleet.cli(&["rollout", "start", "render-prod"]).success();
    let draining = fleet.wait_for(&id, "the drain", |machine| {
        step_is(machine, "drain", "running")
            && step(machine, "drain")["detail"].as_str().is_some_and(|d| !d.is_empty())
    });
    let waiting = step(&draining, "drain")["detail"].as_str().unwrap().to_owned();
    assert!(waiting.contains("instance 5 (GPU 5") && waiting.contains("1 running"), "{waiting}");
    assert!(!waiting.contains("instance 4"), "{waiting}");
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(fleet.show(&id)["report"]["phase"], "activating", "the render holds the switch");
    std::fs::write(&gate, "done").unwrap();
    let machine = fleet.wait_for(&id, "revision 2 to fail", |machine| {
        machine["report"]["phase"] == "failed" && machine["report"]["revision_number"] == 2
    });
    let error = machine["report"]["error"].as_str().unwrap();
    assert!(error.contains("instance 3 (GPU 3,") && error.contains("broken GPU"), "{error}");
    assert!(
        error.contains("switched back to render-prod@1 (") && error.ends_with("which is running again"),
        "{error}"
    );
    assert_eq!(agent.data_dir.join(current_target(&agent).unwrap()), first);
    let restored = check_instances(&agent, &uuids, base_port, &first);
    assert!(restored.iter().all(|pid| !pids.contains(pid)), "every instance was restarted");
    assert_eq!(reported(&machine), expected(&restored, base_port, "healthy"), "the instances running again");
}
