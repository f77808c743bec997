//! Assignments and convergence reports in SQLite. A generation is handed out inside
//! the write transaction that replaces the assignment, so two concurrent rollouts
//! never give one machine the same generation twice.

use std::str::FromStr;

use comfyfleet_config::assignment::MachineAssignment;
use comfyfleet_config::spec::{DriverCompat, SpecDigest};
use comfyfleet_config::{AssignmentReason, ConvergenceReport, MachineId};
use jiff::Timestamp;
use sqlx::sqlite::SqliteRow;

use super::{SqliteStore, corrupt, count, database, get, millis, timestamp};
use crate::store::{NewAssignment, StoreError, StoreResult, StoredAssignment};

/// An assignment's columns, named as the machine queries join them in. The plan is
/// left out (only the agent needs it), but for whether it relies on minor compatibility.
pub(super) const JOINED_ASSIGNMENT_COLUMNS: &str = "a.generation AS assignment_generation, \
     a.environment AS assignment_environment, a.revision_number AS assignment_revision_number, \
     a.revision_id AS assignment_revision_id, a.torch AS assignment_torch, \
     json_extract(a.plan_json, '$.driver_compat') AS assignment_driver_compat, \
     a.activate AS assignment_activate, a.reason AS assignment_reason, \
     a.assigned_at AS assignment_assigned_at, a.assigned_by AS assignment_assigned_by, \
     r.report_json AS report_json";

/// What a machine query joins to carry the assignment and the latest report.
pub(super) const ASSIGNMENT_JOINS: &str = "LEFT JOIN machine_assignments AS a ON a.machine_id = machines.id \
     LEFT JOIN machine_reports AS r ON r.machine_id = machines.id";

const ASSIGNMENT_COLUMNS: &str = "machine_id, generation, environment, revision_number, revision_id, plan_json, \
     torch, activate, reason, assigned_at, assigned_by";

fn generation(value: i64) -> StoreResult<u64> {
    u64::try_from(value).map_err(|_| corrupt("assignment generation")(format!("{value} is negative")))
}

fn reason(text: &str) -> StoreResult<AssignmentReason> {
    AssignmentReason::from_str(text).map_err(corrupt("assignment reason"))
}

fn revision_id(text: &str) -> StoreResult<SpecDigest> {
    SpecDigest::from_str(text).map_err(corrupt("assignment revision id"))
}

fn report_from_json(json: &str) -> StoreResult<ConvergenceReport> {
    serde_json::from_str(json).map_err(|e| corrupt("convergence report")(e.to_string()))
}

/// The assignment joined into a machine row, if the machine has one.
pub(super) fn joined_assignment(row: &SqliteRow) -> StoreResult<Option<MachineAssignment>> {
    let Some(value) = get::<Option<i64>>(row, "assignment_generation")? else {
        return Ok(None);
    };
    Ok(Some(MachineAssignment {
        generation: generation(value)?,
        environment: get(row, "assignment_environment")?,
        revision_number: count("assignment revision number", get(row, "assignment_revision_number")?)?,
        revision_id: revision_id(&get::<String>(row, "assignment_revision_id")?)?,
        activate: get(row, "assignment_activate")?,
        reason: reason(&get::<String>(row, "assignment_reason")?)?,
        assigned_at: timestamp("assigned_at", get(row, "assignment_assigned_at")?)?,
        assigned_by: get(row, "assignment_assigned_by")?,
        torch: get(row, "assignment_torch")?,
        driver_compat: match get::<Option<String>>(row, "assignment_driver_compat")?.as_deref() {
            Some("minor") => DriverCompat::Minor,
            _ => DriverCompat::Exact,
        },
    }))
}

/// The latest report joined into a machine row, if the agent sent one.
pub(super) fn joined_report(row: &SqliteRow) -> StoreResult<Option<ConvergenceReport>> {
    get::<Option<String>>(row, "report_json")?.as_deref().map(report_from_json).transpose()
}

