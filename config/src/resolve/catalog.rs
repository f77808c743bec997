//! Facts about torch builds: which CUDA builds a torch series has, what driver each
//! needs and which GPU architectures it carries. Built into comfyfleet from
//! `config/data/torch-releases.toml`; a spec extends or corrects them with
//! `[[torch.release]]` tables of the same shape.

use std::collections::BTreeMap;
use std::sync::LazyLock;

use serde::{Deserialize, Serialize};

use crate::inventory::{ComputeCapability, CudaVersion};
use crate::spec::{CudaTag, TorchSeries};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TorchRelease {
    pub series: TorchSeries,
    /// Companion package → its series released with this torch (`torchvision` → `0.23`);
    /// the patch number follows torch's.
    #[serde(default)]
    pub companions: BTreeMap<String, TorchSeries>,
    #[serde(default, rename = "build")]
    pub builds: Vec<TorchBuild>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TorchBuild {
    pub cuda: CudaTag,
    /// The CUDA version the driver must support (NVML's `cuda_driver_version`).
    pub driver_cuda: CudaVersion,
    /// The matching Linux driver, for messages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_driver: Option<String>,
    /// SMs with compiled kernels.
    pub arch: Vec<ComputeCapability>,
    /// SMs shipped as PTX, JIT-compiled for later GPUs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ptx: Vec<ComputeCapability>,
}

/// Whether code compiled for `arch` (cubins) and `ptx` runs on a GPU of this SM:
/// a cubin runs on later minors of its major, PTX is JIT-compiled for any later GPU.
pub fn arch_covers(arch: &[ComputeCapability], ptx: &[ComputeCapability], gpu: ComputeCapability) -> bool {
    arch.iter().any(|sm| sm.major == gpu.major && sm.minor <= gpu.minor) || ptx.iter().any(|sm| *sm <= gpu)
}

/// What an installed torch says it carries: `torch.cuda.get_arch_list()`, e.g.
/// `["sm_75", "sm_80", "sm_86", "sm_90", "sm_120", "compute_120"]`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ArchList {
    pub arch: Vec<ComputeCapability>,
    pub ptx: Vec<ComputeCapability>,
}

impl ArchList {
    pub fn parse(entries: &[String]) -> Result<Self, String> {
        let mut list = ArchList::default();
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

    pub fn covers(&self, gpu: ComputeCapability) -> bool {
        arch_covers(&self.arch, &self.ptx, gpu)
    }
}

impl TorchBuild {
    /// Whether this build has code that runs on a GPU of this SM.
    pub fn covers(&self, gpu: ComputeCapability) -> bool {
        arch_covers(&self.arch, &self.ptx, gpu)
    }

    /// "7.5, 8.0, 8.6, 9.0, 10.0, 12.0 (+PTX 12.0)".
    pub fn describe_arch(&self) -> String {
        let mut text = self.arch.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ");
        if !self.ptx.is_empty() {
            let ptx = self.ptx.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ");
            text.push_str(&format!(" (+PTX {ptx})"));
        }
        text
    }

