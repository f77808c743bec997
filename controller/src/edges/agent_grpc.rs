//! The agents' API: enrollment with a join token, then one long-lived session stream
//! per machine over mutual TLS.
//!
//! Anything an agent sends is checked here before it reaches the store; a bad message
//! ends that agent's session with a status that says what was wrong, and nothing else
//! — except in a convergence report, where a bad field costs only that field and a
//! claim the controller never assigned only that report (`report_intake`).
//! What the controller sends besides Welcome and Acks (the desired state) comes from
//! `desired_state`, beside the receive loop.

mod desired_state;

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use comfyfleet_config::text::Escaped;
use comfyfleet_config::{Inventory, JoinToken, MachineId};
use comfyfleet_proto::v1 as pb;
use comfyfleet_proto::{WireError, labels_from_wire};
use jiff::Timestamp;
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::counters::Refusal;
use crate::store::{EnrollRefusal, Hello, NewMachine, StoredMachine};
use crate::use_cases::ControllerState;
use crate::use_cases::credentials::pki::{certificate_sha256, machine_id_of};
use crate::use_cases::credentials::secrets;
use crate::use_cases::machines::inventory_updates::InventoryUpdates;
use crate::use_cases::machines::report_intake::ReportIntake;
use crate::use_cases::presence::{KickReason, SessionGuard};

/// How long a new session may take to say Hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(30);
const MAX_HOSTNAME: usize = 253;

pub struct AgentApi {
    state: Arc<ControllerState>,
    /// Failed enrollments per address.
    guard: Arc<crate::edges::failure_throttle::FailureThrottle>,
}

impl AgentApi {
    pub fn new(state: Arc<ControllerState>) -> Self {
        Self { state, guard: Arc::default() }
    }
}

/// How every enrollment with a token this controller cannot use (unknown, or the
/// wrong secret) is answered: the same words, so no answer tells whether an id exists.
const INVALID_TOKEN: &str = "this join token is not valid here (unknown to this controller, or its secret is wrong); \
                             ask an operator for a new one (`comfyfleet token create`)";

type SessionStream = Pin<Box<dyn Stream<Item = Result<pb::ControllerMessage, Status>> + Send>>;

fn internal(error: impl std::fmt::Display) -> Status {
    tracing::error!(error = %Escaped(&error), "internal error");
    Status::internal(error.to_string())
}

#[tonic::async_trait]
impl pb::agent_service_server::AgentService for AgentApi {
    #[tracing::instrument(skip_all, fields(remote = ?request.remote_addr()))]
    async fn enroll(
        &self,
        request: Request<pb::EnrollRequest>,
    ) -> Result<Response<pb::EnrollResponse>, Status> {
        use crate::edges::failure_throttle::Admission;
        let address = request.remote_addr().map(|remote| remote.ip());
        let from = address.map_or_else(|| "an unknown address".to_owned(), |ip| ip.to_string());
        if let Some(ip) = address
            && let Admission::Blocked { wait, first } = self.guard.admit(ip)
        {
            self.state.metrics.refused("enroll", Refusal::Throttled);
            if first {
                tracing::warn!(address = %ip, "enrollments from this address are refused for a while: too many failed");
                let detail = format!(
                    "more than {} failed in {} s",
                    crate::edges::failure_throttle::ALLOWED,
                    crate::edges::failure_throttle::WINDOW.as_secs()
                );
                self.state
                    .audit(&format!("enrollment from {from}"), "machine.enroll.throttled", "", &detail)
                    .await;
            }
            return Err(Status::resource_exhausted(format!(
                "too many failed enrollments from {from}; try again in {} s",
                wait.as_secs().max(1)
            )));
        }
        match self.enroll_machine(request.into_inner()).await {
            Ok(response) => {
                if let Some(ip) = address {
                    self.guard.succeeded(ip);
                }
                self.state.metrics.enrolled();
                Ok(Response::new(response))
            }
            Err((reason, status)) => {
                if let Some(reason) = reason {
                    self.state.metrics.refused("enroll", reason);
                    if let Some(ip) = address {
                        self.guard.failed(ip);
                    }
                    // At most a few per address before it is blocked (and the block once).
                    self.state
                        .audit(
                            &format!("enrollment from {from}"),
                            "machine.enroll.refused",
                            reason.as_str(),
                            status.message(),
                        )
                        .await;
                }
                Err(status)
            }
        }
    }

