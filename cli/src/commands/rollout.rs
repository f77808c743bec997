//! `comfyfleet rollout start ENV[@REV]`: assign a revision to every machine its
//! selector targets (or the machines named) and, with `--wait`, follow them until they
//! have converged.

use comfyfleet_proto::v1 as pb;
use serde::Serialize;

use super::convergence::{self, Awaited, Printer, WaitLimit};
use super::environments::split_reference;
use super::{status_error, to_json};
use crate::OutputFormat;
use crate::client::Fleet;
use crate::format;

#[derive(Debug, Serialize)]
pub struct RolloutView {
    pub environment: String,
    pub revision: u32,
    pub revision_id: String,
    pub targets: Vec<TargetView>,
    pub summary: Tally,
}

#[derive(Debug, Serialize)]
pub struct TargetView {
    pub machine: String,
    pub hostname: String,
    /// `assigned`, `incompatible` or `not-targeted`.
    pub outcome: &'static str,
    /// The planned torch build, when assigned.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub torch: Option<String>,
    /// Why not, otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub online: bool,
    /// The machine's new generation when assigned, else 0.
    pub generation: u64,
}

#[derive(Debug, Default, Serialize, PartialEq, Eq)]
pub struct Tally {
    pub assigned: usize,
    pub incompatible: usize,
    pub not_targeted: usize,
}

impl From<&pb::RolloutTarget> for TargetView {
    fn from(target: &pb::RolloutTarget) -> Self {
        let outcome = match target.outcome() {
            pb::TargetOutcome::Assigned => "assigned",
            pb::TargetOutcome::Incompatible => "incompatible",
            pb::TargetOutcome::NotTargeted => "not-targeted",
            pb::TargetOutcome::Busy => "busy",
            pb::TargetOutcome::Current => "current",
            pb::TargetOutcome::Unspecified => "unknown",
        };
        let assigned = outcome == "assigned";
        TargetView {
            machine: target.machine_id.clone(),
            hostname: target.hostname.clone(),
            outcome,
            torch: assigned.then(|| target.detail.clone()),
            reason: (!assigned).then(|| target.detail.clone()),
            online: target.online,
            generation: target.generation,
        }
    }
}

impl RolloutView {
    fn new(revision: &pb::EnvironmentRevision, targets: &[pb::RolloutTarget]) -> Self {
        let targets: Vec<TargetView> = targets.iter().map(TargetView::from).collect();
        let count = |outcome: &str| targets.iter().filter(|target| target.outcome == outcome).count();
        let summary = Tally {
            assigned: count("assigned"),
            incompatible: count("incompatible"),
            not_targeted: count("not-targeted"),
        };
        RolloutView {
            environment: revision.environment.clone(),
            revision: revision.number,
            revision_id: revision.id.clone(),
            targets,
            summary,
        }
    }

    /// `render-prod@2`.
    pub fn label(&self) -> String {
        format!("{}@{}", self.environment, self.revision)
    }

    /// One row per machine and `render-prod@2: 3 assigned, 1 incompatible, 2 not targeted`.
    pub fn table(&self) -> String {
        let rows: Vec<Vec<String>> = self
            .targets
            .iter()
            .map(|target| {
                vec![
                    target.machine.clone(),
                    target.hostname.clone(),
                    target.outcome.to_owned(),
                    target.torch.clone().or_else(|| target.reason.clone()).unwrap_or_default(),
                    if target.online { "yes" } else { "no" }.to_owned(),
                ]
            })
            .collect();
        let mut text = format::table(&["MACHINE", "HOSTNAME", "OUTCOME", "TORCH / REASON", "ONLINE"], &rows);
        text.push('\n');
        text.push_str(&format!(
            "{}: {} assigned, {} incompatible, {} not targeted\n",
            self.label(),
            self.summary.assigned,
            self.summary.incompatible,
            self.summary.not_targeted
        ));
        text
    }

