//! Following machines as they converge on an assignment: `rollout start --wait` and
//! `machines rollback --wait` poll the controller every 500 ms and print one line per
//! machine whenever its phase or running step changes, until every machine is active,
//! prepared or failed, or the time limit passes.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use comfyfleet_config::convergence::{OptimizationState, StepState};
use comfyfleet_config::{ConvergenceReport, Phase};
use comfyfleet_proto::v1 as pb;

use super::status_error;
use crate::client::Fleet;
use crate::machine_view::MachineView;

const POLL_INTERVAL: Duration = Duration::from_millis(500);
/// Up to this many machines are asked for one by one; more are read as list pages.
const ASK_ONE_BY_ONE: usize = 50;

/// How long `--wait` waits, as the operator wrote it (`30m`) and as a duration.
#[derive(Debug, Clone)]
pub struct WaitLimit {
    pub duration: Duration,
    pub text: String,
}

pub fn parse_wait_limit(text: &str) -> Result<WaitLimit, String> {
    let duration = comfyfleet_config::duration::parse_positive(text).map_err(|e| e.to_string())?;
    Ok(WaitLimit { duration, text: text.trim().to_owned() })
}

/// Where progress lines go: standard output, or standard error when standard output
/// carries JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Printer {
    Stdout,
    Stderr,
}

impl Printer {
    pub fn line(self, text: &str) {
        let text = text.trim_end_matches('\n');
        match self {
            Printer::Stdout => println!("{text}"),
            Printer::Stderr => eprintln!("{text}"),
        }
    }
}

/// A machine that was assigned `generation`.
#[derive(Debug, Clone)]
pub struct Awaited {
    pub id: String,
    pub hostname: String,
    pub generation: u64,
}

/// Where one machine stands with the generation it was assigned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Progress {
    /// A phase (`preparing`, `active` …), or `pending` before the agent has reported on it.
    pub phase: String,
    pub detail: String,
    pub settled: Option<Settled>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settled {
    Active,
    Prepared,
    Failed,
}

impl Progress {
    fn new(phase: &str, detail: String, settled: Option<Settled>) -> Self {
        Self { phase: phase.to_owned(), detail, settled }
    }

    /// `<id>  <hostname>  <phase>  <detail>`.
    pub fn line(&self, machine: &Awaited) -> String {
        let line = format!("{}  {}  {}  {}", machine.id, machine.hostname, self.phase, self.detail);
        line.trim_end().to_owned()
    }

    /// Nothing worth a line: assigned, online, and the agent has not reported yet.
    fn is_quiet(&self) -> bool {
        self.phase == "pending" && self.detail.is_empty()
    }
}

/// Where `machine` stands with `generation`.
pub fn progress(machine: &MachineView, generation: u64) -> Progress {
    if machine.revoked_at.is_some() {
        return Progress::new("failed", "revoked by an operator".to_owned(), Some(Settled::Failed));
    }
    let Some(report) = machine.report.as_ref().filter(|report| report.generation >= generation) else {
        let detail = if machine.online {
            String::new()
        } else {
            "offline: it gets the assignment when its agent reconnects".to_owned()
        };
        return Progress::new("pending", detail, None);
    };
    let phase = report.phase.as_str();
    match report.phase {
        Phase::Active => Progress::new(phase, converged(machine, report), Some(Settled::Active)),
        Phase::Prepared => Progress::new(phase, converged(machine, report), Some(Settled::Prepared)),
        Phase::Failed => Progress::new(phase, failure(report), Some(Settled::Failed)),
        Phase::Preparing | Phase::Activating | Phase::Idle => {
            let running = report.steps.iter().find(|step| step.state == StepState::Running);
            Progress::new(phase, running.map(|step| step.name.clone()).unwrap_or_default(), None)
        }
    }
}

/// `2.8.0+cu128  sageattention 2.2.0 verified, triton 3.4.0 verified`.
fn converged(machine: &MachineView, report: &ConvergenceReport) -> String {
    let installed = machine.environments.as_ref().and_then(|environments| {
        environments
            .installed
            .iter()
            .find(|environment| Some(&environment.revision_id) == report.revision_id.as_ref())
    });
    let torch = installed
        .map(|environment| environment.torch_version.clone())
        .filter(|torch| !torch.is_empty())
        .or_else(|| machine.assignment.as_ref().map(|assignment| assignment.torch.clone()))
        .unwrap_or_default();
    let optimizations: Vec<String> = report
        .optimizations
        .iter()
        .map(|outcome| {
            let state = outcome.state.as_str();
            if outcome.version.is_empty() || outcome.state == OptimizationState::Skipped {
                format!("{} {state}", outcome.name)
            } else {
                format!("{} {} {state}", outcome.name, outcome.version)
            }
        })
        .collect();
    format!("{torch}  {}", optimizations.join(", ")).trim().to_owned()
}

/// `optimizations: sha256 mismatch for …`: the failed step and the error, on one line.
fn failure(report: &ConvergenceReport) -> String {
    let step = report.steps.iter().find(|step| step.state == StepState::Failed);
    let error =
        if report.error.is_empty() { step.map_or("", |step| step.detail.as_str()) } else { &report.error };
    let error = error.lines().map(str::trim).filter(|line| !line.is_empty()).collect::<Vec<_>>().join("; ");
    match step {
        // Agents often name the step in the error already.
        Some(step) if !error.starts_with(&format!("{}: ", step.name)) => format!("{}: {error}", step.name),
        _ => error,
    }
}

