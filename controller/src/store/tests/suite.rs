//! The store test suite: every case runs against a fresh, empty store of each
//! backend (SQLite in `sqlite/tests.rs`, PostgreSQL in `postgres/tests.rs`), so both
//! keep exactly the same behaviour.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test helpers fail loudly by design

use std::sync::Arc;

use comfyfleet_config::convergence::{Phase, StepReport, StepState};
use comfyfleet_config::spec::SpecDigest;
use comfyfleet_config::{AssignmentReason, ConvergenceReport, Labels, MachineId};
use futures_util::future::BoxFuture;
use jiff::Timestamp;

use super::*;

/// One case of the suite.
pub type Case = fn(Arc<dyn Store>) -> BoxFuture<'static, ()>;

/// Every case, by name.
pub const CASES: &[(&str, Case)] = &[
    ("audit_entries_are_written_with_their_change_and_filled_in", |store| {
        Box::pin(audit_entries_are_written_with_their_change_and_filled_in(store))
    }),
    ("enrollment_counts_uses_and_refuses_past_them_storing_nothing", |store| {
        Box::pin(enrollment_counts_uses_and_refuses_past_them_storing_nothing(store))
    }),
    ("machines_page_by_id_and_match_prefixes", |store| {
        Box::pin(machines_page_by_id_and_match_prefixes(store))
    }),
    ("the_same_id_twice_is_one_revision", |store| Box::pin(the_same_id_twice_is_one_revision(store))),
    ("numbers_increase_and_a_known_id_keeps_its_number", |store| {
        Box::pin(numbers_increase_and_a_known_id_keeps_its_number(store))
    }),
    ("environments_are_numbered_independently_and_listed_with_their_latest", |store| {
        Box::pin(environments_are_numbered_independently_and_listed_with_their_latest(store))
    }),
    ("id_prefixes_match_within_one_environment", |store| {
        Box::pin(id_prefixes_match_within_one_environment(store))
    }),
    ("concurrent_applies_get_distinct_numbers", |store| {
        Box::pin(concurrent_applies_get_distinct_numbers(store))
    }),
    ("generations_start_at_one_and_rise_per_machine", |store| {
        Box::pin(generations_start_at_one_and_rise_per_machine(store))
    }),
    ("concurrent_assignments_get_distinct_generations", |store| {
        Box::pin(concurrent_assignments_get_distinct_generations(store))
    }),
    ("an_assignment_must_name_a_known_machine_and_revision", |store| {
        Box::pin(an_assignment_must_name_a_known_machine_and_revision(store))
    }),
    ("reports_round_trip_and_the_latest_wins", |store| {
        Box::pin(reports_round_trip_and_the_latest_wins(store))
    }),
    ("machines_carry_their_assignment_and_report", |store| {
        Box::pin(machines_carry_their_assignment_and_report(store))
    }),
    ("revisions_are_found_by_exact_id", |store| Box::pin(revisions_are_found_by_exact_id(store))),
    ("a_rollout_step_is_its_rows_assignments_and_events_together", |store| {
        Box::pin(a_rollout_step_is_its_rows_assignments_and_events_together(store))
    }),
    ("fleet_ids_are_adopted_once", |store| Box::pin(fleet_ids_are_adopted_once(store))),
    ("credentials_tokens_and_the_audit_log", |store| Box::pin(credentials_tokens_and_the_audit_log(store))),
    ("hello_last_seen_labels_and_revocation", |store| Box::pin(hello_last_seen_labels_and_revocation(store))),
    ("locks_files_and_kept_specs", |store| Box::pin(locks_files_and_kept_specs(store))),
    ("reports_in_batches_and_retention", |store| Box::pin(reports_in_batches_and_retention(store))),
    ("concurrent_enrollments_count_every_use", |store| {
        Box::pin(concurrent_enrollments_count_every_use(store))
    }),
    ("sealed_secrets_are_kept_once", |store| Box::pin(sealed_secrets_are_kept_once(store))),
    ("an_inventory_is_written_only_when_it_changes", |store| {
        Box::pin(an_inventory_is_written_only_when_it_changes(store))
    }),
];

fn token(uses_allowed: Option<u32>) -> JoinTokenRecord {
    let now = Timestamp::now();
    JoinTokenRecord {
        id: "0123456789ab".into(),
        secret_sha256: [1; 32],
        created_at: now,
        expires_at: now + jiff::SignedDuration::from_hours(1),
        uses_allowed,
        uses: 0,
        labels: Labels::parse_pairs(["pool=a"]).unwrap(),
        description: "test".into(),
        created_by: "admin".into(),
    }
}

fn new_machine(id: &str) -> NewMachine {
    NewMachine {
        id: id.parse().unwrap(),
        hostname: "host".into(),
        cert_sha256: "ab".into(),
        agent_labels: Labels::parse_pairs(["gpu=yes"]).unwrap(),
        enrolled_at: Timestamp::now(),
    }
}

