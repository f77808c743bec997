//! The per-device calls: count, handles, names, UUIDs, memory, compute capability
//! and PCI location of the profile's GPUs.

use std::ffi::{c_char, c_int, c_uint};

use sha2::{Digest as _, Sha256};

use crate::abi::{
    NVML_ERROR_ARGUMENT_VERSION_MISMATCH, NVML_ERROR_INVALID_ARGUMENT, NVML_ERROR_UNKNOWN, NVML_MEMORY_V2,
    NVML_SUCCESS, NvmlDevice, NvmlDeviceSt, NvmlMemory, NvmlMemoryV2, NvmlPciInfo, NvmlReturn,
};
use crate::ffi::{c_field, ffi, write_out, write_str};
use crate::state::{self, with_device, with_machine};

pub(crate) const MIB: u64 = 1024 * 1024;
const RESERVED_BYTES: u64 = 320 * MIB;
const USED_BYTES: u64 = 512 * MIB;

const NVIDIA_VENDOR_ID: u32 = 0x10DE;
const PCI_BUSES: [u32; 8] = [0x18, 0x2A, 0x3A, 0x5D, 0x9A, 0xAB, 0xBA, 0xDB];

/// The real PCI device id for the GPUs in the fixtures, a stable made-up one
/// for any other name.
fn pci_device_id(name: &str) -> u32 {
    match name {
        "NVIDIA H100 80GB HBM3" => 0x2330,
        "NVIDIA A100-SXM4-80GB" => 0x20B2,
        "NVIDIA L40S" => 0x26B9,
        "NVIDIA GeForce RTX 4090" => 0x2684,
        "NVIDIA GeForce RTX 5090" => 0x2B85,
        "Tesla T4" => 0x1EB8,
        "Tesla V100-SXM2-32GB" => 0x1DB5,
        "NVIDIA GeForce GTX 1080 Ti" => 0x1B06,
        "NVIDIA RTX A6000" => 0x2230,
        other => {
            let digest = Sha256::digest(other.as_bytes());
            let low = digest.first().copied().unwrap_or(0);
            let high = digest.get(1).copied().unwrap_or(0);
            0x2000 | ((u32::from(high) << 8 | u32::from(low)) & 0x0FFF)
        }
    }
}

/// # Safety
///
/// `device` is null or valid for a write.
unsafe fn handle_by_index(index: c_uint, device: *mut NvmlDevice, function: &str) -> NvmlReturn {
    with_machine(|machine| {
        if device.is_null() {
            return NVML_ERROR_INVALID_ARGUMENT;
        }
        let Ok(index) = usize::try_from(index) else {
            return NVML_ERROR_INVALID_ARGUMENT;
        };
        let Some(gpu) = machine.gpus.get(index) else {
            return NVML_ERROR_INVALID_ARGUMENT;
        };
        if gpu.fails(function) {
            return NVML_ERROR_UNKNOWN;
        }
        let handle = std::ptr::without_provenance_mut::<NvmlDeviceSt>(index + 1);
        // SAFETY: non-null, and the caller guarantees it is writable.
        unsafe { write_out(device, handle) }
    })
}

/// `(reserved, used, free)` for a GPU with `total` bytes.
pub(crate) fn memory_split(total: u64) -> (u64, u64, u64) {
    let reserved = RESERVED_BYTES.min(total);
    let used = USED_BYTES.min(total - reserved);
    (reserved, used, total - reserved - used)
}

/// `nvmlDeviceGetCount_v2`: re-reads the profile, then counts its GPUs.
///
/// # Safety
///
/// `device_count` is null or valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetCount_v2(device_count: *mut c_uint) -> NvmlReturn {
    // SAFETY: the caller's contract.
    ffi(|| unsafe { state::device_count(device_count) })
}

/// `nvmlDeviceGetCount`: the same as the `_v2` call.
///
/// # Safety
///
/// `device_count` is null or valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetCount(device_count: *mut c_uint) -> NvmlReturn {
    // SAFETY: the caller's contract.
    ffi(|| unsafe { state::device_count(device_count) })
}

/// `nvmlDeviceGetHandleByIndex_v2`: the handle of GPU `index`.
///
/// # Safety
///
/// `device` is null or valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetHandleByIndex_v2(index: c_uint, device: *mut NvmlDevice) -> NvmlReturn {
    // SAFETY: the caller's contract.
    ffi(|| unsafe { handle_by_index(index, device, "nvmlDeviceGetHandleByIndex_v2") })
}

/// `nvmlDeviceGetHandleByIndex`: the same as the `_v2` call.
///
/// # Safety
///
/// `device` is null or valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetHandleByIndex(index: c_uint, device: *mut NvmlDevice) -> NvmlReturn {
    // SAFETY: the caller's contract.
    ffi(|| unsafe { handle_by_index(index, device, "nvmlDeviceGetHandleByIndex") })
}

