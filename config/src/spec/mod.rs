//! The environment spec: what an operator wants a ComfyUI environment to be. Parsed
//! from TOML (or JSON) in [`source`], checked across fields in [`validate`] (against
//! the torch build facts of [`catalog`], which a spec may extend), canonicalised and
//! hashed in [`canonical`]. The field names here are the file format; the README's
//! "Environment specs" section documents it.

pub mod bounds;
pub mod canonical;
pub mod catalog;
pub mod compute_set;
pub mod credentials;
pub mod driver;
pub mod instances;
pub mod kernel;
pub mod model;
pub mod names;
pub mod selector;
pub mod source;
mod validate;
pub mod values;
pub mod wheel;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub use compute_set::ComputeSet;
pub use kernel::{SmokeCall, SmokeInputs, TorchMatch, WheelPython};
pub use model::Model;
pub use selector::Selector;
pub use source::{SpecError, SpecErrors, SpecFormat};
pub use values::{
    Amount, CudaTag, DriverCompat, HumanDuration, ManagerMode, PythonVersion, ReleaseVersion, Requirement,
    Sha256Hex, Specifiers, TorchSeries,
};

pub use crate::spec_digest::SpecDigest;
use catalog::TorchRelease;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Spec {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    pub python: PythonVersion,
    pub comfyui: GitSource,
    pub torch: TorchSpec,
    #[serde(default)]
    pub index: PackageIndex,
    #[serde(default, rename = "optimization")]
    pub optimizations: Vec<Optimization>,
    #[serde(default, rename = "custom_node")]
    pub custom_nodes: Vec<CustomNode>,
    #[serde(default)]
    pub run: RunSpec,
    #[serde(default)]
    pub target: TargetSpec,
    #[serde(default)]
    pub rollout: RolloutPolicy,
    #[serde(default, skip_serializing_if = "LockSpec::is_empty")]
    pub lock: LockSpec,
    /// The model files the environment needs, pinned by sha256. Left out of the
    /// canonical form when there are none, so earlier revisions keep their ids.
    #[serde(default, rename = "model", skip_serializing_if = "Vec::is_empty")]
    pub models: Vec<Model>,
}

/// The build classes locked with every revision (`classes`, besides those the
/// targeted fleet needs), and the locks apply made (`digests`: class → the lock's
/// digest; apply always rewrites it, like a git source's `commit`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockSpec {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub classes: Vec<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub digests: BTreeMap<String, String>,
}

impl LockSpec {
    pub fn is_empty(&self) -> bool {
        self.classes.is_empty() && self.digests.is_empty()
    }
}

/// A git repository at a ref; `commit` is filled in when the spec is applied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GitSource {
    pub git: String,
    #[serde(rename = "ref")]
    pub reference: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,
    /// The controller's stored credential (`comfyfleet secrets set NAME`) for this
    /// URL's host; a URL never carries one itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TorchSpec {
    pub version: ReleaseVersion,
    /// Companion packages released in lockstep with torch (`torchvision`, `torchaudio`).
    #[serde(default, rename = "with")]
    pub companions: Vec<String>,
    /// CUDA builds allowed, most preferred first.
    pub cuda: Vec<CudaTag>,
    /// Index URL pattern; `{cuda}` is replaced by the chosen tag.
    #[serde(default = "default_torch_index")]
    pub index: String,
    /// An index for one CUDA build that does not follow the pattern (a mirror that
    /// lays builds out its own way): `{ cu130 = "https://mirror/torch-cu130/simple" }`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub indexes: BTreeMap<CudaTag, String>,
    /// Build facts for torch releases comfyfleet does not know yet (or corrections).
    #[serde(default, rename = "release", skip_serializing_if = "Vec::is_empty")]
    pub releases: Vec<TorchRelease>,
    /// Which drivers may run a CUDA build: `exact` (the driver supports the build's
    /// CUDA version) or `minor` (NVIDIA's minor-version compatibility: any driver of
    /// the build's CUDA major at or above that major's floor, cubins only).
    #[serde(default, skip_serializing_if = "DriverCompat::is_exact")]
    pub driver_compat: DriverCompat,
    /// The stored credential for the torch indexes' hosts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
}

impl TorchSpec {
    /// Where the `tag` build of torch and its companions come from.
    pub fn index_for(&self, tag: CudaTag) -> String {
        self.indexes.get(&tag).cloned().unwrap_or_else(|| self.index.replace("{cuda}", &tag.to_string()))
    }
}

fn default_torch_index() -> String {
    "https://download.pytorch.org/whl/{cuda}".to_owned()
}

