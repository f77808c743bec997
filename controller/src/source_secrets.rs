//! The credentials for the specs' sources (`comfyfleet secrets set NAME`): a private
//! index, a private git host. Sealed in the store with the controllers' secrets key
//! (the fleet id and the name as associated data), never shown back, never in a
//! revision's text or hash (a spec only names them), and handed to what fetches from
//! the sources: this controller's git, uv and package cache, and agents over their
//! mTLS session.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use comfyfleet_config::Spec;
use comfyfleet_config::source_credentials::{SourceCredentials, SourceSecret, credential_names};
use jiff::Timestamp;

use crate::fleet_secrets::{FleetSecretsError, SecretsKey};
use crate::store::Store;

/// Store names of source credentials: `source/NAME` (the CA is `ca`).
const PREFIX: &str = "source/";

/// How long a read of every credential is reused: pushes to thousands of machines
/// share one read, and a change made through another controller is seen this late.
const FRESH_FOR: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum SourceSecretsError {
    #[error(transparent)]
    Sealed(#[from] FleetSecretsError),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error("the sealed credential {0:?} is unreadable: {1}")]
    Corrupt(String, String),
    #[error(
        "the spec names credential{} {} the controller does not have: store {} with `comfyfleet secrets set NAME \
         --username USER` (the secret on stdin), or correct the name",
        if .0.len() == 1 { "" } else { "s" },
        quoted(.0),
        if .0.len() == 1 { "it" } else { "them" }
    )]
    Missing(Vec<String>),
}

fn quoted(names: &[String]) -> String {
    names.iter().map(|name| format!("\"{name}\"")).collect::<Vec<_>>().join(", ")
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Stored {
    username: String,
    secret: String,
}

/// One stored credential as listed: never its secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceSecretInfo {
    pub name: String,
    pub username: String,
    pub set_at: Timestamp,
}

type Known = Arc<BTreeMap<String, SourceSecret>>;

pub struct SourceSecrets {
    store: Arc<dyn Store>,
    key: SecretsKey,
    fleet_id: String,
    fresh: Mutex<Option<(Instant, Known)>>,
    /// The kept revisions' credentials by origin, for the package cache.
    fleet: Mutex<Option<(Instant, Arc<SourceCredentials>)>>,
}

impl SourceSecrets {
    pub fn new(store: Arc<dyn Store>, key: SecretsKey, fleet_id: String) -> Self {
        Self { store, key, fleet_id, fresh: Mutex::new(None), fleet: Mutex::new(None) }
    }

    fn store_name(name: &str) -> String {
        format!("{PREFIX}{name}")
    }

    /// Stores (or replaces) `name`; the pending audit entry is written with it.
    /// Whether it replaced a value.
    pub async fn set(&self, name: &str, secret: &SourceSecret) -> Result<bool, SourceSecretsError> {
        let stored = Stored { username: secret.username.clone(), secret: secret.password.clone() };
        let plain = serde_json::to_vec(&stored)
            .map_err(|e| SourceSecretsError::Corrupt(name.to_owned(), e.to_string()))?;
        let store_name = Self::store_name(name);
        let sealed = self.key.seal(&self.fleet_id, &store_name, &plain);
        let replaced = self.store.set_sealed_secret(&store_name, &sealed, Timestamp::now()).await?;
        self.forget();
        Ok(replaced)
    }

    /// Deletes `name`; false when there was none.
    pub async fn delete(&self, name: &str) -> Result<bool, SourceSecretsError> {
        let deleted = self.store.delete_sealed_secret(&Self::store_name(name)).await?;
        self.forget();
        Ok(deleted)
    }

    fn forget(&self) {
        *self.fresh.lock().unwrap_or_else(PoisonError::into_inner) = None;
        *self.fleet.lock().unwrap_or_else(PoisonError::into_inner) = None;
    }

    /// The credentials of every kept revision's sources, by origin: what the package
    /// cache sends upstream for a page or file on one of those hosts.
    pub async fn fleet_credentials(&self) -> Result<Arc<SourceCredentials>, SourceSecretsError> {
        if let Some((at, credentials)) = self.fleet.lock().unwrap_or_else(PoisonError::into_inner).as_ref()
            && at.elapsed() < FRESH_FOR
        {
            return Ok(credentials.clone());
        }
        let known = self.known().await?;
        let mut credentials = SourceCredentials::default();
        if !known.is_empty() {
            for text in self.store.kept_revision_specs().await? {
                if let Ok(spec) = serde_json::from_str::<Spec>(&text) {
                    credentials.add_spec(&spec, &known);
                }
            }
        }
        let credentials = Arc::new(credentials);
        *self.fleet.lock().unwrap_or_else(PoisonError::into_inner) =
            Some((Instant::now(), credentials.clone()));
        Ok(credentials)
    }

