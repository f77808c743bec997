//! Which agents are connected to this controller right now.
//!
//! A machine is online while its session stream is open here. The registry is in
//! memory (it dies with the process, as the streams do); last-seen times are flushed
//! to the store periodically and when a session ends, so a restarted controller still
//! knows when it last heard from each machine.
//!
//! Each live session also has a doorbell, [`Presence::notify_assignment`]: whoever
//! changes a machine's assignment rings it, and the session sends the new desired state.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use crate::store::StoredAssignment;
use comfyfleet_config::MachineId;
use jiff::Timestamp;
use tokio::sync::{Notify, oneshot};

/// Why the controller ends a session from its side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KickReason {
    /// An operator revoked the machine.
    Revoked,
    /// The same machine opened a newer session (the old one is a ghost).
    Replaced,
    /// The controller is shutting down.
    Shutdown,
}

struct LiveSession {
    session_id: u64,
    last_seen_ms: Arc<AtomicI64>,
    kick: Option<oneshot::Sender<KickReason>>,
    assignment_changed: Arc<Doorbell>,
}

#[derive(Default)]
pub struct Presence {
    sessions: Mutex<HashMap<MachineId, LiveSession>>,
    next_session_id: AtomicU64,
    /// Machines with a session on another live controller of the fleet, and when
    /// that was last seen (kept by `cluster.rs`; empty with one controller).
    remote: Mutex<HashMap<MachineId, Timestamp>>,
    /// Where sessions coming and going are told (`cluster.rs` writes them down for
    /// the other controllers); unset with one controller.
    changes: std::sync::OnceLock<tokio::sync::mpsc::UnboundedSender<SessionChange>>,
}

/// A session opened (`up`) or closed here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionChange {
    pub machine: MachineId,
    pub up: bool,
}

impl Presence {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    fn sessions(&self) -> MutexGuard<'_, HashMap<MachineId, LiveSession>> {
        // No code path panics while holding the lock; if one ever did, the map is
        // still consistent (every operation is a single insert or remove).
        self.sessions.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn remote(&self) -> MutexGuard<'_, HashMap<MachineId, Timestamp>> {
        self.remote.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Sessions opening and closing here are sent to `changes` from now on.
    pub fn report_changes(&self, changes: tokio::sync::mpsc::UnboundedSender<SessionChange>) {
        let _ = self.changes.set(changes);
    }

    fn changed(&self, machine: &MachineId, up: bool) {
        if let Some(changes) = self.changes.get() {
            let _ = changes.send(SessionChange { machine: machine.clone(), up });
        }
    }

    /// Replaces the machines connected to the fleet's other controllers.
    pub fn set_remote(&self, remote: HashMap<MachineId, Timestamp>) {
        *self.remote() = remote;
    }

    /// Adds (`up`) or removes machines another controller just told of.
    pub fn remote_changed(&self, machines: &[MachineId], up: bool, now: Timestamp) {
        let mut remote = self.remote();
        for machine in machines {
            if up {
                remote.insert(machine.clone(), now);
            } else {
                remote.remove(machine);
            }
        }
    }

    /// Every machine with a live session here.
    pub fn local_machines(&self) -> Vec<MachineId> {
        self.sessions().keys().cloned().collect()
    }

    /// Registers a session for `machine`, ending any older one of the same machine.
    pub fn register(self: &Arc<Self>, machine: MachineId, now: Timestamp) -> SessionGuard {
        let session_id = self.next_session_id.fetch_add(1, Ordering::Relaxed);
        let last_seen_ms = Arc::new(AtomicI64::new(now.as_millisecond()));
        let (kick, kicked) = oneshot::channel();
        let assignment_changed = Arc::new(Doorbell::default());
        let previous = self.sessions().insert(
            machine.clone(),
            LiveSession {
                session_id,
                last_seen_ms: last_seen_ms.clone(),
                kick: Some(kick),
                assignment_changed: assignment_changed.clone(),
            },
        );
        if let Some(mut previous) = previous
            && let Some(kick) = previous.kick.take()
        {
            let _ = kick.send(KickReason::Replaced);
        }
        self.changed(&machine, true);
        SessionGuard {
            presence: self.clone(),
            machine,
            session_id,
            last_seen_ms,
            kicked: Some(kicked),
            assignment_changed,
        }
    }

