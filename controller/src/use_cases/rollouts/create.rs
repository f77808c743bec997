//! Building a rollout: its effective policy (the spec's, with the operator's
//! overrides), one row per machine the revision has a plan for, and their order —
//! online machines first, interleaved across GPU kinds so the canaries and every
//! batch cover as many kinds of machine as they can.

use std::collections::BTreeMap;

use comfyfleet_config::convergence::Phase;
use comfyfleet_config::resolve::{Resolution, Resolver};
use comfyfleet_config::spec::{Amount, HumanDuration, RolloutPolicy, Spec};
use comfyfleet_config::{MachineFacts, MachineRecord};
use jiff::Timestamp;

use super::RolloutError;
use super::model::{MachineRow, MachineStatus, RevisionRef};
use super::plan::phase_of;
use crate::store::StoredRevision;

/// What a machine runs now: the revision its agent last reported active, else the
/// one its inventory says is current.
pub fn current_revision(machine: &MachineRecord) -> Option<RevisionRef> {
    if let Some(report) = &machine.report
        && report.phase == Phase::Active
        && report.revision_number > 0
    {
        return Some(RevisionRef { environment: report.environment.clone(), number: report.revision_number });
    }
    let environments = &machine.inventory.as_ref()?.environments;
    let current = environments.current.as_ref()?;
    environments.installed.iter().find(|installed| installed.revision_id == *current).map(|installed| {
        RevisionRef { environment: installed.environment.clone(), number: installed.revision_number }
    })
}

fn amount(field: &'static str, text: &str) -> Result<Option<Amount>, RolloutError> {
    if text.trim().is_empty() {
        return Ok(None);
    }
    text.parse().map(Some).map_err(|error: String| RolloutError::BadPolicy { field, error })
}

fn duration(field: &'static str, text: &str) -> Result<Option<Option<HumanDuration>>, RolloutError> {
    let text = text.trim();
    if text.is_empty() {
        return Ok(None);
    }
    if humantime::parse_duration(text).is_ok_and(|duration| duration.is_zero()) {
        return Ok(Some(None));
    }
    text.parse()
        .map(|duration| Some(Some(duration)))
        .map_err(|error: String| RolloutError::BadPolicy { field, error })
}

/// What an operator may override of the spec's rollout policy: empty text and
/// `None` keep the spec's.
#[derive(Debug, Clone, Default)]
pub struct PolicyOverrides {
    pub canary: Option<u32>,
    pub max_unavailable: String,
    pub max_parallel_prepare: String,
    pub soak: String,
    pub failure_budget: String,
    pub auto_rollback: Option<bool>,
    pub progress_deadline: String,
    pub stalled_is_failure: Option<bool>,
}

/// The spec's policy with the request's overrides, checked.
pub fn effective_policy(
    spec: &Spec,
    overrides: Option<&PolicyOverrides>,
) -> Result<RolloutPolicy, RolloutError> {
    let mut policy = spec.rollout.clone();
    let Some(overrides) = overrides else { return Ok(policy) };
    if let Some(canary) = overrides.canary {
        policy.canary = canary;
    }
    if let Some(value) = amount("max_unavailable", &overrides.max_unavailable)? {
        policy.max_unavailable = value;
    }
    if let Some(value) = amount("max_parallel_prepare", &overrides.max_parallel_prepare)? {
        policy.max_parallel_prepare = value;
    }
    if let Some(value) = amount("failure_budget", &overrides.failure_budget)? {
        policy.failure_budget = value;
    }
    if let Some(soak) = duration("soak", &overrides.soak)? {
        policy.soak = soak;
    }
    if let Some(deadline) = duration("progress_deadline", &overrides.progress_deadline)? {
        policy.progress_deadline = deadline.ok_or(RolloutError::NoProgressDeadline)?;
    }
    if let Some(value) = overrides.auto_rollback {
        policy.auto_rollback = value;
    }
    if let Some(value) = overrides.stalled_is_failure {
        policy.stalled_is_failure = value;
    }
    for (field, value) in
        [("max_unavailable", policy.max_unavailable), ("max_parallel_prepare", policy.max_parallel_prepare)]
    {
        if matches!(value, Amount::Count(0) | Amount::Percent(0)) {
            return Err(RolloutError::PolicyLetsNoneThrough { field, value });
        }
    }
    Ok(policy)
}

/// What became of one machine when a rollout started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetOutcome {
    /// In the rollout: it prepares and switches as the policy allows.
    Assigned,
    /// The resolver found no plan for it (the detail says why).
    Incompatible,
    /// The spec's selector leaves it out.
    NotTargeted,
    /// Already in a running rollout of another environment.
    Busy,
    /// Already runs this revision.
    Current,
}

