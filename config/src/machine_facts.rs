//! What the resolver and the target selector know about a machine. Built from a
//! stored [`MachineRecord`](crate::MachineRecord) (controller, `From` in
//! [`crate::machine`]), or from the JSON of `comfyfleet machines -o json` (CLI), so
//! that planning offline and against the live fleet read the same facts. Below both
//! the spec (whose selectors read them) and the resolver.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::convergence::{ConvergenceReport, OptimizationState, Phase};
use crate::installed::InstalledEnvironments;
use crate::inventory::{ComputeCapability, CudaVersion, Inventory, NvmlStatus};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MachineFacts {
    pub id: String,
    pub hostname: String,
    pub labels: BTreeMap<String, String>,
    /// `None` when the machine has not reported its inventory yet.
    pub os: Option<String>,
    pub arch: Option<String>,
    /// NVML's summary when it could not be used ("no NVIDIA library", …).
    pub nvml_problem: Option<String>,
    pub driver_version: Option<String>,
    pub cuda_driver_version: Option<CudaVersion>,
    pub gpus: Vec<GpuFacts>,
    /// False until the agent has sent an inventory: nothing is known about the hardware.
    pub reported: bool,
    /// What runs on the machine: only `comfyfleet machines --where`, reports and the
    /// web page select on it, never a spec (a plan must not depend on its own outcome).
    #[serde(default)]
    pub software: SoftwareFacts,
}

/// The environment a machine runs now, as its agent reported it: the `env.*`,
/// `phase`, `drift` and `opt.NAME` fields of a query.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SoftwareFacts {
    /// The current environment's name; `None` when nothing is active.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub environment: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<u32>,
    /// e.g. `2.8.0+cu128`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub torch: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub python: Option<String>,
    /// The phase of the agent's latest report; `None` before its first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,
    /// What differs in the current environment from what verification recorded.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub drift: Vec<String>,
    /// Each optimisation's outcome on the current environment (absent: not there).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub optimizations: Vec<OptimizationFact>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OptimizationFact {
    pub name: String,
    pub outcome: OptimizationOutcomeKind,
    /// Why it failed or was skipped.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub detail: String,
}

/// What `opt.NAME` compares: an optimisation on the current environment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OptimizationOutcomeKind {
    Verified,
    Failed,
    Skipped,
    /// Still being built or checked.
    Pending,
    /// Not part of the current environment (or nothing is active).
    Absent,
}

impl OptimizationOutcomeKind {
    pub const ALL: [OptimizationOutcomeKind; 5] = [
        OptimizationOutcomeKind::Verified,
        OptimizationOutcomeKind::Failed,
        OptimizationOutcomeKind::Skipped,
        OptimizationOutcomeKind::Pending,
        OptimizationOutcomeKind::Absent,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            OptimizationOutcomeKind::Verified => "verified",
            OptimizationOutcomeKind::Failed => "failed",
            OptimizationOutcomeKind::Skipped => "skipped",
            OptimizationOutcomeKind::Pending => "pending",
            OptimizationOutcomeKind::Absent => "absent",
        }
    }

    pub fn named(word: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|kind| kind.as_str() == word)
    }
}

impl From<OptimizationState> for OptimizationOutcomeKind {
    fn from(state: OptimizationState) -> Self {
        match state {
            OptimizationState::Verified => OptimizationOutcomeKind::Verified,
            OptimizationState::Failed => OptimizationOutcomeKind::Failed,
            OptimizationState::Skipped => OptimizationOutcomeKind::Skipped,
            OptimizationState::Pending => OptimizationOutcomeKind::Pending,
        }
    }
}

impl SoftwareFacts {
    /// From the environments the agent found on disk and its latest report. The
    /// current environment is the one `current` points at; its optimisations' outcomes
    /// come from the report when the report is about that revision (it also names
    /// those the plan skipped), else from what verification recorded.
    pub fn new(environments: Option<&InstalledEnvironments>, report: Option<&ConvergenceReport>) -> Self {
        let current = environments
            .and_then(|environments| environments.installed.iter().find(|environment| environment.current));
        let Some(current) = current else {
            return SoftwareFacts { phase: report.map(|report| report.phase), ..SoftwareFacts::default() };
        };
        let report_is_current =
            report.filter(|report| report.revision_id.as_ref() == Some(&current.revision_id));
        let optimizations = match report_is_current {
            Some(report) => report
                .optimizations
                .iter()
                .map(|outcome| OptimizationFact {
                    name: outcome.name.clone(),
                    outcome: outcome.state.into(),
                    detail: outcome.detail.clone(),
                })
                .collect(),
            None => current
                .optimizations
                .iter()
                .map(|package| OptimizationFact {
                    name: package.name.clone(),
                    outcome: if package.verified {
                        OptimizationOutcomeKind::Verified
                    } else {
                        OptimizationOutcomeKind::Failed
                    },
                    detail: package.detail.clone(),
                })
                .collect(),
        };
        SoftwareFacts {
            environment: Some(current.environment.clone()),
            revision: Some(current.revision_number),
            torch: Some(current.torch_version.clone()).filter(|torch| !torch.is_empty()),
            python: Some(current.python_version.clone()).filter(|python| !python.is_empty()),
            phase: report.map(|report| report.phase),
            drift: current.drift.clone(),
            optimizations,
        }
    }

