//! `comfyfleet rollout status|list|events|pause|resume|abort`: reading rollouts and
//! steering a running one.

use comfyfleet_proto::v1 as pb;
use jiff::Timestamp;
use serde::Serialize;

use super::rollout_view::{EventView, RolloutMachineView, RolloutView};
use super::{status_error, to_json};
use crate::OutputFormat;
use crate::client::Fleet;
use crate::format;

/// Up to this many machines are listed in full; a bigger rollout lists only the
/// machines that need a look, unless `--machines` asks for all.
pub const LIST_ALL_UP_TO: usize = 50;
const EVENT_PAGE: u32 = 1000;

pub async fn status(
    client: &mut Fleet,
    rollout: String,
    all_machines: bool,
    output: OutputFormat,
) -> anyhow::Result<String> {
    let wire = client
        .get_rollout(pb::GetRolloutRequest { rollout, without_machines: false })
        .await
        .map_err(status_error)?
        .into_inner();
    let view = RolloutView::from(&wire);
    match output {
        OutputFormat::Json => to_json(&view),
        OutputFormat::Table | OutputFormat::Csv => Ok(describe(&view, all_machines, Timestamp::now())),
    }
}

fn or_dash(at: Option<Timestamp>) -> String {
    at.map_or_else(|| "-".to_owned(), format::rfc3339)
}

/// A machine worth a look in a big rollout: failed, going back, stalled or offline.
fn needs_attention(machine: &RolloutMachineView) -> bool {
    matches!(machine.status, "failed" | "rolling_back" | "rolled_back") || machine.stalled || !machine.online
}

/// The header, the phases and the machines, as `rollout status` prints them.
pub fn describe(rollout: &RolloutView, all_machines: bool, now: Timestamp) -> String {
    let kind = match rollout.undo_of_revision {
        Some(from) => format!("undo of {}@{from}", rollout.environment),
        None => rollout.kind.clone(),
    };
    let short_id = rollout.revision_id.get(..12).unwrap_or(&rollout.revision_id);
    let mut lines = vec![
        ("Rollout", format!("{} ({kind})", rollout.id)),
        ("Environment", format!("{} ({short_id})", rollout.label())),
        ("State", rollout.state_text()),
        ("Created", format!("{} by {}", or_dash(rollout.created_at), rollout.created_by)),
    ];
    if rollout.finished_at.is_some() {
        lines.push(("Finished", or_dash(rollout.finished_at)));
    }
    lines.push(("Policy", rollout.policy_details()));
    lines.push((
        "Unavailable",
        format!("{} now, at most {}", rollout.unavailable, rollout.limits.max_unavailable),
    ));
    lines.push(("Failed", format!("{}, budget {}", rollout.counts.failed, rollout.limits.failure_budget)));
    let stalled = match (rollout.stalled, rollout.counts.stalled) {
        (false, 0) => "no".to_owned(),
        (true, 0) => "yes: nothing moved for longer than the progress deadline".to_owned(),
        (_, machines) => format!("{machines} machine{} stalled", if machines == 1 { "" } else { "s" }),
    };
    lines.push(("Stalled", stalled));
    if rollout.soak_until.is_some() {
        lines.push(("Soak until", or_dash(rollout.soak_until)));
    }
    lines.push(("Machines", machine_counts(rollout)));
    let width = lines.iter().map(|(key, _)| key.len()).max().unwrap_or(0) + 1;
    let mut text: String =
        lines.iter().map(|(key, value)| format!("{:<width$} {value}\n", format!("{key}:"))).collect();

    if !rollout.phases.is_empty() {
        let rows: Vec<Vec<String>> = rollout
            .phases
            .iter()
            .map(|phase| {
                vec![
                    phase.name.clone(),
                    phase.machines.to_string(),
                    phase.active.to_string(),
                    phase.failed.to_string(),
                    phase.activating.to_string(),
                    phase.done.to_string(),
                ]
            })
            .collect();
        text.push('\n');
        text.push_str(&format::table(
            &["PHASE", "MACHINES", "ACTIVE", "FAILED", "ACTIVATING", "DONE"],
            &rows,
        ));
    }

    let all = all_machines || rollout.machines.len() <= LIST_ALL_UP_TO;
    let shown: Vec<&RolloutMachineView> =
        rollout.machines.iter().filter(|machine| all || needs_attention(machine)).collect();
    if !shown.is_empty() {
        let rows: Vec<Vec<String>> = shown
            .iter()
            .map(|machine| {
                let detail = machine.detail.lines().map(str::trim).filter(|line| !line.is_empty());
                vec![
                    machine.machine.clone(),
                    machine.hostname.clone(),
                    machine.phase_name.clone(),
                    if machine.stalled {
                        format!("{} (stalled)", machine.status)
                    } else {
                        machine.status.to_owned()
                    },
                    if machine.online { "yes" } else { "no" }.to_owned(),
                    format::ago(machine.since, now),
                    detail.collect::<Vec<_>>().join("; "),
                ]
            })
            .collect();
        text.push('\n');
        text.push_str(&format::table(
            &["MACHINE", "HOSTNAME", "PHASE", "STATUS", "ONLINE", "SINCE", "DETAIL"],
            &rows,
        ));
    }
    if !all {
        text.push_str(&format!(
            "\n{} of {} machines shown (failed, rolling back, stalled or offline): `comfyfleet rollout status {} \
             --machines` lists every one\n",
            shown.len(),
            rollout.machines.len(),
            rollout.id
        ));
    }
    text
}

