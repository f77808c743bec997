//! The `uv` step: the uv binary every later step runs. `--uv PATH` if given, else
//! `uv` on PATH, else the pinned uv wheel fetched from the spec's package index
//! (`index.url`, so an air-gapped farm's mirror serves it too), checked against the
//! sha256 built into this agent, and unpacked under `tools/`.
//!
//! Also the flags every `uv pip install` shares.

use std::ffi::OsString;
use std::io::Read;
use std::path::{Path, PathBuf};

use super::{Build, StepOutcome, StepResult};
use crate::command::Invocation;
use crate::report::StepHandle;

pub use comfyfleet_config::uv_pin::PINNED_UV_VERSION;
use comfyfleet_config::uv_pin::{PINNED_UV_WHEELS, find_link, join_url};

/// The oldest uv whose flags the executor uses (`--default-index`, `--index`).
const MINIMUM_UV: (u64, u64) = (0, 5);

pub async fn find_or_fetch(build: &mut Build<'_>, step: &mut StepHandle) -> StepResult {
    let (uv, how) = if let Some(path) = &build.tools.uv_override {
        (path.clone(), "--uv".to_owned())
    } else if let Some(path) = find_on_path("uv") {
        (path, "on PATH".to_owned())
    } else {
        let fetched = pinned_binary(build.layout.tools().as_path());
        if fetched.is_file() {
            (fetched, format!("fetched earlier (pinned {PINNED_UV_VERSION})"))
        } else {
            step.progress(format!(
                "no uv on PATH: fetching uv {PINNED_UV_VERSION} from {}",
                build.assignment.spec.index.url
            ));
            let from = fetch_pinned(build, step).await?;
            (fetched, format!("fetched from {from}, sha256 verified (pinned {PINNED_UV_VERSION})"))
        }
    };
    let version = build.run(step, Invocation::new(&uv).arg("--version")).await?;
    let version = version.lines().last().unwrap_or_default().trim().to_owned();
    check_version(&version, &uv)?;
    let detail = format!("{version} ({how}: {})", uv.display());
    build.uv = Some(uv);
    Ok(StepOutcome::done(detail))
}

fn pinned_binary(tools: &Path) -> PathBuf {
    tools.join(format!("uv-{PINNED_UV_VERSION}")).join("uv")
}

/// The first executable `name` in the agent's PATH.
fn find_on_path(name: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|dir| dir.join(name)).find(|candidate| {
        std::fs::metadata(candidate)
            .is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
    })
}

/// `uv 0.13.9 (x86_64-unknown-linux-gnu)` must be at least [`MINIMUM_UV`].
fn check_version(version: &str, uv: &Path) -> Result<(), String> {
    let number = version.split_whitespace().nth(1).unwrap_or_default();
    let mut parts = number.split('.').map(|part| part.parse::<u64>().ok());
    let (Some(Some(major)), Some(Some(minor))) = (parts.next(), parts.next()) else {
        return Err(format!("{} printed `{version}`, which is not a uv version", uv.display()));
    };
    if (major, minor) < MINIMUM_UV {
        return Err(format!(
            "{} is uv {number}, older than the {}.{} comfyfleet needs: upgrade it, or take it off the agent's \
             PATH so the agent fetches uv {PINNED_UV_VERSION}",
            uv.display(),
            MINIMUM_UV.0,
            MINIMUM_UV.1
        ));
    }
    Ok(())
}

