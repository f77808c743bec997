//! The rollout engine. A rollout moves the machines a spec targets to a new
//! revision: every machine prepares it (bounded by `max_parallel_prepare`; the
//! running environment is untouched), then activates it — canaries first, then
//! batches bounded by `max_unavailable` — with a failure budget, auto-rollback,
//! an optional soak and a progress deadline.
//!
//! One task owns every open rollout ([`engine`]). Agent reports, sessions coming
//! up and operator commands reach it as messages; after each batch of them it asks
//! the pure [`plan::decide`] what to do and writes the answer — row changes, the
//! assignments they make, events — in one store transaction before any agent is
//! told. A controller killed at any moment reloads the same rows, re-reads the
//! stored reports and decides the same way: nothing is done twice, nothing lost.

pub mod api;
mod commands;
mod create;
mod engine;
mod error;
mod join;
pub use crate::store::rollout_model as model;
pub mod plan;
pub(crate) mod report_writer;

use comfyfleet_config::MachineId;
use comfyfleet_config::convergence::Phase;
use jiff::Timestamp;
use tokio::sync::{mpsc, oneshot};

pub use create::{PolicyOverrides, Target, TargetOutcome};
pub use engine::spawn;
pub use error::RolloutError;

use self::model::{NewRollout, RolloutRecord};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Pause,
    Resume,
    Abort,
}

impl Command {
    pub fn as_str(self) -> &'static str {
        match self {
            Command::Pause => "pause",
            Command::Resume => "resume",
            Command::Abort => "abort",
        }
    }
}

/// A rollout the engine created, with the machines it left out because another
/// environment's open rollout holds them.
#[derive(Debug)]
pub struct Created {
    pub record: RolloutRecord,
    pub busy: Vec<(MachineId, String)>,
}

enum Message {
    Report {
        machine: MachineId,
        generation: u64,
        phase: Phase,
        error: String,
        note: String,
        at: Timestamp,
    },
    Connected(MachineId),
    Create {
        rollout: Box<NewRollout>,
        /// Written with the rollout (`{rollout}` in it becomes its id).
        audit: crate::store::AuditEntry,
        reply: oneshot::Sender<Result<Created, RolloutError>>,
    },
    Command {
        id: u64,
        command: Command,
        actor: String,
        reason: String,
        /// Written with the step the command makes.
        audit: crate::store::AuditEntry,
        reply: oneshot::Sender<Result<(), RolloutError>>,
    },
}

/// How the rest of the controller talks to the engine. Cheap to clone; sending
/// never blocks.
#[derive(Clone)]
pub struct Rollouts {
    sender: mpsc::UnboundedSender<Message>,
}

/// The engine's end of [`Rollouts`], for [`spawn`].
pub struct Inbox(mpsc::UnboundedReceiver<Message>);

impl Rollouts {
    pub fn new() -> (Rollouts, Inbox) {
        let (sender, receiver) = mpsc::unbounded_channel();
        (Rollouts { sender }, Inbox(receiver))
    }

    /// An agent's report, already stored.
    pub fn reported(
        &self,
        machine: &MachineId,
        report: &comfyfleet_config::ConvergenceReport,
        at: Timestamp,
    ) {
        let _ = self.sender.send(Message::Report {
            machine: machine.clone(),
            generation: report.generation,
            phase: report.phase,
            error: report.error.clone(),
            note: optimization_note(report),
            at,
        });
    }

    /// A machine's session came up: it may catch up, or join a rollout.
    pub fn connected(&self, machine: &MachineId) {
        let _ = self.sender.send(Message::Connected(machine.clone()));
    }

    async fn create(
        &self,
        rollout: NewRollout,
        audit: crate::store::AuditEntry,
    ) -> Result<Created, RolloutError> {
        let (reply, answer) = oneshot::channel();
        self.sender
            .send(Message::Create { rollout: Box::new(rollout), audit, reply })
            .map_err(|_| RolloutError::EngineStopped)?;
        answer.await.map_err(|_| RolloutError::EngineStopped)?
    }

    async fn command(
        &self,
        id: u64,
        command: Command,
        actor: String,
        reason: String,
        audit: crate::store::AuditEntry,
    ) -> Result<(), RolloutError> {
        let (reply, answer) = oneshot::channel();
        self.sender
            .send(Message::Command { id, command, actor, reason, audit, reply })
            .map_err(|_| RolloutError::EngineStopped)?;
        answer.await.map_err(|_| RolloutError::EngineStopped)?
    }
}

/// The optimisations that did not verify, for the machine's row: `brokenattn failed`.
fn optimization_note(report: &comfyfleet_config::ConvergenceReport) -> String {
    use comfyfleet_config::convergence::OptimizationState;
    let failed: Vec<&str> = report
        .optimizations
        .iter()
        .filter(|outcome| outcome.state == OptimizationState::Failed)
        .map(|outcome| outcome.name.as_str())
        .collect();
    if failed.is_empty() {
        String::new()
    } else {
        format!("optimizations not verified: {}", failed.join(", "))
    }
}
