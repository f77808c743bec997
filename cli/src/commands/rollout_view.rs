//! Rollouts as the CLI shows them: the wire's `pb::Rollout`, `pb::RolloutMachine` and
//! `pb::RolloutEvent` converted once into plain views, which are what `-o json` prints
//! (field names here are a stable interface) and what the tables and the watch read.

use comfyfleet_proto::v1 as pb;
use jiff::Timestamp;
use serde::Serialize;

use super::time;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RolloutView {
    pub id: u64,
    pub environment: String,
    pub revision: u32,
    pub revision_id: String,
    /// `rollout` or `undo`.
    pub kind: String,
    /// For an undo: the revision it rolls back from.
    pub undo_of_revision: Option<u32>,
    /// `running`, `paused`, `succeeded`, `aborted` (`unknown` from a newer controller).
    pub state: &'static str,
    /// Why it is paused or aborted; what it waits for while running.
    pub reason: String,
    /// Paused itself: more machines failed than the failure budget allows.
    pub budget_exceeded: bool,
    /// Nothing moved for longer than the progress deadline.
    pub stalled: bool,
    pub created_at: Option<Timestamp>,
    pub created_by: String,
    pub finished_at: Option<Timestamp>,
    pub soak_until: Option<Timestamp>,
    /// The effective policy, as written (`"10%"`, `"30m"`).
    pub policy: PolicyView,
    /// The policy's amounts as machine counts for this rollout's size.
    pub limits: LimitsView,
    /// Machines unavailable now: activating or rolling back.
    pub unavailable: u32,
    pub counts: CountsView,
    pub phases: Vec<PhaseView>,
    /// Empty from `rollout list` (the controller lists rollouts without machines).
    pub machines: Vec<RolloutMachineView>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PolicyView {
    pub canary: Option<u32>,
    pub max_unavailable: String,
    pub max_parallel_prepare: String,
    pub soak: String,
    pub failure_budget: String,
    pub auto_rollback: Option<bool>,
    pub progress_deadline: String,
    pub stalled_is_failure: Option<bool>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct LimitsView {
    pub max_unavailable: u32,
    pub max_parallel_prepare: u32,
    pub failure_budget: u32,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct CountsView {
    pub machines: u32,
    pub pending: u32,
    pub preparing: u32,
    pub prepared: u32,
    pub activating: u32,
    pub active: u32,
    pub failed: u32,
    pub rolling_back: u32,
    pub rolled_back: u32,
    pub skipped: u32,
    pub offline: u32,
    pub stalled: u32,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PhaseView {
    /// 0: the canary; 1, 2 …: the batches after it.
    pub index: u32,
    /// `canary`, `batch 1` …
    pub name: String,
    pub machines: u32,
    /// Active, failed or rolled back: nothing more to do.
    pub done: u32,
    pub active: u32,
    pub failed: u32,
    pub activating: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RolloutMachineView {
    pub machine: String,
    pub hostname: String,
    pub phase: u32,
    pub phase_name: String,
    /// `pending`, `preparing`, `prepared`, `activating`, `active`, `failed`,
    /// `rolling_back`, `rolled_back`, `skipped`.
    pub status: &'static str,
    /// The last error, or what the machine waits for.
    pub detail: String,
    pub since: Option<Timestamp>,
    pub online: bool,
    pub stalled: bool,
    /// The revision it ran when it joined the rollout (`render-prod@2`), if any.
    pub from: Option<String>,
    pub activations: u32,
    /// Joined the fleet (or the selector) after the rollout started.
    pub joined: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EventView {
    pub id: u64,
    pub rollout: u64,
    pub at: Option<Timestamp>,
    /// `None` for an event of the rollout itself.
    pub machine: Option<String>,
    /// A machine's new status, or what happened to the rollout (`started`, `phase`,
    /// `soak`, `paused`, `resumed`, `stalled`, `succeeded`, `aborted` …).
    pub kind: String,
    /// The status a machine left.
    pub from: Option<String>,
    pub detail: String,
    pub phase: u32,
}

/// Times to the second (truncated, as a clock shows them): sub-second digits would
/// only make the views noisier.
fn seconds(at: Option<&prost_types::Timestamp>) -> Option<Timestamp> {
    time(at).map(|at| {
        at.round(jiff::TimestampRound::new().smallest(jiff::Unit::Second).mode(jiff::RoundMode::Trunc))
            .unwrap_or(at)
    })
}

fn non_empty(text: &str) -> Option<String> {
    (!text.is_empty()).then(|| text.to_owned())
}

pub fn state_name(state: i32) -> &'static str {
    match pb::RolloutState::try_from(state) {
        Ok(pb::RolloutState::Running) => "running",
        Ok(pb::RolloutState::Paused) => "paused",
        Ok(pb::RolloutState::Succeeded) => "succeeded",
        Ok(pb::RolloutState::Aborted) => "aborted",
        Ok(pb::RolloutState::Unspecified) | Err(_) => "unknown",
    }
}

pub fn machine_status_name(status: i32) -> &'static str {
    match pb::RolloutMachineStatus::try_from(status) {
        Ok(pb::RolloutMachineStatus::Pending) => "pending",
        Ok(pb::RolloutMachineStatus::Preparing) => "preparing",
        Ok(pb::RolloutMachineStatus::Prepared) => "prepared",
        Ok(pb::RolloutMachineStatus::Activating) => "activating",
        Ok(pb::RolloutMachineStatus::Active) => "active",
        Ok(pb::RolloutMachineStatus::Failed) => "failed",
        Ok(pb::RolloutMachineStatus::RollingBack) => "rolling_back",
        Ok(pb::RolloutMachineStatus::RolledBack) => "rolled_back",
        Ok(pb::RolloutMachineStatus::Skipped) => "skipped",
        Ok(pb::RolloutMachineStatus::Unspecified) | Err(_) => "unknown",
    }
}

/// `canary` for phase 0 and `batch N` after it, when the rollout does not say.
fn default_phase_name(index: u32) -> String {
    if index == 0 { "canary".to_owned() } else { format!("batch {index}") }
}

impl From<&pb::RolloutPolicy> for PolicyView {
    fn from(policy: &pb::RolloutPolicy) -> Self {
        PolicyView {
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
}

impl From<&pb::RolloutCounts> for CountsView {
    fn from(counts: &pb::RolloutCounts) -> Self {
        CountsView {
            machines: counts.machines,
            pending: counts.pending,
            preparing: counts.preparing,
            prepared: counts.prepared,
            activating: counts.activating,
            active: counts.active,
            failed: counts.failed,
            rolling_back: counts.rolling_back,
            rolled_back: counts.rolled_back,
            skipped: counts.skipped,
            offline: counts.offline,
            stalled: counts.stalled,
        }
    }
}

impl From<&pb::RolloutPhase> for PhaseView {
    fn from(phase: &pb::RolloutPhase) -> Self {
        PhaseView {
            index: phase.index,
            name: non_empty(&phase.name).unwrap_or_else(|| default_phase_name(phase.index)),
            machines: phase.machines,
            done: phase.done,
            active: phase.active,
            failed: phase.failed,
            activating: phase.activating,
        }
    }
}

impl RolloutMachineView {
    fn new(machine: &pb::RolloutMachine, phases: &[PhaseView]) -> Self {
        let phase_name = phases
            .iter()
            .find(|phase| phase.index == machine.phase)
            .map_or_else(|| default_phase_name(machine.phase), |phase| phase.name.clone());
        RolloutMachineView {
            machine: machine.machine_id.clone(),
            hostname: machine.hostname.clone(),
            phase: machine.phase,
            phase_name,
            status: machine_status_name(machine.status),
            detail: machine.detail.clone(),
            since: seconds(machine.since.as_ref()),
            online: machine.online,
            stalled: machine.stalled,
            from: non_empty(&machine.from_environment)
                .map(|environment| format!("{environment}@{}", machine.from_revision_number)),
            activations: machine.activations,
            joined: machine.joined,
        }
    }
}

impl From<&pb::Rollout> for RolloutView {
    fn from(rollout: &pb::Rollout) -> Self {
        let counts = rollout.counts.as_ref().map(CountsView::from).unwrap_or_default();
        let phases: Vec<PhaseView> = rollout.phases.iter().map(PhaseView::from).collect();
        let machines =
            rollout.machines.iter().map(|machine| RolloutMachineView::new(machine, &phases)).collect();
        RolloutView {
            id: rollout.id,
            environment: rollout.environment.clone(),
            revision: rollout.revision_number,
            revision_id: rollout.revision_id.clone(),
            kind: non_empty(&rollout.kind).unwrap_or_else(|| "rollout".to_owned()),
            undo_of_revision: (rollout.undo_of_revision != 0).then_some(rollout.undo_of_revision),
            state: state_name(rollout.state),
            reason: rollout.reason.clone(),
            budget_exceeded: rollout.budget_exceeded,
            stalled: rollout.stalled,
            created_at: seconds(rollout.created_at.as_ref()),
            created_by: rollout.created_by.clone(),
            finished_at: seconds(rollout.finished_at.as_ref()),
            soak_until: seconds(rollout.soak_until.as_ref()),
            policy: rollout.policy.as_ref().map(PolicyView::from).unwrap_or_default(),
            limits: LimitsView {
                max_unavailable: rollout.max_unavailable,
                max_parallel_prepare: rollout.max_parallel_prepare,
                failure_budget: rollout.failure_budget,
            },
            unavailable: counts.activating + counts.rolling_back,
            counts,
            phases,
            machines,
        }
    }
}

impl From<&pb::RolloutEvent> for EventView {
    fn from(event: &pb::RolloutEvent) -> Self {
        EventView {
            id: event.id,
            rollout: event.rollout_id,
            at: seconds(event.at.as_ref()),
            machine: non_empty(&event.machine_id),
            kind: event.kind.clone(),
            from: non_empty(&event.from),
            detail: event.detail.clone(),
            phase: event.phase,
        }
    }
}

impl RolloutView {
    /// `render-prod@3`.
    pub fn label(&self) -> String {
        format!("{}@{}", self.environment, self.revision)
    }

    /// `rollout 7 of render-prod@3`.
    pub fn title(&self) -> String {
        format!("rollout {} of {}", self.id, self.label())
    }

    /// `running`, `paused by the failure budget (3 failed)`, `aborted (by alice: bad build)`.
    pub fn state_text(&self) -> String {
        let state = if self.state == "paused" && self.budget_exceeded {
            "paused by the failure budget"
        } else {
            self.state
        };
        let reason = self.reason.lines().map(str::trim).filter(|line| !line.is_empty()).collect::<Vec<_>>();
        if reason.is_empty() { state.to_owned() } else { format!("{state} ({})", reason.join("; ")) }
    }

    /// `max unavailable 20 (10%)`: the machine count, and the policy's share when it
    /// is one.
    pub fn amount_text(name: &str, machines: u32, written: &str) -> String {
        if written.ends_with('%') {
            format!("{name} {machines} ({written})")
        } else {
            format!("{name} {machines}")
        }
    }

    /// `canary 2, max unavailable 20 (10%), failure budget 10 (5%)`.
    pub fn policy_summary(&self) -> String {
        let mut parts = Vec::new();
        if let Some(canary) = self.policy.canary {
            parts.push(format!("canary {canary}"));
        }
        parts.push(Self::amount_text(
            "max unavailable",
            self.limits.max_unavailable,
            &self.policy.max_unavailable,
        ));
        parts.push(Self::amount_text(
            "failure budget",
            self.limits.failure_budget,
            &self.policy.failure_budget,
        ));
        parts.join(", ")
    }

    /// The whole policy for `rollout status`.
    pub fn policy_details(&self) -> String {
        let yes_no = |value: Option<bool>| match value {
            Some(true) => "yes",
            Some(false) => "no",
            None => "-",
        };
        let soak = match self.policy.soak.as_str() {
            "" | "0s" => "none",
            soak => soak,
        };
        let mut parts = vec![self.policy_summary()];
        parts.push(Self::amount_text(
            "max parallel prepare",
            self.limits.max_parallel_prepare,
            &self.policy.max_parallel_prepare,
        ));
        parts.push(format!("soak {soak}"));
        parts.push(format!("auto rollback {}", yes_no(self.policy.auto_rollback)));
        if !self.policy.progress_deadline.is_empty() {
            parts.push(format!("progress deadline {}", self.policy.progress_deadline));
        }
        parts.push(format!("stalled is failure {}", yes_no(self.policy.stalled_is_failure)));
        parts.join(", ")
    }
}

#[cfg(test)]
pub mod tests;
