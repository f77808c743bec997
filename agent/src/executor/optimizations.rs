//! The `optimizations` step: every optimisation the plan chose for this machine.
//! A prebuilt wheel is downloaded by the agent and checked against the spec's
//! sha256 before uv sees it; an index package is installed with the plan's
//! specifier. torch stays held.
//!
//! A fatal optimisation that fails fails the environment; an optional one is
//! recorded as failed and the build goes on. A wheel whose bytes do not match its
//! sha256 fails the environment whatever `fatal` says: that is not "this speed-up
//! does not work here", it is a supply-chain problem someone must look at.

use std::collections::BTreeMap;

use comfyfleet_config::convergence::{OptimizationOutcome, OptimizationState};
use comfyfleet_config::resolve::{MachinePlan, OptimizationSource, PlannedOptimization};
use comfyfleet_config::spec::names::normalize_package_name;
use comfyfleet_config::spec::wheel::WheelName;

use super::requirements::constraints;
use super::torch::overrides;
use super::uv::{package_indexes, pip_install};
use super::{Build, StepOutcome, StepResult};
use crate::report::StepHandle;

pub async fn install(build: &mut Build<'_>, step: &mut StepHandle) -> StepResult {
    let plan = &build.assignment.plan;
    let mut outcomes: Vec<OptimizationOutcome> = plan
        .skipped
        .iter()
        .map(|skipped| OptimizationOutcome {
            name: skipped.name.clone(),
            version: String::new(),
            fatal: false,
            state: OptimizationState::Skipped,
            detail: skipped.reason.clone(),
        })
        .collect();
    if plan.optimizations.is_empty() {
        build.outcomes = outcomes;
        save(build)?;
        return Ok(StepOutcome::skipped("the plan has no optimisations for this machine"));
    }
    let overrides_file = build.env.meta().join("overrides.txt");
    std::fs::write(&overrides_file, overrides(build))
        .map_err(|error| format!("cannot write overrides: {error}"))?;
    let constraints_file = build.env.meta().join("constraints.txt");
    std::fs::write(&constraints_file, constraints(build))
        .map_err(|error| format!("cannot write constraints: {error}"))?;

    let mut installed = Vec::new();
    let mut failed = Vec::new();
    for optimization in &plan.optimizations {
        step.progress(format!("installing {} {}", optimization.name, optimization.version));
        let result = install_one(build, step, optimization, &overrides_file, &constraints_file).await;
        match result {
            Ok(()) => {
                installed.push(format!("{} {}", optimization.name, optimization.version));
                outcomes.push(outcome(
                    optimization,
                    OptimizationState::Pending,
                    "installed; not verified yet",
                ));
            }
            Err(Failure::Integrity(message)) => return Err(format!("{}: {message}", optimization.name)),
            Err(Failure::Install(message)) if optimization.fatal => {
                return Err(format!("{} (fatal): {message}", optimization.name));
            }
            Err(Failure::Install(message)) => {
                tracing::warn!(optimization = %optimization.name, %message, "optional optimisation failed to install");
                failed.push(format!("{} failed: {message}", optimization.name));
                outcomes.push(outcome(optimization, OptimizationState::Failed, &message));
            }
        }
    }
    build.outcomes = outcomes;
    save(build)?;
    let mut detail = if installed.is_empty() { "nothing installed".to_owned() } else { installed.join(", ") };
    if !failed.is_empty() {
        detail.push_str("; ");
        detail.push_str(&failed.join("; "));
    }
    Ok(StepOutcome::done(detail))
}

enum Failure {
    /// A download that does not match its sha256.
    Integrity(String),
    Install(String),
}

