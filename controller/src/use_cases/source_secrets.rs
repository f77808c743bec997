//! The credentials for the specs' sources (`comfyfleet secrets set NAME`): a private
//! index, a private git host. Sealed in the store with the controllers' secrets key
//! (the fleet id and the name as associated data), never shown back, never in a
//! revision's text or hash (a spec only names them), and handed to what fetches from
//! the sources: this controller's git, uv and package cache, and agents over their
//! mTLS session.
//!
//! Each is bound to the origins its admin named when storing it, and the origins are
//! sealed with the secret (authenticated by the secrets key with the name): whoever
//! can write the database but lacks the key cannot move a secret to another host. A
//! secret stored before origins existed opens with none and is sent nowhere until an
//! admin sets it again with `--origin`.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use comfyfleet_config::Spec;
use comfyfleet_config::source_credentials::{
    CredentialRefusal, SourceCredentials, SourceSecret, credential_names,
};
use jiff::Timestamp;

use crate::store::Store;
use crate::use_cases::credentials::fleet_secrets::{FleetSecretsError, SecretsKey};

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
    /// The spec names credentials the controller lacks, or names one for an origin
    /// its secret is not bound to.
    #[error("{}", refusal_text(.0))]
    Refused(CredentialRefusal),
}

fn refusal_text(refusal: &CredentialRefusal) -> String {
    let mut lines = Vec::new();
    let missing = &refusal.missing;
    if !missing.is_empty() {
        let quoted: Vec<String> = missing.iter().map(|name| format!("\"{name}\"")).collect();
        lines.push(format!(
            "the spec names credential{} {} the controller does not have: an admin stores {} with `comfyfleet \
             secrets set NAME --username USER --origin https://HOST` (the secret on stdin), or correct the name",
            if missing.len() == 1 { "" } else { "s" },
            quoted.join(", "),
            if missing.len() == 1 { "it" } else { "them" }
        ));
    }
    lines.extend(refusal.lines());
    lines.join("\n")
}

/// What is sealed under one name. `origins` is absent from what was sealed before
/// secrets were bound, which opens as bound to nothing.
#[derive(serde::Serialize, serde::Deserialize)]
struct Stored {
    username: String,
    secret: String,
    #[serde(default)]
    origins: Vec<String>,
    /// A bearer token (absent from what was sealed before bearer tokens existed).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    bearer: bool,
}

impl From<Stored> for SourceSecret {
    fn from(stored: Stored) -> Self {
        SourceSecret {
            username: stored.username,
            password: stored.secret,
            origins: stored.origins,
            bearer: stored.bearer,
        }
    }
}

/// One stored credential as listed: never its secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceSecretInfo {
    pub name: String,
    pub username: String,
    /// Where it may be sent; empty: nowhere (stored before secrets were bound).
    pub origins: Vec<String>,
    /// A bearer token rather than a username and secret.
    pub bearer: bool,
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
        let stored = Stored {
            username: secret.username.clone(),
            secret: secret.password.clone(),
            origins: secret.origins.clone(),
            bearer: secret.bearer,
        };
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
            .map(|(name, stored, _)| (name, SourceSecret::from(stored)))
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
            .map(|(name, stored, set_at)| SourceSecretInfo {
                name,
                username: stored.username,
                origins: stored.origins,
                bearer: stored.bearer,
                set_at,
            })
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

    /// The credentials `spec` names, bound to its sources; every name must be stored
    /// and bound to every origin the spec names it for.
    pub async fn for_spec(&self, spec: &Spec) -> Result<SourceCredentials, SourceSecretsError> {
        if credential_names(spec).is_empty() {
            return Ok(SourceCredentials::default());
        }
        let known = self.known().await?;
        SourceCredentials::for_spec(spec, &known).map_err(SourceSecretsError::Refused)
    }

    /// What an agent assigned `spec` is sent: each stored credential the spec names
    /// whose secret is bound to every origin the spec names it for (a revision
    /// applied before secrets were bound may name one elsewhere: it is withheld, and
    /// an agent that needs it says so). Names not stored are left out.
    pub async fn for_agent(
        &self,
        uses: &std::collections::BTreeMap<String, std::collections::BTreeSet<String>>,
    ) -> Result<Vec<(String, SourceSecret)>, SourceSecretsError> {
        if uses.is_empty() {
            return Ok(Vec::new());
        }
        let known = self.known().await?;
        Ok(uses
            .iter()
            .filter_map(|(name, origins)| {
                let secret = known.get(name)?;
                if !origins.iter().all(|origin| secret.allows(origin)) {
                    tracing::warn!(
                        credential = %name,
                        "a revision names a credential for an origin it is not bound to; agents are not sent it"
                    );
                    return None;
                }
                Some((name.clone(), secret.clone()))
            })
            .collect())
    }

    /// The value of each stored secret among `names` and its basic-auth form: what a
    /// text shown to people (a refused apply's audit entry) must not hold.
    pub async fn values_of(&self, names: &[String]) -> Vec<String> {
        let Ok(known) = self.known().await else { return Vec::new() };
        names
            .iter()
            .filter_map(|name| known.get(name))
            .flat_map(|secret| [secret.password.clone(), secret.basic_auth(), secret.authorization()])
            .collect()
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
        let value = SourceSecret {
            username: "builder".to_owned(),
            password: "hunter2-value".to_owned(),
            origins: vec!["https://mirror.farm".to_owned()],
            bearer: false,
        };
        secrets.set("farm", &value).await.unwrap();
        let sealed = store.sealed_secret("source/farm").await.unwrap().unwrap();
        assert!(!String::from_utf8_lossy(&sealed.sealed).contains("hunter2"), "sealed, not in clear");
        let listed = secrets.list().await.unwrap();
        assert_eq!((listed[0].name.as_str(), listed[0].username.as_str()), ("farm", "builder"));
        assert_eq!(secrets.known().await.unwrap().get("farm"), Some(&value));
        assert_eq!(listed[0].origins, vec!["https://mirror.farm".to_owned()]);
        let uses = |origin: &str| {
            [
                ("farm".to_owned(), [origin.to_owned()].into()),
                ("other".to_owned(), [origin.to_owned()].into()),
            ]
            .into()
        };
        assert_eq!(secrets.for_agent(&uses("https://mirror.farm")).await.unwrap().len(), 1);
        assert!(
            secrets.for_agent(&uses("https://elsewhere.example")).await.unwrap().is_empty(),
            "a credential named for another origin is withheld"
        );

        let again = SecretsKey::load_or_create(&dir.path().join("secrets.key")).unwrap();
        let reopened = SourceSecrets::new(store, again, "f1".to_owned());
        assert_eq!(reopened.known().await.unwrap().get("farm"), Some(&value), "the key file is kept");
        assert!(reopened.delete("farm").await.unwrap());
        assert!(reopened.known().await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_secret_sealed_before_origins_existed_opens_bound_to_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&dir.path().join("db")).await.unwrap());
        let key = SecretsKey::load_or_create(&dir.path().join("secrets.key")).unwrap();
        // What an earlier controller sealed: no origins.
        let sealed = key.seal("f1", "source/farm", br#"{"username":"builder","secret":"hunter2-value"}"#);
        store.set_sealed_secret("source/farm", &sealed, Timestamp::now()).await.unwrap();
        let secrets = SourceSecrets::new(store, key, "f1".to_owned());
        let opened = secrets.known().await.unwrap();
        assert!(opened.get("farm").unwrap().origins.is_empty());
        assert!(secrets.list().await.unwrap()[0].origins.is_empty());
    }
}
