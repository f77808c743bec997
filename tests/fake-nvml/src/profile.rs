//! Machine profiles: the JSON file [`PROFILE_ENV`] names, read into the machine the
//! library reports (the crate docs describe the format).

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

/// The most GPUs a profile may describe; larger handles are not ours.
pub(crate) const MAX_GPUS: usize = 4096;

/// The UUID the fake reports for GPU `index` under `seed`: the first 32
/// lowercase hex digits of `sha256(seed + "/" + index)`, grouped like a real
/// NVML UUID (`GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`).
pub fn gpu_uuid(seed: &str, index: usize) -> String {
    let digest = Sha256::digest(format!("{seed}/{index}").as_bytes());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("GPU-{}-{}-{}-{}-{}", &hex[0..8], &hex[8..12], &hex[12..16], &hex[16..20], &hex[20..32])
}

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
pub(crate) struct Gpu {
    pub(crate) name: String,
    pub(crate) uuid: String,
    pub(crate) memory_total: u64,
    pub(crate) compute_capability: (i32, i32),
    pub(crate) fail: Vec<String>,
}

/// The machine a profile describes, GPUs expanded.
pub(crate) struct Machine {
    pub(crate) driver_version: Option<String>,
    pub(crate) cuda_driver_version: Option<i32>,
    pub(crate) gpus: Vec<Gpu>,
}

/// `name` without a trailing `_v<digits>`.
pub(crate) fn unversioned(name: &str) -> &str {
    match name.rsplit_once("_v") {
        Some((base, version)) if !version.is_empty() && version.bytes().all(|b| b.is_ascii_digit()) => base,
        _ => name,
    }
}

pub(crate) fn is_failable(name: &str) -> bool {
    FAILABLE_FUNCTIONS.iter().any(|f| *f == name || unversioned(f) == name)
}

impl Gpu {
    /// Whether the profile makes `function` fail for this GPU.
    pub(crate) fn fails(&self, function: &str) -> bool {
        self.fail.iter().any(|f| f == function || f == unversioned(function))
    }
}

/// Reads the profile named by [`PROFILE_ENV`]; the error is the stderr line.
pub(crate) fn load_machine() -> Result<Machine, String> {
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
