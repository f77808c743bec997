//! Operator calls on rollouts: start and undo build the rollout here and hand it
//! to the engine; pause, resume and abort are engine commands; reads come from
//! the store, so they show exactly what a restarted controller would continue.
//! These run on the controller that leads; the operators' edge hands a call to the
//! leader when this one does not lead.

use std::collections::HashMap;

use comfyfleet_config::resolve::Resolver;
use comfyfleet_config::spec::{RolloutPolicy, Spec};
use jiff::Timestamp;

use super::create::{
    Entry, PolicyOverrides, Target, TargetOutcome, effective_policy, entry, machine_kind, order_rows,
};
use super::model::{
    MachineRow, NewEvent, NewRollout, RolloutKind, RolloutRecord, RolloutState, StoredEvent, StoredMachineRow,
};
use super::plan::{Limits, soak_until};
use super::{Command, RolloutError};
use crate::store::{StoredMachine, StoredRevision};
use crate::use_cases::ControllerState;
use crate::use_cases::credentials::auth::Caller;
use crate::use_cases::environments::revisions::{find_revision, revision_spec};
use crate::use_cases::machines::lookup::{fleet, machine_record, named_machines};

const DEFAULT_LIST: u32 = 50;
const MAX_LIST: u32 = 1_000;
const DEFAULT_EVENTS: u32 = 1_000;
const MAX_EVENTS: u32 = 10_000;

/// `comfyfleet rollout start`: an environment's revision to the machines named, or
/// to every machine its spec selects.
#[derive(Debug, Clone, Default)]
pub struct StartRollout {
    pub environment: String,
    pub revision: String,
    pub machines: Vec<String>,
    pub policy: Option<PolicyOverrides>,
}

/// `comfyfleet rollout undo`: back to the revision the newest rollout came from, or
/// the one named.
#[derive(Debug, Clone, Default)]
pub struct UndoRollout {
    pub environment: String,
    pub to_revision: String,
    pub policy: Option<PolicyOverrides>,
}

/// A rollout as operators see it: its record and rows, which machines are online,
/// and what its policy comes to for its size.
#[derive(Debug, Clone)]
pub struct RolloutView {
    pub record: RolloutRecord,
    pub rows: Vec<StoredMachineRow>,
    /// Per row: whether the machine has a session.
    pub online: Vec<bool>,
    pub limits: Limits,
    /// When a running rollout's soak ends.
    pub soak_until: Option<Timestamp>,
    /// Whether the view carries the rows (else only the counts are wanted).
    pub with_machines: bool,
}

/// A rollout just started: the revision, what became of each machine, the rollout.
#[derive(Debug, Clone)]
pub struct Started {
    pub revision: StoredRevision,
    pub targets: Vec<Target>,
    pub rollout: RolloutView,
}

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

/// Starts a rollout (on the controller that leads).
pub async fn start(
    state: &ControllerState,
    caller: &Caller,
    request: StartRollout,
) -> Result<Started, RolloutError> {
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

/// Undoes an environment's newest rollout (on the controller that leads).
pub async fn undo(
    state: &ControllerState,
    caller: &Caller,
    request: UndoRollout,
) -> Result<Started, RolloutError> {
    let environment = request.environment.trim();
    let latest = state
        .store
        .list_rollouts(Some(environment), 1)
        .await?
        .pop()
        .ok_or_else(|| RolloutError::NothingToUndo { environment: environment.to_owned() })?;
    let rows = state.store.rollout_machines(latest.id).await?;
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
        let number = number.ok_or_else(|| RolloutError::NoEarlierRevision {
            id: latest.id,
            label: latest.label(),
            environment: environment.to_owned(),
        })?;
        number.to_string()
    } else {
        request.to_revision.clone()
    };
    let revision = find_revision(state, environment, &to).await?;
    if revision.number == latest.revision_number && latest.state == RolloutState::Succeeded {
        return Err(RolloutError::AlreadyRolledOut {
            environment: environment.to_owned(),
            number: revision.number,
            id: latest.id,
        });
    }
    let spec = revision_spec(&revision)?;
    let policy = effective_policy(&spec, request.policy.as_ref())?;
    let mut machines = Vec::with_capacity(rows.len());
    for row in &rows {
        if let Some(machine) = state.store.get_machine(&row.row.machine_id).await?
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

async fn launch_rollout(state: &ControllerState, launch: Launch<'_>) -> Result<Started, RolloutError> {
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
            target.outcome = TargetOutcome::Busy;
            target.detail.clone_from(detail);
        }
    }
    let rollout = read(state, created.record.id, false).await?;
    Ok(Started { revision: launch.revision, targets, rollout })
}

