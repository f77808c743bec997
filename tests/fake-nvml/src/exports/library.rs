//! Initialisation, shutdown and error strings.

use std::ffi::{CStr, c_char, c_uint};

use crate::abi::{NVML_ERROR_UNINITIALIZED, NVML_SUCCESS, NvmlReturn};
use crate::ffi::ffi;
use crate::state::{init, state};

/// `nvmlInit_v2`: (re-)reads the profile and counts one initialisation.
///
/// # Safety
///
/// None beyond NVML's own contract; it takes no pointers.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlInit_v2() -> NvmlReturn {
    ffi(init)
}

/// `nvmlInit`: the same as `nvmlInit_v2`.
///
/// # Safety
///
/// None beyond NVML's own contract; it takes no pointers.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlInit() -> NvmlReturn {
    ffi(init)
}

/// `nvmlInitWithFlags`: the same as `nvmlInit_v2`; flags are ignored.
///
/// # Safety
///
/// None beyond NVML's own contract; it takes no pointers.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlInitWithFlags(_flags: c_uint) -> NvmlReturn {
    ffi(init)
}

/// `nvmlShutdown`: undoes one initialisation.
///
/// # Safety
///
/// None beyond NVML's own contract; it takes no pointers.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlShutdown() -> NvmlReturn {
    ffi(|| {
        let mut state = state();
        if state.init_count == 0 {
            return NVML_ERROR_UNINITIALIZED;
        }
        state.init_count -= 1;
        if state.init_count == 0 {
            state.machine = None;
        }
        NVML_SUCCESS
    })
}

/// `nvmlErrorString`: a static description of `result`.
///
/// # Safety
///
/// None; the returned string is static.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlErrorString(result: NvmlReturn) -> *const c_char {
    let text: &'static CStr = match result {
        0 => c"Success",
        1 => c"Uninitialized",
        2 => c"Invalid Argument",
        3 => c"Not Supported",
        4 => c"Insufficient Permissions",
        5 => c"Already Initialized",
        6 => c"Not Found",
        7 => c"Insufficient Size",
        8 => c"Insufficient External Power",
        9 => c"Driver Not Loaded",
        10 => c"Timeout",
        11 => c"Interrupt request issue",
        12 => c"NVML Shared Library Not Found",
        13 => c"Function Not Found",
        14 => c"Corrupted infoROM",
        15 => c"GPU is lost",
        16 => c"GPU requires restart",
        17 => c"The operating system has blocked the request.",
        18 => c"RM has detected an NVML/RM version mismatch.",
        19 => c"In use by another client",
        20 => c"Insufficient Memory",
        21 => c"No data",
        22 => c"The requested vgpu operation is not available on target device, becasue ECC is enabled",
        23 => c"Ran out of critical resources, other than memory",
        24 => c"The requested frequency is not supported",
        25 => c"The provided version is invalid/unsupported",
        26 => c"The requested functionality has been deprecated",
        27 => c"The system is not ready for the request",
        28 => c"The GPU was not found",
        29 => c"The requested operation is not valid in the current state",
        _ => c"Unknown Error",
    };
    text.as_ptr()
}
