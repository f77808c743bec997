//! Wire ⇄ domain conversions. Everything arriving from the network goes through a
//! `TryFrom` here, so malformed input becomes a [`WireError`] naming the field, never
//! a panic or an unchecked value further in.

use std::collections::HashMap;

use comfyfleet_config::assignment::MachineAssignment;
use comfyfleet_config::convergence::ConvergenceReport;
use comfyfleet_config::installed::{
    InstalledEnvironment, InstalledEnvironments, InstalledNode, InstalledPackage,
};
use comfyfleet_config::inventory::{
    ComputeCapability, CudaVersion, Gpu, HostInfo, Inventory, InventoryError, NvidiaInfo, NvmlStatus,
};
use comfyfleet_config::labels::LabelError;
use comfyfleet_config::spec::{SpecDigest, SpecFormat};
use comfyfleet_config::{Labels, MachineId, MachineRecord, Role};
use jiff::Timestamp;

use crate::v1 as pb;

#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("`{0}` is missing")]
    Missing(&'static str),
    #[error(transparent)]
    Inventory(#[from] InventoryError),
    #[error("`{field}`: {source}")]
    Labels { field: &'static str, source: LabelError },
    #[error("`{field}`: {reason}")]
    Invalid { field: &'static str, reason: String },
}

impl From<WireError> for tonic::Status {
    fn from(error: WireError) -> Self {
        tonic::Status::invalid_argument(error.to_string())
    }
}

pub fn timestamp_to_wire(at: Timestamp) -> prost_types::Timestamp {
    prost_types::Timestamp { seconds: at.as_second(), nanos: at.subsec_nanosecond() }
}

pub fn timestamp_from_wire(field: &'static str, at: &prost_types::Timestamp) -> Result<Timestamp, WireError> {
    Timestamp::new(at.seconds, at.nanos)
        .map_err(|error| WireError::Invalid { field, reason: error.to_string() })
}

pub(crate) fn digest(field: &'static str, text: &str) -> Result<SpecDigest, WireError> {
    text.parse().map_err(|reason| WireError::Invalid { field, reason })
}

pub(crate) fn optional_digest(field: &'static str, text: &str) -> Result<Option<SpecDigest>, WireError> {
    if text.is_empty() { Ok(None) } else { digest(field, text).map(Some) }
}

pub fn labels_from_wire(field: &'static str, labels: HashMap<String, String>) -> Result<Labels, WireError> {
    Labels::try_from(labels).map_err(|source| WireError::Labels { field, source })
}

pub fn labels_to_wire(labels: &Labels) -> HashMap<String, String> {
    labels.iter().map(|(k, v)| (k.to_owned(), v.to_owned())).collect()
}

impl TryFrom<pb::Inventory> for Inventory {
    type Error = WireError;

    fn try_from(wire: pb::Inventory) -> Result<Self, Self::Error> {
        let host = wire.host.ok_or(WireError::Missing("inventory.host"))?;
        let nvidia = wire.nvidia.ok_or(WireError::Missing("inventory.nvidia"))?;
        let status = match pb::NvmlStatus::try_from(nvidia.status) {
            Ok(pb::NvmlStatus::Ok) => NvmlStatus::Ok,
            Ok(pb::NvmlStatus::LibraryNotFound) => NvmlStatus::LibraryNotFound(nvidia.status_detail),
            Ok(pb::NvmlStatus::DriverNotLoaded) => NvmlStatus::DriverNotLoaded(nvidia.status_detail),
            Ok(pb::NvmlStatus::Error) => NvmlStatus::Error(nvidia.status_detail),
            Ok(pb::NvmlStatus::Unspecified) | Err(_) => {
                return Err(WireError::Invalid {
                    field: "inventory.nvidia.status",
                    reason: format!("{} is not a known NVML status", nvidia.status),
                });
            }
        };
        let cuda_driver_version =
            nvidia.cuda_driver_version.map(CudaVersion::from_nvml).transpose().map_err(|error| {
                WireError::Invalid {
                    field: "inventory.nvidia.cuda_driver_version",
                    reason: error.to_string(),
                }
            })?;
        let gpus = nvidia
            .gpus
            .into_iter()
            .map(|gpu| Gpu {
                index: gpu.index,
                name: gpu.name,
                uuid: gpu.uuid,
                memory_total_bytes: gpu.memory_total_bytes,
                compute_capability: gpu
                    .compute_capability
                    .map(|cc| ComputeCapability::new(cc.major, cc.minor)),
                pci_bus_id: gpu.pci_bus_id,
                errors: gpu.errors,
            })
            .collect();
        let inventory = Inventory {
            host: HostInfo {
                hostname: host.hostname,
                os: host.os,
                kernel: host.kernel,
                arch: host.arch,
                cpu_model: host.cpu_model,
                cpu_cores: host.cpu_cores,
                memory_total_bytes: host.memory_total_bytes,
                data_dir_free_bytes: host.data_dir_free_bytes,
                data_dir_total_bytes: host.data_dir_total_bytes,
                agent_version: host.agent_version,
                problems: host.problems.into_iter().take(16).collect(),
            },
            nvidia: NvidiaInfo { status, driver_version: nvidia.driver_version, cuda_driver_version, gpus },
            environments: wire.environments.map(environments_from_wire).transpose()?.unwrap_or_default(),
        };
        inventory.validate()?;
        Ok(inventory)
    }
}

impl From<&Inventory> for pb::Inventory {
    fn from(inventory: &Inventory) -> Self {
        let host = &inventory.host;
        let nvidia = &inventory.nvidia;
        let status = match &nvidia.status {
            NvmlStatus::Ok => pb::NvmlStatus::Ok,
            NvmlStatus::LibraryNotFound(_) => pb::NvmlStatus::LibraryNotFound,
            NvmlStatus::DriverNotLoaded(_) => pb::NvmlStatus::DriverNotLoaded,
            NvmlStatus::Error(_) => pb::NvmlStatus::Error,
        };
        pb::Inventory {
            host: Some(pb::Host {
                hostname: host.hostname.clone(),
                os: host.os.clone(),
                kernel: host.kernel.clone(),
                arch: host.arch.clone(),
                cpu_model: host.cpu_model.clone(),
                cpu_cores: host.cpu_cores,
                memory_total_bytes: host.memory_total_bytes,
                data_dir_free_bytes: host.data_dir_free_bytes,
                data_dir_total_bytes: host.data_dir_total_bytes,
                agent_version: host.agent_version.clone(),
                problems: host.problems.clone(),
            }),
            nvidia: Some(pb::Nvidia {
                status: status.into(),
                status_detail: nvidia.status.detail().to_owned(),
                driver_version: nvidia.driver_version.clone(),
                cuda_driver_version: nvidia.cuda_driver_version.map(CudaVersion::to_nvml),
                gpus: nvidia
                    .gpus
                    .iter()
                    .map(|gpu| pb::Gpu {
                        index: gpu.index,
                        name: gpu.name.clone(),
                        uuid: gpu.uuid.clone(),
                        memory_total_bytes: gpu.memory_total_bytes,
                        compute_capability: gpu
                            .compute_capability
                            .map(|cc| pb::ComputeCapability { major: cc.major, minor: cc.minor }),
                        pci_bus_id: gpu.pci_bus_id.clone(),
                        errors: gpu.errors.clone(),
                    })
                    .collect(),
            }),
            environments: (!inventory.environments.is_empty())
                .then(|| pb::InstalledEnvironments::from(&inventory.environments)),
        }
    }
}

impl From<Role> for pb::Role {
    fn from(role: Role) -> Self {
        match role {
            Role::Viewer => pb::Role::Viewer,
            Role::Operator => pb::Role::Operator,
            Role::Admin => pb::Role::Admin,
        }
    }
}

pub fn role_from_wire(field: &'static str, value: i32) -> Result<Role, WireError> {
    match pb::Role::try_from(value) {
        Ok(pb::Role::Viewer) => Ok(Role::Viewer),
        Ok(pb::Role::Operator) => Ok(Role::Operator),
        Ok(pb::Role::Admin) => Ok(Role::Admin),
        Ok(pb::Role::Unspecified) | Err(_) => {
            Err(WireError::Invalid { field, reason: "choose a role: viewer, operator or admin".into() })
        }
    }
}

impl From<SpecFormat> for pb::SpecFormat {
    fn from(format: SpecFormat) -> Self {
        match format {
            SpecFormat::Toml => pb::SpecFormat::Toml,
            SpecFormat::Json => pb::SpecFormat::Json,
        }
    }
}

/// The spec format a request names; `None` when unspecified (the receiver detects it).
pub fn spec_format_from_wire(field: &'static str, value: i32) -> Result<Option<SpecFormat>, WireError> {
    match pb::SpecFormat::try_from(value) {
        Ok(pb::SpecFormat::Unspecified) => Ok(None),
        Ok(pb::SpecFormat::Toml) => Ok(Some(SpecFormat::Toml)),
        Ok(pb::SpecFormat::Json) => Ok(Some(SpecFormat::Json)),
        Err(_) => Err(WireError::Invalid {
            field,
            reason: format!(
                "spec format {value} is unknown to this controller; send the spec as TOML or JSON"
            ),
        }),
    }
}

impl From<&MachineRecord> for pb::Machine {
    fn from(machine: &MachineRecord) -> Self {
        pb::Machine {
            id: machine.id.to_string(),
            hostname: machine.hostname.clone(),
            online: machine.online,
            last_seen: machine.last_seen.map(timestamp_to_wire),
            enrolled_at: Some(timestamp_to_wire(machine.enrolled_at)),
            revoked_at: machine.revoked_at.map(timestamp_to_wire),
            labels: labels_to_wire(&machine.labels),
            operator_labels: labels_to_wire(&machine.operator_labels),
            token_labels: labels_to_wire(&machine.token_labels),
            inventory: machine.inventory.as_ref().map(pb::Inventory::from),
            inventory_updated_at: machine.inventory_updated_at.map(timestamp_to_wire),
            agent_version: machine.agent_version.clone(),
            remote_address: machine.remote_address.clone(),
            join_token_id: machine.join_token_id.clone(),
            assignment: machine.assignment.as_ref().map(pb::MachineAssignment::from),
            report: machine.report.as_ref().map(pb::ConvergenceReport::from),
        }
    }
}

impl TryFrom<pb::Machine> for MachineRecord {
    type Error = WireError;

    fn try_from(wire: pb::Machine) -> Result<Self, Self::Error> {
        let optional_time = |field, at: Option<prost_types::Timestamp>| {
            at.as_ref().map(|at| timestamp_from_wire(field, at)).transpose()
        };
        Ok(MachineRecord {
            id: wire
                .id
                .parse::<MachineId>()
                .map_err(|error| WireError::Invalid { field: "machine.id", reason: error.to_string() })?,
            hostname: wire.hostname,
            online: wire.online,
            last_seen: optional_time("machine.last_seen", wire.last_seen)?,
            enrolled_at: optional_time("machine.enrolled_at", wire.enrolled_at)?
                .ok_or(WireError::Missing("machine.enrolled_at"))?,
            revoked_at: optional_time("machine.revoked_at", wire.revoked_at)?,
            labels: labels_from_wire("machine.labels", wire.labels)?,
            operator_labels: labels_from_wire("machine.operator_labels", wire.operator_labels)?,
            token_labels: labels_from_wire("machine.token_labels", wire.token_labels)?,
            inventory: wire.inventory.map(Inventory::try_from).transpose()?,
            inventory_updated_at: optional_time("machine.inventory_updated_at", wire.inventory_updated_at)?,
            agent_version: wire.agent_version,
            remote_address: wire.remote_address,
            join_token_id: wire.join_token_id,
            assignment: wire.assignment.map(MachineAssignment::try_from).transpose()?,
            report: wire.report.map(ConvergenceReport::try_from).transpose()?,
        })
    }
}

impl From<&InstalledEnvironments> for pb::InstalledEnvironments {
    fn from(environments: &InstalledEnvironments) -> Self {
        pb::InstalledEnvironments {
            current_revision_id: environments.current.as_ref().map(ToString::to_string).unwrap_or_default(),
            installed: environments
                .installed
                .iter()
                .map(|environment| pb::InstalledEnvironment {
                    revision_id: environment.revision_id.to_string(),
                    environment: environment.environment.clone(),
                    revision_number: environment.revision_number,
                    current: environment.current,
                    activated_at: environment.activated_at.map(timestamp_to_wire),
                    python_version: environment.python_version.clone(),
                    torch_version: environment.torch_version.clone(),
                    comfyui_commit: environment.comfyui_commit.clone(),
                    optimizations: environment
                        .optimizations
                        .iter()
                        .map(|package| pb::InstalledPackage {
                            name: package.name.clone(),
                            version: package.version.clone(),
                            verified: package.verified,
                            detail: package.detail.clone(),
                        })
                        .collect(),
                    custom_nodes: environment
                        .custom_nodes
                        .iter()
                        .map(|node| pb::InstalledNode {
                            name: node.name.clone(),
                            commit: node.commit.clone(),
                        })
                        .collect(),
                    drift: environment.drift.clone(),
                })
                .collect(),
        }
    }
}

/// Checked afterwards as part of the inventory ([`Inventory::validate`]).
pub fn environments_from_wire(wire: pb::InstalledEnvironments) -> Result<InstalledEnvironments, WireError> {
    let installed = wire
        .installed
        .into_iter()
        .map(|environment| {
            Ok(InstalledEnvironment {
                revision_id: digest(
                    "inventory.environments.installed.revision_id",
                    &environment.revision_id,
                )?,
                environment: environment.environment,
                revision_number: environment.revision_number,
                current: environment.current,
                activated_at: environment
                    .activated_at
                    .as_ref()
                    .map(|at| timestamp_from_wire("inventory.environments.installed.activated_at", at))
                    .transpose()?,
                python_version: environment.python_version,
                torch_version: environment.torch_version,
                comfyui_commit: environment.comfyui_commit,
                optimizations: environment
                    .optimizations
                    .into_iter()
                    .map(|package| InstalledPackage {
                        name: package.name,
                        version: package.version,
                        verified: package.verified,
                        detail: package.detail,
                    })
                    .collect(),
                custom_nodes: environment
                    .custom_nodes
                    .into_iter()
                    .map(|node| InstalledNode { name: node.name, commit: node.commit })
                    .collect(),
                drift: environment.drift,
            })
        })
        .collect::<Result<Vec<_>, WireError>>()?;
    Ok(InstalledEnvironments {
        current: optional_digest("inventory.environments.current_revision_id", &wire.current_revision_id)?,
        installed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inventory() -> Inventory {
        Inventory {
            host: HostInfo { hostname: "h".into(), cpu_cores: 8, ..HostInfo::default() },
            nvidia: NvidiaInfo {
                status: NvmlStatus::Ok,
                driver_version: Some("570.133.07".into()),
                cuda_driver_version: Some(CudaVersion::new(12, 8)),
                gpus: vec![Gpu {
                    index: 0,
                    name: Some("NVIDIA L40S".into()),
                    uuid: Some("GPU-0".into()),
                    memory_total_bytes: Some(48_305_799_168),
                    compute_capability: Some(ComputeCapability::new(8, 9)),
                    pci_bus_id: None,
                    errors: vec!["pci_info: Unknown".into()],
                }],
            },
            environments: Default::default(),
        }
    }

    #[test]
    fn inventory_round_trips_through_the_wire() {
        let domain = inventory();
        let wire = pb::Inventory::from(&domain);
        assert_eq!(wire.nvidia.as_ref().unwrap().cuda_driver_version, Some(12080));
        assert_eq!(Inventory::try_from(wire).unwrap(), domain);
    }

    #[test]
    fn malformed_inventory_names_the_field() {
        let mut wire = pb::Inventory::from(&inventory());
        wire.nvidia.as_mut().unwrap().cuda_driver_version = Some(7);
        let error = Inventory::try_from(wire).unwrap_err().to_string();
        assert!(error.contains("cuda_driver_version"), "{error}");

        let mut wire = pb::Inventory::from(&inventory());
        wire.nvidia.as_mut().unwrap().status = 42;
        assert!(Inventory::try_from(wire).unwrap_err().to_string().contains("nvidia.status"));

        let mut wire = pb::Inventory::from(&inventory());
        wire.host = None;
        assert!(Inventory::try_from(wire).unwrap_err().to_string().contains("inventory.host"));
    }
}
