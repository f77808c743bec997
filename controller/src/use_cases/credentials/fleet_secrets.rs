//! The fleet's CA kept in the database, sealed with a key every controller is given
//! (`--secrets-key-file`), so a controller on a new host (or beside the first) serves
//! the same fleet with no files copied by hand. AES-256-GCM (ring), a fresh random
//! nonce per seal, and the fleet id and the secret's name as associated data, so a
//! sealed value is not accepted for another fleet or under another name.

use std::path::{Path, PathBuf};

use comfyfleet_daemon::files;
use jiff::Timestamp;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};

use crate::store::{SealedSecret, Store, StoreError};

/// The sealed secret holding the CA.
const CA_SECRET: &str = "ca";

#[derive(Debug, thiserror::Error)]
pub enum FleetSecretsError {
    #[error(
        "{path}: {problem}; a secrets key is 64 hex digits on the first line (e.g. `openssl rand -hex 32 > {path}`), \
         the same file on every controller of the fleet"
    )]
    BadKey { path: PathBuf, problem: String },
    #[error(
        "the fleet's CA is in the database, sealed with another secrets key than {path}: give this controller the \
         key the fleet's other controllers have"
    )]
    WrongKey { path: PathBuf },
    #[error(
        "this data dir holds another CA ({dir}) than the fleet's in the database: move {dir} away to take the \
         fleet's, or point this controller at its own fleet's database"
    )]
    OtherCa { dir: PathBuf },
    #[error("the sealed CA in the database is unreadable: {0}")]
    Corrupt(String),
    #[error("cannot read or write {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Pki(#[from] crate::use_cases::credentials::pki::PkiError),
}

/// The controllers' shared key.
pub struct SecretsKey {
    key: LessSafeKey,
    path: PathBuf,
}

impl std::fmt::Debug for SecretsKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretsKey").field("path", &self.path).finish_non_exhaustive()
    }
}

impl SecretsKey {
    /// Reads the key: 64 hex digits on the file's first line.
    pub fn load(path: &Path) -> Result<Self, FleetSecretsError> {
        let bad =
            |problem: &str| FleetSecretsError::BadKey { path: path.to_owned(), problem: problem.to_owned() };
        let text = std::fs::read_to_string(path).map_err(|error| bad(&error.to_string()))?;
        let line = text.lines().next().unwrap_or_default().trim();
        let bytes = hex::decode(line).map_err(|_| bad("not hex digits"))?;
        if bytes.len() != 32 {
            return Err(bad(&format!("{} bytes, not 32", bytes.len())));
        }
        let key = UnboundKey::new(&AES_256_GCM, &bytes).map_err(|_| bad("not an AES-256 key"))?;
        Ok(Self { key: LessSafeKey::new(key), path: path.to_owned() })
    }

    /// The key at `path`, made there (64 random hex digits, mode 0600) when the file
    /// does not exist: a lone controller on SQLite seals its source credentials with it.
    pub fn load_or_create(path: &Path) -> Result<Self, FleetSecretsError> {
        if !path.exists() {
            if let Some(dir) = path.parent() {
                files::create_private_dir(dir)
                    .map_err(|source| FleetSecretsError::Io { path: dir.to_owned(), source })?;
            }
            let hex_key = crate::use_cases::credentials::secrets::random_hex(64);
            files::write_private(path, format!("{hex_key}\n").as_bytes())
                .map_err(|source| FleetSecretsError::Io { path: path.to_owned(), source })?;
        }
        Self::load(path)
    }

    fn aad(fleet_id: &str, name: &str) -> String {
        format!("comfyfleet fleet {fleet_id} secret {name}")
    }

    pub(crate) fn seal(&self, fleet_id: &str, name: &str, plain: &[u8]) -> SealedSecret {
        let mut nonce = [0u8; NONCE_LEN];
        rand::fill(&mut nonce);
        let mut sealed = plain.to_vec();
        let aad = Self::aad(fleet_id, name);
        // Sealing in place cannot fail for a message this size.
        let _ = self.key.seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(aad.as_bytes()),
            &mut sealed,
        );
        SealedSecret { nonce: nonce.to_vec(), sealed }
    }

    pub(crate) fn open(
        &self,
        fleet_id: &str,
        name: &str,
        secret: &SealedSecret,
    ) -> Result<Vec<u8>, FleetSecretsError> {
        let nonce: [u8; NONCE_LEN] =
            secret.nonce.as_slice().try_into().map_err(|_| {
                FleetSecretsError::Corrupt(format!("a nonce of {} bytes", secret.nonce.len()))
            })?;
        let mut sealed = secret.sealed.clone();
        let aad = Self::aad(fleet_id, name);
        let plain = self
            .key
            .open_in_place(Nonce::assume_unique_for_key(nonce), Aad::from(aad.as_bytes()), &mut sealed)
            .map_err(|_| FleetSecretsError::WrongKey { path: self.path.clone() })?;
        Ok(plain.to_vec())
    }
}

