//! What the controller wants one machine to run: a pinned revision of an environment
//! and the plan resolved for that machine. It travels (and is journaled by the
//! agent) as an [`AssignmentRecord`], the spec and plan as JSON text, and becomes an
//! [`Assignment`] only after every check a machine must make before acting on it.

use std::fmt;
use std::str::FromStr;

use crate::lock::Lock;
use serde::{Deserialize, Serialize};

use crate::resolve::MachinePlan;
use crate::spec::names::is_commit_id;
use crate::spec::{DriverCompat, Spec, SpecDigest, SpecFormat};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AssignmentReason {
    Rollout,
    Rollback,
}

impl AssignmentReason {
    pub fn as_str(self) -> &'static str {
        match self {
            AssignmentReason::Rollout => "rollout",
            AssignmentReason::Rollback => "rollback",
        }
    }
}

impl fmt::Display for AssignmentReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for AssignmentReason {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "rollout" => Ok(AssignmentReason::Rollout),
            "rollback" => Ok(AssignmentReason::Rollback),
            other => Err(format!("`{other}` is not an assignment reason (rollout or rollback)")),
        }
    }
}

/// The assignment as text, as it crosses the wire and sits in the agent's journal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AssignmentRecord {
    pub generation: u64,
    pub environment: String,
    pub revision_number: u32,
    pub revision_id: String,
    pub spec_json: String,
    pub plan_json: String,
    pub activate: bool,
    pub reason: String,
    /// The lock of the plan's build class (canonical JSON); empty when the revision
    /// has no locks.
    pub lock_json: String,
}