/// The rollout a name stands for: an id, an environment (its newest), or "" (the
/// newest of all).
async fn find(state: &ControllerState, name: &str) -> Result<RolloutRecord, RolloutError> {
    let name = name.trim();
    let found = if name.is_empty() {
        state.store.list_rollouts(None, 1).await?.pop()
    } else if let Ok(id) = name.parse::<u64>() {
        state.store.rollout(id).await?
    } else {
        state.store.list_rollouts(Some(name), 1).await?.pop()
    };
    found.ok_or_else(|| {
        if name.is_empty() {
            RolloutError::NoRolloutYet
        } else if name.parse::<u64>().is_ok() {
            RolloutError::NoSuchRollout { rollout: name.to_owned() }
        } else {
            RolloutError::NoRolloutOf { environment: name.to_owned() }
        }
    })
}

async fn read(state: &ControllerState, id: u64, with_machines: bool) -> Result<RolloutView, RolloutError> {
    // One snapshot: a step committing meanwhile shows in the record and the rows
    // alike (a succeeded rollout is never shown with rows still switching).
    let (record, rows) = state.store.rollout_snapshot(id).await?.ok_or(RolloutError::Gone { id })?;
    Ok(view(state, record, rows, with_machines))
}

/// One rollout, by id, environment (its newest) or "" (the newest of all).
pub async fn get(
    state: &ControllerState,
    rollout: &str,
    with_machines: bool,
) -> Result<RolloutView, RolloutError> {
    let record = find(state, rollout).await?;
    read(state, record.id, with_machines).await
}

/// The newest rollouts (of one environment, or of all when it is ""), without their
/// machines; `limit` 0 for the default.
pub async fn list(
    state: &ControllerState,
    environment: &str,
    limit: u32,
) -> Result<Vec<RolloutView>, RolloutError> {
    let limit = match limit {
        0 => DEFAULT_LIST,
        limit => limit.min(MAX_LIST),
    };
    let environment = environment.trim();
    let environment = (!environment.is_empty()).then_some(environment);
    let records = state.store.list_rollouts(environment, limit).await?;
    let mut rollouts = Vec::with_capacity(records.len());
    for record in records {
        let rows = state.store.rollout_machines(record.id).await?;
        rollouts.push(view(state, record, rows, false));
    }
    Ok(rollouts)
}

/// A rollout's events after `after`, oldest first; `limit` 0 for the default.
pub async fn events(
    state: &ControllerState,
    rollout: &str,
    after: u64,
    limit: u32,
) -> Result<(u64, Vec<StoredEvent>), RolloutError> {
    let record = find(state, rollout).await?;
    let limit = match limit {
        0 => DEFAULT_EVENTS,
        limit => limit.min(MAX_EVENTS),
    };
    let events = state.store.rollout_events(record.id, after, limit).await?;
    Ok((record.id, events))
}

/// Pauses, resumes or aborts a rollout (on the controller that leads).
pub async fn act(
    state: &ControllerState,
    caller: &Caller,
    command: Command,
    rollout: &str,
    reason: &str,
) -> Result<RolloutView, RolloutError> {
    if rollout.trim().is_empty() {
        return Err(RolloutError::NoRolloutNamed { command: command.as_str() });
    }
    if let Some(c) = comfyfleet_config::text::deceptive(reason) {
        return Err(RolloutError::DeceptiveReason(comfyfleet_config::text::refusal("the reason", c)));
    }
    if reason.len() > 1_000 {
        return Err(RolloutError::ReasonTooLong);
    }
    let record = find(state, rollout).await?;
    let detail = if reason.is_empty() { record.label() } else { format!("{}: {}", record.label(), reason) };
    let entry = crate::store::AuditEntry::new(
        caller.actor(),
        format!("rollout.{}", command.as_str()),
        record.id.to_string(),
        detail,
    );
    state.rollouts.command(record.id, command, caller.actor(), reason.to_owned(), entry).await?;
    read(state, record.id, false).await
}

fn view(
    state: &ControllerState,
    record: RolloutRecord,
    rows: Vec<StoredMachineRow>,
    with_machines: bool,
) -> RolloutView {
    let now = Timestamp::now();
    let limits = Limits::of(&record, rows.len());
    let online: Vec<bool> =
        rows.iter().map(|row| state.presence.last_seen(&row.row.machine_id).is_some()).collect();
    let soak_until = if record.state == RolloutState::Running {
        let plain: Vec<MachineRow> = rows.iter().map(|stored| stored.row.clone()).collect();
        soak_until(&record, &plain, now)
    } else {
        None
    };
    RolloutView { record, rows, online, limits, soak_until, with_machines }
}

/// Every running or paused rollout with its counts and phases (no machines): the
/// metrics and the web page.
pub async fn open(state: &ControllerState) -> Result<Vec<RolloutView>, RolloutError> {
    let records = state.store.open_rollouts().await?;
    let mut rollouts = Vec::with_capacity(records.len());
    for record in records {
        let rows = state.store.rollout_machines(record.id).await?;
        rollouts.push(view(state, record, rows, false));
    }
    Ok(rollouts)
}
