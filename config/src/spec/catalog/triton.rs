//! The triton each torch release requires. torch's Linux wheels pin one exact
//! triton (`Requires-Dist: triton==3.7.1`), and every release of a series pins the
//! same triton minor; a spec's `torch_constraints` for triton is checked against
//! these pins, and an index optimisation named `triton` without one gets them.

use std::collections::BTreeMap;
use std::str::FromStr;

use pep440_rs::Version;
use serde::{Deserialize, Serialize};

use crate::spec::{ReleaseVersion, Specifiers};

/// torch release → the triton release its wheels require.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct TritonPins(BTreeMap<ReleaseVersion, ReleaseVersion>);

impl TritonPins {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Adds (or corrects) pins.
    pub fn extend(&mut self, other: &TritonPins) {
        self.0.extend(other.0.iter().map(|(torch, triton)| (torch.clone(), triton.clone())));
    }

    pub fn iter(&self) -> impl Iterator<Item = (&ReleaseVersion, &ReleaseVersion)> {
        self.0.iter()
    }

    /// The triton torch `version` requires, when the facts name it.
    pub fn pin(&self, torch: &Version) -> Option<&ReleaseVersion> {
        let release = Version::new(torch.release().iter().copied());
        self.0.iter().find(|(known, _)| known.0 == release).map(|(_, triton)| triton)
    }

    /// The triton minor (`(3, 7)`) every release of the series requires.
    pub fn minor(&self) -> Option<(u64, u64)> {
        self.0.values().next().and_then(|triton| minor_of(&triton.0))
    }

    /// What a triton optimisation without its own constraint is given for torch
    /// `version`: the exact pin (`==3.7.1`), else any release of the series' triton
    /// minor (`==3.7.*`); `None` when the facts know no pin for the series.
    pub fn requirement(&self, torch: &Version) -> Option<String> {
        if let Some(pin) = self.pin(torch) {
            return Some(format!("=={pin}"));
        }
        self.minor().map(|(major, minor)| format!("=={major}.{minor}.*"))
    }

    /// Whether `constraint` (a spec's `torch_constraints` entry for triton) admits
    /// what torch requires: the exact pin of `torch` when known, else some release of
    /// the series' triton minor. The error says what torch requires.
    pub fn check(
        &self,
        series: &str,
        torch: Option<&Version>,
        constraint: &Specifiers,
    ) -> Result<(), String> {
        if let Some(torch) = torch
            && let Some(pin) = self.pin(torch)
        {
            return if constraint.contains(&pin.0) {
                Ok(())
            } else {
                Err(format!("torch {torch} requires triton=={pin}, which `{constraint}` excludes"))
            };
        }
        let Some((major, minor)) = self.minor() else { return Ok(()) };
        // Triton releases are X.Y.Z: the lowest version of X.Y a conjunction of
        // specifiers admits is X.Y.0, one of the specifiers' own versions, or the
        // patch after one (for `>` and `!=`), so trying those is enough.
        let mut candidates: Vec<Version> = vec![Version::new([major, minor, 0])];
        candidates.extend(self.0.values().map(|pin| pin.0.clone()));
        for specifier in constraint.0.iter() {
            let version = specifier.version();
            if minor_of(version) == Some((major, minor)) {
                let patch = version.release().get(2).copied().unwrap_or(0);
                candidates.push(Version::new([major, minor, patch]));
                candidates.push(Version::new([major, minor, patch + 1]));
            }
        }
        if candidates.iter().any(|candidate| constraint.contains(candidate)) {
            Ok(())
        } else {
            Err(format!(
                "every torch {series} release requires a triton {major}.{minor}.x, and `{constraint}` admits none"
            ))
        }
    }
}

fn minor_of(version: &Version) -> Option<(u64, u64)> {
    match version.release() {
        [major, minor, ..] => Some((*major, *minor)),
        _ => None,
    }
}

impl FromStr for TritonPins {
    type Err = String;

    /// `2.12.0=3.7.0,2.12.1=3.7.1`, for tests and command lines.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let mut pins = BTreeMap::new();
        for pair in text.split(',').filter(|pair| !pair.is_empty()) {
            let (torch, triton) = pair
                .split_once('=')
                .ok_or_else(|| format!("`{pair}` is not TORCH=TRITON, e.g. 2.12.1=3.7.1"))?;
            pins.insert(torch.trim().parse()?, triton.trim().parse()?);
        }
        Ok(Self(pins))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn version(text: &str) -> Version {
        text.parse().unwrap()
    }

    fn specifiers(text: &str) -> Specifiers {
        text.parse().unwrap()
    }

    #[test]
    fn a_known_release_gets_its_exact_pin_and_others_the_series_minor() {
        let pins: TritonPins = "2.12.0=3.7.0,2.12.1=3.7.1".parse().unwrap();
        assert_eq!(pins.requirement(&version("2.12.1+cu130")).unwrap(), "==3.7.1");
        assert_eq!(pins.requirement(&version("2.12.0")).unwrap(), "==3.7.0");
        assert_eq!(pins.requirement(&version("2.12.2")).unwrap(), "==3.7.*");
        assert!(TritonPins::default().requirement(&version("2.12.2")).is_none());
    }

    #[test]
    fn a_constraint_must_admit_what_torch_requires() {
        let pins: TritonPins = "2.12.0=3.7.0,2.12.1=3.7.1".parse().unwrap();
        let check = |torch: Option<&str>, constraint: &str| {
            pins.check("2.12", torch.map(version).as_ref(), &specifiers(constraint))
        };
        assert!(check(Some("2.12.1"), ">=3.7,<3.8").is_ok());
        let error = check(Some("2.12.1"), "==3.7.0").unwrap_err();
        assert_eq!(error, "torch 2.12.1 requires triton==3.7.1, which `==3.7.0` excludes");
        // A release the facts have no pin for: some 3.7.x must be admitted.
        assert!(check(Some("2.12.3"), ">3.7.1,<3.8").is_ok());
        assert!(check(None, "~=3.7.2").is_ok());
        let error = check(None, ">=3.6,<3.7").unwrap_err();
        assert_eq!(error, "every torch 2.12 release requires a triton 3.7.x, and `>=3.6,<3.7` admits none");
        assert!(check(None, ">=3.8").is_err());
        // No pins: nothing to check against.
        assert!(TritonPins::default().check("2.10", None, &specifiers(">=9")).is_ok());
    }
}
