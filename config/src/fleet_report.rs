//! Reports over the fleet's hardware and software together: which GPUs, drivers and
//! CUDA versions there are, which environments run where, which optimisations really
//! work on which GPUs, and which machines drifted. Each is computed in one pass over
//! the machines' [`MachineFacts`] (after a `--where` selector picked them), so the CLI,
//! the web page and the metrics give the same counts.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::machine_facts::{MachineFacts, OptimizationOutcomeKind};

/// Which report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ReportKind {
    Gpus,
    Environments,
    Optimizations,
    Drift,
}

impl ReportKind {
    pub const ALL: [ReportKind; 4] =
        [ReportKind::Gpus, ReportKind::Environments, ReportKind::Optimizations, ReportKind::Drift];

    pub fn as_str(self) -> &'static str {
        match self {
            ReportKind::Gpus => "gpus",
            ReportKind::Environments => "environments",
            ReportKind::Optimizations => "optimizations",
            ReportKind::Drift => "drift",
        }
    }
}

impl fmt::Display for ReportKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ReportKind {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        ReportKind::ALL.into_iter().find(|kind| kind.as_str() == text).ok_or_else(|| {
            format!("`{text}` is not a report: choose gpus, environments, optimizations or drift")
        })
    }
}

/// One report: how many machines it covers and its rows, most common first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "report", rename_all = "kebab-case")]
pub enum FleetReport {
    Gpus { machines: u64, rows: Vec<GpuRow> },
    Environments { machines: u64, rows: Vec<EnvironmentRow> },
    Optimizations { machines: u64, rows: Vec<OptimizationRow> },
    Drift { machines: u64, rows: Vec<DriftRow> },
}

/// Machines and GPUs of one model × compute capability × driver × driver CUDA.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GpuRow {
    pub gpu: String,
    pub compute_capability: String,
    pub driver_version: String,
    pub cuda_driver_version: String,
    /// Machines with at least one such GPU.
    pub machines: u64,
    pub gpus: u64,
}

/// Machines whose current environment is `environment@revision` on `torch`, by the
/// phase of their latest report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnvironmentRow {
    /// `render-prod@3`; `-` for machines with nothing active.
    pub environment: String,
    pub torch: String,
    pub phase: String,
    pub machines: u64,
}

/// One optimisation on one GPU model: how many machines with that GPU have it
/// verified, failed, skipped or pending on their current environment, and the most
/// common reason it failed. A machine counts once per GPU model it has.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OptimizationRow {
    pub optimization: String,
    pub gpu: String,
    pub verified: u64,
    pub failed: u64,
    pub skipped: u64,
    pub pending: u64,
    /// The most common failure detail (its first line), empty when none failed.
    pub top_failure: String,
    /// How many machines failed with exactly that detail.
    pub top_failure_machines: u64,
}

/// A machine whose current environment differs from what verification recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DriftRow {
    pub machine: String,
    pub hostname: String,
    pub environment: String,
    pub drift: Vec<String>,
}

/// The longest failure reason a report carries.
const MAX_REASON: usize = 240;

