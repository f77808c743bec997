//! comfyfleet's wire contract, `comfyfleet.v1`, generated from `fleet.proto`, plus the
//! conversions between wire messages and the domain types of `comfyfleet-config`.
//! Wire types stop at the gRPC edge: everything past it uses domain types.
#![forbid(unsafe_code)]

pub mod codec;
mod convert;
mod provisioning;
pub mod transport;

pub use convert::{
    WireError, labels_from_wire, labels_to_wire, role_from_wire, spec_format_from_wire, timestamp_from_wire,
    timestamp_to_wire,
};
pub use provisioning::{assignment_from_wire, report_from_agent};

/// The generated messages, clients and servers.
pub mod v1 {
    #![allow(clippy::all, clippy::pedantic, missing_docs, unreachable_pub)]
    tonic::include_proto!("comfyfleet.v1");
}

/// The encoded descriptor set of every comfyfleet.v1 service, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("comfyfleet_v1_descriptor");

/// The largest message an agent may send. An inventory of 64 GPUs is about 15 KiB;
/// anything near this is an attack or a bug, and the codec refuses it unread.
pub const MAX_AGENT_MESSAGE_BYTES: usize = 1 << 20;

/// The largest operator API message (a page of machines with full inventories).
pub const MAX_FLEET_MESSAGE_BYTES: usize = 32 << 20;

/// Metadata on a refused agent call saying why, when the agent should act on it:
/// `unknown-machine` (the controller does not know the machine: its database may
/// have been restored or replaced, so the agent keeps retrying).
pub const REFUSAL_METADATA: &str = "comfyfleet-refusal";
/// The refusal for a machine the controller does not know.
pub const REFUSAL_UNKNOWN_MACHINE: &str = "unknown-machine";
/// Metadata on a refusal naming the fleet the refusing controller serves.
pub const FLEET_ID_METADATA: &str = "comfyfleet-fleet-id";
