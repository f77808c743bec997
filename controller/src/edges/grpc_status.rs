//! How the gRPC edges answer the controller's own failures: a store that cannot be
//! reached just now is UNAVAILABLE, which clients retry; anything else is INTERNAL.
//! And the one place the use cases' typed errors become gRPC codes.

use comfyfleet_config::text::Escaped;
use tonic::Status;

use crate::store::StoreError;
use crate::use_cases::credentials::auth::CredentialError;
use crate::use_cases::environments::RevisionError;
use crate::use_cases::environments::checkout_check::CheckoutError;
use crate::use_cases::machines::MachineError;
use crate::use_cases::package_cache::fill::FillError;
use crate::use_cases::rollouts::RolloutError;

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

// The one mapping of the use cases' errors to gRPC codes. Each message is the
// error's own text; what is the controller's fault is logged here (`internal`).

impl From<MachineError> for Status {
    fn from(error: MachineError) -> Self {
        match error {
            MachineError::Store(store) => store_status(&store),
            MachineError::Revisions(inner) => inner.into(),
            MachineError::Internal(message) => internal(message),
            MachineError::NoMachineStartsWith { .. } | MachineError::Disappeared { .. } => {
                Status::not_found(error.to_string())
            }
            MachineError::Revoked { .. }
            | MachineError::NothingToReturnTo { .. }
            | MachineError::EarlierRevisionUnknown { .. }
            | MachineError::CannotRunAnyMore { .. } => Status::failed_precondition(error.to_string()),
            MachineError::NoMachineGiven
            | MachineError::SeveralMachinesMatch { .. }
            | MachineError::TooManyNamed { .. } => Status::invalid_argument(error.to_string()),
        }
    }
}

impl From<CheckoutError> for Status {
    fn from(error: CheckoutError) -> Self {
        // Both are the spec's or its source's to fix, before anything is stored.
        Status::failed_precondition(error.to_string())
    }
}

impl From<RevisionError> for Status {
    fn from(error: RevisionError) -> Self {
        match error {
            RevisionError::Store(store) => store_status(&store),
            RevisionError::SourceSecrets(inner) => internal(inner),
            RevisionError::StoredRevisionUnparsable { .. } => internal(error),
            RevisionError::SourceCredentialsRefused(_) => Status::failed_precondition(error.to_string()),
            RevisionError::UnknownEnvironment { .. }
            | RevisionError::NoRevisionNumbered { .. }
            | RevisionError::NoRevisionWithPrefix { .. } => Status::not_found(error.to_string()),
            RevisionError::NoEnvironmentName
            | RevisionError::NotARevision { .. }
            | RevisionError::SeveralRevisionsMatch { .. } => Status::invalid_argument(error.to_string()),
        }
    }
}

impl From<RolloutError> for Status {
    fn from(error: RolloutError) -> Self {
        match error {
            RolloutError::Store(store) => store_status(&store),
            RolloutError::Machines(inner) => inner.into(),
            RolloutError::Revisions(inner) => inner.into(),
            RolloutError::Internal(message) => internal(message),
            RolloutError::EngineStopped | RolloutError::NotLeading | RolloutError::LeadLost(_) => {
                Status::unavailable(error.to_string())
            }
            RolloutError::NoSuchRollout { .. }
            | RolloutError::NoRolloutYet
            | RolloutError::NoRolloutOf { .. }
            | RolloutError::Gone { .. } => Status::not_found(error.to_string()),
            RolloutError::NotOpen { .. }
            | RolloutError::NothingToUndo { .. }
            | RolloutError::NoEarlierRevision { .. }
            | RolloutError::AlreadyRolledOut { .. } => Status::failed_precondition(error.to_string()),
            RolloutError::BadPolicy { .. }
            | RolloutError::NoProgressDeadline
            | RolloutError::PolicyLetsNoneThrough { .. }
            | RolloutError::NoRolloutNamed { .. }
            | RolloutError::DeceptiveReason(_)
            | RolloutError::ReasonTooLong => Status::invalid_argument(error.to_string()),
        }
    }
}

impl From<CredentialError> for Status {
    fn from(error: CredentialError) -> Self {
        match error {
            CredentialError::Store(store) => store_status(&store),
            CredentialError::RoleTooLow { .. } => Status::permission_denied(error.to_string()),
            CredentialError::Malformed(_) | CredentialError::NotValidHere { .. } => {
                Status::unauthenticated(error.to_string())
            }
        }
    }
}

impl From<FillError> for Status {
    fn from(error: FillError) -> Self {
        match error {
            FillError::Store(store) => store_status(&store),
            FillError::Revisions(inner) => inner.into(),
            FillError::Internal(message) => internal(message),
            // Not "unavailable": the controller answered; what it fetches from did not.
            FillError::Incomplete(_) => Status::failed_precondition(error.to_string()),
        }
    }
}
