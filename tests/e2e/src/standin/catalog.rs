//! The standard stand-in catalogue: every package a ComfyUI environment of the
//! test specs installs, in the places the real ones live.
//!
//! - `whl/<cuda>/`: torch 2.8.0 (cu126, cu128), 2.9.0 and 2.11.0 (cu126, cu128,
//!   cu130) with torchvision and torchaudio, their architecture lists taken from
//!   comfyfleet's torch facts (config/data/torch-releases.toml) so the stand-ins
//!   agree with the resolver.
//! - `simple/`: a stand-in for each line of tests/fixtures/comfyui-requirements.txt,
//!   the custom nodes' extra requirements, triton 3.3–3.5, and two CPU torch decoys
//!   (`torch 2.3.0`, `torch-cpu 2.3.0`) that a correct install never picks.
//! - `wheels/`: SageAttention 2 per-SM builds for torch 2.8 and 2.9, SageAttention 2
//!   "fat" stable-ABI builds shaped like upstream's (SM 8.0/8.6/8.9/9.0/12.0 in one
//!   `cp39-abi3` wheel for torch 2.9 and later), and SageAttention 3 per Blackwell
//!   SM, reached by URL as a spec lists them. Each has a `sageattn` (or
//!   `sageattn3_blackwell`) that runs only on the SMs it has kernels for.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::index::{IndexLayout, IndexedWheel};
use super::packages::{self, KernelTarget};
use super::requirements::parse_requirements;
use comfyfleet_config::spec::ComputeSet;
use comfyfleet_config::spec::catalog::TorchCatalog;

/// ComfyUI's real requirements.txt, the list the stand-in ComfyUI repository carries.
pub const COMFYUI_REQUIREMENTS: &str = include_str!("../../../fixtures/comfyui-requirements.txt");

/// The torch releases built: release, torchvision, torchaudio and CUDA builds. 2.8
/// has no cu129 build here although PyTorch has one, so a test can see a build the
/// resolver allows fail to install.
const TORCH_RELEASES_BUILT: [(&str, &str, &str, &[&str]); 3] = [
    ("2.8.0", "0.23.0", "2.8.0", &["cu126", "cu128"]),
    ("2.9.0", "0.24.0", "2.9.0", &["cu126", "cu128", "cu130"]),
    ("2.11.0", "0.26.0", "2.11.0", &["cu126", "cu128", "cu130"]),
];
/// Torch series and CUDA builds the per-SM SageAttention 2 wheels are compiled for.
const PER_SM_BUILDS: [(&str, &[&str]); 2] =
    [("2.8", &["cu126", "cu128"]), ("2.9", &["cu126", "cu128", "cu130"])];
/// The stable-ABI SageAttention 2 wheels: every torch from 2.9, these CUDA builds.
const FAT_CUDA_BUILDS: [&str; 2] = ["cu128", "cu130"];
/// The SMs upstream's SageAttention 2.2 wheels have kernels for (not 10.x).
pub const FAT_SMS: [&str; 5] = ["8.0", "8.6", "8.9", "9.0", "12.0"];
/// SageAttention 3's Blackwell SMs (each wheel runs on exactly one), per torch series.
const SAGEATTENTION3_SMS: [&str; 2] = ["10.0", "12.0"];
const SAGEATTENTION3_BUILDS: [(&str, &[&str]); 2] =
    [("2.9", &["cu128", "cu130"]), ("2.11", &["cu128", "cu130"])];

/// SageAttention 2's per-SM builds: directory, compute range, the SM it names.
const SAGEATTENTION_RANGES: [(&str, &str, &str); 5] = [
    ("sm70", ">=7.0,<8.0", "7.0"),
    ("sm80", ">=8.0,<8.6", "8.0"),
    ("sm86", ">=8.6,<8.9", "8.6"),
    ("sm89", ">=8.9,<9.0", "8.9"),
    ("sm90", ">=9.0,<10.0", "9.0"),
];

/// Packages custom nodes ask for that ComfyUI's own file does not have, and the
/// manager package the stand-in ComfyUI 0.33.0's manager_requirements.txt pins.
const CUSTOM_NODE_EXTRAS: [(&str, &str); 2] = [("imageio-ffmpeg", "0.6.0"), ("comfyui_manager", "4.2.2")];
const TRITON_VERSIONS: [&str; 4] = ["3.3.0", "3.4.0", "3.5.0", "3.6.0"];

