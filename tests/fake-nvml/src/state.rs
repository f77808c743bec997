//! The state a test changes under a running process: which machine is loaded and how
//! many initialisations are open. The profile is re-read at every init and every
//! device count, so a test that rewrites the profile file changes the GPUs reported.

use std::ffi::c_uint;
use std::sync::{Mutex, MutexGuard, PoisonError};

use crate::abi::{
    NVML_ERROR_DRIVER_NOT_LOADED, NVML_ERROR_GPU_IS_LOST, NVML_ERROR_INVALID_ARGUMENT,
    NVML_ERROR_UNINITIALIZED, NVML_ERROR_UNKNOWN, NVML_SUCCESS, NvmlDevice, NvmlReturn,
};
use crate::ffi::{report, write_out};
use crate::profile::{Gpu, MAX_GPUS, Machine, load_machine};

pub(crate) struct State {
    pub(crate) init_count: u32,
    pub(crate) machine: Option<Machine>,
}

static STATE: Mutex<State> = Mutex::new(State { init_count: 0, machine: None });

pub(crate) fn state() -> MutexGuard<'static, State> {
    STATE.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Runs `f` on the loaded machine if NVML is initialised and the driver is
/// there.
pub(crate) fn with_machine(f: impl FnOnce(&Machine) -> NvmlReturn) -> NvmlReturn {
    let state = state();
    if state.init_count == 0 {
        return NVML_ERROR_UNINITIALIZED;
    }
    match &state.machine {
        None => NVML_ERROR_UNINITIALIZED,
        Some(machine) if machine.driver_version.is_none() => NVML_ERROR_DRIVER_NOT_LOADED,
        Some(machine) => f(machine),
    }
}

/// Runs `f` on the GPU behind `device`, after the checks every device
/// function makes, including the profile's injected failures for `function`.
pub(crate) fn with_device(
    device: NvmlDevice,
    function: &str,
    f: impl FnOnce(usize, &Gpu) -> NvmlReturn,
) -> NvmlReturn {
    with_machine(|machine| {
        let Some(index) = device.addr().checked_sub(1) else {
            return NVML_ERROR_INVALID_ARGUMENT;
        };
        if index >= MAX_GPUS {
            return NVML_ERROR_INVALID_ARGUMENT;
        }
        let Some(gpu) = machine.gpus.get(index) else {
            return NVML_ERROR_GPU_IS_LOST;
        };
        if gpu.fails(function) {
            return NVML_ERROR_UNKNOWN;
        }
        f(index, gpu)
    })
}

pub(crate) fn init() -> NvmlReturn {
    let mut state = state();
    match load_machine() {
        Err(line) => {
            report(&line);
            NVML_ERROR_UNKNOWN
        }
        Ok(machine) if machine.driver_version.is_none() => {
            // Like a re-read at `nvmlDeviceGetCount`: earlier, still open
            // initialisations see the driver gone too.
            if state.init_count > 0 {
                state.machine = Some(machine);
            }
            NVML_ERROR_DRIVER_NOT_LOADED
        }
        Ok(machine) => {
            state.machine = Some(machine);
            state.init_count = state.init_count.saturating_add(1);
            NVML_SUCCESS
        }
    }
}

/// # Safety
///
/// `device_count` is null or valid for a write.
pub(crate) unsafe fn device_count(device_count: *mut c_uint) -> NvmlReturn {
    let mut state = state();
    if state.init_count == 0 {
        return NVML_ERROR_UNINITIALIZED;
    }
    if device_count.is_null() {
        return NVML_ERROR_INVALID_ARGUMENT;
    }
    match load_machine() {
        Err(line) => {
            report(&line);
            NVML_ERROR_UNKNOWN
        }
        Ok(machine) => {
            let driver_loaded = machine.driver_version.is_some();
            let count = c_uint::try_from(machine.gpus.len()).unwrap_or(c_uint::MAX);
            state.machine = Some(machine);
            if !driver_loaded {
                return NVML_ERROR_DRIVER_NOT_LOADED;
            }
            // SAFETY: non-null, and the caller guarantees it is writable.
            unsafe { write_out(device_count, count) }
        }
    }
}
