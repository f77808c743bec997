//! The standard stand-in catalogue: every package a ComfyUI environment of the
//! test specs installs, in the places the real ones live.
//!
//! - `whl/<cuda>/`: torch 2.8.0 (cu126, cu128, cu130) and 2.9.0 (cu128, cu130) with
//!   torchvision and torchaudio, their architecture lists taken from
//!   config/data/torch-releases.toml so the stand-ins agree with the resolver.
//! - `simple/`: a stand-in for each line of tests/fixtures/comfyui-requirements.txt,
//!   the custom nodes' extra requirements, triton 3.3–3.5, and two CPU torch decoys
//!   (`torch 2.3.0`, `torch-cpu 2.3.0`) that a correct install never picks.
//! - `wheels/`: SageAttention 2 per-SM builds and SageAttention 3 for Blackwell, for
//!   every CUDA build and torch series, reached by URL as a spec lists them.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::index::{IndexLayout, IndexedWheel};
use super::packages::{self, KernelTarget};
use super::requirements::parse_requirements;

/// ComfyUI's real requirements.txt, the list the stand-in ComfyUI repository carries.
pub const COMFYUI_REQUIREMENTS: &str = include_str!("../../../fixtures/comfyui-requirements.txt");

const TORCH_RELEASES: &str = include_str!("../../../../config/data/torch-releases.toml");

/// The torch releases built: release, torchvision, torchaudio and CUDA builds. 2.9
/// has no cu126 build here although PyTorch has one, so a test can see a build the
/// resolver allows fail to install.
const TORCH_RELEASES_BUILT: [(&str, &str, &str, &[&str]); 2] = [
    ("2.8.0", "0.23.0", "2.8.0", &["cu126", "cu128", "cu130"]),
    ("2.9.0", "0.24.0", "2.9.0", &["cu128", "cu130"]),
];
/// The CUDA builds kernel wheels are compiled against, for both torch series.
const KERNEL_CUDA_BUILDS: [&str; 3] = ["cu126", "cu128", "cu130"];

/// SageAttention 2's per-SM builds: directory, compute range, the SM it names.
const SAGEATTENTION_RANGES: [(&str, &str, &str); 5] = [
    ("sm70", ">=7.0,<8.0", "7.0"),
    ("sm80", ">=8.0,<8.6", "8.0"),
    ("sm86", ">=8.6,<8.9", "8.6"),
    ("sm89", ">=8.9,<9.0", "8.9"),
    ("sm90", ">=9.0,<10.0", "9.0"),
];
const SAGEATTENTION3_RANGE: &str = ">=10.0,<13.0";

