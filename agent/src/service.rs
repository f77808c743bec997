//! The ComfyUI service the agent runs: one process per instance (one per GPU on a
//! machine with several, [`crate::instances`]) started from an environment, each in
//! its own process group, that outlive the agent. An agent restart (an upgrade, a
//! crash, kill -9) must not stop in-flight renders, so the processes are not tied to
//! the agent; each one's pid and kernel start time go into `run/comfyui.json`
//! (instance 0) or `run/comfyui-<i>.json`, and a new agent adopts them from there.

use std::collections::BTreeMap;
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
    /// Which instance of the machine this is (0: the first, or the only one).
    #[serde(default)]
    pub instance: usize,
    /// The GPUs (NVML indices) it sees; empty: every GPU.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gpus: Vec<u32>,
    /// Environment variables of its own (`CUDA_VISIBLE_DEVICES`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<(String, String)>,
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
    /// The processes this agent started, by instance (so they can be reaped); an
    /// adopted process belongs to init.
    children: Mutex<BTreeMap<usize, tokio::process::Child>>,
    /// How reaped children ended, by instance, until someone asks.
    exits: Mutex<BTreeMap<usize, String>>,
}

/// A ComfyUI the agent started and recorded, and whether it still runs.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub launch: Launch,
    pub pid: i32,
    pub alive: bool,
}

impl ComfyuiService {
    pub fn new(layout: Layout, environment: ChildEnvironment) -> Self {
        Self {
            layout,
            environment,
            children: Mutex::new(BTreeMap::new()),
            exits: Mutex::new(BTreeMap::new()),
        }
    }

    fn pid_file(&self, instance: usize) -> PathBuf {
        self.layout.run().join(format!("{}.json", file_stem(instance)))
    }

    pub fn log_file(&self, instance: usize) -> PathBuf {
        self.layout.logs().join(format!("{}.log", file_stem(instance)))
    }

    fn read_pid_file(&self, instance: usize) -> Option<PidFile> {
        let text = std::fs::read(self.pid_file(instance)).ok()?;
        serde_json::from_slice(&text).ok()
    }

    /// The instances with a pid file, by instance.
    fn pid_files(&self) -> BTreeMap<usize, PidFile> {
        let mut found = BTreeMap::new();
        let Ok(entries) = std::fs::read_dir(self.layout.run()) else { return found };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let instance = match name.strip_suffix(".json") {
                Some("comfyui") => 0,
                Some(stem) => match stem.strip_prefix("comfyui-").and_then(|i| i.parse::<usize>().ok()) {
                    Some(instance) if instance > 0 => instance,
                    _ => continue,
                },
                None => continue,
            };
            if let Some(record) = self.read_pid_file(instance) {
                found.insert(instance, record);
            }
        }
        found
    }

    /// Reaps instance `instance` if it exited; returns how it ended (once).
    pub fn exited_instance(&self, instance: usize) -> Option<String> {
        self.reap();
        self.exits.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(&instance)
    }

    /// Reaps our own children that exited, keeping how each ended.
    fn reap(&self) {
        let mut children = self.children.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let ended: Vec<(usize, String)> = children
            .iter_mut()
            .filter_map(|(instance, child)| Some((*instance, child.try_wait().ok()??.to_string())))
            .collect();
        let mut exits = self.exits.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        for (instance, status) in ended {
            children.remove(&instance);
            exits.insert(instance, status);
        }
    }

    /// Every ComfyUI the agent started and has not stopped, running or not.
    pub fn recorded(&self) -> Vec<Recorded> {
        self.reap();
        self.pid_files()
            .into_values()
            .map(|record| Recorded {
                alive: process_start_ticks(record.pid) == Some(record.start_ticks),
                pid: record.pid,
                launch: record.launch,
            })
            .collect()
    }

    /// What is running now, by instance.
    pub fn running(&self) -> Vec<Launch> {
        self.recorded()
            .into_iter()
            .filter(|recorded| recorded.alive)
            .map(|recorded| recorded.launch)
            .collect()
    }

    pub fn start(&self, launch: &Launch) -> Result<u32, ServiceError> {
        let comfyui = launch.env_dir.join("ComfyUI");
        let python = launch.env_dir.join("venv/bin/python");
        let log = self.open_log(launch)?;
        let log_err = log
            .try_clone()
            .map_err(|source| ServiceError::Write { path: self.log_file(launch.instance), source })?;
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
        command.envs(launch.env.iter().map(|(name, value)| (name, value)));
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
        let pid_file = self.pid_file(launch.instance);
        comfyfleet_daemon::files::write_atomic(&pid_file, &json, 0o644)
            .map_err(|source| ServiceError::Write { path: pid_file.clone(), source })?;
        self.exits.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(&launch.instance);
        self.children
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(launch.instance, child);
        tracing::info!(
            pid,
            port = launch.port,
            instance = launch.instance,
            gpus = ?launch.gpus,
            revision = %launch.revision_id.short(),
            "ComfyUI started"
        );
        Ok(pid)
    }

    /// Every instance stopped: SIGTERM to each one's process group, SIGKILL after `grace`.
    pub async fn stop(&self, grace: Duration) {
        let records = self.pid_files();
        for record in records.values() {
            if self.alive(record)
                && let Some(pid) = Pid::from_raw(record.pid)
            {
                let _ = rustix::process::kill_process_group(pid, Signal::TERM);
            }
        }
        let deadline = tokio::time::Instant::now() + grace;
        while tokio::time::Instant::now() < deadline && records.values().any(|record| self.alive(record)) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        for record in records.values() {
            if self.alive(record)
                && let Some(pid) = Pid::from_raw(record.pid)
            {
                tracing::warn!(pid = record.pid, "ComfyUI did not stop within {grace:?}; killing it");
                let _ = rustix::process::kill_process_group(pid, Signal::KILL);
            }
        }
        while records.values().any(|record| self.alive(record)) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        for (instance, record) in &records {
            tracing::info!(pid = record.pid, instance, "ComfyUI stopped");
            let _ = std::fs::remove_file(self.pid_file(*instance));
        }
    }

    fn alive(&self, record: &PidFile) -> bool {
        self.reap();
        process_start_ticks(record.pid) == Some(record.start_ticks)
    }

    /// The last lines instance `instance` printed.
    pub fn log_tail(&self, instance: usize, lines: usize) -> String {
        let text = std::fs::read_to_string(self.log_file(instance)).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// What instance `instance` printed since the agent last started it.
    pub fn this_start_log(&self, instance: usize) -> String {
        let text = std::fs::read_to_string(self.log_file(instance)).unwrap_or_default();
        match text.rfind(START_MARKER) {
            Some(at) => text[at..].to_owned(),
            None => text,
        }
    }

    fn open_log(&self, launch: &Launch) -> Result<std::fs::File, ServiceError> {
        let path = self.log_file(launch.instance);
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

/// `comfyui` for instance 0 (the only one on most machines, named as before
/// instances), `comfyui-<i>` for the others.
fn file_stem(instance: usize) -> String {
    if instance == 0 { "comfyui".to_owned() } else { format!("comfyui-{instance}") }
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
