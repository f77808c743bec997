//! Requirement files from repositories (ComfyUI's, custom nodes'), as comfyfleet
//! passes them to uv: option lines that would change where packages come from
//! (`--index-url`, `--find-links`, `-r other.txt`) are dropped and reported, since
//! packages come from the spec's indexes only. And the overrides that hold torch at
//! the planned build whatever a requirement asks for. Shared by the controller (it
//! locks them at apply) and the agent.

use crate::resolve::{MachinePlan, OptimizationSource};
use crate::spec::names::normalize_package_name;

/// Packages that would replace torch's files if installed, whatever a requirement
/// file asks for: never installed into an environment.
pub const TORCH_IMPOSTORS: &[&str] = &["torch-cpu", "pytorch", "torch-nightly", "torch-gpu"];

/// `torch==2.11.0+cu128` and its companions' pins: what every install holds.
pub fn pins(plan: &MachinePlan) -> Vec<String> {
    plan.packages.iter().map(|package| format!("{}=={}", package.name, package.version)).collect()
}

/// uv overrides that hold torch at the planned build: a custom node asking for
/// `torch`, `torch==2.3.0` or `torch-cpu` gets the planned torch instead (impostors
/// are overridden by a marker that is never true, which drops them).
pub fn overrides(plan: &MachinePlan) -> String {
    let mut lines = pins(plan);
    for impostor in TORCH_IMPOSTORS {
        lines.push(format!("{impostor} ; sys_platform == 'comfyfleet-never'"));
    }
    lines.join("\n") + "\n"
}

/// The planned index optimisations (`triton>=3.4,<3.5`), so a requirement that
/// pulls one in gets the version built against the planned torch.
pub fn index_optimizations(plan: &MachinePlan) -> Vec<String> {
    plan.optimizations
        .iter()
        .filter_map(|optimization| match &optimization.source {
            OptimizationSource::Index { requirement, .. } => Some(requirement.clone()),
            OptimizationSource::Wheel { .. } => None,
        })
        .collect()
}

/// Whether a requirement names a package the overrides hold.
pub fn is_held(name: &str, plan: &MachinePlan) -> bool {
    TORCH_IMPOSTORS.contains(&name) || plan.packages.iter().any(|package| package.name == name)
}

/// A requirement file's lines as comfyfleet passes them on.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Sanitized {
    pub text: String,
    /// Option lines left out.
    pub dropped: Vec<String>,
    /// Requirements on packages torch's overrides hold (`torch==2.3.0`).
    pub held: Vec<String>,
}

/// Keeps requirement lines, drops option lines, notes requirements on held packages.
pub fn sanitize(text: &str, held: impl Fn(&str) -> bool) -> Sanitized {
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
pub fn requirement_name(line: &str) -> &str {
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
