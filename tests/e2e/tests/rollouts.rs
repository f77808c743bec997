//! Rolling upgrades over a simulated fleet: every simulated agent is a real
//! mTLS session with its own identity (the agent's own link code), whose executor
//! sleeps through prepare and activate. The controller is the real binary; every
//! assertion reads what it stored (the rollout's events and rows) or what the
//! simulated agents did.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test helpers fail loudly by design

use std::time::Duration;

use comfyfleet_e2e::rollouts::{
    PROFILES, activations_of, apply, events, max_switching, max_unavailable, spec, start, status,
    wait_for_state,
};
use comfyfleet_e2e::sim::{SimFleet, SimOptions};
use comfyfleet_e2e::{Controller, test_dir, wait_until};
use serde_json::Value;

fn options(count: usize) -> SimOptions {
    let mut options = SimOptions::new(count);
    options.profiles = PROFILES.iter().map(|name| (*name).to_owned()).collect();
    options.labels = vec!["pool=sim".to_owned()];
    options
}

fn machines_with(status: &Value, wanted: &str) -> Vec<Value> {
    status["machines"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|machine| machine["status"] == wanted)
        .cloned()
        .collect()
}

/// Every machine of the fleet as the controller has it, by id.
fn fleet_reports(controller: &Controller) -> std::collections::HashMap<String, Value> {
    controller
        .machines()
        .into_iter()
        .map(|machine| (machine["id"].as_str().unwrap().to_owned(), machine))
        .collect()
}

#[test]
fn two_hundred_machines_never_more_than_ten_percent_unavailable() {
    let dir = test_dir();
    let controller = Controller::start(&dir.path().join("controller"));
    let mut options = options(200);
    options.activate = Duration::from_millis(300);
    let sim = SimFleet::start(dir.path(), &controller, &options);
    // The policy comes from the spec.
    apply(
        &controller,
        dir.path(),
        &spec('1', "canary = 2\nmax_unavailable = \"10%\"\nmax_parallel_prepare = \"50%\""),
    );
    let id = start(&controller, &["render"]);

    let done = wait_for_state(&controller, id, "succeeded", Duration::from_secs(180));
    assert_eq!(done["counts"]["active"], 200, "{}", done["counts"]);
    assert_eq!(
        (done["limits"]["max_unavailable"].as_u64(), done["limits"]["max_parallel_prepare"].as_u64()),
        (Some(20), Some(100))
    );
    let stored = events(&controller, id);
    let most = max_unavailable(&stored);
    assert!(most <= 20, "at one point {most} machines were unavailable");
    assert!(most >= 10, "the window was used ({most} at most at once)");
    let sim_events = sim.events();
    let switching = max_switching(&sim_events);
    assert!(switching <= 20, "{switching} agents were switching at once");

    // Canaries first: no machine outside them switched before both were active.
    let canaries: Vec<&Value> =
        done["machines"].as_array().unwrap().iter().filter(|m| m["phase"] == 0).collect();
    assert_eq!(canaries.len(), 2);
    let canary_ids: Vec<&str> = canaries.iter().map(|m| m["machine"].as_str().unwrap()).collect();
    let kinds: std::collections::HashSet<String> =
        canary_ids.iter().map(|id| fleet_reports(&controller)[*id]["gpus"][0]["name"].to_string()).collect();
    assert_eq!(kinds.len(), 2, "the canaries are of different GPU kinds");
    let position = |wanted: &dyn Fn(&Value) -> bool| stored.iter().position(wanted).unwrap();
    let canaries_active = stored
        .iter()
        .enumerate()
        .filter(|(_, event)| {
            event["kind"] == "active" && canary_ids.contains(&event["machine"].as_str().unwrap_or(""))
        })
        .map(|(index, _)| index)
        .max()
        .unwrap();
    let first_other = position(&|event| {
        event["kind"] == "activating" && event["machine"].as_str().is_some_and(|m| !canary_ids.contains(&m))
    });
    assert!(canaries_active < first_other, "batch 1 started only after both canaries were active");

    // Every machine is on revision 1, having switched exactly once.
    let activations = activations_of(&sim_events, 1);
    assert_eq!(activations.len(), 200);
    assert!(activations.values().all(|count| *count == 1), "{activations:?}");
    let reports = fleet_reports(&controller);
    assert!(
        reports.values().all(
            |machine| machine["report"]["phase"] == "active" && machine["report"]["revision_number"] == 1
        )
    );
    let list = controller.cli(&["rollout", "list"]).success();
    assert!(list.contains("succeeded"), "{list}");
}

