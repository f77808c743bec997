//! The controller's certificate authority: created on first start, kept in
//! `<data-dir>/pki/`, and the root of all trust in the fleet.
//!
//! Agents pin the CA by the sha256 of its DER (carried in every join token), then get
//! a client certificate naming their machine id. The server certificate is re-issued
//! from the CA at every start, so a changed listen address or `--tls-san` needs no
//! manual step and agents, which trust the CA rather than the leaf, never notice; a
//! running controller renews it too (`server_certificate`).
//!
//! Every certificate is back-dated by a day: a machine whose clock runs behind (an
//! hour or two, or a hardware clock kept in local time in any timezone) still
//! accepts one issued a moment ago.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use sha2::{Digest, Sha256};
use time::{Duration, OffsetDateTime};
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

use comfyfleet_config::MachineId;

use comfyfleet_daemon::files;

const CA_VALIDITY_DAYS: i64 = 3650;
/// The server certificate's life by default (`--server-cert-validity` changes it,
/// for tests); it is renewed at two-thirds of it.
pub const SERVER_VALIDITY: std::time::Duration = std::time::Duration::from_secs(365 * 24 * 3600);
/// How far before its issue a certificate becomes valid.
const BACKDATE: Duration = Duration::hours(24);
/// Agent certificates outlive any realistic gap between controller upgrades; renewal
/// is a re-enrollment for now.
const AGENT_VALIDITY_DAYS: i64 = 5 * 365;
/// The URI SAN that names a machine in its client certificate.
const MACHINE_URI_PREFIX: &str = "urn:comfyfleet:machine:";

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("cannot read or write {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error(
        "{path} is not a usable {what}: {detail}; restore it from a backup or remove the whole pki/ directory to start a new CA (every agent must then enroll again)"
    )]
    Corrupt { path: PathBuf, what: &'static str, detail: String },
    #[error("cannot create the {what}: {source}")]
    Generate { what: &'static str, source: rcgen::Error },
    #[error("the certificate signing request is invalid: {0}")]
    BadCsr(rcgen::Error),
    #[error(
        "the certificate request's key is {0}, which this controller does not sign; \
         use an ECDSA P-256 or P-384, Ed25519 or RSA (2048 bits or more) key (the agent makes ECDSA P-256)"
    )]
    UnsupportedKey(String),
}

/// The CA's certificate and key, able to sign server and agent certificates.
pub struct CertificateAuthority {
    certificate_pem: String,
    certificate_der: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
}

/// A certificate and its private key, ready for rustls.
pub struct ServerIdentity {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
    /// When it stops being valid.
    pub not_after: OffsetDateTime,
    /// Its serial number, hex: what tells one issue from the next.
    pub serial: String,
}

impl ServerIdentity {
    /// Writes the chain and key as `pki/server.crt` and `pki/server.key` (0600), for
    /// operators to inspect (`openssl x509 -in …`); the controller itself uses the
    /// copy in memory.
    pub fn save(&self, data_dir: &Path) -> Result<(), PkiError> {
        let pem = |label: &str, der: &[u8]| pem::encode(&pem::Pem::new(label, der.to_vec()));
        let chain: String = self.chain.iter().map(|cert| pem("CERTIFICATE", cert)).collect();
        let key = pem("PRIVATE KEY", self.key.secret_der());
        let dir = data_dir.join("pki");
        for (name, contents, mode) in [("server.key", key, 0o600), ("server.crt", chain, 0o644)] {
            let path = dir.join(name);
            files::write_atomic(&path, contents.as_bytes(), mode)
                .map_err(|source| PkiError::Io { path, source })?;
        }
        Ok(())
    }
}

/// An issued agent certificate.
pub struct AgentCertificate {
    pub pem: String,
    /// Lowercase hex sha256 of the DER: what the store remembers to tell this
    /// certificate from an older one of the same machine.
    pub sha256: String,
}

