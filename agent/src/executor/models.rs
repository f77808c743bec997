//! The `models` step: every model the plan gives this machine, in a content-addressed
//! store (`models/store/<sha256>/blob`, on the data dir's filesystem) and hard-linked
//! to `shared/models/<folder>/<name>`, where every revision's ComfyUI looks. A model
//! comes through the controller's package cache by sha256 (or straight from its URL
//! when the agent has no cache), resumes a cut download with `Range`, and is linked
//! only once its bytes match the sha256; two names with the same bytes are one file.
//!
//! - A link that is already the store's file (same inode) is present: nothing is
//!   hashed or fetched again.
//! - Before fetching, the free space of the store's filesystem must hold everything
//!   still missing; otherwise the step fails at once with both figures.
//! - A file an operator put at a model's path by hand is never replaced: if its bytes
//!   are the model's it is taken into the store as it is (linked, not copied);
//!   otherwise the step fails, naming it. Other hand-placed files under
//!   `shared/models/` are reported as unmanaged.

use std::collections::BTreeSet;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use comfyfleet_config::resolve::PlannedModel;
use sha2::{Digest as _, Sha256};

use super::{Build, StepOutcome, StepResult};
use crate::report::StepHandle;

/// The file name of a model's bytes in its store directory.
const BLOB: &str = "blob";
/// Unmanaged files named in the step's detail, at most.
const SHOWN_UNMANAGED: usize = 5;

/// The store and the folder ComfyUI reads, for one machine.
pub struct ModelStore {
    pub store: PathBuf,
    pub models: PathBuf,
}

/// Where one planned model stands before fetching.
#[derive(Debug, PartialEq, Eq)]
enum Found {
    /// Linked to the store's verified file.
    Present,
    /// In the store, not linked yet.
    Stored,
    /// Neither: to fetch.
    Missing,
}

impl ModelStore {
    pub fn blob(&self, sha256: &str) -> PathBuf {
        self.store.join(sha256).join(BLOB)
    }

    fn target(&self, model: &PlannedModel) -> Result<PathBuf, String> {
        // The controller checked the path; an agent checks what it writes anyway.
        let safe = model.path.split('/').all(|part| !part.is_empty() && part != "." && part != "..")
            && !model.path.starts_with('/');
        if !safe || model.sha256.len() != 64 || !model.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(format!(
                "the plan names model {:?} with sha256 {:?}, which this agent refuses",
                model.path, model.sha256
            ));
        }
        Ok(self.models.join(&model.path))
    }

    /// Where `model` stands; a hand-placed file at its path with other bytes fails.
    fn find(&self, model: &PlannedModel) -> Result<Found, String> {
        let target = self.target(model)?;
        let blob = self.blob(&model.sha256);
        let stored = std::fs::metadata(&blob).ok();
        let Ok(there) = std::fs::symlink_metadata(&target) else {
            return Ok(if stored.is_some() { Found::Stored } else { Found::Missing });
        };
        if let Some(stored) = &stored
            && (stored.dev(), stored.ino()) == (there.dev(), there.ino())
        {
            return Ok(Found::Present);
        }
        if !there.is_file() {
            return Err(format!(
                "{} is in the way of model {}: it is not a regular file; move it away",
                target.display(),
                model.path
            ));
        }
        // Put there by hand (or a store lost): its bytes decide, and it stays.
        let actual =
            hash_file(&target).map_err(|error| format!("cannot read {}: {error}", target.display()))?;
        if actual != model.sha256 {
            return Err(format!(
                "{} was put there by hand and is not model {} (it has sha256 {actual}, the spec requires {}): it is \
                 never overwritten; move it away, or correct the spec",
                target.display(),
                model.path,
                model.sha256
            ));
        }
        let dir = blob.parent().unwrap_or(&self.store);
        std::fs::create_dir_all(dir).map_err(|error| format!("cannot create {}: {error}", dir.display()))?;
        if stored.is_some() {
            std::fs::remove_file(&blob)
                .map_err(|error| format!("cannot replace {}: {error}", blob.display()))?;
        }
        std::fs::hard_link(&target, &blob)
            .map_err(|error| format!("cannot take {} into the store: {error}", target.display()))?;
        Ok(Found::Present)
    }

    /// Links the store's file to the model's path (replacing nothing).
    fn link(&self, model: &PlannedModel) -> Result<(), String> {
        let target = self.target(model)?;
        if let Some(dir) = target.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|error| format!("cannot create {}: {error}", dir.display()))?;
        }
        std::fs::hard_link(self.blob(&model.sha256), &target)
            .map_err(|error| format!("cannot link model {} to {}: {error}", model.path, target.display()))
    }

    /// Files under the models folder that are no link to a store file.
    pub fn unmanaged(&self) -> Vec<String> {
        let mut stored = BTreeSet::new();
        for entry in std::fs::read_dir(&self.store).into_iter().flatten().flatten() {
            if let Ok(meta) = std::fs::metadata(entry.path().join(BLOB)) {
                stored.insert((meta.dev(), meta.ino()));
            }
        }
        let mut found = Vec::new();
        let mut pending = vec![self.models.clone()];
        while let Some(dir) = pending.pop() {
            for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                let Ok(meta) = entry.path().symlink_metadata() else { continue };
                if meta.is_dir() {
                    pending.push(entry.path());
                } else if !stored.contains(&(meta.dev(), meta.ino())) {
                    let shown =
                        entry.path().strip_prefix(&self.models).map(Path::to_owned).unwrap_or(entry.path());
                    found.push(shown.display().to_string());
                }
            }
        }
        found.sort();
        found
    }
}

