//! What the agent knows of a ComfyUI checkout and of the ComfyUI it started, read
//! from files: the options the checkout takes (`comfy/cli_args.py`), the database
//! migrations it carries (`alembic_db/versions`), and, from ComfyUI's own log, the
//! custom nodes that failed to import (ComfyUI logs them and runs on without them).

use std::path::Path;

use serde::{Deserialize, Serialize};

/// What a ComfyUI checkout supports.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ComfyuiFacts {
    /// It takes `--database-url`, so its database can live outside the checkout.
    #[serde(default)]
    pub database_url: bool,
    /// It has ComfyUI-Manager built in (`--enable-manager`).
    #[serde(default)]
    pub builtin_manager: bool,
    /// The alembic revisions of its database migrations: the schemas it can open.
    #[serde(default)]
    pub migrations: Vec<String>,
}

impl ComfyuiFacts {
    pub fn read(comfyui: &Path) -> Self {
        let cli_args = std::fs::read_to_string(comfyui.join("comfy/cli_args.py")).unwrap_or_default();
        Self {
            database_url: cli_args.contains("\"--database-url\""),
            builtin_manager: cli_args.contains("\"--enable-manager\""),
            migrations: migrations(comfyui),
        }
    }
}

/// The `revision = "…"` of every file in `alembic_db/versions`, sorted.
fn migrations(comfyui: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(comfyui.join("alembic_db/versions")) else { return Vec::new() };
    let mut revisions: Vec<String> = entries
        .flatten()
        .filter(|entry| entry.path().extension().is_some_and(|extension| extension == "py"))
        .filter_map(|entry| std::fs::read_to_string(entry.path()).ok())
        .filter_map(|text| text.lines().find_map(revision_of))
        .collect();
    revisions.sort();
    revisions.dedup();
    revisions
}

/// `revision = 'e9c714da8d57'` or `revision: str = "e9c714da8d57"` → the id.
fn revision_of(line: &str) -> Option<String> {
    let rest = line.strip_prefix("revision")?;
    let (before, value) = rest.split_once('=')?;
    if !(before.trim().is_empty() || before.trim_start().starts_with(':')) {
        return None;
    }
    let value = value.trim();
    let quote = value.chars().next().filter(|c| *c == '"' || *c == '\'')?;
    let inner = &value[1..];
    let end = inner.find(quote)?;
    let id = &inner[..end];
    (!id.is_empty() && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')).then(|| id.to_owned())
}

/// A custom node ComfyUI could not load.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailedNode {
    /// The entry under `custom_nodes/`: a directory name, or a `.py` file's stem.
    pub name: String,
    /// The end of the traceback and the error, or ComfyUI's reason for skipping it.
    pub why: String,
}

/// How many lines of a node's traceback a report keeps.
const TRACEBACK_LINES: usize = 6;

/// The custom nodes ComfyUI reported as `(IMPORT FAILED)` in `log` (one start's
/// output), each with the end of its traceback.
pub fn failed_nodes(log: &str) -> Vec<FailedNode> {
    let lines: Vec<&str> = log.lines().collect();
    let mut failed = Vec::new();
    for line in &lines {
        let Some((_, path)) = line.split_once(" seconds (IMPORT FAILED): ") else { continue };
        let path = path.trim();
        let name = node_name(path);
        if failed.iter().any(|node: &FailedNode| node.name == name) {
            continue;
        }
        failed.push(FailedNode { why: why_it_failed(&lines, path), name });
    }
    failed
}

fn node_name(path: &str) -> String {
    let last = path.trim_end_matches('/').rsplit('/').next().unwrap_or(path);
    last.strip_suffix(".py").unwrap_or(last).to_owned()
}