#[derive(serde::Serialize, serde::Deserialize)]
struct CaFiles {
    certificate_pem: String,
    key_pem: String,
}

/// Makes the data dir's `pki/ca.crt` and `pki/ca.key` the fleet's: taken from the
/// database when it has them, else this controller's (made now if it has none)
/// sealed into the database for the others.
pub async fn share_ca(
    store: &dyn Store,
    key: &SecretsKey,
    fleet_id: &str,
    data_dir: &Path,
) -> Result<(), FleetSecretsError> {
    let dir = data_dir.join("pki");
    let (cert_path, key_path) = (dir.join("ca.crt"), dir.join("ca.key"));
    let stored = match store.sealed_secret(CA_SECRET).await? {
        Some(stored) => stored,
        None => {
            crate::use_cases::credentials::pki::CertificateAuthority::load_or_create(data_dir)?;
            let read = |path: &Path| {
                std::fs::read_to_string(path)
                    .map_err(|source| FleetSecretsError::Io { path: path.to_owned(), source })
            };
            let ours = CaFiles { certificate_pem: read(&cert_path)?, key_pem: read(&key_path)? };
            let plain =
                serde_json::to_vec(&ours).map_err(|error| FleetSecretsError::Corrupt(error.to_string()))?;
            let sealed = key.seal(fleet_id, CA_SECRET, &plain);
            let stored = store.put_sealed_secret(CA_SECRET, &sealed, Timestamp::now()).await?;
            if stored == sealed {
                tracing::info!("sealed the fleet's CA into the database for its other controllers");
                return Ok(());
            }
            stored
        }
    };
    let plain = key.open(fleet_id, CA_SECRET, &stored)?;
    let fleet: CaFiles =
        serde_json::from_slice(&plain).map_err(|error| FleetSecretsError::Corrupt(error.to_string()))?;
    match std::fs::read_to_string(&cert_path) {
        Ok(ours) if ours.trim() == fleet.certificate_pem.trim() => return Ok(()),
        Ok(_) => return Err(FleetSecretsError::OtherCa { dir }),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => return Err(FleetSecretsError::Io { path: cert_path, source }),
    }
    files::create_private_dir(&dir).map_err(|source| FleetSecretsError::Io { path: dir.clone(), source })?;
    files::write_private(&key_path, fleet.key_pem.as_bytes())
        .map_err(|source| FleetSecretsError::Io { path: key_path.clone(), source })?;
    files::write_atomic(&cert_path, fleet.certificate_pem.as_bytes(), 0o644)
        .map_err(|source| FleetSecretsError::Io { path: cert_path.clone(), source })?;
    tracing::info!(path = %cert_path.display(), "took the fleet's CA from the database");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::SqliteStore;

    fn key_file(dir: &Path, name: &str, hex: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, format!("{hex}\n")).unwrap();
        path
    }

    #[tokio::test]
    async fn a_new_data_dir_takes_the_fleets_ca_and_a_wrong_key_or_another_ca_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("db")).await.unwrap();
        let key = SecretsKey::load(&key_file(dir.path(), "key", &"ab".repeat(32))).unwrap();
        let first = dir.path().join("first");
        share_ca(&store, &key, "f1", &first).await.unwrap();
        let stored = store.sealed_secret("ca").await.unwrap().unwrap();
        let ca_pem = std::fs::read_to_string(first.join("pki/ca.crt")).unwrap();
        assert!(!String::from_utf8_lossy(&stored.sealed).contains("PRIVATE KEY"), "sealed, not in clear");

        let second = dir.path().join("second");
        share_ca(&store, &key, "f1", &second).await.unwrap();
        assert_eq!(std::fs::read_to_string(second.join("pki/ca.crt")).unwrap(), ca_pem);
        assert_eq!(
            std::fs::read_to_string(second.join("pki/ca.key")).unwrap(),
            std::fs::read_to_string(first.join("pki/ca.key")).unwrap()
        );

        let wrong = SecretsKey::load(&key_file(dir.path(), "wrong", &"cd".repeat(32))).unwrap();
        let error = share_ca(&store, &wrong, "f1", &dir.path().join("third")).await.unwrap_err();
        assert!(matches!(error, FleetSecretsError::WrongKey { .. }), "{error}");
        let error = share_ca(&store, &key, "another-fleet", &dir.path().join("fourth")).await.unwrap_err();
        assert!(matches!(error, FleetSecretsError::WrongKey { .. }), "sealed for fleet f1 only: {error}");

        let own = dir.path().join("own");
        crate::use_cases::credentials::pki::CertificateAuthority::load_or_create(&own).unwrap();
        let error = share_ca(&store, &key, "f1", &own).await.unwrap_err();
        assert!(error.to_string().contains("another CA"), "{error}");

        for (text, problem) in [("xyz", "not hex digits"), ("abcd", "2 bytes, not 32")] {
            let error = SecretsKey::load(&key_file(dir.path(), "bad", text)).unwrap_err().to_string();
            assert!(error.contains(problem) && error.contains("openssl rand -hex 32"), "{error}");
        }
    }
}
