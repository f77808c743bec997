//! Several controllers serving one fleet from one PostgreSQL database.
//!
//! Every controller registers itself (`controllers`, a heartbeat each second) and
//! tries for the lease (`controller_lease`): the holder leads — it runs the rollout
//! engine — for five seconds at a time by the database's clock, renewing every
//! second. A leader killed outright is followed within the lease's five seconds plus
//! one beat. Each change of holder raises the lease's epoch, and the engine's writes
//! check holder, epoch and expiry in their own transaction, so a leader that stalled
//! past its lease cannot write a step the new one has not seen.
//!
//! Agents may be connected to any controller. Each one writes its sessions into
//! `agent_sessions` and reads the others' (so every controller, the leader first,
//! counts a machine online wherever its session is), and what one controller changes
//! reaches the others as notices on one channel (`LISTEN`/`NOTIFY`, sent inside the
//! transaction that made the change, so none is sent for a change that did not
//! commit): an assignment (the controller holding the machine's session pushes it),
//! a report and a session coming up (the leader's engine takes them), a revocation
//! (the session is ended wherever it is). A notice connection that drops is made
//! again, and what it may have missed is caught up from the tables.
//!
//! Operators may call any controller. A rollout call taken by one that does not
//! lead is written to `forwarded_calls` and answered there by the leader, with the
//! caller's name and role; a call the leader took but could not answer before it
//! died is answered "unavailable" by the next one, never run twice.

use std::collections::BTreeMap;
use std::str::FromStr;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use comfyfleet_config::{ConvergenceReport, MachineId};
use jiff::Timestamp;
use sqlx::PgPool;
use sqlx::postgres::PgListener;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

mod calls;

pub use calls::{CallFailed, Forwarded, HandedCalls};

use crate::store::{ClusterLink, NOTICE_CHANNEL, StoreError, StoreResult, notify};
use crate::use_cases::ControllerState;
use crate::use_cases::presence::{KickReason, SessionChange};

/// How often a controller beats: heartbeat, the others' sessions, the lease.
const BEAT: Duration = Duration::from_secs(1);
/// How long a lease lasts without renewal.
const LEASE: Duration = Duration::from_secs(5);
/// A controller silent this long is counted gone: its sessions are offline.
const ALIVE: Duration = Duration::from_secs(5);
/// A controller silent this long is removed with its session rows.
const REAP: Duration = Duration::from_secs(60);
/// How long a forwarded call waits for the leader's answer.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(60);
/// Answered forwarded calls are kept this long.
const CALLS_KEPT: Duration = Duration::from_secs(3600);
/// Session changes are written at most this often, many in one transaction.
const SESSION_FLUSH: Duration = Duration::from_millis(100);

/// One controller's place in the fleet's cluster.
pub struct Cluster {
    id: String,
    url: String,
    pool: PgPool,
    link: Arc<ClusterLink>,
    leading: watch::Sender<bool>,
    /// The lease's epoch while this controller leads.
    epoch: AtomicI64,
    /// Bumped whenever a forwarded call was answered: waiters look again.
    answered: watch::Sender<u64>,
    /// When a failing beat was last logged (one line per 30 s, not one per second).
    complained: Mutex<Option<Instant>>,
    /// What runs the calls other controllers hand this one (set at [`Cluster::start`]).
    calls: std::sync::OnceLock<Arc<dyn HandedCalls>>,
}

fn seconds(duration: Duration) -> f64 {
    duration.as_secs_f64()
}

fn db(doing: &'static str) -> impl FnOnce(sqlx::Error) -> StoreError {
    move |source| StoreError::Database { doing, source }
}

