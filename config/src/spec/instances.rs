//! How many ComfyUIs a machine runs, and on which GPUs (`run.instances`,
//! `[[run.instance]]`). A ComfyUI renders on one GPU, so a machine with several
//! runs one per GPU unless the spec says otherwise.

use std::fmt;

use serde::{Deserialize, Serialize};

/// `run.instances`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum InstancesMode {
    /// One ComfyUI per GPU (the default; on a machine with one GPU, one ComfyUI).
    #[default]
    PerGpu,
    /// One ComfyUI that sees every GPU.
    One,
}

impl InstancesMode {
    pub fn is_per_gpu(&self) -> bool {
        *self == InstancesMode::PerGpu
    }
}

impl fmt::Display for InstancesMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            InstancesMode::PerGpu => "per-gpu",
            InstancesMode::One => "one",
        })
    }
}

/// One `[[run.instance]]`: a ComfyUI that sees these GPUs (NVML indices).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstanceSpec {
    pub gpus: Vec<u32>,
}

/// What the agent runs on a machine: the mode, or explicit GPU groups.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct InstancesPlan {
    #[serde(default, skip_serializing_if = "InstancesMode::is_per_gpu")]
    pub mode: InstancesMode,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<Vec<u32>>,
}

impl InstancesPlan {
    pub fn is_default(&self) -> bool {
        *self == InstancesPlan::default()
    }

    /// The GPU groups (NVML indices), one per ComfyUI, on a machine with these GPUs.
    /// A machine with at most one GPU, or `one`, runs one ComfyUI that sees them all
    /// (an empty group: nothing restricted, as before instances). A group naming a
    /// GPU the machine does not have is an error saying so.
    pub fn groups_for(&self, gpus: &[u32]) -> Result<Vec<Vec<u32>>, String> {
        if !self.groups.is_empty() {
            for group in &self.groups {
                if let Some(missing) = group.iter().find(|gpu| !gpus.contains(gpu)) {
                    return Err(format!(
                        "[[run.instance]] gpus = {group:?} names GPU {missing}, but this machine has GPUs {gpus:?}"
                    ));
                }
            }
            return Ok(self.groups.clone());
        }
        if self.mode == InstancesMode::One || gpus.len() <= 1 {
            return Ok(vec![Vec::new()]);
        }
        Ok(gpus.iter().map(|gpu| vec![*gpu]).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_follow_the_mode_and_the_gpus() {
        let per_gpu = InstancesPlan::default();
        assert_eq!(per_gpu.groups_for(&[0, 1, 2]).unwrap(), vec![vec![0], vec![1], vec![2]]);
        assert_eq!(per_gpu.groups_for(&[0]).unwrap(), vec![Vec::<u32>::new()]);
        assert_eq!(per_gpu.groups_for(&[]).unwrap(), vec![Vec::<u32>::new()]);
        let one = InstancesPlan { mode: InstancesMode::One, groups: Vec::new() };
        assert_eq!(one.groups_for(&[0, 1]).unwrap(), vec![Vec::<u32>::new()]);
        let explicit = InstancesPlan { mode: InstancesMode::PerGpu, groups: vec![vec![0, 1], vec![2]] };
        assert_eq!(explicit.groups_for(&[0, 1, 2]).unwrap(), vec![vec![0, 1], vec![2]]);
        assert!(explicit.groups_for(&[0, 1]).unwrap_err().contains("names GPU 2"));
    }
}
