//! The environments a machine has built, as its agent reads them from disk: which
//! revision `current` points at and, for every complete environment it keeps, the
//! Python, torch build, optimisations, ComfyUI commit and custom nodes really there.
//! They travel in the machine's inventory, and are checked with it
//! ([`crate::Inventory::validate`]).

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::spec_digest::SpecDigest;

/// More kept environments than this is a broken report.
pub const MAX_INSTALLED: usize = 16;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstalledEnvironments {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current: Option<SpecDigest>,
    /// Most recently activated first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub installed: Vec<InstalledEnvironment>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstalledEnvironment {
    pub revision_id: SpecDigest,
    pub environment: String,
    pub revision_number: u32,
    pub current: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub activated_at: Option<Timestamp>,
    pub python_version: String,
    pub torch_version: String,
    pub comfyui_commit: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub optimizations: Vec<InstalledPackage>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub custom_nodes: Vec<InstalledNode>,
    /// What differs now from what verification recorded (a package changed by hand).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub drift: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstalledPackage {
    pub name: String,
    /// Empty when the package is not installed.
    #[serde(default)]
    pub version: String,
    pub verified: bool,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub detail: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstalledNode {
    pub name: String,
    pub commit: String,
}

impl InstalledEnvironments {
    pub fn is_empty(&self) -> bool {
        self.current.is_none() && self.installed.is_empty()
    }

    /// The environment that was current before the current one: the newest other
    /// one that was ever activated.
    pub fn previous(&self) -> Option<&InstalledEnvironment> {
        self.installed
            .iter()
            .filter(|environment| !environment.current && environment.activated_at.is_some())
            .max_by_key(|environment| environment.activated_at)
    }
}

/// An environment of revision `id` (the char 64 times) for tests, activated at second
/// `activated`.
#[cfg(test)]
pub(crate) fn test_environment(id: char, current: bool, activated: Option<i64>) -> InstalledEnvironment {
    InstalledEnvironment {
        revision_id: id.to_string().repeat(64).parse().unwrap(),
        environment: "render-prod".into(),
        revision_number: 1,
        current,
        activated_at: activated.map(|s| Timestamp::from_second(s).unwrap()),
        python_version: "3.12.7".into(),
        torch_version: "2.8.0+cu128".into(),
        comfyui_commit: "a".repeat(40),
        optimizations: vec![],
        custom_nodes: vec![],
        drift: vec![],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_previous_environment_is_the_newest_other_activated_one() {
        let environments = InstalledEnvironments {
            current: Some("c".repeat(64).parse().unwrap()),
            installed: vec![
                test_environment('c', true, Some(300)),
                test_environment('b', false, Some(200)),
                test_environment('a', false, Some(100)),
                test_environment('d', false, None),
            ],
        };
        assert_eq!(environments.previous().unwrap().revision_id.as_str(), "b".repeat(64));
    }
}
