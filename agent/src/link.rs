//! The fleet link: one long-lived mutual-TLS session to the controller, reopened
//! with jittered backoff whenever it drops. Inventory goes up at connect and whenever
//! it changes; heartbeats keep the controller's view of "online" honest. Assignments
//! come down and are journaled before the converger sees them; convergence reports
//! go up as they change (the latest state, a few times a second at most).

use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use comfyfleet_config::source_credentials::SourceSecret;
use comfyfleet_config::{AssignmentRecord, ConvergenceReport, Inventory, Labels};
use comfyfleet_proto::v1 as pb;
use comfyfleet_proto::{assignment_from_wire, labels_to_wire, transport};
use tokio::sync::{Notify, mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

use crate::backoff::Backoff;
use crate::identity::Identity;
use crate::inventory::{InventoryCollector, changed_materially};
use crate::journal::Journal;
use crate::session_state::{CurrentController, HeldSecrets};

const WELCOME_TIMEOUT: Duration = Duration::from_secs(30);
/// Reports that only show progress go up at most this often.
const REPORT_INTERVAL: Duration = Duration::from_millis(200);

#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// The controller will not take this machine (revoked, unknown, wrong
    /// certificate): retrying cannot help, an operator must act.
    #[error("the controller refused this machine: {0}")]
    Refused(String),
    #[error(transparent)]
    Endpoint(#[from] transport::EndpointError),
}

/// Why a session ended.
enum SessionEnd {
    Shutdown,
    Lost(String),
    Refused(String),
    /// The controller has no record of this machine; `fleet` is the fleet it serves
    /// (empty if it did not say). Not final: its database may come back from a backup.
    Unknown {
        message: String,
        fleet: String,
    },
}

pub struct Link {
    pub identity: Identity,
    pub labels: Labels,
    pub collector: Arc<Mutex<InventoryCollector>>,
    pub inventory_interval: Duration,
    pub max_backoff: Duration,
    pub journal: Journal,
    /// Where assignments go once journaled: the converger watches it.
    pub desired: watch::Sender<Option<AssignmentRecord>>,
    pub reports: watch::Receiver<ConvergenceReport>,
    /// Poked by the converger when the installed environments changed.
    pub inventory_changed: Arc<Notify>,
    /// `true` while a session is up, from the controller's Welcome until the session
    /// ends: what a readiness check (or a fleet simulator) watches.
    pub connected: watch::Sender<bool>,
    /// Set to the controller each session opens with.
    pub controller: CurrentController,
    /// The source credentials of the assignment, as the controller last sent them:
    /// held in memory for the executor, never journaled.
    pub source_secrets: HeldSecrets,
}

impl Link {
    /// Keeps a session open until `shutdown` resolves or the controller refuses us.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<(), LinkError> {
        tokio::pin!(shutdown);
        let tls = transport::tls_config(
            &self.identity.ca_pem,
            Some((&self.identity.certificate_pem, &self.identity.key_pem)),
        );
        let mut endpoints = Vec::new();
        for url in self.identity.controller_urls() {
            let endpoint = transport::endpoint(&url)?
                .tls_config(tls.clone())
                .map_err(|e| LinkError::Refused(format!("TLS setup: {e}")))?;
            endpoints.push((url, endpoint));
        }
        // Machines spread over a fleet's controllers: each starts at its own, and
        // moves to the next whenever a session cannot be opened or is lost.
        let mut turn = first_turn(self.identity.machine_id.as_str(), endpoints.len());
        let mut backoff = Backoff::new(Duration::from_millis(250), self.max_backoff);
        // The fleet this machine belongs to: from enrollment, or the first Welcome.
        let mut fleet = self.identity.fleet_id.clone();
        loop {
            let Some((url, endpoint)) = endpoints.get(turn % endpoints.len().max(1)) else {
                return Err(LinkError::Refused("no controller URL to connect to".into()));
            };
            let session = async {
                let channel =
                    endpoint.connect().await.map_err(|e| SessionEnd::Lost(transport::error_chain(&e)))?;
                self.controller.set(url);
                let mut reports = self.reports.clone();
                self.session(channel, &mut backoff, &mut reports, &mut fleet).await
            };
            let end = tokio::select! {
                end = session => match end { Ok(end) | Err(end) => end },
                () = &mut shutdown => SessionEnd::Shutdown,
            };
            self.connected.send_if_modified(|connected| std::mem::replace(connected, false));
            match end {
                SessionEnd::Shutdown => return Ok(()),
                SessionEnd::Refused(reason) => return Err(LinkError::Refused(reason)),
                SessionEnd::Unknown { message, fleet: theirs } => {
                    turn += 1;
                    let delay = backoff.next_delay();
                    let why = unknown_explained(&fleet, &theirs);
                    tracing::error!(reason = %message, retry_in = ?delay, "{why}");
                    tokio::select! {
                        () = tokio::time::sleep(delay) => {}
                        () = &mut shutdown => return Ok(()),
                    }
                }
                SessionEnd::Lost(reason) => {
                    turn += 1;
                    let delay = backoff.next_delay();
                    let next = endpoints
                        .get(turn % endpoints.len())
                        .map(|(url, _)| url.as_str())
                        .unwrap_or_default();
                    tracing::warn!(%reason, controller = %url, retry_in = ?delay, next = %next, "lost the controller");
                    tokio::select! {
                        () = tokio::time::sleep(delay) => {}
                        () = &mut shutdown => return Ok(()),
                    }
                }
            }
        }
    }

    async fn collect(&self) -> Inventory {
        let collector = self.collector.clone();
        let collected = tokio::task::spawn_blocking(move || {
            collector.lock().unwrap_or_else(PoisonError::into_inner).collect()
        })
        .await;
        match collected {
            Ok(inventory) => inventory,
            // The probe panicked (a broken NVML library): report what the host says.
            Err(error) => {
                tracing::error!(%error, "inventory probe failed");
                let mut collector = self.collector.lock().unwrap_or_else(PoisonError::into_inner);
                collector.collect_host_only(format!("inventory probe crashed: {error}"))
            }
        }
    }

    /// One session: Hello, Welcome, then heartbeats and inventory changes.
    async fn session(
        &self,
        channel: tonic::transport::Channel,
        backoff: &mut Backoff,
        reports: &mut watch::Receiver<ConvergenceReport>,
        fleet: &mut String,
    ) -> Result<SessionEnd, SessionEnd> {
        let mut client = pb::agent_service_client::AgentServiceClient::new(channel)
            .max_decoding_message_size(comfyfleet_proto::MAX_AGENT_MESSAGE_BYTES);
        let (outbound, receiver) = mpsc::channel::<pb::AgentMessage>(16);
        let mut sender = Sender { outbound, seq: 0 };
        let mut last_sent = self.collect().await;
        sender
            .send(pb::agent_message::Body::Hello(pb::Hello {
                machine_id: self.identity.machine_id.to_string(),
                agent_version: env!("CARGO_PKG_VERSION").to_owned(),
                labels: labels_to_wire(&self.labels),
                inventory: Some(pb::Inventory::from(&last_sent)),
            }))
            .await?;
        let mut inbound =
            client.session(ReceiverStream::new(receiver)).await.map_err(status_end)?.into_inner();

        let welcome = tokio::time::timeout(WELCOME_TIMEOUT, inbound.message())
            .await
            .map_err(|_| SessionEnd::Lost("no Welcome from the controller".into()))?
            .map_err(status_end)?
            .ok_or_else(|| SessionEnd::Lost("the controller closed the session".into()))?;
        let Some(pb::controller_message::Body::Welcome(welcome)) = welcome.body else {
            return Err(SessionEnd::Lost("the controller did not start with Welcome".into()));
        };
        let heartbeat = Duration::from_secs(u64::from(welcome.heartbeat_interval_seconds.clamp(1, 300)));
        if fleet.is_empty() {
            fleet.clone_from(&welcome.fleet_id);
        }
        tracing::info!(
            machine_id = %self.identity.machine_id,
            controller_version = %welcome.controller_version,
            gpus = last_sent.nvidia.gpus.len(),
            "connected to the controller"
        );
        backoff.reset();
        self.connected.send_replace(true);
        let report = reports.borrow_and_update().clone();
        sender.send(pb::agent_message::Body::Report(pb::ConvergenceReport::from(&report))).await?;
        let mut next_report = tokio::time::Instant::now() + REPORT_INTERVAL;

        let mut heartbeat_tick = tokio::time::interval(heartbeat);
        heartbeat_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut inventory_tick = tokio::time::interval(self.inventory_interval);
        inventory_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        heartbeat_tick.tick().await;
        inventory_tick.tick().await;
        loop {
            tokio::select! {
                _ = heartbeat_tick.tick() => sender.send(pb::agent_message::Body::Heartbeat(pb::Heartbeat {})).await?,
                _ = inventory_tick.tick() => self.send_inventory_if_changed(&mut sender, &mut last_sent).await?,
                () = self.inventory_changed.notified() => self.send_inventory_if_changed(&mut sender, &mut last_sent).await?,
                changed = reports.changed() => {
                    if changed.is_err() {
                        return Ok(SessionEnd::Shutdown);
                    }
                    // Progress can change many times a second; the latest state is what counts.
                    tokio::time::sleep_until(next_report).await;
                    let report = reports.borrow_and_update().clone();
                    sender.send(pb::agent_message::Body::Report(pb::ConvergenceReport::from(&report))).await?;
                    next_report = tokio::time::Instant::now() + REPORT_INTERVAL;
                }
                message = inbound.message() => match message {
                    Ok(Some(message)) => self.handle(message),
                    Ok(None) => return Err(SessionEnd::Lost("the controller closed the session".into())),
                    Err(status) => return Err(status_end(status)),
                },
            }
        }
    }
}