/// Where everything that is not torch comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PackageIndex {
    #[serde(default = "default_index")]
    pub url: String,
    #[serde(default)]
    pub extra: Vec<String>,
    /// Hosts that may be reached over plain http (a farm's own mirror).
    #[serde(default)]
    pub trusted_hosts: Vec<String>,
    /// The stored credential for `url` and `extra` (`comfyfleet secrets set NAME`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
}

fn default_index() -> String {
    "https://pypi.org/simple".to_owned()
}

impl Default for PackageIndex {
    fn default() -> Self {
        Self { url: default_index(), extra: Vec::new(), trusted_hosts: Vec::new(), credential: None }
    }
}

/// An optional speed-up: a PyPI package (`package`) or prebuilt kernel wheels (`wheel`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Optimization {
    pub name: String,
    #[serde(default)]
    pub requires: Vec<Requirement>,
    /// A fatal optimisation that cannot be planned or verified fails the machine.
    #[serde(default)]
    pub fatal: bool,
    /// The module the verify step imports; defaults to the name with `-` as `_`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub import: Option<String>,
    /// From the package index: the distribution name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub package: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<Specifiers>,
    /// torch series → the versions of `package` built against it.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub torch_constraints: BTreeMap<TorchSeries, Specifiers>,
    /// Prebuilt wheels, chosen per machine.
    #[serde(default, rename = "wheel", skip_serializing_if = "Vec::is_empty")]
    pub wheels: Vec<KernelWheel>,
    /// The call the verify step makes on every GPU to prove the kernels run
    /// (required for prebuilt wheels: importing a module proves nothing about kernels).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub smoke: Option<SmokeCall>,
}

impl Optimization {
    pub fn import_name(&self) -> String {
        self.import.clone().unwrap_or_else(|| self.name.replace('-', "_"))
    }
}

/// A prebuilt wheel and the machines it is for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KernelWheel {
    /// GPUs the wheel has kernels for; every GPU of a machine must be in it.
    pub compute: ComputeSet,
    /// The CPython it serves: `cp312`, or `cp39-abi3` (a stable-ABI wheel: 3.9 and later).
    pub python: WheelPython,
    pub cuda: CudaTag,
    /// The torch series it was built against (`2.8`), or a range (`>=2.9`) for a
    /// wheel on torch's stable ABI.
    pub torch: TorchMatch,
    pub url: String,
    pub sha256: Option<Sha256Hex>,
    /// The controller's stored credential (`comfyfleet secrets set NAME`) for this
    /// URL's host; a URL never carries one itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CustomNode {
    /// Directory name under `custom_nodes/`; defaults to the repository name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub git: String,
    #[serde(rename = "ref")]
    pub reference: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,
    /// Whether the environment is broken when the node does not import. `false`:
    /// ComfyUI runs without it and the report carries a warning.
    #[serde(default = "default_true", skip_serializing_if = "is_true")]
    pub required: bool,
    /// Run the node's `install.py` once in the new venv (with the build environment,
    /// a deadline, its output in the report). Nothing runs that the spec does not name.
    #[serde(default, skip_serializing_if = "is_false")]
    pub install_script: bool,
    /// Whether the node defines node classes (the default). The health check holds a
    /// node that does against ComfyUI's `/object_info`, which lists every node class
    /// with the custom node it came from; a node pack without any (a web extension,
    /// a server plugin) is `false` and is held against ComfyUI's import list instead.
    /// Left out of the canonical form when `true`, so earlier revisions keep their ids.
    #[serde(default = "default_true", skip_serializing_if = "is_true")]
    pub provides_nodes: bool,
    /// The controller's stored credential (`comfyfleet secrets set NAME`) for this
    /// URL's host; a URL never carries one itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
}

fn is_true(value: &bool) -> bool {
    *value
}

fn is_false(value: &bool) -> bool {
    !*value
}

impl CustomNode {
    pub fn directory_name(&self) -> String {
        self.name.clone().unwrap_or_else(|| names::repository_name(&self.git).to_owned())
    }

    /// Whether this node is ComfyUI-Manager (which `run.manager` governs).
    pub fn is_manager(&self) -> bool {
        self.directory_name().eq_ignore_ascii_case("comfyui-manager")
    }

    /// Whether ComfyUI's `/object_info` must list node classes from this node.
    /// ComfyUI-Manager registers none (`NODE_CLASS_MAPPINGS = {}`): it is held
    /// against ComfyUI's import list whatever `provides_nodes` says.
    pub fn expects_node_classes(&self) -> bool {
        self.provides_nodes && !self.is_manager()
    }

