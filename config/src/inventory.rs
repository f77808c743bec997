//! What a machine is: its GPUs as NVML reports them, its driver and CUDA version, and
//! its host facts. Produced by the agent, checked by the controller with
//! [`Inventory::validate`] before anything is stored, and the input of the resolver.

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::installed::{InstalledEnvironments, MAX_INSTALLED};

/// More GPUs than this in one machine is a broken report, not a machine.
pub const MAX_GPUS: usize = 64;
/// Longest accepted text field (names, versions, kernel strings).
pub const MAX_TEXT: usize = 256;
/// Most error strings kept per GPU.
pub const MAX_GPU_ERRORS: usize = 16;
/// Most packages, custom nodes or drift lines one installed environment lists.
const MAX_ENTRIES: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inventory {
    pub host: HostInfo,
    pub nvidia: NvidiaInfo,
    /// What the agent has built (absent in reports from agents before provisioning).
    #[serde(default, skip_serializing_if = "InstalledEnvironments::is_empty")]
    pub environments: InstalledEnvironments,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostInfo {
    pub hostname: String,
    pub os: String,
    pub kernel: String,
    pub arch: String,
    pub cpu_model: String,
    pub cpu_cores: u32,
    pub memory_total_bytes: u64,
    pub data_dir_free_bytes: u64,
    pub data_dir_total_bytes: u64,
    pub agent_version: String,
    /// What is wrong with the agent itself (its identity files gone): for operators.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NvidiaInfo {
    pub status: NvmlStatus,
    pub driver_version: Option<String>,
    pub cuda_driver_version: Option<CudaVersion>,
    pub gpus: Vec<Gpu>,
}

impl NvidiaInfo {
    /// A machine where NVML could not be used: valid, with no GPUs, saying why.
    pub fn unavailable(status: NvmlStatus) -> Self {
        Self { status, driver_version: None, cuda_driver_version: None, gpus: Vec::new() }
    }
}

/// Whether NVML could be asked at all, and if not, why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", content = "detail", rename_all = "kebab-case")]
pub enum NvmlStatus {
    Ok,
    /// No NVIDIA management library: a machine without NVIDIA GPUs.
    LibraryNotFound(String),
    /// The library is there, the kernel driver is not loaded.
    DriverNotLoaded(String),
    Error(String),
}

impl NvmlStatus {
    pub fn summary(&self) -> &'static str {
        match self {
            NvmlStatus::Ok => "ok",
            NvmlStatus::LibraryNotFound(_) => "no NVIDIA library",
            NvmlStatus::DriverNotLoaded(_) => "NVIDIA driver not loaded",
            NvmlStatus::Error(_) => "NVML error",
        }
    }

    pub fn detail(&self) -> &str {
        match self {
            NvmlStatus::Ok => "",
            NvmlStatus::LibraryNotFound(detail)
            | NvmlStatus::DriverNotLoaded(detail)
            | NvmlStatus::Error(detail) => detail,
        }
    }
}

/// One GPU. A field NVML could not read is `None` and the failure is in `errors`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Gpu {
    pub index: u32,
    pub name: Option<String>,
    pub uuid: Option<String>,
    pub memory_total_bytes: Option<u64>,
    pub compute_capability: Option<ComputeCapability>,
    pub pci_bus_id: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<String>,
}

impl Gpu {
    pub fn unreadable(index: u32, error: String) -> Self {
        Self {
            index,
            name: None,
            uuid: None,
            memory_total_bytes: None,
            compute_capability: None,
            pci_bus_id: None,
            errors: vec![error],
        }
    }
}

/// A CUDA compute capability (the GPU's SM version): 8.9 for an RTX 4090.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ComputeCapability {
    pub major: u32,
    pub minor: u32,
}

impl ComputeCapability {
    pub const fn new(major: u32, minor: u32) -> Self {
        Self { major, minor }
    }

    fn is_plausible(self) -> bool {
        (1..=99).contains(&self.major) && self.minor <= 9
    }
}

impl fmt::Display for ComputeCapability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("`{0}` is not a compute capability: write MAJOR.MINOR, e.g. 8.9")]
pub struct BadComputeCapability(String);