/// Bytes free for an unprivileged writer on the filesystem holding `path`.
fn free_bytes(path: &Path) -> Result<u64, String> {
    let stat = rustix::fs::statvfs(path)
        .map_err(|error| format!("cannot read the free space of {}: {error}", path.display()))?;
    Ok(stat.f_bavail.saturating_mul(stat.f_frsize))
}

fn hash_file(path: &Path) -> std::io::Result<String> {
    use std::io::Read as _;
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 1 << 20];
    loop {
        let read = file.read(&mut buffer)?;
        if read == 0 {
            return Ok(hex::encode(hasher.finalize()));
        }
        hasher.update(&buffer[..read]);
    }
}

pub async fn fetch(build: &Build<'_>, step: &mut StepHandle) -> StepResult {
    let models = &build.assignment.plan.models;
    let store =
        ModelStore { store: build.layout.model_store(), models: build.layout.shared().join("models") };
    std::fs::create_dir_all(&store.store)
        .map_err(|error| format!("cannot create {}: {error}", store.store.display()))?;
    let mut missing = Vec::new();
    let mut stored = Vec::new();
    let mut present = 0;
    for model in models {
        match store.find(model)? {
            Found::Present => present += 1,
            Found::Stored => stored.push(model),
            Found::Missing => missing.push(model),
        }
    }
    // One download per sha256, however many names it has.
    let mut fetching: Vec<&PlannedModel> = Vec::new();
    for model in &missing {
        if !fetching.iter().any(|other| other.sha256 == model.sha256) {
            fetching.push(model);
        }
    }
    let needed: u64 = fetching.iter().filter_map(|model| model.size).sum();
    let free = free_bytes(&store.store)?;
    if needed > free {
        return Err(format!(
            "the models still missing need {needed} bytes ({}), but the filesystem of {} has {free} bytes free: \
             free space there (or give the agent a larger data dir); nothing was fetched",
            fetching.iter().map(|model| model.path.as_str()).collect::<Vec<_>>().join(", "),
            store.store.display()
        ));
    }
    let mut downloaded: u64 = 0;
    for model in &fetching {
        let (downloader, url) = match &build.tools.package_cache {
            Some(cache) => {
                let name = model.path.rsplit('/').next().unwrap_or(&model.path);
                (cache.downloader.clone(), cache.file_url(&model.sha256, name))
            }
            None => (build.direct_downloader(&model.url), model.url.clone()),
        };
        let downloader = downloader.with_cache(&store.store).with_limit(model.size.unwrap_or(u64::MAX));
        let path = model.path.clone();
        let fetched = downloader
            .verified(&url, &model.sha256, BLOB, &mut |received, total| {
                step.progress(match total {
                    Some(total) => {
                        format!("fetching model {path}: {} of {} MiB", received >> 20, total >> 20)
                    }
                    None => format!("fetching model {path}: {} MiB", received >> 20),
                });
            })
            .await
            .map_err(|error| format!("model {} ({}): {error}", model.path, model.url))?;
        downloaded += fetched.downloaded_bytes;
    }
    for model in missing.iter().chain(&stored) {
        store.link(model)?;
    }
    let unmanaged = store.unmanaged();
    let mut detail = format!(
        "{} model(s): {present} present, {} linked, {} fetched ({downloaded} bytes)",
        models.len(),
        missing.len() + stored.len(),
        fetching.len()
    );
    if !unmanaged.is_empty() {
        let shown: Vec<&str> = unmanaged.iter().take(SHOWN_UNMANAGED).map(String::as_str).collect();
        detail.push_str(&format!(
            "; {} unmanaged file(s) under shared/models (left as they are): {}{}",
            unmanaged.len(),
            shown.join(", "),
            if unmanaged.len() > SHOWN_UNMANAGED { ", …" } else { "" }
        ));
    }
    if models.is_empty() {
        return Ok(StepOutcome::skipped(format!(
            "the plan names no models{}",
            &detail[detail.find(';').unwrap_or(detail.len())..]
        )));
    }
    Ok(StepOutcome::done(detail))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model(path: &str, bytes: &[u8]) -> PlannedModel {
        PlannedModel {
            path: path.to_owned(),
            url: "https://h.example/x".to_owned(),
            sha256: hex::encode(Sha256::digest(bytes)),
            size: Some(bytes.len() as u64),
            keep: false,
        }
    }

    fn store_with(dir: &Path, bytes: &[u8]) -> ModelStore {
        let store = ModelStore { store: dir.join("store"), models: dir.join("models") };
        let sha = hex::encode(Sha256::digest(bytes));
        std::fs::create_dir_all(store.store.join(&sha)).unwrap();
        std::fs::write(store.blob(&sha), bytes).unwrap();
        store
    }

    #[test]
    fn stored_bytes_are_linked_once_per_name_and_then_present() {
        let dir = tempfile::tempdir().unwrap();
        let store = store_with(dir.path(), b"weights");
        let (a, b) = (model("vae/a.safetensors", b"weights"), model("loras/sub/b.safetensors", b"weights"));
        for m in [&a, &b] {
            assert_eq!(store.find(m).unwrap(), Found::Stored);
            store.link(m).unwrap();
            assert_eq!(store.find(m).unwrap(), Found::Present, "no hashing: the same inode");
        }
        let ino = |path: &str| std::fs::metadata(store.models.join(path)).unwrap().ino();
        assert_eq!(ino("vae/a.safetensors"), ino("loras/sub/b.safetensors"), "one file for two names");
        assert!(store.unmanaged().is_empty());
        assert_eq!(store.find(&model("vae/c.safetensors", b"other")).unwrap(), Found::Missing);
    }

    #[test]
    fn hand_placed_files_are_never_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let store = store_with(dir.path(), b"weights");
        std::fs::create_dir_all(store.models.join("vae")).unwrap();
        std::fs::write(store.models.join("vae/mine.safetensors"), b"operator's").unwrap();
        std::fs::write(store.models.join("vae/a.safetensors"), b"not the weights").unwrap();
        let wrong = store.find(&model("vae/a.safetensors", b"weights")).unwrap_err();
        assert!(wrong.contains("was put there by hand and is not model vae/a.safetensors"), "{wrong}");
        assert_eq!(std::fs::read(store.models.join("vae/a.safetensors")).unwrap(), b"not the weights");
        // The right bytes put there by hand are taken into the store as they are.
        std::fs::write(store.models.join("vae/b.safetensors"), b"hand copy").unwrap();
        let adopted = model("vae/b.safetensors", b"hand copy");
        assert_eq!(store.find(&adopted).unwrap(), Found::Present);
        assert_eq!(std::fs::read(store.blob(&adopted.sha256)).unwrap(), b"hand copy");
        assert_eq!(
            store.unmanaged(),
            vec!["vae/a.safetensors".to_owned(), "vae/mine.safetensors".to_owned()]
        );
        let escape = store.find(&PlannedModel { path: "../x".to_owned(), ..adopted }).unwrap_err();
        assert!(escape.contains("which this agent refuses"), "{escape}");
    }
}
