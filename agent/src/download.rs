//! Downloads the agent makes itself (kernel wheels, the uv wheel, an index page),
//! each checked against the sha256 the spec or the agent pins before anything uses
//! it. Verified files are kept by digest under `cache/wheels/<sha256>/`, so a
//! second environment, or a second attempt, downloads nothing. A download cut short
//! keeps what it received (`.NAME.partial`) and the next attempt — in this run or
//! after a restart — asks only for the rest (`Range`); a resumed file that does not
//! verify is fetched once more from its start before it counts as tampered with.

use std::path::{Path, PathBuf};
use std::sync::Once;
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::command::redact_credentials;

/// Far larger than any wheel comfyfleet installs itself (torch goes through uv).
const MAX_DOWNLOAD_BYTES: u64 = 8 << 30;
/// Tries at one download whose connection fails.
const DOWNLOAD_ATTEMPTS: u32 = 3;
/// Index pages are small; a huge one is a mistake or an attack.
const MAX_PAGE_BYTES: usize = 32 << 20;

#[derive(Debug, thiserror::Error)]
pub enum DownloadError {
    #[error("cannot set up HTTP downloads: {0}")]
    Client(String),
    #[error("downloading {url} failed: {detail}; check that this machine can reach it")]
    Request { url: String, detail: String },
    #[error("downloading {url} failed: the server answered {status}{}", if message.is_empty() { String::new() } else { format!(": {message}") })]
    Status { url: String, status: u16, message: String },
    #[error("{url} is larger than {limit} bytes; refusing it")]
    TooLarge { url: String, limit: u64 },
    #[error(
        "the file at {url} has sha256 {actual}, but {expected} is required: the file changed upstream or was \
         tampered with on the way; nothing from it was installed. If the new file is the right one, put its \
         sha256 in the spec"
    )]
    Sha256Mismatch { url: String, expected: String, actual: String },
    #[error("cannot write {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("`{0}` is not a file name comfyfleet writes (it must not contain `/` or start with `.`)")]
    BadFileName(String),
}

impl DownloadError {
    /// The bytes are not the ones the spec or lock pins (here, or as the
    /// controller's package cache found them upstream: it answers 409).
    pub fn is_integrity(&self) -> bool {
        matches!(self, DownloadError::Sha256Mismatch { .. } | DownloadError::Status { status: 409, .. })
    }
}

/// A verified file on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fetched {
    pub path: PathBuf,
    /// Bytes that crossed the network: 0 when the cache had it.
    pub downloaded_bytes: u64,
}

#[derive(Clone)]
pub struct Downloader {
    client: reqwest::Client,
    cache: PathBuf,
    /// Sent with every request: a source credential for the host downloaded from.
    authorization: Option<std::sync::Arc<str>>,
    /// The largest file accepted ([`MAX_DOWNLOAD_BYTES`] unless a model's size says more).
    limit: u64,
}

impl std::fmt::Debug for Downloader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Downloader")
            .field("cache", &self.cache)
            .field("authorization", &self.authorization.as_ref().map(|_| "…"))
            .finish_non_exhaustive()
    }
}

fn install_crypto_provider() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // Another part of the process may have installed one already: that is fine.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

