//! Environment revisions. Numbers are handed out inside the write
//! transaction that inserts the row, so two concurrent applies never share one.

use comfyfleet_config::spec::SpecDigest;

use super::{Db, ThisStore, sql};
use crate::store::rows::*;
use crate::store::{EnvironmentSummary, NewRevision, PackageFile, StoreResult, StoredLock, StoredRevision};

/// What a file already recorded becomes: a revision's own sources replace it (a
/// lock or the spec names it); what an index page says keeps what was there.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Conflict {
    Replace,
    Keep,
}

async fn insert_files(
    connection: &mut <Db as sqlx::Database>::Connection,
    files: &[PackageFile],
    conflict: Conflict,
) -> StoreResult<()> {
    let on_conflict = match conflict {
        Conflict::Replace => {
            "DO UPDATE SET url = excluded.url, file_name = excluded.file_name, \
             size = COALESCE(excluded.size, package_files.size)"
        }
        Conflict::Keep => "DO NOTHING",
    };
    let statement = format!(
        "INSERT INTO package_files (sha256, url, file_name, size) VALUES (?, ?, ?, ?) ON CONFLICT (sha256) {on_conflict}"
    );
    for file in files {
        sqlx::query(sqlx::AssertSqlSafe(sql(&statement)))
            .bind(&file.sha256)
            .bind(&file.url)
            .bind(&file.file_name)
            .bind(file.size.and_then(|size| i64::try_from(size).ok()))
            .execute(&mut *connection)
            .await
            .map_err(database("storing a package file"))?;
    }
    Ok(())
}

