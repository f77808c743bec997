//! What a ComfyUI checkout says it needs, read from its text files at the pinned
//! commit (never run): the Python its `pyproject.toml` requires, the command-line
//! options its `comfy/cli_args.py` declares, whether its `requirements.txt` has
//! comfy-kitchen, and which requirement files a spec installs from it
//! (`manager_requirements.txt` only when the manager runs). Also the warnings a
//! spec earns from how it runs ComfyUI-Manager.

use std::collections::BTreeSet;

use crate::requirements::requirement_name;
use crate::resolve::MachinePlan;
use crate::spec::names::normalize_package_name;
use crate::spec::{ManagerMode, PythonVersion, Spec};

/// ComfyUI's own requirements.
pub const REQUIREMENTS: &str = "requirements.txt";
/// The pinned `comfyui_manager` package of ComfyUI 0.4 and later: `--enable-manager`
/// works only when it is installed.
pub const MANAGER_REQUIREMENTS: &str = "manager_requirements.txt";
/// The CUDA build from which comfy-kitchen's CUDA kernels (fp8, nvfp4) are used
/// (ComfyUI 0.33's `comfy/quant_ops.py`): older builds run its Python fallbacks.
const KITCHEN_CUDA_SINCE: (u32, u32) = (13, 0);

/// The requirement files of ComfyUI's checkout to install for a spec run with
/// `manager`: the manager's package only when it runs.
pub fn requirement_files(manager: ManagerMode) -> Vec<&'static str> {
    if manager.is_off() { vec![REQUIREMENTS] } else { vec![REQUIREMENTS, MANAGER_REQUIREMENTS] }
}

/// The `requires-python` of a `pyproject.toml`'s `[project]` table, as written
/// (`>=3.10`); none when the file has none.
pub fn requires_python(pyproject: &str) -> Option<String> {
    let table: toml::Table = pyproject.parse().ok()?;
    table.get("project")?.get("requires-python")?.as_str().map(|text| text.trim().to_owned())
}

/// Refuses `python` when the checkout's `requires-python` excludes it, naming both.
pub fn check_python(python: PythonVersion, requires: &str) -> Result<(), String> {
    let specifiers: pep440_rs::VersionSpecifiers = requires.parse().map_err(|error| {
        format!("ComfyUI's pyproject.toml has a requires-python that does not parse (`{requires}`): {error}")
    })?;
    let version: pep440_rs::Version =
        format!("{}.{}", python.major, python.minor).parse().map_err(|error| format!("{error}"))?;
    if specifiers.contains(&version) {
        return Ok(());
    }
    Err(format!(
        "python = \"{}.{}\", but this ComfyUI commit requires Python {requires} (its pyproject.toml): set python \
         to a version it supports",
        python.major, python.minor
    ))
}

/// Every option string `comfy/cli_args.py` declares with `….add_argument("--x", …)`
/// (short and long forms), read statically.
pub fn declared_options(cli_args: &str) -> BTreeSet<String> {
    let mut options = BTreeSet::new();
    for (position, _) in cli_args.match_indices("add_argument(") {
        let mut rest = &cli_args[position + "add_argument(".len()..];
        loop {
            rest = rest.trim_start();
            let Some(quote) = rest.chars().next().filter(|c| *c == '"' || *c == '\'') else { break };
            let Some(end) = rest[1..].find(quote) else { break };
            let literal = &rest[1..=end];
            if !literal.starts_with('-') {
                break;
            }
            options.insert(literal.to_owned());
            rest = rest[end + 2..].trim_start();
            match rest.strip_prefix(',') {
                Some(after) => rest = after,
                None => break,
            }
        }
    }
    options
}

/// The ComfyUI arguments a spec passes: `run.args` and every `run.when_verified` list.
fn spec_arguments(spec: &Spec) -> Vec<(String, &str)> {
    let mut arguments: Vec<(String, &str)> =
        spec.run.args.iter().map(|arg| ("run.args".to_owned(), arg.as_str())).collect();
    for (name, args) in &spec.run.when_verified {
        arguments.extend(args.iter().map(|arg| (format!("run.when_verified.{name}"), arg.as_str())));
    }
    arguments
}

