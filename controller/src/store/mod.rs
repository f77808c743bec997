//! Everything the controller keeps: one [`Store`] trait, so the default SQLite file
//! and a later PostgreSQL store are interchangeable. Implementations hold no policy:
//! the rules (what makes a join token usable) are pure functions they call.

mod metered;
mod pool_hygiene;
mod postgres;
pub mod rollout_model;
mod rows;
mod sqlite;
#[cfg(test)]
#[path = "tests/suite.rs"]
pub(crate) mod suite;
mod unavailable;

pub use metered::MeteredStore;

use comfyfleet_config::assignment::{AssignmentRecord, MachineAssignment};
use comfyfleet_config::spec::{DriverCompat, SpecDigest};
use comfyfleet_config::{AssignmentReason, ConvergenceReport, Inventory, Labels, MachineId, Role};
use jiff::Timestamp;

pub use postgres::{ClusterLink, NOTICE_CHANNEL, PostgresStore, notify, redact_url};
pub use sqlite::{SnapshotFacts, SqliteStore};

use crate::store::rollout_model::{NewRollout, RolloutRecord, RolloutStep, StoredEvent, StoredMachineRow};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error while {doing}: {source}")]
    Database { doing: &'static str, source: sqlx::Error },
    #[error("stored {what} is unreadable: {detail}")]
    Corrupt { what: &'static str, detail: String },
    #[error("cannot open the database {path}: {source}")]
    Open { path: String, source: sqlx::Error },
    #[error("the database {path} holds nothing")]
    Empty { path: String },
    #[error("the database {path} is damaged: {detail}")]
    Damaged { path: String, detail: String },
    #[error("{0}")]
    Unsupported(String),
    #[error(
        "this controller no longer leads the rollout engine (its lease lapsed or another controller took it); \
         the leader carries on"
    )]
    NotLeader,
    #[error(
        "the database was written by a newer comfyfleet (schema version {found}, this build knows {known}); upgrade this controller"
    )]
    TooNew { found: i64, known: i64 },
}

pub type StoreResult<T> = Result<T, StoreError>;

/// An audit entry written in the same transaction as the change it records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEntry {
    pub actor: String,
    pub action: String,
    pub target: String,
    pub detail: String,
}

impl AuditEntry {
    pub fn new(
        actor: impl Into<String>,
        action: impl Into<String>,
        target: impl Into<String>,
        detail: impl Into<String>,
    ) -> Self {
        Self { actor: actor.into(), action: action.into(), target: target.into(), detail: detail.into() }
    }
}

tokio::task_local! {
    static PENDING_AUDIT: std::cell::RefCell<Option<AuditEntry>>;
}

/// Runs `change` — one store call that changes something — with `entry` written in
/// its transaction: both are stored, or neither (a controller killed between the two
/// can no longer leave a change nobody audited). What only the change knows is
/// filled into the entry's target and detail where they say `{number}` and
/// `{created}` (a revision), `{generation}` (an assignment) or `{rollout}` (a new
/// rollout's id). A change that does not happen (nothing to revoke) writes no entry.
pub async fn audited<F: std::future::Future>(entry: AuditEntry, change: F) -> F::Output {
    PENDING_AUDIT.scope(std::cell::RefCell::new(Some(entry)), change).await
}

/// [`audited`] when there is an entry, else just `change`.
pub async fn maybe_audited<F: std::future::Future>(entry: Option<AuditEntry>, change: F) -> F::Output {
    match entry {
        Some(entry) => audited(entry, change).await,
        None => change.await,
    }
}

