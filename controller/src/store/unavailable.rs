//! Which store errors mean the database cannot be reached just now (PostgreSQL down or
//! restarting, the network to it gone, SQLite locked or its disk full), as opposed to
//! a refusal or a bug: callers answer those with UNAVAILABLE, which clients retry
//! (`rollout watch` waits through them), instead of INTERNAL.

use super::StoreError;

impl StoreError {
    /// Whether the same call may well succeed in a moment, with nothing changed.
    pub fn is_unavailable(&self) -> bool {
        match self {
            StoreError::Database { source, .. } | StoreError::Open { source, .. } => {
                unreachable_database(source)
            }
            _ => false,
        }
    }
}

fn unreachable_database(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(error) => {
            let code = error.code();
            let code = code.as_deref().unwrap_or_default();
            // PostgreSQL: connection exceptions (08…), the server shutting down or
            // starting (57P01 admin_shutdown, 57P02 crash_shutdown, 57P03
            // cannot_connect_now), too many connections (53300).
            code.starts_with("08")
                || matches!(code, "57P01" | "57P02" | "57P03" | "53300")
                // SQLite: busy or locked past the busy timeout, the disk full (primary
                // result codes 5, 6 and 13 in the low byte of an extended code).
                || code.parse::<i64>().is_ok_and(|code| matches!(code & 0xff, 5 | 6 | 13))
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lost_connection_is_unavailable_and_a_bad_row_is_not() {
        let lost = StoreError::Database {
            doing: "reading a rollout",
            source: sqlx::Error::Io(std::io::Error::from(std::io::ErrorKind::ConnectionRefused)),
        };
        assert!(lost.is_unavailable());
        let timed_out =
            StoreError::Database { doing: "reading a rollout", source: sqlx::Error::PoolTimedOut };
        assert!(timed_out.is_unavailable());
        assert!(!StoreError::Corrupt { what: "rollout", detail: "bad".into() }.is_unavailable());
        assert!(!StoreError::Database { doing: "x", source: sqlx::Error::RowNotFound }.is_unavailable());
    }
}
