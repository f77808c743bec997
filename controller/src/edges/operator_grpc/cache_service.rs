//! The package-cache calls of the operators' API: status, prune, and fill (the use
//! case is `use_cases::package_cache::fill`; its progress is converted here).

use std::sync::Arc;

use comfyfleet_proto::v1 as pb;
use tonic::Status;

use crate::use_cases::ControllerState;
use crate::use_cases::credentials::auth::Caller;
use crate::use_cases::package_cache::CacheStatus;
use crate::use_cases::package_cache::fill::{FillError, FillProgress};

/// The stream `FillCache` answers with: the use case's progress, converted.
pub type FillStream = futures_util::stream::Map<
    tokio_stream::wrappers::ReceiverStream<Result<FillProgress, FillError>>,
    fn(Result<FillProgress, FillError>) -> Result<pb::FillCacheProgress, Status>,
>;

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

/// Starts filling the cache for a revision; progress arrives on the stream, the
/// last message being an error if any file could not be cached.
pub async fn fill(
    state: Arc<ControllerState>,
    caller: &Caller,
    request: pb::FillCacheRequest,
) -> Result<FillStream, Status> {
    use futures_util::StreamExt;
    let receiver =
        crate::use_cases::package_cache::fill::fill(state, caller, &request.environment, &request.revision)
            .await?;
    let convert: fn(Result<FillProgress, FillError>) -> Result<pb::FillCacheProgress, Status> =
        |item| item.map(progress_to_wire).map_err(Status::from);
    Ok(tokio_stream::wrappers::ReceiverStream::new(receiver).map(convert))
}

fn progress_to_wire(progress: FillProgress) -> pb::FillCacheProgress {
    pb::FillCacheProgress {
        files_total: progress.files_total,
        files_done: progress.files_done,
        bytes_total: progress.bytes_total,
        bytes_done: progress.bytes_done,
        current: progress.current,
        bytes_from_upstream: progress.bytes_from_upstream,
        sources_total: progress.sources_total,
        sources_done: progress.sources_done,
    }
}
