//! `comfyfleet apply` and `comfyfleet env …`: storing specs as immutable, pinned
//! revisions and reading them back.

use comfyfleet_config::lock::Lock;
use comfyfleet_config::spec::canonical::to_toml;
use comfyfleet_config::spec::{Spec, SpecFormat};
use comfyfleet_proto::v1 as pb;

use super::plan::{plan, summary_line};
use super::{machines, status_error, time, to_json};
use crate::OutputFormat;
use crate::client::Fleet;
use crate::format;
use crate::spec_file::SpecFile;

/// The spec a stored revision holds (canonical JSON, itself a valid spec).
fn revision_spec(revision: &pb::EnvironmentRevision) -> anyhow::Result<Spec> {
    Spec::parse(
        &format!("{}@{}", revision.environment, revision.number),
        &revision.spec_json,
        SpecFormat::Json,
    )
    .map_err(|e| anyhow::anyhow!("the controller sent an unreadable revision: {e}"))
}

pub async fn apply(client: &mut Fleet, file: SpecFile, classes: Vec<String>) -> anyhow::Result<String> {
    let format = pb::SpecFormat::from(file.format);
    let response = client
        .apply_environment(pb::ApplyEnvironmentRequest {
            spec: file.text,
            format: format as i32,
            file_name: file.name,
            classes,
        })
        .await
        .map_err(status_error)?
        .into_inner();
    applied(client, response).await
}

/// `env lock NAME@REV --class C`: a new revision with those classes locked too.
pub async fn lock(client: &mut Fleet, reference: String, classes: Vec<String>) -> anyhow::Result<String> {
    let (environment, revision) = split_reference(&reference);
    let response = client
        .lock_environment(pb::LockEnvironmentRequest { environment, revision, classes })
        .await
        .map_err(status_error)?
        .into_inner();
    applied(client, response).await
}

