//! The `venv` step: a virtual environment with the spec's Python, made by uv (which
//! finds an installed CPython of that version, or downloads one if the agent allows).

use super::{Build, StepOutcome, StepResult};
use crate::command::Invocation;
use crate::complete_record::venv_python_version;
use crate::report::StepHandle;

pub async fn create(build: &Build<'_>, step: &mut StepHandle) -> StepResult {
    let wanted = build.assignment.spec.python.to_string();
    let venv = build.env.venv();
    let existing = venv_python_version(&venv);
    if !build.repair
        && build.env.python().exists()
        && existing.as_deref().is_some_and(|found| same_minor(found, &wanted))
    {
        return Ok(StepOutcome::skipped(format!(
            "Python {} venv already there",
            existing.unwrap_or_default()
        )));
    }
    if venv.exists() {
        std::fs::remove_dir_all(&venv)
            .map_err(|error| format!("cannot remove {}: {error}", venv.display()))?;
    }
    let invocation = Invocation::new(build.uv()?)
        .args(["venv", "--no-config", "--quiet", "--python", &wanted])
        .arg(&venv)
        .env("UV_CACHE_DIR", build.layout.uv_cache())
        .env("UV_PYTHON_DOWNLOADS", &build.tools.python_downloads)
        .cwd(&build.env.path);
    build.run(step, invocation).await.map_err(|error| {
        format!(
            "{error}; this machine needs CPython {wanted} (install it, or let the agent download one with \
             --python-downloads automatic)"
        )
    })?;
    let found = venv_python_version(&venv).unwrap_or_else(|| "(unknown version)".to_owned());
    if !same_minor(&found, &wanted) {
        return Err(format!("uv made a venv with Python {found}, but the spec asks for {wanted}"));
    }
    Ok(StepOutcome::done(format!("Python {found} venv")))
}

/// `3.12.7` is a `3.12`.
fn same_minor(found: &str, wanted: &str) -> bool {
    found == wanted || found.strip_prefix(wanted).is_some_and(|rest| rest.starts_with('.'))
}

#[cfg(test)]
mod tests {
    #[test]
    fn patch_releases_satisfy_the_minor_the_spec_names() {
        assert!(super::same_minor("3.12.7", "3.12"));
        assert!(!super::same_minor("3.1.2", "3.12"));
        assert!(!super::same_minor("3.13.0", "3.12"));
    }
}
