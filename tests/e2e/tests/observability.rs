//! Seeing and querying the fleet: `machines --where` over hardware and software,
//! `report …`, Prometheus metrics checked by `promtool` and scraped by a real
//! Prometheus, and the web page loaded by headless Chromium — all over one fleet of
//! real agents where SageAttention verified on some GPUs and failed on others.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test helpers fail loudly by design

use std::path::Path;
use std::time::Duration;

use comfyfleet_e2e::browser::{self, Browser};
use comfyfleet_e2e::observe::{Prometheus, http_get, promtool_check_metrics};
use comfyfleet_e2e::provision::{CONVERGE_TIMEOUT, Fleet, current_target, free_ports};
use comfyfleet_e2e::standin::{CatalogOptions, SageAttentionWheels, system_python};
use comfyfleet_e2e::{test_dir, wait_until};
use serde_json::Value;

const METRICS_TOKEN: &str = "metrics-token-0123456789abcdef";

/// The hostnames `machines --where SELECTOR` lists, sorted.
fn picked(fleet: &Fleet, selector: &str) -> Vec<String> {
    let json = fleet.cli(&["machines", "--where", selector, "-o", "json"]).success();
    let machines: Vec<Value> = serde_json::from_str(&json).unwrap();
    let mut names: Vec<String> =
        machines.iter().map(|machine| machine["hostname"].as_str().unwrap().to_owned()).collect();
    names.sort();
    names
}

fn metrics(port: u16) -> String {
    let answer =
        http_get(port, "/metrics", &[("Authorization", &format!("Bearer {METRICS_TOKEN}"))]).unwrap();
    assert_eq!(answer.status, 200, "{}", answer.body);
    answer.body
}

/// The value of the metric line that starts with `prefix` and has every `labels` part.
fn metric_value(text: &str, prefix: &str, labels: &[&str]) -> Option<f64> {
    text.lines()
        .filter(|line| line.starts_with(prefix) && labels.iter().all(|label| line.contains(label)))
        .find_map(|line| line.rsplit_once(' ')?.1.parse().ok())
}

/// Marks a package installed by hand in the machine's current environment.
fn install_by_hand(agent_data: &Path, current: &Path) {
    let lib = agent_data.join(current).join("venv/lib");
    let python = std::fs::read_dir(&lib).unwrap().flatten().next().unwrap().path();
    let dist_info = python.join("site-packages/handmade-1.0.dist-info");
    std::fs::create_dir_all(&dist_info).unwrap();
    std::fs::write(dist_info.join("METADATA"), "Metadata-Version: 2.1\nName: handmade\nVersion: 1.0\n")
        .unwrap();
}

/// The screenshots are taken into the test's temp dir, which goes with the test; a
/// copy is kept in `COMFYFLEET_SCREENSHOTS`, else `target/test-artifacts/screenshots`.
fn keep_screenshot(file: &Path) {
    let dir = std::env::var_os("COMFYFLEET_SCREENSHOTS").map_or_else(
        || {
            // target/<profile>/comfyfleet → target/test-artifacts/screenshots
            let profile = comfyfleet_e2e::binaries().cli.parent().unwrap().to_owned();
            profile.parent().unwrap().join("test-artifacts/screenshots")
        },
        std::path::PathBuf::from,
    );
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(file, dir.join(file.file_name().unwrap())).unwrap();
}

