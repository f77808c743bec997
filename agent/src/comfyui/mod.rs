//! What the agent knows of a ComfyUI checkout and of the ComfyUI it started, read
//! from files: the options the checkout takes (`comfy/cli_args.py`), the model
//! folders it defines (`folder_paths.py`, [`model_folders`]), the database migrations
//! it carries (`alembic_db/versions`); and whether the custom nodes a revision needs
//! loaded ([`custom_nodes`], from what ComfyUI serves and, for why, its [`log`]).

pub mod custom_nodes;
pub mod log;
pub mod model_folders;

use std::path::Path;

use serde::{Deserialize, Serialize};

use self::model_folders::ModelFolder;

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
    /// It takes `--models-directory`: every model folder under one directory.
    #[serde(default)]
    pub models_directory: bool,
    /// The model folders its `folder_paths.py` defines (empty: not readable, or a
    /// record of an older agent).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub model_folders: Vec<ModelFolder>,
    /// It takes `--temp-directory`: each instance gets its own.
    #[serde(default)]
    pub temp_directory: bool,
}

impl ComfyuiFacts {
    pub fn read(comfyui: &Path) -> Self {
        let cli_args = std::fs::read_to_string(comfyui.join("comfy/cli_args.py")).unwrap_or_default();
        let folder_paths = std::fs::read_to_string(comfyui.join("folder_paths.py")).unwrap_or_default();
        Self {
            database_url: cli_args.contains("\"--database-url\""),
            builtin_manager: cli_args.contains("\"--enable-manager\""),
            migrations: migrations(comfyui),
            models_directory: cli_args.contains("\"--models-directory\""),
            model_folders: model_folders::defined_in(&folder_paths),
            temp_directory: cli_args.contains("\"--temp-directory\""),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkouts_say_what_they_support() {
        let dir = tempfile::tempdir().unwrap();
        let comfyui = dir.path();
        std::fs::create_dir_all(comfyui.join("comfy")).unwrap();
        std::fs::create_dir_all(comfyui.join("alembic_db/versions")).unwrap();
        std::fs::write(
            comfyui.join("comfy/cli_args.py"),
            "parser.add_argument(\"--database-url\", type=str)\n\
             parser.add_argument(\"--models-directory\", type=is_valid_directory, default=None)\n",
        )
        .unwrap();
        std::fs::write(
            comfyui.join("folder_paths.py"),
            "folder_names_and_paths[\"model_patches\"] = ([os.path.join(models_dir, \"model_patches\")], exts)\n",
        )
        .unwrap();
        std::fs::write(
            comfyui.join("alembic_db/versions/e9c714da8d57_init.py"),
            "\"\"\"init\"\"\"\nrevision: str = 'e9c714da8d57'\ndown_revision = None\n",
        )
        .unwrap();
        std::fs::write(comfyui.join("alembic_db/versions/README"), "revision = \"x\"").unwrap();
        let facts = ComfyuiFacts::read(comfyui);
        assert!(facts.database_url && !facts.builtin_manager && facts.models_directory);
        assert_eq!(facts.migrations, ["e9c714da8d57"]);
        assert_eq!(facts.model_folders[0].name, "model_patches");
        assert_eq!(revision_of("revision_count = 3"), None);
        assert_eq!(ComfyuiFacts::read(&comfyui.join("missing")), ComfyuiFacts::default());
    }
}
