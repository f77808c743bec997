//! The resolver: a checked spec and one machine's facts in, one exact plan or the
//! precise reason there is none out. Pure: no I/O, no clock, so the controller, the
//! CLI (`plan`, offline or live) and tests all get the same answer from the same facts.

pub mod catalog;
mod facts;
mod plan;

use std::collections::HashMap;

use crate::inventory::ComputeCapability;
use crate::spec::names::normalize_package_name;
use crate::spec::wheel::WheelName;
use crate::spec::{CudaTag, Optimization, Requirement, Spec, TorchSeries};
use catalog::{TorchBuild, TorchCatalog, TorchRelease};

pub use facts::{GpuFacts, MachineFacts};
pub use plan::{
    Incompatibility, MachinePlan, OptimizationSource, PinnedPackage, PlannedOptimization, Resolution,
    SkippedOptimization,
};

/// A spec prepared for resolving many machines.
#[derive(Debug, Clone)]
pub struct Resolver<'a> {
    spec: &'a Spec,
    release: Result<TorchRelease, String>,
    /// Every wheel URL's parsed file name, parsed once rather than per machine.
    wheel_names: HashMap<&'a str, WheelName>,
}

impl<'a> Resolver<'a> {
    pub fn new(spec: &'a Spec) -> Self {
        let series = TorchSeries::of(&spec.torch.version.0);
        let release = TorchCatalog::with_extensions(&spec.torch.releases).and_then(|catalog| {
            catalog
                .release(series)
                .cloned()
                .ok_or_else(|| format!("comfyfleet has no build facts for torch {series}"))
        });
        let wheel_names = spec
            .optimizations
            .iter()
            .flat_map(|optimization| &optimization.wheels)
            .filter_map(|wheel| WheelName::from_url(&wheel.url).ok().map(|name| (wheel.url.as_str(), name)))
            .collect();
        Self { spec, release, wheel_names }
    }

    pub fn resolve(&self, machine: &MachineFacts) -> Resolution {
        if let Some(selector) = &self.spec.target.selector
            && !selector.matches(machine)
        {
            return Resolution::NotTargeted;
        }
        match self.plan(machine) {
            Ok(plan) => Resolution::Planned(Box::new(plan)),
            Err(incompatibility) => Resolution::Incompatible(incompatibility),
        }
    }

    /// The plan for a machine, whether or not the spec's selector targets it (an agent
    /// checking its assignment, a rollback).
    pub fn plan(&self, machine: &MachineFacts) -> Result<MachinePlan, Incompatibility> {
        let release = self.release.as_ref().map_err(|message| Incompatibility::new(message.clone()))?;
        let gpus = gpu_capabilities(machine)?;
        let Some(driver_cuda) = machine.cuda_driver_version else {
            return Err(Incompatibility::new(format!(
                "driver {} reports no CUDA version",
                machine.driver_version.as_deref().unwrap_or("(unknown)")
            )));
        };
        let driver = machine.driver_version.as_deref().unwrap_or("(unknown version)");
        let mut reasons = Vec::new();
        let mut driver_too_old = Vec::new();
        for tag in &self.spec.torch.cuda {
            let torch = format!("{}+{tag}", self.spec.torch.version);
            let Some(build) = release.build(*tag) else {
                reasons.push(format!("{tag}: torch {} has no {tag} build", self.spec.torch.version));
                continue;
            };
            if driver_cuda < build.driver_cuda {
                driver_too_old.push(format!("{tag} needs {}", build.describe_driver_need()));
                reasons.push(format!(
                    "{tag}: torch {torch} needs {}; driver {driver} supports CUDA {driver_cuda}",
                    build.describe_driver_need()
                ));
                continue;
            }
            let uncovered: Vec<(&GpuFacts, ComputeCapability)> =
                gpus.iter().copied().filter(|(_, cc)| !build.covers(*cc)).collect();
            if !uncovered.is_empty() {
                reasons.push(format!(
                    "{tag}: {}; torch {torch} has kernels for SM {}",
                    describe_gpus(&uncovered),
                    build.describe_arch()
                ));
                continue;
            }
            match self.plan_with_build(machine, &gpus, release, build) {
                Ok(plan) => return Ok(plan),
                Err(reason) => reasons.push(format!("{tag}: {reason}")),
            }
        }
        if driver_too_old.len() == reasons.len() && !reasons.is_empty() {
            // Only the driver stands in the way: say so once.
            return Err(Incompatibility::new(format!(
                "driver {driver} supports CUDA {driver_cuda}, older than every allowed build needs ({}); \
                 upgrade the driver or allow an older CUDA build",
                driver_too_old.join(", ")
            )));
        }
        Err(Incompatibility { reasons })
    }

