//! The pages themselves. The overview counts from the fleet's summary in memory; the
//! others read what they show from the store at request time; the machines table is
//! filtered and paged on the server.

use super::*;

/// The most machines the rollout page lists.
const ROLLOUT_MACHINES: usize = 200;

fn gib(bytes: u64) -> String {
    #[allow(clippy::cast_precision_loss)]
    let gib = bytes as f64 / 1_073_741_824.0;
    format!("{gib:.0} GiB")
}

pub async fn overview(viewer: Viewer, State(web): State<Shared>) -> Response {
    let state = &web.state;
    let summary = state.fleet.summary(&state.presence);
    let (machines, online) = (summary.machines(), summary.online);
    let gpus: u64 = summary.classes.iter().map(|(facts, machines)| facts.gpus.len() as u64 * machines).sum();
    let drifted = summary.count(|facts| !facts.software.drift.is_empty());
    let failed = summary.count(|facts| facts.software.phase == Some(comfyfleet_config::Phase::Failed));
    let gpu_report = summary.report(ReportKind::Gpus);
    let environment_report = summary.report(ReportKind::Environments);
    let rollouts: Vec<pb::Rollout> = crate::use_cases::rollouts::api::open(state)
        .await
        .map(|views| views.iter().map(rollout_to_wire).collect())
        .unwrap_or_default();
    let content = html! {
        h1 { "Fleet" }
        section.cards {
            div.card { strong #count-machines { (machines) } span { "machines" } }
            div.card { strong #count-online { (online) } span { "online" } }
            div.card { strong { (summary.offline) } span { "offline" } }
            div.card { strong #count-gpus { (gpus) } span { "GPUs" } }
            div.card { a href="/machines?where=phase%20%3D%3D%20failed" { strong { (failed) } span { "failed" } } }
            div.card { a href="/machines?where=drift%20%3D%3D%20true" { strong { (drifted) } span { "drifted" } } }
        }
        @if !rollouts.is_empty() {
            h2 { "Rollouts in progress" }
            @for rollout in &rollouts {
                (rollout_summary(rollout))
            }
        }
        h2 { "GPUs, drivers and CUDA" }
        (report_table(&gpu_report))
        h2 { "Environments" }
        (report_table(&environment_report))
    };
    layout("Fleet", Some(&viewer), content).into_response()
}

fn rollout_summary(rollout: &pb::Rollout) -> Markup {
    let counts = rollout.counts.unwrap_or_default();
    let failed: u32 = rollout.phases.iter().map(|phase| phase.failed).sum();
    let activating: u32 = rollout.phases.iter().map(|phase| phase.activating).sum();
    html! {
        div.rollout {
            a href={ "/rollouts/" (rollout.id) } { (rollout_label(rollout)) }
            " " span.state { (rollout_state(rollout)) }
            " " span.muted { (counts.active) " of " (counts.machines) " active, " (failed) " failed (budget " (rollout.failure_budget) ")" }
            (progress_bar(counts.machines, counts.active, failed, activating))
        }
    }
}

#[derive(Deserialize)]
pub struct MachinesQuery {
    #[serde(default, rename = "where")]
    selector: String,
    #[serde(default)]
    after: String,
}

pub async fn machines(
    viewer: Viewer,
    State(web): State<Shared>,
    Query(query): Query<MachinesQuery>,
) -> Response {
    let state = &web.state;
    let selector = fleet_view::query(&query.selector);
    let after = parse_machine_id(&query.after);
    let (page, next, error) = match &selector {
        Ok(selector) => match fleet_view::page(state, selector.as_ref(), after, PAGE, false).await {
            Ok((page, next)) => (page, next, None),
            Err(error) => return problem(&viewer, StatusCode::INTERNAL_SERVER_ERROR, &error.to_string()),
        },
        Err(message) => (Vec::new(), None, Some(message.clone())),
    };
    let next_link = next.map(|id| {
        format!(
            "/machines?where={}&after={}",
            super::encode_query(&query.selector),
            super::encode_query(id.as_str())
        )
    });
    let content = html! {
        h1 { "Machines" }
        form.filter method="get" action="/machines" {
            input #where type="text" name="where" value=(query.selector) size="80"
                placeholder="gpu.compute >= 8.9 && opt.sageattention != verified" aria-label="selector";
            button type="submit" { "Filter" }
            @if !query.selector.is_empty() { a href="/machines" { "clear" } }
        }
        p.hint { "Fields: gpu.compute, gpu.memory, gpu.name, gpu.count, driver.cuda, driver.version, host.os, host.arch, "
            "machine.id, machine.hostname, labels (pool == render-a), env.name, env.revision, env.torch, env.cuda, "
            "env.python, phase, drift, opt.NAME (verified, failed, skipped, pending, absent)." }
        @if let Some(error) = &error { p.error #selector-error { (error) } }
        @if error.is_none() {
            p.muted #machine-count { (page.len()) " machines on this page" @if !query.selector.is_empty() { " matching " code { (query.selector) } } }
            table #machines {
                thead { tr { th { "hostname" } th { "id" } th { "status" } th { "GPUs" } th { "driver" } th { "CUDA" }
                    th { "environment" } th { "torch" } th { "phase" } th { "drift" } th { "labels" } } }
                tbody {
                    @for machine in &page {
                        @let software = &machine.facts.software;
                        tr {
                            td { a href={ "/machines/" (machine.record.id) } { (machine.record.hostname) } }
                            td.mono { (machine.record.id) }
                            td { span class={ "status " (status_of(machine)) } { (status_of(machine)) } }
                            td { (gpu_summary(machine)) }
                            td { (machine.facts.driver_version.as_deref().unwrap_or("-")) }
                            td { (machine.facts.cuda_driver_version.map_or_else(|| "-".to_owned(), |cuda| cuda.to_string())) }
                            td { @match (&software.environment, software.revision) {
                                (Some(environment), Some(revision)) => { (environment) "@" (revision) },
                                _ => { "-" },
                            } }
                            td { (software.torch.as_deref().unwrap_or("-")) }
                            td { (software.phase.map_or("-", |phase| phase.as_str())) }
                            td { @if software.drift.is_empty() { "" } @else { span.warn { "drifted" } } }
                            td.labels { (machine.record.labels.as_map().iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(", ")) }
                        }
                    }
                }
            }
            p.pages {
                @if !query.after.is_empty() {
                    a href={ "/machines?where=" (super::encode_query(&query.selector)) } { "← First page" } " "
                }
                @if let Some(link) = &next_link { a.next href=(link) { "Next " (PAGE) " →" } }
            }
        }
    };
    let status = if error.is_some() { StatusCode::BAD_REQUEST } else { StatusCode::OK };
    (status, layout("Machines", Some(&viewer), content)).into_response()
}

pub async fn machine(viewer: Viewer, State(web): State<Shared>, Path(id): Path<String>) -> Response {
    let state = &web.state;
    let stored = match resolve_machine(state.store.as_ref(), &id).await {
        Ok(stored) => stored,
        Err(error) => return problem(&viewer, StatusCode::NOT_FOUND, &message(error)),
    };
    let machine = FleetMachine::new(machine_record(&state.presence, stored));
    let record = &machine.record;
    let inventory = record.inventory.as_ref();
    let host = inventory.map(|inventory| &inventory.host);
    let nvidia = inventory.map(|inventory| &inventory.nvidia);
    let software = &machine.facts.software;
    let content = html! {
        h1 { (record.hostname) " " span class={ "status " (status_of(&machine)) } { (status_of(&machine)) } }
        dl.facts {
            dt { "id" } dd.mono { (record.id) }
            dt { "last seen" } dd { (timestamp(record.last_seen)) }
            dt { "enrolled" } dd { (timestamp(Some(record.enrolled_at))) }
            dt { "agent" } dd { (record.agent_version) }
            dt { "labels" } dd { (record.labels.as_map().iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(", ")) }
            @if let Some(host) = host {
                dt { "OS" } dd { (host.os) " (" (host.kernel) ", " (host.arch) ")" }
                dt { "CPU" } dd { (host.cpu_model) ", " (host.cpu_cores) " cores, " (gib(host.memory_total_bytes)) }
            }
            @if let Some(nvidia) = nvidia {
                dt { "driver" } dd { (nvidia.driver_version.as_deref().unwrap_or("-")) ", CUDA "
                    (nvidia.cuda_driver_version.map_or_else(|| "-".to_owned(), |cuda| cuda.to_string())) }
                dt { "NVML" } dd { (nvidia.status.summary()) }
            }
        }
        h2 { "GPUs" }
        @match nvidia {
            Some(nvidia) if !nvidia.gpus.is_empty() => {
                table #gpus {
                    thead { tr { th { "#" } th { "name" } th { "compute" } th { "memory" } th { "uuid" } th { "PCI" } th { "errors" } } }
                    tbody { @for gpu in &nvidia.gpus { tr {
                        td { (gpu.index) }
                        td { (gpu.name.as_deref().unwrap_or("unreadable")) }
                        td { (gpu.compute_capability.map_or_else(|| "-".to_owned(), |cc| cc.to_string())) }
                        td { (gpu.memory_total_bytes.map_or_else(|| "-".to_owned(), gib)) }
                        td.mono { (gpu.uuid.as_deref().unwrap_or("-")) }
                        td.mono { (gpu.pci_bus_id.as_deref().unwrap_or("-")) }
                        td { (gpu.errors.join("; ")) }
                    } } }
                }
            },
            _ => { p.muted { "No GPUs reported." } },
        }
        h2 { "Environments" }
        @match inventory.map(|inventory| &inventory.environments) {
            Some(environments) if !environments.installed.is_empty() => {
                table #environments {
                    thead { tr { th { "environment" } th { "" } th { "torch" } th { "python" } th { "ComfyUI" } th { "optimisations" } th { "activated" } } }
                    tbody { @for environment in &environments.installed { tr {
                        td { (environment.environment) "@" (environment.revision_number) }
                        td { @if environment.current { strong { "current" } } }
                        td { (environment.torch_version) }
                        td { (environment.python_version) }
                        td.mono { (environment.comfyui_commit.get(..12).unwrap_or(&environment.comfyui_commit)) }
                        td { (environment.optimizations.iter().map(|package| format!("{} {} {}", package.name, package.version,
                                if package.verified { "✓" } else { "✗" })).collect::<Vec<_>>().join(", ")) }
                        td { (timestamp(environment.activated_at)) }
                    } } }
                }
            },
            _ => { p.muted { "No environment built yet." } },
        }
        @if !software.drift.is_empty() {
            h2 { "Drift" }
            p { "The current environment differs from what verification recorded:" }
            ul #drift { @for item in &software.drift { li { (item) } } }
        }
        @if let Some(report) = &record.report {
            h2 { "Latest report" }
            p { "generation " (report.generation) ", " (report.environment) "@" (report.revision_number) ", phase "
                strong #phase { (report.phase.as_str()) } ", " (timestamp(Some(report.updated_at))) }
            @if !report.error.is_empty() { p.error { (report.error) } }
            @if !report.optimizations.is_empty() {
                table #optimizations {
                    thead { tr { th { "optimisation" } th { "version" } th { "outcome" } th { "detail" } } }
                    tbody { @for outcome in &report.optimizations { tr {
                        td { (outcome.name) @if outcome.fatal { " (fatal)" } }
                        td { (outcome.version) }
                        td { span class={ "outcome " (outcome.state.as_str()) } { (outcome.state.as_str()) } }
                        td { (outcome.detail) }
                    } } }
                }
            }
            table #steps {
                thead { tr { th { "step" } th { "state" } th { "took" } th { "detail" } } }
                tbody { @for step in &report.steps {
                    tr {
                        td { (step.name) }
                        td { span class={ "step " (step.state.as_str()) } { (step.state.as_str()) } }
                        td { (format!("{:.1} s", step.duration_ms as f64 / 1000.0)) }
                        td {
                            (step.detail)
                            @if !step.output_tail.is_empty() {
                                details { summary { "output" } pre { (step.output_tail) } }
                            }
                        }
                    }
                } }
            }
        }
    };
    layout(&record.hostname, Some(&viewer), content).into_response()
}

