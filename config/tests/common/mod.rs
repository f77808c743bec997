//! What the config crate's integration tests share: machine facts from the GPU
//! profiles (real NVML facts) in tests/fixtures/gpu-profiles.json.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, dead_code)]

use std::collections::BTreeMap;

use comfyfleet_config::inventory::{ComputeCapability, CudaVersion};
use comfyfleet_config::resolve::{GpuFacts, MachineFacts};

const PROFILES: &str = include_str!("../../../tests/fixtures/gpu-profiles.json");

/// The facts of machine profile `name`, labelled `pool=render-a`, on x86_64.
pub fn profile(name: &str) -> MachineFacts {
    let profiles: serde_json::Value = serde_json::from_str(PROFILES).unwrap();
    let profile = &profiles["profiles"][name];
    assert!(profile.is_object(), "no profile {name}");
    let mut gpus = Vec::new();
    for group in profile["gpus"].as_array().unwrap() {
        let cc = group["compute_capability"].as_array().unwrap();
        for _ in 0..group["count"].as_u64().unwrap() {
            gpus.push(GpuFacts {
                index: gpus.len() as u32,
                name: Some(group["name"].as_str().unwrap().to_owned()),
                compute_capability: Some(ComputeCapability::new(
                    cc[0].as_u64().unwrap() as u32,
                    cc[1].as_u64().unwrap() as u32,
                )),
                memory_total_bytes: group["memory_total_bytes"].as_u64(),
            });
        }
    }
    MachineFacts {
        id: name.to_owned(),
        hostname: name.to_owned(),
        labels: BTreeMap::from([("pool".to_owned(), "render-a".to_owned())]),
        os: Some("Debian GNU/Linux 13 (trixie)".to_owned()),
        arch: Some("x86_64".to_owned()),
        nvml_problem: gpus.is_empty().then(|| "no NVIDIA library".to_owned()),
        driver_version: profile["driver_version"].as_str().map(str::to_owned),
        cuda_driver_version: profile["cuda_driver_version"]
            .as_u64()
            .map(|v| CudaVersion::from_nvml(v as u32).unwrap()),
        gpus,
        reported: true,
        software: Default::default(),
    }
}

/// A machine with these GPUs (name, SM) on a driver of `driver` supporting `cuda`.
pub fn machine(gpus: &[(&str, &str)], driver: &str, cuda: CudaVersion) -> MachineFacts {
    let mut facts = profile("rtx4090-x1-570");
    facts.id = "custom".to_owned();
    facts.hostname = "custom".to_owned();
    facts.driver_version = Some(driver.to_owned());
    facts.cuda_driver_version = Some(cuda);
    facts.gpus = gpus
        .iter()
        .enumerate()
        .map(|(index, (name, sm))| GpuFacts {
            index: index as u32,
            name: Some((*name).to_owned()),
            compute_capability: Some(sm.parse().unwrap()),
            memory_total_bytes: Some(1 << 34),
        })
        .collect();
    facts
}
