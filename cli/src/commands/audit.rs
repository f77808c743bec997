//! `comfyfleet audit`: who changed what, newest first.

use comfyfleet_proto::v1 as pb;
use serde::Serialize;

use super::{status_error, time, to_json};
use crate::OutputFormat;
use crate::client::Fleet;
use crate::format;

#[derive(Serialize)]
struct EventView {
    id: u64,
    at: Option<String>,
    actor: String,
    action: String,
    target: String,
    detail: String,
}

pub async fn list(client: &mut Fleet, limit: u32, output: OutputFormat) -> anyhow::Result<String> {
    let events = client
        .list_audit_events(pb::ListAuditEventsRequest { limit })
        .await
        .map_err(status_error)?
        .into_inner()
        .events;
    let views: Vec<EventView> = events
        .into_iter()
        .map(|event| EventView {
            id: event.id,
            at: time(event.at.as_ref()).map(format::rfc3339),
            actor: event.actor,
            action: event.action,
            target: event.target,
            detail: event.detail,
        })
        .collect();
    match output {
        OutputFormat::Json => to_json(&views),
        OutputFormat::Table | OutputFormat::Csv => {
            let rows: Vec<Vec<String>> = views
                .iter()
                .map(|e| {
                    vec![
                        e.at.clone().unwrap_or_default(),
                        e.actor.clone(),
                        e.action.clone(),
                        e.target.clone(),
                        e.detail.clone(),
                    ]
                })
                .collect();
            Ok(format::table(&["TIME", "ACTOR", "ACTION", "TARGET", "DETAIL"], &rows))
        }
    }
}
