//! What the resolver and the target selector know about a machine. Built from a
//! stored [`MachineRecord`] (controller), or from the JSON of `comfyfleet machines
//! -o json` (CLI), so that planning offline and against the live fleet read the same
//! facts.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::inventory::{ComputeCapability, CudaVersion, Inventory, NvmlStatus};
use crate::machine::MachineRecord;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MachineFacts {
    pub id: String,
    pub hostname: String,
    pub labels: BTreeMap<String, String>,
    /// `None` when the machine has not reported its inventory yet.
    pub os: Option<String>,
    pub arch: Option<String>,
    /// NVML's summary when it could not be used ("no NVIDIA library", …).
    pub nvml_problem: Option<String>,
    pub driver_version: Option<String>,
    pub cuda_driver_version: Option<CudaVersion>,
    pub gpus: Vec<GpuFacts>,
    /// False until the agent has sent an inventory: nothing is known about the hardware.
    pub reported: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GpuFacts {
    pub index: u32,
    pub name: Option<String>,
    pub compute_capability: Option<ComputeCapability>,
    pub memory_total_bytes: Option<u64>,
}

impl GpuFacts {
    /// "GPU 1 (NVIDIA RTX A6000)" — how reasons name a GPU.
    pub fn describe(&self) -> String {
        match &self.name {
            Some(name) => format!("GPU {} ({name})", self.index),
            None => format!("GPU {}", self.index),
        }
    }
}

impl From<&MachineRecord> for MachineFacts {
    fn from(machine: &MachineRecord) -> Self {
        MachineFacts::new(
            machine.id.to_string(),
            machine.hostname.clone(),
            machine.labels.as_map().clone(),
            machine.inventory.as_ref(),
        )
    }
}

impl MachineFacts {
    /// The facts in an inventory (`None`: the machine has not reported one yet).
    pub fn new(
        id: String,
        hostname: String,
        labels: BTreeMap<String, String>,
        inventory: Option<&Inventory>,
    ) -> Self {
        let nvidia = inventory.map(|inventory| &inventory.nvidia);
        MachineFacts {
            id,
            hostname,
            labels,
            os: inventory.map(|inventory| inventory.host.os.clone()),
            arch: inventory.map(|inventory| inventory.host.arch.clone()),
            nvml_problem: nvidia.and_then(|nvidia| match &nvidia.status {
                NvmlStatus::Ok => None,
                other => Some(other.summary().to_owned()),
            }),
            driver_version: nvidia.and_then(|nvidia| nvidia.driver_version.clone()),
            cuda_driver_version: nvidia.and_then(|nvidia| nvidia.cuda_driver_version),
            gpus: nvidia
                .map(|nvidia| {
                    nvidia
                        .gpus
                        .iter()
                        .map(|gpu| GpuFacts {
                            index: gpu.index,
                            name: gpu.name.clone(),
                            compute_capability: gpu.compute_capability,
                            memory_total_bytes: gpu.memory_total_bytes,
                        })
                        .collect()
                })
                .unwrap_or_default(),
            reported: inventory.is_some(),
        }
    }
}
