//! `comfyfleet credentials …`: scoped operator credentials (viewer, operator, admin).

use comfyfleet_config::{AdminConfig, Role};
use comfyfleet_proto::v1 as pb;
use serde::Serialize;

use super::{role_name, status_error, time, to_json};
use crate::OutputFormat;
use crate::client::Fleet;
use crate::format;

/// `comfyfleet whoami`: the credential, its role, the controller, and until when its
/// server certificate is valid (a warning on standard error when that is near).
pub async fn whoami(client: &mut Fleet, config: &AdminConfig) -> anyhow::Result<String> {
    let me = client.who_am_i(pb::WhoAmIRequest {}).await.map_err(status_error)?.into_inner();
    let not_after = me.server_certificate_not_after.as_ref();
    super::warn_if_certificate_expires(not_after);
    let certificate = super::server_certificate_note(not_after, jiff::Timestamp::now())
        .filter(|note| !note.starts_with("warning"))
        .map(|note| note + "\n")
        .unwrap_or_default();
    Ok(format!(
        "{} ({}) with role {} on {} (controller {})\n{certificate}",
        me.name,
        me.credential_id,
        role_name(me.role),
        config.server,
        me.controller_version,
    ))
}

/// Prints a ready-to-use config file for the new credential (or only the token).
pub async fn create(
    client: &mut Fleet,
    config: &AdminConfig,
    name: String,
    role: Role,
    token_only: bool,
) -> anyhow::Result<String> {
    let response = client
        .create_credential(pb::CreateCredentialRequest { name, role: pb::Role::from(role).into() })
        .await
        .map_err(status_error)?
        .into_inner();
    if token_only {
        return Ok(format!("{}\n", response.token));
    }
    let new_config = AdminConfig {
        server: config.server.clone(),
        credential: response.token,
        ca_certificate: config.ca_certificate.clone(),
        other_servers: config.other_servers.clone(),
    };
    Ok(new_config.to_toml())
}

#[derive(Serialize)]
struct CredentialView {
    id: String,
    name: String,
    role: &'static str,
    created_at: Option<String>,
    revoked_at: Option<String>,
    created_by: String,
}

fn view(credential: pb::Credential) -> CredentialView {
    CredentialView {
        id: credential.id,
        name: credential.name,
        role: role_name(credential.role),
        created_at: time(credential.created_at.as_ref()).map(format::rfc3339),
        revoked_at: time(credential.revoked_at.as_ref()).map(format::rfc3339),
        created_by: credential.created_by,
    }
}

pub async fn list(client: &mut Fleet, output: OutputFormat) -> anyhow::Result<String> {
    let credentials = client
        .list_credentials(pb::ListCredentialsRequest {})
        .await
        .map_err(status_error)?
        .into_inner()
        .credentials;
    let views: Vec<CredentialView> = credentials.into_iter().map(view).collect();
    match output {
        OutputFormat::Json => to_json(&views),
        OutputFormat::Table | OutputFormat::Csv => {
            let rows: Vec<Vec<String>> = views
                .iter()
                .map(|c| {
                    vec![
                        c.id.clone(),
                        c.name.clone(),
                        c.role.to_owned(),
                        if c.revoked_at.is_some() { "revoked".into() } else { "active".into() },
                        c.created_at.clone().unwrap_or_default(),
                        c.created_by.clone(),
                    ]
                })
                .collect();
            Ok(format::table(&["ID", "NAME", "ROLE", "STATE", "CREATED", "CREATED BY"], &rows))
        }
    }
}

pub async fn revoke(client: &mut Fleet, id: String) -> anyhow::Result<String> {
    let credential =
        client.revoke_credential(pb::RevokeCredentialRequest { id }).await.map_err(status_error)?;
    let credential = credential.into_inner();
    Ok(format!("credential {} ({}) revoked\n", credential.id, credential.name))
}
