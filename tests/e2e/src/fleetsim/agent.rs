//! One simulated agent: its own enrolled identity, the real [`Link`] (hello with
//! inventory, heartbeats, reconnects, assignments journaled and handed on, reports
//! sent up), the real inventory collector with GPUs from a profile, and the sleeping
//! [`SimulatedConverger`]. Its link can be stopped and started again (`offline`,
//! `online`); everything else lives as long as the agent.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use comfyfleet_agent::enroll::{Enrollment, enroll};
use comfyfleet_agent::identity::{Identity, IdentityDir};
use comfyfleet_agent::inventory::InventoryCollector;
use comfyfleet_agent::journal::Journal;
use comfyfleet_agent::layout::Layout;
use comfyfleet_agent::link::Link;
use comfyfleet_agent::report::Reporter;
use comfyfleet_config::convergence::Phase;
use comfyfleet_config::{AssignmentRecord, ConvergenceReport, JoinToken, Labels};
use tokio::sync::{Notify, oneshot, watch};
use tokio::task::JoinHandle;

use super::FleetSimError;
use super::converger::{Behaviour, SimulatedConverger};
use super::events::{Event, EventKind, EventLog};
use super::failures::{self, Failer, SeededRandom};
use super::profiles::{ProfileProbe, ProfileSet};

/// How long `offline` waits for a link to close its session.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// What every agent of the fleet shares.
#[derive(Debug)]
pub struct FleetContext {
    pub controller_urls: Vec<String>,
    pub join_token: Option<JoinToken>,
    pub data_dir: PathBuf,
    pub hostname_prefix: String,
    pub labels: Labels,
    pub profiles: ProfileSet,
    pub behaviour: Arc<Behaviour>,
    pub events: EventLog,
    pub inventory_interval: Duration,
    pub max_backoff: Duration,
    pub seed: u64,
}

impl FleetContext {
    pub fn agent_dir(&self, index: usize) -> PathBuf {
        self.data_dir.join(format!("agent-{index}"))
    }

    pub fn hostname(&self, index: usize) -> String {
        format!("{}{index}", self.hostname_prefix)
    }

    /// `--label`s plus `sim.index` and `sim.profile`, for selectors.
    fn labels(&self, index: usize) -> Labels {
        let mut labels = self.labels.clone();
        // A profile name that is no valid label value (from a hand-written file) is
        // simply left out.
        let _ = labels.insert("sim.index".into(), index.to_string());
        let _ = labels.insert("sim.profile".into(), self.profiles.for_agent(index).name.clone());
        labels
    }
}

/// Agent `index`'s identity: the one on disk from an earlier run (`true`), or a new
/// enrollment with the join token (`false`).
pub async fn obtain_identity(
    context: &FleetContext,
    index: usize,
) -> Result<(Identity, bool), FleetSimError> {
    let data_dir = context.agent_dir(index);
    comfyfleet_daemon::files::create_private_dir(&data_dir)
        .map_err(|source| FleetSimError::DataDir { path: data_dir.clone(), source })?;
    let identity_dir = IdentityDir::new(&data_dir);
    let identity_error = |source| FleetSimError::Identity { agent: index, source };
    if let Some(mut identity) = identity_dir.load().map_err(identity_error)? {
        if identity.controller_urls() != context.controller_urls {
            identity_dir
                .update_controller_urls(&mut identity, &context.controller_urls)
                .map_err(identity_error)?;
        }
        return Ok((identity, true));
    }
    let token = context.join_token.as_ref().ok_or(FleetSimError::NotEnrolled { agent: index })?;
    let hostname = context.hostname(index);
    let labels = context.labels(index);
    let enrollment =
        Enrollment { controller_urls: &context.controller_urls, token, hostname: &hostname, labels: &labels };
    // Never interrupted from inside: a stopping simulator drops the whole task.
    let identity = enroll(&identity_dir, enrollment, &mut std::future::pending::<()>())
        .await
        .map_err(|source| FleetSimError::Enroll { agent: index, source })?;
    Ok((identity, false))
}

/// A link running in its task; dropping `stop` ends it.
struct RunningLink {
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

pub struct SimAgent {
    pub index: usize,
    pub machine_id: String,
    identity: Identity,
    labels: Labels,
    context: Arc<FleetContext>,
    collector: Arc<Mutex<InventoryCollector>>,
    journal: Journal,
    desired: watch::Sender<Option<AssignmentRecord>>,
    reports: watch::Receiver<ConvergenceReport>,
    connected: watch::Sender<bool>,
    /// Why the controller refused the machine, once it did.
    refused: watch::Sender<Option<String>>,
    inventory_changed: Arc<Notify>,
    link: Option<RunningLink>,
    converger: JoinHandle<()>,
}

impl SimAgent {
    /// Starts the agent's converger and link.
    pub fn start(
        context: Arc<FleetContext>,
        index: usize,
        identity: Identity,
        failer: Failer,
    ) -> Result<SimAgent, FleetSimError> {
        let data_dir = context.agent_dir(index);
        let layout = Layout::new(&data_dir);
        std::fs::create_dir_all(layout.journal())
            .map_err(|source| FleetSimError::DataDir { path: layout.journal(), source })?;
        let journal = Journal::new(&layout.journal());
        let hostname = context.hostname(index);
        let probe = ProfileProbe::new(context.profiles.for_agent(index).nvidia_info(&hostname));
        let collector =
            Arc::new(Mutex::new(InventoryCollector::new(Box::new(probe), data_dir, Some(hostname))));
        let (reporter, reports) = Reporter::new();
        // As the real agent does: go on with the journaled assignment before the
        // controller sends it again.
        let (desired, desired_receiver) = watch::channel(journal.desired());
        let machine_id = identity.machine_id.to_string();
        let converger = SimulatedConverger {
            agent: index,
            machine_id: machine_id.clone(),
            failer,
            behaviour: context.behaviour.clone(),
            reporter,
            journal: journal.clone(),
            events: context.events.clone(),
            random: SeededRandom::derived(context.seed, failures::JITTER, index),
        };
        let converger = tokio::spawn(converger.run(desired_receiver));
        let mut agent = SimAgent {
            index,
            machine_id,
            identity,
            labels: context.labels(index),
            context,
            collector,
            journal,
            desired,
            reports,
            connected: watch::channel(false).0,
            refused: watch::channel(None).0,
            inventory_changed: Arc::new(Notify::new()),
            link: None,
            converger,
        };
        agent.go_online();
        Ok(agent)
    }

