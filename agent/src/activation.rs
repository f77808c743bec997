//! Switching the machine to a complete environment without losing a render: `drain`
//! (wait until ComfyUI's `GET /queue` shows nothing running or queued), `switch`
//! (`current` replaced atomically), `start` (ComfyUI restarted from it, on a
//! database it can open and with ComfyUI-Manager set as the spec says) and `health`
//! (`GET /system_stats` answers with the planned `pytorch_version`, and every
//! required custom node loaded: ComfyUI answers only after trying them all, and
//! `GET /object_info` lists the node classes each contributed). A failed health
//! check switches back to the environment that was running and restarts it.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use comfyfleet_config::convergence::StepState;
use serde::Deserialize;

use crate::comfyui::custom_nodes::{self, ExpectedNode};
use crate::comfyui::model_folders;
use crate::complete_record::CompleteRecord;
use crate::database;
use crate::journal::Journal;
use crate::layout::{EnvDir, Layout};
use crate::manager;
use crate::report::Reporter;
use crate::service::{ComfyuiService, Launch};

pub const STEPS: [&str; 4] = ["drain", "switch", "start", "health"];

const POLL: Duration = Duration::from_millis(250);
/// ComfyUI's quick routes (`/queue`, `/system_stats`), like the agent's HTTP client.
const HTTP_TIMEOUT: Duration = Duration::from_secs(5);
const STOP_GRACE: Duration = Duration::from_secs(10);
/// How long the previous ComfyUI gets to come back after a failed switch.
const RESTORE_HEALTH_TIMEOUT: Duration = Duration::from_secs(60);
/// How long `/object_info` may take: it describes every node class, thousands with
/// large node packs, so it is slower than the other routes.
const OBJECT_INFO_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, thiserror::Error)]
#[error("{step}: {message}")]
pub struct ActivationFailure {
    pub step: &'static str,
    pub message: String,
}

pub struct Activator<'a> {
    pub layout: &'a Layout,
    pub service: &'a ComfyuiService,
    pub journal: &'a Journal,
    pub reporter: &'a Reporter,
    pub http: &'a reqwest::Client,
    /// `--comfyui-port`: several agents on one host each run their own ComfyUI.
    pub port_override: Option<u16>,
}

#[derive(Deserialize)]
struct Queue {
    #[serde(default)]
    queue_running: Vec<serde_json::Value>,
    #[serde(default)]
    queue_pending: Vec<serde_json::Value>,
}

#[derive(Deserialize)]
struct SystemStats {
    system: SystemInfo,
}

#[derive(Deserialize)]
struct SystemInfo {
    pytorch_version: String,
}

