//! What a model's source says about it. Hugging Face answers a `HEAD` of
//! `…/resolve/<revision>/<file>` (sent without following redirects, as
//! huggingface_hub's `get_hf_file_metadata` does) with the commit the revision
//! resolved to (`X-Repo-Commit`), and for an LFS file its sha256 (`X-Linked-Etag`)
//! and size (`X-Linked-Size`) before redirecting to its CDN. A source that gives no
//! sha256 is downloaded and hashed; a redirect to another host is followed without
//! the credential, and a cut transfer is resumed with `Range`.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use comfyfleet_config::source_credentials::origin;
use comfyfleet_config::spec::Sha256Hex;
use reqwest::StatusCode;
use reqwest::header::{ACCEPT_ENCODING, AUTHORIZATION, CONTENT_LENGTH, CONTENT_RANGE, LOCATION, RANGE};
use sha2::{Digest as _, Sha256};

use crate::format;

/// Hugging Face's own host: the URLs workflows carry.
pub const HF_HOST: &str = "huggingface.co";
/// Redirects followed for one request.
const MAX_REDIRECTS: usize = 10;
/// Tries of one download (the first and its resumptions).
const MAX_TRIES: usize = 5;

/// `https://huggingface.co/<repo>/resolve/<revision>/<file>`, taken apart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubUrl {
    /// `org/name`, or `datasets/org/name` / `spaces/org/name`.
    pub repo: String,
    pub revision: String,
    /// The file's path in the repository, with any query.
    pub file: String,
}

impl HubUrl {
    pub fn parse(url: &str) -> Option<HubUrl> {
        let rest = url.strip_prefix("https://")?;
        let (host, path) = rest.split_once('/')?;
        if !host.eq_ignore_ascii_case(HF_HOST) && !host.eq_ignore_ascii_case("hf.co") {
            return None;
        }
        let (repo, after) = path.split_once("/resolve/")?;
        let segments = repo.split('/').count();
        let typed =
            repo.starts_with("datasets/") || repo.starts_with("spaces/") || repo.starts_with("models/");
        if !(segments == 2 || (segments == 3 && typed)) {
            return None;
        }
        let (revision, file) = after.split_once('/')?;
        if revision.is_empty() || file.is_empty() {
            return None;
        }
        Some(HubUrl { repo: repo.to_owned(), revision: revision.to_owned(), file: file.to_owned() })
    }

    /// The URL on `base` (`https://huggingface.co`, or a mirror) at `revision`.
    pub fn on(&self, base: &str, revision: &str) -> String {
        format!("{}/{}/resolve/{revision}/{}", base.trim_end_matches('/'), self.repo, self.file)
    }
}

/// What a `HEAD` told about one file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Metadata {
    pub commit: Option<String>,
    pub sha256: Option<Sha256Hex>,
    pub size: Option<u64>,
}

/// Requests to model sources: a bearer token for the Hugging Face endpoint only.
pub struct Sources {
    client: reqwest::Client,
    endpoint: String,
    token: Option<String>,
}

