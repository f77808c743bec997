//! `comfyfleet machines …`: what the fleet is made of, and sending one machine back
//! to the environment it ran before.

use comfyfleet_config::labels::{parse_pair, validate_key};
use comfyfleet_proto::v1 as pb;
use jiff::Timestamp;

use super::convergence::{self, Awaited, Printer, WaitLimit};
use super::machine_details::describe;
use super::{status_error, to_json};
use crate::OutputFormat;
use crate::client::Fleet;
use crate::format;
use crate::machine_view::MachineView;

/// Every machine, fetched page by page.
pub async fn fetch_all(client: &mut Fleet, include_revoked: bool) -> anyhow::Result<Vec<MachineView>> {
    fetch(client, include_revoked, "").await
}

/// The machines a query selector picks (`""`: all), fetched page by page; the
/// controller evaluates the selector.
pub async fn fetch(
    client: &mut Fleet,
    include_revoked: bool,
    selector: &str,
) -> anyhow::Result<Vec<MachineView>> {
    let mut views = Vec::new();
    let mut page_token = String::new();
    let mut first = true;
    loop {
        let page = client
            .list_machines(pb::ListMachinesRequest {
                page_size: 500,
                page_token,
                include_revoked,
                selector: selector.to_owned(),
            })
            .await
            .map_err(status_error)?
            .into_inner();
        if std::mem::take(&mut first) {
            super::warn_if_certificate_expires(page.server_certificate_not_after.as_ref());
        }
        for machine in page.machines {
            views.push(MachineView::from_wire(machine)?);
        }
        if page.next_page_token.is_empty() {
            return Ok(views);
        }
        page_token = page.next_page_token;
    }
}

pub async fn list(
    client: &mut Fleet,
    include_revoked: bool,
    selector: Option<String>,
    output: OutputFormat,
) -> anyhow::Result<String> {
    let selector = selector.unwrap_or_default();
    super::reports::check_selector(&selector)?;
    let views = fetch(client, include_revoked, &selector).await?;
    match output {
        OutputFormat::Json => to_json(&views),
        OutputFormat::Csv => csv(&views),
        OutputFormat::Table => Ok(table(&views, Timestamp::now())),
    }
}

fn table(views: &[MachineView], now: Timestamp) -> String {
    let rows: Vec<Vec<String>> = views
        .iter()
        .map(|machine| {
            let last_seen = machine.last_seen.as_deref().and_then(|at| at.parse::<Timestamp>().ok());
            vec![
                machine.id.clone(),
                machine.hostname.clone(),
                machine.status().to_owned(),
                machine.gpu_summary(),
                machine.driver_version.clone().unwrap_or_else(|| "-".into()),
                machine.cuda_driver_version.clone().unwrap_or_else(|| "-".into()),
                machine.environment_status(),
                machine.labels_text(),
                if machine.online { "now".into() } else { format::ago(last_seen, now) },
            ]
        })
        .collect();
    let mut text = format::table(
        &["ID", "HOSTNAME", "STATUS", "GPUS", "DRIVER", "CUDA", "ENV", "LABELS", "LAST SEEN"],
        &rows,
    );
    let online = views.iter().filter(|m| m.online).count();
    let gpus: usize = views.iter().map(|m| m.gpus.len()).sum();
    text.push_str(&format!("\n{} machines ({online} online), {gpus} GPUs\n", views.len()));
    text
}

fn csv(views: &[MachineView]) -> anyhow::Result<String> {
    let mut writer = csv::Writer::from_writer(Vec::new());
    format::csv_record(
        &mut writer,
        [
            "id",
            "hostname",
            "online",
            "last_seen",
            "labels",
            "driver_version",
            "cuda_driver_version",
            "cpu_cores",
            "memory_total_bytes",
            "gpu_count",
            "gpus",
            "environment",
            "phase",
        ],
    )?;
    for machine in views {
        format::csv_record(
            &mut writer,
            [
                machine.id.clone(),
                machine.hostname.clone(),
                machine.online.to_string(),
                machine.last_seen.clone().unwrap_or_default(),
                machine.labels_text(),
                machine.driver_version.clone().unwrap_or_default(),
                machine.cuda_driver_version.clone().unwrap_or_default(),
                machine.cpu_cores.map(|n| n.to_string()).unwrap_or_default(),
                machine.memory_total_bytes.map(|n| n.to_string()).unwrap_or_default(),
                machine.gpus.len().to_string(),
                machine.gpu_summary(),
                machine
                    .assignment
                    .as_ref()
                    .map(|a| format!("{}@{}", a.environment, a.revision_number))
                    .unwrap_or_default(),
                machine.current_report().map(|report| report.phase.to_string()).unwrap_or_default(),
            ],
        )?;
    }
    Ok(String::from_utf8(writer.into_inner()?)?)
}

