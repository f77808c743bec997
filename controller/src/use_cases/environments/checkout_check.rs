//! At apply, after the spec's refs are pinned: what the pinned ComfyUI commit says it
//! needs, read (never run) from the controller's git mirror — the Python its
//! `pyproject.toml` requires and the options its `comfy/cli_args.py` declares. A
//! spec that could only fail every machine's health check after the switch is
//! refused here instead. The rules are `comfyfleet_config::comfyui_checkout`'s.

use crate::use_cases::sources::git_mirror::GitMirror;
use comfyfleet_config::comfyui_checkout as checkout;
use comfyfleet_config::source_credentials::SourceCredentials;
use comfyfleet_config::spec::Spec;

/// Why a spec cannot run on its pinned ComfyUI checkout.
#[derive(Debug, thiserror::Error)]
pub enum CheckoutError {
    /// A file of the checkout could not be read from the mirror.
    #[error("reading ComfyUI's {path}: {error}")]
    Unreadable { path: &'static str, error: String },
    /// The checkout excludes the spec's Python or does not declare its options.
    #[error("{environment} cannot run on ComfyUI {commit}:\n{}", .problems.join("\n"))]
    Unfit { environment: String, commit: String, problems: Vec<String> },
}

/// Refuses `spec` when its pinned ComfyUI commit cannot run it, naming why.
pub async fn refuse_unfit(
    mirror: &GitMirror,
    spec: &Spec,
    credentials: &SourceCredentials,
) -> Result<(), CheckoutError> {
    let Some(commit) = spec.comfyui.commit.as_deref() else { return Ok(()) };
    let read = |path: &'static str| async move {
        mirror
            .read_file(&spec.comfyui.git, commit, path, credentials)
            .await
            .map_err(|error| CheckoutError::Unreadable { path, error: error.to_string() })
    };
    let mut problems = Vec::new();
    if let Some(pyproject) = read("pyproject.toml").await?
        && let Some(requires) = checkout::requires_python(&pyproject)
        && let Err(problem) = checkout::check_python(spec.python, &requires)
    {
        problems.push(problem);
    }
    if let Some(cli_args) = read("comfy/cli_args.py").await? {
        let declared = checkout::declared_options(&cli_args);
        // A checkout whose options cannot be read statically is not judged.
        if !declared.is_empty()
            && let Err(unknown) = checkout::check_arguments(spec, &declared)
        {
            problems.extend(unknown);
        }
    }
    if problems.is_empty() {
        return Ok(());
    }
    let short = &commit[..commit.len().min(12)];
    Err(CheckoutError::Unfit {
        environment: comfyfleet_config::spec::names::printable(&spec.name),
        commit: short.to_owned(),
        problems,
    })
}
