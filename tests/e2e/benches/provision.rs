//! What provisioning costs on one machine: a cold build, a torch build change whose
//! wheels uv has not cached yet, the same change on a warm cache (uv hardlinks
//! instead of downloading), re-sending the running revision (the no-op), and a
//! rollback. Wall time, the agent's own step durations, bytes the stand-in index
//! served, and how many uv and Python processes each started. The real controller,
//! agent, CLI, uv and python3 on loopback; the torch wheels are padded to a
//! realistic weight. A benchmark, not a test: it prints figures for the README.
//!
//! `cargo bench` builds with the release profile, and the bench starts the
//! binaries beside it in target/release, so build those first (uv on PATH, as
//! scripts/test installs it):
//!
//! ```text
//! export PATH=$PWD/target/test-tools/uv/bin:$PATH
//! cargo build --release --workspace && cargo bench -p comfyfleet-e2e --bench provision
//! cargo bench -p comfyfleet-e2e --bench provision -- --runs 3 --torch-mib 512
//! ```
//!
//! `--torch-mib` (or `COMFYFLEET_BENCH_TORCH_MIB`, default 256) is the padding added
//! to each torch wheel; `--runs` (or `COMFYFLEET_BENCH_RUNS`, default 1) repeats the
//! whole sequence with a fresh agent, and the table shows the median. Wall times are
//! from the CLI command to the first `machines show` (polled every 50 ms) that
//! reports the new generation active: `--wait` polls every 500 ms, which would
//! swamp the sub-second figures.

// A benchmark's main: it fails loudly and prints its figures.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::print_stdout, clippy::print_stderr)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use comfyfleet_e2e::provision::{Fleet, current_environment};
use comfyfleet_e2e::standin::{CatalogOptions, PathCount, find_uv, system_python};
use serde_json::Value;

const PROFILE: &str = "rtx4090-x1-570";
/// No-ops and rollbacks are cheap: each is measured this many times per run.
const REPEATS: usize = 3;
const SETTLE_TIMEOUT: Duration = Duration::from_secs(300);
const POLL: Duration = Duration::from_millis(50);
/// The agent's own list, so the benchmark follows its steps.
const BUILD_STEPS: [&str; 11] = comfyfleet_agent::executor::STEPS;
const ACTIVATION_STEPS: [&str; 4] = ["drain", "switch", "start", "health"];
/// Where the torch build's wheels are served (torchsde, also on the index, is not one).
const TORCH_WHEELS: [&str; 3] = ["/files/torch-", "/files/torchvision-", "/files/torchaudio-"];
const MIB: f64 = 1024.0 * 1024.0;

struct Settings {
    torch_mib: u64,
    runs: usize,
}

impl Settings {
    /// `--runs N`, `--torch-mib N`, else the environment, else the defaults;
    /// `--bench` (which `cargo bench` passes) is ignored.
    fn parse() -> Settings {
        let from_env = |name: &str, default: u64| {
            std::env::var(name).ok().map_or(default, |value| {
                value.parse().unwrap_or_else(|_| panic!("{name}={value} is not a number"))
            })
        };
        let mut settings = Settings {
            torch_mib: from_env("COMFYFLEET_BENCH_TORCH_MIB", 256),
            runs: usize::try_from(from_env("COMFYFLEET_BENCH_RUNS", 1)).unwrap(),
        };
        let mut args = std::env::args().skip(1);
        while let Some(arg) = args.next() {
            let mut value = |flag: &str| -> u64 {
                let text = args.next().unwrap_or_else(|| panic!("{flag} needs a number"));
                text.parse().unwrap_or_else(|_| panic!("{flag} {text}: not a number"))
            };
            match arg.as_str() {
                "--runs" => settings.runs = usize::try_from(value("--runs")).unwrap().max(1),
                "--torch-mib" => settings.torch_mib = value("--torch-mib"),
                "--bench" => {}
                other => panic!("unknown argument {other}: use --runs N and --torch-mib N"),
            }
        }
        settings
    }
}

