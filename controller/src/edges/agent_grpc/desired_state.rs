//! Telling a connected agent what its machine should run. Every session runs one
//! pusher beside its receive loop: it sends the stored assignment right after Welcome
//! and again whenever the session's doorbell rings ([`Presence::notify_assignment`])
//! with a generation this session has not sent yet. The store is read here, never in
//! the loop that reads the agent's messages, so a slow store delays no heartbeat.
//!
//! [`Presence::notify_assignment`]: crate::use_cases::presence::Presence::notify_assignment

use std::sync::Arc;
use std::time::Duration;

use comfyfleet_config::MachineId;
use comfyfleet_config::text::Escaped;
use comfyfleet_proto::v1 as pb;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tonic::Status;
use tracing::Instrument;

use crate::store::{Store, StoredAssignment};
use crate::use_cases::environments::spec_cache::{LoadError, SpecCache, lock_digest};
use crate::use_cases::machines::report_intake::KnownAssignment;
use crate::use_cases::presence::Doorbell;
use crate::use_cases::source_secrets::SourceSecrets;

/// How long to wait before reading the store again after it failed.
const RETRY_AFTER: Duration = Duration::from_secs(5);

/// A session's outgoing messages. Boxed: a channel allocates 32 slots at a time, so
/// 16-byte slots instead of 160-byte messages keep an idle session's channel small.
pub type Outbound = mpsc::Sender<Result<Box<pb::ControllerMessage>, Status>>;

/// The pusher task of one session; it stops when this is dropped.
pub struct DesiredStatePusher {
    task: JoinHandle<()>,
}

impl Drop for DesiredStatePusher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts pushing `machine`'s desired state into `outbound`, in the current span.
pub fn spawn(
    store: Arc<dyn Store>,
    specs: Arc<SpecCache>,
    secrets: Arc<SourceSecrets>,
    machine: MachineId,
    doorbell: Arc<Doorbell>,
    known: Arc<KnownAssignment>,
    outbound: Outbound,
) -> DesiredStatePusher {
    let task =
        tokio::spawn(push(store, specs, secrets, machine, doorbell, known, outbound).in_current_span());
    DesiredStatePusher { task }
}

async fn push(
    store: Arc<dyn Store>,
    specs: Arc<SpecCache>,
    secrets: Arc<SourceSecrets>,
    machine: MachineId,
    doorbell: Arc<Doorbell>,
    known: Arc<KnownAssignment>,
    outbound: Outbound,
) {
    let mut last_sent: Option<u64> = None;
    loop {
        let handed = doorbell.take();
        // Boxed: the task waits on its doorbell for hours and reads rarely.
        match Box::pin(load(store.as_ref(), &specs, &secrets, &machine, handed, last_sent)).await {
            Ok(Some((assignment, desired))) => {
                // Known before it is sent: the agent may report on it at once.
                known.raise((&assignment).into());
                let message =
                    pb::ControllerMessage { body: Some(pb::controller_message::Body::Desired(desired)) };
                if outbound.send(Ok(Box::new(message))).await.is_err() {
                    return;
                }
                last_sent = Some(assignment.generation);
                tracing::debug!(
                    generation = assignment.generation,
                    environment = %assignment.environment,
                    revision = assignment.revision_number,
                    reason = %assignment.reason,
                    "desired state sent"
                );
            }
            Ok(None) => {}
            Err(error) => {
                // Nothing is lost by waiting: the assignment stays in the store.
                tracing::warn!(error = %Escaped(&error), "cannot read the machine's desired state; trying again");
                tokio::select! {
                    () = tokio::time::sleep(RETRY_AFTER) => {}
                    () = doorbell.rung() => {}
                    () = outbound.closed() => return,
                }
                continue;
            }
        }
        tokio::select! {
            () = doorbell.rung() => {}
            () = outbound.closed() => return,
        }
    }
}

/// The desired state to send, unless the machine has no assignment or this session
/// already sent its generation. An assignment handed over with the ring is the one
/// just stored, unless a newer one replaced it since: then the store is read.
async fn load(
    store: &dyn Store,
    specs: &SpecCache,
    secrets: &SourceSecrets,
    machine: &MachineId,
    handed: Option<StoredAssignment>,
    last_sent: Option<u64>,
) -> Result<Option<(StoredAssignment, pb::DesiredState)>, LoadError> {
    let handed = handed.filter(|assignment| last_sent.is_none_or(|sent| assignment.generation > sent));
    let assignment = match handed {
        Some(assignment) => assignment,
        None => {
            let Some(assignment) = store.assignment(machine).await? else {
                return Ok(None);
            };
            assignment
        }
    };
    if last_sent.is_some_and(|sent| assignment.generation <= sent) {
        return Ok(None);
    }
    let revision = specs.revision(store, &assignment).await?;
    let lock_json = lock_for(store, specs, &revision.lock_digests, &assignment.plan_json).await?;
    let mut desired = pb::DesiredState::from(&assignment.record(revision.spec_json.clone(), lock_json));
    // An agent on the package cache may need none of them: the assignment goes out
    // even when they cannot be read, and a build that needs one fails saying so.
    if revision.credential_uses.is_empty() {
        return Ok(Some((assignment, desired)));
    }
    if let Some(named) = specs.fresh_credentials(&assignment.revision_id) {
        desired.source_credentials = credentials_to_wire(&named);
        return Ok(Some((assignment, desired)));
    }
    match secrets.for_agent(&revision.credential_uses).await {
        Ok(named) => {
            desired.source_credentials = credentials_to_wire(&named);
        }
        Err(error) => {
            tracing::warn!(%error, "cannot read the source credentials the assigned spec names; sending it without");
        }
    }
    Ok(Some((assignment, desired)))
}

