//! The store on a bad day: a controller whose disk filled up writes again as soon as
//! space is free, with no restart; snapshots to names that differ only in extension
//! run side by side; an agent that sends the same inventory again and again costs no
//! writes and no log lines.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::print_stderr)] // test helpers fail loudly by design

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use std::time::Duration;

use comfyfleet_e2e::grpc::{AgentFiles, RawSession, channel, hello, inventory};
use comfyfleet_e2e::{Agent, Controller, profile, test_dir, wait_until};
use comfyfleet_proto::v1 as pb;

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

/// Sends `inventory` as message `seq` and waits for its Ack.
async fn send_inventory(session: &mut RawSession, seq: u64, inventory: pb::Inventory) {
    session.send(pb::AgentMessage { seq, body: Some(pb::agent_message::Body::Inventory(inventory)) }).await;
    loop {
        match session.next().await.unwrap().unwrap().body {
            Some(pb::controller_message::Body::Ack(ack)) if ack.seq == seq => return,
            Some(pb::controller_message::Body::Ack(ack)) => panic!("Ack {} for message {seq}", ack.seq),
            _ => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_inventory_again_is_neither_stored_nor_logged() {
    let dir = test_dir();
    let controller = Controller::start(&dir.path().join("controller"));
    let token = controller.create_token(&[]);
    let mut agent =
        Agent::start(dir.path(), "flood", &profile("t4-x1-535"), &controller.url, Some(&token), &[]);
    wait_until(Duration::from_secs(20), "the agent online", || {
        controller.machine("flood").filter(|machine| machine["online"] == true)
    });
    agent.process.kill();
    let files = AgentFiles::read(&agent.data_dir);

    // A peer with the machine's real certificate, whose Hello carries one inventory.
    let one_gpu = inventory("flood", 1);
    let channel = channel(&controller.url, &files.ca_pem, Some(&files)).await;
    let mut session = RawSession::open(channel).await.unwrap();
    session.send(hello(&files.machine_id, Some(one_gpu.clone()))).await;
    let welcome = session.next().await.unwrap().unwrap();
    assert!(matches!(welcome.body, Some(pb::controller_message::Body::Welcome(_))), "{welcome:?}");
    let updated_at = || {
        let machine = controller.machine("flood").unwrap();
        (
            machine["inventory_updated_at"].as_str().unwrap().to_owned(),
            machine["gpus"].as_array().unwrap().len(),
        )
    };
    let (first, gpus) = updated_at();
    assert_eq!(gpus, 1);

    // The times the CLI shows are in seconds: a write in the flood would move them.
    tokio::time::sleep(Duration::from_millis(2_100)).await;
    let mut seq = 1;
    for _ in 0..2_000 {
        seq += 1;
        send_inventory(&mut session, seq, one_gpu.clone()).await;
    }
    assert_eq!(updated_at(), (first.clone(), 1), "the same inventory again was written");

    // A change is stored at once; changes back and forth are all stored, and logged
    // throttled.
    let two_gpus = inventory("flood", 2);
    seq += 1;
    send_inventory(&mut session, seq, two_gpus.clone()).await;
    let (changed, gpus) = updated_at();
    assert!(changed != first && gpus == 2, "a changed inventory was not stored: {changed} {gpus}");
    for round in 0..200 {
        seq += 1;
        send_inventory(&mut session, seq, if round % 2 == 0 { one_gpu.clone() } else { two_gpus.clone() })
            .await;
    }
    assert_eq!(updated_at().1, 2, "the last inventory sent is the one stored");

    let log = controller.process.log();
    let lines = log.lines().filter(|line| line.contains("inventory updated")).count();
    assert!(lines <= 3, "{lines} log lines for 2,201 inventories, 201 of them changes");
}
