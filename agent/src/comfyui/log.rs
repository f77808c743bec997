//! ComfyUI's console output, read for what it says about custom nodes: which ones
//! it tried to import (its "Import times for custom nodes" list) and why one did not
//! load. ComfyUI 0.3.x writes bare messages; newer ones (`app/logger.py`'s
//! `ColoredFormatter` in 0.33) start every record with an ANSI colour code and
//! `[LEVEL] `, on the record's first line only (a traceback's other lines are bare).
//! [`plain_lines`] removes both, so one parser reads either format.

/// The levels ComfyUI's `ColoredFormatter` tags records with.
const LEVELS: [&str; 6] = ["DEBUG", "DETAIL", "INFO", "WARNING", "ERROR", "CRITICAL"];

/// How many lines of a node's traceback a reason keeps.
const TRACEBACK_LINES: usize = 6;

/// Every line of `log` without ANSI escape sequences and without a leading
/// `[LEVEL] ` tag.
pub fn plain_lines(log: &str) -> Vec<String> {
    log.lines()
        .map(|line| {
            let bare = without_escapes(line);
            without_level(&bare).to_owned()
        })
        .collect()
}

/// `line` without its escape sequences: CSI sequences (`ESC [ … final byte`, the
/// colours) and any other `ESC x` pair.
fn without_escapes(line: &str) -> String {
    if !line.contains('\u{1b}') {
        return line.to_owned();
    }
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c != '\u{1b}' {
            out.push(c);
            continue;
        }
        if chars.next() == Some('[') {
            // Parameters and intermediates run up to a final byte in @..=~.
            for next in chars.by_ref() {
                if ('\u{40}'..='\u{7e}').contains(&next) {
                    break;
                }
            }
        }
    }
    out
}

fn without_level(line: &str) -> &str {
    line.strip_prefix('[')
        .and_then(|rest| rest.split_once(']'))
        .filter(|(level, _)| LEVELS.contains(level))
        .map_or(line, |(_, message)| message.strip_prefix(' ').unwrap_or(message))
}

/// One entry of ComfyUI's "Import times for custom nodes" list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeImport {
    /// The entry under `custom_nodes/`: a directory name, or a `.py` file's stem.
    pub name: String,
    /// The path ComfyUI logged.
    pub path: String,
    /// `false` where ComfyUI marked it `(IMPORT FAILED)`.
    pub imported: bool,
}

/// Every node in the "Import times for custom nodes" lists of `lines` (one start's
/// output): `   0.4 seconds: PATH` or `   0.1 seconds (IMPORT FAILED): PATH`. A
/// node listed twice counts once, as first listed.
pub fn node_imports(lines: &[String]) -> Vec<NodeImport> {
    let mut imports: Vec<NodeImport> = Vec::new();
    for line in lines {
        let Some((seconds, rest)) = line.trim_start().split_once(" seconds") else { continue };
        if seconds.parse::<f64>().is_err() {
            continue;
        }
        let (imported, path) = match (rest.strip_prefix(" (IMPORT FAILED): "), rest.strip_prefix(": ")) {
            (Some(path), _) => (false, path),
            (None, Some(path)) => (true, path),
            (None, None) => continue,
        };
        let path = path.trim();
        let name = node_name(path);
        if !name.is_empty() && !imports.iter().any(|import| import.name == name) {
            imports.push(NodeImport { name, path: path.to_owned(), imported });
        }
    }
    imports
}

/// The entry under `custom_nodes/` a logged path names.
pub fn node_name(path: &str) -> String {
    let last = path.trim_end_matches('/').rsplit('/').next().unwrap_or(path);
    last.strip_suffix(".py").unwrap_or(last).to_owned()
}

