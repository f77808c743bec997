//! The `torch` step: torch and its companions at exactly the planned build
//! (`torch==2.8.0+cu128`), from the planned CUDA index first. Later steps hold
//! these versions fixed with uv overrides ([`overrides`]).

use super::uv::{package_indexes, pip_install};
use super::{Build, StepOutcome, StepResult};
use crate::complete_record::installed_distributions;
use crate::report::StepHandle;

pub async fn install(build: &Build<'_>, step: &mut StepHandle) -> StepResult {
    let plan = &build.assignment.plan;
    let pins = pins(build);
    let installed = installed_distributions(&build.env.venv());
    let present = plan.packages.iter().all(|package| installed.get(&package.name) == Some(&package.version));
    if present && !build.repair {
        return Ok(StepOutcome::skipped(format!("{} already installed", pins.join(", "))));
    }
    if let Some(lock) = &build.assignment.lock {
        // Every locked file is fetched here (torch is most of the bytes); the
        // requirements step installs the rest from the same verified files.
        let (files, downloaded) = super::locked::fetch(build, step, lock).await?;
        let torch: Vec<&super::locked::Fetched> =
            files.iter().filter(|file| plan.packages.iter().any(|p| p.name == file.package.name)).collect();
        if torch.len() != plan.packages.len() {
            return Err(format!(
                "the lock of {} does not hold {}: apply the spec again to lock it",
                lock.class,
                pins.join(", ")
            ));
        }
        step.progress(format!("installing {} from the lock of {}", pins.join(", "), lock.class));
        let tail = super::locked::install(build, step, &torch, "torch").await?;
        check_installed(build)?;
        let summary = tail.lines().rev().find(|line| line.starts_with("Installed")).unwrap_or("installed");
        return Ok(StepOutcome::done(format!(
            "{} from the lock of {} ({summary}; {} MiB downloaded for {} locked files)",
            pins.join(", "),
            lock.class,
            downloaded >> 20,
            files.len()
        )));
    }
    step.progress(format!("installing {} from {}", pins.join(", "), plan.torch_index));
    // The torch index comes first: uv takes a package from the first index that has
    // it, so torch can never come from the default index (PyPI's torch has no
    // local tag and is another build).
    let invocation = pip_install(build)?
        .arg("--index")
        .arg(build.credentials.uv_index(&plan.torch_index))
        .args(package_indexes(build))
        .args(&pins);
    let tail = build.run(step, invocation).await?;
    check_installed(build)?;
    let summary = tail.lines().rev().find(|line| line.starts_with("Installed")).unwrap_or("installed");
    Ok(StepOutcome::done(format!("{} ({summary})", pins.join(", "))))
}

/// torch and its companions are at exactly the planned versions.
fn check_installed(build: &Build<'_>) -> Result<(), String> {
    let plan = &build.assignment.plan;
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
    Ok(())
}

/// uv overrides that hold torch at the planned build for every later install.
pub fn overrides(build: &Build<'_>) -> String {
    comfyfleet_config::requirements::overrides(&build.assignment.plan)
}

/// `torch==2.11.0+cu128` and its companions' pins: what every later install holds.
pub fn pins(build: &Build<'_>) -> Vec<String> {
    comfyfleet_config::requirements::pins(&build.assignment.plan)
}

/// Whether a requirement names a package the overrides hold.
pub fn is_held(name: &str, build: &Build<'_>) -> bool {
    comfyfleet_config::requirements::is_held(name, &build.assignment.plan)
}
