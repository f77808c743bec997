//! First contact: trust the controller by the CA hash in the join token, then trade
//! the token and a CSR for a client certificate.
//!
//! The token is sent only after the TLS handshake proved that the server's chain
//! contains a CA with the pinned hash and that the server certificate is signed by
//! it (kubeadm's discovery-token-ca-cert-hash, in one string).

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use comfyfleet_config::{JoinToken, Labels, MachineId};
use comfyfleet_proto::v1 as pb;
use comfyfleet_proto::{labels_to_wire, transport};
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use sha2::{Digest, Sha256};
use tonic::transport::ClientTlsConfig;

use crate::backoff::Backoff;
use crate::identity::{Identity, IdentityDir, IdentityError, certificate_request};

#[derive(Debug, thiserror::Error)]
pub enum EnrollError {
    #[error(
        "the controller at {url} presented CA sha256 {presented}, but the join token pins {expected}: \
         the token comes from another controller, or something is intercepting the connection. \
         Nothing was sent."
    )]
    CaMismatch { url: String, presented: String, expected: String },
    #[error("the controller refused the enrollment: {0}")]
    Refused(String),
    #[error(transparent)]
    Identity(#[from] IdentityError),
    #[error(transparent)]
    Endpoint(#[from] transport::EndpointError),
    #[error("the controller's answer is unusable: {0}")]
    BadAnswer(String),
    #[error("shut down before enrollment finished")]
    Interrupted,
}

pub struct Enrollment<'a> {
    /// The fleet's controllers: each attempt tries the next.
    pub controller_urls: &'a [String],
    pub token: &'a JoinToken,
    pub hostname: &'a str,
    pub labels: &'a Labels,
}

/// Enrolls, retrying while the controller is unreachable, and saves the identity.
pub async fn enroll(
    identity_dir: &IdentityDir,
    enrollment: Enrollment<'_>,
    shutdown: &mut (impl Future<Output = ()> + Unpin),
) -> Result<Identity, EnrollError> {
    let key = identity_dir.key()?;
    let csr_pem = certificate_request(&key, enrollment.hostname)?;
    let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(15));
    let urls = enrollment.controller_urls;
    if urls.is_empty() {
        return Err(EnrollError::BadAnswer("no controller URL to enroll with".into()));
    }
    let mut turn = 0;
    loop {
        let url = urls[turn % urls.len()].as_str();
        turn += 1;
        match attempt(&enrollment, url, &csr_pem).await {
            Ok(answer) => {
                let identity = Identity {
                    machine_id: answer
                        .machine_id
                        .parse::<MachineId>()
                        .map_err(|e| EnrollError::BadAnswer(e.to_string()))?,
                    controller_url: url.to_owned(),
                    other_controller_urls: urls.iter().filter(|other| *other != url).cloned().collect(),
                    certificate_pem: answer.certificate_pem,
                    key_pem: key.serialize_pem(),
                    ca_pem: answer.ca_certificate_pem,
                    fleet_id: answer.fleet_id,
                };
                check_ca_pem(&identity.ca_pem, enrollment.token.ca_sha256())?;
                identity_dir.save(&identity)?;
                return Ok(identity);
            }
            Err(Attempt::Fatal(error)) => return Err(error),
            Err(Attempt::Retry(reason)) => {
                let delay = backoff.next_delay();
                tracing::warn!(%reason, controller = %url, retry_in = ?delay, "cannot reach the controller to enroll");
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    () = &mut *shutdown => return Err(EnrollError::Interrupted),
                }
            }
        }
    }
}

enum Attempt {
    Retry(String),
    Fatal(EnrollError),
}