/// A checked assignment: the spec validates, is the revision it claims to be, has
/// every git ref pinned, and the plan parses.
#[derive(Debug, Clone, PartialEq)]
pub struct Assignment {
    /// Raised by the controller at every change of this machine's assignment.
    pub generation: u64,
    pub environment: String,
    pub revision_number: u32,
    pub revision_id: SpecDigest,
    pub spec: Spec,
    pub plan: MachinePlan,
    pub activate: bool,
    pub reason: AssignmentReason,
    /// Everything this machine installs, when the revision is locked.
    pub lock: Option<Lock>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AssignmentError {
    #[error("the assigned spec does not validate: {0}")]
    Spec(String),
    #[error("the assigned spec's digest is {actual}, not the revision id {claimed} it was sent as")]
    Digest { claimed: String, actual: String },
    #[error("the assignment names environment {claimed:?} but its spec is {actual:?}")]
    Environment { claimed: String, actual: String },
    #[error("{0} is not pinned to a commit; only applied revisions can be assigned")]
    Unpinned(String),
    #[error("the assigned plan is unreadable: {0}")]
    Plan(String),
    #[error("the assigned lock: {0}")]
    Lock(String),
    #[error("`{field}`: {reason}")]
    Field { field: &'static str, reason: String },
}

impl Assignment {
    pub fn from_record(record: &AssignmentRecord) -> Result<Self, AssignmentError> {
        let revision_id: SpecDigest = record
            .revision_id
            .parse()
            .map_err(|reason| AssignmentError::Field { field: "revision_id", reason })?;
        let reason: AssignmentReason =
            record.reason.parse().map_err(|reason| AssignmentError::Field { field: "reason", reason })?;
        let spec = Spec::parse("assigned spec", &record.spec_json, SpecFormat::Json)
            .map_err(|errors| AssignmentError::Spec(errors.to_string()))?;
        let actual = spec.digest();
        if actual != revision_id {
            return Err(AssignmentError::Digest {
                claimed: revision_id.to_string(),
                actual: actual.to_string(),
            });
        }
        if spec.name != record.environment {
            return Err(AssignmentError::Environment {
                claimed: record.environment.clone(),
                actual: spec.name.clone(),
            });
        }
        if !spec.comfyui.commit.as_deref().is_some_and(is_commit_id) {
            return Err(AssignmentError::Unpinned("comfyui".to_owned()));
        }
        for node in &spec.custom_nodes {
            if !node.commit.as_deref().is_some_and(is_commit_id) {
                return Err(AssignmentError::Unpinned(format!("custom node {}", node.directory_name())));
            }
        }
        let plan: MachinePlan = serde_json::from_str(&record.plan_json)
            .map_err(|error| AssignmentError::Plan(error.to_string()))?;
        let lock = Self::check_lock(&spec, &plan, &record.lock_json)?;
        Ok(Assignment {
            generation: record.generation,
            environment: record.environment.clone(),
            revision_number: record.revision_number,
            revision_id,
            spec,
            plan,
            activate: record.activate,
            reason,
            lock,
        })
    }

    /// A locked revision comes with the lock of the plan's class, whose digest the
    /// spec (and so the revision id) names; an unlocked one with none.
    fn check_lock(spec: &Spec, plan: &MachinePlan, lock_json: &str) -> Result<Option<Lock>, AssignmentError> {
        if spec.lock.digests.is_empty() {
            if !lock_json.is_empty() {
                return Err(AssignmentError::Lock("sent with a revision that has no locks".into()));
            }
            return Ok(None);
        }
        let class = plan.class();
        let Some(expected) = spec.lock.digests.get(&class) else {
            return Err(AssignmentError::Lock(format!("the revision has no lock for build class {class}")));
        };
        if lock_json.is_empty() {
            return Err(AssignmentError::Lock(format!("missing; the revision locks build class {class}")));
        }
        let lock = Lock::from_json(lock_json).map_err(AssignmentError::Lock)?;
        if lock.class != class {
            return Err(AssignmentError::Lock(format!(
                "is for build class {}, not the plan's {class}",
                lock.class
            )));
        }
        let actual = lock.digest();
        if &actual != expected {
            return Err(AssignmentError::Lock(format!(
                "has digest {actual}, but the revision names {expected} for {class}"
            )));
        }
        Ok(Some(lock))
    }

    pub fn to_record(&self) -> AssignmentRecord {
        AssignmentRecord {
            generation: self.generation,
            environment: self.environment.clone(),
            revision_number: self.revision_number,
            revision_id: self.revision_id.to_string(),
            spec_json: crate::spec::canonical::to_canonical_json(&self.spec),
            plan_json: serde_json::to_string(&self.plan).unwrap_or_default(),
            activate: self.activate,
            reason: self.reason.to_string(),
            lock_json: self.lock.as_ref().map(Lock::to_canonical_json).unwrap_or_default(),
        }
    }

    /// `render-prod@3 (1a2b3c4d5e6f)`: how people see it.
    pub fn describe(&self) -> String {
        format!("{}@{} ({})", self.environment, self.revision_number, self.revision_id.short())
    }

    /// ComfyUI's commit, pinned.
    pub fn comfyui_commit(&self) -> &str {
        self.spec.comfyui.commit.as_deref().unwrap_or_default()
    }
}

/// An assignment as the controller keeps and shows it (without the spec and plan).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MachineAssignment {
    pub generation: u64,
    pub environment: String,
    pub revision_number: u32,
    pub revision_id: SpecDigest,
    pub activate: bool,
    pub reason: AssignmentReason,
    pub assigned_at: jiff::Timestamp,
    pub assigned_by: String,
    /// The planned torch build, `2.8.0+cu128`.
    pub torch: String,
    /// `minor` when that build runs on the machine's driver only through NVIDIA's
    /// CUDA minor-version compatibility.
    #[serde(default, skip_serializing_if = "DriverCompat::is_exact")]
    pub driver_compat: DriverCompat,
}

impl MachineAssignment {
    /// `render-prod@3 (1a2b3c4d5e6f)`.
    pub fn describe(&self) -> String {
        format!("{}@{} ({})", self.environment, self.revision_number, self.revision_id.short())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resolve::{MachineFacts, Resolver};

    fn pinned_example() -> Spec {
        let text = include_str!("../examples/render-farm.toml")
            .replace("ref = \"v0.33.0\"", &format!("ref = \"v0.33.0\"\ncommit = \"{}\"", "a".repeat(40)))
            .replace("ref = \"main\"", &format!("ref = \"main\"\ncommit = \"{}\"", "b".repeat(40)));
        Spec::parse("render-farm.toml", &text, SpecFormat::Toml).unwrap()
    }

    fn record(spec: &Spec) -> AssignmentRecord {
        let facts: MachineFacts = serde_json::from_value(serde_json::json!({
            "id": "m", "hostname": "h", "labels": {}, "os": "linux", "arch": "x86_64",
            "nvml_problem": null, "driver_version": "570.133.07", "cuda_driver_version": "12.8",
            "gpus": [{"index": 0, "name": "NVIDIA GeForce RTX 4090", "compute_capability": "8.9", "memory_total_bytes": 1}],
            "reported": true
        }))
        .unwrap();
        let plan = Resolver::new(spec).plan(&facts).unwrap();
        AssignmentRecord {
            generation: 7,
            environment: spec.name.clone(),
            revision_number: 3,
            revision_id: spec.digest().to_string(),
            spec_json: crate::spec::canonical::to_canonical_json(spec),
            plan_json: serde_json::to_string(&plan).unwrap(),
            activate: true,
            reason: "rollout".into(),
            lock_json: String::new(),
        }
    }

    #[test]
    fn a_good_record_round_trips() {
        let spec = pinned_example();
        let record = record(&spec);
        let assignment = Assignment::from_record(&record).unwrap();
        assert_eq!(assignment.generation, 7);
        assert_eq!(assignment.describe(), format!("render-prod@3 ({})", spec.digest().short()));
        assert_eq!(assignment.to_record(), record);
    }

    #[test]
    fn an_assignment_must_be_the_revision_it_claims_pinned_and_readable() {
        let spec = pinned_example();
        let mut other = record(&spec);
        other.revision_id = "c".repeat(64);
        assert!(matches!(Assignment::from_record(&other), Err(AssignmentError::Digest { .. })));

        let mut renamed = record(&spec);
        renamed.environment = "staging".into();
        assert!(matches!(Assignment::from_record(&renamed), Err(AssignmentError::Environment { .. })));

        let mut unpinned_spec = spec.clone();
        unpinned_spec.custom_nodes[0].commit = None;
        let mut unpinned = record(&spec);
        unpinned.spec_json = crate::spec::canonical::to_canonical_json(&unpinned_spec);
        unpinned.revision_id = unpinned_spec.digest().to_string();
        let error = Assignment::from_record(&unpinned).unwrap_err();
        assert_eq!(
            error.to_string(),
            "custom node ComfyUI-KJNodes is not pinned to a commit; only applied revisions can be assigned"
        );

        let mut garbage = record(&spec);
        garbage.plan_json = "{".into();
        assert!(matches!(Assignment::from_record(&garbage), Err(AssignmentError::Plan(_))));
        let mut hostile = record(&spec);
        hostile.spec_json =
            hostile.spec_json.replace("\"ref\":\"main\"", "\"ref\":\"--upload-pack=touch /tmp/x\"");
        assert!(matches!(Assignment::from_record(&hostile), Err(AssignmentError::Spec(_))));
        let mut reason = record(&spec);
        reason.reason = "because".into();
        assert!(matches!(
            Assignment::from_record(&reason),
            Err(AssignmentError::Field { field: "reason", .. })
        ));
    }
}
