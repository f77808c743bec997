//! Loads the built `libcomfyfleet_fake_nvml.so` through the real
//! `nvml-wrapper` and checks what it reports.
//!
//! The profile is chosen by a process-wide environment variable, and the
//! library's state is process-wide too, so every test here holds [`LOCK`]
//! for its whole run: they run one at a time even under the parallel test
//! harness, and no thread reads the environment while another sets it.

// clippy.toml allows these inside `#[test]` functions only; the helpers here
// are test code too.
#![allow(clippy::unwrap_used, clippy::panic)]

use std::collections::{BTreeMap, HashSet};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, MutexGuard, PoisonError};

use comfyfleet_fake_nvml::PROFILE_ENV;
use nvml_wrapper::Nvml;
use nvml_wrapper::error::NvmlError;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

static LOCK: Mutex<()> = Mutex::new(());

/// Set in the child process of `init_error_is_reported_on_stderr`.
const CHILD_ENV: &str = "COMFYFLEET_FAKE_NVML_TEST_CHILD";

const MIB: u64 = 1024 * 1024;

/// The test's hold on the process-wide environment, and a scratch folder.
struct Fixture {
    _guard: MutexGuard<'static, ()>,
    dir: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Self {
        let guard = LOCK.lock().unwrap_or_else(PoisonError::into_inner);
        Self { _guard: guard, dir: tempfile::tempdir().unwrap() }
    }

    /// Writes `profile` to `<dir>/<name>.json` (atomically) and returns the path.
    fn write(&self, name: &str, profile: &Value) -> PathBuf {
        let path = self.dir.path().join(format!("{name}.json"));
        write_atomically(&path, &serde_json::to_vec_pretty(profile).unwrap());
        path
    }

    /// Makes `path` the profile of this process.
    fn select(&self, path: &Path) {
        // SAFETY: every test in this binary holds LOCK while it touches the
        // environment, so no other thread reads it concurrently.
        unsafe { std::env::set_var(PROFILE_ENV, path) };
    }

    fn unset(&self) {
        // SAFETY: as in `select`.
        unsafe { std::env::remove_var(PROFILE_ENV) };
    }
}

fn write_atomically(path: &Path, bytes: &[u8]) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// The cdylib cargo built for this test run (`target/debug/deps/`).
fn library_path() -> PathBuf {
    comfyfleet_fake_nvml::find_library().unwrap_or_else(|e| panic!("{e}"))
}

fn init() -> Result<Nvml, NvmlError> {
    let path: OsString = library_path().into_os_string();
    Nvml::builder().lib_path(&path).init()
}

fn fixture_profiles() -> BTreeMap<String, Value> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/gpu-profiles.json");
    let text = std::fs::read_to_string(&path).unwrap();
    let file: Value = serde_json::from_str(&text).unwrap();
    let profiles = file["profiles"].as_object().unwrap();
    profiles.iter().map(|(name, profile)| (name.clone(), profile.clone())).collect()
}

/// The UUID the brief specifies, computed independently of the library.
fn expected_uuid(seed: &str, index: usize) -> String {
    let digest = Sha256::digest(format!("{seed}/{index}").as_bytes());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("GPU-{}-{}-{}-{}-{}", &hex[..8], &hex[8..12], &hex[12..16], &hex[16..20], &hex[20..32])
}