impl Downloader {
    pub fn new(cache: &Path) -> Result<Self, DownloadError> {
        install_crypto_provider();
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(30))
            .read_timeout(Duration::from_secs(120))
            .user_agent(concat!("comfyfleet-agent/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|error| DownloadError::Client(error.to_string()))?;
        Ok(Self { client, cache: cache.to_owned(), authorization: None, limit: MAX_DOWNLOAD_BYTES })
    }

    /// Downloads through the controller's package cache: its CA is the only root
    /// trusted, and the agent presents its machine certificate.
    pub fn for_controller(
        cache: &Path,
        ca_pem: &str,
        certificate_pem: &str,
        key_pem: &str,
    ) -> Result<Self, DownloadError> {
        install_crypto_provider();
        let client_error = |error: reqwest::Error| DownloadError::Client(error_chain(&error));
        let ca = reqwest::Certificate::from_pem(ca_pem.as_bytes()).map_err(client_error)?;
        let identity = reqwest::Identity::from_pem(format!("{certificate_pem}\n{key_pem}").as_bytes())
            .map_err(client_error)?;
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(30))
            // A waiting agent hears nothing until the controller's first upstream bytes.
            .read_timeout(Duration::from_secs(300))
            .tls_certs_only([ca])
            .identity(identity)
            .no_proxy()
            .user_agent(concat!("comfyfleet-agent/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(client_error)?;
        Ok(Self { client, cache: cache.to_owned(), authorization: None, limit: MAX_DOWNLOAD_BYTES })
    }

    /// This downloader, keeping verified files under `cache` (by sha256) instead.
    pub fn with_cache(&self, cache: &Path) -> Self {
        Self { cache: cache.to_owned(), ..self.clone() }
    }

    /// This downloader, accepting files up to `limit` bytes (a model's size) and at
    /// least the usual bound.
    pub fn with_limit(&self, limit: u64) -> Self {
        Self { limit: limit.max(MAX_DOWNLOAD_BYTES), ..self.clone() }
    }

    /// This downloader, sending `authorization` (a source credential's header) with
    /// its requests. reqwest drops it on a redirect to another host.
    pub fn with_authorization(&self, authorization: Option<String>) -> Self {
        Self { authorization: authorization.map(Into::into), ..self.clone() }
    }

    /// The verified file with this sha256, if an earlier download kept one.
    pub fn cached(&self, sha256: &str, file_name: &str) -> Option<PathBuf> {
        let path = self.cache.join(sha256).join(file_name);
        path.is_file().then_some(path)
    }

    /// Downloads `url` to `dest` as it is (a git bundle: git checks what it holds).
    pub async fn to_file(&self, url: &str, dest: &Path) -> Result<u64, DownloadError> {
        let shown = redact_credentials(url);
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| DownloadError::Io { path, source }
        };
        let mut response = self.get(url).await?;
        let partial = dest.with_extension("partial");
        let mut file = tokio::fs::File::create(&partial).await.map_err(io(&partial))?;
        let received =
            write_body(&mut response, &mut file, &partial, &shown, self.limit, &mut |_, _| {}).await?;
        file.sync_all().await.map_err(io(&partial))?;
        drop(file);
        tokio::fs::rename(&partial, dest).await.map_err(io(dest))?;
        Ok(received)
    }

    async fn get(&self, url: &str) -> Result<reqwest::Response, DownloadError> {
        self.get_from(url, 0).await
    }

    /// A GET of `url` asking for its bytes from `offset` on (all of them at 0). An
    /// answer of 206 or 416 is the caller's to read.
    async fn get_from(&self, url: &str, offset: u64) -> Result<reqwest::Response, DownloadError> {
        let shown = redact_credentials(url);
        let mut request = self.client.get(url);
        if let Some(authorization) = &self.authorization {
            request = request.header(reqwest::header::AUTHORIZATION, authorization.as_ref());
        }
        if offset > 0 {
            request = request.header(reqwest::header::RANGE, format!("bytes={offset}-"));
        }
        let mut response = request
            .send()
            .await
            .map_err(|error| DownloadError::Request { url: shown.clone(), detail: error_chain(&error) })?;
        let unsatisfiable = offset > 0 && response.status() == reqwest::StatusCode::RANGE_NOT_SATISFIABLE;
        if !response.status().is_success() && !unsatisfiable {
            let status = response.status().as_u16();
            // The controller's cache says why in a line of text (naming the upstream URL).
            let plain = response
                .headers()
                .get(reqwest::header::CONTENT_TYPE)
                .and_then(|value| value.to_str().ok())
                .is_some_and(|value| value.starts_with("text/plain"));
            let mut message = String::new();
            if plain {
                let mut body = Vec::new();
                while let Ok(Some(chunk)) = response.chunk().await {
                    body.extend_from_slice(&chunk);
                    if body.len() > 16 << 10 {
                        break;
                    }
                }
                message = String::from_utf8_lossy(&body).trim().to_owned();
            }
            return Err(DownloadError::Status { url: shown, status, message });
        }
        Ok(response)
    }

    /// A page of text (a PEP 503 index page), and the URL it came from after redirects.
    pub async fn page(&self, url: &str) -> Result<(String, String), DownloadError> {
        let mut response = self.get(url).await?;
        let final_url = response.url().to_string();
        let shown = redact_credentials(url);
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|error| DownloadError::Request { url: shown.clone(), detail: error_chain(&error) })?
        {
            body.extend_from_slice(&chunk);
            if body.len() > MAX_PAGE_BYTES {
                return Err(DownloadError::TooLarge { url: shown, limit: MAX_PAGE_BYTES as u64 });
            }
        }
        Ok((String::from_utf8_lossy(&body).into_owned(), final_url))
    }