pub async fn enrollment_counts_uses_and_refuses_past_them_storing_nothing(store: Arc<dyn Store>) {
    store.create_join_token(&token(Some(1))).await.unwrap();
    let first = store.enroll_machine("0123456789ab", &[1; 32], &new_machine("m1")).await.unwrap().unwrap();
    assert_eq!(first.effective_labels().to_string(), "gpu=yes,pool=a");
    let second = store.enroll_machine("0123456789ab", &[1; 32], &new_machine("m2")).await.unwrap();
    assert!(matches!(second, Err(EnrollRefusal::UsedUp { .. })));
    let wrong = store.enroll_machine("ffffffffffff", &[1; 32], &new_machine("m3")).await.unwrap();
    assert!(matches!(wrong, Err(EnrollRefusal::UnknownToken { .. })));
    let machines = store.list_machines(None, 100, true).await.unwrap();
    assert_eq!(machines.len(), 1);
    assert_eq!(store.list_join_tokens().await.unwrap()[0].uses, 1);
}

pub async fn machines_page_by_id_and_match_prefixes(store: Arc<dyn Store>) {
    store.create_join_token(&token(None)).await.unwrap();
    for id in ["aa1", "aa2", "ab1"] {
        store.enroll_machine("0123456789ab", &[1; 32], &new_machine(id)).await.unwrap().unwrap();
    }
    let page = store.list_machines(None, 2, false).await.unwrap();
    assert_eq!(page.iter().map(|m| m.id.as_str()).collect::<Vec<_>>(), ["aa1", "aa2"]);
    let rest = store.list_machines(Some(&page[1].id), 2, false).await.unwrap();
    assert_eq!(rest.iter().map(|m| m.id.as_str()).collect::<Vec<_>>(), ["ab1"]);
    assert_eq!(store.find_machines("aa", 10).await.unwrap().len(), 2);
    assert!(store.revoke_machine(&"aa1".parse().unwrap(), Timestamp::now()).await.unwrap());
    assert!(!store.revoke_machine(&"aa1".parse().unwrap(), Timestamp::now()).await.unwrap());
    assert_eq!(store.list_machines(None, 10, false).await.unwrap().len(), 2);
}

pub async fn audit_entries_are_written_with_their_change_and_filled_in(store: Arc<dyn Store>) {
    use crate::store::{AuditEntry, audited};
    let entry = |detail: &str| AuditEntry::new("op", "environment.apply", "render@{number}", detail);
    let (first, created) =
        audited(entry("{created} one"), store.put_environment_revision(&revision("render", 'a')))
            .await
            .unwrap();
    assert!(created);
    audited(entry("{created} again"), store.put_environment_revision(&revision("render", 'a')))
        .await
        .unwrap();
    // A change that does not happen writes no entry; a call without one writes none.
    let gone = AuditEntry::new("op", "token.delete", "nope", "");
    assert!(!audited(gone, store.delete_join_token("0123456789ab")).await.unwrap());
    store.put_environment_revision(&revision("render", 'b')).await.unwrap();
    let logged: Vec<(String, String)> = store
        .list_audit(10)
        .await
        .unwrap()
        .into_iter()
        .map(|record| (record.target, record.detail))
        .collect();
    let number = format!("render@{}", first.number);
    assert_eq!(
        logged
            .iter()
            .filter(|(target, _)| *target == number)
            .map(|(_, detail)| detail.as_str())
            .collect::<Vec<_>>()
            .len(),
        2,
        "{logged:?}"
    );
    assert!(logged.contains(&(number.clone(), "created one".to_owned())), "{logged:?}");
    assert!(logged.contains(&(number, "unchanged again".to_owned())), "{logged:?}");
    assert_eq!(logged.len(), 2, "{logged:?}");
}

fn revision(environment: &str, id_digit: char) -> NewRevision {
    NewRevision {
        environment: environment.into(),
        id: id_digit.to_string().repeat(64).parse().unwrap(),
        spec_json: format!("{{\"name\":\"{environment}\",\"v\":\"{id_digit}\"}}"),
        created_at: Timestamp::now(),
        created_by: "op (0123456789ab)".into(),
        locks: Vec::new(),
        files: Vec::new(),
    }
}

pub async fn the_same_id_twice_is_one_revision(store: Arc<dyn Store>) {
    let (first, created) = store.put_environment_revision(&revision("render", 'a')).await.unwrap();
    assert!(created);
    assert_eq!(first.number, 1);
    let mut again = revision("render", 'a');
    again.created_by = "someone else".into();
    let (second, created) = store.put_environment_revision(&again).await.unwrap();
    assert!(!created);
    assert_eq!(second, first, "the stored row is returned unchanged");
    assert_eq!(store.environment_revisions("render").await.unwrap(), [first]);
}

pub async fn numbers_increase_and_a_known_id_keeps_its_number(store: Arc<dyn Store>) {
    for (digit, expected) in [('a', 1), ('b', 2), ('c', 3)] {
        let (stored, created) = store.put_environment_revision(&revision("render", digit)).await.unwrap();
        assert!(created);
        assert_eq!(stored.number, expected);
    }
    let (old, created) = store.put_environment_revision(&revision("render", 'a')).await.unwrap();
    assert!(!created);
    assert_eq!(old.number, 1);
    let numbers: Vec<u32> =
        store.environment_revisions("render").await.unwrap().iter().map(|r| r.number).collect();
    assert_eq!(numbers, [1, 2, 3], "oldest first");
    assert_eq!(store.latest_environment_revision("render").await.unwrap().unwrap().number, 3);
    let second = store.environment_revision("render", 2).await.unwrap().unwrap();
    assert_eq!(second.id.as_str(), "b".repeat(64));
    assert_eq!(store.environment_revision("render", 4).await.unwrap(), None);
}

