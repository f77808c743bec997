//! Machines as the fleet knows them: identity plus the latest observed state.

use std::fmt;
use std::str::FromStr;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::assignment::MachineAssignment;
use crate::convergence::ConvergenceReport;
use crate::inventory::Inventory;
use crate::labels::Labels;
use crate::machine_facts::{MachineFacts, SoftwareFacts};

/// A machine's id: assigned by the controller at enrollment and written into the
/// machine's client certificate. Lowercase letters, digits and `-`, at most 64.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct MachineId(String);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("`{0}` is not a machine id (lowercase letters, digits and `-`, 1 to 64 characters)")]
pub struct BadMachineId(String);

impl MachineId {
    pub const MAX_LEN: usize = 64;

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for MachineId {
    type Err = BadMachineId;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let ok = !text.is_empty()
            && text.len() <= Self::MAX_LEN
            && text.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if ok { Ok(Self(text.to_owned())) } else { Err(BadMachineId(text.to_owned())) }
    }
}

impl TryFrom<String> for MachineId {
    type Error = BadMachineId;

    fn try_from(text: String) -> Result<Self, Self::Error> {
        text.parse()
    }
}

impl From<MachineId> for String {
    fn from(id: MachineId) -> Self {
        id.0
    }
}

impl fmt::Display for MachineId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A machine as the controller reports it to operators.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MachineRecord {
    pub id: MachineId,
    pub hostname: String,
    pub online: bool,
    pub last_seen: Option<Timestamp>,
    pub enrolled_at: Timestamp,
    pub revoked_at: Option<Timestamp>,
    /// Agent labels, then token labels, then operator labels (later wins).
    pub labels: Labels,
    pub operator_labels: Labels,
    /// The labels its join token set (binding on the agent).
    pub token_labels: Labels,
    pub inventory: Option<Inventory>,
    pub inventory_updated_at: Option<Timestamp>,
    pub agent_version: String,
    pub remote_address: String,
    pub join_token_id: String,
    /// What the controller wants the machine to run.
    pub assignment: Option<MachineAssignment>,
    /// The agent's latest report on it.
    pub report: Option<ConvergenceReport>,
}

impl From<&MachineRecord> for MachineFacts {
    fn from(machine: &MachineRecord) -> Self {
        let mut facts = MachineFacts::new(
            machine.id.to_string(),
            machine.hostname.clone(),
            machine.labels.as_map().clone(),
            machine.inventory.as_ref(),
        );
        facts.software = SoftwareFacts::new(
            machine.inventory.as_ref().map(|inventory| &inventory.environments),
            machine.report.as_ref(),
        );
        facts
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn machine_ids_are_safe_in_paths_and_shells() {
        assert!("3f9a2c41d0e87b65".parse::<MachineId>().is_ok());
        for bad in ["", "../etc", "A", "a b", "a;b", &"a".repeat(65)] {
            assert!(bad.parse::<MachineId>().is_err(), "{bad:?}");
        }
    }
}