impl Link {
    async fn send_inventory_if_changed(
        &self,
        sender: &mut Sender,
        last_sent: &mut Inventory,
    ) -> Result<(), SessionEnd> {
        let current = self.collect().await;
        if changed_materially(last_sent, &current) {
            tracing::info!(gpus = current.nvidia.gpus.len(), "inventory changed; reporting it");
            sender.send(pb::agent_message::Body::Inventory(pb::Inventory::from(&current))).await?;
            *last_sent = current;
        }
        Ok(())
    }

    fn handle(&self, message: pb::ControllerMessage) {
        match message.body {
            Some(pb::controller_message::Body::Ack(ack)) => tracing::debug!(seq = ack.seq, "acknowledged"),
            Some(pb::controller_message::Body::Desired(desired)) => self.desired_state(desired),
            Some(pb::controller_message::Body::Welcome(_)) => {
                tracing::debug!("unexpected second Welcome ignored")
            }
            None => tracing::debug!("empty message from the controller ignored"),
        }
    }

    /// Journals a new assignment, then hands it to the converger. The same one again
    /// (every reconnect sends it) changes nothing.
    fn desired_state(&self, mut desired: pb::DesiredState) {
        // Before the assignment reaches the converger, so its build has them.
        let delivered: std::collections::BTreeMap<String, SourceSecret> =
            std::mem::take(&mut desired.source_credentials)
                .into_iter()
                .map(|credential| {
                    (
                        credential.name,
                        SourceSecret {
                            username: credential.username,
                            password: credential.secret,
                            // The agent binds it to these only (`SourceCredentials::add_spec`).
                            origins: credential.origins,
                            bearer: credential.bearer,
                        },
                    )
                })
                .collect();
        self.source_secrets.deliver(delivered);
        let Some(record) = assignment_from_wire(desired) else {
            if self.desired.borrow().is_some() {
                tracing::info!("the controller has no assignment for this machine; keeping what runs");
            }
            return;
        };
        if self.desired.borrow().as_ref() == Some(&record) {
            return;
        }
        tracing::info!(
            environment = %record.environment,
            revision = record.revision_number,
            generation = record.generation,
            "new assignment"
        );
        if let Err(error) = self.journal.set_desired(&record) {
            // Still act on it: the journal only spares asking again after a restart.
            tracing::warn!(%error, "cannot journal the assignment");
        }
        self.desired.send_replace(Some(record));
    }
}

