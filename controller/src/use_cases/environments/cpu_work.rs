//! CPU-heavy work a request asks for — parsing and validating a spec, planning every
//! machine of the fleet for a lock — runs here: on tokio's blocking pool, never on
//! the runtime threads that serve agents' sessions, and at most one less than the
//! machine's cores at once. Two large applies at the same time used to hold both
//! runtime threads of a 2-core controller long enough for agents' sessions to time
//! out; now they queue for one core and the sessions keep the other.

use std::sync::OnceLock;

use tokio::sync::Semaphore;

#[derive(Debug, thiserror::Error)]
pub enum CpuWorkError {
    /// The work panicked or its thread was lost: a defect, logged by the caller.
    #[error("the controller's worker for {what} stopped before it finished")]
    Lost { what: &'static str },
}

fn gate() -> &'static Semaphore {
    static GATE: OnceLock<Semaphore> = OnceLock::new();
    GATE.get_or_init(|| {
        let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
        Semaphore::new(cores.saturating_sub(1).max(1))
    })
}

/// Runs `work` (described by `what` in errors) off the runtime, after the other
/// heavy work ahead of it.
pub async fn run<T, F>(what: &'static str, work: F) -> Result<T, CpuWorkError>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    // The semaphore is never closed, so acquiring only waits.
    let _permit = gate().acquire().await.map_err(|_| CpuWorkError::Lost { what })?;
    tokio::task::spawn_blocking(work).await.map_err(|_| CpuWorkError::Lost { what })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "current_thread")]
    async fn work_runs_off_the_runtime_thread_and_returns_its_value() {
        let runtime_thread = std::thread::current().id();
        let (value, thread) = run("a test", || (6 * 7, std::thread::current().id())).await.unwrap();
        assert_eq!(value, 42);
        assert_ne!(thread, runtime_thread);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_panic_is_an_error_not_a_crash() {
        #[allow(clippy::panic)]
        let error = run("a test", || -> u32 { panic!("boom") }).await.unwrap_err();
        assert!(error.to_string().contains("a test"), "{error}");
    }
}
