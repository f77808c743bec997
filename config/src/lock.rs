//! Locks: for one build class, every package an environment installs, at one exact
//! version, as one file with its URL and sha256. The controller makes them at apply
//! (uv resolves; [`Lock::from_pylock`] reads uv's PEP 751 output), the revision's
//! spec names each lock by its digest (so the revision id covers the locks), and the
//! agent installs exactly its class's lock: no resolution on the machine. Build
//! classes themselves are in [`crate::build_class`].

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

// Build classes were defined here first; their users outside this crate name them here.
pub use crate::build_class::{BuildClass, MANYLINUX, class_name};
use crate::spec::names::normalize_package_name;
use crate::spec::wheel::WheelName;

/// Domain separation for lock digests.
const DIGEST_PREFIX: &[u8] = b"comfyfleet-lock-v1\n";
/// The 16 hex digits that name a git repository URL's copy, on the agent and in
/// the controller's package cache.
pub fn repository_key(url: &str) -> String {
    hex::encode(Sha256::digest(url.as_bytes()))[..16].to_owned()
}

/// Everything one build class installs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Lock {
    pub class: String,
    /// Sorted by name; one file each.
    pub packages: Vec<LockedPackage>,
    /// Index optimisations that did not resolve with the rest, and uv's reason.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub unresolved: BTreeMap<String, String>,
    /// What locking changed in the requirement files: option lines dropped,
    /// requirements on torch held at the class's build.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockedPackage {
    /// Normalised (`charset-normalizer`).
    pub name: String,
    pub version: String,
    /// Where the file comes from upstream: the index's own URL, kept as it is.
    pub url: String,
    pub sha256: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
}

impl LockedPackage {
    /// The file name the URL ends in, `%2B` decoded.
    pub fn file_name(&self) -> String {
        let path = self.url.split(['?', '#']).next().unwrap_or(&self.url);
        crate::spec::wheel::percent_decode(path.rsplit('/').next().unwrap_or(path))
    }
}

/// One package that differs between two locks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackageChange {
    pub name: String,
    pub old: Option<String>,
    pub new: Option<String>,
}

impl fmt::Display for PackageChange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.old, &self.new) {
            (Some(old), Some(new)) => write!(f, "{} {old} → {new}", self.name),
            (None, Some(new)) => write!(f, "{} {new} (added)", self.name),
            (Some(old), None) => write!(f, "{} {old} (removed)", self.name),
            (None, None) => write!(f, "{}", self.name),
        }
    }
}

