//! Rollouts, their machine rows and events. An engine step — row changes,
//! the assignments they make and their events — is one transaction: after a crash
//! the store holds either all of a decision or none of it.

use std::collections::HashMap;

use comfyfleet_config::MachineId;

use super::provisioning::insert_assignments;
use super::{Db, ThisStore, sql};
use crate::store::rollout_model::{
    MachineRow, NewEvent, NewRollout, RolloutChange, RolloutRecord, RolloutStep, StoredEvent,
    StoredMachineRow,
};
use crate::store::rows::*;
use crate::store::{StoreResult, StoredAssignment};

/// Rows per statement: 17 bound values each.
const ROWS_PER_STATEMENT: usize = 500;
/// Events per statement: 7 bound values each.
const EVENTS_PER_STATEMENT: usize = 1_000;

async fn write_rows(
    tx: &mut <Db as sqlx::Database>::Connection,
    rollout: u64,
    rows: &[&MachineRow],
) -> StoreResult<()> {
    let rollout = i64::try_from(rollout).unwrap_or(i64::MAX);
    for chunk in rows.chunks(ROWS_PER_STATEMENT) {
        let mut query: sqlx::QueryBuilder<Db> = sqlx::QueryBuilder::new(
            "INSERT INTO rollout_machines (rollout_id, machine_id, ordinal, phase, status, generation, plan_json, \
             torch, from_environment, from_revision_number, detail, since, activations, attempts, rollback_tried, \
             stalled, joined) ",
        );
        query.push_values(chunk, |mut values, row| {
            values
                .push_bind(rollout)
                .push_bind(row.machine_id.as_str().to_owned())
                .push_bind(i64::from(row.ordinal))
                .push_bind(i64::from(row.phase))
                .push_bind(row.status.as_str())
                .push_bind(i64::try_from(row.generation).unwrap_or(i64::MAX))
                .push_bind(row.plan_json.clone())
                .push_bind(row.torch.clone())
                .push_bind(row.from.as_ref().map(|from| from.environment.clone()))
                .push_bind(row.from.as_ref().map(|from| i64::from(from.number)))
                .push_bind(row.detail.clone())
                .push_bind(millis(row.since))
                .push_bind(i64::from(row.activations))
                .push_bind(i64::from(row.attempts))
                .push_bind(row.rollback_tried)
                .push_bind(row.stalled)
                .push_bind(row.joined);
        });
        query.push(
            " ON CONFLICT (rollout_id, machine_id) DO UPDATE SET ordinal = excluded.ordinal, \
             phase = excluded.phase, status = excluded.status, generation = excluded.generation, \
             plan_json = excluded.plan_json, torch = excluded.torch, detail = excluded.detail, \
             since = excluded.since, activations = excluded.activations, attempts = excluded.attempts, \
             rollback_tried = excluded.rollback_tried, stalled = excluded.stalled, joined = excluded.joined",
        );
        query.build().execute(&mut *tx).await.map_err(database("storing rollout machines"))?;
    }
    Ok(())
}

async fn write_events(
    tx: &mut <Db as sqlx::Database>::Connection,
    rollout: u64,
    events: &[NewEvent],
) -> StoreResult<()> {
    let rollout = i64::try_from(rollout).unwrap_or(i64::MAX);
    for chunk in events.chunks(EVENTS_PER_STATEMENT) {
        let mut query: sqlx::QueryBuilder<Db> = sqlx::QueryBuilder::new(
            "INSERT INTO rollout_events (rollout_id, at, machine_id, kind, from_status, detail, phase) ",
        );
        query.push_values(chunk, |mut values, event| {
            values
                .push_bind(rollout)
                .push_bind(millis(event.at))
                .push_bind(event.machine_id.as_ref().map(|id| id.as_str().to_owned()).unwrap_or_default())
                .push_bind(event.kind.clone())
                .push_bind(event.from.clone())
                .push_bind(event.detail.clone())
                .push_bind(i64::from(event.phase));
        });
        query.build().execute(&mut *tx).await.map_err(database("storing rollout events"))?;
    }
    Ok(())
}

