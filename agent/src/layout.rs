//! Where everything lives under the agent's data dir:
//!
//! ```text
//! <data-dir>/
//!   identity/          key, certificate, machine id
//!   journal/           what was assigned, what failed, when each revision was current
//!   cache/uv/          UV_CACHE_DIR, on the same filesystem as envs/ (hardlinks)
//!   cache/wheels/      downloaded kernel wheels, by sha256
//!   cache/git/         bare repositories the environments are checked out from
//!   models/store/      model files by sha256 (`<sha256>/blob`), hard-linked into shared/models
//!   tools/             a uv fetched from the package index
//!   envs/<revision>/   ComfyUI/ (with custom_nodes/), venv/, .comfyfleet/, .complete last
//!   current -> envs/<revision>   switched atomically
//!   shared/            models, input, output, user: common to every revision
//!   run/               the running ComfyUI's pid file
//!   logs/              ComfyUI's output
//! ```

use std::path::{Path, PathBuf};

use comfyfleet_config::spec::SpecDigest;

/// Hex digits of the revision id in an environment's directory name: 64 bits are
/// unique among the handful of revisions a machine keeps, and keep paths (and the
/// venv's shebang lines) short.
const ENV_DIR_ID_DIGITS: usize = 16;

#[derive(Debug, Clone)]
pub struct Layout {
    root: PathBuf,
    /// `--uv-cache-dir`: uv's cache elsewhere than `cache/uv`.
    uv_cache: Option<PathBuf>,
}

impl Layout {
    pub fn new(data_dir: &Path) -> Self {
        Self { root: data_dir.to_owned(), uv_cache: None }
    }

    /// The layout with uv's cache at `dir` (`None`: under the data dir).
    pub fn with_uv_cache(self, dir: Option<PathBuf>) -> Self {
        Self { uv_cache: dir, ..self }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn journal(&self) -> PathBuf {
        self.root.join("journal")
    }

    pub fn uv_cache(&self) -> PathBuf {
        self.uv_cache.clone().unwrap_or_else(|| self.root.join("cache/uv"))
    }

    pub fn wheel_cache(&self) -> PathBuf {
        self.root.join("cache/wheels")
    }

    /// The models' content-addressed store: on the data dir's filesystem, so its
    /// files can be hard-linked into `shared/models`.
    pub fn model_store(&self) -> PathBuf {
        self.root.join("models/store")
    }

    pub fn git_cache(&self) -> PathBuf {
        self.root.join("cache/git")
    }

    pub fn tools(&self) -> PathBuf {
        self.root.join("tools")
    }

    pub fn envs(&self) -> PathBuf {
        self.root.join("envs")
    }

    pub fn env(&self, revision: &SpecDigest) -> EnvDir {
        let name = revision.as_str().get(..ENV_DIR_ID_DIGITS).unwrap_or(revision.as_str());
        EnvDir { path: self.envs().join(name) }
    }

    /// The `current` symlink.
    pub fn current(&self) -> PathBuf {
        self.root.join("current")
    }

    pub fn shared(&self) -> PathBuf {
        self.root.join("shared")
    }

    pub fn run(&self) -> PathBuf {
        self.root.join("run")
    }

    pub fn logs(&self) -> PathBuf {
        self.root.join("logs")
    }

    /// Creates every directory the agent writes into.
    pub fn create(&self) -> std::io::Result<()> {
        for dir in [
            self.journal(),
            self.uv_cache(),
            self.wheel_cache(),
            self.git_cache(),
            self.tools(),
            self.envs(),
            self.run(),
            self.logs(),
        ] {
            std::fs::create_dir_all(dir)?;
        }
        for shared in ["models", "input", "output", "user"] {
            std::fs::create_dir_all(self.shared().join(shared))?;
        }
        Ok(())
    }
}

/// One environment's directory, `envs/<revision>/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvDir {
    pub path: PathBuf,
}

impl EnvDir {
    pub fn comfyui(&self) -> PathBuf {
        self.path.join("ComfyUI")
    }

    pub fn custom_node(&self, name: &str) -> PathBuf {
        self.comfyui().join("custom_nodes").join(name)
    }

    pub fn venv(&self) -> PathBuf {
        self.path.join("venv")
    }

    pub fn python(&self) -> PathBuf {
        self.venv().join("bin/python")
    }

    /// comfyfleet's own files about this environment (progress, overrides).
    pub fn meta(&self) -> PathBuf {
        self.path.join(".comfyfleet")
    }

    /// Written last, after verification: its presence is what "complete" means.
    pub fn complete_marker(&self) -> PathBuf {
        self.path.join(".complete")
    }

    pub fn is_complete(&self) -> bool {
        self.complete_marker().is_file()
    }
}
