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

use std::ffi::{CStr, c_char, c_int, c_uint};
use std::io::Write as _;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Mutex, MutexGuard, PoisonError};

use serde::{Deserialize, Deserializer};
use sha2::{Digest as _, Sha256};

/// The environment variable naming the machine profile file.
pub const PROFILE_ENV: &str = "COMFYFLEET_FAKE_NVML_PROFILE";

/// The per-device functions a profile's `fail` list may name.
pub const FAILABLE_FUNCTIONS: &[&str] = &[
    "nvmlDeviceGetHandleByIndex_v2",
    "nvmlDeviceGetHandleByIndex",
    "nvmlDeviceGetIndex",
    "nvmlDeviceGetName",
    "nvmlDeviceGetUUID",
    "nvmlDeviceGetMemoryInfo_v2",
    "nvmlDeviceGetMemoryInfo",
    "nvmlDeviceGetCudaComputeCapability",
    "nvmlDeviceGetPciInfo_v3",
];

/// `nvmlReturn_t`.
pub type NvmlReturn = c_uint;

const NVML_SUCCESS: NvmlReturn = 0;
const NVML_ERROR_UNINITIALIZED: NvmlReturn = 1;
const NVML_ERROR_INVALID_ARGUMENT: NvmlReturn = 2;
const NVML_ERROR_INSUFFICIENT_SIZE: NvmlReturn = 7;
const NVML_ERROR_DRIVER_NOT_LOADED: NvmlReturn = 9;
const NVML_ERROR_FUNCTION_NOT_FOUND: NvmlReturn = 13;
const NVML_ERROR_GPU_IS_LOST: NvmlReturn = 15;
const NVML_ERROR_ARGUMENT_VERSION_MISMATCH: NvmlReturn = 25;
const NVML_ERROR_UNKNOWN: NvmlReturn = 999;

/// The most GPUs a profile may describe; larger handles are not ours.
const MAX_GPUS: usize = 4096;

const MIB: u64 = 1024 * 1024;
const RESERVED_BYTES: u64 = 320 * MIB;
const USED_BYTES: u64 = 512 * MIB;

const NVIDIA_VENDOR_ID: u32 = 0x10DE;
const PCI_BUSES: [u32; 8] = [0x18, 0x2A, 0x3A, 0x5D, 0x9A, 0xAB, 0xBA, 0xDB];

/// Opaque target of an `nvmlDevice_t`.
#[repr(C)]
pub struct NvmlDeviceSt {
    _private: [u8; 0],
}

/// `nvmlDevice_t`: here `index + 1` as a pointer, never dereferenced.
pub type NvmlDevice = *mut NvmlDeviceSt;

/// `nvmlMemory_t`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct NvmlMemory {
    pub total: u64,
    pub free: u64,
    pub used: u64,
}

/// `nvmlMemory_v2_t`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct NvmlMemoryV2 {
    pub version: c_uint,
    pub total: u64,
    pub reserved: u64,
    pub free: u64,
    pub used: u64,
}

/// `NVML_STRUCT_VERSION(Memory, 2)`.
pub const NVML_MEMORY_V2: c_uint = (size_of::<NvmlMemoryV2>() as c_uint) | (2 << 24);

/// `nvmlPciInfo_t` (the v3 layout).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct NvmlPciInfo {
    pub bus_id_legacy: [c_char; 16],
    pub domain: c_uint,
    pub bus: c_uint,
    pub device: c_uint,
    pub pci_device_id: c_uint,
    pub pci_sub_system_id: c_uint,
    pub bus_id: [c_char; 32],
}

/// The UUID the fake reports for GPU `index` under `seed`: the first 32
/// lowercase hex digits of `sha256(seed + "/" + index)`, grouped like a real
/// NVML UUID (`GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`).
pub fn gpu_uuid(seed: &str, index: usize) -> String {
    let digest = Sha256::digest(format!("{seed}/{index}").as_bytes());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("GPU-{}-{}-{}-{}-{}", &hex[0..8], &hex[8..12], &hex[12..16], &hex[16..20], &hex[20..32])
}

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