async fn attempt(
    enrollment: &Enrollment<'_>,
    url: &str,
    csr_pem: &str,
) -> Result<pb::EnrollResponse, Attempt> {
    let verifier = Arc::new(PinnedCaVerifier::new(enrollment.token.ca_sha256()));
    let endpoint = transport::endpoint(url)
        .map_err(|e| Attempt::Fatal(e.into()))?
        .tls_config_with_verifier(ClientTlsConfig::new(), verifier.clone())
        .map_err(|e| Attempt::Fatal(EnrollError::BadAnswer(e.to_string())))?;
    let channel = match endpoint.connect().await {
        Ok(channel) => channel,
        Err(error) => return Err(verifier.explain(url, &error)),
    };
    let mut client = pb::agent_service_client::AgentServiceClient::new(channel);
    let request = pb::EnrollRequest {
        join_token: enrollment.token.to_string(),
        csr_pem: csr_pem.to_owned(),
        hostname: enrollment.hostname.to_owned(),
        labels: labels_to_wire(enrollment.labels),
    };
    match client.enroll(request).await {
        Ok(response) => Ok(response.into_inner()),
        // A refusal is about the token or the request: retrying cannot help.
        Err(status) if is_refusal(status.code()) => {
            Err(Attempt::Fatal(EnrollError::Refused(status.message().to_owned())))
        }
        // Anything else (unavailable, a database hiccup) may pass.
        Err(status) => Err(Attempt::Retry(format!("{:?}: {}", status.code(), status.message()))),
    }
}

fn is_refusal(code: tonic::Code) -> bool {
    matches!(
        code,
        tonic::Code::PermissionDenied
            | tonic::Code::Unauthenticated
            | tonic::Code::InvalidArgument
            | tonic::Code::FailedPrecondition
            | tonic::Code::NotFound
    )
}

fn sha256_hex(der: &[u8]) -> String {
    hex::encode(Sha256::digest(der))
}

fn check_ca_pem(ca_pem: &str, expected: &str) -> Result<(), EnrollError> {
    use rustls::pki_types::pem::PemObject;
    let der = CertificateDer::from_pem_slice(ca_pem.as_bytes())
        .map_err(|e| EnrollError::BadAnswer(format!("CA certificate: {e}")))?;
    if sha256_hex(&der) == expected {
        Ok(())
    } else {
        Err(EnrollError::BadAnswer("the CA certificate returned does not match the token's CA hash".into()))
    }
}

/// What the pinned verifier saw in the last handshake.
#[derive(Debug, Default)]
enum PinOutcome {
    #[default]
    NotYet,
    Matched,
    Mismatch(Vec<String>),
}

/// Trusts a server whose chain carries a CA with the pinned sha256 and whose
/// certificate that CA signed for the name we dialled. Nothing else.
#[derive(Debug)]
pub struct PinnedCaVerifier {
    expected_sha256: String,
    provider: Arc<CryptoProvider>,
    outcome: Mutex<PinOutcome>,
}

impl PinnedCaVerifier {
    pub fn new(expected_sha256: &str) -> Self {
        Self {
            expected_sha256: expected_sha256.to_owned(),
            provider: Arc::new(rustls::crypto::ring::default_provider()),
            outcome: Mutex::new(PinOutcome::NotYet),
        }
    }

    fn set(&self, outcome: PinOutcome) {
        *self.outcome.lock().unwrap_or_else(PoisonError::into_inner) = outcome;
    }

    /// Turns a failed connect into retry-or-fatal, with the pin's verdict if it had one.
    fn explain(&self, url: &str, error: &tonic::transport::Error) -> Attempt {
        let outcome = std::mem::take(&mut *self.outcome.lock().unwrap_or_else(PoisonError::into_inner));
        match outcome {
            PinOutcome::Mismatch(presented) => Attempt::Fatal(EnrollError::CaMismatch {
                url: url.to_owned(),
                presented: if presented.is_empty() {
                    "(no CA in the chain)".into()
                } else {
                    presented.join(", ")
                },
                expected: self.expected_sha256.clone(),
            }),
            PinOutcome::NotYet | PinOutcome::Matched => Attempt::Retry(transport::error_chain(error)),
        }
    }
}

impl ServerCertVerifier for PinnedCaVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(ca) = intermediates.iter().find(|cert| sha256_hex(cert) == self.expected_sha256) else {
            self.set(PinOutcome::Mismatch(intermediates.iter().map(|cert| sha256_hex(cert)).collect()));
            return Err(rustls::Error::General("no CA with the pinned sha256 in the server's chain".into()));
        };
        let mut roots = RootCertStore::empty();
        roots.add(ca.clone().into_owned())?;
        let verifier = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), self.provider.clone())
            .build()
            .map_err(|e| rustls::Error::General(e.to_string()))?;
        let verified = verifier.verify_server_cert(end_entity, &[], server_name, ocsp_response, now)?;
        self.set(PinOutcome::Matched);
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}