    /// "CUDA 12.8 (driver ≥ 570.26)".
    pub fn describe_driver_need(&self) -> String {
        match &self.min_driver {
            Some(driver) => format!("CUDA {} (driver ≥ {driver})", self.driver_cuda),
            None => format!("CUDA {}", self.driver_cuda),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CatalogFile {
    release: Vec<TorchRelease>,
}

static BUILTIN: LazyLock<Result<Vec<TorchRelease>, String>> = LazyLock::new(|| {
    toml::from_str::<CatalogFile>(include_str!("../../data/torch-releases.toml"))
        .map(|file| file.release)
        .map_err(|err| format!("comfyfleet's built-in torch table is unreadable: {err}"))
});

/// The torch facts a spec resolves against: the built-in table with the spec's own
/// `[[torch.release]]` entries laid over it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TorchCatalog {
    releases: BTreeMap<TorchSeries, TorchRelease>,
}

impl TorchCatalog {
    pub fn builtin() -> Result<Self, String> {
        Self::with_extensions(&[])
    }

    /// A spec entry for a known series adds companions and replaces builds of the same
    /// CUDA tag; an entry for a new series is taken whole.
    pub fn with_extensions(extensions: &[TorchRelease]) -> Result<Self, String> {
        let builtin = BUILTIN.as_ref().map_err(Clone::clone)?;
        let mut releases: BTreeMap<TorchSeries, TorchRelease> =
            builtin.iter().map(|release| (release.series, release.clone())).collect();
        for extension in extensions {
            let release = releases.entry(extension.series).or_insert_with(|| TorchRelease {
                series: extension.series,
                companions: BTreeMap::new(),
                builds: Vec::new(),
            });
            release.companions.extend(extension.companions.iter().map(|(k, v)| (k.clone(), *v)));
            for build in &extension.builds {
                match release.builds.iter_mut().find(|existing| existing.cuda == build.cuda) {
                    Some(existing) => *existing = build.clone(),
                    None => release.builds.push(build.clone()),
                }
            }
        }
        Ok(Self { releases })
    }

    pub fn release(&self, series: TorchSeries) -> Option<&TorchRelease> {
        self.releases.get(&series)
    }

    pub fn known_series(&self) -> Vec<TorchSeries> {
        self.releases.keys().copied().collect()
    }
}

impl TorchRelease {
    pub fn build(&self, cuda: CudaTag) -> Option<&TorchBuild> {
        self.builds.iter().find(|build| build.cuda == cuda)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cc(text: &str) -> ComputeCapability {
        text.parse().unwrap()
    }

    #[test]
    fn builtin_table_reads_and_knows_the_documented_facts() {
        let catalog = TorchCatalog::builtin().unwrap();
        let series = |text: &str| text.parse::<TorchSeries>().unwrap();
        let tag = |text: &str| text.parse::<CudaTag>().unwrap();
        let cu126 = catalog.release(series("2.8")).unwrap().build(tag("cu126")).unwrap();
        assert!(cu126.covers(cc("6.1")), "Pascal runs sm_60 cubins");
        assert!(cu126.covers(cc("8.9")), "Ada runs sm_86 cubins");
        assert!(!cu126.covers(cc("12.0")), "Blackwell has no cu126 kernels");
        let cu130 = catalog.release(series("2.10")).unwrap().build(tag("cu130")).unwrap();
        assert!(cu130.covers(cc("12.1")) && !cu130.covers(cc("7.0")));
        let cu128_211 = catalog.release(series("2.11")).unwrap().build(tag("cu128")).unwrap();
        assert!(!cu128_211.covers(cc("7.0")), "Volta dropped from cu128 in 2.11");
        assert_eq!(cu126.driver_cuda, CudaVersion::new(12, 6));
    }

    #[test]
    fn arch_lists_read_as_torch_prints_them() {
        let list = ArchList::parse(&[
            "sm_80".into(),
            "sm_86".into(),
            "sm_90a".into(),
            "sm_120".into(),
            "compute_120".into(),
        ])
        .unwrap();
        assert_eq!(list.arch, vec![cc("8.0"), cc("8.6"), cc("9.0"), cc("12.0")]);
        assert_eq!(list.ptx, vec![cc("12.0")]);
        assert!(list.covers(cc("8.9")) && list.covers(cc("12.1")) && !list.covers(cc("7.5")));
        assert!(ArchList::parse(&["gfx90a".into()]).is_err());
        assert!(ArchList::parse(&["sm_".into()]).is_err());
    }

    #[test]
    fn spec_extensions_add_series_and_replace_builds() {
        let extension: TorchRelease = toml::from_str(
            r#"
            series = "2.8"
            [[build]]
            cuda = "cu126"
            driver_cuda = "12.6"
            arch = ["8.0"]
            "#,
        )
        .unwrap();
        let catalog = TorchCatalog::with_extensions(&[extension]).unwrap();
        let release = catalog.release("2.8".parse().unwrap()).unwrap();
        assert_eq!(release.build("cu126".parse().unwrap()).unwrap().arch, vec![cc("8.0")]);
        assert!(release.build("cu128".parse().unwrap()).is_some(), "other builds kept");
        assert_eq!(release.companions["torchvision"].to_string(), "0.23");
    }
}
