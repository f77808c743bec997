//! The fleet simulator against a real controller: every simulated agent is a machine
//! of its own, online with its profile's GPUs; one taken offline and back is the same
//! machine; the fleet grows on demand; a restarted simulator brings back the same
//! machines without a token.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test helpers fail loudly by design

use std::collections::HashSet;
use std::time::Duration;

use comfyfleet_e2e::sim::{SimFleet, SimOptions};
use comfyfleet_e2e::{Controller, profile, test_dir, wait_until};
use serde_json::Value;

const PROFILES: [&str; 3] = ["h100-x8-580", "rtx4090-x1-570", "mixed-4090-a6000-570"];

/// (name, memory, compute capability) of each GPU the profile describes.
fn profile_gpus(name: &str) -> Vec<(String, u64, String)> {
    let profile = profile(name);
    let mut gpus = Vec::new();
    for entry in profile["gpus"].as_array().unwrap() {
        let capability = entry["compute_capability"].as_array().unwrap();
        for _ in 0..entry["count"].as_u64().unwrap_or(1) {
            gpus.push((
                entry["name"].as_str().unwrap().to_owned(),
                entry["memory_total_bytes"].as_u64().unwrap(),
                format!("{}.{}", capability[0], capability[1]),
            ));
        }
    }
    gpus
}

fn reported_gpus(machine: &Value) -> Vec<(String, u64, String)> {
    machine["gpus"]
        .as_array()
        .unwrap()
        .iter()
        .map(|gpu| {
            (
                gpu["name"].as_str().unwrap().to_owned(),
                gpu["memory_total_bytes"].as_u64().unwrap(),
                gpu["compute_capability"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn machine<'a>(machines: &'a [Value], id: &str) -> &'a Value {
    machines.iter().find(|machine| machine["id"] == id).unwrap_or_else(|| panic!("no machine {id}"))
}

fn is_online(controller: &Controller, id: &str) -> bool {
    machine(&controller.machines(), id)["online"] == true
}

#[test]
fn a_simulated_fleet_is_real_machines_that_go_offline_come_back_and_grow() {
    let dir = test_dir();
    let controller = Controller::start(&dir.path().join("controller"));
    let mut options = SimOptions::new(30);
    options.profiles = PROFILES.iter().map(|name| (*name).to_owned()).collect();
    options.labels = vec!["pool=sim".to_owned()];
    let mut sim = SimFleet::start(dir.path(), &controller, &options);

    let ids = sim.ids();
    assert_eq!(ids.len(), 30);
    let machines = controller.machines();
    assert_eq!(machines.len(), 30, "one machine per simulated agent");
    let mut uuids = HashSet::new();
    for (index, id) in ids.iter().enumerate() {
        let machine = machine(&machines, id);
        let profile_name = PROFILES[index % PROFILES.len()];
        assert_eq!(machine["online"], true, "{machine}");
        assert_eq!(machine["hostname"], format!("sim-{index}"));
        assert_eq!(reported_gpus(machine), profile_gpus(profile_name), "agent {index}: {profile_name}");
        assert_eq!(machine["driver_version"], profile(profile_name)["driver_version"]);
        assert_eq!(machine["labels"]["pool"], "sim");
        assert_eq!(machine["labels"]["sim.profile"], profile_name);
        assert_eq!(machine["report"]["phase"], "idle");
        for gpu in machine["gpus"].as_array().unwrap() {
            assert!(uuids.insert(gpu["uuid"].as_str().unwrap().to_owned()), "GPU UUIDs are unique: {gpu}");
        }
    }

    // Offline: the controller sees the session end; the others stay.
    assert_eq!(sim.offline(3), ids[3]);
    wait_until(Duration::from_secs(15), "agent 3 offline", || {
        (!is_online(&controller, &ids[3])).then_some(())
    });
    let online = controller.machines().iter().filter(|machine| machine["online"] == true).count();
    assert_eq!(online, 29);
    assert!(sim.command("offline 3").unwrap_err().contains("offline already"));
    assert_eq!(sim.stats()["connected"], 29);

    // Online again: the same machine, no new enrollment.
    assert_eq!(sim.online(3), ids[3]);
    wait_until(Duration::from_secs(15), "agent 3 online", || is_online(&controller, &ids[3]).then_some(()));
    assert_eq!(controller.machines().len(), 30);

    // The fleet grows: two new machines, numbered on.
    let spawned = sim.spawn(2);
    assert_eq!(spawned.len(), 2);
    assert!(spawned.iter().all(|id| !ids.contains(id)), "new machines: {spawned:?}");
    let machines = wait_until(Duration::from_secs(15), "32 machines online", || {
        let machines = controller.machines();
        (machines.len() == 32 && machines.iter().all(|machine| machine["online"] == true)).then_some(machines)
    });
    assert_eq!(machine(&machines, &spawned[1])["hostname"], "sim-31");
    let stats = sim.stats();
    assert_eq!((stats["agents"].as_u64(), stats["connected"].as_u64()), (Some(32), Some(32)), "{stats}");
    assert_eq!(stats["phases"]["idle"], 32, "{stats}");
    assert!(sim.command("online 99").unwrap_err().contains("no agent 99: there are 32"));
    assert!(sim.command("reboot").unwrap_err().contains("unknown command"));

    // The end of stdin stops it cleanly; every session ends with it.
    assert!(sim.stop(Duration::from_secs(20)).success(), "{}", sim.log());
    wait_until(Duration::from_secs(15), "every machine offline", || {
        controller.machines().iter().all(|machine| machine["online"] == false).then_some(())
    });
    let events = sim.events();
    let count = |name: &str| events.iter().filter(|event| event["event"] == name).count();
    assert_eq!(count("enrolled"), 32);
    assert_eq!(count("connected"), 33, "32 first sessions and agent 3's second");
    assert_eq!(count("disconnected"), 33);

    // A restarted simulator needs no token: the same 32 identities come back.
    let mut again = options.clone();
    again.count = 32;
    let mut sim = SimFleet::start_with(dir.path(), &controller.url, None, &again);
    let mut all = ids.clone();
    all.extend(spawned);
    assert_eq!(sim.ids(), all);
    wait_until(Duration::from_secs(15), "the same 32 machines online", || {
        let machines = controller.machines();
        (machines.len() == 32 && machines.iter().all(|machine| machine["online"] == true)).then_some(())
    });
    // Events reach the file within 100 ms.
    wait_until(Duration::from_secs(5), "32 reused identities in the events", || {
        let events = sim.events();
        let reused = events.iter().filter(|event| event["event"] == "enrolled" && event["reused"] == true);
        (reused.count() == 32).then_some(())
    });
}
