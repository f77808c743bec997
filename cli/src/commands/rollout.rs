//! `comfyfleet rollout start ENV[@REV]` and `rollout undo ENV`: start a rollout of a
//! revision (or back to an earlier one), show which machines it took and why the
//! others were left out, and with `--wait` follow it until it ends.

use comfyfleet_proto::v1 as pb;
use serde::Serialize;

use super::convergence::{self, Awaited, Printer, WaitLimit};
use super::environments::split_reference;
use super::rollout_policy::PolicyFlags;
use super::rollout_view::RolloutView;
use super::rollout_watch::{self, WatchOptions};
use super::{status_error, to_json};
use crate::OutputFormat;
use crate::client::Fleet;
use crate::format;
use comfyfleet_config::AdminConfig;

/// How often `--wait` reads the rollout.
const WAIT_INTERVAL: std::time::Duration = std::time::Duration::from_millis(500);

/// What `rollout start` and `rollout undo` print with `-o json`.
#[derive(Debug, Serialize)]
pub struct StartView {
    pub environment: String,
    pub revision: u32,
    pub revision_id: String,
    pub targets: Vec<TargetView>,
    pub summary: Tally,
    /// The rollout started (`null` from a controller without the rollout engine).
    pub rollout: Option<RolloutView>,
}

#[derive(Debug, Serialize)]
pub struct TargetView {
    pub machine: String,
    pub hostname: String,
    /// `assigned`, `incompatible`, `not-targeted`, `busy` (in a rollout of another
    /// environment) or `current` (already runs the revision).
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
    pub busy: usize,
    pub current: usize,
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

impl StartView {
    fn new(
        revision: &pb::EnvironmentRevision,
        targets: &[pb::RolloutTarget],
        rollout: Option<&pb::Rollout>,
    ) -> Self {
        let targets: Vec<TargetView> = targets.iter().map(TargetView::from).collect();
        let count = |outcome: &str| targets.iter().filter(|target| target.outcome == outcome).count();
        let summary = Tally {
            assigned: count("assigned"),
            incompatible: count("incompatible"),
            not_targeted: count("not-targeted"),
            busy: count("busy"),
            current: count("current"),
        };
        StartView {
            environment: revision.environment.clone(),
            revision: revision.number,
            revision_id: revision.id.clone(),
            targets,
            summary,
            rollout: rollout.map(RolloutView::from),
        }
    }

    /// `render-prod@2`.
    pub fn label(&self) -> String {
        format!("{}@{}", self.environment, self.revision)
    }

    /// One row per machine, `render-prod@2: 3 assigned, 1 incompatible, 2 not targeted`
    /// (`, 1 busy, 4 current` when there are such), and the rollout started.
    pub fn table(&self, waiting: bool) -> String {
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
            "{}: {} assigned, {} incompatible, {} not targeted",
            self.label(),
            self.summary.assigned,
            self.summary.incompatible,
            self.summary.not_targeted
        ));
        for (count, name) in [(self.summary.busy, "busy"), (self.summary.current, "current")] {
            if count > 0 {
                text.push_str(&format!(", {count} {name}"));
            }
        }
        text.push('\n');
        if let Some(rollout) = &self.rollout {
            text.push_str(&started_line(rollout));
            if !waiting {
                text.push_str(&format!("follow it with: comfyfleet rollout watch {}\n", rollout.id));
            }
        }
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

/// `rollout 7 of render-prod@3 started: 200 machines, canary 2, max unavailable 20
/// (10%), failure budget 10 (5%)`; an undo says which revision it leaves.
pub fn started_line(rollout: &RolloutView) -> String {
    let undo = match rollout.undo_of_revision {
        Some(from) => format!(" (undo of {}@{from})", rollout.environment),
        None => String::new(),
    };
    format!(
        "{}{undo} started: {} machine{}, {}\n",
        rollout.title(),
        rollout.counts.machines,
        if rollout.counts.machines == 1 { "" } else { "s" },
        rollout.policy_summary()
    )
}

/// The `--machines` list as sent: trimmed, empty entries dropped.
fn machine_list(machines: &[String]) -> Vec<String> {
    machines.iter().map(|id| id.trim().to_owned()).filter(|id| !id.is_empty()).collect()
}

pub struct StartArgs<'a> {
    /// The fleet's controllers, for `--wait` to move to when one stops answering.
    pub config: &'a AdminConfig,
    pub machines: Vec<String>,
    pub policy: PolicyFlags,
    pub output: OutputFormat,
    pub wait: Option<WaitLimit>,
}

pub async fn start(client: &mut Fleet, reference: String, args: StartArgs<'_>) -> anyhow::Result<String> {
    let (environment, revision) = split_reference(&reference);
    if environment.is_empty() {
        anyhow::bail!("`{reference}` names no environment: write ENV, ENV@NUMBER or ENV@ID");
    }
    let request = pb::StartRolloutRequest {
        environment,
        revision,
        machines: machine_list(&args.machines),
        policy: args.policy.to_wire(),
    };
    let response = client.start_rollout(request).await.map_err(status_error)?.into_inner();
    report(client, args.config, response, args.output, args.wait).await
}

