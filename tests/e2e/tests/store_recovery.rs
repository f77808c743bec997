//! The store recovers from a bad day: a controller whose disk filled up writes again
//! as soon as space is free, with no restart.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::print_stderr)] // test helpers fail loudly by design

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use comfyfleet_e2e::{Controller, test_dir};

/// A small tmpfs mounted on a directory for one test; unmounted when dropped (lazily,
/// so a process still holding a file in it cannot keep it mounted past the test).
struct SmallFilesystem {
    at: PathBuf,
}

impl SmallFilesystem {
    /// Mounts a tmpfs of `size` (as mount's `size=`, e.g. `16m`) on `at`; None when
    /// this process is not root (mounting needs it).
    fn mount(at: &Path, size: &str) -> Option<SmallFilesystem> {
        let probe = tempfile::tempfile().unwrap();
        if std::os::unix::fs::MetadataExt::uid(&probe.metadata().unwrap()) != 0 {
            return None;
        }
        std::fs::create_dir_all(at).unwrap();
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0700"), "tmpfs"])
            .arg(at)
            .output()
            .unwrap();
        assert!(
            mounted.status.success(),
            "mount tmpfs on {}: {}",
            at.display(),
            String::from_utf8_lossy(&mounted.stderr)
        );
        Some(SmallFilesystem { at: at.to_owned() })
    }
}

impl Drop for SmallFilesystem {
    fn drop(&mut self) {
        let unmounted = Command::new("umount").arg("--lazy").arg(&self.at).output();
        if !unmounted.is_ok_and(|output| output.status.success()) {
            eprintln!("could not unmount the test's tmpfs at {}", self.at.display());
        }
    }
}

/// Writes `path` until the filesystem has no space left; how many bytes it took.
fn fill_up(path: &Path) -> u64 {
    let mut file = std::fs::File::create(path).unwrap();
    let chunk = vec![0x5a_u8; 4096];
    let mut written = 0_u64;
    loop {
        match file.write(&chunk) {
            Ok(0) => return written,
            Ok(count) => written += count as u64,
            Err(error) if error.raw_os_error() == Some(28) => return written, // ENOSPC
            Err(error) => panic!("filling {}: {error}", path.display()),
        }
    }
}

#[test]
fn writes_succeed_again_once_a_full_disk_has_space() {
    let dir = test_dir();
    let data = dir.path().join("controller");
    // Declared before the controller, so it is dropped (unmounted) after it is killed.
    let Some(_filesystem) = SmallFilesystem::mount(&data, "24m") else {
        eprintln!("skipped: mounting the small filesystem this test fills needs root (CI runs as root)");
        return;
    };
    let controller = Controller::start(&data);
    controller.cli(&["token", "create", "--description", "before the disk filled"]).success();

    // The disk fills: writes fail (their COMMIT cannot grow the WAL).
    let ballast = data.join("ballast");
    fill_up(&ballast);
    let mut refused = Vec::new();
    for attempt in 0..40 {
        let output = controller.cli(&["token", "create", "--description", &format!("full disk {attempt}")]);
        if !output.status.success() {
            refused.push(output.stderr);
        }
        if refused.len() >= 8 {
            break;
        }
    }
    assert!(!refused.is_empty(), "no write failed on a full disk: the test did not fill it");

    // Space comes back: every write succeeds from the first, with no restart.
    std::fs::remove_file(&ballast).unwrap();
    for attempt in 0..20 {
        let output = controller.cli(&["token", "create", "--description", &format!("after {attempt}")]);
        assert!(
            output.status.success(),
            "write {attempt} after space came back failed: {}\n(the writes refused while full: {refused:?})",
            output.stderr
        );
    }
    let listed = controller.cli(&["token", "list"]).success();
    assert!(listed.contains("after 19"), "{listed}");
}

#[test]
fn backups_to_names_that_differ_only_in_extension_run_side_by_side() {
    let dir = test_dir();
    let data = dir.path().join("controller");
    let controller = Controller::start(&data);
    // Enough rows that a snapshot takes a moment to write, so the two overlap.
    for index in 0..40 {
        controller.cli(&["token", "create", "--description", &format!("token {index}")]).success();
    }
    let snapshots = dir.path().join("snapshots");
    std::fs::create_dir(&snapshots).unwrap();
    for round in 0..6 {
        let targets =
            [snapshots.join(format!("fleet-{round}.db")), snapshots.join(format!("fleet-{round}.sqlite"))];
        let running: Vec<_> = targets
            .iter()
            .map(|target| {
                Command::new(&comfyfleet_e2e::binaries().controller)
                    .arg("--data-dir")
                    .arg(&data)
                    .args(["backup", "--to"])
                    .arg(target)
                    .stdout(std::process::Stdio::piped())
                    .stderr(std::process::Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect();
        for (target, child) in targets.iter().zip(running) {
            let output = child.wait_with_output().unwrap();
            assert!(
                output.status.success(),
                "backup --to {} (beside another backup to the same name with another extension): {}{}",
                target.display(),
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
    }
    // Every snapshot is whole, and no temporary file is left behind.
    let mut names: Vec<String> = std::fs::read_dir(&snapshots)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names.len(), 12, "{names:?}");
    for name in &names {
        let check = dir.path().join("check");
        std::fs::create_dir(&check).unwrap();
        let snapshot = snapshots.join(name);
        let (status, output) =
            comfyfleet_e2e::controller_command(&check, &["restore", "--from", snapshot.to_str().unwrap()]);
        assert!(status.success(), "{name} is not a whole snapshot: {output}");
        std::fs::remove_dir_all(&check).unwrap();
    }
    drop(controller);
}