/// `22: 6 active, 2 activating, 12 prepared, 2 failed, 1 offline`: the non-zero counts.
fn machine_counts(rollout: &RolloutView) -> String {
    let counts = &rollout.counts;
    let parts: Vec<String> = [
        (counts.active, "active"),
        (counts.activating, "activating"),
        (counts.prepared, "prepared"),
        (counts.preparing, "preparing"),
        (counts.pending, "pending"),
        (counts.failed, "failed"),
        (counts.rolling_back, "rolling back"),
        (counts.rolled_back, "rolled back"),
        (counts.skipped, "skipped"),
        (counts.offline, "offline"),
    ]
    .iter()
    .filter(|(count, _)| *count > 0)
    .map(|(count, name)| format!("{count} {name}"))
    .collect();
    if parts.is_empty() {
        counts.machines.to_string()
    } else {
        format!("{}: {}", counts.machines, parts.join(", "))
    }
}

pub async fn list(
    client: &mut Fleet,
    environment: String,
    limit: u32,
    output: OutputFormat,
) -> anyhow::Result<String> {
    let rollouts = client
        .list_rollouts(pb::ListRolloutsRequest { environment, limit })
        .await
        .map_err(status_error)?
        .into_inner()
        .rollouts;
    let views: Vec<RolloutView> = rollouts.iter().map(RolloutView::from).collect();
    match output {
        OutputFormat::Json => to_json(&views),
        OutputFormat::Table | OutputFormat::Csv => Ok(list_table(&views, Timestamp::now())),
    }
}

pub fn list_table(rollouts: &[RolloutView], now: Timestamp) -> String {
    let rows: Vec<Vec<String>> = rollouts
        .iter()
        .map(|rollout| {
            let state = if rollout.state == "paused" && rollout.budget_exceeded {
                "paused (budget)".to_owned()
            } else {
                rollout.state.to_owned()
            };
            vec![
                rollout.id.to_string(),
                rollout.environment.clone(),
                rollout.revision.to_string(),
                rollout.kind.clone(),
                state,
                rollout.counts.machines.to_string(),
                rollout.counts.active.to_string(),
                rollout.counts.failed.to_string(),
                format::ago(rollout.created_at, now),
                rollout.created_by.clone(),
            ]
        })
        .collect();
    format::table(
        &["ID", "ENVIRONMENT", "REVISION", "KIND", "STATE", "MACHINES", "ACTIVE", "FAILED", "CREATED", "BY"],
        &rows,
    )
}

