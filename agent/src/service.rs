//! The ComfyUI service the agent runs: one process started from an environment,
//! in its own process group, that outlives the agent. An agent restart (an upgrade,
//! a crash, kill -9) must not stop in-flight renders, so the process is not tied to
//! the agent; its pid and kernel start time go into `run/comfyui.json`, and a new
//! agent adopts it from there.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Mutex;
use std::time::Duration;

use comfyfleet_config::spec::SpecDigest;
use jiff::Timestamp;
use rustix::process::{Pid, Signal};
use serde::{Deserialize, Serialize};

use crate::command::ChildEnvironment;
use crate::layout::Layout;

/// The line the agent writes into ComfyUI's log before each start.
const START_MARKER: &str = "=== comfyfleet: starting ComfyUI";

/// ComfyUI's log is started afresh beyond this size (the old one kept as `.1`).
const MAX_LOG_BYTES: u64 = 64 << 20;

/// How ComfyUI runs from one environment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Launch {
    pub revision_id: SpecDigest,
    pub env_dir: PathBuf,
    pub port: u16,
    /// Everything after `main.py`.
    pub args: Vec<String>,
}

#[derive(Debug, Serialize, Deserialize)]
struct PidFile {
    pid: i32,
    /// The process's start time in clock ticks since boot (/proc/PID/stat field 22):
    /// a pid reused by another process after a reboot or a long time does not match.
    start_ticks: u64,
    started_at: Timestamp,
    launch: Launch,
}

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("cannot start ComfyUI from {env}: {source}")]
    Start { env: PathBuf, source: std::io::Error },
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
}

pub struct ComfyuiService {
    layout: Layout,
    environment: ChildEnvironment,
    /// The process when this agent started it (so it can be reaped); an adopted
    /// process belongs to init.
    child: Mutex<Option<tokio::process::Child>>,
}

impl ComfyuiService {
    pub fn new(layout: Layout, environment: ChildEnvironment) -> Self {
        Self { layout, environment, child: Mutex::new(None) }
    }

    fn pid_file(&self) -> PathBuf {
        self.layout.run().join("comfyui.json")
    }

    pub fn log_file(&self) -> PathBuf {
        self.layout.logs().join("comfyui.log")
    }

    fn read_pid_file(&self) -> Option<PidFile> {
        let text = std::fs::read(self.pid_file()).ok()?;
        serde_json::from_slice(&text).ok()
    }

    /// Reaps our own child if it exited; returns how it ended.
    pub fn exited(&self) -> Option<String> {
        let mut child = self.child.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let status = child.as_mut()?.try_wait().ok()??;
        *child = None;
        Some(status.to_string())
    }

    /// What is running now, if anything.
    pub fn running(&self) -> Option<Launch> {
        let _ = self.exited();
        let record = self.read_pid_file()?;
        (process_start_ticks(record.pid) == Some(record.start_ticks)).then_some(record.launch)
    }

    pub fn start(&self, launch: &Launch) -> Result<u32, ServiceError> {
        let comfyui = launch.env_dir.join("ComfyUI");
        let python = launch.env_dir.join("venv/bin/python");
        let log = self.open_log(launch)?;
        let log_err =
            log.try_clone().map_err(|source| ServiceError::Write { path: self.log_file(), source })?;
        let mut command = tokio::process::Command::new(&python);
        command
            .arg(comfyui.join("main.py"))
            .args(&launch.args)
            .current_dir(&comfyui)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            // Its own group: signals for the agent never reach it, and a stop
            // reaches everything ComfyUI started.
            .process_group(0)
            .kill_on_drop(false);
        self.environment.apply(&mut command);
        command.env("PYTHONUNBUFFERED", "1");
        let child =
            command.spawn().map_err(|source| ServiceError::Start { env: launch.env_dir.clone(), source })?;
        let pid = child.id().unwrap_or_default();
        let pid_i32 = i32::try_from(pid).unwrap_or_default();
        let record = PidFile {
            pid: pid_i32,
            start_ticks: process_start_ticks(pid_i32).unwrap_or_default(),
            started_at: Timestamp::now(),
            launch: launch.clone(),
        };
        let json = serde_json::to_vec_pretty(&record).unwrap_or_default();
        comfyfleet_daemon::files::write_atomic(&self.pid_file(), &json, 0o644)
            .map_err(|source| ServiceError::Write { path: self.pid_file(), source })?;
        *self.child.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(child);
        tracing::info!(pid, port = launch.port, revision = %launch.revision_id.short(), "ComfyUI started");
        Ok(pid)
    }

    /// SIGTERM to ComfyUI's process group, SIGKILL after `grace`.
    pub async fn stop(&self, grace: Duration) {
        let Some(record) = self.read_pid_file() else { return };
        if process_start_ticks(record.pid) == Some(record.start_ticks)
            && let Some(pid) = Pid::from_raw(record.pid)
        {
            let _ = rustix::process::kill_process_group(pid, Signal::TERM);
            let deadline = tokio::time::Instant::now() + grace;
            while tokio::time::Instant::now() < deadline && self.alive(&record) {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            if self.alive(&record) {
                tracing::warn!(pid = record.pid, "ComfyUI did not stop within {grace:?}; killing it");
                let _ = rustix::process::kill_process_group(pid, Signal::KILL);
                while self.alive(&record) {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
            tracing::info!(pid = record.pid, "ComfyUI stopped");
        }
        let _ = std::fs::remove_file(self.pid_file());
    }

    fn alive(&self, record: &PidFile) -> bool {
        let _ = self.exited();
        process_start_ticks(record.pid) == Some(record.start_ticks)
    }

    /// The last lines ComfyUI printed.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(self.log_file()).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// What ComfyUI printed since the agent last started it.
    pub fn this_start_log(&self) -> String {
        let text = std::fs::read_to_string(self.log_file()).unwrap_or_default();
        match text.rfind(START_MARKER) {
            Some(at) => text[at..].to_owned(),
            None => text,
        }
    }

    fn open_log(&self, launch: &Launch) -> Result<std::fs::File, ServiceError> {
        let path = self.log_file();
        if std::fs::metadata(&path).is_ok_and(|meta| meta.len() > MAX_LOG_BYTES) {
            let _ = std::fs::rename(&path, path.with_extension("log.1"));
        }
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|source| ServiceError::Write { path: path.clone(), source })?;
        let _ = writeln!(
            file,
            "{START_MARKER} from revision {} on port {} at {} ===",
            launch.revision_id.short(),
            launch.port,
            Timestamp::now()
        );
        Ok(file)
    }
}

/// A live (not zombie) process's start time, from `/proc/PID/stat`.
fn process_start_ticks(pid: i32) -> Option<u64> {
    if pid <= 0 {
        return None;
    }
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces.
    let after_name = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // fields[0] is field 3 (state); field 22 (starttime) is fields[19].
    if matches!(fields.first(), Some(&"Z") | Some(&"X")) {
        return None;
    }
    fields.get(19)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn our_own_start_time_reads() {
        let me = i32::try_from(std::process::id()).unwrap();
        assert!(process_start_ticks(me).is_some());
        assert!(process_start_ticks(0).is_none());
        assert!(process_start_ticks(i32::MAX).is_none());
    }
}