/// The entry [`audited`] gave the change being written, with `facts` filled in.
pub(crate) fn take_audit(facts: &[(&str, &str)]) -> Option<AuditEntry> {
    let mut entry = PENDING_AUDIT.try_with(|pending| pending.borrow_mut().take()).ok().flatten()?;
    for (name, value) in facts {
        let placeholder = format!("{{{name}}}");
        entry.target = entry.target.replace(&placeholder, value);
        entry.detail = entry.detail.replace(&placeholder, value);
    }
    Some(entry)
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinTokenRecord {
    pub id: String,
    pub secret_sha256: [u8; 32],
    pub created_at: Timestamp,
    pub expires_at: Timestamp,
    /// `None`: unlimited until expiry.
    pub uses_allowed: Option<u32>,
    pub uses: u32,
    pub labels: Labels,
    pub description: String,
    pub created_by: String,
}

/// What the store needs to create a machine at enrollment.
#[derive(Debug, Clone)]
pub struct NewMachine {
    pub id: MachineId,
    pub hostname: String,
    pub cert_sha256: String,
    pub agent_labels: Labels,
    pub enrolled_at: Timestamp,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMachine {
    pub id: MachineId,
    pub hostname: String,
    pub enrolled_at: Timestamp,
    pub revoked_at: Option<Timestamp>,
    pub cert_sha256: String,
    pub join_token_id: String,
    pub token_labels: Labels,
    pub agent_labels: Labels,
    pub operator_labels: Labels,
    pub inventory: Option<Inventory>,
    pub inventory_updated_at: Option<Timestamp>,
    pub agent_version: String,
    pub last_seen: Option<Timestamp>,
    pub remote_address: String,
    /// What the controller wants the machine to run (without the plan).
    pub assignment: Option<MachineAssignment>,
    /// The agent's latest report on it.
    pub report: Option<ConvergenceReport>,
}

impl StoredMachine {
    /// Agent labels, then token labels, then operator labels: the operator has the
    /// last word, and an agent may add labels but never change one its token set.
    pub fn effective_labels(&self) -> Labels {
        self.agent_labels.overlaid(&self.token_labels).overlaid(&self.operator_labels)
    }
}

/// What an agent reports when its stream opens.
#[derive(Debug, Clone)]
pub struct Hello {
    pub agent_version: String,
    pub agent_labels: Labels,
    pub inventory: Option<Inventory>,
    pub remote_address: String,
    pub at: Timestamp,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CredentialRecord {
    pub id: String,
    pub name: String,
    pub role: Role,
    pub secret_sha256: [u8; 32],
    pub created_at: Timestamp,
    pub revoked_at: Option<Timestamp>,
    pub created_by: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditRecord {
    pub id: u64,
    pub at: Timestamp,
    pub actor: String,
    pub action: String,
    pub target: String,
    pub detail: String,
}

/// A revision to store: an environment's spec with every git ref pinned, named by
/// the digest of that pinned spec.
#[derive(Debug, Clone)]
pub struct NewRevision {
    pub environment: String,
    pub id: SpecDigest,
    /// The canonical pinned spec.
    pub spec_json: String,
    pub created_at: Timestamp,
    pub created_by: String,
    /// The revision's locks, stored with it.
    pub locks: Vec<StoredLock>,
    /// Every file the revision may install, for the package cache.
    pub files: Vec<PackageFile>,
}

/// A secret as the store keeps it: sealed (AES-256-GCM) with the controllers' key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealedSecret {
    pub nonce: Vec<u8>,
    pub sealed: Vec<u8>,
}

/// What retention deletes when it is old enough.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prunable {
    /// Events of finished rollouts (a running or paused rollout keeps all of its own).
    RolloutEvents,
    /// Machines' latest reports that have not changed since.
    Reports,
    /// The audit log.
    Audit,
}

impl Prunable {
    pub const ALL: [Prunable; 3] = [Prunable::RolloutEvents, Prunable::Reports, Prunable::Audit];

    pub fn as_str(self) -> &'static str {
        match self {
            Prunable::RolloutEvents => "rollout events",
            Prunable::Reports => "reports",
            Prunable::Audit => "audit entries",
        }
    }
}

/// A lock by its digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredLock {
    pub digest: String,
    pub class: String,
    pub lock_json: String,
}

/// Where one file (by sha256) comes from upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackageFile {
    pub sha256: String,
    pub url: String,
    pub file_name: String,
    pub size: Option<u64>,
}

/// One immutable revision of an environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredRevision {
    pub environment: String,
    /// 1, 2, 3 … per environment, in the order revisions were created.
    pub number: u32,
    pub id: SpecDigest,
    pub spec_json: String,
    pub created_at: Timestamp,
    pub created_by: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvironmentSummary {
    pub name: String,
    pub revisions: u32,
    pub latest: StoredRevision,
}

/// An assignment to store; the store gives it the machine's next generation.
#[derive(Debug, Clone)]
pub struct NewAssignment {
    pub environment: String,
    pub revision_number: u32,
    pub revision_id: SpecDigest,
    /// The `MachinePlan` resolved for this machine, as JSON.
    pub plan_json: String,
    /// The planned torch build, `2.8.0+cu128`.
    pub torch: String,
    pub activate: bool,
    pub reason: AssignmentReason,
    pub assigned_at: Timestamp,
    pub assigned_by: String,
}

