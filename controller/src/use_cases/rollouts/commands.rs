//! What operators ask of the engine: a new rollout (superseding an open one of the
//! same environment), pause, resume (retrying what failed) and abort (returning
//! machines that had not switched to what they run). Each is one store step, like
//! the engine's own decisions.

use std::collections::HashMap;

use comfyfleet_config::MachineId;
use jiff::Timestamp;

use super::engine::Engine;
use super::model::{MachineStatus, NewEvent, NewRollout, RolloutChange, RolloutState, RolloutStep, RowWrite};
use super::{Command, Created, RolloutError};

/// A rollout write that failed: `unavailable` while the lead changes hands (the call
/// may be tried again), else internal.
fn step_error(error: crate::store::StoreError) -> RolloutError {
    match error {
        crate::store::StoreError::NotLeader => RolloutError::LeadLost(error),
        other => RolloutError::Store(other),
    }
}

impl Engine {
    pub(super) async fn create(
        &mut self,
        mut rollout: NewRollout,
        audit: crate::store::AuditEntry,
    ) -> Result<Created, RolloutError> {
        let superseded: Vec<u64> = self
            .runs
            .values()
            .filter(|run| run.record.environment == rollout.environment)
            .map(|run| run.record.id)
            .collect();
        for id in superseded {
            self.command(id, Command::Abort, &rollout.created_by, "superseded by a new rollout", None)
                .await?;
        }
        let mut busy = Vec::new();
        rollout.rows.retain(|row| match self.owners.get(&row.machine_id) {
            Some(other) => {
                busy.push((
                    row.machine_id.clone(),
                    format!("in running rollout {other} of another environment"),
                ));
                false
            }
            None => true,
        });
        let record = crate::store::audited(audit, self.state.store.create_rollout(&rollout))
            .await
            .map_err(step_error)?;
        tracing::info!(rollout = record.id, revision = %record.label(), machines = rollout.rows.len(), by = %record.created_by, "rollout started");
        self.adopt_rows(record.clone(), rollout.rows).await?;
        self.settled.remove(&record.environment);
        Ok(Created { record, busy })
    }

    pub(super) async fn command(
        &mut self,
        id: u64,
        command: Command,
        actor: &str,
        reason: &str,
        audit: Option<crate::store::AuditEntry>,
    ) -> Result<(), RolloutError> {
        let Some(run) = self.runs.get(&id) else {
            let record = self.state.store.rollout(id).await?;
            return Err(match record {
                Some(record) => {
                    RolloutError::NotOpen { id, state: record.state.as_str(), command: command.as_str() }
                }
                None => RolloutError::NoSuchRollout { rollout: id.to_string() },
            });
        };
        let now = Timestamp::now();
        let mut change = RolloutChange::of(&run.record);
        let mut step = RolloutStep::default();
        let said = if reason.is_empty() { String::new() } else { format!(": {reason}") };
        match command {
            Command::Pause => {
                if run.record.state == RolloutState::Paused {
                    return Ok(());
                }
                change.state = RolloutState::Paused;
                change.reason = format!("paused by {actor}{said}");
                change.budget_exceeded = false;
                step.events.push(NewEvent::rollout(now, "paused", change.reason.clone()));
            }
            Command::Resume => {
                if run.record.state == RolloutState::Running {
                    return Ok(());
                }
                change.state = RolloutState::Running;
                change.reason = String::new();
                change.budget_exceeded = false;
                let mut retried = 0;
                for row in &run.rows {
                    let retry = row.status.is_failure() && row.status != MachineStatus::RollingBack;
                    if !retry && !row.stalled {
                        continue;
                    }
                    let mut row = row.clone();
                    let from = row.status;
                    row.stalled = false;
                    if retry {
                        retried += 1;
                        row.status = MachineStatus::Pending;
                        row.attempts += 1;
                        row.rollback_tried = false;
                        row.detail = format!("attempt {}", row.attempts);
                        row.since = now;
                        step.events.push(NewEvent::machine(now, &row, from));
                    }
                    step.rows.push(RowWrite { row, assignment: None });
                }
                step.events.push(NewEvent::rollout(
                    now,
                    "resumed",
                    format!("by {actor}; {retried} failed machines retried"),
                ));
            }
            Command::Abort => {
                change.state = RolloutState::Aborted;
                change.reason = format!("aborted by {actor}{said}");
                change.finished_at = Some(now);
                let record = run.record.clone();
                let rows = run.rows.clone();
                for row in rows {
                    if row.status.is_done() {
                        continue;
                    }
                    let mut row = row;
                    let from = row.status;
                    let mut assignment = None;
                    row.status = MachineStatus::Skipped;
                    row.since = now;
                    row.detail = match from {
                        MachineStatus::Preparing | MachineStatus::Prepared => {
                            match self.rollback(&record, &row).await {
                                Ok(back) => {
                                    assignment = Some(back);
                                    "aborted before it switched; it keeps what it ran".to_owned()
                                }
                                Err(_) => "aborted before it switched".to_owned(),
                            }
                        }
                        MachineStatus::Activating | MachineStatus::RollingBack => {
                            "was switching when the rollout was aborted".to_owned()
                        }
                        _ => "aborted".to_owned(),
                    };
                    step.events.push(NewEvent::machine(now, &row, from));
                    step.rows.push(RowWrite { row, assignment });
                }
                step.events.push(NewEvent::rollout(now, "aborted", change.reason.clone()));
            }
        }
        step.change = Some(change.clone());
        let written = crate::store::maybe_audited(audit, self.state.store.apply_rollout_step(id, &step))
            .await
            .map_err(step_error)?;
        tracing::info!(rollout = id, command = command.as_str(), by = actor, "rollout command");
        let Some(run) = self.runs.get_mut(&id) else { return Ok(()) };
        let generations: HashMap<&MachineId, u64> =
            written.iter().map(|assigned| (&assigned.machine_id, assigned.generation)).collect();
        for write in step.rows {
            let mut row = write.row;
            if let Some(generation) = generations.get(&row.machine_id) {
                row.generation = *generation;
            }
            if let Some(index) = run.machine_index(&row.machine_id) {
                run.rows[index] = row;
            }
        }
        change.apply(&mut run.record);
        for assigned in &written {
            self.state.presence.notify_assignment(&assigned.machine_id);
        }
        if !change.state.is_open() {
            self.close(id);
        }
        Ok(())
    }
}
