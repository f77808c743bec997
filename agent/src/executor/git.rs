//! The `comfyui` and `custom-nodes` steps: each repository checked out at the commit
//! the revision pinned. Commits are fetched once per machine into a bare cache
//! repository (`cache/git/`) and checked out from there, so a new revision with the
//! same ComfyUI commit (a torch upgrade) fetches nothing over the network.
//!
//! git runs without a shell or prompts; its `ext::` and `fd::` transports, which run
//! commands, are switched off (the spec refuses such URLs already).

use std::path::{Path, PathBuf};
use std::time::Duration;

use sha2::{Digest, Sha256};

use super::{Build, StepOutcome, StepResult};
use crate::command::Invocation;
use crate::report::StepHandle;

const GIT_TIMEOUT: Duration = Duration::from_secs(600);

pub async fn comfyui(build: &Build<'_>, step: &mut StepHandle) -> StepResult {
    let spec = &build.assignment.spec;
    let commit = build.assignment.comfyui_commit();
    let how = checkout(build, step, &spec.comfyui.git, commit, &build.env.comfyui()).await?;
    Ok(how.outcome(format!("ComfyUI at {} ({})", short(commit), spec.comfyui.reference)))
}

pub async fn custom_nodes(build: &Build<'_>, step: &mut StepHandle) -> StepResult {
    let nodes = &build.assignment.spec.custom_nodes;
    if nodes.is_empty() {
        return Ok(StepOutcome::skipped("the spec has no custom nodes"));
    }
    let mut fetched = Vec::new();
    let mut all_present = true;
    for node in nodes {
        let name = node.directory_name();
        let commit = node.commit.as_deref().unwrap_or_default();
        step.progress(format!("{name} at {}", short(commit)));
        let how = checkout(build, step, &node.git, commit, &build.env.custom_node(&name)).await?;
        all_present &= matches!(how, Checkout::Present);
        fetched.push(format!("{name} at {}", short(commit)));
    }
    let detail = fetched.join(", ");
    Ok(if all_present { StepOutcome::skipped(detail) } else { StepOutcome::done(detail) })
}

enum Checkout {
    /// The checkout was already there, at that commit, unmodified.
    Present,
    Made,
}

impl Checkout {
    fn outcome(&self, detail: String) -> StepOutcome {
        match self {
            Checkout::Present => StepOutcome::skipped(detail),
            Checkout::Made => StepOutcome::done(detail),
        }
    }
}

fn short(commit: &str) -> &str {
    commit.get(..12).unwrap_or(commit)
}

fn git(build: &Build<'_>) -> Invocation {
    Invocation::new("git")
        .args([
            "-c",
            "protocol.ext.allow=never",
            "-c",
            "protocol.fd.allow=never",
            "-c",
            "advice.detachedHead=false",
        ])
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_ASKPASS", "")
        .envs(build.credentials.git_env())
        .timeout(GIT_TIMEOUT)
        .cwd(build.layout.root())
}

/// The bare cache repository for `url`.
fn cache_repository(build: &Build<'_>, url: &str) -> PathBuf {
    let digest = hex::encode(Sha256::digest(url.as_bytes()));
    build.layout.git_cache().join(format!("{}.git", &digest[..16]))
}

/// Puts a checkout of `url` at `commit` in `dest`.
async fn checkout(
    build: &Build<'_>,
    step: &mut StepHandle,
    url: &str,
    commit: &str,
    dest: &Path,
) -> Result<Checkout, String> {
    if !build.repair && is_clean_checkout(build, step, dest, commit).await {
        return Ok(Checkout::Present);
    }
    if dest.exists() {
        std::fs::remove_dir_all(dest)
            .map_err(|error| format!("cannot remove {}: {error}", dest.display()))?;
    }
    let cache = cache_repository(build, url);
    if !cache.join("HEAD").is_file() {
        build.run(step, git(build).args(["init", "--quiet", "--bare"]).arg(&cache)).await?;
    }
    if !has_commit(build, step, &cache, commit).await
        && let Some(package_cache) = &build.tools.package_cache
    {
        // A machine needs nothing but the controller: the commit comes as a bundle.
        let bundle_url = package_cache.bundle_url(url, commit);
        step.progress(format!("fetching {} of {url} from the controller's package cache", short(commit)));
        let bundle = cache.with_extension(format!("{commit}.bundle"));
        package_cache.downloader.to_file(&bundle_url, &bundle).await.map_err(|error| error.to_string())?;
        let fetched = build
            .run(
                step,
                git(build)
                    .arg("--git-dir")
                    .arg(&cache)
                    .args(["fetch", "--quiet", "--no-tags"])
                    .arg(&bundle)
                    .arg(format!("+refs/comfyfleet/{commit}:refs/comfyfleet/{commit}")),
            )
            .await;
        let _ = std::fs::remove_file(&bundle);
        fetched.map_err(|error| format!("the controller's bundle of {url} at {commit}: {error}"))?;
    }
    if !has_commit(build, step, &cache, commit).await {
        step.progress(format!("fetching {} from {url}", short(commit)));
        let by_commit = git(build)
            .arg("--git-dir")
            .arg(&cache)
            .args(["fetch", "--quiet", "--depth", "1", "--no-tags", url])
            .arg(format!("+{commit}:refs/comfyfleet/{commit}"));
        if build.run(step, by_commit).await.is_err() {
            // Some servers refuse to serve a commit by id: fetch every branch and tag.
            let everything = git(build).arg("--git-dir").arg(&cache).args([
                "fetch",
                "--quiet",
                "--no-tags",
                url,
                "+refs/heads/*:refs/heads/*",
                "+refs/tags/*:refs/tags/*",
            ]);
            build.run(step, everything).await?;
        }
        if !has_commit(build, step, &cache, commit).await {
            return Err(format!(
                "{url} has no commit {commit}; apply the spec again to pin a commit that exists"
            ));
        }
    }
    let parent = dest.parent().ok_or("a checkout needs a parent directory")?;
    std::fs::create_dir_all(parent)
        .map_err(|error| format!("cannot create {}: {error}", parent.display()))?;
    build.run(step, git(build).args(["init", "--quiet"]).arg(dest)).await?;
    let from_cache = format!("file://{}", cache.display());
    build
        .run(step, git(build).cwd(dest).args(["fetch", "--quiet", "--depth", "1", &from_cache, commit]))
        .await?;
    build.run(step, git(build).cwd(dest).args(["checkout", "--quiet", "--detach", commit])).await?;
    // For people who look inside: where the code came from.
    build.run(step, git(build).cwd(dest).args(["remote", "add", "origin", url])).await?;
    Ok(Checkout::Made)
}

async fn has_commit(build: &Build<'_>, step: &mut StepHandle, cache: &Path, commit: &str) -> bool {
    let check =
        git(build).arg("--git-dir").arg(cache).args(["cat-file", "-e"]).arg(format!("{commit}^{{commit}}"));
    build.run(step, check).await.is_ok()
}

/// Whether `dest` is a checkout of `commit` with no tracked file changed.
async fn is_clean_checkout(build: &Build<'_>, step: &mut StepHandle, dest: &Path, commit: &str) -> bool {
    if crate::complete_record::head_commit(dest).as_deref() != Some(commit) {
        return false;
    }
    let status = git(build).cwd(dest).args(["status", "--porcelain", "--untracked-files=no"]);
    matches!(build.run(step, status).await, Ok(output) if output.trim().is_empty())
}
