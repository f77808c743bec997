//! The controller's TLS listener: TLS 1.3 only, HTTP/2 only, client certificates
//! optional at the TLS layer (enrollment and operators have none) and required by the
//! agent session handler, which reads them from the connection.
//!
//! Handshakes run in their own tasks with a deadline, so a slow or hostile client
//! never holds up the accept loop; thousands of agents reconnecting at once are
//! accepted as fast as the CPU can do handshakes.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use comfyfleet_config::text::Escaped;
use rustls::RootCertStore;
use rustls::server::{ResolvesServerCert, WebPkiClientVerifier};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;

use crate::app::connection_guard::{AddressCounts, Guarded, Limits, accept_capped};
use crate::use_cases::credentials::pki::CertificateAuthority;

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    #[error("cannot build the TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("cannot build the client-certificate verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
}

/// The agents' and operators' TLS; `certificate` is what it serves (renewed while
/// the controller runs, see `server_certificate`).
pub fn server_config(
    ca: &CertificateAuthority,
    certificate: Arc<dyn ResolvesServerCert>,
) -> Result<Arc<rustls::ServerConfig>, TlsSetupError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = RootCertStore::empty();
    roots.add(ca.certificate_der().clone())?;
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .allow_unauthenticated()
        .build()?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(certificate);
    // HTTP/1.1 too: the package cache's clients (agents' downloads) may speak it.
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The web page's TLS: the controller's certificate, no client certificates (a
/// browser would offer a picker), TLS 1.2 and 1.3, HTTP/2 and HTTP/1.1.
pub fn web_server_config(
    certificate: Arc<dyn ResolvesServerCert>,
) -> Result<Arc<rustls::ServerConfig>, TlsSetupError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_cert_resolver(certificate);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Accepts TCP connections on `listener` and yields them once their TLS handshake
/// has completed, held to `limits` (see `connection_guard`). Ends when the returned
/// stream is dropped.
pub fn incoming(
    listener: TcpListener,
    config: Arc<rustls::ServerConfig>,
    limits: Limits,
) -> ReceiverStream<Result<Guarded<TlsStream<TcpStream>>, std::io::Error>> {
    let (ready, stream) = mpsc::channel(1024);
    let acceptor = TlsAcceptor::from(config);
    let counts = AddressCounts::default();
    tokio::spawn(async move {
        let mut warned = None;
        loop {
            let (tcp, peer, slot) = tokio::select! {
                accepted = accept_capped(&listener, &counts, limits.per_address, &mut warned) => accepted,
                () = ready.closed() => return,
            };
            let acceptor = acceptor.clone();
            let ready = ready.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => {
                        let guarded = Guarded::new(tls, tokio::time::Instant::now(), limits, slot);
                        let _ = ready.send(Ok(guarded)).await;
                    }
                    Ok(Err(error)) => log_handshake_failure(peer, &error),
                    Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                }
            });
        }
    });
    ReceiverStream::new(stream)
}

fn log_handshake_failure(peer: SocketAddr, error: &std::io::Error) {
    use std::io::ErrorKind;
    match error.kind() {
        // Load balancers' TCP health checks connect and close: not news.
        ErrorKind::UnexpectedEof | ErrorKind::ConnectionReset => {
            tracing::debug!(%peer, error = %Escaped(error), "TLS handshake abandoned")
        }
        // A certificate from another CA, plain HTTP on the TLS port: worth a line,
        // not a warning storm.
        _ => tracing::info!(%peer, error = %Escaped(error), "TLS handshake failed"),
    }
}
