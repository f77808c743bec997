//! The rollout's decisions, as pure functions of what the store holds: a rollout,
//! its machine rows, which machines are online, when each last made progress, and
//! the time. The engine calls [`decide`] after every change and writes what it
//! returns; a restarted controller calls it on the same stored rows and gets the
//! same answer, so nothing is done twice and nothing is forgotten.

use std::collections::HashMap;
use std::time::Duration;

use comfyfleet_config::MachineId;
use comfyfleet_config::convergence::Phase;
use jiff::{SignedDuration, Timestamp};

use super::model::{
    AssignKind, MachineRow, MachineStatus, NewEvent, RolloutChange, RolloutRecord, RolloutState,
};

/// What the engine knows besides the stored rows.
pub struct Context<'a> {
    pub now: Timestamp,
    pub online: &'a (dyn Fn(&MachineId) -> bool + Sync),
    /// When each machine's agent last reported progress on the rollout's generation.
    pub progress: &'a HashMap<MachineId, Timestamp>,
}

/// One machine's next status, maybe with an assignment to make.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    pub index: usize,
    pub status: MachineStatus,
    pub detail: String,
    pub assign: Option<AssignKind>,
    pub stalled: bool,
}

#[derive(Debug, Default, Clone, PartialEq)]
pub struct Decision {
    pub transitions: Vec<Transition>,
    pub change: Option<RolloutChange>,
    pub events: Vec<NewEvent>,
}

/// The policy's amounts as machine counts for a rollout of `machines`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_unavailable: u32,
    pub max_parallel_prepare: u32,
    pub failure_budget: u32,
}

impl Limits {
    pub fn of(record: &RolloutRecord, machines: usize) -> Self {
        let machines = u32::try_from(machines).unwrap_or(u32::MAX);
        let policy = &record.policy;
        Limits {
            max_unavailable: policy.max_unavailable.of(machines).max(1),
            max_parallel_prepare: policy.max_parallel_prepare.of(machines).max(1),
            failure_budget: policy.failure_budget.of(machines),
        }
    }
}

/// The phase of the machine at `ordinal`: the canaries, then batches of `batch`.
pub fn phase_of(ordinal: u32, canary: u32, batch: u32) -> u32 {
    if ordinal < canary { 0 } else { 1 + (ordinal - canary) / batch.max(1) }
}

fn elapsed(since: Timestamp, now: Timestamp) -> Duration {
    let elapsed: SignedDuration = now.duration_since(since);
    Duration::try_from(elapsed).unwrap_or_default()
}

fn human(duration: Duration) -> String {
    humantime::format_duration(Duration::from_secs(duration.as_secs())).to_string()
}

/// When the machine last moved: its last status change or its agent's last report.
fn last_progress(row: &MachineRow, context: &Context<'_>) -> Timestamp {
    context.progress.get(&row.machine_id).copied().map_or(row.since, |at| at.max(row.since))
}

/// Until when the rollout waits out a soak before the phase after `rows`' last
/// finished one, if it does now. One pass over the rows, whatever the number of
/// phases.
pub fn soak_until(record: &RolloutRecord, rows: &[MachineRow], now: Timestamp) -> Option<Timestamp> {
    let soak = record.policy.soak.map(|soak| soak.0).filter(|soak| !soak.is_zero())?;
    let soak = SignedDuration::try_from(soak).ok()?;
    struct PhaseState {
        done: bool,
        finished: Timestamp,
        started: bool,
    }
    let mut phases: std::collections::BTreeMap<u32, PhaseState> = std::collections::BTreeMap::new();
    for row in rows {
        let phase =
            phases.entry(row.phase).or_insert(PhaseState { done: true, finished: row.since, started: false });
        phase.done &= row.status.is_done();
        phase.finished = phase.finished.max(row.since);
        phase.started |= row.activations > 0;
    }
    let phases: Vec<PhaseState> = phases.into_values().collect();
    // Whether any phase after each one has started switching.
    let mut later_started = vec![false; phases.len()];
    let mut any = false;
    for (index, phase) in phases.iter().enumerate().rev() {
        later_started[index] = any;
        any |= phase.started;
    }
    // The last phase has nothing after it to hold.
    for (index, phase) in phases.iter().enumerate().take(phases.len().saturating_sub(1)) {
        if !phase.done {
            return None;
        }
        let until = phase.finished + soak;
        if until > now && !later_started[index] {
            return Some(until);
        }
    }
    None
}

