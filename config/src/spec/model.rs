//! `[[model]]` entries: the model files a ComfyUI environment needs, each pinned by
//! sha256, placed at `shared/models/<folder>/<name>` on the machines its `target`
//! selects. The checks here keep every value a safe relative path (no `..`, nothing
//! absolute, one subdirectory at most in a name) and name the entry and what to
//! write instead; which entries a machine gets is [`models_for`].

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::names::{self, printable};
use super::{Selector, Sha256Hex, Spec};
use crate::machine_facts::MachineFacts;

/// The model folder types ComfyUI 0.33's `folder_paths.py` defines under `models/`
/// (`custom_nodes` and `datasets` live elsewhere and hold no models).
pub const COMFYUI_FOLDERS: [&str; 25] = [
    "checkpoints",
    "configs",
    "loras",
    "vae",
    "text_encoders",
    "diffusion_models",
    "clip_vision",
    "style_models",
    "embeddings",
    "diffusers",
    "vae_approx",
    "controlnet",
    "gligen",
    "upscale_models",
    "latent_upscale_models",
    "hypernetworks",
    "photomaker",
    "classifiers",
    "model_patches",
    "audio_encoders",
    "background_removal",
    "frame_interpolation",
    "geometry_estimation",
    "optical_flow",
    "detection",
];

/// ComfyUI's legacy folder names (`folder_paths.map_legacy`) and what they mean now.
const LEGACY_FOLDERS: [(&str, &str); 2] = [("unet", "diffusion_models"), ("clip", "text_encoders")];

/// The prefix of a folder a custom node reads (`models/sams`).
pub const CUSTOM_FOLDER_PREFIX: &str = "models/";

/// Directory levels below `models/` a custom folder may have.
const MAX_CUSTOM_FOLDER_DEPTH: usize = 4;
/// Bytes in one path component (Linux's `NAME_MAX`).
const MAX_COMPONENT_BYTES: usize = 255;

/// One model file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Model {
    /// One of [`COMFYUI_FOLDERS`], or `models/PATH` for a folder a custom node reads.
    pub folder: String,
    /// The file name ComfyUI sees; may hold one subdirectory (`flux/ae.safetensors`).
    pub name: String,
    pub url: String,
    /// Required: a model that cannot be verified is never installed. Optional in the
    /// type only so that a missing one is reported with what to do.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<Sha256Hex>,
    /// Bytes; learned at apply when left out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    /// The controller's stored credential for the URL's host (a bearer token for
    /// Hugging Face or Civitai).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
    /// The machines that get it; none: every machine the environment targets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<Selector>,
    /// Kept on machines after the last environment naming it is removed.
    #[serde(default, skip_serializing_if = "is_false")]
    pub keep: bool,
}

fn is_false(value: &bool) -> bool {
    !*value
}

impl Model {
    /// The directory below `shared/models/`: the folder type, or a custom folder's
    /// path without `models/`.
    pub fn directory(&self) -> &str {
        self.folder.strip_prefix(CUSTOM_FOLDER_PREFIX).unwrap_or(&self.folder)
    }

    /// `<directory>/<name>`, relative to `shared/models/`.
    pub fn relative_path(&self) -> String {
        format!("{}/{}", self.directory(), self.name)
    }

    /// Whether a machine with `facts` gets this model.
    pub fn is_for(&self, facts: &MachineFacts) -> bool {
        self.target.as_ref().is_none_or(|target| target.matches(facts))
    }
}

/// The models one machine gets, in spec order, each with its position in the spec;
/// refused when two entries would put files at one path on it (their targets overlap).
pub fn models_for<'a>(spec: &'a Spec, facts: &MachineFacts) -> Result<Vec<(usize, &'a Model)>, String> {
    let mut chosen: Vec<(usize, &Model)> = Vec::new();
    let mut paths: BTreeMap<String, usize> = BTreeMap::new();
    for (i, model) in spec.models.iter().enumerate().filter(|(_, model)| model.is_for(facts)) {
        if let Some(first) = paths.insert(model.relative_path(), i) {
            return Err(format!(
                "model[{first}] and model[{i}] both put {} on this machine: narrow their targets so that each \
                 machine matches one",
                model.relative_path()
            ));
        }
        chosen.push((i, model));
    }
    Ok(chosen)
}

/// Total bytes of `models`, and how many of them have no `size` yet.
pub fn total_size<'a>(models: impl IntoIterator<Item = &'a Model>) -> (u64, usize) {
    models.into_iter().fold((0, 0), |(bytes, unknown), model| match model.size {
        Some(size) => (bytes.saturating_add(size), unknown),
        None => (bytes, unknown + 1),
    })
}

