//! What `rollout watch` draws: one line per event, and a progress bar per phase. On a
//! terminal the bars stay at the bottom and are redrawn in place (like `cargo` or
//! `docker pull`); in a log they are printed as lines, only for phases whose counts
//! changed and at most once a second, so the log stays readable.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use jiff::Timestamp;
use jiff::tz::TimeZone;

use super::rollout_view::{EventView, PhaseView, RolloutView};

const BAR_WIDTH: usize = 20;
/// At most this many phases get a bar of their own on a terminal; finished phases
/// before them are folded into one line.
const MAX_BARS: usize = 12;
/// In a log, phases' bars are printed at most this often.
const LOG_BARS_EVERY: Duration = Duration::from_secs(1);
const NO_WRAP: &str = "\x1b[?7l";
const WRAP: &str = "\x1b[?7h";

/// `[██████░░░░░░░░░░░░░░]` for `filled` out of `total`, rounded down so a bar is
/// only full when everything is done.
pub fn bar(filled: u32, total: u32) -> String {
    let cells = if total == 0 {
        BAR_WIDTH
    } else {
        ((u64::from(filled.min(total)) * BAR_WIDTH as u64) / u64::from(total)) as usize
    };
    format!("[{}{}]", "█".repeat(cells), "░".repeat(BAR_WIDTH - cells))
}

/// `batch 1  [██████░░░░░░░░░░░░░░] 6/20 (2 activating, 2 failed)`, the name padded
/// to `name_width`.
pub fn phase_line(phase: &PhaseView, name_width: usize) -> String {
    let mut extras = Vec::new();
    if phase.activating > 0 {
        extras.push(format!("{} activating", phase.activating));
    }
    if phase.failed > 0 {
        extras.push(format!("{} failed", phase.failed));
    }
    let extras = if extras.is_empty() { String::new() } else { format!(" ({})", extras.join(", ")) };
    format!(
        "{:<name_width$}  {} {}/{}{extras}",
        phase.name,
        bar(phase.done, phase.machines),
        phase.done,
        phase.machines
    )
}

fn name_width(phases: &[PhaseView]) -> usize {
    phases.iter().map(|phase| phase.name.chars().count()).max().unwrap_or(0)
}

/// `10:02:03`, in the operator's time zone.
pub fn clock(at: Option<Timestamp>, zone: &TimeZone) -> String {
    match at {
        Some(at) => zone.to_datetime(at).strftime("%H:%M:%S").to_string(),
        None => "--:--:--".to_owned(),
    }
}

/// One event on one line, its detail's lines joined:
/// `10:02:03  aa01 gpu-aa01  preparing → prepared  2.8.0+cu128`, or for the rollout
/// itself `10:02:03  batch 2 started`, `10:02:03  paused: maintenance`.
pub fn event_line(event: &EventView, hostnames: &HashMap<String, String>, zone: &TimeZone) -> String {
    let detail = event.detail.lines().map(str::trim).filter(|line| !line.is_empty()).collect::<Vec<_>>();
    let detail = detail.join("; ");
    let what = match &event.machine {
        Some(machine) => {
            let who = match hostnames.get(machine).filter(|hostname| !hostname.is_empty()) {
                Some(hostname) => format!("{machine} {hostname}"),
                None => machine.clone(),
            };
            let change = match &event.from {
                Some(from) => format!("{from} → {}", event.kind),
                None => event.kind.clone(),
            };
            format!("{who}  {change}  {detail}")
        }
        None => match event.kind.as_str() {
            // The controller's detail names the phase (`batch 2 started`).
            "phase" if detail.is_empty() => format!("phase {} started", event.phase),
            "phase" => detail,
            "soak" if detail.is_empty() => "soaking".to_owned(),
            "soak" => format!("soak {detail}"),
            kind if detail.is_empty() => kind.to_owned(),
            kind => format!("{kind}: {detail}"),
        },
    };
    format!("{}  {what}", clock(event.at, zone)).trim_end().to_owned()
}

