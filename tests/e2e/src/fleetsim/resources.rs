//! What thousands of agents in one process need from the host: a file descriptor
//! each (its socket), and a data dir whose fsyncs are cheap, because every agent
//! journals every assignment the way the real agent does.

use std::path::Path;

use super::FleetSimError;

/// Descriptors besides the agents' sockets: stdio, the events file, the runtime,
/// journal files being replaced.
const SPARE_DESCRIPTORS: u64 = 64;
/// `statfs` magic of tmpfs.
const TMPFS_MAGIC: i64 = 0x0102_1994;
/// From this many agents a disk-backed data dir is worth a warning.
const MANY_AGENTS: usize = 500;

/// Raises the open-files limit as far as it goes (to the hard limit) and checks
/// that `agents` sockets, plus `enrolling` in flight, fit.
pub fn check_open_files(agents: usize, enrolling: usize) -> Result<(), FleetSimError> {
    let needed = (agents as u64).saturating_add(enrolling as u64).saturating_add(SPARE_DESCRIPTORS);
    match comfyfleet_daemon::limits::raise_open_files_limit() {
        Some(limit) if limit < needed => Err(FleetSimError::OpenFiles { limit, needed, agents }),
        _ => Ok(()),
    }
}

/// Warns when a large fleet keeps its data on a disk rather than tmpfs.
pub fn warn_if_slow_data_dir(data_dir: &Path, agents: usize) {
    if agents < MANY_AGENTS {
        return;
    }
    let Ok(stat) = rustix::fs::statfs(data_dir) else { return };
    #[allow(clippy::unnecessary_cast)] // the field's type differs between platforms
    let on_tmpfs = stat.f_type as i64 == TMPFS_MAGIC;
    if !on_tmpfs {
        tracing::warn!(
            data_dir = %data_dir.display(),
            agents,
            "the data dir is not on tmpfs: each agent fsyncs its journal at every assignment, and \
             thousands of fsyncs on one disk delay what the events file measures; \
             use e.g. --data-dir /dev/shm/fleetsim"
        );
    }
}