async fn write_change(
    tx: &mut <Db as sqlx::Database>::Connection,
    rollout: u64,
    change: &RolloutChange,
) -> StoreResult<()> {
    sqlx::query(sqlx::AssertSqlSafe(sql("UPDATE rollouts SET state = ?, reason = ?, budget_exceeded = ?, stalled = ?, finished_at = ? WHERE id = ?")))
    .bind(change.state.as_str())
    .bind(&change.reason)
    .bind(change.budget_exceeded)
    .bind(change.stalled)
    .bind(change.finished_at.map(millis))
    .bind(i64::try_from(rollout).unwrap_or(i64::MAX))
    .execute(&mut *tx)
    .await
    .map_err(database("updating a rollout"))?;
    Ok(())
}

async fn fetch_rollout<'e>(
    db: impl sqlx::Executor<'e, Database = Db>,
    id: i64,
) -> StoreResult<Option<RolloutRecord>> {
    let row = sqlx::query(sqlx::AssertSqlSafe(sql(&format!(
        "SELECT {ROLLOUT_COLUMNS} FROM rollouts WHERE id = ?"
    ))))
    .bind(id)
    .fetch_optional(db)
    .await
    .map_err(database("reading a rollout"))?;
    row.as_ref().map(rollout_from_row).transpose()
}

async fn fetch_rollout_rows<'e>(
    db: impl sqlx::Executor<'e, Database = Db>,
    rollout: u64,
) -> StoreResult<Vec<StoredMachineRow>> {
    let rows = sqlx::query(sqlx::AssertSqlSafe(sql(&format!(
        "SELECT {ROW_COLUMNS} FROM rollout_machines AS m JOIN machines ON machines.id = m.machine_id \
         WHERE m.rollout_id = ? ORDER BY m.ordinal"
    ))))
    .bind(i64::try_from(rollout).unwrap_or(i64::MAX))
    .fetch_all(db)
    .await
    .map_err(database("reading a rollout's machines"))?;
    rows.iter().map(machine_row_from).collect()
}

impl ThisStore {
    pub(super) async fn insert_rollout(&self, rollout: &NewRollout) -> StoreResult<RolloutRecord> {
        let mut tx = self.write_transaction("starting a rollout").await?;
        self.fence(&mut tx).await?;
        let row = sqlx::query(sqlx::AssertSqlSafe(sql(&format!(
            "INSERT INTO rollouts (environment, revision_number, revision_id, kind, policy_json, state, \
             named_machines, batch_size, undo_of, created_at, created_by) \
             VALUES (?, ?, ?, ?, ?, 'running', ?, ?, ?, ?, ?) RETURNING {ROLLOUT_COLUMNS}"
        ))))
        .bind(&rollout.environment)
        .bind(i64::from(rollout.revision_number))
        .bind(rollout.revision_id.as_str())
        .bind(rollout.kind.as_str())
        .bind(policy_json(&rollout.policy)?)
        .bind(rollout.named_machines)
        .bind(i64::from(rollout.batch_size))
        .bind(rollout.undo_of.map(i64::from))
        .bind(millis(rollout.created_at))
        .bind(&rollout.created_by)
        .fetch_one(&mut *tx)
        .await
        .map_err(database("storing a rollout"))?;
        let record = rollout_from_row(&row)?;
        let rows: Vec<&MachineRow> = rollout.rows.iter().collect();
        write_rows(&mut tx, record.id, &rows).await?;
        write_events(&mut tx, record.id, &rollout.events).await?;
        super::write_pending_audit(&mut tx, &[("rollout", &record.id.to_string())]).await?;
        tx.commit().await.map_err(database("committing a rollout"))?;
        Ok(record)
    }

