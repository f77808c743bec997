//! The operators' rollout calls on the wire: a call taken by a controller that does
//! not lead is handed to the leader (`cluster`), the one that leads converts it and
//! runs the use case (`use_cases::rollouts::api`), and the answer goes back as the
//! protocol's messages. The web page and `/metrics` show rollouts in the same shape.

use comfyfleet_config::spec::RolloutPolicy;
use comfyfleet_proto::timestamp_to_wire;
use comfyfleet_proto::v1 as pb;
use prost::Message as _;
use tonic::Status;

use crate::store::rollout_model::{MachineStatus, RolloutState, StoredEvent};
use crate::use_cases::ControllerState;
use crate::use_cases::cluster::{CallFailed, Forwarded, HandedCalls};
use crate::use_cases::credentials::auth::Caller;
use crate::use_cases::rollouts::api::{self, RolloutView, StartRollout, Started, UndoRollout};
use crate::use_cases::rollouts::{Command, PolicyOverrides, Target, TargetOutcome};

/// Starts a rollout: here when this controller leads the fleet, else by the leader.
pub async fn start(
    state: &ControllerState,
    caller: &Caller,
    request: pb::StartRolloutRequest,
) -> Result<pb::StartRolloutResponse, Status> {
    match crate::use_cases::cluster::follower(state) {
        Some(cluster) => forward(cluster, Forwarded::Start, caller, &request).await,
        None => start_here(state, caller, request).await,
    }
}

async fn start_here(
    state: &ControllerState,
    caller: &Caller,
    request: pb::StartRolloutRequest,
) -> Result<pb::StartRolloutResponse, Status> {
    let request = StartRollout {
        environment: request.environment,
        revision: request.revision,
        machines: request.machines,
        policy: request.policy.as_ref().map(policy_from_wire),
    };
    Ok(started_to_wire(api::start(state, caller, request).await?))
}

/// Undoes an environment's newest rollout: here when this controller leads, else by
/// the leader.
pub async fn undo(
    state: &ControllerState,
    caller: &Caller,
    request: pb::UndoRolloutRequest,
) -> Result<pb::StartRolloutResponse, Status> {
    match crate::use_cases::cluster::follower(state) {
        Some(cluster) => forward(cluster, Forwarded::Undo, caller, &request).await,
        None => undo_here(state, caller, request).await,
    }
}

async fn undo_here(
    state: &ControllerState,
    caller: &Caller,
    request: pb::UndoRolloutRequest,
) -> Result<pb::StartRolloutResponse, Status> {
    let request = UndoRollout {
        environment: request.environment,
        to_revision: request.to_revision,
        policy: request.policy.as_ref().map(policy_from_wire),
    };
    Ok(started_to_wire(api::undo(state, caller, request).await?))
}

/// Pauses, resumes or aborts a rollout: here when this controller leads, else by the
/// leader.
pub async fn act(
    state: &ControllerState,
    caller: &Caller,
    command: Command,
    request: pb::RolloutActionRequest,
) -> Result<pb::Rollout, Status> {
    let forwarded = match command {
        Command::Pause => Forwarded::Pause,
        Command::Resume => Forwarded::Resume,
        Command::Abort => Forwarded::Abort,
    };
    match crate::use_cases::cluster::follower(state) {
        Some(cluster) => forward(cluster, forwarded, caller, &request).await,
        None => act_here(state, caller, command, request).await,
    }
}

async fn act_here(
    state: &ControllerState,
    caller: &Caller,
    command: Command,
    request: pb::RolloutActionRequest,
) -> Result<pb::Rollout, Status> {
    let view = api::act(state, caller, command, &request.rollout, &request.reason).await?;
    Ok(rollout_to_wire(&view))
}

pub async fn get(state: &ControllerState, request: pb::GetRolloutRequest) -> Result<pb::Rollout, Status> {
    Ok(rollout_to_wire(&api::get(state, &request.rollout, !request.without_machines).await?))
}

pub async fn list(
    state: &ControllerState,
    request: pb::ListRolloutsRequest,
) -> Result<pb::ListRolloutsResponse, Status> {
    let views = api::list(state, &request.environment, request.limit).await?;
    Ok(pb::ListRolloutsResponse { rollouts: views.iter().map(rollout_to_wire).collect() })
}

pub async fn events(
    state: &ControllerState,
    request: pb::ListRolloutEventsRequest,
) -> Result<pb::ListRolloutEventsResponse, Status> {
    let (rollout_id, events) = api::events(state, &request.rollout, request.after, request.limit).await?;
    Ok(pb::ListRolloutEventsResponse { rollout_id, events: events.iter().map(event_to_wire).collect() })
}

/// Every running or paused rollout with its counts and phases (no machines): the
/// metrics and the web page.
pub async fn open(state: &ControllerState) -> Result<Vec<pb::Rollout>, Status> {
    Ok(api::open(state).await?.iter().map(rollout_to_wire).collect())
}

