//! Online means connected: a killed agent goes offline, a restarted one is the same
//! machine, and a restarted controller finds its whole fleet again untouched.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test helpers fail loudly by design

use std::time::{Duration, Instant};

use comfyfleet_e2e::{Agent, Controller, profile, test_dir, wait_until};
use serde_json::Value;

fn online(controller: &Controller, name: &str) -> Option<bool> {
    controller.machine(name).map(|m| m["online"] == true)
}

#[test]
fn a_killed_agent_goes_offline_and_comes_back_as_the_same_machine() {
    let dir = test_dir();
    let controller = Controller::start(&dir.path().join("controller"));
    let token = controller.create_token(&["--uses", "2"]);
    let mut agent =
        Agent::start(dir.path(), "render-01", &profile("l40s-x2-550"), &controller.url, Some(&token), &[]);
    let _other =
        Agent::start(dir.path(), "render-02", &profile("t4-x1-535"), &controller.url, Some(&token), &[]);
    wait_until(Duration::from_secs(20), "both online", || {
        (online(&controller, "render-01")? && online(&controller, "render-02")?).then_some(())
    });
    let before = controller.machine("render-01").unwrap();

    agent.process.kill();
    let killed_at = Instant::now();
    wait_until(Duration::from_secs(15), "render-01 offline", || {
        (!online(&controller, "render-01")?).then_some(())
    });
    eprintln!("offline after {:?}", killed_at.elapsed());
    let offline = controller.machine("render-01").unwrap();
    assert!(offline["last_seen"].is_string());
    let table = controller.cli(&["machines"]).success();
    assert!(table.lines().any(|l| l.contains("render-01") && l.contains("offline")), "{table}");
    assert_eq!(online(&controller, "render-02"), Some(true), "the other agent is unaffected");

    // No token this time: the identity on disk is enough.
    agent.restart();
    let back = wait_until(Duration::from_secs(20), "render-01 online again", || {
        controller.machine("render-01").filter(|m| m["online"] == true)
    });
    assert_eq!(back["id"], before["id"]);
    assert_eq!(back["gpus"], before["gpus"]);
    assert_eq!(controller.machines().len(), 2, "no duplicate machine");
    assert!(!agent.process.log().contains("enrolling"), "the restart must not enroll again");
}

#[test]
fn a_restarted_controller_keeps_its_machines_and_every_agent_returns() {
    let dir = test_dir();
    let controller_dir = dir.path().join("controller");
    let mut controller = Controller::start(&controller_dir);
    let token = controller.create_token(&[]);
    let names = ["a100-x4-570", "rtx4090-x1-570", "v100-x2-560", "gtx1080ti-x1-570"];
    let mut agents: Vec<Agent> = names
        .iter()
        .map(|name| Agent::start(dir.path(), name, &profile(name), &controller.url, Some(&token), &[]))
        .collect();
    let before = wait_until(Duration::from_secs(30), "all four online", || {
        let machines = controller.machines();
        (machines.len() == 4 && machines.iter().all(|m| m["online"] == true)).then_some(machines)
    });
    let admin_before = std::fs::read_to_string(controller.admin_config()).unwrap();
    let tokens_before = controller.cli(&["token", "list", "-o", "json"]).success();

    controller.kill();
    let port = controller.port;
    let restarted_at = Instant::now();
    let controller = Controller::start_with(&controller_dir, port, &[]);
    assert_eq!(
        std::fs::read_to_string(controller.admin_config()).unwrap(),
        admin_before,
        "same credential, same URL"
    );

    // Right after the restart every machine is still listed...
    let listed = controller.machines();
    let ids = |machines: &[Value]| {
        let mut ids: Vec<String> = machines.iter().map(|m| m["id"].as_str().unwrap().to_owned()).collect();
        ids.sort();
        ids
    };
    assert_eq!(ids(&listed), ids(&before));
    assert_eq!(controller.cli(&["token", "list", "-o", "json"]).success(), tokens_before);
    // ...and every agent reconnects by itself.
    let after = wait_until(Duration::from_secs(10), "every agent back online", || {
        let machines = controller.machines();
        machines.iter().all(|m| m["online"] == true).then_some(machines)
    });
    let back_after = restarted_at.elapsed();
    eprintln!("all back online {back_after:?} after the restart");
    assert!(back_after < Duration::from_secs(10), "agents took {back_after:?}");
    for machine in &after {
        let old = before.iter().find(|m| m["id"] == machine["id"]).unwrap();
        assert_eq!(machine["gpus"], old["gpus"]);
        assert_eq!(machine["labels"], old["labels"]);
    }
    for agent in &mut agents {
        assert!(agent.process.is_running(), "{} must not have exited", agent.name);
        assert!(agent.process.log().contains("lost the controller"), "{} should have noticed", agent.name);
    }
}

#[test]
fn sigterm_stops_the_controller_promptly_and_agents_wait_for_it() {
    let dir = test_dir();
    let controller_dir = dir.path().join("controller");
    let mut controller = Controller::start(&controller_dir);
    let token = controller.create_token(&[]);
    let mut agent =
        Agent::start(dir.path(), "waiter", &profile("rtx5090-x1-575"), &controller.url, Some(&token), &[]);
    wait_until(Duration::from_secs(20), "online", || online(&controller, "waiter")?.then_some(()));

    let stopped_at = Instant::now();
    let status = controller.process.terminate(Duration::from_secs(15));
    assert!(status.success(), "controller exit status {status}");
    assert!(stopped_at.elapsed() < Duration::from_secs(12), "bounded drain");
    assert!(controller.process.log().contains("controller stopped"));

    // The agent keeps retrying rather than exiting...
    std::thread::sleep(Duration::from_secs(2));
    assert!(agent.process.is_running(), "{}", agent.process.log());
    // ...and stops cleanly on its own SIGTERM.
    let status = agent.process.terminate(Duration::from_secs(10));
    assert!(status.success(), "agent exit status {status}");
}
