//! Three controllers serve one fleet from one real PostgreSQL: 200 simulated agents
//! spread over them; a rollout started through a controller that does not lead is
//! run by the leader and reaches agents on all three; the leader killed with
//! `kill -9` mid-rollout, another leads within 10 s and the rollout succeeds with
//! every machine activated exactly once and never more than `max_unavailable`
//! unavailable (from the stored events); a controller that does not lead killed
//! too, its agents are back on the last one within 15 s; the CLI goes past dead
//! controllers to a live one.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::print_stderr)] // test helpers fail loudly by design

use std::collections::HashMap;
use std::time::{Duration, Instant};

use comfyfleet_e2e::rollouts::{
    PROFILES, activations_of, apply, events, max_unavailable, spec, start, status, wait_for_state,
};
use comfyfleet_e2e::sim::{SimFleet, SimOptions};
use comfyfleet_e2e::{Controller, cli, test_dir, wait_until};
use comfyfleet_testsupport::postgres::Server;

const AGENTS: usize = 200;

/// Sessions per controller URL, of controllers that beat in the last 5 s.
fn sessions(postgres: &Server) -> HashMap<String, usize> {
    let rows = postgres.query(
        "fleet",
        "SELECT c.url, count(*) FROM agent_sessions s JOIN controllers c ON c.id = s.controller_id \
         WHERE c.heartbeat_at > now() - interval '5 seconds' GROUP BY c.url",
    );
    rows.lines()
        .filter_map(|line| line.split_once('|'))
        .map(|(url, count)| (url.to_owned(), count.parse().unwrap()))
        .collect()
}

/// The URL of the controller holding an unexpired lease, if any.
fn leader(postgres: &Server) -> Option<String> {
    let url = postgres.query("fleet", "SELECT holder_url FROM controller_lease WHERE expires_at > now()");
    (!url.is_empty()).then_some(url)
}

fn all_online(controller: &Controller) -> bool {
    let out = controller.cli(&["machines", "-o", "json"]);
    if !out.status.success() {
        return false;
    }
    let machines: Vec<serde_json::Value> = serde_json::from_str(&out.stdout).unwrap();
    machines.len() == AGENTS && machines.iter().all(|machine| machine["online"] == true)
}

