//! Revisions' specs and locks as the desired-state pushers send them, read from the
//! store once and shared by every session.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use comfyfleet_config::source_credentials::SourceSecret;
use comfyfleet_config::spec::SpecDigest;

use crate::store::{Store, StoreError, StoredAssignment};
use crate::use_cases::source_secrets::SourceSecrets;

/// Revisions' canonical specs by id, shared by every session: a revision never
/// changes, and a rollout sends the same one to thousands of machines at once.
///
/// Whoever commits assignments fills it first ([`SpecCache::prepare`]: the rollout
/// engine before it rings the doorbells), so the sessions that push them read nothing
/// from the store. What is still missing is read once, not by each session: one
/// session reads it while the others wait for it (`loading`), rather than thousands
/// of sessions each reading and parsing the same revision from a pool of a few
/// connections at the moment a rollout's first step rings them all.
#[derive(Default)]
pub struct SpecCache {
    specs: Mutex<HashMap<SpecDigest, Arc<CachedRevision>>>,
    /// Locks by digest, likewise immutable and sent to every machine of a class.
    locks: Mutex<HashMap<String, Arc<String>>>,
    /// Held while a revision or lock the cache lacks is read.
    loading: tokio::sync::Mutex<()>,
    /// The stored credentials each revision names, as a step that assigned it found
    /// them: the sessions it rang send these rather than each opening the store's.
    credentials: Mutex<HashMap<SpecDigest, ReadCredentials>>,
}

/// Named credentials as read at one moment.
pub type NamedCredentials = Arc<Vec<(String, SourceSecret)>>;
type ReadCredentials = (Instant, NamedCredentials);

/// How long credentials read for a step serve the pushes it started; later pushes
/// read them again (a rotated secret goes with the next desired state).
const CREDENTIALS_FRESH: Duration = Duration::from_secs(10);

/// What can go wrong reading an assigned revision or its lock.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the assigned revision {environment}@{number} ({id}) is not in the store")]
    MissingRevision { environment: String, number: u32, id: String },
}

/// A revision as pushers need it: its canonical spec, and the digests of its locks
/// by build class (read once, not at every push).
pub struct CachedRevision {
    pub spec_json: String,
    pub lock_digests: std::collections::BTreeMap<String, String>,
    /// The stored credentials its spec names for its sources, with the origins it
    /// names each for.
    pub credential_uses: std::collections::BTreeMap<String, std::collections::BTreeSet<String>>,
}

impl CachedRevision {
    pub fn new(spec_json: String) -> Self {
        #[derive(serde::Deserialize)]
        struct Locks {
            #[serde(default)]
            lock: comfyfleet_config::spec::LockSpec,
        }
        let lock_digests =
            serde_json::from_str::<Locks>(&spec_json).map(|locks| locks.lock.digests).unwrap_or_default();
        let credential_uses = serde_json::from_str::<comfyfleet_config::Spec>(&spec_json)
            .map(|spec| comfyfleet_config::source_credentials::credential_origins(&spec))
            .unwrap_or_default();
        Self { spec_json, lock_digests, credential_uses }
    }
}

/// Revisions kept; past this the cache starts over (rollouts use one or two).
const CACHED_SPECS: usize = 64;

impl SpecCache {
    /// Reads into the cache every revision and lock `assignments` need that it lacks
    /// (a read per revision and per build class, never per machine), so the sessions
    /// that send them find everything in memory.
    pub async fn prepare(
        &self,
        store: &dyn Store,
        secrets: &SourceSecrets,
        assignments: &[StoredAssignment],
    ) -> Result<(), String> {
        let mut revisions: HashMap<&SpecDigest, &StoredAssignment> = HashMap::new();
        for assignment in assignments {
            revisions.entry(&assignment.revision_id).or_insert(assignment);
        }
        for assignment in revisions.into_values() {
            let revision = self.revision(store, assignment).await.map_err(|error| error.to_string())?;
            if !revision.credential_uses.is_empty() {
                let named =
                    secrets.for_agent(&revision.credential_uses).await.map_err(|error| error.to_string())?;
                let mut credentials = self.credentials.lock().unwrap_or_else(PoisonError::into_inner);
                credentials.retain(|_, (at, _)| at.elapsed() < CREDENTIALS_FRESH);
                credentials.insert(assignment.revision_id.clone(), (Instant::now(), Arc::new(named)));
            }
            if revision.lock_digests.is_empty() {
                continue;
            }
            // Plans differ per machine, their build classes rarely: each lock once.
            // Machines alike have the same plan: each distinct one is parsed once.
            let plans: std::collections::HashSet<&str> = assignments
                .iter()
                .filter(|other| other.revision_id == assignment.revision_id)
                .map(|other| other.plan_json.as_str())
                .collect();
            let digests: std::collections::BTreeSet<&String> =
                plans.into_iter().filter_map(|plan| lock_digest(&revision.lock_digests, plan)).collect();
            for digest in digests {
                self.cached_lock(store, digest).await.map_err(|error| error.to_string())?;
            }
        }
        Ok(())
    }