#[test]
fn a_failure_budget_pauses_failed_machines_roll_back_and_resume_goes_on() {
    let dir = test_dir();
    let controller = Controller::start(&dir.path().join("controller"));
    let mut options = options(100);
    options.fail_activate = 0.1;
    options.spare_first_revision = true;
    let mut sim = SimFleet::start(dir.path(), &controller, &options);
    apply(&controller, dir.path(), &spec('1', "canary = 0"));
    let first = start(&controller, &["render", "--max-unavailable", "20%"]);
    wait_for_state(&controller, first, "succeeded", Duration::from_secs(120));

    // Revision 2: one machine in ten fails its health check; the budget is 5%.
    apply(&controller, dir.path(), &spec('2', "canary = 0"));
    let id = start(&controller, &["render@2", "--failure-budget", "5%", "--max-unavailable", "10%"]);
    let paused = wait_for_state(&controller, id, "paused", Duration::from_secs(120));
    assert_eq!(paused["budget_exceeded"], true);
    let reason = paused["reason"].as_str().unwrap();
    assert!(reason.contains("machines failed, more than the failure budget of 5 (5%)"), "{reason}");
    // What was switching when it paused finishes; nothing new starts.
    let settled = wait_until(Duration::from_secs(30), "in-flight machines to settle", || {
        let now = status(&controller, id);
        let counts = &now["counts"];
        (counts["activating"] == 0 && counts["rolling_back"] == 0).then_some(now)
    });
    std::thread::sleep(Duration::from_secs(1));
    let still = status(&controller, id);
    assert_eq!(still["counts"]["active"], settled["counts"]["active"], "no activation starts while paused");
    let rolled_back = machines_with(&settled, "rolled_back");
    assert!(rolled_back.len() > 5 && rolled_back.len() <= 10, "{} rolled back", rolled_back.len());
    let reports = fleet_reports(&controller);
    for machine in &rolled_back {
        let detail = machine["detail"].as_str().unwrap();
        assert!(detail.contains("health check failed"), "{detail}");
        assert!(detail.ends_with("(back on render@1)"), "{detail}");
        let report = &reports[machine["machine"].as_str().unwrap()];
        assert_eq!(report["report"]["phase"], "active", "{report}");
        assert_eq!(report["report"]["revision_number"], 1, "back on its previous revision: {report}");
    }
    // A watch of a rollout the budget paused exits non-zero with the reason.
    let watched = controller.cli(&["rollout", "watch", &id.to_string(), "--timeout", "10s"]);
    assert_eq!(watched.status.code(), Some(1), "{}", watched.stdout);
    assert!(watched.stderr.contains("failure budget"), "{}", watched.stderr);

    // Fixed: resume retries the failed machines and the rollout goes on.
    sim.fix();
    let resumed = controller.cli(&["rollout", "resume", &id.to_string()]).success();
    assert!(resumed.contains("running"), "{resumed}");
    let done = wait_for_state(&controller, id, "succeeded", Duration::from_secs(120));
    assert_eq!(done["counts"]["active"], 100, "{}", done["counts"]);
    let reports = fleet_reports(&controller);
    assert!(reports.values().all(|machine| machine["report"]["revision_number"] == 2));
    let stored = events(&controller, id);
    assert!(max_unavailable(&stored) <= 10);
    assert!(stored.iter().any(|event| event["kind"] == "resumed"));
}

#[test]
fn a_controller_killed_three_times_mid_rollout_activates_every_machine_exactly_once() {
    let dir = test_dir();
    let data = dir.path().join("controller");
    let mut controller = Controller::start(&data);
    let port = controller.port;
    let mut options = options(200);
    options.prepare = Duration::from_millis(400);
    options.activate = Duration::from_millis(600);
    let sim = SimFleet::start(dir.path(), &controller, &options);
    apply(&controller, dir.path(), &spec('1', "canary = 2\nmax_unavailable = \"10%\""));
    let id = start(&controller, &["render"]);

    for kill in 1..=3 {
        std::thread::sleep(Duration::from_millis(1_500));
        let before = status(&controller, id);
        assert_eq!(before["state"], "running", "kill {kill} lands mid-rollout: {}", before["counts"]);
        controller.kill();
        std::thread::sleep(Duration::from_millis(300));
        controller = Controller::start_with(&data, port, &[]);
    }
    let done = wait_for_state(&controller, id, "succeeded", Duration::from_secs(240));
    assert_eq!(done["counts"]["active"], 200, "none forgotten: {}", done["counts"]);
    let activations = activations_of(&sim.events(), 1);
    assert_eq!(activations.len(), 200);
    let twice: Vec<_> = activations.iter().filter(|(_, count)| **count != 1).collect();
    assert!(twice.is_empty(), "activated more than once: {twice:?}");
    assert!(done["machines"].as_array().unwrap().iter().all(|machine| machine["activations"] == 1));
    assert!(max_unavailable(&events(&controller, id)) <= 20);
}

