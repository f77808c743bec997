//! Child processes that must not outlive the daemon that started them.
//!
//! An agent killed with SIGKILL cannot stop the `uv` or `git` it was running; left
//! alone they would go on writing into an environment that the restarted agent is
//! rebuilding. The kernel can do it instead: a child asks, between fork and exec, to
//! be sent SIGKILL when its parent dies (`PR_SET_PDEATHSIG`).

use rustix::process::{Signal, getppid, set_parent_process_death_signal};

/// Makes `command`'s process receive SIGKILL when the thread that spawned it exits.
/// Spawn from a long-lived thread (a tokio worker, not a blocking-pool thread, which
/// exits when idle).
pub fn die_with_parent(command: &mut tokio::process::Command) {
    let parent = rustix::process::getpid();
    // SAFETY: the closure runs in the child between fork and exec, where only
    // async-signal-safe work is allowed. It makes two system calls (prctl, getppid)
    // through rustix, which neither allocates nor takes locks.
    #[allow(unsafe_code)]
    unsafe {
        command.pre_exec(move || {
            set_parent_process_death_signal(Some(Signal::KILL))?;
            // The parent may have died before prctl: then nobody will signal us.
            if getppid() != Some(parent) {
                return Err(std::io::Error::other("the parent exited before the child started"));
            }
            Ok(())
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_child_that_asks_still_runs_normally() {
        let mut command = tokio::process::Command::new("true");
        die_with_parent(&mut command);
        assert!(command.status().await.unwrap().success());
    }
}
