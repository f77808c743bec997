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

    /// The state letter of /proc/PID/stat, `None` once the process is gone.
    fn state(pid: u32) -> Option<char> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        stat.rsplit(')').next()?.trim_start().chars().next()
    }

    #[test]
    fn the_child_is_killed_when_the_thread_that_spawned_it_ends() {
        // A thread with its own runtime stands for the agent: it spawns a long
        // sleep and ends without waiting for it (no kill_on_drop).
        let pid = std::thread::spawn(|| {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            runtime.block_on(async {
                let mut command = tokio::process::Command::new("sleep");
                command.arg("30");
                die_with_parent(&mut command);
                let child = command.spawn().unwrap();
                child.id().unwrap()
            })
        })
        .join()
        .unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while matches!(state(pid), Some(state) if state != 'Z') {
            assert!(std::time::Instant::now() < deadline, "the child outlived its parent thread");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }
}
