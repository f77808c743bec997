//! How the gRPC edges answer the controller's own failures: a store that cannot be
//! reached just now is UNAVAILABLE, which clients retry; anything else is INTERNAL.

use comfyfleet_config::text::Escaped;
use tonic::Status;

use crate::store::StoreError;

/// A failure of the controller's own, as the caller's status: UNAVAILABLE (clients
/// retry) when the store cannot be reached just now, INTERNAL otherwise.
pub(crate) fn internal<E: std::fmt::Display + 'static>(error: E) -> Status {
    if let Some(store) = (&error as &dyn std::any::Any).downcast_ref::<StoreError>() {
        return store_status(store);
    }
    tracing::error!(error = %Escaped(&error), "internal error");
    Status::internal(error.to_string())
}

/// A store error as the caller's status: see [`internal`].
pub(crate) fn store_status(error: &StoreError) -> Status {
    if error.is_unavailable() {
        tracing::warn!(error = %Escaped(error), "the store is unavailable");
        return Status::unavailable(format!(
            "the controller's database is unavailable ({error}); retry shortly"
        ));
    }
    tracing::error!(error = %Escaped(&error), "internal error");
    Status::internal(error.to_string())
}
