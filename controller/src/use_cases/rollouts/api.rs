//! Operator calls on rollouts: start and undo build the rollout here and hand it
//! to the engine; pause, resume and abort are engine commands; reads come from
//! the store, so they show exactly what a restarted controller would continue.

use std::collections::HashMap;

use comfyfleet_config::resolve::Resolver;
use comfyfleet_config::spec::{RolloutPolicy, Spec};
use comfyfleet_proto::timestamp_to_wire;
use comfyfleet_proto::v1 as pb;
use jiff::Timestamp;
use tonic::Status;

use super::Command;
use super::create::{Entry, effective_policy, entry, machine_kind, order_rows};
use super::model::{
    MachineRow, MachineStatus, NewEvent, NewRollout, RolloutKind, RolloutRecord, RolloutState, StoredEvent,
    StoredMachineRow,
};
use super::plan::{Limits, soak_until};
use crate::use_cases::credentials::auth::Caller;
use crate::use_cases::cluster::Forwarded;
use crate::edges::operator_grpc::environment_service::{find_revision, revision_to_wire};
use crate::edges::operator_grpc::fleet_service::{internal, machine_record};
use crate::edges::operator_grpc::rollout_service::{fleet, named_machines, revision_spec};
use crate::use_cases::ControllerState;
use crate::store::{StoredMachine, StoredRevision};

const DEFAULT_LIST: u32 = 50;
const MAX_LIST: u32 = 1_000;
const DEFAULT_EVENTS: u32 = 1_000;
const MAX_EVENTS: u32 = 10_000;

struct Launch<'a> {
    revision: StoredRevision,
    spec: Spec,
    policy: RolloutPolicy,
    machines: Vec<StoredMachine>,
    kind: RolloutKind,
    named: bool,
    ignore_selector: bool,
    undo_of: Option<u32>,
    caller: &'a Caller,
}

/// Starts a rollout: here when this controller leads the fleet, else by the leader.
pub async fn start(
    state: &ControllerState,
    caller: &Caller,
    request: pb::StartRolloutRequest,
) -> Result<pb::StartRolloutResponse, Status> {
    match crate::use_cases::cluster::follower(state) {
        Some(cluster) => cluster.forward(Forwarded::Start, caller, &request).await,
        None => start_here(state, caller, request).await,
    }
}

pub(crate) async fn start_here(
    state: &ControllerState,
    caller: &Caller,
    request: pb::StartRolloutRequest,
) -> Result<pb::StartRolloutResponse, Status> {
    let revision = find_revision(state, &request.environment, &request.revision).await?;
    let spec = revision_spec(&revision)?;
    let policy = effective_policy(&spec, request.policy.as_ref())?;
    let named = !request.machines.is_empty();
    let machines = if named { named_machines(state, &request.machines).await? } else { fleet(state).await? };
    let launch = Launch {
        revision,
        spec,
        policy,
        machines,
        kind: RolloutKind::Rollout,
        named,
        ignore_selector: false,
        undo_of: None,
        caller,
    };
    launch_rollout(state, launch).await
}

/// Undoes an environment's newest rollout: here when this controller leads, else by
/// the leader.
pub async fn undo(
    state: &ControllerState,
    caller: &Caller,
    request: pb::UndoRolloutRequest,
) -> Result<pb::StartRolloutResponse, Status> {
    match crate::use_cases::cluster::follower(state) {
        Some(cluster) => cluster.forward(Forwarded::Undo, caller, &request).await,
        None => undo_here(state, caller, request).await,
    }
}

