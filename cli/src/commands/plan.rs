//! `comfyfleet plan`: what every machine would get from a spec, before anything is
//! installed. The facts come from the live fleet or from a saved
//! `comfyfleet machines -o json`; both go through [`MachineView::facts`] and the same
//! resolver, so they give the same answer.

use std::collections::BTreeMap;
use std::path::Path;

use comfyfleet_config::comfyui_checkout;
use comfyfleet_config::resolve::{MachinePlan, OptimizationSource, Resolution, Resolver};
use comfyfleet_config::spec::model::{models_for, total_size};
use comfyfleet_config::spec::{DriverCompat, Spec};
use serde::Serialize;

use super::to_json;
use crate::OutputFormat;
use crate::format;
use crate::machine_view::MachineView;

#[derive(Debug, Serialize)]
pub struct PlanReport {
    pub environment: String,
    /// The digest of the spec as planned (before git refs are pinned).
    pub spec_digest: String,
    pub machines: Vec<MachineOutcome>,
    pub summary: Summary,
    /// What the spec will meet that it does not refuse (ComfyUI-Manager installs
    /// refused beyond loopback), and a checkout `plan` could not read.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct MachineOutcome {
    pub machine: String,
    pub hostname: String,
    pub gpus: String,
    /// `ok`, `incompatible` or `not-targeted`.
    pub status: &'static str,
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub plan: Option<PlanView>,
    /// Why the machine cannot run the spec: the fact that rules out each CUDA build.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub reasons: Vec<String>,
    /// The `[[model]]` entries the machine gets (none when it is not planned).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub models: Vec<ModelView>,
    /// Their total bytes, over those with a `size`.
    #[serde(skip_serializing_if = "is_zero")]
    pub model_bytes: u64,
    /// How many of them have no `size` yet (learned at apply).
    #[serde(skip_serializing_if = "is_zero")]
    pub models_without_size: u64,
}

fn is_zero(value: &u64) -> bool {
    *value == 0
}

#[derive(Debug, Serialize)]
pub struct ModelView {
    /// `<folder>/<name>` below `shared/models/`.
    pub path: String,
    pub sha256: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
}

