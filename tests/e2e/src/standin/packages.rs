//! What the stand-in packages contain: just enough Python for an agent's verify step
//! and ComfyUI's start to see the real names, versions, CUDA tags and
//! architecture lists.

use super::wheel::{WheelBuilder, normalized_distribution};

/// Set to a file path, every `import torch` appends `<pid> <executable> <argv>` to it,
/// so a test can prove that no Python process ran.
pub const IMPORT_LOG_VARIABLE: &str = "COMFYFLEET_STANDIN_IMPORT_LOG";

/// Set to a number, `torch.cuda.device_count()` returns it (default 1).
pub const DEVICE_COUNT_VARIABLE: &str = "COMFYFLEET_STANDIN_DEVICE_COUNT";

/// Names the fake NVML library's machine profile (`COMFYFLEET_FAKE_NVML_PROFILE`):
/// the stand-in torch reads the same file, so `torch.cuda` sees the GPUs NVML
/// reports (their number, names and SMs). An agent passes it on with `--pass-env`.
pub const GPU_PROFILE_VARIABLE: &str = "COMFYFLEET_FAKE_NVML_PROFILE";

/// A torch build: `2.8.0+cu128` reporting CUDA `12.8` and `arch_list`. Its
/// `torch.cuda` sees the machine profile's GPUs, and putting a tensor on a GPU whose
/// SM the build has no code for raises "no kernel image is available", as real
/// torch does.
pub fn torch(version: &str, cuda_version: &str, arch_list: &[String], python_tag: &str) -> WheelBuilder {
    let arch_list = python_list(arch_list);
    let init = format!(
        r#""""Stand-in torch {version} (comfyfleet tests): versions, CUDA facts and tiny tensors."""
import os as _os
import sys as _sys

__version__ = "{version}"

_import_log = _os.environ.get("{IMPORT_LOG_VARIABLE}")
if _import_log:
    with open(_import_log, "a") as _log:
        _log.write(f"{{_os.getpid()}} {{_sys.executable}} {{' '.join(_sys.argv)}}\n")

from . import version  # noqa: E402
from . import cuda  # noqa: E402
from . import nn  # noqa: E402

float16 = "float16"
float32 = "float32"
bfloat16 = "bfloat16"


class device:
    def __init__(self, kind, index=None):
        if isinstance(kind, device):
            kind, index = kind.type, kind.index
        if isinstance(kind, str) and ":" in kind:
            kind, index = kind.split(":", 1)
            index = int(index)
        self.type = kind
        self.index = index

    def __repr__(self):
        return f"device(type='{{self.type}}', index={{self.index}})"


class Size(tuple):
    pass


class Tensor:
    def __init__(self, shape, dtype, where):
        self.shape = Size(shape)
        self.dtype = dtype
        self.device = where

    def all(self):
        return True

    def __bool__(self):
        return True


def _place(shape, dtype, where):
    where = device(where) if where is not None else device("cpu")
    if where.type == "cuda":
        cuda._check_kernels(0 if where.index is None else where.index)
    return Tensor(shape, dtype or float32, where)


def randn(*shape, dtype=None, device=None):
    if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
        shape = tuple(shape[0])
    return _place(shape, dtype, device)


def empty_like(tensor):
    return Tensor(tensor.shape, tensor.dtype, tensor.device)


def isfinite(tensor):
    return Tensor(tensor.shape, "bool", tensor.device)
"#
    );
    let version_py = format!(
        "__version__ = \"{version}\"\ncuda = \"{cuda_version}\"\ngit_version = \"comfyfleet-standin\"\n"
    );
    let cuda_init = format!(
        r#"import json as _json
import os as _os

_ARCH_LIST = {arch_list}


def _gpus():
    """(name, (major, minor)) of each GPU of the fake NVML profile, if there is one."""
    path = _os.environ.get("{GPU_PROFILE_VARIABLE}")
    if not path:
        return None
    try:
        with open(path) as file:
            profile = _json.load(file)
    except (OSError, ValueError):
        return None
    if profile.get("driver_version") is None:
        return []
    gpus = []
    for group in profile.get("gpus", []):
        for _ in range(int(group.get("count", 1))):
            gpus.append((group["name"], tuple(group["compute_capability"])))
    return gpus


def is_available():
    return device_count() > 0


def device_count():
    gpus = _gpus()
    if gpus is not None:
        return len(gpus)
    return int(_os.environ.get("{DEVICE_COUNT_VARIABLE}", "1"))


def get_arch_list():
    return list(_ARCH_LIST)


def _capability(index):
    gpus = _gpus()
    if gpus is None:
        return (8, 9)
    if not 0 <= index < len(gpus):
        raise RuntimeError(f"CUDA error: invalid device ordinal {{index}}")
    return gpus[index][1]


def get_device_capability(device=None):
    return _capability(_index(device))


def get_device_name(device=None):
    gpus = _gpus()
    index = _index(device)
    return gpus[index][0] if gpus else "Stand-in GPU"


def _index(device):
    if device is None:
        return 0
    if isinstance(device, int):
        return device
    return getattr(device, "index", None) or 0


def _check_kernels(index):
    major, minor = _capability(index)
    for entry in _ARCH_LIST:
        kind, digits = entry.split("_", 1)
        sm_major, sm_minor = int(digits[:-1]), int(digits[-1])
        if kind == "sm" and sm_major == major and sm_minor <= minor:
            return
        if kind == "compute" and (sm_major, sm_minor) <= (major, minor):
            return
    raise RuntimeError("CUDA error: no kernel image is available for execution on the device")


def set_device(device):
    _capability(_index(device))


def current_device():
    return 0


def synchronize(device=None):
    pass
"#
    );
    let nn_init = "from . import functional  # noqa: F401\n";
    let functional = "def scaled_dot_product_attention(q, k, v, **kwargs):\n    import torch\n    return torch.empty_like(q)\n";
    WheelBuilder::new("torch", version)
        .tags(python_tag, python_tag, "linux_x86_64")
        .file("torch/__init__.py", &init)
        .file("torch/version.py", &version_py)
        .file("torch/cuda/__init__.py", &cuda_init)
        .file("torch/nn/__init__.py", nn_init)
        .file("torch/nn/functional.py", functional)
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
    /// The SM it names in `BUILT_FOR` (the lowest it has kernels for).
    pub sm: &'a str,
    /// What a spec says it covers (`>=8.9,<9.0`, `[8.0, 8.6, 12.0]`).
    pub compute: &'a str,
    /// What it really has kernels for: `[low, high)` ordinals (major*100 + minor).
    /// Usually the spec's `compute`; a mislabelled wheel has fewer.
    pub kernels: &'a [(u32, u32)],
    pub cuda: &'a str,
    pub torch_series: &'a str,
    /// The local version after the CUDA tag: `torch2.8`, `torch2.9.0andhigher.post4`.
    pub torch_label: &'a str,
    /// `(python, abi)` tags: `("cp311", "cp311")` or `("cp39", "abi3")`.
    pub tags: (&'a str, &'a str),
}

