//! `comfyfleet models import WORKFLOW.json`: the `[[model]]` entries a ComfyUI
//! workflow declares, ready to paste into a spec (or appended to one with
//! `--append`). A model needs a sha256 before a spec can install it, and most
//! workflows carry none: it is read from Hugging Face's answer to a `HEAD` (and a
//! `resolve/main` URL pinned to the commit that answer names), or, from a source
//! that gives none, by downloading and hashing the file. `--offline` contacts
//! nothing. Needs no controller.

mod hub;
mod workflow;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use comfyfleet_config::spec::{Spec, SpecFormat};

use hub::{HubUrl, Sources};
use workflow::Declared;

#[derive(Debug, clap::Subcommand)]
pub enum ModelsCommand {
    /// Print the [[model]] entries a ComfyUI workflow declares (its loader nodes'
    /// `properties.models`, subgraphs included), each with the sha256 and size its
    /// source gives, or that hashing the download gives. Needs no controller.
    #[command(after_help = IMPORT_HELP)]
    Import {
        /// The workflow, as ComfyUI exports it (JSON with `nodes`).
        workflow: PathBuf,
        /// Append the entries to this TOML spec instead of printing them (entries it
        /// already has are left out; the result must be a valid spec).
        #[arg(long, value_name = "SPEC")]
        append: Option<PathBuf>,
        /// Contact nothing: print the entries that carry a sha256, and list those
        /// that need one.
        #[arg(long)]
        offline: bool,
        /// Where Hugging Face URLs are looked up (a mirror); the entries keep their
        /// huggingface.co URLs.
        #[arg(long, value_name = "URL", env = "HF_ENDPOINT", default_value = "https://huggingface.co")]
        hf_endpoint: String,
        /// Write credential = "NAME" on the Hugging Face entries (a bearer token
        /// stored with `comfyfleet secrets set NAME --bearer`).
        #[arg(long, value_name = "NAME")]
        credential: Option<String>,
    },
}

const IMPORT_HELP: &str = "\
Hugging Face lookups send the token in HF_TOKEN (as huggingface_hub does), to the endpoint only.
Exit status: 0 when every model the workflow names was written (or, with --offline, listed);
1 when the workflow cannot be read or a source cannot be asked.";

pub async fn run(command: &ModelsCommand) -> anyhow::Result<String> {
    match command {
        ModelsCommand::Import { workflow, append, offline, hf_endpoint, credential } => {
            if let Some(name) = credential {
                comfyfleet_config::source_credentials::check_credential_name(name)
                    .map_err(|why| anyhow::anyhow!("--credential: {why}"))?;
            }
            let declared = read_workflow(workflow)?;
            let token = std::env::var("HF_TOKEN").ok().filter(|token| !token.trim().is_empty());
            let (entries, missing) = if *offline {
                let (complete, missing): (Vec<Declared>, Vec<Declared>) =
                    declared.into_iter().partition(|model| model.sha256.is_some());
                (complete.into_iter().map(|model| Entry { model, size: None }).collect(), missing)
            } else {
                (complete(declared, &Sources::new(hf_endpoint, token)?).await?, Vec::new())
            };
            for model in &missing {
                eprintln!(
                    "needs a sha256 (run without --offline, or add sha256 = \"…\" by hand): {}/{} from {}",
                    model.folder, model.name, model.url
                );
            }
            let text = render(&entries, credential.as_deref(), &workflow.display().to_string());
            match append {
                None => Ok(text),
                Some(spec) => {
                    append_to(spec, &entries, credential.as_deref(), &workflow.display().to_string())
                }
            }
        }
    }
}

/// A model with what its source said.
struct Entry {
    model: Declared,
    size: Option<u64>,
}

fn read_workflow(path: &Path) -> anyhow::Result<Vec<Declared>> {
    let size = std::fs::metadata(path)
        .map_err(|error| anyhow::anyhow!("cannot read the workflow {}: {error}", path.display()))?
        .len();
    if size > workflow::MAX_WORKFLOW_BYTES {
        anyhow::bail!(
            "{} is {size} bytes; a workflow is at most {} bytes",
            path.display(),
            workflow::MAX_WORKFLOW_BYTES
        );
    }
    let text = std::fs::read_to_string(path)
        .map_err(|error| anyhow::anyhow!("cannot read the workflow {}: {error}", path.display()))?;
    workflow::read(&text).map_err(|problems| {
        anyhow::anyhow!(
            "{} cannot be imported:\n{}",
            path.display(),
            problems.iter().map(|problem| format!("  {problem}")).collect::<Vec<_>>().join("\n")
        )
    })
}

