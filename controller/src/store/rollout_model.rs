//! What a rollout is, as the store keeps it: the rollout, one row per machine, and
//! the append-only events. The engine's decisions are functions of these alone.

use std::fmt;
use std::str::FromStr;

use comfyfleet_config::MachineId;
use comfyfleet_config::spec::{RolloutPolicy, SpecDigest};
use jiff::Timestamp;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RolloutState {
    Running,
    Paused,
    Succeeded,
    Aborted,
}

impl RolloutState {
    pub fn as_str(self) -> &'static str {
        match self {
            RolloutState::Running => "running",
            RolloutState::Paused => "paused",
            RolloutState::Succeeded => "succeeded",
            RolloutState::Aborted => "aborted",
        }
    }

    /// Running or paused: the engine still drives it.
    pub fn is_open(self) -> bool {
        matches!(self, RolloutState::Running | RolloutState::Paused)
    }
}

impl FromStr for RolloutState {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        Ok(match text {
            "running" => RolloutState::Running,
            "paused" => RolloutState::Paused,
            "succeeded" => RolloutState::Succeeded,
            "aborted" => RolloutState::Aborted,
            other => return Err(format!("`{other}` is not a rollout state")),
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RolloutKind {
    Rollout,
    Undo,
}

impl RolloutKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RolloutKind::Rollout => "rollout",
            RolloutKind::Undo => "undo",
        }
    }
}

impl FromStr for RolloutKind {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "rollout" => Ok(RolloutKind::Rollout),
            "undo" => Ok(RolloutKind::Undo),
            other => Err(format!("`{other}` is not a rollout kind")),
        }
    }
}

/// Where one machine stands in a rollout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum MachineStatus {
    Pending,
    Preparing,
    Prepared,
    Activating,
    Active,
    Failed,
    RollingBack,
    RolledBack,
    Skipped,
}

impl MachineStatus {
    pub const ALL: [MachineStatus; 9] = [
        MachineStatus::Pending,
        MachineStatus::Preparing,
        MachineStatus::Prepared,
        MachineStatus::Activating,
        MachineStatus::Active,
        MachineStatus::Failed,
        MachineStatus::RollingBack,
        MachineStatus::RolledBack,
        MachineStatus::Skipped,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            MachineStatus::Pending => "pending",
            MachineStatus::Preparing => "preparing",
            MachineStatus::Prepared => "prepared",
            MachineStatus::Activating => "activating",
            MachineStatus::Active => "active",
            MachineStatus::Failed => "failed",
            MachineStatus::RollingBack => "rolling_back",
            MachineStatus::RolledBack => "rolled_back",
            MachineStatus::Skipped => "skipped",
        }
    }

    /// Nothing more happens to the machine in this rollout (unless it is resumed).
    pub fn is_done(self) -> bool {
        matches!(
            self,
            MachineStatus::Active
                | MachineStatus::Failed
                | MachineStatus::RolledBack
                | MachineStatus::Skipped
        )
    }

    /// Counts as unavailable: switching revisions, from drain to health check.
    pub fn is_unavailable(self) -> bool {
        matches!(self, MachineStatus::Activating | MachineStatus::RollingBack)
    }

    /// Failed in this rollout, whether or not it is back on its old revision.
    pub fn is_failure(self) -> bool {
        matches!(self, MachineStatus::Failed | MachineStatus::RollingBack | MachineStatus::RolledBack)
    }

    /// Waiting on the agent: the progress deadline applies.
    pub fn is_in_flight(self) -> bool {
        matches!(self, MachineStatus::Preparing | MachineStatus::Activating | MachineStatus::RollingBack)
    }
}

impl fmt::Display for MachineStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for MachineStatus {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        MachineStatus::ALL
            .into_iter()
            .find(|status| status.as_str() == text)
            .ok_or_else(|| format!("`{text}` is not a rollout machine status"))
    }
}

/// A revision of an environment, by number.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RevisionRef {
    pub environment: String,
    pub number: u32,
}

impl fmt::Display for RevisionRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.environment, self.number)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct RolloutRecord {
    pub id: u64,
    pub environment: String,
    pub revision_number: u32,
    pub revision_id: SpecDigest,
    pub kind: RolloutKind,
    pub policy: RolloutPolicy,
    pub state: RolloutState,
    pub reason: String,
    pub budget_exceeded: bool,
    /// Only the machines named at start: machines that join later are not added.
    pub named_machines: bool,
    /// Machines per phase after the canary (max_unavailable at start).
    pub batch_size: u32,
    pub undo_of: Option<u32>,
    pub stalled: bool,
    pub created_at: Timestamp,
    pub created_by: String,
    pub finished_at: Option<Timestamp>,
}