/// `rollout 7 of render-prod@3: running (activating batch 1), 8/22 done, 2 unavailable
/// (max 2), 2 failed (budget 3)`: the line under the bars on a terminal.
pub fn summary_line(rollout: &RolloutView, zone: &TimeZone) -> String {
    let done: u32 = rollout.phases.iter().map(|phase| phase.done).sum();
    let mut line = format!(
        "{}: {}, {done}/{} done, {} unavailable (max {}), {} failed (budget {})",
        rollout.title(),
        rollout.state_text(),
        rollout.counts.machines,
        rollout.unavailable,
        rollout.limits.max_unavailable,
        rollout.counts.failed,
        rollout.limits.failure_budget
    );
    if rollout.soak_until.is_some() {
        line.push_str(&format!(", soaking until {}", clock(rollout.soak_until, zone)));
    }
    if rollout.stalled {
        line.push_str(", stalled");
    }
    line
}

/// Where the bars go: redrawn at the bottom of a terminal, or printed into a log.
#[derive(Debug)]
pub struct Board {
    terminal: bool,
    zone: TimeZone,
    /// Lines of bars (and summary) currently drawn below the events, on a terminal.
    drawn: usize,
    /// In a log: the counts each phase's last printed bar showed, and when.
    printed: HashMap<u32, PhaseView>,
    printed_at: Option<Instant>,
}

impl Board {
    pub fn new(terminal: bool, zone: TimeZone) -> Self {
        Board { terminal, zone, drawn: 0, printed: HashMap::new(), printed_at: None }
    }

    pub fn zone(&self) -> &TimeZone {
        &self.zone
    }

    /// The text to write now: `lines` (events and notices) above the bars, the bars as
    /// `rollout` has them. `last` forces a log to show every changed phase.
    pub fn frame(
        &mut self,
        lines: &[String],
        rollout: Option<&RolloutView>,
        now: Instant,
        last: bool,
    ) -> String {
        if self.terminal { self.redraw(lines, rollout) } else { self.log(lines, rollout, now, last) }
    }

    /// Moves up over the previous bars, erases them, writes the new lines and draws
    /// the bars again below them.
    fn redraw(&mut self, lines: &[String], rollout: Option<&RolloutView>) -> String {
        let mut text = String::new();
        if self.drawn > 0 {
            text.push_str(&format!("\x1b[{}A\x1b[J", self.drawn));
        }
        for line in lines {
            text.push_str(line);
            text.push('\n');
        }
        let bars = rollout.map(|rollout| self.bars(rollout)).unwrap_or_default();
        if !bars.is_empty() {
            // Without line wrapping each bar takes exactly one row, however narrow the
            // terminal, so moving up `drawn` rows next time lands on the first one.
            text.push_str(NO_WRAP);
            for line in &bars {
                text.push_str(line);
                text.push('\n');
            }
            text.push_str(WRAP);
        }
        self.drawn = bars.len();
        text
    }

    /// The bars and the summary line, finished phases folded when there are many.
    fn bars(&self, rollout: &RolloutView) -> Vec<String> {
        let width = name_width(&rollout.phases);
        let mut phases: &[PhaseView] = &rollout.phases;
        let mut bars = Vec::new();
        let finished = phases.iter().take_while(|phase| phase.done >= phase.machines).count();
        let folded = finished.min(phases.len().saturating_sub(MAX_BARS));
        if folded > 0 {
            bars.push(format!("{folded} phases done"));
            phases = &phases[folded..];
        }
        bars.extend(phases.iter().take(MAX_BARS).map(|phase| phase_line(phase, width)));
        if phases.len() > MAX_BARS {
            bars.push(format!("… {} more phases", phases.len() - MAX_BARS));
        }
        bars.push(summary_line(rollout, &self.zone));
        bars
    }

