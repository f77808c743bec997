//! The environment calls of the operators' API: applying a spec stores it as an
//! immutable revision with every git ref pinned to a commit; the reads return those
//! revisions. `fleet_service` authenticates the caller and delegates here. A refused
//! apply or lock is audited (`refused`).

use comfyfleet_config::source_credentials::{SourceCredentials, credential_names};
use comfyfleet_config::spec::canonical::to_canonical_json;
use comfyfleet_config::spec::names::printable;
use comfyfleet_config::spec::source::MAX_SPEC_BYTES;
use comfyfleet_config::spec::{Spec, SpecFormat};
use comfyfleet_config::text::Escaped;
use comfyfleet_proto::v1 as pb;
use comfyfleet_proto::{spec_format_from_wire, timestamp_to_wire};
use jiff::Timestamp;
use tonic::Status;

use crate::edges::grpc_status::internal;
use crate::store::{EnvironmentSummary, NewRevision, StoredRevision};
use crate::use_cases::ControllerState;
use crate::use_cases::credentials::auth::Caller;
use crate::use_cases::environments::RevisionError;
use crate::use_cases::environments::git_pin::{self, GitPin};
use crate::use_cases::environments::locking;
#[cfg(test)]
use crate::use_cases::environments::revisions::RevisionSelector;
use crate::use_cases::environments::revisions::{check_environment_name, find_revision, source_credentials};

/// Longer file names are not a name anyone typed; messages call the spec "spec".
const MAX_FILE_NAME: usize = 4096;

/// Parses and checks the spec, pins its git refs and stores the pinned spec as a
/// revision, or finds the revision that already holds exactly that. A refusal is
/// audited.
pub async fn apply(
    state: &ControllerState,
    caller: &Caller,
    request: pb::ApplyEnvironmentRequest,
) -> Result<pb::ApplyEnvironmentResponse, Status> {
    let mut attempt =
        refused::Attempt { file: spec_file_name(&request.file_name).to_owned(), ..Default::default() };
    let applied = apply_spec(state, caller, request, &mut attempt).await;
    if let Err(status) = &applied {
        refused::audit(state, caller, "environment.apply.refused", &attempt, status).await;
    }
    applied
}

async fn apply_spec(
    state: &ControllerState,
    caller: &Caller,
    request: pb::ApplyEnvironmentRequest,
    attempt: &mut refused::Attempt,
) -> Result<pb::ApplyEnvironmentResponse, Status> {
    let file = spec_file_name(&request.file_name);
    if request.spec.len() > MAX_SPEC_BYTES {
        return Err(Status::invalid_argument(format!(
            "{file} is {} bytes; a spec may be at most {MAX_SPEC_BYTES} bytes (1 MiB)",
            request.spec.len()
        )));
    }
    let format = spec_format(request.format, &request.file_name, &request.spec)?;
    let (name, text) = (file.to_owned(), request.spec);
    let mut spec = crate::use_cases::environments::cpu_work::run("checking the spec", move || {
        Spec::parse(&name, &text, format)
    })
    .await
    .map_err(internal)?
    .map_err(|errors| Status::invalid_argument(errors.to_string()))?;
    attempt.environment = Some(spec.name.clone());
    attempt.credentials = credential_names(&spec);
    // Nothing is asked of a source the policy refuses, not even its refs.
    refuse_sources(state, &spec).await?;
    // Before any source is contacted: a credential the spec names for an origin its
    // admin did not bind it to is refused here, so it is never sent there.
    let credentials = source_credentials(state, &spec).await?;
    let pins = git_pin::pin_spec(&mut spec, &state.settings.sources, &credentials, &state.settings.children)
        .await
        .map_err(|errors| Status::failed_precondition(errors.to_string()))?;
    if state.settings.lock_on_apply {
        crate::use_cases::environments::checkout_check::refuse_unfit(&state.mirror, &spec, &credentials)
            .await?;
    }
    let requested = parse_classes(&request.classes)?;
    let locked = if state.settings.lock_on_apply {
        lock_applied(state, &mut spec, requested, &credentials).await?
    } else {
        crate::use_cases::environments::locking::Locked { locks: Vec::new(), tools: Vec::new() }
    };
    let revision = NewRevision {
        environment: spec.name.clone(),
        id: spec.digest(),
        spec_json: to_canonical_json(&spec),
        created_at: Timestamp::now(),
        created_by: caller.actor(),
        locks: locked.stored(),
        files: locked.files(&spec),
    };
    let entry = crate::store::AuditEntry::new(
        caller.actor(),
        "environment.apply",
        format!("{}@{{number}}", revision.environment),
        format!("{{created}} {}", revision.id.short()),
    );
    let (stored, created) = crate::store::audited(entry, state.store.put_environment_revision(&revision))
        .await
        .map_err(internal)?;
    tracing::info!(
        environment = %stored.environment,
        number = stored.number,
        id = %stored.id.short(),
        created,
        by = %Escaped(caller.actor()),
        "environment applied"
    );
    let mut wire = revision_to_wire(&stored);
    wire.locks = locks_to_wire(state, &stored).await?;
    Ok(pb::ApplyEnvironmentResponse {
        revision: Some(wire),
        created,
        pins: pins.iter().map(pin_to_wire).collect(),
    })
}