#[derive(Debug, Serialize)]
pub struct PlanView {
    pub torch: String,
    pub cuda_tag: String,
    /// `minor` when the build runs on this machine's older driver only through
    /// NVIDIA's CUDA minor-version compatibility.
    #[serde(skip_serializing_if = "DriverCompat::is_exact")]
    pub driver_compat: DriverCompat,
    pub python: String,
    pub python_tag: String,
    pub torch_index: String,
    pub packages: Vec<String>,
    pub optimizations: Vec<OptimizationView>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub skipped: Vec<SkippedView>,
    pub comfyui_args: Vec<String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub comfyui_args_when_verified: BTreeMap<String, Vec<String>>,
    /// What the checkout does with this plan: "comfy-kitchen CUDA ops off: torch …".
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct OptimizationView {
    pub name: String,
    pub version: String,
    pub fatal: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub index: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub requirement: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct SkippedView {
    pub name: String,
    pub reason: String,
}

#[derive(Debug, Default, Serialize)]
pub struct Summary {
    pub machines: usize,
    pub ok: usize,
    pub incompatible: usize,
    pub not_targeted: usize,
    /// Machines per chosen CUDA build.
    pub cuda: BTreeMap<String, usize>,
}

impl From<&MachinePlan> for PlanView {
    fn from(plan: &MachinePlan) -> Self {
        PlanView {
            torch: plan.torch.clone(),
            cuda_tag: plan.cuda_tag.to_string(),
            driver_compat: plan.driver_compat,
            python: plan.python.to_string(),
            python_tag: plan.python_tag.clone(),
            torch_index: plan.torch_index.clone(),
            packages: plan.packages.iter().map(|p| format!("{}=={}", p.name, p.version)).collect(),
            optimizations: plan
                .optimizations
                .iter()
                .map(|o| {
                    let mut view = OptimizationView {
                        name: o.name.clone(),
                        version: o.version.clone(),
                        fatal: o.fatal,
                        url: None,
                        sha256: None,
                        index: None,
                        requirement: None,
                    };
                    match &o.source {
                        OptimizationSource::Wheel { url, sha256, .. } => {
                            view.url = Some(url.clone());
                            view.sha256 = Some(sha256.clone());
                        }
                        OptimizationSource::Index { url, requirement } => {
                            view.index = Some(url.clone());
                            view.requirement = Some(requirement.clone());
                        }
                    }
                    view
                })
                .collect(),
            skipped: plan
                .skipped
                .iter()
                .map(|s| SkippedView { name: s.name.clone(), reason: s.reason.clone() })
                .collect(),
            comfyui_args: plan.comfyui_args.clone(),
            comfyui_args_when_verified: plan.comfyui_args_when_verified.clone(),
            notes: Vec::new(),
        }
    }
}

/// [`plan`] with what ComfyUI's checkout at the spec's ref says of each machine's
/// plan (its `requirements.txt`, read with git: comfy-kitchen below cu130).
pub fn plan_with_checkout(spec: &Spec, machines: &[MachineView]) -> anyhow::Result<PlanReport> {
    let mut report = plan(spec, machines)?;
    match crate::checkout::comfyui_requirements(spec) {
        Ok(requirements) => {
            let resolver = Resolver::new(spec);
            for (outcome, machine) in
                report.machines.iter_mut().zip(machines.iter().filter(|m| m.revoked_at.is_none()))
            {
                let Some(view) = outcome.plan.as_mut() else { continue };
                let facts = machine.facts().map_err(|e| anyhow::anyhow!(e))?;
                if let Resolution::Planned(plan) = resolver.resolve(&facts) {
                    view.notes.extend(comfyui_checkout::comfy_kitchen_note(&requirements, &plan));
                }
            }
        }
        Err(error) => report.warnings.push(format!("{error}; the checkout's notes are left out")),
    }
    Ok(report)
}

/// Resolves every machine (revoked ones are left out).
pub fn plan(spec: &Spec, machines: &[MachineView]) -> anyhow::Result<PlanReport> {
    let resolver = Resolver::new(spec);
    let mut summary = Summary::default();
    let mut outcomes = Vec::new();
    for machine in machines.iter().filter(|m| m.revoked_at.is_none()) {
        let facts = machine.facts().map_err(|e| anyhow::anyhow!(e))?;
        let resolution = resolver.resolve(&facts);
        summary.machines += 1;
        let mut outcome = MachineOutcome {
            machine: machine.id.clone(),
            hostname: machine.hostname.clone(),
            gpus: machine.gpu_summary(),
            status: resolution.status(),
            plan: None,
            reason: None,
            reasons: Vec::new(),
            models: Vec::new(),
            model_bytes: 0,
            models_without_size: 0,
        };
        let models = models_for(spec, &facts);
        match (&resolution, models) {
            (Resolution::Planned(_), Err(why)) => {
                summary.incompatible += 1;
                outcome.status = "incompatible";
                outcome.reason = Some(why);
            }
            (Resolution::Planned(plan), Ok(models)) => {
                summary.ok += 1;
                *summary.cuda.entry(plan.cuda_tag.to_string()).or_default() += 1;
                outcome.plan = Some(PlanView::from(plan.as_ref()));
                let (bytes, without_size) = total_size(models.iter().map(|(_, model)| *model));
                outcome.model_bytes = bytes;
                outcome.models_without_size = without_size as u64;
                outcome.models = models
                    .iter()
                    .map(|(_, model)| ModelView {
                        path: model.relative_path(),
                        sha256: model.sha256.as_ref().map(ToString::to_string).unwrap_or_default(),
                        size: model.size,
                    })
                    .collect();
            }
            (Resolution::Incompatible(why), _) => {
                summary.incompatible += 1;
                outcome.reason = Some(why.summary());
                outcome.reasons = why.reasons.clone();
            }
            (Resolution::NotTargeted, _) => summary.not_targeted += 1,
        }
        outcomes.push(outcome);
    }
    Ok(PlanReport {
        environment: spec.name.clone(),
        spec_digest: spec.digest().to_string(),
        machines: outcomes,
        summary,
        warnings: comfyui_checkout::warnings(spec),
    })
}

/// Reads the output of `comfyfleet machines -o json`.
pub fn read_facts(path: &Path) -> anyhow::Result<Vec<MachineView>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("cannot read the facts file {}: {e}", path.display()))?;
    serde_json::from_str(&text).map_err(|e| {
        anyhow::anyhow!(
            "{} is not the output of `comfyfleet machines -o json` ({e}); save it with `comfyfleet machines -o json > FILE`",
            path.display()
        )
    })
}

