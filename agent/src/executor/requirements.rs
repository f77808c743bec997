//! The `requirements` step: ComfyUI's `requirements.txt` and every custom node's,
//! resolved together in one uv run with torch held at the planned build (uv
//! overrides) and the planned index optimisations' versions as constraints.
//!
//! Requirement files come from repositories, not from the operator, so options in
//! them that would change where packages come from (`--index-url`,
//! `--extra-index-url`, `--find-links`, …) or pull in other files are dropped and
//! reported: packages come from the spec's indexes only.

use std::path::{Path, PathBuf};

use comfyfleet_config::resolve::OptimizationSource;
use comfyfleet_config::spec::names::normalize_package_name;

use super::torch::{is_held, overrides};
use super::uv::{package_indexes, pip_install};
use super::{Build, StepOutcome, StepResult};
use crate::report::StepHandle;

/// A requirement file's lines as comfyfleet passes them on.
#[derive(Debug, Default, PartialEq, Eq)]
struct Sanitized {
    text: String,
    /// Option lines left out.
    dropped: Vec<String>,
    /// Requirements on packages torch's overrides hold (`torch==2.3.0`).
    held: Vec<String>,
}

pub async fn install(build: &Build<'_>, step: &mut StepHandle) -> StepResult {
    let mut sources: Vec<(String, PathBuf)> =
        vec![("ComfyUI".to_owned(), build.env.comfyui().join("requirements.txt"))];
    for node in &build.assignment.spec.custom_nodes {
        let name = node.directory_name();
        let file = build.env.custom_node(&name).join("requirements.txt");
        sources.push((name, file));
    }
    let dir = build.env.meta().join("requirements");
    std::fs::create_dir_all(&dir).map_err(|error| format!("cannot create {}: {error}", dir.display()))?;
    let mut files = Vec::new();
    let mut notes = Vec::new();
    for (name, path) in &sources {
        let Ok(text) = std::fs::read_to_string(path) else { continue };
        let sanitized = sanitize(&text, |package| is_held(package, build));
        for dropped in &sanitized.dropped {
            notes.push(format!("{name}: ignored `{dropped}` (packages come from the spec's indexes)"));
        }
        // A bare `torch` is what the plan installs anyway; anything else is worth saying.
        let planned = |line: &str| build.assignment.plan.packages.iter().any(|package| package.name == line);
        for held in sanitized.held.iter().filter(|line| !planned(line)) {
            notes.push(format!("{name}: `{held}` held at {}", build.assignment.plan.torch));
        }
        let copy = dir.join(format!("{name}.txt"));
        write(&copy, &sanitized.text)?;
        files.push(copy);
    }
    if files.is_empty() {
        return Ok(StepOutcome::skipped("no requirements.txt in ComfyUI or the custom nodes"));
    }
    let overrides_file = build.env.meta().join("overrides.txt");
    write(&overrides_file, &overrides(build))?;
    let constraints_file = build.env.meta().join("constraints.txt");
    write(&constraints_file, &constraints(build))?;

    step.progress(format!("installing the requirements of {} sources", files.len()));
    let mut invocation = pip_install(build)?
        .arg("--overrides")
        .arg(&overrides_file)
        .arg("--constraints")
        .arg(&constraints_file)
        .args(package_indexes(&build.assignment.spec));
    for file in &files {
        invocation = invocation.arg("-r").arg(file);
    }
    let tail = build.run(step, invocation).await?;
    let summary = tail
        .lines()
        .rev()
        .find(|line| line.starts_with("Installed") || line.starts_with("Audited"))
        .unwrap_or("installed")
        .to_owned();
    let mut detail = summary;
    if !notes.is_empty() {
        detail.push_str("; ");
        detail.push_str(&notes.join("; "));
    }
    Ok(StepOutcome::done(detail))
}

/// The planned index optimisations (`triton>=3.4,<3.5`), so a requirement that
/// pulls one in gets the version built against the planned torch.
pub fn constraints(build: &Build<'_>) -> String {
    let lines: Vec<String> = build
        .assignment
        .plan
        .optimizations
        .iter()
        .filter_map(|optimization| match &optimization.source {
            OptimizationSource::Index { requirement, .. } => Some(requirement.clone()),
            OptimizationSource::Wheel { .. } => None,
        })
        .collect();
    lines.join("\n") + "\n"
}

fn write(path: &Path, text: &str) -> Result<(), String> {
    std::fs::write(path, text).map_err(|error| format!("cannot write {}: {error}", path.display()))
}

/// Keeps requirement lines, drops option lines, notes requirements on held packages.
fn sanitize(text: &str, held: impl Fn(&str) -> bool) -> Sanitized {
    let mut out = Sanitized::default();
    let joined = text.replace("\\\n", " ");
    for raw in joined.lines() {
        let line = strip_comment(raw).trim();
        if line.is_empty() {
            continue;
        }
        if line.starts_with('-') {
            out.dropped.push(line.to_owned());
            continue;
        }
        if held(&normalize_package_name(requirement_name(line))) {
            out.held.push(line.to_owned());
        }
        out.text.push_str(line);
        out.text.push('\n');
    }
    out
}

/// A `#` starts a comment at the line's start or after whitespace (pip's rule; a
/// `#` inside a URL fragment stays).
fn strip_comment(line: &str) -> &str {
    let bytes = line.as_bytes();
    for (i, byte) in bytes.iter().enumerate() {
        if *byte == b'#' && (i == 0 || bytes[i - 1].is_ascii_whitespace()) {
            return &line[..i];
        }
    }
    line
}

/// `torch>=2.0 ; sys_platform == "linux"` → `torch`.
fn requirement_name(line: &str) -> &str {
    let end = line
        .find(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
        .unwrap_or(line.len());
    &line[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_are_dropped_and_held_packages_noted() {
        let text = "# a node\n--extra-index-url https://evil.example/simple\n-r other.txt\ntorch==2.3.0\n\
                    numpy>=1.25 # needed\nopencv-python; sys_platform == 'linux'\n  \nfoo @ https://x.example/f.whl#sha256=ab\n\
                    Torch-CPU\nlong \\\n  >=1.0\n";
        let held = |name: &str| ["torch", "torch-cpu"].contains(&name);
        let out = sanitize(text, held);
        assert_eq!(out.dropped, vec!["--extra-index-url https://evil.example/simple", "-r other.txt"]);
        assert_eq!(out.held, vec!["torch==2.3.0", "Torch-CPU"]);
        assert_eq!(
            out.text,
            "torch==2.3.0\nnumpy>=1.25\nopencv-python; sys_platform == 'linux'\nfoo @ https://x.example/f.whl#sha256=ab\nTorch-CPU\nlong    >=1.0\n"
        );
    }

    #[test]
    fn requirement_names_stop_at_the_first_operator() {
        assert_eq!(requirement_name("torch>=2.0"), "torch");
        assert_eq!(requirement_name("comfyui-frontend-package==1.45.15"), "comfyui-frontend-package");
        assert_eq!(requirement_name("pydantic~=2.0"), "pydantic");
        assert_eq!(requirement_name("foo[extra]>=1"), "foo");
    }
}