impl FromStr for ComputeCapability {
    type Err = BadComputeCapability;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad = || BadComputeCapability(text.to_owned());
        let (major, minor) = text.split_once('.').ok_or_else(bad)?;
        let capability = ComputeCapability {
            major: major.parse().map_err(|_| bad())?,
            minor: minor.parse().map_err(|_| bad())?,
        };
        if capability.is_plausible() { Ok(capability) } else { Err(bad()) }
    }
}

impl Serialize for ComputeCapability {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ComputeCapability {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// The newest CUDA version a driver supports, e.g. 12.8 for a 570 driver.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CudaVersion {
    pub major: u32,
    pub minor: u32,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0} is not a CUDA driver version (NVML reports major*1000 + minor*10, e.g. 12080)")]
pub struct BadCudaVersion(u32);

impl CudaVersion {
    pub const fn new(major: u32, minor: u32) -> Self {
        Self { major, minor }
    }

    /// From NVML's integer form (`nvmlSystemGetCudaDriverVersion_v2`): 12080 → 12.8.
    pub fn from_nvml(value: u32) -> Result<Self, BadCudaVersion> {
        if !(1000..100_000).contains(&value) || !value.is_multiple_of(10) {
            return Err(BadCudaVersion(value));
        }
        Ok(Self { major: value / 1000, minor: (value % 1000) / 10 })
    }

    pub fn to_nvml(self) -> u32 {
        self.major * 1000 + self.minor * 10
    }
}

impl fmt::Display for CudaVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("`{0}` is not a CUDA version: write MAJOR.MINOR, e.g. 12.8")]
pub struct BadCudaVersionText(String);

impl FromStr for CudaVersion {
    type Err = BadCudaVersionText;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad = || BadCudaVersionText(text.to_owned());
        let (major, minor) = text.split_once('.').ok_or_else(bad)?;
        let major: u32 = major.parse().map_err(|_| bad())?;
        let minor: u32 = minor.parse().map_err(|_| bad())?;
        if (1..100).contains(&major) && minor < 100 { Ok(Self { major, minor }) } else { Err(bad()) }
    }
}

