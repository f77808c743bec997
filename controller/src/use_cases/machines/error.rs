//! What can go wrong finding and changing machines.

use comfyfleet_config::MachineId;

use crate::store::StoreError;

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
    #[error(transparent)]
    Store(#[from] StoreError),
}
