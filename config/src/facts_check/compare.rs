//! The comparison: for every torch release the index publishes as a CUDA build, the
//! builds, platforms, Python tags, companions and triton the facts claim for it,
//! against the wheels that are there.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use pep440_rs::Version;

use super::{PublishedIndex, PublishedWheel};
use crate::spec::catalog::{TorchBuild, TorchCatalog, TorchRelease};
use crate::spec::{CudaTag, TorchSeries};

const PLATFORMS: [&str; 2] = ["x86_64", "aarch64"];

/// What [`compare`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// The torch releases compared, oldest first.
    pub compared: Vec<Version>,
    /// Series the facts know of which the index publishes no release (a mirror
    /// holds what its farm uses): not compared, not a difference.
    pub not_published: Vec<TorchSeries>,
    /// Releases older than every series the facts know: not compared.
    pub older: Vec<Version>,
    pub differences: Vec<Difference>,
}

/// One way the index and the facts disagree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Difference {
    /// A torch series newer than (or between) those the facts know.
    UnknownSeries { torch: Version, builds: Vec<CudaTag> },
    /// A CUDA build of a known release that the facts do not have.
    UnknownBuild { torch: Version, cuda: CudaTag, platforms: Vec<String> },
    /// A CUDA build the facts claim for a release that the index lacks.
    MissingBuild { torch: Version, cuda: CudaTag },
    /// The facts claim wheels for this platform; the index has none.
    MissingPlatform { torch: Version, cuda: CudaTag, platform: String },
    /// The index has wheels for this platform; the facts say there are none.
    UnknownPlatform { torch: Version, cuda: CudaTag, platform: String },
    /// A companion (or the triton) the facts pin for a build, with no wheel for the
    /// platform; `found`: what the page has of that release instead.
    MissingPackage {
        torch: Version,
        cuda: CudaTag,
        package: String,
        version: String,
        platform: String,
        found: Vec<String>,
    },
    /// Python versions within the facts' range a package has no wheel for.
    MissingPython { package: String, version: String, platform: String, pythons: Vec<u32>, range: String },
    /// Python versions outside the facts' range that torch and every companion of
    /// the build publish wheels for.
    ExtraPython { torch: Version, cuda: CudaTag, platform: String, pythons: Vec<u32>, range: String },
    /// A companion the facts say the build lacks, published anyway.
    PublishedWithout { torch: Version, cuda: CudaTag, package: String, version: String },
}

/// Compares what `index` publishes with `catalog`.
pub fn compare(catalog: &TorchCatalog, index: &PublishedIndex) -> Report {
    // torch release → CUDA build → platforms with a wheel of that build. Untagged
    // torch wheels in a CUDA directory are CPU builds, not that CUDA build.
    let mut torch: BTreeMap<Version, BTreeMap<CudaTag, BTreeSet<String>>> = BTreeMap::new();
    for cuda in index.cuda_tags() {
        let tag = cuda.to_string();
        for wheel in index.wheels(cuda, "torch").iter().filter(|wheel| wheel.local.as_deref() == Some(&tag)) {
            torch
                .entry(wheel.release.clone())
                .or_default()
                .entry(cuda)
                .or_default()
                .insert(wheel.platform.clone());
        }
    }
    let known = catalog.known_series();
    let oldest = known.first().copied();
    let mut report = Report::default();
    let mut published_series = BTreeSet::new();
    for (version, builds) in &torch {
        let series = TorchSeries::of(version);
        match catalog.release(series) {
            Some(release) => {
                published_series.insert(series);
                report.compared.push(version.clone());
                compare_release(release, version, builds, index, &mut report.differences);
            }
            None if oldest.is_none_or(|oldest| series < oldest) => report.older.push(version.clone()),
            None => report.differences.push(Difference::UnknownSeries {
                torch: version.clone(),
                builds: builds.keys().copied().collect(),
            }),
        }
    }
    report.not_published = known.into_iter().filter(|series| !published_series.contains(series)).collect();
    report
}

