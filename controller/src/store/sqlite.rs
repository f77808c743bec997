//! The default store: one SQLite file in the controller's data dir, in WAL mode so
//! readers never wait for the writer, with versioned migrations applied at open.

// One SQL source, compiled once for each store with its own types (see sql/mod.rs).
#[allow(clippy::duplicate_mod)]
#[path = "sql/mod.rs"]
mod queries;
#[cfg(test)]
mod tests;

use std::path::Path;
use std::time::Duration;

use jiff::Timestamp;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{Sqlite, Transaction};

use super::rows::*;

use super::{StoreError, StoreResult};

/// Every migration, in order. A migration is never edited once released: add one.
const MIGRATIONS: &[(i64, &str)] = &[
    (1, include_str!("../../migrations/0001_fleet.sql")),
    (2, include_str!("../../migrations/0002_environments.sql")),
    (3, include_str!("../../migrations/0003_provisioning.sql")),
    (4, include_str!("../../migrations/0004_rollouts.sql")),
    (5, include_str!("../../migrations/0005_locks.sql")),
    (6, include_str!("../../migrations/0006_fleet_identity.sql")),
    (7, include_str!("../../migrations/0007_fleet_secrets.sql")),
    (8, include_str!("../../migrations/0008_index_links.sql")),
];

pub struct SqliteStore {
    pool: SqlitePool,
    path: std::path::PathBuf,
}

/// SQLite's answer to a damaged file (SQLITE_CORRUPT, SQLITE_NOTADB) as
/// [`StoreError::Damaged`]; any other error as `other` makes it.
fn damaged_or(path: &str, source: sqlx::Error, other: impl FnOnce(sqlx::Error) -> StoreError) -> StoreError {
    const SQLITE_CORRUPT: i64 = 11;
    const SQLITE_NOTADB: i64 = 26;
    let code = match &source {
        sqlx::Error::Database(error) => error.code().and_then(|code| code.parse::<i64>().ok()),
        _ => None,
    };
    match code.map(|code| code & 0xff) {
        Some(SQLITE_CORRUPT | SQLITE_NOTADB) => {
            StoreError::Damaged { path: path.to_owned(), detail: source.to_string() }
        }
        _ => other(source),
    }
}

impl SqliteStore {
    pub async fn open(path: &Path) -> StoreResult<Self> {
        Self::open_with(path, true).await
    }