// ---------------------------------------------------------------------------
// Profile
// ---------------------------------------------------------------------------

/// A field that must be present but may be `null`.
fn nullable<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(deserializer)
}

fn one() -> u32 {
    1
}

#[derive(Deserialize)]
struct ProfileFile {
    #[serde(deserialize_with = "nullable")]
    driver_version: Option<String>,
    #[serde(deserialize_with = "nullable")]
    cuda_driver_version: Option<i32>,
    gpus: Vec<GpuEntry>,
    #[serde(default)]
    uuid_seed: Option<String>,
}

#[derive(Deserialize)]
struct GpuEntry {
    name: String,
    memory_total_bytes: u64,
    compute_capability: (i32, i32),
    #[serde(default = "one")]
    count: u32,
    #[serde(default)]
    fail: Vec<String>,
}

/// One GPU of the loaded profile.
struct Gpu {
    name: String,
    uuid: String,
    memory_total: u64,
    compute_capability: (i32, i32),
    fail: Vec<String>,
}

/// The machine a profile describes, GPUs expanded.
struct Machine {
    driver_version: Option<String>,
    cuda_driver_version: Option<i32>,
    gpus: Vec<Gpu>,
}

/// `name` without a trailing `_v<digits>`.
fn unversioned(name: &str) -> &str {
    match name.rsplit_once("_v") {
        Some((base, version)) if !version.is_empty() && version.bytes().all(|b| b.is_ascii_digit()) => base,
        _ => name,
    }
}

fn is_failable(name: &str) -> bool {
    FAILABLE_FUNCTIONS.iter().any(|f| *f == name || unversioned(f) == name)
}

impl Gpu {
    /// Whether the profile makes `function` fail for this GPU.
    fn fails(&self, function: &str) -> bool {
        self.fail.iter().any(|f| f == function || f == unversioned(function))
    }
}

/// Reads the profile named by [`PROFILE_ENV`]; the error is the stderr line.
fn load_machine() -> Result<Machine, String> {
    let path = match std::env::var(PROFILE_ENV) {
        Ok(path) if !path.is_empty() => path,
        Ok(_) => return Err(format!("comfyfleet-fake-nvml: {PROFILE_ENV} is empty")),
        Err(std::env::VarError::NotPresent) => {
            return Err(format!("comfyfleet-fake-nvml: {PROFILE_ENV} is not set"));
        }
        Err(std::env::VarError::NotUnicode(path)) => {
            return Err(format!(
                "comfyfleet-fake-nvml: {PROFILE_ENV}={}: not valid UTF-8",
                path.to_string_lossy()
            ));
        }
    };
    parse_machine(&path).map_err(|reason| format!("comfyfleet-fake-nvml: {path}: {reason}"))
}

fn parse_machine(path: &str) -> Result<Machine, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read profile: {e}"))?;
    let profile: ProfileFile =
        serde_json::from_str(&text).map_err(|e| {
        let whole_file = serde_json::from_str::<serde_json::Value>(&text)
            .is_ok_and(|value| value.get("profiles").is_some());
        if whole_file {
            format!("not a valid machine profile: {e} (this is a whole profiles file; give one entry of its `profiles`)")
        } else {
            format!("not a valid machine profile: {e}")
        }
    })?;

    if let Some(version) = &profile.driver_version
        && (version.is_empty() || version.contains('\0'))
    {
        return Err(format!("invalid driver_version {version:?}"));
    }
    let seed = profile.uuid_seed.as_deref().unwrap_or(path);

    let mut gpus = Vec::new();
    for (entry_number, entry) in profile.gpus.into_iter().enumerate() {
        if entry.name.is_empty() || entry.name.contains('\0') {
            return Err(format!("gpus[{entry_number}]: invalid name {:?}", entry.name));
        }
        if let Some(unknown) = entry.fail.iter().find(|f| !is_failable(f)) {
            return Err(format!(
                "gpus[{entry_number}]: cannot fail {unknown:?}; known: {}",
                FAILABLE_FUNCTIONS.join(", ")
            ));
        }
        let count = usize::try_from(entry.count).unwrap_or(usize::MAX);
        if count > MAX_GPUS - gpus.len() {
            return Err(format!("more than {MAX_GPUS} GPUs"));
        }
        for _ in 0..count {
            gpus.push(Gpu {
                name: entry.name.clone(),
                uuid: gpu_uuid(seed, gpus.len()),
                memory_total: entry.memory_total_bytes,
                compute_capability: entry.compute_capability,
                fail: entry.fail.clone(),
            });
        }
    }
    Ok(Machine {
        driver_version: profile.driver_version,
        cuda_driver_version: profile.cuda_driver_version,
        gpus,
    })
}

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