    pub fn source(&self) -> GitSource {
        GitSource {
            git: self.git.clone(),
            reference: self.reference.clone(),
            commit: self.commit.clone(),
            credential: self.credential.clone(),
        }
    }
}

/// How the agent runs ComfyUI.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunSpec {
    #[serde(default = "default_port")]
    pub port: u16,
    #[serde(default)]
    pub args: Vec<String>,
    /// Arguments passed only when the named optimisation verified on the machine.
    #[serde(default)]
    pub when_verified: BTreeMap<String, Vec<String>>,
    /// How long to wait for running renders before switching environments.
    #[serde(default = "default_drain_timeout")]
    pub drain_timeout: HumanDuration,
    /// How long a freshly started ComfyUI has to answer `/system_stats`.
    #[serde(default = "default_health_timeout")]
    pub health_timeout: HumanDuration,
    /// ComfyUI-Manager: `off` (never), `read-only` (browse, install nothing) or `on`
    /// (installs allowed, and shown as drift).
    #[serde(default, skip_serializing_if = "ManagerMode::is_off")]
    pub manager: ManagerMode,
    /// `per-gpu` (one ComfyUI per GPU, the default) or `one` (one that sees them all).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instances: Option<instances::InstancesMode>,
    /// Explicit GPU groups, one ComfyUI each (`[[run.instance]] gpus = [0, 1]`).
    #[serde(default, rename = "instance", skip_serializing_if = "Vec::is_empty")]
    pub instance: Vec<instances::InstanceSpec>,
}

impl RunSpec {
    /// What the agent runs: the mode, or the explicit groups.
    pub fn instances_plan(&self) -> instances::InstancesPlan {
        instances::InstancesPlan {
            mode: self.instances.unwrap_or_default(),
            groups: self.instance.iter().map(|instance| instance.gpus.clone()).collect(),
        }
    }
}

fn default_port() -> u16 {
    8188
}

fn default_drain_timeout() -> HumanDuration {
    HumanDuration(std::time::Duration::from_secs(30 * 60))
}

fn default_health_timeout() -> HumanDuration {
    HumanDuration(std::time::Duration::from_secs(120))
}

impl Default for RunSpec {
    fn default() -> Self {
        Self {
            port: default_port(),
            args: Vec::new(),
            when_verified: BTreeMap::new(),
            drain_timeout: default_drain_timeout(),
            health_timeout: default_health_timeout(),
            manager: ManagerMode::default(),
            instances: None,
            instance: Vec::new(),
        }
    }
}

/// Which machines the environment is for. No selector: every machine.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<Selector>,
}

/// How a rollout of this environment proceeds (carried out by the rollout engine).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RolloutPolicy {
    /// Machines activated first, one phase on their own.
    #[serde(default = "default_canary")]
    pub canary: u32,
    /// Most machines unavailable at once (draining, switching, health-checking).
    #[serde(default = "default_max_unavailable")]
    pub max_unavailable: Amount,
    /// Most machines building their next environment at once.
    #[serde(default = "default_max_parallel_prepare")]
    pub max_parallel_prepare: Amount,
    /// Pause between activation phases.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub soak: Option<HumanDuration>,
    /// Failed machines tolerated before the rollout pauses itself.
    #[serde(default = "default_failure_budget")]
    pub failure_budget: Amount,
    /// Return failed machines to their previous revision.
    #[serde(default = "default_true")]
    pub auto_rollback: bool,
    /// No progress for this long marks a machine or phase stalled.
    #[serde(default = "default_progress_deadline")]
    pub progress_deadline: HumanDuration,
    /// Whether a stalled machine counts against the failure budget.
    #[serde(default = "default_true")]
    pub stalled_is_failure: bool,
}

fn default_canary() -> u32 {
    1
}

fn default_max_unavailable() -> Amount {
    Amount::Percent(10)
}

fn default_max_parallel_prepare() -> Amount {
    Amount::Percent(25)
}

fn default_failure_budget() -> Amount {
    Amount::Count(0)
}

fn default_true() -> bool {
    true
}

fn default_progress_deadline() -> HumanDuration {
    HumanDuration(std::time::Duration::from_secs(30 * 60))
}

impl Default for RolloutPolicy {
    fn default() -> Self {
        Self {
            canary: default_canary(),
            max_unavailable: default_max_unavailable(),
            max_parallel_prepare: default_max_parallel_prepare(),
            soak: None,
            failure_budget: default_failure_budget(),
            auto_rollback: true,
            progress_deadline: default_progress_deadline(),
            stalled_is_failure: true,
        }
    }
}

impl Spec {
    /// The canonical digest of the spec as it stands (with or without pins).
    pub fn digest(&self) -> SpecDigest {
        canonical::digest(self)
    }
}
