use std::time::Duration;

use comfyfleet_agent::journal::Journal;
use comfyfleet_agent::report::Reporter;
use comfyfleet_config::convergence::{ConvergenceReport, Phase};
use comfyfleet_config::{AssignmentRecord, SpecDigest};
use tokio::sync::watch;

use super::*;
use crate::fleetsim::events::{EventLog, EventWriter};
use crate::fleetsim::failures::{Failer, JITTER, SeededRandom};

const WAIT: Duration = Duration::from_secs(10);

fn record(generation: u64, revision: char, number: u32, activate: bool) -> AssignmentRecord {
    AssignmentRecord {
        generation,
        environment: "render-prod".into(),
        revision_number: number,
        revision_id: revision.to_string().repeat(64),
        spec_json: String::new(),
        plan_json: String::new(),
        activate,
        reason: "rollout".into(),
        lock_json: String::new(),
    }
}

fn digest(revision: char) -> SpecDigest {
    revision.to_string().repeat(64).parse().unwrap()
}

struct Simulated {
    desired: watch::Sender<Option<AssignmentRecord>>,
    reports: watch::Receiver<ConvergenceReport>,
    behaviour: Arc<Behaviour>,
    journal: Journal,
    events: Option<EventWriter>,
    events_path: std::path::PathBuf,
    _task: tokio::task::JoinHandle<()>,
    _dir: tempfile::TempDir,
}

impl Simulated {
    fn start(failer: Failer, prepare_ms: u64, spare_first_revision: bool) -> Simulated {
        let dir = tempfile::tempdir().unwrap();
        let journal = Journal::new(dir.path());
        let events_path = dir.path().join("events.jsonl");
        let (events, writer) = EventLog::open(&events_path).unwrap();
        let behaviour = Arc::new(Behaviour::new(
            Duration::from_millis(prepare_ms),
            Duration::from_millis(20),
            0.0,
            spare_first_revision,
        ));
        let (reporter, reports) = Reporter::new();
        let (desired, desired_receiver) = watch::channel(None);
        let converger = SimulatedConverger {
            agent: 0,
            machine_id: "m-0".into(),
            failer,
            behaviour: behaviour.clone(),
            reporter,
            journal: journal.clone(),
            events,
            random: SeededRandom::derived(1, JITTER, 0),
        };
        let task = tokio::spawn(converger.run(desired_receiver));
        Simulated {
            desired,
            reports,
            behaviour,
            journal,
            events: Some(writer),
            events_path,
            _task: task,
            _dir: dir,
        }
    }

    fn assign(&self, record: AssignmentRecord) {
        self.desired.send_replace(Some(record));
    }

    /// Waits for a report of `generation` in `phase`.
    async fn reaches(&mut self, generation: u64, phase: Phase) -> ConvergenceReport {
        let wanted = |report: &ConvergenceReport| report.generation == generation && report.phase == phase;
        let waited = tokio::time::timeout(WAIT, self.reports.wait_for(wanted)).await;
        let reached = waited.ok().and_then(Result::ok).map(|report| report.clone());
        reached.unwrap_or_else(|| {
            panic!("no {phase} report for generation {generation}; last: {:?}", *self.reports.borrow())
        })
    }

    /// The events so far, as `event` names.
    fn event_names(&mut self) -> Vec<String> {
        if let Some(writer) = self.events.take() {
            writer.close();
        }
        let text = std::fs::read_to_string(&self.events_path).unwrap();
        text.lines()
            .map(|line| {
                serde_json::from_str::<serde_json::Value>(line).unwrap()["event"].as_str().unwrap().to_owned()
            })
            .collect()
    }
}

#[tokio::test]
async fn prepares_then_activates_and_an_assignment_of_the_current_revision_is_instant() {
    let mut sim = Simulated::start(Failer::default(), 30, false);
    sim.assign(record(1, 'a', 1, false));
    let prepared = sim.reaches(1, Phase::Prepared).await;
    assert_eq!(prepared.revision_id, Some(digest('a')));
    assert_eq!(prepared.step("torch").map(|step| step.state), Some(StepState::Done));

    // Activating a prepared revision builds nothing again.
    sim.assign(record(2, 'a', 1, true));
    sim.reaches(2, Phase::Active).await;
    assert_eq!(sim.journal.activations()[0].revision_id, digest('a'));

    // The current revision again (a rollback to it): active at once.
    sim.assign(record(3, 'a', 1, true));
    sim.reaches(3, Phase::Active).await;
    assert_eq!(
        sim.event_names(),
        ["prepare_started", "prepared", "activation_started", "activated"],
        "one preparation, one activation"
    );
}

#[tokio::test]
async fn a_prepare_failer_fails_once_per_generation_until_fixed() {
    let mut sim = Simulated::start(Failer { prepare: true, activate: false }, 10, false);
    sim.assign(record(1, 'a', 1, true));
    let failed = sim.reaches(1, Phase::Failed).await;
    assert_eq!(failed.error, "simulated failure: install-torch exited with status 1");
    assert_eq!(sim.journal.failure().map(|failure| failure.generation), Some(1));

    sim.behaviour.fix();
    // The same generation again (a reconnect) is not retried...
    sim.assign(record(1, 'a', 1, true));
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(sim.reports.borrow().phase, Phase::Failed);
    // ...a new one is, and now succeeds.
    sim.assign(record(2, 'a', 1, true));
    sim.reaches(2, Phase::Active).await;
    assert_eq!(
        sim.event_names(),
        [
            "prepare_started",
            "prepare_failed",
            "prepare_started",
            "prepared",
            "activation_started",
            "activated"
        ]
    );
}

#[tokio::test]
async fn an_activate_failer_switches_back_and_keeps_its_first_revision_when_spared() {
    let mut sim = Simulated::start(Failer { prepare: false, activate: true }, 10, true);
    // Spared: the first revision it is ever assigned.
    sim.assign(record(1, 'a', 1, true));
    sim.reaches(1, Phase::Active).await;

    sim.assign(record(2, 'b', 2, true));
    let failed = sim.reaches(2, Phase::Failed).await;
    assert_eq!(failed.error, "simulated failure: health check failed; switched back to render-prod@1");
    assert_eq!(sim.journal.activations().len(), 1, "still on revision 1");

    // The rollback to what it runs succeeds at once.
    sim.assign(record(3, 'a', 1, true));
    sim.reaches(3, Phase::Active).await;
}

#[tokio::test]
async fn a_newer_revision_abandons_a_preparation_and_a_newer_generation_joins_it() {
    let mut sim = Simulated::start(Failer::default(), 1000, false);
    sim.assign(record(1, 'a', 1, false));
    sim.reaches(1, Phase::Preparing).await;
    // Same revision, now to activate: the preparation in progress goes on.
    sim.assign(record(2, 'a', 1, true));
    sim.reaches(2, Phase::Preparing).await;
    // Another revision: revision 1 is dropped half-built.
    sim.assign(record(3, 'b', 2, true));
    let active = sim.reaches(3, Phase::Active).await;
    assert_eq!(active.revision_id, Some(digest('b')));
    let names = sim.event_names();
    assert_eq!(
        names,
        [
            "prepare_started",
            "prepare_started",
            "prepare_started",
            "prepared",
            "activation_started",
            "activated"
        ],
        "generation 2 joined generation 1's preparation; only revision 2 was built"
    );
}
