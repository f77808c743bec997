//! Assigning one machine outside a rollout: `RollbackMachine` assigns a machine the
//! environment it ran before its current one, which it still has on disk. The
//! machine's live session is told at once; an offline machine gets its assignment
//! when it reconnects.
//! `fleet_service` authenticates the caller and delegates here.

use comfyfleet_config::resolve::{MachinePlan, Resolver};
use comfyfleet_config::spec::names::printable;
use comfyfleet_config::text::Escaped;
use comfyfleet_config::{AssignmentReason, MachineFacts, MachineId, MachineRecord};
use comfyfleet_proto::v1 as pb;
use tonic::Status;

use super::environment_service::revision_to_wire;
use crate::edges::grpc_status::internal;
use crate::store::{NewAssignment, StoredAssignment, StoredRevision};
use crate::use_cases::ControllerState;
use crate::use_cases::credentials::auth::Caller;
use crate::use_cases::environments::revisions::revision_spec;
use crate::use_cases::machines::MachineError;
use crate::use_cases::machines::lookup::{machine_record, resolve_machine};

/// Assigns a machine the environment it ran before its current one.
#[tracing::instrument(skip_all, fields(machine = %Escaped(&request.id)))]
pub async fn rollback(
    state: &ControllerState,
    caller: &Caller,
    request: pb::RollbackMachineRequest,
) -> Result<pb::RollbackMachineResponse, Status> {
    let machine = resolve_machine(state.store.as_ref(), &request.id).await?;
    let id = machine.id.clone();
    if machine.revoked_at.is_some() {
        return Err(MachineError::Revoked { machine: id.clone() }.into());
    }
    let previous = machine
        .inventory
        .as_ref()
        .and_then(|inventory| inventory.environments.previous())
        .cloned()
        .ok_or_else(|| {
            Status::failed_precondition(format!(
                "machine {id} has no earlier environment on disk to return to; roll out the revision it \
                 should run instead (`comfyfleet rollout start ENV@REV --machines {id}`)"
            ))
        })?;
    let revision = state
        .store
        .environment_revision_by_id(&previous.environment, &previous.revision_id)
        .await
        .map_err(internal)?
        .ok_or_else(|| {
            let environment = printable(&previous.environment);
            Status::failed_precondition(format!(
                "machine {id}'s earlier environment {environment}@{} ({}) is not a revision this controller \
                 knows; roll out one it knows instead (`comfyfleet env history {environment}` lists them)",
                previous.revision_number,
                previous.revision_id.short()
            ))
        })?;
    let label = format!("{}@{} ({})", revision.environment, revision.number, revision.id.short());
    let spec = revision_spec(&revision)?;
    let record = machine_record(&state.presence, machine);
    // The selector is not asked: a machine goes back to what it ran even if the
    // environment's selector has changed since.
    let plan = Resolver::new(&spec).plan(&MachineFacts::from(&record)).map_err(|incompatibility| {
        Status::failed_precondition(format!(
            "machine {id} cannot run {label} any more: {}",
            incompatibility.summary()
        ))
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
    let machine = state
        .store
        .get_machine(&id)
        .await
        .map_err(internal)?
        .ok_or_else(|| Status::not_found(format!("machine {id} disappeared while being rolled back")))?;
    Ok(pb::RollbackMachineResponse {
        machine: Some(pb::Machine::from(&machine_record(&state.presence, machine))),
        revision: Some(revision_to_wire(&revision)),
    })
}

async fn assign(
    state: &ControllerState,
    caller: &Caller,
    machine: &MachineId,
    revision: &StoredRevision,
    plan: &MachinePlan,
    reason: AssignmentReason,
) -> Result<StoredAssignment, Status> {
    let assignment =
        NewAssignment::planned(revision, plan, true, reason, caller.actor()).map_err(internal)?;
    state.store.assign(machine, &assignment).await.map_err(internal)
}

/// Rings the machine's live session; whether it is online to hear it (here, or on
/// another controller of the fleet, which the stored change's notice rings).
fn notify(state: &ControllerState, record: &MachineRecord) -> bool {
    let here = state.presence.notify_assignment(&record.id);
    (here || state.presence.last_seen(&record.id).is_some()) && record.revoked_at.is_none()
}

#[cfg(test)]
mod tests;