impl Activator<'_> {
    /// How ComfyUI runs from `record`'s environment.
    pub fn launch(&self, record: &CompleteRecord) -> Launch {
        let env = self.layout.env(&record.revision_id);
        let shared = self.layout.shared();
        let path = |name: &str| shared.join(name).to_string_lossy().into_owned();
        let port = self.port_override.unwrap_or(record.port);
        let mut args = vec![
            "--port".to_owned(),
            port.to_string(),
            "--output-directory".to_owned(),
            path("output"),
            "--input-directory".to_owned(),
            path("input"),
            "--user-directory".to_owned(),
            path("user"),
        ];
        args.extend(model_folders::arguments(&record.comfyui, &shared));
        if record.comfyui.database_url {
            // Not inside the checkout, where each revision would start on an empty one.
            args.extend(["--database-url".to_owned(), database::url(self.layout)]);
        }
        args.extend(manager::arguments(record));
        args.extend(record.comfyui_args.iter().cloned());
        Launch { revision_id: record.revision_id.clone(), env_dir: env.path, port, args }
    }

    /// The environment `current` points at, if it is complete.
    pub fn current(&self) -> Option<CompleteRecord> {
        let target = std::fs::read_link(self.layout.current()).ok()?;
        let env = EnvDir { path: self.layout.root().join(target) };
        CompleteRecord::load(&env)
    }

    /// `switch`, `start` and `health`, after [`Activator::drain`]. Not to be
    /// cancelled half-way: it always leaves `current` and ComfyUI consistent.
    pub async fn switch_to(
        &self,
        record: &CompleteRecord,
        previous: Option<&CompleteRecord>,
    ) -> Result<(), ActivationFailure> {
        self.step("switch", || {
            switch_current(self.layout, &self.layout.env(&record.revision_id).path)
                .map(|()| format!("current → {}", record.describe()))
        })?;
        let launch = self.launch(record);
        let started = self.restart(&launch, record, previous).await;
        let healthy = match started {
            Ok(()) => {
                self.health(record, &launch, Duration::from_millis(record.health_timeout_ms), Nodes::Required)
                    .await
            }
            Err(failure) => Err(failure),
        };
        match healthy {
            Ok(()) => {
                if let Err(error) =
                    self.journal.record_activation(&record.revision_id, jiff::Timestamp::now())
                {
                    tracing::warn!(%error, "cannot record the activation");
                }
                Ok(())
            }
            Err(failure) => Err(self.switch_back(record, previous, failure).await),
        }
    }

    /// Runs one quick step and reports it.
    fn step(
        &self,
        name: &'static str,
        work: impl FnOnce() -> Result<String, String>,
    ) -> Result<(), ActivationFailure> {
        let handle = self.reporter.begin(name);
        match work() {
            Ok(detail) => {
                handle.finish(StepState::Done, detail);
                Ok(())
            }
            Err(message) => {
                handle.finish(StepState::Failed, message.clone());
                Err(ActivationFailure { step: name, message })
            }
        }
    }

    /// Waits for ComfyUI's queue to empty. Safe to cancel: nothing is switched yet.
    pub async fn drain(&self, record: &CompleteRecord) -> Result<(), ActivationFailure> {
        let handle = self.reporter.begin("drain");
        let Some(running) = self.service.running() else {
            handle.finish(StepState::Skipped, "ComfyUI is not running: nothing to drain");
            return Ok(());
        };
        let timeout = Duration::from_millis(record.drain_timeout_ms);
        let started = Instant::now();
        let url = format!("http://127.0.0.1:{}/queue", running.port);
        loop {
            let last = match self.get::<Queue>(&url).await {
                Ok(queue) if queue.queue_running.is_empty() && queue.queue_pending.is_empty() => {
                    let waited = started.elapsed();
                    handle.finish(StepState::Done, format!("queue empty after {}", seconds(waited)));
                    return Ok(());
                }
                Ok(queue) => format!(
                    "{} running and {} queued prompts",
                    queue.queue_running.len(),
                    queue.queue_pending.len()
                ),
                Err(error) => format!("ComfyUI's /queue does not answer ({error})"),
            };
            if started.elapsed() >= timeout {
                let message = format!(
                    "{last} after {} (run.drain_timeout); nothing was switched, ComfyUI keeps running {}",
                    seconds(timeout),
                    running.revision_id.short()
                );
                handle.finish(StepState::Failed, message.clone());
                return Err(ActivationFailure { step: "drain", message });
            }
            handle.progress(format!(
                "waiting: {last} ({} of {})",
                seconds(started.elapsed()),
                seconds(timeout)
            ));
            tokio::time::sleep(POLL).await;
        }
    }

    async fn restart(
        &self,
        launch: &Launch,
        record: &CompleteRecord,
        running: Option<&CompleteRecord>,
    ) -> Result<(), ActivationFailure> {
        let handle = self.reporter.begin("start");
        self.service.stop(STOP_GRACE).await;
        let prepared = self.prepare_start(record, running);
        let started = prepared.and_then(|note| {
            self.service.start(launch).map(|pid| (pid, note)).map_err(|error| error.to_string())
        });
        match started {
            Ok((pid, note)) => {
                let mut detail = format!("ComfyUI pid {pid} on port {}", launch.port);
                if let Some(note) = note {
                    detail.push_str(&format!("; {note}"));
                }
                handle.finish(StepState::Done, detail);
                Ok(())
            }
            Err(message) => {
                handle.finish(StepState::Failed, message.clone());
                Err(ActivationFailure { step: "start", message })
            }
        }
    }

    /// What must be in place before `record`'s ComfyUI starts (none runs now): a
    /// database it can open, and ComfyUI-Manager's settings. Returns what is worth
    /// reporting.
    fn prepare_start(
        &self,
        record: &CompleteRecord,
        running: Option<&CompleteRecord>,
    ) -> Result<Option<String>, String> {
        manager::configure(&self.layout.shared().join("user"), record)?;
        model_folders::prepare(&self.layout.shared(), &record.comfyui)?;
        database::prepare_for(self.layout, record, running)
    }

    /// Waits until ComfyUI answers `/system_stats` with the planned torch, then holds
    /// its custom nodes against the spec: ComfyUI answers only once it has tried to
    /// load them all, `/object_info` says which contributed node classes, and the log
    /// says why one did not.
    async fn health(
        &self,
        record: &CompleteRecord,
        launch: &Launch,
        timeout: Duration,
        nodes: Nodes,
    ) -> Result<(), ActivationFailure> {
        let handle = self.reporter.begin("health");
        let url = format!("http://127.0.0.1:{}/system_stats", launch.port);
        let started = Instant::now();
        let fail = |handle: crate::report::StepHandle, message: String| {
            handle.finish(StepState::Failed, message.clone());
            ActivationFailure { step: "health", message }
        };
        loop {
            if let Some(status) = self.service.exited() {
                let tail = self.service.log_tail(8);
                return Err(fail(
                    handle,
                    format!("ComfyUI exited ({status}) before answering; its log ends:\n{tail}"),
                ));
            }
            match self.get::<SystemStats>(&url).await {
                Ok(stats) if stats.system.pytorch_version == record.plan.torch => {
                    let mut detail = format!(
                        "/system_stats reports pytorch {} after {}",
                        record.plan.torch,
                        seconds(started.elapsed())
                    );
                    let found = self.custom_node_check(record, launch.port).await;
                    if !found.broken.is_empty() && nodes == Nodes::Required {
                        return Err(fail(handle, found.broken.join("; ")));
                    }
                    for warning in found.broken.iter().chain(&found.warnings) {
                        detail.push_str(&format!("; warning: {warning}"));
                    }
                    if manager::expects_builtin(record) {
                        match self.manager_check(launch.port).await {
                            Ok(note) => detail.push_str(&format!("; {note}")),
                            Err(problem) if nodes == Nodes::Required => return Err(fail(handle, problem)),
                            Err(problem) => detail.push_str(&format!("; warning: {problem}")),
                        }
                    }
                    handle.finish(StepState::Done, detail);
                    return Ok(());
                }
                Ok(stats) => {
                    return Err(fail(
                        handle,
                        format!(
                            "/system_stats reports pytorch {}, not the planned {}",
                            stats.system.pytorch_version, record.plan.torch
                        ),
                    ));
                }
                Err(_) if started.elapsed() < timeout => tokio::time::sleep(POLL).await,
                Err(error) => {
                    return Err(fail(
                        handle,
                        format!(
                            "ComfyUI did not answer {url} within {} (run.health_timeout): {error}",
                            seconds(timeout)
                        ),
                    ));
                }
            }
        }
    }

    /// After a failed start or health check: `current` and ComfyUI back to what
    /// they were. Returns the failure to report, saying where the machine is now.
    async fn switch_back(
        &self,
        failed: &CompleteRecord,
        previous: Option<&CompleteRecord>,
        failure: ActivationFailure,
    ) -> ActivationFailure {
        self.service.stop(STOP_GRACE).await;
        let Some(previous) = previous else {
            let _ = std::fs::remove_file(self.layout.current());
            return ActivationFailure {
                step: failure.step,
                message: format!(
                    "{}; ComfyUI stopped (there was no earlier environment to go back to)",
                    failure.message
                ),
            };
        };
        let restored = switch_current(self.layout, &self.layout.env(&previous.revision_id).path)
            .map_err(|error| format!("cannot switch back: {error}"));
        let launch = self.launch(previous);
        let restarted = restored.and_then(|()| {
            let note = self.prepare_start(previous, Some(failed))?;
            self.service.start(&launch).map(|_| note).map_err(|error| error.to_string())
        });
        let outcome = match restarted {
            Ok(note) => match self.health(previous, &launch, RESTORE_HEALTH_TIMEOUT, Nodes::Report).await {
                Ok(()) => match note {
                    Some(note) => {
                        format!("switched back to {}, which is running again; {note}", previous.describe())
                    }
                    None => format!("switched back to {}, which is running again", previous.describe()),
                },
                Err(again) => format!(
                    "switched back to {}, but it is not healthy either: {}",
                    previous.describe(),
                    again.message
                ),
            },
            Err(error) => format!("switching back to {} failed: {error}", previous.describe()),
        };
        ActivationFailure { step: failure.step, message: format!("{}; {outcome}", failure.message) }
    }

    /// The spec's custom nodes held against what this start's ComfyUI serves
    /// (`/object_info`) and logged: problems with required nodes, then warnings.
    async fn custom_node_check(&self, record: &CompleteRecord, port: u16) -> custom_nodes::NodeCheck {
        let expected = expected_nodes(record);
        let log = self.service.this_start_log();
        if expected.iter().all(|node| !node.node_classes) {
            return custom_nodes::check(&expected, None, &log);
        }
        let url = format!("http://127.0.0.1:{port}/object_info");
        match self.get_within::<serde_json::Map<String, serde_json::Value>>(&url, OBJECT_INFO_TIMEOUT).await {
            Ok(object_info) => {
                let served = custom_nodes::nodes_with_classes(&object_info);
                custom_nodes::check(&expected, served.as_ref(), &log)
            }
            Err(error) => {
                // Without it a node that loaded nothing cannot be told from one that did.
                let mut found = custom_nodes::check(&expected, None, &log);
                found.broken.push(format!(
                    "ComfyUI did not answer {url} ({error}), so which custom nodes contributed node classes is unknown"
                ));
                found
            }
        }
    }

    /// Whether the built-in manager this start asked for serves its route.
    async fn manager_check(&self, port: u16) -> Result<String, String> {
        let url = format!("http://127.0.0.1:{port}{}", manager::VERSION_ROUTE);
        let answer = match self.http.get(&url).timeout(HTTP_TIMEOUT).send().await {
            Ok(response) if response.status().is_success() => {
                response.text().await.map_err(|error| comfyfleet_proto::transport::error_chain(&error))
            }
            Ok(response) => Err(format!("status {}", response.status())),
            Err(error) => Err(comfyfleet_proto::transport::error_chain(&error)),
        };
        manager::loaded(answer, &self.service.this_start_log())
    }

    async fn get<T: for<'de> Deserialize<'de>>(&self, url: &str) -> Result<T, String> {
        self.get_within(url, HTTP_TIMEOUT).await
    }

    async fn get_within<T: for<'de> Deserialize<'de>>(
        &self,
        url: &str,
        timeout: Duration,
    ) -> Result<T, String> {
        let response = self
            .http
            .get(url)
            .timeout(timeout)
            .send()
            .await
            .map_err(|error| comfyfleet_proto::transport::error_chain(&error))?;
        if !response.status().is_success() {
            return Err(format!("status {}", response.status()));
        }
        let body =
            response.bytes().await.map_err(|error| comfyfleet_proto::transport::error_chain(&error))?;
        serde_json::from_slice(&body).map_err(|error| format!("unreadable answer: {error}"))
    }
}

