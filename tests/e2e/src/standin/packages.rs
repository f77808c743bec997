//! What the stand-in packages contain: just enough Python for an agent's verify step
//! and ComfyUI's start to see the real names, versions, CUDA tags and
//! architecture lists.

use super::wheel::{WheelBuilder, normalized_distribution};

/// Set to a file path, every `import torch` appends `<pid> <executable> <argv>` to it,
/// so a test can prove that no Python process ran.
pub const IMPORT_LOG_VARIABLE: &str = "COMFYFLEET_STANDIN_IMPORT_LOG";

/// Set to a number, `torch.cuda.device_count()` returns it (default 1).
pub const DEVICE_COUNT_VARIABLE: &str = "COMFYFLEET_STANDIN_DEVICE_COUNT";

/// A torch build: `2.8.0+cu128` reporting CUDA `12.8` and `arch_list`.
pub fn torch(version: &str, cuda_version: &str, arch_list: &[String], python_tag: &str) -> WheelBuilder {
    let arch_list = python_list(arch_list);
    let init = format!(
        r#""""Stand-in torch {version} (comfyfleet tests): versions and CUDA facts only."""
import os as _os
import sys as _sys

__version__ = "{version}"

_import_log = _os.environ.get("{IMPORT_LOG_VARIABLE}")
if _import_log:
    with open(_import_log, "a") as _log:
        _log.write(f"{{_os.getpid()}} {{_sys.executable}} {{' '.join(_sys.argv)}}\n")

from . import version  # noqa: E402
from . import cuda  # noqa: E402
"#
    );
    let version_py = format!(
        "__version__ = \"{version}\"\ncuda = \"{cuda_version}\"\ngit_version = \"comfyfleet-standin\"\n"
    );
    let cuda_init = format!(
        r#"import os as _os

_ARCH_LIST = {arch_list}


def is_available():
    return True


def device_count():
    return int(_os.environ.get("{DEVICE_COUNT_VARIABLE}", "1"))


def get_arch_list():
    return list(_ARCH_LIST)


def get_device_name(device=None):
    return "Stand-in GPU"
"#
    );
    WheelBuilder::new("torch", version)
        .tags(python_tag, python_tag, "linux_x86_64")
        .file("torch/__init__.py", &init)
        .file("torch/version.py", &version_py)
        .file("torch/cuda/__init__.py", &cuda_init)
}

/// torchvision or torchaudio, pinned to its torch release like the real ones.
pub fn torch_companion(name: &str, version: &str, torch_release: &str, python_tag: &str) -> WheelBuilder {
    WheelBuilder::new(name, version)
        .tags(python_tag, python_tag, "linux_x86_64")
        .file(&format!("{name}/__init__.py"), &format!("__version__ = \"{version}\"\n"))
        .requires(&format!("torch=={torch_release}"))
}

/// A CPU torch from the default index that must never be installed: it ships
/// `torch/__init__.py`, so installing it would visibly replace the CUDA build.
pub fn torch_decoy(name: &str, version: &str) -> WheelBuilder {
    WheelBuilder::new(name, version).file(
        "torch/__init__.py",
        &format!("\"\"\"Decoy {name} {version}: a CPU build that must not replace the CUDA one.\"\"\"\n__version__ = \"{version}\"\n"),
    )
}

/// A pure-Python package with one module named after it (`comfyui-frontend-package`
/// → `comfyui_frontend_package`) holding `__version__`.
pub fn plain_module(name: &str, version: &str) -> WheelBuilder {
    let module = normalized_distribution(name);
    WheelBuilder::new(name, version)
        .file(&format!("{module}/__init__.py"), &format!("__version__ = \"{version}\"\n"))
}

/// What one kernel wheel was compiled for.
#[derive(Debug, Clone, Copy)]
pub struct KernelTarget<'a> {
    pub sm: &'a str,
    pub compute: &'a str,
    pub cuda: &'a str,
    pub torch_series: &'a str,
    pub python_tag: &'a str,
}

/// A kernel wheel such as `sageattention-2.2.0+cu128torch2.8-cp311-cp311-linux_x86_64.whl`
/// whose module says what it was built for in `BUILT_FOR` (SM, CUDA build, torch
/// series) and `COMPUTE` (the range of GPUs it has kernels for).
pub fn kernel(distribution: &str, module: &str, release: &str, target: KernelTarget<'_>) -> WheelBuilder {
    let KernelTarget { sm, compute, cuda, torch_series, python_tag } = target;
    let version = format!("{release}+{cuda}torch{torch_series}");
    let init = format!(
        "__version__ = \"{release}\"\nBUILT_FOR = {{\"sm\": \"{sm}\", \"cuda\": \"{cuda}\", \"torch\": \"{torch_series}\"}}\n\
         COMPUTE = \"{compute}\"\n"
    );
    WheelBuilder::new(distribution, &version)
        .tags(python_tag, python_tag, "linux_x86_64")
        .file(&format!("{module}/__init__.py"), &init)
}

fn python_list(items: &[String]) -> String {
    let quoted: Vec<String> = items.iter().map(|item| format!("\"{item}\"")).collect();
    format!("[{}]", quoted.join(", "))
}
