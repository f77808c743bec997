//! A simulated agent's converger: the real agent's semantics (`agent/src/converge.rs`)
//! with sleeps for work. It prepares what is not built yet, activates when asked,
//! treats a revision it already runs as nothing to do, and records a failure so the
//! same generation is not retried, in the agent's real journal so that a restarted
//! simulator finds each machine where it left it.
//!
//! Work is serial: a newer generation of the same revision joins the preparation in
//! progress, another revision abandons it; an activation always runs to its end.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use comfyfleet_agent::journal::{Failure, Journal};
use comfyfleet_agent::report::Reporter;
use comfyfleet_config::convergence::{ConvergenceReport, Phase, StepReport, StepState};
use comfyfleet_config::{AssignmentRecord, SpecDigest};
use jiff::Timestamp;
use tokio::sync::watch;

use super::events::{Event, EventKind, EventLog};
use super::failures::{Failer, SeededRandom};

/// The simulated prepare and activation steps, named like the real ones.
const PREPARE_STEP: &str = "torch";
const ACTIVATE_STEP: &str = "health";

/// How every simulated agent behaves: shared, and changed at run time by `fix`.
#[derive(Debug)]
pub struct Behaviour {
    pub prepare: Duration,
    pub activate: Duration,
    /// 0.2: each duration is stretched or shrunk by up to 20 %.
    pub jitter: f64,
    /// Failers succeed with the first revision they are ever assigned, so a fleet
    /// can be brought up on a baseline before failures begin.
    pub spare_first_revision: bool,
    fixed: AtomicBool,
}

impl Behaviour {
    pub fn new(prepare: Duration, activate: Duration, jitter: f64, spare_first_revision: bool) -> Self {
        Self { prepare, activate, jitter, spare_first_revision, fixed: AtomicBool::new(false) }
    }

    /// No simulated failure from now on.
    pub fn fix(&self) {
        self.fixed.store(true, Ordering::Relaxed);
    }

    fn fixed(&self) -> bool {
        self.fixed.load(Ordering::Relaxed)
    }
}

pub struct SimulatedConverger {
    pub agent: usize,
    pub machine_id: String,
    pub failer: Failer,
    pub behaviour: Arc<Behaviour>,
    pub reporter: Reporter,
    pub journal: Journal,
    pub events: EventLog,
    pub random: SeededRandom,
}

/// What the simulated machine has.
#[derive(Debug, Default)]
struct Machine {
    current: Option<String>,
    prepared: HashSet<String>,
    /// Revisions that ran healthy here at some point.
    activated: HashSet<String>,
    /// `environment@number` of the revisions seen, for messages.
    names: HashMap<String, String>,
    first_revision: Option<String>,
    handled_generation: Option<u64>,
}

/// Why a preparation stopped early: another revision was assigned (or the agent is
/// going away).
struct Superseded;

/// How a preparation ended.
enum Prepared {
    /// With the assignment it ended up serving (a newer generation of the same
    /// revision joins the preparation in progress).
    Built(AssignmentRecord),
    /// Failed, for this generation.
    Failed(u64),
}

impl SimulatedConverger {
    pub async fn run(mut self, mut desired: watch::Receiver<Option<AssignmentRecord>>) {
        let mut machine = self.restore();
        loop {
            let record = desired.borrow_and_update().clone();
            if let Some(record) = record
                && machine.handled_generation != Some(record.generation)
            {
                // Superseded or not, the loop looks at the newest assignment next.
                let _ = self.converge(record, &mut machine, &mut desired).await;
                continue;
            }
            if desired.changed().await.is_err() {
                return;
            }
        }
    }

    /// The machine as the journal left it (an earlier run of the simulator).
    fn restore(&self) -> Machine {
        let activations = self.journal.activations();
        let mut machine = Machine {
            current: activations.first().map(|activation| activation.revision_id.to_string()),
            ..Machine::default()
        };
        for activation in activations {
            machine.prepared.insert(activation.revision_id.to_string());
            machine.activated.insert(activation.revision_id.to_string());
        }
        machine.first_revision = machine.current.clone();
        machine
    }

    async fn converge(
        &mut self,
        mut record: AssignmentRecord,
        machine: &mut Machine,
        desired: &mut watch::Receiver<Option<AssignmentRecord>>,
    ) -> Result<(), Superseded> {
        let mut report = ConvergenceReport::idle(Timestamp::now());
        report.generation = record.generation;
        report.environment = record.environment.clone();
        report.revision_number = record.revision_number;
        let Ok(digest) = record.revision_id.parse::<SpecDigest>() else {
            report.phase = Phase::Failed;
            report.error = format!(
                "the controller sent an assignment this agent cannot use: revision id `{}` is not a sha256",
                record.revision_id
            );
            self.reporter.replace(report);
            machine.handled_generation = Some(record.generation);
            return Ok(());
        };
        report.revision_id = Some(digest.clone());
        let revision = record.revision_id.clone();
        machine.names.insert(revision.clone(), format!("{}@{}", record.environment, record.revision_number));
        machine.first_revision.get_or_insert_with(|| revision.clone());
        if let Some(failure) = self.journal.failure()
            && failure.generation == record.generation
            && failure.revision_id == digest
        {
            // Failed before (perhaps before a restart): not retried until the
            // controller assigns again.
            report.phase = Phase::Failed;
            report.error = failure.error;
            self.reporter.replace(report);
            machine.handled_generation = Some(record.generation);
            return Ok(());
        }

        let is_current = machine.current.as_ref() == Some(&revision);
        if is_current || machine.prepared.contains(&revision) {
            // Built already: nothing to prepare, perhaps nothing to do at all.
            report.phase = match (record.activate, is_current) {
                (false, _) => Phase::Prepared,
                (true, true) => Phase::Active,
                (true, false) => Phase::Activating,
            };
            self.reporter.replace(report);
        } else {
            report.phase = Phase::Preparing;
            report.steps = vec![StepReport::pending(PREPARE_STEP)];
            self.reporter.replace(report);
            match self.prepare(record, machine, desired).await? {
                Prepared::Built(built) => record = built,
                Prepared::Failed(generation) => {
                    machine.handled_generation = Some(generation);
                    return Ok(());
                }
            }
            if !record.activate {
                self.reporter.update(|report| report.phase = Phase::Prepared);
            }
        }
        if record.activate && machine.current.as_ref() != Some(&revision) {
            self.activate(&record, &digest, machine).await;
        }
        machine.handled_generation = Some(record.generation);
        Ok(())
    }

