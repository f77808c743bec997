//! Tokens and credentials: operators' credentials and roles, the fleet's identity,
//! its CA and the controller's own certificate, the secrets they are made of.

pub(crate) mod auth;
pub mod fleet_identity;
pub mod fleet_secrets;
pub mod pki;
pub(crate) mod secrets;
pub(crate) mod server_certificate;
