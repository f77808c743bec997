//! The `verify` step: the environment's own Python says what it has (see
//! `verify.py`), and the agent holds that against the plan and this machine's GPUs:
//! torch is the planned version and CUDA build, `torch.cuda.get_arch_list()` covers
//! the SM of every GPU, each optimisation imports, and each optimisation with a
//! smoke call runs it on every GPU (importing a module proves nothing about its
//! kernels: a wheel without code for one GPU fails there, not at the first render).
//! A fatal optimisation that fails fails the environment; an optional one is
//! recorded as failed, naming the GPU, and its ComfyUI arguments are not passed.

use std::time::Duration;

use comfyfleet_config::convergence::OptimizationState;
use comfyfleet_config::inventory::CudaVersion;
use comfyfleet_config::resolve::GpuFacts;
use comfyfleet_config::spec::catalog::ArchSet;
use serde::Deserialize;

use super::optimizations::{distributions, load};
use super::{Build, StepOutcome, StepResult};
use crate::command::{self, Invocation};
use crate::complete_record::TorchFacts;
use crate::report::StepHandle;

const VERIFY_SCRIPT: &str = include_str!("verify.py");
const VERIFY_TIMEOUT: Duration = Duration::from_secs(300);
const MARKER: &str = "COMFYFLEET-VERIFY ";

/// What verification established, for the completion record.
#[derive(Debug, Clone)]
pub struct Verification {
    pub python: String,
    pub torch: TorchFacts,
}

#[derive(Debug, Deserialize)]
struct Output {
    python: String,
    torch: Option<TorchOutput>,
    torch_error: Option<String>,
    optimizations: std::collections::BTreeMap<String, ImportOutput>,
}

#[derive(Debug, Deserialize)]
struct TorchOutput {
    version: String,
    cuda: Option<String>,
    #[serde(default)]
    cuda_available: bool,
    #[serde(default)]
    arch_list: Vec<String>,
    cuda_error: Option<String>,
}

#[derive(Debug, Deserialize)]
struct ImportOutput {
    ok: bool,
    error: Option<String>,
    version: Option<String>,
    module_version: Option<String>,
    #[serde(default)]
    smoke: Vec<SmokeOutput>,
}

/// One smoke call on one GPU (its CUDA ordinal, which `CUDA_DEVICE_ORDER=PCI_BUS_ID`
/// makes NVML's index).
#[derive(Debug, Deserialize)]
struct SmokeOutput {
    gpu: u32,
    error: Option<String>,
}

