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
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
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
    (3, include_str!("../../migrations/postgres/0003_cluster.sql")),
    (4, include_str!("../../migrations/postgres/0004_index_links.sql")),
];

/// Advisory lock keys (`pg_advisory_lock`): one per decision that must be taken by
/// one controller at a time.
pub(super) mod locks {
    /// Applying migrations.
    pub const MIGRATE: i64 = 0x636f_6d66_7901;
    /// Numbering an environment's revisions.
    pub const REVISIONS: i64 = 0x636f_6d66_7902;
}

pub struct PostgresStore {
    pool: PgPool,
    link: Arc<ClusterLink>,
}

/// What the store needs from the controller it serves when several share the
/// database (see `cluster.rs`): the name its notices go out under, and the lease
/// the rollout engine's writes are fenced with.
#[derive(Default)]
pub struct ClusterLink {
    /// This controller's id; unset (one controller, or a tool): no notices, no fence.
    origin: OnceLock<String>,
    /// `(holder, epoch)` while this controller holds the lease.
    lease: Mutex<Option<(String, i64)>>,
}

/// The channel every controller of a fleet listens on.
pub const NOTICE_CHANNEL: &str = "comfyfleet";
/// A notice's payload stays under PostgreSQL's 8,000 bytes: ids are sent in chunks.
const NOTICE_IDS: usize = 100;

/// Sends `"{origin} {kind} {id} {id} …"` on [`NOTICE_CHANNEL`] (delivered when the
/// transaction `connection` is in commits), a chunk of ids per notice.
pub async fn notify(
    connection: &mut sqlx::PgConnection,
    origin: &str,
    kind: &str,
    ids: &[&str],
) -> Result<(), sqlx::Error> {
    for chunk in ids.chunks(NOTICE_IDS) {
        let payload = format!("{origin} {kind} {}", chunk.join(" "));
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(NOTICE_CHANNEL)
            .bind(payload)
            .execute(&mut *connection)
            .await?;
    }
    Ok(())
}

impl ClusterLink {
    /// Joins this store to the cluster as controller `id`.
    pub fn join(&self, id: &str) {
        let _ = self.origin.set(id.to_owned());
    }

    pub fn origin(&self) -> Option<&str> {
        self.origin.get().map(String::as_str)
    }

    /// Sets (or clears) the lease the engine's writes must still hold.
    pub fn set_lease(&self, lease: Option<(String, i64)>) {
        *self.lease.lock().unwrap_or_else(PoisonError::into_inner) = lease;
    }

    fn lease(&self) -> Option<(String, i64)> {
        self.lease.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }
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
            // PostgreSQL ends a transaction whose COMMIT failed, and answers the ROLLBACK
            // sqlx then sends with a warning, not an error: its connections come back
            // clean. Checked all the same (no round trip: sqlx counts the ROLLBACK it
            // queued at once), so that no path leaves one inside a transaction.
            .after_release(|connection, _| {
                Box::pin(std::future::ready(Ok(super::pool_hygiene::outside_transaction(
                    connection, "postgres",
                ))))
            })
            .connect_with(options)
            .await
            .map_err(|source| StoreError::Open { path: shown, source })?;
        let store = Self { pool, link: Arc::default() };
        store.migrate().await?;
        Ok(store)
    }

    /// The pool, for the cluster's own statements (heartbeats, the lease, notices).
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// How the cluster tells this store who it serves and whether it leads.
    pub fn cluster_link(&self) -> Arc<ClusterLink> {
        self.link.clone()
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

    /// A read-only transaction whose reads all see one snapshot (read committed would
    /// give each statement its own).
    async fn snapshot_transaction(&self) -> StoreResult<Transaction<'static, Postgres>> {
        let mut tx = self.pool.begin().await.map_err(database("starting a read"))?;
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            .execute(&mut *tx)
            .await
            .map_err(database("starting a read"))?;
        Ok(tx)
    }

    /// The rollout engine writes only while the lease is still the one this
    /// controller was given: the same holder and epoch, which no other controller can
    /// have taken in between (taking it changes the holder, and taking it back raises
    /// the epoch). The write extends the lease and holds its row until commit, so a
    /// lease that lapsed while the database was away is simply kept, and a controller
    /// that lost it cannot write a step the new leader has not seen.
    async fn fence(&self, tx: &mut Transaction<'static, Postgres>) -> StoreResult<()> {
        if self.link.origin().is_none() {
            return Ok(());
        }
        let (holder, epoch) = self.link.lease().ok_or(StoreError::NotLeader)?;
        let held: Option<i32> = sqlx::query_scalar(
            "UPDATE controller_lease SET expires_at = GREATEST(expires_at, now() + interval '5 seconds') \
             WHERE id = 1 AND holder = $1 AND epoch = $2 RETURNING 1",
        )
        .bind(holder)
        .bind(epoch)
        .fetch_optional(&mut **tx)
        .await
        .map_err(database("checking the leader lease"))?;
        held.map(drop).ok_or(StoreError::NotLeader)
    }

    /// Tells the fleet's other controllers, when `tx` commits, that `ids` changed in
    /// the way `kind` names (`cluster.rs` reads them).
    async fn announce(
        &self,
        tx: &mut Transaction<'static, Postgres>,
        kind: &str,
        ids: &[&str],
    ) -> StoreResult<()> {
        let Some(origin) = self.link.origin() else { return Ok(()) };
        notify(tx, origin, kind, ids).await.map_err(database("notifying the other controllers"))
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
