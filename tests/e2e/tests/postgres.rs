//! The controller on a real PostgreSQL (started by the test): a simulated fleet
//! enrolls and rolls out as on SQLite; the database stopped under it, the controller
//! keeps its agents' sessions, refuses writes with a clear error (storing none of
//! them), and works again once the database is back; and when its host is lost, a
//! controller on a new host (an empty data dir, the same database and secrets key)
//! serves the same fleet: every agent reconnects with the identity it has.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test helpers fail loudly by design

use std::time::Duration;

use comfyfleet_e2e::rollouts::{PROFILES, apply, spec, start, wait_for_state};
use comfyfleet_e2e::sim::{SimFleet, SimOptions};
use comfyfleet_e2e::{Controller, controller_command, test_dir, wait_until};
use comfyfleet_testsupport::postgres::Server;
use serde_json::Value;

#[test]
fn a_fleet_on_postgresql_rides_out_a_lost_database() {
    let dir = test_dir();
    let mut postgres = Server::start();
    let url = postgres.create_database("fleet");
    let data = dir.path().join("controller");
    let key = dir.path().join("secrets.key");
    std::fs::write(&key, format!("{}\n", "5a".repeat(32))).unwrap();
    let key_arg = key.to_str().unwrap();
    let mut controller =
        Controller::start_with(&data, 0, &["--database-url", &url, "--secrets-key-file", key_arg]);
    let mut options = SimOptions::new(20);
    options.profiles = PROFILES.iter().map(|name| (*name).to_owned()).collect();
    options.labels = vec!["pool=sim".to_owned()];
    let mut sim = SimFleet::start(dir.path(), &controller, &options);
    apply(&controller, dir.path(), &spec('1', "canary = 2\nmax_unavailable = \"25%\""));
    let id = start(&controller, &["render"]);
    let done = wait_for_state(&controller, id, "succeeded", Duration::from_secs(120));
    assert_eq!(done["counts"]["active"], 20, "{}", done["counts"]);
    assert_eq!(controller.machines().len(), 20);

    // Backups of a PostgreSQL fleet are PostgreSQL's own.
    let (refused, output) =
        controller_command(&data, &["--database-url", &url, "backup", "--to", "/tmp/never.db"]);
    assert!(!refused.success() && output.contains("pg_dump"), "{output}");

    postgres.stop();
    // Writes are refused with the reason, not hung and not half done.
    let failed = controller.cli(&["machines", "label", &sim.ids()[0], "rack=12"]);
    let error = failed.failure();
    assert!(error.contains("database"), "{error}");
    let tokens = controller.cli(&["token", "create", "--ttl", "1h"]).failure();
    assert!(tokens.contains("database"), "{tokens}");
    // The agents' sessions stay open through it.
    std::thread::sleep(Duration::from_secs(4));
    let stats = sim.stats();
    assert_eq!((stats["connected"].as_u64(), stats["refused"].as_u64()), (Some(20), Some(0)), "{stats}");
    assert!(controller.process.is_running());

    postgres.restart();
    let first = sim.ids()[0].clone();
    wait_until(Duration::from_secs(30), "writes to work again", || {
        controller.cli(&["machines", "label", &first, "rack=12"]).status.success().then_some(())
    });
    let machine: Value =
        controller.machines().into_iter().find(|machine| machine["id"] == first.as_str()).unwrap();
    assert_eq!(machine["labels"]["rack"], "12");
    let tokens: Vec<Value> =
        serde_json::from_str(&controller.cli(&["token", "list", "-o", "json"]).success()).unwrap();
    assert_eq!(tokens.len(), 1, "only the simulator's token; none half made: {tokens:?}");
    let stats = sim.stats();
    assert_eq!(stats["connected"], 20, "{stats}");
    // A second rollout goes through on the recovered database.
    apply(&controller, dir.path(), &spec('2', "canary = 2\nmax_unavailable = \"25%\""));
    let id = start(&controller, &["render"]);
    let done = wait_for_state(&controller, id, "succeeded", Duration::from_secs(120));
    assert_eq!(done["counts"]["active"], 20, "{}", done["counts"]);

    // The host is lost: a controller on a new one, with the database URL and the key.
    let port = controller.port;
    controller.kill();
    let (refused, output) = controller_command(&dir.path().join("keyless"), &["--database-url", &url]);
    assert!(!refused.success() && output.contains("--secrets-key-file"), "{output}");
    let wrong = dir.path().join("wrong.key");
    std::fs::write(&wrong, format!("{}\n", "07".repeat(32))).unwrap();
    let (refused, output) = controller_command(
        &dir.path().join("wrong-key"),
        &["--database-url", &url, "--secrets-key-file", wrong.to_str().unwrap(), "--listen", "127.0.0.1:0"],
    );
    assert!(!refused.success() && output.contains("sealed with another secrets key"), "{output}");
    let new_host = dir.path().join("new-host");
    let controller =
        Controller::start_with(&new_host, port, &["--database-url", &url, "--secrets-key-file", key_arg]);
    assert_eq!(
        std::fs::read_to_string(new_host.join("pki/ca.crt")).unwrap(),
        std::fs::read_to_string(data.join("pki/ca.crt")).unwrap(),
        "the fleet's CA, from the database"
    );
    // (For up to 5 s the killed controller's sessions still count: it beat recently.)
    wait_until(Duration::from_secs(30), "every agent back on the new host", || {
        let stats = sim.stats();
        let machines = controller.machines();
        (stats["connected"].as_u64() == Some(20)
            && machines.len() == 20
            && machines.iter().all(|machine| machine["online"] == true))
        .then_some(())
    });
    let stats = sim.stats();
    assert_eq!((stats["connected"].as_u64(), stats["refused"].as_u64()), (Some(20), Some(0)), "{stats}");
}