    /// Tells `machine`'s live session that its assignment changed, so it sends the
    /// new desired state now. Returns whether the machine is online; an offline one
    /// gets the state when it next connects.
    pub fn notify_assignment(&self, machine: &MachineId) -> bool {
        let doorbell = self.sessions().get(machine).map(|session| session.assignment_changed.clone());
        // A stored permit means a ring between two waits is never lost.
        doorbell.inspect(|doorbell| doorbell.ring()).is_some()
    }

    /// Like [`Presence::notify_assignment`], handing the session the assignment just
    /// stored so it need not read it back.
    pub fn hand_assignment(&self, assignment: &StoredAssignment) -> bool {
        let doorbell =
            self.sessions().get(&assignment.machine_id).map(|session| session.assignment_changed.clone());
        doorbell.inspect(|doorbell| doorbell.hand(assignment.clone())).is_some()
    }

    /// Runs `f` with one look at who is online: a rollout step asks for every one of
    /// thousands of machines, and takes the lock once rather than per machine.
    /// A machine with a session on another controller of the fleet counts as online.
    pub fn with_online<T>(&self, f: impl FnOnce(&(dyn Fn(&MachineId) -> bool + Sync)) -> T) -> T {
        let sessions = self.sessions();
        let remote = self.remote();
        f(&|machine: &MachineId| sessions.contains_key(machine) || remote.contains_key(machine))
    }

    /// When a live session last heard from `machine` (here, or on another controller
    /// of the fleet: when that one last said so); `None` when it is offline.
    pub fn last_seen(&self, machine: &MachineId) -> Option<Timestamp> {
        let local = self.sessions().get(machine).map(|session| session.last_seen_ms.load(Ordering::Relaxed));
        match local {
            Some(millis) => Timestamp::from_millisecond(millis).ok(),
            None => self.remote().get(machine).copied(),
        }
    }

    /// Ends `machine`'s session, if it has one. Returns whether it had.
    pub fn kick(&self, machine: &MachineId, reason: KickReason) -> bool {
        let kick = self.sessions().get_mut(machine).and_then(|session| session.kick.take());
        kick.is_some_and(|kick| kick.send(reason).is_ok())
    }

    pub fn kick_all(&self, reason: KickReason) {
        let kicks: Vec<_> = self.sessions().values_mut().filter_map(|session| session.kick.take()).collect();
        for kick in kicks {
            let _ = kick.send(reason.clone());
        }
    }

    /// Every live session's last-seen time, for the periodic flush to the store.
    /// How many agents have a live session now.
    pub fn online_count(&self) -> usize {
        self.sessions().len()
    }

    pub fn snapshot(&self) -> Vec<(MachineId, Timestamp)> {
        self.sessions()
            .iter()
            .filter_map(|(id, session)| {
                let at = Timestamp::from_millisecond(session.last_seen_ms.load(Ordering::Relaxed)).ok()?;
                Some((id.clone(), at))
            })
            .collect()
    }
}

/// A session's doorbell: rung when the machine's assignment changed, maybe with
/// the assignment itself (the newest one handed over wins).
#[derive(Default)]
pub struct Doorbell {
    notify: Notify,
    handed: Mutex<Option<StoredAssignment>>,
}

impl Doorbell {
    pub fn ring(&self) {
        self.notify.notify_one();
    }

    pub fn hand(&self, assignment: StoredAssignment) {
        {
            let mut handed = self.handed.lock().unwrap_or_else(PoisonError::into_inner);
            if handed.as_ref().is_none_or(|held| held.generation < assignment.generation) {
                *handed = Some(assignment);
            }
        }
        self.ring();
    }

    /// Waits for the next ring (one that came while nobody waited counts).
    pub async fn rung(&self) {
        self.notify.notified().await;
    }