pub(crate) async fn undo_here(
    state: &ControllerState,
    caller: &Caller,
    request: pb::UndoRolloutRequest,
) -> Result<pb::StartRolloutResponse, Status> {
    let environment = request.environment.trim();
    let latest = state
        .store
        .list_rollouts(Some(environment), 1)
        .await
        .map_err(internal)?
        .pop()
        .ok_or_else(|| {
            Status::failed_precondition(format!(
                "environment {environment:?} has had no rollout to undo (`comfyfleet rollout list` shows them)"
            ))
        })?;
    let rows = state.store.rollout_machines(latest.id).await.map_err(internal)?;
    let to = if request.to_revision.trim().is_empty() {
        let mut counts: HashMap<u32, usize> = HashMap::new();
        for row in &rows {
            if let Some(from) = &row.row.from
                && from.environment == latest.environment
                && from.number != latest.revision_number
            {
                *counts.entry(from.number).or_default() += 1;
            }
        }
        let number =
            counts.into_iter().max_by_key(|(number, count)| (*count, *number)).map(|(number, _)| number);
        let number = number.ok_or_else(|| {
            Status::failed_precondition(format!(
                "rollout {} of {} started from no earlier revision of {environment}; name one with --to-revision",
                latest.id,
                latest.label()
            ))
        })?;
        number.to_string()
    } else {
        request.to_revision.clone()
    };
    let revision = find_revision(state, environment, &to).await?;
    if revision.number == latest.revision_number && latest.state == RolloutState::Succeeded {
        return Err(Status::failed_precondition(format!(
            "{environment}@{} is what rollout {} already rolled out; name another with --to-revision",
            revision.number, latest.id
        )));
    }
    let spec = revision_spec(&revision)?;
    let policy = effective_policy(&spec, request.policy.as_ref())?;
    let mut machines = Vec::with_capacity(rows.len());
    for row in &rows {
        if let Some(machine) = state.store.get_machine(&row.row.machine_id).await.map_err(internal)?
            && machine.revoked_at.is_none()
        {
            machines.push(machine);
        }
    }
    let launch = Launch {
        revision,
        spec,
        policy,
        machines,
        kind: RolloutKind::Undo,
        named: false,
        ignore_selector: true,
        undo_of: Some(latest.revision_number),
        caller,
    };
    launch_rollout(state, launch).await
}

async fn launch_rollout(
    state: &ControllerState,
    launch: Launch<'_>,
) -> Result<pb::StartRolloutResponse, Status> {
    let now = Timestamp::now();
    let planning = std::time::Instant::now();
    let resolver = Resolver::new(&launch.spec);
    let mut targets = Vec::with_capacity(launch.machines.len());
    let mut rows = Vec::new();
    for machine in launch.machines {
        let record = machine_record(&state.presence, machine);
        match entry(&resolver, &launch.revision, &record, now, launch.ignore_selector) {
            Entry::Row(row, target) => {
                rows.push((*row, record.online, machine_kind(&record)));
                targets.push(target);
            }
            Entry::Left(target) => targets.push(target),
        }
    }
    let machines = rows.len();
    let mut record = RolloutRecord {
        id: 0,
        environment: launch.revision.environment.clone(),
        revision_number: launch.revision.number,
        revision_id: launch.revision.id.clone(),
        kind: launch.kind,
        policy: launch.policy.clone(),
        state: RolloutState::Running,
        reason: String::new(),
        budget_exceeded: false,
        named_machines: launch.named,
        batch_size: 0,
        undo_of: launch.undo_of,
        stalled: false,
        created_at: now,
        created_by: launch.caller.actor(),
        finished_at: None,
    };
    let limits = Limits::of(&record, machines);
    record.batch_size = limits.max_unavailable;
    let canary = launch.policy.canary.min(u32::try_from(machines).unwrap_or(u32::MAX));
    let rows = order_rows(rows, canary, limits.max_unavailable);
    let summary = format!(
        "{machines} machine{}, canary {canary}, max unavailable {} ({}), prepare {} at once, failure budget {} ({})",
        if machines == 1 { "" } else { "s" },
        limits.max_unavailable,
        launch.policy.max_unavailable,
        limits.max_parallel_prepare,
        limits.failure_budget,
        launch.policy.failure_budget
    );
    let new = NewRollout {
        environment: record.environment.clone(),
        revision_number: record.revision_number,
        revision_id: record.revision_id.clone(),
        kind: launch.kind,
        policy: launch.policy,
        named_machines: launch.named,
        batch_size: limits.max_unavailable,
        undo_of: launch.undo_of,
        created_at: now,
        created_by: record.created_by.clone(),
        rows,
        events: vec![NewEvent::rollout(
            now,
            "started",
            format!("{} of {}: {summary}", launch.kind.as_str(), record.label()),
        )],
    };
    let planned = planning.elapsed();
    let action = if launch.kind == RolloutKind::Undo { "rollout.undo" } else { "rollout.start" };
    let label = format!("{}@{}", new.environment, new.revision_number);
    let entry = crate::store::AuditEntry::new(
        launch.caller.actor(),
        action,
        format!("{label} (rollout {{rollout}})"),
        summary.clone(),
    );
    let created = state.rollouts.create(new, entry).await?;
    tracing::info!(
        rollout = created.record.id,
        machines,
        plan_ms = planned.as_millis(),
        create_ms = (planning.elapsed() - planned).as_millis(),
        "rollout planned and stored"
    );
    for (machine, detail) in &created.busy {
        if let Some(target) = targets.iter_mut().find(|target| target.machine_id == machine.as_str()) {
            target.outcome = pb::TargetOutcome::Busy.into();
            target.detail.clone_from(detail);
        }
    }
    let rollout = read(state, created.record.id, false).await?;
    Ok(pb::StartRolloutResponse {
        revision: Some(revision_to_wire(&launch.revision)),
        targets,
        rollout: Some(rollout),
    })
}

