//! The operators' gRPC services (`comfyfleet` CLI): machines, environments,
//! rollouts and the package cache.

pub(crate) mod cache_service;
pub(crate) mod environment_service;
pub(crate) mod fleet_service;
pub(crate) mod rollout_service;
