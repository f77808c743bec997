//! The optimisations a plan gives one machine: each from the package index (with the
//! version built against the planned torch) or the one prebuilt wheel whose Python,
//! CUDA build, torch and GPU set fit the machine; or why it is left out.

use crate::inventory::ComputeCapability;
use crate::spec::names::normalize_package_name;
use crate::spec::{CudaTag, Optimization, Requirement, TorchSeries};

use super::{
    DEFAULT_PLATFORM, GpuFacts, MachineFacts, OptimizationSource, PlannedOptimization, Resolver,
    SkippedOptimization, describe_gpus,
};

impl Resolver<'_> {
    /// Every optimisation planned or skipped, or why a fatal one rules the build out.
    pub(super) fn plan_optimizations(
        &self,
        machine: &MachineFacts,
        gpus: &[(&GpuFacts, ComputeCapability)],
        tag: CudaTag,
    ) -> Result<(Vec<PlannedOptimization>, Vec<SkippedOptimization>), String> {
        let mut optimizations = Vec::new();
        let mut skipped = Vec::new();
        for optimization in &self.spec.optimizations {
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
        Ok((optimizations, skipped))
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
            smoke: optimization.smoke.clone(),
        };
        if let Some(package) = &optimization.package {
            let version = self.index_specifiers(optimization)?;
            return Ok(planned(
                version.clone(),
                OptimizationSource::Index {
                    url: spec.index.url.clone(),
                    requirement: format!("{package}{version}"),
                },
            ));
        }

        let python_tag = spec.python.tag();
        let platform = machine.arch.as_deref().unwrap_or(DEFAULT_PLATFORM);
        let tagged: Vec<_> = optimization
            .wheels
            .iter()
            .filter(|wheel| {
                wheel.python.serves(spec.python) && wheel.cuda == tag && wheel.torch.contains(series)
            })
            .filter_map(|wheel| self.wheel_names.get(wheel.url.as_str()).map(|name| (wheel, name)))
            .filter(|(_, name)| name.supports_arch(platform))
            .collect();
        if tagged.is_empty() {
            return Err(format!("no wheel for {python_tag}, {tag}, torch {series} and {platform}"));
        }
        // Validation keeps the sets of these wheels apart, so at most one holds every GPU.
        let covering =
            tagged.iter().find(|(wheel, _)| gpus.iter().all(|(_, cc)| wheel.compute.contains(*cc)));
        let Some((wheel, name)) = covering else {
            let sets: Vec<String> = tagged.iter().map(|(wheel, _)| wheel.compute.to_string()).collect();
            return Err(format!(
                "no wheel for {python_tag}, {tag}, torch {series} covers {}; the wheels cover {}",
                describe_gpus(gpus),
                sets.join(", ")
            ));
        };
        let sha256 = wheel.sha256.as_ref().map(ToString::to_string).unwrap_or_default();
        Ok(planned(
            name.version.to_string(),
            OptimizationSource::Wheel { url: wheel.url.clone(), sha256, filename: name.filename.clone() },
        ))
    }
}

impl Resolver<'_> {
    /// The version specifiers of an index optimisation for the spec's torch: its own
    /// `version`, and its `torch_constraints` entry for the torch series, or for
    /// `triton` without one, the triton the torch release requires (the facts' pin:
    /// torch's wheels require exactly one, so any other could never install).
    pub(super) fn index_specifiers(&self, optimization: &Optimization) -> Result<String, String> {
        let torch = &self.spec.torch.version.0;
        let series = TorchSeries::of(torch);
        let mut specifiers: Vec<String> = optimization.version.iter().map(ToString::to_string).collect();
        let facts_pin = optimization
            .package
            .as_deref()
            .filter(|package| normalize_package_name(package) == "triton")
            .and_then(|_| self.release.as_ref().ok())
            .and_then(|release| release.triton.requirement(torch));
        match (optimization.torch_constraints.get(&series), facts_pin) {
            (Some(constraint), _) => specifiers.push(constraint.to_string()),
            (None, Some(pin)) => specifiers.push(pin),
            (None, None) if optimization.torch_constraints.is_empty() => {}
            (None, None) => {
                let known: Vec<String> =
                    optimization.torch_constraints.keys().map(ToString::to_string).collect();
                return Err(format!(
                    "torch_constraints has no entry for torch {series} (only {})",
                    known.join(", ")
                ));
            }
        }
        Ok(specifiers.join(","))
    }
}

fn unmet_requirement(optimization: &Optimization, machine: &MachineFacts) -> Option<String> {
    optimization.requires.iter().find_map(|requirement| {
        let arch = machine.arch.as_deref().unwrap_or(DEFAULT_PLATFORM);
        let met = match requirement {
            Requirement::Nvidia => !machine.gpus.is_empty(),
            Requirement::Linux => machine.reported,
            Requirement::X86_64 => arch == "x86_64",
            Requirement::Aarch64 => arch == "aarch64",
        };
        (!met).then(|| format!("requires {requirement}"))
    })
}
