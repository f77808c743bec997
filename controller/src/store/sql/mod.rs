//! The stores' SQL, written once: this file and its modules are compiled into both
//! `sqlite` and `postgres` (`#[path]`), each giving the few things that differ —
//! its database type, how a statement's `?` placeholders are written ([`sql`]), a
//! JSON field's extraction, a row lock, and what only one of them has (backups,
//! advisory locks). Behaviour is held to one test suite, run on both.

mod credentials;
mod environments;
mod provisioning;
mod rollouts;

use std::path::Path;

use comfyfleet_config::spec::SpecDigest;
use comfyfleet_config::{ConvergenceReport, Inventory, Labels, MachineId};
use jiff::Timestamp;
use sqlx::Transaction;

use super::{Db, LOCK_ROW, ThisStore, sql};
use crate::store::rollout_model::{NewRollout, RolloutRecord, RolloutStep, StoredEvent, StoredMachineRow};
use crate::store::rows::*;
use crate::store::{
    AuditRecord, CredentialRecord, EnrollRefusal, EnvironmentSummary, Hello, JoinTokenRecord, NewAssignment,
    NewMachine, NewRevision, PackageFile, Prunable, SealedSecret, Store, StoreError, StoreResult,
    StoredAssignment, StoredLock, StoredMachine, StoredRevision, check_join_token,
};

/// `SELECT … FROM machines` with each machine's assignment and latest report joined in.
fn select_machines(condition: &str) -> String {
    format!(
        "SELECT {MACHINE_COLUMNS}, {} FROM machines {} {condition}",
        provisioning::joined_assignment_columns(),
        ASSIGNMENT_JOINS
    )
}

/// Writes the audit entry of the change this transaction makes, if its caller gave
/// one ([`crate::store::audited`]), with `facts` filled in: both commit, or neither.
async fn write_pending_audit(tx: &mut Transaction<'_, Db>, facts: &[(&str, &str)]) -> StoreResult<()> {
    let Some(entry) = crate::store::take_audit(facts) else { return Ok(()) };
    sqlx::query(sqlx::AssertSqlSafe(sql(
        "INSERT INTO audit_events (at, actor, action, target, detail) VALUES (?, ?, ?, ?, ?)",
    )))
    .bind(millis(Timestamp::now()))
    .bind(&entry.actor)
    .bind(&entry.action)
    .bind(&entry.target)
    .bind(&entry.detail)
    .execute(&mut **tx)
    .await
    .map_err(database("writing the audit log"))?;
    Ok(())
}

async fn fetch_machine(tx: &mut Transaction<'_, Db>, id: &str) -> StoreResult<Option<StoredMachine>> {
    let row = sqlx::query(sqlx::AssertSqlSafe(sql(&select_machines("WHERE machines.id = ?"))))
        .bind(id)
        .fetch_optional(&mut **tx)
        .await
        .map_err(database("reading a machine"))?;
    row.as_ref().map(machine_from_row).transpose()
}

impl ThisStore {
    /// Runs `statement` (a DELETE with one `?`, bound to `key`) and, when it removed a
    /// row, the pending audit entry, in one transaction; whether a row went.
    async fn delete_audited(&self, statement: &str, key: &str, doing: &'static str) -> StoreResult<bool> {
        let mut tx = self.write_transaction(doing).await?;
        let result = sqlx::query(sqlx::AssertSqlSafe(sql(statement)))
            .bind(key)
            .execute(&mut *tx)
            .await
            .map_err(database(doing))?;
        if result.rows_affected() > 0 {
            write_pending_audit(&mut tx, &[]).await?;
        }
        tx.commit().await.map_err(database(doing))?;
        Ok(result.rows_affected() > 0)
    }
}

#[async_trait::async_trait]
impl Store for ThisStore {
    async fn create_join_token(&self, token: &JoinTokenRecord) -> StoreResult<()> {
        let mut tx = self.write_transaction("starting to create a join token").await?;
        sqlx::query(sqlx::AssertSqlSafe(sql(
            "INSERT INTO join_tokens (id, secret_sha256, created_at, expires_at, uses_allowed, uses, labels, \
             description, created_by) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )))
        .bind(&token.id)
        .bind(token.secret_sha256.as_slice())
        .bind(millis(token.created_at))
        .bind(millis(token.expires_at))
        .bind(token.uses_allowed.map(i64::from))
        .bind(i64::from(token.uses))
        .bind(labels_json(&token.labels))
        .bind(&token.description)
        .bind(&token.created_by)
        .execute(&mut *tx)
        .await
        .map_err(database("creating a join token"))?;
        write_pending_audit(&mut tx, &[]).await?;
        tx.commit().await.map_err(database("committing a join token"))?;
        Ok(())
    }

    async fn list_join_tokens(&self) -> StoreResult<Vec<JoinTokenRecord>> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql("SELECT * FROM join_tokens ORDER BY created_at, id")))
            .fetch_all(&self.pool)
            .await
            .map_err(database("listing join tokens"))?;
        rows.iter().map(join_token_from_row).collect()
    }