pub async fn environments_are_numbered_independently_and_listed_with_their_latest(store: Arc<dyn Store>) {
    store.put_environment_revision(&revision("render", 'a')).await.unwrap();
    store.put_environment_revision(&revision("render", 'b')).await.unwrap();
    let (other, created) = store.put_environment_revision(&revision("preview", 'a')).await.unwrap();
    assert!(created, "the same id in another environment is another revision");
    assert_eq!(other.number, 1);
    let summaries = store.list_environments().await.unwrap();
    let seen: Vec<(&str, u32, u32)> =
        summaries.iter().map(|s| (s.name.as_str(), s.revisions, s.latest.number)).collect();
    assert_eq!(seen, [("preview", 1, 1), ("render", 2, 2)]);
    assert_eq!(summaries[1].latest.id.as_str(), "b".repeat(64));
    assert!(store.environment_revisions("unknown").await.unwrap().is_empty());
    assert_eq!(store.latest_environment_revision("unknown").await.unwrap(), None);
}

pub async fn id_prefixes_match_within_one_environment(store: Arc<dyn Store>) {
    store.put_environment_revision(&revision("render", 'a')).await.unwrap();
    store.put_environment_revision(&revision("render", 'b')).await.unwrap();
    store.put_environment_revision(&revision("preview", 'c')).await.unwrap();
    let found = store.find_environment_revisions("render", "aaaa", 10).await.unwrap();
    assert_eq!(found.iter().map(|r| r.number).collect::<Vec<_>>(), [1]);
    assert!(store.find_environment_revisions("render", "cccc", 10).await.unwrap().is_empty());
    assert_eq!(store.find_environment_revisions("render", "", 10).await.unwrap().len(), 2);
    assert_eq!(store.find_environment_revisions("render", "", 1).await.unwrap().len(), 1);
}

pub async fn concurrent_applies_get_distinct_numbers(store: Arc<dyn Store>) {
    let mut tasks = tokio::task::JoinSet::new();
    for digit in ['1', '2', '3', '4', '5', '6'] {
        let store = store.clone();
        tasks.spawn(async move { store.put_environment_revision(&revision("render", digit)).await });
    }
    let mut numbers = Vec::new();
    while let Some(result) = tasks.join_next().await {
        numbers.push(result.unwrap().unwrap().0.number);
    }
    numbers.sort_unstable();
    assert_eq!(numbers, [1, 2, 3, 4, 5, 6]);
}

/// A rollout of render@2 (seeded by [`seed_machines`]) with no machine rows.
pub(crate) fn machineless_rollout(
    at: Timestamp,
    events: Vec<crate::store::rollout_model::NewEvent>,
) -> crate::store::rollout_model::NewRollout {
    use crate::store::rollout_model::*;
    NewRollout {
        environment: "render".into(),
        revision_number: 2,
        revision_id: "b".repeat(64).parse().unwrap(),
        kind: RolloutKind::Rollout,
        policy: Default::default(),
        named_machines: false,
        batch_size: 1,
        undo_of: None,
        created_at: at,
        created_by: "op".into(),
        rows: Vec::new(),
        events,
    }
}

pub(crate) async fn seed_machines(store: &dyn Store, ids: &[&str]) {
    let now = Timestamp::now();
    let token = JoinTokenRecord {
        id: "0123456789ab".into(),
        secret_sha256: [1; 32],
        created_at: now,
        expires_at: now + jiff::SignedDuration::from_hours(1),
        uses_allowed: None,
        uses: 0,
        labels: Labels::new(),
        description: String::new(),
        created_by: "admin".into(),
    };
    store.create_join_token(&token).await.unwrap();
    for id in ids {
        let machine = NewMachine {
            id: id.parse().unwrap(),
            hostname: format!("host-{id}"),
            cert_sha256: "ab".into(),
            agent_labels: Labels::new(),
            enrolled_at: now,
        };
        store.enroll_machine("0123456789ab", &[1; 32], &machine).await.unwrap().unwrap();
    }
    for digit in ['a', 'b'] {
        let revision = NewRevision {
            environment: "render".into(),
            id: digit.to_string().repeat(64).parse().unwrap(),
            spec_json: format!("{{\"v\":\"{digit}\"}}"),
            created_at: now,
            created_by: "op".into(),
            locks: Vec::new(),
            files: Vec::new(),
        };
        store.put_environment_revision(&revision).await.unwrap();
    }
}

fn assignment(number: u32, reason: AssignmentReason) -> NewAssignment {
    let digit = if number == 1 { 'a' } else { 'b' };
    NewAssignment {
        environment: "render".into(),
        revision_number: number,
        revision_id: digit.to_string().repeat(64).parse().unwrap(),
        plan_json: format!("{{\"plan\":{number}}}"),
        torch: "2.8.0+cu128".into(),
        activate: true,
        reason,
        assigned_at: Timestamp::from_millisecond(1_700_000_000_123).unwrap(),
        assigned_by: "op (0123456789ab)".into(),
    }
}

