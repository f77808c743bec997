//! The real ComfyUI source trees of `tests/fixtures/real` (GPL-3.0, LICENSE inside),
//! unpacked and committed into local git repositories tagged with their version, so
//! the controller pins and reads, and agents fetch and install, the real thing.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::git::GitRepo;

/// A real ComfyUI release in the fixtures: its tarball and tag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RealComfyui {
    pub tarball: &'static str,
    pub tag: &'static str,
}

/// ComfyUI 0.3.64 (2025-10-12), commit a125cd84.
pub const COMFYUI_0_3_64: RealComfyui =
    RealComfyui { tarball: "comfyui-0.3.64-a125cd84.tar.gz", tag: "v0.3.64" };
/// ComfyUI 0.33.0 (2026-08-22), commit 783545f6.
pub const COMFYUI_0_33_0: RealComfyui =
    RealComfyui { tarball: "comfyui-0.33.0-783545f6.tar.gz", tag: "v0.33.0" };

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// `release` unpacked under `dir/<tag>/ComfyUI` and committed on `master`, tagged.
pub fn real_comfyui(dir: &Path, release: RealComfyui) -> GitRepo {
    let tarball = repo_root().join("tests/fixtures/real").join(release.tarball);
    let into = dir.join(release.tag);
    std::fs::create_dir_all(&into).unwrap();
    let status = Command::new("tar").arg("-xzf").arg(&tarball).arg("-C").arg(&into).status().unwrap();
    assert!(status.success(), "cannot unpack {}", tarball.display());
    let repo = GitRepo { path: into.join("ComfyUI") };
    repo.git(&["init", "--quiet", "--initial-branch=master"]);
    repo.git(&["add", "--all"]);
    repo.git(&["commit", "--quiet", "-m", &format!("ComfyUI {}", release.tag)]);
    repo.git(&["tag", release.tag]);
    repo
}