impl CertificateAuthority {
    /// Loads the CA from `<data-dir>/pki/`, creating it on first start.
    pub fn load_or_create(data_dir: &Path) -> Result<Self, PkiError> {
        let dir = data_dir.join("pki");
        let cert_path = dir.join("ca.crt");
        let key_path = dir.join("ca.key");
        if cert_path.exists() || key_path.exists() {
            return Self::load(&cert_path, &key_path);
        }
        files::create_private_dir(&dir).map_err(|source| PkiError::Io { path: dir.clone(), source })?;
        let key = KeyPair::generate().map_err(|source| PkiError::Generate { what: "CA key", source })?;
        let mut params = CertificateParams::default();
        params.distinguished_name = name("comfyfleet CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages =
            vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        params.serial_number = Some(random_serial());
        set_validity(&mut params, Duration::days(CA_VALIDITY_DAYS));
        let certificate = params
            .self_signed(&key)
            .map_err(|source| PkiError::Generate { what: "CA certificate", source })?;
        // The key first: a certificate without its key is useless, the reverse is
        // retried on the next start.
        files::write_private(&key_path, key.serialize_pem().as_bytes())
            .map_err(|source| PkiError::Io { path: key_path.clone(), source })?;
        files::write_atomic(&cert_path, certificate.pem().as_bytes(), 0o644)
            .map_err(|source| PkiError::Io { path: cert_path.clone(), source })?;
        tracing::info!(path = %cert_path.display(), "created a new certificate authority");
        Self::load(&cert_path, &key_path)
    }

    fn load(cert_path: &Path, key_path: &Path) -> Result<Self, PkiError> {
        let read = |path: &Path| {
            std::fs::read_to_string(path).map_err(|source| PkiError::Io { path: path.to_owned(), source })
        };
        let certificate_pem = read(cert_path)?;
        let key_pem = read(key_path)?;
        let corrupt =
            |path: &Path, what, detail: String| PkiError::Corrupt { path: path.to_owned(), what, detail };
        let key = KeyPair::from_pem(&key_pem).map_err(|e| corrupt(key_path, "CA key", e.to_string()))?;
        let certificate_der = pem_certificates(&certificate_pem)
            .into_iter()
            .next()
            .ok_or_else(|| corrupt(cert_path, "CA certificate", "no PEM certificate in it".into()))?;
        let issuer = Issuer::from_ca_cert_der(&certificate_der, key)
            .map_err(|e| corrupt(cert_path, "CA certificate", e.to_string()))?;
        Ok(Self { certificate_pem, certificate_der, issuer })
    }

    pub fn certificate_pem(&self) -> &str {
        &self.certificate_pem
    }

    pub fn certificate_der(&self) -> &CertificateDer<'static> {
        &self.certificate_der
    }

    /// The sha256 of the CA certificate's DER, lowercase hex: what join tokens carry.
    pub fn sha256(&self) -> String {
        hex::encode(Sha256::digest(self.certificate_der.as_ref()))
    }

    /// Issues a fresh server certificate for `names` (DNS names or IP addresses),
    /// valid for `life` from now (and from a day before, see [`BACKDATE`]).
    pub fn issue_server_certificate(
        &self,
        names: &[String],
        life: std::time::Duration,
    ) -> Result<ServerIdentity, PkiError> {
        let key = KeyPair::generate().map_err(|source| PkiError::Generate { what: "server key", source })?;
        let mut params = CertificateParams::new(names.to_vec())
            .map_err(|source| PkiError::Generate { what: "server certificate", source })?;
        params.distinguished_name = name("comfyfleet controller");
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let serial = random_serial();
        params.serial_number = Some(serial.clone());
        let life = Duration::try_from(life).unwrap_or(Duration::days(CA_VALIDITY_DAYS));
        set_validity(&mut params, life);
        let not_after = params.not_after;
        let certificate = params
            .signed_by(&key, &self.issuer)
            .map_err(|source| PkiError::Generate { what: "server certificate", source })?;
        Ok(ServerIdentity {
            // The CA travels in the chain so a new agent can find it by its hash.
            chain: vec![certificate.der().clone(), self.certificate_der.clone()],
            key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
            not_after,
            serial: hex::encode(serial.to_bytes()),
        })
    }