fn looks_like_uuid(uuid: &str) -> bool {
    let Some(rest) = uuid.strip_prefix("GPU-") else {
        return false;
    };
    let groups: Vec<&str> = rest.split('-').collect();
    groups.iter().map(|g| g.len()).eq([8, 4, 4, 4, 12])
        && groups.iter().all(|g| g.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
}

/// One expected GPU: name, memory total, compute capability.
#[derive(Debug, Clone, PartialEq)]
struct ExpectedGpu {
    name: String,
    memory_total: u64,
    compute_capability: (i32, i32),
}

fn expand(profile: &Value) -> Vec<ExpectedGpu> {
    let mut gpus = Vec::new();
    for entry in profile["gpus"].as_array().unwrap() {
        let count = entry.get("count").map_or(1, |c| c.as_u64().unwrap());
        let cc = entry["compute_capability"].as_array().unwrap();
        let gpu = ExpectedGpu {
            name: entry["name"].as_str().unwrap().to_owned(),
            memory_total: entry["memory_total_bytes"].as_u64().unwrap(),
            compute_capability: (
                i32::try_from(cc[0].as_i64().unwrap()).unwrap(),
                i32::try_from(cc[1].as_i64().unwrap()).unwrap(),
            ),
        };
        for _ in 0..count {
            gpus.push(gpu.clone());
        }
    }
    gpus
}

/// Checks everything the machine reports against `profile`; returns the UUIDs.
fn check_machine(label: &str, nvml: &Nvml, profile: &Value, seed: &str) -> Vec<String> {
    let driver = profile["driver_version"].as_str().unwrap();
    let cuda = i32::try_from(profile["cuda_driver_version"].as_i64().unwrap()).unwrap();
    assert_eq!(nvml.sys_driver_version().unwrap(), driver, "{label}");
    assert_eq!(nvml.sys_cuda_driver_version().unwrap(), cuda, "{label}");
    assert_eq!(nvml.sys_nvml_version().unwrap(), format!("{}.{driver}", cuda / 1000), "{label}");

    let expected = expand(profile);
    assert_eq!(nvml.device_count().unwrap(), u32::try_from(expected.len()).unwrap(), "{label}");

    let mut uuids = Vec::new();
    let mut bus_ids = HashSet::new();
    for (index, gpu) in expected.iter().enumerate() {
        let label = format!("{label} GPU {index}");
        let device = nvml.device_by_index(u32::try_from(index).unwrap()).unwrap();
        assert_eq!(device.index().unwrap(), u32::try_from(index).unwrap(), "{label}");
        assert_eq!(device.name().unwrap(), gpu.name, "{label}");

        let memory = device.memory_info().unwrap();
        assert_eq!(memory.total, gpu.memory_total, "{label}");
        assert_eq!(memory.used, 512 * MIB, "{label}");
        assert!(memory.reserved > 0 && memory.reserved < 1024 * MIB, "{label}");
        assert_eq!(memory.free + memory.used + memory.reserved, memory.total, "{label}");

        let cc = device.cuda_compute_capability().unwrap();
        assert_eq!((cc.major, cc.minor), gpu.compute_capability, "{label}");

        let uuid = device.uuid().unwrap();
        assert!(looks_like_uuid(&uuid), "{label}: {uuid}");
        assert_eq!(uuid, expected_uuid(seed, index), "{label}");
        assert_eq!(uuid, comfyfleet_fake_nvml::gpu_uuid(seed, index), "{label}");
        uuids.push(uuid);

        let pci = device.pci_info().unwrap();
        assert_eq!(pci.bus_id, format!("{:08X}:{:02X}:{:02X}.0", pci.domain, pci.bus, pci.device), "{label}");
        assert_eq!(pci.pci_device_id & 0xFFFF, 0x10DE, "{label}: NVIDIA vendor id");
        assert_ne!(pci.pci_device_id >> 16, 0, "{label}");
        assert_eq!(pci.pci_sub_system_id.map(|s| s & 0xFFFF), Some(0x10DE), "{label}");
        assert!(bus_ids.insert(pci.bus_id.clone()), "{label}: duplicate bus id");
    }

    let distinct: HashSet<&String> = uuids.iter().collect();
    assert_eq!(distinct.len(), uuids.len(), "{label}: duplicate UUIDs");
    uuids
}

#[test]
fn every_fixture_profile_reports_its_gpus() {
    let fixture = Fixture::new();
    let profiles = fixture_profiles();
    assert!(profiles.contains_key("no-gpu"));
    // `cargo test` builds the cdylib fresh into target/debug/deps/.
    assert_eq!(library_path().parent().unwrap().file_name().unwrap(), "deps");
    assert!(profiles.contains_key("rtx4090-x1-570"));

    let mut all_uuids = HashSet::new();
    let mut checked = 0;
    for (name, profile) in &profiles {
        let path = fixture.write(name, profile);
        fixture.select(&path);
        let seed = path.to_str().unwrap();

        if profile["driver_version"].is_null() {
            let err = init().err();
            assert!(matches!(err, Some(NvmlError::DriverNotLoaded)), "{name}: {err:?}");
            continue;
        }

        let nvml = init().unwrap_or_else(|e| panic!("{name}: init: {e:?}"));
        let uuids = check_machine(name, &nvml, profile, seed);
        drop(nvml);

        // Stable: a fresh initialisation reports the same UUIDs.
        let nvml = init().unwrap();
        let again: Vec<String> = (0..nvml.device_count().unwrap())
            .map(|i| nvml.device_by_index(i).unwrap().uuid().unwrap())
            .collect();
        assert_eq!(again, uuids, "{name}");
        nvml.shutdown().unwrap();

        for uuid in uuids {
            assert!(all_uuids.insert(uuid), "{name}: UUID seen on another machine");
        }
        checked += 1;
    }
    assert_eq!(checked, profiles.len() - 1);

    // The specific pair the agent relies on.
    let path = fixture.write("rtx4090", &profiles["rtx4090-x1-570"]);
    fixture.select(&path);
    let nvml = init().unwrap();
    assert_eq!(nvml.sys_driver_version().unwrap(), "570.133.07");
    assert_eq!(nvml.sys_cuda_driver_version().unwrap(), 12080);
    assert_eq!(nvml.device_count().unwrap(), 1);
}

#[test]
fn uuid_seed_replaces_the_path() {
    let fixture = Fixture::new();
    let profile = json!({
        "uuid_seed": "machine-7",
        "driver_version": "570.133.07",
        "cuda_driver_version": 12080,
        "gpus": [{"name": "NVIDIA L40S", "memory_total_bytes": 48305799168_u64,
                  "compute_capability": [8, 9], "count": 3}]
    });
    let mut seen = Vec::new();
    for name in ["first", "second"] {
        let path = fixture.write(name, &profile);
        fixture.select(&path);
        let nvml = init().unwrap();
        seen.push(check_machine(name, &nvml, &profile, "machine-7"));
    }
    assert_eq!(seen[0], seen[1]);
}

#[test]
fn a_failing_gpu_does_not_hide_the_others() {
    let fixture = Fixture::new();
    let profile = json!({
        "driver_version": "570.133.07",
        "cuda_driver_version": 12080,
        "gpus": [
            {"name": "NVIDIA GeForce RTX 4090", "memory_total_bytes": 25757220864_u64,
             "compute_capability": [8, 9]},
            {"name": "NVIDIA RTX A6000", "memory_total_bytes": 51527024640_u64,
             "compute_capability": [8, 6], "count": 2,
             "fail": ["nvmlDeviceGetMemoryInfo_v2"]},
            {"name": "Tesla T4", "memory_total_bytes": 16106127360_u64,
             "compute_capability": [7, 5], "fail": ["nvmlDeviceGetHandleByIndex_v2"]},
            {"name": "Tesla T4", "memory_total_bytes": 16106127360_u64,
             "compute_capability": [7, 5], "fail": ["nvmlDeviceGetUUID"]}
        ]
    });
    let path = fixture.write("failing", &profile);
    fixture.select(&path);
    let nvml = init().unwrap();
    assert_eq!(nvml.device_count().unwrap(), 5);

    let gpu0 = nvml.device_by_index(0).unwrap();
    assert_eq!(gpu0.memory_info().unwrap().total, 25757220864);
    for index in [1, 2] {
        let gpu = nvml.device_by_index(index).unwrap();
        assert!(matches!(gpu.memory_info(), Err(NvmlError::Unknown)), "GPU {index}");
        // Only the listed call fails.
        assert_eq!(gpu.name().unwrap(), "NVIDIA RTX A6000");
        assert!(looks_like_uuid(&gpu.uuid().unwrap()));
    }
    assert!(matches!(nvml.device_by_index(3), Err(NvmlError::Unknown)));
    let gpu4 = nvml.device_by_index(4).unwrap();
    assert!(matches!(gpu4.uuid(), Err(NvmlError::Unknown)));
    assert_eq!(gpu4.memory_info().unwrap().total, 16106127360);

    // A name without its version suffix fails every version of the call.
    let mut unversioned = profile.clone();
    unversioned["gpus"][1]["fail"] = json!(["nvmlDeviceGetMemoryInfo"]);
    write_atomically(&path, &serde_json::to_vec(&unversioned).unwrap());
    assert_eq!(nvml.device_count().unwrap(), 5);
    let gpu1 = nvml.device_by_index(1).unwrap();
    assert!(matches!(gpu1.memory_info(), Err(NvmlError::Unknown)));
    assert_eq!(gpu0.memory_info().unwrap().total, 25757220864);
}

#[test]
fn a_changed_profile_is_read_at_the_next_device_count() {
    let fixture = Fixture::new();
    let one = json!({
        "uuid_seed": "changing",
        "driver_version": "570.133.07",
        "cuda_driver_version": 12080,
        "gpus": [{"name": "NVIDIA GeForce RTX 4090", "memory_total_bytes": 25757220864_u64,
                  "compute_capability": [8, 9]}]
    });
    let mut three = one.clone();
    three["gpus"] = json!([
        {"name": "NVIDIA GeForce RTX 4090", "memory_total_bytes": 25757220864_u64,
         "compute_capability": [8, 9]},
        {"name": "NVIDIA H100 80GB HBM3", "memory_total_bytes": 85520809984_u64,
         "compute_capability": [9, 0], "count": 2}
    ]);
    let path = fixture.write("machine", &one);
    fixture.select(&path);

    let nvml = init().unwrap();
    assert_eq!(nvml.device_count().unwrap(), 1);
    let gpu0 = nvml.device_by_index(0).unwrap();
    let uuid0 = gpu0.uuid().unwrap();

    // Not seen until the next device count.
    write_atomically(&path, &serde_json::to_vec(&three).unwrap());
    assert!(matches!(nvml.device_by_index(2), Err(NvmlError::InvalidArg)));
    assert_eq!(nvml.device_count().unwrap(), 3);
    let gpu2 = nvml.device_by_index(2).unwrap();
    assert_eq!(gpu2.name().unwrap(), "NVIDIA H100 80GB HBM3");
    assert_eq!(gpu2.memory_info().unwrap().total, 85520809984);
    // The handle taken before the change still answers, with the same UUID.
    assert_eq!(gpu0.uuid().unwrap(), uuid0);

    // A GPU disappears: its handle is lost, its index invalid.
    write_atomically(&path, &serde_json::to_vec(&one).unwrap());
    assert_eq!(nvml.device_count().unwrap(), 1);
    assert!(matches!(gpu2.name(), Err(NvmlError::GpuLost)));
    assert!(matches!(nvml.device_by_index(2), Err(NvmlError::InvalidArg)));
    assert_eq!(gpu0.name().unwrap(), "NVIDIA GeForce RTX 4090");

    // A broken file: the count fails, the last good profile stays.
    write_atomically(&path, b"{ not json");
    assert!(matches!(nvml.device_count(), Err(NvmlError::Unknown)));
    assert_eq!(gpu0.name().unwrap(), "NVIDIA GeForce RTX 4090");

    // The driver goes away, then comes back.
    let mut no_driver = one.clone();
    no_driver["driver_version"] = Value::Null;
    write_atomically(&path, &serde_json::to_vec(&no_driver).unwrap());
    assert!(matches!(nvml.device_count(), Err(NvmlError::DriverNotLoaded)));
    assert!(matches!(nvml.sys_driver_version(), Err(NvmlError::DriverNotLoaded)));
    write_atomically(&path, &serde_json::to_vec(&three).unwrap());
    assert_eq!(nvml.device_count().unwrap(), 3);
    assert_eq!(nvml.sys_driver_version().unwrap(), "570.133.07");
}

#[test]
fn invalid_profiles_fail_init_with_unknown() {
    let fixture = Fixture::new();
    fixture.unset();
    assert!(matches!(init(), Err(NvmlError::Unknown)));

    fixture.select(&fixture.dir.path().join("missing.json"));
    assert!(matches!(init(), Err(NvmlError::Unknown)));

    let good = json!({
        "driver_version": "570.133.07",
        "cuda_driver_version": 12080,
        "gpus": [{"name": "Tesla T4", "memory_total_bytes": 16106127360_u64,
                  "compute_capability": [7, 5]}]
    });
    let mut no_driver_field = good.clone();
    no_driver_field.as_object_mut().unwrap().remove("driver_version");
    let mut bad_fail = good.clone();
    bad_fail["gpus"][0]["fail"] = json!(["nvmlDeviceGetMemoryInfoo"]);
    let mut bad_cc = good.clone();
    bad_cc["gpus"][0]["compute_capability"] = json!("8.9");
    for (name, profile) in [
        ("whole fixture file", json!({"profiles": {}})),
        ("no driver_version field", no_driver_field),
        ("unknown fail name", bad_fail),
        ("bad compute capability", bad_cc),
    ] {
        let path = fixture.write("bad", &profile);
        fixture.select(&path);
        assert!(matches!(init(), Err(NvmlError::Unknown)), "{name}");
    }

    let path = fixture.write("good", &good);
    fixture.select(&path);
    let nvml = init().unwrap();
    assert_eq!(nvml.device_count().unwrap(), 1);
}

#[test]
fn cuda_driver_version_may_be_missing() {
    let fixture = Fixture::new();
    let path = fixture.write(
        "no-cuda",
        &json!({
            "driver_version": "570.133.07",
            "cuda_driver_version": null,
            "gpus": []
        }),
    );
    fixture.select(&path);
    let nvml = init().unwrap();
    assert_eq!(nvml.device_count().unwrap(), 0);
    assert_eq!(nvml.sys_driver_version().unwrap(), "570.133.07");
    assert!(matches!(nvml.sys_cuda_driver_version(), Err(NvmlError::FunctionNotFound)));
}

#[test]
fn initialisation_is_counted() {
    let fixture = Fixture::new();
    let path = fixture.write(
        "counted",
        &json!({
            "driver_version": "550.144.03",
            "cuda_driver_version": 12040,
            "gpus": [{"name": "NVIDIA L40S", "memory_total_bytes": 48305799168_u64,
                      "compute_capability": [8, 9], "count": 2}]
        }),
    );
    fixture.select(&path);
    let first = init().unwrap();
    let second = init().unwrap();
    second.shutdown().unwrap();
    // Still initialised once.
    assert_eq!(first.device_count().unwrap(), 2);
    assert_eq!(first.sys_driver_version().unwrap(), "550.144.03");
    first.shutdown().unwrap();
}

/// Run as a child of `init_error_is_reported_on_stderr`; a no-op otherwise.
#[test]
fn child_init_error() {
    let _guard = LOCK.lock().unwrap_or_else(PoisonError::into_inner);
    if std::env::var_os(CHILD_ENV).is_none() {
        return;
    }
    assert!(matches!(init(), Err(NvmlError::Unknown)));
}

#[test]
fn init_error_is_reported_on_stderr() {
    let fixture = Fixture::new();
    let missing = fixture.dir.path().join("missing-profile.json");
    let output = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child_init_error", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, "1")
        .env(PROFILE_ENV, &missing)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "child failed: {stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| l.starts_with("comfyfleet-fake-nvml:")).collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    assert!(lines[0].contains(missing.to_str().unwrap()), "{stderr}");
    assert!(lines[0].contains("cannot read profile"), "{stderr}");

    let output = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child_init_error", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, "1")
        .env_remove(PROFILE_ENV)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "child failed: {stderr}");
    assert!(stderr.contains(&format!("comfyfleet-fake-nvml: {PROFILE_ENV} is not set")), "{stderr}");
}
