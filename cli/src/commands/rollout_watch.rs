//! `comfyfleet rollout watch`, and `rollout start|undo --wait`: follow a rollout until
//! it ends. Every interval it reads the rollout and the events stored after the last
//! one seen, prints a line per event and keeps a progress bar per phase. A controller
//! that stops answering is left for another of the fleet's (`other_servers`); one that
//! is briefly unreachable (restarting, its database down) is retried until the watch's
//! limit; the rollout goes on without us.

use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use comfyfleet_config::AdminConfig;
use comfyfleet_proto::v1 as pb;
use jiff::tz::TimeZone;

use super::convergence::{Printer, WaitLimit};
use super::rollout_render::{Board, event_line};
use super::rollout_view::{EventView, RolloutView};
use super::status_error;
use crate::client::{Failover, Fleet};

/// Events asked for per call; a full page means there may be more.
const EVENT_PAGE: u32 = 1000;
/// A call that takes longer than this counts as the controller being unreachable.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

pub fn parse_interval(text: &str) -> Result<Duration, String> {
    let interval = comfyfleet_config::duration::parse_positive(text).map_err(|error| error.to_string())?;
    if interval < Duration::from_millis(100) {
        return Err(format!("`{}` is too short: poll at most every 100ms", text.trim()));
    }
    Ok(interval)
}

#[derive(Debug, Clone)]
pub struct WatchOptions {
    /// `None`: until the rollout ends.
    pub limit: Option<WaitLimit>,
    pub interval: Duration,
    pub printer: Printer,
}

/// How watching ends, decided from the rollout alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Keep watching: running, or paused by an operator (who may resume it).
    Watching,
    /// Exit 0.
    Succeeded(String),
    /// Exit 1, with what happened and what to do next.
    Failed(String),
}

pub fn verdict(rollout: &RolloutView) -> Verdict {
    let title = rollout.title();
    let id = rollout.id;
    match rollout.state {
        "succeeded" => {
            let mut line = format!("{title} succeeded: {} active", rollout.counts.active);
            if rollout.counts.failed > 0 || rollout.counts.rolled_back > 0 {
                line.push_str(&format!(
                    ", {} failed, {} rolled back (budget {})",
                    rollout.counts.failed, rollout.counts.rolled_back, rollout.limits.failure_budget
                ));
            }
            if rollout.counts.skipped > 0 {
                line.push_str(&format!(", {} skipped", rollout.counts.skipped));
            }
            Verdict::Succeeded(line)
        }
        "aborted" => Verdict::Failed(format!(
            "{title} was {}; machines that had switched stay on it, the others were returned: \
             `comfyfleet rollout status {id}` shows each machine",
            rollout.state_text()
        )),
        "paused" if rollout.budget_exceeded => Verdict::Failed(format!(
            "{title} {}: {} failed, budget {}; `comfyfleet rollout status {id}` shows why, then \
             `comfyfleet rollout resume {id}` retries the failed machines or `comfyfleet rollout undo {}` goes back",
            rollout.state_text(),
            rollout.counts.failed,
            rollout.limits.failure_budget,
            rollout.environment
        )),
        _ => Verdict::Watching,
    }
}

fn timed_out(rollout: Option<&RolloutView>, target: &str, limit: &WaitLimit) -> anyhow::Error {
    let Some(rollout) = rollout else {
        return anyhow::anyhow!(
            "the controller did not answer for {}: `comfyfleet rollout watch {target}` follows the rollout again",
            limit.text
        );
    };
    let done: u32 = rollout.phases.iter().map(|phase| phase.done).sum();
    anyhow::anyhow!(
        "{} still {} after {} ({done}/{} machines done, {} failed); it carries on without this command: \
         `comfyfleet rollout watch {}` follows it again",
        rollout.title(),
        rollout.state_text(),
        limit.text,
        rollout.counts.machines,
        rollout.counts.failed,
        rollout.id
    )
}

