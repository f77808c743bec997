//! The package-cache calls of the operators' API: status, prune, and fill (fetch
//! everything every class of a revision needs, so that a rollout of it builds with
//! every upstream unreachable).

use std::collections::BTreeMap;
use std::sync::Arc;

use comfyfleet_config::lock::Lock;
use comfyfleet_config::spec::{Spec, SpecFormat};
use comfyfleet_proto::v1 as pb;
use futures_util::StreamExt;
use tokio::sync::mpsc;
use tonic::Status;

use crate::auth::Caller;
use crate::environment_service::find_revision;
use crate::fleet_service::internal;
use crate::package_cache::{CacheStatus, Opened, State};
use crate::state::ControllerState;
use crate::store::PackageFile;

/// Upstream downloads a fill runs at once.
const FILL_PARALLEL: usize = 4;

pub fn status_to_wire(status: CacheStatus) -> pb::CacheStatus {
    pb::CacheStatus {
        size_bytes: status.size_bytes,
        files: status.files,
        max_size_bytes: status.max_size_bytes,
        hits: status.hits,
        misses: status.misses,
        bytes_from_upstream: status.bytes_from_upstream,
        bytes_served: status.bytes_served,
        needed_files: status.needed_files,
        needed_bytes: status.needed_bytes,
        directory: status.directory,
    }
}

pub async fn prune(
    state: &ControllerState,
    caller: &Caller,
    request: pb::PruneCacheRequest,
) -> Result<pb::PruneCacheResponse, Status> {
    let (files_removed, bytes_freed) = state.packages.prune(request.all).await;
    let detail =
        format!("{files_removed} files, {bytes_freed} bytes{}", if request.all { " (all)" } else { "" });
    state.audit(&caller.actor(), "cache.prune", "package cache", &detail).await;
    Ok(pb::PruneCacheResponse {
        files_removed,
        bytes_freed,
        status: Some(status_to_wire(state.packages.status().await)),
    })
}

/// Every file a revision installs on any of its classes, and its git sources.
async fn revision_files(
    state: &ControllerState,
    spec: &Spec,
) -> Result<(Vec<PackageFile>, Vec<(String, String)>), Status> {
    let mut files: BTreeMap<String, PackageFile> = BTreeMap::new();
    for (class, digest) in &spec.lock.digests {
        let stored = state
            .store
            .lock(digest)
            .await
            .map_err(internal)?
            .ok_or_else(|| Status::internal(format!("the store has lost the lock of {class}")))?;
        let lock = Lock::from_json(&stored.lock_json).map_err(Status::internal)?;
        for package in lock.packages {
            files.entry(package.sha256.clone()).or_insert_with(|| PackageFile {
                sha256: package.sha256.clone(),
                url: package.url.clone(),
                file_name: package.file_name(),
                size: package.size,
            });
        }
    }
    for file in crate::locking::kernel_wheel_files(spec) {
        files.entry(file.sha256.clone()).or_insert(file);
    }
    // The pinned uv wheels, where apply found them on the spec's index.
    for (_, _, sha256) in comfyfleet_config::uv_pin::PINNED_UV_WHEELS {
        if let Some(file) = state.store.package_file(sha256).await.map_err(internal)? {
            files.entry(file.sha256.clone()).or_insert(file);
        }
    }
    let mut git = vec![(spec.comfyui.git.clone(), spec.comfyui.commit.clone().unwrap_or_default())];
    git.extend(
        spec.custom_nodes.iter().map(|node| (node.git.clone(), node.commit.clone().unwrap_or_default())),
    );
    Ok((files.into_values().collect(), git))
}

/// Starts filling the cache for a revision; progress arrives on the receiver, the
/// last message being an error if any file could not be cached.
pub async fn fill(
    state: Arc<ControllerState>,
    caller: &Caller,
    request: pb::FillCacheRequest,
) -> Result<mpsc::Receiver<Result<pb::FillCacheProgress, Status>>, Status> {
    let revision = find_revision(&state, &request.environment, &request.revision).await?;
    let spec = Spec::parse("stored spec", &revision.spec_json, SpecFormat::Json)
        .map_err(|errors| Status::internal(format!("a stored revision does not parse: {errors}")))?;
    let (files, git) = revision_files(&state, &spec).await?;
    let credentials = crate::environment_service::source_credentials(&state, &spec).await?;
    let target = format!("{}@{}", revision.environment, revision.number);
    state.audit(&caller.actor(), "cache.fill", &target, &format!("{} files", files.len())).await;
    let (sender, receiver) = mpsc::channel(64);
    tokio::spawn(async move {
        let mut progress = pb::FillCacheProgress {
            files_total: (files.len() + git.len()) as u64,
            bytes_total: files.iter().filter_map(|file| file.size).sum(),
            ..Default::default()
        };
        let upstream_before = state.packages.status().await.bytes_from_upstream;
        let _ = sender.send(Ok(progress.clone())).await;
        let mut failures = Vec::new();
        for (url, commit) in &git {
            progress.current = format!("{url} at {}", &commit[..commit.len().min(12)]);
            let _ = sender.send(Ok(progress.clone())).await;
            let made = match state.mirror.ensure(url, commit, &credentials).await {
                Ok(_) => {
                    state.mirror.bundle(&crate::git_mirror::repository_key(url), commit).await.map(|_| ())
                }
                Err(error) => Err(error),
            };
            if let Err(error) = made {
                failures.push(format!("{url}: {error}"));
            }
            progress.files_done += 1;
        }
        let packages = state.packages.clone();
        let mut fetches = futures_util::stream::iter(files.into_iter().map(|file| {
            let packages = packages.clone();
            async move {
                let result = match packages.open(&file.sha256).await {
                    Ok(Opened::Ready { size, .. }) => Ok(size),
                    Ok(Opened::Downloading { mut state, .. }) => loop {
                        let current = state.borrow_and_update().clone();
                        match current {
                            State::Verified { size } => break Ok(size),
                            State::Failed { message, .. } => break Err(message),
                            State::Downloading { .. } => {
                                if state.changed().await.is_err() {
                                    break Err("the download stopped".to_owned());
                                }
                            }
                        }
                    },
                    Err(error) => Err(error.to_string()),
                };
                (file, result)
            }
        }))
        .buffer_unordered(FILL_PARALLEL);
        while let Some((file, result)) = fetches.next().await {
            progress.files_done += 1;
            progress.current = file.file_name.clone();
            match result {
                Ok(size) => progress.bytes_done += size,
                Err(message) => failures.push(format!("{}: {message}", file.file_name)),
            }
            progress.bytes_from_upstream =
                packages.status().await.bytes_from_upstream.saturating_sub(upstream_before);
            if sender.send(Ok(progress.clone())).await.is_err() {
                // The operator went away; the downloads under way finish on their own.
                return;
            }
        }
        if !failures.is_empty() {
            let _ = sender
                .send(Err(Status::unavailable(format!(
                    "{} of {} could not be cached:\n{}",
                    failures.len(),
                    progress.files_total,
                    failures.join("\n")
                ))))
                .await;
        }
    });
    Ok(receiver)
}
