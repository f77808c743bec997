//! Facts about torch builds: which CUDA builds a torch series has, for which
//! platforms and Pythons, what driver each needs and which GPU architectures it
//! carries. Built into comfyfleet from `config/data/torch-releases.toml`; a spec
//! extends or corrects them with `[[torch.release]]` tables of the same shape. They
//! are the spec's (it embeds them and is validated against them); the resolver and
//! `facts check` read them from here.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::sync::LazyLock;

use serde::{Deserialize, Serialize};

use super::driver::DriverVersion;
use crate::inventory::{ComputeCapability, CudaVersion};
use crate::spec::{CudaTag, PythonVersion, ReleaseVersion, Specifiers, TorchSeries};

pub use triton::TritonPins;

mod triton;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TorchRelease {
    pub series: TorchSeries,
    /// The oldest CPython the release ships wheels for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub python_min: Option<PythonVersion>,
    /// The newest CPython the release ships wheels for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub python_max: Option<PythonVersion>,
    /// Companion package → the release installed with this torch: a series
    /// (`torchvision = "0.23"`, whose patch follows torch's) or an exact version
    /// (`torchaudio = "2.11.0"`, for a package that stopped following torch).
    #[serde(default)]
    pub companions: BTreeMap<String, CompanionVersion>,
    /// The triton each release of the series requires (`Requires-Dist: triton==…`
    /// of its wheels): torch release → triton release.
    #[serde(default, skip_serializing_if = "TritonPins::is_empty")]
    pub triton: TritonPins,
    #[serde(default, rename = "build")]
    pub builds: Vec<TorchBuild>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TorchBuild {
    pub cuda: CudaTag,
    /// The CUDA version the build was made with: a driver supporting it runs it
    /// (NVML's `cuda_driver_version`).
    pub driver_cuda: CudaVersion,
    /// The matching Linux driver, for messages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_driver: Option<String>,
    /// SMs with compiled kernels in the Linux x86_64 wheels.
    pub arch: Vec<ComputeCapability>,
    /// SMs shipped as PTX in the Linux x86_64 wheels, JIT-compiled for later GPUs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ptx: Vec<ComputeCapability>,
    /// The Linux aarch64 wheels' architectures; absent: there is no aarch64 wheel.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aarch64: Option<PlatformWheels>,
    /// Companions of the release that have no wheel for this build.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub without: Vec<String>,
    /// The releases of the series that have this build (`">=2.12.1"`: added in a
    /// patch release); absent: every release.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub versions: Option<Specifiers>,
}

/// The wheels of one platform other than x86_64: their architectures, and the
/// companions published there only as CPU builds without the `+cuXXX` tag.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlatformWheels {
    pub arch: Vec<ComputeCapability>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ptx: Vec<ComputeCapability>,
    /// Companions whose wheels for this platform on the CUDA index carry no local
    /// tag (`torchvision-0.24.1-cp312-cp312-manylinux_2_28_aarch64.whl` on
    /// whl/cu128): pinned without `+cuXXX`, or the pin could never install.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub untagged: Vec<String>,
}

/// The architectures of one platform's wheels.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArchSet {
    pub arch: Vec<ComputeCapability>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ptx: Vec<ComputeCapability>,
}

/// Whether code compiled for `arch` (cubins) and `ptx` runs on a GPU of this SM:
/// a cubin runs on later minors of its major, PTX is JIT-compiled for any later GPU.
pub fn arch_covers(arch: &[ComputeCapability], ptx: &[ComputeCapability], gpu: ComputeCapability) -> bool {
    cubin_covers(arch, gpu) || ptx.iter().any(|sm| *sm <= gpu)
}

/// Whether a cubin of `arch` runs on a GPU of this SM, without JIT.
pub fn cubin_covers(arch: &[ComputeCapability], gpu: ComputeCapability) -> bool {
    arch.iter().any(|sm| sm.major == gpu.major && sm.minor <= gpu.minor)
}

impl ArchSet {
    pub fn covers(&self, gpu: ComputeCapability) -> bool {
        arch_covers(&self.arch, &self.ptx, gpu)
    }