impl FleetReport {
    /// `kind` over `machines`, in one pass.
    pub fn build<'a>(kind: ReportKind, machines: impl IntoIterator<Item = &'a MachineFacts>) -> FleetReport {
        Self::build_counted(kind, machines.into_iter().map(|machine| (machine, 1)))
    }

    /// As [`FleetReport::build`], where each `(facts, n)` stands for `n` machines with
    /// those facts: a fleet summary that keeps one copy of each distinct set of facts
    /// and how many machines have it builds its reports from that, not machine by
    /// machine. (Drift rows name a machine: give each drifted machine on its own.)
    pub fn build_counted<'a>(
        kind: ReportKind,
        machines: impl IntoIterator<Item = (&'a MachineFacts, u64)>,
    ) -> FleetReport {
        match kind {
            ReportKind::Gpus => gpus(machines),
            ReportKind::Environments => environments(machines),
            ReportKind::Optimizations => optimizations(machines),
            ReportKind::Drift => drift(machines),
        }
    }

    pub fn machines(&self) -> u64 {
        match self {
            FleetReport::Gpus { machines, .. }
            | FleetReport::Environments { machines, .. }
            | FleetReport::Optimizations { machines, .. }
            | FleetReport::Drift { machines, .. } => *machines,
        }
    }

    /// The report as a table: a header and rows of text (the CLI's table and csv, the
    /// web page).
    pub fn table(&self) -> (Vec<&'static str>, Vec<Vec<String>>) {
        match self {
            FleetReport::Gpus { rows, .. } => (
                vec![
                    "gpu",
                    "compute_capability",
                    "driver_version",
                    "cuda_driver_version",
                    "machines",
                    "gpus",
                ],
                rows.iter()
                    .map(|row| {
                        vec![
                            row.gpu.clone(),
                            row.compute_capability.clone(),
                            row.driver_version.clone(),
                            row.cuda_driver_version.clone(),
                            row.machines.to_string(),
                            row.gpus.to_string(),
                        ]
                    })
                    .collect(),
            ),
            FleetReport::Environments { rows, .. } => (
                vec!["environment", "torch", "phase", "machines"],
                rows.iter()
                    .map(|row| {
                        vec![
                            row.environment.clone(),
                            row.torch.clone(),
                            row.phase.clone(),
                            row.machines.to_string(),
                        ]
                    })
                    .collect(),
            ),
            FleetReport::Optimizations { rows, .. } => (
                vec![
                    "optimization",
                    "gpu",
                    "verified",
                    "failed",
                    "skipped",
                    "pending",
                    "top_failure",
                    "top_failure_machines",
                ],
                rows.iter()
                    .map(|row| {
                        vec![
                            row.optimization.clone(),
                            row.gpu.clone(),
                            row.verified.to_string(),
                            row.failed.to_string(),
                            row.skipped.to_string(),
                            row.pending.to_string(),
                            row.top_failure.clone(),
                            row.top_failure_machines.to_string(),
                        ]
                    })
                    .collect(),
            ),
            FleetReport::Drift { rows, .. } => (
                vec!["machine", "hostname", "environment", "drift"],
                rows.iter()
                    .map(|row| {
                        vec![
                            row.machine.clone(),
                            row.hostname.clone(),
                            row.environment.clone(),
                            row.drift.join("; "),
                        ]
                    })
                    .collect(),
            ),
        }
    }
}

fn unknown(value: Option<String>) -> String {
    value.unwrap_or_else(|| "unknown".to_owned())
}

fn gpus<'a>(machines: impl IntoIterator<Item = (&'a MachineFacts, u64)>) -> FleetReport {
    let mut count = 0;
    // (model, cc, driver, cuda) → (machines, gpus)
    let mut groups: HashMap<(String, String, String, String), (u64, u64)> = HashMap::new();
    for (machine, weight) in machines {
        count += weight;
        let driver = unknown(machine.driver_version.clone());
        let cuda = unknown(machine.cuda_driver_version.map(|cuda| cuda.to_string()));
        let mut seen: Vec<(String, String)> = Vec::new();
        for gpu in &machine.gpus {
            let model = unknown(gpu.name.clone());
            let cc = unknown(gpu.compute_capability.map(|cc| cc.to_string()));
            let entry = groups.entry((model.clone(), cc.clone(), driver.clone(), cuda.clone())).or_default();
            entry.1 += weight;
            if !seen.contains(&(model.clone(), cc.clone())) {
                entry.0 += weight;
                seen.push((model, cc));
            }
        }
    }
    let mut rows: Vec<GpuRow> =
        groups
            .into_iter()
            .map(|((gpu, compute_capability, driver_version, cuda_driver_version), (machines, gpus))| {
                GpuRow { gpu, compute_capability, driver_version, cuda_driver_version, machines, gpus }
            })
            .collect();
    rows.sort_by(|a, b| {
        b.gpus.cmp(&a.gpus).then_with(|| {
            (&a.gpu, &a.compute_capability, &a.driver_version, &a.cuda_driver_version).cmp(&(
                &b.gpu,
                &b.compute_capability,
                &b.driver_version,
                &b.cuda_driver_version,
            ))
        })
    });
    FleetReport::Gpus { machines: count, rows }
}

fn current_environment(machine: &MachineFacts) -> String {
    match (&machine.software.environment, machine.software.revision) {
        (Some(environment), Some(revision)) => format!("{environment}@{revision}"),
        (Some(environment), None) => environment.clone(),
        _ => "-".to_owned(),
    }
}