impl Sources {
    pub fn new(endpoint: &str, token: Option<String>) -> anyhow::Result<Self> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(Duration::from_secs(20))
            .read_timeout(Duration::from_secs(120))
            .user_agent(concat!("comfyfleet/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|error| anyhow::anyhow!("cannot set up HTTP requests: {error}"))?;
        Ok(Self { client, endpoint: endpoint.trim_end_matches('/').to_owned(), token })
    }

    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The `Authorization` header for `url`: the token, on the endpoint's origin only.
    fn authorization(&self, url: &str) -> Option<String> {
        let token = self.token.as_ref()?;
        (origin(url).is_some() && origin(url) == origin(&self.endpoint)).then(|| format!("Bearer {token}"))
    }

    /// The file's metadata from a `HEAD` on the endpoint; redirects within the
    /// endpoint (a renamed repository) are followed, the one to the CDN is not.
    pub async fn head(&self, hub: &HubUrl) -> anyhow::Result<Metadata> {
        let mut url = hub.on(&self.endpoint, &hub.revision);
        for _ in 0..MAX_REDIRECTS {
            let mut request = self.client.head(&url).header(ACCEPT_ENCODING, "identity");
            if let Some(value) = self.authorization(&url) {
                request = request.header(AUTHORIZATION, value);
            }
            let response = request
                .send()
                .await
                .map_err(|error| anyhow::anyhow!("HEAD {url}: {}", error_chain(&error)))?;
            let status = response.status();
            let headers = response.headers();
            let text =
                |name: &str| headers.get(name).and_then(|value| value.to_str().ok()).map(str::to_owned);
            if status.is_redirection()
                && let Some(location) = text(LOCATION.as_str())
                && location.starts_with('/')
                && text("x-repo-commit").is_none()
            {
                url = format!("{}{location}", self.endpoint);
                continue;
            }
            if !(status.is_success() || status.is_redirection()) {
                anyhow::bail!("{}", refusal(&url, status, self.token.is_some()));
            }
            let sha256 =
                text("x-linked-etag").and_then(|etag| normalize_etag(&etag).parse::<Sha256Hex>().ok());
            let size = text("x-linked-size")
                .or_else(|| status.is_success().then(|| text(CONTENT_LENGTH.as_str())).flatten())
                .and_then(|size| size.trim().parse::<u64>().ok());
            let commit =
                text("x-repo-commit").filter(|commit| comfyfleet_config::spec::names::is_commit_id(commit));
            return Ok(Metadata { commit, sha256, size });
        }
        anyhow::bail!("HEAD {url}: more than {MAX_REDIRECTS} redirects")
    }

    /// Downloads `url` and returns its sha256 and size, showing progress on stderr.
    /// Redirects to another origin go without the credential; a transfer cut short
    /// is resumed from where it stopped.
    pub async fn hash(&self, url: &str, label: &str) -> anyhow::Result<(Sha256Hex, u64)> {
        let mut hasher = Sha256::new();
        let mut done: u64 = 0;
        let mut total: Option<u64> = None;
        let mut progress = Progress::new(label);
        let mut last_error = String::new();
        for _ in 0..MAX_TRIES {
            match self.transfer(url, done, &mut total, &mut hasher, &mut progress).await {
                Ok(read) => {
                    done += read;
                    if total.is_none_or(|total| done >= total) {
                        progress.finish(done);
                        let digest = hex::encode(hasher.finalize());
                        let sha256 = digest.parse().map_err(|error: String| anyhow::anyhow!(error))?;
                        return Ok((sha256, done));
                    }
                    last_error = format!("the transfer ended after {done} of {} bytes", total.unwrap_or(0));
                }
                Err(Transfer::Cut { read, why }) => {
                    done += read;
                    last_error = why;
                }
                Err(Transfer::Refused(why)) => anyhow::bail!("{why}"),
            }
        }
        anyhow::bail!("cannot download {url} to hash it: {last_error} (tried {MAX_TRIES} times)")
    }

    /// One GET from `offset`: the bytes read into `hasher`.
    async fn transfer(
        &self,
        url: &str,
        offset: u64,
        total: &mut Option<u64>,
        hasher: &mut Sha256,
        progress: &mut Progress,
    ) -> Result<u64, Transfer> {
        let mut current = url.to_owned();
        let mut authorization = self.authorization(url);
        let mut response = None;
        for _ in 0..MAX_REDIRECTS {
            let mut request = self.client.get(&current).header(ACCEPT_ENCODING, "identity");
            if let Some(value) = &authorization {
                request = request.header(AUTHORIZATION, value);
            }
            if offset > 0 {
                request = request.header(RANGE, format!("bytes={offset}-"));
            }
            let answer = request.send().await.map_err(|error| Transfer::Cut {
                read: 0,
                why: format!("GET {current}: {}", error_chain(&error)),
            })?;
            if answer.status().is_redirection()
                && let Some(location) = answer.headers().get(LOCATION).and_then(|value| value.to_str().ok())
            {
                let next = reqwest::Url::parse(&current)
                    .and_then(|base| base.join(location))
                    .map_err(|error| {
                        Transfer::Refused(format!("{current} redirects to `{location}`: {error}"))
                    })?
                    .to_string();
                // The credential stays with the origin it was given for (Hugging Face's
                // CDN refuses one), as huggingface_hub drops it before following.
                if origin(&next) != origin(&current) {
                    authorization = None;
                }
                current = next;
                continue;
            }
            response = Some(answer);
            break;
        }
        let Some(response) = response else {
            return Err(Transfer::Refused(format!("GET {url}: more than {MAX_REDIRECTS} redirects")));
        };
        let status = response.status();
        if offset > 0 && status != StatusCode::PARTIAL_CONTENT {
            return Err(Transfer::Refused(format!(
                "GET {current} from byte {offset} answered {status}, not 206: the source cannot resume, and the \
                 transfer was cut"
            )));
        }
        if !status.is_success() {
            return Err(Transfer::Refused(refusal(&current, status, authorization.is_some())));
        }
        if total.is_none() {
            *total = if status == StatusCode::PARTIAL_CONTENT {
                response
                    .headers()
                    .get(CONTENT_RANGE)
                    .and_then(|value| value.to_str().ok())
                    .and_then(|range| range.rsplit('/').next())
                    .and_then(|size| size.parse().ok())
            } else {
                response.content_length()
            };
        }
        progress.total = *total;
        let mut read: u64 = 0;
        let mut response = response;
        loop {
            match response.chunk().await {
                Ok(Some(chunk)) => {
                    hasher.update(&chunk);
                    read += chunk.len() as u64;
                    progress.show(offset + read);
                }
                Ok(None) => return Ok(read),
                Err(error) => {
                    return Err(Transfer::Cut {
                        read,
                        why: format!("GET {current}: {}", error_chain(&error)),
                    });
                }
            }
        }
    }
}

enum Transfer {
    /// Cut after `read` bytes: try again from there.
    Cut { read: u64, why: String },
    /// The source refused: trying again will not help.
    Refused(String),
}

/// What a refusal means and what to do.
fn refusal(url: &str, status: StatusCode, had_token: bool) -> String {
    match status.as_u16() {
        401 | 403 if had_token => format!(
            "{url} answered {status}: the token in HF_TOKEN has no access to this repository (a gated model must \
             be accepted on its page first)"
        ),
        401 | 403 => format!(
            "{url} answered {status}: the repository is gated or private: set HF_TOKEN to a token with access \
             (huggingface.co/settings/tokens)"
        ),
        404 => format!("{url} answered 404: no such repository, revision or file: check the workflow's URL"),
        _ => format!("{url} answered {status}"),
    }
}

/// `"abc"` and `W/"abc"` as `abc`, as huggingface_hub normalizes them.
pub fn normalize_etag(etag: &str) -> &str {
    etag.trim().trim_start_matches("W/").trim_matches('"')
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    text
}

/// A progress line on stderr: redrawn in place on a terminal, else one line per 10%.
struct Progress {
    label: String,
    total: Option<u64>,
    terminal: bool,
    last: Instant,
    last_tenth: u64,
}

impl Progress {
    fn new(label: &str) -> Self {
        Self {
            label: label.to_owned(),
            total: None,
            terminal: std::io::stderr().is_terminal(),
            last: Instant::now(),
            last_tenth: 0,
        }
    }

