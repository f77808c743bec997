//! The fleet's state as metrics, from its summary in memory at each scrape: machines
//! by status, phase and revision, GPUs with NVIDIA GPU Feature Discovery's label
//! names, optimisation outcomes; and open rollouts' progress.

use std::collections::{BTreeMap, HashMap};

use comfyfleet_config::resolve::OptimizationOutcomeKind;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::counters::label::{LabelValue, Labels, label};
use crate::use_cases::ControllerState;
use crate::use_cases::machines::fleet_summary::Summary;

pub(super) fn gauge(value: i64) -> Gauge {
    let gauge = Gauge::default();
    gauge.set(value);
    gauge
}

/// A gauge family filled from counts.
fn gauges(counts: impl IntoIterator<Item = (Labels, i64)>) -> Family<Labels, Gauge> {
    let family = Family::<Labels, Gauge>::default();
    for (labels, value) in counts {
        family.get_or_create(&labels).set(value);
    }
    family
}

/// `NVIDIA GeForce RTX 4090` → `NVIDIA-GeForce-RTX-4090`, as GPU Feature Discovery
/// writes `nvidia.com/gpu.product`.
fn gfd_product(name: &str) -> String {
    name.split_whitespace().collect::<Vec<_>>().join("-")
}

/// The fleet's state as metrics, from its summary.
pub(super) fn fleet_registry(registry: &mut Registry, summary: &Summary) {
    let count = |machines: u64| i64::try_from(machines).unwrap_or(i64::MAX);
    let by_status: BTreeMap<&'static str, i64> = [
        ("online", count(summary.online)),
        ("offline", count(summary.offline)),
        ("revoked", count(summary.revoked)),
    ]
    .into_iter()
    .collect();
    let mut by_phase: BTreeMap<String, i64> = BTreeMap::new();
    let mut by_revision: BTreeMap<(String, String), i64> = BTreeMap::new();
    let mut gpus: HashMap<Labels, i64> = HashMap::new();
    let mut gpu_machines: HashMap<Labels, i64> = HashMap::new();
    let mut outcomes: HashMap<Labels, i64> = HashMap::new();
    let mut drifted = 0;
    // Each class of machines counts as many times as machines have it.
    for (facts, machines) in &summary.classes {
        let weight = count(*machines);
        let software = &facts.software;
        let phase = software.phase.map_or("unreported", |phase| phase.as_str());
        *by_phase.entry(phase.to_owned()).or_default() += weight;
        if let (Some(environment), Some(revision)) = (&software.environment, software.revision) {
            *by_revision.entry((environment.clone(), revision.to_string())).or_default() += weight;
        }
        if !software.drift.is_empty() {
            drifted += weight;
        }
        let driver: Vec<&str> = facts.driver_version.as_deref().unwrap_or_default().split('.').collect();
        let part = |at: usize| driver.get(at).copied().unwrap_or_default().to_owned();
        let (runtime_major, runtime_minor) = facts
            .cuda_driver_version
            .map(|cuda| (cuda.major.to_string(), cuda.minor.to_string()))
            .unwrap_or_default();
        let mut models = Vec::new();
        for gpu in &facts.gpus {
            let product = gfd_product(gpu.name.as_deref().unwrap_or("unknown"));
            let (major, minor) = gpu
                .compute_capability
                .map(|cc| (cc.major.to_string(), cc.minor.to_string()))
                .unwrap_or_default();
            let labels: Labels = vec![
                label("nvidia_com_gpu_product", product.clone()),
                label("nvidia_com_gpu_compute_major", major),
                label("nvidia_com_gpu_compute_minor", minor),
                label("nvidia_com_cuda_driver_major", part(0)),
                label("nvidia_com_cuda_driver_minor", part(1)),
                label("nvidia_com_cuda_driver_rev", part(2)),
                label("nvidia_com_cuda_runtime_major", runtime_major.clone()),
                label("nvidia_com_cuda_runtime_minor", runtime_minor.clone()),
            ];
            *gpus.entry(labels.clone()).or_default() += weight;
            if !models.contains(&labels) {
                *gpu_machines.entry(labels.clone()).or_default() += weight;
                models.push(labels);
            }
        }
        let mut products: Vec<String> =
            facts.gpus.iter().map(|gpu| gfd_product(gpu.name.as_deref().unwrap_or("unknown"))).collect();
        products.sort_unstable();
        products.dedup();
        for optimization in &software.optimizations {
            if optimization.outcome == OptimizationOutcomeKind::Absent {
                continue;
            }
            for product in &products {
                let labels: Labels = vec![
                    label("optimization", optimization.name.as_str()),
                    label("nvidia_com_gpu_product", product.as_str()),
                    label("outcome", optimization.outcome.as_str()),
                ];
                *outcomes.entry(labels).or_default() += weight;
            }
        }
    }
    registry.register(
        "comfyfleet_machines",
        "Machines by status (online, offline, revoked)",
        gauges(by_status.into_iter().map(|(status, count)| (vec![label("status", status)], count))),
    );
    registry.register(
        "comfyfleet_machines_by_phase",
        "Machines that are not revoked, by the phase of their latest report",
        gauges(by_phase.into_iter().map(|(phase, count)| (vec![label("phase", phase)], count))),
    );
    registry.register(
        "comfyfleet_machines_by_revision",
        "Machines by the environment revision that is current on them",
        gauges(by_revision.into_iter().map(|((environment, revision), count)| {
            (vec![label("environment", environment), label("revision", revision)], count)
        })),
    );
    registry.register(
        "comfyfleet_machines_drifted",
        "Machines whose current environment differs from what verification recorded",
        gauge(drifted),
    );
    registry.register(
        "comfyfleet_gpus",
        "GPUs, with NVIDIA GPU Feature Discovery's labels (nvidia.com/gpu.product, …) as label names",
        gauges(gpus),
    );
    registry.register(
        "comfyfleet_gpu_machines",
        "Machines with at least one such GPU, with GPU Feature Discovery's labels",
        gauges(gpu_machines),
    );
    registry.register(
        "comfyfleet_optimization_machines",
        "Machines by an optimisation's outcome on their current environment, per GPU model they have",
        gauges(outcomes),
    );
}

