//! Writing files that must never be seen half-written or by the wrong user.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Creates `dir` (and parents) readable only by its owner.
pub fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
}

/// Writes a secret: mode 0600 from the first byte, replaced atomically.
pub fn write_private(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    write_atomic(path, contents, 0o600)
}

/// Writes `contents` to a temporary file beside `path`, syncs it and renames it over
/// `path`, so a crash leaves either the old file or the new one.
pub fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> std::io::Result<()> {
    let file_name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let temporary = path.with_file_name(format!(".{file_name}.tmp"));
    let written = (|| {
        let mut file =
            OpenOptions::new().write(true).create(true).truncate(true).mode(mode).open(&temporary)?;
        file.set_permissions(fs::Permissions::from_mode(mode))?;
        file.write_all(contents)?;
        file.sync_all()?;
        fs::rename(&temporary, path)
    })();
    if let Err(error) = written {
        // A full disk (ENOSPC) or any other failure leaves no half-written temp file
        // behind, and the file itself as it was.
        let _ = fs::remove_file(&temporary);
        return Err(error);
    }
    if let Some(parent) = path.parent() {
        // Make the rename durable too.
        fs::File::open(parent)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_files_are_0600_and_replaced_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        write_private(&path, b"one").unwrap();
        write_private(&path, b"two").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two");
        assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        assert!(!dir.path().join(".secret.tmp").exists());
    }

    #[test]
    fn a_failed_write_leaves_no_temp_file_and_the_old_file_whole() {
        let dir = tempfile::tempdir().unwrap();
        // The rename fails (a non-empty directory is in the way), as a full disk fails
        // the write: either way the temp file goes.
        let blocked = dir.path().join("journal.json");
        fs::create_dir(&blocked).unwrap();
        fs::write(blocked.join("keep"), b"x").unwrap();
        assert!(write_atomic(&blocked, b"new", 0o600).is_err());
        assert!(!dir.path().join(".journal.json.tmp").exists(), "no temp file left");
        assert_eq!(fs::read(blocked.join("keep")).unwrap(), b"x");
    }
}
