//! The source credentials specs name (`comfyfleet secrets`): set, listed, deleted,
//! with the environments that name each.

use std::collections::BTreeMap;

use comfyfleet_config::Role;
use comfyfleet_config::source_credentials::SourceSecret;
use comfyfleet_proto::timestamp_to_wire;
use comfyfleet_proto::v1 as pb;
use jiff::Timestamp;
use tonic::{Request, Response, Status};

use super::FleetApi;
use crate::edges::grpc_status::internal;
use crate::store::{AuditEntry, audited};
use crate::use_cases::ControllerState;

impl FleetApi {
    pub(super) async fn set_secret(
        &self,
        request: Request<pb::SetSourceSecretRequest>,
    ) -> Result<Response<pb::SourceSecretInfo>, Status> {
        let caller = self.caller(&request, Role::Admin).await?;
        let request = request.into_inner();
        check_source_credential_name(&request.name)?;
        let mut origins = Vec::new();
        for given in &request.origins {
            let origin = comfyfleet_config::source_credentials::parse_origin(given).map_err(|message| {
                Status::invalid_argument(format!("credential {:?}: {message}", request.name))
            })?;
            if !origins.contains(&origin) {
                origins.push(origin);
            }
        }
        let secret = SourceSecret {
            username: request.username,
            password: request.secret,
            origins,
            bearer: request.bearer,
        };
        secret.check().map_err(|message| {
            Status::invalid_argument(format!("credential {:?}: {message}", request.name))
        })?;
        let who =
            if secret.bearer { "bearer token".to_owned() } else { format!("username {}", secret.username) };
        let detail = format!("{who}; origins {}; {{created}}", secret.origins.join(", "));
        let entry = AuditEntry::new(caller.actor(), "secret.set", &request.name, detail);
        let replaced =
            audited(entry, self.state.source_secrets.set(&request.name, &secret)).await.map_err(internal)?;
        let used_by = source_secret_users(&self.state).await?.remove(&request.name).unwrap_or_default();
        Ok(Response::new(pb::SourceSecretInfo {
            name: request.name,
            username: secret.username,
            set_at: Some(timestamp_to_wire(Timestamp::now())),
            used_by,
            replaced,
            origins: secret.origins,
            bearer: secret.bearer,
        }))
    }

    pub(super) async fn list_secrets(
        &self,
        request: Request<pb::ListSourceSecretsRequest>,
    ) -> Result<Response<pb::ListSourceSecretsResponse>, Status> {
        self.caller(&request, Role::Admin).await?;
        let mut users = source_secret_users(&self.state).await?;
        let listed = self.state.source_secrets.list().await.map_err(internal)?;
        Ok(Response::new(pb::ListSourceSecretsResponse {
            secrets: listed
                .into_iter()
                .map(|info| pb::SourceSecretInfo {
                    used_by: users.remove(&info.name).unwrap_or_default(),
                    name: info.name,
                    username: info.username,
                    set_at: Some(timestamp_to_wire(info.set_at)),
                    replaced: false,
                    origins: info.origins,
                    bearer: info.bearer,
                })
                .collect(),
        }))
    }

    pub(super) async fn delete_secret(
        &self,
        request: Request<pb::DeleteSourceSecretRequest>,
    ) -> Result<Response<pb::DeleteSourceSecretResponse>, Status> {
        let caller = self.caller(&request, Role::Admin).await?;
        let request = request.into_inner();
        check_source_credential_name(&request.name)?;
        let users = source_secret_users(&self.state).await?.remove(&request.name).unwrap_or_default();
        if !users.is_empty() && !request.force {
            return Err(Status::failed_precondition(format!(
                "credential {:?} is named by {}: apply specs that no longer name it first, or delete it anyway with \
                 --force (their builds then fail where they need it)",
                request.name,
                users.join(", ")
            )));
        }
        let entry = AuditEntry::new(caller.actor(), "secret.delete", &request.name, "");
        if !audited(entry, self.state.source_secrets.delete(&request.name)).await.map_err(internal)? {
            return Err(Status::not_found(format!(
                "no credential {:?} (see `comfyfleet secrets list`)",
                request.name
            )));
        }
        Ok(Response::new(pb::DeleteSourceSecretResponse {}))
    }
}

fn check_source_credential_name(name: &str) -> Result<(), Status> {
    comfyfleet_config::source_credentials::check_credential_name(name).map_err(Status::invalid_argument)
}

/// Credential name → the environments (`name@revision`) whose latest revision names it.
async fn source_secret_users(state: &ControllerState) -> Result<BTreeMap<String, Vec<String>>, Status> {
    let mut users: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for environment in state.store.list_environments().await.map_err(internal)? {
        let Ok(spec) = serde_json::from_str::<comfyfleet_config::Spec>(&environment.latest.spec_json) else {
            continue;
        };
        for name in comfyfleet_config::source_credentials::credential_names(&spec) {
            users
                .entry(name)
                .or_default()
                .push(format!("{}@{}", environment.name, environment.latest.number));
        }
    }
    Ok(users)
}
