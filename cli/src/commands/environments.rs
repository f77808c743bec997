//! `comfyfleet apply` and `comfyfleet env …`: storing specs as immutable, pinned
//! revisions and reading them back.

use comfyfleet_config::spec::canonical::to_toml;
use comfyfleet_config::spec::{Spec, SpecFormat};
use comfyfleet_proto::v1 as pb;

use super::plan::{plan, summary_line};
use super::{machines, status_error, time, to_json};
use crate::OutputFormat;
use crate::client::Fleet;
use crate::format;
use crate::spec_file::SpecFile;

const SHORT_ID: usize = 12;

pub fn short(id: &str) -> &str {
    id.get(..SHORT_ID).unwrap_or(id)
}

/// The spec a stored revision holds (canonical JSON, itself a valid spec).
fn revision_spec(revision: &pb::EnvironmentRevision) -> anyhow::Result<Spec> {
    Spec::parse(
        &format!("{}@{}", revision.environment, revision.number),
        &revision.spec_json,
        SpecFormat::Json,
    )
    .map_err(|e| anyhow::anyhow!("the controller sent an unreadable revision: {e}"))
}

pub async fn apply(client: &mut Fleet, file: SpecFile) -> anyhow::Result<String> {
    let format = pb::SpecFormat::from(file.format);
    let response = client
        .apply_environment(pb::ApplyEnvironmentRequest {
            spec: file.text,
            format: format as i32,
            file_name: file.name,
        })
        .await
        .map_err(status_error)?
        .into_inner();
    let revision = response.revision.ok_or_else(|| anyhow::anyhow!("the controller sent no revision"))?;
    let mut text = if response.created {
        format!("{} revision {} created, id {}\n", revision.environment, revision.number, revision.id)
    } else {
        format!(
            "{} unchanged: revision {} (id {}) already has this content and these commits\n",
            revision.environment, revision.number, revision.id
        )
    };
    let rows: Vec<Vec<String>> = response
        .pins
        .iter()
        .map(|pin| vec![pin.source.clone(), pin.r#ref.clone(), pin.commit.clone()])
        .collect();
    for line in format::table(&["SOURCE", "REF", "COMMIT"], &rows).lines() {
        text.push_str(&format!("  {line}\n"));
    }
    let spec = revision_spec(&revision)?;
    let machines = machines::fetch_all(client, false).await?;
    let report = plan(&spec, &machines)?;
    text.push_str(&summary_line(
        &format!("plan for {}@{}", revision.environment, revision.number),
        &report.summary,
    ));
    Ok(text)
}

pub async fn list(client: &mut Fleet, output: OutputFormat) -> anyhow::Result<String> {
    let environments =
        client.list_environments(pb::ListEnvironmentsRequest {}).await.map_err(status_error)?.into_inner();
    if output == OutputFormat::Json {
        let items: Vec<serde_json::Value> = environments
            .environments
            .iter()
            .map(|env| {
                serde_json::json!({
                    "name": env.name,
                    "revisions": env.revisions,
                    "latest": env.latest.as_ref().map(revision_json),
                })
            })
            .collect();
        return to_json(&items);
    }
    let rows: Vec<Vec<String>> = environments
        .environments
        .iter()
        .map(|env| {
            let latest = env.latest.as_ref();
            vec![
                env.name.clone(),
                env.revisions.to_string(),
                latest.map(|r| format!("{} ({})", r.number, short(&r.id))).unwrap_or_default(),
                latest.and_then(|r| time(r.created_at.as_ref())).map(format::rfc3339).unwrap_or_default(),
                latest.map(|r| r.created_by.clone()).unwrap_or_default(),
            ]
        })
        .collect();
    Ok(format::table(&["NAME", "REVISIONS", "LATEST", "CREATED", "BY"], &rows))
}

fn revision_json(revision: &pb::EnvironmentRevision) -> serde_json::Value {
    serde_json::json!({
        "environment": revision.environment,
        "number": revision.number,
        "id": revision.id,
        "created_at": time(revision.created_at.as_ref()).map(format::rfc3339),
        "created_by": revision.created_by,
        "spec": serde_json::from_str::<serde_json::Value>(&revision.spec_json).unwrap_or_default(),
    })
}

/// `NAME`, `NAME@3` or `NAME@a1b2c3d4`.
pub fn split_reference(reference: &str) -> (String, String) {
    match reference.split_once('@') {
        Some((name, revision)) => (name.to_owned(), revision.to_owned()),
        None => (reference.to_owned(), String::new()),
    }
}

async fn get(client: &mut Fleet, reference: &str) -> anyhow::Result<pb::EnvironmentRevision> {
    let (environment, revision) = split_reference(reference);
    if environment.is_empty() {
        anyhow::bail!("`{reference}` names no environment: write NAME, NAME@NUMBER or NAME@ID");
    }
    Ok(client
        .get_environment_revision(pb::GetEnvironmentRevisionRequest { environment, revision })
        .await
        .map_err(status_error)?
        .into_inner())
}

pub async fn show(client: &mut Fleet, reference: String, output: OutputFormat) -> anyhow::Result<String> {
    let revision = get(client, &reference).await?;
    if output == OutputFormat::Json {
        return to_json(&revision_json(&revision));
    }
    let spec = revision_spec(&revision)?;
    let created = time(revision.created_at.as_ref()).map(format::rfc3339).unwrap_or_default();
    Ok(format!(
        "# {}@{}  id {}\n# created {created} by {}\n{}",
        revision.environment,
        revision.number,
        revision.id,
        revision.created_by,
        to_toml(&spec)
    ))
}

pub async fn history(
    client: &mut Fleet,
    environment: String,
    output: OutputFormat,
) -> anyhow::Result<String> {
    let revisions = client
        .list_environment_revisions(pb::ListEnvironmentRevisionsRequest { environment })
        .await
        .map_err(status_error)?
        .into_inner()
        .revisions;
    if output == OutputFormat::Json {
        let items: Vec<serde_json::Value> = revisions.iter().map(revision_json).collect();
        return to_json(&items);
    }
    let mut rows = Vec::new();
    for revision in &revisions {
        let spec = revision_spec(revision)?;
        let commit = spec.comfyui.commit.as_deref().map(|c| c.get(..10).unwrap_or(c)).unwrap_or("-");
        rows.push(vec![
            revision.number.to_string(),
            short(&revision.id).to_owned(),
            time(revision.created_at.as_ref()).map(format::rfc3339).unwrap_or_default(),
            revision.created_by.clone(),
            format!(
                "torch {} ({})",
                spec.torch.version,
                spec.torch.cuda.iter().map(ToString::to_string).collect::<Vec<_>>().join(",")
            ),
            format!("{} @ {commit}", spec.comfyui.reference),
        ]);
    }
    Ok(format::table(&["REVISION", "ID", "CREATED", "BY", "TORCH", "COMFYUI"], &rows))
}

/// A unified diff of two revisions' specs, rendered as TOML.
pub async fn diff(client: &mut Fleet, from: String, to: String) -> anyhow::Result<String> {
    let (from_name, _) = split_reference(&from);
    // `env diff render-prod@1 2`: the second names a revision of the same environment.
    let to = if to.contains('@') { to } else { format!("{from_name}@{to}") };
    let a = get(client, &from).await?;
    let b = get(client, &to).await?;
    let a_label = format!("{}@{} ({})", a.environment, a.number, short(&a.id));
    let b_label = format!("{}@{} ({})", b.environment, b.number, short(&b.id));
    if a.id == b.id {
        return Ok(format!("{a_label} and {b_label} are the same revision\n"));
    }
    let (a_text, b_text) = (to_toml(&revision_spec(&a)?), to_toml(&revision_spec(&b)?));
    let diff = similar::TextDiff::from_lines(&a_text, &b_text);
    Ok(diff.unified_diff().context_radius(3).header(&a_label, &b_label).to_string())
}
