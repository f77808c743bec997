//! Agents report exactly what NVML says about their GPUs, driver and CUDA version.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test helpers fail loudly by design

use std::time::Duration;

use comfyfleet_e2e::{Agent, Controller, profile, test_dir, wait_until, write_profile};
use serde_json::{Value, json};

/// The GPUs a profile describes, one entry per GPU: (name, memory, "major.minor").
fn expected_gpus(profile: &Value) -> Vec<(String, u64, String)> {
    let mut gpus = Vec::new();
    for entry in profile["gpus"].as_array().unwrap() {
        let cc = entry["compute_capability"].as_array().unwrap();
        for _ in 0..entry["count"].as_u64().unwrap_or(1) {
            gpus.push((
                entry["name"].as_str().unwrap().to_owned(),
                entry["memory_total_bytes"].as_u64().unwrap(),
                format!("{}.{}", cc[0], cc[1]),
            ));
        }
    }
    gpus
}

fn expected_cuda(profile: &Value) -> Value {
    match profile["cuda_driver_version"].as_u64() {
        Some(v) => json!(format!("{}.{}", v / 1000, (v % 1000) / 10)),
        None => Value::Null,
    }
}

fn assert_reports_profile(machine: &Value, profile: &Value) {
    let name = machine["hostname"].as_str().unwrap();
    assert_eq!(machine["online"], true, "{name} should be online");
    assert_eq!(machine["driver_version"], profile["driver_version"], "{name} driver");
    assert_eq!(machine["cuda_driver_version"], expected_cuda(profile), "{name} CUDA");
    let gpus = machine["gpus"].as_array().unwrap();
    let expected = expected_gpus(profile);
    assert_eq!(gpus.len(), expected.len(), "{name} GPU count");
    let mut uuids = std::collections::BTreeSet::new();
    for (index, (gpu, (gpu_name, memory, cc))) in gpus.iter().zip(&expected).enumerate() {
        assert_eq!(gpu["index"], index, "{name} GPU {index}");
        assert_eq!(gpu["name"], gpu_name.as_str(), "{name} GPU {index}");
        assert_eq!(gpu["memory_total_bytes"], *memory, "{name} GPU {index}");
        assert_eq!(gpu["compute_capability"], cc.as_str(), "{name} GPU {index}");
        assert!(gpu.get("errors").is_none(), "{name} GPU {index} has errors: {gpu}");
        let uuid = gpu["uuid"].as_str().unwrap();
        assert!(uuid.starts_with("GPU-") && uuid.len() == 40, "{uuid}");
        assert!(uuids.insert(uuid.to_owned()), "{name}: duplicate UUID {uuid}");
        assert!(gpu["pci_bus_id"].as_str().unwrap().starts_with("0000"));
    }
    assert!(machine["cpu_cores"].as_u64().unwrap() >= 1);
    assert!(machine["memory_total_bytes"].as_u64().unwrap() > 0);
    assert!(machine["data_dir_free_bytes"].as_u64().unwrap() > 0);
    for field in ["os", "kernel", "arch", "cpu_model"] {
        assert!(!machine[field].as_str().unwrap().is_empty(), "{name}: {field} is empty");
    }
    assert_eq!(machine["agent_version"], env!("CARGO_PKG_VERSION"));
    assert!(machine["last_seen"].as_str().unwrap().ends_with('Z'));
}

#[test]
fn five_agents_report_exactly_their_gpus_driver_and_cuda() {
    let dir = test_dir();
    let controller = Controller::start(&dir.path().join("controller"));
    let token = controller.create_token(&["--uses", "5", "--label", "pool=render-a"]);
    let names = ["mixed-4090-a6000-570", "no-gpu", "h100-x8-580", "l40s-x2-550", "rtx5090-x1-575"];
    let _agents: Vec<Agent> = names
        .iter()
        .map(|name| {
            Agent::start(
                dir.path(),
                name,
                &profile(name),
                &controller.url,
                Some(&token),
                &["--label", "rack=r1"],
            )
        })
        .collect();

    let machines = wait_until(Duration::from_secs(30), "five machines online with inventory", || {
        let machines = controller.machines();
        let ready = machines.len() == 5
            && machines.iter().all(|m| m["online"] == true && !m["nvml_status"].is_null());
        ready.then_some(machines)
    });
    for name in names {
        let machine =
            machines.iter().find(|m| m["hostname"] == name).unwrap_or_else(|| panic!("{name} missing"));
        assert_reports_profile(machine, &profile(name));
        assert_eq!(machine["labels"], json!({"pool": "render-a", "rack": "r1"}));
    }
    let no_gpu = machines.iter().find(|m| m["hostname"] == "no-gpu").unwrap();
    assert_eq!(no_gpu["nvml_status"], "driver-not-loaded");
    assert_eq!(no_gpu["cuda_driver_version"], Value::Null);

    let table = controller.cli(&["machines"]).success();
    assert!(table.contains("2× L40S (8.9, 45 GiB)"), "{table}");
    assert!(table.contains("1× RTX 4090 (8.9, 24 GiB) + 1× RTX A6000 (8.6, 48 GiB)"), "{table}");
    assert!(table.contains("8× H100 80GB HBM3 (9.0, 80 GiB)"), "{table}");
    assert!(table.contains("none (driver not loaded)"), "{table}");
    assert!(table.contains("5 machines (5 online), 13 GPUs"), "{table}");

    let csv = controller.cli(&["machines", "-o", "csv"]).success();
    assert_eq!(csv.lines().count(), 6, "{csv}");
    assert!(csv.lines().next().unwrap().starts_with("id,hostname,online,last_seen"));

    let mixed_id =
        machines.iter().find(|m| m["hostname"] == names[0]).unwrap()["id"].as_str().unwrap().to_owned();
    let shown = controller.cli(&["machines", "show", &mixed_id[..6]]).success();
    assert!(shown.contains("driver 570.133.07, CUDA 12.8"), "{shown}");
    assert!(shown.contains("NVIDIA RTX A6000"), "{shown}");
    let shown_json: Value =
        serde_json::from_str(&controller.cli(&["machines", "show", &mixed_id, "-o", "json"]).success())
            .unwrap();
    assert_eq!(shown_json["id"], mixed_id.as_str());
}

