//! The ComfyUIs of one machine: one per GPU by default (`run.instances`), each on
//! its own port (`run.port` + its index), seeing only its GPUs (`CUDA_VISIBLE_DEVICES`
//! by GPU UUID, counted in PCI bus order as `nvidia-smi` does), with its own temp
//! directory and its own ComfyUI database (several ComfyUIs must not migrate one
//! SQLite file at once), sharing models, input, output and user files. A machine
//! with one GPU (or `run.instances = "one"`) runs one ComfyUI, as before instances.
//!
//! ```text
//! shared/database/comfyui.db                 instance 0's database (snapshots: crate::database)
//! shared/database/instances/<i>/comfyui.db   instance i's, seeded from instance 0's at each switch
//! instances/<i>/temp/                        instance i's temp directory (--temp-directory)
//! ```

use std::path::PathBuf;

use comfyfleet_config::inventory::Gpu;

use crate::complete_record::CompleteRecord;
use crate::database;
use crate::layout::Layout;

/// A GPU an instance can be given: its NVML index and UUID.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpuSlot {
    pub index: u32,
    pub uuid: Option<String>,
}

impl GpuSlot {
    pub fn from_inventory(gpus: &[Gpu]) -> Vec<GpuSlot> {
        gpus.iter().map(|gpu| GpuSlot { index: gpu.index, uuid: gpu.uuid.clone() }).collect()
    }
}

/// What distinguishes one instance from the others.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstancePlan {
    pub index: usize,
    pub port: u16,
    /// NVML indices; empty: every GPU (the only instance).
    pub gpus: Vec<u32>,
    /// `CUDA_VISIBLE_DEVICES` and `CUDA_DEVICE_ORDER`, for an instance limited to its GPUs.
    pub env: Vec<(String, String)>,
    /// Its own temp directory (`None`: ComfyUI's default, as before instances).
    pub temp_directory: Option<PathBuf>,
    /// Its own database (`None`: the machine's, [`database::live`]).
    pub database: Option<PathBuf>,
}

/// The instances `record` runs on a machine with `gpus`, from port `base_port`.
pub fn plan(
    layout: &Layout,
    record: &CompleteRecord,
    gpus: &[GpuSlot],
    base_port: u16,
) -> Result<Vec<InstancePlan>, String> {
    let indices: Vec<u32> = gpus.iter().map(|gpu| gpu.index).collect();
    let groups = record.instances.groups_for(&indices)?;
    let several = groups.len() > 1;
    groups
        .into_iter()
        .enumerate()
        .map(|(index, group)| {
            let port = u16::try_from(usize::from(base_port) + index)
                .map_err(|_| format!("instance {index}'s port ({base_port} + {index}) is beyond 65535"))?;
            let env = if group.is_empty() {
                Vec::new()
            } else {
                let visible: Vec<String> = group
                    .iter()
                    .map(|gpu| {
                        gpus.iter()
                            .find(|slot| slot.index == *gpu)
                            .and_then(|slot| slot.uuid.clone())
                            .unwrap_or_else(|| gpu.to_string())
                    })
                    .collect();
                vec![
                    ("CUDA_DEVICE_ORDER".to_owned(), "PCI_BUS_ID".to_owned()),
                    ("CUDA_VISIBLE_DEVICES".to_owned(), visible.join(",")),
                ]
            };
            Ok(InstancePlan {
                index,
                port,
                gpus: group,
                env,
                temp_directory: several.then(|| layout.root().join(format!("instances/{index}"))),
                database: (several && index > 0).then(|| instance_database(layout, index)),
            })
        })
        .collect()
}

fn instance_database(layout: &Layout, index: usize) -> PathBuf {
    layout.shared().join(format!("database/instances/{index}/comfyui.db"))
}

/// Before a switch (no ComfyUI runs): every other instance's database becomes a
/// copy of instance 0's, which [`database::prepare_for`] has just made one the
/// target can open; where instance 0 has none yet, each starts a new one.
pub fn seed_databases(layout: &Layout, instances: &[InstancePlan]) -> Result<(), String> {
    let live = database::live(layout);
    for instance in instances {
        let Some(own) = &instance.database else { continue };
        if live.exists() {
            database::copy_database(&live, own)?;
        } else {
            database::remove_database(own)?;
        }
    }
    Ok(())
}

/// Creates the instances' temp and database directories.
pub fn create_directories(instances: &[InstancePlan]) -> Result<(), String> {
    let databases = instances.iter().filter_map(|instance| instance.database.as_ref()?.parent());
    let temps = instances.iter().filter_map(|instance| instance.temp_directory.as_deref());
    for dir in temps.chain(databases) {
        std::fs::create_dir_all(dir).map_err(|error| format!("cannot create {}: {error}", dir.display()))?;
    }
    Ok(())
}
