//! The typed values a spec is made of. Each parses from the text an operator writes,
//! refuses anything else with a message saying what to write, and serialises back to
//! one canonical text (which is what the revision id hashes).

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::inventory::CudaVersion;

/// Serde as a string through `Display`/`FromStr`, so a bad value is reported at its
/// position in the file with the `FromStr` error as the message.
macro_rules! string_serde {
    ($type:ty) => {
        impl Serialize for $type {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.collect_str(self)
            }
        }

        impl<'de> Deserialize<'de> for $type {
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let text = String::deserialize(deserializer)?;
                text.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

/// A CPython version the environment uses: `3.12`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PythonVersion {
    pub major: u32,
    pub minor: u32,
}

impl PythonVersion {
    /// The wheel tag for this interpreter: `cp312`.
    pub fn tag(&self) -> String {
        format!("cp{}{}", self.major, self.minor)
    }
}

impl FromStr for PythonVersion {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad =
            || format!("`{text}` is not a Python version: write MAJOR.MINOR from 3.9 on, e.g. \"3.12\"");
        let (major, minor) = text.split_once('.').ok_or_else(bad)?;
        let major: u32 = major.parse().map_err(|_| bad())?;
        let minor: u32 = minor.parse().map_err(|_| bad())?;
        if major == 3 && (9..=99).contains(&minor) { Ok(Self { major, minor }) } else { Err(bad()) }
    }
}

impl fmt::Display for PythonVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}
string_serde!(PythonVersion);

/// A torch CUDA build tag: `cu128` is CUDA 12.8.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CudaTag(pub CudaVersion);

impl CudaTag {
    pub fn cuda(&self) -> CudaVersion {
        self.0
    }
}

impl FromStr for CudaTag {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad =
            || format!("`{text}` is not a CUDA tag: write cu followed by the CUDA version, e.g. \"cu128\"");
        let digits = text.strip_prefix("cu").ok_or_else(bad)?;
        if !(3..=4).contains(&digits.len()) || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        let (major, minor) = digits.split_at(digits.len() - 1);
        let major: u32 = major.parse().map_err(|_| bad())?;
        let minor: u32 = minor.parse().map_err(|_| bad())?;
        if major < 10 {
            return Err(bad());
        }
        Ok(Self(CudaVersion::new(major, minor)))
    }
}

impl fmt::Display for CudaTag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cu{}{}", self.0.major, self.0.minor)
    }
}
string_serde!(CudaTag);

/// A torch release series, `2.8`: what build facts and constraints are keyed by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TorchSeries {
    pub major: u64,
    pub minor: u64,
}

impl TorchSeries {
    pub fn of(version: &pep440_rs::Version) -> Self {
        let release = version.release();
        Self { major: release.first().copied().unwrap_or(0), minor: release.get(1).copied().unwrap_or(0) }
    }
}

impl FromStr for TorchSeries {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad = || format!("`{text}` is not a torch series: write MAJOR.MINOR, e.g. \"2.8\"");
        let (major, minor) = text.split_once('.').ok_or_else(bad)?;
        Ok(Self { major: major.parse().map_err(|_| bad())?, minor: minor.parse().map_err(|_| bad())? })
    }
}

impl fmt::Display for TorchSeries {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}
string_serde!(TorchSeries);

/// An exact release version without a local tag (`2.8.0`); the CUDA tag is added by
/// the resolver (`2.8.0+cu128`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ReleaseVersion(pub pep440_rs::Version);

impl FromStr for ReleaseVersion {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let version = pep440_rs::Version::from_str(text)
            .map_err(|err| format!("`{text}` is not a version ({err}): write e.g. \"2.8.0\""))?;
        if version.is_local() {
            return Err(format!(
                "`{text}` has a local tag: write the release only (e.g. \"2.8.0\"); the CUDA tag comes from \
                 torch.cuda"
            ));
        }
        if version.release().len() < 2 {
            return Err(format!("`{text}` needs at least MAJOR.MINOR, e.g. \"2.8.0\""));
        }
        Ok(Self(version))
    }
}

impl fmt::Display for ReleaseVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}
string_serde!(ReleaseVersion);

/// PEP 440 version specifiers: `>=3.4,<3.5`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Specifiers(pub pep440_rs::VersionSpecifiers);

impl Specifiers {
    pub fn contains(&self, version: &pep440_rs::Version) -> bool {
        self.0.contains(version)
    }
}

impl FromStr for Specifiers {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        if text.trim().is_empty() {
            return Err("the version specifier is empty: write e.g. \">=3.4,<3.5\"".to_owned());
        }
        pep440_rs::VersionSpecifiers::from_str(text).map(Self).map_err(|err| {
            format!(
                "`{text}` is not a PEP 440 version specifier ({}): write e.g. \">=3.4,<3.5\"",
                err.to_string().lines().next().unwrap_or_default()
            )
        })
    }
}

impl fmt::Display for Specifiers {
    /// `>=3.4,<3.5`: pip's spelling, without the space pep440_rs puts after commas.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.0.iter().map(ToString::to_string).collect();
        f.write_str(&parts.join(","))
    }
}
string_serde!(Specifiers);

/// A sha256 digest as 64 lowercase hex digits.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Sha256Hex(String);

impl Sha256Hex {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for Sha256Hex {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let lower = text.to_ascii_lowercase();
        if lower.len() == 64 && lower.bytes().all(|b| b.is_ascii_hexdigit()) {
            Ok(Self(lower))
        } else {
            Err(format!(
                "`{}` is not a sha256: write the 64 hex digits that `sha256sum FILE` prints",
                super::names::printable(text)
            ))
        }
    }
}