    /// As [`SqliteStore::open`]; with `may_create` false, a database that holds no
    /// tables at all (a new file, an emptied one) is [`StoreError::Empty`] and is left
    /// as it is: nothing is created or migrated.
    pub async fn open_with(path: &Path, may_create: bool) -> StoreResult<Self> {
        // A missing or 0-byte file is refused before SQLite writes a header into it.
        if !may_create && std::fs::metadata(path).map_or(true, |meta| meta.len() == 0) {
            return Err(StoreError::Empty { path: path.display().to_string() });
        }
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // WAL + NORMAL: a commit survives a process crash; only an OS crash can
            // lose the last transactions, never corrupt the file.
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(10))
            .foreign_keys(true);
        let shown = path.display().to_string();
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .after_release(|connection, _| {
                Box::pin(async move {
                    // Outside a transaction nothing is queued that could change that:
                    // back at once, with no round trip to the connection's worker on
                    // every release (thousands a second while a rollout pushes).
                    if !sqlx::Connection::is_in_transaction(&*connection) {
                        return Ok(true);
                    }
                    // The ROLLBACK a dropped transaction queued has run once this round
                    // trip to the connection's worker answers.
                    sqlx::Connection::ping(&mut *connection).await?;
                    Ok(super::pool_hygiene::outside_transaction(connection, "sqlite"))
                })
            })
            .connect_with(options)
            .await
            .map_err(|source| {
                damaged_or(&shown, source, |source| StoreError::Open { path: shown.clone(), source })
            })?;
        let store = Self { pool, path: path.to_owned() };
        store.check_integrity().await?;
        if !may_create {
            let tables: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM sqlite_schema")
                .fetch_one(&store.pool)
                .await
                .map_err(|source| {
                    damaged_or(&shown, source, |source| StoreError::Database {
                        doing: "reading the schema",
                        source,
                    })
                })?;
            if tables == 0 {
                store.pool.close().await;
                return Err(StoreError::Empty { path: shown });
            }
        }
        store.migrate().await.map_err(|error| match error {
            StoreError::Database { source, doing } => {
                damaged_or(&shown, source, |source| StoreError::Database { doing, source })
            }
            other => other,
        })?;
        Ok(store)
    }

    /// `PRAGMA quick_check`: a truncated or overwritten file is found at start, not
    /// by the first query that reads the damaged page.
    async fn check_integrity(&self) -> StoreResult<()> {
        let shown = self.path.display().to_string();
        let problems: Vec<String> =
            sqlx::query_scalar("PRAGMA quick_check(5)").fetch_all(&self.pool).await.map_err(|source| {
                damaged_or(&shown, source, |source| StoreError::Database {
                    doing: "checking the database",
                    source,
                })
            })?;
        if problems.iter().all(|line| line == "ok") {
            return Ok(());
        }
        Err(StoreError::Damaged { path: shown, detail: problems.join("; ") })
    }

    /// A transaction that holds the write lock from its first statement. A deferred
    /// transaction that reads and then writes can fail with SQLITE_BUSY at once when
    /// another writer got there first; BEGIN IMMEDIATE waits (busy_timeout) instead.
    async fn write_transaction(&self, doing: &'static str) -> StoreResult<Transaction<'static, Sqlite>> {
        self.pool.begin_with("BEGIN IMMEDIATE").await.map_err(database(doing))
    }

    async fn migrate(&self) -> StoreResult<()> {
        sqlx::raw_sql(
            "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, applied_at INTEGER NOT NULL)",
        )
        .execute(&self.pool)
        .await
        .map_err(database("creating the migrations table"))?;
        let current: i64 = sqlx::query_scalar("SELECT COALESCE(MAX(version), 0) FROM schema_migrations")
            .fetch_one(&self.pool)
            .await
            .map_err(database("reading the schema version"))?;
        let known = MIGRATIONS.last().map_or(0, |(version, _)| *version);
        if current > known {
            return Err(StoreError::TooNew { found: current, known });
        }
        for (version, sql) in MIGRATIONS.iter().filter(|(version, _)| *version > current) {
            let mut tx = self.write_transaction("starting a migration").await?;
            sqlx::raw_sql(*sql).execute(&mut *tx).await.map_err(database("applying a migration"))?;
            sqlx::query("INSERT INTO schema_migrations (version, applied_at) VALUES (?, ?)")
                .bind(version)
                .bind(Timestamp::now().as_millisecond())
                .execute(&mut *tx)
                .await
                .map_err(database("recording a migration"))?;
            tx.commit().await.map_err(database("committing a migration"))?;
            tracing::info!(version, "applied database migration");
        }
        Ok(())
    }
}

/// What a snapshot file holds, read without changing it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotFacts {
    pub fleet_id: Option<String>,
    pub schema_version: i64,
    pub machines: i64,
    pub credentials: i64,
    pub open_rollouts: i64,
}

async fn read_only(path: &Path) -> StoreResult<sqlx::SqliteConnection> {
    use sqlx::ConnectOptions;
    let shown = path.display().to_string();
    SqliteConnectOptions::new()
        .filename(path)
        .read_only(true)
        .create_if_missing(false)
        .busy_timeout(Duration::from_secs(10))
        .connect()
        .await
        .map_err(|source| {
            damaged_or(&shown, source, |source| StoreError::Open { path: shown.clone(), source })
        })
}

