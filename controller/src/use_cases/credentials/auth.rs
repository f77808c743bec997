//! Who is calling the operator API, and whether their role allows the call.
//!
//! Operators send `cfo1.<id>.<secret>` (the edges take it from their header or
//! form). Only the secret's sha256 is stored; it is compared in constant time.

use comfyfleet_config::{OperatorCredential, Role};
use jiff::Timestamp;

use crate::store::{AuditEntry, CredentialRecord, Store, StoreError, audited};
use crate::use_cases::ControllerState;
use crate::use_cases::credentials::secrets;

#[derive(Debug, Clone)]
pub struct Caller {
    pub credential_id: String,
    pub name: String,
    pub role: Role,
}

/// Why a caller is refused.
#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    /// The text is not a credential (the parser says why).
    #[error("{0}")]
    Malformed(String),
    #[error(
        "credential {id} is not valid on this controller (revoked, or issued by another controller); \
         ask an admin for a new one (`comfyfleet credentials create`)"
    )]
    NotValidHere { id: String },
    #[error("credential `{name}` has role {role}; this needs {needed} or higher")]
    RoleTooLow { name: String, role: Role, needed: Role },
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl Caller {
    /// How the audit log names this caller.
    pub fn actor(&self) -> String {
        format!("{} ({})", self.name, self.credential_id)
    }

    pub fn require(&self, needed: Role) -> Result<(), CredentialError> {
        if self.role >= needed {
            Ok(())
        } else {
            Err(CredentialError::RoleTooLow { name: self.name.clone(), role: self.role, needed })
        }
    }
}

/// The caller a credential (`cfo1.<id>.<secret>`) names, if it is valid here.
pub async fn check_credential(store: &dyn Store, token: &str) -> Result<Caller, CredentialError> {
    let credential: OperatorCredential =
        token.parse().map_err(|error: comfyfleet_config::credential::MalformedCredential| {
            CredentialError::Malformed(error.to_string())
        })?;
    let rejected = || CredentialError::NotValidHere { id: credential.id().to_owned() };
    let record = store.get_credential(credential.id()).await?.ok_or_else(rejected)?;
    if record.revoked_at.is_some()
        || !secrets::digests_match(&record.secret_sha256, &secrets::digest(credential.secret()))
    {
        return Err(rejected());
    }
    Ok(Caller { credential_id: record.id, name: record.name, role: record.role })
}

/// Mints a credential and stores its digest; returns the secret text, shown once.
/// Makes a credential, audited (`credential.create` by `created_by`, `note` after the
/// name and role) in the same transaction.
pub async fn mint_credential(
    state: &ControllerState,
    name: &str,
    role: Role,
    created_by: &str,
    note: &str,
) -> Result<(OperatorCredential, CredentialRecord), crate::store::StoreError> {
    let id = secrets::new_token_id();
    let secret = secrets::new_secret();
    let record = CredentialRecord {
        id: id.clone(),
        name: name.to_owned(),
        role,
        secret_sha256: secrets::digest(&secret),
        created_at: Timestamp::now(),
        revoked_at: None,
        created_by: created_by.to_owned(),
    };
    let entry = AuditEntry::new(created_by, "credential.create", &id, format!("{name} as {role}{note}"));
    audited(entry, state.store.create_credential(&record)).await?;
    let credential = OperatorCredential::new(&id, &secret)
        .map_err(|e| crate::store::StoreError::Corrupt { what: "new credential", detail: e.to_string() })?;
    Ok((credential, record))
}