    /// Sleeps the preparation, following newer generations of the same revision.
    async fn prepare(
        &mut self,
        mut record: AssignmentRecord,
        machine: &mut Machine,
        desired: &mut watch::Receiver<Option<AssignmentRecord>>,
    ) -> Result<Prepared, Superseded> {
        let step = self.reporter.begin(PREPARE_STEP);
        self.emit(EventKind::PrepareStarted, &record, None);
        let duration = self.random.jittered(self.behaviour.prepare, self.behaviour.jitter);
        let deadline = tokio::time::Instant::now() + duration;
        loop {
            tokio::select! {
                () = tokio::time::sleep_until(deadline) => break,
                changed = desired.changed() => {
                    if changed.is_err() {
                        return Err(Superseded); // the agent is going away
                    }
                    let Some(newer) = desired.borrow_and_update().clone() else { continue };
                    if newer.generation == record.generation {
                        continue;
                    }
                    if newer.revision_id != record.revision_id {
                        tracing::debug!(agent = self.agent, generation = newer.generation, "preparation abandoned for another revision");
                        return Err(Superseded);
                    }
                    record = newer;
                    let generation = record.generation;
                    self.reporter.update(|report| report.generation = generation);
                    self.emit(EventKind::PrepareStarted, &record, None);
                }
            }
        }
        let revision = record.revision_id.clone();
        if self.fails(self.failer.prepare, &revision, machine) {
            let error = "simulated failure: install-torch exited with status 1";
            step.finish(StepState::Failed, error);
            self.fail(&record, error, EventKind::PrepareFailed);
            return Ok(Prepared::Failed(record.generation));
        }
        step.finish(StepState::Done, format!("simulated in {} ms", duration.as_millis()));
        machine.prepared.insert(revision);
        self.emit(EventKind::Prepared, &record, None);
        Ok(Prepared::Built(record))
    }

    /// Sleeps the switch and health check. Not interruptible: a switch always ends
    /// consistent, as in the real agent.
    async fn activate(&mut self, record: &AssignmentRecord, digest: &SpecDigest, machine: &mut Machine) {
        self.reporter.update(|report| {
            report.phase = Phase::Activating;
            report.steps.retain(|step| step.name != ACTIVATE_STEP);
            report.steps.push(StepReport::pending(ACTIVATE_STEP));
        });
        let step = self.reporter.begin(ACTIVATE_STEP);
        self.emit(EventKind::ActivationStarted, record, None);
        let duration = self.random.jittered(self.behaviour.activate, self.behaviour.jitter);
        tokio::time::sleep(duration).await;
        let revision = &record.revision_id;
        if !machine.activated.contains(revision) && self.fails(self.failer.activate, revision, machine) {
            let previous = machine
                .current
                .as_ref()
                .map(|current| machine.names.get(current).cloned().unwrap_or_else(|| short(current)))
                .unwrap_or_else(|| "nothing (no environment ran before)".to_owned());
            let error = format!("simulated failure: health check failed; switched back to {previous}");
            step.finish(StepState::Failed, &error);
            self.fail(record, &error, EventKind::ActivationFailed);
            return;
        }
        step.finish(StepState::Done, format!("simulated in {} ms", duration.as_millis()));
        machine.current = Some(revision.clone());
        machine.activated.insert(revision.clone());
        if let Err(error) = self.journal.record_activation(digest, Timestamp::now()) {
            tracing::warn!(agent = self.agent, %error, "cannot journal the activation");
        }
        self.reporter.update(|report| report.phase = Phase::Active);
        self.emit(EventKind::Activated, record, None);
    }

    /// Whether a failer fails now: not once fixed, not with a revision spared.
    fn fails(&self, failer: bool, revision: &str, machine: &Machine) -> bool {
        let spared =
            self.behaviour.spare_first_revision && machine.first_revision.as_deref() == Some(revision);
        failer && !spared && !self.behaviour.fixed()
    }

    fn fail(&self, record: &AssignmentRecord, error: &str, kind: EventKind) {
        if let Ok(revision_id) = record.revision_id.parse() {
            let failure = Failure {
                generation: record.generation,
                revision_id,
                error: error.to_owned(),
                at: Timestamp::now(),
            };
            if let Err(error) = self.journal.set_failure(&failure) {
                tracing::warn!(agent = self.agent, %error, "cannot record the failure");
            }
        }
        self.reporter.update(|report| {
            report.phase = Phase::Failed;
            report.error = error.to_owned();
        });
        self.emit(kind, record, Some(error));
    }

    fn emit(&self, kind: EventKind, record: &AssignmentRecord, error: Option<&str>) {
        let mut event = Event::new(self.agent, &self.machine_id, kind).about(record);
        event.error = error.map(str::to_owned);
        self.events.emit(event);
    }
}

fn short(revision: &str) -> String {
    revision.get(..12).unwrap_or(revision).to_owned()
}

#[cfg(test)]
mod tests;