/// The rollout a name stands for: an id, an environment (its newest), or "" (the
/// newest of all).
async fn find(state: &ControllerState, name: &str) -> Result<RolloutRecord, Status> {
    let name = name.trim();
    let found = if name.is_empty() {
        state.store.list_rollouts(None, 1).await.map_err(internal)?.pop()
    } else if let Ok(id) = name.parse::<u64>() {
        state.store.rollout(id).await.map_err(internal)?
    } else {
        state.store.list_rollouts(Some(name), 1).await.map_err(internal)?.pop()
    };
    found.ok_or_else(|| {
        let what = if name.is_empty() {
            "there is no rollout yet; start one with `comfyfleet rollout start ENV`".to_owned()
        } else if name.parse::<u64>().is_ok() {
            format!("there is no rollout {name} (`comfyfleet rollout list` shows them)")
        } else {
            format!("environment {name:?} has had no rollout (`comfyfleet rollout list` shows them)")
        };
        Status::not_found(what)
    })
}

async fn read(state: &ControllerState, id: u64, with_machines: bool) -> Result<pb::Rollout, Status> {
    // One snapshot: a step committing meanwhile shows in the record and the rows
    // alike (a succeeded rollout is never shown with rows still switching).
    let (record, rows) = state
        .store
        .rollout_snapshot(id)
        .await
        .map_err(internal)?
        .ok_or_else(|| Status::not_found(format!("rollout {id} is gone")))?;
    Ok(to_wire(state, &record, &rows, with_machines))
}

pub async fn get(state: &ControllerState, request: pb::GetRolloutRequest) -> Result<pb::Rollout, Status> {
    let record = find(state, &request.rollout).await?;
    read(state, record.id, !request.without_machines).await
}

pub async fn list(
    state: &ControllerState,
    request: pb::ListRolloutsRequest,
) -> Result<pb::ListRolloutsResponse, Status> {
    let limit = match request.limit {
        0 => DEFAULT_LIST,
        limit => limit.min(MAX_LIST),
    };
    let environment = request.environment.trim();
    let environment = (!environment.is_empty()).then_some(environment);
    let records = state.store.list_rollouts(environment, limit).await.map_err(internal)?;
    let mut rollouts = Vec::with_capacity(records.len());
    for record in records {
        let rows = state.store.rollout_machines(record.id).await.map_err(internal)?;
        rollouts.push(to_wire(state, &record, &rows, false));
    }
    Ok(pb::ListRolloutsResponse { rollouts })
}