    /// The assignment handed over since the last take, if any.
    pub fn take(&self) -> Option<StoredAssignment> {
        self.handed.lock().unwrap_or_else(PoisonError::into_inner).take()
    }
}

/// Held by a session task; the machine is online until it drops.
pub struct SessionGuard {
    presence: Arc<Presence>,
    machine: MachineId,
    session_id: u64,
    last_seen_ms: Arc<AtomicI64>,
    kicked: Option<oneshot::Receiver<KickReason>>,
    assignment_changed: Arc<Doorbell>,
}

impl SessionGuard {
    pub fn touch(&self, now: Timestamp) {
        self.last_seen_ms.store(now.as_millisecond(), Ordering::Relaxed);
    }

    pub fn last_seen(&self) -> Timestamp {
        Timestamp::from_millisecond(self.last_seen_ms.load(Ordering::Relaxed))
            .unwrap_or_else(|_| Timestamp::now())
    }

    /// Rung by [`Presence::notify_assignment`]; wait on it with `rung()`.
    pub fn assignment_changed(&self) -> Arc<Doorbell> {
        self.assignment_changed.clone()
    }

    /// Resolves when the controller ends this session; pending forever once taken.
    pub async fn kicked(&mut self) -> KickReason {
        match self.kicked.as_mut() {
            Some(receiver) => match receiver.await {
                Ok(reason) => {
                    self.kicked = None;
                    reason
                }
                Err(_) => {
                    self.kicked = None;
                    std::future::pending().await
                }
            },
            None => std::future::pending().await,
        }
    }
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        let mut sessions = self.presence.sessions();
        // A newer session of the same machine may have replaced ours: leave it.
        if sessions.get(&self.machine).is_some_and(|live| live.session_id == self.session_id) {
            sessions.remove(&self.machine);
            drop(sessions);
            self.presence.changed(&self.machine, false);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(text: &str) -> MachineId {
        text.parse().unwrap()
    }

    #[tokio::test]
    async fn online_while_the_guard_lives() {
        let presence = Presence::new();
        let guard = presence.register(id("m1"), Timestamp::now());
        assert!(presence.last_seen(&id("m1")).is_some());
        drop(guard);
        assert!(presence.last_seen(&id("m1")).is_none());
    }

    #[tokio::test]
    async fn a_newer_session_replaces_the_older_which_cannot_unregister_it() {
        let presence = Presence::new();
        let mut old = presence.register(id("m1"), Timestamp::now());
        let new = presence.register(id("m1"), Timestamp::now());
        assert_eq!(old.kicked().await, KickReason::Replaced);
        drop(old);
        assert!(presence.last_seen(&id("m1")).is_some());
        drop(new);
        assert!(presence.last_seen(&id("m1")).is_none());
    }

    #[tokio::test]
    async fn kick_reaches_the_session() {
        let presence = Presence::new();
        let mut guard = presence.register(id("m1"), Timestamp::now());
        assert!(presence.kick(&id("m1"), KickReason::Revoked));
        assert_eq!(guard.kicked().await, KickReason::Revoked);
        assert!(!presence.kick(&id("m2"), KickReason::Revoked));
    }

    #[tokio::test]
    async fn an_assignment_notice_reaches_the_live_session_even_between_waits() {
        let presence = Presence::new();
        assert!(!presence.notify_assignment(&id("m1")), "offline: nobody to tell");
        let old = presence.register(id("m1"), Timestamp::now());
        let old_doorbell = old.assignment_changed();
        let new = presence.register(id("m1"), Timestamp::now());
        // Rung before anyone waits: the permit is kept for the next wait.
        assert!(presence.notify_assignment(&id("m1")));
        let doorbell = new.assignment_changed();
        let rung = tokio::time::timeout(std::time::Duration::from_secs(5), doorbell.rung());
        assert!(rung.await.is_ok(), "the newest session hears it");
        let ghost = tokio::time::timeout(std::time::Duration::from_millis(50), old_doorbell.rung()).await;
        assert!(ghost.is_err(), "a replaced session is not rung");
        drop(new);
        assert!(!presence.notify_assignment(&id("m1")));
    }
}
