//! What can go wrong finding and changing machines.

use comfyfleet_config::MachineId;
use comfyfleet_config::spec::names::printable;

use crate::store::StoreError;
use crate::use_cases::environments::RevisionError;

#[derive(Debug, thiserror::Error)]
pub enum MachineError {
    #[error("give a machine id (or a unique prefix of one)")]
    NoMachineGiven,
    #[error("no machine id starts with `{prefix}` (see `comfyfleet machines`)")]
    NoMachineStartsWith { prefix: String },
    #[error("`{prefix}` matches several machines ({ids}); give more characters")]
    SeveralMachinesMatch { prefix: String, ids: String },
    #[error("{count} machines named; name at most {max}, or none to target every machine the spec selects")]
    TooManyNamed { count: usize, max: usize },
    #[error("machine {machine} is revoked; it can run nothing (see `comfyfleet machines --all`)")]
    Revoked { machine: MachineId },
    #[error(
        "machine {machine} has no earlier environment on disk to return to; roll out the revision it \
         should run instead (`comfyfleet rollout start ENV@REV --machines {machine}`)"
    )]
    NothingToReturnTo { machine: MachineId },
    #[error(
        "machine {machine}'s earlier environment {shown}@{number} ({short_id}) is not a revision this controller \
         knows; roll out one it knows instead (`comfyfleet env history {shown}` lists them)",
        shown = printable(.environment)
    )]
    EarlierRevisionUnknown { machine: MachineId, environment: String, number: u32, short_id: String },
    #[error("machine {machine} cannot run {label} any more: {why}")]
    CannotRunAnyMore { machine: MachineId, label: String, why: String },
    #[error("machine {machine} disappeared while being rolled back")]
    Disappeared { machine: MachineId },
    /// A controller fault.
    #[error("{0}")]
    Internal(String),
    #[error(transparent)]
    Revisions(#[from] RevisionError),
    #[error(transparent)]
    Store(#[from] StoreError),
}
