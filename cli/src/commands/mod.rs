//! One module per command group; each returns the text to print.

pub mod audit;
pub mod cache;
pub mod convergence;
pub mod credentials;
pub mod environments;
pub mod facts;
mod machine_details;
pub mod machines;
pub mod plan;
pub mod reports;
pub mod rollout;
pub mod rollout_policy;
mod rollout_render;
pub mod rollout_status;
mod rollout_view;
pub mod rollout_watch;
pub mod secrets;
pub mod tokens;

use comfyfleet_proto::v1 as pb;
use jiff::Timestamp;

/// A controller refusal, as the operator should read it.
pub fn status_error(status: tonic::Status) -> anyhow::Error {
    let message = status.message();
    match status.code() {
        tonic::Code::Unavailable => anyhow::anyhow!("the controller is unavailable: {message}"),
        tonic::Code::DeadlineExceeded => anyhow::anyhow!("the controller did not answer in time: {message}"),
        _ if message.is_empty() => anyhow::anyhow!("the controller refused: {:?}", status.code()),
        _ => anyhow::anyhow!("{message}"),
    }
}

pub fn time(at: Option<&prost_types::Timestamp>) -> Option<Timestamp> {
    at.and_then(|at| comfyfleet_proto::timestamp_from_wire("time", at).ok())
}

pub fn role_name(role: i32) -> &'static str {
    match pb::Role::try_from(role) {
        Ok(pb::Role::Viewer) => "viewer",
        Ok(pb::Role::Operator) => "operator",
        Ok(pb::Role::Admin) => "admin",
        _ => "unknown",
    }
}

pub fn to_json<T: serde::Serialize>(value: &T) -> anyhow::Result<String> {
    Ok(serde_json::to_string_pretty(value)? + "\n")
}