/// What ComfyUI logged about why the custom node `name` did not load: the end of
/// the traceback before "Cannot import PATH module for custom nodes: ERROR", or the
/// line where it skipped the node (no node classes, a V3 `comfy_entrypoint` that
/// failed, left out by `--disable-all-custom-nodes`/`--whitelist-custom-nodes`,
/// blocked by ComfyUI-Manager's policy). `None` when it logged nothing about it.
pub fn why_not_loaded(lines: &[String], name: &str) -> Option<String> {
    if let Some(at) =
        lines.iter().position(|line| names(line, "Cannot import ", " module for custom nodes: ", name))
    {
        return Some(traceback_before(lines, at));
    }
    let skipped = |line: &String| {
        names(line, "Skip ", " module for custom nodes", name)
            || names(line, "comfy_entrypoint in ", " is not callable", name)
            || names(line, "comfy_entrypoint in ", " did not return", name)
            || names(line, "Error while calling comfy_entrypoint in ", ": ", name)
            || names(line, "Skipping ", " due to disable_all_custom_nodes", name)
            || line.strip_prefix("Blocked by policy: ").is_some_and(|path| node_name(path.trim()) == name)
            || line.trim() == "Skipping loading of custom nodes"
    };
    lines.iter().find(|line| skipped(line)).map(|line| format!("ComfyUI logged \"{}\"", line.trim()))
}

/// Whether `line` is `PREFIX PATH SUFFIX…` with PATH naming the node `name`.
fn names(line: &str, prefix: &str, suffix: &str, name: &str) -> bool {
    line.strip_prefix(prefix)
        .and_then(|rest| rest.find(suffix).map(|end| &rest[..end]))
        .is_some_and(|path| node_name(path) == name)
}

