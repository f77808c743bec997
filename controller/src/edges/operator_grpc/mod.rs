//! The operators' gRPC services (`comfyfleet` CLI): machines, environments,
//! rollouts and the package cache.

pub(crate) mod cache_service;
pub(crate) mod environment_service;
pub(crate) mod fleet_service;
pub(crate) mod rollout_api;
pub(crate) mod rollout_service;

use tonic::{Request, Status};

use crate::store::Store;
use crate::use_cases::credentials::auth::{Caller, check_credential};

/// The caller an operator call's `authorization: Bearer cfo1.<id>.<secret>` names.
pub async fn authenticate<T>(store: &dyn Store, request: &Request<T>) -> Result<Caller, Status> {
    let header = request.metadata().get("authorization").ok_or_else(|| {
        Status::unauthenticated(
            "no credential: run comfyfleet with --config FILE (the admin.toml the controller wrote) or set COMFYFLEET_CONFIG",
        )
    })?;
    let text =
        header.to_str().map_err(|_| Status::unauthenticated("the authorization header is not text"))?;
    let token = text
        .strip_prefix("Bearer ")
        .ok_or_else(|| Status::unauthenticated("the authorization header must be `Bearer <credential>`"))?;
    Ok(check_credential(store, token).await?)
}