impl Serialize for CudaVersion {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for CudaVersion {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// Why an inventory was refused; `field` is a path such as `nvidia.gpus[2].uuid`.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[error("inventory field `{field}` {reason}")]
pub struct InventoryError {
    pub field: String,
    pub reason: String,
}

impl InventoryError {
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self { field: field.into(), reason: reason.into() }
    }
}

impl Inventory {
    /// Checks everything a controller must not store blindly: sizes, text, plausible
    /// numbers, unique GPU indexes. The controller calls this on every report.
    pub fn validate(&self) -> Result<(), InventoryError> {
        let host = &self.host;
        check_text("host.hostname", &host.hostname, true)?;
        check_text("host.os", &host.os, false)?;
        check_text("host.kernel", &host.kernel, false)?;
        check_text("host.arch", &host.arch, false)?;
        check_text("host.cpu_model", &host.cpu_model, false)?;
        check_text("host.agent_version", &host.agent_version, false)?;
        if host.problems.len() > 16 {
            return Err(InventoryError::new("host.problems", "lists more than 16 problems"));
        }
        for problem in &host.problems {
            check_text("host.problems", problem, true)?;
        }
        if host.cpu_cores > 65_536 {
            return Err(InventoryError::new(
                "host.cpu_cores",
                format!("is {}, more than any machine has", host.cpu_cores),
            ));
        }
        if host.data_dir_free_bytes > host.data_dir_total_bytes {
            return Err(InventoryError::new(
                "host.data_dir_free_bytes",
                "is larger than data_dir_total_bytes",
            ));
        }

        let nvidia = &self.nvidia;
        check_text("nvidia.status", nvidia.status.detail(), false)?;
        if let Some(driver) = &nvidia.driver_version {
            check_text("nvidia.driver_version", driver, true)?;
        }
        if nvidia.gpus.len() > MAX_GPUS {
            return Err(InventoryError::new(
                "nvidia.gpus",
                format!("lists {} GPUs; at most {MAX_GPUS} are accepted", nvidia.gpus.len()),
            ));
        }
        if nvidia.status != NvmlStatus::Ok && !nvidia.gpus.is_empty() {
            return Err(InventoryError::new("nvidia.gpus", "lists GPUs although NVML was not usable"));
        }
        let mut indexes = BTreeSet::new();
        for (position, gpu) in nvidia.gpus.iter().enumerate() {
            let field = |name: &str| format!("nvidia.gpus[{position}].{name}");
            if !indexes.insert(gpu.index) {
                return Err(InventoryError::new(field("index"), format!("{} appears twice", gpu.index)));
            }
            if usize::try_from(gpu.index).is_ok_and(|i| i >= MAX_GPUS) {
                return Err(InventoryError::new(field("index"), format!("{} is out of range", gpu.index)));
            }
            for (name, value) in [("name", &gpu.name), ("uuid", &gpu.uuid), ("pci_bus_id", &gpu.pci_bus_id)] {
                if let Some(value) = value {
                    check_text(&field(name), value, true)?;
                }
            }
            if let Some(capability) = gpu.compute_capability
                && !capability.is_plausible()
            {
                return Err(InventoryError::new(
                    field("compute_capability"),
                    format!("{capability} is not a CUDA compute capability"),
                ));
            }
            if gpu.errors.len() > MAX_GPU_ERRORS {
                return Err(InventoryError::new(
                    field("errors"),
                    format!("has more than {MAX_GPU_ERRORS} entries"),
                ));
            }
            for error in &gpu.errors {
                check_text(&field("errors"), error, true)?;
            }
        }
        check_environments(&self.environments)
    }
}

/// The `environments` part of an inventory: what the agent has built.
fn check_environments(environments: &InstalledEnvironments) -> Result<(), InventoryError> {
    if environments.installed.len() > MAX_INSTALLED {
        return Err(InventoryError::new(
            "environments.installed",
            format!(
                "lists {} environments; at most {MAX_INSTALLED} are accepted",
                environments.installed.len()
            ),
        ));
    }
    for (position, environment) in environments.installed.iter().enumerate() {
        let field = |name: &str| format!("environments.installed[{position}].{name}");
        check_text(&field("environment"), &environment.environment, false)?;
        check_text(&field("python_version"), &environment.python_version, false)?;
        check_text(&field("torch_version"), &environment.torch_version, false)?;
        check_text(&field("comfyui_commit"), &environment.comfyui_commit, false)?;
        if environment.optimizations.len() > MAX_ENTRIES
            || environment.custom_nodes.len() > MAX_ENTRIES
            || environment.drift.len() > MAX_ENTRIES
        {
            return Err(InventoryError::new(field("optimizations"), "has too many entries"));
        }
        for package in &environment.optimizations {
            check_text(&field("optimizations.name"), &package.name, false)?;
            check_text(&field("optimizations.version"), &package.version, false)?;
            check_text(&field("optimizations.detail"), &package.detail, false)?;
        }
        for node in &environment.custom_nodes {
            check_text(&field("custom_nodes.name"), &node.name, false)?;
            check_text(&field("custom_nodes.commit"), &node.commit, false)?;
        }
        for drift in &environment.drift {
            check_text(&field("drift"), drift, false)?;
        }
    }
    let current = environments.installed.iter().filter(|environment| environment.current).count();
    let points_elsewhere = environments.current.as_ref().is_some_and(|current| {
        !environments
            .installed
            .iter()
            .any(|environment| environment.current && &environment.revision_id == current)
    });
    if current > 1 || points_elsewhere {
        return Err(InventoryError::new(
            "environments.current_revision_id",
            "does not name exactly the one installed environment marked current",
        ));
    }
    Ok(())
}

fn check_text(field: &str, value: &str, required: bool) -> Result<(), InventoryError> {
    if required && value.is_empty() {
        return Err(InventoryError::new(field, "is empty"));
    }
    if value.len() > MAX_TEXT {
        return Err(InventoryError::new(
            field,
            format!("is {} bytes long; at most {MAX_TEXT} are accepted", value.len()),
        ));
    }
    if value.chars().any(char::is_control) {
        return Err(InventoryError::new(field, "contains control characters"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn sample() -> Inventory {
        Inventory {
            host: HostInfo {
                hostname: "render-01".into(),
                os: "Debian GNU/Linux 12".into(),
                kernel: "6.1.0".into(),
                arch: "x86_64".into(),
                cpu_model: "AMD EPYC 9354".into(),
                cpu_cores: 64,
                memory_total_bytes: 512 << 30,
                data_dir_free_bytes: 100 << 30,
                data_dir_total_bytes: 500 << 30,
                agent_version: "0.1.0".into(),
                problems: Vec::new(),
            },
            nvidia: NvidiaInfo {
                status: NvmlStatus::Ok,
                driver_version: Some("570.133.07".into()),
                cuda_driver_version: Some(CudaVersion::new(12, 8)),
                gpus: vec![Gpu {
                    index: 0,
                    name: Some("NVIDIA GeForce RTX 4090".into()),
                    uuid: Some("GPU-1".into()),
                    memory_total_bytes: Some(25_757_220_864),
                    compute_capability: Some(ComputeCapability::new(8, 9)),
                    pci_bus_id: Some("00000000:18:00.0".into()),
                    errors: vec![],
                }],
            },
            environments: InstalledEnvironments::default(),
        }
    }

    #[test]
    fn cuda_versions_come_from_nvml_integers() {
        assert_eq!(CudaVersion::from_nvml(12080).unwrap().to_string(), "12.8");
        assert_eq!(CudaVersion::from_nvml(13000).unwrap().to_string(), "13.0");
        assert!(CudaVersion::from_nvml(12).is_err());
        assert!(CudaVersion::from_nvml(12085).is_err());
        assert_eq!("12.8".parse::<CudaVersion>().unwrap().to_nvml(), 12080);
    }

    #[test]
    fn compute_capabilities_parse_and_order() {
        let sm89: ComputeCapability = "8.9".parse().unwrap();
        assert!(sm89 > ComputeCapability::new(8, 6) && sm89 < ComputeCapability::new(9, 0));
        assert!("8".parse::<ComputeCapability>().is_err());
        assert!("0.5".parse::<ComputeCapability>().is_err());
        assert!("8.10".parse::<ComputeCapability>().is_err());
    }

    #[test]
    fn a_good_inventory_validates_and_serialises_compactly() {
        let inventory = sample();
        inventory.validate().unwrap();
        let json = serde_json::to_value(&inventory).unwrap();
        assert_eq!(json["nvidia"]["gpus"][0]["compute_capability"], "8.9");
        assert_eq!(json["nvidia"]["cuda_driver_version"], "12.8");
        assert_eq!(json["nvidia"]["status"]["status"], "ok");
        let back: Inventory = serde_json::from_value(json).unwrap();
        assert_eq!(back, inventory);
    }

    #[test]
    fn validation_names_the_field() {
        let mut duplicate = sample();
        duplicate.nvidia.gpus.push(duplicate.nvidia.gpus[0].clone());
        assert_eq!(duplicate.validate().unwrap_err().field, "nvidia.gpus[1].index");

        let mut control = sample();
        control.nvidia.gpus[0].name = Some("RTX\u{7}".into());
        assert_eq!(control.validate().unwrap_err().field, "nvidia.gpus[0].name");

        let mut capability = sample();
        capability.nvidia.gpus[0].compute_capability = Some(ComputeCapability::new(0, 0));
        assert_eq!(capability.validate().unwrap_err().field, "nvidia.gpus[0].compute_capability");

        let mut many = sample();
        many.nvidia.gpus = (0..65).map(|i| Gpu::unreadable(i, "x".into())).collect();
        assert_eq!(many.validate().unwrap_err().field, "nvidia.gpus");

        let mut long = sample();
        long.host.hostname = "h".repeat(300);
        assert!(long.validate().unwrap_err().to_string().contains("host.hostname"));
    }

    #[test]
    fn installed_environments_are_checked_with_the_inventory() {
        use crate::installed::test_environment as installed;

        let mut inventory = sample();
        inventory.environments = InstalledEnvironments {
            current: Some("c".repeat(64).parse().unwrap()),
            installed: vec![
                installed('c', true, Some(300)),
                installed('b', false, Some(200)),
                installed('a', false, Some(100)),
                installed('d', false, None),
            ],
        };
        inventory.validate().unwrap();

        // `current` must name the current environment.
        inventory.environments = InstalledEnvironments {
            current: Some("a".repeat(64).parse().unwrap()),
            installed: vec![installed('b', true, Some(1))],
        };
        assert_eq!(inventory.validate().unwrap_err().field, "environments.current_revision_id");
    }
}