    /// The CUDA build of the current torch: `cu128` of `2.8.0+cu128`, `cpu` of `2.8.0+cpu`.
    pub fn cuda(&self) -> Option<&str> {
        self.torch.as_deref().and_then(|torch| torch.split_once('+')).map(|(_, local)| local)
    }

    pub fn optimization(&self, name: &str) -> OptimizationOutcomeKind {
        self.optimizations
            .iter()
            .find(|fact| fact.name == name)
            .map_or(OptimizationOutcomeKind::Absent, |fact| fact.outcome)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GpuFacts {
    pub index: u32,
    pub name: Option<String>,
    pub compute_capability: Option<ComputeCapability>,
    pub memory_total_bytes: Option<u64>,
}

impl GpuFacts {
    /// "GPU 1 (NVIDIA RTX A6000)" — how reasons name a GPU.
    pub fn describe(&self) -> String {
        match &self.name {
            Some(name) => format!("GPU {} ({name})", self.index),
            None => format!("GPU {}", self.index),
        }
    }
}

impl MachineFacts {
    /// The facts in an inventory (`None`: the machine has not reported one yet).
    pub fn new(
        id: String,
        hostname: String,
        labels: BTreeMap<String, String>,
        inventory: Option<&Inventory>,
    ) -> Self {
        let nvidia = inventory.map(|inventory| &inventory.nvidia);
        MachineFacts {
            id,
            hostname,
            labels,
            os: inventory.map(|inventory| inventory.host.os.clone()),
            arch: inventory.map(|inventory| inventory.host.arch.clone()),
            nvml_problem: nvidia.and_then(|nvidia| match &nvidia.status {
                NvmlStatus::Ok => None,
                other => Some(other.summary().to_owned()),
            }),
            driver_version: nvidia.and_then(|nvidia| nvidia.driver_version.clone()),
            cuda_driver_version: nvidia.and_then(|nvidia| nvidia.cuda_driver_version),
            gpus: nvidia
                .map(|nvidia| {
                    nvidia
                        .gpus
                        .iter()
                        .map(|gpu| GpuFacts {
                            index: gpu.index,
                            name: gpu.name.clone(),
                            compute_capability: gpu.compute_capability,
                            memory_total_bytes: gpu.memory_total_bytes,
                        })
                        .collect()
                })
                .unwrap_or_default(),
            reported: inventory.is_some(),
            software: SoftwareFacts::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn installed(current: bool, verified: bool) -> InstalledEnvironments {
        serde_json::from_value(json!({
            "current": if current { Some("c".repeat(64)) } else { None },
            "installed": [{
                "revision_id": "c".repeat(64), "environment": "render-prod", "revision_number": 2,
                "current": current, "python_version": "3.12.7", "torch_version": "2.8.0+cu128",
                "comfyui_commit": "a".repeat(40),
                "optimizations": [{"name": "sageattention", "version": "2.2.0", "verified": verified}],
                "drift": ["package numpy is 2.2.0, verified 2.1.3"],
            }],
        }))
        .unwrap()
    }

    fn report(revision: char, phase: &str) -> ConvergenceReport {
        serde_json::from_value(json!({
            "generation": 3, "environment": "render-prod", "revision_number": 2,
            "revision_id": revision.to_string().repeat(64), "phase": phase,
            "optimizations": [
                {"name": "sageattention", "fatal": false, "state": "verified"},
                {"name": "xformers", "fatal": false, "state": "skipped", "detail": "no wheel"},
            ],
            "updated_at": "2026-12-07T00:00:00Z",
        }))
        .unwrap()
    }

    #[test]
    fn software_facts_describe_the_current_environment() {
        // The report is about the current revision: it also names what was skipped.
        let facts = SoftwareFacts::new(Some(&installed(true, true)), Some(&report('c', "active")));
        assert_eq!(facts.environment.as_deref(), Some("render-prod"));
        assert_eq!((facts.revision, facts.cuda()), (Some(2), Some("cu128")));
        assert_eq!(facts.phase, Some(Phase::Active));
        assert_eq!(facts.optimization("xformers"), OptimizationOutcomeKind::Skipped);
        assert_eq!(facts.optimization("flash-attn"), OptimizationOutcomeKind::Absent);
        assert_eq!(facts.drift.len(), 1);
        // A report on another revision (a build that failed): outcomes come from what
        // verification recorded on the current one, the phase from the report.
        let facts = SoftwareFacts::new(Some(&installed(true, false)), Some(&report('d', "failed")));
        assert_eq!(facts.optimization("sageattention"), OptimizationOutcomeKind::Failed);
        assert_eq!(facts.optimization("xformers"), OptimizationOutcomeKind::Absent);
        assert_eq!(facts.phase, Some(Phase::Failed));
        // Nothing current: only the phase.
        let facts = SoftwareFacts::new(Some(&installed(false, true)), Some(&report('c', "preparing")));
        assert_eq!((facts.environment.as_deref(), facts.phase), (None, Some(Phase::Preparing)));
        assert_eq!(facts.optimization("sageattention"), OptimizationOutcomeKind::Absent);
    }
}
