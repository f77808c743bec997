//! The files a revision installs on any of its build classes — every lock's packages,
//! the spec's kernel wheels, and the pinned uv wheels where apply found them on an
//! index — by sha256. One set for `cache fill` (what it fetches), for the cache's
//! `needed` (what pruning and eviction keep, what `cache status` counts), so the two
//! always count the same files.

use std::collections::BTreeMap;

use comfyfleet_config::Spec;
use comfyfleet_config::lock::Lock;

use crate::store::{PackageFile, Store, StoreError};

/// A revision's files, and what could not be read (a lock the store lost or cannot
/// parse): `cache fill` refuses to go on with those, pruning keeps what it found.
#[derive(Debug, Default)]
pub struct RevisionFiles {
    pub files: BTreeMap<String, PackageFile>,
    pub problems: Vec<String>,
}

pub async fn revision_files(store: &dyn Store, spec: &Spec) -> Result<RevisionFiles, StoreError> {
    let mut found = RevisionFiles::default();
    for (class, digest) in &spec.lock.digests {
        let Some(stored) = store.lock(digest).await? else {
            found.problems.push(format!("the store has lost the lock of {class} (digest {digest})"));
            continue;
        };
        match Lock::from_json(&stored.lock_json) {
            Ok(lock) => {
                for package in lock.packages {
                    found.files.entry(package.sha256.clone()).or_insert_with(|| PackageFile {
                        sha256: package.sha256.clone(),
                        url: package.url.clone(),
                        file_name: package.file_name(),
                        size: package.size,
                    });
                }
            }
            Err(error) => found.problems.push(format!("the stored lock of {class} does not parse: {error}")),
        }
    }
    for file in crate::use_cases::environments::locking::kernel_wheel_files(spec)
        .into_iter()
        .chain(crate::use_cases::environments::model_files::model_files(spec))
    {
        found.files.entry(file.sha256.clone()).or_insert(file);
    }
    // A machine without uv fetches the pinned wheel through the cache.
    for (_, _, sha256) in comfyfleet_config::uv_pin::PINNED_UV_WHEELS {
        if let Some(file) = store.package_file(sha256).await? {
            found.files.entry(file.sha256.clone()).or_insert(file);
        }
    }
    Ok(found)
}