#[test]
fn an_offline_machine_catches_up_and_new_machines_join() {
    let dir = test_dir();
    let controller = Controller::start(&dir.path().join("controller"));
    let mut options = options(30);
    options.activate = Duration::from_millis(300);
    let mut sim = SimFleet::start(dir.path(), &controller, &options);
    apply(&controller, dir.path(), &spec('1', "canary = 1\nmax_unavailable = 3"));
    let id = start(&controller, &["render"]);

    // A machine of the last batch goes offline early on.
    let started = status(&controller, id);
    let last =
        started["machines"].as_array().unwrap().last().unwrap()["machine"].as_str().unwrap().to_owned();
    let ids = sim.ids();
    let index = ids.iter().position(|machine| *machine == last).unwrap();
    sim.offline(index);
    // A new machine joins mid-rollout.
    let joined = sim.spawn(1).remove(0);

    let waiting = wait_until(Duration::from_secs(120), "everything but the offline machine", || {
        let now = status(&controller, id);
        (now["counts"]["active"] == 30).then_some(now)
    });
    assert_eq!(waiting["state"], "running");
    assert_eq!(waiting["reason"], "waiting for 1 offline machine", "{waiting}");
    let row = waiting["machines"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["machine"] == joined.as_str())
        .unwrap()
        .clone();
    assert_eq!((row["joined"].as_bool(), row["status"].as_str()), (Some(true), Some("active")), "{row}");

    // Back online, it catches up and the rollout ends.
    sim.online(index);
    let done = wait_for_state(&controller, id, "succeeded", Duration::from_secs(60));
    assert_eq!(done["counts"]["machines"], 31);
    assert_eq!(done["counts"]["active"], 31);
    assert!(activations_of(&sim.events(), 1).contains_key(&last));

    // After the rollout, a machine that joins gets the environment's revision.
    let late = sim.spawn(1).remove(0);
    let machine = wait_until(Duration::from_secs(30), "the late machine to converge", || {
        let reports = fleet_reports(&controller);
        let machine = reports.get(&late)?.clone();
        (machine["report"]["phase"] == "active" && machine["report"]["revision_number"] == 1)
            .then_some(machine)
    });
    assert_eq!(machine["assignment"]["environment"], "render", "{machine}");
    let stored = events(&controller, id);
    assert!(stored.iter().any(|event| event["kind"] == "joined" && event["machine"] == late.as_str()));
}

#[test]
fn undo_returns_the_fleet_to_the_previous_revision_through_the_same_batching() {
    let dir = test_dir();
    let controller = Controller::start(&dir.path().join("controller"));
    let sim = SimFleet::start(dir.path(), &controller, &options(60));
    apply(&controller, dir.path(), &spec('1', "canary = 1\nmax_unavailable = 6"));
    let first = start(&controller, &["render"]);
    wait_for_state(&controller, first, "succeeded", Duration::from_secs(120));
    apply(&controller, dir.path(), &spec('2', "canary = 1\nmax_unavailable = 6"));
    let second = start(&controller, &["render"]);
    wait_for_state(&controller, second, "succeeded", Duration::from_secs(120));

    let undo = controller.cli(&["rollout", "undo", "render", "--wait", "--timeout", "2m"]).success();
    assert!(undo.contains("(undo of render@2)"), "{undo}");
    assert!(undo.contains("succeeded"), "{undo}");
    let latest: Value = serde_json::from_str(
        &controller.cli(&["rollout", "status", "render", "--machines", "-o", "json"]).success(),
    )
    .unwrap();
    assert_eq!((latest["kind"].as_str(), latest["revision"].as_u64()), (Some("undo"), Some(1)));
    assert_eq!(latest["undo_of_revision"], 2);
    assert_eq!(latest["counts"]["active"], 60);
    let stored = events(&controller, latest["id"].as_u64().unwrap());
    assert!(max_unavailable(&stored) <= 6, "the same window");
    let phases: Vec<&str> = stored
        .iter()
        .filter(|event| event["kind"] == "phase")
        .map(|event| event["detail"].as_str().unwrap())
        .collect();
    assert_eq!(phases.first(), Some(&"canary started"), "{phases:?}");
    assert!(phases.len() >= 10, "canary and ceil(59 / 6) batches: {phases:?}");
    let back = activations_of(&sim.events(), 1);
    assert!(back.values().all(|count| *count == 2), "each switched to 1 twice: first, then by the undo");
    assert!(fleet_reports(&controller).values().all(|machine| machine["report"]["revision_number"] == 1));

    // `--to-revision` names where to go: forward again to revision 2.
    let forward = controller
        .cli(&["rollout", "undo", "render", "--to-revision", "2", "--wait", "--timeout", "2m"])
        .success();
    assert!(forward.contains("succeeded"), "{forward}");
    assert!(fleet_reports(&controller).values().all(|machine| machine["report"]["revision_number"] == 2));
    let again = controller.cli(&["rollout", "undo", "render", "--to-revision", "2"]).failure();
    assert!(again.contains("is what rollout"), "undoing to what was just rolled out is refused: {again}");
}