fn id(text: &str) -> MachineId {
    text.parse().unwrap()
}

pub async fn generations_start_at_one_and_rise_per_machine(store: Arc<dyn Store>) {
    seed_machines(&*store, &["m1", "m2"]).await;
    assert_eq!(store.assignment(&id("m1")).await.unwrap(), None);
    let first = store.assign(&id("m1"), &assignment(1, AssignmentReason::Rollout)).await.unwrap();
    assert_eq!(first.generation, 1);
    assert_eq!(first.machine_id, id("m1"));
    let again = store.assign(&id("m1"), &assignment(1, AssignmentReason::Rollout)).await.unwrap();
    assert_eq!(again.generation, 2, "the same revision again is a new generation");
    let back = store.assign(&id("m1"), &assignment(2, AssignmentReason::Rollback)).await.unwrap();
    assert_eq!(back.generation, 3);
    assert_eq!((back.revision_number, back.reason), (2, AssignmentReason::Rollback));
    let other = store.assign(&id("m2"), &assignment(2, AssignmentReason::Rollout)).await.unwrap();
    assert_eq!(other.generation, 1, "generations are per machine");
    assert_eq!(store.assignment(&id("m1")).await.unwrap(), Some(back.clone()));
    assert_eq!(back.plan_json, "{\"plan\":2}");
    assert_eq!(back.assigned_at.as_millisecond(), 1_700_000_000_123);
}

pub async fn concurrent_assignments_get_distinct_generations(store: Arc<dyn Store>) {
    seed_machines(&*store, &["m1"]).await;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..6 {
        let store = store.clone();
        tasks.spawn(async move { store.assign(&id("m1"), &assignment(1, AssignmentReason::Rollout)).await });
    }
    let mut generations = Vec::new();
    while let Some(result) = tasks.join_next().await {
        generations.push(result.unwrap().unwrap().generation);
    }
    generations.sort_unstable();
    assert_eq!(generations, [1, 2, 3, 4, 5, 6]);
}

pub async fn an_assignment_must_name_a_known_machine_and_revision(store: Arc<dyn Store>) {
    seed_machines(&*store, &["m1"]).await;
    assert!(store.assign(&id("nobody"), &assignment(1, AssignmentReason::Rollout)).await.is_err());
    let mut unknown = assignment(1, AssignmentReason::Rollout);
    unknown.revision_number = 9;
    assert!(store.assign(&id("m1"), &unknown).await.is_err());
    assert_eq!(store.assignment(&id("m1")).await.unwrap(), None);
}

pub async fn reports_round_trip_and_the_latest_wins(store: Arc<dyn Store>) {
    seed_machines(&*store, &["m1"]).await;
    assert_eq!(store.report(&id("m1")).await.unwrap(), None);
    let mut report = ConvergenceReport::idle(Timestamp::from_second(1_700_000_000).unwrap());
    report.generation = 1;
    report.environment = "render".into();
    report.revision_number = 1;
    report.revision_id = Some("a".repeat(64).parse().unwrap());
    report.phase = Phase::Preparing;
    report.steps.push(StepReport { state: StepState::Running, ..StepReport::pending("torch") });
    store.record_report(&id("m1"), &report, Timestamp::now()).await.unwrap();
    assert_eq!(store.report(&id("m1")).await.unwrap().as_ref(), Some(&report));
    report.phase = Phase::Failed;
    report.error = "sha256 mismatch".into();
    store.record_report(&id("m1"), &report, Timestamp::now()).await.unwrap();
    assert_eq!(store.report(&id("m1")).await.unwrap(), Some(report));
}

pub async fn machines_carry_their_assignment_and_report(store: Arc<dyn Store>) {
    seed_machines(&*store, &["m1", "m2"]).await;
    let stored = store.assign(&id("m1"), &assignment(2, AssignmentReason::Rollout)).await.unwrap();
    let mut report = ConvergenceReport::idle(Timestamp::from_second(1_700_000_000).unwrap());
    report.generation = 1;
    report.phase = Phase::Active;
    store.record_report(&id("m1"), &report, Timestamp::now()).await.unwrap();

    let machine = store.get_machine(&id("m1")).await.unwrap().unwrap();
    assert_eq!(machine.assignment, Some(stored.summary()));
    assert_eq!(machine.report, Some(report.clone()));
    let listed = store.list_machines(None, 10, false).await.unwrap();
    assert_eq!(listed.len(), 2);
    assert_eq!(listed[0].assignment, Some(stored.summary()));
    assert_eq!((listed[1].assignment.as_ref(), listed[1].report.as_ref()), (None, None));
    let found = store.find_machines("m", 10).await.unwrap();
    assert_eq!(found[0].report, Some(report));
    assert_eq!(stored.record("{}".into(), String::new()).generation, 1);
}

