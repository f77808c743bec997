//! What the agent must remember across restarts, in `<data-dir>/journal/`: the last
//! assignment the controller sent (so a restarted agent goes on converging before
//! the controller answers), the assignment that failed (so it is not retried in a
//! loop, only when the controller raises the generation), and when each revision
//! was made current (rollback and clean-up order). Every file is replaced atomically.

use std::path::{Path, PathBuf};

use comfyfleet_config::AssignmentRecord;
use comfyfleet_config::spec::SpecDigest;
use jiff::Timestamp;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// Activation records kept: far more than the environments kept on disk.
const ACTIVATIONS_KEPT: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
}

/// A failed attempt at an assignment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    pub generation: u64,
    pub revision_id: SpecDigest,
    pub error: String,
    pub at: Timestamp,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Activation {
    pub revision_id: SpecDigest,
    pub at: Timestamp,
}

/// Written before `current` is switched and removed once the new environment is
/// healthy or the switch is undone: a restarted agent that finds it finishes the job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActivationMarker {
    pub revision_id: SpecDigest,
    /// What was current before (to switch back to); `None`: nothing was.
    pub previous: Option<SpecDigest>,
    pub at: Timestamp,
}

#[derive(Debug, Clone)]
pub struct Journal {
    dir: PathBuf,
}

impl Journal {
    pub fn new(dir: &Path) -> Self {
        Self { dir: dir.to_owned() }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// A file that does not parse is treated as absent (and said so): the journal
    /// only saves work, the controller can always send the assignment again.
    fn read<T: DeserializeOwned>(&self, name: &str) -> Option<T> {
        let path = self.path(name);
        let text = std::fs::read(&path).ok()?;
        match serde_json::from_slice(&text) {
            Ok(value) => Some(value),
            Err(error) => {
                tracing::warn!(path = %path.display(), %error, "ignoring an unreadable journal file");
                None
            }
        }
    }

    fn write<T: Serialize>(&self, name: &str, value: &T) -> Result<(), JournalError> {
        let path = self.path(name);
        let json = serde_json::to_vec_pretty(value).unwrap_or_default();
        comfyfleet_daemon::files::write_atomic(&path, &json, 0o600)
            .map_err(|source| JournalError::Write { path, source })
    }

    pub fn desired(&self) -> Option<AssignmentRecord> {
        self.read("desired.json")
    }

    pub fn set_desired(&self, record: &AssignmentRecord) -> Result<(), JournalError> {
        self.write("desired.json", record)
    }

    pub fn failure(&self) -> Option<Failure> {
        self.read("failed.json")
    }

    pub fn set_failure(&self, failure: &Failure) -> Result<(), JournalError> {
        self.write("failed.json", failure)
    }

    pub fn activating(&self) -> Option<ActivationMarker> {
        self.read("activating.json")
    }

    pub fn set_activating(&self, marker: &ActivationMarker) -> Result<(), JournalError> {
        self.write("activating.json", marker)
    }

    pub fn clear_activating(&self) {
        let path = self.path("activating.json");
        if let Err(error) = std::fs::remove_file(&path)
            && error.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(path = %path.display(), %error, "cannot remove the activation marker");
        }
    }

    /// Newest first.
    pub fn activations(&self) -> Vec<Activation> {
        self.read("activations.json").unwrap_or_default()
    }

    pub fn record_activation(&self, revision_id: &SpecDigest, at: Timestamp) -> Result<(), JournalError> {
        let mut activations = self.activations();
        activations.retain(|activation| &activation.revision_id != revision_id);
        activations.insert(0, Activation { revision_id: revision_id.clone(), at });
        activations.truncate(ACTIVATIONS_KEPT);
        self.write("activations.json", &activations)
    }

    pub fn last_activation(&self, revision_id: &SpecDigest) -> Option<Timestamp> {
        self.activations().into_iter().find(|activation| &activation.revision_id == revision_id).map(|a| a.at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest(c: char) -> SpecDigest {
        c.to_string().repeat(64).parse().unwrap()
    }

    #[test]
    fn activations_are_newest_first_without_repeats() {
        let dir = tempfile::tempdir().unwrap();
        let journal = Journal::new(dir.path());
        assert!(journal.activations().is_empty());
        journal.record_activation(&digest('a'), Timestamp::from_second(1).unwrap()).unwrap();
        journal.record_activation(&digest('b'), Timestamp::from_second(2).unwrap()).unwrap();
        journal.record_activation(&digest('a'), Timestamp::from_second(3).unwrap()).unwrap();
        let order: Vec<_> = journal.activations().into_iter().map(|a| a.revision_id).collect();
        assert_eq!(order, vec![digest('a'), digest('b')]);
        assert_eq!(journal.last_activation(&digest('b')), Some(Timestamp::from_second(2).unwrap()));
    }

    #[test]
    fn a_damaged_file_reads_as_absent() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("failed.json"), "{not json").unwrap();
        assert!(Journal::new(dir.path()).failure().is_none());
    }
}
