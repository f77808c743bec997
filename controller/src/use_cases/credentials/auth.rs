//! Who is calling the operator API, and whether their role allows the call.
//!
//! Operators send `authorization: Bearer cfo1.<id>.<secret>`. Only the secret's
//! sha256 is stored; it is compared in constant time.

use comfyfleet_config::{OperatorCredential, Role};
use tonic::{Request, Status};

use crate::use_cases::credentials::secrets;
use crate::store::Store;

#[derive(Debug, Clone)]
pub struct Caller {
    pub credential_id: String,
    pub name: String,
    pub role: Role,
}

impl Caller {
    /// How the audit log names this caller.
    pub fn actor(&self) -> String {
        format!("{} ({})", self.name, self.credential_id)
    }

    pub fn require(&self, needed: Role) -> Result<(), Status> {
        if self.role >= needed {
            Ok(())
        } else {
            Err(Status::permission_denied(format!(
                "credential `{}` has role {}; this needs {needed} or higher",
                self.name, self.role
            )))
        }
    }
}

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
    check_credential(store, token).await
}

/// The caller a credential (`cfo1.<id>.<secret>`) names, if it is valid here.
pub async fn check_credential(store: &dyn Store, token: &str) -> Result<Caller, Status> {
    let credential: OperatorCredential =
        token.parse().map_err(|error: comfyfleet_config::credential::MalformedCredential| {
            Status::unauthenticated(error.to_string())
        })?;
    let rejected = || {
        Status::unauthenticated(format!(
            "credential {} is not valid on this controller (revoked, or issued by another controller); \
             ask an admin for a new one (`comfyfleet credentials create`)",
            credential.id()
        ))
    };
    let record = store
        .get_credential(credential.id())
        .await
        .map_err(|error| crate::edges::grpc_status::store_status(&error))?
        .ok_or_else(rejected)?;
    if record.revoked_at.is_some()
        || !secrets::digests_match(&record.secret_sha256, &secrets::digest(credential.secret()))
    {
        return Err(rejected());
    }
    Ok(Caller { credential_id: record.id, name: record.name, role: record.role })
}