impl Cluster {
    /// Registers this controller (serving at `url`) in the database of `pool`, whose
    /// store `link` belongs to.
    pub async fn join(pool: PgPool, link: Arc<ClusterLink>, url: &str) -> StoreResult<Arc<Self>> {
        let id = format!("c-{}", crate::use_cases::credentials::secrets::random_hex(12));
        sqlx::query(
            "INSERT INTO controllers (id, url, started_at, heartbeat_at) VALUES ($1, $2, now(), now())",
        )
        .bind(&id)
        .bind(url)
        .execute(&pool)
        .await
        .map_err(db("registering this controller"))?;
        link.join(&id);
        tracing::info!(controller = %id, %url, "joined the fleet's controllers");
        Ok(Arc::new(Self {
            id,
            url: url.to_owned(),
            pool,
            link,
            leading: watch::channel(false).0,
            epoch: AtomicI64::new(0),
            answered: watch::channel(0).0,
            complained: Mutex::new(None),
            calls: std::sync::OnceLock::new(),
        }))
    }

    /// Whether this controller leads now, and every change of it.
    pub fn leading(&self) -> watch::Receiver<bool> {
        self.leading.subscribe()
    }

    pub fn is_leading(&self) -> bool {
        *self.leading.borrow()
    }

    /// Starts the beat, the session writer and the notice listener; `calls` runs
    /// the calls other controllers hand this one while it leads.
    pub fn start(
        self: &Arc<Self>,
        state: Arc<ControllerState>,
        calls: Arc<dyn HandedCalls>,
    ) -> Vec<JoinHandle<()>> {
        let _ = self.calls.set(calls);
        let (changes, received) = mpsc::unbounded_channel();
        state.presence.report_changes(changes);
        vec![
            tokio::spawn(self.clone().beat(state.clone())),
            tokio::spawn(self.clone().write_sessions(received)),
            tokio::spawn(self.clone().listen(state)),
        ]
    }

    /// A clean stop: the lease is given up (another controller leads at its next
    /// beat) and this controller's rows go.
    pub async fn leave(&self) {
        self.step_down("this controller is stopping");
        let left = async {
            sqlx::query(
                "UPDATE controller_lease SET expires_at = now() - interval '1 second' WHERE holder = $1",
            )
            .bind(&self.id)
            .execute(&self.pool)
            .await?;
            sqlx::query("DELETE FROM agent_sessions WHERE controller_id = $1")
                .bind(&self.id)
                .execute(&self.pool)
                .await?;
            sqlx::query("DELETE FROM controllers WHERE id = $1").bind(&self.id).execute(&self.pool).await?;
            Ok::<_, sqlx::Error>(())
        };
        if let Err(error) = left.await {
            tracing::warn!(%error, "cannot give up the lease at stop; another controller takes it when it lapses");
        }
    }

    /// The URLs of the fleet's live controllers, this one first.
    pub async fn urls(&self) -> Vec<String> {
        let others: Vec<String> = sqlx::query_scalar(
            "SELECT url FROM controllers WHERE id <> $1 AND heartbeat_at > now() - make_interval(secs => $2) \
             ORDER BY started_at",
        )
        .bind(&self.id)
        .bind(seconds(ALIVE))
        .fetch_all(&self.pool)
        .await
        .unwrap_or_default();
        let mut urls = vec![self.url.clone()];
        for url in others {
            if !urls.contains(&url) {
                urls.push(url);
            }
        }
        urls
    }

    fn complain(&self, what: &str, error: &dyn std::fmt::Display) {
        let mut complained = self.complained.lock().unwrap_or_else(PoisonError::into_inner);
        if complained.is_none_or(|at| at.elapsed() > Duration::from_secs(30)) {
            *complained = Some(Instant::now());
            tracing::warn!(%error, "{what}");
        }
    }

    fn step_down(&self, why: &str) {
        self.link.set_lease(None);
        if self.leading.send_replace(false) {
            tracing::warn!(controller = %self.id, "stepped down as leader: {why}");
        }
    }