pub async fn environments(viewer: Viewer, State(web): State<Shared>) -> Response {
    let summaries = match web.state.store.list_environments().await {
        Ok(summaries) => summaries,
        Err(error) => return problem(&viewer, StatusCode::INTERNAL_SERVER_ERROR, &error.to_string()),
    };
    let content = html! {
        h1 { "Environments" }
        @if summaries.is_empty() { p.muted { "No environment applied yet: " code { "comfyfleet apply -f SPEC" } } }
        @else {
            table {
                thead { tr { th { "environment" } th { "revisions" } th { "latest" } th { "created" } th { "by" } } }
                tbody { @for summary in &summaries { tr {
                    td { a href={ "/environments/" (super::encode_query(&summary.name)) } { (summary.name) } }
                    td { (summary.revisions) }
                    td.mono { (summary.latest.number) " (" (summary.latest.id.as_str().get(..12).unwrap_or_default()) ")" }
                    td { (timestamp(Some(summary.latest.created_at))) }
                    td { (summary.latest.created_by) }
                } } }
            }
        }
    };
    layout("Environments", Some(&viewer), content).into_response()
}

pub async fn environment(viewer: Viewer, State(web): State<Shared>, Path(name): Path<String>) -> Response {
    let revisions = match web.state.store.environment_revisions(&name).await {
        Ok(revisions) if !revisions.is_empty() => revisions,
        Ok(_) => return problem(&viewer, StatusCode::NOT_FOUND, &format!("no environment named {name}")),
        Err(error) => return problem(&viewer, StatusCode::INTERNAL_SERVER_ERROR, &error.to_string()),
    };
    let texts: Vec<String> = revisions
        .iter()
        .map(|revision| spec_text(&revision.environment, revision.number, &revision.spec_json))
        .collect();
    let content = html! {
        h1 { (name) }
        p.muted { (revisions.len()) " revisions, newest first. Each shows what changed from the one before." }
        @for (index, revision) in revisions.iter().enumerate().rev() {
            section.revision id={ "revision-" (revision.number) } {
                h2 { (name) "@" (revision.number) " " span.mono { (revision.id.as_str().get(..12).unwrap_or_default()) } }
                p.muted { (timestamp(Some(revision.created_at))) " by " (revision.created_by) }
                @if index == 0 {
                    details { summary { "spec" } pre { (texts[index]) } }
                } @else {
                    @let lines = diff_lines(&texts[index - 1], &texts[index],
                        &format!("{name}@{}", revisions[index - 1].number), &format!("{name}@{}", revision.number));
                    @if lines.is_empty() {
                        p { "Same spec as " (name) "@" (revisions[index - 1].number) "; only its locks differ (" code { "comfyfleet env diff" } " lists the packages)." }
                    } @else {
                        details open[index + 1 == revisions.len()] {
                            summary { "diff from " (name) "@" (revisions[index - 1].number) }
                            pre.diff { @for (kind, line) in &lines { span class=(kind) { (line) } "\n" } }
                        }
                    }
                }
            }
        }
    };
    layout(&name, Some(&viewer), content).into_response()
}

