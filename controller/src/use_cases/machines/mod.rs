//! Enrollment and machines: the fleet as queries see it, inventory updates, and what
//! agents report about their convergence.

mod error;
pub mod fleet_view;
pub(crate) mod inventory_updates;
pub mod lookup;
pub(crate) mod report_intake;

pub use error::MachineError;