/// Refuses every option the spec passes to ComfyUI that the checkout's
/// `comfy/cli_args.py` does not declare (ComfyUI would exit at start on every
/// machine), one line each.
pub fn check_arguments(spec: &Spec, declared: &BTreeSet<String>) -> Result<(), Vec<String>> {
    let mut unknown = Vec::new();
    for (key, arg) in spec_arguments(spec) {
        let Some(option) = option_of(arg) else { continue };
        if !declared.contains(option) {
            unknown.push(format!(
                "{key}: `{option}` is not an option of this ComfyUI commit (its comfy/cli_args.py does not declare \
                 it): remove it, or pin a ComfyUI that has it"
            ));
        }
    }
    if unknown.is_empty() { Ok(()) } else { Err(unknown) }
}

/// `--x` of `--x` or `--x=value`; none for a value (`auto`, `-1`).
fn option_of(arg: &str) -> Option<&str> {
    if !arg.starts_with('-')
        || arg.len() < 2
        || arg[1..].starts_with(|c: char| c.is_ascii_digit() || c == '.')
    {
        return None;
    }
    Some(arg.split_once('=').map_or(arg, |(option, _)| option))
}

/// Whether a `requirements.txt` asks for comfy-kitchen.
pub fn has_comfy_kitchen(requirements: &str) -> bool {
    requirements
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with(['#', '-']))
        .any(|line| normalize_package_name(requirement_name(line)) == "comfy-kitchen")
}

/// "comfy-kitchen CUDA ops off: torch 2.11.0+cu128" where the plan's torch is a
/// build older than cu130 and the checkout has comfy-kitchen.
pub fn comfy_kitchen_note(requirements: &str, plan: &MachinePlan) -> Option<String> {
    let cuda = plan.cuda_tag.cuda();
    let old = (cuda.major, cuda.minor) < KITCHEN_CUDA_SINCE;
    (old && has_comfy_kitchen(requirements))
        .then(|| format!("comfy-kitchen CUDA ops off: torch {}", plan.torch))
}

/// The addresses `--listen` binds in `args` (ComfyUI's default `127.0.0.1`; a bare
/// `--listen` is every address).
fn listen_addresses(args: &[String]) -> String {
    let mut listen = "127.0.0.1".to_owned();
    let mut iter = args.iter().peekable();
    while let Some(arg) = iter.next() {
        if let Some(value) = arg.strip_prefix("--listen=") {
            listen = value.to_owned();
        } else if arg == "--listen" {
            listen = match iter.peek() {
                Some(value) if !value.starts_with('-') => iter.next().cloned().unwrap_or_default(),
                _ => "0.0.0.0,::".to_owned(),
            };
        }
    }
    listen
}

fn is_loopback(address: &str) -> bool {
    let address = address.trim().trim_start_matches('[').trim_end_matches(']');
    address.eq_ignore_ascii_case("localhost")
        || address.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// What a spec will meet that it does not refuse: `run.manager = "on"` with a
/// non-loopback `--listen`, where ComfyUI-Manager (4.x) refuses every install
/// (`middle+` risk) unless its `network_mode` is `personal_cloud`.
pub fn warnings(spec: &Spec) -> Vec<String> {
    let mut warnings = Vec::new();
    if spec.run.manager == ManagerMode::On {
        let listen = listen_addresses(&spec.run.args);
        if !listen.split(',').all(is_loopback) {
            warnings.push(format!(
                "run.manager = \"on\" with --listen {listen} (not loopback): ComfyUI-Manager refuses installs from \
                 a non-loopback listener at security_level \"normal\" unless its network_mode is \"personal_cloud\"; \
                 set network_mode = personal_cloud in the machines' user/__manager/config.ini (comfyfleet keeps \
                 that setting), listen on 127.0.0.1, or use run.manager = \"read-only\""
            ));
        }
    }
    warnings
}

#[cfg(test)]
#[path = "comfyui_checkout/tests.rs"]
mod tests;
