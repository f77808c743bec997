//! `comfyfleet machines show ID` as text: what the machine is, what it is assigned,
//! how far its agent got (every step, and the output of a failed one), and the
//! environments it has built.

use comfyfleet_config::assignment::MachineAssignment;
use comfyfleet_config::convergence::StepState;
use comfyfleet_config::spec::DriverCompat;
use comfyfleet_config::{ConvergenceReport, InstalledEnvironment, InstalledEnvironments};
use jiff::Timestamp;

use crate::format;
use crate::machine_view::MachineView;

const SHORT_COMMIT: usize = 12;

fn short(text: &str) -> &str {
    text.get(..SHORT_COMMIT).unwrap_or(text)
}

fn or_dash(value: Option<String>) -> String {
    value.filter(|v| !v.is_empty()).unwrap_or_else(|| "-".into())
}

pub fn describe(machine: &MachineView, now: Timestamp) -> String {
    let mut text = hardware(machine, now);
    text.push_str(&assignment(machine.assignment.as_ref()));
    text.push_str(&report(machine, now));
    text.push_str(&environments(machine.environments.as_ref()));
    text
}

/// `  key:  value` lines under a section heading, aligned.
fn section(heading: &str, lines: &[(&str, String)]) -> String {
    let width = lines.iter().map(|(key, _)| key.len()).max().unwrap_or(0) + 1;
    let mut text = format!("{heading}:\n");
    for (key, value) in lines {
        let mut value_lines = value.lines();
        text.push_str(&format!("  {:<width$}  {}\n", format!("{key}:"), value_lines.next().unwrap_or("")));
        for more in value_lines {
            text.push_str(&format!("  {:<width$}  {more}\n", ""));
        }
    }
    text
}

fn indented(table: &str, indent: &str) -> String {
    table.lines().map(|line| format!("{indent}{line}\n")).collect()
}

fn hardware(machine: &MachineView, now: Timestamp) -> String {
    let last_seen = machine.last_seen.as_deref().and_then(|at| at.parse::<Timestamp>().ok());
    let mut lines = vec![
        ("Machine", machine.id.clone()),
        ("Hostname", machine.hostname.clone()),
        ("Status", format!("{} (last seen {})", machine.status(), format::ago(last_seen, now))),
        ("Enrolled", machine.enrolled_at.clone()),
        ("Labels", or_dash(Some(machine.labels_with_sources()))),
        ("Problems", or_dash(Some(machine.problems.join("; ")))),
        (
            "Agent",
            format!(
                "{} from {}",
                or_dash(Some(machine.agent_version.clone())),
                or_dash(Some(machine.remote_address.clone()))
            ),
        ),
        (
            "OS",
            format!(
                "{} / {} / {}",
                or_dash(machine.os.clone()),
                or_dash(machine.kernel.clone()),
                or_dash(machine.arch.clone())
            ),
        ),
        ("CPU", format!("{} ({} cores)", or_dash(machine.cpu_model.clone()), machine.cpu_cores.unwrap_or(0))),
        ("Memory", machine.memory_total_bytes.map_or("-".into(), format::bytes)),
        ("Data dir free", machine.data_dir_free_bytes.map_or("-".into(), format::bytes)),
        (
            "NVIDIA",
            match machine.nvml_status.as_deref() {
                Some("ok") => format!(
                    "driver {}, CUDA {}",
                    or_dash(machine.driver_version.clone()),
                    or_dash(machine.cuda_driver_version.clone())
                ),
                Some(status) => format!("{status}: {}", or_dash(machine.nvml_detail.clone())),
                None => "not reported yet".into(),
            },
        ),
    ];
    if let Some(revoked) = &machine.revoked_at {
        lines.insert(3, ("Revoked", revoked.clone()));
    }
    let width = lines.iter().map(|(key, _)| key.len()).max().unwrap_or(0) + 1;
    let mut text: String =
        lines.iter().map(|(key, value)| format!("{:<width$} {value}\n", format!("{key}:"))).collect();
    text.push_str(&format!("GPUs: {}\n", machine.gpu_summary()));
    if !machine.gpus.is_empty() {
        let rows: Vec<Vec<String>> = machine
            .gpus
            .iter()
            .map(|gpu| {
                vec![
                    gpu.index.to_string(),
                    gpu.name.clone().unwrap_or_else(|| "?".into()),
                    gpu.compute_capability.clone().unwrap_or_else(|| "?".into()),
                    gpu.memory_total_bytes.map_or("?".into(), format::bytes),
                    gpu.pci_bus_id.clone().unwrap_or_else(|| "?".into()),
                    gpu.uuid.clone().unwrap_or_else(|| "?".into()),
                    gpu.errors.join("; "),
                ]
            })
            .collect();
        let table =
            format::table(&["INDEX", "NAME", "COMPUTE", "MEMORY", "PCI BUS", "UUID", "ERRORS"], &rows);
        text.push_str(&indented(&table, "  "));
    }
    text
}

