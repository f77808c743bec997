//! Revisions' specs and locks as the desired-state pushers send them, read from the
//! store once and shared by every session.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use comfyfleet_config::spec::SpecDigest;

/// Revisions' canonical specs by id, shared by every session: a revision never
/// changes, and a rollout sends the same one to thousands of machines at once.
#[derive(Default)]
pub struct SpecCache {
    specs: Mutex<HashMap<SpecDigest, Arc<CachedRevision>>>,
    /// Locks by digest, likewise immutable and sent to every machine of a class.
    locks: Mutex<HashMap<String, Arc<String>>>,
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