#[derive(Debug, Clone)]
pub struct CatalogOptions {
    /// The venv's CPython tag (`cp311`): kernel and torch wheels are built for it.
    pub python_tag: String,
    /// Added to every torch wheel as incompressible padding (benchmarks: a torch of
    /// realistic weight). 0 keeps torch tiny.
    pub torch_padding_bytes: u64,
    /// Wheel files built elsewhere to list on the default index too, e.g. the real
    /// uv wheel an agent bootstraps from its configured index.
    pub extra_wheels: Vec<PathBuf>,
}

impl CatalogOptions {
    pub fn new(python_tag: &str) -> Self {
        Self { python_tag: python_tag.to_owned(), torch_padding_bytes: 0, extra_wheels: Vec::new() }
    }
}

/// One torch build and its companions, as installed from `whl/<cuda>/`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TorchBuild {
    /// With its local tag: `2.8.0+cu128`.
    pub version: String,
    /// `2.8`.
    pub series: String,
    pub cuda: String,
    /// What `torch.version.cuda` says: `12.8`.
    pub cuda_version: String,
    /// What `torch.cuda.get_arch_list()` returns.
    pub arch_list: Vec<String>,
    pub torch: IndexedWheel,
    pub torchvision: IndexedWheel,
    pub torchaudio: IndexedWheel,
}

/// A prebuilt kernel wheel reached by URL, with what a spec's `[[optimization.wheel]]` says of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KernelWheel {
    /// The optimisation it belongs to: `sageattention` or `sageattention3`.
    pub optimization: String,
    /// The module it installs: `sageattention` or `sageattn3`.
    pub import: String,
    /// `>=8.9,<9.0`.
    pub compute: String,
    /// What a spec's `python` says: `cp311`, or `cp39-abi3` for a stable-ABI wheel.
    pub python_tag: String,
    pub cuda: String,
    /// What a spec's `torch` says: `2.8`, or `>=2.9` for a stable-ABI wheel.
    pub torch_series: String,
    /// The smoke call a spec names for it: `sageattention.sageattn`.
    pub smoke: String,
    pub wheel: IndexedWheel,
}

/// The stand-in catalogue on disk, with what tests need to know about it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Catalog {
    pub root: PathBuf,
    pub python_tag: String,
    pub torch_builds: Vec<TorchBuild>,
    pub kernel_wheels: Vec<KernelWheel>,
    /// Everything else on the default index (requirements, triton, extra wheels),
    /// decoys excluded.
    pub index_wheels: Vec<IndexedWheel>,
    /// CPU torch builds on the default index that must never be installed.
    pub decoys: Vec<IndexedWheel>,
}

impl Catalog {
    /// The standard catalogue for `python_tag`, written under `root`.
    pub fn standard(root: &Path, python_tag: &str) -> Catalog {
        Self::build(root, &CatalogOptions::new(python_tag))
    }

    pub fn build(root: &Path, options: &CatalogOptions) -> Catalog {
        let python_tag = options.python_tag.as_str();
        let mut layout = IndexLayout::create(root);
        let torch_builds = build_torch(&mut layout, python_tag, options.torch_padding_bytes);
        let mut index_wheels = build_default_index(&mut layout);
        for wheel in &options.extra_wheels {
            index_wheels.push(layout.add_existing_to_default_index(wheel));
        }
        let decoys = vec![
            layout.add_to_default_index(&packages::torch_decoy("torch", "2.3.0")),
            layout.add_to_default_index(&packages::torch_decoy("torch-cpu", "2.3.0")),
        ];
        let kernel_wheels = build_kernels(&mut layout, python_tag);
        layout.write_pages();
        Catalog {
            root: root.to_owned(),
            python_tag: python_tag.to_owned(),
            torch_builds,
            kernel_wheels,
            index_wheels,
            decoys,
        }
    }

    /// `MAJOR.MINOR` of the Python the catalogue was built for (`cp311` → `3.11`).
    pub fn python_version(&self) -> String {
        let digits = self.python_tag.strip_prefix("cp").unwrap_or(&self.python_tag);
        let (major, minor) = digits.split_at(1);
        format!("{major}.{minor}")
    }

    /// The build with this full version (`2.8.0+cu128`).
    pub fn torch_build(&self, version: &str) -> &TorchBuild {
        self.torch_builds
            .iter()
            .find(|build| build.version == version)
            .unwrap_or_else(|| panic!("the catalogue has no torch {version}"))
    }

