//! Where ComfyUI finds models: `shared/models/`, the one models root every revision
//! shares. A checkout whose `comfy/cli_args.py` takes `--models-directory` (0.33) is
//! pointed at it whole, so every folder type it knows, or a custom node adds under
//! `folder_paths.models_dir`, is there. An older one gets `shared/extra_model_paths.yaml`
//! naming every model folder its `folder_paths.py` defines (its
//! `folder_names_and_paths["…"] = ([os.path.join(models_dir, "…"), …], …)` lines), or,
//! where none can be read, the folders ComfyUI 0.33.0 defines. Either way each folder
//! is created under `shared/models/` before ComfyUI starts.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::ComfyuiFacts;

/// One model folder type and its directories under the models root
/// (`text_encoders` → `text_encoders`, `clip`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelFolder {
    pub name: String,
    pub directories: Vec<String>,
}

/// ComfyUI 0.33.0's `folder_paths.py`: its 25 model folder types, for a checkout
/// whose own list cannot be read.
const COMFYUI_0_33_FOLDERS: [(&str, &[&str]); 25] = [
    ("checkpoints", &["checkpoints"]),
    ("configs", &["configs"]),
    ("loras", &["loras"]),
    ("vae", &["vae"]),
    ("text_encoders", &["text_encoders", "clip"]),
    ("diffusion_models", &["unet", "diffusion_models"]),
    ("clip_vision", &["clip_vision"]),
    ("style_models", &["style_models"]),
    ("embeddings", &["embeddings"]),
    ("diffusers", &["diffusers"]),
    ("vae_approx", &["vae_approx"]),
    ("controlnet", &["controlnet", "t2i_adapter"]),
    ("gligen", &["gligen"]),
    ("upscale_models", &["upscale_models"]),
    ("latent_upscale_models", &["latent_upscale_models"]),
    ("hypernetworks", &["hypernetworks"]),
    ("photomaker", &["photomaker"]),
    ("classifiers", &["classifiers"]),
    ("model_patches", &["model_patches"]),
    ("audio_encoders", &["audio_encoders"]),
    ("background_removal", &["background_removal"]),
    ("frame_interpolation", &["frame_interpolation"]),
    ("geometry_estimation", &["geometry_estimation"]),
    ("optical_flow", &["optical_flow"]),
    ("detection", &["detection"]),
];

const MODELS_DIR_JOIN: &str = "os.path.join(models_dir,";

/// The model folders `folder_paths` (a `folder_paths.py`) defines under `models_dir`,
/// in file order; folders under the base path (`custom_nodes`, `datasets`) and names
/// that are not plain words are left out.
pub fn defined_in(folder_paths: &str) -> Vec<ModelFolder> {
    let mut folders: Vec<ModelFolder> = Vec::new();
    for line in folder_paths.lines() {
        let Some(rest) = line.trim_start().strip_prefix("folder_names_and_paths[") else { continue };
        let Some(name) = quoted(rest).filter(|name| is_plain(name)) else { continue };
        let mut directories = Vec::new();
        let mut tail = rest;
        while let Some(at) = tail.find(MODELS_DIR_JOIN) {
            tail = &tail[at + MODELS_DIR_JOIN.len()..];
            if let Some(directory) = quoted(tail).filter(|directory| is_plain(directory))
                && !directories.contains(&directory)
            {
                directories.push(directory);
            }
        }
        if directories.is_empty() || folders.iter().any(|folder| folder.name == name) {
            continue;
        }
        folders.push(ModelFolder { name, directories });
    }
    folders
}

/// The first string literal in `text` (after optional spaces), quoted with `"` or `'`.
fn quoted(text: &str) -> Option<String> {
    let text = text.trim_start();
    let quote = text.chars().next().filter(|c| *c == '"' || *c == '\'')?;
    let inner = &text[1..];
    inner.find(quote).map(|end| inner[..end].to_owned())
}