/// What the index served during one measurement, by kind of path.
#[derive(Debug, Clone, Copy, Default)]
struct Traffic {
    requests: u64,
    /// torch, torchvision and torchaudio.
    torch_wheels: u64,
    other_wheels: u64,
    /// PEP 658 `.metadata` files beside the wheels.
    metadata: u64,
    /// `/simple/…` and `/whl/<cuda>/…` pages.
    pages: u64,
}

impl Traffic {
    fn from_counts(counts: &BTreeMap<String, PathCount>) -> Traffic {
        let mut traffic = Traffic::default();
        for (path, count) in counts {
            traffic.requests += count.requests;
            let kind = if path.ends_with(".metadata") {
                &mut traffic.metadata
            } else if TORCH_WHEELS.iter().any(|prefix| path.starts_with(prefix)) {
                &mut traffic.torch_wheels
            } else if path.starts_with("/files/") || path.starts_with("/wheels/") {
                &mut traffic.other_wheels
            } else {
                &mut traffic.pages
            };
            *kind += count.bytes;
        }
        traffic
    }

    fn total(&self) -> u64 {
        self.torch_wheels + self.other_wheels + self.metadata + self.pages
    }
}

/// Which of the report's steps the agent ran for this measurement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ran {
    /// A build and its activation: every step.
    Everything,
    /// A switch to an environment on disk.
    Activation,
    /// Nothing: the report carries the build's steps as they were.
    Nothing,
}

struct Sample {
    wall: Duration,
    /// The sum of the durations of the steps that ran.
    agent: Option<Duration>,
    traffic: Traffic,
    uv_processes: usize,
    python_processes: usize,
    /// `(step, milliseconds)` of the steps that ran.
    steps: Vec<(String, u64)>,
}

/// The machine's assignment generation now.
fn assigned_generation(fleet: &Fleet, id: &str) -> u64 {
    fleet.show(id)["assignment"]["generation"].as_u64().unwrap_or(0)
}

/// Polls until the machine reports a generation newer than `after` active.
fn wait_active(fleet: &Fleet, id: &str, after: u64) -> Value {
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    loop {
        let machine = fleet.show(id);
        let assigned = machine["assignment"]["generation"].as_u64().unwrap_or(0);
        let report = &machine["report"];
        if assigned > after && report["generation"].as_u64() == Some(assigned) {
            match report["phase"].as_str() {
                Some("active") => return machine,
                Some("failed") => panic!("machine {id} failed: {}", report["error"]),
                _ => {}
            }
        }
        assert!(
            Instant::now() < deadline,
            "machine {id} did not converge within {SETTLE_TIMEOUT:?}: {report}"
        );
        std::thread::sleep(POLL);
    }
}

/// Runs `command` (a CLI call that assigns the machine something) and measures
/// until the machine is active on it.
fn measure(fleet: &Fleet, id: &str, ran: Ran, command: impl FnOnce()) -> (Sample, Value) {
    let before = assigned_generation(fleet, id);
    let uv_before = fleet.uv_calls();
    let python_before = fleet.torch_imports();
    let steps_before = fleet.show(id)["report"]["steps"].clone();
    fleet.world.server.reset_counts();
    let started = Instant::now();
    command();
    let machine = wait_active(fleet, id, before);
    let wall = started.elapsed();
    let traffic = Traffic::from_counts(&fleet.world.server.counts());
    let report_steps = machine["report"]["steps"].as_array().unwrap();
    let names: &[&str] = match ran {
        Ran::Everything => &[&BUILD_STEPS[..], &ACTIVATION_STEPS[..]].concat(),
        Ran::Activation => &ACTIVATION_STEPS,
        Ran::Nothing => {
            // The no-op report carries the build's steps from its record: each one
            // that ever started was there before, with the same start.
            let before = steps_before.as_array().unwrap();
            for step in report_steps {
                let same = |earlier: &Value| {
                    earlier["name"] == step["name"] && earlier["started_at"] == step["started_at"]
                };
                assert!(step["started_at"].is_null() || before.iter().any(same), "a no-op ran {step}");
            }
            &[]
        }
    };
    let steps: Vec<(String, u64)> = names
        .iter()
        .map(|name| {
            let step = report_steps
                .iter()
                .find(|step| step["name"] == *name)
                .unwrap_or_else(|| panic!("no step {name} in {}", machine["report"]));
            ((*name).to_owned(), step["duration_ms"].as_u64().unwrap_or(0))
        })
        .collect();
    let agent = (ran != Ran::Nothing).then(|| Duration::from_millis(steps.iter().map(|(_, ms)| ms).sum()));
    let sample = Sample {
        wall,
        agent,
        traffic,
        uv_processes: fleet.uv_calls() - uv_before,
        python_processes: fleet.torch_imports() - python_before,
        steps,
    };
    (sample, machine)
}