/// The custom nodes `record`'s spec lists, as the health check holds them.
fn expected_nodes(record: &CompleteRecord) -> Vec<ExpectedNode> {
    record
        .custom_nodes
        .iter()
        .map(|node| ExpectedNode {
            name: node.name.clone(),
            required: !record.optional_nodes.contains(&node.name),
            // ComfyUI-Manager registers no classes; records of older agents do not say so.
            node_classes: !record.nodes_without_classes.contains(&node.name)
                && !node.name.eq_ignore_ascii_case("comfyui-manager"),
        })
        .collect()
}

/// Whether a custom node that fails to import fails the health check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Nodes {
    /// A new environment: a required node that failed fails the switch.
    Required,
    /// The environment being switched back to: it runs whatever it has.
    Report,
}

/// Points `current` at `env` atomically: a new symlink renamed over the old one.
pub fn switch_current(layout: &Layout, env: &Path) -> Result<(), String> {
    let relative: PathBuf =
        env.strip_prefix(layout.root()).map(Path::to_owned).unwrap_or_else(|_| env.to_owned());
    let temporary = layout.root().join(".current.new");
    let _ = std::fs::remove_file(&temporary);
    std::os::unix::fs::symlink(&relative, &temporary)
        .map_err(|error| format!("cannot create {}: {error}", temporary.display()))?;
    std::fs::rename(&temporary, layout.current())
        .map_err(|error| format!("cannot replace {}: {error}", layout.current().display()))?;
    // Make the rename durable: after a power cut `current` is the old or the new link.
    std::fs::File::open(layout.root())
        .and_then(|dir| dir.sync_all())
        .map_err(|error| format!("cannot sync {}: {error}", layout.root().display()))
}

fn seconds(duration: Duration) -> String {
    if duration.as_secs() >= 120 {
        format!("{} min", duration.as_secs() / 60)
    } else {
        format!("{:.1} s", duration.as_secs_f64())
    }
}
