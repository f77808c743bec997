//! Switching the machine to a complete environment without losing a render: `drain`
//! (wait until ComfyUI's `GET /queue` shows nothing running or queued), `switch`
//! (`current` replaced atomically), `start` (ComfyUI restarted from it, on a
//! database it can open and with ComfyUI-Manager set as the spec says) and `health`
//! (`GET /system_stats` answers with the planned `pytorch_version`, and every
//! required custom node loaded: ComfyUI answers only after trying them all, and
//! `GET /object_info` lists the node classes each contributed). A failed health
//! check switches back to the environment that was running and restarts it. A
//! machine runs one ComfyUI per GPU ([`crate::instances`]): each step covers every
//! instance, and one failing instance switches the whole machine back.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use comfyfleet_config::convergence::{InstanceReport, InstanceState, StepState};
use serde::Deserialize;

use crate::comfyui::custom_nodes::{self, ExpectedNode};
use crate::comfyui::model_folders;
use crate::complete_record::CompleteRecord;
use crate::database;
use crate::instances::{self, GpuSlot, InstancePlan};
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
    /// The machine's GPUs, for one ComfyUI per GPU.
    pub gpus: Vec<GpuSlot>,
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
    /// How each of the machine's ComfyUIs runs from `record`'s environment.
    pub fn launches(&self, record: &CompleteRecord) -> Result<Vec<(InstancePlan, Launch)>, String> {
        let port = self.port_override.unwrap_or(record.port);
        let plans = instances::plan(self.layout, record, &self.gpus, port)?;
        Ok(plans
            .into_iter()
            .map(|plan| {
                let launch = self.launch(record, &plan);
                (plan, launch)
            })
            .collect())
    }

    /// How one instance runs from `record`'s environment.
    fn launch(&self, record: &CompleteRecord, plan: &InstancePlan) -> Launch {
        let env = self.layout.env(&record.revision_id);
        let shared = self.layout.shared();
        let path = |name: &str| shared.join(name).to_string_lossy().into_owned();
        let mut args = vec![
            "--port".to_owned(),
            plan.port.to_string(),
            "--output-directory".to_owned(),
            path("output"),
            "--input-directory".to_owned(),
            path("input"),
            "--user-directory".to_owned(),
            path("user"),
        ];
        if let Some(temp) = plan.temp_directory.as_ref().filter(|_| record.comfyui.temp_directory) {
            args.extend(["--temp-directory".to_owned(), temp.to_string_lossy().into_owned()]);
        }
        args.extend(model_folders::arguments(&record.comfyui, &shared));
        if record.comfyui.database_url {
            // Not inside the checkout, where each revision would start on an empty one.
            let url = match &plan.database {
                Some(own) => format!("sqlite:///{}", own.display()),
                None => database::url(self.layout),
            };
            args.extend(["--database-url".to_owned(), url]);
        }
        args.extend(manager::arguments(record));
        args.extend(record.comfyui_args.iter().cloned());
        Launch {
            revision_id: record.revision_id.clone(),
            env_dir: env.path,
            port: plan.port,
            args,
            instance: plan.index,
            gpus: plan.gpus.clone(),
            env: plan.env.clone(),
        }
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
        let started = self.restart(record, previous).await;
        let healthy = match started {
            Ok(launches) => {
                self.health(
                    record,
                    &launches,
                    Duration::from_millis(record.health_timeout_ms),
                    Nodes::Required,
                )
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

    /// Waits for every ComfyUI's queue to empty. Safe to cancel: nothing is switched yet.
    pub async fn drain(&self, record: &CompleteRecord) -> Result<(), ActivationFailure> {
        let handle = self.reporter.begin("drain");
        let running = self.service.running();
        let Some(first) = running.first() else {
            handle.finish(StepState::Skipped, "ComfyUI is not running: nothing to drain");
            return Ok(());
        };
        let timeout = Duration::from_millis(record.drain_timeout_ms);
        let started = Instant::now();
        loop {
            let mut busy = Vec::new();
            for launch in &running {
                let url = format!("http://127.0.0.1:{}/queue", launch.port);
                let state = match self.get::<Queue>(&url).await {
                    Ok(queue) if queue.queue_running.is_empty() && queue.queue_pending.is_empty() => continue,
                    Ok(queue) => format!(
                        "{} running and {} queued prompts",
                        queue.queue_running.len(),
                        queue.queue_pending.len()
                    ),
                    Err(error) => format!("ComfyUI's /queue does not answer ({error})"),
                };
                busy.push(if running.len() > 1 { format!("{}: {state}", describe(launch)) } else { state });
            }
            if busy.is_empty() {
                let waited = started.elapsed();
                let what = if running.len() > 1 { "every queue" } else { "queue" };
                handle.finish(StepState::Done, format!("{what} empty after {}", seconds(waited)));
                return Ok(());
            }
            let last = busy.join("; ");
            if started.elapsed() >= timeout {
                let message = format!(
                    "{last} after {} (run.drain_timeout); nothing was switched, ComfyUI keeps running {}",
                    seconds(timeout),
                    first.revision_id.short()
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

    /// Every ComfyUI stopped, then `record`'s instances started. Returns them.
    async fn restart(
        &self,
        record: &CompleteRecord,
        running: Option<&CompleteRecord>,
    ) -> Result<Vec<Launch>, ActivationFailure> {
        let handle = self.reporter.begin("start");
        self.service.stop(STOP_GRACE).await;
        match self.start_all(record, running) {
            Ok((launches, mut detail, note)) => {
                if let Some(note) = note {
                    detail.push_str(&format!("; {note}"));
                }
                handle.finish(StepState::Done, detail);
                let states = vec![(InstanceState::Starting, String::new()); launches.len()];
                self.publish(&launches, &states);
                Ok(launches)
            }
            Err(message) => {
                handle.finish(StepState::Failed, message.clone());
                Err(ActivationFailure { step: "start", message })
            }
        }
    }

    /// Starts `record`'s instances (none runs now). Returns them, what was started
    /// and what else is worth reporting.
    fn start_all(
        &self,
        record: &CompleteRecord,
        running: Option<&CompleteRecord>,
    ) -> Result<(Vec<Launch>, String, Option<String>), String> {
        let planned = self.launches(record)?;
        let plans: Vec<InstancePlan> = planned.iter().map(|(plan, _)| plan.clone()).collect();
        let note = self.prepare_start(record, running, &plans)?;
        let mut started = Vec::new();
        for (_, launch) in &planned {
            let pid = self.service.start(launch).map_err(|error| error.to_string())?;
            started.push(format!("{} pid {pid} on port {}", instance_name(launch), launch.port));
        }
        let detail = match started.as_slice() {
            [one] => one.clone(),
            many => format!("{} ComfyUIs: {}", many.len(), many.join(", ")),
        };
        Ok((planned.into_iter().map(|(_, launch)| launch).collect(), detail, note))
    }

    /// What must be in place before `record`'s ComfyUI starts (none runs now): a
    /// database it can open, and ComfyUI-Manager's settings. Returns what is worth
    /// reporting.
    fn prepare_start(
        &self,
        record: &CompleteRecord,
        running: Option<&CompleteRecord>,
        plans: &[InstancePlan],
    ) -> Result<Option<String>, String> {
        manager::configure(&self.layout.shared().join("user"), record)?;
        model_folders::prepare(&self.layout.shared(), &record.comfyui)?;
        instances::create_directories(plans)?;
        let note = database::prepare_for(self.layout, record, running)?;
        instances::seed_databases(self.layout, plans)?;
        Ok(note)
    }

    /// The instances in the report, each with its pid, state and last health.
    fn publish(&self, launches: &[Launch], states: &[(InstanceState, String)]) {
        let recorded = self.service.recorded();
        let instances: Vec<InstanceReport> = launches
            .iter()
            .zip(states)
            .map(|(launch, (state, health))| InstanceReport {
                index: u32::try_from(launch.instance).unwrap_or(u32::MAX),
                gpus: launch.gpus.clone(),
                port: launch.port.into(),
                pid: recorded
                    .iter()
                    .find(|recorded| recorded.launch.instance == launch.instance)
                    .and_then(|recorded| u32::try_from(recorded.pid).ok())
                    .unwrap_or_default(),
                state: *state,
                health: health.clone(),
            })
            .collect();
        self.reporter.update(|report| report.instances = instances);
    }

    /// Every instance's [`Activator::health_of`], as one step: one failing fails it.
    async fn health(
        &self,
        record: &CompleteRecord,
        launches: &[Launch],
        timeout: Duration,
        nodes: Nodes,
    ) -> Result<(), ActivationFailure> {
        let handle = self.reporter.begin("health");
        let mut details = Vec::new();
        let mut states = vec![(InstanceState::Starting, String::new()); launches.len()];
        for (position, launch) in launches.iter().enumerate() {
            let checked = self.health_of(record, launch, timeout, nodes).await;
            states[position] = match &checked {
                Ok(detail) => (InstanceState::Healthy, detail.clone()),
                Err(message) => (InstanceState::Failed, message.clone()),
            };
            self.publish(launches, &states);
            match checked {
                Ok(detail) if launches.len() > 1 => details.push(format!("{}: {detail}", describe(launch))),
                Ok(detail) => details.push(detail),
                Err(message) => {
                    let message =
                        if launches.len() > 1 { format!("{}: {message}", describe(launch)) } else { message };
                    handle.finish(StepState::Failed, message.clone());
                    return Err(ActivationFailure { step: "health", message });
                }
            }
        }
        handle.finish(StepState::Done, details.join("; "));
        Ok(())
    }

    /// Waits until one ComfyUI answers `/system_stats` with the planned torch, then
    /// holds its custom nodes against the spec: ComfyUI answers only once it has
    /// tried to load them all, `/object_info` says which contributed node classes,
    /// and the log says why one did not.
    async fn health_of(
        &self,
        record: &CompleteRecord,
        launch: &Launch,
        timeout: Duration,
        nodes: Nodes,
    ) -> Result<String, String> {
        let url = format!("http://127.0.0.1:{}/system_stats", launch.port);
        let started = Instant::now();
        loop {
            if let Some(status) = self.service.exited_instance(launch.instance) {
                let tail = self.service.log_tail(launch.instance, 8);
                return Err(format!("ComfyUI exited ({status}) before answering; its log ends:\n{tail}"));
            }
            match self.get::<SystemStats>(&url).await {
                Ok(stats) if stats.system.pytorch_version == record.plan.torch => {
                    let mut detail = format!(
                        "/system_stats reports pytorch {} after {}",
                        record.plan.torch,
                        seconds(started.elapsed())
                    );
                    let found = self.custom_node_check(record, launch).await;
                    if !found.broken.is_empty() && nodes == Nodes::Required {
                        return Err(found.broken.join("; "));
                    }
                    for warning in found.broken.iter().chain(&found.warnings) {
                        detail.push_str(&format!("; warning: {warning}"));
                    }
                    if manager::expects_builtin(record) {
                        match self.manager_check(launch).await {
                            Ok(note) => detail.push_str(&format!("; {note}")),
                            Err(problem) if nodes == Nodes::Required => return Err(problem),
                            Err(problem) => detail.push_str(&format!("; warning: {problem}")),
                        }
                    }
                    return Ok(detail);
                }
                Ok(stats) => {
                    return Err(format!(
                        "/system_stats reports pytorch {}, not the planned {}",
                        stats.system.pytorch_version, record.plan.torch
                    ));
                }
                Err(_) if started.elapsed() < timeout => tokio::time::sleep(POLL).await,
                Err(error) => {
                    return Err(format!(
                        "ComfyUI did not answer {url} within {} (run.health_timeout): {error}",
                        seconds(timeout)
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
        let restarted = restored.and_then(|()| self.start_all(previous, Some(failed)));
        let outcome = match restarted {
            Ok((launches, _, note)) => match self
                .health(previous, &launches, RESTORE_HEALTH_TIMEOUT, Nodes::Report)
                .await
            {
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
    async fn custom_node_check(&self, record: &CompleteRecord, launch: &Launch) -> custom_nodes::NodeCheck {
        let port = launch.port;
        let expected = expected_nodes(record);
        let log = self.service.this_start_log(launch.instance);
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
    async fn manager_check(&self, launch: &Launch) -> Result<String, String> {
        let url = format!("http://127.0.0.1:{}{}", launch.port, manager::VERSION_ROUTE);
        let answer = match self.http.get(&url).timeout(HTTP_TIMEOUT).send().await {
            Ok(response) if response.status().is_success() => {
                response.text().await.map_err(|error| comfyfleet_proto::transport::error_chain(&error))
            }
            Ok(response) => Err(format!("status {}", response.status())),
            Err(error) => Err(comfyfleet_proto::transport::error_chain(&error)),
        };
        manager::loaded(answer, &self.service.this_start_log(launch.instance))
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
pub enum Nodes {
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

/// `ComfyUI` for the only instance, `ComfyUI 3 (GPU 3)` for one of several.
fn instance_name(launch: &Launch) -> String {
    if launch.gpus.is_empty() && launch.instance == 0 {
        "ComfyUI".to_owned()
    } else {
        format!("ComfyUI {}", describe(launch))
    }
}

/// `instance 3 (GPU 3, port 8191)`.
fn describe(launch: &Launch) -> String {
    let gpus: Vec<String> = launch.gpus.iter().map(u32::to_string).collect();
    match gpus.as_slice() {
        [] => format!("instance {} (port {})", launch.instance, launch.port),
        [one] => format!("instance {} (GPU {one}, port {})", launch.instance, launch.port),
        many => format!("instance {} (GPUs {}, port {})", launch.instance, many.join(", "), launch.port),
    }
}

fn seconds(duration: Duration) -> String {
    if duration.as_secs() >= 120 {
        format!("{} min", duration.as_secs() / 60)
    } else {
        format!("{:.1} s", duration.as_secs_f64())
    }
}