#[test]
fn a_machine_without_the_nvidia_library_is_valid_and_says_so() {
    let dir = test_dir();
    let controller = Controller::start(&dir.path().join("controller"));
    let token = controller.create_token(&[]);
    let missing = dir.path().join("nowhere/libnvidia-ml.so.1");
    let _agent = Agent::start(
        dir.path(),
        "cpu-box-2",
        &profile("no-gpu"),
        &controller.url,
        Some(&token),
        &["--nvml-lib", missing.to_str().unwrap()],
    );
    let machine = wait_until(Duration::from_secs(20), "the CPU machine online", || {
        controller.machine("cpu-box-2").filter(|m| m["online"] == true)
    });
    assert_eq!(machine["nvml_status"], "library-not-found");
    assert!(machine["nvml_detail"].as_str().unwrap().contains("nowhere/libnvidia-ml.so.1"));
    assert_eq!(machine["gpus"], json!([]));
    assert_eq!(machine["driver_version"], Value::Null);
    let table = controller.cli(&["machines"]).success();
    assert!(table.contains("none (no NVIDIA library)"), "{table}");
}

#[test]
fn an_nvml_error_on_one_gpu_does_not_lose_the_others() {
    let dir = test_dir();
    let controller = Controller::start(&dir.path().join("controller"));
    let token = controller.create_token(&[]);
    let broken = json!({
        "driver_version": "570.133.07",
        "cuda_driver_version": 12080,
        "gpus": [
            {"name": "NVIDIA A100-SXM4-80GB", "memory_total_bytes": 85899345920u64, "compute_capability": [8, 0], "count": 2},
            {"name": "NVIDIA A100-SXM4-80GB", "memory_total_bytes": 85899345920u64, "compute_capability": [8, 0],
             "fail": ["nvmlDeviceGetMemoryInfo_v2", "nvmlDeviceGetPciInfo_v3"]},
            {"name": "NVIDIA A100-SXM4-80GB", "memory_total_bytes": 85899345920u64, "compute_capability": [8, 0],
             "fail": ["nvmlDeviceGetHandleByIndex_v2"]}
        ]
    });
    let _agent = Agent::start(dir.path(), "flaky", &broken, &controller.url, Some(&token), &[]);
    let machine = wait_until(Duration::from_secs(20), "the flaky machine's inventory", || {
        controller
            .machine("flaky")
            .filter(|m| m["online"] == true && !m["gpus"].as_array().unwrap().is_empty())
    });
    let gpus = machine["gpus"].as_array().unwrap();
    assert_eq!(gpus.len(), 4, "{machine:#}");
    for healthy in &gpus[..2] {
        assert_eq!(healthy["memory_total_bytes"], 85_899_345_920u64);
        assert!(healthy.get("errors").is_none());
    }
    // Memory and PCI failed; the name, UUID and compute capability did not.
    assert_eq!(gpus[2]["memory_total_bytes"], Value::Null);
    assert_eq!(gpus[2]["pci_bus_id"], Value::Null);
    assert_eq!(gpus[2]["compute_capability"], "8.0");
    let errors = gpus[2]["errors"].as_array().unwrap();
    assert_eq!(errors.len(), 2, "{errors:?}");
    // No handle at all: only the index is known, and why.
    assert_eq!(gpus[3]["index"], 3);
    assert_eq!(gpus[3]["name"], Value::Null);
    assert!(gpus[3]["errors"][0].as_str().unwrap().starts_with("handle:"));
    let table = controller.cli(&["machines"]).success();
    assert!(table.contains("[2 with errors]"), "{table}");
}

#[test]
fn an_inventory_change_is_reported_without_a_restart() {
    let dir = test_dir();
    let controller = Controller::start(&dir.path().join("controller"));
    let token = controller.create_token(&[]);
    let agent = Agent::start(
        dir.path(),
        "growing",
        &profile("rtx4090-x1-570"),
        &controller.url,
        Some(&token),
        &["--inventory-interval", "1s"],
    );
    wait_until(Duration::from_secs(20), "one GPU", || {
        controller.machine("growing").filter(|m| m["gpus"].as_array().unwrap().len() == 1)
    });
    let mut upgraded = profile("rtx4090-x1-570");
    upgraded["gpus"][0]["count"] = json!(2);
    upgraded["driver_version"] = json!("580.95.05");
    upgraded["cuda_driver_version"] = json!(13000);
    write_profile(&agent.profile_path, &upgraded);
    let machine = wait_until(Duration::from_secs(20), "two GPUs and the new driver", || {
        controller.machine("growing").filter(|m| m["gpus"].as_array().unwrap().len() == 2)
    });
    assert_eq!(machine["driver_version"], "580.95.05");
    assert_eq!(machine["cuda_driver_version"], "13.0");
}