    /// Events as they come; a bar line per phase whose counts changed since its last
    /// bar, unless bars were printed less than a second ago.
    fn log(&mut self, lines: &[String], rollout: Option<&RolloutView>, now: Instant, last: bool) -> String {
        let mut text: String = lines.iter().map(|line| format!("{line}\n")).collect();
        let Some(rollout) = rollout else { return text };
        let due = last || self.printed_at.is_none_or(|at| now.duration_since(at) >= LOG_BARS_EVERY);
        if !due {
            return text;
        }
        let width = name_width(&rollout.phases);
        let changed: Vec<&PhaseView> =
            rollout.phases.iter().filter(|phase| self.printed.get(&phase.index) != Some(*phase)).collect();
        if changed.is_empty() {
            return text;
        }
        let stamp = clock(Some(Timestamp::now()), &self.zone);
        for phase in changed {
            text.push_str(&format!("{stamp}  {}\n", phase_line(phase, width)));
            self.printed.insert(phase.index, phase.clone());
        }
        // A phase that left the rollout (it never should) is forgotten, not reprinted.
        let present: HashSet<u32> = rollout.phases.iter().map(|phase| phase.index).collect();
        self.printed.retain(|index, _| present.contains(index));
        self.printed_at = Some(now);
        text
    }
}

#[cfg(test)]
mod tests {
    use super::super::rollout_view::tests::{wire_phase, wire_rollout, wire_time};
    use super::*;
    use comfyfleet_proto::v1 as pb;

    fn phase(index: u32, machines: u32, done: u32, failed: u32, activating: u32) -> PhaseView {
        PhaseView::from(&wire_phase(index, machines, done, failed, activating))
    }

    #[test]
    fn bars_fill_with_what_is_done() {
        assert_eq!(phase_line(&phase(0, 2, 2, 0, 0), 7), "canary   [████████████████████] 2/2");
        assert_eq!(phase_line(&phase(1, 20, 6, 2, 0), 7), "batch 1  [██████░░░░░░░░░░░░░░] 6/20 (2 failed)");
        assert_eq!(
            phase_line(&phase(2, 20, 0, 0, 3), 7),
            "batch 2  [░░░░░░░░░░░░░░░░░░░░] 0/20 (3 activating)"
        );
        assert_eq!(bar(199, 200), format!("[{}░]", "█".repeat(19)));
        assert_eq!(bar(1, 200), format!("[{}]", "░".repeat(20)));
        assert_eq!(bar(0, 0), format!("[{}]", "█".repeat(20)));
    }

    fn event(machine: &str, from: &str, kind: &str, detail: &str) -> EventView {
        EventView::from(&pb::RolloutEvent {
            id: 1,
            rollout_id: 7,
            at: wire_time(1_746_093_723),
            machine_id: machine.into(),
            kind: kind.into(),
            from: from.into(),
            detail: detail.into(),
            phase: 2,
        })
    }

    #[test]
    fn events_read_as_one_line_each() {
        let hostnames = HashMap::from([("aa01".to_owned(), "gpu-aa01".to_owned())]);
        let utc = TimeZone::UTC;
        let line = |event: EventView| event_line(&event, &hostnames, &utc);
        assert_eq!(
            line(event("aa01", "preparing", "prepared", "2.8.0+cu128")),
            "10:02:03  aa01 gpu-aa01  preparing → prepared  2.8.0+cu128"
        );
        assert_eq!(
            line(event("aa01", "activating", "failed", "health check: HTTP 502\n  after 3 tries\n")),
            "10:02:03  aa01 gpu-aa01  activating → failed  health check: HTTP 502; after 3 tries"
        );
        assert_eq!(line(event("zz09", "", "pending", "")), "10:02:03  zz09  pending");
        assert_eq!(line(event("", "", "phase", "")), "10:02:03  phase 2 started");
        assert_eq!(line(event("", "", "phase", "batch 2 started")), "10:02:03  batch 2 started");
        assert_eq!(line(event("", "", "paused", "maintenance")), "10:02:03  paused: maintenance");
        assert_eq!(line(event("", "", "soak", "until 10:12:03")), "10:02:03  soak until 10:12:03");
        assert_eq!(line(event("", "", "succeeded", "")), "10:02:03  succeeded");
    }