/// A revision as `apply` printed it: its number and id.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Revision {
    number: u32,
    id: String,
}

/// `render-prod revision 3 created, id …` or `render-prod unchanged: revision 1 (id …) …`.
fn parse_applied(printed: &str) -> Revision {
    let words: Vec<&str> = printed.split_whitespace().collect();
    let after = |word: &str| {
        let position = words.iter().position(|w| w.trim_start_matches('(') == word);
        position.and_then(|p| words.get(p + 1)).map(|w| w.trim_matches(|c| "(),".contains(c)))
    };
    let number = after("revision").and_then(|n| n.parse().ok());
    let id = after("id");
    match (number, id) {
        (Some(number), Some(id)) => Revision { number, id: id.to_owned() },
        _ => panic!("cannot read the revision from apply's output: {printed}"),
    }
}

fn apply(fleet: &Fleet, cuda: &str, health_timeout: &str) -> Revision {
    let spec = fleet.spec(|options| {
        options.cuda = vec![cuda.to_owned()];
        options.health_timeout = health_timeout.to_owned();
    });
    parse_applied(&fleet.apply(&spec))
}

fn rollout(fleet: &Fleet, id: &str, revision: &Revision) {
    let reference = format!("render-prod@{}", revision.number);
    let printed = fleet.cli(&["rollout", "start", &reference, "--machines", id, "-o", "json"]).success();
    let rollout: Value = serde_json::from_str(&printed).unwrap();
    assert_eq!(rollout["targets"][0]["outcome"], "assigned", "{printed}");
}

fn torch_of(machine: &Value) -> String {
    current_environment(machine)["torch_version"].as_str().unwrap_or_default().to_owned()
}

/// Every measurement of one scenario, over all runs.
struct Scenario {
    name: &'static str,
    samples: Vec<Sample>,
}

impl Scenario {
    fn new(name: &'static str) -> Self {
        Self { name, samples: Vec::new() }
    }

    /// The sample with the median wall time (the lower one of an even count).
    fn median(&self) -> &Sample {
        let mut sorted: Vec<&Sample> = self.samples.iter().collect();
        sorted.sort_by_key(|sample| sample.wall);
        sorted[(sorted.len() - 1) / 2]
    }

    fn best(&self) -> &Sample {
        self.samples.iter().min_by_key(|sample| sample.wall).unwrap()
    }
}