    /// The file at `url`, whose sha256 must be `sha256` (lowercase hex), stored as
    /// `file_name` under its digest. `progress` hears the bytes received so far.
    pub async fn verified(
        &self,
        url: &str,
        sha256: &str,
        file_name: &str,
        progress: &mut (dyn FnMut(u64, Option<u64>) + Send),
    ) -> Result<Fetched, DownloadError> {
        // A connection cut mid-body (a flaky link, or the controller's cache ending a
        // stream it could not verify) is tried again from where it stopped; the
        // second answer says why.
        let mut attempt = 1;
        let mut resume = true;
        loop {
            match self.verified_once(url, sha256, file_name, resume, progress).await {
                Err(Resumed::Error(DownloadError::Request { .. })) if attempt < DOWNLOAD_ATTEMPTS => {
                    tokio::time::sleep(Duration::from_millis(500 * u64::from(attempt))).await;
                    attempt += 1;
                }
                // The kept part may be what failed (the cache ends a stream whose
                // bytes did not match): the whole file once more decides.
                Err(Resumed::Mismatch) if resume => resume = false,
                result => return result.map_err(Resumed::into_error),
            }
        }
    }

    async fn verified_once(
        &self,
        url: &str,
        sha256: &str,
        file_name: &str,
        resume: bool,
        progress: &mut (dyn FnMut(u64, Option<u64>) + Send),
    ) -> Result<Fetched, Resumed> {
        if file_name.is_empty() || file_name.contains('/') || file_name.starts_with('.') {
            return Err(DownloadError::BadFileName(file_name.to_owned()).into());
        }
        let dir = self.cache.join(sha256);
        let path = dir.join(file_name);
        if path.is_file() {
            return Ok(Fetched { path, downloaded_bytes: 0 });
        }
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| DownloadError::Io { path, source }
        };
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        let partial = dir.join(format!(".{file_name}.partial"));
        let shown = redact_credentials(url);
        let kept = if resume { std::fs::metadata(&partial).map(|meta| meta.len()).unwrap_or(0) } else { 0 };
        let mut response = self.get_from(url, kept).await?;
        let from = resumed_from(&response, kept);
        if response.status() == reqwest::StatusCode::RANGE_NOT_SATISFIABLE || (kept > 0 && from.is_none()) {
            // What is kept is not a start of this file (or all of it, unverified).
            let _ = tokio::fs::remove_file(&partial).await;
            if response.status() == reqwest::StatusCode::RANGE_NOT_SATISFIABLE {
                response = self.get(url).await?;
            }
        }
        let have = from.unwrap_or(0);
        let total = response.content_length().map(|length| length + have);
        if total.is_some_and(|total| total > self.limit) {
            return Err(DownloadError::TooLarge { url: shown, limit: self.limit }.into());
        }
        let mut hasher = Sha256::new();
        let mut file = if have > 0 {
            hash_prefix(&partial, have, &mut hasher).await.map_err(io(&partial))?;
            tokio::fs::OpenOptions::new().append(true).open(&partial).await.map_err(io(&partial))?
        } else {
            tokio::fs::File::create(&partial).await.map_err(io(&partial))?
        };
        let received =
            write_body(&mut response, &mut file, &partial, &shown, self.limit, &mut |chunk, received| {
                hasher.update(chunk);
                progress(have + received, total);
            })
            .await?;
        file.sync_all().await.map_err(io(&partial))?;
        drop(file);
        let actual = hex::encode(hasher.finalize());
        if actual != sha256 {
            let _ = tokio::fs::remove_file(&partial).await;
            if have > 0 {
                return Err(Resumed::Mismatch);
            }
            return Err(
                DownloadError::Sha256Mismatch { url: shown, expected: sha256.to_owned(), actual }.into()
            );
        }
        tokio::fs::rename(&partial, &path).await.map_err(io(&path))?;
        Ok(Fetched { path, downloaded_bytes: received })
    }
}

