//! What can go wrong starting, undoing, reading and steering rollouts.

use comfyfleet_config::spec::Amount;

use crate::store::StoreError;
use crate::use_cases::environments::RevisionError;
use crate::use_cases::machines::MachineError;

#[derive(Debug, thiserror::Error)]
pub enum RolloutError {
    #[error("the rollout engine has stopped (the controller is shutting down); try again")]
    EngineStopped,
    #[error("this controller does not lead the rollout engine just now; try again in a few seconds")]
    NotLeading,
    /// A rollout write refused because the lead changed hands meanwhile.
    #[error("{0}; try again in a few seconds")]
    LeadLost(StoreError),
    #[error("rollout {id} has {state}; only a running or paused rollout can be told to {command}")]
    NotOpen { id: u64, state: &'static str, command: &'static str },
    #[error("there is no rollout {rollout} (`comfyfleet rollout list` shows them)")]
    NoSuchRollout { rollout: String },
    #[error("there is no rollout yet; start one with `comfyfleet rollout start ENV`")]
    NoRolloutYet,
    #[error("environment {environment:?} has had no rollout (`comfyfleet rollout list` shows them)")]
    NoRolloutOf { environment: String },
    #[error("rollout {id} is gone")]
    Gone { id: u64 },
    #[error("environment {environment:?} has had no rollout to undo (`comfyfleet rollout list` shows them)")]
    NothingToUndo { environment: String },
    #[error(
        "rollout {id} of {label} started from no earlier revision of {environment}; name one with --to-revision"
    )]
    NoEarlierRevision { id: u64, label: String, environment: String },
    #[error(
        "{environment}@{number} is what rollout {id} already rolled out; name another with --to-revision"
    )]
    AlreadyRolledOut { environment: String, number: u32, id: u64 },
    #[error("policy.{field}: {error}")]
    BadPolicy { field: &'static str, error: String },
    #[error("policy.progress_deadline: must be more than 0s (e.g. \"30m\")")]
    NoProgressDeadline,
    #[error(
        "policy.{field}: {value} would never let a machine through; give at least 1 or a percentage such as 10%"
    )]
    PolicyLetsNoneThrough { field: &'static str, value: Amount },
    #[error("name the rollout to {command} (an id, or an environment for its newest rollout)")]
    NoRolloutNamed { command: &'static str },
    /// The reason has characters that could deceive a reader (the text says which).
    #[error("{0}")]
    DeceptiveReason(String),
    #[error("the reason must be at most 1000 printable characters")]
    ReasonTooLong,
    /// A controller fault: a stored revision that no longer parses, or is gone.
    #[error("{0}")]
    Internal(String),
    #[error(transparent)]
    Machines(#[from] MachineError),
    #[error(transparent)]
    Revisions(#[from] RevisionError),
    #[error(transparent)]
    Store(#[from] StoreError),
}