pub struct UndoArgs<'a> {
    /// As [`StartArgs::config`].
    pub config: &'a AdminConfig,
    pub to_revision: Option<String>,
    pub policy: PolicyFlags,
    pub output: OutputFormat,
    pub wait: Option<WaitLimit>,
}

pub async fn undo(client: &mut Fleet, environment: String, args: UndoArgs<'_>) -> anyhow::Result<String> {
    let environment = environment.trim().to_owned();
    if environment.is_empty() || environment.contains('@') {
        anyhow::bail!(
            "`{environment}` is not an environment name: write ENV, and --to-revision REV for a revision \
             other than the one its newest rollout started from"
        );
    }
    let to_revision = args.to_revision.map(|revision| revision.trim().to_owned()).unwrap_or_default();
    let request = pb::UndoRolloutRequest { environment, to_revision, policy: args.policy.to_wire() };
    let response = client.undo_rollout(request).await.map_err(status_error)?.into_inner();
    report(client, args.config, response, args.output, args.wait).await
}

/// The targets and the rollout started; with `wait`, what following it came to.
async fn report(
    client: &mut Fleet,
    config: &AdminConfig,
    response: pb::StartRolloutResponse,
    output: OutputFormat,
    wait: Option<WaitLimit>,
) -> anyhow::Result<String> {
    let revision = response.revision.ok_or_else(|| anyhow::anyhow!("the controller sent no revision"))?;
    let started = StartView::new(&revision, &response.targets, response.rollout.as_ref());
    let text = match output {
        OutputFormat::Json => to_json(&started)?,
        OutputFormat::Table | OutputFormat::Csv => started.table(wait.is_some()),
    };
    let Some(limit) = wait else { return Ok(text) };
    // The rollout is started: show it before waiting on it.
    Printer::Stdout.line(&text);
    let printer = if output == OutputFormat::Json { Printer::Stderr } else { Printer::Stdout };
    let done = match &started.rollout {
        Some(rollout) => {
            let options = WatchOptions { limit: Some(limit), interval: WAIT_INTERVAL, printer };
            let done = rollout_watch::watch(client, config, &rollout.id.to_string(), &options).await?;
            // Where each machine ended, with its torch build and optimisations.
            match convergence::outcome_lines(client, &started.awaited()).await {
                Ok(lines) => format!("{lines}{done}"),
                Err(_) => done,
            }
        }
        // A controller without the rollout engine: follow the machines' own reports.
        None => convergence::wait(client, &started.label(), &started.awaited(), &limit, printer).await?,
    };
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
        let rollout = StartView::new(&revision, &targets, None);
        let text = rollout.table(false);
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
        assert_eq!(
            json["summary"],
            serde_json::json!({"assigned": 1, "incompatible": 1, "not_targeted": 1, "busy": 0, "current": 0})
        );
        assert_eq!(json["rollout"], serde_json::Value::Null);
    }

    #[test]
    fn a_started_rollout_is_summed_up_with_how_to_follow_it() {
        let revision =
            pb::EnvironmentRevision { environment: "render-prod".into(), number: 3, ..Default::default() };
        let targets = [
            target("aa01", pb::TargetOutcome::Assigned, "2.8.0+cu128", 3),
            target("aa02", pb::TargetOutcome::Busy, "in rollout 6 of render-dev", 0),
            target("aa03", pb::TargetOutcome::Current, "already runs render-prod@3", 0),
        ];
        let mut wire = super::super::rollout_view::tests::wire_rollout();
        wire.machines.clear();
        let started = StartView::new(&revision, &targets, Some(&wire));
        let text = started.table(false);
        let tail: Vec<&str> = text.lines().rev().take(3).collect();
        assert_eq!(
            tail,
            [
                "follow it with: comfyfleet rollout watch 7",
                "rollout 7 of render-prod@3 started: 22 machines, canary 2, max unavailable 2 (10%), failure budget 3",
                "render-prod@3: 1 assigned, 0 incompatible, 0 not targeted, 1 busy, 1 current",
            ]
        );
        assert!(!started.table(true).contains("follow it with"));
        let json: serde_json::Value = serde_json::from_str(&to_json(&started).unwrap()).unwrap();
        assert_eq!(json["rollout"]["id"], 7);
        assert_eq!(json["targets"][1]["outcome"], "busy");
        assert_eq!(json["targets"][1]["reason"], "in rollout 6 of render-dev");

        wire.kind = "undo".into();
        wire.undo_of_revision = 4;
        wire.counts = Some(pb::RolloutCounts { machines: 1, ..Default::default() });
        assert_eq!(
            started_line(&RolloutView::from(&wire)),
            "rollout 7 of render-prod@3 (undo of render-prod@4) started: 1 machine, canary 2, max unavailable 2 \
             (10%), failure budget 3\n"
        );
    }
}
