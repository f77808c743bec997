//! What the resolver decides for one machine: the exact builds and wheels
//! ([`MachinePlan`]), or why the machine cannot run the spec.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::spec::{CudaTag, DriverCompat, PythonVersion, SmokeCall};

/// Everything machine-specific an agent needs to build the environment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MachinePlan {
    pub python: PythonVersion,
    /// The target venv's wheel tag (`cp312`), which kernel wheels were matched against.
    pub python_tag: String,
    pub cuda_tag: CudaTag,
    /// With its local tag: `2.8.0+cu128`.
    pub torch: String,
    /// The index torch and its companions come from.
    pub torch_index: String,
    /// torch and its companions, pinned exactly.
    pub packages: Vec<PinnedPackage>,
    pub optimizations: Vec<PlannedOptimization>,
    /// Optimisations left out on this machine, and why.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub skipped: Vec<SkippedOptimization>,
    /// ComfyUI arguments: always passed.
    pub comfyui_args: Vec<String>,
    /// ComfyUI arguments passed only when that optimisation verified on the machine.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub comfyui_args_when_verified: BTreeMap<String, Vec<String>>,
    /// `minor` when the machine's driver is older than the build's CUDA version and
    /// the build runs only through NVIDIA's minor-version compatibility.
    #[serde(default, skip_serializing_if = "DriverCompat::is_exact")]
    pub driver_compat: DriverCompat,
    /// The machine's `uname -m`.
    #[serde(default = "default_platform")]
    pub platform: String,
    /// The `[[model]]` files this machine gets (their targets match it), in spec order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub models: Vec<PlannedModel>,
}

/// One model file a machine gets: where ComfyUI finds it and the bytes it must be.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlannedModel {
    /// `<folder>/<name>` below `shared/models/`.
    pub path: String,
    pub url: String,
    pub sha256: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub keep: bool,
}

fn default_platform() -> String {
    super::DEFAULT_PLATFORM.to_owned()
}

impl MachinePlan {
    /// The build class whose lock this plan installs: `cp312-cu128-linux_x86_64`.
    pub fn class(&self) -> String {
        crate::build_class::class_name(&self.python_tag, &self.cuda_tag.to_string(), &self.platform)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PinnedPackage {
    pub name: String,
    pub version: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlannedOptimization {
    pub name: String,
    /// The exact version of a wheel, or the specifier for an index package.
    pub version: String,
    pub fatal: bool,
    /// The module the verify step imports.
    pub import: String,
    pub source: OptimizationSource,
    /// The call the verify step makes on every GPU.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub smoke: Option<SmokeCall>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OptimizationSource {
    /// A prebuilt wheel, checked against its sha256 before installing.
    Wheel { url: String, sha256: String, filename: String },
    /// A requirement resolved from the package index (`triton>=3.4,<3.5`).
    Index { url: String, requirement: String },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SkippedOptimization {
    pub name: String,
    pub reason: String,
}

/// Why no plan exists: one line per CUDA build tried, with the machine fact that
/// rules it out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Incompatibility {
    pub reasons: Vec<String>,
}

impl Incompatibility {
    pub fn new(reason: impl Into<String>) -> Self {
        Self { reasons: vec![reason.into()] }
    }

    pub fn summary(&self) -> String {
        self.reasons.join("; ")
    }
}

/// The outcome for one machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolution {
    Planned(Box<MachinePlan>),
    Incompatible(Incompatibility),
    /// The spec's selector leaves this machine out.
    NotTargeted,
}

impl Resolution {
    /// `ok`, `incompatible` or `not-targeted`: the `status` field of `comfyfleet plan`.
    pub fn status(&self) -> &'static str {
        match self {
            Resolution::Planned(_) => "ok",
            Resolution::Incompatible(_) => "incompatible",
            Resolution::NotTargeted => "not-targeted",
        }
    }

    pub fn plan(&self) -> Option<&MachinePlan> {
        match self {
            Resolution::Planned(plan) => Some(plan),
            _ => None,
        }
    }
}