/// Packages custom nodes ask for that ComfyUI's own file does not have.
const CUSTOM_NODE_EXTRAS: [(&str, &str); 1] = [("imageio-ffmpeg", "0.6.0")];
const TRITON_VERSIONS: [&str; 3] = ["3.3.0", "3.4.0", "3.5.0"];

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
    pub python_tag: String,
    pub cuda: String,
    pub torch_series: String,
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
    let facts = TorchFacts::parse();
    let mut builds = Vec::new();
    for (release, vision, audio, cuda_builds) in TORCH_RELEASES_BUILT {
        let series = release.rsplit_once('.').map(|(series, _)| series).unwrap();
        for &cuda in cuda_builds {
            let (cuda_version, arch_list) = facts.build(series, cuda);
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
    for (release, _, _, _) in TORCH_RELEASES_BUILT {
        let torch_series = release.rsplit_once('.').map(|(series, _)| series).unwrap();
        for cuda in KERNEL_CUDA_BUILDS {
            for (directory, compute, sm) in SAGEATTENTION_RANGES {
                let target = KernelTarget { sm, compute, cuda, torch_series, python_tag };
                let wheel = packages::kernel("sageattention", "sageattention", "2.2.0", target);
                kernels.push(KernelWheel {
                    optimization: "sageattention".to_owned(),
                    import: "sageattention".to_owned(),
                    compute: compute.to_owned(),
                    python_tag: python_tag.to_owned(),
                    cuda: cuda.to_owned(),
                    torch_series: torch_series.to_owned(),
                    wheel: layout.add_free_standing(&format!("sageattention/{directory}"), &wheel),
                });
            }
            // SageAttention 3's FP4 kernels need CUDA 12.8 or later.
            if cuda == "cu126" {
                continue;
            }
            let target =
                KernelTarget { sm: "10.0", compute: SAGEATTENTION3_RANGE, cuda, torch_series, python_tag };
            let wheel = packages::kernel("sageattn3", "sageattn3", "1.0.0", target);
            kernels.push(KernelWheel {
                optimization: "sageattention3".to_owned(),
                import: "sageattn3".to_owned(),
                compute: SAGEATTENTION3_RANGE.to_owned(),
                python_tag: python_tag.to_owned(),
                cuda: cuda.to_owned(),
                torch_series: torch_series.to_owned(),
                wheel: layout.add_free_standing("sageattention3", &wheel),
            });
        }
    }
    kernels
}

/// The build facts of config/data/torch-releases.toml.
struct TorchFacts(toml::Table);

impl TorchFacts {
    fn parse() -> Self {
        Self(toml::from_str(TORCH_RELEASES).unwrap())
    }

    /// `torch.version.cuda` and `get_arch_list()` of one build: `arch` 8.6 is the
    /// cubin `sm_86`, `ptx` 12.0 the PTX `compute_120`, as real torch names them.
    fn build(&self, series: &str, cuda: &str) -> (String, Vec<String>) {
        let releases = self.0["release"].as_array().unwrap();
        let release = releases
            .iter()
            .find(|release| release["series"].as_str() == Some(series))
            .unwrap_or_else(|| panic!("torch-releases.toml has no series {series}"));
        let build = release["build"]
            .as_array()
            .unwrap()
            .iter()
            .find(|build| build["cuda"].as_str() == Some(cuda))
            .unwrap_or_else(|| panic!("torch-releases.toml has no {cuda} build of torch {series}"));
        let architectures = |key: &str, prefix: &str| -> Vec<String> {
            build.get(key).and_then(toml::Value::as_array).map_or_else(Vec::new, |list| {
                list.iter()
                    .map(|arch| format!("{prefix}{}", arch.as_str().unwrap().replace('.', "")))
                    .collect()
            })
        };
        let mut arch_list = architectures("arch", "sm_");
        arch_list.extend(architectures("ptx", "compute_"));
        (build["driver_cuda"].as_str().unwrap().to_owned(), arch_list)
    }
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

        let cu130 = catalog.torch_build("2.8.0+cu130");
        assert_eq!(cu130.cuda_version, "13.0");
        assert_eq!(cu130.arch_list, ["sm_75", "sm_80", "sm_86", "sm_90", "sm_100", "sm_120", "compute_120"]);
        assert_eq!(catalog.torch_build("2.9.0+cu128").torchvision.version, "0.24.0+cu128");
        assert_eq!(catalog.torch_builds.len(), 5);
        assert_eq!(catalog.kernel_wheels.len(), 2 * 3 * 5 + 2 * 2);
        let sm89 = catalog.sageattention_for("8.9", "cu128", "2.8");
        assert_eq!(
            sm89.wheel.url_path,
            "/wheels/sageattention/sm89/sageattention-2.2.0%2Bcu128torch2.8-cp311-cp311-linux_x86_64.whl"
        );
        let sm86 = catalog.sageattention_for("8.6", "cu128", "2.8");
        assert_eq!(sm86.wheel.wheel.file_name, sm89.wheel.wheel.file_name);
        assert_ne!(sm86.wheel.wheel.sha256, sm89.wheel.wheel.sha256, "per-SM builds differ in content");

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