/// A kernel wheel such as `sageattention-2.2.0+cu128torch2.8-cp311-cp311-linux_x86_64.whl`
/// whose module says what it was built for in `BUILT_FOR` (SM, CUDA build, torch
/// series) and `COMPUTE`, and whose `function(q, k, v)` (the smoke call a spec
/// names, e.g. `sageattn`) runs on a GPU whose SM it has kernels for and raises
/// "no kernel image is available" on any other, like a real kernel launch.
pub fn kernel(
    distribution: &str,
    module: &str,
    function: &str,
    release: &str,
    target: KernelTarget<'_>,
) -> WheelBuilder {
    let KernelTarget { sm, compute, kernels, cuda, torch_series, torch_label, tags } = target;
    let version = format!("{release}+{cuda}{torch_label}");
    let kernels: Vec<String> = kernels.iter().map(|(low, high)| format!("({low}, {high})")).collect();
    let init = format!(
        r#""""Stand-in {distribution} {version} (comfyfleet tests)."""
__version__ = "{release}"
BUILT_FOR = {{"sm": "{sm}", "cuda": "{cuda}", "torch": "{torch_series}"}}
COMPUTE = {compute_literal}
_KERNELS = [{kernels}]


def {function}(q, k, v, tensor_layout="HND", is_causal=False, **kwargs):
    import torch

    index = q.device.index or 0
    major, minor = torch.cuda.get_device_capability(index)
    sm = major * 100 + minor
    if not any(low <= sm < high for low, high in _KERNELS):
        raise RuntimeError(
            "CUDA error: no kernel image is available for execution on the device "
            f"({distribution} has no kernels for SM {{major}}.{{minor}})"
        )
    return torch.empty_like(q)
"#,
        kernels = kernels.join(", "),
        compute_literal = serde_json::to_string(compute).unwrap_or_default(),
    );
    WheelBuilder::new(distribution, &version)
        .tags(tags.0, tags.1, "linux_x86_64")
        .file(&format!("{module}/__init__.py"), &init)
}

fn python_list(items: &[String]) -> String {
    let quoted: Vec<String> = items.iter().map(|item| format!("\"{item}\"")).collect();
    format!("[{}]", quoted.join(", "))
}