/// The last lines of the traceback ComfyUI logged before `lines[at]` ("Cannot
/// import …: ERROR"), or that line's error where there is none.
fn traceback_before(lines: &[String], at: usize) -> String {
    let start = lines[..at].iter().rposition(|line| line.starts_with("Traceback (most recent call last):"));
    let traceback: Vec<&str> = start
        .map(|start| {
            lines[start + 1..at]
                .iter()
                .map(|line| line.trim_end())
                .filter(|line| !line.trim().is_empty())
                .collect()
        })
        .unwrap_or_default();
    if traceback.is_empty() {
        let error = lines[at].split_once(" module for custom nodes: ").map_or("", |(_, error)| error);
        return error.trim().to_owned();
    }
    traceback[traceback.len().saturating_sub(TRACEBACK_LINES)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Lines as ComfyUI 0.3.64's nodes.py logs them (`logging.warning(traceback.format_exc())`,
    /// "Cannot import …", then the import-time table).
    const LOG_0_3_64: &str = "\
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

    /// The same start as ComfyUI 0.33.0's `ColoredFormatter` writes it: a bold
    /// yellow `[WARNING]`, a green `[INFO]`, the tag on a record's first line only.
    const LOG_0_33: &str = "\
\u{1b}[1m\u{1b}[33m[WARNING]\u{1b}[0m Traceback (most recent call last):
  File \"/d/envs/2/ComfyUI/nodes.py\", line 2262, in load_custom_node
    module_spec.loader.exec_module(module)
  File \"/d/envs/2/ComfyUI/custom_nodes/ComfyUI-Broken/__init__.py\", line 1, in <module>
    import cv2
ModuleNotFoundError: No module named 'cv2'

\u{1b}[1m\u{1b}[33m[WARNING]\u{1b}[0m Cannot import /d/envs/2/ComfyUI/custom_nodes/ComfyUI-Broken module for custom nodes: No module named 'cv2'
\u{1b}[1m\u{1b}[33m[WARNING]\u{1b}[0m Error while calling comfy_entrypoint in /d/envs/2/ComfyUI/custom_nodes/ComfyUI-V3: boom
\u{1b}[32m[INFO]\u{1b}[0m Skipping ComfyUI-Left-Out due to disable_all_custom_nodes and whitelist_custom_nodes
\u{1b}[32m[INFO]\u{1b}[0m Blocked by policy: /d/envs/2/ComfyUI/custom_nodes/ComfyUI-Blocked
\u{1b}[32m[INFO]\u{1b}[0m 
Import times for custom nodes:
\u{1b}[32m[INFO]\u{1b}[0m    0.0 seconds (IMPORT FAILED): /d/envs/2/ComfyUI/custom_nodes/ComfyUI-V3
\u{1b}[32m[INFO]\u{1b}[0m    0.1 seconds (IMPORT FAILED): /d/envs/2/ComfyUI/custom_nodes/ComfyUI-Broken
\u{1b}[32m[INFO]\u{1b}[0m    0.4 seconds: /d/envs/2/ComfyUI/custom_nodes/ComfyUI-KJNodes
\u{1b}[32m[INFO]\u{1b}[0m 
";

    #[test]
    fn both_log_formats_read_as_the_same_lines() {
        let old = plain_lines(LOG_0_3_64);
        let new = plain_lines(LOG_0_33);
        assert!(new.iter().all(|line| !line.contains('\u{1b}') && !line.starts_with('[')), "{new:#?}");
        assert_eq!(new[0], "Traceback (most recent call last):");
        assert!(old.contains(&"Import times for custom nodes:".to_owned()));
        assert!(new.contains(&"Import times for custom nodes:".to_owned()));
        // A message that merely starts with brackets is left alone.
        assert_eq!(plain_lines("[comfyfleet] hello\n[INFO]x"), ["[comfyfleet] hello", "x"]);
    }

    #[test]
    fn the_import_list_says_which_nodes_imported() {
        for log in [LOG_0_3_64, LOG_0_33] {
            let imports = node_imports(&plain_lines(log));
            let kj = imports.iter().find(|import| import.name == "ComfyUI-KJNodes").unwrap();
            assert!(kj.imported);
            let broken = imports.iter().find(|import| import.name == "ComfyUI-Broken").unwrap();
            assert!(!broken.imported);
        }
        let imports = node_imports(&plain_lines(LOG_0_3_64));
        assert_eq!(
            imports.iter().map(|import| import.name.as_str()).collect::<Vec<_>>(),
            ["websocket_image_save", "empty", "ComfyUI-Broken", "ComfyUI-KJNodes"]
        );
        assert!(node_imports(&plain_lines("loaded 0.5 seconds: later\n")).is_empty());
    }

    #[test]
    fn reasons_are_found_in_either_format() {
        for log in [LOG_0_3_64, LOG_0_33] {
            let lines = plain_lines(log);
            let why = why_not_loaded(&lines, "ComfyUI-Broken").unwrap();
            assert!(why.ends_with("ModuleNotFoundError: No module named 'cv2'"), "{why}");
            assert!(why.contains("import cv2"), "{why}");
            assert_eq!(why_not_loaded(&lines, "ComfyUI-KJNodes"), None);
        }
        let old = plain_lines(LOG_0_3_64);
        assert!(why_not_loaded(&old, "empty").unwrap().contains("lack of NODE_CLASS_MAPPINGS"));
        let new = plain_lines(LOG_0_33);
        let v3 = why_not_loaded(&new, "ComfyUI-V3").unwrap();
        assert!(v3.contains("Error while calling comfy_entrypoint") && v3.ends_with("boom\""), "{v3}");
        let left_out = why_not_loaded(&new, "ComfyUI-Left-Out").unwrap();
        assert!(
            left_out.contains("due to disable_all_custom_nodes and whitelist_custom_nodes"),
            "{left_out}"
        );
        assert!(why_not_loaded(&new, "ComfyUI-Blocked").unwrap().contains("Blocked by policy"));
        // A name that is a prefix of another's is not confused with it.
        assert_eq!(why_not_loaded(&new, "ComfyUI"), None);
        // An import error without a traceback still says what failed.
        let bare = plain_lines("Cannot import /x/custom_nodes/a module for custom nodes: bad magic\n");
        assert_eq!(why_not_loaded(&bare, "a").as_deref(), Some("bad magic"));
    }
}