    async fn beat(self: Arc<Self>, state: Arc<ControllerState>) {
        let mut tick = tokio::time::interval(BEAT);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut renewed: Option<Instant> = None;
        let mut beats: u64 = 0;
        loop {
            tick.tick().await;
            beats += 1;
            if let Err(error) = self.heartbeat().await {
                self.complain(
                    "cannot reach the database to beat; the other controllers will count this one gone",
                    &error,
                );
            }
            // The others' sessions before the lease: a new leader's first step must
            // see every machine connected elsewhere as online.
            if let Err(error) = self.refresh_remote(&state).await {
                self.complain("cannot read the other controllers' sessions", &error);
            }
            let asked = Instant::now();
            match self.renew_lease().await {
                Ok(Some(epoch)) => {
                    renewed = Some(asked);
                    let was = self.epoch.swap(epoch, Ordering::SeqCst);
                    if self.is_leading() && was != epoch {
                        // Not seen while it happened: start over from the store.
                        self.step_down("the lease changed hands while this controller was not looking");
                        continue;
                    }
                    if !self.is_leading() {
                        self.link.set_lease(Some((self.id.clone(), epoch)));
                        self.leading.send_replace(true);
                        tracing::info!(controller = %self.id, epoch, "leads the fleet's controllers");
                    }
                }
                Ok(None) => self.step_down("another controller holds the lease"),
                Err(error) => {
                    self.complain("cannot renew or take the lease", &error);
                    if renewed.is_some_and(|at| at.elapsed() + BEAT + BEAT / 2 > LEASE) {
                        self.step_down("the lease could not be renewed before it lapsed");
                    }
                }
            }
            if self.is_leading() {
                self.take_calls(&state).await;
                if beats.is_multiple_of(10) {
                    self.reap().await;
                }
            }
        }
    }

    async fn heartbeat(&self) -> Result<(), sqlx::Error> {
        // Re-inserted if a leader reaped it while this one could not reach the database.
        sqlx::query(
            "INSERT INTO controllers (id, url, started_at, heartbeat_at) VALUES ($1, $2, now(), now()) \
             ON CONFLICT (id) DO UPDATE SET heartbeat_at = now()",
        )
        .bind(&self.id)
        .bind(&self.url)
        .execute(&self.pool)
        .await
        .map(drop)
    }

    /// Takes the lease if it is free or lapsed, renews it if this controller holds
    /// it; `None` when another controller holds it.
    async fn renew_lease(&self) -> Result<Option<i64>, sqlx::Error> {
        sqlx::query_scalar(
            "UPDATE controller_lease SET \
                 epoch = CASE WHEN holder = $1 THEN epoch ELSE epoch + 1 END, \
                 holder = $1, holder_url = $2, expires_at = now() + make_interval(secs => $3) \
             WHERE id = 1 AND (holder = $1 OR expires_at < now()) RETURNING epoch",
        )
        .bind(&self.id)
        .bind(&self.url)
        .bind(seconds(LEASE))
        .fetch_optional(&self.pool)
        .await
    }

    /// Machines whose session is on another live controller.
    async fn refresh_remote(&self, state: &ControllerState) -> Result<(), sqlx::Error> {
        let ids: Vec<String> = sqlx::query_scalar(
            "SELECT s.machine_id FROM agent_sessions s JOIN controllers c ON c.id = s.controller_id \
             WHERE s.controller_id <> $1 AND c.heartbeat_at > now() - make_interval(secs => $2)",
        )
        .bind(&self.id)
        .bind(seconds(ALIVE))
        .fetch_all(&self.pool)
        .await?;
        let now = Timestamp::now();
        let remote = ids.iter().filter_map(|id| MachineId::from_str(id).ok()).map(|id| (id, now)).collect();
        state.presence.set_remote(remote);
        Ok(())
    }

