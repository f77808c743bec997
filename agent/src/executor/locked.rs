//! Installing a lock: every file of the machine's build class, fetched (through the
//! controller's package cache unless the agent was told otherwise), checked against
//! the lock's sha256 before uv sees it, and installed exactly, without resolving
//! (`--no-deps --require-hashes` from the verified local files).

use std::path::PathBuf;

use comfyfleet_config::lock::{Lock, LockedPackage};
use futures_util::StreamExt;

use super::uv::pip_install;
use super::{Build, PackageCacheClient};
use crate::download::DownloadError;
use crate::report::StepHandle;

/// Files fetched at once.
const PARALLEL: usize = 8;

/// A locked package and its verified file.
pub struct Fetched {
    pub package: LockedPackage,
    pub path: PathBuf,
}

/// Every file of `lock` in the agent's wheel cache, verified; bytes downloaded.
pub async fn fetch(
    build: &Build<'_>,
    step: &mut StepHandle,
    lock: &Lock,
) -> Result<(Vec<Fetched>, u64), String> {
    let total = lock.packages.len();
    let cache = build.tools.package_cache.as_ref();
    let mut fetched = Vec::with_capacity(total);
    let mut downloaded = 0u64;
    let mut missing = Vec::new();
    for package in &lock.packages {
        match build.tools.downloader.cached(&package.sha256, &package.file_name()) {
            Some(path) => fetched.push(Fetched { package: package.clone(), path }),
            None => missing.push(package.clone()),
        }
    }
    if !missing.is_empty() {
        step.progress(format!(
            "fetching {} of {total} locked files {}",
            missing.len(),
            if cache.is_some() { "through the controller's package cache" } else { "from upstream" }
        ));
    }
    let mut downloads = futures_util::stream::iter(missing.into_iter().map(|package| async move {
        let result = fetch_one(build, cache, &package).await;
        (package, result)
    }))
    .buffer_unordered(PARALLEL);
    let mut done = 0usize;
    while let Some((package, result)) = downloads.next().await {
        let file = result?;
        done += 1;
        downloaded += file.downloaded_bytes;
        step.progress(format!("fetched {} {} ({done} new files)", package.name, package.version));
        fetched.push(Fetched { package, path: file.path });
    }
    fetched.sort_by(|a, b| a.package.name.cmp(&b.package.name));
    Ok((fetched, downloaded))
}

async fn fetch_one(
    build: &Build<'_>,
    cache: Option<&PackageCacheClient>,
    package: &LockedPackage,
) -> Result<crate::download::Fetched, String> {
    let file_name = package.file_name();
    let (downloader, url) = match cache {
        Some(cache) => (cache.downloader.clone(), cache.file_url(&package.sha256, &file_name)),
        None => (build.direct_downloader(&package.url), package.url.clone()),
    };
    downloader
        .verified(&url, &package.sha256, &file_name, &mut |_, _| {})
        .await
        .map_err(|error| describe(package, cache.is_some(), &error))
}

/// A failed download of a locked file, naming the package, its URL and both hashes.
pub fn describe(package: &LockedPackage, through_cache: bool, error: &DownloadError) -> String {
    let via = if through_cache { " (through the controller's package cache)" } else { "" };
    match error {
        DownloadError::Sha256Mismatch { expected, actual, .. } => format!(
            "{} {}: the file from {}{via} has sha256 {actual}, but the lock requires {expected}: it changed \
             upstream or was tampered with; nothing from it was installed",
            package.name, package.version, package.url
        ),
        other => format!("{} {} ({}){via}: {other}", package.name, package.version, package.url),
    }
}

/// Installs exactly these verified files, without resolving anything: uv finds
/// each in its own verified directory (`cache/wheels/<sha256>/`, one
/// `--find-links` each, no index), pinned by version and hash. The venv records
/// ordinary installs of those versions, and because the paths never change, uv's
/// cache links a file it has unpacked before instead of unpacking it again.
pub async fn install(
    build: &Build<'_>,
    step: &mut StepHandle,
    files: &[&Fetched],
    name: &str,
) -> Result<String, String> {
    let mut text = String::new();
    let mut invocation =
        pip_install(build)?.args(["--no-deps", "--require-hashes", "--no-index", "--offline"]);
    for file in files {
        let directory =
            file.path.parent().ok_or_else(|| format!("{} has no directory", file.path.display()))?;
        invocation = invocation.arg("--find-links").arg(directory);
        text.push_str(&format!(
            "{}=={} --hash=sha256:{}\n",
            file.package.name, file.package.version, file.package.sha256
        ));
    }
    let list = build.env.meta().join(format!("{name}.lock.txt"));
    std::fs::write(&list, text).map_err(|error| format!("cannot write {}: {error}", list.display()))?;
    build.run(step, invocation.arg("-r").arg(&list)).await
}