    /// Covered by compiled kernels alone: what CUDA minor-version compatibility
    /// needs, since a driver older than the build cannot JIT its newer PTX.
    pub fn covers_with_cubins(&self, gpu: ComputeCapability) -> bool {
        cubin_covers(&self.arch, gpu)
    }

    /// "7.5, 8.0, 8.6, 9.0, 10.0, 12.0 (+PTX 12.0)".
    pub fn describe(&self) -> String {
        let mut text = self.arch.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ");
        if !self.ptx.is_empty() {
            let ptx = self.ptx.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ");
            text.push_str(&format!(" (+PTX {ptx})"));
        }
        text
    }

    /// What an installed torch says it carries: `torch.cuda.get_arch_list()`, e.g.
    /// `["sm_75", "sm_80", "sm_86", "sm_90", "sm_120", "compute_120"]`.
    pub fn parse_arch_list(entries: &[String]) -> Result<Self, String> {
        let mut list = ArchSet::default();
        for entry in entries {
            let (kind, digits) = entry
                .strip_prefix("sm_")
                .map(|digits| (false, digits))
                .or_else(|| entry.strip_prefix("compute_").map(|digits| (true, digits)))
                .ok_or_else(|| format!("`{entry}` is not an sm_XY or compute_XY architecture"))?;
            // `sm_90a`: architecture-specific features of 9.0, still SM 9.0.
            let digits = digits.trim_end_matches(|c: char| c.is_ascii_alphabetic());
            if !(2..=3).contains(&digits.len()) || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return Err(format!("`{entry}` is not an sm_XY or compute_XY architecture"));
            }
            let (major, minor) = digits.split_at(digits.len() - 1);
            let capability = ComputeCapability::new(
                major.parse().map_err(|_| format!("`{entry}` has no major version"))?,
                minor.parse().map_err(|_| format!("`{entry}` has no minor version"))?,
            );
            if kind { list.ptx.push(capability) } else { list.arch.push(capability) }
        }
        Ok(list)
    }

    /// `torch.cuda.get_arch_list()` as this set would print it.
    pub fn to_arch_list(&self) -> Vec<String> {
        let name = |cc: &ComputeCapability| format!("{}{}", cc.major, cc.minor);
        self.arch
            .iter()
            .map(|cc| format!("sm_{}", name(cc)))
            .chain(self.ptx.iter().map(|cc| format!("compute_{}", name(cc))))
            .collect()
    }
}

impl TorchBuild {
    /// The architectures of this build's wheels for a Linux machine with this
    /// `uname -m`, or `None` when PyTorch publishes none for it.
    pub fn for_platform(&self, platform: &str) -> Option<ArchSet> {
        match platform {
            "x86_64" => Some(ArchSet { arch: self.arch.clone(), ptx: self.ptx.clone() }),
            "aarch64" => self
                .aarch64
                .as_ref()
                .map(|wheels| ArchSet { arch: wheels.arch.clone(), ptx: wheels.ptx.clone() }),
            _ => None,
        }
    }

    /// Whether torch `version` (a release of this build's series) has this build.
    pub fn serves(&self, version: &pep440_rs::Version) -> bool {
        self.versions.as_ref().is_none_or(|versions| versions.contains(version))
    }

    /// Whether `companion`'s wheels for `platform` carry this build's local tag.
    pub fn companion_tagged(&self, companion: &str, platform: &str) -> bool {
        match platform {
            "aarch64" => self
                .aarch64
                .as_ref()
                .is_none_or(|wheels| !wheels.untagged.iter().any(|name| name == companion)),
            _ => true,
        }
    }

    /// The platforms this build has wheels for.
    pub fn platforms(&self) -> Vec<&'static str> {
        let mut platforms = vec!["x86_64"];
        if self.aarch64.is_some() {
            platforms.push("aarch64");
        }
        platforms
    }

    /// "CUDA 12.8 (driver ≥ 570.26)".
    pub fn describe_driver_need(&self) -> String {
        match &self.min_driver {
            Some(driver) => format!("CUDA {} (driver ≥ {driver})", self.driver_cuda),
            None => format!("CUDA {}", self.driver_cuda),
        }
    }
}