    /// The leader removes controllers long gone, their sessions and old calls.
    async fn reap(&self) {
        let reaped = async {
            let mut tx = self.pool.begin().await?;
            sqlx::query(
                "DELETE FROM agent_sessions s WHERE NOT EXISTS (SELECT 1 FROM controllers c \
                 WHERE c.id = s.controller_id AND c.heartbeat_at > now() - make_interval(secs => $1))",
            )
            .bind(seconds(REAP))
            .execute(&mut *tx)
            .await?;
            let gone: Vec<String> = sqlx::query_scalar(
                "DELETE FROM controllers WHERE heartbeat_at < now() - make_interval(secs => $1) RETURNING id",
            )
            .bind(seconds(REAP))
            .fetch_all(&mut *tx)
            .await?;
            sqlx::query("DELETE FROM forwarded_calls WHERE posted_at < now() - make_interval(secs => $1)")
                .bind(seconds(CALLS_KEPT))
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok::<_, sqlx::Error>(gone)
        };
        match reaped.await {
            Ok(gone) if !gone.is_empty() => tracing::info!(?gone, "removed controllers silent for a minute"),
            Ok(_) => {}
            Err(error) => self.complain("cannot remove controllers that are gone", &error),
        }
    }

    /// Writes this controller's sessions coming and going, many at a time, and tells
    /// the others.
    async fn write_sessions(self: Arc<Self>, mut received: mpsc::UnboundedReceiver<SessionChange>) {
        let mut pending: BTreeMap<MachineId, bool> = BTreeMap::new();
        loop {
            if pending.is_empty() {
                let Some(change) = received.recv().await else { return };
                pending.insert(change.machine, change.up);
            }
            tokio::time::sleep(SESSION_FLUSH).await;
            while let Ok(change) = received.try_recv() {
                pending.insert(change.machine, change.up);
            }
            match self.write_session_batch(&pending).await {
                Ok(()) => pending.clear(),
                Err(error) => {
                    self.complain("cannot record sessions for the other controllers; retrying", &error);
                    tokio::time::sleep(BEAT).await;
                }
            }
        }
    }

    async fn write_session_batch(&self, pending: &BTreeMap<MachineId, bool>) -> Result<(), sqlx::Error> {
        let up: Vec<String> = pending.iter().filter(|(_, up)| **up).map(|(id, _)| id.to_string()).collect();
        let down: Vec<String> =
            pending.iter().filter(|(_, up)| !**up).map(|(id, _)| id.to_string()).collect();
        let mut tx = self.pool.begin().await?;
        if !up.is_empty() {
            sqlx::query(
                "INSERT INTO agent_sessions (machine_id, controller_id, connected_at) \
                 SELECT id, $2, now() FROM unnest($1::text[]) AS id \
                 ON CONFLICT (machine_id) DO UPDATE SET controller_id = excluded.controller_id, \
                 connected_at = excluded.connected_at",
            )
            .bind(&up)
            .bind(&self.id)
            .execute(&mut *tx)
            .await?;
            let ids: Vec<&str> = up.iter().map(String::as_str).collect();
            notify(&mut tx, &self.id, "up", &ids).await?;
        }
        if !down.is_empty() {
            // Only the rows still ours: a machine that moved on is another's now.
            let gone: Vec<String> = sqlx::query_scalar(
                "DELETE FROM agent_sessions WHERE machine_id = ANY($1) AND controller_id = $2 \
                 RETURNING machine_id",
            )
            .bind(&down)
            .bind(&self.id)
            .fetch_all(&mut *tx)
            .await?;
            let ids: Vec<&str> = gone.iter().map(String::as_str).collect();
            notify(&mut tx, &self.id, "down", &ids).await?;
        }
        tx.commit().await
    }

