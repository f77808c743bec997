//! Everything an environment needs from outside, in one directory: the catalogue
//! served over HTTP, the three repositories, a spec over them and a manifest
//! (`standin.json`) saying where each is, for scripts, benchmarks and
//! `comfyfleet-standin localize-spec`.
//!
//! ```text
//! DIR/index/        the catalogue (served)
//! DIR/repos/        ComfyUI, ComfyUI-KJNodes, ComfyUI-VideoHelperSuite
//! DIR/spec.toml     the standard test spec over them
//! DIR/standin.json  the manifest
//! ```

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::catalog::{Catalog, CatalogOptions};
use super::repos::{COMFYUI_TAG, StandinRepos, create_standin_repos};
use super::server::IndexServer;
use super::spec_text::TestSpecOptions;

/// One stand-in repository in the manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestRepo {
    /// Its directory name: `ComfyUI`, `ComfyUI-KJNodes`, …
    pub name: String,
    pub url: String,
    pub path: PathBuf,
}

/// `standin.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    /// `http://127.0.0.1:PORT`.
    pub base_url: String,
    pub index_root: PathBuf,
    pub python_version: String,
    pub python_tag: String,
    /// The standard spec over the stand-ins.
    pub spec: PathBuf,
    pub repos: Vec<ManifestRepo>,
    pub catalog: Catalog,
}

impl Manifest {
    pub fn read(path: &Path) -> Result<Manifest, String> {
        let text =
            std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        serde_json::from_str(&text).map_err(|e| format!("{} is not a stand-in manifest: {e}", path.display()))
    }

    /// The repository with this directory name.
    pub fn repo(&self, name: &str) -> Option<&ManifestRepo> {
        self.repos.iter().find(|repo| repo.name == name)
    }
}

/// The stand-ins, built and served; the server stops on drop.
pub struct StandinWorld {
    pub catalog: Catalog,
    pub repos: StandinRepos,
    pub server: IndexServer,
    pub manifest: Manifest,
}

impl StandinWorld {
    /// Builds everything under `dir` and serves the index on `port` (0: any free
    /// one). `dir/index` and `dir/repos` are replaced if they exist.
    pub fn create(dir: &Path, options: &CatalogOptions, port: u16) -> StandinWorld {
        let index_root = dir.join("index");
        let repos_dir = dir.join("repos");
        for owned in [&index_root, &repos_dir] {
            if owned.exists() {
                std::fs::remove_dir_all(owned).unwrap();
            }
        }
        let catalog = Catalog::build(&index_root, options);
        let repos = create_standin_repos(&repos_dir);
        let server = IndexServer::start_on(&index_root, port);

        let mut spec_options = TestSpecOptions::new(&repos.comfyui.url(), COMFYUI_TAG);
        spec_options.custom_nodes = repos.custom_nodes();
        let spec = dir.join("spec.toml");
        std::fs::write(&spec, catalog.test_spec(&server.base_url(), &spec_options)).unwrap();

        let repo_entry = |name: &str, repo: &crate::git::GitRepo| ManifestRepo {
            name: name.to_owned(),
            url: repo.url(),
            path: repo.path.clone(),
        };
        let manifest = Manifest {
            base_url: server.base_url(),
            index_root,
            python_version: catalog.python_version(),
            python_tag: catalog.python_tag.clone(),
            spec,
            repos: vec![
                repo_entry("ComfyUI", &repos.comfyui.repo),
                repo_entry("ComfyUI-KJNodes", &repos.kjnodes),
                repo_entry("ComfyUI-VideoHelperSuite", &repos.video_helper_suite),
            ],
            catalog: catalog.clone(),
        };
        std::fs::write(dir.join("standin.json"), serde_json::to_vec_pretty(&manifest).unwrap()).unwrap();
        StandinWorld { catalog, repos, server, manifest }
    }
}
