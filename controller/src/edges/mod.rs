//! The edges: where the wire meets the use cases. Each authenticates its caller,
//! converts the request to domain types, calls a use case, and converts the answer
//! and the use case's typed error back (gRPC codes in `grpc_status`, HTTP statuses
//! in `cache_http` and `web`). Only the edges name the protocol (`pb::`, `tonic::Status`).

pub(crate) mod agent_grpc;
pub(crate) mod cache_http;
pub(crate) mod failure_throttle;
pub(crate) mod grpc_status;
pub mod metrics;
pub(crate) mod operator_grpc;
pub(crate) mod web;
