//! Machines that appear after a rollout started: enrolled later, or back with
//! labels that now match. A running rollout whose selector takes such a machine
//! adds it as one more row (it goes through the same batching); once the
//! environment's newest rollout has succeeded, a machine with nothing assigned gets
//! that rollout's revision directly, as a machine that serves nothing yet loses
//! nothing by switching.

use comfyfleet_config::assignment::AssignmentReason;
use comfyfleet_config::resolve::{Resolution, Resolver};
use comfyfleet_config::{MachineFacts, MachineId, MachineRecord};
use jiff::Timestamp;

use super::create::{current_revision, new_row};
use super::engine::Engine;
use super::model::{MachineStatus, NewEvent, RolloutState, RolloutStep, RowWrite};
use super::plan;
use crate::store::NewAssignment;
use crate::use_cases::machines::lookup::machine_record;

impl Engine {
    /// A machine no open rollout holds came online. Returns the rollout it joined.
    pub(super) async fn join(&mut self, machine: &MachineId) -> Option<u64> {
        let running = self
            .runs
            .values()
            .any(|run| !run.record.named_machines && run.record.state == RolloutState::Running);
        if !running && self.settled.is_empty() {
            return None;
        }
        let stored = match self.state.store.get_machine(machine).await {
            Ok(Some(stored)) if stored.revoked_at.is_none() => stored,
            Ok(_) => return None,
            Err(error) => {
                tracing::warn!(%error, machine_id = %machine, "cannot read a machine to see whether it joins a rollout");
                return None;
            }
        };
        let assigned_environment =
            stored.assignment.as_ref().map(|assignment| assignment.environment.clone());
        let record = machine_record(&self.state.presence, stored);
        if running && let Some(id) = self.join_running(&record, assigned_environment.as_deref()).await {
            return Some(id);
        }
        if assigned_environment.is_none() {
            self.join_settled(&record).await;
        }
        None
    }

    async fn join_running(&mut self, record: &MachineRecord, assigned: Option<&str>) -> Option<u64> {
        let current = current_revision(record);
        let facts = MachineFacts::from(record);
        let now = Timestamp::now();
        for run in self.runs.values_mut() {
            if run.record.named_machines || run.record.state != RolloutState::Running {
                continue;
            }
            if assigned.is_some_and(|environment| environment != run.record.environment) {
                continue;
            }
            let Resolution::Planned(plan) = Resolver::new(&run.spec).resolve(&facts) else { continue };
            let ordinal = u32::try_from(run.rows.len()).unwrap_or(u32::MAX);
            let mut row = new_row(record.id.clone(), &plan, current.clone(), now);
            row.ordinal = ordinal;
            row.phase = plan::phase_of(ordinal, run.record.policy.canary, run.record.batch_size).max(1);
            row.detail = "joined after the rollout started".to_owned();
            row.joined = true;
            if current.as_ref().is_some_and(|from| *from == run.record.target()) {
                row.status = MachineStatus::Active;
                row.detail = "joined; already runs this revision".to_owned();
            }
            let mut event = NewEvent::machine(now, &row, MachineStatus::Pending);
            event.kind = "joined".to_owned();
            let step = RolloutStep {
                rows: vec![RowWrite { row: row.clone(), assignment: None }],
                events: vec![event],
                change: None,
            };
            let id = run.record.id;
            if let Err(error) = self.state.store.apply_rollout_step(id, &step).await {
                tracing::error!(rollout = id, %error, "cannot add a joining machine");
                return None;
            }
            tracing::info!(rollout = id, machine_id = %record.id, "machine joined the rollout");
            run.index.insert(record.id.clone(), run.rows.len());
            run.rows.push(row);
            self.owners.insert(record.id.clone(), id);
            return Some(id);
        }
        None
    }

    /// Gives a machine with nothing assigned the revision of the newest succeeded
    /// rollout whose selector takes it.
    async fn join_settled(&mut self, record: &MachineRecord) {
        let mut settled: Vec<_> = self.settled.values().cloned().collect();
        settled.sort_by_key(|rollout| std::cmp::Reverse(rollout.id));
        let facts = MachineFacts::from(record);
        for rollout in settled {
            let Ok(found) = self.spec(&rollout.target()).await else { continue };
            let Resolution::Planned(plan) = Resolver::new(&found.1).resolve(&facts) else { continue };
            let by = format!("rollout {} ({})", rollout.id, rollout.created_by);
            let Ok(assignment) = NewAssignment::planned(&found.0, &plan, true, AssignmentReason::Rollout, by)
            else {
                continue;
            };
            let assigned = match self.state.store.assign(&record.id, &assignment).await {
                Ok(assigned) => assigned,
                Err(error) => {
                    tracing::error!(%error, machine_id = %record.id, "cannot assign a machine that joined");
                    return;
                }
            };
            let mut event = NewEvent::rollout(
                Timestamp::now(),
                "joined",
                format!("{} joined after the rollout; assigned {}", record.id, rollout.label()),
            );
            event.machine_id = Some(record.id.clone());
            if let Err(error) = self
                .state
                .store
                .apply_rollout_step(rollout.id, &RolloutStep { events: vec![event], ..Default::default() })
                .await
            {
                tracing::warn!(%error, "cannot record a joining machine's event");
            }
            tracing::info!(rollout = rollout.id, machine_id = %record.id, generation = assigned.generation, "machine joined after the rollout");
            self.state.presence.notify_assignment(&record.id);
            return;
        }
    }
}
