//! The task that drives every open rollout. Its memory is a cache of the store:
//! each change is written (one transaction per step) before agents hear of it, and
//! at start it is rebuilt from the rows and the agents' stored reports.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use comfyfleet_config::assignment::AssignmentReason;
use comfyfleet_config::convergence::Phase;
use comfyfleet_config::resolve::Resolver;
use comfyfleet_config::spec::{Spec, SpecFormat};
use comfyfleet_config::text::Escaped;
use comfyfleet_config::{MachineFacts, MachineId};
use jiff::Timestamp;
use tokio::sync::mpsc::error::TryRecvError;

use super::model::{
    AssignKind, MachineRow, MachineStatus, NewEvent, RevisionRef, RolloutRecord, RolloutState, RolloutStep,
    RowWrite,
};
use super::plan::{self, Context};
use super::{Inbox, Message, RolloutError};
use crate::store::{NewAssignment, StoreResult, StoredRevision};
use crate::use_cases::ControllerState;
use crate::use_cases::machines::lookup::machine_record;

/// How often every open rollout is looked at even when nothing was reported:
/// progress deadlines, soaks, machines coming back.
const TICK: Duration = Duration::from_millis(500);
/// A step taking longer than this to write is logged with its size.
const SLOW_STEP: Duration = Duration::from_millis(100);
/// Steps quicker than this do not make the engine wait before the next batch.
const PAUSE_FLOOR: Duration = Duration::from_millis(2);
/// The longest the engine waits for more reports before stepping.
const MAX_PAUSE: Duration = Duration::from_millis(250);
/// Messages taken in one batch before the rollouts they touch are stepped.
const BATCH: usize = 20_000;
/// How many recent rollouts are read at start to find each environment's newest.
const SETTLED_LOOKBACK: u32 = 10_000;

pub(super) struct Run {
    pub(super) record: RolloutRecord,
    pub(super) spec: Arc<Spec>,
    pub(super) rows: Vec<MachineRow>,
    pub(super) index: HashMap<MachineId, usize>,
    /// Rows changed by reports and not yet written, with the status each left.
    dirty: BTreeMap<usize, MachineStatus>,
    progress: HashMap<MachineId, Timestamp>,
}

impl Run {
    pub(super) fn machine_index(&self, machine: &MachineId) -> Option<usize> {
        self.index.get(machine).copied()
    }
}

pub(super) struct Engine {
    pub(super) state: Arc<ControllerState>,
    pub(super) runs: BTreeMap<u64, Run>,
    pub(super) owners: HashMap<MachineId, u64>,
    specs: HashMap<RevisionRef, Arc<(StoredRevision, Spec)>>,
    /// Per environment, its newest rollout if that one succeeded: machines that
    /// appear later and have nothing assigned get its revision.
    pub(super) settled: HashMap<String, RolloutRecord>,
}

/// Starts the engine. While `leading` says this controller leads the fleet (always,
/// with one controller) it loads every open rollout and serves `inbox`; when the lead
/// passes to another controller it forgets them, and takes them up again from the
/// store if the lead comes back. Ends when every sender is gone.
pub fn spawn(
    state: Arc<ControllerState>,
    mut inbox: Inbox,
    mut leading: tokio::sync::watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            // Following: what arrives here is the leader's to act on (it hears of
            // reports and sessions through the database).
            while !*leading.borrow_and_update() {
                tokio::select! {
                    changed = leading.changed() => if changed.is_err() { return },
                    message = inbox.0.recv() => match message {
                        None => return,
                        Some(message) => refuse(message),
                    },
                }
            }
            tracing::info!("this controller leads: the rollout engine starts");
            let mut engine = Engine {
                state: state.clone(),
                runs: BTreeMap::new(),
                owners: HashMap::new(),
                specs: HashMap::new(),
                settled: HashMap::new(),
            };
            if let Err(error) = engine.load().await {
                tracing::error!(%error, "cannot load the open rollouts; they continue once the store answers");
            }
            match engine.serve(&mut inbox, &mut leading).await {
                Served::Closed => return,
                Served::Deposed => {
                    tracing::warn!(
                        "this controller no longer leads: its rollout engine stops, the leader's carries on"
                    );
                }
            }
        }
    })
}

/// Answers a call that reached a controller which does not lead.
fn refuse(message: Message) {
    let not_leader = || RolloutError::NotLeading;
    match message {
        Message::Create { reply, .. } => drop(reply.send(Err(not_leader()))),
        Message::Command { reply, .. } => drop(reply.send(Err(not_leader()))),
        Message::Report { .. } | Message::Connected(_) => {}
    }
}

enum Served {
    /// Every sender is gone: the controller is stopping.
    Closed,
    /// Another controller leads now.
    Deposed,
}