    fn plan_with_build(
        &self,
        machine: &MachineFacts,
        gpus: &[(&GpuFacts, ComputeCapability)],
        release: &TorchRelease,
        build: &TorchBuild,
    ) -> Result<MachinePlan, String> {
        let spec = self.spec;
        let tag = build.cuda;
        let torch_version = &spec.torch.version.0;
        let patch = torch_version.release().get(2).copied().unwrap_or(0);
        let mut packages =
            vec![PinnedPackage { name: "torch".to_owned(), version: format!("{torch_version}+{tag}") }];
        for companion in &spec.torch.companions {
            let Some(series) = release.companions.get(companion) else {
                return Err(format!("no {companion} release is known for torch {}", release.series));
            };
            packages
                .push(PinnedPackage { name: companion.clone(), version: format!("{series}.{patch}+{tag}") });
        }

        let mut optimizations = Vec::new();
        let mut skipped = Vec::new();
        for optimization in &spec.optimizations {
            if let Some(unmet) = unmet_requirement(optimization, machine) {
                skipped.push(SkippedOptimization { name: optimization.name.clone(), reason: unmet });
                continue;
            }
            match self.plan_optimization(optimization, machine, gpus, tag) {
                Ok(planned) => optimizations.push(planned),
                Err(reason) if optimization.fatal => {
                    return Err(format!(
                        "fatal optimization {} cannot be installed: {reason}",
                        optimization.name
                    ));
                }
                Err(reason) => skipped.push(SkippedOptimization { name: optimization.name.clone(), reason }),
            }
        }

        let planned = |name: &str| {
            optimizations.iter().any(|o: &PlannedOptimization| {
                normalize_package_name(&o.name) == normalize_package_name(name)
            })
        };
        let comfyui_args_when_verified = spec
            .run
            .when_verified
            .iter()
            .filter(|(name, _)| planned(name))
            .map(|(name, args)| (name.clone(), args.clone()))
            .collect();
        Ok(MachinePlan {
            python: spec.python,
            python_tag: spec.python.tag(),
            cuda_tag: tag,
            torch: format!("{torch_version}+{tag}"),
            torch_index: spec.torch.index_for(tag),
            packages,
            optimizations,
            skipped,
            comfyui_args: spec.run.args.clone(),
            comfyui_args_when_verified,
        })
    }

    fn plan_optimization(
        &self,
        optimization: &Optimization,
        machine: &MachineFacts,
        gpus: &[(&GpuFacts, ComputeCapability)],
        tag: CudaTag,
    ) -> Result<PlannedOptimization, String> {
        let spec = self.spec;
        let series = TorchSeries::of(&spec.torch.version.0);
        let planned = |version: String, source: OptimizationSource| PlannedOptimization {
            name: optimization.name.clone(),
            version,
            fatal: optimization.fatal,
            import: optimization.import_name(),
            source,
        };
        if let Some(package) = &optimization.package {
            let mut specifiers: Vec<String> = optimization.version.iter().map(ToString::to_string).collect();
            if !optimization.torch_constraints.is_empty() {
                let Some(constraint) = optimization.torch_constraints.get(&series) else {
                    let known: Vec<String> =
                        optimization.torch_constraints.keys().map(ToString::to_string).collect();
                    return Err(format!(
                        "torch_constraints has no entry for torch {series} (only {})",
                        known.join(", ")
                    ));
                };
                specifiers.push(constraint.to_string());
            }
            let version = specifiers.join(",");
            return Ok(planned(
                version.clone(),
                OptimizationSource::Index {
                    url: spec.index.url.clone(),
                    requirement: format!("{package}{version}"),
                },
            ));
        }

        let python_tag = spec.python.tag();
        let tagged: Vec<_> = optimization
            .wheels
            .iter()
            .filter(|wheel| wheel.python == python_tag && wheel.cuda == tag && wheel.torch == series)
            .filter_map(|wheel| self.wheel_names.get(wheel.url.as_str()).map(|name| (wheel, name)))
            .filter(|(_, name)| machine.arch.as_deref().is_none_or(|arch| name.supports_arch(arch)))
            .collect();
        if tagged.is_empty() {
            return Err(format!(
                "no wheel for {python_tag}, {tag}, torch {series}{}",
                machine.arch.as_deref().map(|arch| format!(" and {arch}")).unwrap_or_default()
            ));
        }
        let covering =
            tagged.iter().find(|(wheel, _)| gpus.iter().all(|(_, cc)| wheel.compute.contains(*cc)));
        let Some((wheel, name)) = covering else {
            let ranges: Vec<String> = tagged.iter().map(|(wheel, _)| wheel.compute.to_string()).collect();
            return Err(format!(
                "no wheel for {python_tag}, {tag}, torch {series} covers {}; the wheels cover {}",
                describe_gpus(gpus),
                ranges.join(", ")
            ));
        };
        let sha256 = wheel.sha256.as_ref().map(ToString::to_string).unwrap_or_default();
        Ok(planned(
            name.version.to_string(),
            OptimizationSource::Wheel { url: wheel.url.clone(), sha256, filename: name.filename.clone() },
        ))
    }
}