/// What apply and `env lock` print: the revision, its pins and locks, and its plan.
async fn applied(client: &mut Fleet, response: pb::ApplyEnvironmentResponse) -> anyhow::Result<String> {
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
    if !rows.is_empty() {
        for line in format::table(&["SOURCE", "REF", "COMMIT"], &rows).lines() {
            text.push_str(&format!("  {line}\n"));
        }
    }
    for lock in &revision.locks {
        let parsed = Lock::from_json(&lock.lock_json).map_err(|e| anyhow::anyhow!("unreadable lock: {e}"))?;
        text.push_str(&format!("  locked {}: {} packages\n", lock.class, parsed.packages.len()));
        for (name, reason) in &parsed.unresolved {
            let first = reason.lines().last().unwrap_or_default().trim();
            text.push_str(&format!("    {name} left out (does not resolve with the rest): {first}\n"));
        }
    }
    let spec = revision_spec(&revision)?;
    let machines = machines::fetch_all(client, false).await?;
    let report = plan(&spec, &machines)?;
    text.push_str(&summary_line(
        &format!("plan for {}@{}", revision.environment, revision.number),
        &report.summary,
    ));
    for warning in &report.warnings {
        text.push_str(&format!("warning: {warning}\n"));
    }
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
                latest.map(|r| format!("{} ({})", r.number, format::short_id(&r.id))).unwrap_or_default(),
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
            format::short_id(&revision.id).to_owned(),
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

/// `env show NAME@REV --lock [--class C]`: every locked package.
pub async fn show_lock(
    client: &mut Fleet,
    reference: String,
    class: Option<String>,
    output: OutputFormat,
) -> anyhow::Result<String> {
    let revision = get(client, &reference).await?;
    let mut locks = Vec::new();
    for lock in &revision.locks {
        if class.as_ref().is_some_and(|class| *class != lock.class) {
            continue;
        }
        locks.push(Lock::from_json(&lock.lock_json).map_err(|e| anyhow::anyhow!("unreadable lock: {e}"))?);
    }
    let label = format!("{}@{}", revision.environment, revision.number);
    if locks.is_empty() {
        let classes: Vec<&str> = revision.locks.iter().map(|lock| lock.class.as_str()).collect();
        anyhow::bail!(
            "{label} has {}",
            match (&class, classes.is_empty()) {
                (_, true) => "no locks (it was applied before comfyfleet locked revisions)".to_owned(),
                (Some(class), false) =>
                    format!("no lock for {class}; its classes are {}", classes.join(", ")),
                (None, false) => "no locks".to_owned(),
            }
        );
    }
    if output == OutputFormat::Json {
        let items: Vec<serde_json::Value> = locks
            .iter()
            .map(|lock| serde_json::from_str(&lock.to_canonical_json()).unwrap_or(serde_json::Value::Null))
            .collect();
        return to_json(&items);
    }
    let mut text = String::new();
    for lock in &locks {
        text.push_str(&format!("# {label} {} ({} packages)\n", lock.class, lock.packages.len()));
        let rows: Vec<Vec<String>> = lock
            .packages
            .iter()
            .map(|p| vec![p.name.clone(), p.version.clone(), p.sha256.clone(), p.url.clone()])
            .collect();
        text.push_str(&format::table(&["PACKAGE", "VERSION", "SHA256", "URL"], &rows));
        for (name, reason) in &lock.unresolved {
            text.push_str(&format!("# {name} is not locked: {}\n", reason.replace('\n', " ")));
        }
    }
    Ok(text)
}

/// The packages that changed between two revisions' locks, class by class.
fn lock_changes(a: &pb::EnvironmentRevision, b: &pb::EnvironmentRevision) -> anyhow::Result<String> {
    let parse =
        |revision: &pb::EnvironmentRevision| -> anyhow::Result<std::collections::BTreeMap<String, Lock>> {
            revision
                .locks
                .iter()
                .map(|lock| {
                    Lock::from_json(&lock.lock_json)
                        .map(|parsed| (lock.class.clone(), parsed))
                        .map_err(|e| anyhow::anyhow!("unreadable lock: {e}"))
                })
                .collect()
        };
    let (old, new) = (parse(a)?, parse(b)?);
    let mut text = String::new();
    let mut classes: Vec<&String> = old.keys().chain(new.keys()).collect();
    classes.sort();
    classes.dedup();
    for class in classes {
        match (old.get(class), new.get(class)) {
            (Some(old), Some(new)) => {
                let changes = old.diff(new);
                if changes.is_empty() {
                    continue;
                }
                text.push_str(&format!("packages of {class}:\n"));
                for change in changes {
                    text.push_str(&format!("  {change}\n"));
                }
            }
            (None, Some(new)) => {
                text.push_str(&format!("{class}: locked ({} packages)\n", new.packages.len()))
            }
            (Some(_), None) => text.push_str(&format!("{class}: no longer locked\n")),
            (None, None) => {}
        }
    }
    Ok(text)
}

/// A unified diff of two revisions' specs, rendered as TOML.
pub async fn diff(client: &mut Fleet, from: String, to: String) -> anyhow::Result<String> {
    let (from_name, _) = split_reference(&from);
    // `env diff render-prod@1 2`: the second names a revision of the same environment.
    let to = if to.contains('@') { to } else { format!("{from_name}@{to}") };
    let a = get(client, &from).await?;
    let b = get(client, &to).await?;
    let a_label = format!("{}@{} ({})", a.environment, a.number, format::short_id(&a.id));
    let b_label = format!("{}@{} ({})", b.environment, b.number, format::short_id(&b.id));
    if a.id == b.id {
        return Ok(format!("{a_label} and {b_label} are the same revision\n"));
    }
    // The lock digests differ whenever any package does: the package list says it better.
    let without_digests = |revision: &pb::EnvironmentRevision| -> anyhow::Result<String> {
        let mut spec = revision_spec(revision)?;
        spec.lock.digests.clear();
        Ok(to_toml(&spec))
    };
    let (a_text, b_text) = (without_digests(&a)?, without_digests(&b)?);
    let diff = similar::TextDiff::from_lines(&a_text, &b_text);
    let mut text = if a_text == b_text {
        format!("--- {a_label}\n+++ {b_label}\n(the specs differ only in their locks)\n")
    } else {
        diff.unified_diff().context_radius(3).header(&a_label, &b_label).to_string()
    };
    text.push_str(&lock_changes(&a, &b)?);
    Ok(text)
}