impl Lock {
    /// The canonical text: what the digest covers and what the store keeps.
    pub fn to_canonical_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|_| "{}".to_owned())
    }

    /// sha256 of the canonical text: what the spec's `locks` table holds.
    pub fn digest(&self) -> String {
        let mut hasher = Sha256::new();
        hasher.update(DIGEST_PREFIX);
        hasher.update(self.to_canonical_json().as_bytes());
        hex::encode(hasher.finalize())
    }

    pub fn from_json(text: &str) -> Result<Self, String> {
        let lock: Lock = serde_json::from_str(text).map_err(|error| format!("unreadable lock: {error}"))?;
        lock.check()?;
        Ok(lock)
    }

    /// A lock read from outside must be one the agent can install as it is.
    pub fn check(&self) -> Result<(), String> {
        BuildClass::parse(&self.class)?;
        for package in &self.packages {
            if package.name.is_empty() || normalize_package_name(&package.name) != package.name {
                return Err(format!(
                    "lock {}: `{}` is not a normalised package name",
                    self.class, package.name
                ));
            }
            if !(package.url.starts_with("https://") || package.url.starts_with("http://")) {
                return Err(format!(
                    "lock {}: {} has a URL that is not http(s): {}",
                    self.class, package.name, package.url
                ));
            }
            if package.sha256.len() != 64 || !package.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(format!("lock {}: {} has no sha256", self.class, package.name));
            }
            let file = package.file_name();
            if file.is_empty() || file.starts_with('.') || file.contains(['/', '\\']) {
                return Err(format!(
                    "lock {}: {} has URL {} with no file name",
                    self.class, package.name, package.url
                ));
            }
        }
        Ok(())
    }

    pub fn package(&self, name: &str) -> Option<&LockedPackage> {
        let name = normalize_package_name(name);
        self.packages.iter().find(|package| package.name == name)
    }

    /// Packages added, removed or at another version in `newer`.
    pub fn diff(&self, newer: &Lock) -> Vec<PackageChange> {
        let old: BTreeMap<&str, &str> =
            self.packages.iter().map(|p| (p.name.as_str(), p.version.as_str())).collect();
        let new: BTreeMap<&str, &str> =
            newer.packages.iter().map(|p| (p.name.as_str(), p.version.as_str())).collect();
        let mut names: Vec<&str> = old.keys().chain(new.keys()).copied().collect();
        names.sort_unstable();
        names.dedup();
        names
            .into_iter()
            .filter(|name| old.get(name) != new.get(name))
            .map(|name| PackageChange {
                name: name.to_owned(),
                old: old.get(name).map(|v| (*v).to_owned()),
                new: new.get(name).map(|v| (*v).to_owned()),
            })
            .collect()
    }

    /// Reads uv's `pylock.toml` for `class`: every package's best wheel for the
    /// class (uv lists every wheel that can install there; the most specific is
    /// taken: `cp312` over `abi3` over `py3-none`, a platform wheel over `any`).
    pub fn from_pylock(class: &BuildClass, text: &str) -> Result<Self, String> {
        let parsed: PyLock =
            toml::from_str(text).map_err(|error| format!("uv wrote an unreadable pylock.toml: {error}"))?;
        let mut packages = Vec::new();
        for package in parsed.packages {
            let name = normalize_package_name(&package.name);
            let version = package.version.unwrap_or_default();
            let best = package
                .wheels
                .iter()
                .filter_map(|wheel| {
                    let url = wheel.url.as_deref()?;
                    let sha256 = wheel.hashes.get("sha256")?;
                    let parsed = WheelName::from_url(url).ok()?;
                    Some((wheel_rank(&parsed, class)?, url, sha256, wheel.size))
                })
                .max_by_key(|(rank, ..)| *rank);
            let Some((_, url, sha256, size)) = best else {
                return Err(format!(
                    "{name} {version} has no wheel for {class} (only a source distribution): comfyfleet locks \
                     wheels, so machines never build packages; pin a version that publishes wheels, or publish \
                     one to the spec's index"
                ));
            };
            packages.push(LockedPackage {
                name,
                version,
                url: url.to_owned(),
                sha256: sha256.to_ascii_lowercase(),
                size,
            });
        }
        packages.sort_by(|a, b| a.name.cmp(&b.name));
        let lock =
            Lock { class: class.to_string(), packages, unresolved: BTreeMap::new(), notes: Vec::new() };
        lock.check()?;
        Ok(lock)
    }
}

/// How well a wheel fits the class: `None` when it cannot install there.
fn wheel_rank(wheel: &WheelName, class: &BuildClass) -> Option<(u8, u8)> {
    if !wheel.supports_python(&class.python_tag) || !wheel.supports_arch(&class.platform) {
        return None;
    }
    let python = if wheel.python_tags.contains(&class.python_tag)
        && !wheel.abi_tags.iter().any(|abi| abi == "abi3" || abi == "none")
    {
        3
    } else if wheel.abi_tags.iter().any(|abi| abi == "abi3") {
        2
    } else {
        1
    };
    let platform = u8::from(wheel.platform_tags.iter().any(|tag| tag != "any"));
    Some((python, platform))
}

#[derive(Deserialize)]
struct PyLock {
    #[serde(default)]
    packages: Vec<PyLockPackage>,
}

#[derive(Deserialize)]
struct PyLockPackage {
    name: String,
    version: Option<String>,
    #[serde(default)]
    wheels: Vec<PyLockWheel>,
}

#[derive(Deserialize)]
struct PyLockWheel {
    url: Option<String>,
    size: Option<u64>,
    #[serde(default)]
    hashes: BTreeMap<String, String>,
}

#[cfg(test)]
mod tests;