impl NewAssignment {
    /// `plan` of `revision`, assigned now by `by`.
    pub fn planned(
        revision: &StoredRevision,
        plan: &comfyfleet_config::resolve::MachinePlan,
        activate: bool,
        reason: AssignmentReason,
        by: String,
    ) -> Result<Self, serde_json::Error> {
        Ok(NewAssignment {
            environment: revision.environment.clone(),
            revision_number: revision.number,
            revision_id: revision.id.clone(),
            plan_json: serde_json::to_string(plan)?,
            torch: plan.torch.clone(),
            activate,
            reason,
            assigned_at: Timestamp::now(),
            assigned_by: by,
        })
    }
}

/// A machine's current assignment, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredAssignment {
    pub machine_id: MachineId,
    /// 1 for a machine's first assignment, one more at every later one.
    pub generation: u64,
    pub environment: String,
    pub revision_number: u32,
    pub revision_id: SpecDigest,
    pub plan_json: String,
    pub torch: String,
    pub activate: bool,
    pub reason: AssignmentReason,
    pub assigned_at: Timestamp,
    pub assigned_by: String,
}

/// The `driver_compat` of a stored plan (exact when the plan does not say).
pub fn plan_driver_compat(plan_json: &str) -> DriverCompat {
    #[derive(serde::Deserialize)]
    struct Compat {
        #[serde(default)]
        driver_compat: DriverCompat,
    }
    serde_json::from_str::<Compat>(plan_json).map(|compat| compat.driver_compat).unwrap_or_default()
}

impl StoredAssignment {
    /// How operators see it: everything but the plan.
    pub fn summary(&self) -> MachineAssignment {
        MachineAssignment {
            generation: self.generation,
            environment: self.environment.clone(),
            revision_number: self.revision_number,
            revision_id: self.revision_id.clone(),
            activate: self.activate,
            reason: self.reason,
            assigned_at: self.assigned_at,
            assigned_by: self.assigned_by.clone(),
            torch: self.torch.clone(),
            driver_compat: plan_driver_compat(&self.plan_json),
        }
    }

    /// What the agent is sent: the assignment with its revision's canonical spec and
    /// the lock of its build class.
    pub fn record(&self, spec_json: String, lock_json: String) -> AssignmentRecord {
        AssignmentRecord {
            generation: self.generation,
            environment: self.environment.clone(),
            revision_number: self.revision_number,
            revision_id: self.revision_id.to_string(),
            spec_json,
            plan_json: self.plan_json.clone(),
            activate: self.activate,
            reason: self.reason.to_string(),
            lock_json,
        }
    }
}

/// Why a join token did not admit a machine. Said to the agent as it is: the token id
/// is not secret, and "expired" tells the operator exactly what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnrollRefusal {
    #[error("join token {id} is unknown to this controller (deleted, or made by another controller)")]
    UnknownToken { id: String },
    #[error("join token {id} has the wrong secret")]
    WrongSecret { id: String },
    #[error("join token {id} expired at {at}")]
    Expired { id: String, at: Timestamp },
    #[error("join token {id} has been used {uses} times, all it allowed")]
    UsedUp { id: String, uses: u32 },
    #[error("{}", binding_label(key, value, bound))]
    BindingLabel { key: String, value: String, bound: String },
}

/// Why an agent's label is refused: its join token set the key otherwise.
pub fn binding_label(key: &str, value: &str, bound: &str) -> String {
    format!(
        "label {key}={value}: this machine's join token sets {key}={bound}, and a label its token sets is binding \
         — drop `--label {key}=…` from the agent (or enroll the machine with another token)"
    )
}

/// Whether `token` admits one more machine with `secret_sha256` at `now`.
pub fn check_join_token(
    token: &JoinTokenRecord,
    secret_sha256: &[u8; 32],
    now: Timestamp,
) -> Result<(), EnrollRefusal> {
    use subtle::ConstantTimeEq;
    if !bool::from(token.secret_sha256.ct_eq(secret_sha256)) {
        return Err(EnrollRefusal::WrongSecret { id: token.id.clone() });
    }
    if now >= token.expires_at {
        return Err(EnrollRefusal::Expired { id: token.id.clone(), at: token.expires_at });
    }
    if token.uses_allowed.is_some_and(|allowed| token.uses >= allowed) {
        return Err(EnrollRefusal::UsedUp { id: token.id.clone(), uses: token.uses });
    }
    Ok(())
}