struct Sender {
    outbound: mpsc::Sender<pb::AgentMessage>,
    seq: u64,
}

impl Sender {
    async fn send(&mut self, body: pb::agent_message::Body) -> Result<(), SessionEnd> {
        self.seq += 1;
        self.outbound
            .send(pb::AgentMessage { seq: self.seq, body: Some(body) })
            .await
            .map_err(|_| SessionEnd::Lost("the session's send side closed".into()))
    }
}

/// What an agent the controller does not know tells its operator while it retries.
fn unknown_explained(ours: &str, theirs: &str) -> String {
    if !ours.is_empty() && !theirs.is_empty() && ours != theirs {
        format!(
            "the controller serves fleet {theirs}, but this machine enrolled in fleet {ours}: the controller's \
             database was replaced or started anew. Retrying until it is restored (comfyfleet-controller \
             restore); to join the new fleet instead, remove this agent's identity directory and enroll with a \
             new join token"
        )
    } else {
        "the controller has no record of this machine (its database may have been restored from an older \
         snapshot); retrying until an operator restores it or re-enrolls this machine"
            .to_owned()
    }
}

/// Refusals end the agent (an unknown machine excepted: see [`SessionEnd::Unknown`]);
/// everything else is a lost link to retry.
fn status_end(status: Status) -> SessionEnd {
    let text = if status.message().is_empty() {
        format!("{:?}", status.code())
    } else {
        status.message().to_owned()
    };
    let metadata = |key: &str| {
        status.metadata().get(key).and_then(|value| value.to_str().ok()).unwrap_or_default().to_owned()
    };
    if metadata(comfyfleet_proto::REFUSAL_METADATA) == comfyfleet_proto::REFUSAL_UNKNOWN_MACHINE {
        return SessionEnd::Unknown { message: text, fleet: metadata(comfyfleet_proto::FLEET_ID_METADATA) };
    }
    match status.code() {
        tonic::Code::PermissionDenied | tonic::Code::Unauthenticated => SessionEnd::Refused(text),
        _ => SessionEnd::Lost(format!("{:?}: {text}", status.code())),
    }
}

/// Where a machine starts in its list of controllers: spread by its id, the same
/// at every start.
fn first_turn(machine_id: &str, controllers: usize) -> usize {
    if controllers < 2 {
        return 0;
    }
    let hash = machine_id.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    });
    usize::try_from(hash % controllers as u64).unwrap_or(0)
}