    /// A kernel wheel by optimisation, compute range, CUDA build and torch series.
    pub fn kernel_wheel(
        &self,
        optimization: &str,
        compute: &str,
        cuda: &str,
        torch_series: &str,
    ) -> Option<&KernelWheel> {
        let compact = |text: &str| text.chars().filter(|c| !c.is_whitespace()).collect::<String>();
        self.kernel_wheels.iter().find(|wheel| {
            wheel.optimization == optimization
                && compact(&wheel.compute) == compact(compute)
                && wheel.cuda == cuda
                && wheel.torch_series == torch_series
        })
    }

    /// The SageAttention 2 wheel whose range holds `compute` (`8.9`).
    pub fn sageattention_for(&self, compute: &str, cuda: &str, torch_series: &str) -> &KernelWheel {
        let range = SAGEATTENTION_RANGES
            .iter()
            .find(|(_, _, sm)| *sm == compute)
            .map(|(_, range, _)| *range)
            .unwrap_or_else(|| panic!("no SageAttention build names SM {compute}"));
        self.kernel_wheel("sageattention", range, cuda, torch_series).unwrap()
    }

    /// The stable-ABI SageAttention 2 wheel for `cuda` (SM 8.0/8.6/8.9/9.0/12.0, torch >= 2.9).
    pub fn fat_sageattention(&self, cuda: &str) -> &KernelWheel {
        self.kernel_wheels
            .iter()
            .find(|wheel| {
                wheel.optimization == "sageattention" && wheel.torch_series == ">=2.9" && wheel.cuda == cuda
            })
            .unwrap_or_else(|| panic!("no stable-ABI SageAttention wheel for {cuda}"))
    }

    /// A package on the default index by name.
    pub fn index_wheel(&self, name: &str) -> &IndexedWheel {
        self.index_wheels
            .iter()
            .find(|wheel| wheel.name.eq_ignore_ascii_case(name))
            .unwrap_or_else(|| panic!("the catalogue has no {name} on the default index"))
    }

    /// Every wheel the catalogue holds.
    pub fn all_wheels(&self) -> impl Iterator<Item = &IndexedWheel> {
        let torch =
            self.torch_builds.iter().flat_map(|build| [&build.torch, &build.torchvision, &build.torchaudio]);
        torch
            .chain(self.kernel_wheels.iter().map(|kernel| &kernel.wheel))
            .chain(&self.index_wheels)
            .chain(&self.decoys)
    }
}

fn build_torch(layout: &mut IndexLayout, python_tag: &str, padding: u64) -> Vec<TorchBuild> {
    let facts = TorchCatalog::builtin().unwrap();
    let mut builds = Vec::new();
    for (release, vision, audio, cuda_builds) in TORCH_RELEASES_BUILT {
        let series = release.rsplit_once('.').map(|(series, _)| series).unwrap();
        for &cuda in cuda_builds {
            let build = facts
                .release(series.parse().unwrap())
                .and_then(|facts| facts.build(cuda.parse().unwrap()))
                .unwrap_or_else(|| panic!("comfyfleet's torch facts have no {cuda} build of torch {series}"));
            let cuda_version = build.driver_cuda.to_string();
            let arch_list = build.for_platform("x86_64").unwrap().to_arch_list();
            let version = format!("{release}+{cuda}");
            let torch = packages::torch(&version, &cuda_version, &arch_list, python_tag).padding(padding);
            let companion = |name: &str, companion_release: &str| {
                packages::torch_companion(name, &format!("{companion_release}+{cuda}"), release, python_tag)
            };
            builds.push(TorchBuild {
                version,
                series: series.to_owned(),
                cuda: cuda.to_owned(),
                cuda_version,
                arch_list,
                torch: layout.add_to_torch_index(cuda, &torch),
                torchvision: layout.add_to_torch_index(cuda, &companion("torchvision", vision)),
                torchaudio: layout.add_to_torch_index(cuda, &companion("torchaudio", audio)),
            });
        }
    }
    builds
}

