//! Helpers for rollout tests over a simulated fleet: a spec every simulated
//! profile can run, the CLI's rollout views parsed, and the stored events replayed.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use crate::{Controller, wait_until};

/// Profiles of gpu-profiles.json that torch 2.8 cu128/cu126 covers.
pub const PROFILES: [&str; 5] =
    ["h100-x8-580", "rtx4090-x1-570", "mixed-4090-a6000-570", "rtx5090-x1-575", "a100-x4-570"];

/// What apply reads when it locks the simulated fleet's specs: a ComfyUI repository
/// with one commit per revision a test makes, and a stand-in package index. Made
/// once per test process and kept until it exits.
struct SimUpstream {
    /// Commit per `commit_digit`, `'1'` to `'9'`.
    commits: Vec<String>,
    url: String,
    index: crate::standin::server::IndexServer,
}

fn sim_upstream() -> &'static SimUpstream {
    static UPSTREAM: std::sync::OnceLock<SimUpstream> = std::sync::OnceLock::new();
    UPSTREAM.get_or_init(|| {
        // Kept until the process exits (a static is never dropped): earlier runs'
        // copies older than a day are removed here instead.
        let root = std::env::temp_dir();
        if let Ok(entries) = std::fs::read_dir(&root) {
            for entry in entries.flatten() {
                let old = entry.metadata().and_then(|meta| meta.modified()).is_ok_and(|modified| {
                    modified.elapsed().is_ok_and(|age| age > Duration::from_secs(24 * 3600))
                });
                if old && entry.file_name().to_string_lossy().starts_with("comfyfleet-sim-upstream-") {
                    let _ = std::fs::remove_dir_all(entry.path());
                }
            }
        }
        let dir = tempfile::Builder::new().prefix("comfyfleet-sim-upstream-").tempdir().unwrap().keep();
        crate::standin::catalog::Catalog::build(
            &dir.join("index"),
            &crate::standin::catalog::CatalogOptions::new("cp312"),
        );
        let index = crate::standin::server::IndexServer::start(&dir.join("index"));
        let repo = crate::git::GitRepo::create(&dir.join("ComfyUI"), &[("main.py", "# revision 1\n")]);
        let mut commits = vec![repo.head()];
        for n in 2..=9 {
            commits.push(repo.commit(&[("main.py", &format!("# revision {n}\n"))], &format!("revision {n}")));
        }
        SimUpstream { commits, url: repo.url(), index }
    })
}

/// A spec for environment `render`: ComfyUI at the commit `commit_digit` names
/// (never fetched by the simulator; read by apply, which locks), torch 2.8, every
/// machine labelled pool=sim, with `rollout` as its `[rollout]` table body.
pub fn spec(commit_digit: char, rollout: &str) -> String {
    let upstream = sim_upstream();
    let number = commit_digit.to_digit(10).filter(|n| (1..=9).contains(n)).expect("commit digits are 1 to 9");
    let commit = &upstream.commits[number as usize - 1];
    let base = upstream.index.base_url();
    format!(
        "name = \"render\"\npython = \"3.12\"\n\n[comfyui]\ngit = \"{url}\"\n\
         ref = \"{commit}\"\n\n[torch]\nversion = \"2.8.0\"\ncuda = [\"cu128\", \"cu126\"]\n\
         index = \"{base}/whl/{{cuda}}\"\n\n[index]\nurl = \"{base}/simple\"\ntrusted_hosts = [\"127.0.0.1\"]\n\n\
         [target]\nselector = 'labels.pool == \"sim\"'\n\n[rollout]\n{rollout}\n",
        url = upstream.url,
    )
}

/// Applies `spec` (written under `dir`) and returns the revision's number.
pub fn apply(controller: &Controller, dir: &Path, spec: &str) -> u64 {
    let path = dir.join("render.toml");
    std::fs::write(&path, spec).unwrap();
    let out = controller.cli(&["apply", "-f", path.to_str().unwrap()]).success();
    // `render revision 2 created, id …` or `render unchanged: revision 2 (id …)`.
    let after = out.split("revision ").nth(1).unwrap_or_else(|| panic!("no revision in {out}"));
    after.split(|c: char| !c.is_ascii_digit()).next().unwrap().parse().unwrap()
}