#[test]
fn an_operator_pauses_resumes_and_aborts_a_rollout() {
    let dir = test_dir();
    let controller = Controller::start(&dir.path().join("controller"));
    let mut options = options(40);
    options.activate = Duration::from_millis(500);
    let sim = SimFleet::start(dir.path(), &controller, &options);
    apply(&controller, dir.path(), &spec('1', "canary = 0\nmax_unavailable = 2"));
    let id = start(&controller, &["render"]);
    let rollout = id.to_string();
    let started_switching =
        |sim: &SimFleet| sim.events().iter().filter(|e| e["event"] == "activation_started").count();

    wait_until(Duration::from_secs(60), "a few machines to switch", || {
        (status(&controller, id)["counts"]["active"].as_u64()? >= 4).then_some(())
    });
    let paused = controller.cli(&["rollout", "pause", &rollout, "--reason", "maintenance window"]).success();
    assert!(paused.contains("paused"), "{paused}");
    let settled = wait_until(Duration::from_secs(30), "in-flight switches to finish", || {
        let now = status(&controller, id);
        (now["counts"]["activating"] == 0).then_some(now)
    });
    assert_eq!(settled["state"], "paused");
    assert_eq!(settled["budget_exceeded"], false);
    assert!(settled["reason"].as_str().unwrap().ends_with(": maintenance window"), "{}", settled["reason"]);
    let switched = started_switching(&sim);
    std::thread::sleep(Duration::from_millis(1_500));
    assert_eq!(started_switching(&sim), switched, "nothing switches while paused");
    // An operator's pause keeps a watch waiting (here until its timeout).
    let watched = controller.cli(&["rollout", "watch", &rollout, "--timeout", "2s"]);
    assert_eq!(watched.status.code(), Some(1));
    assert!(
        watched.stderr.contains("still paused") && watched.stderr.contains("after 2s"),
        "{}",
        watched.stderr
    );

    controller.cli(&["rollout", "resume", &rollout]).success();
    let before = settled["counts"]["active"].as_u64().unwrap();
    wait_until(Duration::from_secs(60), "the rollout to go on", || {
        (status(&controller, id)["counts"]["active"].as_u64()? >= before + 4).then_some(())
    });
    let aborted = controller.cli(&["rollout", "abort", &rollout, "--reason", "enough"]).success();
    assert!(aborted.contains("aborted"), "{aborted}");
    std::thread::sleep(Duration::from_millis(1_500));
    let switched = started_switching(&sim);
    std::thread::sleep(Duration::from_millis(1_500));
    assert_eq!(started_switching(&sim), switched, "nothing switches after the abort");
    let done = status(&controller, id);
    assert_eq!(done["state"], "aborted");
    let skipped = machines_with(&done, "skipped");
    assert!(!skipped.is_empty() && skipped.len() < 40, "{}", done["counts"]);
    assert!(skipped.iter().all(|m| m["detail"].as_str().unwrap().contains("abort")), "{skipped:?}");
    let watched = controller.cli(&["rollout", "watch", &rollout]);
    assert_eq!(watched.status.code(), Some(1), "an aborted rollout is a failed watch");
    assert!(controller.cli(&["rollout", "resume", &rollout]).failure().contains("has aborted"));
    let events = events(&controller, id);
    for kind in ["paused", "resumed", "aborted"] {
        assert!(events.iter().any(|event| event["kind"] == kind), "no {kind} event");
    }
}

#[test]
fn a_machine_that_makes_no_progress_is_stalled_and_counts_as_failed() {
    let dir = test_dir();
    let controller = Controller::start(&dir.path().join("controller"));
    let mut options = options(3);
    options.prepare = Duration::from_secs(60);
    let _sim = SimFleet::start(dir.path(), &controller, &options);
    apply(&controller, dir.path(), &spec('1', "canary = 0"));
    let id = start(&controller, &["render", "--progress-deadline", "1s", "--max-parallel-prepare", "100%"]);
    let paused = wait_for_state(&controller, id, "paused", Duration::from_secs(30));
    assert_eq!(paused["budget_exceeded"], true);
    let failed = machines_with(&paused, "failed");
    assert!(!failed.is_empty(), "{}", paused["counts"]);
    for machine in &failed {
        assert_eq!(machine["stalled"], true, "{machine}");
        let detail = machine["detail"].as_str().unwrap();
        assert!(detail.starts_with("stalled: no progress for 1s while preparing"), "{detail}");
    }
    assert!(paused["counts"]["stalled"].as_u64().unwrap() >= 1);
}
