//! Credentials, the audit log, the fleet's id and its sealed secrets: who may call,
//! what they did, which fleet this database holds.

use jiff::Timestamp;
use sqlx::Transaction;

use super::{Db, ThisStore, sql, write_pending_audit};
use crate::store::rows::*;
use crate::store::{AuditRecord, CredentialRecord, SealedSecret, StoreResult};

/// Inserts a sealed secret; `on_conflict` says what an existing one of that name gets.
async fn insert_sealed(
    tx: &mut Transaction<'_, Db>,
    name: &str,
    secret: &SealedSecret,
    at: Timestamp,
    on_conflict: &str,
) -> StoreResult<()> {
    let statement = format!(
        "INSERT INTO fleet_secrets (name, nonce, sealed, created_at) VALUES (?, ?, ?, ?) {on_conflict}"
    );
    sqlx::query(sqlx::AssertSqlSafe(sql(&statement)))
        .bind(name)
        .bind(secret.nonce.as_slice())
        .bind(secret.sealed.as_slice())
        .bind(millis(at))
        .execute(&mut **tx)
        .await
        .map_err(database("storing a sealed secret"))?;
    Ok(())
}

impl ThisStore {
    pub(super) async fn insert_credential(&self, credential: &CredentialRecord) -> StoreResult<()> {
        let mut tx = self.write_transaction("starting to create a credential").await?;
        sqlx::query(sqlx::AssertSqlSafe(sql(
            "INSERT INTO credentials (id, name, role, secret_sha256, created_at, revoked_at, created_by) \
             VALUES (?, ?, ?, ?, ?, ?, ?)",
        )))
        .bind(&credential.id)
        .bind(&credential.name)
        .bind(credential.role.as_str())
        .bind(credential.secret_sha256.as_slice())
        .bind(millis(credential.created_at))
        .bind(credential.revoked_at.map(millis))
        .bind(&credential.created_by)
        .execute(&mut *tx)
        .await
        .map_err(database("creating a credential"))?;
        write_pending_audit(&mut tx, &[]).await?;
        tx.commit().await.map_err(database("committing a credential"))?;
        Ok(())
    }

    pub(super) async fn credential_by_id(&self, id: &str) -> StoreResult<Option<CredentialRecord>> {
        let row = sqlx::query(sqlx::AssertSqlSafe(sql("SELECT * FROM credentials WHERE id = ?")))
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(database("reading a credential"))?;
        row.as_ref().map(credential_from_row).transpose()
    }

