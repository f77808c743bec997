//! The fleet's summary in memory stays what the store holds: `/metrics`' machine
//! counts and every `report` over the whole fleet (served from the summary) against
//! the same report with a selector that picks every machine (read from the store),
//! while agents connect and go away, take a rollout (their reports), and a machine is
//! revoked — on one controller over SQLite, and on a second controller of a
//! PostgreSQL fleet whose agents are all connected to the first.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test helpers fail loudly by design

use std::time::Duration;

use comfyfleet_e2e::observe::http_get;
use comfyfleet_e2e::provision::free_ports;
use comfyfleet_e2e::rollouts::{PROFILES, apply, spec, start, wait_for_state};
use comfyfleet_e2e::sim::{SimFleet, SimOptions};
use comfyfleet_e2e::{Controller, test_dir, wait_until};
use comfyfleet_testsupport::postgres::Server;
use serde_json::Value;

const AGENTS: usize = 12;
const KINDS: [&str; 4] = ["gpus", "environments", "optimizations", "drift"];

fn options() -> SimOptions {
    let mut options = SimOptions::new(AGENTS);
    options.profiles = PROFILES.iter().map(|name| (*name).to_owned()).collect();
    options.labels = vec!["pool=sim".to_owned()];
    options
}

fn metrics_args(listen: &str) -> Vec<String> {
    vec!["--metrics-listen".to_owned(), listen.to_owned()]
}

/// `comfyfleet_machines{status=…}` on `port`'s `/metrics`: (online, offline, revoked).
fn statuses(port: u16) -> (u64, u64, u64) {
    let answer = http_get(port, "/metrics", &[]).unwrap();
    assert_eq!(answer.status, 200, "{}", answer.body);
    let value = |status: &str| {
        answer
            .body
            .lines()
            .filter(|line| {
                line.starts_with("comfyfleet_machines{") && line.contains(&format!("status=\"{status}\""))
            })
            .find_map(|line| line.rsplit_once(' ')?.1.parse::<f64>().ok())
            .unwrap_or(-1.0) as u64
    };
    (value("online"), value("offline"), value("revoked"))
}

/// `/metrics` shows `want` within a few seconds (its page is kept for one).
fn wait_for_statuses(port: u16, want: (u64, u64, u64)) {
    wait_until(Duration::from_secs(20), &format!("the machine counts on /metrics to be {want:?}"), || {
        (statuses(port) == want).then_some(())
    });
}

/// Each report kind over the whole fleet (from the summary) and over a selector that
/// picks every machine (from the store).
fn reports(controller: &Controller) -> Vec<(Value, Value)> {
    KINDS
        .iter()
        .map(|kind| {
            let whole = controller.cli(&["report", kind, "-o", "json"]).success();
            let selected = controller
                .cli(&["report", kind, "--where", "labels.pool == \"sim\"", "-o", "json"])
                .success();
            (serde_json::from_str(&whole).unwrap(), serde_json::from_str(&selected).unwrap())
        })
        .collect()
}

/// Every report kind from the summary equals the one from the store; the machines
/// counted.
fn assert_reports_agree(controller: &Controller) -> u64 {
    for ((whole, selected), kind) in reports(controller).iter().zip(KINDS) {
        assert_eq!(whole, selected, "report {kind}: the summary against the store");
    }
    reports(controller)[0].0["machines"].as_u64().unwrap()
}

/// As [`assert_reports_agree`], once the summary has caught up (another
/// controller's changes reach it on its refresh task).
fn wait_for_reports_to_agree(controller: &Controller) -> u64 {
    wait_until(Duration::from_secs(20), "the summary's reports to agree with the store's", || {
        reports(controller).iter().all(|(whole, selected)| whole == selected).then_some(())
    });
    assert_reports_agree(controller)
}

