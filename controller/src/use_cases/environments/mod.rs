//! Environments: apply (revision files, locks), pin (git revisions), and the desired
//! specs and locks the agents are pushed.

pub(crate) mod checkout_check;
pub(crate) mod cpu_work;
mod error;
pub(crate) mod git_pin;
pub(crate) mod locking;
pub(crate) mod model_files;
pub(crate) mod revision_files;
pub mod revisions;
pub mod spec_cache;

pub use error::RevisionError;

/// Shorter id prefixes match too much to be worth typing.
pub const MIN_ID_PREFIX: usize = 4;
