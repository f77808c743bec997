//! The on-disk layout of the stand-in package hosts, served as is by
//! [`super::server::IndexServer`]:
//!
//! ```text
//! ROOT/simple/index.html                 the default index (PyPI's role), PEP 503
//! ROOT/simple/<project>/index.html
//! ROOT/whl/<cuda>/<project>/index.html   torch builds (download.pytorch.org/whl/cu128/…)
//! ROOT/files/<wheel>                     every wheel an index page links to
//! ROOT/wheels/<dir>/<wheel>              free-standing wheel URLs (per-SM kernel builds)
//! ```
//!
//! Index pages link to `/files/…`, so one flat store holds them; free-standing
//! wheels get their own directories because the same file name exists once per SM
//! with different content. Like PyPI and download.pytorch.org, each listed wheel's
//! METADATA is published beside it (PEP 658 `<wheel>.metadata`, announced in the
//! link): uv then resolves from the small file and downloads each wheel once.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use comfyfleet_config::spec::wheel::WheelName;

use super::wheel::{BuiltWheel, WheelBuilder, sha256_of_file};

/// A wheel written into the layout, and the URL path it is served at.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexedWheel {
    pub name: String,
    pub version: String,
    /// Absolute URL path, percent-encoded: `/files/torch-2.8.0%2Bcu128-….whl`.
    pub url_path: String,
    pub wheel: BuiltWheel,
    /// sha256 of the PEP 658 `.metadata` file beside a listed wheel; `None` for a
    /// free-standing one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata_sha256: Option<String>,
}

/// Which index page lists a wheel.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Listing {
    /// `simple/`.
    Default,
    /// `whl/<cuda>/`.
    Torch(String),
}

impl Listing {
    fn directory(&self) -> String {
        match self {
            Listing::Default => "simple".to_owned(),
            Listing::Torch(cuda) => format!("whl/{cuda}"),
        }
    }
}

/// Builds the layout; [`IndexLayout::write_pages`] writes the HTML once every
/// wheel is in.
#[derive(Debug)]
pub struct IndexLayout {
    root: PathBuf,
    /// Listing → normalized project name → wheels.
    pages: BTreeMap<Listing, BTreeMap<String, Vec<IndexedWheel>>>,
    /// File name → sha256 of what is in `files/`, so two different wheels can never
    /// silently share one file.
    stored: BTreeMap<String, String>,
}

