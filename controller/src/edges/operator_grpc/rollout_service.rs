//! Assigning one machine outside a rollout: `RollbackMachine` assigns a machine the
//! environment it ran before its current one, which it still has on disk. The
//! machine's live session is told at once; an offline machine gets its assignment
//! when it reconnects. Also the fleet listings the rollout engine starts from.
//! `fleet_service` authenticates the caller and delegates here.

use std::collections::HashSet;

use comfyfleet_config::resolve::{MachinePlan, Resolver};
use comfyfleet_config::spec::names::printable;
use comfyfleet_config::spec::{Spec, SpecFormat};
use comfyfleet_config::text::Escaped;
use comfyfleet_config::{AssignmentReason, MachineFacts, MachineId, MachineRecord};
use comfyfleet_proto::v1 as pb;
use tonic::Status;

use crate::use_cases::credentials::auth::Caller;
use crate::edges::operator_grpc::environment_service::revision_to_wire;
use crate::edges::operator_grpc::fleet_service::{internal, machine_record, resolve_machine};
use crate::use_cases::ControllerState;
use crate::store::{NewAssignment, StoredAssignment, StoredMachine, StoredRevision};

/// Machines read from the store per page when a rollout targets the whole fleet.
const PAGE: u32 = 500;
/// More machine names than this in one call is a mistake, not a list.
const MAX_NAMED: usize = 10_000;

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
        return Err(revoked(&id));
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

/// The spec a stored revision holds (canonical JSON, itself a valid spec).
pub(crate) fn revision_spec(revision: &StoredRevision) -> Result<Spec, Status> {
    let name = format!("{}@{}", revision.environment, revision.number);
    Spec::parse(&name, &revision.spec_json, SpecFormat::Json)
        .map_err(|errors| internal(format!("stored revision {name} no longer parses: {errors}")))
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

fn revoked(id: &MachineId) -> Status {
    Status::failed_precondition(format!(
        "machine {id} is revoked; it can run nothing (see `comfyfleet machines --all`)"
    ))
}

/// Every machine that is not revoked, in id order.
pub(crate) async fn fleet(state: &ControllerState) -> Result<Vec<StoredMachine>, Status> {
    let mut machines: Vec<StoredMachine> = Vec::new();
    loop {
        let after = machines.last().map(|machine| machine.id.clone());
        let page = state.store.list_machines(after.as_ref(), PAGE, false).await.map_err(internal)?;
        let full = page.len() == PAGE as usize;
        machines.extend(page);
        if !full {
            return Ok(machines);
        }
    }
}

/// Exactly the machines named (ids or unique prefixes), each once, in the order given.
pub(crate) async fn named_machines(
    state: &ControllerState,
    names: &[String],
) -> Result<Vec<StoredMachine>, Status> {
    if names.len() > MAX_NAMED {
        return Err(Status::invalid_argument(format!(
            "{} machines named; name at most {MAX_NAMED}, or none to target every machine the spec selects",
            names.len()
        )));
    }
    let mut seen = HashSet::new();
    let mut machines = Vec::with_capacity(names.len());
    for name in names {
        let machine = resolve_machine(state.store.as_ref(), name.trim()).await?;
        if machine.revoked_at.is_some() {
            return Err(revoked(&machine.id));
        }
        if seen.insert(machine.id.clone()) {
            machines.push(machine);
        }
    }
    Ok(machines)
}

#[cfg(test)]
mod tests;