/// One whole sequence on a fresh agent (an empty data dir, so an empty uv cache).
fn run_sequence(fleet: &Fleet, run: usize, scenarios: &mut [Scenario; 5]) {
    let hostname = format!("bench-{run}");
    let agent = fleet.agent(&hostname, PROFILE);
    let id = fleet.machine_id(&hostname);
    let cu128 = apply(fleet, "cu128", "30s");
    let cu126 = apply(fleet, "cu126", "30s");
    // The same builds as the first, with another health timeout: a new revision.
    let cu128_again = apply(fleet, "cu128", "31s");
    assert_ne!(cu128.id, cu128_again.id, "the health timeout is part of the revision");

    let steps: [(&Revision, &str); 3] =
        [(&cu128, "2.9.0+cu128"), (&cu126, "2.9.0+cu126"), (&cu128_again, "2.9.0+cu128")];
    for (scenario, (revision, torch)) in scenarios.iter_mut().zip(steps) {
        eprintln!("run {run}: {} (render-prod@{}) …", scenario.name, revision.number);
        let (sample, machine) = measure(fleet, &id, Ran::Everything, || rollout(fleet, &id, revision));
        assert_eq!(torch_of(&machine), torch, "{}", machine["report"]);
        eprintln!("  {:.2} s, {:.1} MiB", sample.wall.as_secs_f64(), sample.traffic.total() as f64 / MIB);
        scenario.samples.push(sample);
    }
    eprintln!("run {run}: no-op ×{REPEATS} …");
    for _ in 0..REPEATS {
        // The controller sees the machine already runs the revision: it says so and
        // assigns nothing, so the agent does nothing at all.
        let (uv_before, python_before) = (fleet.uv_calls(), fleet.torch_imports());
        let before = assigned_generation(fleet, &id);
        fleet.world.server.reset_counts();
        let started = Instant::now();
        let reference = format!("render-prod@{}", cu128_again.number);
        let printed = fleet.cli(&["rollout", "start", &reference, "--machines", &id, "-o", "json"]).success();
        let wall = started.elapsed();
        let started: Value = serde_json::from_str(&printed).unwrap();
        assert_eq!(started["targets"][0]["outcome"], "current", "{printed}");
        std::thread::sleep(Duration::from_millis(500));
        assert_eq!(assigned_generation(fleet, &id), before, "a no-op assigns nothing");
        scenarios[3].samples.push(Sample {
            wall,
            agent: None,
            traffic: Traffic::from_counts(&fleet.world.server.counts()),
            uv_processes: fleet.uv_calls() - uv_before,
            python_processes: fleet.torch_imports() - python_before,
            steps: Vec::new(),
        });
    }
    eprintln!("run {run}: rollback ×{REPEATS} …");
    for _ in 0..REPEATS {
        let mut said = String::new();
        let (sample, machine) = measure(fleet, &id, Ran::Activation, || {
            said = fleet.cli(&["machines", "rollback", &id]).success();
        });
        eprintln!("  {} ({}): {:.2} s", said.trim(), torch_of(&machine), sample.wall.as_secs_f64());
        scenarios[4].samples.push(sample);
    }
    drop(agent);
}

/// `model name` and the number of processors from /proc/cpuinfo, and the memory.
fn machine_description() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|line| line.strip_prefix("model name").and_then(|rest| rest.split_once(':')))
        .map_or("unknown CPU", |(_, model)| model.trim());
    let cores = cpuinfo.lines().filter(|line| line.starts_with("processor")).count();
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let memory_kib: u64 = meminfo
        .lines()
        .find_map(|line| line.strip_prefix("MemTotal:"))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    format!("{model}, {cores} cores, {:.0} GiB memory", memory_kib as f64 / 1024.0 / 1024.0)
}

