//! The `requirements` step: ComfyUI's `requirements.txt` and every custom node's,
//! resolved together in one uv run with torch held at the planned build (uv
//! overrides) and the planned index optimisations' versions as constraints.
//!
//! Requirement files come from repositories, not from the operator, so options in
//! them that would change where packages come from (`--index-url`,
//! `--extra-index-url`, `--find-links`, …) or pull in other files are dropped and
//! reported: packages come from the spec's indexes only. ComfyUI's
//! `manager_requirements.txt` is installed only when the spec runs the manager.

use std::path::{Path, PathBuf};

use comfyfleet_config::comfyui_checkout;
use comfyfleet_config::requirements::sanitize;

use super::torch::{is_held, overrides};
use super::uv::{package_indexes, pip_install};
use super::{Build, StepOutcome, StepResult};
use crate::report::StepHandle;

pub async fn install(build: &Build<'_>, step: &mut StepHandle) -> StepResult {
    if let Some(lock) = &build.assignment.lock {
        // Exactly the lock: the files the torch step verified, nothing resolved here.
        let (files, _) = super::locked::fetch(build, step, lock).await?;
        let all: Vec<&super::locked::Fetched> = files.iter().collect();
        step.progress(format!("installing the {} packages of the lock of {}", all.len(), lock.class));
        let tail = super::locked::install(build, step, &all, "requirements").await?;
        let summary = tail
            .lines()
            .rev()
            .find(|line| line.starts_with("Installed") || line.starts_with("Audited"))
            .unwrap_or("installed");
        let mut detail = format!("{} locked packages of {} ({summary})", all.len(), lock.class);
        for note in lock.notes.iter().chain(&kitchen_note(build)) {
            detail.push_str("; ");
            detail.push_str(note);
        }
        return Ok(StepOutcome::done(detail));
    }
    // ComfyUI's manager_requirements.txt too when the spec runs the manager.
    let mut sources: Vec<(String, PathBuf)> =
        comfyui_checkout::requirement_files(build.assignment.spec.run.manager)
            .into_iter()
            .map(|file| {
                let name = if file == comfyui_checkout::REQUIREMENTS {
                    "ComfyUI".to_owned()
                } else {
                    "ComfyUI.manager_requirements".to_owned()
                };
                (name, build.env.comfyui().join(file))
            })
            .collect();
    for node in &build.assignment.spec.custom_nodes {
        let name = node.directory_name();
        let file = build.env.custom_node(&name).join("requirements.txt");
        sources.push((name, file));
    }
    let dir = build.env.meta().join("requirements");
    std::fs::create_dir_all(&dir).map_err(|error| format!("cannot create {}: {error}", dir.display()))?;
    let mut files = Vec::new();
    let mut notes = Vec::new();
    for (name, path) in &sources {
        let Ok(text) = std::fs::read_to_string(path) else { continue };
        let sanitized = sanitize(&text, |package| is_held(package, build));
        for dropped in &sanitized.dropped {
            notes.push(format!("{name}: ignored `{dropped}` (packages come from the spec's indexes)"));
        }
        // A bare `torch` is what the plan installs anyway; anything else is worth saying.
        let planned = |line: &str| build.assignment.plan.packages.iter().any(|package| package.name == line);
        for held in sanitized.held.iter().filter(|line| !planned(line)) {
            notes.push(format!("{name}: `{held}` held at {}", build.assignment.plan.torch));
        }
        let copy = dir.join(format!("{name}.txt"));
        write(&copy, &sanitized.text)?;
        files.push(copy);
    }
    if files.is_empty() {
        return Ok(StepOutcome::skipped("no requirements.txt in ComfyUI or the custom nodes"));
    }
    let overrides_file = build.env.meta().join("overrides.txt");
    write(&overrides_file, &overrides(build))?;
    let constraints_file = build.env.meta().join("constraints.txt");
    write(&constraints_file, &constraints(build))?;

    step.progress(format!("installing the requirements of {} sources", files.len()));
    let mut invocation = pip_install(build)?
        .arg("--overrides")
        .arg(&overrides_file)
        .arg("--constraints")
        .arg(&constraints_file)
        .args(package_indexes(build));
    for file in &files {
        invocation = invocation.arg("-r").arg(file);
    }
    let tail = build.run(step, invocation).await?;
    let summary = tail
        .lines()
        .rev()
        .find(|line| line.starts_with("Installed") || line.starts_with("Audited"))
        .unwrap_or("installed")
        .to_owned();
    let mut detail = summary;
    notes.extend(kitchen_note(build));
    if !notes.is_empty() {
        detail.push_str("; ");
        detail.push_str(&notes.join("; "));
    }
    Ok(StepOutcome::done(detail))
}

/// "comfy-kitchen CUDA ops off: torch 2.11.0+cu128" where this checkout has
/// comfy-kitchen and the plan's torch build is older than cu130.
fn kitchen_note(build: &Build<'_>) -> Option<String> {
    let text = std::fs::read_to_string(build.env.comfyui().join(comfyui_checkout::REQUIREMENTS)).ok()?;
    comfyui_checkout::comfy_kitchen_note(&text, &build.assignment.plan)
}

/// The planned index optimisations as uv constraints.
pub fn constraints(build: &Build<'_>) -> String {
    comfyfleet_config::requirements::index_optimizations(&build.assignment.plan).join("\n") + "\n"
}

fn write(path: &Path, text: &str) -> Result<(), String> {
    std::fs::write(path, text).map_err(|error| format!("cannot write {}: {error}", path.display()))
}