    /// Signs an agent's CSR as a client certificate naming `machine_id`. Nothing from
    /// the request but its public key is used: the agent does not choose its name.
    pub fn sign_agent_csr(
        &self,
        csr_pem: &str,
        machine_id: &MachineId,
    ) -> Result<AgentCertificate, PkiError> {
        if let Some(unsupported) = unsupported_csr_key(csr_pem) {
            return Err(PkiError::UnsupportedKey(unsupported));
        }
        let request = CertificateSigningRequestParams::from_pem(csr_pem).map_err(PkiError::BadCsr)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = name(machine_id.as_str());
        let uri = format!("{MACHINE_URI_PREFIX}{machine_id}")
            .try_into()
            .map_err(|source| PkiError::Generate { what: "agent certificate", source })?;
        params.subject_alt_names = vec![SanType::URI(uri)];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;
        params.serial_number = Some(random_serial());
        set_validity(&mut params, Duration::days(AGENT_VALIDITY_DAYS));
        let certificate = params
            .signed_by(&request.public_key, &self.issuer)
            .map_err(|source| PkiError::Generate { what: "agent certificate", source })?;
        Ok(AgentCertificate { pem: certificate.pem(), sha256: certificate_sha256(certificate.der()) })
    }
}

/// The kind of key a CSR holds when it is one this controller cannot verify or sign
/// for (P-521, Ed448, RSA-PSS, DSA …); `None` for an accepted one or an unreadable
/// request (which the signer then explains).
fn unsupported_csr_key(csr_pem: &str) -> Option<String> {
    use x509_parser::certification_request::X509CertificationRequest;
    let der = pem::parse(csr_pem).ok()?;
    let (_, request) = X509CertificationRequest::from_der(der.contents()).ok()?;
    let key = &request.certification_request_info.subject_pki.algorithm;
    let oid = key.algorithm.to_id_string();
    let curve =
        key.parameters.as_ref().and_then(|parameters| parameters.as_oid().ok()).map(|oid| oid.to_id_string());
    let named = match (oid.as_str(), curve.as_deref()) {
        ("1.2.840.10045.2.1", Some("1.2.840.10045.3.1.7" | "1.3.132.0.34")) => return None,
        ("1.3.101.112" | "1.2.840.113549.1.1.1", _) => return None,
        ("1.2.840.10045.2.1", Some("1.3.132.0.35")) => "ECDSA P-521".to_owned(),
        ("1.2.840.10045.2.1", Some("1.3.132.0.10")) => "ECDSA secp256k1".to_owned(),
        ("1.2.840.10045.2.1", curve) => format!("ECDSA on curve {}", curve.unwrap_or("(none named)")),
        ("1.3.101.113", _) => "Ed448".to_owned(),
        ("1.3.101.110" | "1.3.101.111", _) => {
            "an X25519/X448 key (for key agreement, not signing)".to_owned()
        }
        ("1.2.840.113549.1.1.10", _) => "RSA-PSS".to_owned(),
        ("1.2.840.10040.4.1", _) => "DSA".to_owned(),
        (other, _) => format!("of algorithm {other}"),
    };
    Some(named)
}

/// Lowercase hex sha256 of a certificate's DER.
pub fn certificate_sha256(der: &[u8]) -> String {
    hex::encode(Sha256::digest(der))
}

/// The machine id named by an agent certificate (already verified against the CA by
/// the TLS layer), or why there is none.
pub fn machine_id_of(der: &[u8]) -> Result<MachineId, String> {
    let (_, certificate) =
        X509Certificate::from_der(der).map_err(|e| format!("unreadable certificate: {e}"))?;
    let names = certificate
        .subject_alternative_name()
        .map_err(|e| format!("unreadable subjectAltName: {e}"))?
        .map(|extension| extension.value.general_names.clone())
        .unwrap_or_default();
    let uri = names
        .iter()
        .find_map(|name| match name {
            GeneralName::URI(uri) => uri.strip_prefix(MACHINE_URI_PREFIX),
            _ => None,
        })
        .ok_or_else(|| "the certificate does not name a comfyfleet machine".to_owned())?;
    uri.parse().map_err(|e: comfyfleet_config::machine::BadMachineId| e.to_string())
}

fn pem_certificates(pem: &str) -> Vec<CertificateDer<'static>> {
    use rustls::pki_types::pem::PemObject;
    CertificateDer::pem_slice_iter(pem.as_bytes()).filter_map(Result::ok).collect()
}

fn name(common_name: &str) -> DistinguishedName {
    let mut name = DistinguishedName::new();
    name.push(DnType::OrganizationName, "comfyfleet");
    name.push(DnType::CommonName, common_name);
    name
}

