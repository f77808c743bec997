//! The HTTP client every upstream request of the controller goes through (index
//! pages, wheels, the uv page): the [`SourcePolicy`] is applied when a name is
//! resolved — and the connection is made to exactly the addresses that were checked,
//! so a name that answers differently a moment later (DNS rebinding) gains nothing —
//! to an address written into a URL, and to every redirect. What failed is logged
//! here with every detail; callers tell their own callers only that a source is
//! unreachable ([`unreachable`]), so the cache cannot be used to learn which ports
//! answer where.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use comfyfleet_config::text::Escaped;

use crate::use_cases::sources::source_policy::SourcePolicy;

/// Redirects followed for one request.
const MAX_REDIRECTS: usize = 10;

/// A policy-checked HTTP client (cheap to clone).
#[derive(Debug, Clone)]
pub struct UpstreamClient {
    client: reqwest::Client,
    policy: Arc<SourcePolicy>,
}

/// Resolves names, and refuses those the policy refuses at the addresses found.
struct PolicyResolver {
    policy: Arc<SourcePolicy>,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Refused(String);

impl reqwest::dns::Resolve for PolicyResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let policy = self.policy.clone();
        let host = name.as_str().to_ascii_lowercase();
        Box::pin(async move {
            let addresses: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let ips: Vec<_> = addresses.iter().map(SocketAddr::ip).collect();
            policy.permits(&host, &ips).map_err(Refused)?;
            let addresses: reqwest::dns::Addrs = Box::new(addresses.into_iter());
            Ok(addresses)
        })
    }
}

impl UpstreamClient {
    pub fn new(policy: SourcePolicy) -> Result<Self, String> {
        install_crypto_provider();
        let policy = Arc::new(policy);
        let on_redirect = policy.clone();
        let redirects = reqwest::redirect::Policy::custom(move |attempt| {
            if attempt.previous().len() >= MAX_REDIRECTS {
                return attempt.error(Refused(format!("more than {MAX_REDIRECTS} redirects")));
            }
            let downgrade = attempt.previous().iter().any(|url| url.scheme() == "https")
                && attempt.url().scheme() != "https";
            if downgrade {
                let refused = format!("a redirect from https to {}", attempt.url());
                return attempt.error(Refused(refused));
            }
            let target = attempt.url().to_string();
            match on_redirect.check_literal(&target) {
                Ok(()) => attempt.follow(),
                Err(reason) => attempt.error(Refused(format!("a redirect to {target}: {reason}"))),
            }
        });
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(30))
            .read_timeout(Duration::from_secs(120))
            .dns_resolver(Arc::new(PolicyResolver { policy: policy.clone() }))
            .redirect(redirects)
            .user_agent(concat!("comfyfleet-controller/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|error| format!("cannot set up HTTP downloads: {error}"))?;
        Ok(Self { client, policy })
    }

    pub fn policy(&self) -> &SourcePolicy {
        &self.policy
    }

    /// A GET of `url`, once the policy allows its host (resolved here too, for
    /// requests that go through a proxy, which resolves names itself); the refusal
    /// otherwise, as advice.
    pub async fn get(&self, url: &str) -> Result<reqwest::RequestBuilder, String> {
        self.policy
            .check_url(url)
            .await
            .map_err(|reason| format!("the controller does not fetch {url}: {reason}"))?;
        Ok(self.client.get(url))
    }
}

/// What a caller is told when fetching `url` failed for any reason on the network
/// or upstream (refused, timed out, an error status, a redirect the policy refused,
/// a body cut short): the same words, so the answer says nothing about what is
/// there. `detail` goes to the controller's log.
pub fn unreachable(url: &str, detail: &str) -> String {
    tracing::warn!(url = %Escaped(url), detail = %Escaped(detail), "an upstream source is unreachable");
    format!("{url} is unreachable from the controller (its log says why)")
}

/// The full chain of a reqwest error, for the log: `outer: inner: innermost`.
pub fn detail(error: &reqwest::Error) -> String {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// The process-wide rustls provider for clients that take the default (reqwest).
fn install_crypto_provider() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}
