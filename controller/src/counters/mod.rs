//! Prometheus metrics: `/metrics` in OpenMetrics text on `--metrics-listen` (plain
//! HTTP, with an optional bearer token). Events are counted as they happen (agent
//! sessions, enrollments, refusals, step durations from the agents' reports, store
//! latency); the fleet's state (machines by status, phase and revision, GPUs with
//! NVIDIA GPU Feature Discovery's label names, optimisation outcomes, rollout
//! progress) is read from the store when a page is built (`page`: at most once a
//! second, however many scrape). Every label value is escaped (`label`).

use std::time::Duration;

use comfyfleet_config::convergence::{ConvergenceReport, StepState};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

pub(crate) mod label;

use label::{Labels, label};

type HistogramFamily = Family<Labels, Histogram, fn() -> Histogram>;

/// What is counted as it happens; cheap to clone (every metric shares its value).
#[derive(Clone)]
pub struct Metrics {
    sessions_opened: Counter,
    enrollments: Counter,
    refusals: Family<Labels, Counter>,
    step_seconds: HistogramFamily,
    store_seconds: HistogramFamily,
    store_errors: Family<Labels, Counter>,
    pub(crate) scrape_seconds: HistogramFamily,
}

fn step_histogram() -> Histogram {
    // 0.5 s to about 2.3 h: a cached step to a torch download on a slow link.
    Histogram::new(exponential_buckets(0.5, 2.0, 15))
}

fn store_histogram() -> Histogram {
    // 100 µs to about 3.3 s.
    Histogram::new(exponential_buckets(0.000_1, 2.0, 16))
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            sessions_opened: Counter::default(),
            enrollments: Counter::default(),
            refusals: Family::default(),
            step_seconds: Family::new_with_constructor(step_histogram),
            store_seconds: Family::new_with_constructor(store_histogram),
            store_errors: Family::default(),
            scrape_seconds: Family::new_with_constructor(store_histogram),
        }
    }
}

/// Why an agent or a would-be agent was turned away: short, stable label values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    MalformedToken,
    WrongCa,
    BadHostname,
    BadLabels,
    BadCsr,
    TokenRefused,
    NoCertificate,
    UnknownMachine,
    Revoked,
    StaleCertificate,
    NoHello,
    BadMessage,
    Silent,
    Replaced,
    Throttled,
    /// A report field that failed its check: cut, escaped or left out, the rest kept.
    BadField,
    /// A report on a generation this machine was never assigned.
    UnassignedGeneration,
    /// A report on the assigned generation that names another revision.
    UnassignedRevision,
}

impl Refusal {
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::MalformedToken => "malformed-token",
            Refusal::WrongCa => "token-for-another-ca",
            Refusal::BadHostname => "bad-hostname",
            Refusal::BadLabels => "bad-labels",
            Refusal::BadCsr => "bad-csr",
            Refusal::TokenRefused => "token-refused",
            Refusal::NoCertificate => "no-client-certificate",
            Refusal::UnknownMachine => "unknown-machine",
            Refusal::Revoked => "revoked",
            Refusal::StaleCertificate => "stale-certificate",
            Refusal::NoHello => "no-hello",
            Refusal::BadMessage => "bad-message",
            Refusal::Silent => "silent",
            Refusal::Replaced => "replaced",
            Refusal::Throttled => "throttled",
            Refusal::BadField => "bad-field",
            Refusal::UnassignedGeneration => "unassigned-generation",
            Refusal::UnassignedRevision => "unassigned-revision",
        }
    }
}

impl Metrics {
    pub fn session_opened(&self) {
        self.sessions_opened.inc();
    }

    pub fn enrolled(&self) {
        self.enrollments.inc();
    }

    pub fn refused(&self, stage: &'static str, reason: Refusal) {
        self.refusals.get_or_create(&vec![label("stage", stage), label("reason", reason.as_str())]).inc();
    }

    /// One store call: how long it took, and whether it failed.
    pub fn store_call(&self, operation: &'static str, took: Duration, failed: bool) {
        let labels = vec![label("operation", operation)];
        self.store_seconds.get_or_create(&labels).observe(took.as_secs_f64());
        if failed {
            self.store_errors.get_or_create(&labels).inc();
        }
    }