pub async fn run(build: &mut Build<'_>, step: &mut StepHandle) -> StepResult {
    if build.outcomes.is_empty() {
        build.outcomes = load(build);
    }
    let plan = &build.assignment.plan;
    let distributions = distributions(plan);
    let to_import: Vec<serde_json::Value> = plan
        .optimizations
        .iter()
        .filter(|planned| {
            build.outcomes.iter().any(|outcome| outcome.name == planned.name && outcome.state != OptimizationState::Failed)
        })
        .map(|planned| {
            serde_json::json!({
                "name": planned.name,
                "import": planned.import,
                "distribution": distributions.get(&planned.name).cloned().unwrap_or_else(|| planned.name.clone()),
                "smoke": planned.smoke,
            })
        })
        .collect();
    let request = serde_json::json!({ "optimizations": to_import, "gpus": build.gpus.len() }).to_string();
    let invocation = Invocation::new(build.env.python())
        .args(["-I", "-c", VERIFY_SCRIPT])
        .arg(request)
        .cwd(&build.env.path)
        // CUDA orders devices fastest first; NVML (and so the inventory) by PCI bus.
        .env("CUDA_DEVICE_ORDER", "PCI_BUS_ID")
        .timeout(VERIFY_TIMEOUT);
    // The result line is kept whole (report tails cut long lines).
    let mut result = None;
    command::run(&invocation, &build.tools.environment, &mut |line| match line.strip_prefix(MARKER) {
        Some(json) => result = Some(json.to_owned()),
        None => step.line(line),
    })
    .await
    .map_err(|error| error.summary())?;
    let line = result.ok_or("the environment's Python printed no verification result")?;
    let output: Output = serde_json::from_str(&line)
        .map_err(|error| format!("the verification result is unreadable: {error}"))?;

    let torch = output.torch.ok_or_else(|| {
        format!(
            "torch does not import in the environment: {}",
            output.torch_error.as_deref().unwrap_or("unknown error")
        )
    })?;
    if torch.version != plan.torch {
        return Err(format!(
            "torch in the environment is {}, not the planned {}: something replaced it",
            torch.version, plan.torch
        ));
    }
    let cuda = torch.cuda.as_deref().and_then(|text| text.parse::<CudaVersion>().ok());
    if cuda != Some(plan.cuda_tag.cuda()) {
        return Err(format!(
            "torch {} reports CUDA {}, not the planned {}",
            torch.version,
            torch.cuda.as_deref().unwrap_or("none (a CPU build)"),
            plan.cuda_tag
        ));
    }
    let arch = ArchSet::parse_arch_list(&torch.arch_list)
        .map_err(|error| format!("torch.cuda.get_arch_list(): {error}"))?;
    let uncovered: Vec<String> = build
        .gpus
        .iter()
        .filter(|gpu| gpu.compute_capability.is_none_or(|cc| !arch.covers(cc)))
        .map(|gpu| {
            let sm = gpu.compute_capability.map_or("of unknown SM".to_owned(), |cc| format!("SM {cc}"));
            format!("{} is {sm}", gpu.describe())
        })
        .collect();
    if !uncovered.is_empty() {
        let why = match (&torch.cuda_error, torch.cuda_available) {
            (Some(error), _) => format!(" (CUDA failed: {error})"),
            (None, false) => " (torch cannot use CUDA on this machine: check the driver)".to_owned(),
            (None, true) => String::new(),
        };
        return Err(format!(
            "{}; torch {} here has kernels for [{}]{why}",
            uncovered.join(", "),
            torch.version,
            torch.arch_list.join(", ")
        ));
    }

    let mut summary =
        vec![format!("torch {} (CUDA {}) covers every GPU", torch.version, plan.cuda_tag.cuda())];
    let mut fatal = Vec::new();
    let gpus = build.gpus;
    for outcome in &mut build.outcomes {
        if outcome.state != OptimizationState::Pending {
            continue;
        }
        let smoke = plan
            .optimizations
            .iter()
            .find(|planned| planned.name == outcome.name)
            .and_then(|planned| planned.smoke.as_ref());
        let import = output.optimizations.get(&outcome.name);
        let checked = match import {
            Some(import) if import.ok => smoke_failures(gpus, import, smoke.map(|call| call.call.as_str())),
            other => Err(format!(
                "does not import: {}",
                other.and_then(|import| import.error.clone()).unwrap_or_else(|| "not checked".into())
            )),
        };
        match checked {
            Ok(ran) => {
                outcome.state = OptimizationState::Verified;
                outcome.version = import
                    .and_then(|import| import.version.clone())
                    .or_else(|| {
                        import.and_then(|import| import.module_version.clone()).filter(|v| !v.is_empty())
                    })
                    .unwrap_or_else(|| outcome.version.clone());
                outcome.detail = ran;
                summary.push(format!("{} {} verified", outcome.name, outcome.version));
            }
            Err(why) => {
                outcome.state = OptimizationState::Failed;
                outcome.detail.clone_from(&why);
                summary.push(format!("{} FAILED ({why})", outcome.name));
                if outcome.fatal {
                    fatal.push(format!("fatal optimization {} {why}", outcome.name));
                }
            }
        }
    }
    for outcome in build.outcomes.iter().filter(|outcome| outcome.state == OptimizationState::Failed) {
        if !summary.iter().any(|line| line.starts_with(&format!("{} ", outcome.name))) {
            summary.push(format!("{} FAILED ({})", outcome.name, outcome.detail));
        }
    }
    if !fatal.is_empty() {
        return Err(fatal.join("; "));
    }
    build.verified = Some(Verification {
        python: output.python,
        torch: TorchFacts { version: torch.version, cuda: torch.cuda, arch_list: torch.arch_list },
    });
    Ok(StepOutcome::done(summary.join("; ")))
}

/// "imports; sageattention.sageattn ran on GPUs 0–7", or which GPUs it failed on.
fn smoke_failures(gpus: &[GpuFacts], import: &ImportOutput, call: Option<&str>) -> Result<String, String> {
    let Some(call) = call else { return Ok("imports (no smoke call)".to_owned()) };
    let gpu = |index: u32| {
        gpus.iter().find(|gpu| gpu.index == index).map_or_else(
            || format!("GPU {index}"),
            |gpu| {
                let sm = gpu.compute_capability.map(|cc| format!(", SM {cc}")).unwrap_or_default();
                format!("GPU {index} ({}{sm})", gpu.name.as_deref().unwrap_or("unknown"))
            },
        )
    };
    let failures: Vec<String> = import
        .smoke
        .iter()
        .filter_map(|run| run.error.as_ref().map(|error| format!("{}: {error}", gpu(run.gpu))))
        .collect();
    if !failures.is_empty() {
        return Err(format!("{call} fails on {}", failures.join("; ")));
    }
    if import.smoke.len() < gpus.len() {
        return Err(format!("{call} ran on {} of {} GPUs", import.smoke.len(), gpus.len()));
    }
    let ran = match import.smoke.as_slice() {
        [] => "no GPU".to_owned(),
        [one] => format!("GPU {}", one.gpu),
        [first, .., last] => format!("GPUs {}–{}", first.gpu, last.gpu),
    };
    Ok(format!("imports; {call} ran on {ran}"))
}