/// The highest phase whose machines may activate now.
fn open_phase(record: &RolloutRecord, rows: &[MachineRow], now: Timestamp) -> Option<u32> {
    let canaries_done = rows.iter().filter(|row| row.phase == 0).all(|row| row.status.is_done());
    if !canaries_done {
        return Some(0);
    }
    if soak_until(record, rows, now).is_some() {
        return None;
    }
    let soaking = record.policy.soak.is_some_and(|soak| !soak.0.is_zero());
    if !soaking {
        return rows.iter().map(|row| row.phase).max();
    }
    // With a soak, phases go one at a time: the first unfinished one.
    rows.iter().filter(|row| !row.status.is_done()).map(|row| row.phase).min()
}

/// Decides what the rollout does next. `rows` are in rollout order.
pub fn decide(record: &RolloutRecord, rows: &[MachineRow], context: &Context<'_>) -> Decision {
    let mut decision = Decision::default();
    if !record.state.is_open() {
        return decision;
    }
    let now = context.now;
    let policy = &record.policy;
    let limits = Limits::of(record, rows.len());
    let mut statuses: Vec<MachineStatus> = rows.iter().map(|row| row.status).collect();
    let mut change = RolloutChange::of(record);

    // Machines that stopped moving while their agent is connected.
    let deadline = policy.progress_deadline.0;
    for (index, row) in rows.iter().enumerate() {
        if !row.status.is_in_flight() || row.stalled || !(context.online)(&row.machine_id) {
            continue;
        }
        if elapsed(last_progress(row, context), now) <= deadline {
            continue;
        }
        let detail = format!("stalled: no progress for {} while {}", human(deadline), row.status);
        let status = if policy.stalled_is_failure { MachineStatus::Failed } else { row.status };
        statuses[index] = status;
        decision.transitions.push(Transition { index, status, detail, assign: None, stalled: true });
    }

    // Failed machines go back to what they ran (once).
    if policy.auto_rollback {
        for (index, row) in rows.iter().enumerate() {
            // A machine that failed to prepare never left what it runs: nothing to undo.
            if statuses[index] == MachineStatus::Failed
                && !row.rollback_tried
                && row.from.is_some()
                && row.activations > 0
            {
                let from = row.from.as_ref().map(ToString::to_string).unwrap_or_default();
                let stall = decision.transitions.iter().find(|t| t.index == index);
                let error = stall.map_or(row.detail.as_str(), |t| t.detail.as_str());
                let detail = format!("{error} {RETURNING}{from})");
                statuses[index] = MachineStatus::RollingBack;
                let stalled = stall.is_some_and(|t| t.stalled);
                decision.transitions.retain(|t| t.index != index);
                decision.transitions.push(Transition {
                    index,
                    status: MachineStatus::RollingBack,
                    detail,
                    assign: Some(AssignKind::Rollback),
                    stalled,
                });
            }
        }
    }

    if record.state == RolloutState::Running {
        let failures = statuses.iter().filter(|status| status.is_failure()).count();
        let failed_canary = (0..rows.len())
            .find(|&index| rows[index].phase == 0 && statuses[index].is_failure() && rows.len() > 1);
        let pause = if let Some(index) = failed_canary {
            let row = &rows[index];
            let detail = decision
                .transitions
                .iter()
                .find(|t| t.index == index)
                .map_or(row.detail.as_str(), |t| t.detail.as_str());
            Some(format!("canary {} failed: {detail}", row.machine_id))
        } else if failures > limits.failure_budget as usize {
            Some(format!(
                "{failures} machines failed, more than the failure budget of {} ({})",
                limits.failure_budget, policy.failure_budget
            ))
        } else {
            None
        };
        if let Some(reason) = pause {
            change.state = RolloutState::Paused;
            change.reason = reason.clone();
            change.budget_exceeded = true;
            decision.events.push(NewEvent::rollout(now, "paused", reason));
        }
    }

    if change.state == RolloutState::Running {
        plan_work(record, rows, context, &limits, &mut statuses, &mut decision, &mut change);
    }
    if change != RolloutChange::of(record) {
        decision.change = Some(change);
    }
    decision
}

