//! Rewriting a real spec (config/examples/render-farm.toml) to run against the local
//! stand-ins, keeping its structure: the same torch release, CUDA preferences,
//! optimisations, compute ranges, custom nodes and run settings, with every URL,
//! digest and Python tag replaced by the stand-in's. Comments do not survive (the
//! spec is re-serialised).

use toml::{Table, Value};

use super::world::Manifest;
use comfyfleet_config::spec::ComputeSet;
use comfyfleet_config::spec::names::repository_name;
use comfyfleet_config::spec::wheel::WheelName;

/// The localised spec text, or what could not be mapped (a wheel with no
/// stand-in, a custom node with no stand-in repository).
pub fn localize_spec(text: &str, manifest: &Manifest) -> Result<String, String> {
    let mut spec: Table = toml::from_str(text).map_err(|e| format!("the spec is not TOML: {e}"))?;
    let base = manifest.base_url.as_str();
    spec.insert("python".to_owned(), Value::from(manifest.python_version.as_str()));

    let comfyui = manifest.repo("ComfyUI").ok_or("the manifest has no ComfyUI repository")?;
    table(&mut spec, "comfyui")?.insert("git".to_owned(), Value::from(comfyui.url.as_str()));

    let torch = table(&mut spec, "torch")?;
    torch.insert("index".to_owned(), Value::from(format!("{base}/whl/{{cuda}}")));
    if let Some(Value::Table(indexes)) = torch.get_mut("indexes") {
        for (cuda, url) in indexes.iter_mut() {
            *url = Value::from(format!("{base}/whl/{cuda}"));
        }
    }

    let index = spec.entry("index").or_insert_with(|| Value::Table(Table::new()));
    let index = index.as_table_mut().ok_or("`index` is not a table")?;
    index.insert("url".to_owned(), Value::from(format!("{base}/simple")));
    index.insert("extra".to_owned(), Value::Array(Vec::new()));
    index.insert("trusted_hosts".to_owned(), Value::Array(vec![Value::from("127.0.0.1")]));

    for optimization in array_of_tables(&mut spec, "optimization") {
        let name = optimization.get("name").and_then(Value::as_str).unwrap_or("?").to_owned();
        for (i, wheel) in array_of_tables(optimization, "wheel").into_iter().enumerate() {
            localize_wheel(wheel, manifest).map_err(|e| format!("optimization {name} wheel[{i}]: {e}"))?;
        }
    }

    for node in array_of_tables(&mut spec, "custom_node") {
        let git = node.get("git").and_then(Value::as_str).ok_or("a custom_node has no git")?;
        let name = repository_name(git);
        let local = manifest
            .repo(name)
            .ok_or_else(|| format!("custom node {git}: no stand-in repository named {name}"))?;
        node.insert("git".to_owned(), Value::from(local.url.as_str()));
    }

    let body = toml::to_string_pretty(&spec).map_err(|e| format!("cannot write the spec: {e}"))?;
    Ok(format!("# Localised for comfyfleet's stand-ins (served at {base}) by comfyfleet-standin.\n\n{body}"))
}

/// Points a `[[optimization.wheel]]` at the stand-in with the same package, compute
/// set, CUDA build and torch match.
fn localize_wheel(wheel: &mut Table, manifest: &Manifest) -> Result<(), String> {
    let text =
        |key: &str| wheel.get(key).and_then(Value::as_str).map(str::to_owned).ok_or(format!("no {key}"));
    let (url, cuda, torch) = (text("url")?, text("cuda")?, text("torch")?);
    let compute = compute_set(wheel.get("compute").ok_or("no compute")?)?;
    let distribution = WheelName::from_url(&url)?.distribution;
    let local = manifest
        .catalog
        .kernel_wheels
        .iter()
        .find(|kernel| {
            kernel.wheel.name == distribution
                && compute_set(&compute_value(&kernel.compute)).is_ok_and(|set| set == compute)
                && kernel.cuda == cuda
                && kernel.torch_series == torch
        })
        .ok_or_else(|| format!("no stand-in {distribution} wheel for {compute}, {cuda}, torch {torch}"))?;
    wheel.insert("python".to_owned(), Value::from(local.python_tag.as_str()));
    wheel.insert("url".to_owned(), Value::from(format!("{}{}", manifest.base_url, local.wheel.url_path)));
    wheel.insert("sha256".to_owned(), Value::from(local.wheel.wheel.sha256.as_str()));
    Ok(())
}

