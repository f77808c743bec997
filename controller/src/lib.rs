//! comfyfleet's controller: it enrolls agents with join tokens and its own CA, holds
//! one mutual-TLS session per machine, stores what each machine is, keeps every
//! environment's pinned revisions, and answers operators. `server::run` puts the
//! pieces together.
#![forbid(unsafe_code)]

mod admin_file;
mod agent_service;
mod auth;
mod environment_service;
mod fleet_service;
mod git_pin;
pub mod pki;
mod presence;
mod secrets;
pub mod server;
pub mod state;
pub mod store;
mod tls;

pub use server::{ControllerError, ControllerOptions, run};
pub use state::Settings;