fn assignment_from_row(row: &SqliteRow) -> StoreResult<StoredAssignment> {
    let machine_id: String = get(row, "machine_id")?;
    Ok(StoredAssignment {
        machine_id: MachineId::from_str(&machine_id).map_err(|e| corrupt("machine id")(e.to_string()))?,
        generation: generation(get(row, "generation")?)?,
        environment: get(row, "environment")?,
        revision_number: count("assignment revision number", get(row, "revision_number")?)?,
        revision_id: revision_id(&get::<String>(row, "revision_id")?)?,
        plan_json: get(row, "plan_json")?,
        torch: get(row, "torch")?,
        activate: get(row, "activate")?,
        reason: reason(&get::<String>(row, "reason")?)?,
        assigned_at: timestamp("assigned_at", get(row, "assigned_at")?)?,
        assigned_by: get(row, "assigned_by")?,
    })
}

/// Replaces the machine's assignment inside `tx`, raising its generation by one.
pub(super) async fn insert_assignment(
    tx: &mut sqlx::SqliteConnection,
    machine: &MachineId,
    assignment: &NewAssignment,
) -> StoreResult<StoredAssignment> {
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO machine_assignments ({ASSIGNMENT_COLUMNS}) VALUES (?, 1, ?, ?, ?, ?, ?, ?, ?, ?, ?) \
         ON CONFLICT (machine_id) DO UPDATE SET generation = machine_assignments.generation + 1, \
         environment = excluded.environment, revision_number = excluded.revision_number, \
         revision_id = excluded.revision_id, plan_json = excluded.plan_json, torch = excluded.torch, \
         activate = excluded.activate, reason = excluded.reason, assigned_at = excluded.assigned_at, \
         assigned_by = excluded.assigned_by \
         RETURNING {ASSIGNMENT_COLUMNS}"
    )))
    .bind(machine.as_str())
    .bind(&assignment.environment)
    .bind(i64::from(assignment.revision_number))
    .bind(assignment.revision_id.as_str())
    .bind(&assignment.plan_json)
    .bind(&assignment.torch)
    .bind(assignment.activate)
    .bind(assignment.reason.as_str())
    .bind(millis(assignment.assigned_at))
    .bind(&assignment.assigned_by)
    .fetch_one(&mut *tx)
    .await
    .map_err(database("storing an assignment"))?;
    assignment_from_row(&row)
}

/// Reports per statement (one machine appears once in a batch).
const REPORTS_PER_STATEMENT: usize = 1_000;
/// Assignments per statement: 11 bound values each, far under SQLite's limit.
const ASSIGNMENTS_PER_STATEMENT: usize = 500;

/// Replaces many machines' assignments inside `tx`, each generation raised by one,
/// a few statements for thousands of machines. Returned in no particular order.
pub(super) async fn insert_assignments(
    tx: &mut sqlx::SqliteConnection,
    assignments: &[(&MachineId, &NewAssignment)],
) -> StoreResult<Vec<StoredAssignment>> {
    let mut stored = Vec::with_capacity(assignments.len());
    for chunk in assignments.chunks(ASSIGNMENTS_PER_STATEMENT) {
        let mut query: sqlx::QueryBuilder<sqlx::Sqlite> =
            sqlx::QueryBuilder::new(format!("INSERT INTO machine_assignments ({ASSIGNMENT_COLUMNS}) "));
        query.push_values(chunk, |mut row, (machine, assignment)| {
            row.push_bind(machine.as_str().to_owned())
                .push_bind(1i64)
                .push_bind(assignment.environment.clone())
                .push_bind(i64::from(assignment.revision_number))
                .push_bind(assignment.revision_id.as_str().to_owned())
                .push_bind(assignment.plan_json.clone())
                .push_bind(assignment.torch.clone())
                .push_bind(assignment.activate)
                .push_bind(assignment.reason.as_str())
                .push_bind(millis(assignment.assigned_at))
                .push_bind(assignment.assigned_by.clone());
        });
        query.push(format!(
            " ON CONFLICT (machine_id) DO UPDATE SET generation = machine_assignments.generation + 1, \
             environment = excluded.environment, revision_number = excluded.revision_number, \
             revision_id = excluded.revision_id, plan_json = excluded.plan_json, torch = excluded.torch, \
             activate = excluded.activate, reason = excluded.reason, assigned_at = excluded.assigned_at, \
             assigned_by = excluded.assigned_by RETURNING {ASSIGNMENT_COLUMNS}"
        ));
        let rows = query.build().fetch_all(&mut *tx).await.map_err(database("storing assignments"))?;
        for row in &rows {
            stored.push(assignment_from_row(row)?);
        }
    }
    Ok(stored)
}

