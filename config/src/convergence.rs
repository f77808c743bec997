//! Where a machine stands with its desired environment: the agent's
//! [`ConvergenceReport`], built as its executor runs and checked by the controller
//! with [`ConvergenceReport::validate`] before it is stored.

use std::fmt;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::bounded_text;
use crate::inventory::MAX_TEXT;
use crate::spec_digest::SpecDigest;

/// The most steps one report may carry (there are 13 today).
pub const MAX_STEPS: usize = 32;
/// The most optimisations one report may carry.
pub const MAX_OPTIMIZATIONS: usize = 64;
/// ComfyUI instances in one report (one per GPU: 8 on the largest machines).
pub const MAX_INSTANCES: usize = 64;
/// The longest step detail or error accepted.
pub const MAX_DETAIL: usize = 4096;
/// The longest output tail accepted per step.
pub const MAX_OUTPUT_TAIL: usize = 8192;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    /// Nothing assigned.
    Idle,
    Preparing,
    /// Built and verified; waiting to be activated.
    Prepared,
    Activating,
    Active,
    Failed,
}

impl Phase {
    pub const ALL: [Phase; 6] =
        [Phase::Idle, Phase::Preparing, Phase::Prepared, Phase::Activating, Phase::Active, Phase::Failed];

    /// The phase written as `as_str` writes it.
    pub fn named(word: &str) -> Option<Phase> {
        Phase::ALL.into_iter().find(|phase| phase.as_str() == word)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Idle => "idle",
            Phase::Preparing => "preparing",
            Phase::Prepared => "prepared",
            Phase::Activating => "activating",
            Phase::Active => "active",
            Phase::Failed => "failed",
        }
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StepState {
    Pending,
    Running,
    Done,
    /// Nothing to do: its result was already there.
    Skipped,
    Failed,
}

impl StepState {
    pub fn as_str(self) -> &'static str {
        match self {
            StepState::Pending => "pending",
            StepState::Running => "running",
            StepState::Done => "done",
            StepState::Skipped => "skipped",
            StepState::Failed => "failed",
        }
    }
}

impl fmt::Display for StepState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One step of building or activating an environment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepReport {
    pub name: String,
    pub state: StepState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Timestamp>,
    #[serde(default)]
    pub duration_ms: u64,
    /// Progress while running; the result or the error when finished.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub detail: String,
    /// The last lines the step's commands printed.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub output_tail: String,
}

impl StepReport {
    pub fn pending(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            state: StepState::Pending,
            started_at: None,
            duration_ms: 0,
            detail: String::new(),
            output_tail: String::new(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OptimizationState {
    Pending,
    /// Installed and imported by the environment's own Python.
    Verified,
    Failed,
    /// Left out by the plan for this machine.
    Skipped,
}

impl OptimizationState {
    pub fn as_str(self) -> &'static str {
        match self {
            OptimizationState::Pending => "pending",
            OptimizationState::Verified => "verified",
            OptimizationState::Failed => "failed",
            OptimizationState::Skipped => "skipped",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OptimizationOutcome {
    pub name: String,
    /// The installed version once verified; the planned version or specifier before.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub version: String,
    pub fatal: bool,
    pub state: OptimizationState,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub detail: String,
}

/// The agent's account of its assignment: which generation and revision, how far it
/// got, every step with its timing and output, every optimisation's outcome.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConvergenceReport {
    pub generation: u64,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub environment: String,
    #[serde(default)]
    pub revision_number: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision_id: Option<SpecDigest>,
    pub phase: Phase,
    #[serde(default)]
    pub steps: Vec<StepReport>,
    #[serde(default)]
    pub optimizations: Vec<OptimizationOutcome>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub error: String,
    pub updated_at: Timestamp,
    /// The machine's ComfyUIs (one per GPU): absent from older agents' reports.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub instances: Vec<InstanceReport>,
}

/// One ComfyUI of a machine: the GPUs it sees, where it listens, how it is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceReport {
    pub index: u32,
    /// NVML indices; empty: every GPU (the only instance).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gpus: Vec<u32>,
    pub port: u32,
    pub pid: u32,
    pub state: InstanceState,
    /// What its last health check said.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub health: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum InstanceState {
    /// Started, its health not checked yet.
    Starting,
    /// Passed its health check.
    Healthy,
    /// Failed its health check.
    Failed,
    /// Running (adopted, or restarted after a crash): not checked since.
    Running,
    /// Its process is gone.
    Exited,
}

impl InstanceState {
    pub const ALL: [InstanceState; 5] = [
        InstanceState::Starting,
        InstanceState::Healthy,
        InstanceState::Failed,
        InstanceState::Running,
        InstanceState::Exited,
    ];

    pub fn as_str(&self) -> &'static str {
        match self {
            InstanceState::Starting => "starting",
            InstanceState::Healthy => "healthy",
            InstanceState::Failed => "failed",
            InstanceState::Running => "running",
            InstanceState::Exited => "exited",
        }
    }

    pub fn parse(text: &str) -> Option<InstanceState> {
        InstanceState::ALL.into_iter().find(|state| state.as_str() == text)
    }
}

impl fmt::Display for InstanceState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a report was refused; `field` is a path such as `steps[2].detail`.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[error("report field `{field}` {reason}")]
pub struct ReportError {
    pub field: String,
    pub reason: String,
}

impl ReportError {
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self { field: field.into(), reason: reason.into() }
    }
}

impl ConvergenceReport {
    pub fn idle(now: Timestamp) -> Self {
        Self {
            generation: 0,
            environment: String::new(),
            revision_number: 0,
            revision_id: None,
            phase: Phase::Idle,
            steps: Vec::new(),
            optimizations: Vec::new(),
            error: String::new(),
            updated_at: now,
            instances: Vec::new(),
        }
    }