fn assignment(assignment: Option<&MachineAssignment>) -> String {
    let Some(assignment) = assignment else {
        return "Assignment: none (`comfyfleet rollout start ENV --machines ID` assigns one)\n".to_owned();
    };
    let mode = if assignment.activate { "build and switch" } else { "build only" };
    section(
        "Assignment",
        &[
            ("revision", assignment.describe()),
            ("generation", assignment.generation.to_string()),
            ("reason", format!("{} ({mode})", assignment.reason)),
            (
                "assigned",
                format!("{} by {}", format::rfc3339(assignment.assigned_at), assignment.assigned_by),
            ),
            ("torch", planned_torch(assignment)),
        ],
    )
}

/// `2.11.0+cu128 (planned)`, saying when the build runs on this machine's older
/// driver only through CUDA minor-version compatibility.
fn planned_torch(assignment: &MachineAssignment) -> String {
    let torch = or_dash(Some(assignment.torch.clone()));
    match assignment.driver_compat {
        DriverCompat::Exact => format!("{torch} (planned)"),
        DriverCompat::Minor => {
            format!("{torch} (planned; runs on this driver through CUDA minor-version compatibility)")
        }
    }
}

fn report(machine: &MachineView, now: Timestamp) -> String {
    let Some(report) = &machine.report else {
        return "Report: none yet\n".to_owned();
    };
    let mut lines = vec![
        ("phase", report.phase.to_string()),
        ("generation", format!("{} ({})", report.generation, about(report))),
        (
            "updated",
            format!("{} ({})", format::rfc3339(report.updated_at), format::ago(Some(report.updated_at), now)),
        ),
    ];
    if let Some(assignment) = &machine.assignment
        && report.generation < assignment.generation
    {
        lines.push((
            "note",
            format!("about an earlier generation; the agent has not reported on {}", assignment.generation),
        ));
    }
    if !report.error.is_empty() {
        lines.push(("error", report.error.clone()));
    }
    let mut text = section("Report", &lines);
    if !report.steps.is_empty() {
        text.push_str(&steps(report));
    }
    if !report.optimizations.is_empty() {
        let rows: Vec<Vec<String>> = report
            .optimizations
            .iter()
            .map(|outcome| {
                vec![
                    outcome.name.clone(),
                    or_dash(Some(outcome.version.clone())),
                    outcome.state.as_str().to_owned(),
                    if outcome.fatal { "yes" } else { "no" }.to_owned(),
                    outcome.detail.replace('\n', "; "),
                ]
            })
            .collect();
        text.push_str("Optimizations:\n");
        text.push_str(&indented(
            &format::table(&["NAME", "VERSION", "STATE", "FATAL", "DETAIL"], &rows),
            "  ",
        ));
    }
    if !report.instances.is_empty() {
        text.push_str("Instances:\n");
        text.push_str(&indented(&instances(report), "  "));
    }
    text
}

