//! ComfyUI-Manager on a machine, as `run.manager` says: `off` (never started),
//! `read-only` (it runs, and refuses every install: its `security_level = strong`)
//! or `on` (installs allowed; the inventory reports what it installs as drift). A
//! fleet must not drift because someone clicked "install" on one machine.
//!
//! The manager is the ComfyUI-Manager custom node, or the one built into newer
//! ComfyUIs (`--enable-manager`). Either reads its settings from the user directory
//! (`user/default/ComfyUI-Manager/config.ini`, `user/__manager/config.ini` for the
//! built-in one), which the agent writes before every start: comfyfleet owns
//! `security_level`, every other setting stays the operator's.

use std::path::{Path, PathBuf};

use comfyfleet_config::Spec;
use comfyfleet_config::spec::ManagerMode;

use crate::comfyui::ComfyuiFacts;
use crate::complete_record::CompleteRecord;

/// Whether the environment can have the manager the spec asks for.
pub fn check_supported(spec: &Spec, comfyui: &ComfyuiFacts) -> Result<(), String> {
    let has_node = spec.custom_nodes.iter().any(|node| node.is_manager());
    if !spec.run.manager.is_off() && !has_node && !comfyui.builtin_manager {
        return Err(format!(
            "run.manager = \"{}\", but this ComfyUI has no built-in manager (--enable-manager) and the spec lists no \
             ComfyUI-Manager custom node: add the node, or use a ComfyUI that has the manager",
            spec.run.manager
        ));
    }
    Ok(())
}

/// ComfyUI's arguments for the manager: `--enable-manager` where it is built in and
/// wanted (the custom node loads itself).
pub fn arguments(record: &CompleteRecord) -> Vec<String> {
    let has_node =
        record.custom_node_entries.iter().flatten().any(|name| name.eq_ignore_ascii_case("comfyui-manager"));
    if !record.manager.is_off() && record.comfyui.builtin_manager && !has_node {
        vec!["--enable-manager".to_owned()]
    } else {
        Vec::new()
    }
}

/// The route the built-in manager (the `comfyui_manager` package, 4.x) serves once
/// ComfyUI started it: its version, as text.
pub const VERSION_ROUTE: &str = "/v2/manager/version";

/// Whether the health check must find the built-in manager serving: it was asked
/// for with `--enable-manager` (ComfyUI 0.4+ turns it off, logs a warning and runs
/// on when the `comfyui_manager` package is not installed).
pub fn expects_builtin(record: &CompleteRecord) -> bool {
    !arguments(record).is_empty()
}

/// The health check's verdict on the built-in manager from what
/// [`VERSION_ROUTE`] answered (`answer`) and this start's `log`: a note naming its
/// version, or why it is not there.
pub fn loaded(answer: Result<String, String>, log: &str) -> Result<String, String> {
    match answer {
        Ok(version) if !version.trim().is_empty() && version.trim().len() <= 64 => {
            Ok(format!("ComfyUI-Manager {} serves {VERSION_ROUTE}", version.trim()))
        }
        Ok(_) => Err(format!("ComfyUI-Manager did not load: {VERSION_ROUTE} gave no version")),
        Err(error) => {
            let lines = crate::comfyui::log::plain_lines(log);
            let why = if lines.iter().any(|line| line.contains("package must be installed first")) {
                "ComfyUI logged that the comfyui-manager package is not installed (manager_requirements.txt), and \
                 runs without the manager"
            } else {
                "ComfyUI logged no reason"
            };
            Err(format!("ComfyUI-Manager did not load ({VERSION_ROUTE}: {error}): {why}"))
        }
    }
}

/// Writes the manager's `security_level` for `record` into the user directory.
pub fn configure(user_directory: &Path, record: &CompleteRecord) -> Result<(), String> {
    let level = match record.manager {
        ManagerMode::Off => return Ok(()),
        ManagerMode::ReadOnly => "strong",
        ManagerMode::On => "normal",
    };
    for path in config_files(user_directory) {
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let updated = with_setting(&text, "default", "security_level", level);
        if updated != text {
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)
                    .map_err(|error| format!("cannot create {}: {error}", parent.display()))?;
            }
            comfyfleet_daemon::files::write_atomic(&path, updated.as_bytes(), 0o644)
                .map_err(|error| format!("cannot write ComfyUI-Manager's {}: {error}", path.display()))?;
        }
    }
    Ok(())
}

/// Where the node (v3) and the built-in manager read their settings.
pub fn config_files(user_directory: &Path) -> [PathBuf; 2] {
    [user_directory.join("default/ComfyUI-Manager/config.ini"), user_directory.join("__manager/config.ini")]
}

/// `text` (an INI file) with `key = value` in `[section]`, everything else kept.
fn with_setting(text: &str, section: &str, key: &str, value: &str) -> String {
    let header = format!("[{section}]");
    let mut out = Vec::new();
    let mut in_section = false;
    let mut found_section = false;
    let mut written = false;
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('[') {
            if in_section && !written {
                out.push(format!("{key} = {value}"));
                written = true;
            }
            in_section = trimmed == header;
            found_section |= in_section;
        } else if in_section && trimmed.split_once('=').is_some_and(|(name, _)| name.trim() == key) {
            if !written {
                out.push(format!("{key} = {value}"));
                written = true;
            }
            continue;
        }
        out.push(line.to_owned());
    }
    if !written {
        if !found_section {
            out.push(header);
        }
        out.push(format!("{key} = {value}"));
    }
    out.join("\n") + "\n"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_built_in_manager_is_confirmed_by_its_route() {
        assert_eq!(
            loaded(Ok("4.2.2\n".into()), "").unwrap(),
            "ComfyUI-Manager 4.2.2 serves /v2/manager/version"
        );
        let log = "\u{1b}[33m[WARNING]\u{1b}[0m \n\nTo use the `--enable-manager` feature, the `comfyui-manager` \
                   package must be installed first.\n";
        let missing = loaded(Err("status 404 Not Found".into()), log).unwrap_err();
        assert!(missing.contains("status 404") && missing.contains("not installed"), "{missing}");
        assert!(loaded(Err("refused".into()), "").unwrap_err().contains("logged no reason"));
    }

    #[test]
    fn the_security_level_is_set_and_other_settings_stay() {
        assert_eq!(
            with_setting("", "default", "security_level", "strong"),
            "[default]\nsecurity_level = strong\n"
        );
        let existing = "[default]\npreview_method = auto\nsecurity_level = weak\n\n[other]\nx = 1\n";
        assert_eq!(
            with_setting(existing, "default", "security_level", "strong"),
            "[default]\npreview_method = auto\nsecurity_level = strong\n\n[other]\nx = 1\n"
        );
        let elsewhere = "[other]\nsecurity_level = weak\n";
        assert_eq!(
            with_setting(elsewhere, "default", "security_level", "strong"),
            "[other]\nsecurity_level = weak\n[default]\nsecurity_level = strong\n"
        );
        let missing_key = "[default]\nbadge_mode = none\n[other]\n";
        assert_eq!(
            with_setting(missing_key, "default", "security_level", "normal"),
            "[default]\nbadge_mode = none\nsecurity_level = normal\n[other]\n"
        );
    }
}