    /// The steps `report` finished that `previous` (the machine's stored report) had
    /// not: each finished step is observed once, however often it is reported.
    pub fn steps_reported(&self, previous: Option<&ConvergenceReport>, report: &ConvergenceReport) {
        for step in &report.steps {
            if !matches!(step.state, StepState::Done | StepState::Failed) {
                continue;
            }
            let seen = previous.is_some_and(|previous| {
                previous.generation == report.generation
                    && previous.step(&step.name).is_some_and(|before| {
                        before.state == step.state && before.started_at == step.started_at
                    })
            });
            if !seen {
                let labels = vec![label("step", step.name.as_str()), label("state", step.state.as_str())];
                #[allow(clippy::cast_precision_loss)]
                self.step_seconds.get_or_create(&labels).observe(step.duration_ms as f64 / 1000.0);
            }
        }
    }

    pub(crate) fn register(&self, registry: &mut Registry) {
        registry.register(
            "comfyfleet_agent_sessions_opened",
            "Agent sessions opened (Hello accepted) since the controller started",
            self.sessions_opened.clone(),
        );
        registry.register(
            "comfyfleet_enrollments",
            "Machines enrolled since the controller started",
            self.enrollments.clone(),
        );
        registry.register(
            "comfyfleet_refusals",
            "Enrollments, certificates, agent sessions, reports and report fields refused, by stage and reason",
            self.refusals.clone(),
        );
        registry.register(
            "comfyfleet_step_duration_seconds",
            "How long agents' provisioning steps took, by step and outcome",
            self.step_seconds.clone(),
        );
        registry.register(
            "comfyfleet_store_operation_duration_seconds",
            "Latency of the controller's store operations",
            self.store_seconds.clone(),
        );
        registry.register(
            "comfyfleet_store_operation_errors",
            "Store operations that failed",
            self.store_errors.clone(),
        );
        registry.register(
            "comfyfleet_scrape_duration_seconds",
            "How long building this page took, by part",
            self.scrape_seconds.clone(),
        );
    }
}

#[cfg(test)]
mod tests {
    use prometheus_client::encoding::text::encode;

    use super::*;

    fn report(generation: u64, steps: &[(&str, &str, i64)]) -> ConvergenceReport {
        serde_json::from_value(serde_json::json!({
            "generation": generation,
            "phase": "preparing",
            "steps": steps.iter().map(|(name, state, started)| serde_json::json!({
                "name": name, "state": state, "duration_ms": 1500,
                "started_at": jiff::Timestamp::from_second(*started).unwrap(),
            })).collect::<Vec<_>>(),
            "updated_at": "2026-12-07T00:00:00Z",
        }))
        .unwrap()
    }

    fn encoded(metrics: &Metrics) -> String {
        let mut registry = Registry::default();
        metrics.register(&mut registry);
        let mut text = String::new();
        encode(&mut text, &registry).unwrap();
        text
    }

    #[test]
    fn a_finished_step_is_observed_once_however_often_it_is_reported() {
        let metrics = Metrics::default();
        let first = report(1, &[("venv", "done", 10), ("torch", "running", 11)]);
        metrics.steps_reported(None, &first);
        let second = report(1, &[("venv", "done", 10), ("torch", "done", 11)]);
        metrics.steps_reported(Some(&first), &second);
        metrics.steps_reported(Some(&second), &second);
        // A new generation runs its steps again.
        let third = report(2, &[("venv", "done", 20)]);
        metrics.steps_reported(Some(&second), &third);
        let text = encoded(&metrics);
        assert!(
            text.contains("comfyfleet_step_duration_seconds_count{step=\"venv\",state=\"done\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("comfyfleet_step_duration_seconds_count{step=\"torch\",state=\"done\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("comfyfleet_step_duration_seconds_sum{step=\"torch\",state=\"done\"} 1.5"),
            "{text}"
        );
    }

    #[test]
    fn refusals_enrollments_and_store_calls_are_counted() {
        let metrics = Metrics::default();
        metrics.enrolled();
        metrics.refused("enroll", Refusal::TokenRefused);
        metrics.refused("enroll", Refusal::TokenRefused);
        metrics.refused("certificate", Refusal::Revoked);
        metrics.store_call("get_machine", Duration::from_millis(2), false);
        metrics.store_call("get_machine", Duration::from_millis(3), true);
        let text = encoded(&metrics);
        for line in [
            "comfyfleet_enrollments_total 1",
            "comfyfleet_refusals_total{stage=\"enroll\",reason=\"token-refused\"} 2",
            "comfyfleet_refusals_total{stage=\"certificate\",reason=\"revoked\"} 1",
            "comfyfleet_store_operation_duration_seconds_count{operation=\"get_machine\"} 2",
            "comfyfleet_store_operation_errors_total{operation=\"get_machine\"} 1",
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
    }
}