    type SessionStream = SessionStream;

    async fn session(
        &self,
        request: Request<Streaming<pb::AgentMessage>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        let remote = request.remote_addr().map(|addr| addr.to_string()).unwrap_or_default();
        let machine = self.authenticate_machine(&request).await?;
        let (outbound, receiver) = mpsc::channel(16);
        let session = Session {
            state: self.state.clone(),
            machine_id: machine.id,
            token_labels: machine.token_labels,
            remote,
            inbound: request.into_inner(),
            outbound,
            reports: ReportIntake::new(None, None),
            inventories: InventoryUpdates::default(),
        };
        tokio::spawn(session.run());
        let stream = tokio_stream::StreamExt::map(ReceiverStream::new(receiver), |message| {
            message.map(|boxed| *boxed)
        });
        Ok(Response::new(Box::pin(stream)))
    }
}

/// A refused enrollment: why, for the metrics (`None`: the controller's own fault).
type EnrollError = (Option<Refusal>, Status);

fn refuse(reason: Refusal) -> impl FnOnce(Status) -> EnrollError {
    move |status| (Some(reason), status)
}

impl AgentApi {
    async fn enroll_machine(&self, request: pb::EnrollRequest) -> Result<pb::EnrollResponse, EnrollError> {
        let token: JoinToken = request
            .join_token
            .parse()
            .map_err(|error: comfyfleet_config::join_token::JoinTokenError| {
                Status::invalid_argument(error.to_string())
            })
            .map_err(refuse(Refusal::MalformedToken))?;
        let ca_sha256 = self.state.ca.sha256();
        if token.ca_sha256() != ca_sha256 {
            return Err((
                Some(Refusal::WrongCa),
                Status::failed_precondition(format!(
                    "the join token pins CA sha256 {} but this controller's CA is {ca_sha256}: the token was made by another controller",
                    token.ca_sha256()
                )),
            ));
        }
        // The token before anything else the request says: without a valid one,
        // nothing of it is looked at.
        let known = self.state.store.join_token(token.id()).await.map_err(|e| (None, internal(e)))?;
        let digest = secrets::digest(token.secret());
        match known.map(|known| crate::store::check_join_token(&known, &digest, Timestamp::now())) {
            None | Some(Err(EnrollRefusal::UnknownToken { .. } | EnrollRefusal::WrongSecret { .. })) => {
                return Err((Some(Refusal::TokenRefused), Status::permission_denied(INVALID_TOKEN)));
            }
            Some(Err(refusal)) => {
                return Err((
                    Some(Refusal::TokenRefused),
                    Status::permission_denied(format!(
                        "{refusal}; ask an operator for a new token (`comfyfleet token create`)"
                    )),
                ));
            }
            Some(Ok(())) => {}
        }
        let hostname = request.hostname;
        if hostname.is_empty() || hostname.len() > MAX_HOSTNAME {
            return Err((
                Some(Refusal::BadHostname),
                Status::invalid_argument("hostname must be 1 to 253 printable characters"),
            ));
        }
        if let Some(c) = comfyfleet_config::text::deceptive(&hostname) {
            return Err((
                Some(Refusal::BadHostname),
                Status::invalid_argument(format!(
                    "{} (start the agent with --hostname-override NAME)",
                    comfyfleet_config::text::refusal("the hostname", c)
                )),
            ));
        }
        let agent_labels = labels_from_wire("labels", request.labels)
            .map_err(Status::from)
            .map_err(refuse(Refusal::BadLabels))?;

        let machine_id: MachineId = secrets::new_machine_id().parse().map_err(|e| (None, internal(e)))?;
        let certificate =
            self.state.ca.sign_agent_csr(&request.csr_pem, &machine_id).map_err(|error| match error {
                crate::use_cases::credentials::pki::PkiError::BadCsr(_)
                | crate::use_cases::credentials::pki::PkiError::UnsupportedKey(_) => {
                    (Some(Refusal::BadCsr), Status::invalid_argument(error.to_string()))
                }
                other => (None, internal(other)),
            })?;
        let new_machine = NewMachine {
            id: machine_id.clone(),
            hostname: hostname.clone(),
            cert_sha256: certificate.sha256,
            agent_labels,
            enrolled_at: Timestamp::now(),
        };
        let entry = crate::store::AuditEntry::new(
            format!("join-token {}", token.id()),
            "machine.enroll",
            machine_id.as_str(),
            &hostname,
        );
        let enrolling = self.state.store.enroll_machine(token.id(), &digest, &new_machine);
        let outcome = crate::store::audited(entry, enrolling).await.map_err(|e| (None, internal(e)))?;
        if let Err(refusal) = outcome {
            tracing::warn!(token = %Escaped(token.id()), hostname = %Escaped(&hostname), refusal = %Escaped(&refusal), "enrollment refused");
            let message = match refusal {
                EnrollRefusal::UnknownToken { .. } | EnrollRefusal::WrongSecret { .. } => {
                    INVALID_TOKEN.to_owned()
                }
                EnrollRefusal::BindingLabel { .. } => refusal.to_string(),
                _ => format!("{refusal}; ask an operator for a new token (`comfyfleet token create`)"),
            };
            let reason = if matches!(refusal, EnrollRefusal::BindingLabel { .. }) {
                Refusal::BadLabels
            } else {
                Refusal::TokenRefused
            };
            return Err((Some(reason), Status::permission_denied(message)));
        }
        tracing::info!(machine_id = %machine_id, hostname = %Escaped(&hostname), token = %Escaped(token.id()), "machine enrolled");
        self.state.fleet.enrolled(&machine_id, &hostname);
        Ok(pb::EnrollResponse {
            machine_id: machine_id.to_string(),
            certificate_pem: certificate.pem,
            ca_certificate_pem: self.state.ca.certificate_pem().to_owned(),
            fleet_id: self.state.fleet_id.clone(),
        })
    }