    async fn join_token(&self, id: &str) -> StoreResult<Option<JoinTokenRecord>> {
        let row = sqlx::query(sqlx::AssertSqlSafe(sql("SELECT * FROM join_tokens WHERE id = ?")))
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(database("reading a join token"))?;
        row.as_ref().map(join_token_from_row).transpose()
    }

    async fn delete_join_token(&self, id: &str) -> StoreResult<bool> {
        self.delete_audited("DELETE FROM join_tokens WHERE id = ?", id, "deleting a join token").await
    }

    async fn enroll_machine(
        &self,
        token_id: &str,
        secret_sha256: &[u8; 32],
        machine: &NewMachine,
    ) -> StoreResult<Result<StoredMachine, EnrollRefusal>> {
        let mut tx = self.write_transaction("starting an enrollment").await?;
        let row = sqlx::query(sqlx::AssertSqlSafe(sql(&format!(
            "SELECT * FROM join_tokens WHERE id = ?{LOCK_ROW}"
        ))))
        .bind(token_id)
        .fetch_optional(&mut *tx)
        .await
        .map_err(database("reading a join token"))?;
        let Some(row) = row else {
            return Ok(Err(EnrollRefusal::UnknownToken { id: token_id.to_owned() }));
        };
        let token = join_token_from_row(&row)?;
        if let Err(refusal) = check_join_token(&token, secret_sha256, machine.enrolled_at) {
            return Ok(Err(refusal));
        }
        if let Some((key, value, bound)) = machine.agent_labels.overriding(&token.labels) {
            let (key, value, bound) = (key.to_owned(), value.to_owned(), bound.to_owned());
            return Ok(Err(EnrollRefusal::BindingLabel { key, value, bound }));
        }
        let counted = sqlx::query(sqlx::AssertSqlSafe(sql(
            "UPDATE join_tokens SET uses = uses + 1 WHERE id = ? AND uses = ?",
        )))
        .bind(token_id)
        .bind(i64::from(token.uses))
        .execute(&mut *tx)
        .await
        .map_err(database("counting a join token use"))?;
        if counted.rows_affected() != 1 {
            // Another enrollment used the token between our read and our write.
            return Ok(Err(EnrollRefusal::UsedUp { id: token.id, uses: token.uses.saturating_add(1) }));
        }
        sqlx::query(sqlx::AssertSqlSafe(sql("INSERT INTO machines (id, hostname, enrolled_at, cert_sha256, join_token_id, token_labels, agent_labels, \
             operator_labels) VALUES (?, ?, ?, ?, ?, ?, ?, '{}')")))
        .bind(machine.id.as_str())
        .bind(&machine.hostname)
        .bind(millis(machine.enrolled_at))
        .bind(&machine.cert_sha256)
        .bind(token_id)
        .bind(labels_json(&token.labels))
        .bind(labels_json(&machine.agent_labels))
        .execute(&mut *tx)
        .await
        .map_err(database("creating a machine"))?;
        let stored = fetch_machine(&mut tx, machine.id.as_str())
            .await?
            .ok_or_else(|| corrupt("machine")("vanished inside its own transaction".into()))?;
        write_pending_audit(&mut tx, &[]).await?;
        tx.commit().await.map_err(database("committing an enrollment"))?;
        Ok(Ok(stored))
    }

    async fn get_machine(&self, id: &MachineId) -> StoreResult<Option<StoredMachine>> {
        let mut tx = self.pool.begin().await.map_err(database("reading a machine"))?;
        let machine = fetch_machine(&mut tx, id.as_str()).await?;
        tx.commit().await.map_err(database("reading a machine"))?;
        Ok(machine)
    }