/// Has the leader run a rollout call this controller took, and waits for its answer.
async fn forward<Request: prost::Message, Answer: prost::Message + Default>(
    cluster: &crate::use_cases::cluster::Cluster,
    kind: Forwarded,
    caller: &Caller,
    request: &Request,
) -> Result<Answer, Status> {
    let answer = cluster.forward(kind, caller, request.encode_to_vec()).await.map_err(failed_to_status)?;
    Answer::decode(answer.as_slice())
        .map_err(|error| Status::internal(format!("the leader's answer does not decode: {error}")))
}

fn failed_to_status(failed: CallFailed) -> Status {
    Status::new(failed.code, failed.message)
}

/// How the leader runs the rollout calls other controllers hand it: decoded here,
/// run as if taken here, answered encoded.
pub struct HandedRolloutCalls;

#[async_trait::async_trait]
impl HandedCalls for HandedRolloutCalls {
    async fn run(
        &self,
        state: &ControllerState,
        kind: Forwarded,
        caller: &Caller,
        body: &[u8],
    ) -> Result<Vec<u8>, CallFailed> {
        run_forwarded(state, kind, caller, body)
            .await
            .map_err(|status| CallFailed { code: status.code(), message: status.message().to_owned() })
    }
}

async fn run_forwarded(
    state: &ControllerState,
    kind: Forwarded,
    caller: &Caller,
    body: &[u8],
) -> Result<Vec<u8>, Status> {
    let malformed =
        |error: prost::DecodeError| Status::internal(format!("a handed-over call does not decode: {error}"));
    let act = |command| async move {
        let request = pb::RolloutActionRequest::decode(body).map_err(malformed)?;
        act_here(state, caller, command, request).await.map(|answer| answer.encode_to_vec())
    };
    match kind {
        Forwarded::Start => {
            let request = pb::StartRolloutRequest::decode(body).map_err(malformed)?;
            start_here(state, caller, request).await.map(|answer| answer.encode_to_vec())
        }
        Forwarded::Undo => {
            let request = pb::UndoRolloutRequest::decode(body).map_err(malformed)?;
            undo_here(state, caller, request).await.map(|answer| answer.encode_to_vec())
        }
        Forwarded::Pause => act(Command::Pause).await,
        Forwarded::Resume => act(Command::Resume).await,
        Forwarded::Abort => act(Command::Abort).await,
    }
}

fn policy_from_wire(policy: &pb::RolloutPolicy) -> PolicyOverrides {
    PolicyOverrides {
        canary: policy.canary,
        max_unavailable: policy.max_unavailable.clone(),
        max_parallel_prepare: policy.max_parallel_prepare.clone(),
        soak: policy.soak.clone(),
        failure_budget: policy.failure_budget.clone(),
        auto_rollback: policy.auto_rollback,
        progress_deadline: policy.progress_deadline.clone(),
        stalled_is_failure: policy.stalled_is_failure,
    }
}

fn started_to_wire(started: Started) -> pb::StartRolloutResponse {
    pb::StartRolloutResponse {
        revision: Some(crate::edges::operator_grpc::environment_service::revision_to_wire(&started.revision)),
        targets: started.targets.iter().map(target_to_wire).collect(),
        rollout: Some(rollout_to_wire(&started.rollout)),
    }
}

fn target_to_wire(target: &Target) -> pb::RolloutTarget {
    let outcome = match target.outcome {
        TargetOutcome::Assigned => pb::TargetOutcome::Assigned,
        TargetOutcome::Current => pb::TargetOutcome::Current,
        TargetOutcome::Incompatible => pb::TargetOutcome::Incompatible,
        TargetOutcome::NotTargeted => pb::TargetOutcome::NotTargeted,
        TargetOutcome::Busy => pb::TargetOutcome::Busy,
    };
    pb::RolloutTarget {
        machine_id: target.machine_id.clone(),
        hostname: target.hostname.clone(),
        outcome: outcome.into(),
        detail: target.detail.clone(),
        online: target.online,
        generation: 0,
    }
}

fn status_to_wire(status: MachineStatus) -> pb::RolloutMachineStatus {
    match status {
        MachineStatus::Pending => pb::RolloutMachineStatus::Pending,
        MachineStatus::Preparing => pb::RolloutMachineStatus::Preparing,
        MachineStatus::Prepared => pb::RolloutMachineStatus::Prepared,
        MachineStatus::Activating => pb::RolloutMachineStatus::Activating,
        MachineStatus::Active => pb::RolloutMachineStatus::Active,
        MachineStatus::Failed => pb::RolloutMachineStatus::Failed,
        MachineStatus::RollingBack => pb::RolloutMachineStatus::RollingBack,
        MachineStatus::RolledBack => pb::RolloutMachineStatus::RolledBack,
        MachineStatus::Skipped => pb::RolloutMachineStatus::Skipped,
    }
}

fn state_to_wire(state: RolloutState) -> pb::RolloutState {
    match state {
        RolloutState::Running => pb::RolloutState::Running,
        RolloutState::Paused => pb::RolloutState::Paused,
        RolloutState::Succeeded => pb::RolloutState::Succeeded,
        RolloutState::Aborted => pb::RolloutState::Aborted,
    }
}

