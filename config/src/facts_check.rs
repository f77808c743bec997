//! `comfyfleet facts check`: what a torch index publishes (download.pytorch.org's
//! layout, `<base>/<cuda>/<package>/` PEP 503 pages, or a farm's mirror of it)
//! against the torch facts a spec resolves with. Pure: the CLI fetches the pages,
//! [`PublishedIndex`] reads them, [`compare`] lists every difference.

mod compare;
mod listing;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use pep440_rs::Version;

use crate::spec::CudaTag;
use crate::spec::wheel::WheelName;

pub use compare::{Difference, Report, compare};
pub use listing::wheel_file_names;

/// The projects read from each CUDA directory of the index.
pub const PACKAGES: [&str; 4] = ["torch", "torchvision", "torchaudio", "triton"];

/// A CPython a wheel installs into: `cp312` (or `cp39-abi3`, every CPython from 3.9).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct PythonTag {
    pub minor: u32,
    pub abi3: bool,
}

impl PythonTag {
    pub fn serves(&self, minor: u32) -> bool {
        self.minor == minor || (self.abi3 && self.minor <= minor)
    }
}

/// One wheel an index page lists.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct PublishedWheel {
    /// The public version, without the local tag: `2.12.1`.
    pub release: Version,
    /// `cu130` of `2.12.1+cu130`; `None` for an untagged (CPU) build.
    pub local: Option<String>,
    /// `x86_64` or `aarch64` (Linux only: other platforms are not read).
    pub platform: String,
    pub python: PythonTag,
}

impl PublishedWheel {
    /// `2.12.1+cu130`, as a pin names it.
    pub fn version(&self) -> String {
        match &self.local {
            Some(local) => format!("{}+{local}", self.release),
            None => self.release.to_string(),
        }
    }

    /// The Linux wheel a file name describes; `None` for another platform, a
    /// free-threaded (`cp313t`) or non-CPython build, or a pre-release.
    pub fn from_file_name(file_name: &str) -> Option<Self> {
        let wheel = WheelName::parse(file_name).ok()?;
        if wheel.version.any_prerelease() {
            return None;
        }
        let platform = ["x86_64", "aarch64"].into_iter().find(|arch| {
            wheel.platform_tags.iter().any(|tag| tag.contains("linux") && tag.ends_with(arch))
        })?;
        let abi3 = wheel.abi_tags.iter().any(|abi| abi == "abi3");
        let gil = abi3 || wheel.abi_tags.iter().any(|abi| abi.starts_with("cp") && !abi.ends_with('t'));
        if !gil {
            return None;
        }
        let minor = wheel.python_tags.iter().find_map(|tag| tag.strip_prefix("cp3")?.parse::<u32>().ok())?;
        let text = wheel.version.to_string();
        let (release, local) = match text.split_once('+') {
            Some((release, local)) => (release.to_owned(), Some(local.to_owned())),
            None => (text, None),
        };
        Some(Self {
            release: release.parse().ok()?,
            local,
            platform: platform.to_owned(),
            python: PythonTag { minor, abi3 },
        })
    }
}

/// What an index publishes: per CUDA directory and project, its Linux wheels.
#[derive(Debug, Clone, Default)]
pub struct PublishedIndex {
    pages: BTreeMap<(CudaTag, String), Vec<PublishedWheel>>,
    /// Pages the index does not have (404): nothing is published there.
    absent: BTreeSet<(CudaTag, String)>,
}

impl PublishedIndex {
    /// Reads a PEP 503 page (`<base>/cu130/torch/`); returns how many of its links
    /// were wheels it kept.
    pub fn add_page(&mut self, cuda: CudaTag, package: &str, html: &str) -> usize {
        let wheels: Vec<PublishedWheel> =
            wheel_file_names(html).iter().filter_map(|name| PublishedWheel::from_file_name(name)).collect();
        let kept = wheels.len();
        self.pages.entry((cuda, package.to_owned())).or_default().extend(wheels);
        kept
    }

    /// Records that the index has no such page.
    pub fn add_absent_page(&mut self, cuda: CudaTag, package: &str) {
        self.absent.insert((cuda, package.to_owned()));
    }

    /// The wheels of `package` in the `cuda` directory.
    pub fn wheels(&self, cuda: CudaTag, package: &str) -> &[PublishedWheel] {
        self.pages.get(&(cuda, package.to_owned())).map_or(&[], Vec::as_slice)
    }

    /// The CUDA directories read, with or without pages.
    pub fn cuda_tags(&self) -> BTreeSet<CudaTag> {
        self.pages.keys().chain(&self.absent).map(|(cuda, _)| *cuda).collect()
    }

    /// Whether the index has the page at all.
    pub fn has_page(&self, cuda: CudaTag, package: &str) -> bool {
        self.pages.contains_key(&(cuda, package.to_owned()))
    }
}

impl fmt::Display for PythonTag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.abi3 { write!(f, "cp3{}-abi3", self.minor) } else { write!(f, "cp3{}", self.minor) }
    }
}

#[cfg(test)]
mod tests;