pub async fn revisions_are_found_by_exact_id(store: Arc<dyn Store>) {
    seed_machines(&*store, &[]).await;
    let b: SpecDigest = "b".repeat(64).parse().unwrap();
    let found = store.environment_revision_by_id("render", &b).await.unwrap().unwrap();
    assert_eq!(found.number, 2);
    assert_eq!(store.environment_revision_by_id("preview", &b).await.unwrap(), None);
    let c: SpecDigest = "c".repeat(64).parse().unwrap();
    assert_eq!(store.environment_revision_by_id("render", &c).await.unwrap(), None);
}

pub async fn a_rollout_step_is_its_rows_assignments_and_events_together(store: Arc<dyn Store>) {
    use crate::store::rollout_model::*;
    seed_machines(&*store, &["m1", "m2"]).await;
    let now = Timestamp::from_millisecond(1_800_000_000_000).unwrap();
    let row = |machine: &str, ordinal: u32| MachineRow {
        machine_id: id(machine),
        ordinal,
        phase: ordinal,
        status: MachineStatus::Pending,
        generation: 0,
        plan_json: "{}".into(),
        torch: "2.8.0+cu128".into(),
        from: Some(RevisionRef { environment: "render".into(), number: 1 }),
        detail: String::new(),
        since: now,
        activations: 0,
        attempts: 1,
        rollback_tried: false,
        stalled: false,
        joined: false,
    };
    let new = NewRollout {
        environment: "render".into(),
        revision_number: 2,
        revision_id: "b".repeat(64).parse().unwrap(),
        kind: RolloutKind::Rollout,
        policy: Default::default(),
        named_machines: false,
        batch_size: 1,
        undo_of: None,
        created_at: now,
        created_by: "op".into(),
        rows: vec![row("m1", 0), row("m2", 1)],
        events: vec![NewEvent::rollout(now, "started", "2 machines")],
    };
    let record = store.create_rollout(&new).await.unwrap();
    assert_eq!((record.id, record.state, record.batch_size), (1, RolloutState::Running, 1));
    assert_eq!(store.open_rollouts().await.unwrap(), std::slice::from_ref(&record));

    let mut preparing = row("m1", 0);
    preparing.status = MachineStatus::Preparing;
    let mut prepare = assignment(2, AssignmentReason::Rollout);
    prepare.activate = false;
    let step = RolloutStep {
        rows: vec![RowWrite { row: preparing.clone(), assignment: Some(prepare) }],
        events: vec![NewEvent::machine(now, &preparing, MachineStatus::Pending)],
        change: None,
    };
    let assigned = store.apply_rollout_step(record.id, &step).await.unwrap();
    assert_eq!((assigned.len(), assigned[0].generation, assigned[0].activate), (1, 1, false));
    let rows = store.rollout_machines(record.id).await.unwrap();
    assert_eq!((rows[0].row.status, rows[0].row.generation), (MachineStatus::Preparing, 1));
    assert_eq!((rows[0].hostname.as_str(), rows[1].row.status), ("host-m1", MachineStatus::Pending));
    assert_eq!(rows[0].row.from, preparing.from);

    let mut change = RolloutChange::of(&record);
    change.state = RolloutState::Succeeded;
    change.finished_at = Some(now);
    let done = RolloutStep { change: Some(change), ..Default::default() };
    store.apply_rollout_step(record.id, &done).await.unwrap();
    assert!(store.open_rollouts().await.unwrap().is_empty());
    let listed = store.list_rollouts(Some("render"), 10).await.unwrap();
    assert_eq!((listed[0].state, listed[0].finished_at), (RolloutState::Succeeded, Some(now)));
    assert!(store.list_rollouts(Some("preview"), 10).await.unwrap().is_empty());
    let events = store.rollout_events(record.id, 0, 10).await.unwrap();
    let kinds: Vec<&str> = events.iter().map(|event| event.event.kind.as_str()).collect();
    assert_eq!(kinds, ["started", "preparing"]);
    assert_eq!(events[1].event.from, "pending");
    assert_eq!(store.rollout_events(record.id, events[0].id, 10).await.unwrap().len(), 1);

    // A step whose assignment cannot be stored writes none of it.
    let mut bad = assignment(2, AssignmentReason::Rollout);
    bad.revision_number = 9;
    let mut failed = row("m2", 1);
    failed.status = MachineStatus::Preparing;
    let step =
        RolloutStep { rows: vec![RowWrite { row: failed, assignment: Some(bad) }], ..Default::default() };
    assert!(store.apply_rollout_step(record.id, &step).await.is_err());
    assert_eq!(store.rollout_machines(record.id).await.unwrap()[1].row.status, MachineStatus::Pending);

    // Read as of one moment, the record and its rows are those read one by one.
    let (snapshot, rows) = store.rollout_snapshot(record.id).await.unwrap().unwrap();
    assert_eq!(Some(snapshot), store.rollout(record.id).await.unwrap());
    assert_eq!(rows, store.rollout_machines(record.id).await.unwrap());
    assert!(store.rollout_snapshot(record.id + 100).await.unwrap().is_none());
}

