//! Prometheus metrics: `/metrics` in OpenMetrics text on `--metrics-listen` (plain
//! HTTP, with an optional bearer token). Events are counted as they happen (agent
//! sessions, enrollments, refusals, step durations from the agents' reports, store
//! latency); the fleet's state (machines by status, phase and revision, GPUs with
//! NVIDIA GPU Feature Discovery's label names, optimisation outcomes, rollout
//! progress) is read from the store at each scrape, so it is never stale.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use comfyfleet_config::convergence::{ConvergenceReport, StepState};
use comfyfleet_config::resolve::OptimizationOutcomeKind;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use subtle::ConstantTimeEq;

use crate::fleet_view::FleetMachine;
use crate::state::ControllerState;

type Labels = Vec<(&'static str, String)>;
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
    scrape_seconds: HistogramFamily,
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
        self.refusals
            .get_or_create(&vec![("stage", stage.to_owned()), ("reason", reason.as_str().to_owned())])
            .inc();
    }

    /// One store call: how long it took, and whether it failed.
    pub fn store_call(&self, operation: &'static str, took: Duration, failed: bool) {
        let labels = vec![("operation", operation.to_owned())];
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
                let labels = vec![("step", step.name.clone()), ("state", step.state.as_str().to_owned())];
                #[allow(clippy::cast_precision_loss)]
                self.step_seconds.get_or_create(&labels).observe(step.duration_ms as f64 / 1000.0);
            }
        }
    }

    fn register(&self, registry: &mut Registry) {
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
            "Enrollments, certificates and agent sessions refused, by stage and reason",
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

fn gauge(value: i64) -> Gauge {
    let gauge = Gauge::default();
    gauge.set(value);
    gauge
}

/// A gauge family filled from counts.
fn gauges(counts: impl IntoIterator<Item = (Labels, i64)>) -> Family<Labels, Gauge> {
    let family = Family::<Labels, Gauge>::default();
    for (labels, value) in counts {
        family.get_or_create(&labels).set(value);
    }
    family
}

/// `NVIDIA GeForce RTX 4090` → `NVIDIA-GeForce-RTX-4090`, as GPU Feature Discovery
/// writes `nvidia.com/gpu.product`.
fn gfd_product(name: &str) -> String {
    name.split_whitespace().collect::<Vec<_>>().join("-")
}

/// The fleet's state as metrics; `machines` are every machine, revoked ones included.
fn fleet_registry(registry: &mut Registry, machines: &[FleetMachine]) {
    let mut by_status: BTreeMap<&'static str, i64> =
        [("online", 0), ("offline", 0), ("revoked", 0)].into_iter().collect();
    let mut by_phase: BTreeMap<String, i64> = BTreeMap::new();
    let mut by_revision: BTreeMap<(String, String), i64> = BTreeMap::new();
    let mut gpus: HashMap<Labels, i64> = HashMap::new();
    let mut gpu_machines: HashMap<Labels, i64> = HashMap::new();
    let mut outcomes: HashMap<Labels, i64> = HashMap::new();
    let mut drifted = 0;
    for machine in machines {
        let record = &machine.record;
        let status = if record.revoked_at.is_some() {
            "revoked"
        } else if record.online {
            "online"
        } else {
            "offline"
        };
        *by_status.entry(status).or_default() += 1;
        if record.revoked_at.is_some() {
            continue;
        }
        let software = &machine.facts.software;
        let phase = software.phase.map_or("unreported", |phase| phase.as_str());
        *by_phase.entry(phase.to_owned()).or_default() += 1;
        if let (Some(environment), Some(revision)) = (&software.environment, software.revision) {
            *by_revision.entry((environment.clone(), revision.to_string())).or_default() += 1;
        }
        if !software.drift.is_empty() {
            drifted += 1;
        }
        let facts = &machine.facts;
        let driver: Vec<&str> = facts.driver_version.as_deref().unwrap_or_default().split('.').collect();
        let part = |at: usize| driver.get(at).copied().unwrap_or_default().to_owned();
        let (runtime_major, runtime_minor) = facts
            .cuda_driver_version
            .map(|cuda| (cuda.major.to_string(), cuda.minor.to_string()))
            .unwrap_or_default();
        let mut models = Vec::new();
        for gpu in &facts.gpus {
            let product = gfd_product(gpu.name.as_deref().unwrap_or("unknown"));
            let (major, minor) = gpu
                .compute_capability
                .map(|cc| (cc.major.to_string(), cc.minor.to_string()))
                .unwrap_or_default();
            let labels: Labels = vec![
                ("nvidia_com_gpu_product", product.clone()),
                ("nvidia_com_gpu_compute_major", major),
                ("nvidia_com_gpu_compute_minor", minor),
                ("nvidia_com_cuda_driver_major", part(0)),
                ("nvidia_com_cuda_driver_minor", part(1)),
                ("nvidia_com_cuda_driver_rev", part(2)),
                ("nvidia_com_cuda_runtime_major", runtime_major.clone()),
                ("nvidia_com_cuda_runtime_minor", runtime_minor.clone()),
            ];
            *gpus.entry(labels.clone()).or_default() += 1;
            if !models.contains(&labels) {
                *gpu_machines.entry(labels.clone()).or_default() += 1;
                models.push(labels);
            }
        }
        let mut products: Vec<String> =
            facts.gpus.iter().map(|gpu| gfd_product(gpu.name.as_deref().unwrap_or("unknown"))).collect();
        products.sort_unstable();
        products.dedup();
        for optimization in &software.optimizations {
            if optimization.outcome == OptimizationOutcomeKind::Absent {
                continue;
            }
            for product in &products {
                let labels: Labels = vec![
                    ("optimization", optimization.name.clone()),
                    ("nvidia_com_gpu_product", product.clone()),
                    ("outcome", optimization.outcome.as_str().to_owned()),
                ];
                *outcomes.entry(labels).or_default() += 1;
            }
        }
    }
    registry.register(
        "comfyfleet_machines",
        "Machines by status (online, offline, revoked)",
        gauges(by_status.into_iter().map(|(status, count)| (vec![("status", status.to_owned())], count))),
    );
    registry.register(
        "comfyfleet_machines_by_phase",
        "Machines that are not revoked, by the phase of their latest report",
        gauges(by_phase.into_iter().map(|(phase, count)| (vec![("phase", phase)], count))),
    );
    registry.register(
        "comfyfleet_machines_by_revision",
        "Machines by the environment revision that is current on them",
        gauges(by_revision.into_iter().map(|((environment, revision), count)| {
            (vec![("environment", environment), ("revision", revision)], count)
        })),
    );
    registry.register(
        "comfyfleet_machines_drifted",
        "Machines whose current environment differs from what verification recorded",
        gauge(drifted),
    );
    registry.register(
        "comfyfleet_gpus",
        "GPUs, with NVIDIA GPU Feature Discovery's labels (nvidia.com/gpu.product, …) as label names",
        gauges(gpus),
    );
    registry.register(
        "comfyfleet_gpu_machines",
        "Machines with at least one such GPU, with GPU Feature Discovery's labels",
        gauges(gpu_machines),
    );
    registry.register(
        "comfyfleet_optimization_machines",
        "Machines by an optimisation's outcome on their current environment, per GPU model they have",
        gauges(outcomes),
    );
}

/// Open rollouts' progress.
async fn rollout_registry(state: &ControllerState, registry: &mut Registry) -> Result<(), String> {
    let rollouts = crate::rollouts::api::open(state).await.map_err(|status| status.message().to_owned())?;
    let machines = Family::<Labels, Gauge>::default();
    let unavailable = Family::<Labels, Gauge>::default();
    let failures = Family::<Labels, Gauge>::default();
    let budget = Family::<Labels, Gauge>::default();
    for rollout in &rollouts {
        let labels = |extra: Option<(&'static str, String)>| -> Labels {
            let mut labels: Labels = vec![
                ("rollout", rollout.id.to_string()),
                ("environment", rollout.environment.clone()),
                ("revision", rollout.revision_number.to_string()),
            ];
            labels.extend(extra);
            labels
        };
        let counts = rollout.counts.unwrap_or_default();
        for (name, count) in [
            ("pending", counts.pending),
            ("preparing", counts.preparing),
            ("prepared", counts.prepared),
            ("activating", counts.activating),
            ("active", counts.active),
            ("failed", counts.failed),
            ("rolling-back", counts.rolling_back),
            ("rolled-back", counts.rolled_back),
            ("skipped", counts.skipped),
        ] {
            machines.get_or_create(&labels(Some(("state", name.to_owned())))).set(i64::from(count));
        }
        let down: u32 = rollout.phases.iter().map(|phase| phase.activating).sum();
        let failed: u32 = rollout.phases.iter().map(|phase| phase.failed).sum();
        unavailable.get_or_create(&labels(None)).set(i64::from(down));
        failures.get_or_create(&labels(None)).set(i64::from(failed));
        budget.get_or_create(&labels(None)).set(i64::from(rollout.failure_budget));
    }
    registry.register("comfyfleet_rollout_machines", "Machines of each open rollout, by state", machines);
    registry.register(
        "comfyfleet_rollout_unavailable",
        "Machines of each open rollout that cannot render now (activating)",
        unavailable,
    );
    registry.register("comfyfleet_rollout_failures", "Machines that failed in each open rollout", failures);
    registry.register(
        "comfyfleet_rollout_failure_budget",
        "Failures each open rollout tolerates before it pauses",
        budget,
    );
    Ok(())
}

/// The whole page, in OpenMetrics text.
pub async fn render(state: &ControllerState) -> Result<String, String> {
    let started = std::time::Instant::now();
    let machines = crate::fleet_view::machines(state, None, true).await.map_err(|error| error.to_string())?;
    let mut registry = Registry::default();
    fleet_registry(&mut registry, &machines);
    registry.register(
        "comfyfleet_agent_sessions",
        "Agent sessions connected to this controller now",
        gauge(i64::try_from(state.presence.online_count()).unwrap_or(i64::MAX)),
    );
    registry.register(
        "comfyfleet_server_certificate_expiry_timestamp_seconds",
        "When the server certificate served now expires (Unix time); renewed at two-thirds of its life",
        gauge(state.server_certificate.not_after().as_second()),
    );
    rollout_registry(state, &mut registry).await?;
    state
        .metrics
        .scrape_seconds
        .get_or_create(&vec![("part", "fleet".to_owned())])
        .observe(started.elapsed().as_secs_f64());
    state.metrics.register(&mut registry);
    let mut text = String::with_capacity(64 * 1024);
    encode(&mut text, &registry).map_err(|error| error.to_string())?;
    Ok(text)
}

/// What `/metrics` needs: the controller, and the bearer token when one is set.
#[derive(Clone)]
pub struct MetricsEndpoint {
    pub state: Arc<ControllerState>,
    pub token: Option<String>,
}

pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// The classic Prometheus text format, for clients that do not ask for OpenMetrics.
pub const TEXT_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// OpenMetrics text as the classic Prometheus text format (0.0.4): a counter family is
/// named with its `_total` suffix there, and there is no `# EOF` or `# UNIT`.
pub fn to_text_format(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = openmetrics
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE ")?.strip_suffix(" counter"))
        .collect();
    let mut text = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|prefix| {
            let rest = line.strip_prefix(prefix)?;
            let (name, tail) = rest.split_once(' ')?;
            counters.contains(name).then(|| format!("{prefix}{name}_total {tail}"))
        });
        text.push_str(renamed.as_deref().unwrap_or(line));
        text.push('\n');
    }
    text
}