fn uv_version() -> String {
    let output = std::process::Command::new(find_uv()).arg("--version").output().unwrap();
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

fn seconds(duration: Duration) -> String {
    format!("{:.2} s", duration.as_secs_f64())
}

fn size(bytes: u64) -> String {
    if bytes >= 1024 * 1024 {
        format!("{:.1} MiB", bytes as f64 / MIB)
    } else if bytes >= 1024 {
        format!("{:.1} KiB", bytes as f64 / 1024.0)
    } else {
        format!("{bytes} B")
    }
}

fn print_tables(scenarios: &[Scenario; 5], runs: usize) {
    let of = if runs == 1 { String::new() } else { format!(", median of {runs}") };
    println!("| scenario | wall time | agent-measured | from the index | uv processes | python processes |");
    println!("|---|---:|---:|---:|---:|---:|");
    for scenario in scenarios {
        let median = scenario.median();
        let repeated = scenario.samples.len() > runs;
        let name = if repeated {
            format!(
                "{} (median of {}, best {})",
                scenario.name,
                scenario.samples.len(),
                seconds(scenario.best().wall)
            )
        } else {
            format!("{}{of}", scenario.name)
        };
        println!(
            "| {name} | {} | {} | {} | {} | {} |",
            seconds(median.wall),
            median.agent.map_or("—".to_owned(), seconds),
            size(median.traffic.total()),
            median.uv_processes,
            median.python_processes,
        );
    }

    println!("\nWhat the index served (median sample):\n");
    println!(
        "| scenario | requests | torch, torchvision, torchaudio | other wheels | .metadata | index pages |"
    );
    println!("|---|---:|---:|---:|---:|---:|");
    for scenario in scenarios {
        let traffic = scenario.median().traffic;
        println!(
            "| {} | {} | {} | {} | {} | {} |",
            scenario.name,
            traffic.requests,
            size(traffic.torch_wheels),
            size(traffic.other_wheels),
            size(traffic.metadata),
            size(traffic.pages),
        );
    }

    println!("\nThe agent's steps, in seconds (median sample):\n");
    let columns: Vec<&Scenario> =
        scenarios.iter().filter(|scenario| !scenario.median().steps.is_empty()).collect();
    let header: Vec<&str> = columns.iter().map(|scenario| scenario.name).collect();
    println!("| step | {} |", header.join(" | "));
    println!("|---|{}", "---:|".repeat(columns.len()));
    for step in BUILD_STEPS.iter().chain(&ACTIVATION_STEPS) {
        let cells: Vec<String> = columns
            .iter()
            .map(|scenario| {
                let found = scenario.median().steps.iter().find(|(name, _)| name == step);
                found.map_or("—".to_owned(), |(_, ms)| format!("{:.2}", *ms as f64 / 1000.0))
            })
            .collect();
        println!("| {step} | {} |", cells.join(" | "));
    }
}

/// `cargo bench` runs this from target/release, and the harness starts the binaries
/// beside it: say how to build them rather than fail on the first one missing.
fn check_release_binaries() {
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().and_then(std::path::Path::parent).unwrap();
    for name in ["comfyfleet-controller", "comfyfleet-agent", "comfyfleet", "libcomfyfleet_fake_nvml.so"] {
        let path = profile_dir.join(name);
        assert!(
            path.exists(),
            "{} is missing: build the binaries in the profile the bench runs in first, \
             `cargo build --release --workspace` for `cargo bench`",
            path.display()
        );
    }
}

fn main() {
    let settings = Settings::parse();
    check_release_binaries();
    let python = system_python();
    let mut options = CatalogOptions::new(&python.tag);
    options.torch_padding_bytes = settings.torch_mib * 1024 * 1024;
    eprintln!("building the stand-in index ({} MiB per torch wheel) …", settings.torch_mib);
    let started = Instant::now();
    let fleet = Fleet::start_with(&options);
    let setup = started.elapsed();

    let mut scenarios = [
        Scenario::new("cold build, empty uv cache (cu128)"),
        Scenario::new("torch build change, new build not cached (cu128 → cu126)"),
        Scenario::new("torch build change, warm cache (cu126 → cu128)"),
        Scenario::new("no-op: the running revision again"),
        Scenario::new("rollback to the previous revision"),
    ];
    let started = Instant::now();
    for run in 1..=settings.runs {
        run_sequence(&fleet, run, &mut scenarios);
    }
    let measured = started.elapsed();

    println!("## Provisioning benchmark\n");
    println!("- machine: {}", machine_description());
    println!(
        "- {}, Python {}, one agent with profile {PROFILE} (1 GPU, SM 8.9)",
        uv_version(),
        python.version
    );
    println!(
        "- torch padding: {} MiB per torch wheel (torch 2.8.0 cu126/cu128, 2.9.0 and 2.11.0 cu126/cu128/cu130); \
         the stand-in index is served over loopback HTTP",
        settings.torch_mib
    );
    println!(
        "- {} run{} on a fresh agent each; no-op and rollback {REPEATS}× per run; \
         index built in {}, measurements took {}",
        settings.runs,
        if settings.runs == 1 { "" } else { "s" },
        seconds(setup),
        seconds(measured)
    );
    println!(
        "- wall time: from the CLI command to `machines show` reporting the new generation active; \
         agent-measured: the sum of the steps the agent ran; python processes: those that imported \
         the stand-in torch (ComfyUI included)\n"
    );
    print_tables(&scenarios, settings.runs);
}
