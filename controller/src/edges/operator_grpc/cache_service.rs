//! The package-cache calls of the operators' API: status, prune, and fill (fetch
//! everything every class of a revision needs, so that a rollout of it builds with
//! every upstream unreachable).

use std::sync::Arc;

use comfyfleet_config::spec::{Spec, SpecFormat};
use comfyfleet_proto::v1 as pb;
use futures_util::StreamExt;
use tokio::sync::mpsc;
use tonic::Status;

use crate::edges::grpc_status::internal;
use crate::store::PackageFile;
use crate::use_cases::ControllerState;
use crate::use_cases::credentials::auth::Caller;
use crate::use_cases::environments::revisions::{find_revision, source_credentials};
use crate::use_cases::package_cache::{CacheStatus, Opened, State};

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
    let found = crate::use_cases::environments::revision_files::revision_files(state.store.as_ref(), spec)
        .await
        .map_err(internal)?;
    if !found.problems.is_empty() {
        return Err(Status::internal(found.problems.join("; ")));
    }
    let mut git = vec![(spec.comfyui.git.clone(), spec.comfyui.commit.clone().unwrap_or_default())];
    git.extend(
        spec.custom_nodes.iter().map(|node| (node.git.clone(), node.commit.clone().unwrap_or_default())),
    );
    Ok((found.files.into_values().collect(), git))
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
    let credentials = source_credentials(&state, &spec).await?;
    let target = format!("{}@{}", revision.environment, revision.number);
    state.audit(&caller.actor(), "cache.fill", &target, &format!("{} files", files.len())).await;
    let (sender, receiver) = mpsc::channel(64);
    tokio::spawn(async move {
        // A total only when every size is known: a partial one reads as "of 0 B".
        let sizes: Option<Vec<u64>> = files.iter().map(|file| file.size).collect();
        let mut progress = pb::FillCacheProgress {
            files_total: files.len() as u64,
            bytes_total: sizes.map_or(0, |sizes| sizes.iter().sum()),
            sources_total: git.len() as u64,
            ..Default::default()
        };
        let upstream_before = state.packages.status().await.bytes_from_upstream;
        let _ = sender.send(Ok(progress.clone())).await;
        let mut failures = Vec::new();
        let mut sources_failed = 0;
        for (url, commit) in &git {
            progress.current = format!("{url} at {}", &commit[..commit.len().min(12)]);
            let _ = sender.send(Ok(progress.clone())).await;
            let made = match state.mirror.ensure(url, commit, &credentials).await {
                Ok(_) => state
                    .mirror
                    .bundle(&crate::use_cases::sources::git_mirror::repository_key(url), commit)
                    .await
                    .map(|_| ()),
                Err(error) => Err(error),
            };
            if let Err(error) = made {
                failures.push(format!("{url}: {error}"));
                sources_failed += 1;
            }
            progress.sources_done += 1;
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
            // Not "unavailable": the controller answered; what it fetches from did not.
            let _ = sender
                .send(Err(Status::failed_precondition(fill_failure(
                    &target,
                    &progress,
                    sources_failed,
                    &failures,
                ))))
                .await;
        }
    });
    Ok(receiver)
}

/// What `cache fill` says when some of it failed: how much, each failure, what to do.
fn fill_failure(
    target: &str,
    progress: &pb::FillCacheProgress,
    sources_failed: u64,
    failures: &[String],
) -> String {
    let files_failed = failures.len() as u64 - sources_failed;
    let mut parts = Vec::new();
    if files_failed > 0 {
        parts.push(format!("{files_failed} of {} files", progress.files_total));
    }
    if sources_failed > 0 {
        parts.push(format!("{sources_failed} of {} git sources", progress.sources_total));
    }
    format!(
        "{} of {target} could not be cached (the rest are):\n{}\ncheck that the controller can reach them (its \
         log says what failed) and run `comfyfleet cache fill {target}` again",
        parts.join(" and "),
        failures.join("\n")
    )
}