pub async fn events(
    state: &ControllerState,
    request: pb::ListRolloutEventsRequest,
) -> Result<pb::ListRolloutEventsResponse, Status> {
    let record = find(state, &request.rollout).await?;
    let limit = match request.limit {
        0 => DEFAULT_EVENTS,
        limit => limit.min(MAX_EVENTS),
    };
    let events = state.store.rollout_events(record.id, request.after, limit).await.map_err(internal)?;
    Ok(pb::ListRolloutEventsResponse {
        rollout_id: record.id,
        events: events.iter().map(event_to_wire).collect(),
    })
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
        Some(cluster) => cluster.forward(forwarded, caller, &request).await,
        None => act_here(state, caller, command, request).await,
    }
}

pub(crate) async fn act_here(
    state: &ControllerState,
    caller: &Caller,
    command: Command,
    request: pb::RolloutActionRequest,
) -> Result<pb::Rollout, Status> {
    if request.rollout.trim().is_empty() {
        return Err(Status::invalid_argument(format!(
            "name the rollout to {} (an id, or an environment for its newest rollout)",
            command.as_str()
        )));
    }
    if let Some(c) = comfyfleet_config::text::deceptive(&request.reason) {
        return Err(Status::invalid_argument(comfyfleet_config::text::refusal("the reason", c)));
    }
    if request.reason.len() > 1_000 {
        return Err(Status::invalid_argument("the reason must be at most 1000 printable characters"));
    }
    let record = find(state, &request.rollout).await?;
    let detail = if request.reason.is_empty() {
        record.label()
    } else {
        format!("{}: {}", record.label(), request.reason)
    };
    let entry = crate::store::AuditEntry::new(
        caller.actor(),
        format!("rollout.{}", command.as_str()),
        record.id.to_string(),
        detail,
    );
    state.rollouts.command(record.id, command, caller.actor(), request.reason.clone(), entry).await?;
    read(state, record.id, false).await
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

fn event_to_wire(event: &StoredEvent) -> pb::RolloutEvent {
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

fn to_wire(
    state: &ControllerState,
    record: &RolloutRecord,
    rows: &[StoredMachineRow],
    with_machines: bool,
) -> pb::Rollout {
    let now = Timestamp::now();
    let limits = Limits::of(record, rows.len());
    let online: Vec<bool> =
        rows.iter().map(|row| state.presence.last_seen(&row.row.machine_id).is_some()).collect();
    let mut counts =
        pb::RolloutCounts { machines: u32::try_from(rows.len()).unwrap_or(u32::MAX), ..Default::default() };
    let mut phases: Vec<pb::RolloutPhase> = Vec::new();
    for (stored, online) in rows.iter().zip(&online) {
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
    let plain: Vec<MachineRow> = rows.iter().map(|stored| stored.row.clone()).collect();
    let machines = if with_machines {
        rows.iter()
            .zip(&online)
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
        soak_until: if record.state == RolloutState::Running {
            soak_until(record, &plain, now).map(timestamp_to_wire)
        } else {
            None
        },
        stalled: record.stalled,
        undo_of_revision: record.undo_of.unwrap_or(0),
        budget_exceeded: record.budget_exceeded,
    }
}

/// Every running or paused rollout with its counts and phases (no machines): the
/// metrics and the web page.
pub async fn open(state: &ControllerState) -> Result<Vec<pb::Rollout>, Status> {
    let records = state.store.open_rollouts().await.map_err(internal)?;
    let mut rollouts = Vec::with_capacity(records.len());
    for record in records {
        let rows = state.store.rollout_machines(record.id).await.map_err(internal)?;
        rollouts.push(to_wire(state, &record, &rows, false));
    }
    Ok(rollouts)
}