    /// The machine named by the client certificate, if that machine may connect.
    async fn authenticate_machine<T>(&self, request: &Request<T>) -> Result<StoredMachine, Status> {
        authenticated_machine(&self.state, request.peer_certs().as_deref().map(Vec::as_slice)).await
    }
}

/// The machine a client certificate names (its stored record), if that machine is
/// enrolled, not revoked, and this is its current certificate: the agent API and the
/// package cache.
pub(crate) async fn authenticated_machine(
    state: &ControllerState,
    certificates: Option<&[rustls::pki_types::CertificateDer<'static>]>,
) -> Result<StoredMachine, Status> {
    let refused = |reason: Refusal| state.metrics.refused("certificate", reason);
    let certificates = certificates.ok_or_else(|| {
        refused(Refusal::NoCertificate);
        Status::unauthenticated(
            "the agent API needs the client certificate that enrollment issues; \
             start the agent with --join-token to enroll",
        )
    })?;
    let leaf = certificates.first().ok_or_else(|| {
        refused(Refusal::NoCertificate);
        Status::unauthenticated("empty client certificate chain")
    })?;
    let machine_id = machine_id_of(leaf).map_err(|error| {
        refused(Refusal::NoCertificate);
        Status::unauthenticated(error)
    })?;
    let machine = state.store.get_machine(&machine_id).await.map_err(internal)?.ok_or_else(|| {
        refused(Refusal::UnknownMachine);
        unknown_machine(state, &machine_id)
    })?;
    if let Some(at) = machine.revoked_at {
        refused(Refusal::Revoked);
        return Err(Status::permission_denied(format!(
            "machine {machine_id} was revoked at {at}; to bring it back, remove the agent's identity \
             directory and enroll again with a new join token"
        )));
    }
    if machine.cert_sha256 != certificate_sha256(leaf) {
        refused(Refusal::StaleCertificate);
        return Err(Status::permission_denied(format!(
            "this certificate is not machine {machine_id}'s current one"
        )));
    }
    Ok(machine)
}

/// The refusal of a machine this fleet has no record of, with the fleet's id, so the
/// agent can say whether the controller's database was replaced and keep retrying.
fn unknown_machine(state: &ControllerState, machine_id: &MachineId) -> Status {
    let mut metadata = tonic::metadata::MetadataMap::new();
    metadata.insert(
        comfyfleet_proto::REFUSAL_METADATA,
        tonic::metadata::MetadataValue::from_static(comfyfleet_proto::REFUSAL_UNKNOWN_MACHINE),
    );
    if let Ok(fleet) = state.fleet_id.parse() {
        metadata.insert(comfyfleet_proto::FLEET_ID_METADATA, fleet);
    }
    Status::with_metadata(
        tonic::Code::PermissionDenied,
        format!("machine {machine_id} is not enrolled in fleet {}", state.fleet_id),
        metadata,
    )
}

/// One agent's stream, from Hello to its end.
struct Session {
    state: Arc<ControllerState>,
    machine_id: MachineId,
    /// The labels its join token set: binding, the agent's may not change them.
    token_labels: comfyfleet_config::Labels,
    remote: String,
    inbound: Streaming<pb::AgentMessage>,
    outbound: desired_state::Outbound,
    /// Checks and stores its reports; knows what the machine was assigned.
    reports: ReportIntake,
    /// Inventories are stored and logged only when they change.
    inventories: InventoryUpdates,
}

/// Why a session ended; the status, if any, goes to the agent.
enum SessionEnd {
    AgentClosed,
    Refused(Status),
}

impl Session {
    #[tracing::instrument(name = "session", skip_all, fields(machine_id = %self.machine_id, remote = %self.remote))]
    async fn run(mut self) {
        // Boxed, as is each message's handling below: the task's own future is what
        // every connected agent holds for hours, so it keeps only the loop's state.
        let guard = match Box::pin(self.open()).await {
            Ok(guard) => guard,
            Err(status) => {
                if let Some(reason) = session_refusal(&status, true) {
                    self.state.metrics.refused("session", reason);
                }
                tracing::warn!(code = ?status.code(), reason = %Escaped(status.message()), "session refused");
                let _ = self.outbound.send(Err(status)).await;
                return;
            }
        };
        tracing::info!("agent connected");
        self.state.metrics.session_opened();
        let pusher = desired_state::spawn(
            self.state.store.clone(),
            self.state.specs.clone(),
            self.state.source_secrets.clone(),
            self.machine_id.clone(),
            guard.assignment_changed(),
            self.reports.known.clone(),
            self.outbound.clone(),
        );
        let (end, guard) = self.serve(guard).await;
        // Nothing more goes to an agent whose session is over.
        drop(pusher);
        let last_seen = guard.last_seen();
        drop(guard);
        match end {
            SessionEnd::AgentClosed => tracing::info!("agent disconnected"),
            SessionEnd::Refused(status) => {
                if let Some(reason) = session_refusal(&status, false) {
                    self.state.metrics.refused("session", reason);
                }
                tracing::warn!(code = ?status.code(), reason = %Escaped(status.message()), "session ended by the controller");
                let _ = self.outbound.send(Err(status)).await;
            }
        }
        if let Err(error) = self.state.store.record_last_seen(&[(self.machine_id.clone(), last_seen)]).await {
            tracing::warn!(error = %Escaped(&error), "cannot record last-seen time");
        }
    }

    /// Waits for Hello, checks it, records it and registers the machine as online.
    async fn open(&mut self) -> Result<SessionGuard, Status> {
        let first = tokio::time::timeout(HELLO_TIMEOUT, self.inbound.message())
            .await
            .map_err(|_| Status::deadline_exceeded("no Hello within 30 s"))?
            .map_err(|status| received_error(&status))?
            .ok_or_else(|| Status::cancelled("stream closed before Hello"))?;
        let Some(pb::agent_message::Body::Hello(hello)) = first.body else {
            return Err(Status::invalid_argument("the first message of a session must be Hello"));
        };
        if hello.machine_id != self.machine_id.as_str() {
            return Err(Status::permission_denied(format!(
                "the client certificate is machine {} but the session claims machine {:?}",
                self.machine_id, hello.machine_id
            )));
        }
        if hello.agent_version.len() > 64 || hello.agent_version.chars().any(char::is_control) {
            return Err(Status::invalid_argument(
                "`hello.agent_version` must be at most 64 printable characters",
            ));
        }
        let inventory = hello.inventory.map(Inventory::try_from).transpose().map_err(Status::from)?;
        let now = Timestamp::now();
        let agent_labels = labels_from_wire("hello.labels", hello.labels)?;
        if let Some((key, value, bound)) = agent_labels.overriding(&self.token_labels) {
            self.state.metrics.refused("session", Refusal::BadLabels);
            return Err(Status::permission_denied(crate::store::binding_label(key, value, bound)));
        }
        let record = Hello {
            agent_version: hello.agent_version,
            agent_labels,
            inventory,
            remote_address: self.remote.clone(),
            at: now,
        };
        self.state.store.record_hello(&self.machine_id, &record).await.map_err(internal)?;
        let guard = self.state.presence.register(self.machine_id.clone(), now);
        self.state.rollouts.connected(&self.machine_id);
        // A revocation between authentication and registration found no session to
        // end; look once more now that this one can be ended.
        let machine = self.state.store.get_machine(&self.machine_id).await.map_err(internal)?;
        if machine.as_ref().is_none_or(|machine| machine.revoked_at.is_some()) {
            return Err(kick_status(&self.machine_id, &KickReason::Revoked));
        }
        if let Some(machine) = &machine {
            self.state.fleet.stored(machine);
        }
        self.inventories =
            InventoryUpdates::new(machine.as_ref().and_then(|machine| machine.inventory.clone()));
        self.reports = ReportIntake::new(
            machine.as_ref().and_then(|machine| machine.assignment.as_ref()).map(Into::into),
            machine.and_then(|machine| machine.report),
        );
        let heartbeat =
            u32::try_from(self.state.settings.heartbeat_interval.as_secs()).unwrap_or(u32::MAX).max(1);
        let welcome = pb::ControllerMessage {
            body: Some(pb::controller_message::Body::Welcome(pb::Welcome {
                controller_version: env!("CARGO_PKG_VERSION").to_owned(),
                heartbeat_interval_seconds: heartbeat,
                fleet_id: self.state.fleet_id.clone(),
            })),
        };
        self.outbound.send(Ok(Box::new(welcome))).await.map_err(|_| Status::cancelled("agent went away"))?;
        Ok(guard)
    }

    async fn serve(&mut self, mut guard: SessionGuard) -> (SessionEnd, SessionGuard) {
        let silence_limit = self.state.settings.heartbeat_interval * 3;
        let end = loop {
            let message = tokio::select! {
                reason = guard.kicked() => break SessionEnd::Refused(kick_status(&self.machine_id, &reason)),
                () = self.outbound.closed() => break SessionEnd::AgentClosed,
                received = tokio::time::timeout(silence_limit, self.inbound.message()) => received,
            };
            let message = match message {
                Err(_) => {
                    break SessionEnd::Refused(Status::deadline_exceeded(format!(
                        "no message for {} s; reconnect",
                        silence_limit.as_secs()
                    )));
                }
                Ok(Ok(Some(message))) => message,
                Ok(Ok(None)) => break SessionEnd::AgentClosed,
                Ok(Err(status)) if is_disconnect(&status) => break SessionEnd::AgentClosed,
                Ok(Err(status)) => break SessionEnd::Refused(received_error(&status)),
            };
            let now = Timestamp::now();
            guard.touch(now);
            match Box::pin(self.handle(message, now)).await {
                Ok(()) => {}
                Err(status) => break SessionEnd::Refused(status),
            }
        };
        (end, guard)
    }

    async fn handle(&mut self, message: pb::AgentMessage, now: Timestamp) -> Result<(), Status> {
        match message.body {
            Some(pb::agent_message::Body::Heartbeat(_)) => Ok(()),
            Some(pb::agent_message::Body::Inventory(inventory)) => {
                let inventory =
                    Inventory::try_from(inventory).map_err(|error: WireError| Status::from(error))?;
                let store = self.state.store.as_ref();
                let new = self
                    .inventories
                    .record(store, &self.machine_id, inventory, now)
                    .await
                    .map_err(internal)?;
                if new && let Some(inventory) = self.inventories.stored() {
                    self.state.fleet.inventory(&self.machine_id, inventory, self.reports.latest());
                }
                self.ack(message.seq).await
            }
            Some(pb::agent_message::Body::Report(report)) => {
                let received =
                    comfyfleet_proto::report_from_agent(report, now).map_err(|error| error.to_string());
                self.reports.take(&self.state, &self.machine_id, received, now).await.map_err(internal)?;
                let environments = self.inventories.stored().map(|inventory| &inventory.environments);
                self.state.fleet.reported(&self.machine_id, environments, self.reports.latest());
                self.ack(message.seq).await
            }
            Some(pb::agent_message::Body::Hello(_)) => {
                Err(Status::invalid_argument("Hello may only be the first message of a session"))
            }
            None => Err(Status::invalid_argument("empty message: no body set")),
        }
    }

    async fn ack(&self, seq: u64) -> Result<(), Status> {
        let ack = pb::ControllerMessage { body: Some(pb::controller_message::Body::Ack(pb::Ack { seq })) };
        self.outbound.send(Ok(Box::new(ack))).await.map_err(|_| Status::cancelled("agent went away"))
    }
}

/// Why a session was refused or ended, for the metrics; `None` when it was not the
/// agent's doing (the controller shutting down, the agent going away).
fn session_refusal(status: &Status, opening: bool) -> Option<Refusal> {
    use tonic::Code;
    match status.code() {
        Code::DeadlineExceeded if opening => Some(Refusal::NoHello),
        Code::DeadlineExceeded => Some(Refusal::Silent),
        Code::InvalidArgument | Code::ResourceExhausted | Code::OutOfRange => Some(Refusal::BadMessage),
        Code::PermissionDenied => Some(Refusal::Revoked),
        Code::Aborted => Some(Refusal::Replaced),
        _ => None,
    }
}

fn kick_status(machine_id: &MachineId, reason: &KickReason) -> Status {
    match reason {
        KickReason::Revoked => {
            Status::permission_denied(format!("machine {machine_id} was revoked by an operator"))
        }
        KickReason::Replaced => Status::aborted("a newer session of this machine replaced this one"),
        KickReason::Shutdown => Status::unavailable("the controller is shutting down; reconnect"),
    }
}

/// A peer that vanished (kill -9, network gone) shows up as a transport error; it
/// ends the session quietly rather than as a refusal.
fn is_disconnect(status: &Status) -> bool {
    matches!(
        status.code(),
        tonic::Code::Cancelled | tonic::Code::Unknown | tonic::Code::Internal | tonic::Code::Unavailable
    ) && !status.message().contains("decode Protobuf")
}

/// What went wrong reading the agent's stream, reworded for the agent.
fn received_error(status: &Status) -> Status {
    match status.code() {
        tonic::Code::OutOfRange | tonic::Code::ResourceExhausted => Status::resource_exhausted(format!(
            "message refused: {} (the limit is {} bytes)",
            status.message(),
            comfyfleet_proto::MAX_AGENT_MESSAGE_BYTES
        )),
        _ => Status::invalid_argument(format!("unreadable message: {}", status.message())),
    }
}