    pub fn step(&self, name: &str) -> Option<&StepReport> {
        self.steps.iter().find(|step| step.name == name)
    }

    /// Checks what a controller must not store blindly: sizes and text.
    pub fn validate(&self) -> Result<(), ReportError> {
        text("environment", &self.environment, MAX_TEXT)?;
        text("error", &self.error, MAX_DETAIL)?;
        if self.steps.len() > MAX_STEPS {
            return Err(ReportError::new("steps", format!("has more than {MAX_STEPS} entries")));
        }
        for (position, step) in self.steps.iter().enumerate() {
            let field = |name: &str| format!("steps[{position}].{name}");
            name(&field("name"), &step.name)?;
            text(&field("detail"), &step.detail, MAX_DETAIL)?;
            if step.output_tail.len() > MAX_OUTPUT_TAIL {
                return Err(ReportError::new(
                    field("output_tail"),
                    format!(
                        "is {} bytes long; at most {MAX_OUTPUT_TAIL} are accepted",
                        step.output_tail.len()
                    ),
                ));
            }
        }
        if self.optimizations.len() > MAX_OPTIMIZATIONS {
            return Err(ReportError::new(
                "optimizations",
                format!("has more than {MAX_OPTIMIZATIONS} entries"),
            ));
        }
        for (position, outcome) in self.optimizations.iter().enumerate() {
            let field = |name: &str| format!("optimizations[{position}].{name}");
            name(&field("name"), &outcome.name)?;
            text(&field("version"), &outcome.version, MAX_TEXT)?;
            text(&field("detail"), &outcome.detail, MAX_DETAIL)?;
        }
        if self.instances.len() > MAX_INSTANCES {
            return Err(ReportError::new("instances", format!("has more than {MAX_INSTANCES} entries")));
        }
        for (position, instance) in self.instances.iter().enumerate() {
            text(&format!("instances[{position}].health"), &instance.health, MAX_DETAIL)?;
            if instance.gpus.len() > MAX_INSTANCES {
                return Err(ReportError::new(
                    format!("instances[{position}].gpus"),
                    format!("has more than {MAX_INSTANCES} entries"),
                ));
            }
        }
        Ok(())
    }

    /// The report as the agent sends it: every text field within its limit (its head
    /// and its tail kept, never cut blindly), control characters escaped, steps and
    /// optimisations that could not pass [`validate`](Self::validate) left out.
    pub fn fit_to_limits(&mut self) {
        self.shorten_fields(&|text, limit| bounded_text::keep_head_and_tail(text, limit), &mut Vec::new());
    }

    /// What the controller stores of a report that [`validate`](Self::validate) would
    /// refuse: every field that fails its check costs that field only — text too long
    /// is cut to its limit and marked (`… [cut: N bytes]`), control characters are
    /// escaped, a step or optimisation without a valid name is left out, entries past
    /// the limits are dropped. Returns what was mended, and why; afterwards the report
    /// validates.
    pub fn mend(&mut self) -> Vec<ReportError> {
        let mut mended = Vec::new();
        self.shorten_fields(&|text, limit| bounded_text::cut_to(text, limit), &mut mended);
        mended
    }