/// Refuses a spec naming an index, torch index or wheel URL the controller's source
/// policy does not allow, before anything is fetched.
async fn refuse_sources(state: &ControllerState, spec: &Spec) -> Result<(), Status> {
    let refused = state.settings.sources.refused_urls(spec).await;
    if refused.is_empty() {
        return Ok(());
    }
    Err(Status::failed_precondition(format!(
        "{} names sources the controller's source policy refuses:\n{}",
        printable(&spec.name),
        refused.join("\n")
    )))
}

/// Locks the classes the targeted fleet needs, the spec's `lock.classes` and the
/// requested ones (every allowed CUDA build on x86_64 when that is none), and names
/// the locks in the spec.
async fn lock_applied(
    state: &ControllerState,
    spec: &mut Spec,
    requested: Vec<String>,
    credentials: &SourceCredentials,
) -> Result<locking::Locked, Status> {
    let machines: Vec<_> = crate::use_cases::machines::lookup::fleet(state)
        .await?
        .into_iter()
        .map(|machine| crate::use_cases::machines::lookup::machine_record(&state.presence, machine))
        .collect();
    let planned = spec.clone();
    let mut classes =
        crate::use_cases::environments::cpu_work::run("planning the fleet's build classes", move || {
            locking::fleet_classes(&planned, &machines)
        })
        .await
        .map_err(internal)?;
    classes.extend(spec.lock.classes.iter().cloned());
    classes.extend(requested);
    if classes.is_empty() {
        classes = locking::default_classes(spec);
    }
    spec.lock.digests.clear();
    let locked =
        state.locker.lock(spec, &classes, credentials).await.map_err(|problems| {
            Status::failed_precondition(format!("cannot lock {}:\n{problems}", spec.name))
        })?;
    spec.lock.digests = locked.locks.iter().map(|lock| (lock.class.clone(), lock.digest())).collect();
    Ok(locked)
}

/// `env lock NAME@REV --class C`: the revision with more build classes locked, as a
/// new revision (its other locks and its commits unchanged). A refusal is audited.
pub async fn lock(
    state: &ControllerState,
    caller: &Caller,
    request: pb::LockEnvironmentRequest,
) -> Result<pb::ApplyEnvironmentResponse, Status> {
    let mut attempt = refused::Attempt {
        file: format!("{}@{}", printable(&request.environment), printable(&request.revision)),
        environment: Some(printable(&request.environment)),
        ..Default::default()
    };
    let locked = lock_revision(state, caller, request, &mut attempt).await;
    if let Err(status) = &locked {
        refused::audit(state, caller, "environment.lock.refused", &attempt, status).await;
    }
    locked
}

async fn lock_revision(
    state: &ControllerState,
    caller: &Caller,
    request: pb::LockEnvironmentRequest,
    attempt: &mut refused::Attempt,
) -> Result<pb::ApplyEnvironmentResponse, Status> {
    let classes = parse_classes(&request.classes)?;
    if classes.is_empty() {
        return Err(Status::invalid_argument(
            "name at least one build class to lock, e.g. --class cp312-cu128-linux_x86_64",
        ));
    }
    let base = find_revision(state, &request.environment, &request.revision).await?;
    let mut spec = Spec::parse("stored spec", &base.spec_json, SpecFormat::Json)
        .map_err(|errors| Status::internal(format!("a stored revision does not parse: {errors}")))?;
    let new: std::collections::BTreeSet<String> =
        classes.into_iter().filter(|class| !spec.lock.digests.contains_key(class)).collect();
    attempt.credentials = credential_names(&spec);
    refuse_sources(state, &spec).await?;
    let credentials = source_credentials(state, &spec).await?;
    let locked =
        state.locker.lock(&spec, &new, &credentials).await.map_err(|problems| {
            Status::failed_precondition(format!("cannot lock {}:\n{problems}", spec.name))
        })?;
    let mut locks = Vec::new();
    for (class, digest) in &spec.lock.digests {
        let stored =
            state.store.lock(digest).await.map_err(internal)?.ok_or_else(|| {
                Status::internal(format!("the store has lost the lock of {class} ({digest})"))
            })?;
        locks.push(stored);
    }
    locks.extend(locked.stored());
    for lock in &locked.locks {
        spec.lock.digests.insert(lock.class.clone(), lock.digest());
    }
    let revision = NewRevision {
        environment: spec.name.clone(),
        id: spec.digest(),
        spec_json: to_canonical_json(&spec),
        created_at: Timestamp::now(),
        created_by: caller.actor(),
        locks,
        files: locked.files(&spec),
    };
    let classes: Vec<&str> = locked.locks.iter().map(|lock| lock.class.as_str()).collect();
    let entry = crate::store::AuditEntry::new(
        caller.actor(),
        "environment.lock",
        format!("{}@{{number}}", revision.environment),
        format!("from @{} locked {}", base.number, classes.join(", ")),
    );
    let (stored, created) = crate::store::audited(entry, state.store.put_environment_revision(&revision))
        .await
        .map_err(internal)?;
    let mut wire = revision_to_wire(&stored);
    wire.locks = locks_to_wire(state, &stored).await?;
    Ok(pb::ApplyEnvironmentResponse { revision: Some(wire), created, pins: Vec::new() })
}

