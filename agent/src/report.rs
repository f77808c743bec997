//! The agent's [`ConvergenceReport`], kept up to date as the executor works and
//! published on a watch channel; the link sends it to the controller (the latest
//! state wins, so a report lost with a dropped connection is simply sent again).
//! Every change is fitted to the limits the controller checks
//! ([`ConvergenceReport::fit_to_limits`]): a long error keeps its head and its tail,
//! and the report always goes through whole.

use std::sync::Arc;
use std::time::Instant;

use comfyfleet_config::convergence::{ConvergenceReport, StepReport, StepState};
use jiff::Timestamp;
use tokio::sync::watch;

use crate::command::OutputTail;

#[derive(Debug, Clone)]
pub struct Reporter {
    sender: Arc<watch::Sender<ConvergenceReport>>,
}

impl Reporter {
    pub fn new() -> (Reporter, watch::Receiver<ConvergenceReport>) {
        let (sender, receiver) = watch::channel(ConvergenceReport::idle(Timestamp::now()));
        (Reporter { sender: Arc::new(sender) }, receiver)
    }

    pub fn current(&self) -> ConvergenceReport {
        self.sender.borrow().clone()
    }

    /// Starts over with `report` (a new assignment, or the state found at start).
    pub fn replace(&self, mut report: ConvergenceReport) {
        report.fit_to_limits();
        report.updated_at = Timestamp::now();
        self.sender.send_replace(report);
    }

    pub fn update(&self, change: impl FnOnce(&mut ConvergenceReport)) {
        self.sender.send_modify(|report| {
            change(report);
            report.fit_to_limits();
            report.updated_at = Timestamp::now();
        });
    }

    fn update_step(&self, name: &str, change: impl FnOnce(&mut StepReport)) {
        self.update(|report| match report.steps.iter_mut().find(|step| step.name == name) {
            Some(step) => change(step),
            None => {
                let mut step = StepReport::pending(name);
                change(&mut step);
                report.steps.push(step);
            }
        });
    }

    /// Marks `name` running; the handle reports its progress and its end.
    pub fn begin(&self, name: &'static str) -> StepHandle {
        let started_at = Timestamp::now();
        self.update_step(name, |step| {
            step.state = StepState::Running;
            step.started_at = Some(started_at);
            step.duration_ms = 0;
            step.detail.clear();
            step.output_tail.clear();
        });
        StepHandle { reporter: self.clone(), name, started: Instant::now(), tail: OutputTail::default() }
    }

    /// Records a step that did not run now (done in an earlier run of the agent).
    pub fn record(&self, step: StepReport) {
        let name = step.name.clone();
        self.update_step(&name, |existing| *existing = step);
    }
}

/// One running step.
#[derive(Debug)]
pub struct StepHandle {
    reporter: Reporter,
    name: &'static str,
    started: Instant,
    tail: OutputTail,
}

impl StepHandle {
    pub fn progress(&self, detail: impl Into<String>) {
        let detail = detail.into();
        self.reporter.update_step(self.name, |step| step.detail = detail);
    }

    /// A line the step's command printed.
    pub fn line(&mut self, line: &str) {
        self.tail.push(line);
        let tail = self.tail.text();
        self.reporter.update_step(self.name, |step| step.output_tail = tail);
    }

    pub fn finish(self, state: StepState, detail: impl Into<String>) -> StepReport {
        let detail = detail.into();
        let duration_ms = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let mut finished = None;
        self.reporter.update_step(self.name, |step| {
            step.state = state;
            step.duration_ms = duration_ms;
            step.detail = detail;
            finished = Some(step.clone());
        });
        finished.unwrap_or_else(|| StepReport::pending(self.name))
    }
}

#[cfg(test)]
mod tests {
    use comfyfleet_config::convergence::{MAX_DETAIL, Phase};

    use super::*;

    #[test]
    fn what_is_reported_always_fits_the_limits() {
        let (reporter, receiver) = Reporter::new();
        let failure = format!(
            "requirements: `uv pip install{}` failed: error: disk full",
            " --find-links /x".repeat(400)
        );
        let step = reporter.begin("requirements");
        step.finish(StepState::Failed, failure.clone());
        reporter.update(|report| {
            report.phase = Phase::Failed;
            report.error = failure.clone();
        });
        let sent = receiver.borrow().clone();
        sent.validate().unwrap();
        assert!(sent.error.len() <= MAX_DETAIL && sent.error.ends_with("error: disk full"), "{}", sent.error);
        let detail = &sent.step("requirements").unwrap().detail;
        assert!(detail.starts_with("requirements: `uv pip install") && detail.contains("bytes left out"));
    }
}