// ---------------------------------------------------------------------------
// State and FFI plumbing
// ---------------------------------------------------------------------------

struct State {
    init_count: u32,
    machine: Option<Machine>,
}

static STATE: Mutex<State> = Mutex::new(State { init_count: 0, machine: None });

fn state() -> MutexGuard<'static, State> {
    STATE.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Runs an exported function's body; a panic becomes `NVML_ERROR_UNKNOWN`
/// instead of unwinding into C.
fn ffi(body: impl FnOnce() -> NvmlReturn) -> NvmlReturn {
    catch_unwind(AssertUnwindSafe(body)).unwrap_or(NVML_ERROR_UNKNOWN)
}

fn report(line: &str) {
    // One line; a failing stderr is ignored rather than panicking.
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}

/// Runs `f` on the loaded machine if NVML is initialised and the driver is
/// there.
fn with_machine(f: impl FnOnce(&Machine) -> NvmlReturn) -> NvmlReturn {
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
fn with_device(device: NvmlDevice, function: &str, f: impl FnOnce(usize, &Gpu) -> NvmlReturn) -> NvmlReturn {
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

/// Copies `value` and a NUL into the caller's buffer of `length` bytes.
///
/// # Safety
///
/// `buffer` is null or valid for `length` bytes of writes.
unsafe fn write_str(buffer: *mut c_char, length: c_uint, value: &str) -> NvmlReturn {
    if buffer.is_null() {
        return NVML_ERROR_INVALID_ARGUMENT;
    }
    let bytes = value.as_bytes();
    if bytes.len() >= usize::try_from(length).unwrap_or(usize::MAX) {
        return NVML_ERROR_INSUFFICIENT_SIZE;
    }
    // SAFETY: the caller guarantees `length` writable bytes and we write
    // `bytes.len() + 1 <= length` of them.
    unsafe {
        std::ptr::copy_nonoverlapping(bytes.as_ptr().cast::<c_char>(), buffer, bytes.len());
        buffer.add(bytes.len()).write(0);
    }
    NVML_SUCCESS
}

/// Writes `value` through `out` unless it is null.
///
/// # Safety
///
/// `out` is null or valid for a write of `T`.
unsafe fn write_out<T>(out: *mut T, value: T) -> NvmlReturn {
    if out.is_null() {
        return NVML_ERROR_INVALID_ARGUMENT;
    }
    // SAFETY: non-null and, per the caller, valid for writes.
    unsafe { out.write(value) };
    NVML_SUCCESS
}

/// A fixed-size C string field holding `value` (truncated if it had to be).
fn c_field<const N: usize>(value: &str) -> [c_char; N] {
    let mut field = [0 as c_char; N];
    for (slot, byte) in field.iter_mut().zip(value.bytes().take(N.saturating_sub(1))) {
        *slot = byte as c_char;
    }
    field
}

fn init() -> NvmlReturn {
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
unsafe fn device_count(device_count: *mut c_uint) -> NvmlReturn {
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

/// `(reserved, used, free)` for a GPU with `total` bytes.
fn memory_split(total: u64) -> (u64, u64, u64) {
    let reserved = RESERVED_BYTES.min(total);
    let used = USED_BYTES.min(total - reserved);
    (reserved, used, total - reserved - used)
}

// ---------------------------------------------------------------------------
// Exported NVML functions
// ---------------------------------------------------------------------------

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

/// `nvmlDeviceGetCount_v2`: re-reads the profile, then counts its GPUs.
///
/// # Safety
///
/// `device_count` is null or valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetCount_v2(device_count: *mut c_uint) -> NvmlReturn {
    // SAFETY: the caller's contract.
    ffi(|| unsafe { self::device_count(device_count) })
}

/// `nvmlDeviceGetCount`: the same as the `_v2` call.
///
/// # Safety
///
/// `device_count` is null or valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetCount(device_count: *mut c_uint) -> NvmlReturn {
    // SAFETY: the caller's contract.
    ffi(|| unsafe { self::device_count(device_count) })
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

#[cfg(test)]
mod tests {
    //! The exported functions called directly, for what `nvml-wrapper` never
    //! asks: calls before init, small buffers, null and stale pointers.

    use super::*;

    static LOCK: Mutex<()> = Mutex::new(());

    struct Fixture {
        _guard: MutexGuard<'static, ()>,
        dir: tempfile::TempDir,
    }

    impl Fixture {
        fn new() -> Self {
            let guard = LOCK.lock().unwrap_or_else(PoisonError::into_inner);
            *state() = State { init_count: 0, machine: None };
            Self { _guard: guard, dir: tempfile::tempdir().unwrap() }
        }

        fn profile(&self, json: &str) -> String {
            let path = self.dir.path().join("profile.json");
            let tmp = self.dir.path().join("profile.tmp");
            std::fs::write(&tmp, json).unwrap();
            std::fs::rename(&tmp, &path).unwrap();
            let path = path.to_str().unwrap().to_owned();
            // SAFETY: every test here holds LOCK while touching the environment.
            unsafe { std::env::set_var(PROFILE_ENV, &path) };
            path
        }
    }

    const TWO_GPUS: &str = r#"{
        "driver_version": "570.133.07",
        "cuda_driver_version": 12080,
        "gpus": [
            {"name": "NVIDIA GeForce RTX 4090", "memory_total_bytes": 25757220864,
             "compute_capability": [8, 9], "count": 2}
        ]
    }"#;

    fn handle(index: c_uint) -> NvmlDevice {
        let mut device: NvmlDevice = std::ptr::null_mut();
        assert_eq!(unsafe { nvmlDeviceGetHandleByIndex_v2(index, &mut device) }, NVML_SUCCESS);
        device
    }

    fn name(device: NvmlDevice, length: c_uint) -> Result<String, NvmlReturn> {
        let mut buffer = vec![b'x' as c_char; 128];
        let rc = unsafe { nvmlDeviceGetName(device, buffer.as_mut_ptr(), length) };
        if rc != NVML_SUCCESS {
            return Err(rc);
        }
        let text = unsafe { CStr::from_ptr(buffer.as_ptr()) };
        Ok(text.to_str().unwrap().to_owned())
    }

    #[test]
    fn calls_before_init_and_after_shutdown_are_uninitialized() {
        let fixture = Fixture::new();
        fixture.profile(TWO_GPUS);
        fn check() {
            let mut count = 0;
            let mut device: NvmlDevice = std::ptr::null_mut();
            let mut buffer = [0 as c_char; 80];
            let mut cuda = 0;
            let fake = std::ptr::without_provenance_mut::<NvmlDeviceSt>(1);
            unsafe {
                assert_eq!(nvmlDeviceGetCount_v2(&mut count), NVML_ERROR_UNINITIALIZED);
                assert_eq!(nvmlDeviceGetHandleByIndex_v2(0, &mut device), NVML_ERROR_UNINITIALIZED);
                assert_eq!(nvmlSystemGetDriverVersion(buffer.as_mut_ptr(), 80), NVML_ERROR_UNINITIALIZED);
                assert_eq!(nvmlSystemGetCudaDriverVersion_v2(&mut cuda), NVML_ERROR_UNINITIALIZED);
                assert_eq!(nvmlDeviceGetName(fake, buffer.as_mut_ptr(), 80), NVML_ERROR_UNINITIALIZED);
                assert_eq!(nvmlShutdown(), NVML_ERROR_UNINITIALIZED);
            }
        }
        check();

        // Counted: two inits need two shutdowns.
        let mut count = 0;
        unsafe {
            assert_eq!(nvmlInit_v2(), NVML_SUCCESS);
            assert_eq!(nvmlInitWithFlags(0), NVML_SUCCESS);
            assert_eq!(nvmlShutdown(), NVML_SUCCESS);
            assert_eq!(nvmlDeviceGetCount_v2(&mut count), NVML_SUCCESS);
            assert_eq!(count, 2);
            assert_eq!(nvmlShutdown(), NVML_SUCCESS);
        }
        check();
    }

    #[test]
    fn strings_respect_the_buffer_length() {
        let fixture = Fixture::new();
        fixture.profile(TWO_GPUS);
        assert_eq!(unsafe { nvmlInit() }, NVML_SUCCESS);
        let device = handle(1);
        let full = "NVIDIA GeForce RTX 4090";
        assert_eq!(name(device, 128).unwrap(), full);
        // Exactly the text and its NUL fits; one byte less does not.
        let exact = c_uint::try_from(full.len() + 1).unwrap();
        assert_eq!(name(device, exact).unwrap(), full);
        assert_eq!(name(device, exact - 1), Err(NVML_ERROR_INSUFFICIENT_SIZE));
        assert_eq!(name(device, 0), Err(NVML_ERROR_INSUFFICIENT_SIZE));

        let mut uuid = [0 as c_char; 41];
        assert_eq!(unsafe { nvmlDeviceGetUUID(device, uuid.as_mut_ptr(), 41) }, NVML_SUCCESS);
        assert_eq!(unsafe { nvmlDeviceGetUUID(device, uuid.as_mut_ptr(), 40) }, NVML_ERROR_INSUFFICIENT_SIZE);
        let mut version = [0 as c_char; 80];
        assert_eq!(unsafe { nvmlSystemGetNVMLVersion(version.as_mut_ptr(), 80) }, NVML_SUCCESS);
        let version = unsafe { CStr::from_ptr(version.as_ptr()) };
        assert_eq!(version.to_str().unwrap(), "12.570.133.07");
        assert_eq!(unsafe { nvmlShutdown() }, NVML_SUCCESS);
    }

    #[test]
    fn null_and_stale_pointers() {
        let fixture = Fixture::new();
        let path = fixture.profile(TWO_GPUS);
        assert_eq!(unsafe { nvmlInit_v2() }, NVML_SUCCESS);
        fn null<T>() -> *mut T {
            std::ptr::null_mut()
        }
        unsafe {
            assert_eq!(nvmlDeviceGetCount_v2(null()), NVML_ERROR_INVALID_ARGUMENT);
            assert_eq!(nvmlDeviceGetHandleByIndex_v2(0, null()), NVML_ERROR_INVALID_ARGUMENT);
            assert_eq!(nvmlSystemGetDriverVersion(null(), 80), NVML_ERROR_INVALID_ARGUMENT);
            assert_eq!(nvmlSystemGetCudaDriverVersion(null()), NVML_ERROR_INVALID_ARGUMENT);
            assert_eq!(nvmlDeviceGetMemoryInfo_v2(handle(0), null()), NVML_ERROR_INVALID_ARGUMENT);
            assert_eq!(nvmlDeviceGetPciInfo_v3(handle(0), null()), NVML_ERROR_INVALID_ARGUMENT);
            let mut major = 0;
            assert_eq!(
                nvmlDeviceGetCudaComputeCapability(handle(0), &mut major, null()),
                NVML_ERROR_INVALID_ARGUMENT
            );
            let mut index = 0;
            assert_eq!(nvmlDeviceGetIndex(null(), &mut index), NVML_ERROR_INVALID_ARGUMENT);
            let absurd = std::ptr::without_provenance_mut::<NvmlDeviceSt>(usize::MAX);
            assert_eq!(nvmlDeviceGetIndex(absurd, &mut index), NVML_ERROR_INVALID_ARGUMENT);
            let mut device: NvmlDevice = null();
            assert_eq!(nvmlDeviceGetHandleByIndex(2, &mut device), NVML_ERROR_INVALID_ARGUMENT);
        }

        let last = handle(1);
        let one_gpu = TWO_GPUS.replace("\"count\": 2", "\"count\": 1");
        assert_eq!(fixture.profile(&one_gpu), path);
        // The handle still works until the next count re-reads the profile.
        assert!(name(last, 96).is_ok());
        let mut count = 0;
        assert_eq!(unsafe { nvmlDeviceGetCount(&mut count) }, NVML_SUCCESS);
        assert_eq!(count, 1);
        assert_eq!(name(last, 96), Err(NVML_ERROR_GPU_IS_LOST));
        assert_eq!(unsafe { nvmlShutdown() }, NVML_SUCCESS);
    }

    #[test]
    fn memory_info_v1_and_v2() {
        let fixture = Fixture::new();
        fixture.profile(TWO_GPUS);
        assert_eq!(unsafe { nvmlInit_v2() }, NVML_SUCCESS);
        let device = handle(0);

        let mut v2 = NvmlMemoryV2 { version: NVML_MEMORY_V2, ..NvmlMemoryV2::default() };
        assert_eq!(NVML_MEMORY_V2, 40 | (2 << 24));
        assert_eq!(unsafe { nvmlDeviceGetMemoryInfo_v2(device, &mut v2) }, NVML_SUCCESS);
        assert_eq!(v2.total, 25757220864);
        assert_eq!(v2.used, 512 * MIB);
        assert_eq!(v2.reserved + v2.used + v2.free, v2.total);

        let mut v1 = NvmlMemory::default();
        assert_eq!(unsafe { nvmlDeviceGetMemoryInfo(device, &mut v1) }, NVML_SUCCESS);
        assert_eq!(v1.total, v2.total);
        assert_eq!(v1.free, v2.free);
        assert_eq!(v1.used, v2.used + v2.reserved);

        let mut wrong = NvmlMemoryV2 { version: 1, ..NvmlMemoryV2::default() };
        assert_eq!(
            unsafe { nvmlDeviceGetMemoryInfo_v2(device, &mut wrong) },
            NVML_ERROR_ARGUMENT_VERSION_MISMATCH
        );
        assert_eq!(unsafe { nvmlShutdown() }, NVML_SUCCESS);
    }

    #[test]
    fn tiny_memory_does_not_underflow() {
        assert_eq!(memory_split(0), (0, 0, 0));
        assert_eq!(memory_split(100 * MIB), (100 * MIB, 0, 0));
        assert_eq!(memory_split(800 * MIB), (320 * MIB, 480 * MIB, 0));
    }

    #[test]
    fn pci_info_is_distinct_per_gpu() {
        let fixture = Fixture::new();
        fixture.profile(&TWO_GPUS.replace("\"count\": 2", "\"count\": 10"));
        assert_eq!(unsafe { nvmlInit_v2() }, NVML_SUCCESS);
        let mut seen = std::collections::HashSet::new();
        for index in 0..10 {
            let mut pci = NvmlPciInfo {
                bus_id_legacy: [0; 16],
                domain: 0,
                bus: 0,
                device: 0,
                pci_device_id: 0,
                pci_sub_system_id: 0,
                bus_id: [0; 32],
            };
            assert_eq!(unsafe { nvmlDeviceGetPciInfo_v3(handle(index), &mut pci) }, NVML_SUCCESS);
            let bus_id = unsafe { CStr::from_ptr(pci.bus_id.as_ptr()) };
            let legacy = unsafe { CStr::from_ptr(pci.bus_id_legacy.as_ptr()) };
            let bus_id = bus_id.to_str().unwrap().to_owned();
            assert_eq!(bus_id, format!("{:08X}:{:02X}:00.0", pci.domain, pci.bus));
            assert_eq!(legacy.to_str().unwrap(), &bus_id[4..]);
            assert_eq!(pci.pci_device_id, 0x2684_10DE);
            assert!(seen.insert(bus_id));
        }
        assert!(seen.contains("00000000:18:00.0"));
        assert!(seen.contains("00000001:2A:00.0"));
        assert_eq!(unsafe { nvmlShutdown() }, NVML_SUCCESS);
    }

    #[test]
    fn error_messages_name_the_path_and_reason() {
        let fixture = Fixture::new();
        let path = fixture.profile("{\"driver_version\": \"1\"}");
        let error = load_machine().err().unwrap();
        assert!(error.starts_with(&format!("comfyfleet-fake-nvml: {path}: ")));
        assert!(error.contains("missing field"), "{error}");

        let path = fixture.profile(
            r#"{"driver_version": "1", "cuda_driver_version": null,
                "gpus": [{"name": "x", "memory_total_bytes": 1,
                          "compute_capability": [1, 0], "fail": ["nvmlInit_v2"]}]}"#,
        );
        let error = load_machine().err().unwrap();
        assert!(error.contains(&path), "{error}");
        assert!(error.contains("cannot fail \"nvmlInit_v2\""), "{error}");
        assert_eq!(unsafe { nvmlInit_v2() }, NVML_ERROR_UNKNOWN);
    }

    #[test]
    fn fail_names_match_exactly_or_without_version() {
        assert_eq!(unversioned("nvmlDeviceGetMemoryInfo_v2"), "nvmlDeviceGetMemoryInfo");
        assert_eq!(unversioned("nvmlDeviceGetName"), "nvmlDeviceGetName");
        assert_eq!(unversioned("nvmlDeviceGetPciInfo_v3"), "nvmlDeviceGetPciInfo");
        assert!(is_failable("nvmlDeviceGetPciInfo"));
        assert!(is_failable("nvmlDeviceGetHandleByIndex_v2"));
        assert!(!is_failable("nvmlDeviceGetPciInfo_v2"));
        let gpu = Gpu {
            name: String::new(),
            uuid: String::new(),
            memory_total: 0,
            compute_capability: (0, 0),
            fail: vec!["nvmlDeviceGetMemoryInfo_v2".into(), "nvmlDeviceGetName".into()],
        };
        assert!(gpu.fails("nvmlDeviceGetMemoryInfo_v2"));
        assert!(!gpu.fails("nvmlDeviceGetMemoryInfo"));
        assert!(gpu.fails("nvmlDeviceGetName"));
    }

    #[test]
    fn uuid_shape() {
        let uuid = gpu_uuid("seed", 0);
        assert_eq!(uuid.len(), 40);
        assert!(uuid.starts_with("GPU-"));
        assert_eq!(uuid, gpu_uuid("seed", 0));
        assert_ne!(uuid, gpu_uuid("seed", 1));
        assert_ne!(uuid, gpu_uuid("seed2", 0));
    }

    #[test]
    fn error_strings() {
        let text = |code| unsafe { CStr::from_ptr(nvmlErrorString(code)) };
        assert_eq!(text(0).to_str().unwrap(), "Success");
        assert_eq!(text(9).to_str().unwrap(), "Driver Not Loaded");
        assert_eq!(text(999).to_str().unwrap(), "Unknown Error");
        assert_eq!(text(12345).to_str().unwrap(), "Unknown Error");
    }
}