    /// Every stored credential, opened (read at most every [`FRESH_FOR`]).
    pub async fn known(&self) -> Result<Known, SourceSecretsError> {
        if let Some((at, known)) = self.fresh.lock().unwrap_or_else(PoisonError::into_inner).as_ref()
            && at.elapsed() < FRESH_FOR
        {
            return Ok(known.clone());
        }
        let known: BTreeMap<String, SourceSecret> = self
            .opened()
            .await?
            .into_iter()
            .map(|(name, stored, _)| {
                (name, SourceSecret { username: stored.username, password: stored.secret })
            })
            .collect();
        let known = Arc::new(known);
        *self.fresh.lock().unwrap_or_else(PoisonError::into_inner) = Some((Instant::now(), known.clone()));
        Ok(known)
    }

    /// The stored credentials, by name, with their usernames.
    pub async fn list(&self) -> Result<Vec<SourceSecretInfo>, SourceSecretsError> {
        let opened = self.opened().await?;
        Ok(opened
            .into_iter()
            .map(|(name, stored, set_at)| SourceSecretInfo { name, username: stored.username, set_at })
            .collect())
    }

    /// Every stored credential read from the store and opened, by name.
    async fn opened(&self) -> Result<Vec<(String, Stored, Timestamp)>, SourceSecretsError> {
        let mut opened = Vec::new();
        for (store_name, sealed, set_at) in self.store.sealed_secrets(PREFIX).await? {
            let name = store_name.trim_start_matches(PREFIX).to_owned();
            let plain = self.key.open(&self.fleet_id, &store_name, &sealed)?;
            let stored: Stored = serde_json::from_slice(&plain)
                .map_err(|e| SourceSecretsError::Corrupt(name.clone(), e.to_string()))?;
            opened.push((name, stored, set_at));
        }
        Ok(opened)
    }

    /// The credentials `spec` names, bound to its sources; every name must be stored.
    pub async fn for_spec(&self, spec: &Spec) -> Result<SourceCredentials, SourceSecretsError> {
        if credential_names(spec).is_empty() {
            return Ok(SourceCredentials::default());
        }
        let known = self.known().await?;
        SourceCredentials::for_spec(spec, &known).map_err(SourceSecretsError::Missing)
    }

    /// The stored credentials among `names` (what an agent is sent); names not
    /// stored are left out (the agent says which it lacks if it needs one).
    pub async fn named(&self, names: &[String]) -> Result<Vec<(String, SourceSecret)>, SourceSecretsError> {
        if names.is_empty() {
            return Ok(Vec::new());
        }
        let known = self.known().await?;
        Ok(names.iter().filter_map(|name| Some((name.clone(), known.get(name)?.clone()))).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::SqliteStore;

    #[tokio::test]
    async fn credentials_are_sealed_listed_without_secrets_and_bound_to_a_spec() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&dir.path().join("db")).await.unwrap());
        let key = SecretsKey::load_or_create(&dir.path().join("secrets.key")).unwrap();
        let secrets = SourceSecrets::new(store.clone(), key, "f1".to_owned());
        let value = SourceSecret { username: "builder".to_owned(), password: "hunter2-value".to_owned() };
        secrets.set("farm", &value).await.unwrap();
        let sealed = store.sealed_secret("source/farm").await.unwrap().unwrap();
        assert!(!String::from_utf8_lossy(&sealed.sealed).contains("hunter2"), "sealed, not in clear");
        let listed = secrets.list().await.unwrap();
        assert_eq!((listed[0].name.as_str(), listed[0].username.as_str()), ("farm", "builder"));
        assert_eq!(secrets.known().await.unwrap().get("farm"), Some(&value));
        assert_eq!(secrets.named(&["farm".to_owned(), "other".to_owned()]).await.unwrap().len(), 1);

        let again = SecretsKey::load_or_create(&dir.path().join("secrets.key")).unwrap();
        let reopened = SourceSecrets::new(store, again, "f1".to_owned());
        assert_eq!(reopened.known().await.unwrap().get("farm"), Some(&value), "the key file is kept");
        assert!(reopened.delete("farm").await.unwrap());
        assert!(reopened.known().await.unwrap().is_empty());
    }
}
