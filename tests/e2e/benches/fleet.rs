//! One controller and a simulated fleet on this machine: how long the agents take
//! to enroll and connect (and to reconnect), the controller's memory with all of
//! them connected, how fast a new revision reaches every agent (p50/p99), and a
//! rollout's wall time against the ideal `prepare + ceil(N / batch) × activation`.
//! The real controller and CLI; the agents are `comfyfleet-fleetsim`'s, each a real
//! mTLS session with its own identity. A benchmark, not a test: it prints figures
//! for the README.
//!
//! ```text
//! cargo build --release --workspace
//! cargo bench -p comfyfleet-e2e --bench fleet                      # 10,000 machines
//! cargo bench -p comfyfleet-e2e --bench fleet -- --machines 2000 --prepare 2s --activate 1s
//! ```
//!
//! On a machine with two cores or more the controller runs on CPU 0 and the
//! simulator on CPU 1 (`taskset`), so the push's figures do not depend on how the two
//! share the cores; `--no-pin` leaves them to the scheduler.
//!
//! The data dirs go to /dev/shm when it exists: 10,000 agents fsync their journals
//! on every assignment, which a laptop disk would turn into the measurement.

// A benchmark's main: it fails loudly and prints its figures.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::print_stdout, clippy::print_stderr)]

use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use comfyfleet_e2e::rollouts::{PROFILES, apply, spec};
use comfyfleet_e2e::sim::{SimFleet, SimOptions};
use comfyfleet_e2e::{Controller, wait_until};
use serde_json::Value;

struct Settings {
    /// `--postgres`: the controller keeps the fleet in a PostgreSQL the bench starts.
    postgres: bool,
    /// `--controllers N` (with `--postgres`): N controllers serve the fleet, every
    /// agent given all their URLs.
    controllers: usize,
    machines: usize,
    prepare: Duration,
    activate: Duration,
    max_unavailable: String,
    /// Whether the controller(s) run on CPU 0 and the simulator on CPU 1.
    pin: bool,
}

impl Settings {
    fn parse() -> Settings {
        let mut settings = Settings {
            postgres: false,
            controllers: 1,
            machines: 10_000,
            prepare: Duration::from_secs(2),
            activate: Duration::from_secs(1),
            max_unavailable: "10%".to_owned(),
            pin: std::thread::available_parallelism().is_ok_and(|cores| cores.get() >= 2),
        };
        let mut args = std::env::args().skip(1).filter(|arg| arg != "--bench");
        while let Some(flag) = args.next() {
            if flag == "--postgres" {
                settings.postgres = true;
                continue;
            }
            if flag == "--pin" || flag == "--no-pin" {
                settings.pin = flag == "--pin";
                continue;
            }
            let mut value = || args.next().unwrap_or_else(|| panic!("{flag} needs a value"));
            match flag.as_str() {
                "--machines" => settings.machines = value().parse().expect("--machines N"),
                "--prepare" => settings.prepare = humantime::parse_duration(&value()).expect("--prepare 2s"),
                "--activate" => {
                    settings.activate = humantime::parse_duration(&value()).expect("--activate 1s")
                }
                "--max-unavailable" => settings.max_unavailable = value(),
                "--controllers" => settings.controllers = value().parse().expect("--controllers N"),
                other => panic!(
                    "unknown flag {other}: --machines N, --prepare D, --activate D, --max-unavailable A, --postgres, \
                     --controllers N, --pin, --no-pin"
                ),
            }
        }
        assert!(
            settings.controllers >= 1 && (settings.controllers == 1 || settings.postgres),
            "several controllers serve one fleet from PostgreSQL: add --postgres"
        );
        settings
    }
}

fn now_ms() -> i64 {
    i64::try_from(SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis()).unwrap()
}

/// `VmRSS` and `VmHWM` (peak) of a process, in MiB.
fn memory(pid: u32) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|line| line.starts_with(name))
            .and_then(|line| line.split_whitespace().nth(1))
            .and_then(|kib| kib.parse::<f64>().ok())
            .map_or(0.0, |kib| kib / 1024.0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Puts every thread of process `pid` on CPU `cpu` (threads it starts later inherit it).
fn pin(pid: u32, cpu: usize) {
    let status = std::process::Command::new("taskset")
        .args(["--all-tasks", "--cpu-list", "--pid", &cpu.to_string(), &pid.to_string()])
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap_or_else(|error| {
            panic!("cannot run taskset (util-linux) to pin the processes: {error}; or pass --no-pin")
        });
    assert!(status.success(), "taskset could not pin process {pid} to CPU {cpu}; pass --no-pin");
}

fn percentile(sorted: &[i64], p: f64) -> i64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * (sorted.len() as f64 - 1.0)).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