/// One row per ComfyUI: its GPUs, port, pid, state and last health (first line).
fn instances(report: &ConvergenceReport) -> String {
    let rows: Vec<Vec<String>> = report
        .instances
        .iter()
        .map(|instance| {
            let gpus: Vec<String> = instance.gpus.iter().map(u32::to_string).collect();
            vec![
                instance.index.to_string(),
                if gpus.is_empty() { "all".to_owned() } else { gpus.join(",") },
                instance.port.to_string(),
                instance.pid.to_string(),
                instance.state.to_string(),
                instance.health.lines().next().unwrap_or("-").to_owned(),
            ]
        })
        .collect();
    format::table(&["INSTANCE", "GPUS", "PORT", "PID", "STATE", "HEALTH"], &rows)
}

/// `render-prod@2 (1a2b3c4d5e6f)`, or `nothing assigned` for an idle report.
fn about(report: &ConvergenceReport) -> String {
    match &report.revision_id {
        Some(id) => format!("{}@{} ({})", report.environment, report.revision_number, id.short()),
        None if report.environment.is_empty() => "nothing assigned".to_owned(),
        None => format!("{}@{}", report.environment, report.revision_number),
    }
}

/// The steps table; a failed step's output follows its row, indented.
fn steps(report: &ConvergenceReport) -> String {
    let rows: Vec<Vec<String>> = report
        .steps
        .iter()
        .map(|step| {
            let duration = match step.state {
                StepState::Pending => "-".to_owned(),
                _ => format::duration_ms(step.duration_ms),
            };
            let detail = step.detail.lines().next().unwrap_or("").to_owned();
            vec![step.name.clone(), step.state.as_str().to_owned(), duration, detail]
        })
        .collect();
    let table = format::table(&["STEP", "STATE", "DURATION", "DETAIL"], &rows);
    let mut lines = table.lines();
    let mut text = format!("  {}\n", lines.next().unwrap_or(""));
    for (step, line) in report.steps.iter().zip(lines) {
        text.push_str(&format!("  {line}\n"));
        if step.state == StepState::Failed {
            let more_detail = step.detail.lines().skip(1);
            for extra in more_detail.chain(step.output_tail.lines()) {
                text.push_str(&format!("      {extra}\n"));
            }
        }
    }
    text
}

fn environments(environments: Option<&InstalledEnvironments>) -> String {
    let Some(environments) = environments else {
        return "Environments: not reported yet\n".to_owned();
    };
    if environments.installed.is_empty() {
        return "Environments: none built\n".to_owned();
    }
    let mut text = "Environments:\n".to_owned();
    for environment in &environments.installed {
        text.push_str(&installed(environment));
    }
    text
}

fn installed(environment: &InstalledEnvironment) -> String {
    let role = if environment.current { "current" } else { "kept" };
    let activated = environment
        .activated_at
        .map_or_else(|| "never activated".to_owned(), |at| format!("activated {}", format::rfc3339(at)));
    let mut text = format!(
        "  {}@{} ({})  {role}, {activated}\n",
        environment.environment,
        environment.revision_number,
        environment.revision_id.short()
    );
    text.push_str(&format!(
        "    python {}, torch {}, ComfyUI {}\n",
        or_dash(Some(environment.python_version.clone())),
        or_dash(Some(environment.torch_version.clone())),
        or_dash(Some(short(&environment.comfyui_commit).to_owned()))
    ));
    if !environment.optimizations.is_empty() {
        let packages: Vec<String> = environment
            .optimizations
            .iter()
            .map(|package| {
                let version = if package.version.is_empty() { "not installed" } else { &package.version };
                let verified = if package.verified { "verified" } else { "not verified" };
                format!("{} {version} ({verified})", package.name)
            })
            .collect();
        text.push_str(&format!("    optimizations: {}\n", packages.join(", ")));
    }
    if !environment.custom_nodes.is_empty() {
        let nodes: Vec<String> = environment
            .custom_nodes
            .iter()
            .map(|node| format!("{} {}", node.name, short(&node.commit)))
            .collect();
        text.push_str(&format!("    custom nodes: {}\n", nodes.join(", ")));
    }
    for drift in &environment.drift {
        text.push_str(&format!("    drift: {drift}\n"));
    }
    text
}

#[cfg(test)]
mod tests;