/// Open rollouts' progress.
pub(super) async fn rollout_registry(state: &ControllerState, registry: &mut Registry) -> Result<(), String> {
    let rollouts = crate::edges::operator_grpc::rollout_api::open(state)
        .await
        .map_err(|status| status.message().to_owned())?;
    let machines = Family::<Labels, Gauge>::default();
    let unavailable = Family::<Labels, Gauge>::default();
    let failures = Family::<Labels, Gauge>::default();
    let budget = Family::<Labels, Gauge>::default();
    for rollout in &rollouts {
        let labels = |extra: Option<(&'static str, LabelValue)>| -> Labels {
            let mut labels: Labels = vec![
                label("rollout", rollout.id.to_string()),
                label("environment", rollout.environment.as_str()),
                label("revision", rollout.revision_number.to_string()),
            ];
            labels.extend(extra);
            labels
        };
        let counts = rollout.counts.unwrap_or_default();
        for (name, count) in [
            ("pending", counts.pending),
            ("preparing", counts.preparing),
            ("prepared", counts.prepared),
            ("activating", counts.activating),
            ("active", counts.active),
            ("failed", counts.failed),
            ("rolling-back", counts.rolling_back),
            ("rolled-back", counts.rolled_back),
            ("skipped", counts.skipped),
        ] {
            machines.get_or_create(&labels(Some(label("state", name)))).set(i64::from(count));
        }
        let down: u32 = rollout.phases.iter().map(|phase| phase.activating).sum();
        let failed: u32 = rollout.phases.iter().map(|phase| phase.failed).sum();
        unavailable.get_or_create(&labels(None)).set(i64::from(down));
        failures.get_or_create(&labels(None)).set(i64::from(failed));
        budget.get_or_create(&labels(None)).set(i64::from(rollout.failure_budget));
    }
    registry.register("comfyfleet_rollout_machines", "Machines of each open rollout, by state", machines);
    registry.register(
        "comfyfleet_rollout_unavailable",
        "Machines of each open rollout that cannot render now (activating)",
        unavailable,
    );
    registry.register("comfyfleet_rollout_failures", "Machines that failed in each open rollout", failures);
    registry.register(
        "comfyfleet_rollout_failure_budget",
        "Failures each open rollout tolerates before it pauses",
        budget,
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gpu_products_are_written_as_gpu_feature_discovery_does() {
        assert_eq!(gfd_product("NVIDIA GeForce RTX 4090"), "NVIDIA-GeForce-RTX-4090");
        assert_eq!(gfd_product("NVIDIA H100 80GB HBM3"), "NVIDIA-H100-80GB-HBM3");
    }
}
