//! comfyfleet's controller: it enrolls agents with join tokens and its own CA, holds
//! one mutual-TLS session per machine, stores what each machine is, keeps every
//! environment's pinned revisions, assigns them to machines (pushing each agent its
//! desired state), and answers operators. `server::run` puts the pieces together.
#![forbid(unsafe_code)]

mod admin_file;
mod agent_service;
mod auth;
pub mod backup;
mod cache_body;
mod cache_http;
mod cache_service;
pub mod cluster;
pub mod connection_guard;
mod cpu_work;
mod desired_state;
mod environment_service;
mod failure_throttle;
pub mod fleet_identity;
pub mod fleet_secrets;
mod fleet_service;
pub mod fleet_view;
mod git_command;
mod git_mirror;
mod git_pin;
mod grpc_status;
mod index_page;
mod index_proxy;
mod inventory_updates;
mod locking;
pub mod metrics;
mod model_cache;
pub mod package_cache;
pub mod pki;
mod presence;
mod report_intake;
mod report_writer;
pub mod retention;
mod revision_files;
mod rollout_service;
pub mod rollouts;
mod secrets;
pub mod server;
mod server_certificate;
mod source_access;
pub mod source_policy;
pub mod source_secrets;
pub mod state;
pub mod store;
#[cfg(test)]
mod test_fleet;
mod tls;
mod upstream_client;
mod web;

pub use server::{ControllerError, ControllerOptions, run};
pub use state::Settings;