fn environments<'a>(machines: impl IntoIterator<Item = (&'a MachineFacts, u64)>) -> FleetReport {
    let mut count = 0;
    let mut groups: HashMap<(String, String, String), u64> = HashMap::new();
    for (machine, weight) in machines {
        count += weight;
        let software = &machine.software;
        let torch = software.torch.clone().unwrap_or_else(|| "-".to_owned());
        let phase = software.phase.map_or("unreported", |phase| phase.as_str()).to_owned();
        *groups.entry((current_environment(machine), torch, phase)).or_default() += weight;
    }
    let mut rows: Vec<EnvironmentRow> = groups
        .into_iter()
        .map(|((environment, torch, phase), machines)| EnvironmentRow { environment, torch, phase, machines })
        .collect();
    rows.sort_by(|a, b| {
        b.machines
            .cmp(&a.machines)
            .then_with(|| (&a.environment, &a.torch, &a.phase).cmp(&(&b.environment, &b.torch, &b.phase)))
    });
    FleetReport::Environments { machines: count, rows }
}

#[derive(Default)]
struct OptimizationCounts {
    verified: u64,
    failed: u64,
    skipped: u64,
    pending: u64,
    reasons: HashMap<String, u64>,
}

/// A failure detail's first line, bounded, as the key reasons are counted by.
fn reason(detail: &str) -> String {
    let line = detail.lines().next().unwrap_or_default().trim();
    match line.char_indices().nth(MAX_REASON) {
        Some((at, _)) => format!("{}…", &line[..at]),
        None => line.to_owned(),
    }
}

fn optimizations<'a>(machines: impl IntoIterator<Item = (&'a MachineFacts, u64)>) -> FleetReport {
    let mut count = 0;
    let mut groups: BTreeMap<(String, String), OptimizationCounts> = BTreeMap::new();
    for (machine, weight) in machines {
        count += weight;
        let mut models: Vec<String> = machine.gpus.iter().map(|gpu| unknown(gpu.name.clone())).collect();
        models.sort_unstable();
        models.dedup();
        if models.is_empty() {
            models.push("none".to_owned());
        }
        for fact in &machine.software.optimizations {
            for model in &models {
                let counts = groups.entry((fact.name.clone(), model.clone())).or_default();
                match fact.outcome {
                    OptimizationOutcomeKind::Verified => counts.verified += weight,
                    OptimizationOutcomeKind::Failed => {
                        counts.failed += weight;
                        *counts.reasons.entry(reason(&fact.detail)).or_default() += weight;
                    }
                    OptimizationOutcomeKind::Skipped => counts.skipped += weight,
                    OptimizationOutcomeKind::Pending => counts.pending += weight,
                    OptimizationOutcomeKind::Absent => {}
                }
            }
        }
    }
    let rows = groups
        .into_iter()
        .map(|((optimization, gpu), counts)| {
            let (top_failure, top_failure_machines) = counts
                .reasons
                .into_iter()
                .max_by(|(a_reason, a), (b_reason, b)| a.cmp(b).then_with(|| b_reason.cmp(a_reason)))
                .unwrap_or_default();
            OptimizationRow {
                optimization,
                gpu,
                verified: counts.verified,
                failed: counts.failed,
                skipped: counts.skipped,
                pending: counts.pending,
                top_failure,
                top_failure_machines,
            }
        })
        .collect();
    FleetReport::Optimizations { machines: count, rows }
}

fn drift<'a>(machines: impl IntoIterator<Item = (&'a MachineFacts, u64)>) -> FleetReport {
    let mut count = 0;
    let mut rows = Vec::new();
    for (machine, weight) in machines {
        count += weight;
        if !machine.software.drift.is_empty() {
            rows.push(DriftRow {
                machine: machine.id.clone(),
                hostname: machine.hostname.clone(),
                environment: current_environment(machine),
                drift: machine.software.drift.clone(),
            });
        }
    }
    rows.sort_by(|a, b| a.hostname.cmp(&b.hostname).then_with(|| a.machine.cmp(&b.machine)));
    FleetReport::Drift { machines: count, rows }
}

#[cfg(test)]
mod tests;