    fn shorten_fields(
        &mut self,
        shorten: &dyn Fn(&str, usize) -> std::borrow::Cow<'_, str>,
        mended: &mut Vec<ReportError>,
    ) {
        let mut text = |field: &dyn Fn() -> String, value: &mut String, limit: usize, controls: bool| {
            if controls && bounded_text::has_controls(value) {
                *value = bounded_text::escape_controls(value).into_owned();
                mended.push(ReportError::new(field(), "contained control characters; they were escaped"));
            }
            if value.len() > limit {
                let length = value.len();
                *value = shorten(value, limit).into_owned();
                mended.push(ReportError::new(
                    field(),
                    format!("was {length} bytes long; cut to the limit of {limit}"),
                ));
            }
        };
        text(&|| "environment".to_owned(), &mut self.environment, MAX_TEXT, true);
        text(&|| "error".to_owned(), &mut self.error, MAX_DETAIL, true);
        let mut dropped = Vec::new();
        if self.steps.len() > MAX_STEPS {
            dropped.push(ReportError::new(
                "steps",
                format!("had {} entries; the first {MAX_STEPS} were kept", self.steps.len()),
            ));
            self.steps.truncate(MAX_STEPS);
        }
        let mut position = 0;
        self.steps.retain_mut(|step| {
            let at = position;
            position += 1;
            if name(&format!("steps[{at}].name"), &step.name).is_err() {
                dropped.push(ReportError::new(
                    format!("steps[{at}].name"),
                    "is not 1 to 64 printable characters without spaces; the step was left out",
                ));
                return false;
            }
            text(&|| format!("steps[{at}].detail"), &mut step.detail, MAX_DETAIL, true);
            text(&|| format!("steps[{at}].output_tail"), &mut step.output_tail, MAX_OUTPUT_TAIL, false);
            true
        });
        if self.optimizations.len() > MAX_OPTIMIZATIONS {
            dropped.push(ReportError::new(
                "optimizations",
                format!("had {} entries; the first {MAX_OPTIMIZATIONS} were kept", self.optimizations.len()),
            ));
            self.optimizations.truncate(MAX_OPTIMIZATIONS);
        }
        let mut position = 0;
        self.optimizations.retain_mut(|outcome| {
            let at = position;
            position += 1;
            if name(&format!("optimizations[{at}].name"), &outcome.name).is_err() {
                dropped.push(ReportError::new(
                    format!("optimizations[{at}].name"),
                    "is not 1 to 64 printable characters without spaces; the optimisation was left out",
                ));
                return false;
            }
            text(&|| format!("optimizations[{at}].version"), &mut outcome.version, MAX_TEXT, true);
            text(&|| format!("optimizations[{at}].detail"), &mut outcome.detail, MAX_DETAIL, true);
            true
        });
        if self.instances.len() > MAX_INSTANCES {
            dropped.push(ReportError::new(
                "instances",
                format!("had {} entries; the first {MAX_INSTANCES} were kept", self.instances.len()),
            ));
            self.instances.truncate(MAX_INSTANCES);
        }
        for (at, instance) in self.instances.iter_mut().enumerate() {
            if instance.gpus.len() > MAX_INSTANCES {
                dropped.push(ReportError::new(
                    format!("instances[{at}].gpus"),
                    format!("had {} entries; the first {MAX_INSTANCES} were kept", instance.gpus.len()),
                ));
                instance.gpus.truncate(MAX_INSTANCES);
            }
            text(&|| format!("instances[{at}].health"), &mut instance.health, MAX_DETAIL, true);
        }
        mended.extend(dropped);
    }
}

/// A step or package name: short, printable, no spaces.
fn name(field: &str, value: &str) -> Result<(), ReportError> {
    if value.is_empty() || value.len() > 64 || !value.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(ReportError::new(field, "must be 1 to 64 printable characters without spaces"));
    }
    Ok(())
}