    async fn listen(self: Arc<Self>, state: Arc<ControllerState>) {
        let mut listener = loop {
            let connected = async {
                let mut listener = PgListener::connect_with(&self.pool).await?;
                listener.listen(NOTICE_CHANNEL).await?;
                Ok::<_, sqlx::Error>(listener)
            };
            match connected.await {
                Ok(listener) => break listener,
                Err(error) => {
                    self.complain("cannot listen for the other controllers' notices; retrying", &error);
                    tokio::time::sleep(BEAT).await;
                }
            }
        };
        self.catch_up(&state).await;
        loop {
            match listener.try_recv().await {
                Ok(Some(notice)) => self.heard(&state, notice.payload()).await,
                Ok(None) => {
                    tracing::warn!(
                        "the notice connection dropped and was made again; catching up from the tables"
                    );
                    self.catch_up(&state).await;
                }
                Err(sqlx::Error::PoolClosed) => return,
                Err(error) => {
                    self.complain("lost the notice connection; retrying", &error);
                    tokio::time::sleep(BEAT).await;
                }
            }
        }
    }

    /// What notices may have been missed: every local session looks at its
    /// assignment again, the leader's engine at every stored report.
    async fn catch_up(&self, state: &ControllerState) {
        // The fleet summary reads every machine again, on its own task.
        state.fleet.stale(Vec::new());
        for machine in state.presence.local_machines() {
            state.presence.notify_assignment(&machine);
        }
        if self.is_leading() {
            match state.store.all_reports().await {
                Ok(reports) => {
                    for (machine, report, at) in reports {
                        state.rollouts.reported(&machine, &report, at);
                    }
                }
                Err(error) => self.complain("cannot read the stored reports to catch up", &error),
            }
        }
    }

    async fn heard(self: &Arc<Self>, state: &Arc<ControllerState>, payload: &str) {
        let mut words = payload.split(' ');
        let (Some(origin), Some(kind)) = (words.next(), words.next()) else { return };
        if origin == self.id {
            return;
        }
        let ids: Vec<&str> = words.collect();
        let machines = || ids.iter().filter_map(|id| MachineId::from_str(id).ok()).collect::<Vec<_>>();
        match kind {
            "assigned" => {
                for machine in machines() {
                    state.presence.notify_assignment(&machine);
                }
            }
            "revoked" => {
                for machine in machines() {
                    state.fleet.revoked(&machine);
                    state.presence.kick(&machine, KickReason::Revoked);
                }
            }
            "up" => {
                let machines = machines();
                // Its Hello (inventory, labels) was stored there: read on the summary's task.
                state.fleet.stale(machines.clone());
                state.presence.remote_changed(&machines, true, Timestamp::now());
                if self.is_leading() {
                    for machine in &machines {
                        state.rollouts.connected(machine);
                    }
                }
            }
            "down" => state.presence.remote_changed(&machines(), false, Timestamp::now()),
            "reported" => {
                state.fleet.stale(machines());
                if self.is_leading()
                    && let Err(error) = self.feed_reports(state, &ids).await
                {
                    self.complain("cannot read reports another controller stored", &error);
                }
            }
            "call" if self.is_leading() => self.take_calls(state).await,
            "answered" => {
                self.answered.send_modify(|count| *count += 1);
            }
            _ => {}
        }
    }

    async fn feed_reports(&self, state: &ControllerState, ids: &[&str]) -> Result<(), sqlx::Error> {
        let rows: Vec<(String, String, i64)> = sqlx::query_as(
            "SELECT machine_id, report_json, updated_at FROM machine_reports WHERE machine_id = ANY($1)",
        )
        .bind(ids)
        .fetch_all(&self.pool)
        .await?;
        for (id, json, at) in rows {
            let (Ok(machine), Ok(report), Ok(at)) = (
                MachineId::from_str(&id),
                serde_json::from_str::<ConvergenceReport>(&json),
                Timestamp::from_millisecond(at),
            ) else {
                continue;
            };
            state.rollouts.reported(&machine, &report, at);
        }
        Ok(())
    }
}

/// The controller a rollout call runs on now: `Some` when it must be handed over.
pub fn follower(state: &ControllerState) -> Option<&Arc<Cluster>> {
    state.cluster.as_ref().filter(|cluster| !cluster.is_leading())
}