pub async fn fleet_ids_are_adopted_once(store: Arc<dyn Store>) {
    assert_eq!(store.fleet_id().await.unwrap(), None);
    assert!(!store.holds_fleet().await.unwrap());
    let first = "a".repeat(32);
    assert_eq!(store.adopt_fleet_id(&first, Timestamp::now()).await.unwrap(), first);
    assert_eq!(
        store.adopt_fleet_id(&"b".repeat(32), Timestamp::now()).await.unwrap(),
        first,
        "the first id stays"
    );
    assert_eq!(store.fleet_id().await.unwrap(), Some(first));
    store.put_environment_revision(&revision("render", 'a')).await.unwrap();
    assert!(store.holds_fleet().await.unwrap());
}

pub async fn credentials_tokens_and_the_audit_log(store: Arc<dyn Store>) {
    let credential = CredentialRecord {
        id: "c1".into(),
        name: "ops".into(),
        role: comfyfleet_config::Role::Operator,
        secret_sha256: [9; 32],
        created_at: Timestamp::from_millisecond(1_800_000_000_123).unwrap(),
        revoked_at: None,
        created_by: "admin".into(),
    };
    store.create_credential(&credential).await.unwrap();
    assert!(store.create_credential(&credential).await.is_err(), "ids are unique");
    assert_eq!(store.get_credential("c1").await.unwrap(), Some(credential.clone()));
    assert_eq!(store.get_credential("nope").await.unwrap(), None);
    assert!(store.holds_fleet().await.unwrap());
    let at = Timestamp::from_millisecond(1_800_000_001_000).unwrap();
    assert!(store.revoke_credential("c1", at).await.unwrap());
    assert!(!store.revoke_credential("c1", at).await.unwrap());
    assert_eq!(store.list_credentials().await.unwrap()[0].revoked_at, Some(at));

    store.create_join_token(&token(Some(3))).await.unwrap();
    let listed = store.list_join_tokens().await.unwrap();
    assert_eq!(
        (listed.len(), listed[0].uses_allowed, listed[0].labels.to_string()),
        (1, Some(3), "pool=a".into())
    );
    assert!(store.delete_join_token("0123456789ab").await.unwrap());
    assert!(!store.delete_join_token("0123456789ab").await.unwrap());

    for (index, action) in ["token.create", "token.delete", "credential.revoke"].iter().enumerate() {
        let at = Timestamp::from_second(1_800_000_000 + index as i64).unwrap();
        store.append_audit(at, "admin (c0)", action, "x", "it's \"quoted\"").await.unwrap();
    }
    let audit = store.list_audit(2).await.unwrap();
    let actions: Vec<&str> = audit.iter().map(|entry| entry.action.as_str()).collect();
    assert_eq!(actions, ["credential.revoke", "token.delete"], "newest first");
    assert_eq!(audit[0].detail, "it's \"quoted\"");
    assert!(audit[0].id > audit[1].id);
}

pub async fn hello_last_seen_labels_and_revocation(store: Arc<dyn Store>) {
    seed_machines(&*store, &["m1"]).await;
    let at = Timestamp::from_millisecond(1_800_000_000_000).unwrap();
    let hello = Hello {
        agent_version: "0.1.0".into(),
        agent_labels: Labels::parse_pairs(["rack=12"]).unwrap(),
        inventory: None,
        remote_address: "10.0.0.5:40000".into(),
        at,
    };
    store.record_hello(&id("m1"), &hello).await.unwrap();
    let machine = store.get_machine(&id("m1")).await.unwrap().unwrap();
    assert_eq!(
        (machine.agent_version.as_str(), machine.remote_address.as_str()),
        ("0.1.0", "10.0.0.5:40000")
    );
    assert_eq!((machine.last_seen, machine.inventory.is_none()), (Some(at), true));
    assert_eq!(machine.hostname, "host-m1", "no inventory keeps the hostname");
    // Last-seen never goes back.
    let earlier = Timestamp::from_millisecond(1_700_000_000_000).unwrap();
    let later = Timestamp::from_millisecond(1_800_000_005_000).unwrap();
    store.record_last_seen(&[(id("m1"), earlier)]).await.unwrap();
    assert_eq!(store.get_machine(&id("m1")).await.unwrap().unwrap().last_seen, Some(at));
    store.record_last_seen(&[(id("m1"), later), (id("unknown"), later)]).await.unwrap();
    assert_eq!(store.get_machine(&id("m1")).await.unwrap().unwrap().last_seen, Some(later));
    store
        .set_operator_labels(&id("m1"), &Labels::parse_pairs(["rack=13", "tier=gold"]).unwrap())
        .await
        .unwrap();
    let machine = store.get_machine(&id("m1")).await.unwrap().unwrap();
    assert_eq!(machine.effective_labels().to_string(), "rack=13,tier=gold");
    assert!(store.revoke_machine(&id("m1"), later).await.unwrap());
    assert!(store.list_machines(None, 10, false).await.unwrap().is_empty());
    assert_eq!(store.list_machines(None, 10, true).await.unwrap()[0].revoked_at, Some(later));
}