    pub(super) async fn apply_step(
        &self,
        rollout: u64,
        step: &RolloutStep,
    ) -> StoreResult<Vec<StoredAssignment>> {
        let mut tx = self.write_transaction("starting a rollout step").await?;
        self.fence(&mut tx).await?;
        let wanted: Vec<(&MachineId, &crate::store::NewAssignment)> = step
            .rows
            .iter()
            .filter_map(|write| {
                write.assignment.as_ref().map(|assignment| (&write.row.machine_id, assignment))
            })
            .collect();
        let mut assigned = insert_assignments(&mut tx, &wanted).await?;
        let generations: HashMap<&MachineId, u64> =
            assigned.iter().map(|stored| (&stored.machine_id, stored.generation)).collect();
        let rows: Vec<MachineRow> = step
            .rows
            .iter()
            .map(|write| {
                let mut row = write.row.clone();
                if let Some(generation) = generations.get(&row.machine_id) {
                    row.generation = *generation;
                }
                row
            })
            .collect();
        let rows: Vec<&MachineRow> = rows.iter().collect();
        write_rows(&mut tx, rollout, &rows).await?;
        write_events(&mut tx, rollout, &step.events).await?;
        // In the order of the rows that made them.
        let order: HashMap<&MachineId, usize> =
            wanted.iter().enumerate().map(|(index, (machine, _))| (*machine, index)).collect();
        assigned.sort_by_key(|stored| order.get(&stored.machine_id).copied().unwrap_or(usize::MAX));
        if let Some(change) = &step.change {
            write_change(&mut tx, rollout, change).await?;
        }
        let ids: Vec<&str> = assigned.iter().map(|stored| stored.machine_id.as_str()).collect();
        self.announce(&mut tx, "assigned", &ids).await?;
        super::write_pending_audit(&mut tx, &[]).await?;
        tx.commit().await.map_err(database("committing a rollout step"))?;
        Ok(assigned)
    }

    pub(super) async fn select_rollouts(
        &self,
        condition: &str,
        binds: &[String],
        limit: u32,
    ) -> StoreResult<Vec<RolloutRecord>> {
        let statement =
            format!("SELECT {ROLLOUT_COLUMNS} FROM rollouts WHERE {condition} ORDER BY id DESC LIMIT ?");
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql(&statement)));
        for bind in binds {
            query = query.bind(bind);
        }
        let rows =
            query.bind(i64::from(limit)).fetch_all(&self.pool).await.map_err(database("reading rollouts"))?;
        rows.iter().map(rollout_from_row).collect()
    }

    pub(super) async fn rollout_by_id(&self, id: i64) -> StoreResult<Option<RolloutRecord>> {
        fetch_rollout(&self.pool, id).await
    }

    /// A rollout and its rows as of one moment: a step that commits while they are
    /// read shows in both or in neither.
    pub(super) async fn select_rollout_snapshot(
        &self,
        id: u64,
    ) -> StoreResult<Option<(RolloutRecord, Vec<StoredMachineRow>)>> {
        let mut tx = self.snapshot_transaction().await?;
        let Some(record) = fetch_rollout(&mut *tx, i64::try_from(id).unwrap_or(i64::MAX)).await? else {
            return Ok(None);
        };
        let rows = fetch_rollout_rows(&mut *tx, id).await?;
        tx.commit().await.map_err(database("ending a rollout read"))?;
        Ok(Some((record, rows)))
    }

    pub(super) async fn select_rollout_machines(&self, rollout: u64) -> StoreResult<Vec<StoredMachineRow>> {
        fetch_rollout_rows(&self.pool, rollout).await
    }

    pub(super) async fn select_rollout_events(
        &self,
        rollout: u64,
        after: u64,
        limit: u32,
    ) -> StoreResult<Vec<StoredEvent>> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql(
            "SELECT id, rollout_id, at, machine_id, kind, from_status, detail, phase FROM rollout_events \
             WHERE rollout_id = ? AND id > ? ORDER BY id LIMIT ?",
        )))
        .bind(i64::try_from(rollout).unwrap_or(i64::MAX))
        .bind(i64::try_from(after).unwrap_or(i64::MAX))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(database("reading rollout events"))?;
        rows.iter().map(event_from).collect()
    }
}