pub async fn handler(State(endpoint): State<MetricsEndpoint>, headers: HeaderMap) -> Response {
    if let Some(token) = &endpoint.token {
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.strip_prefix("Bearer "))
            .unwrap_or_default();
        if !bool::from(given.as_bytes().ct_eq(token.as_bytes())) {
            return (
                StatusCode::UNAUTHORIZED,
                [(header::WWW_AUTHENTICATE, "Bearer realm=\"comfyfleet metrics\"")],
                "this /metrics needs the bearer token given to the controller with --metrics-token-file\n",
            )
                .into_response();
        }
    }
    // OpenMetrics for those who ask for it (Prometheus does), the classic text format
    // for everyone else (curl, promtool), as client_golang negotiates.
    let openmetrics = headers
        .get(header::ACCEPT)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|accept| accept.contains("application/openmetrics-text"));
    match render(&endpoint.state).await {
        Ok(text) if openmetrics => ([(header::CONTENT_TYPE, CONTENT_TYPE)], text).into_response(),
        Ok(text) => ([(header::CONTENT_TYPE, TEXT_CONTENT_TYPE)], to_text_format(&text)).into_response(),
        Err(error) => {
            tracing::error!(%error, "cannot build /metrics");
            (StatusCode::INTERNAL_SERVER_ERROR, format!("cannot build the metrics: {error}\n"))
                .into_response()
        }
    }
}

pub fn router(endpoint: MetricsEndpoint) -> axum::Router {
    axum::Router::new().route("/metrics", axum::routing::get(handler)).with_state(endpoint)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_text_format_names_counters_with_their_suffix() {
        let openmetrics = "# HELP a_events Events.\n# TYPE a_events counter\na_events_total 3\n\
                           # HELP b Things.\n# TYPE b gauge\nb 1\n# EOF\n";
        assert_eq!(
            to_text_format(openmetrics),
            "# HELP a_events_total Events.\n# TYPE a_events_total counter\na_events_total 3\n\
             # HELP b Things.\n# TYPE b gauge\nb 1\n"
        );
    }

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

    #[test]
    fn gpu_products_are_written_as_gpu_feature_discovery_does() {
        assert_eq!(gfd_product("NVIDIA GeForce RTX 4090"), "NVIDIA-GeForce-RTX-4090");
        assert_eq!(gfd_product("NVIDIA H100 80GB HBM3"), "NVIDIA-H100-80GB-HBM3");
    }
}
