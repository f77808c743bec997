//! Stand-ins for the outside world an agent reaches: PyPI, download.pytorch.org and
//! GitHub. Real `uv` and real `python3` install tiny wheels with the real names,
//! versions and local tags from a local PEP 503 index served over HTTP, and the
//! agent clones stand-in ComfyUI and custom-node repositories over `file://`, so
//! every resolver, installer and health-check path runs for real, offline.
//!
//! - [`wheel`]: writes valid wheels (`WheelBuilder`).
//! - [`index`]: lays out a PEP 503 simple index, per-CUDA torch indexes and
//!   free-standing wheel URLs on disk.
//! - [`catalog`]: the standard set of packages (torch builds, ComfyUI's
//!   requirements, triton, per-SM SageAttention wheels, decoys) and the spec text
//!   that points at them.
//! - [`server`]: an HTTP/1.1 file server over the index, with counters and faults.
//! - [`hub`]: a stand-in Hugging Face (hub and CDN hosts) for model files.
//! - [`repos`]: stand-in ComfyUI (a stdlib-only `main.py` speaking ComfyUI's HTTP
//!   API) and custom-node git repositories.
//! - [`world`]: all of the above in one directory, served, with a manifest.
//! - [`localize`]: a real spec rewritten to use the stand-ins.
//! - [`sdist`]: a source-only package whose build backend leaves a marker.

pub mod catalog;
pub mod hub;
pub mod index;
pub mod localize;
pub mod packages;
pub mod repos;
mod requirements;
pub mod sdist;
pub mod server;
mod spec_text;
pub mod wheel;
pub mod world;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

pub use catalog::{Catalog, CatalogOptions, KernelWheel, TorchBuild, fat_sageattention_with};
pub use index::{IndexLayout, IndexedWheel};
pub use packages::{DEVICE_COUNT_VARIABLE, GPU_PROFILE_VARIABLE, IMPORT_LOG_VARIABLE};
pub use repos::{StandinComfyui, StandinRepos, create_standin_repos};
pub use server::{IndexServer, PathCount};
pub use spec_text::{SageAttentionWheels, TestNode, TestSpecOptions};
pub use wheel::{BuiltWheel, WheelBuilder};
pub use world::{Manifest, ManifestRepo, StandinWorld};

/// The machine's `python3`: the interpreter `uv venv --python VERSION` picks when
/// Python downloads are off, so its tag is the tag the stand-in wheels must carry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SystemPython {
    /// `MAJOR.MINOR`, e.g. `3.11`.
    pub version: String,
    /// The CPython wheel tag, e.g. `cp311`.
    pub tag: String,
    pub executable: PathBuf,
}

/// Asks `python3` once per process what it is.
pub fn system_python() -> &'static SystemPython {
    static PYTHON: OnceLock<SystemPython> = OnceLock::new();
    PYTHON.get_or_init(|| {
        let script =
            "import sys; print(f'{sys.version_info[0]}.{sys.version_info[1]}'); print(sys.executable)";
        let output = Command::new("python3")
            .args(["-c", script])
            .output()
            .unwrap_or_else(|e| panic!("cannot run python3 (the stand-ins need one on PATH): {e}"));
        assert!(output.status.success(), "python3 failed: {}", String::from_utf8_lossy(&output.stderr));
        let stdout = String::from_utf8(output.stdout).unwrap();
        let mut lines = stdout.lines();
        let version = lines.next().unwrap().trim().to_owned();
        let executable = PathBuf::from(lines.next().unwrap().trim());
        let tag = format!("cp{}", version.replace('.', ""));
        SystemPython { version, tag, executable }
    })
}

/// The `uv` the tests drive: `COMFYFLEET_TEST_UV`, else `uv` on PATH, else the one
/// `scripts/test` installs under `target/test-tools/uv/bin` (a fresh clone after
/// `scripts/test`, run from a shell without it on PATH); `None` where there is none.
pub fn try_find_uv() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("COMFYFLEET_TEST_UV").filter(|path| !path.is_empty()) {
        return Some(PathBuf::from(path));
    }
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join("uv"))
        .find(|candidate| candidate.is_file())
        .or_else(|| installed_test_tools().map(|tools| tools.join("uv/bin/uv")).find(|uv| uv.is_file()))
}

/// Where `scripts/test` may have put its tools: `<target>/test-tools` of the target
/// directory this test binary runs from (`<target>/<profile>/deps/<binary>`), and of
/// the workspace's own `target/`.
fn installed_test_tools() -> impl Iterator<Item = PathBuf> {
    let from_binary = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.ancestors().nth(3).map(|target| target.join("test-tools")));
    let from_workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/test-tools");
    from_binary.into_iter().chain(std::iter::once(from_workspace))
}

/// [`try_find_uv`], which must find one.
pub fn find_uv() -> PathBuf {
    let uv = try_find_uv().unwrap_or_else(|| {
        panic!(
            "no uv found: run scripts/test, which installs the pinned uv, or set COMFYFLEET_TEST_UV \
             to a uv binary, or put uv on PATH"
        )
    });
    assert!(uv.is_file(), "COMFYFLEET_TEST_UV={} is not a file", uv.display());
    uv
}
