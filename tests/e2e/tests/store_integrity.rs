//! The store is the fleet: a controller whose database was truncated or emptied
//! refuses to start and names the restore command; a snapshot taken while a rollout
//! runs brings the fleet, its credentials and the rollout back; agents the restored
//! fleet does not know keep retrying instead of exiting; `--initialize` starts a new
//! fleet on purpose, and the old fleet's agents say which fleet they belong to.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test helpers fail loudly by design

use std::time::Duration;

use comfyfleet_e2e::rollouts::{PROFILES, activations_of, apply, spec, start, status, wait_for_state};
use comfyfleet_e2e::sim::{SimFleet, SimOptions};
use comfyfleet_e2e::{Controller, controller_command, test_dir, wait_until};

fn snapshots(dir: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|entries| {
            entries.flatten().map(|entry| entry.file_name().to_string_lossy().into_owned()).collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

#[test]
fn a_lost_database_is_refused_and_a_snapshot_brings_the_fleet_back() {
    let dir = test_dir();
    let data = dir.path().join("controller");
    let mut controller = Controller::start_with(&data, 0, &["--backup-interval", "1s", "--backup-keep", "2"]);
    let port = controller.port;
    let mut options = SimOptions::new(20);
    options.profiles = PROFILES.iter().map(|name| (*name).to_owned()).collect();
    options.labels = vec!["pool=sim".to_owned()];
    options.prepare = Duration::from_millis(300);
    options.activate = Duration::from_millis(2_000);
    let mut sim = SimFleet::start(dir.path(), &controller, &options);
    apply(&controller, dir.path(), &spec('1', "canary = 2\nmax_unavailable = 2"));
    let id = start(&controller, &["render"]);

    // A snapshot from outside while the rollout runs, once a few machines are active.
    wait_until(Duration::from_secs(60), "the canaries to activate", || {
        let now = status(&controller, id);
        (now["counts"]["active"].as_u64().unwrap_or(0) >= 2).then_some(())
    });
    let snapshot = dir.path().join("during-rollout.db");
    let (done, output) = controller_command(&data, &["backup", "--to", snapshot.to_str().unwrap()]);
    assert!(done.success(), "{output}");
    assert!(output.contains("20 machines") && output.contains("1 open rollouts"), "{output}");
    let (again, output) = controller_command(&data, &["backup", "--to", snapshot.to_str().unwrap()]);
    assert!(!again.success() && output.contains("exists"), "{output}");
    // --backup-interval keeps rotating snapshots, the newest two.
    wait_until(Duration::from_secs(20), "three rotating snapshots to have been taken", || {
        let names = snapshots(&data.join("backups"));
        (names.len() == 2 && controller.process.log().matches("wrote a snapshot").count() >= 3).then_some(())
    });

    // Machines enrolled after the snapshot: the restored fleet will not know them.
    let late = sim.spawn(2);
    // A clean stop leaves one file (the WAL checkpointed into it)...
    assert!(controller.process.terminate(Duration::from_secs(30)).success());
    let database = data.join("controller.db");
    assert!(!data.join("controller.db-wal").exists(), "a clean stop checkpoints the WAL");

    // ... which a disk fault truncates: refused at start, naming the restore command.
    let bytes = std::fs::read(&database).unwrap();
    std::fs::write(&database, &bytes[..bytes.len() / 2]).unwrap();
    let (refused, output) = controller_command(&data, &["--listen", "127.0.0.1:0"]);
    assert!(!refused.success(), "{output}");
    assert!(output.contains("is damaged") && output.contains("restore --from"), "{output}");

    // Emptied: refused too, naming the newest rotating snapshot.
    std::fs::write(&database, b"").unwrap();
    let (refused, output) = controller_command(&data, &["--listen", "127.0.0.1:0"]);
    assert!(!refused.success(), "{output}");
    assert!(output.contains("holds no fleet") && output.contains("--initialize"), "{output}");
    let newest = snapshots(&data.join("backups")).pop().unwrap();
    assert!(output.contains(&newest), "the newest snapshot {newest} is named: {output}");
    assert_eq!(std::fs::metadata(&database).unwrap().len(), 0, "a refused start writes nothing");

    let (restored, output) = controller_command(&data, &["restore", "--from", snapshot.to_str().unwrap()]);
    assert!(restored.success(), "{output}");
    assert!(output.contains("kept as"), "{output}");
    let controller = Controller::start_with(&data, port, &[]);
    // Its credentials are back: the admin.toml written before the loss works.
    controller.cli(&["whoami"]).success();
    let done = wait_for_state(&controller, id, "succeeded", Duration::from_secs(120));
    assert_eq!(done["counts"]["active"], 20, "{}", done["counts"]);
    let activations = activations_of(&sim.events(), 1);
    assert_eq!(activations.len(), 20);
    let machines = controller.machines();
    assert_eq!(machines.len(), 20);
    wait_until(Duration::from_secs(30), "every restored machine online", || {
        controller.machines().iter().all(|machine| machine["online"] == true).then_some(())
    });
    // No agent exited: the two the snapshot does not know keep retrying and say why.
    let stats = sim.stats();
    assert_eq!(stats["refused"], 0, "{stats}");
    assert_eq!(stats["online"], 22, "{stats}");
    assert!(late.iter().all(|id| !machines.iter().any(|machine| machine["id"] == id.as_str())));
    assert!(sim.log().contains("has no record of this machine"), "{}", sim.log());

    // --initialize starts a new fleet on purpose; the old fleet's agents say so and stay.
    let mut controller = controller;
    controller.kill();
    std::fs::write(&database, b"").unwrap();
    let _ = std::fs::remove_file(data.join("controller.db-wal"));
    let _ = std::fs::remove_file(data.join("controller.db-shm"));
    let controller = Controller::start_with(&data, port, &["--initialize"]);
    assert!(controller.machines().is_empty());
    wait_until(Duration::from_secs(30), "the agents to learn the fleet changed", || {
        sim.log().contains("but this machine enrolled in fleet").then_some(())
    });
    let stats = sim.stats();
    assert_eq!(stats["refused"], 0, "{stats}");
    assert_eq!(stats["online"], 22, "{stats}");
}