impl SqliteStore {
    pub(super) async fn put_assignment(
        &self,
        machine: &MachineId,
        assignment: &NewAssignment,
    ) -> StoreResult<StoredAssignment> {
        let mut tx = self.write_transaction("starting an assignment").await?;
        let stored = insert_assignment(&mut tx, machine, assignment).await?;
        tx.commit().await.map_err(database("committing an assignment"))?;
        Ok(stored)
    }

    pub(super) async fn all_reports(&self) -> StoreResult<Vec<(MachineId, ConvergenceReport, Timestamp)>> {
        let rows = sqlx::query("SELECT machine_id, report_json, updated_at FROM machine_reports")
            .fetch_all(&self.pool)
            .await
            .map_err(database("reading convergence reports"))?;
        rows.iter()
            .map(|row| {
                let id: String = get(row, "machine_id")?;
                Ok((
                    MachineId::from_str(&id).map_err(|e| corrupt("machine id")(e.to_string()))?,
                    report_from_json(&get::<String>(row, "report_json")?)?,
                    timestamp("report updated_at", get(row, "updated_at")?)?,
                ))
            })
            .collect()
    }

    pub(super) async fn get_assignment(&self, machine: &MachineId) -> StoreResult<Option<StoredAssignment>> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {ASSIGNMENT_COLUMNS} FROM machine_assignments WHERE machine_id = ?"
        )))
        .bind(machine.as_str())
        .fetch_optional(&self.pool)
        .await
        .map_err(database("reading an assignment"))?;
        row.as_ref().map(assignment_from_row).transpose()
    }

    pub(super) async fn put_report(
        &self,
        machine: &MachineId,
        report: &ConvergenceReport,
        at: Timestamp,
    ) -> StoreResult<()> {
        let json = serde_json::to_string(report).map_err(|e| StoreError::Corrupt {
            what: "convergence report",
            detail: format!("cannot serialise: {e}"),
        })?;
        sqlx::query(
            "INSERT INTO machine_reports (machine_id, report_json, updated_at) VALUES (?, ?, ?) \
             ON CONFLICT (machine_id) DO UPDATE SET report_json = excluded.report_json, \
             updated_at = excluded.updated_at",
        )
        .bind(machine.as_str())
        .bind(json)
        .bind(millis(at))
        .execute(&self.pool)
        .await
        .map_err(database("recording a convergence report"))?;
        Ok(())
    }

    pub(super) async fn put_reports(
        &self,
        reports: &[(MachineId, ConvergenceReport, Timestamp)],
    ) -> StoreResult<()> {
        let mut rows = Vec::with_capacity(reports.len());
        for (machine, report, at) in reports {
            let json = serde_json::to_string(report).map_err(|e| StoreError::Corrupt {
                what: "convergence report",
                detail: format!("cannot serialise: {e}"),
            })?;
            rows.push((machine.as_str().to_owned(), json, millis(*at)));
        }
        let mut tx = self.write_transaction("starting to record reports").await?;
        for chunk in rows.chunks(REPORTS_PER_STATEMENT) {
            let mut query: sqlx::QueryBuilder<sqlx::Sqlite> =
                sqlx::QueryBuilder::new("INSERT INTO machine_reports (machine_id, report_json, updated_at) ");
            query.push_values(chunk, |mut row, (machine, json, at)| {
                row.push_bind(machine.clone()).push_bind(json.clone()).push_bind(*at);
            });
            query.push(
                " ON CONFLICT (machine_id) DO UPDATE SET report_json = excluded.report_json, \
                 updated_at = excluded.updated_at",
            );
            query.build().execute(&mut *tx).await.map_err(database("recording convergence reports"))?;
        }
        tx.commit().await.map_err(database("committing reports"))?;
        Ok(())
    }

    pub(super) async fn get_report(&self, machine: &MachineId) -> StoreResult<Option<ConvergenceReport>> {
        let json: Option<String> =
            sqlx::query_scalar("SELECT report_json FROM machine_reports WHERE machine_id = ?")
                .bind(machine.as_str())
                .fetch_optional(&self.pool)
                .await
                .map_err(database("reading a convergence report"))?;
        json.as_deref().map(report_from_json).transpose()
    }
}

