//! `comfyfleet token …`: join tokens for new machines.

use std::time::Duration;

use comfyfleet_config::Labels;
use comfyfleet_proto::labels_to_wire;
use comfyfleet_proto::v1 as pb;
use jiff::Timestamp;
use serde::Serialize;

use super::{status_error, time, to_json};
use crate::OutputFormat;
use crate::client::Fleet;
use crate::format;

pub async fn create(
    client: &mut Fleet,
    ttl: Duration,
    uses: u32,
    labels: &Labels,
    description: String,
) -> anyhow::Result<String> {
    let response = client
        .create_join_token(pb::CreateJoinTokenRequest {
            ttl_seconds: ttl.as_secs().max(1),
            uses,
            labels: labels_to_wire(labels),
            description,
        })
        .await
        .map_err(status_error)?
        .into_inner();
    Ok(format!("{}\n", response.token))
}

#[derive(Serialize)]
struct TokenView {
    id: String,
    created_at: Option<String>,
    expires_at: Option<String>,
    expired: bool,
    uses: u32,
    uses_allowed: Option<u32>,
    labels: std::collections::BTreeMap<String, String>,
    description: String,
    created_by: String,
}

pub async fn list(client: &mut Fleet, output: OutputFormat) -> anyhow::Result<String> {
    let tokens = client
        .list_join_tokens(pb::ListJoinTokensRequest {})
        .await
        .map_err(status_error)?
        .into_inner()
        .tokens;
    let now = Timestamp::now();
    let views: Vec<TokenView> = tokens
        .into_iter()
        .map(|token| {
            let expires_at = time(token.expires_at.as_ref());
            TokenView {
                id: token.id,
                created_at: time(token.created_at.as_ref()).map(format::rfc3339),
                expires_at: expires_at.map(format::rfc3339),
                expired: expires_at.is_some_and(|at| at <= now),
                uses: token.uses,
                uses_allowed: (token.uses_allowed > 0).then_some(token.uses_allowed),
                labels: token.labels.into_iter().collect(),
                description: token.description,
                created_by: token.created_by,
            }
        })
        .collect();
    match output {
        OutputFormat::Json => to_json(&views),
        OutputFormat::Table | OutputFormat::Csv => {
            let rows: Vec<Vec<String>> = views
                .iter()
                .map(|token| {
                    vec![
                        token.id.clone(),
                        if token.expired {
                            "expired".into()
                        } else {
                            token.expires_at.clone().unwrap_or_default()
                        },
                        match token.uses_allowed {
                            Some(allowed) => format!("{}/{allowed}", token.uses),
                            None => format!("{}/unlimited", token.uses),
                        },
                        token.labels.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(","),
                        token.description.clone(),
                    ]
                })
                .collect();
            Ok(format::table(&["ID", "EXPIRES", "USES", "LABELS", "DESCRIPTION"], &rows))
        }
    }
}

pub async fn delete(client: &mut Fleet, id: String) -> anyhow::Result<String> {
    client.delete_join_token(pb::DeleteJoinTokenRequest { id: id.clone() }).await.map_err(status_error)?;
    Ok(format!("join token {id} deleted\n"))
}
