//! What this machine is: GPUs through NVML, host facts from the kernel, and the
//! environments built on it. Collected at connect and then periodically; sent only
//! when something an operator cares about changed.

mod host;
mod nvidia;

use std::path::PathBuf;

use comfyfleet_config::{Inventory, NvidiaInfo, NvmlStatus};

use crate::journal::Journal;
use crate::layout::Layout;

pub use host::{HostProbe, kernel_hostname};
pub use nvidia::{GpuProbe, NvmlProbe};

/// Collects inventories from a GPU probe and the host.
pub struct InventoryCollector {
    gpus: Box<dyn GpuProbe>,
    host: HostProbe,
    layout: Layout,
    journal: Journal,
}

impl InventoryCollector {
    pub fn new(gpus: Box<dyn GpuProbe>, data_dir: PathBuf, hostname_override: Option<String>) -> Self {
        let layout = Layout::new(&data_dir);
        let journal = Journal::new(&layout.journal());
        Self { gpus, host: HostProbe::new(data_dir, hostname_override), layout, journal }
    }

    /// Blocking: NVML calls and /proc and file reads. Run it off the async threads.
    pub fn collect(&mut self) -> Inventory {
        Inventory {
            host: self.host.probe(),
            nvidia: self.gpus.probe(),
            environments: crate::installed::read(&self.layout, &self.journal),
        }
    }

    /// The host facts alone, for when the GPU probe itself failed.
    pub fn collect_host_only(&mut self, gpu_error: String) -> Inventory {
        Inventory {
            host: self.host.probe(),
            nvidia: NvidiaInfo::unavailable(NvmlStatus::Error(gpu_error)),
            environments: crate::installed::read(&self.layout, &self.journal),
        }
    }
}

/// Whether `new` differs from `old` in a way worth reporting. Free disk space moves
/// all the time; only a move of at least 1 GiB or 1% of the disk counts.
pub fn changed_materially(old: &Inventory, new: &Inventory) -> bool {
    const GIB: u64 = 1 << 30;
    let threshold = GIB.max(new.host.data_dir_total_bytes / 100);
    let free_moved = old.host.data_dir_free_bytes.abs_diff(new.host.data_dir_free_bytes) >= threshold;
    let mut old_normalised = old.clone();
    old_normalised.host.data_dir_free_bytes = new.host.data_dir_free_bytes;
    free_moved || old_normalised != *new
}

#[cfg(test)]
mod tests {
    use comfyfleet_config::HostInfo;

    use super::*;

    fn inventory(free: u64) -> Inventory {
        Inventory {
            host: HostInfo {
                hostname: "h".into(),
                data_dir_free_bytes: free,
                data_dir_total_bytes: 1000 << 30,
                ..HostInfo::default()
            },
            nvidia: NvidiaInfo::unavailable(NvmlStatus::LibraryNotFound("none".into())),
            environments: Default::default(),
        }
    }

    #[test]
    fn small_disk_changes_are_not_news() {
        assert!(!changed_materially(&inventory(100 << 30), &inventory((100 << 30) + (500 << 20))));
        assert!(changed_materially(&inventory(100 << 30), &inventory(120 << 30)));
        let mut renamed = inventory(100 << 30);
        renamed.host.hostname = "other".into();
        assert!(changed_materially(&inventory(100 << 30), &renamed));
    }
}
