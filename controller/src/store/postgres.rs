//! The PostgreSQL store, for several controllers on one database: the same tables
//! as SQLite (its own migrations in `migrations/postgres/`), read committed, with the
//! few decisions that read before they write (revision numbers, migrations, a join
//! token's uses) taken under a lock.

// One SQL source, compiled once for each store with its own types (see sql/mod.rs).
#[allow(clippy::duplicate_mod)]
#[path = "sql/mod.rs"]
mod queries;
#[cfg(test)]
mod tests;

use std::path::Path;
use std::time::Duration;

use jiff::Timestamp;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{Postgres, Transaction};

use super::rows::*;
use super::{StoreError, StoreResult};

/// Every migration, in order. A migration is never edited once released: add one.
const MIGRATIONS: &[(i64, &str)] = &[
    (1, include_str!("../../migrations/postgres/0001_fleet.sql")),
    (2, include_str!("../../migrations/postgres/0002_fleet_secrets.sql")),
];

/// Advisory lock keys (`pg_advisory_lock`): one per decision that must be taken by
/// one controller at a time.
pub(super) mod locks {
    /// Applying migrations.
    pub const MIGRATE: i64 = 0x636f_6d66_7901;
    /// Numbering an environment's revisions.
    pub const REVISIONS: i64 = 0x636f_6d66_7902;
    /// Held by the one controller serving the database.
    pub const SERVING: i64 = 0x636f_6d66_7903;
}

/// The session-level lock of the one controller serving a database, held on a
/// connection of its own for as long as this lives.
pub struct ServingLock {
    _connection: sqlx::PgConnection,
}

impl PostgresStore {
    /// Takes the database's serving lock, or says that another controller holds it:
    /// until the rollout engine elects a leader, two controllers on one database would
    /// each run it.
    pub async fn claim_serving(url: &str) -> StoreResult<ServingLock> {
        use sqlx::Connection;
        let shown = redact_url(url);
        let options: PgConnectOptions =
            url.parse().map_err(|source| StoreError::Open { path: shown.clone(), source })?;
        let mut connection =
            sqlx::PgConnection::connect_with(&options.application_name("comfyfleet-controller"))
                .await
                .map_err(|source| StoreError::Open { path: shown.clone(), source })?;
        let claimed: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
            .bind(locks::SERVING)
            .fetch_one(&mut connection)
            .await
            .map_err(database("taking the serving lock"))?;
        if !claimed {
            return Err(StoreError::Unsupported(format!(
                "another controller already serves the database {shown}: one controller per database for now \
                 (several, with one elected to run rollouts, are not built yet); stop the other one or give this \
                 one another database"
            )));
        }
        Ok(ServingLock { _connection: connection })
    }
}

pub struct PostgresStore {
    pool: PgPool,
}

/// `postgres://user:password@host/db` with the password replaced, for messages.
pub fn redact_url(url: &str) -> String {
    match (url.split_once("://"), url.rfind('@')) {
        (Some((scheme, rest)), Some(at)) if at > scheme.len() + 3 => {
            let userinfo = &rest[..at - scheme.len() - 3];
            let user = userinfo.split(':').next().unwrap_or_default();
            format!("{scheme}://{user}:***@{}", &url[at + 1..])
        }
        _ => url.to_owned(),
    }
}

impl PostgresStore {
    /// Connects to `url` (`postgres://…`) and applies the migrations it lacks.
    pub async fn connect(url: &str) -> StoreResult<Self> {
        let shown = redact_url(url);
        let options: PgConnectOptions =
            url.parse().map_err(|source| StoreError::Open { path: shown.clone(), source })?;
        let options = options.application_name("comfyfleet-controller");
        let pool = PgPoolOptions::new()
            .max_connections(16)
            // A lost database answers every call within seconds with an error, rather
            // than holding requests for the default 30 s.
            .acquire_timeout(Duration::from_secs(5))
            .connect_with(options)
            .await
            .map_err(|source| StoreError::Open { path: shown, source })?;
        let store = Self { pool };
        store.migrate().await?;
        Ok(store)
    }

