//! Environments: apply (revision files, locks), pin (git revisions), and the desired
//! state each machine is pushed.

pub(crate) mod cpu_work;
pub(crate) mod desired_state;
pub(crate) mod git_pin;
pub(crate) mod locking;
pub(crate) mod revision_files;