pub async fn rollouts(viewer: Viewer, State(web): State<Shared>) -> Response {
    let listed: Vec<pb::Rollout> = match api::list(&web.state, "", 50).await {
        Ok(listed) => listed.iter().map(rollout_to_wire).collect(),
        Err(error) => return problem(&viewer, StatusCode::INTERNAL_SERVER_ERROR, &message(error)),
    };
    let content = html! {
        h1 { "Rollouts" }
        @if listed.is_empty() { p.muted { "No rollout yet: " code { "comfyfleet rollout start ENV" } } }
        @for rollout in &listed { (rollout_summary(rollout)) }
    };
    layout("Rollouts", Some(&viewer), content).into_response()
}

pub async fn rollout(viewer: Viewer, State(web): State<Shared>, Path(id): Path<String>) -> Response {
    let state = &web.state;
    let rollout = match api::get(state, &id, true).await {
        Ok(rollout) => rollout_to_wire(&rollout),
        Err(error) => return problem(&viewer, StatusCode::NOT_FOUND, &message(error)),
    };
    let events: Vec<pb::RolloutEvent> = api::events(state, &rollout.id.to_string(), 0, 0)
        .await
        .map(|(_, events)| events.iter().map(event_to_wire).collect())
        .unwrap_or_default();
    let last_event = events.last().map_or(0, |event| event.id);
    let counts = rollout.counts.unwrap_or_default();
    // At most ROLLOUT_MACHINES rows: failures first, then machines at work, then the rest.
    let mut shown: Vec<&pb::RolloutMachine> = rollout.machines.iter().collect();
    shown.sort_by_key(|machine| {
        let status = pb::RolloutMachineStatus::try_from(machine.status)
            .unwrap_or(pb::RolloutMachineStatus::Unspecified);
        let rank = match status {
            pb::RolloutMachineStatus::Failed | pb::RolloutMachineStatus::RollingBack => 0,
            _ if machine.stalled || !machine.online => 1,
            pb::RolloutMachineStatus::Activating | pb::RolloutMachineStatus::Preparing => 2,
            pb::RolloutMachineStatus::Prepared | pb::RolloutMachineStatus::Pending => 3,
            _ => 4,
        };
        (rank, machine.phase)
    });
    let hidden = shown.len().saturating_sub(ROLLOUT_MACHINES);
    shown.truncate(ROLLOUT_MACHINES);
    let content = html! {
        h1 { (rollout_label(&rollout)) " " span #rollout-state class={ "state " (rollout_state(&rollout)) } { (rollout_state(&rollout)) } }
        @if !rollout.reason.is_empty() { p #rollout-reason { (rollout.reason) } }
        div #live data-rollout=(rollout.id) data-after=(last_event) {
            p.muted { span #rollout-active { (counts.active) } " of " (counts.machines) " machines active; failure budget " (rollout.failure_budget) }
            table #phases {
                thead { tr { th { "phase" } th { "progress" } th { "machines" } th { "active" } th { "activating" } th { "failed" } } }
                tbody { @for phase in &rollout.phases {
                    tr data-phase=(phase.index) {
                        td { (phase.name) }
                        td.progress { (progress_bar(phase.machines, phase.active, phase.failed, phase.activating)) }
                        td data-count="machines" { (phase.machines) }
                        td data-count="active" { (phase.active) }
                        td data-count="activating" { (phase.activating) }
                        td data-count="failed" { (phase.failed) }
                    }
                } }
            }
        }
        h2 { "Machines" }
        @if hidden > 0 {
            p.muted { "The " (shown.len()) " machines that need attention or are busy first; " (hidden)
                " more are not listed (" code { "comfyfleet rollout status " (rollout.id) " --machines" } " lists all)." }
        }
        table #rollout-machines {
            thead { tr { th { "machine" } th { "phase" } th { "status" } th { "detail" } } }
            tbody { @for machine in &shown { tr {
                td { a href={ "/machines/" (machine.machine_id) } { (machine.hostname) } }
                td { (machine.phase) }
                td { (machine_status(machine.status)) }
                td { (machine.detail) }
            } } }
        }
        h2 { "Events" }
        ol #events { @for event in &events { li { (event_line(event)) } } }
    };
    layout(&rollout_label(&rollout), Some(&viewer), content).into_response()
}