fn build_default_index(layout: &mut IndexLayout) -> Vec<IndexedWheel> {
    let from_torch_index: BTreeSet<&str> = ["torch", "torchvision", "torchaudio"].into();
    let mut wheels = Vec::new();
    for requirement in parse_requirements(COMFYUI_REQUIREMENTS) {
        if from_torch_index.contains(requirement.name.to_ascii_lowercase().as_str()) {
            continue;
        }
        wheels.push(
            layout.add_to_default_index(&packages::plain_module(&requirement.name, &requirement.version)),
        );
    }
    for (name, version) in CUSTOM_NODE_EXTRAS {
        wheels.push(layout.add_to_default_index(&packages::plain_module(name, version)));
    }
    for version in TRITON_VERSIONS {
        wheels.push(layout.add_to_default_index(&packages::plain_module("triton", version)));
    }
    wheels
}

fn build_kernels(layout: &mut IndexLayout, python_tag: &str) -> Vec<KernelWheel> {
    let mut kernels = Vec::new();
    let mut add = |layout: &mut IndexLayout, directory: String, spec: KernelSpec<'_>| {
        let set = ComputeSet::parse(spec.compute)
            .or_else(|_| ComputeSet::parse_list(&list_items(spec.compute)))
            .unwrap();
        let target = KernelTarget {
            sm: spec.sm,
            compute: spec.compute,
            kernels: set.ordinal_intervals(),
            cuda: spec.cuda,
            torch_series: spec.torch_series,
            torch_label: spec.torch_label,
            tags: spec.tags,
        };
        let (optimization, module, function) = spec.package;
        let distribution = if optimization == "sageattention" { "sageattention" } else { "sageattn3" };
        let wheel = packages::kernel(distribution, module, function, spec.release, target);
        kernels.push(KernelWheel {
            optimization: optimization.to_owned(),
            import: module.to_owned(),
            compute: spec.compute.to_owned(),
            python_tag: spec.python.to_owned(),
            cuda: spec.cuda.to_owned(),
            torch_series: spec.torch_match.to_owned(),
            smoke: format!("{module}.{function}"),
            wheel: layout.add_free_standing(&directory, &wheel),
        });
    };
    for (torch_series, cuda_builds) in PER_SM_BUILDS {
        let label = format!("torch{torch_series}");
        for &cuda in cuda_builds {
            for (directory, compute, sm) in SAGEATTENTION_RANGES {
                let spec = KernelSpec {
                    package: SAGEATTENTION,
                    release: "2.2.0",
                    sm,
                    compute,
                    cuda,
                    torch_series,
                    torch_match: torch_series,
                    torch_label: &label,
                    tags: (python_tag, python_tag),
                    python: python_tag,
                };
                add(layout, format!("sageattention/{directory}"), spec);
            }
        }
    }
    let fat = format!("[{}]", FAT_SMS.map(|sm| format!("\"{sm}\"")).join(", "));
    for cuda in FAT_CUDA_BUILDS {
        let spec = KernelSpec {
            package: SAGEATTENTION,
            release: "2.2.0",
            sm: FAT_SMS[0],
            compute: &fat,
            cuda,
            torch_series: "2.9",
            torch_match: ">=2.9",
            torch_label: "torch2.9.0andhigher.post4",
            tags: ("cp39", "abi3"),
            python: "cp39-abi3",
        };
        add(layout, "sageattention/fat".to_owned(), spec);
    }
    for (torch_series, cuda_builds) in SAGEATTENTION3_BUILDS {
        let label = format!("torch{torch_series}");
        for &cuda in cuda_builds {
            for sm in SAGEATTENTION3_SMS {
                let spec = KernelSpec {
                    package: SAGEATTENTION3,
                    release: "1.0.0",
                    sm,
                    compute: sm,
                    cuda,
                    torch_series,
                    torch_match: torch_series,
                    torch_label: &label,
                    tags: (python_tag, python_tag),
                    python: python_tag,
                };
                add(layout, format!("sageattention3/sm{}", sm.replace('.', "")), spec);
            }
        }
    }
    kernels
}

/// A stable-ABI SageAttention 2 wheel for `cuda` (named as upstream's, torch 2.9 and
/// later) that has kernels for `sms` only, served at `wheels/<directory>/` of the
/// catalogue at `root`: what a mislabelled or partial build looks like.
pub fn fat_sageattention_with(root: &Path, directory: &str, sms: &[&str], cuda: &str) -> IndexedWheel {
    let compute = format!("[{}]", sms.iter().map(|sm| format!("\"{sm}\"")).collect::<Vec<_>>().join(", "));
    let set = ComputeSet::parse_list(&list_items(&compute)).unwrap();
    let target = KernelTarget {
        sm: sms[0],
        compute: &compute,
        kernels: set.ordinal_intervals(),
        cuda,
        torch_series: "2.9",
        torch_label: "torch2.9.0andhigher.post4",
        tags: ("cp39", "abi3"),
    };
    let (_, module, function) = SAGEATTENTION;
    let wheel = packages::kernel("sageattention", module, function, "2.2.0", target);
    IndexLayout::create(root).add_free_standing(directory, &wheel)
}