/// New preparations and activations, completion and the rollout's own stall.
fn plan_work(
    record: &RolloutRecord,
    rows: &[MachineRow],
    context: &Context<'_>,
    limits: &Limits,
    statuses: &mut [MachineStatus],
    decision: &mut Decision,
    change: &mut RolloutChange,
) {
    let now = context.now;
    let online = |row: &MachineRow| (context.online)(&row.machine_id);
    if statuses.iter().all(|status| status.is_done()) {
        let active = statuses.iter().filter(|status| **status == MachineStatus::Active).count();
        let failed = statuses.iter().filter(|status| status.is_failure()).count();
        let reason = format!("{active} of {} machines on {}, {failed} failed", rows.len(), record.label());
        change.state = RolloutState::Succeeded;
        change.finished_at = Some(now);
        change.reason = reason.clone();
        change.stalled = false;
        decision.events.push(NewEvent::rollout(now, "succeeded", reason));
        return;
    }

    let preparing = rows
        .iter()
        .zip(statuses.iter())
        .filter(|(row, status)| **status == MachineStatus::Preparing && online(row))
        .count();
    let mut slots = (limits.max_parallel_prepare as usize).saturating_sub(preparing);
    for (index, row) in rows.iter().enumerate() {
        if slots == 0 {
            break;
        }
        if statuses[index] == MachineStatus::Pending && online(row) {
            statuses[index] = MachineStatus::Preparing;
            slots -= 1;
            decision.transitions.push(Transition {
                index,
                status: MachineStatus::Preparing,
                detail: String::new(),
                assign: Some(AssignKind::Prepare),
                stalled: false,
            });
        }
    }

    let unavailable = statuses.iter().filter(|status| status.is_unavailable()).count();
    let mut slots = (limits.max_unavailable as usize).saturating_sub(unavailable);
    if let Some(open) = open_phase(record, rows, now) {
        let mut started: std::collections::HashSet<u32> =
            rows.iter().filter(|row| row.activations > 0).map(|row| row.phase).collect();
        for (index, row) in rows.iter().enumerate() {
            if slots == 0 {
                break;
            }
            if statuses[index] != MachineStatus::Prepared || row.phase > open || !online(row) {
                continue;
            }
            if started.insert(row.phase) {
                let name = if row.phase == 0 { "canary".to_owned() } else { format!("batch {}", row.phase) };
                let mut event = NewEvent::rollout(now, "phase", format!("{name} started"));
                event.phase = row.phase;
                decision.events.push(event);
            }
            statuses[index] = MachineStatus::Activating;
            slots -= 1;
            decision.transitions.push(Transition {
                index,
                status: MachineStatus::Activating,
                detail: String::new(),
                assign: Some(AssignKind::Activate),
                stalled: false,
            });
        }
    }

    // What the rollout waits for, and whether it has stopped moving.
    let offline =
        rows.iter().zip(statuses.iter()).filter(|(row, status)| !status.is_done() && !online(row)).count();
    let waiting = rows.iter().zip(statuses.iter()).filter(|(_, status)| !status.is_done()).count();
    change.reason = if offline > 0 && offline == waiting {
        format!("waiting for {offline} offline machine{}", if offline == 1 { "" } else { "s" })
    } else if let Some(until) = soak_until(record, rows, now) {
        format!("soaking until {until}")
    } else {
        String::new()
    };
    let moved = decision.transitions.iter().any(|t| !t.stalled);
    let last = rows.iter().map(|row| last_progress(row, context)).max().unwrap_or(record.created_at);
    let stalled = !moved && elapsed(last, now) > record.policy.progress_deadline.0;
    if stalled != change.stalled {
        change.stalled = stalled;
        let detail = if stalled {
            format!(
                "nothing moved for {}: {waiting} machines not done ({offline} offline)",
                human(record.policy.progress_deadline.0)
            )
        } else {
            "moving again".to_owned()
        };
        decision.events.push(NewEvent::rollout(now, if stalled { "stalled" } else { "progressing" }, detail));
    }
}

/// How an agent's report on the rollout's generation moves its row, if it does.
pub fn on_report(
    row: &MachineRow,
    generation: u64,
    phase: Phase,
    error: &str,
    note: &str,
) -> Option<(MachineStatus, String)> {
    if generation != row.generation || row.generation == 0 {
        return None;
    }
    let failed = |what: &str| Some((MachineStatus::Failed, format!("{what}{error}")));
    match (row.status, phase) {
        (MachineStatus::Preparing, Phase::Prepared) => Some((MachineStatus::Prepared, note.to_owned())),
        (MachineStatus::Preparing, Phase::Active) => {
            Some((MachineStatus::Active, "already runs this revision".to_owned()))
        }
        (MachineStatus::Preparing | MachineStatus::Activating, Phase::Failed) => failed(""),
        (MachineStatus::Activating, Phase::Active) => Some((MachineStatus::Active, note.to_owned())),
        (MachineStatus::RollingBack, Phase::Active) => {
            Some((MachineStatus::RolledBack, row.detail.replacen(RETURNING, BACK_ON, 1)))
        }
        (MachineStatus::RollingBack, Phase::Failed) => failed("the rollback failed too: "),
        _ => None,
    }
}

const RETURNING: &str = "(returning to ";
const BACK_ON: &str = "(back on ";

#[cfg(test)]
mod tests;