/// The lock of the plan's build class, when the revision is locked. A revision that
/// has none for the class is sent without one: the agent refuses it, saying why.
async fn lock_for(
    store: &dyn Store,
    cache: &SpecCache,
    digests: &std::collections::BTreeMap<String, String>,
    plan_json: &str,
) -> Result<String, LoadError> {
    let Some(digest) = lock_digest(digests, plan_json) else { return Ok(String::new()) };
    Ok(cache.cached_lock(store, digest).await?.map(|lock| lock.as_ref().clone()).unwrap_or_default())
}

fn credentials_to_wire(
    named: &[(String, comfyfleet_config::source_credentials::SourceSecret)],
) -> Vec<pb::SourceCredential> {
    named
        .iter()
        .map(|(name, secret)| pb::SourceCredential {
            name: name.clone(),
            username: secret.username.clone(),
            secret: secret.password.clone(),
            origins: secret.origins.clone(),
            bearer: secret.bearer,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use comfyfleet_config::{Assignment, AssignmentReason};
    use comfyfleet_proto::assignment_from_wire;
    use jiff::Timestamp;

    use super::*;
    use crate::use_cases::test_fleet::{TestFleet, spec};

    type Inbox = mpsc::Receiver<Result<Box<pb::ControllerMessage>, Status>>;

    /// The next desired state the session would send, if one comes within a moment.
    async fn next(inbox: &mut Inbox) -> Option<pb::DesiredState> {
        let message = tokio::time::timeout(Duration::from_millis(300), inbox.recv()).await.ok()??;
        match message.unwrap().body.clone() {
            Some(pb::controller_message::Body::Desired(desired)) => Some(desired),
            other => panic!("not a desired state: {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_session_gets_its_assignment_at_once_and_again_only_at_a_new_generation() {
        let fleet = TestFleet::new().await;
        let machine = fleet.add_machine("aa01", "h100-x8-580", &["pool=render-a"]).await;
        let revision = fleet.apply(&spec("render", &"1".repeat(40))).await;
        let session = fleet.state.presence.register(machine.clone(), Timestamp::now());
        let (outbound, mut inbox) = mpsc::channel(4);
        let known = Arc::new(KnownAssignment::default());
        let pusher = spawn(
            fleet.state.store.clone(),
            Default::default(),
            fleet.state.source_secrets.clone(),
            machine.clone(),
            session.assignment_changed(),
            known.clone(),
            outbound,
        );
        assert!(next(&mut inbox).await.is_none(), "nothing assigned, nothing sent");

        let rollout = fleet.start_rollout("render", "", &[]).await.unwrap();
        assert!(rollout.targets[0].online, "the machine has a live session");
        let desired = next(&mut inbox).await.expect("the rollout reaches the session");
        assert_eq!(desired.generation, 1);
        assert_eq!(known.get().map(|known| known.generation), Some(1), "what was sent is known");
        let record = assignment_from_wire(desired).unwrap();
        assert_eq!(record.spec_json, revision.spec_json, "the revision's canonical spec");
        let checked = Assignment::from_record(&record).expect("what an agent accepts");
        assert_eq!((checked.plan.torch.as_str(), checked.reason), ("2.8.0+cu128", AssignmentReason::Rollout));
        assert!(!checked.activate, "a rollout has the machine prepare first");

        fleet.state.presence.notify_assignment(&machine);
        assert!(next(&mut inbox).await.is_none(), "the same generation is not sent twice");
        fleet.start_rollout("render", "", &[]).await.unwrap();
        assert_eq!(next(&mut inbox).await.map(|desired| desired.generation), Some(2));

        // A reconnecting agent gets the current generation in its new session.
        drop(pusher);
        drop(session);
        let session = fleet.state.presence.register(machine.clone(), Timestamp::now());
        let (outbound, mut inbox) = mpsc::channel(4);
        let _pusher = spawn(
            fleet.state.store.clone(),
            Default::default(),
            fleet.state.source_secrets.clone(),
            machine,
            session.assignment_changed(),
            Arc::default(),
            outbound,
        );
        assert_eq!(next(&mut inbox).await.map(|desired| desired.generation), Some(2));
    }
}
