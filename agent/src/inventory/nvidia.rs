//! GPUs through NVML (the unmodified nvml-wrapper, loading the driver's
//! `libnvidia-ml.so.1` at run time). No library means a valid machine without GPUs;
//! an error on one GPU is recorded on that GPU and never hides the others.

use std::path::PathBuf;

use comfyfleet_config::{ComputeCapability, CudaVersion, Gpu, NvidiaInfo, NvmlStatus};
use nvml_wrapper::Nvml;
use nvml_wrapper::error::NvmlError;

/// Reports the machine's NVIDIA GPUs. Behind a trait so other probes (a simulator)
/// can stand in.
pub trait GpuProbe: Send {
    fn probe(&mut self) -> NvidiaInfo;
}

pub struct NvmlProbe {
    library: PathBuf,
    nvml: Option<Nvml>,
}

impl NvmlProbe {
    pub fn new(library: PathBuf) -> Self {
        Self { library, nvml: None }
    }

    fn init(&self) -> Result<Nvml, NvmlStatus> {
        Nvml::builder().lib_path(self.library.as_os_str()).init().map_err(|error| match error {
            NvmlError::LibloadingError(detail) => {
                NvmlStatus::LibraryNotFound(format!("{}: {detail}", self.library.display()))
            }
            NvmlError::DriverNotLoaded => {
                NvmlStatus::DriverNotLoaded("NVML reports that the NVIDIA kernel driver is not loaded".into())
            }
            other => NvmlStatus::Error(format!("NVML init: {other}")),
        })
    }
}

impl GpuProbe for NvmlProbe {
    fn probe(&mut self) -> NvidiaInfo {
        let nvml = match self.nvml.take() {
            Some(nvml) => nvml,
            // Not initialised yet, or the last probe failed: the driver may have
            // been loaded since, so try again.
            None => match self.init() {
                Ok(nvml) => nvml,
                Err(status) => return NvidiaInfo::unavailable(status),
            },
        };
        match read(&nvml) {
            Ok(info) => {
                self.nvml = Some(nvml);
                info
            }
            // The handle went bad (driver reloaded or unloaded): drop it and report.
            Err(status) => NvidiaInfo::unavailable(status),
        }
    }
}

fn read(nvml: &Nvml) -> Result<NvidiaInfo, NvmlStatus> {
    let count = nvml.device_count().map_err(|error| match error {
        NvmlError::DriverNotLoaded => NvmlStatus::DriverNotLoaded("NVIDIA kernel driver not loaded".into()),
        other => NvmlStatus::Error(format!("device count: {other}")),
    })?;
    let driver_version = nvml.sys_driver_version().ok();
    let cuda_driver_version = nvml
        .sys_cuda_driver_version()
        .ok()
        .and_then(|value| u32::try_from(value).ok())
        .and_then(|value| CudaVersion::from_nvml(value).ok());
    let gpus = (0..count).map(|index| read_gpu(nvml, index)).collect();
    Ok(NvidiaInfo { status: NvmlStatus::Ok, driver_version, cuda_driver_version, gpus })
}

fn read_gpu(nvml: &Nvml, index: u32) -> Gpu {
    let device = match nvml.device_by_index(index) {
        Ok(device) => device,
        Err(error) => return Gpu::unreadable(index, format!("handle: {error}")),
    };
    let mut errors = Vec::new();
    let name = field(&mut errors, "name", device.name());
    let uuid = field(&mut errors, "uuid", device.uuid());
    let memory_total_bytes = field(&mut errors, "memory", device.memory_info()).map(|memory| memory.total);
    let compute_capability = field(&mut errors, "compute capability", device.cuda_compute_capability())
        .and_then(|cc| {
            Some(ComputeCapability::new(u32::try_from(cc.major).ok()?, u32::try_from(cc.minor).ok()?))
        });
    let pci_bus_id = field(&mut errors, "pci", device.pci_info()).map(|pci| pci.bus_id);
    Gpu { index, name, uuid, memory_total_bytes, compute_capability, pci_bus_id, errors }
}

/// The value, or `None` with the failure noted in `errors`.
fn field<T>(errors: &mut Vec<String>, what: &str, result: Result<T, NvmlError>) -> Option<T> {
    result.map_err(|error| errors.push(format!("{what}: {error}"))).ok()
}