/// Each model with its sha256 and size from its source, Hugging Face URLs pinned.
async fn complete(declared: Vec<Declared>, sources: &Sources) -> anyhow::Result<Vec<Entry>> {
    let mut entries = Vec::new();
    let mut problems = Vec::new();
    for mut model in declared {
        let label = format!("{}/{}", model.folder, model.name);
        let mut size = None;
        let mut fetch_url = model.url.clone();
        if let Some(hub_url) = HubUrl::parse(&model.url) {
            let metadata = match sources.head(&hub_url).await {
                Ok(metadata) => metadata,
                Err(error) => {
                    problems.push(format!("{label}: {error:#}"));
                    continue;
                }
            };
            if let Some(commit) = &metadata.commit {
                model.url = hub_url.on(&format!("https://{}", hub::HF_HOST), commit);
                fetch_url = hub_url.on(sources.endpoint(), commit);
            }
            match (&model.sha256, &metadata.sha256) {
                (Some(declared), Some(served)) if declared != served => {
                    problems.push(format!(
                        "{label}: the workflow says sha256 {declared} but {} serves {served}{}: the file changed \
                         upstream; check which one the workflow was made with and pin that revision in its URL",
                        model.url,
                        metadata.commit.as_ref().map(|commit| format!(" at commit {commit}")).unwrap_or_default()
                    ));
                    continue;
                }
                (None, Some(served)) => model.sha256 = Some(served.clone()),
                _ => {}
            }
            size = metadata.size;
        }
        if model.sha256.is_none() {
            match sources.hash(&fetch_url, &label).await {
                Ok((sha256, bytes)) => {
                    model.sha256 = Some(sha256);
                    size = Some(bytes);
                }
                Err(error) => {
                    problems.push(format!("{label}: {error:#}"));
                    continue;
                }
            }
        }
        entries.push(Entry { model, size });
    }
    if !problems.is_empty() {
        anyhow::bail!(
            "{} of the workflow's models could not be completed (nothing was written):\n{}",
            problems.len(),
            problems.iter().map(|problem| format!("  {problem}")).collect::<Vec<_>>().join("\n")
        );
    }
    Ok(entries)
}

/// TOML text: one `[[model]]` table per entry, with the nodes that name it.
fn render(entries: &[Entry], credential: Option<&str>, source: &str) -> String {
    let quote = |text: &str| toml::Value::String(text.to_owned()).to_string();
    let mut text = String::new();
    for entry in entries {
        let model = &entry.model;
        let _ = writeln!(text, "\n# {source}: {}", model.nodes.join(", "));
        let _ = writeln!(text, "[[model]]");
        let _ = writeln!(text, "folder = {}", quote(&model.folder));
        let _ = writeln!(text, "name = {}", quote(&model.name));
        let _ = writeln!(text, "url = {}", quote(&model.url));
        if let Some(sha256) = &model.sha256 {
            let _ = writeln!(text, "sha256 = \"{sha256}\"");
        }
        if let Some(size) = entry.size {
            let _ = writeln!(text, "size = {size}");
        }
        if let Some(name) = credential
            && HubUrl::parse(&model.url).is_some()
        {
            let _ = writeln!(text, "credential = {}", quote(name));
        }
    }
    text
}

/// Appends the entries `spec` lacks, if the result is a valid spec.
fn append_to(
    path: &Path,
    entries: &[Entry],
    credential: Option<&str>,
    source: &str,
) -> anyhow::Result<String> {
    let current = std::fs::read_to_string(path)
        .map_err(|error| anyhow::anyhow!("cannot read the spec {}: {error}", path.display()))?;
    let name = path.display().to_string();
    if SpecFormat::detect(&name, &current) != SpecFormat::Toml {
        anyhow::bail!("--append writes TOML specs; {name} is JSON: print the entries and add them yourself");
    }
    let spec = Spec::parse(&name, &current, SpecFormat::Toml)
        .map_err(|errors| anyhow::anyhow!("{name} is not a valid spec; fix it first:\n{errors}"))?;
    let mut new = Vec::new();
    let mut present = 0;
    let mut conflicts = Vec::new();
    for entry in entries {
        let model = &entry.model;
        let folder = model.folder.strip_prefix("models/").unwrap_or(&model.folder);
        let path_of = format!("{folder}/{}", model.name);
        let same_path: Vec<(usize, &comfyfleet_config::spec::Model)> =
            spec.models.iter().enumerate().filter(|(_, m)| m.relative_path() == path_of).collect();
        match same_path.as_slice() {
            [] => new.push(entry),
            found if found.iter().any(|(_, m)| m.sha256 == model.sha256) => present += 1,
            [(i, m), ..] => conflicts.push(format!(
                "model[{i}] already puts {path_of} there with sha256 {}; the workflow's is {}: change that entry \
                 by hand if the workflow's is the one you want",
                m.sha256.as_ref().map_or("none".to_owned(), ToString::to_string),
                model.sha256.as_ref().map_or("none".to_owned(), ToString::to_string)
            )),
        }
    }
    if !conflicts.is_empty() {
        anyhow::bail!("nothing was appended to {name}:\n  {}", conflicts.join("\n  "));
    }
    let owned: Vec<Entry> =
        new.iter().map(|entry| Entry { model: entry.model.clone(), size: entry.size }).collect();
    let mut text = current.clone();
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
    text.push_str(&render(&owned, credential, source));
    Spec::parse(&name, &text, SpecFormat::Toml).map_err(|errors| {
        anyhow::anyhow!("nothing was appended: {name} would not be a valid spec:\n{errors}")
    })?;
    let temporary = path.with_extension("toml.importing");
    std::fs::write(&temporary, &text)
        .and_then(|()| std::fs::rename(&temporary, path))
        .map_err(|error| anyhow::anyhow!("cannot write {name}: {error}"))?;
    Ok(format!(
        "appended {} model{} to {name}{}\n",
        owned.len(),
        if owned.len() == 1 { "" } else { "s" },
        if present > 0 { format!(" ({present} already there)") } else { String::new() }
    ))
}