/// `rollout start`'s JSON; returns the rollout id.
pub fn start(controller: &Controller, args: &[&str]) -> u64 {
    let mut all = vec!["rollout", "start"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["-o", "json"]);
    let started: Value = serde_json::from_str(&controller.cli(&all).success()).unwrap();
    started["rollout"]["id"].as_u64().unwrap_or_else(|| panic!("no rollout in {started}"))
}

/// `rollout status ID --machines -o json`.
pub fn status(controller: &Controller, id: u64) -> Value {
    let id = id.to_string();
    let out = controller.cli(&["rollout", "status", &id, "--machines", "-o", "json"]).success();
    serde_json::from_str(&out).unwrap()
}

/// Waits until the rollout's state is `state`; returns its status.
pub fn wait_for_state(controller: &Controller, id: u64, state: &str, timeout: Duration) -> Value {
    let mut last = Value::Null;
    wait_until(timeout, &format!("rollout {id} to be {state}"), || {
        // The controller may be restarting: a refused call is a retry.
        let out = controller.cli(&["rollout", "status", &id.to_string(), "--machines", "-o", "json"]);
        if !out.status.success() {
            return None;
        }
        last = serde_json::from_str(&out.stdout).unwrap();
        (last["state"] == state).then(|| last.clone())
    })
}

/// Every stored event of the rollout, oldest first.
pub fn events(controller: &Controller, id: u64) -> Vec<Value> {
    let mut all: Vec<Value> = Vec::new();
    loop {
        let after = all.last().map_or(0, |event| event["id"].as_u64().unwrap()).to_string();
        let out = controller
            .cli(&["rollout", "events", &id.to_string(), "--after", &after, "-o", "json"])
            .success();
        let page: Value = serde_json::from_str(&out).unwrap();
        let events = page["events"].as_array().unwrap().clone();
        if events.is_empty() {
            return all;
        }
        all.extend(events);
    }
}

fn unavailable(status: &str) -> bool {
    matches!(status, "activating" | "rolling_back")
}

/// The most machines unavailable at once, replaying the stored machine events.
pub fn max_unavailable(events: &[Value]) -> usize {
    let mut now: HashMap<String, bool> = HashMap::new();
    let mut most = 0;
    for event in events {
        let Some(machine) = event["machine"].as_str() else { continue };
        let kind = event["kind"].as_str().unwrap_or_default();
        if kind == "joined" {
            continue;
        }
        now.insert(machine.to_owned(), unavailable(kind));
        most = most.max(now.values().filter(|down| **down).count());
    }
    most
}

/// The most simulated agents between `activation_started` and its end at once.
pub fn max_switching(sim_events: &[Value]) -> usize {
    let mut switching: HashMap<String, bool> = HashMap::new();
    let mut most = 0;
    for event in sim_events {
        let machine = event["machine_id"].as_str().unwrap_or_default().to_owned();
        match event["event"].as_str().unwrap_or_default() {
            "activation_started" => {
                switching.insert(machine, true);
            }
            "activated" | "activation_failed" => {
                switching.insert(machine, false);
            }
            _ => continue,
        }
        most = most.max(switching.values().filter(|on| **on).count());
    }
    most
}

/// How many times each machine started switching to `revision`, from the
/// simulator's events.
pub fn activations_of(sim_events: &[Value], revision: u64) -> HashMap<String, usize> {
    let mut counts: HashMap<String, usize> = HashMap::new();
    for event in sim_events {
        if event["event"] == "activation_started" && event["revision_number"].as_u64() == Some(revision) {
            *counts.entry(event["machine_id"].as_str().unwrap().to_owned()).or_default() += 1;
        }
    }
    counts
}