impl RolloutRecord {
    /// `render-prod@3`.
    pub fn label(&self) -> String {
        format!("{}@{}", self.environment, self.revision_number)
    }

    pub fn target(&self) -> RevisionRef {
        RevisionRef { environment: self.environment.clone(), number: self.revision_number }
    }
}

/// One machine's place in a rollout.
#[derive(Debug, Clone, PartialEq)]
pub struct MachineRow {
    pub machine_id: MachineId,
    pub ordinal: u32,
    pub phase: u32,
    pub status: MachineStatus,
    /// The assignment generation this rollout gave the machine last; 0: none yet.
    pub generation: u64,
    pub plan_json: String,
    pub torch: String,
    /// What the machine ran when it joined the rollout.
    pub from: Option<RevisionRef>,
    pub detail: String,
    pub since: Timestamp,
    pub activations: u32,
    pub attempts: u32,
    pub rollback_tried: bool,
    pub stalled: bool,
    pub joined: bool,
}

/// A machine row as read back, with the machine's hostname.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredMachineRow {
    pub row: MachineRow,
    pub hostname: String,
}

/// What kind of assignment a transition makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AssignKind {
    /// The rollout's revision, build only.
    Prepare,
    /// The rollout's revision, and switch to it.
    Activate,
    /// Back to what the machine ran before (the plan is resolved by the engine).
    Rollback,
}

/// One row written (inserted or replaced), maybe with a new assignment whose
/// generation becomes the row's.
#[derive(Debug, Clone)]
pub struct RowWrite {
    pub row: MachineRow,
    pub assignment: Option<crate::store::NewAssignment>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEvent {
    pub at: Timestamp,
    /// `None` for an event of the rollout itself.
    pub machine_id: Option<MachineId>,
    pub kind: String,
    pub from: String,
    pub detail: String,
    pub phase: u32,
}

impl NewEvent {
    pub fn rollout(at: Timestamp, kind: &str, detail: impl Into<String>) -> Self {
        NewEvent {
            at,
            machine_id: None,
            kind: kind.to_owned(),
            from: String::new(),
            detail: detail.into(),
            phase: 0,
        }
    }

    pub fn machine(at: Timestamp, row: &MachineRow, from: MachineStatus) -> Self {
        NewEvent {
            at,
            machine_id: Some(row.machine_id.clone()),
            kind: row.status.as_str().to_owned(),
            from: from.as_str().to_owned(),
            detail: row.detail.clone(),
            phase: row.phase,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredEvent {
    pub id: u64,
    pub rollout_id: u64,
    pub event: NewEvent,
}

/// The rollout-level fields a step may change.
#[derive(Debug, Clone, PartialEq)]
pub struct RolloutChange {
    pub state: RolloutState,
    pub reason: String,
    pub budget_exceeded: bool,
    pub stalled: bool,
    pub finished_at: Option<Timestamp>,
}

impl RolloutChange {
    pub fn of(record: &RolloutRecord) -> Self {
        RolloutChange {
            state: record.state,
            reason: record.reason.clone(),
            budget_exceeded: record.budget_exceeded,
            stalled: record.stalled,
            finished_at: record.finished_at,
        }
    }

    pub fn apply(&self, record: &mut RolloutRecord) {
        record.state = self.state;
        record.reason.clone_from(&self.reason);
        record.budget_exceeded = self.budget_exceeded;
        record.stalled = self.stalled;
        record.finished_at = self.finished_at;
    }
}

/// Everything one engine step writes, in one transaction.
#[derive(Debug, Clone, Default)]
pub struct RolloutStep {
    pub rows: Vec<RowWrite>,
    pub events: Vec<NewEvent>,
    pub change: Option<RolloutChange>,
}

impl RolloutStep {
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty() && self.events.is_empty() && self.change.is_none()
    }
}

/// A rollout to create, with its rows (none assigned yet).
#[derive(Debug, Clone)]
pub struct NewRollout {
    pub environment: String,
    pub revision_number: u32,
    pub revision_id: SpecDigest,
    pub kind: RolloutKind,
    pub policy: RolloutPolicy,
    pub named_machines: bool,
    pub batch_size: u32,
    pub undo_of: Option<u32>,
    pub created_at: Timestamp,
    pub created_by: String,
    pub rows: Vec<MachineRow>,
    pub events: Vec<NewEvent>,
}