impl ThisStore {
    pub(super) async fn put_revision(&self, revision: &NewRevision) -> StoreResult<(StoredRevision, bool)> {
        let mut tx = self.write_transaction("starting to store a revision").await?;
        // Numbers are read, then written: one writer at a time until commit.
        self.before_numbering(&mut tx).await?;
        let existing = sqlx::query(sqlx::AssertSqlSafe(sql(&format!(
            "SELECT {REVISION_COLUMNS} FROM environment_revisions WHERE environment = ? AND id = ?"
        ))))
        .bind(&revision.environment)
        .bind(revision.id.as_str())
        .fetch_optional(&mut *tx)
        .await
        .map_err(database("looking for an existing revision"))?;
        if let Some(row) = existing {
            let stored = revision_from_row(&row)?;
            let number = stored.number.to_string();
            super::write_pending_audit(&mut tx, &[("number", &number), ("created", "unchanged")]).await?;
            tx.commit().await.map_err(database("ending a revision lookup"))?;
            return Ok((stored, false));
        }
        let number: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(sql(
            "SELECT COALESCE(MAX(number), 0) + 1 FROM environment_revisions WHERE environment = ?",
        )))
        .bind(&revision.environment)
        .fetch_one(&mut *tx)
        .await
        .map_err(database("numbering a revision"))?;
        sqlx::query(sqlx::AssertSqlSafe(sql(
            "INSERT INTO environment_revisions (environment, number, id, spec_json, created_at, created_by) \
             VALUES (?, ?, ?, ?, ?, ?)",
        )))
        .bind(&revision.environment)
        .bind(number)
        .bind(revision.id.as_str())
        .bind(&revision.spec_json)
        .bind(millis(revision.created_at))
        .bind(&revision.created_by)
        .execute(&mut *tx)
        .await
        .map_err(database("storing a revision"))?;
        for lock in &revision.locks {
            sqlx::query(sqlx::AssertSqlSafe(sql(
                "INSERT INTO locks (digest, class, lock_json) VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
            )))
            .bind(&lock.digest)
            .bind(&lock.class)
            .bind(&lock.lock_json)
            .execute(&mut *tx)
            .await
            .map_err(database("storing a lock"))?;
        }
        insert_files(&mut tx, &revision.files, Conflict::Replace).await?;
        super::write_pending_audit(&mut tx, &[("number", &number.to_string()), ("created", "created")])
            .await?;
        tx.commit().await.map_err(database("committing a revision"))?;
        let stored = StoredRevision {
            environment: revision.environment.clone(),
            number: count("revision number", number)?,
            id: revision.id.clone(),
            spec_json: revision.spec_json.clone(),
            // As it reads back: the table keeps milliseconds.
            created_at: timestamp("revision created_at", millis(revision.created_at))?,
            created_by: revision.created_by.clone(),
        };
        Ok((stored, true))
    }

    pub(super) async fn lock_by_digest(&self, digest: &str) -> StoreResult<Option<StoredLock>> {
        let row = sqlx::query(sqlx::AssertSqlSafe(sql(
            "SELECT digest, class, lock_json FROM locks WHERE digest = ?",
        )))
        .bind(digest)
        .fetch_optional(&self.pool)
        .await
        .map_err(database("reading a lock"))?;
        row.map(|row| {
            Ok(StoredLock {
                digest: get(&row, "digest")?,
                class: get(&row, "class")?,
                lock_json: get(&row, "lock_json")?,
            })
        })
        .transpose()
    }

    pub(super) async fn file_by_sha256(&self, sha256: &str) -> StoreResult<Option<PackageFile>> {
        let row = sqlx::query(sqlx::AssertSqlSafe(sql(
            "SELECT sha256, url, file_name, size FROM package_files WHERE sha256 = ?",
        )))
        .bind(sha256)
        .fetch_optional(&self.pool)
        .await
        .map_err(database("reading a package file"))?;
        row.map(|row| {
            let size: Option<i64> = get(&row, "size")?;
            Ok(PackageFile {
                sha256: get(&row, "sha256")?,
                url: get(&row, "url")?,
                file_name: get(&row, "file_name")?,
                size: size.and_then(|size| u64::try_from(size).ok()),
            })
        })
        .transpose()
    }

    pub(super) async fn insert_index_files(&self, index_key: &str, files: &[PackageFile]) -> StoreResult<()> {
        if files.is_empty() {
            return Ok(());
        }
        let mut tx = self.write_transaction("starting to record package files").await?;
        insert_files(&mut tx, files, Conflict::Keep).await?;
        for file in files {
            sqlx::query(sqlx::AssertSqlSafe(sql(
                "INSERT INTO index_links (index_key, sha256) VALUES (?, ?) ON CONFLICT DO NOTHING",
            )))
            .bind(index_key)
            .bind(&file.sha256)
            .execute(&mut *tx)
            .await
            .map_err(database("storing an index link"))?;
        }
        tx.commit().await.map_err(database("committing package files"))
    }

    pub(super) async fn indexes_linking(&self, sha256: &str) -> StoreResult<Vec<String>> {
        let rows =
            sqlx::query(sqlx::AssertSqlSafe(sql("SELECT index_key FROM index_links WHERE sha256 = ?")))
                .bind(sha256)
                .fetch_all(&self.pool)
                .await
                .map_err(database("reading which indexes link a file"))?;
        rows.iter().map(|row| get(row, "index_key")).collect()
    }

    pub(super) async fn kept_specs(&self) -> StoreResult<Vec<String>> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql("SELECT spec_json FROM environment_revisions r \
             WHERE number = (SELECT MAX(number) FROM environment_revisions l WHERE l.environment = r.environment) \
             OR id IN (SELECT revision_id FROM machine_assignments)")))
        .fetch_all(&self.pool)
        .await
        .map_err(database("reading the kept revisions"))?;
        rows.iter().map(|row| get(row, "spec_json")).collect()
    }

    pub(super) async fn summaries(&self) -> StoreResult<Vec<EnvironmentSummary>> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql(&format!(
            "SELECT {REVISION_COLUMNS}, counted.revisions FROM environment_revisions \
             JOIN (SELECT environment AS name, COUNT(*) AS revisions, MAX(number) AS latest \
                   FROM environment_revisions GROUP BY environment) AS counted \
             ON environment = counted.name AND number = counted.latest \
             ORDER BY environment"
        ))))
        .fetch_all(&self.pool)
        .await
        .map_err(database("listing environments"))?;
        rows.iter()
            .map(|row| {
                let latest = revision_from_row(row)?;
                Ok(EnvironmentSummary {
                    name: latest.environment.clone(),
                    revisions: count("revision count", get(row, "revisions")?)?,
                    latest,
                })
            })
            .collect()
    }

    pub(super) async fn revisions(&self, environment: &str) -> StoreResult<Vec<StoredRevision>> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql(&format!(
            "SELECT {REVISION_COLUMNS} FROM environment_revisions WHERE environment = ? ORDER BY number"
        ))))
        .bind(environment)
        .fetch_all(&self.pool)
        .await
        .map_err(database("listing revisions"))?;
        rows.iter().map(revision_from_row).collect()
    }

    pub(super) async fn latest_revision(&self, environment: &str) -> StoreResult<Option<StoredRevision>> {
        let row = sqlx::query(sqlx::AssertSqlSafe(sql(&format!(
            "SELECT {REVISION_COLUMNS} FROM environment_revisions WHERE environment = ? \
             ORDER BY number DESC LIMIT 1"
        ))))
        .bind(environment)
        .fetch_optional(&self.pool)
        .await
        .map_err(database("reading the latest revision"))?;
        row.as_ref().map(revision_from_row).transpose()
    }

    pub(super) async fn revision(
        &self,
        environment: &str,
        number: u32,
    ) -> StoreResult<Option<StoredRevision>> {
        let row = sqlx::query(sqlx::AssertSqlSafe(sql(&format!(
            "SELECT {REVISION_COLUMNS} FROM environment_revisions WHERE environment = ? AND number = ?"
        ))))
        .bind(environment)
        .bind(i64::from(number))
        .fetch_optional(&self.pool)
        .await
        .map_err(database("reading a revision"))?;
        row.as_ref().map(revision_from_row).transpose()
    }

    pub(super) async fn revision_by_id(
        &self,
        environment: &str,
        id: &SpecDigest,
    ) -> StoreResult<Option<StoredRevision>> {
        let row = sqlx::query(sqlx::AssertSqlSafe(sql(&format!(
            "SELECT {REVISION_COLUMNS} FROM environment_revisions WHERE environment = ? AND id = ?"
        ))))
        .bind(environment)
        .bind(id.as_str())
        .fetch_optional(&self.pool)
        .await
        .map_err(database("reading a revision by id"))?;
        row.as_ref().map(revision_from_row).transpose()
    }

    pub(super) async fn find_revisions(
        &self,
        environment: &str,
        prefix: &str,
        limit: u32,
    ) -> StoreResult<Vec<StoredRevision>> {
        // Ids are lowercase hex, so a range scan is an exact prefix match without LIKE
        // escaping, and it uses the (environment, id) index.
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql(&format!(
            "SELECT {REVISION_COLUMNS} FROM environment_revisions \
             WHERE environment = ? AND id >= ? AND id < ? ORDER BY number LIMIT ?"
        ))))
        .bind(environment)
        .bind(prefix)
        .bind(format!("{prefix}\u{7f}"))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(database("finding revisions"))?;
        rows.iter().map(revision_from_row).collect()
    }
}