#[derive(Debug, Serialize)]
struct EventsView {
    rollout: u64,
    events: Vec<EventView>,
}

/// Every stored event after `after`, oldest first.
pub async fn events(
    client: &mut Fleet,
    rollout: String,
    after: u64,
    output: OutputFormat,
) -> anyhow::Result<String> {
    let mut view = EventsView { rollout: 0, events: Vec::new() };
    let mut after = after;
    // The first answer names the rollout; later pages ask for it by id.
    let mut target = rollout;
    loop {
        let request = pb::ListRolloutEventsRequest { rollout: target.clone(), after, limit: EVENT_PAGE };
        let page = client.list_rollout_events(request).await.map_err(status_error)?.into_inner();
        view.rollout = page.rollout_id;
        target = page.rollout_id.to_string();
        let full = page.events.len() >= EVENT_PAGE as usize;
        view.events.extend(page.events.iter().map(EventView::from));
        match view.events.last() {
            Some(last) if full && last.id > after => after = last.id,
            _ => break,
        }
    }
    match output {
        OutputFormat::Json => to_json(&view),
        OutputFormat::Table | OutputFormat::Csv => Ok(events_table(&view.events)),
    }
}

fn events_table(events: &[EventView]) -> String {
    let rows: Vec<Vec<String>> = events
        .iter()
        .map(|event| {
            let what = match &event.from {
                Some(from) => format!("{from} → {}", event.kind),
                None => event.kind.clone(),
            };
            let detail = event.detail.lines().map(str::trim).filter(|line| !line.is_empty());
            vec![
                event.id.to_string(),
                event.at.map_or_else(|| "-".to_owned(), format::rfc3339),
                event.phase.to_string(),
                event.machine.clone().unwrap_or_else(|| "-".to_owned()),
                what,
                detail.collect::<Vec<_>>().join("; "),
            ]
        })
        .collect();
    format::table(&["ID", "TIME", "PHASE", "MACHINE", "EVENT", "DETAIL"], &rows)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Pause,
    Resume,
    Abort,
}

/// Pauses, resumes or aborts a rollout and prints its new state.
pub async fn act(
    client: &mut Fleet,
    action: Action,
    rollout: String,
    reason: String,
    output: OutputFormat,
) -> anyhow::Result<String> {
    if rollout.trim().is_empty() {
        anyhow::bail!("name the rollout: its id (`comfyfleet rollout list` shows them) or its environment");
    }
    let request = pb::RolloutActionRequest { rollout: rollout.trim().to_owned(), reason };
    let answer = match action {
        Action::Pause => client.pause_rollout(request).await,
        Action::Resume => client.resume_rollout(request).await,
        Action::Abort => client.abort_rollout(request).await,
    };
    let view = RolloutView::from(&answer.map_err(status_error)?.into_inner());
    match output {
        OutputFormat::Json => to_json(&view),
        OutputFormat::Table | OutputFormat::Csv => Ok(format!("{}: {}\n", view.title(), view.state_text())),
    }
}

#[cfg(test)]
mod tests {
    use super::super::rollout_view::tests::{wire_machine, wire_rollout};
    use super::*;

    fn now() -> Timestamp {
        Timestamp::from_second(1_746_093_900).unwrap()
    }

    #[test]
    fn status_shows_the_header_the_phases_and_the_machines() {
        let text = describe(&RolloutView::from(&wire_rollout()), false, now());
        let expected = "\
Rollout:     7 (rollout)
Environment: render-prod@3 (1a2b3c4d5e6f)
State:       running (activating batch 1)
Created:     2025-05-01T09:50:00Z by alice
Policy:      canary 2, max unavailable 2 (10%), failure budget 3, max parallel prepare 5 (25%), soak 10m, \
auto rollback yes, progress deadline 30m, stalled is failure no
Unavailable: 2 now, at most 2
Failed:      2, budget 3
Stalled:     no
Machines:    22: 6 active, 2 activating, 12 prepared, 2 failed, 1 offline

PHASE    MACHINES  ACTIVE  FAILED  ACTIVATING  DONE
canary   2         2       0       0           2
batch 1  20        4       2       2           6

MACHINE  HOSTNAME  PHASE    STATUS               ONLINE  SINCE   DETAIL
aa01     gpu-aa01  canary   active               yes     5m ago
bb07     gpu-bb07  batch 1  failed               yes     5m ago  health check: HTTP 502; after 3 tries
bb08     gpu-bb08  batch 1  preparing (stalled)  no      5m ago  uv
";
        assert_eq!(text, expected);
    }

