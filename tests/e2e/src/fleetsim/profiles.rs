//! Simulated GPUs: the machine profiles of `gpu-profiles.json` (the same file the fake
//! NVML library reads), turned into what NVML would report, and a [`GpuProbe`] that
//! reports one of them to the real inventory collector.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use comfyfleet_agent::inventory::GpuProbe;
use comfyfleet_config::{ComputeCapability, CudaVersion, Gpu, NvidiaInfo, NvmlStatus};
use serde::Deserialize;
use sha2::{Digest, Sha256};

/// The fixture the simulator uses without `--profiles`, built in so the binary works
/// from anywhere.
const BUILT_IN: &str = include_str!("../../../fixtures/gpu-profiles.json");
/// The same bound as the fake NVML library's.
const MAX_GPUS: usize = 64;
/// PCI buses of GPUs 0 to 7 of a domain, as the fake NVML library numbers them.
const PCI_BUSES: [u8; 8] = [0x18, 0x2A, 0x3A, 0x5D, 0x9A, 0xAB, 0xBA, 0xDB];

#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    #[error("cannot read the GPU profiles file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{origin} is not a GPU profiles file ({detail}); see tests/fixtures/gpu-profiles.json")]
    Parse { origin: String, detail: String },
    #[error("{origin}: profile `{name}` {detail}")]
    Invalid { origin: String, name: String, detail: String },
    #[error("no profile `{name}` in {origin}; it has: {known}")]
    Unknown { name: String, origin: String, known: String },
    #[error("{origin} has no profiles")]
    Empty { origin: String },
}

#[derive(Deserialize)]
struct ProfilesFile {
    profiles: BTreeMap<String, ProfileEntry>,
}

#[derive(Deserialize)]
struct ProfileEntry {
    driver_version: Option<String>,
    cuda_driver_version: Option<u32>,
    gpus: Vec<GpuEntry>,
}

#[derive(Deserialize)]
struct GpuEntry {
    name: String,
    memory_total_bytes: u64,
    compute_capability: (u32, u32),
    #[serde(default = "one")]
    count: usize,
}

fn one() -> usize {
    1
}

/// One machine profile, GPUs expanded.
#[derive(Debug, Clone)]
pub struct GpuProfile {
    pub name: String,
    driver_version: Option<String>,
    cuda_driver_version: Option<CudaVersion>,
    gpus: Vec<(String, u64, ComputeCapability)>,
}

impl GpuProfile {
    /// What NVML reports for this profile on the machine `seed` names: GPU UUIDs are
    /// derived from it, so every simulated machine has its own GPUs.
    pub fn nvidia_info(&self, seed: &str) -> NvidiaInfo {
        let Some(driver_version) = &self.driver_version else {
            // What the agent says when the fake library has no driver.
            return NvidiaInfo::unavailable(NvmlStatus::DriverNotLoaded(
                "NVML reports that the NVIDIA kernel driver is not loaded".into(),
            ));
        };
        let gpus = self
            .gpus
            .iter()
            .enumerate()
            .map(|(index, (name, memory, capability))| Gpu {
                index: u32::try_from(index).unwrap_or(u32::MAX),
                name: Some(name.clone()),
                uuid: Some(gpu_uuid(seed, index)),
                memory_total_bytes: Some(*memory),
                compute_capability: Some(*capability),
                pci_bus_id: Some(format!("{:08X}:{:02X}:00.0", index / 8, PCI_BUSES[index % 8])),
                errors: Vec::new(),
            })
            .collect();
        NvidiaInfo {
            status: NvmlStatus::Ok,
            driver_version: Some(driver_version.clone()),
            cuda_driver_version: self.cuda_driver_version,
            gpus,
        }
    }
}

/// `GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx` from `sha256(seed + "/" + index)`, the
/// fake NVML library's scheme.
fn gpu_uuid(seed: &str, index: usize) -> String {
    let hex = hex::encode(Sha256::digest(format!("{seed}/{index}").as_bytes()));
    format!("GPU-{}-{}-{}-{}-{}", &hex[0..8], &hex[8..12], &hex[12..16], &hex[16..20], &hex[20..32])
}

/// The profiles a fleet cycles through, in the order given (default: every profile
/// of the file, by name).
#[derive(Debug, Clone)]
pub struct ProfileSet {
    profiles: Vec<GpuProfile>,
}

