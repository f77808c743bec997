//! The resolver: a checked spec and one machine's facts in, one exact plan or the
//! precise reason there is none out. Pure: no I/O, no clock, so the controller, the
//! CLI (`plan`, offline or live) and tests all get the same answer from the same facts.

mod optimizations;
mod plan;

use std::collections::HashMap;

use crate::inventory::{ComputeCapability, CudaVersion};
use crate::spec::catalog::{ArchSet, TorchBuild, TorchCatalog, TorchRelease};
use crate::spec::driver::DriverVersion;
use crate::spec::names::normalize_package_name;
use crate::spec::wheel::WheelName;
use crate::spec::{CudaTag, DriverCompat, Spec, TorchSeries};

pub use crate::machine_facts::{
    GpuFacts, MachineFacts, OptimizationFact, OptimizationOutcomeKind, SoftwareFacts,
};
pub use plan::{
    Incompatibility, MachinePlan, OptimizationSource, PinnedPackage, PlannedModel, PlannedOptimization,
    Resolution, SkippedOptimization,
};

/// The platform a machine that has not said (`uname -m`) is taken to be.
pub const DEFAULT_PLATFORM: &str = "x86_64";

/// A spec prepared for resolving many machines.
#[derive(Debug, Clone)]
pub struct Resolver<'a> {
    spec: &'a Spec,
    release: Result<TorchRelease, String>,
    catalog: Option<TorchCatalog>,
    /// Every wheel URL's parsed file name, parsed once rather than per machine.
    wheel_names: HashMap<&'a str, WheelName>,
}

/// How a build's CUDA version relates to the machine's driver.
enum DriverFit {
    Runs(DriverCompat),
    /// Too old; the text says why, and whether minor-version compatibility would help.
    TooOld {
        need: String,
        minor_would_run: bool,
    },
}

