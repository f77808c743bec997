//! A package published only as a source distribution, whose in-tree PEP 517 build
//! backend (`backend-path`) writes a marker file the moment any of it runs: what an
//! attacker who controls a package on an index a spec names would publish. Its
//! metadata is dynamic, so nothing can read it without running the backend.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::wheel::sha256_of_file;

/// The build backend: importing it for any hook writes the marker (`MARKER` is
/// replaced by its path).
const BACKEND: &str = r#"# Runs as whoever builds this package.
with open(MARKER, 'a') as marker:
    marker.write('the build backend ran\n')


def get_requires_for_build_wheel(config_settings=None):
    return []


def prepare_metadata_for_build_wheel(directory, config_settings=None):
    raise RuntimeError('marker only')


def build_wheel(directory, config_settings=None, metadata_directory=None):
    raise RuntimeError('marker only')


def build_sdist(directory, config_settings=None):
    raise RuntimeError('marker only')
"#;

/// A source-only package on a stand-in index.
#[derive(Debug, Clone)]
pub struct SourceOnlyPackage {
    /// `evil-sdist`.
    pub name: String,
    pub version: String,
    /// Written when the build backend is imported, by anyone.
    pub marker: PathBuf,
}

/// Publishes `name` `version` as an sdist only on the default index (`simple/`) of
/// the layout at `root`, while it is served; its backend writes `marker`.
pub fn publish_source_only(root: &Path, name: &str, version: &str, marker: &Path) -> SourceOnlyPackage {
    let distribution = name.replace('-', "_");
    let top = format!("{distribution}-{version}");
    let build = tempfile::tempdir().unwrap();
    let tree = build.path().join(&top);
    std::fs::create_dir_all(tree.join("backend")).unwrap();
    std::fs::write(
        tree.join("pyproject.toml"),
        format!(
            "[build-system]\nrequires = []\nbuild-backend = \"marker_backend\"\n\
             backend-path = [\"backend\"]\n\n[project]\nname = \"{name}\"\nversion = \"{version}\"\n\
             dynamic = [\"dependencies\"]\n"
        ),
    )
    .unwrap();
    // Metadata-Version 2.1: uv cannot take PKG-INFO as the final metadata either.
    std::fs::write(
        tree.join("PKG-INFO"),
        format!("Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"),
    )
    .unwrap();
    let backend = BACKEND.replace("MARKER", &format!("{:?}", marker.to_str().unwrap()));
    std::fs::write(tree.join("backend/marker_backend.py"), backend).unwrap();
    let file_name = format!("{top}.tar.gz");
    let archive = root.join("files").join(&file_name);
    std::fs::create_dir_all(archive.parent().unwrap()).unwrap();
    let status = Command::new("tar")
        .arg("-czf")
        .arg(&archive)
        .arg("-C")
        .arg(build.path())
        .arg(&top)
        .status()
        .unwrap_or_else(|e| panic!("cannot run tar: {e}"));
    assert!(status.success(), "tar failed");
    let (sha256, _) = sha256_of_file(&archive);
    let project = root.join("simple").join(name);
    std::fs::create_dir_all(&project).unwrap();
    std::fs::write(
        project.join("index.html"),
        format!(
            "<!DOCTYPE html>\n<html><body>\n<h1>Links for {name}</h1>\n\
             <a href=\"/files/{file_name}#sha256={sha256}\">{file_name}</a><br/>\n</body></html>\n"
        ),
    )
    .unwrap();
    SourceOnlyPackage { name: name.to_owned(), version: version.to_owned(), marker: marker.to_owned() }
}
