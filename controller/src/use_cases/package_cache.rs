//! The controller's pull-through package cache. Agents fetch every file a build
//! installs from here, by sha256, over the mutual-TLS identity they already hold:
//! the files of their class's lock and the spec's kernel wheels. A file is fetched
//! from upstream at most once per controller (concurrent first requests share one
//! download), checked against the sha256 its revision names before it is kept, and
//! kept by digest under `cache/files/`.
//!
//! Waiting agents are streamed the download as it arrives ([`crate::use_cases::package_cache::body`]),
//! except its last [`HOLDBACK`] bytes, which are sent only once the whole file has
//! verified: an agent can never receive a complete file whose bytes do not match (it
//! sees a truncated body, and checks the sha256 itself anyway).
//!
//! Upstream requests go through the [`UpstreamClient`], under the controller's
//! source policy; a failed download says only that upstream is unreachable (the
//! controller's log says why), whatever happened.
//!
//! An interrupted upstream download resumes where it stopped (HTTP range), within
//! the download and across controller restarts (`.partial` files). With
//! `--cache-max-size`, files no kept revision needs are evicted, least recently used
//! (by mtime, touched at every hit) first.

pub(crate) mod body;
pub mod fill;
pub(crate) mod index_page;
pub(crate) mod index_proxy;
pub(crate) mod source_access;

use std::collections::{HashMap, HashSet};
use std::io::SeekFrom;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use comfyfleet_config::text::Escaped;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};
use tokio::sync::watch;

use crate::store::{PackageFile, Store};
use crate::use_cases::sources::source_policy::SourcePolicy;
use crate::use_cases::sources::upstream_client::{UpstreamClient, detail, unreachable};

/// Bytes of an unverified download that are held back from waiting agents.
pub const HOLDBACK: u64 = 1 << 20;
/// Attempts at one upstream download (each resumes the last).
const ATTEMPTS: u32 = 4;
const READ_CHUNK: usize = 256 << 10;
/// Larger than any file a build installs (torch with CUDA is ~3 GiB).
const MAX_FILE_BYTES: u64 = 16 << 30;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    /// Bytes written to the partial file so far, and the size if known.
    Downloading {
        written: u64,
        total: Option<u64>,
    },
    Verified {
        size: u64,
    },
    /// Why; `integrity` when upstream's bytes do not match the sha256.
    Failed {
        message: String,
        integrity: bool,
    },
}

/// A file as the cache answers it.
pub enum Opened {
    /// On disk and verified.
    Ready { path: PathBuf, size: u64 },
    /// Being downloaded; follow the state.
    Downloading { partial: PathBuf, finished: PathBuf, state: watch::Receiver<State> },
}

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("`{0}` is not a sha256 (64 lowercase hex digits)")]
    BadDigest(String),
    #[error("no stored revision installs a file with sha256 {0}: the cache serves only what revisions name")]
    Unknown(String),
    #[error("{0}")]
    Store(String),
    /// A download of it failed a moment ago: said again rather than tried again.
    #[error("{message}")]
    Refused { message: String, integrity: bool },
}

#[derive(Default)]
struct Counters {
    hits: AtomicU64,
    misses: AtomicU64,
    bytes_from_upstream: AtomicU64,
    bytes_served: AtomicU64,
}

pub struct PackageCache {
    dir: PathBuf,
    max_size: Option<u64>,
    upstream: UpstreamClient,
    store: Arc<dyn Store>,
    inflight: Mutex<HashMap<String, watch::Receiver<State>>>,
    /// Recent failures by sha256: agents asking again (after their stream was cut)
    /// hear the reason instead of causing another upstream download.
    failures: Mutex<HashMap<String, (std::time::Instant, String, bool)>>,
    counters: Counters,
    /// The source credentials upstream requests carry (none in unit tests).
    secrets: Option<Arc<crate::use_cases::source_secrets::SourceSecrets>>,
}

/// How long a failure is repeated rather than retried: long for bytes that did not
/// match (a new apply or a fixed upstream is needed), short for upstream errors.
const REMEMBER_MISMATCH: Duration = Duration::from_secs(60);
const REMEMBER_ERROR: Duration = Duration::from_secs(5);