impl IndexLayout {
    pub fn create(root: &Path) -> Self {
        std::fs::create_dir_all(root.join("files")).unwrap();
        let mut pages = BTreeMap::new();
        pages.insert(Listing::Default, BTreeMap::new());
        Self { root: root.to_owned(), pages, stored: BTreeMap::new() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Adds a wheel to the default index (`simple/`).
    pub fn add_to_default_index(&mut self, wheel: &WheelBuilder) -> IndexedWheel {
        self.add_listed(Listing::Default, wheel)
    }

    /// Adds a wheel to the torch index of one CUDA build (`whl/<cuda>/`).
    pub fn add_to_torch_index(&mut self, cuda: &str, wheel: &WheelBuilder) -> IndexedWheel {
        self.add_listed(Listing::Torch(cuda.to_owned()), wheel)
    }

    /// Writes a wheel at `wheels/<directory>/<file name>`, listed on no index.
    pub fn add_free_standing(&mut self, directory: &str, wheel: &WheelBuilder) -> IndexedWheel {
        assert!(
            !directory.split('/').any(|part| part == ".." || part.is_empty()),
            "bad directory {directory}"
        );
        let built = wheel.write_to(&self.root.join("wheels").join(directory));
        let url_path = format!("/wheels/{directory}/{}", percent_encode_path(&built.file_name));
        IndexedWheel {
            name: wheel.name().to_owned(),
            version: wheel.version().to_owned(),
            url_path,
            wheel: built,
            metadata_sha256: None,
        }
    }

    /// Lists a wheel file built elsewhere (a real uv wheel for the agent's bootstrap)
    /// on the default index, without PEP 658 metadata: uv reads it from the wheel.
    pub fn add_existing_to_default_index(&mut self, path: &Path) -> IndexedWheel {
        let file_name = path.file_name().and_then(|name| name.to_str()).unwrap().to_owned();
        let parsed = WheelName::parse(&file_name).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let stored = self.root.join("files").join(&file_name);
        if std::fs::hard_link(path, &stored).is_err() {
            std::fs::copy(path, &stored).unwrap_or_else(|e| panic!("cannot copy {}: {e}", path.display()));
        }
        let (sha256, size) = sha256_of_file(&stored);
        if let Some(earlier) = self.stored.insert(file_name.clone(), sha256.clone()) {
            assert_eq!(earlier, sha256, "two different wheels named {file_name}");
        }
        let indexed = IndexedWheel {
            name: parsed.distribution.clone(),
            version: parsed.version.to_string(),
            url_path: format!("/files/{}", percent_encode_path(&file_name)),
            wheel: BuiltWheel { path: stored, file_name, sha256, size },
            metadata_sha256: None,
        };
        let project = normalized_project(&parsed.distribution);
        self.pages.entry(Listing::Default).or_default().entry(project).or_default().push(indexed.clone());
        indexed
    }

    fn add_listed(&mut self, listing: Listing, wheel: &WheelBuilder) -> IndexedWheel {
        let built = wheel.write_to(&self.root.join("files"));
        if let Some(earlier) = self.stored.insert(built.file_name.clone(), built.sha256.clone()) {
            assert_eq!(earlier, built.sha256, "two different wheels named {}", built.file_name);
        }
        let metadata = wheel.metadata();
        let metadata_path = self.root.join("files").join(format!("{}.metadata", built.file_name));
        std::fs::write(&metadata_path, &metadata).unwrap();
        let url_path = format!("/files/{}", percent_encode_path(&built.file_name));
        let indexed = IndexedWheel {
            name: wheel.name().to_owned(),
            version: wheel.version().to_owned(),
            url_path,
            wheel: built,
            metadata_sha256: Some(hex::encode(Sha256::digest(metadata.as_bytes()))),
        };
        let project = normalized_project(wheel.name());
        self.pages.entry(listing).or_default().entry(project).or_default().push(indexed.clone());
        indexed
    }

    /// Writes every index page: the project list and one page per project, for the
    /// default index and each torch index.
    pub fn write_pages(&self) {
        for (listing, projects) in &self.pages {
            let directory = self.root.join(listing.directory());
            std::fs::create_dir_all(&directory).unwrap();
            let mut list = String::from("<!DOCTYPE html>\n<html><body>\n");
            for (project, wheels) in projects {
                list.push_str(&format!("<a href=\"{project}/\">{project}</a>\n"));
                write_project_page(&directory, project, wheels);
            }
            list.push_str("</body></html>\n");
            std::fs::write(directory.join("index.html"), list).unwrap();
        }
    }

    /// Publishes `wheels` (every version of one project) on the default index of the
    /// layout at `root` while it is served: the project's page is rewritten to list
    /// exactly them. What "upstream published a new release" looks like to uv.
    pub fn publish(root: &Path, wheels: &[WheelBuilder]) -> Vec<IndexedWheel> {
        let mut layout = IndexLayout::create(root);
        let indexed: Vec<IndexedWheel> =
            wheels.iter().map(|wheel| layout.add_to_default_index(wheel)).collect();
        let directory = root.join(Listing::Default.directory());
        for (project, wheels) in &layout.pages[&Listing::Default] {
            write_project_page(&directory, project, wheels);
        }
        indexed
    }
}

/// `DIRECTORY/<project>/index.html`, linking every wheel with its sha256 and PEP
/// 658 metadata hash.
fn write_project_page(directory: &Path, project: &str, wheels: &[IndexedWheel]) {
    let mut page = format!("<!DOCTYPE html>\n<html><body>\n<h1>Links for {project}</h1>\n");
    for wheel in wheels {
        // Both spellings: PEP 714 renamed the attribute; older clients read the first.
        let metadata = wheel.metadata_sha256.as_ref().map_or_else(String::new, |digest| {
            format!(" data-dist-info-metadata=\"sha256={digest}\" data-core-metadata=\"sha256={digest}\"")
        });
        page.push_str(&format!(
            "<a href=\"{}#sha256={}\"{metadata}>{}</a><br/>\n",
            wheel.url_path, wheel.wheel.sha256, wheel.wheel.file_name
        ));
    }
    page.push_str("</body></html>\n");
    let project_dir = directory.join(project);
    std::fs::create_dir_all(&project_dir).unwrap();
    // Whole or not at all: the server may be reading it.
    let partial = project_dir.join(".index.html.partial");
    std::fs::write(&partial, page).unwrap();
    std::fs::rename(partial, project_dir.join("index.html")).unwrap();
}

/// PEP 503's normalized project name: lowercase, runs of `-_.` as one `-`.
pub fn normalized_project(name: &str) -> String {
    super::wheel::normalized_distribution(name).replace('_', "-")
}

/// Percent-encodes what may not stand in a URL path segment as is; `+` too, as
/// download.pytorch.org does (`torch-2.8.0%2Bcu128-…`).
pub fn percent_encode_path(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    for byte in segment.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~' | b'/') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_link_each_wheel_with_its_digest() {
        let dir = tempfile::tempdir().unwrap();
        let mut layout = IndexLayout::create(dir.path());
        let torch = layout.add_to_torch_index(
            "cu128",
            &WheelBuilder::new("torch", "2.8.0+cu128")
                .file("torch/__init__.py", "__version__ = '2.8.0+cu128'\n"),
        );
        let yaml =
            layout.add_to_default_index(&WheelBuilder::new("PyYAML", "6.0").file("yaml/__init__.py", ""));
        layout.write_pages();
        assert_eq!(torch.url_path, "/files/torch-2.8.0%2Bcu128-py3-none-any.whl");
        let page = std::fs::read_to_string(dir.path().join("whl/cu128/torch/index.html")).unwrap();
        let metadata = torch.metadata_sha256.as_deref().unwrap();
        assert!(page.contains(&format!(
            "<a href=\"/files/torch-2.8.0%2Bcu128-py3-none-any.whl#sha256={}\" data-dist-info-metadata=\"sha256={metadata}\" \
             data-core-metadata=\"sha256={metadata}\">torch-2.8.0+cu128-py3-none-any.whl</a>",
            torch.wheel.sha256
        )), "{page}");
        let served =
            std::fs::read(dir.path().join("files/torch-2.8.0+cu128-py3-none-any.whl.metadata")).unwrap();
        assert_eq!(hex::encode(Sha256::digest(&served)), metadata);
        let list = std::fs::read_to_string(dir.path().join("simple/index.html")).unwrap();
        assert!(list.contains("<a href=\"pyyaml/\">pyyaml</a>"), "{list}");
        assert!(dir.path().join("simple/pyyaml/index.html").exists());
        assert!(dir.path().join("files").join(&yaml.wheel.file_name).exists());
    }

    #[test]
    fn a_wheel_built_elsewhere_is_listed_as_it_is() {
        let elsewhere = tempfile::tempdir().unwrap();
        let built = WheelBuilder::new("uv", "0.9.0")
            .tags("py3", "none", "manylinux_2_17_x86_64.manylinux2014_x86_64")
            .file("uv/__init__.py", "")
            .write_to(elsewhere.path());
        let dir = tempfile::tempdir().unwrap();
        let mut layout = IndexLayout::create(dir.path());
        let listed = layout.add_existing_to_default_index(&built.path);
        layout.write_pages();
        assert_eq!((listed.name.as_str(), listed.version.as_str()), ("uv", "0.9.0"));
        assert_eq!(listed.wheel.sha256, built.sha256);
        let page = std::fs::read_to_string(dir.path().join("simple/uv/index.html")).unwrap();
        assert!(
            page.contains(&format!(
                "<a href=\"/files/{0}#sha256={1}\">{0}</a>",
                built.file_name, built.sha256
            )),
            "{page}"
        );
    }
}
