//! The agent's identity on disk, under `<data-dir>/identity/`: its private key, the
//! client certificate naming its machine id, the controller's CA and URL.
//!
//! The key is written before enrollment and `machine.toml` last, so a crash at any
//! point leaves either a complete identity or none (and the key is reused).

use std::path::{Path, PathBuf};

use comfyfleet_config::MachineId;
use comfyfleet_daemon::files;
use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair};
use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("cannot read or write {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path} is damaged ({detail}); remove {dir} and enroll again with a new join token")]
    Damaged { path: PathBuf, dir: PathBuf, detail: String },
    #[error("cannot create a key or certificate request: {0}")]
    Crypto(#[from] rcgen::Error),
}

/// A complete identity: everything needed to open a session.
#[derive(Clone)]
pub struct Identity {
    pub machine_id: MachineId,
    /// The controller the machine enrolled with (or `--controller` named first).
    pub controller_url: String,
    /// The fleet's other controllers, tried in turn when one cannot be reached.
    pub other_controller_urls: Vec<String>,
    pub certificate_pem: String,
    pub key_pem: String,
    pub ca_pem: String,
    /// The fleet the machine enrolled in (empty for an agent enrolled before fleet
    /// ids: it learns the id from the controller's Welcome).
    pub fleet_id: String,
}

impl Identity {
    /// Every controller URL, the enrolled (or first named) one first.
    pub fn controller_urls(&self) -> Vec<String> {
        std::iter::once(&self.controller_url).chain(&self.other_controller_urls).cloned().collect()
    }
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("machine_id", &self.machine_id)
            .field("controller_url", &self.controller_url)
            .field("other_controller_urls", &self.other_controller_urls)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct MachineFile {
    machine_id: MachineId,
    controller_url: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    other_controller_urls: Vec<String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    fleet_id: String,
}

pub struct IdentityDir {
    dir: PathBuf,
}

impl IdentityDir {
    pub fn new(data_dir: &Path) -> Self {
        Self { dir: data_dir.join("identity") }
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    fn file(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn read(&self, name: &str) -> Result<String, IdentityError> {
        let path = self.file(name);
        std::fs::read_to_string(&path).map_err(|source| IdentityError::Io { path, source })
    }

    fn damaged(&self, name: &str, detail: impl Into<String>) -> IdentityError {
        IdentityError::Damaged { path: self.file(name), dir: self.dir.clone(), detail: detail.into() }
    }

    /// The saved identity, or `None` if this agent never finished enrolling.
    pub fn load(&self) -> Result<Option<Identity>, IdentityError> {
        let machine_path = self.file("machine.toml");
        if !machine_path.exists() {
            return Ok(None);
        }
        let machine: MachineFile = toml::from_str(&self.read("machine.toml")?)
            .map_err(|e| self.damaged("machine.toml", e.to_string()))?;
        let identity = Identity {
            machine_id: machine.machine_id,
            controller_url: machine.controller_url,
            other_controller_urls: machine.other_controller_urls,
            certificate_pem: self.read("machine.crt")?,
            key_pem: self.read("machine.key")?,
            ca_pem: self.read("ca.crt")?,
            fleet_id: machine.fleet_id,
        };
        for (name, pem, marker) in [
            ("machine.crt", &identity.certificate_pem, "CERTIFICATE"),
            ("machine.key", &identity.key_pem, "PRIVATE KEY"),
            ("ca.crt", &identity.ca_pem, "CERTIFICATE"),
        ] {
            if !pem.contains(&format!("-----BEGIN {marker}-----")) {
                return Err(self.damaged(name, format!("no PEM {marker}")));
            }
        }
        Ok(Some(identity))
    }

    /// The files an enrolled agent needs that are gone, if any: the agent keeps its
    /// session (the identity is in memory) but cannot reconnect after a restart.
    pub fn missing_files(&self) -> Vec<&'static str> {
        if !self.dir.join("machine.toml").exists() && !self.dir.exists() {
            return vec!["identity/"];
        }
        ["machine.toml", "machine.crt", "machine.key", "ca.crt"]
            .into_iter()
            .filter(|name| !self.file(name).exists())
            .collect()
    }

    /// [`IdentityDir::missing_files`] as one line for operators, when any is missing.
    pub fn missing_problem(&self) -> Option<String> {
        let missing = self.missing_files();
        (!missing.is_empty()).then(|| {
            format!(
                "identity files gone ({}) from {}: the agent runs on what it holds in memory but cannot reconnect \
                 after a restart; restore them from a backup, or revoke the machine and enroll it again",
                missing.join(", "),
                self.dir.display()
            )
        })
    }

    /// The agent's private key, created (0600) on first use and kept across attempts.
    pub fn key(&self) -> Result<KeyPair, IdentityError> {
        files::create_private_dir(&self.dir)
            .map_err(|source| IdentityError::Io { path: self.dir.clone(), source })?;
        let path = self.file("machine.key");
        match std::fs::read_to_string(&path) {
            Ok(pem) => KeyPair::from_pem(&pem).map_err(|e| self.damaged("machine.key", e.to_string())),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                let key = KeyPair::generate()?;
                files::write_private(&path, key.serialize_pem().as_bytes())
                    .map_err(|source| IdentityError::Io { path, source })?;
                Ok(key)
            }
            Err(source) => Err(IdentityError::Io { path, source }),
        }
    }