impl SqliteStore {
    /// Checks a snapshot (or any controller database) and says what it holds, without
    /// writing to it.
    pub async fn inspect(path: &Path) -> StoreResult<SnapshotFacts> {
        let shown = path.display().to_string();
        let mut connection = read_only(path).await?;
        let damaged = |source: sqlx::Error| {
            damaged_or(&shown, source, |source| StoreError::Database { doing: "reading a snapshot", source })
        };
        let problems: Vec<String> =
            sqlx::query_scalar("PRAGMA quick_check(5)").fetch_all(&mut connection).await.map_err(damaged)?;
        if !problems.iter().all(|line| line == "ok") {
            return Err(StoreError::Damaged { path: shown, detail: problems.join("; ") });
        }
        let schema_version: i64 =
            sqlx::query_scalar("SELECT COALESCE(MAX(version), 0) FROM schema_migrations")
                .fetch_one(&mut connection)
                .await
                .map_err(|_| StoreError::Damaged {
                    path: shown.clone(),
                    detail: "it is not a comfyfleet database".into(),
                })?;
        let fleet_id = if schema_version >= 6 {
            sqlx::query_scalar("SELECT fleet_id FROM fleet WHERE singleton = 1")
                .fetch_optional(&mut connection)
                .await
                .map_err(damaged)?
        } else {
            None
        };
        let count = |sql: &'static str| sqlx::query_scalar::<_, i64>(sql);
        Ok(SnapshotFacts {
            fleet_id,
            schema_version,
            machines: count("SELECT COUNT(*) FROM machines")
                .fetch_one(&mut connection)
                .await
                .map_err(damaged)?,
            credentials: count("SELECT COUNT(*) FROM credentials")
                .fetch_one(&mut connection)
                .await
                .map_err(damaged)?,
            open_rollouts: count("SELECT COUNT(*) FROM rollouts WHERE state IN ('running', 'paused')")
                .fetch_one(&mut connection)
                .await
                .map_err(damaged)?,
        })
    }

    /// A consistent snapshot of the database at `database` written to `to`, from
    /// another process while a controller serves from it (WAL readers never block it).
    pub async fn snapshot_file(source: &Path, to: &Path) -> StoreResult<()> {
        let mut connection = read_only(source).await?;
        let target = to.to_str().ok_or_else(|| {
            StoreError::Unsupported(format!("the backup path {} is not UTF-8", to.display()))
        })?;
        sqlx::query("VACUUM INTO ?")
            .bind(target)
            .execute(&mut connection)
            .await
            .map_err(database("writing a snapshot"))?;
        Ok(())
    }
}

type ThisStore = SqliteStore;
type Db = Sqlite;

/// SQLite takes the statements' `?` placeholders as they are.
fn sql(statement: &str) -> String {
    statement.to_owned()
}

/// A plan's `driver_compat`, from the assignment's JSON.
const DRIVER_COMPAT: &str = "json_extract(a.plan_json, '$.driver_compat')";
/// No row locks in SQLite: a write transaction (`BEGIN IMMEDIATE`) holds the database.
const LOCK_ROW: &str = "";

impl SqliteStore {
    /// Nothing to take: the write transaction already excludes every other writer.
    async fn before_numbering(&self, _tx: &mut Transaction<'static, Sqlite>) -> StoreResult<()> {
        Ok(())
    }

    /// A read transaction: in WAL mode its first read fixes the snapshot every later
    /// read in it sees.
    async fn snapshot_transaction(&self) -> StoreResult<Transaction<'static, Sqlite>> {
        self.pool.begin().await.map_err(database("starting a read"))
    }

    /// One controller per SQLite file: it always leads.
    async fn fence(&self, _tx: &mut Transaction<'static, Sqlite>) -> StoreResult<()> {
        Ok(())
    }

    /// Nobody else to tell.
    async fn announce(
        &self,
        _tx: &mut Transaction<'static, Sqlite>,
        _kind: &str,
        _ids: &[&str],
    ) -> StoreResult<()> {
        Ok(())
    }

    async fn backup_to(&self, to: &Path) -> StoreResult<()> {
        // VACUUM INTO reads one consistent snapshot (a read transaction) while writers
        // go on, and writes a compact copy with no WAL beside it.
        let target = to.to_str().ok_or_else(|| {
            StoreError::Unsupported(format!("the backup path {} is not UTF-8", to.display()))
        })?;
        sqlx::query("VACUUM INTO ?")
            .bind(target)
            .execute(&self.pool)
            .await
            .map_err(database("writing a snapshot"))?;
        Ok(())
    }

    async fn close_pool(&self) {
        // The last connection to close checkpoints the WAL into the file and removes it.
        self.pool.close().await;
    }
}