fn parse_spec(revision: &StoredRevision) -> Result<Spec, RolloutError> {
    let name = format!("{}@{}", revision.environment, revision.number);
    Spec::parse(&name, &revision.spec_json, SpecFormat::Json).map_err(|errors| {
        RolloutError::Internal(format!("stored revision {name} no longer parses: {errors}"))
    })
}

impl Engine {
    async fn load(&mut self) -> StoreResult<()> {
        let mut seen = std::collections::HashSet::new();
        for record in self.state.store.list_rollouts(None, SETTLED_LOOKBACK).await? {
            if seen.insert(record.environment.clone()) {
                self.settle(record);
            }
        }
        let open = self.state.store.open_rollouts().await?;
        if open.is_empty() {
            return Ok(());
        }
        let reports = self.state.store.all_reports().await?;
        for record in open {
            let id = record.id;
            if let Err(error) = self.adopt(record).await {
                tracing::error!(rollout = id, %error, "cannot load rollout");
            }
        }
        // Reports that arrived before the crash but whose effect was not written.
        for (machine, report, at) in reports {
            let note = super::optimization_note(&report);
            self.report(&machine, report.generation, report.phase, &report.error, &note, at);
        }
        let ids: Vec<u64> = self.runs.keys().copied().collect();
        for id in ids {
            self.step(id).await;
        }
        tracing::info!(rollouts = self.runs.len(), "open rollouts loaded");
        Ok(())
    }

    /// Takes an open rollout into memory, its rows read from the store.
    pub(super) async fn adopt(&mut self, record: RolloutRecord) -> Result<(), RolloutError> {
        let rows: Vec<MachineRow> =
            self.state.store.rollout_machines(record.id).await?.into_iter().map(|r| r.row).collect();
        self.adopt_rows(record, rows).await
    }

    /// Takes an open rollout into memory with `rows`, exactly as they are stored (a
    /// rollout just created: reading 10,000 rows back would only cost time).
    pub(super) async fn adopt_rows(
        &mut self,
        record: RolloutRecord,
        rows: Vec<MachineRow>,
    ) -> Result<(), RolloutError> {
        let target = record.target();
        let spec = self.spec(&target).await?;
        let index = rows.iter().enumerate().map(|(i, row)| (row.machine_id.clone(), i)).collect();
        for row in &rows {
            self.owners.insert(row.machine_id.clone(), record.id);
        }
        let spec = Arc::new(spec.1.clone());
        self.runs.insert(
            record.id,
            Run { record, spec, rows, index, dirty: BTreeMap::new(), progress: HashMap::new() },
        );
        Ok(())
    }

    pub(super) async fn spec(
        &mut self,
        revision: &RevisionRef,
    ) -> Result<Arc<(StoredRevision, Spec)>, RolloutError> {
        if let Some(found) = self.specs.get(revision) {
            return Ok(found.clone());
        }
        let stored = self
            .state
            .store
            .environment_revision(&revision.environment, revision.number)
            .await?
            .ok_or_else(|| RolloutError::Internal(format!("revision {revision} is not in the store")))?;
        let spec = parse_spec(&stored)?;
        let found = Arc::new((stored, spec));
        self.specs.insert(revision.clone(), found.clone());
        Ok(found)
    }

    async fn serve(&mut self, inbox: &mut Inbox, leading: &mut tokio::sync::watch::Receiver<bool>) -> Served {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // How long the last steps took: see below.
        let mut pause = Duration::ZERO;
        let mut watching = true;
        loop {
            let mut touched = BTreeSet::new();
            tokio::select! {
                changed = leading.changed(), if watching => match changed {
                    // Nobody can depose this controller any more (one controller).
                    Err(_) => watching = false,
                    Ok(()) => if !*leading.borrow_and_update() {
                        return Served::Deposed;
                    },
                },
                message = inbox.0.recv() => {
                    let Some(message) = message else { return Served::Closed };
                    let urgent = matches!(message, Message::Create { .. } | Message::Command { .. });
                    self.handle(message, &mut touched).await;
                    // Reports stream in while thousands of machines move, and every step
                    // looks at every row of its rollout: stepping after each report would
                    // keep a core busy re-deciding (and starve the sessions pushing the
                    // decisions out). Waiting as long as the last steps took, before
                    // taking everything that arrived meanwhile, keeps deciding to at most
                    // about half of one core; a small fleet's steps take microseconds,
                    // so it waits for nothing. An operator's command never waits.
                    if !urgent && pause > PAUSE_FLOOR {
                        tokio::time::sleep(pause.min(MAX_PAUSE)).await;
                    }
                    for _ in 0..BATCH {
                        match inbox.0.try_recv() {
                            Ok(message) => self.handle(message, &mut touched).await,
                            Err(TryRecvError::Empty) => break,
                            Err(TryRecvError::Disconnected) => return Served::Closed,
                        }
                    }
                }
                _ = tick.tick() => touched.extend(self.runs.keys().copied()),
            }
            let stepping = std::time::Instant::now();
            for id in touched {
                self.step(id).await;
            }
            pause = stepping.elapsed();
        }
    }

