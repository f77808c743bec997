//! Whether the custom nodes a revision needs really loaded, decided from what the
//! running ComfyUI serves rather than from its log's wording. `GET /object_info`
//! lists every node class with its `python_module`, `custom_nodes.<directory>` for a
//! custom node's classes (`nodes.load_custom_node` sets `RELATIVE_PYTHON_MODULE` so,
//! for V1 mappings and V3 `comfy_entrypoint` extensions alike, in 0.3.64 and 0.33.0):
//! a node that contributes no class did not load, whatever the log says (nodes left
//! out by `--whitelist-custom-nodes` or blocked by ComfyUI-Manager log no failure).
//! A node pack that defines no classes (`provides_nodes = false`, ComfyUI-Manager) is
//! held against ComfyUI's import list instead. The log only says why.

use std::collections::BTreeSet;

use super::log::{NodeImport, node_imports, plain_lines, why_not_loaded};

/// A custom node the revision's spec lists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpectedNode {
    /// Its directory under `custom_nodes/`.
    pub name: String,
    /// `false`: ComfyUI runs without it, and the report warns.
    pub required: bool,
    /// Whether `/object_info` must list classes from it (else: the import list).
    pub node_classes: bool,
}

/// The custom nodes `/object_info` (its JSON object) lists classes from: `<dir>` of
/// each `python_module` `custom_nodes.<dir>`. `None` when no entry names a module at
/// all (a ComfyUI too old to say), so only the log can tell.
pub fn nodes_with_classes(
    object_info: &serde_json::Map<String, serde_json::Value>,
) -> Option<BTreeSet<String>> {
    let modules: Vec<&str> =
        object_info.values().filter_map(|info| info.get("python_module")?.as_str()).collect();
    if modules.is_empty() && !object_info.is_empty() {
        return None;
    }
    Some(
        modules.iter().filter_map(|module| module.strip_prefix("custom_nodes.")).map(str::to_owned).collect(),
    )
}

/// What the check found: problems with required nodes (a failed switch), and with
/// the rest (warnings).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct NodeCheck {
    pub broken: Vec<String>,
    pub warnings: Vec<String>,
}

/// Holds `expected` against the classes ComfyUI serves (`served`, from
/// [`nodes_with_classes`]; `None`: unknown) and this start's `log`. A node outside
/// the spec that failed to import is broken too: an environment is broken whoever
/// broke it.
pub fn check(expected: &[ExpectedNode], served: Option<&BTreeSet<String>>, log: &str) -> NodeCheck {
    let lines = plain_lines(log);
    let imports = node_imports(&lines);
    let mut found = NodeCheck::default();
    for node in expected {
        let Some((what, why)) = problem(node, served, &imports, &lines) else { continue };
        if node.required {
            found.broken.push(format!("custom node {} {what}: {why}", node.name));
        } else {
            found.warnings.push(format!(
                "custom node {} {what} (required = false, ComfyUI runs without it): {why}",
                node.name
            ));
        }
    }
    for import in imports.iter().filter(|import| !import.imported) {
        if !expected.iter().any(|node| node.name == import.name) {
            let why = why_not_loaded(&lines, &import.name).map_or_else(no_reason, |why| last_lines(&why));
            found.broken.push(format!("custom node {} failed to import: {why}", import.name));
        }
    }
    found
}

/// What is wrong with `node` and why, or `None` when it loaded.
fn problem(
    node: &ExpectedNode,
    served: Option<&BTreeSet<String>>,
    imports: &[NodeImport],
    lines: &[String],
) -> Option<(&'static str, String)> {
    let import = imports.iter().find(|import| import.name == node.name);
    let why = || why_not_loaded(lines, &node.name).map(|why| last_lines(&why));
    match (node.node_classes, served) {
        (true, Some(served)) if served.contains(&node.name) => None,
        (true, Some(_)) => Some(match import {
            Some(NodeImport { imported: false, .. }) => ("failed to import", why().unwrap_or_else(no_reason)),
            Some(NodeImport { imported: true, .. }) => (
                "contributed no node classes to /object_info",
                format!(
                    "ComfyUI imported it but lists no class from custom_nodes.{}: its classes may all have names \
                     ComfyUI or another node already registers, or ComfyUI could not describe them (its log says \
                     \"An error occurred while retrieving information\"); a node pack that defines none needs \
                     provides_nodes = false in its [[custom_node]]",
                    node.name
                ),
            ),
            None => (
                "was not loaded (it contributed no node classes to /object_info)",
                why().unwrap_or_else(not_tried),
            ),
        }),
        _ => match import {
            Some(NodeImport { imported: true, .. }) => None,
            Some(NodeImport { imported: false, .. }) => {
                Some(("failed to import", why().unwrap_or_else(no_reason)))
            }
            None => Some(("was not loaded", why().unwrap_or_else(not_tried))),
        },
    }
}

/// A reason in one line: the last lines of a traceback, joined.
fn last_lines(why: &str) -> String {
    let lines: Vec<&str> = why.lines().map(str::trim).filter(|line| !line.is_empty()).collect();
    lines[lines.len().saturating_sub(3)..].join(" | ")
}

fn no_reason() -> String {
    "ComfyUI logged no reason".to_owned()
}