/// A failed call the watch sits out: the controller restarting or the network
/// hiccuping, as opposed to a refusal (unknown rollout, no permission).
fn is_transient(status: &tonic::Status) -> bool {
    match status.code() {
        tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Cancelled => true,
        tonic::Code::Unknown => {
            let message = status.message().to_ascii_lowercase();
            message.contains("transport") || message.contains("connection")
        }
        _ => false,
    }
}

/// What one poll read.
struct Poll {
    rollout: RolloutView,
    /// The events after the last one seen, oldest first.
    events: Vec<EventView>,
}

/// Where the watch reads a rollout from: the controller, or a script in tests.
trait RolloutSource {
    /// `machines`: also read the machines (for their hostnames), which a rollout of
    /// thousands makes worth skipping when nothing new appeared.
    async fn poll(&mut self, target: &str, after: u64, machines: bool) -> Result<Poll, tonic::Status>;
}

impl RolloutSource for Fleet {
    /// The rollout, then every event after `after`: read in that order, the events
    /// include whatever led to the state read.
    async fn poll(&mut self, target: &str, after: u64, machines: bool) -> Result<Poll, tonic::Status> {
        let request = pb::GetRolloutRequest { rollout: target.to_owned(), without_machines: !machines };
        let rollout = bounded(self.get_rollout(request)).await?;
        let rollout = RolloutView::from(&rollout);
        let id = rollout.id.to_string();
        let mut events = Vec::new();
        let mut after = after;
        loop {
            let request = pb::ListRolloutEventsRequest { rollout: id.clone(), after, limit: EVENT_PAGE };
            let page = bounded(self.list_rollout_events(request)).await?;
            let full = page.events.len() >= EVENT_PAGE as usize;
            events.extend(page.events.iter().map(EventView::from));
            match events.last() {
                Some(last) if full && last.id > after => after = last.id,
                _ => return Ok(Poll { rollout, events }),
            }
        }
    }
}

/// The controller the watch reads from, left for another of the fleet's when it stops
/// answering.
struct Controllers<'a> {
    fleet: &'a mut Fleet,
    config: &'a AdminConfig,
    failover: Failover,
}

impl RolloutSource for Controllers<'_> {
    async fn poll(&mut self, target: &str, after: u64, machines: bool) -> Result<Poll, tonic::Status> {
        let status = match self.fleet.poll(target, after, machines).await {
            Err(status) if is_transient(&status) => status,
            answered => return answered,
        };
        // Another of the fleet's controllers (or this one, reconnected) may answer now.
        match self.failover.reconnect(self.config, self.fleet).await {
            Ok(_) => self.fleet.poll(target, after, machines).await,
            Err(_) => Err(status),
        }
    }
}

async fn bounded<T>(
    call: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) -> Result<T, tonic::Status> {
    match tokio::time::timeout(CALL_TIMEOUT, call).await {
        Ok(answer) => answer.map(tonic::Response::into_inner),
        Err(_) => Err(tonic::Status::deadline_exceeded(format!("no answer in {}s", CALL_TIMEOUT.as_secs()))),
    }
}

/// Writes without panicking on a closed pipe (`| head`), which `println!` would.
fn emit(printer: Printer, text: &str) {
    if text.is_empty() {
        return;
    }
    let _ = match printer {
        Printer::Stdout => {
            let mut out = std::io::stdout().lock();
            out.write_all(text.as_bytes()).and_then(|()| out.flush())
        }
        Printer::Stderr => std::io::stderr().lock().write_all(text.as_bytes()),
    };
}

/// Bars are redrawn in place only on a terminal that understands cursor movement.
fn is_terminal(printer: Printer) -> bool {
    let terminal = match printer {
        Printer::Stdout => std::io::stdout().is_terminal(),
        Printer::Stderr => std::io::stderr().is_terminal(),
    };
    terminal && !matches!(std::env::var("TERM").as_deref(), Ok("dumb"))
}

