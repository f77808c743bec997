//! A fake NVIDIA Management Library (`libnvidia-ml.so`) for tests and demos.
//!
//! The build produces `target/<profile>/libcomfyfleet_fake_nvml.so`. The
//! unmodified `nvml-wrapper` crate loads it with
//! `Nvml::builder().lib_path(path).init()`, and it then reports the GPUs of a
//! *machine profile* instead of real hardware.
//!
//! # Machine profile
//!
//! The environment variable [`PROFILE_ENV`] (`COMFYFLEET_FAKE_NVML_PROFILE`)
//! names a JSON file holding one machine profile, shaped like an entry of
//! `profiles` in `tests/fixtures/gpu-profiles.json`:
//!
//! ```json
//! {
//!   "driver_version": "570.133.07",
//!   "cuda_driver_version": 12080,
//!   "gpus": [
//!     {"name": "NVIDIA GeForce RTX 4090", "memory_total_bytes": 25757220864,
//!      "compute_capability": [8, 9], "count": 1}
//!   ]
//! }
//! ```
//!
//! * `driver_version` (string or `null`, required): `null` is a machine with
//!   the library but no driver; `nvmlInit_v2` then returns
//!   `NVML_ERROR_DRIVER_NOT_LOADED` (9).
//! * `cuda_driver_version` (integer or `null`, required): NVML's integer form
//!   (`major * 1000 + minor * 10`). `null` makes
//!   `nvmlSystemGetCudaDriverVersion{,_v2}` return
//!   `NVML_ERROR_FUNCTION_NOT_FOUND` (13).
//! * `gpus`: each entry becomes `count` GPUs (default 1); indexes run from 0
//!   in the order of the entries.
//!
//! Unknown fields are ignored (so a whole fixture entry, comments included,
//! can be copied), except inside `fail` (below), whose names are checked.
//!
//! ## Extensions
//!
//! * Top-level `"uuid_seed": "..."`: the seed for the GPU UUIDs. Default: the
//!   profile path exactly as given in the environment variable. GPU `i` gets
//!   `GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`, the first 32 lowercase hex
//!   digits of `sha256(seed + "/" + i)` (see [`gpu_uuid`]): stable for the
//!   same seed and index, distinct between GPUs.
//! * Per `gpus` entry `"fail": ["nvmlDeviceGetMemoryInfo_v2", ...]`: those
//!   calls return `NVML_ERROR_UNKNOWN` (999) for the GPUs of that entry only.
//!   Any per-device function exported here may be named (see
//!   [`FAILABLE_FUNCTIONS`]), including `nvmlDeviceGetHandleByIndex_v2`. A
//!   name without its version suffix (`nvmlDeviceGetMemoryInfo`) fails every
//!   version of that call (`_v2` included); a name with a suffix fails that
//!   version only. An unknown name makes the profile invalid.
//!
//! # Behaviour
//!
//! * Variable unset, file unreadable, or not a valid profile:
//!   `nvmlInit_v2` returns `NVML_ERROR_UNKNOWN` (999) and writes one line to
//!   stderr naming the path and the reason.
//! * The profile is re-read at every `nvmlInit*` and at every
//!   `nvmlDeviceGetCount{,_v2}`, so a test can change a machine's GPUs under
//!   a running process that keeps its `Nvml` handle. Write the new profile
//!   atomically (write a temporary file, then rename it over the old one):
//!   a half-written file is an invalid profile. If the re-read at
//!   `nvmlDeviceGetCount` fails, that call returns `NVML_ERROR_UNKNOWN`, says
//!   why on stderr, and the previous profile stays in force. If the new
//!   profile has `driver_version: null`, every call that needs the driver
//!   returns `NVML_ERROR_DRIVER_NOT_LOADED` until a later re-read finds one.
//! * Device handles are `index + 1` as a pointer and always index into the
//!   latest profile: a handle past its last GPU returns
//!   `NVML_ERROR_GPU_IS_LOST` (15); a null or absurd handle returns
//!   `NVML_ERROR_INVALID_ARGUMENT` (2). `nvmlDeviceGetHandleByIndex` with an
//!   index past the last GPU returns `NVML_ERROR_INVALID_ARGUMENT`.
//! * Calls before `nvmlInit*` (or after the matching `nvmlShutdown`) return
//!   `NVML_ERROR_UNINITIALIZED` (1). Initialisation is counted like real
//!   NVML: init twice needs shutdown twice.
//! * String outputs are NUL-terminated and return
//!   `NVML_ERROR_INSUFFICIENT_SIZE` (7) when the caller's buffer is too small;
//!   null output pointers return `NVML_ERROR_INVALID_ARGUMENT` (2).
//! * Memory: `total` from the profile, `reserved` 320 MiB, `used` 512 MiB,
//!   `free` the rest (all clamped to `total`). The v1 call folds `reserved`
//!   into `used`, like the real driver. The v2 call checks the struct
//!   version like the real driver (`NVML_ERROR_ARGUMENT_VERSION_MISMATCH`).
//! * PCI: GPU `i` sits on domain `i / 8`, bus
//!   `[0x18, 0x2A, 0x3A, 0x5D, 0x9A, 0xAB, 0xBA, 0xDB][i % 8]`, device 0,
//!   function 0; `busId` is `"%08X:%02X:00.0"` (uppercase, as NVML writes
//!   it), `busIdLegacy` `"%04X:%02X:00.0"`. `pciDeviceId` is
//!   `device << 16 | 0x10DE` with the real PCI device id for the GPU names in
//!   the fixtures (a stable made-up one for other names).
//!
//! # Exported symbols
//!
//! `nvmlInit_v2`, `nvmlInit`, `nvmlInitWithFlags` (flags ignored),
//! `nvmlShutdown`, `nvmlErrorString`, `nvmlSystemGetDriverVersion`,
//! `nvmlSystemGetNVMLVersion`, `nvmlSystemGetCudaDriverVersion_v2`,
//! `nvmlSystemGetCudaDriverVersion`, `nvmlDeviceGetCount_v2`,
//! `nvmlDeviceGetCount`, `nvmlDeviceGetHandleByIndex_v2`,
//! `nvmlDeviceGetHandleByIndex`, `nvmlDeviceGetIndex`, `nvmlDeviceGetName`,
//! `nvmlDeviceGetUUID`, `nvmlDeviceGetMemoryInfo_v2`,
//! `nvmlDeviceGetMemoryInfo`, `nvmlDeviceGetCudaComputeCapability`,
//! `nvmlDeviceGetPciInfo_v3`. `nvml-wrapper` looks every other symbol up
//! lazily and reports `FailedToLoadSymbol` if one is used.
//!
//! # Finding the library
//!
//! `cargo test` builds the cdylib into `target/<profile>/deps/` only (it is
//! copied up to `target/<profile>/` by `cargo build`); crates that list this
//! one as a (dev-)dependency get it built there too. [`find_library`] looks
//! for it next to the running executable. Linking the rlib also links the
//! exported `nvml*` symbols into that executable; that is harmless, since
//! `nvml-wrapper` looks symbols up in the library it opened.
//!
//! # Layout
//!
//! `profile.rs` reads a machine profile; `state.rs` holds the machine loaded and the
//! open initialisations, re-reading the profile when NVML would; `exports/` has the
//! exported symbols by area (`library`: init, shutdown, error strings; `system`;
//! `device`); `abi.rs` NVML's C types and codes; `ffi.rs` the plumbing they share.