/// A folder as written: a ComfyUI folder type, or `models/` and a safe relative path.
pub fn check_folder(folder: &str) -> Result<(), String> {
    if COMFYUI_FOLDERS.contains(&folder) {
        return Ok(());
    }
    if let Some((_, current)) = LEGACY_FOLDERS.iter().find(|(legacy, _)| *legacy == folder) {
        return Err(format!(
            "`{folder}` is ComfyUI's old name for `{current}`: write folder = \"{current}\""
        ));
    }
    let Some(path) = folder.strip_prefix(CUSTOM_FOLDER_PREFIX) else {
        return Err(format!(
            "`{}` is not a model folder of ComfyUI 0.33 ({}): write one of them, or \"models/PATH\" for a folder \
             a custom node reads (e.g. \"models/sams\")",
            printable(folder),
            COMFYUI_FOLDERS.join(", ")
        ));
    };
    let parts: Vec<&str> = path.split('/').collect();
    if parts.len() > MAX_CUSTOM_FOLDER_DEPTH {
        return Err(format!(
            "`{}` is {} directories deep; a custom folder has at most {MAX_CUSTOM_FOLDER_DEPTH} below models/",
            printable(folder),
            parts.len()
        ));
    }
    for part in &parts {
        check_component(part).map_err(|why| {
            format!(
                "`{}` is not a safe path below models/: {why} (write e.g. \"models/sams\")",
                printable(folder)
            )
        })?;
    }
    if let Some(first) = parts.first()
        && let Some(same) = COMFYUI_FOLDERS
            .iter()
            .chain(LEGACY_FOLDERS.iter().map(|(legacy, _)| legacy))
            .find(|known| **known == *first)
    {
        let canonical = map_legacy(same);
        return Err(format!(
            "`{}` is inside ComfyUI's own `{same}` folder: write folder = \"{canonical}\" and put the subdirectory \
             in the name (name = \"{}/FILE\")",
            printable(folder),
            parts[1..].join("/")
        ));
    }
    Ok(())
}

fn map_legacy(folder: &str) -> &str {
    LEGACY_FOLDERS.iter().find(|(legacy, _)| *legacy == folder).map_or(folder, |(_, current)| current)
}

/// A model's file name: one file, or one subdirectory and a file.
pub fn check_model_name(name: &str) -> Result<(), String> {
    let hint = "write a file name, optionally with one subdirectory, e.g. \"flux/ae.safetensors\"";
    if name.starts_with('/') {
        return Err(format!("`{}` is an absolute path: {hint}", printable(name)));
    }
    let parts: Vec<&str> = name.split('/').collect();
    if parts.len() > 2 {
        return Err(format!(
            "`{}` has {} directories; a name may have one: {hint}",
            printable(name),
            parts.len() - 1
        ));
    }
    for part in &parts {
        check_component(part).map_err(|why| format!("`{}` {why}: {hint}", printable(name)))?;
    }
    Ok(())
}

/// One path component: not empty, `.` or `..`, not hidden, no separator, control
/// character or backslash, not starting with `-` or a space, at most 255 bytes.
fn check_component(part: &str) -> Result<(), String> {
    if part.is_empty() {
        return Err("has an empty path component (`//` or a trailing `/`)".to_owned());
    }
    if part == "." || part == ".." {
        return Err(format!("has a `{part}` component, which would leave its folder"));
    }
    if part.starts_with('.') {
        return Err("has a component starting with `.` (hidden files are not model files)".to_owned());
    }
    if part.starts_with('-') || part.starts_with(' ') || part.ends_with(' ') {
        return Err("has a component starting with `-` or with a space at either end".to_owned());
    }
    if part.len() > MAX_COMPONENT_BYTES {
        return Err(format!("has a component longer than {MAX_COMPONENT_BYTES} bytes"));
    }
    if part.chars().any(|c| c.is_control() || matches!(c, '\\' | ':' | '*' | '?' | '"' | '<' | '>' | '|')) {
        return Err("has a control character or one of \\ : * ? \" < > |".to_owned());
    }
    Ok(())
}

/// Problems with the spec's `[[model]]` entries, as (key path, message). The
/// credentials they name are checked with the others (`credentials::check`).
pub(super) fn check(spec: &Spec) -> Vec<(String, String)> {
    let mut problems = Vec::new();
    let trusted = &spec.index.trusted_hosts;
    // relative path → (first entry, whether every entry so far has a target)
    let mut paths: BTreeMap<String, (usize, bool)> = BTreeMap::new();
    for (i, model) in spec.models.iter().enumerate() {
        let path = format!("model[{i}]");
        let folder_ok = check_folder(&model.folder).map_err(|message| {
            problems.push((format!("{path}.folder"), message));
        });
        let name_ok = check_model_name(&model.name).map_err(|message| {
            problems.push((format!("{path}.name"), message));
        });
        if let Err(message) = names::check_download_url(&model.url, trusted) {
            problems.push((format!("{path}.url"), message));
        }
        if model.sha256.is_none() {
            problems.push((
                path.clone(),
                format!(
                    "`{}` has no sha256: add sha256 = \"<64 hex digits>\" (`sha256sum FILE`, or `comfyfleet models \
                     import WORKFLOW.json` fills it from Hugging Face); comfyfleet installs no model it cannot verify",
                    printable(&model.name)
                ),
            ));
        }
        if model.size == Some(0) {
            problems.push((
                format!("{path}.size"),
                "is 0 bytes: write the file's size, or leave size out".to_owned(),
            ));
        }
        if folder_ok.is_err() || name_ok.is_err() {
            continue;
        }
        let targeted = model.target.is_some();
        match paths.get_mut(&model.relative_path()) {
            None => {
                paths.insert(model.relative_path(), (i, targeted));
            }
            Some((first, all_targeted)) if !(*all_targeted && targeted) => {
                problems.push((
                    format!("{path}.name"),
                    format!(
                        "model[{first}] already puts {} on every machine it targets: keep one entry, or give each a \
                         target so that every machine matches one (e.g. the bf16 file where gpu.memory >= 40, the fp8 \
                         one elsewhere)",
                        model.relative_path()
                    ),
                ));
                *all_targeted = false;
            }
            Some(_) => {}
        }
    }
    problems
}