    async fn write_transaction(&self, doing: &'static str) -> StoreResult<Transaction<'static, Postgres>> {
        self.pool.begin().await.map_err(database(doing))
    }

    /// Migrations under an advisory lock: controllers starting together apply each
    /// migration once.
    async fn migrate(&self) -> StoreResult<()> {
        let mut connection = self.pool.acquire().await.map_err(database("connecting to migrate"))?;
        sqlx::query("SELECT pg_advisory_lock($1)")
            .bind(locks::MIGRATE)
            .execute(&mut *connection)
            .await
            .map_err(database("taking the migration lock"))?;
        let result = async {
            sqlx::raw_sql(
                "CREATE TABLE IF NOT EXISTS schema_migrations (version BIGINT PRIMARY KEY, applied_at BIGINT NOT NULL)",
            )
            .execute(&mut *connection)
            .await
            .map_err(database("creating the migrations table"))?;
            let current: i64 = sqlx::query_scalar("SELECT COALESCE(MAX(version), 0) FROM schema_migrations")
                .fetch_one(&mut *connection)
                .await
                .map_err(database("reading the schema version"))?;
            let known = MIGRATIONS.last().map_or(0, |(version, _)| *version);
            if current > known {
                return Err(StoreError::TooNew { found: current, known });
            }
            for (version, sql) in MIGRATIONS.iter().filter(|(version, _)| *version > current) {
                let mut tx =
                    sqlx::Connection::begin(&mut *connection).await.map_err(database("starting a migration"))?;
                sqlx::raw_sql(*sql).execute(&mut *tx).await.map_err(database("applying a migration"))?;
                sqlx::query("INSERT INTO schema_migrations (version, applied_at) VALUES ($1, $2)")
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
        .await;
        let unlocked = sqlx::query("SELECT pg_advisory_unlock($1)")
            .bind(locks::MIGRATE)
            .execute(&mut *connection)
            .await
            .map_err(database("releasing the migration lock"));
        result.and(unlocked.map(drop))
    }
}

type ThisStore = PostgresStore;
type Db = Postgres;

/// The statement with its `?` placeholders numbered `$1`, `$2`, … as PostgreSQL
/// takes them (no statement has a `?` of its own).
fn sql(statement: &str) -> String {
    let mut numbered = String::with_capacity(statement.len() + 16);
    for (number, piece) in statement.split('?').enumerate() {
        if number > 0 {
            numbered.push('$');
            numbered.push_str(&number.to_string());
        }
        numbered.push_str(piece);
    }
    numbered
}

/// A plan's `driver_compat`, from the assignment's JSON.
const DRIVER_COMPAT: &str = "(a.plan_json::jsonb ->> 'driver_compat')";
/// Concurrent enrollments with one token take turns on its row, so each counts the
/// uses the one before it left.
const LOCK_ROW: &str = " FOR UPDATE";

impl PostgresStore {
    /// Revision numbers are read, then written: one controller at a time, until commit.
    async fn before_numbering(&self, tx: &mut Transaction<'static, Postgres>) -> StoreResult<()> {
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(locks::REVISIONS)
            .execute(&mut **tx)
            .await
            .map_err(database("taking the revision lock"))?;
        Ok(())
    }

    async fn backup_to(&self, _to: &Path) -> StoreResult<()> {
        Err(StoreError::Unsupported(
            "a PostgreSQL fleet is backed up with PostgreSQL's own tools: pg_dump --format=custom \
             --file=FILE 'postgres://…' (consistent while controllers run), restored with pg_restore \
             --clean --if-exists --dbname='postgres://…' FILE while they are stopped"
                .to_owned(),
        ))
    }

    async fn close_pool(&self) {
        self.pool.close().await;
    }
}

#[cfg(test)]
mod placeholder_tests {
    #[test]
    fn placeholders_are_numbered_in_order() {
        assert_eq!(super::sql("SELECT 1"), "SELECT 1");
        assert_eq!(super::sql("a = ? AND b IN (?, ?) LIMIT ?"), "a = $1 AND b IN ($2, $3) LIMIT $4");
    }
}
