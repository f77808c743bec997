//! `RollbackMachine` on the wire: the use case is `use_cases::machines::rollback`.
//! `fleet_service` authenticates the caller and delegates here.

use comfyfleet_proto::v1 as pb;
use tonic::Status;

use super::environment_service::revision_to_wire;
use crate::use_cases::ControllerState;
use crate::use_cases::credentials::auth::Caller;
use crate::use_cases::machines::lookup::machine_record;

/// Assigns a machine the environment it ran before its current one.
pub async fn rollback(
    state: &ControllerState,
    caller: &Caller,
    request: pb::RollbackMachineRequest,
) -> Result<pb::RollbackMachineResponse, Status> {
    let (machine, revision) =
        crate::use_cases::machines::rollback::rollback(state, caller, &request.id).await?;
    Ok(pb::RollbackMachineResponse {
        machine: Some(pb::Machine::from(&machine_record(&state.presence, machine))),
        revision: Some(revision_to_wire(&revision)),
    })
}

#[cfg(test)]
mod tests;
