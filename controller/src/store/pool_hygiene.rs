//! What a pooled connection must be to serve the next caller: outside any transaction.
//!
//! A COMMIT that fails can leave a connection inside a transaction that nothing ends:
//! SQLite rolls a transaction back by itself on "database or disk is full" (SQLITE_FULL,
//! SQLITE_IOERR), so the ROLLBACK that sqlx queues when the failed transaction drops
//! finds none and fails, and sqlx keeps counting the connection as inside one. Back in
//! the pool, every `BEGIN` on it then fails ("attempted to call begin_with at non-zero
//! transaction depth") until the controller restarts. A connection that comes back so
//! is closed instead; the pool opens a fresh one for the next caller.

use sqlx::Connection;

/// Whether `connection` may go back to the pool: false (the pool closes it) when it
/// is still inside a transaction.
pub(super) fn outside_transaction<C: Connection>(connection: &C, store: &'static str) -> bool {
    if !connection.is_in_transaction() {
        return true;
    }
    tracing::warn!(
        store,
        "a database connection came back inside a transaction that could not be rolled back \
         (after a failed COMMIT, e.g. on a full disk): closing it, a fresh one takes its place"
    );
    false
}
