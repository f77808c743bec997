//! The `torch` step: torch and its companions at exactly the planned build
//! (`torch==2.8.0+cu128`), from the planned CUDA index first. Later steps hold
//! these versions fixed with uv overrides ([`overrides`]).

use super::record::installed_distributions;
use super::uv::{package_indexes, pip_install};
use super::{Build, StepOutcome, StepResult};
use crate::report::StepHandle;

/// Packages that would replace torch's files if installed, whatever a requirement
/// file asks for: never installed into an environment.
const TORCH_IMPOSTORS: &[&str] = &["torch-cpu", "pytorch", "torch-nightly", "torch-gpu"];

pub async fn install(build: &Build<'_>, step: &mut StepHandle) -> StepResult {
    let plan = &build.assignment.plan;
    let pins = pins(build);
    let installed = installed_distributions(&build.env.venv());
    let present = plan.packages.iter().all(|package| installed.get(&package.name) == Some(&package.version));
    if present && !build.repair {
        return Ok(StepOutcome::skipped(format!("{} already installed", pins.join(", "))));
    }
    step.progress(format!("installing {} from {}", pins.join(", "), plan.torch_index));
    // The torch index comes first: uv takes a package from the first index that has
    // it, so torch can never come from the default index (PyPI's torch has no
    // local tag and is another build).
    let invocation = pip_install(build)?
        .arg("--index")
        .arg(&plan.torch_index)
        .args(package_indexes(&build.assignment.spec))
        .args(&pins);
    let tail = build.run(step, invocation).await?;
    let installed = installed_distributions(&build.env.venv());
    for package in &plan.packages {
        let found = installed.get(&package.name).map_or("nothing", String::as_str);
        if found != package.version {
            return Err(format!(
                "after installing, {} is {found}, not the planned {}: the index {} does not serve that build",
                package.name, package.version, plan.torch_index
            ));
        }
    }
    let summary = tail.lines().rev().find(|line| line.starts_with("Installed")).unwrap_or("installed");
    Ok(StepOutcome::done(format!("{} ({summary})", pins.join(", "))))
}

/// uv overrides that hold torch at the planned build for every later install: a
/// custom node asking for `torch`, `torch==2.3.0` or `torch-cpu` gets the planned
/// torch instead (impostors are overridden by a marker that is never true, which
/// drops them from the resolution).
pub fn overrides(build: &Build<'_>) -> String {
    let mut lines = pins(build);
    for impostor in TORCH_IMPOSTORS {
        lines.push(format!("{impostor} ; sys_platform == 'comfyfleet-never'"));
    }
    lines.join("\n") + "\n"
}

/// `torch==2.11.0+cu128` and its companions' pins: what every later install holds.
pub fn pins(build: &Build<'_>) -> Vec<String> {
    build
        .assignment
        .plan
        .packages
        .iter()
        .map(|package| format!("{}=={}", package.name, package.version))
        .collect()
}

/// Whether a requirement names a package the overrides hold.
pub fn is_held(name: &str, build: &Build<'_>) -> bool {
    TORCH_IMPOSTORS.contains(&name)
        || build.assignment.plan.packages.iter().any(|package| package.name == name)
}