    fn line(&self, done: u64) -> String {
        match self.total {
            Some(total) if total > 0 => format!(
                "hashing {}: {} of {} ({}%)",
                self.label,
                format::bytes(done),
                format::bytes(total),
                done.saturating_mul(100) / total
            ),
            _ => format!("hashing {}: {}", self.label, format::bytes(done)),
        }
    }

    fn show(&mut self, done: u64) {
        if self.terminal {
            if self.last.elapsed() >= Duration::from_millis(200) {
                self.last = Instant::now();
                eprint!("\r\x1b[2K{}", self.line(done));
                let _ = std::io::stderr().flush();
            }
        } else if let Some(total) = self.total.filter(|total| *total > 0) {
            let tenth = done.saturating_mul(10) / total;
            if tenth > self.last_tenth && tenth < 10 {
                self.last_tenth = tenth;
                eprintln!("{}", self.line(done));
            }
        }
    }

    fn finish(&mut self, done: u64) {
        self.total = Some(done);
        if self.terminal {
            eprint!("\r\x1b[2K");
        }
        eprintln!("{}", self.line(done));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hub_urls_are_taken_apart_and_pinned() {
        let url = HubUrl::parse(
            "https://huggingface.co/Comfy-Org/flux1-dev/resolve/main/split/flux1-dev.safetensors",
        )
        .unwrap();
        assert_eq!((url.repo.as_str(), url.revision.as_str()), ("Comfy-Org/flux1-dev", "main"));
        assert_eq!(
            url.on("http://127.0.0.1:9/", "0123"),
            "http://127.0.0.1:9/Comfy-Org/flux1-dev/resolve/0123/split/flux1-dev.safetensors"
        );
        assert!(HubUrl::parse("https://huggingface.co/datasets/a/b/resolve/main/x.bin").is_some());
        assert!(HubUrl::parse("https://huggingface.co/a/b/c/resolve/main/x.bin").is_none());
        assert!(HubUrl::parse("https://civitai.com/api/download/models/1").is_none());
        assert_eq!(normalize_etag("W/\"abc\""), "abc");
    }
}