impl ProfileSet {
    /// Reads `path` (or the built-in fixture) and keeps `names` (or all of them).
    pub fn load(path: Option<&Path>, names: &[String]) -> Result<ProfileSet, ProfileError> {
        let (origin, text) = match path {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|source| ProfileError::Read { path: path.to_owned(), source })?;
                (path.display().to_string(), text)
            }
            None => ("the built-in gpu-profiles.json".to_owned(), BUILT_IN.to_owned()),
        };
        Self::parse(&origin, &text, names)
    }

    pub fn parse(origin: &str, text: &str, names: &[String]) -> Result<ProfileSet, ProfileError> {
        let file: ProfilesFile = serde_json::from_str(text)
            .map_err(|error| ProfileError::Parse { origin: origin.to_owned(), detail: error.to_string() })?;
        let mut all = BTreeMap::new();
        for (name, entry) in file.profiles {
            let profile = expand(origin, &name, entry)?;
            all.insert(name, profile);
        }
        let profiles = if names.is_empty() {
            all.into_values().collect()
        } else {
            let known = || all.keys().cloned().collect::<Vec<_>>().join(", ");
            names
                .iter()
                .map(|name| {
                    all.get(name).cloned().ok_or_else(|| ProfileError::Unknown {
                        name: name.clone(),
                        origin: origin.to_owned(),
                        known: known(),
                    })
                })
                .collect::<Result<Vec<_>, _>>()?
        };
        if profiles.is_empty() {
            return Err(ProfileError::Empty { origin: origin.to_owned() });
        }
        Ok(ProfileSet { profiles })
    }

    /// Agent `index`'s profile: the fleet cycles through the set.
    pub fn for_agent(&self, index: usize) -> &GpuProfile {
        &self.profiles[index % self.profiles.len()]
    }
}

fn expand(origin: &str, name: &str, entry: ProfileEntry) -> Result<GpuProfile, ProfileError> {
    let invalid =
        |detail: String| ProfileError::Invalid { origin: origin.to_owned(), name: name.to_owned(), detail };
    let cuda_driver_version = entry
        .cuda_driver_version
        .map(CudaVersion::from_nvml)
        .transpose()
        .map_err(|error| invalid(format!("has a bad cuda_driver_version: {error}")))?;
    let mut gpus = Vec::new();
    for gpu in entry.gpus {
        if gpu.count > MAX_GPUS - gpus.len() {
            return Err(invalid(format!("has more than {MAX_GPUS} GPUs")));
        }
        let (major, minor) = gpu.compute_capability;
        let capability = ComputeCapability::new(major, minor);
        gpus.extend(std::iter::repeat_n((gpu.name, gpu.memory_total_bytes, capability), gpu.count));
    }
    Ok(GpuProfile { name: name.to_owned(), driver_version: entry.driver_version, cuda_driver_version, gpus })
}

/// Reports a fixed set of GPUs, computed once.
pub struct ProfileProbe {
    info: NvidiaInfo,
}

impl ProfileProbe {
    pub fn new(info: NvidiaInfo) -> Self {
        Self { info }
    }
}

impl GpuProbe for ProfileProbe {
    fn probe(&mut self) -> NvidiaInfo {
        self.info.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_built_in_profiles_expand_like_the_fake_library() {
        let set = ProfileSet::load(None, &["h100-x8-580".into(), "no-gpu".into()]).unwrap();
        let h100 = set.for_agent(0).nvidia_info("sim-0");
        assert_eq!(h100.status, NvmlStatus::Ok);
        assert_eq!(h100.gpus.len(), 8);
        assert_eq!(h100.cuda_driver_version, Some(CudaVersion::new(13, 0)));
        assert_eq!(h100.gpus[1].pci_bus_id.as_deref(), Some("00000000:2A:00.0"));
        assert_ne!(h100.gpus[0].uuid, h100.gpus[1].uuid);
        assert_ne!(h100.gpus[0].uuid, set.for_agent(2).nvidia_info("sim-2").gpus[0].uuid);
        let none = set.for_agent(1).nvidia_info("sim-1");
        assert!(matches!(none.status, NvmlStatus::DriverNotLoaded(_)) && none.gpus.is_empty());
        assert_eq!(set.for_agent(3).name, "no-gpu");
    }

    #[test]
    fn an_unknown_profile_names_the_known_ones() {
        let error = ProfileSet::load(None, &["h200".into()]).unwrap_err().to_string();
        assert!(error.contains("no profile `h200`") && error.contains("t4-x1-535"), "{error}");
    }
}