fn sim_options(settings: &Settings) -> SimOptions {
    let mut options = SimOptions::new(settings.machines);
    options.prepare = settings.prepare;
    options.activate = settings.activate;
    options.jitter = 0.1;
    options.profiles = PROFILES.iter().map(|name| (*name).to_owned()).collect();
    options.labels = vec!["pool=sim".to_owned()];
    options.extra = vec!["--enroll-parallel".to_owned(), "128".to_owned()];
    options
}

fn main() {
    let settings = Settings::parse();
    let n = settings.machines;
    let base = if Path::new("/dev/shm").is_dir() { Path::new("/dev/shm") } else { Path::new("/tmp") };
    let dir = tempfile::Builder::new().prefix("comfyfleet-fleet-bench").tempdir_in(base).unwrap();
    let postgres = settings.postgres.then(comfyfleet_testsupport::postgres::Server::start);
    let database_url = postgres.as_ref().map(|server| server.create_database("fleet"));
    let key = dir.path().join("secrets.key");
    std::fs::write(&key, format!("{}\n", "5a".repeat(32))).unwrap();
    // Every simulated agent comes from 127.0.0.1: no cap per address.
    let mut controller_args = vec!["--heartbeat-interval", "5s", "--max-connections-per-address", "0"];
    if let Some(url) = &database_url {
        controller_args.extend(["--database-url", url.as_str(), "--secrets-key-file", key.to_str().unwrap()]);
    }
    let controllers: Vec<Controller> = (0..settings.controllers)
        .map(|index| {
            Controller::start_with(&dir.path().join(format!("controller-{index}")), 0, &controller_args)
        })
        .collect();
    let controller = &controllers[0];
    let pids: Vec<u32> = controllers.iter().map(|controller| controller.process.pid()).collect();
    const CONTROLLER_CPU: usize = 0;
    const SIMULATOR_CPU: usize = 1;
    if settings.pin {
        for pid in &pids {
            pin(*pid, CONTROLLER_CPU);
        }
    }
    let rss = || pids.iter().map(|pid| memory(*pid).0).collect::<Vec<f64>>();
    let idle_rss = rss();
    let urls = controllers.iter().map(|controller| controller.url.as_str()).collect::<Vec<_>>().join(",");

    // Enroll and connect every agent.
    let mut options = sim_options(&settings);
    options.cpu = settings.pin.then_some(SIMULATOR_CPU);
    let started = Instant::now();
    let token = controller.create_token(&["--ttl", "1h"]);
    let mut sim = SimFleet::start_with(dir.path(), &urls, Some(&token), &options);
    let enrolled = started.elapsed();
    std::thread::sleep(Duration::from_secs(3));
    let connected_rss = rss();
    let listed = controller.machines().iter().filter(|machine| machine["online"] == true).count();
    assert_eq!(listed, n, "every machine online");

    // Reconnect: the same identities, no enrollment.
    assert!(sim.stop(Duration::from_secs(60)).success());
    wait_until(Duration::from_secs(60), "every machine offline", || {
        controller.machines().iter().all(|machine| machine["online"] == false).then_some(())
    });
    let started = Instant::now();
    let sim = SimFleet::start_with(dir.path(), &urls, None, &options);
    let reconnected = started.elapsed();
    std::thread::sleep(Duration::from_secs(3));
    let reconnected_rss = rss();

    // A rollout: every machine prepares at once, activates max_unavailable at a time.
    apply(controller, dir.path(), &spec('1', "canary = 0"));
    let before = sim.events().len();
    let t0 = now_ms();
    let clock = Instant::now();
    let out = controller
        .cli(&[
            "rollout",
            "start",
            "render",
            "--max-parallel-prepare",
            "100%",
            "--max-unavailable",
            &settings.max_unavailable,
            "-o",
            "json",
        ])
        .success();
    let start_call = clock.elapsed();
    let started: Value = serde_json::from_str(&out).unwrap();
    let id = started["rollout"]["id"].as_u64().unwrap();
    let batch = started["rollout"]["limits"]["max_unavailable"].as_u64().unwrap();
    let mut peak_during = vec![0.0f64; pids.len()];
    let done = wait_until(Duration::from_secs(3600), "the rollout to succeed", || {
        for (peak, now) in peak_during.iter_mut().zip(rss()) {
            *peak = peak.max(now);
        }
        std::thread::sleep(Duration::from_millis(200));
        let out = controller.cli(&["rollout", "status", &id.to_string(), "-o", "json"]);
        let status: Value = serde_json::from_str(&out.stdout).ok()?;
        (status["state"] == "succeeded").then_some(status)
    });
    let wall = clock.elapsed();
    assert_eq!(done["counts"]["active"].as_u64(), Some(n as u64), "{}", done["counts"]);
    let peak: Vec<f64> =
        pids.iter().zip(&peak_during).map(|(pid, during)| memory(*pid).1.max(*during)).collect();
    let mib =
        |values: &[f64]| values.iter().map(|value| format!("{value:.0}")).collect::<Vec<_>>().join(" + ");

    // When each agent received the new revision (its first assignment).
    let events = sim.events();
    let mut reach: Vec<i64> = events[before..]
        .iter()
        .filter(|event| event["event"] == "assigned" && event["generation"] == 1)
        .map(|event| event["at_ms"].as_i64().unwrap() - t0)
        .collect();
    reach.sort_unstable();
    assert_eq!(reach.len(), n, "every agent got the revision once");
    let first = reach[0];
    let spread: Vec<i64> = reach.iter().map(|at| at - first).collect();

    let batches = (n as u64).div_ceil(batch);
    let ideal = settings.prepare + settings.activate * u32::try_from(batches).unwrap();
    let secs = |d: Duration| format!("{:.1} s", d.as_secs_f64());
    println!(
        "fleet bench: {n} simulated machines, prepare {:?}, activate {:?}, max_unavailable {} ({batch}), store {}, {} controller{}, {}",
        settings.prepare,
        settings.activate,
        settings.max_unavailable,
        if settings.postgres { "PostgreSQL" } else { "SQLite" },
        settings.controllers,
        if settings.controllers == 1 { "" } else { "s" },
        if settings.pin { "controller on CPU 0, simulator on CPU 1" } else { "not pinned" }
    );
    println!("| figure | value |");
    println!("|---|---|");
    println!("| enroll + connect all {n} agents | {} |", secs(enrolled));
    println!("| reconnect all {n} (identities kept) | {} |", secs(reconnected));
    println!(
        "| controller RSS (each) idle / {n} enrolled and connected / reconnected / peak in rollout | {} / {} / {} / {} MiB |",
        mib(&idle_rss),
        mib(&connected_rss),
        mib(&reconnected_rss),
        mib(&peak)
    );
    println!("| `rollout start` call (plans {n} machines) | {} |", secs(start_call));
    println!(
        "| new revision reaches agents, from the command: p50 / p99 / max | {} / {} / {} ms |",
        percentile(&reach, 50.0),
        percentile(&reach, 99.0),
        reach[n - 1]
    );
    println!(
        "| … from the first agent reached: p50 / p99 | {} / {} ms |",
        percentile(&spread, 50.0),
        percentile(&spread, 99.0)
    );
    println!(
        "| rollout wall time / ideal prepare + {batches} × activation | {} / {} |",
        secs(wall),
        secs(ideal)
    );
    drop(sim);
    // sqlx's warning when a caller waited past its threshold for a pooled connection:
    // counted, not printed (thousands when the store is on the push path).
    let mut slow_acquires = 0;
    for line in controllers
        .iter()
        .flat_map(|controller| controller.process.log().lines().map(str::to_owned).collect::<Vec<_>>())
    {
        if line.contains("time to acquire exceeded slow threshold") {
            slow_acquires += 1;
        } else if line.contains("rollout planned") || line.contains("slow") {
            eprintln!("controller: {line}");
        }
    }
    println!("| controller log: slow connection acquires (sqlx) | {slow_acquires} |");
}
