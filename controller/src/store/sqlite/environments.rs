//! Environment revisions in SQLite. Numbers are handed out inside the write
//! transaction that inserts the row, so two concurrent applies never share one.

use std::str::FromStr;

use comfyfleet_config::spec::SpecDigest;
use sqlx::sqlite::SqliteRow;

use super::{SqliteStore, corrupt, count, database, get, millis, timestamp};
use crate::store::{EnvironmentSummary, NewRevision, PackageFile, StoreResult, StoredLock, StoredRevision};

const REVISION_COLUMNS: &str = "environment, number, id, spec_json, created_at, created_by";

fn revision_from_row(row: &SqliteRow) -> StoreResult<StoredRevision> {
    let id: String = get(row, "id")?;
    Ok(StoredRevision {
        environment: get(row, "environment")?,
        number: count("revision number", get(row, "number")?)?,
        id: SpecDigest::from_str(&id).map_err(corrupt("revision id"))?,
        spec_json: get(row, "spec_json")?,
        created_at: timestamp("revision created_at", get(row, "created_at")?)?,
        created_by: get(row, "created_by")?,
    })
}

/// What a file already recorded becomes: a revision's own sources replace it (a
/// lock or the spec names it); what an index page says keeps what was there.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Conflict {
    Replace,
    Keep,
}

async fn insert_files(
    connection: &mut sqlx::SqliteConnection,
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
        sqlx::query(sqlx::AssertSqlSafe(statement.as_str()))
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

impl SqliteStore {
    pub(super) async fn put_revision(&self, revision: &NewRevision) -> StoreResult<(StoredRevision, bool)> {
        let mut tx = self.write_transaction("starting to store a revision").await?;
        let existing = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {REVISION_COLUMNS} FROM environment_revisions WHERE environment = ? AND id = ?"
        )))
        .bind(&revision.environment)
        .bind(revision.id.as_str())
        .fetch_optional(&mut *tx)
        .await
        .map_err(database("looking for an existing revision"))?;
        if let Some(row) = existing {
            let stored = revision_from_row(&row)?;
            tx.commit().await.map_err(database("ending a revision lookup"))?;
            return Ok((stored, false));
        }
        let number: i64 = sqlx::query_scalar(
            "SELECT COALESCE(MAX(number), 0) + 1 FROM environment_revisions WHERE environment = ?",
        )
        .bind(&revision.environment)
        .fetch_one(&mut *tx)
        .await
        .map_err(database("numbering a revision"))?;
        sqlx::query(
            "INSERT INTO environment_revisions (environment, number, id, spec_json, created_at, created_by) \
             VALUES (?, ?, ?, ?, ?, ?)",
        )
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
            sqlx::query("INSERT OR IGNORE INTO locks (digest, class, lock_json) VALUES (?, ?, ?)")
                .bind(&lock.digest)
                .bind(&lock.class)
                .bind(&lock.lock_json)
                .execute(&mut *tx)
                .await
                .map_err(database("storing a lock"))?;
        }
        insert_files(&mut tx, &revision.files, Conflict::Replace).await?;
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
        let row = sqlx::query("SELECT digest, class, lock_json FROM locks WHERE digest = ?")
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
        let row = sqlx::query("SELECT sha256, url, file_name, size FROM package_files WHERE sha256 = ?")
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

    pub(super) async fn insert_package_files(&self, files: &[PackageFile]) -> StoreResult<()> {
        if files.is_empty() {
            return Ok(());
        }
        let mut tx = self.write_transaction("starting to record package files").await?;
        insert_files(&mut tx, files, Conflict::Keep).await?;
        tx.commit().await.map_err(database("committing package files"))
    }

    pub(super) async fn kept_specs(&self) -> StoreResult<Vec<String>> {
        let rows = sqlx::query(
            "SELECT spec_json FROM environment_revisions r \
             WHERE number = (SELECT MAX(number) FROM environment_revisions l WHERE l.environment = r.environment) \
             OR id IN (SELECT revision_id FROM machine_assignments)",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(database("reading the kept revisions"))?;
        rows.iter().map(|row| get(row, "spec_json")).collect()
    }

    pub(super) async fn summaries(&self) -> StoreResult<Vec<EnvironmentSummary>> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {REVISION_COLUMNS}, counted.revisions FROM environment_revisions \
             JOIN (SELECT environment AS name, COUNT(*) AS revisions, MAX(number) AS latest \
                   FROM environment_revisions GROUP BY environment) AS counted \
             ON environment = counted.name AND number = counted.latest \
             ORDER BY environment"
        )))
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
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {REVISION_COLUMNS} FROM environment_revisions WHERE environment = ? ORDER BY number"
        )))
        .bind(environment)
        .fetch_all(&self.pool)
        .await
        .map_err(database("listing revisions"))?;
        rows.iter().map(revision_from_row).collect()
    }

    pub(super) async fn latest_revision(&self, environment: &str) -> StoreResult<Option<StoredRevision>> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {REVISION_COLUMNS} FROM environment_revisions WHERE environment = ? \
             ORDER BY number DESC LIMIT 1"
        )))
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
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {REVISION_COLUMNS} FROM environment_revisions WHERE environment = ? AND number = ?"
        )))
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
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {REVISION_COLUMNS} FROM environment_revisions WHERE environment = ? AND id = ?"
        )))
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
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {REVISION_COLUMNS} FROM environment_revisions \
             WHERE environment = ? AND id >= ? AND id < ? ORDER BY number LIMIT ?"
        )))
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

#[cfg(test)]
mod tests {
    use jiff::Timestamp;

    use super::*;
    use crate::store::Store;

    async fn store() -> (tempfile::TempDir, SqliteStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("controller.db")).await.unwrap();
        (dir, store)
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

    #[tokio::test]
    async fn the_same_id_twice_is_one_revision() {
        let (_dir, store) = store().await;
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

    #[tokio::test]
    async fn numbers_increase_and_a_known_id_keeps_its_number() {
        let (_dir, store) = store().await;
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

    #[tokio::test]
    async fn environments_are_numbered_independently_and_listed_with_their_latest() {
        let (_dir, store) = store().await;
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

    #[tokio::test]
    async fn id_prefixes_match_within_one_environment() {
        let (_dir, store) = store().await;
        store.put_environment_revision(&revision("render", 'a')).await.unwrap();
        store.put_environment_revision(&revision("render", 'b')).await.unwrap();
        store.put_environment_revision(&revision("preview", 'c')).await.unwrap();
        let found = store.find_environment_revisions("render", "aaaa", 10).await.unwrap();
        assert_eq!(found.iter().map(|r| r.number).collect::<Vec<_>>(), [1]);
        assert!(store.find_environment_revisions("render", "cccc", 10).await.unwrap().is_empty());
        assert_eq!(store.find_environment_revisions("render", "", 10).await.unwrap().len(), 2);
        assert_eq!(store.find_environment_revisions("render", "", 1).await.unwrap().len(), 1);
    }

    #[tokio::test]
    async fn concurrent_applies_get_distinct_numbers() {
        let (_dir, store) = store().await;
        let store = std::sync::Arc::new(store);
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
}