    /// Saves what enrollment returned; `machine.toml` goes last and completes it.
    pub fn save(&self, identity: &Identity) -> Result<(), IdentityError> {
        let write = |name: &str, contents: &str, private: bool| {
            let path = self.file(name);
            let result = if private {
                files::write_private(&path, contents.as_bytes())
            } else {
                files::write_atomic(&path, contents.as_bytes(), 0o644)
            };
            result.map_err(|source| IdentityError::Io { path, source })
        };
        write("machine.crt", &identity.certificate_pem, false)?;
        write("ca.crt", &identity.ca_pem, false)?;
        let machine = MachineFile {
            machine_id: identity.machine_id.clone(),
            controller_url: identity.controller_url.clone(),
            other_controller_urls: identity.other_controller_urls.clone(),
            fleet_id: identity.fleet_id.clone(),
        };
        let text = toml::to_string(&machine).map_err(|e| self.damaged("machine.toml", e.to_string()))?;
        write("machine.toml", &text, true)
    }

    /// Points a saved identity at other controller URLs (`--controller` changed); the
    /// first is the one tried first.
    pub fn update_controller_urls(
        &self,
        identity: &mut Identity,
        urls: &[String],
    ) -> Result<(), IdentityError> {
        if let Some((first, others)) = urls.split_first() {
            identity.controller_url.clone_from(first);
            identity.other_controller_urls = others.to_vec();
        }
        self.save(identity)
    }
}

/// A certificate signing request for `key`; the controller ignores its subject.
pub fn certificate_request(key: &KeyPair, hostname: &str) -> Result<String, IdentityError> {
    let mut params = CertificateParams::default();
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, hostname);
    params.distinguished_name = name;
    Ok(params.serialize_request(key)?.pem()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_identity_until_saved_and_the_key_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let identity_dir = IdentityDir::new(dir.path());
        assert!(identity_dir.load().unwrap().is_none());
        let key = identity_dir.key().unwrap();
        let again = identity_dir.key().unwrap();
        assert_eq!(key.serialize_pem(), again.serialize_pem());
        assert!(identity_dir.load().unwrap().is_none());
        let identity = Identity {
            machine_id: "0123456789abcdef".parse().unwrap(),
            controller_url: "https://127.0.0.1:1".into(),
            other_controller_urls: Vec::new(),
            certificate_pem: "-----BEGIN CERTIFICATE-----\nx\n-----END CERTIFICATE-----\n".into(),
            key_pem: key.serialize_pem(),
            ca_pem: "-----BEGIN CERTIFICATE-----\ny\n-----END CERTIFICATE-----\n".into(),
            fleet_id: "0123456789abcdef0123456789abcdef".into(),
        };
        identity_dir.save(&identity).unwrap();
        let loaded = identity_dir.load().unwrap().unwrap();
        assert_eq!(loaded.machine_id, identity.machine_id);
        assert_eq!(loaded.fleet_id, identity.fleet_id);
        assert!(certificate_request(&key, "host").unwrap().contains("CERTIFICATE REQUEST"));
    }

    #[test]
    fn damage_is_reported_with_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        let identity_dir = IdentityDir::new(dir.path());
        std::fs::create_dir_all(identity_dir.path()).unwrap();
        std::fs::write(identity_dir.path().join("machine.toml"), "machine_id = 5").unwrap();
        let error = identity_dir.load().unwrap_err().to_string();
        assert!(error.contains("enroll again"), "{error}");
    }
}
