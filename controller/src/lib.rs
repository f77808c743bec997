//! comfyfleet's controller: it enrolls agents with join tokens and its own CA, holds
//! one mutual-TLS session per machine, stores what each machine is, keeps every
//! environment's pinned revisions, assigns them to machines (pushing each agent its
//! desired state), and answers operators. `app::server::run` puts the pieces together.
//!
//! The layers, one folder each (see `controller/README.md`): `app` wires and serves;
//! `edges` speak the wire (the agents' and operators' gRPC services, the web page,
//! `/metrics`, the package cache's HTTP routes); `use_cases` hold what the controller
//! does, by capability; `store` keeps it. Imports run one way: app -> edges ->
//! use cases -> store (and `counters`, what `/metrics` counts as it happens).
#![forbid(unsafe_code)]

pub mod app;
pub mod counters;
pub(crate) mod edges;
pub mod store;
pub mod use_cases;

pub use app::server::{ControllerError, ControllerOptions, run};
pub use app::{backup, connection_guard, retention};
pub use use_cases::Settings;
pub use use_cases::credentials::pki;
pub use use_cases::sources::source_policy;