pub async fn locks_files_and_kept_specs(store: Arc<dyn Store>) {
    let lock = StoredLock {
        digest: "d".repeat(64),
        class: "cp312-cu128-linux_x86_64".into(),
        lock_json: "{}".into(),
    };
    let file = |url: &str, size| PackageFile {
        sha256: "f".repeat(64),
        url: url.into(),
        file_name: "torch-2.8.0.whl".into(),
        size,
    };
    let mut first = revision("render", 'a');
    first.locks = vec![lock.clone()];
    first.files = vec![file("https://a/torch.whl", Some(10))];
    store.put_environment_revision(&first).await.unwrap();
    let mut second = revision("render", 'b');
    second.locks = vec![lock.clone()];
    store.put_environment_revision(&second).await.unwrap();
    assert_eq!(store.lock(&lock.digest).await.unwrap(), Some(lock));
    assert_eq!(store.lock("nope").await.unwrap(), None);
    // An index page does not replace what a lock recorded; a revision does.
    assert!(store.linking_indexes(&"f".repeat(64)).await.unwrap().is_empty());
    store.record_index_files("0123456789abcdef", &[file("https://mirror/torch.whl", None)]).await.unwrap();
    store.record_index_files("0123456789abcdef", &[file("https://mirror/torch.whl", None)]).await.unwrap();
    store.record_index_files("fedcba9876543210", &[file("https://other/torch.whl", None)]).await.unwrap();
    assert_eq!(store.package_file(&"f".repeat(64)).await.unwrap().unwrap().url, "https://a/torch.whl");
    let mut linking = store.linking_indexes(&"f".repeat(64)).await.unwrap();
    linking.sort();
    assert_eq!(linking, ["0123456789abcdef", "fedcba9876543210"], "each index that links it, once");
    let mut third = revision("render", 'c');
    third.files = vec![file("https://b/torch.whl", None)];
    store.put_environment_revision(&third).await.unwrap();
    let stored = store.package_file(&"f".repeat(64)).await.unwrap().unwrap();
    assert_eq!((stored.url.as_str(), stored.size), ("https://b/torch.whl", Some(10)));
    // Kept: the newest revision, and any a machine is assigned.
    seed_machines(&*store, &["m1"]).await;
    let kept = store.kept_revision_specs().await.unwrap();
    assert_eq!(kept.len(), 1, "{kept:?}");
    store.assign(&id("m1"), &assignment(1, AssignmentReason::Rollout)).await.unwrap();
    let mut kept = store.kept_revision_specs().await.unwrap();
    kept.sort();
    assert_eq!(kept.len(), 2, "{kept:?}");
    assert!(kept[0].contains("\"v\":\"a\""), "{kept:?}");
}

pub async fn reports_in_batches_and_retention(store: Arc<dyn Store>) {
    seed_machines(&*store, &["m1", "m2"]).await;
    let old = Timestamp::from_millisecond(1_700_000_000_000).unwrap();
    let new = Timestamp::from_millisecond(1_800_000_000_000).unwrap();
    let report = ConvergenceReport::idle(old);
    store.record_reports(&[(id("m1"), report.clone(), old), (id("m2"), report.clone(), new)]).await.unwrap();
    store.record_reports(&[(id("m2"), report.clone(), new)]).await.unwrap();
    let mut all = store.all_reports().await.unwrap();
    all.sort_by(|a, b| a.0.as_str().cmp(b.0.as_str()));
    assert_eq!(
        all.iter().map(|(id, _, at)| (id.as_str(), *at)).collect::<Vec<_>>(),
        [("m1", old), ("m2", new)]
    );

    let cutoff = Timestamp::from_millisecond(1_750_000_000_000).unwrap();
    assert_eq!(store.prune(Prunable::Reports, cutoff, 10).await.unwrap(), 1);
    assert_eq!(store.report(&id("m1")).await.unwrap(), None);
    assert!(store.report(&id("m2")).await.unwrap().is_some());

    for (at, action) in [(old, "old"), (old, "old"), (new, "new")] {
        store.append_audit(at, "admin", action, "", "").await.unwrap();
    }
    assert_eq!(store.prune(Prunable::Audit, cutoff, 1).await.unwrap(), 1, "at most the limit");
    assert_eq!(store.prune(Prunable::Audit, cutoff, 10).await.unwrap(), 1);
    assert_eq!(store.list_audit(10).await.unwrap().len(), 1);

    // Events of an open rollout stay whatever their age; a finished one's go.
    use crate::store::rollout_model::*;
    let open = machineless_rollout(
        old,
        vec![NewEvent::rollout(old, "started", ""), NewEvent::rollout(new, "paused", "")],
    );
    let running = store.create_rollout(&open).await.unwrap();
    let finished = store.create_rollout(&open).await.unwrap();
    let mut change = RolloutChange::of(&finished);
    change.state = RolloutState::Succeeded;
    change.finished_at = Some(new);
    store
        .apply_rollout_step(finished.id, &RolloutStep { change: Some(change), ..Default::default() })
        .await
        .unwrap();
    assert_eq!(store.prune(Prunable::RolloutEvents, cutoff, 10).await.unwrap(), 1);
    assert_eq!(store.rollout_events(running.id, 0, 10).await.unwrap().len(), 2);
    assert_eq!(store.rollout_events(finished.id, 0, 10).await.unwrap().len(), 1);
}

