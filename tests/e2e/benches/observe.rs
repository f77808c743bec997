//! How the web page, `/metrics` and the fleet reports answer over a large simulated
//! fleet: the release controller with `--metrics-listen` and `--web-listen`, N
//! simulated agents (`comfyfleet-fleetsim`, five GPU profiles) that have taken a
//! rollout, so every machine has an inventory, an assignment and a report. Each
//! request is timed end to end from this process (curl for HTTPS), best and median
//! of several.
//!
//! ```text
//! cargo build --release --workspace
//! cargo bench -p comfyfleet-e2e --bench observe                   # 10,000 machines
//! cargo bench -p comfyfleet-e2e --bench observe -- --machines 2000
//! ```

// A benchmark's main: it fails loudly and prints its figures.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::print_stdout, clippy::print_stderr)]

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use comfyfleet_e2e::observe::http_get;
use comfyfleet_e2e::provision::free_ports;
use comfyfleet_e2e::rollouts::{PROFILES, apply, spec};
use comfyfleet_e2e::sim::{SimFleet, SimOptions};
use comfyfleet_e2e::{Controller, wait_until};
use serde_json::Value;

const RUNS: usize = 7;

fn machines_flag() -> usize {
    let mut args = std::env::args().skip(1).filter(|arg| arg != "--bench");
    let mut machines = 10_000;
    while let Some(flag) = args.next() {
        match flag.as_str() {
            "--machines" => machines = args.next().and_then(|n| n.parse().ok()).expect("--machines N"),
            other => panic!("unknown flag {other}: --machines N"),
        }
    }
    machines
}

/// Best and median of `RUNS` timings of `work`.
fn timed(work: impl FnMut()) -> (Duration, Duration) {
    timed_after(Duration::ZERO, work)
}

/// As [`timed`], waiting `pause` (untimed) before each run: `/metrics` serves one page
/// for a second, and what is measured is building it.
fn timed_after(pause: Duration, mut work: impl FnMut()) -> (Duration, Duration) {
    let mut took: Vec<Duration> = (0..RUNS)
        .map(|_| {
            std::thread::sleep(pause);
            let started = Instant::now();
            work();
            started.elapsed()
        })
        .collect();
    took.sort();
    (took[0], took[RUNS / 2])
}

fn curl(jar: &Path, url: &str) -> (u16, usize) {
    let output = Command::new("curl")
        .args(["-sk", "-b"])
        .arg(jar)
        .args(["-o", "-", "-w", "\n%{http_code}", url])
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&output.stdout);
    let (body, code) = text.rsplit_once('\n').unwrap();
    (code.trim().parse().unwrap_or(0), body.len())
}

fn main() {
    let n = machines_flag();
    let base = if Path::new("/dev/shm").is_dir() { Path::new("/dev/shm") } else { Path::new("/tmp") };
    let dir = tempfile::Builder::new().prefix("comfyfleet-observe-bench").tempdir_in(base).unwrap();
    let ports = free_ports(2);
    let (metrics, web) = (format!("127.0.0.1:{}", ports[0]), format!("127.0.0.1:{}", ports[1]));
    let controller = Controller::start_with(
        &dir.path().join("controller"),
        0,
        &["--heartbeat-interval", "5s", "--metrics-listen", &metrics, "--web-listen", &web],
    );

    let mut options = SimOptions::new(n);
    options.prepare = Duration::from_millis(500);
    options.activate = Duration::from_millis(200);
    options.profiles = PROFILES.iter().map(|name| (*name).to_owned()).collect();
    options.labels = vec!["pool=sim".to_owned()];
    options.extra = vec!["--enroll-parallel".to_owned(), "128".to_owned()];
    let _sim = SimFleet::start(dir.path(), &controller, &options);
    apply(&controller, dir.path(), &spec('1', "canary = 0"));
    let out = controller
        .cli(&[
            "rollout",
            "start",
            "render",
            "--max-parallel-prepare",
            "100%",
            "--max-unavailable",
            "25%",
            "-o",
            "json",
        ])
        .success();
    let id = serde_json::from_str::<Value>(&out).unwrap()["rollout"]["id"].as_u64().unwrap();
    wait_until(Duration::from_secs(1800), "the rollout to succeed", || {
        std::thread::sleep(Duration::from_millis(500));
        let out = controller.cli(&["rollout", "status", &id.to_string(), "-o", "json"]);
        let status: Value = serde_json::from_str(&out.stdout).ok()?;
        (status["state"] == "succeeded").then_some(())
    });

    // A viewer session for the web page.
    let credential = controller
        .cli(&["credentials", "create", "bench-viewer", "--role", "viewer", "--token-only"])
        .success();
    let jar = dir.path().join("cookies");
    let web_base = format!("https://{web}");
    let login = Command::new("curl")
        .args(["-sk", "-c"])
        .arg(&jar)
        .args(["-o", "/dev/null", "-w", "%{http_code}", "--data-urlencode"])
        .arg(format!("credential={}", credential.trim()))
        .arg(format!("{web_base}/login"))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&login.stdout), "303", "sign-in");
    let machine = controller.cli(&["machines", "-o", "json"]).success();
    let first: Vec<Value> = serde_json::from_str(&machine).unwrap();
    let machine_id = first[first.len() / 2]["id"].as_str().unwrap().to_owned();

    println!("observe bench: {n} simulated machines, every one with an inventory and a report");
    println!("| request | answer | best | median |");
    println!("|---|---:|---:|---:|");
    let row = |what: &str, size: String, (best, median): (Duration, Duration)| {
        println!(
            "| {what} | {size} | {:.0} ms | {:.0} ms |",
            best.as_secs_f64() * 1e3,
            median.as_secs_f64() * 1e3
        );
    };
    let metrics_port = ports[0];
    let mut size = 0;
    let took = timed_after(Duration::from_millis(1100), || {
        let answer =
            http_get(metrics_port, "/metrics", &[("Accept", "application/openmetrics-text")]).unwrap();
        assert_eq!(answer.status, 200);
        size = answer.body.len();
    });
    row("`GET /metrics` (OpenMetrics)", format!("{} KiB", size / 1024), took);
    for (what, path) in [
        ("web: overview `/`", "/".to_owned()),
        ("web: `/machines` (first 100)", "/machines".to_owned()),
        (
            "web: `/machines?where=gpu.compute >= 8.9 && opt.sageattention != verified`",
            "/machines?where=gpu.compute%20%3E%3D%208.9%20%26%26%20opt.sageattention%20!%3D%20verified"
                .to_owned(),
        ),
        ("web: one machine", format!("/machines/{machine_id}")),
        ("web: the rollout", format!("/rollouts/{id}")),
        ("web: the rollout's live update", format!("/rollouts/{id}/live?after=0")),
    ] {
        let url = format!("{web_base}{path}");
        let mut size = 0;
        let took = timed(|| {
            let (code, bytes) = curl(&jar, &url);
            assert_eq!(code, 200, "{url}");
            size = bytes;
        });
        row(what, format!("{} KiB", size / 1024), took);
    }
    for report in ["gpus", "optimizations"] {
        let took = timed(|| {
            controller.cli(&["report", report, "-o", "json"]).success();
        });
        row(&format!("`comfyfleet report {report}` (CLI, end to end)"), "-".to_owned(), took);
    }
    let took = timed(|| {
        controller.cli(&["machines", "--where", "gpu.compute >= 9.0", "-o", "json"]).success();
    });
    row("`comfyfleet machines --where 'gpu.compute >= 9.0' -o json`", "-".to_owned(), took);
}