#[test]
fn the_summary_follows_sessions_reports_and_revocations() {
    let dir = test_dir();
    let port = free_ports(1)[0];
    let listen = format!("127.0.0.1:{port}");
    let args = metrics_args(&listen);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let controller = Controller::start_with(&dir.path().join("controller"), 0, &args);
    let mut sim = SimFleet::start(dir.path(), &controller, &options());
    wait_for_statuses(port, (AGENTS as u64, 0, 0));
    assert_eq!(assert_reports_agree(&controller), AGENTS as u64);

    // Sessions go and come back.
    sim.offline(0);
    sim.offline(1);
    wait_for_statuses(port, (AGENTS as u64 - 2, 2, 0));
    sim.online(1);
    wait_for_statuses(port, (AGENTS as u64 - 1, 1, 0));

    // Reports: every online machine takes a rollout and reports it active.
    apply(&controller, dir.path(), &spec('1', "canary = 0"));
    sim.online(0);
    let id = start(&controller, &["render", "--max-parallel-prepare", "100%", "--max-unavailable", "50%"]);
    wait_for_state(&controller, id, "succeeded", Duration::from_secs(120));
    let environments: Value =
        serde_json::from_str(&controller.cli(&["report", "environments", "-o", "json"]).success()).unwrap();
    let active: u64 = environments["rows"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|row| row["phase"] == "active")
        .map(|row| row["machines"].as_u64().unwrap())
        .sum();
    assert_eq!(active, AGENTS as u64, "{environments}");
    assert_reports_agree(&controller);

    // A revoked machine counts as revoked, in no report.
    let machines: Vec<Value> =
        serde_json::from_str(&controller.cli(&["machines", "-o", "json"]).success()).unwrap();
    let revoked = machines[3]["id"].as_str().unwrap();
    controller.cli(&["machines", "revoke", revoked]).success();
    wait_for_statuses(port, (AGENTS as u64 - 1, 0, 1));
    assert_eq!(assert_reports_agree(&controller), AGENTS as u64 - 1);

    // A restarted controller reads the same summary from the store.
    let before: Vec<String> =
        KINDS.iter().map(|kind| controller.cli(&["report", kind, "-o", "json"]).success()).collect();
    let mut controller = controller;
    controller.kill();
    let controller = Controller::start_with(&dir.path().join("controller"), controller.port, &args);
    let after: Vec<String> =
        KINDS.iter().map(|kind| controller.cli(&["report", kind, "-o", "json"]).success()).collect();
    assert_eq!(before, after);
    drop(sim);
}

#[test]
fn a_second_controller_keeps_its_summary_from_the_notices() {
    let dir = test_dir();
    let postgres = Server::start();
    let url = postgres.create_database("fleet");
    let key = dir.path().join("secrets.key");
    std::fs::write(&key, format!("{}\n", "5a".repeat(32))).unwrap();
    let ports = free_ports(2);
    let controllers: Vec<Controller> = ports
        .iter()
        .enumerate()
        .map(|(index, port)| {
            let listen = format!("127.0.0.1:{port}");
            let args = [
                "--database-url",
                url.as_str(),
                "--secrets-key-file",
                key.to_str().unwrap(),
                "--metrics-listen",
                listen.as_str(),
            ];
            Controller::start_with(&dir.path().join(format!("controller-{index}")), 0, &args)
        })
        .collect();
    let (first, second) = (&controllers[0], &controllers[1]);
    // Every agent on the first controller; the second hears of them in notices.
    let mut sim = SimFleet::start(dir.path(), first, &options());
    wait_for_statuses(ports[1], (AGENTS as u64, 0, 0));
    assert_eq!(wait_for_reports_to_agree(second), AGENTS as u64);

    apply(first, dir.path(), &spec('1', "canary = 0"));
    let id = start(first, &["render", "--max-parallel-prepare", "100%", "--max-unavailable", "50%"]);
    wait_for_state(first, id, "succeeded", Duration::from_secs(120));
    // The last reports reach the second's summary on its refresh task.
    wait_until(Duration::from_secs(20), "the second controller to count the machines active", || {
        second.cli(&["report", "environments", "-o", "json"]).success().contains("\"active\"").then_some(())
    });
    wait_for_reports_to_agree(second);

    sim.offline(0);
    wait_for_statuses(ports[1], (AGENTS as u64 - 1, 1, 0));
    let machines: Vec<Value> =
        serde_json::from_str(&first.cli(&["machines", "-o", "json"]).success()).unwrap();
    let revoked = machines.iter().find(|machine| machine["online"] == true).unwrap()["id"].as_str().unwrap();
    first.cli(&["machines", "revoke", revoked]).success();
    wait_for_statuses(ports[1], (AGENTS as u64 - 2, 1, 1));
    assert_eq!(wait_for_reports_to_agree(second), AGENTS as u64 - 1);
    drop(sim);
}