fn compare_release(
    release: &TorchRelease,
    version: &Version,
    published: &BTreeMap<CudaTag, BTreeSet<String>>,
    index: &PublishedIndex,
    out: &mut Vec<Difference>,
) {
    let expected: BTreeMap<CudaTag, &TorchBuild> =
        release.builds_for(version).map(|build| (build.cuda, build)).collect();
    for (cuda, platforms) in published {
        if !expected.contains_key(cuda) {
            out.push(Difference::UnknownBuild {
                torch: version.clone(),
                cuda: *cuda,
                platforms: platforms.iter().cloned().collect(),
            });
        }
    }
    let patch = version.release().get(2).copied().unwrap_or(0);
    for (cuda, build) in &expected {
        let Some(platforms) = published.get(cuda) else {
            out.push(Difference::MissingBuild { torch: version.clone(), cuda: *cuda });
            continue;
        };
        for name in &build.without {
            let Some(companion) = release.companions.get(name) else { continue };
            let tagged = format!("{}+{cuda}", companion.version_for(patch));
            if index.wheels(*cuda, name).iter().any(|wheel| wheel.version() == tagged) {
                out.push(Difference::PublishedWithout {
                    torch: version.clone(),
                    cuda: *cuda,
                    package: name.clone(),
                    version: tagged,
                });
            }
        }
        for platform in PLATFORMS {
            let difference = |platform: &str| (version.clone(), *cuda, platform.to_owned());
            match (build.for_platform(platform).is_some(), platforms.contains(platform)) {
                (true, false) => {
                    let (torch, cuda, platform) = difference(platform);
                    out.push(Difference::MissingPlatform { torch, cuda, platform });
                }
                (false, true) => {
                    let (torch, cuda, platform) = difference(platform);
                    out.push(Difference::UnknownPlatform { torch, cuda, platform });
                }
                (true, true) => compare_platform(release, version, build, platform, index, out),
                (false, false) => {}
            }
        }
    }
}

/// One build on one platform: Python tags of torch and its companions, the
/// companions' own wheels, and the triton torch requires.
fn compare_platform(
    release: &TorchRelease,
    version: &Version,
    build: &TorchBuild,
    platform: &str,
    index: &PublishedIndex,
    out: &mut Vec<Difference>,
) {
    let cuda = build.cuda;
    let patch = version.release().get(2).copied().unwrap_or(0);
    let mut packages = vec![("torch".to_owned(), format!("{version}+{cuda}"))];
    for name in release.companions.keys().filter(|name| !build.without.contains(name)) {
        if let Ok(pins) = release.companion_versions(std::slice::from_ref(name), patch, build, platform) {
            packages.extend(pins);
        }
    }
    let range = release.python_min.zip(release.python_max).map(|(min, max)| (min.minor, max.minor));
    let range_text = release
        .python_min
        .zip(release.python_max)
        .map(|(min, max)| format!("{min}–{max}"))
        .unwrap_or_default();
    let mut served: Vec<Vec<&PublishedWheel>> = Vec::new();
    for (name, pinned) in &packages {
        let on_platform = || index.wheels(cuda, name).iter().filter(|wheel| wheel.platform == platform);
        let wheels: Vec<&PublishedWheel> = on_platform().filter(|wheel| wheel.version() == *pinned).collect();
        if wheels.is_empty() {
            let release_part = pinned.split('+').next().unwrap_or_default();
            let found: BTreeSet<String> = on_platform()
                .filter(|wheel| wheel.release.to_string() == release_part)
                .map(PublishedWheel::version)
                .collect();
            out.push(Difference::MissingPackage {
                torch: version.clone(),
                cuda,
                package: name.clone(),
                version: pinned.clone(),
                platform: platform.to_owned(),
                found: found.into_iter().collect(),
            });
        } else if let Some((min, max)) = range {
            let missing: Vec<u32> =
                (min..=max).filter(|minor| !wheels.iter().any(|wheel| wheel.python.serves(*minor))).collect();
            if !missing.is_empty() {
                out.push(Difference::MissingPython {
                    package: name.clone(),
                    version: pinned.clone(),
                    platform: platform.to_owned(),
                    pythons: missing,
                    range: range_text.clone(),
                });
            }
        }
        served.push(wheels);
    }
    if let (Some((min, max)), Some(torch_wheels)) = (range, served.first()) {
        let outside: BTreeSet<u32> = torch_wheels
            .iter()
            .filter(|wheel| !wheel.python.abi3)
            .map(|wheel| wheel.python.minor)
            .filter(|minor| *minor < min || *minor > max)
            .collect();
        let extra: Vec<u32> = outside
            .into_iter()
            .filter(|minor| {
                served.iter().all(|wheels| wheels.iter().any(|wheel| wheel.python.serves(*minor)))
            })
            .collect();
        if !extra.is_empty() {
            out.push(Difference::ExtraPython {
                torch: version.clone(),
                cuda,
                platform: platform.to_owned(),
                pythons: extra,
                range: range_text,
            });
        }
    }
    if let Some(pin) = release.triton.pin(version) {
        let triton = || index.wheels(cuda, "triton").iter().filter(|wheel| wheel.platform == platform);
        if !triton().any(|wheel| wheel.release == pin.0) {
            let found: BTreeSet<String> = triton().map(PublishedWheel::version).collect();
            out.push(Difference::MissingPackage {
                torch: version.clone(),
                cuda,
                package: "triton".to_owned(),
                version: pin.to_string(),
                platform: platform.to_owned(),
                found: found.into_iter().collect(),
            });
        }
    }
}

