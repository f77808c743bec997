//! The installed environments as the inventory reports them, read from the
//! environments themselves rather than from what the agent meant to install: the
//! venv's Python from `pyvenv.cfg`, package versions from their `.dist-info`
//! directories, commits from `.git/HEAD`. Anything that differs from what
//! verification recorded is reported as drift: a package changed, added or removed
//! by hand (or by ComfyUI-Manager), a custom node added or removed, a checkout moved.
//! Only files are read — no Python, no git — so it is cheap at every inventory
//! interval.

use comfyfleet_config::convergence::OptimizationState;
use comfyfleet_config::installed::{
    InstalledEnvironment, InstalledEnvironments, InstalledNode, InstalledPackage,
};

use std::collections::BTreeMap;

use crate::complete_record::{
    CompleteRecord, custom_node_entries, head_commit, installed_distributions, venv_python_version,
};
use crate::journal::Journal;
use crate::layout::{EnvDir, Layout};

pub fn read(layout: &Layout, journal: &Journal) -> InstalledEnvironments {
    let current_dir = std::fs::read_link(layout.current()).ok().map(|target| layout.root().join(target));
    let Ok(entries) = std::fs::read_dir(layout.envs()) else { return InstalledEnvironments::default() };
    let mut installed: Vec<InstalledEnvironment> = entries
        .flatten()
        .filter(|entry| !entry.file_name().to_string_lossy().starts_with('.'))
        .filter_map(|entry| {
            let env = EnvDir { path: entry.path() };
            let record = CompleteRecord::load(&env)?;
            let current = current_dir.as_deref() == Some(env.path.as_path());
            Some(describe(&env, &record, current, journal))
        })
        .collect();
    installed
        .sort_by(|a, b| b.activated_at.cmp(&a.activated_at).then_with(|| a.revision_id.cmp(&b.revision_id)));
    installed.truncate(comfyfleet_config::installed::MAX_INSTALLED);
    let current = installed
        .iter()
        .find(|environment| environment.current)
        .map(|environment| environment.revision_id.clone());
    InstalledEnvironments { current, installed }
}

fn describe(env: &EnvDir, record: &CompleteRecord, current: bool, journal: &Journal) -> InstalledEnvironment {
    let distributions = installed_distributions(&env.venv());
    let mut drift = Vec::new();
    let python_version = venv_python_version(&env.venv()).unwrap_or_default();
    let torch_version = distributions.get("torch").cloned().unwrap_or_default();
    if torch_version != record.torch.version {
        drift.push(format!(
            "torch is {}, verified {}",
            if torch_version.is_empty() { "missing" } else { &torch_version },
            record.torch.version
        ));
    }
    let optimizations = record
        .optimizations
        .iter()
        .filter(|outcome| outcome.state != OptimizationState::Skipped)
        .map(|outcome| {
            let distribution =
                record.distributions.get(&outcome.name).cloned().unwrap_or_else(|| outcome.name.clone());
            let version = distributions.get(&distribution).cloned().unwrap_or_default();
            let verified = outcome.state == OptimizationState::Verified;
            if verified && version != outcome.version {
                drift.push(format!(
                    "{} is {}, verified {}",
                    outcome.name,
                    if version.is_empty() { "missing" } else { &version },
                    outcome.version
                ));
            }
            InstalledPackage { name: outcome.name.clone(), version, verified, detail: outcome.detail.clone() }
        })
        .collect();
    package_drift(record, &distributions, &mut drift);
    let comfyui_commit = head_commit(&env.comfyui()).unwrap_or_default();
    if comfyui_commit != record.comfyui_commit {
        drift.push(format!(
            "ComfyUI is at {}, pinned {}",
            short(&comfyui_commit),
            short(&record.comfyui_commit)
        ));
    }
    let custom_nodes = record
        .custom_nodes
        .iter()
        .map(|node| {
            let commit = head_commit(&env.custom_node(&node.name)).unwrap_or_default();
            if commit != node.commit {
                drift.push(format!(
                    "custom node {} is at {}, pinned {}",
                    node.name,
                    short(&commit),
                    short(&node.commit)
                ));
            }
            InstalledNode { name: node.name.clone(), commit }
        })
        .collect();
    if let Some(verified) = &record.custom_node_entries {
        let now = custom_node_entries(&env.comfyui());
        for added in now.iter().filter(|entry| !verified.contains(entry)) {
            drift.push(format!("custom node {added} was added (the spec does not have it)"));
        }
        for removed in verified.iter().filter(|entry| !now.contains(entry)) {
            drift.push(format!("custom node {removed} was removed"));
        }
    }
    InstalledEnvironment {
        revision_id: record.revision_id.clone(),
        environment: record.environment.clone(),
        revision_number: record.revision_number,
        current,
        activated_at: journal.last_activation(&record.revision_id),
        python_version,
        torch_version,
        comfyui_commit,
        optimizations,
        custom_nodes,
        drift,
    }
}

/// How many package changes are named one by one.
const NAMED_PACKAGE_CHANGES: usize = 12;

/// Packages added, removed or changed since verification, torch and the
/// optimisations aside (they are reported by name above).
fn package_drift(record: &CompleteRecord, now: &BTreeMap<String, String>, drift: &mut Vec<String>) {
    let Some(verified) = &record.packages else { return };
    let reported = |name: &String| name == "torch" || record.distributions.values().any(|d| d == name);
    let mut changes: Vec<String> = now
        .iter()
        .filter(|(name, _)| !reported(name))
        .filter_map(|(name, version)| match verified.get(name) {
            None => Some(format!("package {name} {version} was added")),
            Some(was) if was != version => Some(format!("package {name} is {version}, verified {was}")),
            Some(_) => None,
        })
        .collect();
    changes.extend(
        verified
            .iter()
            .filter(|(name, _)| !reported(name) && !now.contains_key(*name))
            .map(|(name, was)| format!("package {name} {was} was removed")),
    );
    let more = changes.len().saturating_sub(NAMED_PACKAGE_CHANGES);
    changes.truncate(NAMED_PACKAGE_CHANGES);
    if more > 0 {
        changes.push(format!("and {more} more package changes"));
    }
    drift.extend(changes);
}

fn short(commit: &str) -> &str {
    if commit.is_empty() { "nothing" } else { commit.get(..12).unwrap_or(commit) }
}