/// A spec's `compute`, a string or a list, as a set.
fn compute_set(value: &Value) -> Result<ComputeSet, String> {
    match value {
        Value::String(text) => ComputeSet::parse(text),
        Value::Array(items) => ComputeSet::parse_list(
            &items.iter().filter_map(Value::as_str).map(str::to_owned).collect::<Vec<_>>(),
        ),
        other => Err(format!("compute is {other}")),
    }
}

/// A stand-in's compute text (`>=8.9,<9.0` or `["8.0", "8.6"]`) as a TOML value.
fn compute_value(text: &str) -> Value {
    toml::from_str::<Table>(&format!(
        "compute = {}",
        if text.starts_with('[') { text.to_owned() } else { format!("\"{text}\"") }
    ))
    .ok()
    .and_then(|mut table| table.remove("compute"))
    .unwrap_or_else(|| Value::from(text))
}

fn table<'a>(spec: &'a mut Table, key: &str) -> Result<&'a mut Table, String> {
    spec.get_mut(key).and_then(Value::as_table_mut).ok_or(format!("the spec has no [{key}] table"))
}

fn array_of_tables<'a>(parent: &'a mut Table, key: &str) -> Vec<&'a mut Table> {
    match parent.get_mut(key) {
        Some(Value::Array(items)) => items.iter_mut().filter_map(Value::as_table_mut).collect(),
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use comfyfleet_config::{Spec, SpecFormat};

    use super::*;
    use crate::standin::catalog::Catalog;
    use crate::standin::world::ManifestRepo;

    const RENDER_FARM: &str = include_str!("../../../../config/examples/render-farm.toml");

    #[test]
    fn the_render_farm_example_runs_on_the_stand_ins_with_its_structure() {
        let dir = tempfile::tempdir().unwrap();
        let catalog = Catalog::standard(&dir.path().join("index"), "cp311");
        let repo = |name: &str| ManifestRepo {
            name: name.to_owned(),
            url: format!("file:///standin/{name}"),
            path: format!("/standin/{name}").into(),
        };
        let manifest = Manifest {
            base_url: "http://127.0.0.1:40001".to_owned(),
            index_root: dir.path().join("index"),
            python_version: "3.11".to_owned(),
            python_tag: "cp311".to_owned(),
            spec: dir.path().join("spec.toml"),
            repos: vec![repo("ComfyUI"), repo("ComfyUI-KJNodes"), repo("ComfyUI-VideoHelperSuite")],
            catalog,
        };
        let text = localize_spec(RENDER_FARM, &manifest).unwrap();
        let spec = Spec::parse("render-farm.local.toml", &text, SpecFormat::Toml)
            .unwrap_or_else(|errors| panic!("{errors}\n---\n{text}"));
        let original = Spec::parse("render-farm.toml", RENDER_FARM, SpecFormat::Toml).unwrap();
        assert_eq!(spec.python.to_string(), "3.11");
        assert_eq!(spec.torch.cuda, original.torch.cuda);
        assert_eq!(spec.optimizations.len(), original.optimizations.len());
        assert_eq!(spec.run, original.run);
        assert_eq!(spec.custom_nodes[1].git, "file:///standin/ComfyUI-VideoHelperSuite");
        let fat = manifest.catalog.fat_sageattention("cu128");
        assert!(text.contains(&fat.wheel.wheel.sha256), "{text}");
        assert!(
            !text.contains("render-farm.example") && !text.contains("cp312") && !text.contains("pypi.org")
        );
    }
}
