//! The controller on a real PostgreSQL (started by the test): a simulated fleet
//! enrolls and rolls out as on SQLite; the database stopped under it, the controller
//! keeps its agents' sessions, refuses writes with a clear error (storing none of
//! them), and works again once the database is back.

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
    let mut controller = Controller::start_with(&data, 0, &["--database-url", &url]);
    let mut options = SimOptions::new(20);
    options.profiles = PROFILES.iter().map(|name| (*name).to_owned()).collect();
    options.labels = vec!["pool=sim".to_owned()];
    let mut sim = SimFleet::start(dir.path(), &controller, &options);
    apply(&controller, dir.path(), &spec('1', "canary = 2\nmax_unavailable = \"25%\""));
    let id = start(&controller, &["render"]);
    let done = wait_for_state(&controller, id, "succeeded", Duration::from_secs(120));
    assert_eq!(done["counts"]["active"], 20, "{}", done["counts"]);
    assert_eq!(controller.machines().len(), 20);

    // One controller per database, until the rollout engine elects a leader.
    let (refused, output) =
        controller_command(&dir.path().join("second"), &["--database-url", &url, "--listen", "127.0.0.1:0"]);
    assert!(!refused.success() && output.contains("another controller already serves"), "{output}");

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
}