/// What `comfyfleet cache status` shows.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CacheStatus {
    pub size_bytes: u64,
    pub files: u64,
    pub max_size_bytes: u64,
    pub hits: u64,
    pub misses: u64,
    pub bytes_from_upstream: u64,
    pub bytes_served: u64,
    pub needed_files: u64,
    pub needed_bytes: u64,
    pub directory: String,
}

pub fn is_sha256(text: &str) -> bool {
    text.len() == 64 && text.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

impl PackageCache {
    pub fn new(
        dir: PathBuf,
        max_size: Option<u64>,
        store: Arc<dyn Store>,
        policy: SourcePolicy,
    ) -> Result<Self, String> {
        Self::with_secrets(dir, max_size, store, policy, None)
    }

    /// A cache whose upstream requests carry the source credentials of the kept
    /// revisions' hosts.
    pub fn with_secrets(
        dir: PathBuf,
        max_size: Option<u64>,
        store: Arc<dyn Store>,
        policy: SourcePolicy,
        secrets: Option<Arc<crate::use_cases::source_secrets::SourceSecrets>>,
    ) -> Result<Self, String> {
        for sub in ["files", "partial"] {
            std::fs::create_dir_all(dir.join(sub))
                .map_err(|error| format!("cannot create {}: {error}", dir.join(sub).display()))?;
        }
        // Index pages kept by earlier versions held upstream's bytes as they came.
        let _ = std::fs::remove_dir_all(dir.join("pages"));
        Ok(Self {
            dir,
            max_size,
            upstream: UpstreamClient::new(policy)?,
            store,
            inflight: Mutex::new(HashMap::new()),
            failures: Mutex::new(HashMap::new()),
            counters: Counters::default(),
            secrets,
        })
    }

    pub fn directory(&self) -> &Path {
        &self.dir
    }

    /// The policy-checked HTTP client every upstream request goes through.
    pub fn upstream(&self) -> &UpstreamClient {
        &self.upstream
    }

    /// The `Authorization` header for an upstream request to `url`: the source
    /// credential a kept revision binds to its host, if any.
    pub async fn authorization(&self, url: &str) -> Option<String> {
        let secrets = self.secrets.as_ref()?;
        match secrets.fleet_credentials().await {
            Ok(credentials) => credentials.authorization(url),
            Err(error) => {
                tracing::warn!(error = %Escaped(&error), "cannot read the source credentials; fetching without one");
                None
            }
        }
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    fn file_path(&self, sha256: &str) -> PathBuf {
        self.dir.join("files").join(sha256)
    }

    fn partial_path(&self, sha256: &str) -> PathBuf {
        self.dir.join("partial").join(sha256)
    }

    pub fn count_served(&self, bytes: u64) {
        self.counters.bytes_served.fetch_add(bytes, Ordering::Relaxed);
    }

    /// The file with this sha256: from disk, or from the one upstream download of it.
    pub async fn open(self: &Arc<Self>, sha256: &str) -> Result<Opened, CacheError> {
        if !is_sha256(sha256) {
            return Err(CacheError::BadDigest(comfyfleet_config::spec::names::printable(sha256)));
        }
        let path = self.file_path(sha256);
        if let Ok(meta) = std::fs::metadata(&path) {
            touch(&path);
            self.counters.hits.fetch_add(1, Ordering::Relaxed);
            return Ok(Opened::Ready { path, size: meta.len() });
        }
        if let Some((at, message, integrity)) =
            self.failures.lock().unwrap_or_else(PoisonError::into_inner).get(sha256).cloned()
        {
            let remember = if integrity { REMEMBER_MISMATCH } else { REMEMBER_ERROR };
            if at.elapsed() < remember {
                return Err(CacheError::Refused { message, integrity });
            }
        }
        let source = self
            .store
            .package_file(sha256)
            .await
            .map_err(|error| CacheError::Store(error.to_string()))?
            .ok_or_else(|| CacheError::Unknown(sha256.to_owned()))?;
        Ok(self.download(source))
    }

    /// Joins the download of `source`, starting it if none runs.
    fn download(self: &Arc<Self>, source: PackageFile) -> Opened {
        let finished = self.file_path(&source.sha256);
        let partial = self.partial_path(&source.sha256);
        let mut inflight = self.inflight.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(state) = inflight.get(&source.sha256) {
            return Opened::Downloading { partial, finished, state: state.clone() };
        }
        if let Ok(meta) = std::fs::metadata(&finished) {
            // Finished between the first look and taking the lock.
            return Opened::Ready { path: finished, size: meta.len() };
        }
        self.counters.misses.fetch_add(1, Ordering::Relaxed);
        let (sender, receiver) = watch::channel(State::Downloading { written: 0, total: source.size });
        inflight.insert(source.sha256.clone(), receiver.clone());
        drop(inflight);
        let cache = self.clone();
        // Its own task: an agent that gives up does not stop the download others wait for.
        tokio::spawn(async move {
            let result = cache.fetch_upstream(&source, &sender).await;
            let state = match result {
                Ok(size) => {
                    cache.failures.lock().unwrap_or_else(PoisonError::into_inner).remove(&source.sha256);
                    tracing::info!(url = %Escaped(&source.url), sha256 = %source.sha256, size, "cached from upstream");
                    State::Verified { size }
                }
                Err(Failure { message, integrity }) => {
                    tracing::warn!(url = %Escaped(&source.url), message = %Escaped(&message), "cannot cache a file");
                    cache.failures.lock().unwrap_or_else(PoisonError::into_inner).insert(
                        source.sha256.clone(),
                        (std::time::Instant::now(), message.clone(), integrity),
                    );
                    State::Failed { message, integrity }
                }
            };
            let _ = sender.send(state);
            cache.inflight.lock().unwrap_or_else(PoisonError::into_inner).remove(&source.sha256);
            cache.evict().await;
        });
        Opened::Downloading { partial, finished, state: receiver }
    }

    /// Downloads `source` into its partial file, resuming, checks its sha256 and
    /// moves it into place. The size on success.
    async fn fetch_upstream(
        &self,
        source: &PackageFile,
        state: &watch::Sender<State>,
    ) -> Result<u64, Failure> {
        let partial = self.partial_path(&source.sha256);
        let mut last_error = String::new();
        for attempt in 1..=ATTEMPTS {
            match self.fetch_attempt(source, &partial, state).await {
                Ok(()) => {
                    last_error.clear();
                    break;
                }
                Err(Attempt::Fatal(message)) => {
                    let _ = std::fs::remove_file(&partial);
                    return Err(Failure { message, integrity: false });
                }
                Err(Attempt::Retry(message)) => {
                    tracing::info!(url = %Escaped(&source.url), attempt, message = %Escaped(&message), "upstream download interrupted; resuming");
                    last_error = message;
                    tokio::time::sleep(Duration::from_millis(200 * u64::from(attempt))).await;
                }
            }
        }
        let failed = |message: String| Failure { message, integrity: false };
        if !last_error.is_empty() {
            return Err(failed(unreachable(
                &source.url,
                &format!("{ATTEMPTS} attempts; the last: {last_error}"),
            )));
        }
        let (actual, size) = hash_file(&partial)
            .await
            .map_err(|error| failed(format!("cannot read {}: {error}", partial.display())))?;
        if actual != source.sha256 {
            let _ = std::fs::remove_file(&partial);
            return Err(Failure {
                message: format!(
                    "the file at {} has sha256 {actual}, but the revision requires {}: it changed upstream or was \
                     tampered with; the cache refused it and serves nothing for it",
                    source.url, source.sha256
                ),
                integrity: true,
            });
        }
        let finished = self.file_path(&source.sha256);
        std::fs::rename(&partial, &finished)
            .map_err(|error| failed(format!("cannot keep {}: {error}", finished.display())))?;
        Ok(size)
    }

    async fn fetch_attempt(
        &self,
        source: &PackageFile,
        partial: &Path,
        state: &watch::Sender<State>,
    ) -> Result<(), Attempt> {
        let io =
            |error: std::io::Error| Attempt::Fatal(format!("cannot write {}: {error}", partial.display()));
        let have = std::fs::metadata(partial).map(|meta| meta.len()).unwrap_or(0);
        // A source the policy refuses (a revision stored before the policy changed)
        // is not asked, and says so.
        let mut request = self.upstream.get(&source.url).await.map_err(Attempt::Fatal)?;
        if let Some(authorization) = self.authorization(&source.url).await {
            request = request.header(reqwest::header::AUTHORIZATION, authorization);
        }
        if have > 0 {
            request = request.header(reqwest::header::RANGE, format!("bytes={have}-"));
        }
        // Every failure upstream is retried alike, so neither the words nor the
        // number of attempts tell a closed port from an error status.
        let mut response = request
            .send()
            .await
            .map_err(|error| Attempt::Retry(format!("cannot reach it: {}", detail(&error))))?;
        let status = response.status();
        let resumed = status == reqwest::StatusCode::PARTIAL_CONTENT && have > 0;
        if status == reqwest::StatusCode::RANGE_NOT_SATISFIABLE {
            // The partial file is already whole (or longer than the file): start over.
            let _ = std::fs::remove_file(partial);
            return Err(Attempt::Retry("it answered 416 to a resume".to_owned()));
        }
        if !status.is_success() {
            return Err(Attempt::Retry(format!("it answered {status}")));
        }
        let total = response
            .content_length()
            .map(|length| if resumed { length + have } else { length })
            .or(source.size);
        let limit = crate::use_cases::environments::model_files::size_limit(source, MAX_FILE_BYTES);
        if total.is_some_and(|total| total > limit) {
            return Err(Attempt::Fatal(format!("{} is larger than {limit} bytes; refusing it", source.url)));
        }
        let mut file = tokio::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(!resumed)
            .open(partial)
            .await
            .map_err(io)?;
        let mut written = if resumed { file.seek(SeekFrom::End(0)).await.map_err(io)? } else { 0 };
        let _ = state.send(State::Downloading { written, total });
        loop {
            let chunk = response
                .chunk()
                .await
                .map_err(|error| Attempt::Retry(format!("reading it: {}", detail(&error))))?;
            let Some(chunk) = chunk else { break };
            file.write_all(&chunk).await.map_err(io)?;
            written += chunk.len() as u64;
            self.counters.bytes_from_upstream.fetch_add(chunk.len() as u64, Ordering::Relaxed);
            if written > limit {
                return Err(Attempt::Fatal(format!(
                    "{} is larger than {limit} bytes; refusing it",
                    source.url
                )));
            }
            file.flush().await.map_err(io)?;
            let _ = state.send(State::Downloading { written, total });
        }
        file.sync_all().await.map_err(io)?;
        if let Some(total) = total
            && written < total
        {
            return Err(Attempt::Retry(format!("it ended after {written} of {total} bytes")));
        }
        Ok(())
    }

    /// Size, file count and counters, and how much kept revisions need.
    pub async fn status(&self) -> CacheStatus {
        let files = self.files_on_disk();
        let needed = self.needed().await.unwrap_or_default();
        let needed_files: Vec<&(String, u64, std::time::SystemTime)> =
            files.iter().filter(|(sha, ..)| needed.contains(sha)).collect();
        CacheStatus {
            size_bytes: files.iter().map(|(_, size, _)| size).sum(),
            files: files.len() as u64,
            max_size_bytes: self.max_size.unwrap_or(0),
            hits: self.counters.hits.load(Ordering::Relaxed),
            misses: self.counters.misses.load(Ordering::Relaxed),
            bytes_from_upstream: self.counters.bytes_from_upstream.load(Ordering::Relaxed),
            bytes_served: self.counters.bytes_served.load(Ordering::Relaxed),
            needed_files: needed_files.len() as u64,
            needed_bytes: needed_files.iter().map(|(_, size, _)| size).sum(),
            directory: self.dir.display().to_string(),
        }
    }

    /// Every cached file: sha256, size, last use.
    fn files_on_disk(&self) -> Vec<(String, u64, std::time::SystemTime)> {
        let Ok(entries) = std::fs::read_dir(self.dir.join("files")) else { return Vec::new() };
        entries
            .filter_map(Result::ok)
            .filter_map(|entry| {
                let name = entry.file_name().into_string().ok()?;
                let meta = entry.metadata().ok()?;
                (is_sha256(&name) && meta.is_file())
                    .then(|| (name, meta.len(), meta.modified().unwrap_or(std::time::UNIX_EPOCH)))
            })
            .collect()
    }

    /// The sha256 of every file a kept revision (each environment's newest, every
    /// assigned one) installs ([`crate::use_cases::environments::revision_files`]: the set `cache fill` fetches).
    pub async fn needed(&self) -> Result<HashSet<String>, String> {
        let specs = self.store.kept_revision_specs().await.map_err(|error| error.to_string())?;
        let mut needed = HashSet::new();
        for text in specs {
            let Ok(spec) =
                comfyfleet_config::Spec::parse("stored spec", &text, comfyfleet_config::SpecFormat::Json)
            else {
                continue;
            };
            // What could be read is kept; a lock that cannot be is `cache fill`'s error.
            let found =
                crate::use_cases::environments::revision_files::revision_files(self.store.as_ref(), &spec)
                    .await
                    .map_err(|error| error.to_string())?;
            needed.extend(found.files.into_keys());
        }
        Ok(needed)
    }

    /// Removes files: those no kept revision needs, or every one with `all`.
    pub async fn prune(&self, all: bool) -> (u64, u64) {
        let needed = if all {
            HashSet::new()
        } else {
            match self.needed().await {
                Ok(needed) => needed,
                // Without knowing what is needed, nothing is removed.
                Err(error) => {
                    tracing::warn!(error = %Escaped(&error), "cannot tell what kept revisions need; nothing pruned");
                    return (0, 0);
                }
            }
        };
        let mut removed = (0, 0);
        for (sha, size, _) in self.files_on_disk() {
            if !needed.contains(&sha) && std::fs::remove_file(self.file_path(&sha)).is_ok() {
                removed.0 += 1;
                removed.1 += size;
            }
        }
        removed
    }

    /// Under `--cache-max-size`: removes files no kept revision needs, least
    /// recently used first, until the cache fits.
    async fn evict(&self) {
        let Some(max) = self.max_size else { return };
        let mut files = self.files_on_disk();
        let mut size: u64 = files.iter().map(|(_, size, _)| size).sum();
        if size <= max {
            return;
        }
        let Ok(needed) = self.needed().await else { return };
        files.sort_by_key(|(_, _, used)| *used);
        for (sha, file_size, _) in files {
            if size <= max {
                return;
            }
            if needed.contains(&sha) {
                continue;
            }
            if std::fs::remove_file(self.file_path(&sha)).is_ok() {
                tracing::info!(sha256 = %sha, bytes = file_size, "evicted from the package cache");
                size -= file_size;
            }
        }
        if size > max {
            tracing::warn!(
                size,
                max,
                "the package cache is over --cache-max-size with files kept revisions need"
            );
        }
    }
}

/// Why a file could not be cached.
struct Failure {
    message: String,
    integrity: bool,
}

enum Attempt {
    Retry(String),
    Fatal(String),
}

fn touch(path: &Path) {
    if let Ok(file) = std::fs::File::options().append(true).open(path) {
        let _ = file.set_modified(std::time::SystemTime::now());
    }
}

async fn hash_file(path: &Path) -> std::io::Result<(String, u64)> {
    let mut file = tokio::fs::File::open(path).await?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; READ_CHUNK];
    let mut size = 0u64;
    loop {
        let read = file.read(&mut buffer).await?;
        if read == 0 {
            break;
        }
        hasher.update(&buffer[..read]);
        size += read as u64;
    }
    Ok((hex::encode(hasher.finalize()), size))
}

#[cfg(test)]
mod tests;