    pub(super) async fn all_credentials(&self) -> StoreResult<Vec<CredentialRecord>> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql("SELECT * FROM credentials ORDER BY created_at, id")))
            .fetch_all(&self.pool)
            .await
            .map_err(database("listing credentials"))?;
        rows.iter().map(credential_from_row).collect()
    }

    pub(super) async fn revoke_credential_row(&self, id: &str, at: Timestamp) -> StoreResult<bool> {
        let mut tx = self.write_transaction("starting to revoke a credential").await?;
        let result = sqlx::query(sqlx::AssertSqlSafe(sql(
            "UPDATE credentials SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL",
        )))
        .bind(millis(at))
        .bind(id)
        .execute(&mut *tx)
        .await
        .map_err(database("revoking a credential"))?;
        if result.rows_affected() > 0 {
            write_pending_audit(&mut tx, &[]).await?;
        }
        tx.commit().await.map_err(database("committing a credential revocation"))?;
        Ok(result.rows_affected() > 0)
    }

    pub(super) async fn insert_audit(
        &self,
        at: Timestamp,
        actor: &str,
        action: &str,
        target: &str,
        detail: &str,
    ) -> StoreResult<()> {
        sqlx::query(sqlx::AssertSqlSafe(sql(
            "INSERT INTO audit_events (at, actor, action, target, detail) VALUES (?, ?, ?, ?, ?)",
        )))
        .bind(millis(at))
        .bind(actor)
        .bind(action)
        .bind(target)
        .bind(detail)
        .execute(&self.pool)
        .await
        .map_err(database("writing the audit log"))?;
        Ok(())
    }

    pub(super) async fn audit_rows(&self, limit: u32) -> StoreResult<Vec<AuditRecord>> {
        let rows =
            sqlx::query(sqlx::AssertSqlSafe(sql("SELECT * FROM audit_events ORDER BY id DESC LIMIT ?")))
                .bind(i64::from(limit))
                .fetch_all(&self.pool)
                .await
                .map_err(database("reading the audit log"))?;
        rows.iter()
            .map(|row| {
                Ok(AuditRecord {
                    id: u64::try_from(get::<i64>(row, "id")?).unwrap_or_default(),
                    at: timestamp("audit time", get(row, "at")?)?,
                    actor: get(row, "actor")?,
                    action: get(row, "action")?,
                    target: get(row, "target")?,
                    detail: get(row, "detail")?,
                })
            })
            .collect()
    }

    pub(super) async fn fleet_id_row(&self) -> StoreResult<Option<String>> {
        sqlx::query_scalar(sqlx::AssertSqlSafe(sql("SELECT fleet_id FROM fleet WHERE singleton = 1")))
            .fetch_optional(&self.pool)
            .await
            .map_err(database("reading the fleet id"))
    }

    pub(super) async fn insert_fleet_id(&self, fleet_id: &str, at: Timestamp) -> StoreResult<String> {
        let mut tx = self.write_transaction("recording the fleet id").await?;
        sqlx::query(sqlx::AssertSqlSafe(sql(
            "INSERT INTO fleet (singleton, fleet_id, created_at) VALUES (1, ?, ?) ON CONFLICT DO NOTHING",
        )))
        .bind(fleet_id)
        .bind(millis(at))
        .execute(&mut *tx)
        .await
        .map_err(database("recording the fleet id"))?;
        let held: String =
            sqlx::query_scalar(sqlx::AssertSqlSafe(sql("SELECT fleet_id FROM fleet WHERE singleton = 1")))
                .fetch_one(&mut *tx)
                .await
                .map_err(database("reading the fleet id"))?;
        tx.commit().await.map_err(database("recording the fleet id"))?;
        Ok(held)
    }

    pub(super) async fn has_fleet_rows(&self) -> StoreResult<bool> {
        sqlx::query_scalar(sqlx::AssertSqlSafe(sql(
            "SELECT EXISTS (SELECT 1 FROM credentials) OR EXISTS (SELECT 1 FROM machines) \
             OR EXISTS (SELECT 1 FROM environment_revisions)",
        )))
        .fetch_one(&self.pool)
        .await
        .map_err(database("looking for a fleet in the database"))
    }

    pub(super) async fn sealed_by_name(&self, name: &str) -> StoreResult<Option<SealedSecret>> {
        let row =
            sqlx::query(sqlx::AssertSqlSafe(sql("SELECT nonce, sealed FROM fleet_secrets WHERE name = ?")))
                .bind(name)
                .fetch_optional(&self.pool)
                .await
                .map_err(database("reading a sealed secret"))?;
        row.map(|row| Ok(SealedSecret { nonce: get(&row, "nonce")?, sealed: get(&row, "sealed")? }))
            .transpose()
    }

    pub(super) async fn insert_sealed_secret(
        &self,
        name: &str,
        secret: &SealedSecret,
        at: Timestamp,
    ) -> StoreResult<SealedSecret> {
        let mut tx = self.write_transaction("storing a sealed secret").await?;
        insert_sealed(&mut tx, name, secret, at, "ON CONFLICT DO NOTHING").await?;
        let row =
            sqlx::query(sqlx::AssertSqlSafe(sql("SELECT nonce, sealed FROM fleet_secrets WHERE name = ?")))
                .bind(name)
                .fetch_one(&mut *tx)
                .await
                .map_err(database("reading a sealed secret"))?;
        let stored = SealedSecret { nonce: get(&row, "nonce")?, sealed: get(&row, "sealed")? };
        tx.commit().await.map_err(database("storing a sealed secret"))?;
        Ok(stored)
    }

    pub(super) async fn replace_sealed_secret(
        &self,
        name: &str,
        secret: &SealedSecret,
        at: Timestamp,
    ) -> StoreResult<bool> {
        let mut tx = self.write_transaction("storing a sealed secret").await?;
        let existed: bool = sqlx::query_scalar(sqlx::AssertSqlSafe(sql(
            "SELECT EXISTS (SELECT 1 FROM fleet_secrets WHERE name = ?)",
        )))
        .bind(name)
        .fetch_one(&mut *tx)
        .await
        .map_err(database("reading a sealed secret"))?;
        let replace = "ON CONFLICT (name) DO UPDATE SET nonce = excluded.nonce, sealed = excluded.sealed, \
                       created_at = excluded.created_at";
        insert_sealed(&mut tx, name, secret, at, replace).await?;
        write_pending_audit(&mut tx, &[("created", if existed { "replaced" } else { "created" })]).await?;
        tx.commit().await.map_err(database("storing a sealed secret"))?;
        Ok(existed)
    }

    pub(super) async fn delete_sealed_row(&self, name: &str) -> StoreResult<bool> {
        self.delete_audited("DELETE FROM fleet_secrets WHERE name = ?", name, "deleting a sealed secret")
            .await
    }

    pub(super) async fn sealed_rows(
        &self,
        prefix: &str,
    ) -> StoreResult<Vec<(String, SealedSecret, Timestamp)>> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql(
            "SELECT name, nonce, sealed, created_at FROM fleet_secrets ORDER BY name",
        )))
        .fetch_all(&self.pool)
        .await
        .map_err(database("listing sealed secrets"))?;
        // A handful of rows: filtered here rather than with a LIKE pattern to escape.
        let mut secrets = Vec::new();
        for row in &rows {
            let name: String = get(row, "name")?;
            if name.starts_with(prefix) {
                let sealed = SealedSecret { nonce: get(row, "nonce")?, sealed: get(row, "sealed")? };
                secrets.push((name, sealed, timestamp("a sealed secret's time", get(row, "created_at")?)?));
            }
        }
        Ok(secrets)
    }
}