/// Resolves one machine (for many, build a [`Resolver`] once).
pub fn resolve(spec: &Spec, machine: &MachineFacts) -> Resolution {
    Resolver::new(spec).resolve(machine)
}

/// Every GPU with its compute capability, or why the machine cannot be planned.
fn gpu_capabilities(machine: &MachineFacts) -> Result<Vec<(&GpuFacts, ComputeCapability)>, Incompatibility> {
    if !machine.reported {
        return Err(Incompatibility::new("the machine has not reported its hardware yet"));
    }
    if machine.gpus.is_empty() {
        let why = machine.nvml_problem.as_deref().unwrap_or("NVML reports no GPUs");
        return Err(Incompatibility::new(format!("no NVIDIA GPU ({why})")));
    }
    let mut gpus = Vec::with_capacity(machine.gpus.len());
    let mut unreadable = Vec::new();
    for gpu in &machine.gpus {
        match gpu.compute_capability {
            Some(cc) => gpus.push((gpu, cc)),
            None => unreadable.push(format!("{}: compute capability unreadable", gpu.describe())),
        }
    }
    if unreadable.is_empty() { Ok(gpus) } else { Err(Incompatibility { reasons: unreadable }) }
}

fn unmet_requirement(optimization: &Optimization, machine: &MachineFacts) -> Option<String> {
    optimization.requires.iter().find_map(|requirement| {
        let arch = machine.arch.as_deref().unwrap_or("");
        let met = match requirement {
            Requirement::Nvidia => !machine.gpus.is_empty(),
            Requirement::Linux => machine.reported,
            Requirement::X86_64 => arch == "x86_64",
            Requirement::Aarch64 => arch == "aarch64",
        };
        (!met).then(|| format!("requires {requirement}"))
    })
}

/// "GPU 0 (NVIDIA GeForce RTX 4090) is SM 8.9 and GPU 1 (NVIDIA RTX A6000) is SM 8.6";
/// identical GPUs are named once: "GPUs 0–7 (NVIDIA H100 80GB HBM3) are SM 9.0".
fn describe_gpus(gpus: &[(&GpuFacts, ComputeCapability)]) -> String {
    let mut groups: Vec<(Option<&str>, ComputeCapability, Vec<u32>)> = Vec::new();
    for (gpu, cc) in gpus {
        let name = gpu.name.as_deref();
        match groups.iter_mut().find(|(n, c, _)| *n == name && c == cc) {
            Some((_, _, indexes)) => indexes.push(gpu.index),
            None => groups.push((name, *cc, vec![gpu.index])),
        }
    }
    let parts: Vec<String> = groups
        .iter()
        .map(|(name, cc, indexes)| {
            let name = name.map(|n| format!(" ({n})")).unwrap_or_default();
            match indexes.as_slice() {
                [one] => format!("GPU {one}{name} is SM {cc}"),
                [first, .., last]
                    if last.checked_sub(*first).is_some_and(|span| span as usize + 1 == indexes.len()) =>
                {
                    format!("GPUs {first}–{last}{name} are SM {cc}")
                }
                many => {
                    let list: Vec<String> = many.iter().map(ToString::to_string).collect();
                    format!("GPUs {}{name} are SM {cc}", list.join(", "))
                }
            }
        })
        .collect();
    parts.join(" and ")
}