/// A folder or directory name that is safe as a YAML key and as one path component.
fn is_plain(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

/// The folders of a checkout with `facts`: its own list, else ComfyUI 0.33.0's.
pub fn folders(facts: &ComfyuiFacts) -> Vec<ModelFolder> {
    if !facts.model_folders.is_empty() {
        return facts.model_folders.clone();
    }
    COMFYUI_0_33_FOLDERS
        .iter()
        .map(|(name, directories)| ModelFolder {
            name: (*name).to_owned(),
            directories: directories.iter().map(|directory| (*directory).to_owned()).collect(),
        })
        .collect()
}

pub fn models_root(shared: &Path) -> PathBuf {
    shared.join("models")
}

pub fn yaml_path(shared: &Path) -> PathBuf {
    shared.join("extra_model_paths.yaml")
}

/// ComfyUI's arguments for the shared models root.
pub fn arguments(facts: &ComfyuiFacts, shared: &Path) -> Vec<String> {
    let (flag, path) = if facts.models_directory {
        ("--models-directory", models_root(shared))
    } else {
        ("--extra-model-paths-config", yaml_path(shared))
    };
    vec![flag.to_owned(), path.to_string_lossy().into_owned()]
}

/// Before a start: every model folder of the checkout created under `shared/models/`
/// (ComfyUI creates none of them, and `--models-directory` must exist), and, where
/// the checkout takes no `--models-directory`, `shared/extra_model_paths.yaml` naming
/// them. Only one ComfyUI runs from the data dir, so the file is the running one's.
pub fn prepare(shared: &Path, facts: &ComfyuiFacts) -> Result<(), String> {
    let root = models_root(shared);
    let folders = folders(facts);
    for directory in folders.iter().flat_map(|folder| &folder.directories) {
        let path = root.join(directory);
        std::fs::create_dir_all(&path)
            .map_err(|error| format!("cannot create {}: {error}", path.display()))?;
    }
    if facts.models_directory {
        return Ok(());
    }
    let path = yaml_path(shared);
    comfyfleet_daemon::files::write_atomic(&path, yaml(&root, &folders).as_bytes(), 0o644)
        .map_err(|error| format!("cannot write {}: {error}", path.display()))
}

/// ComfyUI's `extra_model_paths.yaml` format (`utils/extra_config.py`): a base path
/// and, per folder type, its directories as a block, one per line; `is_default` puts
/// them first, so ComfyUI saves into them too.
fn yaml(root: &Path, folders: &[ModelFolder]) -> String {
    let base = root.to_string_lossy().replace('\\', "\\\\").replace('"', "\\\"");
    let mut yaml = format!(
        "# Written by comfyfleet-agent before each ComfyUI start: every model folder this\n\
         # revision's ComfyUI defines, in the models root every revision shares.\n\
         comfyfleet:\n    base_path: \"{base}\"\n    is_default: true\n"
    );
    for folder in folders {
        yaml.push_str(&format!("    {}: |\n", folder.name));
        for directory in &folder.directories {
            yaml.push_str(&format!("        {directory}\n"));
        }
    }
    yaml
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Lines of ComfyUI 0.33.0's folder_paths.py, as they are there.
    const FOLDER_PATHS_0_33: &str = r#"
if args.models_directory:
    models_dir = os.path.abspath(args.models_directory)
else:
    models_dir = os.path.join(base_path, "models")

folder_names_and_paths["checkpoints"] = ([os.path.join(models_dir, "checkpoints")], supported_pt_extensions)
folder_names_and_paths["configs"] = ([os.path.join(models_dir, "configs")], [".yaml"])
folder_names_and_paths["text_encoders"] = ([os.path.join(models_dir, "text_encoders"), os.path.join(models_dir, "clip")], supported_pt_extensions)
folder_names_and_paths["custom_nodes"] = ([os.path.join(base_path, "custom_nodes")], set())
folder_names_and_paths["datasets"] = ([os.path.join(base_path, "datasets")], set())
folder_names_and_paths["model_patches"] = ([os.path.join(models_dir, "model_patches")], supported_pt_extensions)
folder_names_and_paths['evil'] = ([os.path.join(models_dir, "../../etc")], supported_pt_extensions)
    folder_names_and_paths["detection"] = ([os.path.join(models_dir, 'detection')], supported_pt_extensions)
"#;

    #[test]
    fn a_checkout_s_folders_are_read_from_its_folder_paths() {
        let folders = defined_in(FOLDER_PATHS_0_33);
        let names: Vec<&str> = folders.iter().map(|folder| folder.name.as_str()).collect();
        assert_eq!(names, ["checkpoints", "configs", "text_encoders", "model_patches", "detection"]);
        assert_eq!(folders[2].directories, ["text_encoders", "clip"]);
        assert!(defined_in("models_dir = 'x'\n").is_empty());
    }

    #[test]
    fn the_builtin_list_is_comfyui_0_33_s_and_a_read_list_wins() {
        let builtin = folders(&ComfyuiFacts::default());
        assert_eq!(builtin.len(), 25);
        for name in ["model_patches", "audio_encoders", "latent_upscale_models", "detection"] {
            assert!(builtin.iter().any(|folder| folder.name == name), "{name}");
        }
        let facts = ComfyuiFacts { model_folders: defined_in(FOLDER_PATHS_0_33), ..ComfyuiFacts::default() };
        assert_eq!(folders(&facts).len(), 5);
    }

    #[test]
    fn the_models_root_is_prepared_for_either_kind_of_checkout() {
        let dir = tempfile::tempdir().unwrap();
        let shared = dir.path().join("shared \"x\"");
        let older = ComfyuiFacts { model_folders: defined_in(FOLDER_PATHS_0_33), ..ComfyuiFacts::default() };
        prepare(&shared, &older).unwrap();
        assert!(shared.join("models/clip").is_dir() && shared.join("models/model_patches").is_dir());
        let yaml = std::fs::read_to_string(yaml_path(&shared)).unwrap();
        assert!(yaml.contains("    text_encoders: |\n        text_encoders\n        clip\n"), "{yaml}");
        assert!(yaml.contains("base_path: \"") && yaml.contains("shared \\\"x\\\"/models\""), "{yaml}");
        assert_eq!(arguments(&older, &shared)[0], "--extra-model-paths-config");

        let newer = ComfyuiFacts { models_directory: true, ..ComfyuiFacts::default() };
        std::fs::remove_file(yaml_path(&shared)).unwrap();
        prepare(&shared, &newer).unwrap();
        assert!(shared.join("models/latent_upscale_models").is_dir());
        assert!(!yaml_path(&shared).exists(), "--models-directory needs no paths file");
        assert_eq!(
            arguments(&newer, &shared),
            ["--models-directory", &shared.join("models").to_string_lossy()]
        );
    }
}