impl<'a> Resolver<'a> {
    pub fn new(spec: &'a Spec) -> Self {
        let series = TorchSeries::of(&spec.torch.version.0);
        let catalog = TorchCatalog::with_extensions(&spec.torch.releases);
        let release = catalog.clone().and_then(|catalog| {
            let release =
                catalog.release(series).cloned().ok_or_else(|| unknown_release(series, &catalog))?;
            match release.python_problem(spec.python) {
                Some(problem) => {
                    Err(format!("{problem}: choose a Python in that range or another torch.version"))
                }
                None => Ok(release),
            }
        });
        let wheel_names = spec
            .optimizations
            .iter()
            .flat_map(|optimization| &optimization.wheels)
            .filter_map(|wheel| WheelName::from_url(&wheel.url).ok().map(|name| (wheel.url.as_str(), name)))
            .collect();
        Self { spec, release, catalog: catalog.ok(), wheel_names }
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
    /// checking its assignment, a rollback). A revision with locks plans only machines
    /// whose build class has one: a machine never resolves packages itself.
    pub fn plan(&self, machine: &MachineFacts) -> Result<MachinePlan, Incompatibility> {
        let mut plan = self.plan_unlocked(machine)?;
        plan.models = planned_models(self.spec, machine).map_err(Incompatibility::new)?;
        let locks = &self.spec.lock.digests;
        if !locks.is_empty() && !locks.contains_key(&plan.class()) {
            return Err(Incompatibility::new(format!(
                "build class {} ({}) has no lock in this revision (it has {}): apply the spec again, or run \
                 `comfyfleet env lock {}@REV --class {}`",
                plan.class(),
                plan.torch,
                locks.keys().cloned().collect::<Vec<_>>().join(", "),
                self.spec.name,
                plan.class()
            )));
        }
        Ok(plan)
    }

    /// The plan for a machine before locks are asked about (and without its models):
    /// what apply locks.
    pub fn plan_unlocked(&self, machine: &MachineFacts) -> Result<MachinePlan, Incompatibility> {
        let release = self.release.as_ref().map_err(|message| Incompatibility::new(message.clone()))?;
        let gpus = gpu_capabilities(machine)?;
        let Some(driver_cuda) = machine.cuda_driver_version else {
            return Err(Incompatibility::new(format!(
                "driver {} reports no CUDA version",
                machine.driver_version.as_deref().unwrap_or("(unknown)")
            )));
        };
        let driver = machine.driver_version.as_deref().unwrap_or("(unknown version)");
        let platform = machine.arch.as_deref().unwrap_or(DEFAULT_PLATFORM);
        let mut reasons = Vec::new();
        let mut driver_too_old = Vec::new();
        let mut minor_would_run = Vec::new();
        for tag in &self.spec.torch.cuda {
            let torch = format!("{}+{tag}", self.spec.torch.version);
            let Some(build) = release.build_for(*tag, &self.spec.torch.version.0) else {
                reasons.push(format!("{tag}: {}", release.missing_build(*tag, &self.spec.torch.version.0)));
                continue;
            };
            let Some(arch) = build.for_platform(platform) else {
                reasons.push(format!(
                    "{tag}: torch {torch} has no wheel for {platform} (only {})",
                    build.platforms().join(", ")
                ));
                continue;
            };
            let compat = match self.driver_fit(build, &arch, driver_cuda, machine, &gpus) {
                DriverFit::Runs(compat) => compat,
                DriverFit::TooOld { need, minor_would_run: would_run } => {
                    let mut reason = format!(
                        "{tag}: torch {torch} needs {need}; driver {driver} supports CUDA {driver_cuda}"
                    );
                    if would_run {
                        minor_would_run.push(tag.to_string());
                        reason.push_str(&format!("; {}", minor_hint(&[tag.to_string()])));
                    }
                    driver_too_old.push(format!("{tag} needs {need}"));
                    reasons.push(reason);
                    continue;
                }
            };
            let uncovered: Vec<(&GpuFacts, ComputeCapability)> =
                gpus.iter().copied().filter(|(_, cc)| !arch.covers(*cc)).collect();
            if !uncovered.is_empty() {
                reasons.push(format!(
                    "{tag}: {}; torch {torch} has kernels for SM {}{}",
                    describe_gpus(&uncovered),
                    arch.describe(),
                    if platform == DEFAULT_PLATFORM { String::new() } else { format!(" on {platform}") }
                ));
                continue;
            }
            match self.plan_with_build(machine, &gpus, release, build, compat) {
                Ok(plan) => return Ok(plan),
                Err(reason) => reasons.push(format!("{tag}: {reason}")),
            }
        }
        if driver_too_old.len() == reasons.len() && !reasons.is_empty() {
            // Only the driver stands in the way: say so once.
            let mut message = format!(
                "driver {driver} supports CUDA {driver_cuda}, older than every allowed build needs ({}); \
                 upgrade the driver or allow an older CUDA build",
                driver_too_old.join(", ")
            );
            if !minor_would_run.is_empty() {
                message.push_str(&format!("; it {}", minor_hint(&minor_would_run)));
            }
            return Err(Incompatibility::new(message));
        }
        Err(Incompatibility { reasons })
    }

    /// Whether the machine's driver runs `build`: exactly (it supports the build's
    /// CUDA version), or under NVIDIA's minor-version compatibility when the spec
    /// allows it (same CUDA major, driver at or above the major's floor, every GPU
    /// covered by cubins: a driver older than the build cannot JIT its PTX).
    fn driver_fit(
        &self,
        build: &TorchBuild,
        arch: &ArchSet,
        driver_cuda: CudaVersion,
        machine: &MachineFacts,
        gpus: &[(&GpuFacts, ComputeCapability)],
    ) -> DriverFit {
        if driver_cuda >= build.driver_cuda {
            return DriverFit::Runs(DriverCompat::Exact);
        }
        let minor = self.minor_compat(build, arch, driver_cuda, machine, gpus);
        match (self.spec.torch.driver_compat, minor) {
            (DriverCompat::Minor, Ok(())) => DriverFit::Runs(DriverCompat::Minor),
            (DriverCompat::Exact, minor) => {
                DriverFit::TooOld { need: build.describe_driver_need(), minor_would_run: minor.is_ok() }
            }
            (DriverCompat::Minor, Err(why)) => DriverFit::TooOld {
                need: format!(
                    "{}, and CUDA minor-version compatibility does not apply: {why}",
                    build.describe_driver_need()
                ),
                minor_would_run: false,
            },
        }
    }

    fn minor_compat(
        &self,
        build: &TorchBuild,
        arch: &ArchSet,
        driver_cuda: CudaVersion,
        machine: &MachineFacts,
        gpus: &[(&GpuFacts, ComputeCapability)],
    ) -> Result<(), String> {
        let major = build.driver_cuda.major;
        if driver_cuda.major != major {
            return Err(format!("the driver's CUDA {driver_cuda} is not CUDA {major}.x"));
        }
        let floor =
            self.catalog.as_ref().and_then(|catalog| catalog.minor_compat_floor(major)).ok_or_else(|| {
                format!("comfyfleet knows no minor-version compatibility floor for CUDA {major}")
            })?;
        let driver: DriverVersion = machine
            .driver_version
            .as_deref()
            .and_then(|text| text.parse().ok())
            .ok_or("the driver version is unknown")?;
        if driver < *floor {
            return Err(format!("CUDA {major}.x needs driver ≥ {floor} for it"));
        }
        let not_cubins: Vec<(&GpuFacts, ComputeCapability)> =
            gpus.iter().copied().filter(|(_, cc)| !arch.covers_with_cubins(*cc)).collect();
        if !not_cubins.is_empty() {
            return Err(format!(
                "{}, which the build reaches only through PTX (or not at all), and a driver older than the build \
                 cannot JIT-compile its PTX",
                describe_gpus(&not_cubins)
            ));
        }
        Ok(())
    }

    fn plan_with_build(
        &self,
        machine: &MachineFacts,
        gpus: &[(&GpuFacts, ComputeCapability)],
        release: &TorchRelease,
        build: &TorchBuild,
        driver_compat: DriverCompat,
    ) -> Result<MachinePlan, String> {
        let spec = self.spec;
        let tag = build.cuda;
        let torch_version = &spec.torch.version.0;
        let patch = torch_version.release().get(2).copied().unwrap_or(0);
        let mut packages =
            vec![PinnedPackage { name: "torch".to_owned(), version: format!("{torch_version}+{tag}") }];
        let platform = machine.arch.as_deref().unwrap_or(DEFAULT_PLATFORM);
        for (name, version) in release.companion_versions(&spec.torch.companions, patch, build, platform)? {
            packages.push(PinnedPackage { name, version });
        }
        let (optimizations, skipped) = self.plan_optimizations(machine, gpus, tag)?;
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
            driver_compat,
            platform: machine.arch.clone().unwrap_or_else(|| DEFAULT_PLATFORM.to_owned()),
            models: Vec::new(),
        })
    }
}