fn pythons(minors: &[u32]) -> String {
    minors.iter().map(|minor| format!("cp3{minor}")).collect::<Vec<_>>().join(", ")
}

fn list(items: &[String]) -> String {
    items.join(", ")
}

impl fmt::Display for Difference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Difference::UnknownSeries { torch, builds } => {
                let builds: Vec<String> = builds.iter().map(ToString::to_string).collect();
                write!(
                    f,
                    "unknown series: torch {torch} is published ({}), but the facts know no torch {} series",
                    list(&builds),
                    TorchSeries::of(torch)
                )
            }
            Difference::UnknownBuild { torch, cuda, platforms } => write!(
                f,
                "unknown build: torch {torch}+{cuda} is published ({}), but the facts have no {cuda} build of torch \
                 {torch}",
                list(platforms)
            ),
            Difference::MissingBuild { torch, cuda } => write!(
                f,
                "missing build: the facts say torch {torch} has a {cuda} build, but the index has no torch \
                 {torch}+{cuda} wheel"
            ),
            Difference::MissingPlatform { torch, cuda, platform } => write!(
                f,
                "missing platform: the facts say torch {torch}+{cuda} has {platform} wheels, but the index has none"
            ),
            Difference::UnknownPlatform { torch, cuda, platform } => write!(
                f,
                "unknown platform: torch {torch}+{cuda} is published for {platform}, but the facts say it has no \
                 {platform} wheel"
            ),
            Difference::MissingPackage { torch, cuda, package, version, platform, found } => {
                write!(
                    f,
                    "missing wheel: the facts pin {package}=={version} with torch {torch}+{cuda}, but the {cuda} \
                     index has no {platform} wheel of it"
                )?;
                if !found.is_empty() {
                    write!(f, " (it has {})", list(found))?;
                }
                Ok(())
            }
            Difference::MissingPython { package, version, platform, pythons: missing, range } => write!(
                f,
                "missing Python: {package} {version} has no {} wheel for {platform}, but the facts plan Python \
                 {range} for it",
                pythons(missing)
            ),
            Difference::ExtraPython { torch, cuda, platform, pythons: extra, range } => write!(
                f,
                "unplanned Python: torch {torch}+{cuda} and its companions publish {} wheels for {platform}, \
                 outside the facts' Python {range}",
                pythons(extra)
            ),
            Difference::PublishedWithout { torch, cuda, package, version } => write!(
                f,
                "unexpected wheel: the facts say {package} has no {cuda} build for torch {torch}, but the index \
                 has {package} {version}"
            ),
        }
    }
}