pub async fn show(client: &mut Fleet, id: String, output: OutputFormat) -> anyhow::Result<String> {
    let machine = client.get_machine(pb::GetMachineRequest { id }).await.map_err(status_error)?.into_inner();
    let machine = MachineView::from_wire(machine)?;
    match output {
        OutputFormat::Json => to_json(&machine),
        OutputFormat::Table | OutputFormat::Csv => Ok(describe(&machine, Timestamp::now())),
    }
}

pub async fn revoke(client: &mut Fleet, id: String) -> anyhow::Result<String> {
    let machine =
        client.revoke_machine(pb::RevokeMachineRequest { id }).await.map_err(status_error)?.into_inner();
    Ok(format!(
        "machine {} ({}) revoked: its agent is disconnected and cannot reconnect\n",
        machine.id, machine.hostname
    ))
}

/// Assigns the machine the environment it ran before; with `wait`, follows it there.
pub async fn rollback(client: &mut Fleet, id: String, wait: Option<WaitLimit>) -> anyhow::Result<String> {
    let response =
        client.rollback_machine(pb::RollbackMachineRequest { id }).await.map_err(status_error)?.into_inner();
    let machine = response.machine.ok_or_else(|| anyhow::anyhow!("the controller sent no machine"))?;
    let revision = response.revision.ok_or_else(|| anyhow::anyhow!("the controller sent no revision"))?;
    let label = format!("{}@{}", revision.environment, revision.number);
    let said = format!(
        "{} {}: rolling back to {label} ({})\n",
        machine.id,
        machine.hostname,
        format::short_id(&revision.id)
    );
    let Some(limit) = wait else { return Ok(said) };
    Printer::Stdout.line(&said);
    let generation = machine.assignment.as_ref().map(|assignment| assignment.generation).unwrap_or_default();
    let awaited = Awaited { id: machine.id, hostname: machine.hostname, generation };
    convergence::wait(client, &label, &[awaited], &limit, Printer::Stdout).await
}

/// `KEY=VALUE` sets an operator label, `KEY-` removes one (as kubectl label does).
pub async fn label(client: &mut Fleet, id: String, changes: Vec<String>) -> anyhow::Result<String> {
    let mut set = std::collections::HashMap::new();
    let mut remove = Vec::new();
    for change in &changes {
        if let Some(key) = change.strip_suffix('-').filter(|_| !change.contains('=')) {
            validate_key(key)?;
            remove.push(key.to_owned());
        } else {
            let (key, value) = parse_pair(change)?;
            set.insert(key, value);
        }
    }
    if set.is_empty() && remove.is_empty() {
        anyhow::bail!("give at least one KEY=VALUE to set or KEY- to remove");
    }
    let machine = client
        .label_machine(pb::LabelMachineRequest { id, set, remove })
        .await
        .map_err(status_error)?
        .into_inner();
    let machine = MachineView::from_wire(machine)?;
    Ok(format!("machine {} labels: {}\n", machine.id, machine.labels_text()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_has_one_row_per_machine_and_a_total() {
        let json = r#"[{"id":"a1","hostname":"render-01","online":true,"last_seen":null,"enrolled_at":"2026-01-01T00:00:00Z",
            "revoked_at":null,"labels":{"pool":"a"},"driver_version":"570.133.07","cuda_driver_version":"12.8",
            "nvml_status":"ok","nvml_detail":null,"os":null,"kernel":null,"arch":null,"cpu_model":null,"cpu_cores":8,
            "memory_total_bytes":1,"data_dir_free_bytes":1,"agent_version":"0.1.0","remote_address":"",
            "gpus":[{"index":0,"name":"NVIDIA L40S","uuid":"GPU-1","memory_total_bytes":48305799168,
            "compute_capability":"8.9","pci_bus_id":null}]}]"#;
        let views: Vec<MachineView> = serde_json::from_str(json).unwrap();
        let text = table(&views, Timestamp::now());
        assert!(text.contains("1× L40S (8.9, 45 GiB)"), "{text}");
        assert!(text.contains("1 machines (1 online), 1 GPUs"), "{text}");
        assert!(text.lines().next().unwrap().contains("  CUDA  ENV  LABELS  "), "{text}");
        assert!(text.lines().nth(1).unwrap().contains("  12.8  -    pool=a  "), "{text}");
        assert!(csv(&views).unwrap().lines().count() == 2);
        assert!(describe(&views[0], Timestamp::now()).contains("driver 570.133.07, CUDA 12.8"));
    }
}