/// The version of a companion package released with a torch series.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum CompanionVersion {
    /// `0.23`: the companion's patch release follows torch's (`2.8.1` → `0.23.1`).
    Series(TorchSeries),
    /// `2.11.0`: always this release, whatever torch's patch.
    Exact(ReleaseVersion),
}

impl CompanionVersion {
    /// The companion's version for a torch release of patch level `torch_patch`.
    pub fn version_for(&self, torch_patch: u64) -> String {
        match self {
            CompanionVersion::Series(series) => format!("{series}.{torch_patch}"),
            CompanionVersion::Exact(version) => version.to_string(),
        }
    }
}

impl FromStr for CompanionVersion {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        if text.matches('.').count() == 1 {
            text.parse().map(CompanionVersion::Series)
        } else {
            text.parse().map(CompanionVersion::Exact).map_err(|_| {
                format!(
                    "`{text}` is not a companion release: write its series (\"0.23\", whose patch follows \
                     torch's) or an exact release (\"2.11.0\")"
                )
            })
        }
    }
}

impl fmt::Display for CompanionVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CompanionVersion::Series(series) => series.fmt(f),
            CompanionVersion::Exact(version) => version.fmt(f),
        }
    }
}

impl Serialize for CompanionVersion {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for CompanionVersion {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// NVIDIA's CUDA minor-version compatibility floor for one CUDA major.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
struct CudaMajorFloor {
    major: u32,
    min_driver: DriverVersion,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CatalogFile {
    cuda_major: Vec<CudaMajorFloor>,
    release: Vec<TorchRelease>,
}

/// The built-in table's text (tests read its comments: every build cites a source).
pub const BUILTIN_TABLE: &str = include_str!("../../data/torch-releases.toml");

static BUILTIN: LazyLock<Result<CatalogFile, String>> = LazyLock::new(|| {
    toml::from_str::<CatalogFile>(BUILTIN_TABLE)
        .map_err(|err| format!("comfyfleet's built-in torch table is unreadable: {err}"))
});

/// The torch facts a spec resolves against: the built-in table with the spec's own
/// `[[torch.release]]` entries laid over it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TorchCatalog {
    releases: BTreeMap<TorchSeries, TorchRelease>,
    /// CUDA major → the oldest driver that runs any runtime of that major.
    minor_compat_floors: BTreeMap<u32, DriverVersion>,
}

impl TorchCatalog {
    pub fn builtin() -> Result<Self, String> {
        Self::with_extensions(&[])
    }

    /// A spec entry for a known series adds companions, replaces builds of the same
    /// CUDA tag and the Python range it gives; an entry for a new series is taken whole.
    pub fn with_extensions(extensions: &[TorchRelease]) -> Result<Self, String> {
        let builtin = BUILTIN.as_ref().map_err(Clone::clone)?;
        let mut releases: BTreeMap<TorchSeries, TorchRelease> =
            builtin.release.iter().map(|release| (release.series, release.clone())).collect();
        for extension in extensions {
            let release = releases.entry(extension.series).or_insert_with(|| TorchRelease {
                series: extension.series,
                python_min: None,
                python_max: None,
                companions: BTreeMap::new(),
                triton: TritonPins::default(),
                builds: Vec::new(),
            });
            release.python_min = extension.python_min.or(release.python_min);
            release.python_max = extension.python_max.or(release.python_max);
            release.companions.extend(extension.companions.iter().map(|(k, v)| (k.clone(), v.clone())));
            release.triton.extend(&extension.triton);
            for build in &extension.builds {
                match release.builds.iter_mut().find(|existing| existing.cuda == build.cuda) {
                    Some(existing) => *existing = build.clone(),
                    None => release.builds.push(build.clone()),
                }
            }
        }
        let minor_compat_floors =
            builtin.cuda_major.iter().map(|floor| (floor.major, floor.min_driver.clone())).collect();
        Ok(Self { releases, minor_compat_floors })
    }

