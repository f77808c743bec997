//! How the web page, `/metrics` and the fleet reports answer over a large simulated
//! fleet: the release controller with `--metrics-listen` and `--web-listen`, N
//! simulated agents (`comfyfleet-fleetsim`, five GPU profiles) that have taken a
//! rollout, so every machine has an inventory, an assignment and a report. Each
//! request is timed end to end from this process (curl for HTTPS), best and median
//! of several. Beside the end-to-end figures, what the controller itself takes: the
//! overview's time from request sent to first byte (curl's `time_starttransfer` less
//! `time_pretransfer`), `report gpus` over an open gRPC channel, and the fleet part of
//! building `/metrics` (its own `comfyfleet_scrape_seconds{part="fleet"}`); and the
//! controller's RSS with every agent connected, before and after the requests.
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

/// The controller's time on `url`: from the request sent to the first byte back.
fn server_time(jar: &Path, url: &str) -> Duration {
    let output = Command::new("curl")
        .args(["-sk", "-b"])
        .arg(jar)
        .args(["-o", "/dev/null", "-w", "%{http_code} %{time_pretransfer} %{time_starttransfer}", url])
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&output.stdout);
    let fields: Vec<&str> = text.split_whitespace().collect();
    assert_eq!(fields.first().copied(), Some("200"), "{url}: {text}");
    let seconds = |at: usize| fields[at].parse::<f64>().unwrap();
    Duration::from_secs_f64((seconds(2) - seconds(1)).max(0.0))
}

/// `VmRSS` of a process, in MiB.
fn rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|line| line.starts_with("VmRSS:"))
        .and_then(|line| line.split_whitespace().nth(1))
        .and_then(|kib| kib.parse::<f64>().ok())
        .map_or(0.0, |kib| kib / 1024.0)
}

/// `comfyfleet_scrape_seconds{part="fleet"}`'s sum and count on an OpenMetrics page.
fn fleet_scrape_seconds(page: &str) -> (f64, f64) {
    let value = |name: &str| {
        page.lines()
            .find(|line| line.starts_with(name) && line.contains("part=\"fleet\""))
            .and_then(|line| line.rsplit(' ').next())
            .and_then(|value| value.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (value("comfyfleet_scrape_seconds_sum"), value("comfyfleet_scrape_seconds_count"))
}

/// `report gpus` over one open channel, timed per call (best and median).
fn grpc_report_gpus(controller: &Controller, token: &str) -> (Duration, Duration) {
    use comfyfleet_proto::v1 as pb;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let ca = comfyfleet_e2e::grpc::controller_ca(&controller.data_dir);
        let channel = comfyfleet_e2e::grpc::channel(&controller.url, &ca, None).await;
        let bearer: tonic::metadata::MetadataValue<_> = format!("Bearer {token}").parse().unwrap();
        let mut client = pb::fleet_service_client::FleetServiceClient::with_interceptor(
            channel,
            move |mut request: tonic::Request<()>| {
                request.metadata_mut().insert("authorization", bearer.clone());
                Ok(request)
            },
        )
        .max_decoding_message_size(64 << 20);
        let mut took = Vec::new();
        for _ in 0..RUNS {
            let request = pb::FleetReportRequest { report: "gpus".into(), selector: String::new() };
            let started = Instant::now();
            client.get_fleet_report(request).await.unwrap();
            took.push(started.elapsed());
        }
        took.sort();
        (took[0], took[RUNS / 2])
    })
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
        // Every simulated agent comes from 127.0.0.1: no cap per address.
        &[
            "--heartbeat-interval",
            "5s",
            "--max-connections-per-address",
            "0",
            "--metrics-listen",
            &metrics,
            "--web-listen",
            &web,
        ],
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

    let pid = controller.process.pid();
    let rss_before = rss_mib(pid);
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

    // What the controller itself takes.
    let overview = format!("{web_base}/");
    let mut server: Vec<Duration> = (0..RUNS).map(|_| server_time(&jar, &overview)).collect();
    server.sort();
    row(
        "controller: overview `/`, request sent to first byte",
        "-".to_owned(),
        (server[0], server[RUNS / 2]),
    );
    row(
        "controller: `report gpus` over an open gRPC channel",
        "-".to_owned(),
        grpc_report_gpus(&controller, credential.trim()),
    );
    let page = http_get(metrics_port, "/metrics", &[("Accept", "application/openmetrics-text")]).unwrap();
    let (sum, count) = fleet_scrape_seconds(&page.body);
    println!(
        "| controller: the fleet part of building `/metrics` (mean of {count:.0}) | - | {:.1} ms | - |",
        if count > 0.0 { sum / count * 1e3 } else { 0.0 }
    );
    println!(
        "| controller RSS, {n} agents connected: before / after the requests | {rss_before:.0} / {:.0} MiB | - | - |",
        rss_mib(pid)
    );
}
