//! The controller's server certificate while it runs: issued at start, renewed at
//! two-thirds of its life and swapped into every TLS listener (gRPC and the web page)
//! without a restart. Connections made before keep the session they have; new ones get
//! the new certificate. Its expiry is on `/metrics` and in `whoami` and `machines`.
//!
//! Agents and the CLI trust the CA, never the leaf, so a renewal needs nothing from
//! them.

use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use jiff::Timestamp;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::use_cases::credentials::pki::{CertificateAuthority, PkiError};

/// The longest the renewal task sleeps between two looks: a wall clock that jumps
/// (a suspended VM, a corrected clock) is noticed within this.
const CHECK_EVERY: Duration = Duration::from_secs(3600);
/// How long after a failed renewal it tries again, at most.
const RETRY_AFTER: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum ServerCertificateError {
    #[error(transparent)]
    Pki(#[from] PkiError),
    #[error("the server certificate just issued cannot be used for TLS: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("the server certificate just issued ends at an impossible time: {0}")]
    Time(#[from] jiff::Error),
}

/// One issue of the certificate.
struct Issued {
    key: Arc<CertifiedKey>,
    issued_at: Timestamp,
    not_after: Timestamp,
    serial: String,
}

/// The certificate every TLS listener of this controller serves.
pub struct ServerCertificate {
    names: Vec<String>,
    life: Duration,
    /// Where `pki/server.crt` and `pki/server.key` are written for operators.
    data_dir: PathBuf,
    current: RwLock<Arc<Issued>>,
}

impl std::fmt::Debug for ServerCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let issued = self.issued();
        f.debug_struct("ServerCertificate")
            .field("names", &self.names)
            .field("serial", &issued.serial)
            .field("not_after", &issued.not_after)
            .finish_non_exhaustive()
    }
}

impl ServerCertificate {
    /// Issues the first certificate for `names`, valid for `life`, and saves it in
    /// `data_dir`'s `pki/`.
    pub fn issue(
        ca: &CertificateAuthority,
        names: Vec<String>,
        life: Duration,
        data_dir: &Path,
    ) -> Result<Self, ServerCertificateError> {
        let first = issue(ca, &names, life, data_dir)?;
        Ok(Self { names, life, data_dir: data_dir.to_owned(), current: RwLock::new(Arc::new(first)) })
    }

    fn issued(&self) -> Arc<Issued> {
        // A panic elsewhere while holding the lock leaves a whole Arc behind: use it.
        self.current.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// When the certificate served now stops being valid.
    pub fn not_after(&self) -> Timestamp {
        self.issued().not_after
    }

    /// The serial number of the certificate served now, hex.
    pub fn serial(&self) -> String {
        self.issued().serial.clone()
    }

    /// When the certificate served now is due for renewal: two-thirds into its life.
    pub fn renews_at(&self) -> Timestamp {
        let issued = self.issued();
        let life = issued.not_after.duration_since(issued.issued_at);
        issued.issued_at.saturating_add(life * 2 / 3).unwrap_or(issued.not_after)
    }

    /// Issues a new certificate and serves it from the next handshake on.
    pub fn renew(&self, ca: &CertificateAuthority) -> Result<(), ServerCertificateError> {
        let renewed = Arc::new(issue(ca, &self.names, self.life, &self.data_dir)?);
        tracing::info!(serial = %renewed.serial, not_after = %renewed.not_after, "renewed the server certificate");
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = renewed;
        Ok(())
    }

    /// What a rustls configuration serves this certificate through.
    pub fn resolver(self: &Arc<Self>) -> Arc<dyn ResolvesServerCert> {
        Arc::new(Resolver(self.clone()))
    }
}

fn issue(
    ca: &CertificateAuthority,
    names: &[String],
    life: Duration,
    data_dir: &Path,
) -> Result<Issued, ServerCertificateError> {
    let issued_at = Timestamp::now();
    let identity = ca.issue_server_certificate(names, life)?;
    identity.save(data_dir)?;
    let not_after = Timestamp::from_second(identity.not_after.unix_timestamp())?;
    let serial = identity.serial.clone();
    let provider = rustls::crypto::ring::default_provider();
    let key = CertifiedKey::from_der(identity.chain, identity.key, &provider)?;
    Ok(Issued { key: Arc::new(key), issued_at, not_after, serial })
}

#[derive(Debug)]
struct Resolver(Arc<ServerCertificate>);

impl ResolvesServerCert for Resolver {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.issued().key.clone())
    }
}

/// Renews `certificate` whenever it is due, for as long as the controller runs.
pub async fn renew_forever(certificate: Arc<ServerCertificate>, ca: Arc<CertificateAuthority>) {
    loop {
        let until_due = certificate.renews_at().duration_since(Timestamp::now());
        let wait = Duration::try_from(until_due).unwrap_or(Duration::ZERO).min(CHECK_EVERY);
        tokio::time::sleep(wait).await;
        if Timestamp::now() < certificate.renews_at() {
            continue;
        }
        if let Err(error) = certificate.renew(&ca) {
            let retry = RETRY_AFTER.min(certificate.life / 10).max(Duration::from_secs(1));
            tracing::error!(
                %error,
                not_after = %certificate.not_after(),
                retry_in_seconds = retry.as_secs(),
                "cannot renew the server certificate; the old one is served until it expires"
            );
            tokio::time::sleep(retry).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_renewal_swaps_what_the_resolver_serves() {
        let dir = tempfile::tempdir().unwrap();
        let ca = CertificateAuthority::load_or_create(dir.path()).unwrap();
        let certificate = Arc::new(
            ServerCertificate::issue(&ca, vec!["localhost".into()], Duration::from_secs(30), dir.path())
                .unwrap(),
        );
        let first = (certificate.serial(), certificate.issued().key.cert[0].clone());
        let due = certificate.renews_at().duration_since(Timestamp::now()).as_secs_f64();
        assert!((18.0..=20.5).contains(&due), "due in {due} s");
        certificate.renew(&ca).unwrap();
        assert_ne!(certificate.serial(), first.0);
        assert_ne!(certificate.issued().key.cert[0], first.1);
        let saved = std::fs::read_to_string(dir.path().join("pki/server.crt")).unwrap();
        use rustls::pki_types::pem::PemObject;
        let saved = rustls::pki_types::CertificateDer::from_pem_slice(saved.as_bytes()).unwrap();
        assert_eq!(saved, certificate.issued().key.cert[0], "pki/server.crt is the one served");
    }
}
