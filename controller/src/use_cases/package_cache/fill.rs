//! Filling the package cache for a revision: fetch everything every class of it
//! needs, and its git sources, so that a rollout of it builds with every upstream
//! unreachable. Progress goes to the caller as it happens.

use std::sync::Arc;

use comfyfleet_config::spec::{Spec, SpecFormat};
use futures_util::StreamExt;
use tokio::sync::mpsc;

use super::{Opened, State};
use crate::store::{PackageFile, StoreError};
use crate::use_cases::ControllerState;
use crate::use_cases::credentials::auth::Caller;
use crate::use_cases::environments::RevisionError;
use crate::use_cases::environments::revisions::{find_revision, source_credentials};

/// Upstream downloads a fill runs at once.
const FILL_PARALLEL: usize = 4;

/// How far a fill is: files and bytes, git sources, what it is at.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FillProgress {
    pub files_total: u64,
    pub files_done: u64,
    /// 0 unless every file's size is known.
    pub bytes_total: u64,
    pub bytes_done: u64,
    pub current: String,
    pub bytes_from_upstream: u64,
    pub sources_total: u64,
    pub sources_done: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum FillError {
    /// Some files or sources could not be fetched (the text lists them and what to do).
    #[error("{0}")]
    Incomplete(String),
    /// A controller fault: a stored revision that does not parse, files it cannot name.
    #[error("{0}")]
    Internal(String),
    #[error(transparent)]
    Revisions(#[from] RevisionError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Every file a revision installs on any of its classes, and its git sources.
async fn revision_files(
    state: &ControllerState,
    spec: &Spec,
) -> Result<(Vec<PackageFile>, Vec<(String, String)>), FillError> {
    let found =
        crate::use_cases::environments::revision_files::revision_files(state.store.as_ref(), spec).await?;
    if !found.problems.is_empty() {
        return Err(FillError::Internal(found.problems.join("; ")));
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
    environment: &str,
    revision: &str,
) -> Result<mpsc::Receiver<Result<FillProgress, FillError>>, FillError> {
    let revision = find_revision(&state, environment, revision).await?;
    let spec = Spec::parse("stored spec", &revision.spec_json, SpecFormat::Json)
        .map_err(|errors| FillError::Internal(format!("a stored revision does not parse: {errors}")))?;
    let (files, git) = revision_files(&state, &spec).await?;
    let credentials = source_credentials(&state, &spec).await?;
    let target = format!("{}@{}", revision.environment, revision.number);
    state.audit(&caller.actor(), "cache.fill", &target, &format!("{} files", files.len())).await;
    let (sender, receiver) = mpsc::channel(64);
    tokio::spawn(async move {
        // A total only when every size is known: a partial one reads as "of 0 B".
        let sizes: Option<Vec<u64>> = files.iter().map(|file| file.size).collect();
        let mut progress = FillProgress {
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
                .send(Err(FillError::Incomplete(fill_failure(&target, &progress, sources_failed, &failures))))
                .await;
        }
    });
    Ok(receiver)
}

/// What `cache fill` says when some of it failed: how much, each failure, what to do.
fn fill_failure(target: &str, progress: &FillProgress, sources_failed: u64, failures: &[String]) -> String {
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
