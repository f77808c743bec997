//! Assigning one machine outside a rollout: a rollback assigns a machine the
//! environment it ran before its current one, which it still has on disk. The
//! machine's live session is told at once; an offline machine gets its assignment
//! when it reconnects.

use comfyfleet_config::resolve::{MachinePlan, Resolver};
use comfyfleet_config::text::Escaped;
use comfyfleet_config::{AssignmentReason, MachineFacts, MachineId, MachineRecord};

use super::MachineError;
use super::lookup::{machine_record, resolve_machine};
use crate::store::{NewAssignment, StoredAssignment, StoredMachine, StoredRevision};
use crate::use_cases::ControllerState;
use crate::use_cases::credentials::auth::Caller;
use crate::use_cases::environments::revisions::revision_spec;

/// Assigns the machine `id` names (an id or a unique prefix) the environment it ran
/// before its current one; the machine as stored after, and the revision.
#[tracing::instrument(skip_all, fields(machine = %Escaped(id)))]
pub async fn rollback(
    state: &ControllerState,
    caller: &Caller,
    id: &str,
) -> Result<(StoredMachine, StoredRevision), MachineError> {
    let machine = resolve_machine(state.store.as_ref(), id).await?;
    let id = machine.id.clone();
    if machine.revoked_at.is_some() {
        return Err(MachineError::Revoked { machine: id });
    }
    let previous = machine
        .inventory
        .as_ref()
        .and_then(|inventory| inventory.environments.previous())
        .cloned()
        .ok_or_else(|| MachineError::NothingToReturnTo { machine: id.clone() })?;
    let revision = state
        .store
        .environment_revision_by_id(&previous.environment, &previous.revision_id)
        .await?
        .ok_or_else(|| MachineError::EarlierRevisionUnknown {
            machine: id.clone(),
            environment: previous.environment.clone(),
            number: previous.revision_number,
            short_id: previous.revision_id.short().to_owned(),
        })?;
    let label = format!("{}@{} ({})", revision.environment, revision.number, revision.id.short());
    let spec = revision_spec(&revision)?;
    let record = machine_record(&state.presence, machine);
    // The selector is not asked: a machine goes back to what it ran even if the
    // environment's selector has changed since.
    let plan = Resolver::new(&spec).plan(&MachineFacts::from(&record)).map_err(|incompatibility| {
        MachineError::CannotRunAnyMore {
            machine: id.clone(),
            label: label.clone(),
            why: incompatibility.summary(),
        }
    })?;
    let entry = crate::store::AuditEntry::new(
        caller.actor(),
        "machine.rollback",
        id.as_str(),
        format!("to {label}, generation {{generation}}"),
    );
    let assigned = crate::store::audited(
        entry,
        assign(state, caller, &id, &revision, &plan, AssignmentReason::Rollback),
    )
    .await?;
    let online = notify(state, &record);
    tracing::info!(machine_id = %id, revision = %label, generation = assigned.generation, online, by = %Escaped(caller.actor()), "rollback assigned");
    let machine = state.store.get_machine(&id).await?.ok_or(MachineError::Disappeared { machine: id })?;
    Ok((machine, revision))
}

async fn assign(
    state: &ControllerState,
    caller: &Caller,
    machine: &MachineId,
    revision: &StoredRevision,
    plan: &MachinePlan,
    reason: AssignmentReason,
) -> Result<StoredAssignment, MachineError> {
    let assignment = NewAssignment::planned(revision, plan, true, reason, caller.actor())
        .map_err(|error| MachineError::Internal(error.to_string()))?;
    Ok(state.store.assign(machine, &assignment).await?)
}

/// Rings the machine's live session; whether it is online to hear it (here, or on
/// another controller of the fleet, which the stored change's notice rings).
fn notify(state: &ControllerState, record: &MachineRecord) -> bool {
    let here = state.presence.notify_assignment(&record.id);
    (here || state.presence.last_seen(&record.id).is_some()) && record.revoked_at.is_none()
}