impl fmt::Display for Sha256Hex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
string_serde!(Sha256Hex);

/// A count of machines or a share of them: `3` or `"10%"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Amount {
    Count(u32),
    Percent(u32),
}

impl Amount {
    /// How many machines this is out of `total`, rounded down (a percentage of a
    /// small fleet can be zero; callers decide whether zero is allowed).
    pub fn of(&self, total: u32) -> u32 {
        match *self {
            Amount::Count(count) => count,
            Amount::Percent(percent) => ((u64::from(total) * u64::from(percent)) / 100) as u32,
        }
    }
}

impl fmt::Display for Amount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Amount::Count(count) => write!(f, "{count}"),
            Amount::Percent(percent) => write!(f, "{percent}%"),
        }
    }
}

impl FromStr for Amount {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad = || format!("`{text}` is not a count or a percentage: write e.g. 5 or \"10%\"");
        match text.trim().strip_suffix('%') {
            Some(percent) => {
                let percent: u32 = percent.trim().parse().map_err(|_| bad())?;
                if percent > 100 {
                    return Err(format!("`{text}` is more than 100%"));
                }
                Ok(Amount::Percent(percent))
            }
            None => text.trim().parse().map(Amount::Count).map_err(|_| bad()),
        }
    }
}

impl Serialize for Amount {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Amount::Count(count) => serializer.serialize_u32(*count),
            Amount::Percent(_) => serializer.collect_str(self),
        }
    }
}

impl<'de> Deserialize<'de> for Amount {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = Amount;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a count such as 5 or a percentage such as \"10%\"")
            }
            fn visit_i64<E: serde::de::Error>(self, value: i64) -> Result<Amount, E> {
                u32::try_from(value)
                    .map(Amount::Count)
                    .map_err(|_| E::custom(format!("{value} is not a count: write 0 or more, or \"10%\"")))
            }
            fn visit_u64<E: serde::de::Error>(self, value: u64) -> Result<Amount, E> {
                u32::try_from(value)
                    .map(Amount::Count)
                    .map_err(|_| E::custom(format!("{value} is too large")))
            }
            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<Amount, E> {
                text.parse().map_err(E::custom)
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

/// A duration written as operators write them (`30s`, `10m`), kept canonical.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HumanDuration(pub Duration);

impl FromStr for HumanDuration {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        crate::duration::parse_positive(text).map(Self).map_err(|err| err.to_string())
    }
}

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        humantime::format_duration(self.0).fmt(f)
    }
}
string_serde!(HumanDuration);
pub(crate) use string_serde;

/// Which drivers may run a torch CUDA build.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DriverCompat {
    /// The driver supports the build's CUDA version (NVML's CUDA driver version).
    #[default]
    Exact,
    /// NVIDIA's minor-version compatibility: a driver of the build's CUDA major at or
    /// above that major's floor (12.x: 525.60.13, 13.x: 580), GPUs covered by cubins.
    Minor,
}

impl DriverCompat {
    pub fn is_exact(&self) -> bool {
        *self == DriverCompat::Exact
    }
}

/// ComfyUI-Manager on the fleet.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ManagerMode {
    /// Not run: no `--enable-manager`, and the ComfyUI-Manager node is refused.
    #[default]
    Off,
    /// Runs with installs refused (its `security_level = strong`).
    ReadOnly,
    /// Runs and may install; what it installs is reported as drift.
    On,
}

impl ManagerMode {
    pub fn is_off(&self) -> bool {
        *self == ManagerMode::Off
    }
}

impl fmt::Display for ManagerMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ManagerMode::Off => "off",
            ManagerMode::ReadOnly => "read-only",
            ManagerMode::On => "on",
        })
    }
}

/// What a machine must be for an optimisation to be attempted on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Requirement {
    /// At least one NVIDIA GPU that NVML reads.
    Nvidia,
    /// A Linux host (the agent runs only on Linux; kept for specs shared with other tools).
    Linux,
    X86_64,
    Aarch64,
}

impl fmt::Display for Requirement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Requirement::Nvidia => "nvidia",
            Requirement::Linux => "linux",
            Requirement::X86_64 => "x86_64",
            Requirement::Aarch64 => "aarch64",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_parse_and_print_canonically() {
        assert_eq!("3.12".parse::<PythonVersion>().unwrap().tag(), "cp312");
        assert!("2.7".parse::<PythonVersion>().is_err());
        assert_eq!("cu128".parse::<CudaTag>().unwrap().cuda(), CudaVersion::new(12, 8));
        assert_eq!("cu130".parse::<CudaTag>().unwrap().cuda(), CudaVersion::new(13, 0));
        assert_eq!("cu118".parse::<CudaTag>().unwrap().to_string(), "cu118");
        assert!("cuda12".parse::<CudaTag>().is_err());
        assert!("2.8.0+cu128".parse::<ReleaseVersion>().unwrap_err().contains("local tag"));
        assert_eq!("10%".parse::<Amount>().unwrap().of(200), 20);
        assert!("120%".parse::<Amount>().is_err());
        assert_eq!("90s".parse::<HumanDuration>().unwrap().to_string(), "1m 30s");
        assert!(">=3.4,<3.5".parse::<Specifiers>().is_ok());
        assert!(">=3.4,<".parse::<Specifiers>().is_err());
        assert!("abc".parse::<Sha256Hex>().unwrap_err().contains("sha256sum"));
    }
}