    async fn find_machines(&self, prefix: &str, limit: u32) -> StoreResult<Vec<StoredMachine>> {
        // Ids are [a-z0-9-], so a range scan is an exact prefix match without LIKE escaping.
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql(&select_machines(
            "WHERE machines.id >= ? AND machines.id < ? ORDER BY machines.id LIMIT ?",
        ))))
        .bind(prefix)
        .bind(format!("{prefix}\u{7f}"))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(database("finding machines"))?;
        rows.iter().map(machine_from_row).collect()
    }

    async fn list_machines(
        &self,
        after: Option<&MachineId>,
        limit: u32,
        include_revoked: bool,
    ) -> StoreResult<Vec<StoredMachine>> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql(&select_machines(
            "WHERE machines.id > ? AND (? OR revoked_at IS NULL) ORDER BY machines.id LIMIT ?",
        ))))
        .bind(after.map_or("", MachineId::as_str))
        .bind(include_revoked)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(database("listing machines"))?;
        rows.iter().map(machine_from_row).collect()
    }

    async fn record_hello(&self, id: &MachineId, hello: &Hello) -> StoreResult<()> {
        let inventory = hello.inventory.as_ref().map(serde_json::to_string).transpose().map_err(|e| {
            StoreError::Corrupt { what: "inventory", detail: format!("cannot serialise: {e}") }
        })?;
        let hostname = hello.inventory.as_ref().map(|inventory| inventory.host.hostname.as_str());
        sqlx::query(sqlx::AssertSqlSafe(sql(
            "UPDATE machines SET agent_version = ?, agent_labels = ?, remote_address = ?, last_seen = ?, \
             hostname = COALESCE(?, hostname), \
             inventory = COALESCE(?, inventory), \
             inventory_updated_at = CASE WHEN ? IS NULL OR ? = inventory THEN inventory_updated_at ELSE ? END \
             WHERE id = ?",
        )))
        .bind(&hello.agent_version)
        .bind(labels_json(&hello.agent_labels))
        .bind(&hello.remote_address)
        .bind(millis(hello.at))
        .bind(hostname)
        .bind(inventory.as_deref())
        .bind(inventory.as_deref())
        .bind(inventory.as_deref())
        .bind(millis(hello.at))
        .bind(id.as_str())
        .execute(&self.pool)
        .await
        .map_err(database("recording an agent's hello"))?;
        Ok(())
    }

    async fn record_inventory(
        &self,
        id: &MachineId,
        inventory: &Inventory,
        at: Timestamp,
    ) -> StoreResult<bool> {
        // serde_json writes an inventory's fields in declaration order and its lists in
        // order: one inventory has one JSON text, so the stored text compares as is.
        let json = serde_json::to_string(inventory).map_err(|e| StoreError::Corrupt {
            what: "inventory",
            detail: format!("cannot serialise: {e}"),
        })?;
        let result = sqlx::query(sqlx::AssertSqlSafe(sql(
            "UPDATE machines SET inventory = ?, inventory_updated_at = ?, last_seen = ?, hostname = ? \
             WHERE id = ? AND (inventory IS NULL OR inventory <> ?)",
        )))
        .bind(&json)
        .bind(millis(at))
        .bind(millis(at))
        .bind(&inventory.host.hostname)
        .bind(id.as_str())
        .bind(&json)
        .execute(&self.pool)
        .await
        .map_err(database("recording an inventory"))?;
        Ok(result.rows_affected() > 0)
    }

    async fn record_last_seen(&self, seen: &[(MachineId, Timestamp)]) -> StoreResult<()> {
        if seen.is_empty() {
            return Ok(());
        }
        let mut tx = self.write_transaction("recording last-seen times").await?;
        for (id, at) in seen {
            sqlx::query(sqlx::AssertSqlSafe(sql(
                "UPDATE machines SET last_seen = ? WHERE id = ? AND (last_seen IS NULL OR last_seen < ?)",
            )))
            .bind(millis(*at))
            .bind(id.as_str())
            .bind(millis(*at))
            .execute(&mut *tx)
            .await
            .map_err(database("recording last-seen times"))?;
        }
        tx.commit().await.map_err(database("recording last-seen times"))
    }

    async fn set_operator_labels(&self, id: &MachineId, labels: &Labels) -> StoreResult<()> {
        let mut tx = self.write_transaction("starting to set labels").await?;
        sqlx::query(sqlx::AssertSqlSafe(sql("UPDATE machines SET operator_labels = ? WHERE id = ?")))
            .bind(labels_json(labels))
            .bind(id.as_str())
            .execute(&mut *tx)
            .await
            .map_err(database("setting labels"))?;
        write_pending_audit(&mut tx, &[]).await?;
        tx.commit().await.map_err(database("committing labels"))?;
        Ok(())
    }

    async fn revoke_machine(&self, id: &MachineId, at: Timestamp) -> StoreResult<bool> {
        let mut tx = self.write_transaction("starting a revocation").await?;
        let result = sqlx::query(sqlx::AssertSqlSafe(sql(
            "UPDATE machines SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL",
        )))
        .bind(millis(at))
        .bind(id.as_str())
        .execute(&mut *tx)
        .await
        .map_err(database("revoking a machine"))?;
        let revoked = result.rows_affected() > 0;
        if revoked {
            self.announce(&mut tx, "revoked", &[id.as_str()]).await?;
            write_pending_audit(&mut tx, &[]).await?;
        }
        tx.commit().await.map_err(database("committing a revocation"))?;
        Ok(revoked)
    }

    async fn create_credential(&self, credential: &CredentialRecord) -> StoreResult<()> {
        self.insert_credential(credential).await
    }

    async fn get_credential(&self, id: &str) -> StoreResult<Option<CredentialRecord>> {
        self.credential_by_id(id).await
    }

    async fn list_credentials(&self) -> StoreResult<Vec<CredentialRecord>> {
        self.all_credentials().await
    }

    async fn revoke_credential(&self, id: &str, at: Timestamp) -> StoreResult<bool> {
        self.revoke_credential_row(id, at).await
    }

    async fn append_audit(
        &self,
        at: Timestamp,
        actor: &str,
        action: &str,
        target: &str,
        detail: &str,
    ) -> StoreResult<()> {
        self.insert_audit(at, actor, action, target, detail).await
    }

    async fn list_audit(&self, limit: u32) -> StoreResult<Vec<AuditRecord>> {
        self.audit_rows(limit).await
    }

    async fn fleet_id(&self) -> StoreResult<Option<String>> {
        self.fleet_id_row().await
    }

    async fn adopt_fleet_id(&self, fleet_id: &str, at: Timestamp) -> StoreResult<String> {
        self.insert_fleet_id(fleet_id, at).await
    }

    async fn holds_fleet(&self) -> StoreResult<bool> {
        self.has_fleet_rows().await
    }

    async fn sealed_secret(&self, name: &str) -> StoreResult<Option<SealedSecret>> {
        self.sealed_by_name(name).await
    }

    async fn put_sealed_secret(
        &self,
        name: &str,
        secret: &SealedSecret,
        at: Timestamp,
    ) -> StoreResult<SealedSecret> {
        self.insert_sealed_secret(name, secret, at).await
    }

    async fn set_sealed_secret(&self, name: &str, secret: &SealedSecret, at: Timestamp) -> StoreResult<bool> {
        self.replace_sealed_secret(name, secret, at).await
    }

    async fn delete_sealed_secret(&self, name: &str) -> StoreResult<bool> {
        self.delete_sealed_row(name).await
    }

    async fn sealed_secrets(&self, prefix: &str) -> StoreResult<Vec<(String, SealedSecret, Timestamp)>> {
        self.sealed_rows(prefix).await
    }

    async fn backup(&self, to: &Path) -> StoreResult<()> {
        self.backup_to(to).await
    }

    async fn close(&self) {
        self.close_pool().await;
    }

    async fn prune(&self, what: Prunable, before: Timestamp, limit: u32) -> StoreResult<u64> {
        let statement = match what {
            Prunable::RolloutEvents => {
                "DELETE FROM rollout_events WHERE id IN (SELECT e.id FROM rollout_events e \
                 JOIN rollouts r ON r.id = e.rollout_id \
                 WHERE e.at < ? AND r.state NOT IN ('running', 'paused') LIMIT ?)"
            }
            Prunable::Reports => {
                "DELETE FROM machine_reports WHERE machine_id IN \
                 (SELECT machine_id FROM machine_reports WHERE updated_at < ? LIMIT ?)"
            }
            Prunable::Audit => {
                "DELETE FROM audit_events WHERE id IN (SELECT id FROM audit_events WHERE at < ? LIMIT ?)"
            }
        };
        let result = sqlx::query(sqlx::AssertSqlSafe(sql(statement)))
            .bind(millis(before))
            .bind(i64::from(limit))
            .execute(&self.pool)
            .await
            .map_err(database("pruning old rows"))?;
        Ok(result.rows_affected())
    }

    async fn put_environment_revision(&self, revision: &NewRevision) -> StoreResult<(StoredRevision, bool)> {
        self.put_revision(revision).await
    }

    async fn lock(&self, digest: &str) -> StoreResult<Option<StoredLock>> {
        self.lock_by_digest(digest).await
    }

    async fn package_file(&self, sha256: &str) -> StoreResult<Option<PackageFile>> {
        self.file_by_sha256(sha256).await
    }

    async fn record_index_files(&self, index_key: &str, files: &[PackageFile]) -> StoreResult<()> {
        self.insert_index_files(index_key, files).await
    }

    async fn linking_indexes(&self, sha256: &str) -> StoreResult<Vec<String>> {
        self.indexes_linking(sha256).await
    }

    async fn kept_revision_specs(&self) -> StoreResult<Vec<String>> {
        self.kept_specs().await
    }

    async fn list_environments(&self) -> StoreResult<Vec<EnvironmentSummary>> {
        self.summaries().await
    }

    async fn environment_revisions(&self, environment: &str) -> StoreResult<Vec<StoredRevision>> {
        self.revisions(environment).await
    }

    async fn latest_environment_revision(&self, environment: &str) -> StoreResult<Option<StoredRevision>> {
        self.latest_revision(environment).await
    }

    async fn environment_revision(
        &self,
        environment: &str,
        number: u32,
    ) -> StoreResult<Option<StoredRevision>> {
        self.revision(environment, number).await
    }

    async fn find_environment_revisions(
        &self,
        environment: &str,
        prefix: &str,
        limit: u32,
    ) -> StoreResult<Vec<StoredRevision>> {
        self.find_revisions(environment, prefix, limit).await
    }

    async fn environment_revision_by_id(
        &self,
        environment: &str,
        id: &SpecDigest,
    ) -> StoreResult<Option<StoredRevision>> {
        self.revision_by_id(environment, id).await
    }

    async fn assign(&self, machine: &MachineId, assignment: &NewAssignment) -> StoreResult<StoredAssignment> {
        self.put_assignment(machine, assignment).await
    }

    async fn assignment(&self, machine: &MachineId) -> StoreResult<Option<StoredAssignment>> {
        self.get_assignment(machine).await
    }

    async fn record_report(
        &self,
        machine: &MachineId,
        report: &ConvergenceReport,
        at: Timestamp,
    ) -> StoreResult<()> {
        self.put_report(machine, report, at).await
    }

    async fn report(&self, machine: &MachineId) -> StoreResult<Option<ConvergenceReport>> {
        self.get_report(machine).await
    }

    async fn record_reports(&self, reports: &[(MachineId, ConvergenceReport, Timestamp)]) -> StoreResult<()> {
        self.put_reports(reports).await
    }

    async fn all_reports(&self) -> StoreResult<Vec<(MachineId, ConvergenceReport, Timestamp)>> {
        self.all_reports().await
    }

    async fn create_rollout(&self, rollout: &NewRollout) -> StoreResult<RolloutRecord> {
        self.insert_rollout(rollout).await
    }

    async fn apply_rollout_step(
        &self,
        rollout: u64,
        step: &RolloutStep,
    ) -> StoreResult<Vec<StoredAssignment>> {
        self.apply_step(rollout, step).await
    }

    async fn rollout(&self, id: u64) -> StoreResult<Option<RolloutRecord>> {
        self.rollout_by_id(i64::try_from(id).unwrap_or(i64::MAX)).await
    }

    async fn list_rollouts(&self, environment: Option<&str>, limit: u32) -> StoreResult<Vec<RolloutRecord>> {
        match environment {
            Some(environment) => {
                self.select_rollouts("environment = ?", &[environment.to_owned()], limit).await
            }
            None => self.select_rollouts("TRUE", &[], limit).await,
        }
    }

    async fn open_rollouts(&self) -> StoreResult<Vec<RolloutRecord>> {
        let mut open = self.select_rollouts("state IN ('running', 'paused')", &[], u32::MAX).await?;
        open.reverse();
        Ok(open)
    }

    async fn rollout_snapshot(&self, id: u64) -> StoreResult<Option<(RolloutRecord, Vec<StoredMachineRow>)>> {
        self.select_rollout_snapshot(id).await
    }

    async fn rollout_machines(&self, rollout: u64) -> StoreResult<Vec<StoredMachineRow>> {
        self.select_rollout_machines(rollout).await
    }

    async fn rollout_events(&self, rollout: u64, after: u64, limit: u32) -> StoreResult<Vec<StoredEvent>> {
        self.select_rollout_events(rollout, after, limit).await
    }
}
