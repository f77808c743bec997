//! The decisions on hand-made rows, and a small world that plays agents against
//! `decide` to check its invariants over whole rollouts.

use std::collections::HashMap;

use comfyfleet_config::spec::{Amount, HumanDuration, RolloutPolicy};

use super::*;
use crate::store::rollout_model::{RevisionRef, RolloutKind};

fn at(second: i64) -> Timestamp {
    Timestamp::from_second(1_800_000_000 + second).unwrap()
}

fn record(policy: RolloutPolicy, machines: usize) -> RolloutRecord {
    let mut record = RolloutRecord {
        id: 1,
        environment: "render".into(),
        revision_number: 2,
        revision_id: "b".repeat(64).parse().unwrap(),
        kind: RolloutKind::Rollout,
        policy,
        state: RolloutState::Running,
        reason: String::new(),
        budget_exceeded: false,
        named_machines: false,
        batch_size: 0,
        undo_of: None,
        stalled: false,
        created_at: at(0),
        created_by: "op".into(),
        finished_at: None,
    };
    record.batch_size = Limits::of(&record, machines).max_unavailable;
    record
}

fn rows(record: &RolloutRecord, machines: usize) -> Vec<MachineRow> {
    (0..machines)
        .map(|index| {
            let ordinal = u32::try_from(index).unwrap();
            MachineRow {
                machine_id: format!("m{index:04}").parse().unwrap(),
                ordinal,
                phase: phase_of(ordinal, record.policy.canary, record.batch_size),
                status: MachineStatus::Pending,
                generation: 0,
                plan_json: "{}".into(),
                torch: "2.8.0+cu128".into(),
                from: Some(RevisionRef { environment: "render".into(), number: 1 }),
                detail: String::new(),
                since: at(0),
                activations: 0,
                attempts: 1,
                rollback_tried: false,
                stalled: false,
                joined: false,
            }
        })
        .collect()
}

fn policy(canary: u32, max_unavailable: Amount, budget: Amount) -> RolloutPolicy {
    RolloutPolicy {
        canary,
        max_unavailable,
        max_parallel_prepare: Amount::Percent(100),
        failure_budget: budget,
        ..RolloutPolicy::default()
    }
}

fn decide_at(record: &RolloutRecord, rows: &[MachineRow], now: Timestamp, offline: &[usize]) -> Decision {
    let offline: Vec<MachineId> = offline.iter().map(|i| rows[*i].machine_id.clone()).collect();
    let online = move |machine: &MachineId| !offline.contains(machine);
    let progress = HashMap::new();
    decide(record, rows, &Context { now, online: &online, progress: &progress })
}

fn apply(rows: &mut [MachineRow], decision: &Decision, now: Timestamp) {
    for transition in &decision.transitions {
        let row = &mut rows[transition.index];
        if row.status != transition.status {
            row.since = now;
        }
        row.status = transition.status;
        row.detail.clone_from(&transition.detail);
        row.stalled = transition.stalled;
        match transition.assign {
            Some(AssignKind::Activate) => row.activations += 1,
            Some(AssignKind::Rollback) => row.rollback_tried = true,
            _ => {}
        }
        if transition.assign.is_some() {
            row.generation += 1;
        }
    }
}

#[test]
fn everything_prepares_at_once_but_only_canaries_activate_first() {
    let record = record(policy(2, Amount::Percent(10), Amount::Count(0)), 40);
    let mut rows = rows(&record, 40);
    let decision = decide_at(&record, &rows, at(1), &[]);
    assert_eq!(decision.transitions.len(), 40);
    assert!(decision.transitions.iter().all(|t| t.assign == Some(AssignKind::Prepare)));
    apply(&mut rows, &decision, at(1));
    for row in &mut rows {
        row.status = MachineStatus::Prepared;
    }
    let decision = decide_at(&record, &rows, at(2), &[]);
    let activated: Vec<usize> = decision.transitions.iter().map(|t| t.index).collect();
    assert_eq!(activated, [0, 1], "the two canaries only");
    assert_eq!(decision.events[0].detail, "canary started");
    apply(&mut rows, &decision, at(2));
    rows[0].status = MachineStatus::Active;
    assert!(decide_at(&record, &rows, at(3), &[]).transitions.is_empty(), "one canary still switching");
    rows[1].status = MachineStatus::Active;
    let decision = decide_at(&record, &rows, at(4), &[]);
    assert_eq!(decision.transitions.len(), 4, "10% of 40 at once");
    assert!(decision.transitions.iter().all(|t| t.assign == Some(AssignKind::Activate)));
}