/// Fetches and unpacks the pinned uv; says where it came from.
async fn fetch_pinned(build: &Build<'_>, step: &mut StepHandle) -> Result<&'static str, String> {
    let arch = std::env::consts::ARCH;
    let (_, file_name, sha256) = PINNED_UV_WHEELS.iter().find(|(a, _, _)| *a == arch).ok_or_else(|| {
        format!("comfyfleet pins no uv wheel for {arch}: install uv on this machine and start the agent with --uv PATH")
    })?;
    // The controller's package cache first: it has the pinned wheel when a revision
    // was applied against an index that lists it.
    if let Some(cache) = &build.tools.package_cache {
        let url = cache.file_url(sha256, file_name);
        match cache.downloader.verified(&url, sha256, file_name, &mut |_, _| {}).await {
            Ok(fetched) => {
                let target = pinned_binary(&build.layout.tools());
                let wheel = fetched.path.clone();
                tokio::task::spawn_blocking(move || extract_uv(&wheel, &target))
                    .await
                    .map_err(|error| format!("unpacking uv stopped: {error}"))??;
                return Ok("the controller's package cache");
            }
            Err(error) if error.is_integrity() => return Err(error.to_string()),
            Err(error) => {
                step.progress(format!("the controller's package cache has no uv ({error}); trying the index"))
            }
        }
    }
    // The index itself, or the controller's copy of its pages.
    let (downloader, index, from) = match &build.tools.package_cache {
        Some(cache) => (
            &cache.downloader,
            cache.index_url(&build.assignment.spec.index.url),
            "the controller's package cache",
        ),
        None => (
            &build.direct_downloader(&build.assignment.spec.index.url),
            build.assignment.spec.index.url.trim_end_matches('/').to_owned(),
            "the package index",
        ),
    };
    let page_url = format!("{index}/uv/");
    let (page, base) = downloader.page(&page_url).await.map_err(|error| error.to_string())?;
    let href = find_link(&page, file_name).ok_or_else(|| {
        format!(
            "the package index {page_url} does not list {file_name}: mirror uv {PINNED_UV_VERSION} there, or \
             install uv on this machine"
        )
    })?;
    let url = join_url(&base, &href);
    let fetched = downloader
        .verified(&url, sha256, file_name, &mut |received, total| {
            step.progress(match total {
                Some(total) => format!("downloading {file_name}: {} of {} MiB", received >> 20, total >> 20),
                None => format!("downloading {file_name}: {} MiB", received >> 20),
            });
        })
        .await
        .map_err(|error| error.to_string())?;
    let target = pinned_binary(&build.layout.tools());
    let wheel = fetched.path.clone();
    tokio::task::spawn_blocking(move || extract_uv(&wheel, &target))
        .await
        .map_err(|error| format!("unpacking uv stopped: {error}"))??;
    Ok(from)
}

/// Copies `uv-<version>.data/scripts/uv` out of the wheel, executable, atomically.
fn extract_uv(wheel: &Path, target: &Path) -> Result<(), String> {
    let file =
        std::fs::File::open(wheel).map_err(|error| format!("cannot open {}: {error}", wheel.display()))?;
    let mut archive =
        zip::ZipArchive::new(file).map_err(|error| format!("{} is not a wheel: {error}", wheel.display()))?;
    let inner = format!("uv-{PINNED_UV_VERSION}.data/scripts/uv");
    let mut entry =
        archive.by_name(&inner).map_err(|error| format!("{} has no {inner}: {error}", wheel.display()))?;
    let mut bytes = Vec::new();
    entry.read_to_end(&mut bytes).map_err(|error| format!("cannot unpack {inner}: {error}"))?;
    let dir = target.parent().ok_or("the uv target has no directory")?;
    std::fs::create_dir_all(dir).map_err(|error| format!("cannot create {}: {error}", dir.display()))?;
    comfyfleet_daemon::files::write_atomic(target, &bytes, 0o755)
        .map_err(|error| format!("cannot write {}: {error}", target.display()))
}

/// `uv pip install` into the environment's venv, with comfyfleet's fixed flags:
/// no user or system uv configuration, uv's cache under the data dir (hardlinks
/// into the venv), no progress bars.
pub fn pip_install(build: &Build<'_>) -> Result<Invocation, String> {
    let mut invocation = Invocation::new(build.uv()?)
        .args(["pip", "install", "--no-config", "--link-mode", "hardlink", "--python"])
        .arg(build.env.python())
        .env("UV_CACHE_DIR", build.layout.uv_cache())
        .env("UV_NO_PROGRESS", "1")
        .env("UV_PYTHON_DOWNLOADS", "never")
        .cwd(&build.env.path);
    // The indexes' credentials, read by uv from its named-index variables.
    let spec = &build.assignment.spec;
    let indexes = std::iter::once(build.assignment.plan.torch_index.as_str())
        .chain(spec.index.extra.iter().map(String::as_str))
        .chain(std::iter::once(spec.index.url.as_str()));
    for (name, value) in build.credentials.uv_env(indexes) {
        invocation = invocation.env(&name, value);
    }
    if build.repair {
        // This step was interrupted: a package may be half-linked into the venv.
        invocation = invocation.arg("--reinstall");
    }
    Ok(invocation)
}

/// The spec's indexes for everything but torch: its extra indexes first (uv
/// searches `--index` entries before the default one), then `index.url`. One with a
/// credential is named (`NAME=URL`), for [`pip_install`]'s variables.
pub fn package_indexes(build: &Build<'_>) -> Vec<OsString> {
    let spec = &build.assignment.spec;
    let mut args: Vec<OsString> = Vec::new();
    for extra in &spec.index.extra {
        args.push("--index".into());
        args.push(build.credentials.uv_index(extra));
    }
    args.push("--default-index".into());
    args.push(build.credentials.uv_index(&spec.index.url));
    args
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn old_uvs_are_refused_with_what_to_do() {
        assert!(check_version("uv 0.13.9 (x86_64-unknown-linux-gnu)", Path::new("uv")).is_ok());
        let old = check_version("uv 0.4.30", Path::new("/usr/bin/uv")).unwrap_err();
        assert!(old.contains("older than the 0.5") && old.contains("/usr/bin/uv"), "{old}");
        assert!(check_version("garbage", Path::new("uv")).is_err());
    }
}