    #[test]
    fn a_terminal_redraws_the_bars_under_new_lines() {
        let rollout = RolloutView::from(&wire_rollout());
        let mut board = Board::new(true, TimeZone::UTC);
        let now = Instant::now();
        let first = board.frame(&["10:02:03  started".to_owned()], Some(&rollout), now, false);
        assert_eq!(
            first,
            "10:02:03  started\n\x1b[?7l\
             canary   [████████████████████] 2/2\n\
             batch 1  [██████░░░░░░░░░░░░░░] 6/20 (2 activating, 2 failed)\n\
             rollout 7 of render-prod@3: running (activating batch 1), 8/22 done, 2 unavailable (max 2), \
             2 failed (budget 3)\n\x1b[?7h"
        );
        let second = board.frame(&["10:02:04  resumed".to_owned()], Some(&rollout), now, false);
        assert!(second.starts_with("\x1b[3A\x1b[J10:02:04  resumed\n\x1b[?7lcanary   ["), "{second:?}");
        assert!(second.ends_with("(budget 3)\n\x1b[?7h"), "{second:?}");
        // Nothing to draw yet: nothing to erase next time.
        let mut board = Board::new(true, TimeZone::UTC);
        assert_eq!(
            board.frame(&["controller unreachable, retrying".to_owned()], None, now, false),
            "controller unreachable, retrying\n"
        );
        assert!(!board.frame(&[], Some(&rollout), now, false).contains("\x1b[J"));
    }

    #[test]
    fn a_terminal_folds_finished_phases_when_there_are_many() {
        let mut wire = wire_rollout();
        wire.phases =
            (0..20).map(|index| wire_phase(index, 2, if index < 15 { 2 } else { 0 }, 0, 0)).collect();
        let rollout = RolloutView::from(&wire);
        let frame = Board::new(true, TimeZone::UTC).frame(&[], Some(&rollout), Instant::now(), false);
        let frame = frame.replace(NO_WRAP, "").replace(WRAP, "");
        let lines: Vec<&str> = frame.lines().collect();
        assert_eq!(lines[0], "8 phases done");
        assert!(lines[1].starts_with("batch 8 "), "{frame}");
        assert_eq!(lines.len(), 1 + MAX_BARS + 1);
        assert!(lines[MAX_BARS].starts_with("batch 19 "), "{frame}");
    }

    #[test]
    fn a_log_gets_bars_only_for_changed_phases_and_at_most_once_a_second() {
        let mut wire = wire_rollout();
        let mut board = Board::new(false, TimeZone::UTC);
        let start = Instant::now();
        let frame =
            board.frame(&["10:02:03  started".to_owned()], Some(&RolloutView::from(&wire)), start, false);
        let lines: Vec<&str> = frame.lines().collect();
        assert_eq!(lines.len(), 3, "{frame}");
        assert_eq!(lines[0], "10:02:03  started");
        assert!(lines[1].ends_with("  canary   [████████████████████] 2/2"), "{frame}");
        assert!(
            lines[2].ends_with("  batch 1  [██████░░░░░░░░░░░░░░] 6/20 (2 activating, 2 failed)"),
            "{frame}"
        );
        assert!(!frame.contains('\x1b'));

        // Unchanged: nothing but the new lines.
        let later = start + Duration::from_millis(300);
        assert_eq!(board.frame(&[], Some(&RolloutView::from(&wire)), later, false), "");
        // Changed, but too soon after the last bars.
        wire.phases[1] = wire_phase(1, 20, 7, 2, 1);
        let soon = start + Duration::from_millis(600);
        assert_eq!(board.frame(&["x".to_owned()], Some(&RolloutView::from(&wire)), soon, false), "x\n");
        // A second on: only batch 1 again.
        let frame = board.frame(&[], Some(&RolloutView::from(&wire)), start + LOG_BARS_EVERY, false);
        assert_eq!(frame.lines().count(), 1, "{frame}");
        assert!(frame.contains("batch 1  [███████░░░░░░░░░░░░░] 7/20 (1 activating, 2 failed)"), "{frame}");
        // The last frame does not wait for the second to pass.
        wire.phases[1] = wire_phase(1, 20, 20, 2, 0);
        let frame = board.frame(&[], Some(&RolloutView::from(&wire)), start + LOG_BARS_EVERY, true);
        assert!(frame.contains("20/20 (2 failed)"), "{frame}");
    }
}
