//! How long planning a large fleet takes: parse + validate the example spec, then
//! resolve 10,000 machines of mixed profiles; and how long the fleet reports and a
//! query selector take over them (`cargo bench -p comfyfleet-config`).
//! Figures are in the README ("Benchmarks").
#![allow(clippy::unwrap_used, clippy::print_stdout)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use comfyfleet_config::convergence::Phase;
use comfyfleet_config::fleet_report::{FleetReport, ReportKind};
use comfyfleet_config::inventory::{ComputeCapability, CudaVersion};
use comfyfleet_config::resolve::{
    GpuFacts, MachineFacts, OptimizationFact, OptimizationOutcomeKind, Resolution, Resolver, SoftwareFacts,
};
use comfyfleet_config::spec::Selector;
use comfyfleet_config::spec::{Spec, SpecFormat};

const EXAMPLE: &str = include_str!("../examples/render-farm.toml");
const MACHINES: usize = 10_000;

/// A machine's shape: driver, driver CUDA version, GPUs (name, SM major, SM minor).
type Shape = (&'static str, (u32, u32), &'static [(&'static str, u32, u32)]);

fn machine(i: usize) -> MachineFacts {
    // The fixture profiles' shapes.
    let shapes: [Shape; 6] = [
        ("580.95.05", (13, 0), &[("NVIDIA H100 80GB HBM3", 9, 0); 8]),
        ("570.133.07", (12, 8), &[("NVIDIA GeForce RTX 4090", 8, 9), ("NVIDIA RTX A6000", 8, 6)]),
        ("575.57.08", (12, 9), &[("NVIDIA GeForce RTX 5090", 12, 0)]),
        ("570.124.06", (12, 8), &[("NVIDIA A100-SXM4-80GB", 8, 0); 4]),
        ("535.230.02", (12, 2), &[("Tesla T4", 7, 5)]),
        ("570.133.07", (12, 8), &[("NVIDIA GeForce GTX 1080 Ti", 6, 1)]),
    ];
    let (driver, (major, minor), gpus) = shapes[i % shapes.len()];
    MachineFacts {
        id: format!("{i:016x}"),
        hostname: format!("render-{i:05}"),
        labels: BTreeMap::from([(
            "pool".to_owned(),
            if i.is_multiple_of(10) { "staging" } else { "render-a" }.to_owned(),
        )]),
        os: Some("Debian GNU/Linux 13 (trixie)".to_owned()),
        arch: Some("x86_64".to_owned()),
        nvml_problem: None,
        driver_version: Some(driver.to_owned()),
        cuda_driver_version: Some(CudaVersion::new(major, minor)),
        gpus: gpus
            .iter()
            .enumerate()
            .map(|(index, (name, major, minor))| GpuFacts {
                index: index as u32,
                name: Some((*name).to_owned()),
                compute_capability: Some(ComputeCapability::new(*major, *minor)),
                memory_total_bytes: Some(24 << 30),
            })
            .collect(),
        reported: true,
        software: Default::default(),
    }
}

fn best_of<T>(runs: usize, mut work: impl FnMut() -> T) -> (Duration, T) {
    let mut best = Duration::MAX;
    let mut last = None;
    for _ in 0..runs {
        let started = Instant::now();
        let value = work();
        best = best.min(started.elapsed());
        last = Some(value);
    }
    (best, last.unwrap())
}

/// The example spec with `count` more SageAttention wheels: disjoint single SMs, or
/// every one for the same SMs (each overlapping every other).
fn spec_with_wheels(count: usize, overlapping: bool) -> String {
    let mut text = EXAMPLE.to_owned();
    text.push_str("\n[[optimization]]\nname = \"many-wheels\"\nsmoke = { call = \"many_wheels.run\" }\n");
    for n in 0..count {
        let compute =
            if overlapping { "\">=8.0,<9.0\"".to_owned() } else { format!("\"{}.{}\"", 1 + n / 20, n % 10) };
        let cuda = if overlapping { "cu128" } else { ["cu128", "cu130"][(n / 10) % 2] };
        text.push_str(&format!(
            "  [[optimization.wheel]]\n  compute = {compute}\n  python = \"cp312\"\n  cuda = \"{cuda}\"\n  torch = \"2.11\"\n  \
             url = \"https://wheels.example/{n}/many_wheels-1.0-cp312-cp312-linux_x86_64.whl\"\n  sha256 = \"{n:064x}\"\n"
        ));
    }
    text
}

/// Parse + validate specs with many kernel wheels: the overlap check used to be about
/// cubic (400 wheels took 30 s).
fn validation() {
    for (count, overlapping) in [(400, false), (400, true), (1000, false), (1000, true), (2000, true)] {
        let text = spec_with_wheels(count, overlapping);
        let (took, outcome) = best_of(3, || Spec::parse("many.toml", &text, SpecFormat::Toml));
        let outcome = match outcome {
            Ok(_) => "valid".to_owned(),
            Err(errors) => {
                format!("refused: {} problems, {} bytes of message", errors.0.len(), errors.to_string().len())
            }
        };
        let kind = if overlapping { "all overlapping" } else { "disjoint" };
        println!("parse + validate {count} wheels ({kind}): {:.1} ms ({outcome})", took.as_secs_f64() * 1e3);
    }
}

fn main() {
    validation();
    let (parse, spec) = best_of(20, || Spec::parse("render-farm.toml", EXAMPLE, SpecFormat::Toml).unwrap());
    let (digest, _) = best_of(20, || spec.digest());
    let machines: Vec<MachineFacts> = (0..MACHINES).map(machine).collect();
    let (resolve, outcomes) = best_of(5, || {
        let resolver = Resolver::new(&spec);
        machines.iter().map(|machine| resolver.resolve(machine)).collect::<Vec<_>>()
    });
    let ok = outcomes.iter().filter(|o| matches!(o, Resolution::Planned(_))).count();
    // What runs on them: render-prod@3 or @4, SageAttention verified on most, failed
    // on every tenth, one in fifty drifted.
    let running: Vec<MachineFacts> = machines
        .iter()
        .enumerate()
        .map(|(i, machine)| {
            let mut machine = machine.clone();
            machine.software = SoftwareFacts {
                environment: Some("render-prod".to_owned()),
                revision: Some(if i % 3 == 0 { 4 } else { 3 }),
                torch: Some("2.9.0+cu128".to_owned()),
                python: Some("3.12.7".to_owned()),
                phase: Some(if i % 25 == 0 { Phase::Failed } else { Phase::Active }),
                drift: if i % 50 == 0 {
                    vec!["package numpy is 2.2.0, verified 2.1.3".to_owned()]
                } else {
                    vec![]
                },
                optimizations: vec![OptimizationFact {
                    name: "sageattention".to_owned(),
                    outcome: if i % 10 == 0 {
                        OptimizationOutcomeKind::Failed
                    } else {
                        OptimizationOutcomeKind::Verified
                    },
                    detail: if i % 10 == 0 {
                        format!("sageattention.sageattn fails on GPU {}", i % 4)
                    } else {
                        String::new()
                    },
                }],
            };
            machine
        })
        .collect();
    let mut reports = Vec::new();
    for kind in ReportKind::ALL {
        let (took, report) = best_of(5, || FleetReport::build(kind, &running));
        reports.push((kind, took, report.table().1.len()));
    }
    let selector =
        Selector::parse_query("gpu.compute >= 8.0 && opt.sageattention != verified && phase == active")
            .unwrap();
    let (filter, picked) = best_of(5, || running.iter().filter(|machine| selector.matches(machine)).count());
    println!("parse + validate the example spec: {:.2} ms", parse.as_secs_f64() * 1e3);
    println!("canonical digest:                  {:.3} ms", digest.as_secs_f64() * 1e3);
    println!(
        "resolve {MACHINES} machines:            {:.1} ms ({:.1} µs per machine; {ok} planned)",
        resolve.as_secs_f64() * 1e3,
        resolve.as_secs_f64() * 1e6 / MACHINES as f64
    );
    for (kind, took, rows) in reports {
        println!("report {kind} over {MACHINES} machines: {:.2} ms ({rows} rows)", took.as_secs_f64() * 1e3);
    }
    println!(
        "query selector over {MACHINES} machines: {:.2} ms ({picked} picked)",
        filter.as_secs_f64() * 1e3
    );
}
