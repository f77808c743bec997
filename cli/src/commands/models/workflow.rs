//! The models a ComfyUI workflow declares. UI-format workflows (what the editor saves
//! and templates ship) keep them on loader nodes as `properties.models`: a list of
//! `{name, url, directory}`, sometimes with `hash` and `hash_type: "SHA256"`. The
//! nodes are in `nodes` and, for subgraphs, in `definitions.subgraphs[].nodes`.

use std::collections::BTreeMap;

use comfyfleet_config::spec::Sha256Hex;
use comfyfleet_config::spec::model::{self, COMFYUI_FOLDERS, CUSTOM_FOLDER_PREFIX};
use comfyfleet_config::spec::names::{self, printable};
use serde_json::Value;

/// Larger than any real workflow (the templates are under 1 MiB).
pub const MAX_WORKFLOW_BYTES: u64 = 64 * 1024 * 1024;
/// Subgraphs inside subgraphs, at most.
const MAX_DEPTH: usize = 16;
/// Model references read, at most.
const MAX_REFERENCES: usize = 10_000;

/// One model a workflow names, once however many nodes name it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Declared {
    /// As a spec writes it: a ComfyUI folder type, or `models/PATH`.
    pub folder: String,
    pub name: String,
    pub url: String,
    pub sha256: Option<Sha256Hex>,
    /// The nodes that name it: `node 37 (UNETLoader) in subgraph "…"`.
    pub nodes: Vec<String>,
}

/// Every model `text` declares, in the order first named, or every problem found.
pub fn read(text: &str) -> Result<Vec<Declared>, Vec<String>> {
    let workflow: Value = serde_json::from_str(text).map_err(|error| {
        vec![format!("is not a JSON workflow ({error}): save it from ComfyUI with Export")]
    })?;
    if workflow.get("nodes").is_none_or(|nodes| !nodes.is_array()) {
        let hint = if workflow.as_object().is_some_and(|o| o.values().any(|v| v.get("class_type").is_some()))
        {
            "it is an API-format prompt, which carries no model URLs: export the workflow itself (Workflow → Export)"
        } else {
            "it has no `nodes` list: export the workflow from ComfyUI (Workflow → Export)"
        };
        return Err(vec![format!("is not a ComfyUI workflow: {hint}")]);
    }
    let mut reader = Reader::default();
    reader.graph(&workflow, None, 0);
    if !reader.problems.is_empty() {
        return Err(reader.problems);
    }
    Ok(reader.found)
}

#[derive(Default)]
struct Reader {
    found: Vec<Declared>,
    /// (folder, name) → position in `found`.
    index: BTreeMap<(String, String), usize>,
    problems: Vec<String>,
    references: usize,
}

impl Reader {
    fn graph(&mut self, graph: &Value, subgraph: Option<&str>, depth: usize) {
        if depth > MAX_DEPTH {
            self.problems.push(format!("subgraphs are nested deeper than {MAX_DEPTH}"));
            return;
        }
        for node in graph.get("nodes").and_then(Value::as_array).into_iter().flatten() {
            self.node(node, subgraph);
        }
        let subgraphs = graph.pointer("/definitions/subgraphs").and_then(Value::as_array);
        for sub in subgraphs.into_iter().flatten() {
            let name =
                sub.get("name").and_then(Value::as_str).or_else(|| sub.get("id").and_then(Value::as_str));
            self.graph(sub, Some(name.unwrap_or("?")), depth + 1);
        }
    }

    fn node(&mut self, node: &Value, subgraph: Option<&str>) {
        let Some(models) = node.pointer("/properties/models").and_then(Value::as_array) else { return };
        let id =
            node.get("id").map_or_else(|| "?".to_owned(), |id| id.to_string().trim_matches('"').to_owned());
        let kind = node.get("type").and_then(Value::as_str).unwrap_or("?");
        let mut at = format!("node {} ({})", printable(&id), printable(kind));
        if let Some(subgraph) = subgraph {
            at.push_str(&format!(" in subgraph \"{}\"", printable(subgraph)));
        }
        for (i, reference) in models.iter().enumerate() {
            self.references += 1;
            if self.references > MAX_REFERENCES {
                if self.references == MAX_REFERENCES + 1 {
                    self.problems.push(format!("names more than {MAX_REFERENCES} models"));
                }
                return;
            }
            match declared(reference, &at) {
                Ok(declared) => self.add(declared),
                Err(why) => self.problems.push(format!("{at}, properties.models[{i}]: {why}")),
            }
        }
    }

    fn add(&mut self, declared: Declared) {
        let key = (declared.folder.clone(), declared.name.clone());
        let Some(&at) = self.index.get(&key) else {
            self.index.insert(key, self.found.len());
            self.found.push(declared);
            return;
        };
        let first = &mut self.found[at];
        let hashes_agree = match (&first.sha256, &declared.sha256) {
            (Some(a), Some(b)) => a == b,
            _ => true,
        };
        if first.url != declared.url || !hashes_agree {
            self.problems.push(format!(
                "{} and {} both name {}/{} but with another {}: {} against {}; make them agree (one file, one name)",
                first.nodes[0],
                declared.nodes[0],
                first.folder,
                first.name,
                if first.url != declared.url { "URL" } else { "hash" },
                if first.url != declared.url { first.url.clone() } else { hash_text(&first.sha256) },
                if first.url != declared.url { declared.url.clone() } else { hash_text(&declared.sha256) },
            ));
            return;
        }
        if first.sha256.is_none() {
            first.sha256 = declared.sha256;
        }
        first.nodes.extend(declared.nodes);
    }
}