#[test]
fn a_failure_beyond_the_budget_pauses_and_failed_machines_roll_back() {
    let record = record(policy(0, Amount::Count(5), Amount::Count(1)), 10);
    let mut rows = rows(&record, 10);
    for row in &mut rows {
        row.status = MachineStatus::Activating;
        row.generation = 2;
        row.activations = 1;
    }
    rows[3].status = MachineStatus::Failed;
    rows[3].detail = "health check failed".into();
    let decision = decide_at(&record, &rows, at(5), &[]);
    assert_eq!(decision.transitions.len(), 1);
    assert_eq!(decision.transitions[0].status, MachineStatus::RollingBack);
    assert_eq!(decision.transitions[0].assign, Some(AssignKind::Rollback));
    assert_eq!(decision.transitions[0].detail, "health check failed (returning to render@1)");
    assert!(decision.change.is_none(), "one failure is within the budget of 1");
    rows[7].status = MachineStatus::Failed;
    let decision = decide_at(&record, &rows, at(6), &[]);
    let change = decision.change.unwrap();
    assert_eq!(change.state, RolloutState::Paused);
    assert!(change.budget_exceeded);
    assert_eq!(change.reason, "2 machines failed, more than the failure budget of 1 (1)");
}

#[test]
fn a_failed_canary_pauses_whatever_the_budget() {
    let record = record(policy(1, Amount::Count(5), Amount::Percent(50)), 10);
    let mut rows = rows(&record, 10);
    rows[0].status = MachineStatus::RolledBack;
    rows[0].detail = "torch import failed".into();
    let change = decide_at(&record, &rows, at(1), &[]).change.unwrap();
    assert_eq!(change.state, RolloutState::Paused);
    assert!(change.reason.starts_with("canary m0000 failed: torch import failed"), "{}", change.reason);
}

#[test]
fn offline_machines_wait_and_the_rollout_says_so() {
    let record = record(policy(0, Amount::Count(5), Amount::Count(0)), 3);
    let mut rows = rows(&record, 3);
    rows[0].status = MachineStatus::Active;
    rows[1].status = MachineStatus::Active;
    let decision = decide_at(&record, &rows, at(1), &[2]);
    assert!(decision.transitions.is_empty());
    assert_eq!(decision.change.unwrap().reason, "waiting for 1 offline machine");
    let decision = decide_at(&record, &rows, at(2), &[]);
    assert_eq!(decision.transitions[0].assign, Some(AssignKind::Prepare));
}

#[test]
fn a_machine_without_progress_past_the_deadline_fails() {
    let mut policy = policy(0, Amount::Count(5), Amount::Count(3));
    policy.progress_deadline = HumanDuration(Duration::from_secs(60));
    let record = record(policy, 2);
    let mut rows = rows(&record, 2);
    rows[0].status = MachineStatus::Preparing;
    rows[0].since = at(0);
    rows[1].status = MachineStatus::Active;
    assert!(decide_at(&record, &rows, at(59), &[]).transitions.is_empty());
    let decision = decide_at(&record, &rows, at(61), &[]);
    let transition = &decision.transitions[0];
    assert_eq!(transition.status, MachineStatus::Failed, "stalled counts as failed; it never switched");
    assert!(transition.stalled);
    assert!(
        transition.detail.starts_with("stalled: no progress for 1m while preparing"),
        "{}",
        transition.detail
    );
    // Offline, it is waiting rather than stalled.
    assert!(decide_at(&record, &rows, at(61), &[0]).transitions.is_empty());
}

#[test]
fn a_soak_holds_the_next_phase() {
    let mut policy = policy(1, Amount::Count(2), Amount::Count(0));
    policy.soak = Some(HumanDuration(Duration::from_secs(30)));
    let record = record(policy, 5);
    let mut rows = rows(&record, 5);
    for row in &mut rows {
        row.status = MachineStatus::Prepared;
    }
    rows[0].status = MachineStatus::Active;
    rows[0].activations = 1;
    rows[0].since = at(10);
    assert_eq!(soak_until(&record, &rows, at(20)), Some(at(40)));
    assert!(decide_at(&record, &rows, at(20), &[]).transitions.is_empty());
    let decision = decide_at(&record, &rows, at(41), &[]);
    assert_eq!(decision.transitions.iter().map(|t| t.index).collect::<Vec<_>>(), [1, 2], "batch 1 only");
}