    #[test]
    fn a_big_rollout_lists_only_the_machines_that_need_a_look() {
        let mut wire = wire_rollout();
        wire.machines = (0..60)
            .map(|n| {
                let status =
                    if n == 42 { pb::RolloutMachineStatus::Failed } else { pb::RolloutMachineStatus::Active };
                wire_machine(&format!("m{n:02}"), 1, status, "")
            })
            .collect();
        let view = RolloutView::from(&wire);
        let text = describe(&view, false, now());
        let machines: Vec<&str> = text.lines().filter(|line| line.starts_with('m')).collect();
        assert_eq!(machines.len(), 1, "{text}");
        assert!(machines[0].starts_with("m42 "), "{text}");
        assert!(text.ends_with(
            "\n1 of 60 machines shown (failed, rolling back, stalled or offline): `comfyfleet rollout status 7 \
             --machines` lists every one\n"
        ));
        let text = describe(&view, true, now());
        assert_eq!(text.lines().filter(|line| line.starts_with('m')).count(), 60);
        assert!(!text.contains("machines shown"));
    }

    #[test]
    fn an_undo_and_a_finished_rollout_say_so() {
        let mut wire = wire_rollout();
        wire.kind = "undo".into();
        wire.undo_of_revision = 4;
        wire.state = pb::RolloutState::Aborted.into();
        wire.reason = "by alice".into();
        wire.finished_at = Some(prost_types::Timestamp { seconds: 1_746_093_900, nanos: 0 });
        wire.soak_until = None;
        let text = describe(&RolloutView::from(&wire), false, now());
        assert!(text.starts_with("Rollout:     7 (undo of render-prod@4)\n"), "{text}");
        assert!(text.contains("\nState:       aborted (by alice)\n"), "{text}");
        assert!(text.contains("\nFinished:    2025-05-01T10:05:00Z\n"), "{text}");
    }

    #[test]
    fn the_list_has_a_row_per_rollout() {
        let mut paused = wire_rollout();
        paused.id = 6;
        paused.state = pb::RolloutState::Paused.into();
        paused.budget_exceeded = true;
        let views = [RolloutView::from(&wire_rollout()), RolloutView::from(&paused)];
        let text = list_table(&views, now());
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "ID  ENVIRONMENT  REVISION  KIND     STATE            MACHINES  ACTIVE  FAILED  CREATED  BY"
        );
        assert_eq!(
            lines[1],
            "7   render-prod  3         rollout  running          22        6       2       15m ago  alice"
        );
        assert_eq!(
            lines[2],
            "6   render-prod  3         rollout  paused (budget)  22        6       2       15m ago  alice"
        );
    }

    #[test]
    fn events_read_as_a_table() {
        let events = [
            EventView::from(&pb::RolloutEvent {
                id: 1,
                rollout_id: 7,
                at: Some(prost_types::Timestamp { seconds: 1_746_093_600, nanos: 0 }),
                kind: "started".into(),
                ..Default::default()
            }),
            EventView::from(&pb::RolloutEvent {
                id: 2,
                rollout_id: 7,
                machine_id: "aa01".into(),
                kind: "preparing".into(),
                from: "pending".into(),
                ..Default::default()
            }),
        ];
        let text = events_table(&events);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "ID  TIME                  PHASE  MACHINE  EVENT                DETAIL");
        assert_eq!(lines[1], "1   2025-05-01T10:00:00Z  0      -        started");
        assert_eq!(lines[2], "2   -                     0      aa01     pending → preparing");
    }
}
