//! The workspace's packages and their targets, from `cargo metadata --no-deps` (no build,
//! no network), and the source files the checks read.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

use crate::modules::{CrateModules, load_crate};

#[derive(Debug, Clone)]
pub struct Workspace {
    pub root: PathBuf,
    pub packages: Vec<Package>,
}

#[derive(Debug, Clone)]
pub struct Package {
    pub name: String,
    pub directory: PathBuf,
    pub targets: Vec<Target>,
}

#[derive(Debug, Clone)]
pub struct Target {
    pub name: String,
    pub kinds: Vec<String>,
    pub root: PathBuf,
}

impl Target {
    /// A library or binary: code that ships, whose modules must not import in circles.
    /// Tests, benches, examples and build scripts are each one file or a harness.
    pub fn is_product(&self) -> bool {
        self.kinds.iter().any(|kind| {
            matches!(kind.as_str(), "lib" | "rlib" | "dylib" | "cdylib" | "staticlib" | "proc-macro" | "bin")
        })
    }
}

/// A library or binary target, its module tree loaded.
#[derive(Debug)]
pub struct LoadedCrate {
    pub package: String,
    pub target: String,
    pub modules: CrateModules,
}

impl Workspace {
    /// Asks `cargo` (the one running this test, when there is one) about the workspace
    /// whose `Cargo.toml` is `manifest`.
    pub fn from_cargo_metadata(manifest: &Path) -> Result<Workspace, String> {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let output = Command::new(&cargo)
            .args(["metadata", "--format-version", "1", "--no-deps", "--manifest-path"])
            .arg(manifest)
            .output()
            .map_err(|error| format!("cannot run {} metadata: {error}", cargo.to_string_lossy()))?;
        if !output.status.success() {
            return Err(format!(
                "cargo metadata --manifest-path {} failed ({}): {}",
                manifest.display(),
                output.status,
                String::from_utf8_lossy(&output.stderr)
            ));
        }
        let metadata: Value = serde_json::from_slice(&output.stdout)
            .map_err(|error| format!("cargo metadata printed something that is not JSON: {error}"))?;
        Workspace::from_metadata(&metadata)
    }

    pub fn from_metadata(metadata: &Value) -> Result<Workspace, String> {
        let text = |value: &Value, key: &str| -> Result<String, String> {
            value[key]
                .as_str()
                .map(str::to_owned)
                .ok_or_else(|| format!("cargo metadata has no string `{key}`"))
        };
        let root = PathBuf::from(text(metadata, "workspace_root")?);
        let mut packages = Vec::new();
        for package in metadata["packages"].as_array().into_iter().flatten() {
            let manifest = PathBuf::from(text(package, "manifest_path")?);
            let mut targets = Vec::new();
            for target in package["targets"].as_array().into_iter().flatten() {
                let kinds = target["kind"].as_array().into_iter().flatten();
                targets.push(Target {
                    name: text(target, "name")?,
                    kinds: kinds.filter_map(Value::as_str).map(str::to_owned).collect(),
                    root: PathBuf::from(text(target, "src_path")?),
                });
            }
            packages.push(Package {
                name: text(package, "name")?,
                directory: manifest.parent().map(Path::to_path_buf).unwrap_or_default(),
                targets,
            });
        }
        packages.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(Workspace { root, packages })
    }

    /// The path of `file` from the workspace root, with `/`, as the rules write paths.
    pub fn relative(&self, file: &Path) -> String {
        let relative = file.strip_prefix(&self.root).unwrap_or(file);
        relative.components().map(|c| c.as_os_str().to_string_lossy()).collect::<Vec<_>>().join("/")
    }

    /// Every library and binary target's module tree.
    pub fn load_crates(&self) -> Result<Vec<LoadedCrate>, String> {
        let mut crates = Vec::new();
        for package in &self.packages {
            for target in package.targets.iter().filter(|target| target.is_product()) {
                crates.push(LoadedCrate {
                    package: package.name.clone(),
                    target: target.name.clone(),
                    modules: load_crate(&target.root)?,
                });
            }
        }
        Ok(crates)
    }

    /// Every `.rs` file of every package, outside `target/`, hidden folders and packages
    /// nested inside another, sorted.
    pub fn rust_files(&self) -> Result<Vec<(&Package, PathBuf)>, String> {
        let mut files = Vec::new();
        for package in &self.packages {
            let mut pending = vec![package.directory.clone()];
            while let Some(directory) = pending.pop() {
                let entries = std::fs::read_dir(&directory)
                    .map_err(|error| format!("cannot list {}: {error}", directory.display()))?;
                for entry in entries {
                    let path = entry
                        .map_err(|error| format!("cannot list {}: {error}", directory.display()))?
                        .path();
                    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                    if path.is_dir() {
                        let nested_package = path.join("Cargo.toml").is_file();
                        if !(name == "target" || name.starts_with('.') || nested_package) {
                            pending.push(path);
                        }
                    } else if name.ends_with(".rs") {
                        files.push((package, path));
                    }
                }
            }
        }
        files.sort_by(|a, b| a.1.cmp(&b.1));
        Ok(files)
    }
}

/// Test code: files under a crate's `tests/` folder (integration tests), unit-test files
/// `tests.rs`, and anything under a `tests/` folder inside `src/`. Everything else is code a
/// reader must find their way in, test support (`tests/e2e/src/`, the fake NVML library)
/// included. `relative` is the path from the package's folder.
pub fn is_test_file(relative: &Path) -> bool {
    relative.file_name().is_some_and(|name| name == "tests.rs")
        || relative.parent().is_some_and(|parent| parent.components().any(|c| c.as_os_str() == "tests"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tests_are_told_from_code() {
        for test in
            ["tests/inventory.rs", "tests/common/mod.rs", "src/convergence/tests.rs", "src/a/tests/b.rs"]
        {
            assert!(is_test_file(Path::new(test)), "{test} is a test");
        }
        for code in
            ["src/lib.rs", "src/fleetsim/converger.rs", "benches/fleet.rs", "build.rs", "src/tests_util.rs"]
        {
            assert!(!is_test_file(Path::new(code)), "{code} is not a test");
        }
    }

    #[test]
    fn metadata_is_read_into_packages_and_targets() {
        let metadata = serde_json::json!({
            "workspace_root": "/w",
            "packages": [{
                "name": "comfyfleet-agent",
                "manifest_path": "/w/agent/Cargo.toml",
                "targets": [
                    {"name": "comfyfleet_agent", "kind": ["lib"], "src_path": "/w/agent/src/lib.rs"},
                    {"name": "inventory", "kind": ["test"], "src_path": "/w/agent/tests/inventory.rs"}
                ]
            }]
        });
        let workspace = Workspace::from_metadata(&metadata).unwrap();
        assert_eq!(workspace.packages[0].directory, Path::new("/w/agent"));
        let products: Vec<&str> = workspace.packages[0]
            .targets
            .iter()
            .filter(|t| t.is_product())
            .map(|t| t.name.as_str())
            .collect();
        assert_eq!(products, ["comfyfleet_agent"]);
        assert_eq!(workspace.relative(Path::new("/w/agent/src/lib.rs")), "agent/src/lib.rs");
    }
}
