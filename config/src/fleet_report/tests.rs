use serde_json::json;

use super::*;

fn machine(id: &str, gpus: &[(&str, &str)], driver: &str, software: serde_json::Value) -> MachineFacts {
    serde_json::from_value(json!({
        "id": id,
        "hostname": format!("{id}.farm"),
        "labels": {},
        "os": "Debian GNU/Linux 13 (trixie)",
        "arch": "x86_64",
        "nvml_problem": null,
        "driver_version": driver,
        "cuda_driver_version": "12.8",
        "gpus": gpus.iter().enumerate().map(|(index, (name, cc))| json!({
            "index": index, "name": name, "compute_capability": cc, "memory_total_bytes": 1u64 << 34,
        })).collect::<Vec<_>>(),
        "reported": true,
        "software": software,
    }))
    .unwrap()
}

fn running(sage: &str, detail: &str, drift: &[&str]) -> serde_json::Value {
    json!({
        "environment": "render-prod", "revision": 2, "torch": "2.9.0+cu128", "python": "3.12.7",
        "phase": "active", "drift": drift,
        "optimizations": [{"name": "sageattention", "outcome": sage, "detail": detail}],
    })
}

const A6000_FAILS: &str =
    "sageattention.sageattn fails on GPU 0 (NVIDIA RTX A6000, SM 8.6): RuntimeError\nmore";

fn fleet() -> Vec<MachineFacts> {
    vec![
        machine("a", &[("NVIDIA GeForce RTX 4090", "8.9")], "570.133.07", running("verified", "", &[])),
        machine(
            "b",
            &[("NVIDIA GeForce RTX 4090", "8.9")],
            "570.133.07",
            running("verified", "", &["package x 2 was added"]),
        ),
        machine("c", &[("NVIDIA RTX A6000", "8.6"); 2], "570.133.07", running("failed", A6000_FAILS, &[])),
        machine(
            "d",
            &[("NVIDIA GeForce RTX 4090", "8.9"), ("NVIDIA RTX A6000", "8.6")],
            "570.133.07",
            running(
                "failed",
                "sageattention.sageattn fails on GPU 1 (NVIDIA RTX A6000, SM 8.6): RuntimeError",
                &[],
            ),
        ),
        machine("e", &[("NVIDIA RTX A6000", "8.6")], "550.144.03", running("failed", A6000_FAILS, &[])),
        machine("f", &[("Tesla T4", "7.5")], "535.230.02", json!({"phase": "failed"})),
    ]
}

#[test]
fn the_gpu_report_counts_machines_and_gpus_per_model_and_driver() {
    let machines = fleet();
    let FleetReport::Gpus { machines: count, rows } = FleetReport::build(ReportKind::Gpus, &machines) else {
        panic!("not a gpu report")
    };
    assert_eq!(count, 6);
    let find = |gpu: &str, driver: &str| {
        rows.iter()
            .find(|row| row.gpu == gpu && row.driver_version == driver)
            .map(|row| (row.machines, row.gpus))
    };
    assert_eq!(find("NVIDIA GeForce RTX 4090", "570.133.07"), Some((3, 3)));
    assert_eq!(find("NVIDIA RTX A6000", "570.133.07"), Some((2, 3)));
    assert_eq!(find("NVIDIA RTX A6000", "550.144.03"), Some((1, 1)));
    assert_eq!(find("Tesla T4", "535.230.02"), Some((1, 1)));
    assert_eq!(rows.len(), 4);
}

#[test]
fn the_optimization_report_counts_outcomes_per_gpu_model_with_the_top_failure() {
    let machines = fleet();
    let FleetReport::Optimizations { rows, .. } = FleetReport::build(ReportKind::Optimizations, &machines)
    else {
        panic!("not an optimization report")
    };
    let row = |gpu: &str| rows.iter().find(|row| row.gpu == gpu).unwrap();
    let rtx = row("NVIDIA GeForce RTX 4090");
    assert_eq!((rtx.verified, rtx.failed, rtx.skipped), (2, 1, 0));
    let a6000 = row("NVIDIA RTX A6000");
    assert_eq!((a6000.verified, a6000.failed), (0, 3));
    assert_eq!(a6000.top_failure, A6000_FAILS.lines().next().unwrap());
    assert_eq!(a6000.top_failure_machines, 2);
    assert!(rows.iter().all(|row| row.gpu != "Tesla T4"), "the T4 runs nothing: {rows:?}");
}

#[test]
fn environments_and_drift_reports() {
    let machines = fleet();
    let FleetReport::Environments { rows, .. } = FleetReport::build(ReportKind::Environments, &machines)
    else {
        panic!()
    };
    assert_eq!(rows[0].environment, "render-prod@2");
    assert_eq!(
        (rows[0].torch.as_str(), rows[0].phase.as_str(), rows[0].machines),
        ("2.9.0+cu128", "active", 5)
    );
    assert_eq!((rows[1].environment.as_str(), rows[1].phase.as_str(), rows[1].machines), ("-", "failed", 1));
    let report = FleetReport::build(ReportKind::Drift, &machines);
    let FleetReport::Drift { rows, .. } = &report else { panic!() };
    assert_eq!(rows.len(), 1);
    assert_eq!((rows[0].machine.as_str(), rows[0].drift[0].as_str()), ("b", "package x 2 was added"));
    // The JSON form names the report and round-trips.
    let json = serde_json::to_value(&report).unwrap();
    assert_eq!(json["report"], "drift");
    assert_eq!(serde_json::from_value::<FleetReport>(json).unwrap(), report);
    let (header, table) = report.table();
    assert_eq!(header, ["machine", "hostname", "environment", "drift"]);
    assert_eq!(table[0][2], "render-prod@2");
}
