//! Enrollment and machines: finding them, the fleet as queries see it, inventory
//! updates, what agents report about their convergence, and rollbacks.

mod error;
pub mod fleet_summary;
pub mod fleet_view;
pub(crate) mod inventory_updates;
pub mod lookup;
pub(crate) mod report_intake;
pub mod rollback;

pub use error::MachineError;