mod abi;
mod exports;
mod ffi;
mod profile;
mod state;
#[cfg(test)]
mod tests;

pub use abi::{NVML_MEMORY_V2, NvmlDevice, NvmlDeviceSt, NvmlMemory, NvmlMemoryV2, NvmlPciInfo, NvmlReturn};
pub use exports::device::{
    nvmlDeviceGetCount, nvmlDeviceGetCount_v2, nvmlDeviceGetCudaComputeCapability,
    nvmlDeviceGetHandleByIndex, nvmlDeviceGetHandleByIndex_v2, nvmlDeviceGetIndex, nvmlDeviceGetMemoryInfo,
    nvmlDeviceGetMemoryInfo_v2, nvmlDeviceGetName, nvmlDeviceGetPciInfo_v3, nvmlDeviceGetUUID,
};
pub use exports::library::{nvmlErrorString, nvmlInit, nvmlInit_v2, nvmlInitWithFlags, nvmlShutdown};
pub use exports::system::{
    nvmlSystemGetCudaDriverVersion, nvmlSystemGetCudaDriverVersion_v2, nvmlSystemGetDriverVersion,
    nvmlSystemGetNVMLVersion,
};
pub use profile::{FAILABLE_FUNCTIONS, PROFILE_ENV, gpu_uuid};

/// The file name of the built library.
pub const LIBRARY_FILE_NAME: &str = "libcomfyfleet_fake_nvml.so";

/// Finds the built library for a test or tool running from cargo's target
/// folder (`target/<profile>/deps/<test>` or `target/<profile>/<bin>`).
///
/// `cargo test` builds the cdylib into `target/<profile>/deps/` only; just
/// `cargo build` also copies it up to `target/<profile>/`. The `deps/` copy
/// is tried first since the other one may be stale. The error says where it
/// looked.
pub fn find_library() -> Result<std::path::PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot locate the running executable: {e}"))?;
    let dir = exe.parent().ok_or_else(|| format!("{} has no parent folder", exe.display()))?;
    let target_dir =
        if dir.file_name().is_some_and(|name| name == "deps") { dir.parent() } else { Some(dir) };
    let candidates: Vec<std::path::PathBuf> = target_dir
        .map(|target| vec![target.join("deps").join(LIBRARY_FILE_NAME), target.join(LIBRARY_FILE_NAME)])
        .unwrap_or_default();
    candidates.iter().find(|candidate| candidate.is_file()).cloned().ok_or_else(|| {
        format!(
            "{LIBRARY_FILE_NAME} not found (looked at {candidates:?}); \
             build it with `cargo build -p comfyfleet-fake-nvml`"
        )
    })
}
