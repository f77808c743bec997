//! Operator calls on rollouts.
use comfyfleet_proto::v1 as pb;
use tonic::Status;

use super::Command;
use crate::auth::Caller;
use crate::state::ControllerState;

pub async fn get(_state: &ControllerState, _request: pb::GetRolloutRequest) -> Result<pb::Rollout, Status> {
    Err(Status::unimplemented("not yet"))
}

pub async fn list(
    _state: &ControllerState,
    _request: pb::ListRolloutsRequest,
) -> Result<pb::ListRolloutsResponse, Status> {
    Err(Status::unimplemented("not yet"))
}

pub async fn events(
    _state: &ControllerState,
    _request: pb::ListRolloutEventsRequest,
) -> Result<pb::ListRolloutEventsResponse, Status> {
    Err(Status::unimplemented("not yet"))
}

pub async fn act(
    _state: &ControllerState,
    _caller: &Caller,
    _command: Command,
    _request: pb::RolloutActionRequest,
) -> Result<pb::Rollout, Status> {
    Err(Status::unimplemented("not yet"))
}

pub async fn undo(
    _state: &ControllerState,
    _caller: &Caller,
    _request: pb::UndoRolloutRequest,
) -> Result<pb::StartRolloutResponse, Status> {
    Err(Status::unimplemented("not yet"))
}