/// Watches `target` (a rollout id, an environment name, or "" for the newest rollout)
/// until it succeeds (the final line), or ends otherwise or outlasts the limit (an
/// error: exit status 1).
/// `config` names the fleet's controllers to move to when the one `client` reaches
/// stops answering (`client` is then left connected to the one that answered).
pub async fn watch(
    client: &mut Fleet,
    config: &AdminConfig,
    target: &str,
    options: &WatchOptions,
) -> anyhow::Result<String> {
    let board = Board::new(is_terminal(options.printer), TimeZone::system());
    let mut source = Controllers { fleet: client, config, failover: Failover::after_connect() };
    follow(&mut source, target, options, board, &mut |text| emit(options.printer, text)).await
}

async fn follow(
    source: &mut impl RolloutSource,
    target: &str,
    options: &WatchOptions,
    mut board: Board,
    out: &mut dyn FnMut(&str),
) -> anyhow::Result<String> {
    let deadline = options.limit.as_ref().map(|limit| Instant::now() + limit.duration);
    // Resolved to the rollout's id at the first answer, so a newer rollout of the
    // same environment started meanwhile is not followed instead.
    let mut target = target.to_owned();
    let mut after = 0;
    let mut last: Option<RolloutView> = None;
    let mut hostnames: HashMap<String, String> = HashMap::new();
    // Set when an event names a machine the last machine list did not have.
    let mut need_hostnames = false;
    let mut unreachable = false;
    loop {
        let mut lines = Vec::new();
        let machines = last.is_none() || need_hostnames;
        match source.poll(&target, after, machines).await {
            Ok(Poll { rollout, events }) => {
                if unreachable {
                    lines.push("controller reachable again".to_owned());
                    unreachable = false;
                }
                if last.is_none() {
                    lines.push(format!(
                        "watching {} ({}, {} machines)",
                        rollout.title(),
                        rollout.state_text(),
                        rollout.counts.machines
                    ));
                }
                target = rollout.id.to_string();
                hostnames.extend(
                    rollout
                        .machines
                        .iter()
                        .map(|machine| (machine.machine.clone(), machine.hostname.clone())),
                );
                need_hostnames = events
                    .iter()
                    .filter_map(|event| event.machine.as_ref())
                    .any(|machine| !hostnames.contains_key(machine));
                lines.extend(events.iter().map(|event| event_line(event, &hostnames, board.zone())));
                after = events.last().map_or(after, |event| event.id.max(after));
                let was_paused = last.as_ref().is_some_and(|last| last.state == "paused");
                if rollout.state == "paused" && !rollout.budget_exceeded && !was_paused {
                    lines.push(format!(
                        "{} is {}; still watching: `comfyfleet rollout resume {}` goes on",
                        rollout.title(),
                        rollout.state_text(),
                        rollout.id
                    ));
                }
                let verdict = verdict(&rollout);
                let finished = verdict != Verdict::Watching;
                out(&board.frame(&lines, Some(&rollout), Instant::now(), finished));
                last = Some(rollout);
                match verdict {
                    Verdict::Watching => {}
                    Verdict::Succeeded(line) => return Ok(line + "\n"),
                    Verdict::Failed(reason) => anyhow::bail!(reason),
                }
            }
            Err(status) if is_transient(&status) => {
                if !unreachable {
                    lines.push(format!("controller unreachable, retrying ({})", status.message()));
                    unreachable = true;
                }
                out(&board.frame(&lines, last.as_ref(), Instant::now(), false));
            }
            Err(status) => return Err(status_error(status)),
        }
        let now = Instant::now();
        if let (Some(deadline), Some(limit)) = (deadline, &options.limit)
            && now >= deadline
        {
            return Err(timed_out(last.as_ref(), &target, limit));
        }
        let pause = deadline.map_or(options.interval, |deadline| {
            options.interval.min(deadline.saturating_duration_since(now))
        });
        tokio::time::sleep(pause).await;
    }
}

#[cfg(test)]
mod tests;