/// `nvmlDeviceGetIndex`.
///
/// # Safety
///
/// `index` is null or valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetIndex(device: NvmlDevice, index: *mut c_uint) -> NvmlReturn {
    ffi(|| {
        with_device(device, "nvmlDeviceGetIndex", |gpu_index, _| {
            let value = c_uint::try_from(gpu_index).unwrap_or(c_uint::MAX);
            // SAFETY: the caller's contract.
            unsafe { write_out(index, value) }
        })
    })
}

/// `nvmlDeviceGetName`.
///
/// # Safety
///
/// `name` is null or valid for `length` bytes of writes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetName(
    device: NvmlDevice,
    name: *mut c_char,
    length: c_uint,
) -> NvmlReturn {
    ffi(|| {
        with_device(device, "nvmlDeviceGetName", |_, gpu| {
            // SAFETY: the caller's contract.
            unsafe { write_str(name, length, &gpu.name) }
        })
    })
}

/// `nvmlDeviceGetUUID`.
///
/// # Safety
///
/// `uuid` is null or valid for `length` bytes of writes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetUUID(
    device: NvmlDevice,
    uuid: *mut c_char,
    length: c_uint,
) -> NvmlReturn {
    ffi(|| {
        with_device(device, "nvmlDeviceGetUUID", |_, gpu| {
            // SAFETY: the caller's contract.
            unsafe { write_str(uuid, length, &gpu.uuid) }
        })
    })
}

/// `nvmlDeviceGetMemoryInfo_v2`. The caller sets `memory->version` to
/// `NVML_STRUCT_VERSION(Memory, 2)`, as with the real library.
///
/// # Safety
///
/// `memory` is null or valid for reads and writes of `nvmlMemory_v2_t`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetMemoryInfo_v2(
    device: NvmlDevice,
    memory: *mut NvmlMemoryV2,
) -> NvmlReturn {
    ffi(|| {
        with_device(device, "nvmlDeviceGetMemoryInfo_v2", |_, gpu| {
            if memory.is_null() {
                return NVML_ERROR_INVALID_ARGUMENT;
            }
            // SAFETY: non-null, and the caller guarantees it is readable.
            let version = unsafe { (*memory).version };
            if version != NVML_MEMORY_V2 {
                return NVML_ERROR_ARGUMENT_VERSION_MISMATCH;
            }
            let (reserved, used, free) = memory_split(gpu.memory_total);
            let value = NvmlMemoryV2 { version, total: gpu.memory_total, reserved, free, used };
            // SAFETY: the caller's contract.
            unsafe { write_out(memory, value) }
        })
    })
}

/// `nvmlDeviceGetMemoryInfo` (v1: `used` includes the reserved memory).
///
/// # Safety
///
/// `memory` is null or valid for a write of `nvmlMemory_t`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetMemoryInfo(device: NvmlDevice, memory: *mut NvmlMemory) -> NvmlReturn {
    ffi(|| {
        with_device(device, "nvmlDeviceGetMemoryInfo", |_, gpu| {
            let (reserved, used, free) = memory_split(gpu.memory_total);
            let value = NvmlMemory { total: gpu.memory_total, free, used: reserved + used };
            // SAFETY: the caller's contract.
            unsafe { write_out(memory, value) }
        })
    })
}

/// `nvmlDeviceGetCudaComputeCapability`.
///
/// # Safety
///
/// `major` and `minor` are null or valid for a write each.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetCudaComputeCapability(
    device: NvmlDevice,
    major: *mut c_int,
    minor: *mut c_int,
) -> NvmlReturn {
    ffi(|| {
        with_device(device, "nvmlDeviceGetCudaComputeCapability", |_, gpu| {
            if major.is_null() || minor.is_null() {
                return NVML_ERROR_INVALID_ARGUMENT;
            }
            let (cc_major, cc_minor) = gpu.compute_capability;
            // SAFETY: both non-null, and the caller guarantees them writable.
            unsafe {
                major.write(cc_major);
                minor.write(cc_minor);
            }
            NVML_SUCCESS
        })
    })
}

/// `nvmlDeviceGetPciInfo_v3`: a distinct bus per GPU (see the crate docs).
///
/// # Safety
///
/// `pci` is null or valid for a write of `nvmlPciInfo_t`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetPciInfo_v3(device: NvmlDevice, pci: *mut NvmlPciInfo) -> NvmlReturn {
    ffi(|| {
        with_device(device, "nvmlDeviceGetPciInfo_v3", |index, gpu| {
            let domain = u32::try_from(index / PCI_BUSES.len()).unwrap_or(u32::MAX);
            let bus = PCI_BUSES[index % PCI_BUSES.len()];
            let device_id = pci_device_id(&gpu.name);
            let value = NvmlPciInfo {
                bus_id_legacy: c_field(&format!("{domain:04X}:{bus:02X}:00.0")),
                domain,
                bus,
                device: 0,
                pci_device_id: device_id << 16 | NVIDIA_VENDOR_ID,
                pci_sub_system_id: (0x1600 | (device_id & 0xFF)) << 16 | NVIDIA_VENDOR_ID,
                bus_id: c_field(&format!("{domain:08X}:{bus:02X}:00.0")),
            };
            // SAFETY: the caller's contract.
            unsafe { write_out(pci, value) }
        })
    })
}