    async fn handle(&mut self, message: Message, touched: &mut BTreeSet<u64>) {
        match message {
            Message::Report { machine, generation, phase, error, note, at } => {
                if let Some(id) = self.report(&machine, generation, phase, &error, &note, at) {
                    touched.insert(id);
                }
            }
            Message::Connected(machine) => match self.owners.get(&machine) {
                Some(id) => {
                    touched.insert(*id);
                }
                None => {
                    if let Some(id) = self.join(&machine).await {
                        touched.insert(id);
                    }
                }
            },
            Message::Create { rollout, audit, reply } => {
                let result = self.create(*rollout, audit).await;
                if let Ok(created) = &result {
                    touched.insert(created.record.id);
                }
                let _ = reply.send(result);
            }
            Message::Command { id, command, actor, reason, audit, reply } => {
                let result = self.command(id, command, &actor, &reason, Some(audit)).await;
                touched.insert(id);
                let _ = reply.send(result);
            }
        }
    }

    /// Applies a report to its machine's row in memory; the next step writes it.
    fn report(
        &mut self,
        machine: &MachineId,
        generation: u64,
        phase: Phase,
        error: &str,
        note: &str,
        at: Timestamp,
    ) -> Option<u64> {
        let id = *self.owners.get(machine)?;
        let run = self.runs.get_mut(&id)?;
        let index = run.machine_index(machine)?;
        let row = &mut run.rows[index];
        if generation > row.generation && row.generation != 0 && !row.status.is_done() {
            // Someone assigned the machine something else: it has left the rollout.
            let from = row.status;
            row.status = MachineStatus::Skipped;
            row.detail = format!("assigned outside the rollout (generation {generation})");
            row.since = at;
            run.dirty.entry(index).or_insert(from);
            return Some(id);
        }
        if generation != row.generation {
            return None;
        }
        run.progress.insert(machine.clone(), at);
        let (status, detail) = plan::on_report(row, generation, phase, error, note)?;
        let from = row.status;
        row.status = status;
        row.detail = detail;
        row.since = at.max(row.since);
        run.dirty.entry(index).or_insert(from);
        Some(id)
    }

