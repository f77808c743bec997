//! Enrollment and machines: the fleet as queries see it, inventory updates, and what
//! agents report about their convergence.

pub mod fleet_view;
pub(crate) mod inventory_updates;
pub(crate) mod report_intake;
