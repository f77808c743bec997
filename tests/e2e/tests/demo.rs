//! The README's first command, `scripts/demo`, brings up a fleet, prints its table,
//! and rolls the example spec out over local stand-ins: every machine converges.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test helpers fail loudly by design

use std::path::Path;
use std::process::Command;

use comfyfleet_e2e::provision::free_ports;
use comfyfleet_e2e::{binaries, test_dir};

#[test]
fn the_demo_brings_up_four_agents_and_converges_them_on_the_example_spec() {
    let dir = test_dir();
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    // One kernel-chosen port per machine: consecutive ports from an ephemeral one
    // collided with the agents' own outgoing connections.
    let mut ports: Vec<String> = free_ports(6).iter().map(u16::to_string).collect();
    let (web, metrics) = (ports.pop().unwrap(), ports.pop().unwrap());
    let output = Command::new(repo.join("scripts/demo"))
        .arg("--once")
        .env("COMFYFLEET_DEMO_SKIP_BUILD", "1")
        .env("COMFYFLEET_BIN_DIR", binaries().controller.parent().unwrap())
        .env("COMFYFLEET_DEMO_DIR", dir.path().join("demo"))
        .env("COMFYFLEET_DEMO_PORTS", ports.join(" "))
        .env("COMFYFLEET_DEMO_WEB_PORT", &web)
        .env("COMFYFLEET_DEMO_METRICS_PORT", &metrics)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "demo failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("4 machines (4 online), 11 GPUs"), "{stdout}");
    assert!(
        stdout.contains("render-prod: 4 machines: 3 ok, 0 incompatible, 1 not targeted; cu128 2, cu130 1"),
        "{stdout}"
    );
    for expected in
        ["8× H100 80GB HBM3 (9.0, 80 GiB)", "1× RTX 5090 (12.0, 32 GiB)", "none (driver not loaded)"]
    {
        assert!(stdout.contains(expected), "{expected} missing:\n{stdout}");
    }
    // The example spec, localised, rolled out: the three targeted machines build
    // and verify their environments and run ComfyUI from them.
    assert!(stdout.contains("render-prod@1: 3 assigned, 0 incompatible, 1 not targeted"), "{stdout}");
    // The example pins ComfyUI 0.33.0 (the stand-in's tag of it).
    assert!(stdout.lines().any(|line| line.contains("ComfyUI") && line.contains("v0.33.0")), "{stdout}");
    assert!(stdout.contains("canary started") && stdout.contains("batch 1 started"), "{stdout}");
    assert!(stdout.contains("succeeded: 3 active"), "{stdout}");
    assert!(
        stdout.contains("sageattention3 1.0.0+cu128torch2.11 verified"),
        "the RTX 5090 got SageAttention 3:\n{stdout}"
    );
    // One stable-ABI SageAttention wheel covers every GPU of every targeted box, the
    // mixed RTX 4090 + RTX A6000 one included, and its kernels ran on each.
    assert_eq!(
        stdout.matches("sageattention 2.2.0+cu128torch2.9.0andhigher.post4 verified").count(),
        2,
        "{stdout}"
    );
    assert!(stdout.contains("sageattention 2.2.0+cu130torch2.9.0andhigher.post4 verified"), "{stdout}");
    let (before_report, _) = stdout.split_once("$ comfyfleet report optimizations").expect("the report");
    assert_eq!(before_report.matches("render-prod@1 active").count(), 3, "{stdout}");
    // The report and the query the demo ends with: of the machines whose GPUs are all
    // SM 9.0 or newer (the H100 box and the 5090), SageAttention verified on both.
    assert!(stdout.contains("$ comfyfleet report optimizations"), "{stdout}");
    let report = stdout.split("$ comfyfleet report optimizations").nth(1).unwrap();
    assert!(report.contains("sageattention") && report.contains("NVIDIA H100 80GB HBM3"), "{report}");
    let query = stdout.split("opt.sageattention == verified'").nth(1).unwrap();
    assert!(query.contains("h100-x8-580") && query.contains("rtx5090-x1-575"), "{query}");
    assert!(!query.contains("mixed-4090-a6000-570"), "{query}");
    // --once stops what it started, ComfyUI included.
    let marker = dir.path().to_str().unwrap();
    let leftover: Vec<String> = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|entry| std::fs::read(entry.ok()?.path().join("cmdline")).ok())
        .map(|cmdline| String::from_utf8_lossy(&cmdline).replace('\0', " "))
        .filter(|cmdline| cmdline.contains(marker))
        .collect();
    assert!(leftover.is_empty(), "processes left running: {leftover:?}");
}
