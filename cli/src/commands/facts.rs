//! `comfyfleet facts check`: reads a torch index's pages over HTTP and prints how
//! what it publishes differs from comfyfleet's torch facts (and a spec's
//! `[[torch.release]]` additions). The comparison itself is
//! `comfyfleet_config::facts_check`; this module only fetches.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use comfyfleet_config::facts_check::{self, PACKAGES, PublishedIndex};
use comfyfleet_config::spec::catalog::TorchCatalog;
use comfyfleet_config::spec::{CudaTag, Spec};

#[derive(Debug, clap::Subcommand)]
pub enum FactsCommand {
    /// Read a torch index (`<index>/<cuda>/<package>/` PEP 503 pages: the torch,
    /// torchvision, torchaudio and triton of every CUDA build the facts know) and
    /// print every way it differs from the facts: a build or platform the facts do
    /// not know, one they claim that the index lacks, a Python tag or companion
    /// wheel missing. Needs no controller.
    #[command(after_help = CHECK_HELP)]
    Check {
        /// The index: a base URL (`https://download.pytorch.org/whl`, pages at
        /// BASE/cu130/torch/) or a pattern with {cuda}. Default: the spec's
        /// torch.index with -f, else https://download.pytorch.org/whl/{cuda}.
        #[arg(long, value_name = "URL")]
        index: Option<String>,
        /// Also the [[torch.release]] additions and corrections of this spec.
        #[arg(short, long = "file", value_name = "SPEC")]
        file: Option<PathBuf>,
        /// Also read this CUDA build's pages, which no torch release in the facts
        /// has (repeatable), e.g. cu134.
        #[arg(long = "cuda", value_name = "TAG")]
        cuda: Vec<String>,
    },
}

const CHECK_HELP: &str = "\
Exit status: 0 when the index publishes what the facts say; 1 when it differs (every difference
is printed) or the index cannot be read; 2 on a usage error.";

/// Runs a `facts` command.
pub async fn run(command: &FactsCommand) -> anyhow::Result<String> {
    match command {
        FactsCommand::Check { index, file, cuda } => {
            let spec = file.as_deref().map(crate::spec_file::load).transpose()?;
            check(index.clone(), spec.as_ref().map(|file| &file.spec), cuda).await
        }
    }
}

/// The index PyTorch publishes its wheels on.
pub const DEFAULT_INDEX: &str = "https://download.pytorch.org/whl/{cuda}";

/// The check found differences: the report is printed and the exit status is 1.
#[derive(Debug, thiserror::Error)]
#[error("{report}")]
pub struct Differences {
    pub report: String,
}

/// Where the pages of one CUDA build are: `--index` (a base URL, or a pattern with
/// `{cuda}`), else the spec's torch index for that build, else download.pytorch.org.
fn build_index(index: Option<&str>, spec: Option<&Spec>, cuda: CudaTag) -> String {
    let url = match (index, spec) {
        (Some(index), _) if index.contains("{cuda}") => index.replace("{cuda}", &cuda.to_string()),
        (Some(index), _) => format!("{}/{cuda}", index.trim_end_matches('/')),
        (None, Some(spec)) => spec.torch.index_for(cuda),
        (None, None) => DEFAULT_INDEX.replace("{cuda}", &cuda.to_string()),
    };
    url.trim_end_matches('/').to_owned()
}

/// The index as a pattern, for the report's first line.
fn describe_index(index: Option<&str>, spec: Option<&Spec>) -> String {
    match (index, spec) {
        (Some(index), _) if index.contains("{cuda}") => index.to_owned(),
        (Some(index), _) => format!("{}/{{cuda}}", index.trim_end_matches('/')),
        (None, Some(spec)) => spec.torch.index.clone(),
        (None, None) => DEFAULT_INDEX.to_owned(),
    }
}

pub async fn check(
    index: Option<String>,
    spec: Option<&Spec>,
    extra_cuda: &[String],
) -> anyhow::Result<String> {
    let catalog = TorchCatalog::with_extensions(spec.map_or(&[][..], |spec| &spec.torch.releases))
        .map_err(|error| anyhow::anyhow!(error))?;
    let mut tags = catalog.cuda_tags();
    for text in extra_cuda {
        let tag: CudaTag = text.parse().map_err(|error: String| anyhow::anyhow!("--cuda: {error}"))?;
        if !tags.contains(&tag) {
            tags.push(tag);
        }
    }
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(20))
        .read_timeout(Duration::from_secs(120))
        .user_agent(concat!("comfyfleet/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|error| anyhow::anyhow!("cannot set up HTTP requests: {error}"))?;
    let mut published = PublishedIndex::default();
    let mut read = Vec::new();
    for tag in &tags {
        let base = build_index(index.as_deref(), spec, *tag);
        for package in PACKAGES {
            let url = format!("{base}/{package}/");
            match fetch_page(&client, &url).await? {
                Some(html) => {
                    published.add_page(*tag, package, &html);
                    read.push(url);
                }
                None => published.add_absent_page(*tag, package),
            }
        }
    }
    let report = facts_check::compare(&catalog, &published);
    let mut text = String::new();
    let names: Vec<String> = tags.iter().map(ToString::to_string).collect();
    let _ = writeln!(
        text,
        "index {}: read {} of {} pages ({} × {})",
        describe_index(index.as_deref(), spec),
        read.len(),
        tags.len() * PACKAGES.len(),
        names.join(", "),
        PACKAGES.join(", ")
    );
    let list = |items: Vec<String>| if items.is_empty() { "none".to_owned() } else { items.join(", ") };
    let _ =
        writeln!(text, "compared torch {}", list(report.compared.iter().map(ToString::to_string).collect()));
    if !report.not_published.is_empty() {
        let series: Vec<String> = report.not_published.iter().map(ToString::to_string).collect();
        let _ = writeln!(text, "not published there (not compared): torch {}", series.join(", "));
    }
    if !report.older.is_empty() {
        let _ = writeln!(
            text,
            "older than the facts (not compared): {} torch releases, {} to {}",
            report.older.len(),
            report.older.first().map(ToString::to_string).unwrap_or_default(),
            report.older.last().map(ToString::to_string).unwrap_or_default()
        );
    }
    for difference in &report.differences {
        let _ = writeln!(text, "{difference}");
    }
    match report.differences.len() {
        0 => {
            let _ = writeln!(text, "no differences");
            Ok(text)
        }
        count => {
            let _ = writeln!(
                text,
                "{count} difference{}: correct the facts with [[torch.release]] tables in the spec (or upgrade \
                 comfyfleet), or fix the mirror",
                if count == 1 { "" } else { "s" }
            );
            Err(Differences { report: text }.into())
        }
    }
}

/// A page's HTML, or `None` when the index has no such page (404).
async fn fetch_page(client: &reqwest::Client, url: &str) -> anyhow::Result<Option<String>> {
    let response =
        client.get(url).header(reqwest::header::ACCEPT, "text/html").send().await.map_err(|error| {
            anyhow::anyhow!("cannot read {url}: {}", comfyfleet_proto::transport::error_chain(&error))
        })?;
    if response.status() == reqwest::StatusCode::NOT_FOUND {
        return Ok(None);
    }
    if !response.status().is_success() {
        anyhow::bail!(
            "{url} answered {}: is it a PEP 503 index (`<base>/<cuda>/<package>/`)?",
            response.status()
        );
    }
    let body = response.text().await.map_err(|error| {
        anyhow::anyhow!("cannot read {url}: {}", comfyfleet_proto::transport::error_chain(&error))
    })?;
    Ok(Some(body))
}