fn parse_classes(classes: &[String]) -> Result<Vec<String>, Status> {
    classes
        .iter()
        .map(|class| {
            comfyfleet_config::lock::BuildClass::parse(class)
                .map(|class| class.to_string())
                .map_err(|error| Status::invalid_argument(format!("--class: {error}")))
        })
        .collect()
}

/// The locks a revision's spec names, read from the store.
pub async fn locks_to_wire(
    state: &ControllerState,
    revision: &StoredRevision,
) -> Result<Vec<pb::RevisionLock>, Status> {
    let Ok(spec) = Spec::parse("stored spec", &revision.spec_json, SpecFormat::Json) else {
        return Ok(Vec::new());
    };
    let mut locks = Vec::new();
    for (class, digest) in &spec.lock.digests {
        let Some(stored) = state.store.lock(digest).await.map_err(internal)? else { continue };
        locks.push(pb::RevisionLock {
            class: class.clone(),
            digest: digest.clone(),
            lock_json: stored.lock_json,
        });
    }
    Ok(locks)
}

pub async fn list(state: &ControllerState) -> Result<pb::ListEnvironmentsResponse, Status> {
    let environments = state.store.list_environments().await.map_err(internal)?;
    Ok(pb::ListEnvironmentsResponse { environments: environments.iter().map(summary_to_wire).collect() })
}

/// Every revision of one environment, oldest first.
pub async fn history(
    state: &ControllerState,
    request: pb::ListEnvironmentRevisionsRequest,
) -> Result<pb::ListEnvironmentRevisionsResponse, Status> {
    let name = request.environment;
    check_environment_name(&name)?;
    let revisions = state.store.environment_revisions(&name).await.map_err(internal)?;
    if revisions.is_empty() {
        return Err(RevisionError::UnknownEnvironment { name }.into());
    }
    Ok(pb::ListEnvironmentRevisionsResponse { revisions: revisions.iter().map(revision_to_wire).collect() })
}

/// One revision: the latest, a number, or the one revision whose id starts with a prefix.
pub async fn get(
    state: &ControllerState,
    request: pb::GetEnvironmentRevisionRequest,
) -> Result<pb::EnvironmentRevision, Status> {
    let revision = find_revision(state, &request.environment, &request.revision).await?;
    let mut wire = revision_to_wire(&revision);
    wire.locks = locks_to_wire(state, &revision).await?;
    Ok(wire)
}

/// How messages name the spec: the file name the client sent, if it is a plausible one.
fn spec_file_name(name: &str) -> &str {
    if name.is_empty() || name.len() > MAX_FILE_NAME || name.chars().any(char::is_control) {
        "spec"
    } else {
        name
    }
}

fn spec_format(wire: i32, file_name: &str, text: &str) -> Result<SpecFormat, Status> {
    let format = spec_format_from_wire("format", wire)?;
    Ok(format.unwrap_or_else(|| SpecFormat::detect(file_name, text)))
}

pub fn revision_to_wire(revision: &StoredRevision) -> pb::EnvironmentRevision {
    pb::EnvironmentRevision {
        environment: revision.environment.clone(),
        number: revision.number,
        id: revision.id.as_str().to_owned(),
        spec_json: revision.spec_json.clone(),
        created_at: Some(timestamp_to_wire(revision.created_at)),
        created_by: revision.created_by.clone(),
        locks: Vec::new(),
    }
}

fn summary_to_wire(summary: &EnvironmentSummary) -> pb::EnvironmentSummary {
    pb::EnvironmentSummary {
        name: summary.name.clone(),
        revisions: summary.revisions,
        latest: Some(revision_to_wire(&summary.latest)),
    }
}

fn pin_to_wire(pin: &GitPin) -> pb::GitPin {
    pb::GitPin {
        source: pin.source.clone(),
        git: pin.git.clone(),
        r#ref: pin.reference.clone(),
        commit: pin.commit.clone(),
    }
}

mod refused;
#[cfg(test)]
mod tests;