fn hash_text(hash: &Option<Sha256Hex>) -> String {
    hash.as_ref().map_or_else(|| "none".to_owned(), ToString::to_string)
}

/// One `properties.models` entry, checked as a spec would check it.
fn declared(reference: &Value, at: &str) -> Result<Declared, String> {
    let field = |key: &str| -> Result<String, String> {
        match reference.get(key) {
            Some(Value::String(text)) if !text.is_empty() => Ok(text.clone()),
            Some(_) => Err(format!("`{key}` is not a non-empty text")),
            None => Err(format!("has no `{key}`")),
        }
    };
    let name = field("name")?;
    let url = field("url")?;
    let directory = field("directory")?;
    let folder = folder_for(&directory);
    model::check_folder(&folder).map_err(|why| format!("directory \"{}\": {why}", printable(&directory)))?;
    model::check_model_name(&name).map_err(|why| format!("name: {why}"))?;
    names::check_download_url(&url, &[]).map_err(|why| format!("url: {why}"))?;
    let sha256 = match (
        reference.get("hash").and_then(Value::as_str),
        reference.get("hash_type").and_then(Value::as_str),
    ) {
        (Some(hash), Some(kind)) if kind.eq_ignore_ascii_case("sha256") => {
            Some(hash.parse::<Sha256Hex>().map_err(|why| format!("hash: {why}"))?)
        }
        // Another kind of hash (or one without a kind) cannot pin the bytes: looked up instead.
        _ => None,
    };
    Ok(Declared { folder, name, url, sha256, nodes: vec![at.to_owned()] })
}

/// A workflow's `directory` as a spec's folder: a folder type as it is, a legacy
/// name as its current one, anything else as a folder below `models/` that a
/// custom node reads.
pub fn folder_for(directory: &str) -> String {
    let trimmed = directory.trim_matches('/');
    match trimmed {
        "unet" => "diffusion_models".to_owned(),
        "clip" => "text_encoders".to_owned(),
        known if COMFYUI_FOLDERS.contains(&known) => known.to_owned(),
        other => {
            format!("{CUSTOM_FOLDER_PREFIX}{}", other.strip_prefix(CUSTOM_FOLDER_PREFIX).unwrap_or(other))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn workflow(models: &str) -> String {
        format!(
            r#"{{"nodes": [{{"id": 4, "type": "VAELoader", "properties": {{"models": [{models}]}}}}],
               "definitions": {{"subgraphs": [{{"name": "Flux", "nodes": [{{"id": 9, "type": "VAELoader",
               "properties": {{"models": [{{"name": "ae.safetensors", "url": "https://h.example/ae.safetensors", "directory": "vae"}}]}}}}]}}]}}}}"#
        )
    }

    #[test]
    fn references_in_nodes_and_subgraphs_are_read_once() {
        let found = read(&workflow(
            r#"{"name": "ae.safetensors", "url": "https://h.example/ae.safetensors", "directory": "vae",
                "hash": "AFC8E28272CD15DB3919BACDB6918CE9C1ED22E96CB12C4D5ED0FBA823529E38", "hash_type": "SHA256"},
               {"name": "x.pt", "url": "https://h.example/x.pt", "directory": "unet"},
               {"name": "s.pth", "url": "https://h.example/s.pth", "directory": "sams"}"#,
        ))
        .unwrap();
        assert_eq!(found.len(), 3);
        assert_eq!(found[0].nodes, vec!["node 4 (VAELoader)", "node 9 (VAELoader) in subgraph \"Flux\""]);
        assert!(found[0].sha256.is_some());
        assert_eq!((found[1].folder.as_str(), found[2].folder.as_str()), ("diffusion_models", "models/sams"));
    }

    #[test]
    fn conflicting_and_unsafe_references_are_refused_with_where_they_are() {
        let problems = read(&workflow(
            r#"{"name": "ae.safetensors", "url": "https://other.example/ae.safetensors", "directory": "vae"},
               {"name": "../x.pt", "url": "https://h.example/x.pt", "directory": "vae"},
               {"name": "y.pt", "url": "http://h.example/y.pt", "directory": "vae"},
               {"name": "z.pt", "directory": "vae"}"#,
        ))
        .unwrap_err();
        assert_eq!(problems.len(), 4, "{problems:#?}");
        assert!(
            problems[0].starts_with("node 4 (VAELoader), properties.models[1]: name: `../x.pt`"),
            "{problems:#?}"
        );
        assert!(problems[1].contains("url: `http://h.example/y.pt` uses plain http"), "{problems:#?}");
        assert!(problems[2].ends_with("has no `url`"), "{problems:#?}");
        assert!(problems[3].starts_with("node 4 (VAELoader) and node 9 (VAELoader) in subgraph \"Flux\" both name vae/ae.safetensors but with another URL"), "{problems:#?}");
        let api = read(r#"{"3": {"class_type": "KSampler", "inputs": {}}}"#).unwrap_err();
        assert!(api[0].contains("API-format prompt"), "{api:?}");
    }
}