pub async fn concurrent_enrollments_count_every_use(store: Arc<dyn Store>) {
    let mut unlimited = token(None);
    unlimited.id = "unlimited000".into();
    store.create_join_token(&unlimited).await.unwrap();
    store.create_join_token(&token(Some(3))).await.unwrap();
    let mut enrolling = tokio::task::JoinSet::new();
    for index in 0..12 {
        let store = store.clone();
        enrolling.spawn(async move {
            let token = if index % 2 == 0 { "unlimited000" } else { "0123456789ab" };
            let outcome =
                store.enroll_machine(token, &[1; 32], &new_machine(&format!("m{index}"))).await.unwrap();
            (token, outcome.is_ok())
        });
    }
    let mut admitted = std::collections::HashMap::new();
    while let Some(result) = enrolling.join_next().await {
        let (token, ok) = result.unwrap();
        *admitted.entry(token).or_insert(0) += usize::from(ok);
    }
    assert_eq!(admitted["unlimited000"], 6, "an unlimited token admits every one");
    assert_eq!(admitted["0123456789ab"], 3, "a token for 3 admits exactly 3");
    let tokens = store.list_join_tokens().await.unwrap();
    let uses: Vec<(&str, u32)> = tokens.iter().map(|token| (token.id.as_str(), token.uses)).collect();
    assert!(uses.contains(&("unlimited000", 6)) && uses.contains(&("0123456789ab", 3)), "{uses:?}");
}

pub async fn sealed_secrets_are_kept_once(store: Arc<dyn Store>) {
    assert_eq!(store.sealed_secret("ca").await.unwrap(), None);
    let first = SealedSecret { nonce: vec![1; 12], sealed: vec![0, 255, 7, 0] };
    let second = SealedSecret { nonce: vec![2; 12], sealed: vec![9; 40] };
    assert_eq!(store.put_sealed_secret("ca", &first, Timestamp::now()).await.unwrap(), first);
    assert_eq!(
        store.put_sealed_secret("ca", &second, Timestamp::now()).await.unwrap(),
        first,
        "the first stays"
    );
    assert_eq!(store.sealed_secret("ca").await.unwrap(), Some(first.clone()));
    assert_eq!(store.sealed_secret("other").await.unwrap(), None);

    // Source credentials: set replaces, the list is by prefix, delete removes.
    assert!(!store.set_sealed_secret("source/farm", &first, Timestamp::now()).await.unwrap(), "created");
    assert!(store.set_sealed_secret("source/farm", &second, Timestamp::now()).await.unwrap(), "replaced");
    store.set_sealed_secret("source/git", &first, Timestamp::now()).await.unwrap();
    let listed = store.sealed_secrets("source/").await.unwrap();
    let names: Vec<(&str, &SealedSecret)> =
        listed.iter().map(|(name, sealed, _)| (name.as_str(), sealed)).collect();
    assert_eq!(names, vec![("source/farm", &second), ("source/git", &first)]);
    assert!(store.delete_sealed_secret("source/farm").await.unwrap());
    assert!(!store.delete_sealed_secret("source/farm").await.unwrap());
    assert_eq!(store.sealed_secrets("source/").await.unwrap().len(), 1);
    assert_eq!(store.sealed_secret("ca").await.unwrap(), Some(first), "the CA is not a source credential");
}

pub async fn an_inventory_is_written_only_when_it_changes(store: Arc<dyn Store>) {
    seed_machines(&*store, &["m1"]).await;
    let at = |seconds: i64| Timestamp::from_second(1_800_000_000 + seconds).unwrap();
    let first = crate::use_cases::test_fleet::inventory("t4-x1-535");
    let updated_at = |store: Arc<dyn Store>| async move {
        let machine = store.get_machine(&id("m1")).await.unwrap().unwrap();
        (machine.inventory, machine.inventory_updated_at)
    };
    assert!(store.record_inventory(&id("m1"), &first, at(0)).await.unwrap());
    assert!(!store.record_inventory(&id("m1"), &first, at(1)).await.unwrap(), "the same inventory again");
    assert_eq!(updated_at(store.clone()).await, (Some(first.clone()), Some(at(0))));
    // A Hello with the stored inventory leaves it as it was, too.
    let hello = Hello {
        agent_version: "0.1.0".into(),
        agent_labels: Labels::default(),
        inventory: Some(first.clone()),
        remote_address: "10.0.0.5:40000".into(),
        at: at(2),
    };
    store.record_hello(&id("m1"), &hello).await.unwrap();
    assert_eq!(updated_at(store.clone()).await, (Some(first.clone()), Some(at(0))));
    let mut second = first.clone();
    second.host.data_dir_free_bytes += 1;
    assert!(store.record_inventory(&id("m1"), &second, at(3)).await.unwrap());
    assert_eq!(updated_at(store.clone()).await, (Some(second.clone()), Some(at(3))));
    store
        .record_hello(&id("m1"), &Hello { inventory: Some(first.clone()), at: at(4), ..hello })
        .await
        .unwrap();
    assert_eq!(updated_at(store.clone()).await, (Some(first), Some(at(4))));
}
