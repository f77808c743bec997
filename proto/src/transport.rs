//! How clients (agents, the CLI) reach the controller: an https endpoint with the
//! timeouts and keepalives a long-lived fleet link needs, trusting only the
//! controller's CA.

use std::time::Duration;

use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    #[error("`{0}` is not a controller URL: write https://HOST:PORT")]
    NotHttps(String),
    #[error("`{url}` is not a valid URL: {source}")]
    Invalid { url: String, source: tonic::transport::Error },
}

/// An endpoint for `url` (which must be https), without TLS settings yet.
pub fn endpoint(url: &str) -> Result<Endpoint, EndpointError> {
    if !url.starts_with("https://") {
        return Err(EndpointError::NotHttps(url.to_owned()));
    }
    let endpoint = Endpoint::from_shared(url.to_owned())
        .map_err(|source| EndpointError::Invalid { url: url.to_owned(), source })?;
    Ok(endpoint
        .connect_timeout(Duration::from_secs(10))
        .tcp_keepalive(Some(Duration::from_secs(60)))
        .http2_keep_alive_interval(Duration::from_secs(20))
        .keep_alive_timeout(Duration::from_secs(10))
        .keep_alive_while_idle(true))
}

/// TLS that trusts only `ca_pem`, optionally presenting a client certificate.
pub fn tls_config(ca_pem: &str, client: Option<(&str, &str)>) -> ClientTlsConfig {
    let config = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca_pem));
    match client {
        Some((certificate_pem, key_pem)) => config.identity(Identity::from_pem(certificate_pem, key_pem)),
        None => config,
    }
}

/// An error and its causes on one line, `outer: inner: innermost`: tonic's connect
/// errors hide the useful part (refused, certificate unknown) a few sources down.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