fn not_tried() -> String {
    "ComfyUI did not try to import it (it is not in the \"Import times for custom nodes\" list): it was left out by \
     --disable-all-custom-nodes/--whitelist-custom-nodes or blocked by ComfyUI-Manager"
        .to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, required: bool, node_classes: bool) -> ExpectedNode {
        ExpectedNode { name: name.to_owned(), required, node_classes }
    }

    fn served(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|name| (*name).to_owned()).collect()
    }

    const LOG: &str = "\
\u{1b}[1m\u{1b}[33m[WARNING]\u{1b}[0m Traceback (most recent call last):
  File \"/d/ComfyUI/custom_nodes/ComfyUI-Broken/__init__.py\", line 1, in <module>
    import cv2
ModuleNotFoundError: No module named 'cv2'
\u{1b}[1m\u{1b}[33m[WARNING]\u{1b}[0m Cannot import /d/ComfyUI/custom_nodes/ComfyUI-Broken module for custom nodes: No module named 'cv2'
\u{1b}[32m[INFO]\u{1b}[0m Skipping ComfyUI-Left-Out due to disable_all_custom_nodes and whitelist_custom_nodes
\u{1b}[32m[INFO]\u{1b}[0m 
Import times for custom nodes:
\u{1b}[32m[INFO]\u{1b}[0m    0.0 seconds: /d/ComfyUI/custom_nodes/ComfyUI-Web
\u{1b}[32m[INFO]\u{1b}[0m    0.0 seconds: /d/ComfyUI/custom_nodes/ComfyUI-Shadowed
\u{1b}[32m[INFO]\u{1b}[0m    0.1 seconds (IMPORT FAILED): /d/ComfyUI/custom_nodes/ComfyUI-Broken
\u{1b}[32m[INFO]\u{1b}[0m    0.4 seconds: /d/ComfyUI/custom_nodes/ComfyUI-KJNodes
";

    #[test]
    fn object_info_names_the_nodes_that_loaded() {
        let info: serde_json::Value = serde_json::json!({
            "KSampler": {"python_module": "nodes"},
            "SaveWEBM": {"python_module": "comfy_extras.nodes_video"},
            "INTConstant": {"python_module": "custom_nodes.ComfyUI-KJNodes"},
            "VHS_VideoCombine": {"python_module": "custom_nodes.ComfyUI-VideoHelperSuite"},
        });
        let found = nodes_with_classes(info.as_object().unwrap()).unwrap();
        assert_eq!(found, served(&["ComfyUI-KJNodes", "ComfyUI-VideoHelperSuite"]));
        let old: serde_json::Value = serde_json::json!({"KSampler": {"name": "KSampler"}});
        assert_eq!(nodes_with_classes(old.as_object().unwrap()), None, "no modules: the log decides");
        assert_eq!(nodes_with_classes(&serde_json::Map::new()), Some(BTreeSet::new()));
    }

    #[test]
    fn a_node_without_classes_in_object_info_did_not_load_and_the_log_says_why() {
        let expected = [
            node("ComfyUI-KJNodes", true, true),
            node("ComfyUI-Broken", true, true),
            node("ComfyUI-Left-Out", true, true),
            node("ComfyUI-Shadowed", true, true),
            node("ComfyUI-Web", true, false),
            node("ComfyUI-Gone", false, false),
        ];
        let found = check(&expected, Some(&served(&["ComfyUI-KJNodes"])), LOG);
        assert_eq!(found.broken.len(), 3, "{found:#?}");
        assert_eq!(
            found.broken[0],
            "custom node ComfyUI-Broken failed to import: File \"/d/ComfyUI/custom_nodes/ComfyUI-Broken/__init__.py\", \
             line 1, in <module> | import cv2 | ModuleNotFoundError: No module named 'cv2'"
        );
        assert!(
            found.broken[1].starts_with(
                "custom node ComfyUI-Left-Out was not loaded (it contributed no node classes to /object_info): \
                 ComfyUI logged \"Skipping ComfyUI-Left-Out due to disable_all_custom_nodes"
            ),
            "{}",
            found.broken[1]
        );
        assert!(
            found.broken[2]
                .starts_with("custom node ComfyUI-Shadowed contributed no node classes to /object_info")
                && found.broken[2].contains("provides_nodes = false"),
            "{}",
            found.broken[2]
        );
        assert_eq!(found.warnings.len(), 1);
        assert!(
            found.warnings[0].starts_with("custom node ComfyUI-Gone was not loaded (required = false")
                && found.warnings[0].contains("not in the \"Import times for custom nodes\" list"),
            "{}",
            found.warnings[0]
        );
    }

    #[test]
    fn nodes_outside_the_spec_that_failed_count_and_an_old_comfyui_is_read_from_its_log() {
        let found = check(&[node("ComfyUI-KJNodes", true, true)], Some(&served(&["ComfyUI-KJNodes"])), LOG);
        assert_eq!(found.broken.len(), 1);
        assert!(found.broken[0].starts_with("custom node ComfyUI-Broken failed to import"));
        // Without python_module the import list decides, as for a pack without classes.
        let found =
            check(&[node("ComfyUI-KJNodes", true, true), node("ComfyUI-Broken", false, true)], None, LOG);
        assert!(found.broken.is_empty(), "{found:#?}");
        assert!(
            found.warnings[0].starts_with("custom node ComfyUI-Broken failed to import (required = false")
        );
    }
}