fn policy_to_wire(policy: &RolloutPolicy) -> pb::RolloutPolicy {
    pb::RolloutPolicy {
        canary: Some(policy.canary),
        max_unavailable: policy.max_unavailable.to_string(),
        max_parallel_prepare: policy.max_parallel_prepare.to_string(),
        soak: policy.soak.map_or_else(|| "0s".to_owned(), |soak| soak.to_string()),
        failure_budget: policy.failure_budget.to_string(),
        auto_rollback: Some(policy.auto_rollback),
        progress_deadline: policy.progress_deadline.to_string(),
        stalled_is_failure: Some(policy.stalled_is_failure),
    }
}

pub fn event_to_wire(event: &StoredEvent) -> pb::RolloutEvent {
    pb::RolloutEvent {
        id: event.id,
        rollout_id: event.rollout_id,
        at: Some(timestamp_to_wire(event.event.at)),
        machine_id: event.event.machine_id.as_ref().map(ToString::to_string).unwrap_or_default(),
        kind: event.event.kind.clone(),
        from: event.event.from.clone(),
        detail: event.event.detail.clone(),
        phase: event.event.phase,
    }
}

/// A rollout as the protocol shows it: counts, phases, and its machines when the
/// view carries them.
pub fn rollout_to_wire(view: &RolloutView) -> pb::Rollout {
    let (record, rows, limits) = (&view.record, &view.rows, view.limits);
    let mut counts =
        pb::RolloutCounts { machines: u32::try_from(rows.len()).unwrap_or(u32::MAX), ..Default::default() };
    let mut phases: Vec<pb::RolloutPhase> = Vec::new();
    for (stored, online) in rows.iter().zip(&view.online) {
        let row = &stored.row;
        let slot = match row.status {
            MachineStatus::Pending => &mut counts.pending,
            MachineStatus::Preparing => &mut counts.preparing,
            MachineStatus::Prepared => &mut counts.prepared,
            MachineStatus::Activating => &mut counts.activating,
            MachineStatus::Active => &mut counts.active,
            MachineStatus::Failed => &mut counts.failed,
            MachineStatus::RollingBack => &mut counts.rolling_back,
            MachineStatus::RolledBack => &mut counts.rolled_back,
            MachineStatus::Skipped => &mut counts.skipped,
        };
        *slot += 1;
        if !online && !row.status.is_done() {
            counts.offline += 1;
        }
        if row.stalled {
            counts.stalled += 1;
        }
        let index = row.phase as usize;
        while phases.len() <= index {
            let number = u32::try_from(phases.len()).unwrap_or(u32::MAX);
            let name = if number == 0 { "canary".to_owned() } else { format!("batch {number}") };
            phases.push(pb::RolloutPhase { index: number, name, ..Default::default() });
        }
        let phase = &mut phases[index];
        phase.machines += 1;
        if row.status.is_done() {
            phase.done += 1;
        }
        if row.status == MachineStatus::Active {
            phase.active += 1;
        }
        if row.status.is_failure() {
            phase.failed += 1;
        }
        if row.status.is_unavailable() {
            phase.activating += 1;
        }
    }
    phases.retain(|phase| phase.machines > 0);
    let machines = if view.with_machines {
        rows.iter()
            .zip(&view.online)
            .map(|(stored, online)| {
                let row = &stored.row;
                pb::RolloutMachine {
                    machine_id: row.machine_id.to_string(),
                    hostname: stored.hostname.clone(),
                    phase: row.phase,
                    status: status_to_wire(row.status).into(),
                    detail: row.detail.clone(),
                    since: Some(timestamp_to_wire(row.since)),
                    online: *online,
                    stalled: row.stalled,
                    from_environment: row
                        .from
                        .as_ref()
                        .map(|from| from.environment.clone())
                        .unwrap_or_default(),
                    from_revision_number: row.from.as_ref().map_or(0, |from| from.number),
                    activations: row.activations,
                    joined: row.joined,
                }
            })
            .collect()
    } else {
        Vec::new()
    };
    pb::Rollout {
        id: record.id,
        environment: record.environment.clone(),
        revision_number: record.revision_number,
        revision_id: record.revision_id.to_string(),
        kind: record.kind.as_str().to_owned(),
        state: state_to_wire(record.state).into(),
        reason: record.reason.clone(),
        policy: Some(policy_to_wire(&record.policy)),
        created_at: Some(timestamp_to_wire(record.created_at)),
        created_by: record.created_by.clone(),
        finished_at: record.finished_at.map(timestamp_to_wire),
        counts: Some(counts),
        max_unavailable: limits.max_unavailable,
        max_parallel_prepare: limits.max_parallel_prepare,
        failure_budget: limits.failure_budget,
        phases,
        machines,
        soak_until: view.soak_until.map(timestamp_to_wire),
        stalled: record.stalled,
        undo_of_revision: record.undo_of.unwrap_or(0),
        budget_exceeded: record.budget_exceeded,
    }
}