    pub fn release(&self, series: TorchSeries) -> Option<&TorchRelease> {
        self.releases.get(&series)
    }

    pub fn known_series(&self) -> Vec<TorchSeries> {
        self.releases.keys().copied().collect()
    }

    /// Every CUDA tag any series has a build of, oldest CUDA first.
    pub fn cuda_tags(&self) -> Vec<CudaTag> {
        let tags: std::collections::BTreeSet<CudaTag> = self
            .releases
            .values()
            .flat_map(|release| release.builds.iter().map(|build| build.cuda))
            .collect();
        tags.into_iter().collect()
    }

    /// The oldest driver that runs CUDA runtimes of `major` under NVIDIA's
    /// minor-version compatibility.
    pub fn minor_compat_floor(&self, major: u32) -> Option<&DriverVersion> {
        self.minor_compat_floors.get(&major)
    }
}

impl TorchRelease {
    /// The build of this CUDA tag, whichever releases of the series have it.
    pub fn build(&self, cuda: CudaTag) -> Option<&TorchBuild> {
        self.builds.iter().find(|build| build.cuda == cuda)
    }

    /// The build of this CUDA tag that torch `version` has.
    pub fn build_for(&self, cuda: CudaTag, version: &pep440_rs::Version) -> Option<&TorchBuild> {
        self.build(cuda).filter(|build| build.serves(version))
    }

    /// The CUDA builds torch `version` has.
    pub fn builds_for<'a>(&'a self, version: &'a pep440_rs::Version) -> impl Iterator<Item = &'a TorchBuild> {
        self.builds.iter().filter(move |build| build.serves(version))
    }

    /// Why torch `version` has no `cuda` build: "torch 2.8 has no cu130 build (it has
    /// cu126, cu128, cu129)", or for a build later releases have, "torch 2.12.0 has no
    /// cu129 build (it has cu126, cu130, cu132; cu129 is built for torch >=2.12.1 only)".
    pub fn missing_build(&self, cuda: CudaTag, version: &pep440_rs::Version) -> String {
        let known: Vec<String> = self.builds_for(version).map(|build| build.cuda.to_string()).collect();
        match self.build(cuda).and_then(|build| build.versions.as_ref()) {
            Some(versions) => format!(
                "torch {version} has no {cuda} build (it has {}; {cuda} is built for torch {versions} only)",
                known.join(", ")
            ),
            None => format!("torch {} has no {cuda} build (it has {})", self.series, known.join(", ")),
        }
    }

    /// Why this release has no wheel for `python`, if it has none.
    pub fn python_problem(&self, python: PythonVersion) -> Option<String> {
        let below = self.python_min.is_some_and(|min| python < min);
        let above = self.python_max.is_some_and(|max| python > max);
        (below || above).then(|| {
            let range = match (self.python_min, self.python_max) {
                (Some(min), Some(max)) => format!("{min}–{max}"),
                (Some(min), None) => format!("{min} and later"),
                (None, Some(max)) => format!("up to {max}"),
                (None, None) => String::new(),
            };
            format!("torch {} has wheels for Python {range}, not {python}", self.series)
        })
    }

    /// "0.23.0+cu128" style pins of the companions for `build` on `platform` (no
    /// local tag where that platform's wheels have none), or the companion the build
    /// lacks.
    pub fn companion_versions(
        &self,
        companions: &[String],
        torch_patch: u64,
        build: &TorchBuild,
        platform: &str,
    ) -> Result<Vec<(String, String)>, String> {
        companions
            .iter()
            .map(|name| {
                let Some(version) = self.companions.get(name) else {
                    return Err(format!("no {name} release is known for torch {}", self.series));
                };
                if build.without.iter().any(|missing| missing == name) {
                    return Err(format!(
                        "{name} {version} has no {} build (leave it out of torch.with, or allow another CUDA \
                         build)",
                        build.cuda
                    ));
                }
                let release = version.version_for(torch_patch);
                if build.companion_tagged(name, platform) {
                    Ok((name.clone(), format!("{release}+{}", build.cuda)))
                } else {
                    Ok((name.clone(), release))
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests;