#[cfg(test)]
mod tests {
    use comfyfleet_config::Labels;
    use comfyfleet_config::convergence::{Phase, StepReport, StepState};

    use super::*;
    use crate::store::{JoinTokenRecord, NewMachine, NewRevision, Store};

    async fn store_with_machines(ids: &[&str]) -> (tempfile::TempDir, SqliteStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("controller.db")).await.unwrap();
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
        (dir, store)
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

    #[tokio::test]
    async fn generations_start_at_one_and_rise_per_machine() {
        let (_dir, store) = store_with_machines(&["m1", "m2"]).await;
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

    #[tokio::test]
    async fn concurrent_assignments_get_distinct_generations() {
        let (_dir, store) = store_with_machines(&["m1"]).await;
        let store = std::sync::Arc::new(store);
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..6 {
            let store = store.clone();
            tasks.spawn(
                async move { store.assign(&id("m1"), &assignment(1, AssignmentReason::Rollout)).await },
            );
        }
        let mut generations = Vec::new();
        while let Some(result) = tasks.join_next().await {
            generations.push(result.unwrap().unwrap().generation);
        }
        generations.sort_unstable();
        assert_eq!(generations, [1, 2, 3, 4, 5, 6]);
    }

    #[tokio::test]
    async fn an_assignment_must_name_a_known_machine_and_revision() {
        let (_dir, store) = store_with_machines(&["m1"]).await;
        assert!(store.assign(&id("nobody"), &assignment(1, AssignmentReason::Rollout)).await.is_err());
        let mut unknown = assignment(1, AssignmentReason::Rollout);
        unknown.revision_number = 9;
        assert!(store.assign(&id("m1"), &unknown).await.is_err());
        assert_eq!(store.assignment(&id("m1")).await.unwrap(), None);
    }

    #[tokio::test]
    async fn reports_round_trip_and_the_latest_wins() {
        let (_dir, store) = store_with_machines(&["m1"]).await;
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

    #[tokio::test]
    async fn machines_carry_their_assignment_and_report() {
        let (_dir, store) = store_with_machines(&["m1", "m2"]).await;
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

    #[tokio::test]
    async fn revisions_are_found_by_exact_id() {
        let (_dir, store) = store_with_machines(&[]).await;
        let b: SpecDigest = "b".repeat(64).parse().unwrap();
        let found = store.environment_revision_by_id("render", &b).await.unwrap().unwrap();
        assert_eq!(found.number, 2);
        assert_eq!(store.environment_revision_by_id("preview", &b).await.unwrap(), None);
        let c: SpecDigest = "c".repeat(64).parse().unwrap();
        assert_eq!(store.environment_revision_by_id("render", &c).await.unwrap(), None);
    }

    #[tokio::test]
    async fn a_rollout_step_is_its_rows_assignments_and_events_together() {
        use crate::rollouts::model::*;
        let (_dir, store) = store_with_machines(&["m1", "m2"]).await;
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
    }
}
