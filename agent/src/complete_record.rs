//! `envs/<revision>/.complete`: written last, after verification, it is what makes an
//! environment complete, and it records what verification found (the torch build,
//! each optimisation's outcome, every step's timing), what ComfyUI runs with, and
//! the plan it was built from.

use std::collections::BTreeMap;
use std::path::Path;

use comfyfleet_config::convergence::{OptimizationOutcome, OptimizationState, StepReport};
use comfyfleet_config::installed::InstalledNode;
use comfyfleet_config::spec::instances::InstancesPlan;
use comfyfleet_config::spec::names::normalize_package_name;
use comfyfleet_config::spec::{ManagerMode, SpecDigest};
use comfyfleet_config::{Assignment, MachinePlan};
use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::comfyui::ComfyuiFacts;
use crate::layout::EnvDir;

/// What the environment's own Python said about torch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TorchFacts {
    pub version: String,
    pub cuda: Option<String>,
    pub arch_list: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CompleteRecord {
    pub revision_id: SpecDigest,
    pub environment: String,
    pub revision_number: u32,
    pub plan: MachinePlan,
    pub comfyui_commit: String,
    pub custom_nodes: Vec<InstalledNode>,
    pub python_version: String,
    pub torch: TorchFacts,
    pub optimizations: Vec<OptimizationOutcome>,
    /// Optimisation name → its distribution (`sageattention3` → `sageattn3`).
    pub distributions: BTreeMap<String, String>,
    pub steps: Vec<StepReport>,
    /// ComfyUI's arguments: the plan's, plus those of every optimisation that verified.
    pub comfyui_args: Vec<String>,
    pub port: u16,
    pub drain_timeout_ms: u64,
    pub health_timeout_ms: u64,
    pub completed_at: Timestamp,
    /// What the checked-out ComfyUI supports (its options, its database migrations).
    #[serde(default)]
    pub comfyui: ComfyuiFacts,
    /// Custom nodes whose failure to import is a warning, not a failed switch.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub optional_nodes: Vec<String>,
    /// Custom nodes that register no node classes (`provides_nodes = false`,
    /// ComfyUI-Manager): held against ComfyUI's import list, not its `/object_info`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nodes_without_classes: Vec<String>,
    #[serde(default)]
    pub manager: ManagerMode,
    /// Every distribution in the venv when it was verified (normalised name → version):
    /// what the inventory holds the venv against (`None` in records of older agents).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub packages: Option<BTreeMap<String, String>>,
    /// The entries of `ComfyUI/custom_nodes/` when it was verified.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub custom_node_entries: Option<Vec<String>>,
    /// How many ComfyUIs run, on which GPUs (`run.instances`, `[[run.instance]]`).
    #[serde(default, skip_serializing_if = "InstancesPlan::is_default")]
    pub instances: InstancesPlan,
}

impl CompleteRecord {
    pub fn load(env: &EnvDir) -> Option<CompleteRecord> {
        let text = std::fs::read(env.complete_marker()).ok()?;
        match serde_json::from_slice(&text) {
            Ok(record) => Some(record),
            Err(error) => {
                tracing::warn!(path = %env.complete_marker().display(), %error, "unreadable completion record; the environment will be rebuilt");
                None
            }
        }
    }

    /// Whether this environment is what `assignment` asks for on this machine.
    pub fn matches(&self, assignment: &Assignment) -> bool {
        self.revision_id == assignment.revision_id && self.plan == assignment.plan
    }

    pub fn save(&self, env: &EnvDir) -> std::io::Result<()> {
        let json = serde_json::to_vec_pretty(self).unwrap_or_default();
        comfyfleet_daemon::files::write_atomic(&env.complete_marker(), &json, 0o644)
    }

    pub fn verified(&self, name: &str) -> bool {
        self.optimizations
            .iter()
            .any(|outcome| outcome.name == name && outcome.state == OptimizationState::Verified)
    }

    /// `render-prod@3 (1a2b3c4d5e6f)`.
    pub fn describe(&self) -> String {
        format!("{}@{} ({})", self.environment, self.revision_number, self.revision_id.short())
    }
}

/// Reads the commit a checkout is at from `.git/HEAD` (no git process: the
/// inventory reads this every interval).
pub fn head_commit(repository: &Path) -> Option<String> {
    let head = std::fs::read_to_string(repository.join(".git/HEAD")).ok()?;
    let head = head.trim();
    if let Some(reference) = head.strip_prefix("ref: ") {
        let commit = std::fs::read_to_string(repository.join(".git").join(reference)).ok()?;
        return Some(commit.trim().to_owned());
    }
    Some(head.to_owned())
}

/// Installed distributions of a venv, normalised name → version, from the names of
/// its `*.dist-info` directories.
pub fn installed_distributions(venv: &Path) -> BTreeMap<String, String> {
    let mut found = BTreeMap::new();
    let Ok(lib) = std::fs::read_dir(venv.join("lib")) else { return found };
    for python in lib.flatten() {
        let Ok(entries) = std::fs::read_dir(python.path().join("site-packages")) else { continue };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(stem) = name.to_str().and_then(|name| name.strip_suffix(".dist-info")) else { continue };
            if let Some((distribution, version)) = stem.split_once('-') {
                found.insert(normalize_package_name(distribution), version.to_owned());
            }
        }
    }
    found
}

/// The entries of a checkout's `custom_nodes/` directory (node directories and
/// single-file nodes), sorted; `__pycache__` left out.
pub fn custom_node_entries(comfyui: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(comfyui.join("custom_nodes")) else { return Vec::new() };
    let mut names: Vec<String> = entries
        .flatten()
        .filter_map(|entry| entry.file_name().into_string().ok())
        .filter(|name| name != "__pycache__")
        .collect();
    names.sort();
    names
}

/// `version_info` (uv) or `version` (venv) from `venv/pyvenv.cfg`.
pub fn venv_python_version(venv: &Path) -> Option<String> {
    let config = std::fs::read_to_string(venv.join("pyvenv.cfg")).ok()?;
    let value = |key: &str| {
        config.lines().find_map(|line| {
            let (name, value) = line.split_once('=')?;
            (name.trim() == key).then(|| value.trim().to_owned())
        })
    };
    value("version_info").or_else(|| value("version"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn venvs_are_read_from_their_files() {
        let dir = tempfile::tempdir().unwrap();
        let site = dir.path().join("lib/python3.12/site-packages");
        std::fs::create_dir_all(site.join("torch-2.8.0+cu128.dist-info")).unwrap();
        std::fs::create_dir_all(site.join("sageattention-2.2.0.dist-info")).unwrap();
        std::fs::create_dir_all(site.join("torch")).unwrap();
        std::fs::write(dir.path().join("pyvenv.cfg"), "home = /usr/bin\nversion_info = 3.12.7\n").unwrap();
        let installed = installed_distributions(dir.path());
        assert_eq!(installed["torch"], "2.8.0+cu128");
        assert_eq!(installed.len(), 2);
        assert_eq!(venv_python_version(dir.path()).as_deref(), Some("3.12.7"));
    }
}