pub fn render(report: &PlanReport, output: OutputFormat) -> anyhow::Result<String> {
    match output {
        OutputFormat::Json => to_json(report),
        OutputFormat::Table | OutputFormat::Csv => Ok(table(report)),
    }
}

fn table(report: &PlanReport) -> String {
    let with_models = report.machines.iter().any(|m| !m.models.is_empty());
    let rows: Vec<Vec<String>> = report
        .machines
        .iter()
        .map(|m| {
            let (torch, detail) = match (&m.plan, &m.reason) {
                (Some(plan), _) => {
                    let mut parts: Vec<String> =
                        plan.optimizations.iter().map(|o| format!("{} {}", o.name, o.version)).collect();
                    parts.extend(plan.skipped.iter().map(|s| format!("no {}", s.name)));
                    parts.extend(plan.notes.iter().cloned());
                    (torch_column(plan), parts.join(", "))
                }
                (None, Some(reason)) => ("-".to_owned(), reason.clone()),
                (None, None) => ("-".to_owned(), "left out by the target selector".to_owned()),
            };
            let mut row = vec![
                m.machine.clone(),
                m.hostname.clone(),
                m.gpus.clone(),
                m.status.to_owned(),
                torch,
                detail,
            ];
            if with_models {
                row.push(models_column(m));
            }
            row
        })
        .collect();
    let mut header = vec!["MACHINE", "HOSTNAME", "GPUS", "STATUS", "TORCH", "OPTIMIZATIONS / REASON"];
    if with_models {
        header.push("MODELS");
    }
    let mut text = format::table(&header, &rows);
    text.push('\n');
    text.push_str(&summary_line(&report.environment, &report.summary));
    for warning in &report.warnings {
        text.push_str(&format!("warning: {warning}\n"));
    }
    text
}

/// `4 (24 GiB)`, `3 (9.5 GiB + 1 of unknown size)`, or `-`.
fn models_column(machine: &MachineOutcome) -> String {
    if machine.models.is_empty() {
        return "-".to_owned();
    }
    let mut text = format!("{} ({}", machine.models.len(), format::bytes(machine.model_bytes));
    if machine.models_without_size > 0 {
        text.push_str(&format!(" + {} of unknown size", machine.models_without_size));
    }
    text.push(')');
    text
}

/// `2.11.0+cu128`, or `2.11.0+cu128 (minor compat)` for a plan that relies on
/// NVIDIA's CUDA minor-version compatibility.
fn torch_column(plan: &PlanView) -> String {
    match plan.driver_compat {
        DriverCompat::Exact => plan.torch.clone(),
        DriverCompat::Minor => format!("{} (minor compat)", plan.torch),
    }
}

/// "render-prod: 7 machines: 5 ok, 1 incompatible, 1 not targeted; cu128 4, cu126 1".
pub fn summary_line(environment: &str, summary: &Summary) -> String {
    let mut text = format!(
        "{environment}: {} machines: {} ok, {} incompatible, {} not targeted",
        summary.machines, summary.ok, summary.incompatible, summary.not_targeted
    );
    if !summary.cuda.is_empty() {
        let mut by_cuda: Vec<(&String, &usize)> = summary.cuda.iter().collect();
        by_cuda.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
        let parts: Vec<String> = by_cuda.iter().map(|(tag, count)| format!("{tag} {count}")).collect();
        text.push_str(&format!("; {}", parts.join(", ")));
    }
    text.push('\n');
    text
}