#[async_trait::async_trait]
pub trait Store: Send + Sync + 'static {
    async fn create_join_token(&self, token: &JoinTokenRecord) -> StoreResult<()>;
    async fn list_join_tokens(&self) -> StoreResult<Vec<JoinTokenRecord>>;
    async fn join_token(&self, id: &str) -> StoreResult<Option<JoinTokenRecord>>;
    /// Whether a token with that id existed.
    async fn delete_join_token(&self, id: &str) -> StoreResult<bool>;

    /// Checks the token with [`check_join_token`], counts one use and creates the
    /// machine, all in one transaction: a refused enrollment stores nothing.
    async fn enroll_machine(
        &self,
        token_id: &str,
        secret_sha256: &[u8; 32],
        machine: &NewMachine,
    ) -> StoreResult<Result<StoredMachine, EnrollRefusal>>;

    async fn get_machine(&self, id: &MachineId) -> StoreResult<Option<StoredMachine>>;
    /// Machines whose id starts with `prefix`, at most `limit`.
    async fn find_machines(&self, prefix: &str, limit: u32) -> StoreResult<Vec<StoredMachine>>;
    /// One page in id order, starting after `after` (exclusive).
    async fn list_machines(
        &self,
        after: Option<&MachineId>,
        limit: u32,
        include_revoked: bool,
    ) -> StoreResult<Vec<StoredMachine>>;
    async fn record_hello(&self, id: &MachineId, hello: &Hello) -> StoreResult<()>;
    /// Stores `inventory` unless the machine's stored one is the same (canonical JSON),
    /// so `inventory_updated_at` is its last change; whether it was written.
    async fn record_inventory(
        &self,
        id: &MachineId,
        inventory: &Inventory,
        at: Timestamp,
    ) -> StoreResult<bool>;
    async fn record_last_seen(&self, seen: &[(MachineId, Timestamp)]) -> StoreResult<()>;
    async fn set_operator_labels(&self, id: &MachineId, labels: &Labels) -> StoreResult<()>;
    /// Marks the machine revoked; returns false if it already was (or is unknown).
    async fn revoke_machine(&self, id: &MachineId, at: Timestamp) -> StoreResult<bool>;

    async fn create_credential(&self, credential: &CredentialRecord) -> StoreResult<()>;
    async fn get_credential(&self, id: &str) -> StoreResult<Option<CredentialRecord>>;
    async fn list_credentials(&self) -> StoreResult<Vec<CredentialRecord>>;
    async fn revoke_credential(&self, id: &str, at: Timestamp) -> StoreResult<bool>;

    async fn append_audit(
        &self,
        at: Timestamp,
        actor: &str,
        action: &str,
        target: &str,
        detail: &str,
    ) -> StoreResult<()>;
    /// Newest first.
    async fn list_audit(&self, limit: u32) -> StoreResult<Vec<AuditRecord>>;

    /// The fleet this store holds, once it has been given one.
    async fn fleet_id(&self) -> StoreResult<Option<String>>;
    /// Gives the store `fleet_id` unless it holds one already; returns the one it holds.
    async fn adopt_fleet_id(&self, fleet_id: &str, at: Timestamp) -> StoreResult<String>;
    /// Whether anything of a fleet is stored: a credential, a machine, a revision.
    async fn holds_fleet(&self) -> StoreResult<bool>;
    /// Writes a consistent snapshot of the whole store to `to` (which must not exist)
    /// while the store keeps serving.
    async fn backup(&self, to: &std::path::Path) -> StoreResult<()>;
    /// The sealed secret called `name`, if the fleet has one.
    async fn sealed_secret(&self, name: &str) -> StoreResult<Option<SealedSecret>>;
    /// Stores `secret` as `name` unless the fleet has one by that name already;
    /// returns the one it has.
    async fn put_sealed_secret(
        &self,
        name: &str,
        secret: &SealedSecret,
        at: Timestamp,
    ) -> StoreResult<SealedSecret>;
    /// Stores `secret` as `name`, replacing any value it had (the pending audit entry
    /// in the same transaction, `{created}` being "created" or "replaced"); whether
    /// it replaced one.
    async fn set_sealed_secret(&self, name: &str, secret: &SealedSecret, at: Timestamp) -> StoreResult<bool>;
    /// Deletes the sealed secret `name`; false when there was none.
    async fn delete_sealed_secret(&self, name: &str) -> StoreResult<bool>;
    /// The sealed secrets whose names start with `prefix`, by name, with when each
    /// was set.
    async fn sealed_secrets(&self, prefix: &str) -> StoreResult<Vec<(String, SealedSecret, Timestamp)>>;
    /// Closes the store at shutdown: pending writes are flushed, the files left tidy.
    async fn close(&self);
    /// Deletes at most `limit` rows of `what` older than `before`; returns how many.
    /// Callers loop, so no delete holds the write lock for long.
    async fn prune(&self, what: Prunable, before: Timestamp, limit: u32) -> StoreResult<u64>;

    /// In one transaction: the environment's revision with `revision.id` if it has
    /// one (and `false`), else `revision` stored as number highest + 1 (and `true`).
    async fn put_environment_revision(&self, revision: &NewRevision) -> StoreResult<(StoredRevision, bool)>;
    /// Every environment that has a revision, by name.
    async fn list_environments(&self) -> StoreResult<Vec<EnvironmentSummary>>;
    /// Oldest first; empty for an unknown environment.
    async fn environment_revisions(&self, environment: &str) -> StoreResult<Vec<StoredRevision>>;
    async fn latest_environment_revision(&self, environment: &str) -> StoreResult<Option<StoredRevision>>;
    async fn environment_revision(
        &self,
        environment: &str,
        number: u32,
    ) -> StoreResult<Option<StoredRevision>>;
    /// Revisions whose id starts with `prefix` (lowercase hex), oldest first, at most `limit`.
    async fn find_environment_revisions(
        &self,
        environment: &str,
        prefix: &str,
        limit: u32,
    ) -> StoreResult<Vec<StoredRevision>>;
    /// The environment's revision with exactly this id.
    async fn environment_revision_by_id(
        &self,
        environment: &str,
        id: &SpecDigest,
    ) -> StoreResult<Option<StoredRevision>>;

    /// The lock with this digest.
    async fn lock(&self, digest: &str) -> StoreResult<Option<StoredLock>>;
    /// Where the file with this sha256 comes from, if a stored revision names it.
    async fn package_file(&self, sha256: &str) -> StoreResult<Option<PackageFile>>;
    /// Records where files listed on a page of the index with key `index_key` come
    /// from (an existing row, from a lock, is kept), and that the index links them.
    async fn record_index_files(&self, index_key: &str, files: &[PackageFile]) -> StoreResult<()>;
    /// The keys of the indexes whose pages link the file with this sha256.
    async fn linking_indexes(&self, sha256: &str) -> StoreResult<Vec<String>>;
    /// The canonical specs of the revisions the package cache keeps files for: each
    /// environment's newest, and every one assigned to a machine.
    async fn kept_revision_specs(&self) -> StoreResult<Vec<String>>;

    /// Replaces the machine's assignment, in one transaction with the generation
    /// raised by one (1 for its first).
    async fn assign(&self, machine: &MachineId, assignment: &NewAssignment) -> StoreResult<StoredAssignment>;
    async fn assignment(&self, machine: &MachineId) -> StoreResult<Option<StoredAssignment>>;
    /// Keeps `report` as the machine's latest, received at `at`.
    async fn record_report(
        &self,
        machine: &MachineId,
        report: &ConvergenceReport,
        at: Timestamp,
    ) -> StoreResult<()>;
    async fn report(&self, machine: &MachineId) -> StoreResult<Option<ConvergenceReport>>;
    /// Keeps each of `reports` as its machine's latest, in one transaction.
    async fn record_reports(&self, reports: &[(MachineId, ConvergenceReport, Timestamp)]) -> StoreResult<()>;
    /// Every machine's latest report with when it arrived.
    async fn all_reports(&self) -> StoreResult<Vec<(MachineId, ConvergenceReport, Timestamp)>>;

    /// Creates a running rollout with its machine rows and first events, in one
    /// transaction.
    async fn create_rollout(&self, rollout: &NewRollout) -> StoreResult<RolloutRecord>;
    /// In one transaction: every row write (with its assignment, whose new generation
    /// becomes the row's), the events and the rollout's change. Returns the
    /// assignments made, in the order of the rows that made them.
    async fn apply_rollout_step(
        &self,
        rollout: u64,
        step: &RolloutStep,
    ) -> StoreResult<Vec<StoredAssignment>>;
    async fn rollout(&self, id: u64) -> StoreResult<Option<RolloutRecord>>;
    /// Newest first; `None` for every environment.
    async fn list_rollouts(&self, environment: Option<&str>, limit: u32) -> StoreResult<Vec<RolloutRecord>>;
    /// Running and paused rollouts, oldest first.
    async fn open_rollouts(&self) -> StoreResult<Vec<RolloutRecord>>;
    /// In rollout order (canaries first).
    async fn rollout_machines(&self, rollout: u64) -> StoreResult<Vec<StoredMachineRow>>;
    /// The rollout and its rows, read as of one moment.
    async fn rollout_snapshot(&self, id: u64) -> StoreResult<Option<(RolloutRecord, Vec<StoredMachineRow>)>>;
    /// Oldest first, ids greater than `after`.
    async fn rollout_events(&self, rollout: u64, after: u64, limit: u32) -> StoreResult<Vec<StoredEvent>>;
}

#[cfg(test)]
mod tests;