/// The traceback ComfyUI logged before "Cannot import PATH module for custom nodes:
/// ERROR", or the line saying why it skipped the node.
fn why_it_failed(lines: &[&str], path: &str) -> String {
    let cannot = format!("Cannot import {path} module for custom nodes: ");
    if let Some(at) = lines.iter().position(|line| line.starts_with(&cannot)) {
        let start =
            lines[..at].iter().rposition(|line| line.starts_with("Traceback (most recent call last):"));
        let traceback: Vec<&str> = start
            .map(|start| {
                lines[start + 1..at].iter().copied().filter(|line| !line.trim().is_empty()).collect()
            })
            .unwrap_or_default();
        let tail = &traceback[traceback.len().saturating_sub(TRACEBACK_LINES)..];
        return tail.iter().map(|line| line.trim_end()).collect::<Vec<_>>().join("\n");
    }
    let skipped = format!("Skip {path} module for custom nodes");
    lines
        .iter()
        .find(|line| line.starts_with(&skipped))
        .map_or_else(|| "ComfyUI logged no reason".to_owned(), |line| (*line).to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Lines as ComfyUI 0.3.64's nodes.py logs them (`logging.warning(traceback.format_exc())`,
    /// "Cannot import …", then the import-time table).
    const LOG: &str = "\
Traceback (most recent call last):
  File \"/d/envs/1/ComfyUI/nodes.py\", line 2131, in load_custom_node
    module_spec.loader.exec_module(module)
  File \"<frozen importlib._bootstrap_external>\", line 940, in exec_module
  File \"/d/envs/1/ComfyUI/custom_nodes/ComfyUI-Broken/__init__.py\", line 1, in <module>
    import cv2
ModuleNotFoundError: No module named 'cv2'

Cannot import /d/envs/1/ComfyUI/custom_nodes/ComfyUI-Broken module for custom nodes: No module named 'cv2'
Skip /d/envs/1/ComfyUI/custom_nodes/empty.py module for custom nodes due to the lack of NODE_CLASS_MAPPINGS or NODES_LIST (need one).

Import times for custom nodes:
   0.0 seconds: /d/envs/1/ComfyUI/custom_nodes/websocket_image_save.py
   0.0 seconds (IMPORT FAILED): /d/envs/1/ComfyUI/custom_nodes/empty.py
   0.1 seconds (IMPORT FAILED): /d/envs/1/ComfyUI/custom_nodes/ComfyUI-Broken
   0.4 seconds: /d/envs/1/ComfyUI/custom_nodes/ComfyUI-KJNodes
";

    #[test]
    fn failed_nodes_are_named_with_the_end_of_their_traceback() {
        let failed = failed_nodes(LOG);
        assert_eq!(failed.len(), 2);
        assert_eq!(failed[0].name, "empty");
        assert!(failed[0].why.contains("lack of NODE_CLASS_MAPPINGS"), "{}", failed[0].why);
        assert_eq!(failed[1].name, "ComfyUI-Broken");
        assert!(failed[1].why.ends_with("ModuleNotFoundError: No module named 'cv2'"), "{}", failed[1].why);
        assert!(failed[1].why.contains("import cv2"), "{}", failed[1].why);
        assert!(
            failed_nodes("Import times for custom nodes:\n   0.1 seconds: /x/custom_nodes/a\n").is_empty()
        );
    }

    #[test]
    fn checkouts_say_what_they_support() {
        let dir = tempfile::tempdir().unwrap();
        let comfyui = dir.path();
        std::fs::create_dir_all(comfyui.join("comfy")).unwrap();
        std::fs::create_dir_all(comfyui.join("alembic_db/versions")).unwrap();
        std::fs::write(
            comfyui.join("comfy/cli_args.py"),
            "parser.add_argument(\"--database-url\", type=str)\n",
        )
        .unwrap();
        std::fs::write(
            comfyui.join("alembic_db/versions/e9c714da8d57_init.py"),
            "\"\"\"init\"\"\"\nrevision: str = 'e9c714da8d57'\ndown_revision = None\n",
        )
        .unwrap();
        std::fs::write(comfyui.join("alembic_db/versions/README"), "revision = \"x\"").unwrap();
        let facts = ComfyuiFacts::read(comfyui);
        assert!(facts.database_url && !facts.builtin_manager);
        assert_eq!(facts.migrations, ["e9c714da8d57"]);
        assert_eq!(revision_of("revision_count = 3"), None);
        assert_eq!(ComfyuiFacts::read(&comfyui.join("missing")), ComfyuiFacts::default());
    }
}
