//! What the controller's package cache saves a fleet rollout: upstream bytes and
//! wall time of a fresh rollout to N real agents without the cache (each agent
//! fetches its class's locked files itself) and with it, then of a second revision
//! that changes only a custom node; and how long `apply` takes to lock three build
//! classes over ComfyUI's real requirements file (served by the stand-in index).
//! Real controller, agents, CLI, uv and python3 on loopback; torch padded to a
//! realistic weight. A benchmark, not a test: it prints figures for the README.
//!
//! ```text
//! export PATH=$PWD/target/test-tools/uv/bin:$PATH
//! cargo build --release --workspace && cargo bench -p comfyfleet-e2e --bench cache
//! cargo bench -p comfyfleet-e2e --bench cache -- --agents 8 --torch-mib 900
//! ```

// A benchmark's main: it fails loudly and prints its figures.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::print_stdout, clippy::print_stderr)]

use std::time::{Duration, Instant};

use comfyfleet_e2e::provision::Fleet;
use comfyfleet_e2e::standin::{CatalogOptions, system_python};
use serde_json::Value;

const PROFILE: &str = "rtx4090-x1-570";
const MIB: f64 = 1024.0 * 1024.0;

struct Settings {
    agents: usize,
    torch_mib: u64,
}

fn settings() -> Settings {
    let mut settings = Settings { agents: 8, torch_mib: 900 };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |flag: &str| -> u64 {
            let text = args.next().unwrap_or_else(|| panic!("{flag} needs a number"));
            text.parse().unwrap_or_else(|_| panic!("{flag} {text}: not a number"))
        };
        match arg.as_str() {
            "--agents" => settings.agents = usize::try_from(value("--agents")).unwrap().max(1),
            "--torch-mib" => settings.torch_mib = value("--torch-mib"),
            "--bench" => {}
            other => panic!("unknown argument {other}: use --agents N and --torch-mib N"),
        }
    }
    settings
}

/// A rollout's figures.
struct Row {
    scenario: String,
    wall: Duration,
    upstream: u64,
    torch: u64,
}

/// Starts a rollout of the environment's latest revision and waits for it.
fn roll_out(fleet: &Fleet, scenario: &str) -> Row {
    fleet.world.server.reset_counts();
    let started = Instant::now();
    let out = fleet
        .cli(&[
            "rollout",
            "start",
            "render-prod",
            "--max-parallel-prepare",
            "100%",
            "--max-unavailable",
            "100%",
            "--canary",
            "0",
            "--wait",
            "--timeout",
            "30m",
        ])
        .success();
    let wall = started.elapsed();
    assert!(out.contains("succeeded"), "{out}");
    Row {
        scenario: scenario.to_owned(),
        wall,
        upstream: fleet.world.server.bytes_served(),
        torch: fleet.world.server.bytes_matching("/files/torch-"),
    }
}

fn timed_apply(fleet: &Fleet, spec: &str) -> (Duration, String) {
    let started = Instant::now();
    let out = fleet.apply(spec);
    (started.elapsed(), out)
}

fn main() {
    let settings = settings();
    let mut options = CatalogOptions::new(&system_python().tag);
    options.torch_padding_bytes = settings.torch_mib << 20;
    eprintln!("building the stand-in index with torch padded to {} MiB …", settings.torch_mib);
    let fleet = Fleet::start_with(&options);
    let spec = fleet.spec(|_| {});

    // Apply before any machine: three classes (cu128, cu126, cu130), cold uv cache.
    let (cold_apply, out) = timed_apply(&fleet, &spec);
    assert_eq!(out.matches("locked ").count(), 3, "{out}");

    let direct: Vec<_> = (0..settings.agents)
        .map(|i| fleet.agent_with(&format!("direct-{i}"), PROFILE, &["--no-package-cache"], None))
        .collect();
    let without = roll_out(&fleet, &format!("{} agents, without the cache", settings.agents));
    let cached: Vec<_> = (0..settings.agents).map(|i| fleet.agent(&format!("cached-{i}"), PROFILE)).collect();
    let with = roll_out(&fleet, &format!("{} agents, with the cache", settings.agents));

    // A second revision that changes only a custom node.
    fleet.world.repos.kjnodes.commit(&[("nodes.py", "# a newer node\n")], "a change to one custom node");
    let (warm_apply, out) = timed_apply(&fleet, &spec);
    assert!(out.contains("revision 2 created"), "{out}");
    let second = roll_out(
        &fleet,
        &format!("second revision (one custom node changed), all {} agents", 2 * settings.agents),
    );
    let cache: Value =
        serde_json::from_str(&fleet.cli(&["cache", "status", "-o", "json"]).success()).unwrap();

    println!("\n| scenario | wall time | from upstream | of which torch |\n|---|---:|---:|---:|");
    for row in [&without, &with, &second] {
        println!(
            "| {} | {:.2} s | {:.1} MiB | {:.1} MiB |",
            row.scenario,
            row.wall.as_secs_f64(),
            row.upstream as f64 / MIB,
            row.torch as f64 / MIB
        );
    }
    println!(
        "\napply, locking 3 classes over ComfyUI's requirements: {:.2} s cold, {:.2} s for the second revision",
        cold_apply.as_secs_f64(),
        warm_apply.as_secs_f64()
    );
    println!(
        "cache: {:.1} MiB from upstream, {:.1} MiB served to agents, {} hits, {} misses",
        cache["bytes_from_upstream"].as_u64().unwrap_or(0) as f64 / MIB,
        cache["bytes_served"].as_u64().unwrap_or(0) as f64 / MIB,
        cache["hits"],
        cache["misses"]
    );
    drop(cached);
    drop(direct);
}
