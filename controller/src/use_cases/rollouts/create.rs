//! Building a rollout: its effective policy (the spec's, with the operator's
//! overrides), one row per machine the revision has a plan for, and their order —
//! online machines first, interleaved across GPU kinds so the canaries and every
//! batch cover as many kinds of machine as they can.

use std::collections::BTreeMap;

use comfyfleet_config::convergence::Phase;
use comfyfleet_config::resolve::{Resolution, Resolver};
use comfyfleet_config::spec::{Amount, HumanDuration, RolloutPolicy, Spec};
use comfyfleet_config::{MachineFacts, MachineRecord};
use comfyfleet_proto::v1 as pb;
use jiff::Timestamp;
use tonic::Status;

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

fn amount(field: &str, text: &str) -> Result<Option<Amount>, Status> {
    if text.trim().is_empty() {
        return Ok(None);
    }
    text.parse()
        .map(Some)
        .map_err(|error: String| Status::invalid_argument(format!("policy.{field}: {error}")))
}

fn duration(field: &str, text: &str) -> Result<Option<Option<HumanDuration>>, Status> {
    let text = text.trim();
    if text.is_empty() {
        return Ok(None);
    }
    if humantime::parse_duration(text).is_ok_and(|duration| duration.is_zero()) {
        return Ok(Some(None));
    }
    text.parse()
        .map(|duration| Some(Some(duration)))
        .map_err(|error: String| Status::invalid_argument(format!("policy.{field}: {error}")))
}

/// The spec's policy with the request's overrides, checked.
pub fn effective_policy(spec: &Spec, overrides: Option<&pb::RolloutPolicy>) -> Result<RolloutPolicy, Status> {
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
        policy.progress_deadline = deadline.ok_or_else(|| {
            Status::invalid_argument("policy.progress_deadline: must be more than 0s (e.g. \"30m\")")
        })?;
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
            return Err(Status::invalid_argument(format!(
                "policy.{field}: {value} would never let a machine through; give at least 1 or a percentage such as 10%"
            )));
        }
    }
    Ok(policy)
}

/// How one machine enters a rollout.
pub enum Entry {
    Row(Box<MachineRow>, pb::RolloutTarget),
    Left(pb::RolloutTarget),
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
    let mut target = pb::RolloutTarget {
        machine_id: record.id.to_string(),
        hostname: record.hostname.clone(),
        outcome: pb::TargetOutcome::Unspecified.into(),
        detail: String::new(),
        online: record.online,
        generation: 0,
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
            target.outcome = pb::TargetOutcome::Incompatible.into();
            target.detail = incompatibility.summary();
            return Entry::Left(target);
        }
        Resolution::NotTargeted => {
            target.outcome = pb::TargetOutcome::NotTargeted.into();
            target.detail = "left out by the target selector".to_owned();
            return Entry::Left(target);
        }
    };
    let from = current_revision(record);
    let current = from
        .as_ref()
        .is_some_and(|from| from.environment == revision.environment && from.number == revision.number);
    target.outcome = if current { pb::TargetOutcome::Current } else { pb::TargetOutcome::Assigned }.into();
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