    /// Decides and writes one step of rollout `id`.
    async fn step(&mut self, id: u64) {
        let now = Timestamp::now();
        let Some(run) = self.runs.get(&id) else { return };
        let decision = self.state.presence.with_online(|online| {
            let context = Context { now, online, progress: &run.progress };
            plan::decide(&run.record, &run.rows, &context)
        });

        let mut step = RolloutStep::default();
        // What reports changed comes first in the events, then the decisions taken on
        // it: replaying the events never shows a machine switching before the one it
        // waited for has finished.
        let mut changed: BTreeMap<usize, (MachineRow, MachineStatus)> = BTreeMap::new();
        for (&index, &from) in &run.dirty {
            let row = run.rows[index].clone();
            if row.status != from || row.stalled {
                step.events.push(NewEvent::machine(now, &row, from));
            }
            changed.insert(index, (row.clone(), row.status));
        }
        let mut assignments: BTreeMap<usize, NewAssignment> = BTreeMap::new();
        let record = run.record.clone();
        // A phase starting reads before its first machine switching.
        let (phases, rollout_events): (Vec<NewEvent>, Vec<NewEvent>) =
            decision.events.into_iter().partition(|event| event.kind == "phase");
        step.events.extend(phases);
        let transitions = decision.transitions.clone();
        for transition in transitions {
            let Some(run) = self.runs.get(&id) else { return };
            let (mut row, _) = changed
                .remove(&transition.index)
                .unwrap_or_else(|| (run.rows[transition.index].clone(), run.rows[transition.index].status));
            let from = row.status;
            let previous = row.status;
            row.status = transition.status;
            row.detail = transition.detail.clone();
            row.stalled = transition.stalled;
            if previous != row.status {
                row.since = now;
            }
            match transition.assign {
                Some(AssignKind::Prepare) => {
                    assignments.insert(transition.index, self.assignment(&record, &row, false));
                }
                Some(AssignKind::Activate) => {
                    row.activations += 1;
                    assignments.insert(transition.index, self.assignment(&record, &row, true));
                }
                Some(AssignKind::Rollback) => {
                    row.rollback_tried = true;
                    match self.rollback(&record, &row).await {
                        Ok(assignment) => {
                            assignments.insert(transition.index, assignment);
                        }
                        Err(reason) => {
                            row.status = MachineStatus::Failed;
                            row.detail = format!("{}; cannot roll back: {reason}", row.detail);
                        }
                    }
                }
                None => {}
            }
            changed.insert(transition.index, (row, from));
        }
        let decided: HashSet<usize> =
            decision.transitions.iter().map(|transition| transition.index).collect();
        for (index, (row, from)) in &changed {
            if decided.contains(index) && (row.status != *from || row.stalled) {
                step.events.push(NewEvent::machine(now, row, *from));
            }
            step.rows.push(RowWrite { row: row.clone(), assignment: assignments.remove(index) });
        }
        step.events.extend(rollout_events);
        step.change = decision.change;
        if step.is_empty() {
            return;
        }
        let writing = std::time::Instant::now();
        let (rows, events) = (step.rows.len(), step.events.len());
        let written = match self.state.store.apply_rollout_step(id, &step).await {
            Ok(written) => written,
            Err(error) => {
                tracing::error!(rollout = id, %error, "cannot write a rollout step; retrying");
                return;
            }
        };
        // What the sessions send with these assignments, read once here rather than
        // by each of them when their doorbells ring below.
        if !written.is_empty()
            && let Err(error) = self
                .state
                .specs
                .prepare(self.state.store.as_ref(), &self.state.source_secrets, &written)
                .await
        {
            tracing::warn!(rollout = id, error = %Escaped(&error), "cannot read the assigned revision ahead of the sessions");
        }
        let Some(run) = self.runs.get_mut(&id) else { return };
        let mut generations: HashMap<MachineId, u64> =
            written.iter().map(|assigned| (assigned.machine_id.clone(), assigned.generation)).collect();
        for write in step.rows {
            let mut row = write.row;
            if let Some(generation) = generations.remove(&row.machine_id) {
                row.generation = generation;
                run.progress.remove(&row.machine_id);
            }
            if let Some(index) = run.machine_index(&row.machine_id) {
                run.rows[index] = row;
            }
        }
        run.dirty.clear();
        if let Some(change) = &step.change {
            change.apply(&mut run.record);
            if change.state != record.state {
                tracing::info!(rollout = id, state = change.state.as_str(), reason = %Escaped(&change.reason), "rollout state");
            }
        }
        for assigned in &written {
            self.state.presence.hand_assignment(assigned);
        }
        let took = writing.elapsed();
        if took > SLOW_STEP {
            tracing::info!(
                rollout = id,
                rows,
                assigned = written.len(),
                events,
                ms = took.as_millis(),
                "slow rollout step"
            );
        }
        if !run.record.state.is_open() {
            self.close(id);
        }
    }

    pub(super) fn close(&mut self, id: u64) {
        if let Some(run) = self.runs.remove(&id) {
            for row in &run.rows {
                if self.owners.get(&row.machine_id) == Some(&id) {
                    self.owners.remove(&row.machine_id);
                }
            }
            self.settle(run.record);
        }
    }

    /// Remembers `record` as its environment's newest finished rollout.
    fn settle(&mut self, record: RolloutRecord) {
        if record.state == RolloutState::Succeeded && !record.named_machines {
            self.settled.insert(record.environment.clone(), record);
        } else {
            self.settled.remove(&record.environment);
        }
    }

    pub(super) fn assignment(
        &self,
        record: &RolloutRecord,
        row: &MachineRow,
        activate: bool,
    ) -> NewAssignment {
        NewAssignment {
            environment: record.environment.clone(),
            revision_number: record.revision_number,
            revision_id: record.revision_id.clone(),
            plan_json: row.plan_json.clone(),
            torch: row.torch.clone(),
            activate,
            reason: AssignmentReason::Rollout,
            assigned_at: Timestamp::now(),
            assigned_by: format!("rollout {} ({})", record.id, record.created_by),
        }
    }

    /// An assignment of what the machine ran before, planned for it now.
    pub(super) async fn rollback(
        &mut self,
        record: &RolloutRecord,
        row: &MachineRow,
    ) -> Result<NewAssignment, String> {
        let from = row.from.clone().ok_or("it ran nothing before this rollout")?;
        let found = self.spec(&from).await.map_err(|error| error.to_string())?;
        let (revision, spec) = (&found.0, &found.1);
        let machine = self
            .state
            .store
            .get_machine(&row.machine_id)
            .await
            .map_err(|error| error.to_string())?
            .ok_or("the machine is gone")?;
        let facts = MachineFacts::from(&machine_record(&self.state.presence, machine));
        let plan = Resolver::new(spec).plan(&facts).map_err(|incompatibility| incompatibility.summary())?;
        let by = format!("rollout {} ({})", record.id, record.created_by);
        NewAssignment::planned(revision, &plan, true, AssignmentReason::Rollback, by)
            .map_err(|error| error.to_string())
    }
}