/// Free text: bounded, and no control characters but newlines and tabs.
fn text(field: &str, value: &str, limit: usize) -> Result<(), ReportError> {
    if value.len() > limit {
        return Err(ReportError::new(
            field,
            format!("is {} bytes long; at most {limit} are accepted", value.len()),
        ));
    }
    if value.chars().any(|c| c.is_control() && c != '\n' && c != '\t') {
        return Err(ReportError::new(field, "contains control characters"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report() -> ConvergenceReport {
        let mut report = ConvergenceReport::idle(Timestamp::UNIX_EPOCH);
        report.phase = Phase::Preparing;
        report.steps.push(StepReport::pending("torch"));
        report
    }

    #[test]
    fn a_report_validates_and_round_trips() {
        let report = report();
        report.validate().unwrap();
        let json = serde_json::to_string(&report).unwrap();
        assert!(json.contains("\"phase\":\"preparing\""), "{json}");
        assert_eq!(serde_json::from_str::<ConvergenceReport>(&json).unwrap(), report);
    }

    #[test]
    fn oversized_or_hostile_fields_are_named() {
        let mut long = report();
        long.steps[0].output_tail = "x".repeat(MAX_OUTPUT_TAIL + 1);
        assert_eq!(long.validate().unwrap_err().field, "steps[0].output_tail");
        let mut control = report();
        control.error = "bad\u{1b}[31m".into();
        assert_eq!(control.validate().unwrap_err().field, "error");
        let mut spaced = report();
        spaced.steps[0].name = "two words".into();
        assert_eq!(spaced.validate().unwrap_err().field, "steps[0].name");
        let mut many = report();
        many.steps = (0..=MAX_STEPS).map(|_| StepReport::pending("x")).collect();
        assert_eq!(many.validate().unwrap_err().field, "steps");
    }

    fn hostile() -> ConvergenceReport {
        let mut hostile = report();
        hostile.error = "e".repeat(100_000);
        hostile.steps[0].detail = format!("red\u{1b}[31m{}", "d".repeat(MAX_DETAIL));
        hostile.steps[0].output_tail = "o".repeat(MAX_OUTPUT_TAIL * 3);
        hostile.steps.push(StepReport::pending("two words"));
        hostile.steps.push(StepReport::pending("verify"));
        hostile.optimizations = (0..MAX_OPTIMIZATIONS + 5)
            .map(|i| OptimizationOutcome {
                name: format!("opt{i}"),
                version: "v".repeat(MAX_TEXT + 1),
                fatal: false,
                state: OptimizationState::Failed,
                detail: String::new(),
            })
            .collect();
        hostile
    }

    #[test]
    fn a_mended_report_validates_and_says_what_each_field_cost() {
        let mut mended = hostile();
        let what = mended.mend();
        mended.validate().unwrap();
        let fields: Vec<&str> = what.iter().map(|error| error.field.as_str()).collect();
        for field in [
            "error",
            "steps[0].detail",
            "steps[0].output_tail",
            "steps[1].name",
            "optimizations",
            "optimizations[0].version",
        ] {
            assert!(fields.contains(&field), "{field} in {fields:?}");
        }
        assert!((MAX_DETAIL - 8..=MAX_DETAIL).contains(&mended.error.len()), "{}", mended.error.len());
        assert!(
            mended.error.starts_with("eee") && mended.error.ends_with(" bytes]"),
            "{}",
            &mended.error[4000..]
        );
        let cut: usize =
            mended.error.rsplit("[cut: ").next().unwrap().trim_end_matches(" bytes]").parse().unwrap();
        assert_eq!(cut + mended.error.len() - format!("… [cut: {cut} bytes]").len(), 100_000);
        assert!(mended.steps[0].detail.starts_with("red\\u{1b}[31m"), "{}", &mended.steps[0].detail[..20]);
        assert_eq!(
            mended.steps.iter().map(|step| step.name.as_str()).collect::<Vec<_>>(),
            ["torch", "verify"],
            "only the step without a valid name is left out"
        );
        assert_eq!(mended.optimizations.len(), MAX_OPTIMIZATIONS);
        assert!(report().mend().is_empty(), "a valid report is left alone");
    }

    #[test]
    fn what_the_agent_sends_fits_keeping_head_and_tail() {
        let mut fitted = hostile();
        fitted.error = format!("the requirements step failed{}error: disk full", "x".repeat(20_000));
        fitted.fit_to_limits();
        fitted.validate().unwrap();
        assert!(fitted.error.len() <= MAX_DETAIL);
        assert!(fitted.error.starts_with("the requirements step failed"), "{}", &fitted.error[..40]);
        assert!(fitted.error.ends_with("error: disk full"), "{}", &fitted.error[fitted.error.len() - 40..]);
        assert!(fitted.error.contains(" bytes left out] …"));
    }
}
