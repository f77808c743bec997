//! The exported functions called directly, for what `nvml-wrapper` never
//! asks: calls before init, small buffers, null and stale pointers.

use std::ffi::{CStr, c_char, c_uint};
use std::sync::{Mutex, MutexGuard, PoisonError};

use crate::abi::*;
use crate::exports::device::{MIB, memory_split};
use crate::profile::{Gpu, is_failable, load_machine, unversioned};
use crate::state::{State, state};
use crate::*;

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