fn set_validity(params: &mut CertificateParams, life: Duration) {
    let now = OffsetDateTime::now_utc();
    params.not_before = now - BACKDATE;
    params.not_after = now + life;
}

fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    // Positive, and no leading zero byte for DER to drop: the serial reads back as made.
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    SerialNumber::from_slice(&bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creates_once_then_loads_the_same_ca() {
        let dir = tempfile::tempdir().unwrap();
        let first = CertificateAuthority::load_or_create(dir.path()).unwrap();
        let second = CertificateAuthority::load_or_create(dir.path()).unwrap();
        assert_eq!(first.sha256(), second.sha256());
        assert_eq!(first.sha256().len(), 64);
    }

    #[test]
    fn agent_certificates_name_the_machine_not_what_the_csr_asked() {
        let dir = tempfile::tempdir().unwrap();
        let ca = CertificateAuthority::load_or_create(dir.path()).unwrap();
        let key = KeyPair::generate().unwrap();
        let mut asked = CertificateParams::new(vec!["evil.example".to_owned()]).unwrap();
        asked.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let csr = asked.serialize_request(&key).unwrap().pem().unwrap();
        let id: MachineId = "0123456789abcdef".parse().unwrap();
        let issued = ca.sign_agent_csr(&csr, &id).unwrap();
        let der = pem_certificates(&issued.pem).remove(0);
        assert_eq!(machine_id_of(&der).unwrap(), id);
        let (_, parsed) = X509Certificate::from_der(&der).unwrap();
        assert!(!parsed.is_ca());
        assert_eq!(issued.sha256, certificate_sha256(&der));
    }

    #[test]
    fn the_server_certificate_is_saved_beside_the_ca() {
        let dir = tempfile::tempdir().unwrap();
        let ca = CertificateAuthority::load_or_create(dir.path()).unwrap();
        let issued = ca.issue_server_certificate(&["localhost".into()], SERVER_VALIDITY).unwrap();
        issued.save(dir.path()).unwrap();
        let chain = std::fs::read_to_string(dir.path().join("pki/server.crt")).unwrap();
        assert_eq!(pem_certificates(&chain).len(), 2);
        assert_eq!(pem_certificates(&chain)[1], *ca.certificate_der());
        let key = std::fs::read_to_string(dir.path().join("pki/server.key")).unwrap();
        assert!(KeyPair::from_pem(&key).is_ok());
    }

    #[test]
    fn certificates_are_back_dated_for_clocks_that_run_behind() {
        let dir = tempfile::tempdir().unwrap();
        let ca = CertificateAuthority::load_or_create(dir.path()).unwrap();
        let issued =
            ca.issue_server_certificate(&["localhost".into()], std::time::Duration::from_secs(20)).unwrap();
        let (_, parsed) = X509Certificate::from_der(&issued.chain[0]).unwrap();
        let now = OffsetDateTime::now_utc().unix_timestamp();
        let not_before = parsed.validity().not_before.timestamp();
        let not_after = parsed.validity().not_after.timestamp();
        assert!(now - not_before >= 23 * 3600, "valid from {} s ago", now - not_before);
        assert!((15..=20).contains(&(not_after - now)), "valid for {} s more", not_after - now);
        assert_eq!(not_after, issued.not_after.unix_timestamp());
        assert_eq!(issued.serial, hex::encode(parsed.raw_serial()));
    }

    #[test]
    fn a_garbage_csr_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let ca = CertificateAuthority::load_or_create(dir.path()).unwrap();
        let id: MachineId = "0123456789abcdef".parse().unwrap();
        assert!(matches!(ca.sign_agent_csr("not a csr", &id), Err(PkiError::BadCsr(_))));
    }

    #[test]
    fn a_corrupt_key_is_reported_with_its_path() {
        let dir = tempfile::tempdir().unwrap();
        CertificateAuthority::load_or_create(dir.path()).unwrap();
        std::fs::write(dir.path().join("pki/ca.key"), "garbage").unwrap();
        let error = CertificateAuthority::load_or_create(dir.path()).err().unwrap().to_string();
        assert!(error.contains("ca.key") && error.contains("CA key"), "{error}");
    }
}