#[test]
fn all_done_is_success() {
    let record = record(policy(1, Amount::Count(2), Amount::Count(1)), 3);
    let mut rows = rows(&record, 3);
    rows[0].status = MachineStatus::Active;
    rows[1].status = MachineStatus::Active;
    rows[2].status = MachineStatus::RolledBack;
    let change = decide_at(&record, &rows, at(9), &[]).change.unwrap();
    assert_eq!(change.state, RolloutState::Succeeded);
    assert_eq!(change.reason, "2 of 3 machines on render@2, 1 failed");
}

/// Plays agents that answer every assignment a few ticks later against `decide`
/// for whole rollouts: the window is never exceeded and nobody switches twice.
#[test]
fn whole_rollouts_never_exceed_the_window_and_activate_each_machine_once() {
    for (machines, canary, percent, seed, soak) in
        [(200usize, 2u32, 10u32, 1u64, 0u64), (57, 1, 25, 2, 0), (10, 3, 5, 3, 0), (90, 2, 5, 4, 3)]
    {
        let mut policy = policy(canary, Amount::Percent(percent), Amount::Count(0));
        policy.soak = (soak > 0).then(|| HumanDuration(Duration::from_secs(soak)));
        let record = record(policy, machines);
        let limit = Limits::of(&record, machines).max_unavailable as usize;
        let mut rows = rows(&record, machines);
        let mut due: HashMap<usize, u64> = HashMap::new();
        let mut random = seed;
        let mut tick = 0;
        loop {
            tick += 1;
            assert!(tick < 10_000, "the rollout of {machines} never finished");
            let now = at(tick);
            for (index, row) in rows.iter_mut().enumerate() {
                if due.get(&index) == Some(&(tick as u64)) {
                    row.status = match row.status {
                        MachineStatus::Preparing => MachineStatus::Prepared,
                        MachineStatus::Activating => MachineStatus::Active,
                        other => other,
                    };
                    row.since = now;
                }
            }
            let decision = decide_at(&record, &rows, now, &[]);
            if decision.change.as_ref().is_some_and(|change| change.state == RolloutState::Succeeded) {
                break;
            }
            apply(&mut rows, &decision, now);
            for transition in &decision.transitions {
                random =
                    random.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
                due.insert(transition.index, tick as u64 + 1 + (random >> 60));
            }
            let unavailable = rows.iter().filter(|row| row.status.is_unavailable()).count();
            assert!(unavailable <= limit, "{unavailable} unavailable, limit {limit}");
            if soak > 0 {
                // With a soak, a phase switches only once every earlier one is done.
                for row in rows.iter().filter(|row| row.status.is_unavailable()) {
                    assert!(
                        rows.iter()
                            .filter(|other| other.phase < row.phase)
                            .all(|other| other.status.is_done())
                    );
                }
            }
        }
        assert!(rows.iter().all(|row| row.status == MachineStatus::Active && row.activations == 1));
    }
}

#[test]
fn reports_move_rows_only_for_their_generation() {
    let record = record(policy(0, Amount::Count(1), Amount::Count(0)), 1);
    let mut row = rows(&record, 1).remove(0);
    row.status = MachineStatus::Preparing;
    row.generation = 4;
    assert_eq!(on_report(&row, 3, Phase::Prepared, "", ""), None, "an older generation");
    assert_eq!(on_report(&row, 4, Phase::Preparing, "", ""), None);
    assert_eq!(on_report(&row, 4, Phase::Prepared, "", ""), Some((MachineStatus::Prepared, String::new())));
    assert_eq!(on_report(&row, 4, Phase::Failed, "boom", ""), Some((MachineStatus::Failed, "boom".into())));
    row.status = MachineStatus::RollingBack;
    row.detail = "boom (returning to render@1)".into();
    assert_eq!(
        on_report(&row, 4, Phase::Active, "", ""),
        Some((MachineStatus::RolledBack, "boom (back on render@1)".into()))
    );
}