    /// The assigned revision, from the cache or (one reader at a time) the store.
    pub async fn revision(
        &self,
        store: &dyn Store,
        assignment: &StoredAssignment,
    ) -> Result<Arc<CachedRevision>, LoadError> {
        if let Some(found) = self.get(&assignment.revision_id) {
            return Ok(found);
        }
        let _one_reader = self.loading.lock().await;
        if let Some(found) = self.get(&assignment.revision_id) {
            return Ok(found);
        }
        let revision = store
            .environment_revision_by_id(&assignment.environment, &assignment.revision_id)
            .await?
            .ok_or_else(|| LoadError::MissingRevision {
                environment: assignment.environment.clone(),
                number: assignment.revision_number,
                id: assignment.revision_id.short().to_owned(),
            })?;
        let cached = Arc::new(CachedRevision::new(revision.spec_json));
        self.put(assignment.revision_id.clone(), cached.clone());
        Ok(cached)
    }

    /// The credentials a recent step read for revision `id`.
    pub fn fresh_credentials(&self, id: &SpecDigest) -> Option<NamedCredentials> {
        let credentials = self.credentials.lock().unwrap_or_else(PoisonError::into_inner);
        credentials.get(id).filter(|(at, _)| at.elapsed() < CREDENTIALS_FRESH).map(|(_, named)| named.clone())
    }

    /// The lock with this digest, from the cache or (one reader at a time) the store.
    pub async fn cached_lock(
        &self,
        store: &dyn Store,
        digest: &str,
    ) -> Result<Option<Arc<String>>, LoadError> {
        if let Some(lock) = self.lock(digest) {
            return Ok(Some(lock));
        }
        let _one_reader = self.loading.lock().await;
        if let Some(lock) = self.lock(digest) {
            return Ok(Some(lock));
        }
        let Some(stored) = store.lock(digest).await? else { return Ok(None) };
        let lock = Arc::new(stored.lock_json);
        self.put_lock(digest.to_owned(), lock.clone());
        Ok(Some(lock))
    }

    pub fn get(&self, id: &SpecDigest) -> Option<Arc<CachedRevision>> {
        self.specs.lock().unwrap_or_else(PoisonError::into_inner).get(id).cloned()
    }

    pub fn put(&self, id: SpecDigest, spec: Arc<CachedRevision>) {
        let mut specs = self.specs.lock().unwrap_or_else(PoisonError::into_inner);
        if specs.len() >= CACHED_SPECS {
            specs.clear();
        }
        specs.insert(id, spec);
    }

    pub fn lock(&self, digest: &str) -> Option<Arc<String>> {
        self.locks.lock().unwrap_or_else(PoisonError::into_inner).get(digest).cloned()
    }

    pub fn put_lock(&self, digest: String, lock: Arc<String>) {
        let mut locks = self.locks.lock().unwrap_or_else(PoisonError::into_inner);
        if locks.len() >= CACHED_SPECS * 4 {
            locks.clear();
        }
        locks.insert(digest, lock);
    }
}

/// The digest of the lock of the plan's build class, if the revision has one.
pub fn lock_digest<'a>(
    digests: &'a std::collections::BTreeMap<String, String>,
    plan_json: &str,
) -> Option<&'a String> {
    if digests.is_empty() {
        return None;
    }
    // Only what names the class: the plan is parsed at every push.
    #[derive(serde::Deserialize)]
    struct Class {
        python_tag: String,
        cuda_tag: String,
        #[serde(default)]
        platform: Option<String>,
    }
    let plan = serde_json::from_str::<Class>(plan_json).ok()?;
    let platform = plan.platform.as_deref().unwrap_or(comfyfleet_config::resolve::DEFAULT_PLATFORM);
    digests.get(&comfyfleet_config::lock::class_name(&plan.python_tag, &plan.cuda_tag, platform))
}
