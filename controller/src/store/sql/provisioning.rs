//! Assignments and convergence reports. A generation is handed out inside
//! the write transaction that replaces the assignment, so two concurrent rollouts
//! never give one machine the same generation twice.

use std::str::FromStr;

use comfyfleet_config::{ConvergenceReport, MachineId};
use jiff::Timestamp;

use super::{Db, ThisStore, sql};
use crate::store::rows::*;
use crate::store::{NewAssignment, StoreError, StoreResult, StoredAssignment};

/// An assignment's columns, named as the machine queries join them in. The plan is
/// left out (only the agent needs it), but for whether it relies on minor compatibility.
pub(super) fn joined_assignment_columns() -> String {
    format!(
        "a.generation AS assignment_generation, \
         a.environment AS assignment_environment, a.revision_number AS assignment_revision_number, \
         a.revision_id AS assignment_revision_id, a.torch AS assignment_torch, \
         {} AS assignment_driver_compat, \
         a.activate AS assignment_activate, a.reason AS assignment_reason, \
         a.assigned_at AS assignment_assigned_at, a.assigned_by AS assignment_assigned_by, \
         r.report_json AS report_json",
        super::super::DRIVER_COMPAT
    )
}

/// Replaces the machine's assignment inside `tx`, raising its generation by one.
pub(super) async fn insert_assignment(
    tx: &mut <Db as sqlx::Database>::Connection,
    machine: &MachineId,
    assignment: &NewAssignment,
) -> StoreResult<StoredAssignment> {
    let row = sqlx::query(sqlx::AssertSqlSafe(sql(&format!(
        "INSERT INTO machine_assignments ({ASSIGNMENT_COLUMNS}) VALUES (?, 1, ?, ?, ?, ?, ?, ?, ?, ?, ?) \
         ON CONFLICT (machine_id) DO UPDATE SET generation = machine_assignments.generation + 1, \
         environment = excluded.environment, revision_number = excluded.revision_number, \
         revision_id = excluded.revision_id, plan_json = excluded.plan_json, torch = excluded.torch, \
         activate = excluded.activate, reason = excluded.reason, assigned_at = excluded.assigned_at, \
         assigned_by = excluded.assigned_by \
         RETURNING {ASSIGNMENT_COLUMNS}"
    ))))
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
    tx: &mut <Db as sqlx::Database>::Connection,
    assignments: &[(&MachineId, &NewAssignment)],
) -> StoreResult<Vec<StoredAssignment>> {
    let mut stored = Vec::with_capacity(assignments.len());
    for chunk in assignments.chunks(ASSIGNMENTS_PER_STATEMENT) {
        let mut query: sqlx::QueryBuilder<Db> =
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

impl ThisStore {
    pub(super) async fn put_assignment(
        &self,
        machine: &MachineId,
        assignment: &NewAssignment,
    ) -> StoreResult<StoredAssignment> {
        let mut tx = self.write_transaction("starting an assignment").await?;
        let stored = insert_assignment(&mut tx, machine, assignment).await?;
        self.announce(&mut tx, "assigned", &[machine.as_str()]).await?;
        super::write_pending_audit(&mut tx, &[("generation", &stored.generation.to_string())]).await?;
        tx.commit().await.map_err(database("committing an assignment"))?;
        Ok(stored)
    }

    pub(super) async fn all_reports(&self) -> StoreResult<Vec<(MachineId, ConvergenceReport, Timestamp)>> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql(
            "SELECT machine_id, report_json, updated_at FROM machine_reports",
        )))
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
        let row = sqlx::query(sqlx::AssertSqlSafe(sql(&format!(
            "SELECT {ASSIGNMENT_COLUMNS} FROM machine_assignments WHERE machine_id = ?"
        ))))
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
        let mut tx = self.write_transaction("starting to record a report").await?;
        sqlx::query(sqlx::AssertSqlSafe(sql(
            "INSERT INTO machine_reports (machine_id, report_json, updated_at) VALUES (?, ?, ?) \
             ON CONFLICT (machine_id) DO UPDATE SET report_json = excluded.report_json, \
             updated_at = excluded.updated_at",
        )))
        .bind(machine.as_str())
        .bind(json)
        .bind(millis(at))
        .execute(&mut *tx)
        .await
        .map_err(database("recording a convergence report"))?;
        self.announce(&mut tx, "reported", &[machine.as_str()]).await?;
        tx.commit().await.map_err(database("committing a report"))
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
            let mut query: sqlx::QueryBuilder<Db> =
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
        let ids: Vec<&str> = reports.iter().map(|(machine, _, _)| machine.as_str()).collect();
        self.announce(&mut tx, "reported", &ids).await?;
        tx.commit().await.map_err(database("committing reports"))?;
        Ok(())
    }

    pub(super) async fn get_report(&self, machine: &MachineId) -> StoreResult<Option<ConvergenceReport>> {
        let json: Option<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(sql(
            "SELECT report_json FROM machine_reports WHERE machine_id = ?",
        )))
        .bind(machine.as_str())
        .fetch_optional(&self.pool)
        .await
        .map_err(database("reading a convergence report"))?;
        json.as_deref().map(report_from_json).transpose()
    }
}