/// One machine as a starting rollout saw it.
#[derive(Debug, Clone)]
pub struct Target {
    pub machine_id: String,
    pub hostname: String,
    pub outcome: TargetOutcome,
    /// The planned torch build when assigned, the reason otherwise.
    pub detail: String,
    pub online: bool,
}

/// How one machine enters a rollout.
pub enum Entry {
    Row(Box<MachineRow>, Target),
    Left(Target),
}

/// Plans `revision` for one machine: a pending row (or a done one when it already
/// runs the revision), or why it is left out.
pub fn entry(
    resolver: &Resolver<'_>,
    revision: &StoredRevision,
    record: &MachineRecord,
    now: Timestamp,
    ignore_selector: bool,
) -> Entry {
    let mut target = Target {
        machine_id: record.id.to_string(),
        hostname: record.hostname.clone(),
        outcome: TargetOutcome::Assigned,
        detail: String::new(),
        online: record.online,
    };
    let facts = MachineFacts::from(record);
    let resolution = if ignore_selector {
        match resolver.plan(&facts) {
            Ok(plan) => Resolution::Planned(Box::new(plan)),
            Err(incompatibility) => Resolution::Incompatible(incompatibility),
        }
    } else {
        resolver.resolve(&facts)
    };
    let plan = match resolution {
        Resolution::Planned(plan) => plan,
        Resolution::Incompatible(incompatibility) => {
            target.outcome = TargetOutcome::Incompatible;
            target.detail = incompatibility.summary();
            return Entry::Left(target);
        }
        Resolution::NotTargeted => {
            target.outcome = TargetOutcome::NotTargeted;
            target.detail = "left out by the target selector".to_owned();
            return Entry::Left(target);
        }
    };
    let from = current_revision(record);
    let current = from
        .as_ref()
        .is_some_and(|from| from.environment == revision.environment && from.number == revision.number);
    target.outcome = if current { TargetOutcome::Current } else { TargetOutcome::Assigned };
    target.detail = plan.torch.clone();
    let mut row = new_row(record.id.clone(), &plan, from, now);
    if current {
        row.status = MachineStatus::Active;
        row.detail = "already runs this revision".to_owned();
    }
    Entry::Row(Box::new(row), target)
}

/// A pending row for `machine` with `plan`, coming from `from`; its place in the
/// order (ordinal, phase) is set by whoever places it.
pub fn new_row(
    machine: comfyfleet_config::MachineId,
    plan: &comfyfleet_config::resolve::MachinePlan,
    from: Option<RevisionRef>,
    now: Timestamp,
) -> MachineRow {
    MachineRow {
        machine_id: machine,
        ordinal: 0,
        phase: 0,
        status: MachineStatus::Pending,
        generation: 0,
        plan_json: serde_json::to_string(plan).unwrap_or_default(),
        torch: plan.torch.clone(),
        from,
        detail: String::new(),
        since: now,
        activations: 0,
        attempts: 1,
        rollback_tried: false,
        stalled: false,
        joined: false,
    }
}

/// Puts rows in rollout order and gives each its ordinal and phase: machines to
/// move and online first, round-robin across (GPU, torch build) kinds; machines
/// already on the revision last.
pub fn order_rows(rows: Vec<(MachineRow, bool, String)>, canary: u32, batch: u32) -> Vec<MachineRow> {
    let mut groups: BTreeMap<(u8, String), Vec<MachineRow>> = BTreeMap::new();
    let mut done = Vec::new();
    for (row, online, kind) in rows {
        if row.status.is_done() {
            done.push(row);
            continue;
        }
        groups.entry((u8::from(!online), format!("{kind} {}", row.torch))).or_default().push(row);
    }
    let mut ordered = Vec::new();
    for tier in [0u8, 1] {
        let mut queues: Vec<std::collections::VecDeque<MachineRow>> = groups
            .iter_mut()
            .filter(|((group_tier, _), _)| *group_tier == tier)
            .map(|(_, rows)| std::mem::take(rows).into())
            .collect();
        loop {
            let mut took = false;
            for queue in &mut queues {
                if let Some(row) = queue.pop_front() {
                    ordered.push(row);
                    took = true;
                }
            }
            if !took {
                break;
            }
        }
    }
    ordered.extend(done);
    for (ordinal, row) in ordered.iter_mut().enumerate() {
        row.ordinal = u32::try_from(ordinal).unwrap_or(u32::MAX);
        row.phase = phase_of(row.ordinal, canary, batch);
    }
    ordered
}

/// The kind of machine for spreading canaries and batches: its first GPU's name.
pub fn machine_kind(record: &MachineRecord) -> String {
    record
        .inventory
        .as_ref()
        .and_then(|inventory| inventory.nvidia.gpus.first())
        .and_then(|gpu| gpu.name.clone())
        .unwrap_or_else(|| "no GPU".to_owned())
}