    /// Whether the link runs (connected or trying to).
    pub fn is_online(&self) -> bool {
        self.link.as_ref().is_some_and(|link| !link.task.is_finished())
    }

    pub fn is_connected(&self) -> bool {
        *self.connected.borrow()
    }

    pub fn refusal(&self) -> Option<String> {
        self.refused.borrow().clone()
    }

    pub fn phase(&self) -> Phase {
        self.reports.borrow().phase
    }

    /// Starts the link; `false` if it runs already.
    pub fn go_online(&mut self) -> bool {
        if self.is_online() {
            return false;
        }
        self.refused.send_replace(None);
        let (stop, stopped) = oneshot::channel::<()>();
        let link = Link {
            identity: self.identity.clone(),
            labels: self.labels.clone(),
            collector: self.collector.clone(),
            inventory_interval: self.context.inventory_interval,
            max_backoff: self.context.max_backoff,
            journal: self.journal.clone(),
            desired: self.desired.clone(),
            reports: self.reports.clone(),
            inventory_changed: self.inventory_changed.clone(),
            connected: self.connected.clone(),
            controller: comfyfleet_agent::session_state::CurrentController::new(
                &self.identity.controller_url,
            ),
            source_secrets: Default::default(),
        };
        let watcher = SessionWatcher {
            agent: self.index,
            machine_id: self.machine_id.clone(),
            events: self.context.events.clone(),
            connected: self.connected.subscribe(),
            desired: self.desired.subscribe(),
            refused: self.refused.clone(),
        };
        let task = tokio::spawn(watcher.watch(link.run(async {
            let _ = stopped.await;
        })));
        self.link = Some(RunningLink { stop, task });
        true
    }

    /// Stops the link, so the controller sees the session end; `false` if it was not
    /// running.
    pub async fn go_offline(&mut self) -> bool {
        let Some(link) = self.link.take() else { return false };
        let was_running = !link.task.is_finished();
        let _ = link.stop.send(());
        let mut task = link.task;
        if tokio::time::timeout(STOP_TIMEOUT, &mut task).await.is_err() {
            tracing::warn!(agent = self.index, "the link did not stop in time; aborted");
            task.abort();
        }
        was_running
    }

    /// Waits for a session to be up; the error says why not.
    pub async fn wait_connected(&self, timeout: Duration) -> Result<(), String> {
        let mut connected = self.connected.subscribe();
        let mut refused = self.refused.subscribe();
        tokio::select! {
            _ = connected.wait_for(|connected| *connected) => Ok(()),
            reason = refused.wait_for(Option::is_some) => Err(match reason {
                Ok(reason) => format!("the controller refused it: {}", reason.as_deref().unwrap_or_default()),
                Err(_) => "its link stopped".to_owned(),
            }),
            () = tokio::time::sleep(timeout) => {
                Err(format!("no session within {} s (it keeps trying)", timeout.as_secs()))
            }
        }
    }
}

impl Drop for SimAgent {
    fn drop(&mut self) {
        // Dropping the link's stop sender ends the link too.
        self.converger.abort();
    }
}

/// Runs beside a link: turns its session changes, assignments and end into events.
struct SessionWatcher {
    agent: usize,
    machine_id: String,
    events: EventLog,
    connected: watch::Receiver<bool>,
    desired: watch::Receiver<Option<AssignmentRecord>>,
    refused: watch::Sender<Option<String>>,
}

impl SessionWatcher {
    fn event(&self, kind: EventKind) -> Event {
        Event::new(self.agent, &self.machine_id, kind)
    }

    async fn watch(mut self, run: impl Future<Output = Result<(), comfyfleet_agent::link::LinkError>>) {
        tokio::pin!(run);
        let mut was_connected = false;
        let mut last_generation = self.desired.borrow().as_ref().map(|record| record.generation);
        let result = loop {
            tokio::select! {
                result = &mut run => break result,
                Ok(()) = self.connected.changed() => {
                    let connected = *self.connected.borrow_and_update();
                    if connected != was_connected {
                        was_connected = connected;
                        let kind = if connected { EventKind::Connected } else { EventKind::Disconnected };
                        self.events.emit(self.event(kind));
                    }
                }
                Ok(()) = self.desired.changed() => {
                    let record = self.desired.borrow_and_update().clone();
                    if let Some(record) = record
                        && last_generation != Some(record.generation)
                    {
                        last_generation = Some(record.generation);
                        self.events.emit(self.event(EventKind::Assigned).about(&record));
                    }
                }
            }
        };
        if was_connected {
            self.events.emit(self.event(EventKind::Disconnected));
        }
        if let Err(error) = result {
            tracing::error!(agent = self.agent, machine_id = %self.machine_id, %error, "link stopped");
            let reason = error.to_string();
            self.events.emit(self.event(EventKind::Refused).error(&reason));
            self.refused.send_replace(Some(reason));
        }
    }
}