    fn awaited(&self) -> Vec<Awaited> {
        self.targets
            .iter()
            .filter(|target| target.outcome == "assigned")
            .map(|target| Awaited {
                id: target.machine.clone(),
                hostname: target.hostname.clone(),
                generation: target.generation,
            })
            .collect()
    }
}

pub async fn start(
    client: &mut Fleet,
    reference: String,
    machines: Vec<String>,
    output: OutputFormat,
    wait: Option<WaitLimit>,
) -> anyhow::Result<String> {
    let (environment, revision) = split_reference(&reference);
    if environment.is_empty() {
        anyhow::bail!("`{reference}` names no environment: write ENV, ENV@NUMBER or ENV@ID");
    }
    let machines: Vec<String> =
        machines.iter().map(|id| id.trim().to_owned()).filter(|id| !id.is_empty()).collect();
    let response = client
        .start_rollout(pb::StartRolloutRequest { environment, revision, machines, policy: None })
        .await
        .map_err(status_error)?
        .into_inner();
    let revision = response.revision.ok_or_else(|| anyhow::anyhow!("the controller sent no revision"))?;
    let rollout = RolloutView::new(&revision, &response.targets);
    let text = match output {
        OutputFormat::Json => to_json(&rollout)?,
        OutputFormat::Table | OutputFormat::Csv => rollout.table(),
    };
    let Some(limit) = wait else { return Ok(text) };
    // The assignments are made: show them before waiting on them.
    Printer::Stdout.line(&text);
    let printer = if output == OutputFormat::Json { Printer::Stderr } else { Printer::Stdout };
    let done = convergence::wait(client, &rollout.label(), &rollout.awaited(), &limit, printer).await?;
    if printer == Printer::Stderr {
        printer.line(&done);
        return Ok(String::new());
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(id: &str, outcome: pb::TargetOutcome, detail: &str, generation: u64) -> pb::RolloutTarget {
        pb::RolloutTarget {
            machine_id: id.into(),
            hostname: format!("host-{id}"),
            outcome: outcome.into(),
            detail: detail.into(),
            online: generation > 0,
            generation,
        }
    }

    #[test]
    fn the_table_has_a_row_per_machine_and_the_summary_line() {
        let revision = pb::EnvironmentRevision {
            environment: "render-prod".into(),
            number: 2,
            id: "1a2b3c4d5e6f".repeat(5) + "abcd",
            ..Default::default()
        };
        let targets = [
            target("aa01", pb::TargetOutcome::Assigned, "2.8.0+cu128", 3),
            target("aa02", pb::TargetOutcome::Incompatible, "driver 535.230.02 supports CUDA 12.2", 0),
            target("bb01", pb::TargetOutcome::NotTargeted, "left out by the target selector", 0),
        ];
        let rollout = RolloutView::new(&revision, &targets);
        let text = rollout.table();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "MACHINE  HOSTNAME   OUTCOME       TORCH / REASON                        ONLINE"
        );
        assert_eq!(lines[1], "aa01     host-aa01  assigned      2.8.0+cu128                           yes");
        assert_eq!(lines[2], "aa02     host-aa02  incompatible  driver 535.230.02 supports CUDA 12.2  no");
        assert_eq!(lines[3], "bb01     host-bb01  not-targeted  left out by the target selector       no");
        assert_eq!(lines[5], "render-prod@2: 1 assigned, 1 incompatible, 1 not targeted");
        let awaited = rollout.awaited();
        assert_eq!((awaited.len(), awaited[0].generation), (1, 3));
        let json: serde_json::Value = serde_json::from_str(&to_json(&rollout).unwrap()).unwrap();
        assert_eq!(json["targets"][0]["torch"], "2.8.0+cu128");
        assert_eq!(json["targets"][1]["reason"], "driver 535.230.02 supports CUDA 12.2");
        assert_eq!(json["summary"], serde_json::json!({"assigned": 1, "incompatible": 1, "not_targeted": 1}));
    }
}