/// Polls until every machine settles; returns the final line, or an error (exit 1) if
/// any failed or the limit passed first.
pub async fn wait(
    client: &mut Fleet,
    label: &str,
    machines: &[Awaited],
    limit: &WaitLimit,
    printer: Printer,
) -> anyhow::Result<String> {
    if machines.is_empty() {
        return Ok(format!("{label}: nothing to wait for: no machine was assigned\n"));
    }
    printer.line(&format!(
        "waiting for {} machine{} to converge on {label} (at most {})",
        machines.len(),
        if machines.len() == 1 { "" } else { "s" },
        limit.text
    ));
    let deadline = Instant::now() + limit.duration;
    let mut last: HashMap<&str, Progress> = HashMap::new();
    loop {
        let unsettled = unsettled_after(machines, &last);
        if unsettled.is_empty() {
            return summary(label, machines, &last);
        }
        match fetch(client, &unsettled).await {
            Ok(found) => {
                for machine in unsettled {
                    let Some(wire) = found.get(&machine.id) else { continue };
                    let now = progress(&MachineView::from_wire(wire.clone())?, machine.generation);
                    if last.get(machine.id.as_str()) != Some(&now) && !now.is_quiet() {
                        printer.line(&now.line(machine));
                    }
                    last.insert(&machine.id, now);
                }
            }
            // A controller restarting mid-rollout: keep asking until the limit.
            Err(status)
                if matches!(status.code(), tonic::Code::Unavailable | tonic::Code::DeadlineExceeded) => {}
            Err(status) => return Err(status_error(status)),
        }
        let now = Instant::now();
        if now >= deadline && !unsettled_after(machines, &last).is_empty() {
            return Err(timed_out(label, machines, &last, limit));
        }
        tokio::time::sleep(POLL_INTERVAL.min(deadline.saturating_duration_since(now))).await;
    }
}

fn unsettled_after<'a>(machines: &'a [Awaited], last: &HashMap<&str, Progress>) -> Vec<&'a Awaited> {
    machines
        .iter()
        .filter(|machine| last.get(machine.id.as_str()).is_none_or(|progress| progress.settled.is_none()))
        .collect()
}

/// Where each machine ended, one line each: `<id>  <hostname>  active  2.8.0+cu128
/// sageattention 2.2.0 verified, …` — which optimisations really work where.
pub async fn outcome_lines(client: &mut Fleet, machines: &[Awaited]) -> Result<String, tonic::Status> {
    let refs: Vec<&Awaited> = machines.iter().collect();
    let found = fetch(client, &refs).await?;
    let mut text = String::new();
    for machine in machines {
        let Some(wire) = found.get(&machine.id) else { continue };
        let Ok(view) = MachineView::from_wire(wire.clone()) else { continue };
        text.push_str(&progress(&view, machine.generation).line(machine));
        text.push('\n');
    }
    Ok(text)
}

/// Which machines have not settled, and where each stands.
fn timed_out(
    label: &str,
    machines: &[Awaited],
    last: &HashMap<&str, Progress>,
    limit: &WaitLimit,
) -> anyhow::Error {
    let waiting: Vec<String> = unsettled_after(machines, last)
        .into_iter()
        .map(|machine| match last.get(machine.id.as_str()) {
            Some(progress) => progress.line(machine).replace("  ", " "),
            None => format!("{} {}", machine.id, machine.hostname),
        })
        .collect();
    anyhow::anyhow!(
        "timed out after {}: {} of {} machines have not converged on {label} ({}); they carry on without this \
         command: follow them with `comfyfleet machines show ID`",
        limit.text,
        waiting.len(),
        machines.len(),
        waiting.join("; ")
    )
}

/// The machines as the controller has them now, by id.
async fn fetch(
    client: &mut Fleet,
    machines: &[&Awaited],
) -> Result<HashMap<String, pb::Machine>, tonic::Status> {
    let mut found = HashMap::new();
    if machines.len() <= ASK_ONE_BY_ONE {
        for machine in machines {
            let wire =
                client.get_machine(pb::GetMachineRequest { id: machine.id.clone() }).await?.into_inner();
            found.insert(wire.id.clone(), wire);
        }
        return Ok(found);
    }
    let mut page_token = String::new();
    loop {
        let request = pb::ListMachinesRequest {
            page_size: 500,
            page_token,
            include_revoked: true,
            selector: String::new(),
        };
        let page = client.list_machines(request).await?.into_inner();
        found.extend(page.machines.into_iter().map(|machine| (machine.id.clone(), machine)));
        if page.next_page_token.is_empty() {
            return Ok(found);
        }
        page_token = page.next_page_token;
    }
}

fn summary(label: &str, machines: &[Awaited], last: &HashMap<&str, Progress>) -> anyhow::Result<String> {
    let count = |wanted: Settled| last.values().filter(|progress| progress.settled == Some(wanted)).count();
    let (active, prepared, failed) =
        (count(Settled::Active), count(Settled::Prepared), count(Settled::Failed));
    let line = format!("{label}: {active} active, {prepared} prepared, {failed} failed");
    if failed == 0 {
        return Ok(format!("{line}\n"));
    }
    let names: Vec<String> = machines
        .iter()
        .filter(|machine| last.get(machine.id.as_str()).is_some_and(|p| p.settled == Some(Settled::Failed)))
        .map(|machine| format!("{} ({})", machine.id, machine.hostname))
        .collect();
    anyhow::bail!(
        "{line}: {}; `comfyfleet machines show ID` shows each step and its output, and `comfyfleet rollout start` \
         again retries",
        names.join(", ")
    )
}

#[cfg(test)]
mod tests;