/// The models a machine with `facts` gets, as its plan carries them.
fn planned_models(spec: &Spec, facts: &MachineFacts) -> Result<Vec<PlannedModel>, String> {
    Ok(crate::spec::model::models_for(spec, facts)?
        .into_iter()
        .map(|(_, model)| PlannedModel {
            path: model.relative_path(),
            url: model.url.clone(),
            sha256: model.sha256.as_ref().map(ToString::to_string).unwrap_or_default(),
            size: model.size,
            keep: model.keep,
        })
        .collect())
}

/// "would run cu128 under CUDA minor-version compatibility: set torch.driver_compat = "minor"".
fn minor_hint(tags: &[String]) -> String {
    format!(
        "would run {} under CUDA minor-version compatibility: set torch.driver_compat = \"minor\"",
        tags.join(" or ")
    )
}

/// What a plan against a torch release comfyfleet has no facts for says.
fn unknown_release(series: TorchSeries, catalog: &TorchCatalog) -> String {
    let known: Vec<String> = catalog.known_series().iter().map(ToString::to_string).collect();
    format!(
        "comfyfleet has no build facts for torch {series} (it knows {}): add them to the spec with a \
         [[torch.release]] table (series = \"{series}\", python_min, python_max, companions and a [[torch.release.build]] \
         per CUDA build with cuda, driver_cuda and arch, as `torch.cuda.get_arch_list()` prints them), or upgrade \
         comfyfleet",
        known.join(", ")
    )
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

/// What `uv pip compile` needs to lock one build class of a spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockInputs {
    /// `torch==2.9.0+cu128` and the companions: overrides.
    pub pins: Vec<String>,
    /// Where torch and its companions come from.
    pub torch_index: String,
    /// Index optimisations (`triton>=3.4,<3.5`) and whether each is fatal: locked
    /// with the rest, so every machine of the class installs the same build.
    pub index_optimizations: Vec<(String, bool)>,
}

impl Resolver<'_> {
    /// The torch build and index optimisations a machine of `class` would install,
    /// whatever its GPUs: what the class's lock holds.
    pub fn lock_inputs(&self, class: &crate::build_class::BuildClass) -> Result<LockInputs, String> {
        let spec = self.spec;
        let release = self.release.as_ref().map_err(Clone::clone)?;
        if class.python_tag != spec.python.tag() {
            return Err(format!(
                "build class {class} is for {}, but the spec's Python is {} ({})",
                class.python_tag,
                spec.python,
                spec.python.tag()
            ));
        }
        let tag: CudaTag =
            class.cuda.parse().map_err(|error: String| format!("build class {class}: {error}"))?;
        if !spec.torch.cuda.contains(&tag) {
            return Err(format!("build class {class}: the spec's torch.cuda does not allow {tag}"));
        }
        let build = release.build_for(tag, &spec.torch.version.0).ok_or_else(|| {
            format!("build class {class}: {}", release.missing_build(tag, &spec.torch.version.0))
        })?;
        if build.for_platform(&class.platform).is_none() {
            return Err(format!(
                "build class {class}: torch {}+{tag} has no wheel for {}",
                spec.torch.version, class.platform
            ));
        }
        let torch_version = &spec.torch.version.0;
        let patch = torch_version.release().get(2).copied().unwrap_or(0);
        let mut pins = vec![format!("torch=={torch_version}+{tag}")];
        for (name, version) in
            release.companion_versions(&spec.torch.companions, patch, build, &class.platform)?
        {
            pins.push(format!("{name}=={version}"));
        }
        // An optimisation this torch has no constraint for is left out, as the
        // plan leaves it out (or refuses the build, when it is fatal).
        let index_optimizations = spec
            .optimizations
            .iter()
            .filter_map(|optimization| {
                let package = optimization.package.as_ref()?;
                let version = self.index_specifiers(optimization).ok()?;
                Some((format!("{package}{version}"), optimization.fatal))
            })
            .collect();
        Ok(LockInputs { pins, torch_index: spec.torch.index_for(tag), index_optimizations })
    }
}
