//! The system calls: driver and CUDA versions.

use std::ffi::{c_char, c_int, c_uint};

use crate::abi::{NVML_ERROR_FUNCTION_NOT_FOUND, NVML_ERROR_INVALID_ARGUMENT, NvmlReturn};
use crate::ffi::{ffi, write_out, write_str};
use crate::state::with_machine;

/// # Safety
///
/// `version` is null or valid for a write.
unsafe fn cuda_driver_version(version: *mut c_int) -> NvmlReturn {
    with_machine(|machine| {
        if version.is_null() {
            return NVML_ERROR_INVALID_ARGUMENT;
        }
        match machine.cuda_driver_version {
            None => NVML_ERROR_FUNCTION_NOT_FOUND,
            // SAFETY: non-null, and the caller guarantees it is writable.
            Some(cuda) => unsafe { write_out(version, cuda) },
        }
    })
}

/// `nvmlSystemGetDriverVersion`: the profile's `driver_version`.
///
/// # Safety
///
/// `version` is null or valid for `length` bytes of writes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlSystemGetDriverVersion(version: *mut c_char, length: c_uint) -> NvmlReturn {
    ffi(|| {
        with_machine(|machine| {
            let driver = machine.driver_version.as_deref().unwrap_or_default();
            // SAFETY: the caller's contract.
            unsafe { write_str(version, length, driver) }
        })
    })
}

/// `nvmlSystemGetNVMLVersion`: `"<CUDA major>.<driver version>"`, like the
/// real library (`"12.570.133.07"`); the driver version alone without CUDA.
///
/// # Safety
///
/// `version` is null or valid for `length` bytes of writes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlSystemGetNVMLVersion(version: *mut c_char, length: c_uint) -> NvmlReturn {
    ffi(|| {
        with_machine(|machine| {
            let driver = machine.driver_version.as_deref().unwrap_or_default();
            let text = match machine.cuda_driver_version {
                Some(cuda) => format!("{}.{driver}", cuda / 1000),
                None => driver.to_owned(),
            };
            // SAFETY: the caller's contract.
            unsafe { write_str(version, length, &text) }
        })
    })
}

/// `nvmlSystemGetCudaDriverVersion_v2`: the profile's `cuda_driver_version`.
///
/// # Safety
///
/// `cuda_driver_version` is null or valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlSystemGetCudaDriverVersion_v2(cuda_driver_version: *mut c_int) -> NvmlReturn {
    // SAFETY: the caller's contract.
    ffi(|| unsafe { self::cuda_driver_version(cuda_driver_version) })
}

/// `nvmlSystemGetCudaDriverVersion`: the same as the `_v2` call.
///
/// # Safety
///
/// `cuda_driver_version` is null or valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlSystemGetCudaDriverVersion(cuda_driver_version: *mut c_int) -> NvmlReturn {
    // SAFETY: the caller's contract.
    ffi(|| unsafe { self::cuda_driver_version(cuda_driver_version) })
}