async fn install_one(
    build: &Build<'_>,
    step: &mut StepHandle,
    optimization: &PlannedOptimization,
    overrides_file: &std::path::Path,
    constraints_file: &std::path::Path,
) -> Result<(), Failure> {
    let locked = build.assignment.lock.as_ref();
    let requirement = match &optimization.source {
        OptimizationSource::Wheel { url, sha256, filename } => {
            let name = optimization.name.clone();
            let (downloader, url) = match &build.tools.package_cache {
                Some(cache) => (cache.downloader.clone(), cache.file_url(sha256, filename)),
                None => (build.direct_downloader(url), url.clone()),
            };
            let fetched = downloader
                .verified(&url, sha256, filename, &mut |received, _| {
                    step.progress(format!("downloading {name}: {} KiB", received >> 10));
                })
                .await
                .map_err(|error| {
                    if error.is_integrity() {
                        Failure::Integrity(error.to_string())
                    } else {
                        Failure::Install(error.to_string())
                    }
                })?;
            tracing::info!(
                optimization = %optimization.name,
                downloaded_bytes = fetched.downloaded_bytes,
                "kernel wheel verified{}",
                if fetched.downloaded_bytes == 0 { " (from the agent's cache)" } else { "" }
            );
            fetched.path.into_os_string()
        }
        OptimizationSource::Index { requirement, .. } => {
            if let Some(lock) = locked {
                // Locked with the rest and installed by the requirements step.
                let name =
                    normalize_package_name(comfyfleet_config::requirements::requirement_name(requirement));
                return match lock.package(&name) {
                    Some(_) => Ok(()),
                    None => Err(Failure::Install(match lock.unresolved.get(&name) {
                        Some(reason) => {
                            format!("{requirement} did not resolve when the revision was locked: {reason}")
                        }
                        None => format!("the lock of {} has no {name}", lock.class),
                    })),
                };
            }
            requirement.into()
        }
    };
    if locked.is_some() {
        // A kernel wheel of a locked revision goes in alone: its file is exact and
        // nothing is resolved on the machine. Found in its own verified directory,
        // so the venv records an ordinary install of that version.
        let path = std::path::PathBuf::from(&requirement);
        let wheel = path
            .file_name()
            .and_then(|name| name.to_str())
            .and_then(|name| WheelName::parse(name).ok())
            .ok_or_else(|| Failure::Install(format!("{} is not a wheel", path.display())))?;
        let directory =
            path.parent().ok_or_else(|| Failure::Install("a wheel without a directory".into()))?;
        let invocation = pip_install(build)
            .map_err(Failure::Install)?
            .args(["--no-deps", "--no-index", "--offline", "--find-links"])
            .arg(directory)
            .arg(format!("{}=={}", wheel.distribution, wheel.version));
        return build.run(step, invocation).await.map(|_| ()).map_err(Failure::Install);
    }
    let invocation = pip_install(build)
        .map_err(Failure::Install)?
        .arg("--overrides")
        .arg(overrides_file)
        .arg("--constraints")
        .arg(constraints_file)
        .args(package_indexes(build))
        .arg(requirement);
    build.run(step, invocation).await.map(|_| ()).map_err(Failure::Install)
}

fn outcome(
    optimization: &PlannedOptimization,
    state: OptimizationState,
    detail: &str,
) -> OptimizationOutcome {
    OptimizationOutcome {
        name: optimization.name.clone(),
        version: optimization.version.clone(),
        fatal: optimization.fatal,
        state,
        detail: detail.to_owned(),
    }
}

fn save(build: &Build<'_>) -> Result<(), String> {
    let path = build.env.meta().join("optimizations.json");
    let json = serde_json::to_vec_pretty(&build.outcomes).unwrap_or_default();
    std::fs::write(&path, json).map_err(|error| format!("cannot write {}: {error}", path.display()))
}

/// What the optimizations step recorded, for a verify step run by a later agent.
pub fn load(build: &Build<'_>) -> Vec<OptimizationOutcome> {
    std::fs::read(build.env.meta().join("optimizations.json"))
        .ok()
        .and_then(|text| serde_json::from_slice(&text).ok())
        .unwrap_or_default()
}

/// Optimisation name → the distribution it installs, normalised: a wheel's from its
/// file name, an index package's from its requirement.
pub fn distributions(plan: &MachinePlan) -> BTreeMap<String, String> {
    plan.optimizations
        .iter()
        .map(|optimization| {
            let distribution = match &optimization.source {
                OptimizationSource::Wheel { filename, .. } => WheelName::parse(filename)
                    .map(|wheel| wheel.distribution)
                    .unwrap_or_else(|_| optimization.name.clone()),
                OptimizationSource::Index { requirement, .. } => requirement
                    .split(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
                    .next()
                    .unwrap_or(requirement)
                    .to_owned(),
            };
            (optimization.name.clone(), normalize_package_name(&distribution))
        })
        .collect()
}