/// (optimisation, module, smoke function) of SageAttention 2 and 3.
const SAGEATTENTION: (&str, &str, &str) = ("sageattention", "sageattention", "sageattn");
const SAGEATTENTION3: (&str, &str, &str) = ("sageattention3", "sageattn3", "sageattn3_blackwell");

/// One kernel wheel to build.
struct KernelSpec<'a> {
    package: (&'a str, &'a str, &'a str),
    release: &'a str,
    sm: &'a str,
    compute: &'a str,
    cuda: &'a str,
    torch_series: &'a str,
    torch_match: &'a str,
    torch_label: &'a str,
    tags: (&'a str, &'a str),
    python: &'a str,
}

/// `["8.0", "8.6"]` → the items.
fn list_items(text: &str) -> Vec<String> {
    text.trim_matches(['[', ']'])
        .split(',')
        .map(|item| item.trim().trim_matches('"').to_owned())
        .filter(|item| !item.is_empty())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_standard_catalogue_has_every_build_and_is_quick_to_write() {
        let dir = tempfile::tempdir().unwrap();
        let started = std::time::Instant::now();
        let catalog = Catalog::standard(dir.path(), "cp311");
        let elapsed = started.elapsed();
        // Generous for a debug build on a loaded CI machine; typically ~0.1 s.
        assert!(elapsed < std::time::Duration::from_secs(3), "building the catalogue took {elapsed:?}");

        let cu130 = catalog.torch_build("2.9.0+cu130");
        assert_eq!(cu130.cuda_version, "13.0");
        assert_eq!(cu130.arch_list, ["sm_75", "sm_80", "sm_86", "sm_90", "sm_100", "sm_120", "compute_120"]);
        assert_eq!(
            catalog.torch_build("2.11.0+cu130").arch_list.last().unwrap(),
            "sm_120",
            "2.11 cu130 has no PTX"
        );
        assert_eq!(catalog.torch_build("2.9.0+cu128").torchvision.version, "0.24.0+cu128");
        assert_eq!(catalog.torch_builds.len(), 8);
        assert_eq!(catalog.kernel_wheels.len(), (2 + 3) * 5 + 2 + 2 * 2 * 2);
        let sm89 = catalog.sageattention_for("8.9", "cu128", "2.8");
        assert_eq!(
            sm89.wheel.url_path,
            "/wheels/sageattention/sm89/sageattention-2.2.0%2Bcu128torch2.8-cp311-cp311-linux_x86_64.whl"
        );
        let sm86 = catalog.sageattention_for("8.6", "cu128", "2.8");
        assert_eq!(sm86.wheel.wheel.file_name, sm89.wheel.wheel.file_name);
        assert_ne!(sm86.wheel.wheel.sha256, sm89.wheel.wheel.sha256, "per-SM builds differ in content");
        let fat = catalog.fat_sageattention("cu130");
        assert_eq!(
            fat.wheel.wheel.file_name,
            "sageattention-2.2.0+cu130torch2.9.0andhigher.post4-cp39-abi3-linux_x86_64.whl"
        );
        assert_eq!((fat.python_tag.as_str(), fat.smoke.as_str()), ("cp39-abi3", "sageattention.sageattn"));

        for requirement in parse_requirements(COMFYUI_REQUIREMENTS) {
            let project = super::super::index::normalized_project(&requirement.name);
            assert!(
                dir.path().join("simple").join(&project).join("index.html").exists()
                    || ["torch", "torchvision", "torchaudio"].contains(&project.as_str()),
                "{project} has no stand-in"
            );
        }
        assert_eq!(catalog.index_wheel("comfyui-frontend-package").version, "1.45.15");
        assert_eq!(catalog.index_wheel("numpy").version, "1.25.0");
        let torch_page = std::fs::read_to_string(dir.path().join("simple/torch/index.html")).unwrap();
        assert!(torch_page.contains("torch-2.3.0-py3-none-any.whl"), "the decoy is on the default index");
        assert!(!torch_page.contains("cu128"));
    }
}