/// How one attempt at a verified download ended badly.
enum Resumed {
    Error(DownloadError),
    /// A resumed file did not verify.
    Mismatch,
}

impl From<DownloadError> for Resumed {
    fn from(error: DownloadError) -> Self {
        Resumed::Error(error)
    }
}

impl Resumed {
    fn into_error(self) -> DownloadError {
        match self {
            Resumed::Error(error) => error,
            // Not reached: a mismatch after a resume is fetched again whole.
            Resumed::Mismatch => DownloadError::Request {
                url: String::new(),
                detail: "a resumed download did not verify".to_owned(),
            },
        }
    }
}

/// Where a 206 answer to a request for bytes from `kept` on starts: `kept`, if its
/// `Content-Range` says so (anything else is not a resume of what is kept).
fn resumed_from(response: &reqwest::Response, kept: u64) -> Option<u64> {
    if kept == 0 || response.status() != reqwest::StatusCode::PARTIAL_CONTENT {
        return None;
    }
    let range = response.headers().get(reqwest::header::CONTENT_RANGE)?.to_str().ok()?;
    let first = range.strip_prefix("bytes ")?.split('-').next()?.trim().parse::<u64>().ok()?;
    (first == kept).then_some(kept)
}

/// Feeds the first `length` bytes of `path` to `hasher`.
async fn hash_prefix(path: &Path, length: u64, hasher: &mut Sha256) -> std::io::Result<()> {
    let mut file = tokio::fs::File::open(path).await?.take(length);
    let mut buffer = vec![0u8; 256 << 10];
    loop {
        let read = file.read(&mut buffer).await?;
        if read == 0 {
            return Ok(());
        }
        hasher.update(&buffer[..read]);
    }
}

/// Writes the response body to `file` (at `partial`), at most `limit` bytes (else
/// the partial file is removed), telling `each` every chunk and the bytes so
/// far. The bytes received.
async fn write_body(
    response: &mut reqwest::Response,
    file: &mut tokio::fs::File,
    partial: &Path,
    shown: &str,
    limit: u64,
    each: &mut (dyn FnMut(&[u8], u64) + Send),
) -> Result<u64, DownloadError> {
    let mut received = 0u64;
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|error| DownloadError::Request { url: shown.to_owned(), detail: error_chain(&error) })?
    {
        received += chunk.len() as u64;
        if received > limit {
            let _ = tokio::fs::remove_file(partial).await;
            return Err(DownloadError::TooLarge { url: shown.to_owned(), limit });
        }
        each(&chunk, received);
        file.write_all(&chunk)
            .await
            .map_err(|source| DownloadError::Io { path: partial.to_owned(), source })?;
    }
    Ok(received)
}

/// An error with its causes (reqwest's own message often says only "error sending
/// request"), with any credentials in URLs hidden.
fn error_chain(error: &dyn std::error::Error) -> String {
    redact_credentials(&comfyfleet_proto::transport::error_chain(error))
}

#[cfg(test)]
mod tests;