/// `preparing`, `rolled-back` …: the wire enum's name as the CLI prints it.
fn machine_status(status: i32) -> String {
    pb::RolloutMachineStatus::try_from(status).map_or_else(
        |_| "unknown".to_owned(),
        |status| {
            status
                .as_str_name()
                .trim_start_matches("ROLLOUT_MACHINE_STATUS_")
                .to_ascii_lowercase()
                .replace('_', "-")
        },
    )
}

fn event_line(event: &pb::RolloutEvent) -> String {
    let at = event
        .at
        .as_ref()
        .and_then(|at| jiff::Timestamp::new(at.seconds, at.nanos).ok())
        .map_or_else(String::new, |at| at.strftime("%H:%M:%S").to_string());
    let who = if event.machine_id.is_empty() { "rollout".to_owned() } else { event.machine_id.clone() };
    let mut line = format!("{at} {who} {}", event.kind);
    if !event.detail.is_empty() {
        line.push_str(": ");
        line.push_str(&event.detail);
    }
    line
}

#[derive(Deserialize)]
pub struct LiveQuery {
    #[serde(default)]
    after: u64,
}

/// What the rollout page's script polls: state, phases and the events after `after`.
pub async fn rollout_live(
    _viewer: Viewer,
    State(web): State<Shared>,
    Path(id): Path<String>,
    Query(query): Query<LiveQuery>,
) -> Response {
    let state = &web.state;
    let rollout = match api::get(state, &id, false).await {
        Ok(rollout) => rollout_to_wire(&rollout),
        Err(error) => return (StatusCode::NOT_FOUND, message(error)).into_response(),
    };
    let events: Vec<pb::RolloutEvent> = api::events(state, &rollout.id.to_string(), query.after, 200)
        .await
        .map(|(_, events)| events.iter().map(event_to_wire).collect())
        .unwrap_or_default();
    let counts = rollout.counts.unwrap_or_default();
    let body = serde_json::json!({
        "state": rollout_state(&rollout),
        "reason": rollout.reason,
        "active": counts.active,
        "machines": counts.machines,
        "phases": rollout.phases.iter().map(|phase| serde_json::json!({
            "index": phase.index, "machines": phase.machines, "active": phase.active,
            "activating": phase.activating, "failed": phase.failed,
        })).collect::<Vec<_>>(),
        "events": events.iter().map(|event| serde_json::json!({ "id": event.id, "text": event_line(event) })).collect::<Vec<_>>(),
    });
    ([(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
}
