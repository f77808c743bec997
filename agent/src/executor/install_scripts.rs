//! The `install-scripts` step: a custom node's `install.py`, run only where its
//! `[[custom_node]]` says `install_script = true` (the agent runs nothing the spec
//! does not describe). Each runs once, in the new venv's Python, in the node's
//! directory, with the build environment, a deadline and its output in the report.
//! Packages it installs come from the spec's index, and torch and its companions are
//! held at the plan's builds (`PIP_CONSTRAINT`, `UV_CONSTRAINT`): a script that
//! asks for another torch fails rather than replacing it. A node that has an
//! `install.py` the spec does not ask to run is named in the report.

use std::time::Duration;

use super::torch::pins;
use super::{Build, StepOutcome, StepResult};
use crate::command::Invocation;
use crate::report::StepHandle;

/// How long one `install.py` may run.
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(600);

pub async fn run(build: &Build<'_>, step: &mut StepHandle) -> StepResult {
    let nodes = &build.assignment.spec.custom_nodes;
    let mut ran = Vec::new();
    let mut notes = Vec::new();
    for node in nodes {
        let name = node.directory_name();
        let script = build.env.custom_node(&name).join("install.py");
        match (script.is_file(), node.install_script) {
            (true, true) => {
                step.progress(format!("running {name}'s install.py"));
                match run_script(build, step, &name).await {
                    Ok(()) => ran.push(format!("{name}'s install.py ran")),
                    Err(error) if !node.required => {
                        notes.push(format!("{name}'s install.py failed (required = false): {error}"));
                    }
                    Err(error) => return Err(format!("{name}'s install.py failed: {error}")),
                }
            }
            (true, false) => notes.push(format!(
                "{name}: install.py not run (set install_script = true in its [[custom_node]] to run it)"
            )),
            (false, true) => {
                notes.push(format!("{name}: install_script = true, but the node has no install.py"))
            }
            (false, false) => {}
        }
    }
    let mut detail = ran;
    detail.extend(notes);
    if detail.is_empty() {
        return Ok(StepOutcome::skipped("no custom node has an install.py"));
    }
    let detail = detail.join("; ");
    if nodes.iter().any(|node| node.install_script) {
        Ok(StepOutcome::done(detail))
    } else {
        Ok(StepOutcome::skipped(detail))
    }
}

async fn run_script(build: &Build<'_>, step: &mut StepHandle, name: &str) -> Result<(), String> {
    let venv = build.env.venv();
    let held = build.env.meta().join("install-script-constraints.txt");
    std::fs::write(&held, pins(build).join("\n") + "\n")
        .map_err(|error| format!("cannot write {}: {error}", held.display()))?;
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut search = vec![venv.join("bin")];
    search.extend(std::env::split_paths(&path));
    let path = std::env::join_paths(search).map_err(|error| format!("cannot build PATH: {error}"))?;
    let spec = &build.assignment.spec;
    // Through the controller's package cache when there is one: its copy of each
    // index, whose files are the cache's, checked; the machine's certificate opens it.
    let index = |url: &str| match &build.tools.package_cache {
        Some(cache) => cache.index_url(url),
        None => url.to_owned(),
    };
    let mut invocation = Invocation::new(build.env.python())
        .arg("install.py")
        .cwd(build.env.custom_node(name))
        .env("VIRTUAL_ENV", &venv)
        .env("PATH", path)
        .env("PYTHONNOUSERSITE", "1")
        .env("PIP_INDEX_URL", index(&spec.index.url))
        .env("UV_DEFAULT_INDEX", index(&spec.index.url))
        .env("PIP_CONSTRAINT", &held)
        .env("UV_CONSTRAINT", &held)
        .env("UV_NO_CONFIG", "1")
        .env("UV_CACHE_DIR", build.layout.uv_cache())
        .timeout(SCRIPT_TIMEOUT);
    if !spec.index.extra.is_empty() {
        let extra: Vec<String> = spec.index.extra.iter().map(|url| index(url)).collect();
        let extra = extra.join(" ");
        invocation = invocation.env("PIP_EXTRA_INDEX_URL", &extra).env("UV_INDEX", &extra);
    }
    if let Some(cache) = &build.tools.package_cache {
        invocation = invocation
            .env("SSL_CLIENT_CERT", &cache.client_pem)
            .env("SSL_CERT_FILE", &cache.ca_pem)
            .env("PIP_CLIENT_CERT", &cache.client_pem)
            .env("PIP_CERT", &cache.ca_pem);
    }
    build.run(step, invocation).await.map(|_| ())
}