#[test]
fn the_fleet_is_seen_through_queries_reports_metrics_and_the_web_page() {
    let outside = test_dir();
    let token_file = outside.path().join("metrics-token");
    std::fs::write(&token_file, format!("{METRICS_TOKEN}\n")).unwrap();
    let ports = free_ports(2);
    let (metrics_port, web_port) = (ports[0], ports[1]);
    let metrics_listen = format!("127.0.0.1:{metrics_port}");
    let web_listen = format!("127.0.0.1:{web_port}");
    let fleet = Fleet::start_with_controller(
        &CatalogOptions::new(&system_python().tag),
        &[
            "--metrics-listen",
            &metrics_listen,
            "--metrics-token-file",
            token_file.to_str().unwrap(),
            "--web-listen",
            &web_listen,
        ],
    );
    let ada = fleet.agent("ws-ada", "rtx4090-x1-570");
    let _mixed = fleet.agent("ws-mixed", "mixed-4090-a6000-570");
    let _a100 = fleet.agent("node-a100", "a100-x4-570");
    let wheels = fleet.partial_sageattention();
    let spec = |drain: &str| {
        fleet.spec(|options| {
            options.cuda = vec!["cu128".to_owned()];
            options.sageattention = SageAttentionWheels::Custom(wheels.clone());
            options.drain_timeout = drain.to_owned();
        })
    };
    fleet.apply(&spec("30s"));
    fleet.cli(&["rollout", "start", "render-prod", "--wait", "--timeout", "5m"]).success();

    // --where over what runs on the machines.
    let all = vec!["node-a100", "ws-ada", "ws-mixed"];
    assert_eq!(picked(&fleet, "opt.sageattention == verified"), ["node-a100", "ws-ada"]);
    assert_eq!(picked(&fleet, "opt.sageattention == failed"), ["ws-mixed"]);
    assert_eq!(picked(&fleet, "gpu.compute >= 8.0 && opt.sageattention != verified"), ["ws-mixed"]);
    assert_eq!(picked(&fleet, "gpu.name contains A100 && opt.sageattention == verified"), ["node-a100"]);
    assert!(picked(&fleet, "opt.flash-attn != absent").is_empty());
    assert_eq!(picked(&fleet, "env.name == render-prod && env.revision == 1 && phase == active"), all);
    assert_eq!(picked(&fleet, "env.cuda == cu128"), all);
    let machine = fleet.controller.machine("ws-ada").unwrap();
    let current = comfyfleet_e2e::provision::current_environment(&machine).clone();
    let torch = current["torch_version"].as_str().unwrap();
    let python = current["python_version"].as_str().unwrap();
    assert_eq!(picked(&fleet, &format!("env.torch == \"{torch}\" && env.python == \"{python}\"")), all);
    assert!(picked(&fleet, "env.cuda == cu126 || phase == failed || env.revision > 1").is_empty());
    assert!(picked(&fleet, "drift == true").is_empty());
    // The table says it too; a mistake is shown with a caret and nothing is sent.
    let table = fleet.cli(&["machines", "--where", "opt.sageattention == failed"]).success();
    assert!(table.contains("ws-mixed") && !table.contains("ws-ada"), "{table}");
    let refused = fleet.cli(&["machines", "--where", "opt.sageattention == works"]).failure();
    assert!(refused.contains("write an outcome: verified, failed"), "{refused}");
    assert!(refused.contains(&format!("\n  {}^", " ".repeat(21))), "{refused}");

    // report optimizations: per GPU model, json and csv agree.
    let json: Value =
        serde_json::from_str(&fleet.cli(&["report", "optimizations", "-o", "json"]).success()).unwrap();
    assert_eq!(json["report"], "optimizations");
    assert_eq!(json["machines"], 3);
    let rows = json["rows"].as_array().unwrap();
    let counts = |gpu: &str| {
        let row = rows
            .iter()
            .find(|row| row["optimization"] == "sageattention" && row["gpu"] == gpu)
            .unwrap_or_else(|| panic!("no sageattention row for {gpu}: {json}"));
        (row["verified"].as_u64().unwrap(), row["failed"].as_u64().unwrap(), row["skipped"].as_u64().unwrap())
    };
    assert_eq!(counts("NVIDIA GeForce RTX 4090"), (1, 1, 0));
    assert_eq!(counts("NVIDIA RTX A6000"), (0, 1, 0));
    assert_eq!(counts("NVIDIA A100-SXM4-80GB"), (1, 0, 0));
    let a6000 = rows
        .iter()
        .find(|row| row["optimization"] == "sageattention" && row["gpu"] == "NVIDIA RTX A6000")
        .unwrap();
    assert!(
        a6000["top_failure"].as_str().unwrap().contains("fails on GPU 1 (NVIDIA RTX A6000, SM 8.6)"),
        "{a6000}"
    );
    let csv = fleet.cli(&["report", "optimizations", "-o", "csv"]).success();
    let mut lines = csv.lines();
    let header = split_csv(lines.next().unwrap());
    assert_eq!(header[..3], ["optimization", "gpu", "verified"], "{csv}");
    let csv_rows: Vec<Vec<String>> = lines.map(split_csv).collect();
    assert_eq!(csv_rows.len(), rows.len(), "{csv}");
    for (csv_row, row) in csv_rows.iter().zip(rows) {
        let expected: Vec<String> = header
            .iter()
            .map(|key| match &row[key.as_str()] {
                Value::String(text) => text.clone(),
                other => other.to_string(),
            })
            .collect();
        assert_eq!(csv_row, &expected, "csv and json disagree");
    }
    let filtered: Value = serde_json::from_str(
        &fleet.cli(&["report", "optimizations", "--where", "gpu.name contains A100", "-o", "json"]).success(),
    )
    .unwrap();
    assert_eq!(filtered["machines"], 1);
    let gpus = fleet.cli(&["report", "gpus"]).success();
    assert!(gpus.contains("NVIDIA A100-SXM4-80GB") && gpus.contains("570.124.06"), "{gpus}");
    let environments: Value =
        serde_json::from_str(&fleet.cli(&["report", "environments", "-o", "json"]).success()).unwrap();
    assert_eq!(environments["rows"][0]["environment"], "render-prod@1");
    assert_eq!(environments["rows"][0]["phase"], "active");
    assert_eq!(environments["rows"][0]["machines"], 3);

    // A package changed by hand is drift: drift == true picks that machine only.
    install_by_hand(&ada.data_dir, &current_target(&ada).unwrap());
    wait_until(CONVERGE_TIMEOUT, "the hand-made package to show as drift", || {
        (picked(&fleet, "drift == true") == ["ws-ada"]).then_some(())
    });
    let drift: Value =
        serde_json::from_str(&fleet.cli(&["report", "drift", "-o", "json"]).success()).unwrap();
    assert_eq!(drift["rows"][0]["hostname"], "ws-ada");
    assert!(
        drift["rows"][0]["drift"]
            .as_array()
            .unwrap()
            .iter()
            .any(|item| item == "package handmade 1.0 was added"),
        "{drift}"
    );
    assert_eq!(picked(&fleet, "drift == false"), ["node-a100", "ws-mixed"]);

    // /metrics: a token, OpenMetrics that promtool accepts, the fleet's state.
    assert_eq!(http_get(metrics_port, "/metrics", &[]).unwrap().status, 401);
    assert_eq!(http_get(metrics_port, "/metrics", &[("Authorization", "Bearer wrong")]).unwrap().status, 401);
    let bearer = format!("Bearer {METRICS_TOKEN}");
    let answer = http_get(
        metrics_port,
        "/metrics",
        &[("Authorization", &bearer), ("Accept", "application/openmetrics-text;version=1.0.0")],
    )
    .unwrap();
    assert!(
        answer.header("content-type").unwrap().starts_with("application/openmetrics-text"),
        "{}",
        answer.head
    );
    assert!(answer.body.ends_with("# EOF\n"), "{}", answer.body);
    // Without asking for OpenMetrics: the classic text format, which promtool lints.
    let plain = http_get(metrics_port, "/metrics", &[("Authorization", &bearer)]).unwrap();
    assert!(plain.header("content-type").unwrap().starts_with("text/plain; version=0.0.4"), "{}", plain.head);
    let (ok, said) = promtool_check_metrics(&plain.body);
    assert!(ok, "promtool check metrics: {said}\n{}", plain.body);
    let text = answer.body;
    assert_eq!(metric_value(&text, "comfyfleet_machines{", &["status=\"online\""]), Some(3.0), "{text}");
    assert_eq!(metric_value(&text, "comfyfleet_machines_drifted", &[]), Some(1.0), "{text}");
    assert_eq!(
        metric_value(
            &text,
            "comfyfleet_machines_by_revision{",
            &["environment=\"render-prod\"", "revision=\"1\""]
        ),
        Some(3.0),
        "{text}"
    );
    assert_eq!(
        metric_value(
            &text,
            "comfyfleet_gpus{",
            &[
                "nvidia_com_gpu_product=\"NVIDIA-A100-SXM4-80GB\"",
                "nvidia_com_gpu_compute_major=\"8\"",
                "nvidia_com_cuda_driver_major=\"570\""
            ]
        ),
        Some(4.0),
        "{text}"
    );
    assert_eq!(
        metric_value(
            &text,
            "comfyfleet_optimization_machines{",
            &[
                "optimization=\"sageattention\"",
                "nvidia_com_gpu_product=\"NVIDIA-RTX-A6000\"",
                "outcome=\"failed\""
            ]
        ),
        Some(1.0),
        "{text}"
    );
    assert!(
        metric_value(&text, "comfyfleet_step_duration_seconds_count{", &["state=\"done\""]).is_some(),
        "{text}"
    );
    assert!(
        metric_value(
            &text,
            "comfyfleet_store_operation_duration_seconds_count{",
            &["operation=\"record_reports\""]
        )
        .unwrap()
            >= 1.0
    );
    assert_eq!(metric_value(&text, "comfyfleet_enrollments_total", &[]), Some(3.0), "{text}");
    assert_eq!(metric_value(&text, "comfyfleet_agent_sessions ", &[]), Some(3.0), "{text}");

    // A real Prometheus scrapes it and answers PromQL.
    let prometheus = Prometheus::start(&outside.path().join("prometheus"), metrics_port, METRICS_TOKEN);
    wait_until(Duration::from_secs(60), "Prometheus to scrape the controller", || {
        let result = prometheus.query("sum(comfyfleet_machines{status=\"online\"})")?;
        let value = result.first()?["value"][1].as_str()?.to_owned();
        (value == "3").then_some(())
    });
    assert!(prometheus.target_health().unwrap().starts_with("up"), "{:?}", prometheus.target_health());

    // The web page: nothing without signing in.
    let base = format!("https://127.0.0.1:{web_port}");
    let shots = fleet.dir.path().join("screenshots");
    std::fs::create_dir_all(&shots).unwrap();
    let anonymous =
        browser::dump_dom(&outside.path().join("chromium-anonymous"), &format!("{base}/machines"));
    assert!(anonymous.contains("Sign in to comfyfleet"), "{anonymous}");
    for hostname in ["ws-ada", "ws-mixed", "node-a100", "NVIDIA"] {
        assert!(!anonymous.contains(hostname), "the login page shows {hostname}: {anonymous}");
    }
    browser::screenshot(&outside.path().join("chromium-shot"), &format!("{base}/"), &shots.join("login.png"));

    // A viewer signs in through the form once; the session cookie does the rest.
    let viewer =
        fleet.cli(&["credentials", "create", "web-viewer", "--role", "viewer", "--token-only"]).success();
    let mut chrome = Browser::start(&outside.path().join("chromium-viewer"));
    chrome.sign_in(&base, viewer.trim());
    let overview = chrome.dom();
    assert!(overview.contains("NVIDIA GeForce RTX 4090") && overview.contains("render-prod@1"), "{overview}");
    chrome.screenshot(&shots.join("overview.png"));

    chrome.open(&format!("{base}/machines"));
    let listing = chrome.dom();
    for hostname in &all {
        assert!(listing.contains(hostname), "{hostname} missing from {listing}");
    }
    chrome.screenshot(&shots.join("machines.png"));

    chrome.open(&format!("{base}/machines?where=opt.sageattention%20%3D%3D%20failed"));
    let filtered = chrome.dom();
    assert!(
        filtered.contains("ws-mixed") && !filtered.contains("ws-ada") && !filtered.contains("node-a100"),
        "{filtered}"
    );
    chrome.screenshot(&shots.join("machines-filtered.png"));

    chrome.open(&format!("{base}/machines?where=gpu.compute%20%3E%3D"));
    let mistaken = chrome.dom();
    assert!(mistaken.contains("selector-error") && mistaken.contains("wrong at character"), "{mistaken}");

    let mixed_id = fleet.machine_id("ws-mixed");
    chrome.open(&format!("{base}/machines/{mixed_id}"));
    let page = chrome.dom();
    assert!(page.contains("NVIDIA RTX A6000") && page.contains("NVIDIA GeForce RTX 4090"), "{page}");
    assert!(page.contains("fails on GPU 1 (NVIDIA RTX A6000, SM 8.6)"), "{page}");
    chrome.screenshot(&shots.join("machine.png"));

    // A second revision rolled out canary first, then held in its soak: running.
    fleet.apply(&spec("45s"));
    fleet
        .cli(&["rollout", "start", "render-prod", "--canary", "1", "--max-unavailable", "1", "--soak", "1h"])
        .success();
    wait_until(CONVERGE_TIMEOUT, "the canary to be active", || {
        let text = metrics(metrics_port);
        (metric_value(&text, "comfyfleet_rollout_machines{", &["revision=\"2\"", "state=\"active\""])
            == Some(1.0))
        .then_some(text)
    });
    let text = metrics(metrics_port);
    assert_eq!(metric_value(&text, "comfyfleet_rollout_failures{", &["revision=\"2\""]), Some(0.0), "{text}");
    assert!(
        metric_value(&text, "comfyfleet_rollout_failure_budget{", &["revision=\"2\""]).is_some(),
        "{text}"
    );
    assert_eq!(picked(&fleet, "env.revision == 2").len(), 1);
    assert_eq!(picked(&fleet, "env.revision == 1").len(), 2);

    chrome.open(&format!("{base}/rollouts/render-prod"));
    let rollout = chrome.dom();
    assert!(rollout.contains("render-prod@2") && rollout.contains("running"), "{rollout}");
    assert!(rollout.contains("canary") && rollout.contains("class=\"bar\""), "{rollout}");
    wait_until(Duration::from_secs(30), "the page to update itself", || {
        (chrome.eval("document.getElementById('live').dataset.updated || ''") != "").then_some(())
    });
    chrome.screenshot(&shots.join("rollout.png"));

    chrome.open(&format!("{base}/environments/render-prod"));
    let history = chrome.dom();
    assert!(history.contains("render-prod@2") && history.contains("drain_timeout"), "{history}");
    chrome.screenshot(&shots.join("environment.png"));

    for shot in ["login", "overview", "machines", "machines-filtered", "machine", "rollout", "environment"] {
        let file = shots.join(format!("{shot}.png"));
        assert!(std::fs::metadata(&file).unwrap().len() > 10_000, "{shot}.png is too small to show anything");
        keep_screenshot(&file);
    }
    // Revoking the credential signs its browser out.
    let credential_id = viewer.trim().split('.').nth(1).unwrap().to_owned();
    fleet.cli(&["credentials", "revoke", &credential_id]).success();
    chrome.open(&format!("{base}/machines"));
    assert!(chrome.path().starts_with("/login"), "{}", chrome.path());
    let signed_out = chrome.dom();
    assert!(!signed_out.contains("ws-mixed"), "{signed_out}");
    // A wrong credential is refused on the form, saying why.
    let mut stranger = Browser::start(&outside.path().join("chromium-stranger"));
    stranger.open(&format!("{base}/login"));
    stranger.eval(
        "document.getElementById('credential').value = 'cfo1.000000000000.00000000000000000000000000000000'; \
         document.querySelector('form[action=\"/login\"]').submit(); true",
    );
    wait_until(Duration::from_secs(30), "the refusal", || {
        std::thread::sleep(Duration::from_millis(200));
        let dom = stranger.dom();
        dom.contains("is not valid on this controller").then_some(())
    });

    eprintln!("screenshots taken in {} (copies kept, see keep_screenshot)", shots.display());
    fleet.cli(&["rollout", "abort", "render-prod"]).success();
}

/// One CSV line's fields (quoted fields may hold commas and doubled quotes).
fn split_csv(line: &str) -> Vec<String> {
    let mut fields = Vec::new();
    let mut field = String::new();
    let mut quoted = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match (c, quoted) {
            ('"', true) if chars.peek() == Some(&'"') => {
                field.push('"');
                chars.next();
            }
            ('"', _) => quoted = !quoted,
            (',', false) => fields.push(std::mem::take(&mut field)),
            (c, _) => field.push(c),
        }
    }
    fields.push(field);
    fields
}