#[test]
fn three_controllers_serve_one_fleet_through_the_loss_of_two() {
    let dir = test_dir();
    let postgres = Server::start();
    let url = postgres.create_database("fleet");
    let key = dir.path().join("secrets.key");
    std::fs::write(&key, format!("{}\n", "5a".repeat(32))).unwrap();
    let args = ["--database-url", url.as_str(), "--secrets-key-file", key.to_str().unwrap()];
    let mut controllers: Vec<Controller> = (0..3)
        .map(|index| Controller::start_with(&dir.path().join(format!("controller-{index}")), 0, &args))
        .collect();
    let first_leader = wait_until(Duration::from_secs(10), "a leader", || leader(&postgres));
    let leading = controllers.iter().position(|controller| controller.url == first_leader).unwrap();

    // 200 agents, each given all three URLs: they spread over the controllers.
    let urls: Vec<&str> = controllers.iter().map(|controller| controller.url.as_str()).collect();
    let token = controllers[0].create_token(&["--ttl", "1h"]);
    let mut options = SimOptions::new(AGENTS);
    options.profiles = PROFILES.iter().map(|name| (*name).to_owned()).collect();
    options.labels = vec!["pool=sim".to_owned()];
    options.activate = Duration::from_millis(1500);
    let mut sim = SimFleet::start_with(dir.path(), &urls.join(","), Some(&token), &options);
    let spread = wait_until(Duration::from_secs(60), "200 sessions on three controllers", || {
        let spread = sessions(&postgres);
        (spread.len() == 3 && spread.values().sum::<usize>() == AGENTS).then_some(spread)
    });
    eprintln!("sessions per controller: {spread:?}");
    assert!(spread.values().all(|count| *count >= 20), "{spread:?}");
    for controller in &controllers {
        wait_until(Duration::from_secs(15), "every controller to count all 200 online", || {
            all_online(controller).then_some(())
        });
    }

    // Started through a controller that does not lead: the leader runs it.
    let through = (leading + 1) % 3;
    apply(&controllers[through], dir.path(), &spec('1', "canary = 2\nmax_unavailable = \"10%\""));
    let id = start(&controllers[through], &["render"]);
    wait_until(Duration::from_secs(120), "40 machines active before the leader dies", || {
        let now = status(&controllers[through], id);
        (now["counts"]["active"].as_u64().unwrap_or_default() >= 40).then_some(())
    });
    let activated: Vec<String> = sim
        .events()
        .iter()
        .filter(|event| event["event"] == "activated")
        .map(|event| event["machine_id"].as_str().unwrap().to_owned())
        .collect();
    let reached: usize = activated
        .iter()
        .map(|machine| {
            postgres.query(
                "fleet",
                &format!("SELECT controller_id FROM agent_sessions WHERE machine_id = '{machine}'"),
            )
        })
        .collect::<std::collections::HashSet<_>>()
        .len();
    assert_eq!(reached, 3, "the rollout reached agents on every controller");

    controllers[leading].kill();
    let killed = Instant::now();
    let next_leader = wait_until(Duration::from_secs(20), "another leader", || {
        leader(&postgres).filter(|url| *url != first_leader)
    });
    let took = killed.elapsed();
    eprintln!("a new leader {next_leader} after {took:?}");
    assert!(took < Duration::from_secs(10), "the new leader took {took:?}");

    let done = wait_for_state(&controllers[through], id, "succeeded", Duration::from_secs(180));
    assert_eq!(done["counts"]["active"], AGENTS as u64, "{}", done["counts"]);
    let stored = events(&controllers[through], id);
    let most = max_unavailable(&stored);
    assert!(most <= 20, "{most} machines unavailable at once (max_unavailable 10% of 200)");
    let mut activating: HashMap<&str, usize> = HashMap::new();
    for event in &stored {
        if event["kind"] == "activating" {
            *activating.entry(event["machine"].as_str().unwrap()).or_default() += 1;
        }
    }
    assert_eq!(activating.len(), AGENTS);
    assert!(activating.values().all(|count| *count == 1), "activated twice: {activating:?}");
    let switched = activations_of(&sim.events(), 1);
    assert_eq!(switched.len(), AGENTS);
    assert!(switched.values().all(|count| *count == 1), "an agent switched twice: {switched:?}");

    // A controller that does not lead, killed: its agents move to the last one.
    let survivors: Vec<usize> = (0..3).filter(|index| *index != leading).collect();
    let last = survivors.iter().copied().find(|index| controllers[*index].url == next_leader).unwrap();
    let follower = survivors.iter().copied().find(|index| *index != last).unwrap();
    wait_until(Duration::from_secs(30), "every agent on the two controllers left", || {
        let spread = sessions(&postgres);
        (spread.values().sum::<usize>() == AGENTS && spread.len() == 2).then_some(())
    });
    controllers[follower].kill();
    let killed = Instant::now();
    wait_until(Duration::from_secs(30), "every agent on the last controller", || {
        (sessions(&postgres).get(&controllers[last].url) == Some(&AGENTS)).then_some(())
    });
    let took = killed.elapsed();
    eprintln!("the dead follower's agents were back after {took:?}");
    assert!(took < Duration::from_secs(15), "its agents took {took:?} to reconnect");
    wait_until(Duration::from_secs(10), "all 200 online on the last controller", || {
        all_online(&controllers[last]).then_some(())
    });
    let stats = sim.stats();
    assert_eq!(
        (stats["connected"].as_u64(), stats["refused"].as_u64()),
        (Some(AGENTS as u64), Some(0)),
        "{stats}"
    );

    // The CLI goes past the dead controllers to the live one.
    let config_text = std::fs::read_to_string(controllers[last].admin_config()).unwrap();
    let mut config: toml::Value = toml::from_str(&config_text).unwrap();
    config["server"] = toml::Value::String(controllers[leading].url.clone());
    config.as_table_mut().unwrap().insert(
        "other_servers".into(),
        toml::Value::Array(vec![
            toml::Value::String(controllers[follower].url.clone()),
            toml::Value::String(controllers[last].url.clone()),
        ]),
    );
    let failover = dir.path().join("failover.toml");
    std::fs::write(&failover, toml::to_string(&config).unwrap()).unwrap();
    let listed: Vec<serde_json::Value> =
        serde_json::from_str(&cli(&failover, &["machines", "-o", "json"]).success()).unwrap();
    assert_eq!(listed.len(), AGENTS);
    controllers.clear();
}
