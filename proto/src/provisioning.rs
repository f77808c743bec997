//! Wire ⇄ domain conversions for provisioning: assignments going to agents and the
//! agents' convergence reports coming back. (The environments an agent has installed
//! are part of its inventory, in [`crate::convert`].)

use comfyfleet_config::assignment::{AssignmentRecord, MachineAssignment};
use comfyfleet_config::convergence::{
    ConvergenceReport, InstanceReport, InstanceState, OptimizationOutcome, OptimizationState, Phase,
    ReportError, StepReport, StepState,
};
use comfyfleet_config::spec::DriverCompat;

use crate::convert::{WireError, digest, optional_digest, timestamp_from_wire, timestamp_to_wire};
use crate::v1 as pb;

impl From<&AssignmentRecord> for pb::DesiredState {
    fn from(record: &AssignmentRecord) -> Self {
        pb::DesiredState {
            generation: record.generation,
            assignment: Some(pb::Assignment {
                environment: record.environment.clone(),
                revision_number: record.revision_number,
                revision_id: record.revision_id.clone(),
                spec_json: record.spec_json.clone(),
                plan_json: record.plan_json.clone(),
                activate: record.activate,
                reason: record.reason.clone(),
                lock_json: record.lock_json.clone(),
            }),
            source_credentials: Vec::new(),
        }
    }
}

/// The assignment in a desired state, as text still to be checked
/// ([`comfyfleet_config::Assignment::from_record`]); `None` when nothing is assigned.
pub fn assignment_from_wire(desired: pb::DesiredState) -> Option<AssignmentRecord> {
    let assignment = desired.assignment?;
    Some(AssignmentRecord {
        generation: desired.generation,
        environment: assignment.environment,
        revision_number: assignment.revision_number,
        revision_id: assignment.revision_id,
        spec_json: assignment.spec_json,
        plan_json: assignment.plan_json,
        activate: assignment.activate,
        reason: assignment.reason,
        lock_json: assignment.lock_json,
    })
}

impl From<&MachineAssignment> for pb::MachineAssignment {
    fn from(assignment: &MachineAssignment) -> Self {
        pb::MachineAssignment {
            generation: assignment.generation,
            environment: assignment.environment.clone(),
            revision_number: assignment.revision_number,
            revision_id: assignment.revision_id.to_string(),
            activate: assignment.activate,
            reason: assignment.reason.to_string(),
            assigned_at: Some(timestamp_to_wire(assignment.assigned_at)),
            assigned_by: assignment.assigned_by.clone(),
            torch: assignment.torch.clone(),
            driver_compat: if assignment.driver_compat.is_exact() {
                String::new()
            } else {
                "minor".to_owned()
            },
        }
    }
}

impl TryFrom<pb::MachineAssignment> for MachineAssignment {
    type Error = WireError;

    fn try_from(wire: pb::MachineAssignment) -> Result<Self, Self::Error> {
        Ok(MachineAssignment {
            generation: wire.generation,
            environment: wire.environment,
            revision_number: wire.revision_number,
            revision_id: digest("assignment.revision_id", &wire.revision_id)?,
            activate: wire.activate,
            reason: wire
                .reason
                .parse()
                .map_err(|reason| WireError::Invalid { field: "assignment.reason", reason })?,
            assigned_at: timestamp_from_wire(
                "assignment.assigned_at",
                wire.assigned_at.as_ref().ok_or(WireError::Missing("assignment.assigned_at"))?,
            )?,
            assigned_by: wire.assigned_by,
            torch: wire.torch,
            driver_compat: match wire.driver_compat.as_str() {
                "" | "exact" => DriverCompat::Exact,
                "minor" => DriverCompat::Minor,
                other => {
                    return Err(WireError::Invalid {
                        field: "assignment.driver_compat",
                        reason: format!("`{other}` is not a driver compatibility (exact or minor)"),
                    });
                }
            },
        })
    }
}

fn phase_to_wire(phase: Phase) -> pb::ConvergencePhase {
    match phase {
        Phase::Idle => pb::ConvergencePhase::Idle,
        Phase::Preparing => pb::ConvergencePhase::Preparing,
        Phase::Prepared => pb::ConvergencePhase::Prepared,
        Phase::Activating => pb::ConvergencePhase::Activating,
        Phase::Active => pb::ConvergencePhase::Active,
        Phase::Failed => pb::ConvergencePhase::Failed,
    }
}

fn step_state_to_wire(state: StepState) -> pb::StepState {
    match state {
        StepState::Pending => pb::StepState::Pending,
        StepState::Running => pb::StepState::Running,
        StepState::Done => pb::StepState::Done,
        StepState::Skipped => pb::StepState::Skipped,
        StepState::Failed => pb::StepState::Failed,
    }
}

fn optimization_state_to_wire(state: OptimizationState) -> pb::OptimizationState {
    match state {
        OptimizationState::Pending => pb::OptimizationState::Pending,
        OptimizationState::Verified => pb::OptimizationState::Verified,
        OptimizationState::Failed => pb::OptimizationState::Failed,
        OptimizationState::Skipped => pb::OptimizationState::Skipped,
    }
}

impl From<&ConvergenceReport> for pb::ConvergenceReport {
    fn from(report: &ConvergenceReport) -> Self {
        pb::ConvergenceReport {
            generation: report.generation,
            environment: report.environment.clone(),
            revision_number: report.revision_number,
            revision_id: report.revision_id.as_ref().map(ToString::to_string).unwrap_or_default(),
            phase: phase_to_wire(report.phase).into(),
            steps: report
                .steps
                .iter()
                .map(|step| pb::StepReport {
                    name: step.name.clone(),
                    state: step_state_to_wire(step.state).into(),
                    started_at: step.started_at.map(timestamp_to_wire),
                    duration_ms: step.duration_ms,
                    detail: step.detail.clone(),
                    output_tail: step.output_tail.clone(),
                })
                .collect(),
            optimizations: report
                .optimizations
                .iter()
                .map(|outcome| pb::OptimizationOutcome {
                    name: outcome.name.clone(),
                    version: outcome.version.clone(),
                    fatal: outcome.fatal,
                    state: optimization_state_to_wire(outcome.state).into(),
                    detail: outcome.detail.clone(),
                })
                .collect(),
            error: report.error.clone(),
            updated_at: Some(timestamp_to_wire(report.updated_at)),
            instances: report
                .instances
                .iter()
                .map(|instance| pb::InstanceReport {
                    index: instance.index,
                    gpus: instance.gpus.clone(),
                    port: instance.port,
                    pid: instance.pid,
                    state: instance.state.to_string(),
                    health: instance.health.clone(),
                })
                .collect(),
        }
    }
}

impl TryFrom<pb::ConvergenceReport> for ConvergenceReport {
    type Error = WireError;

    /// Strict: any field that fails its check refuses the whole report (what the CLI
    /// reads back from the controller, which stores only checked reports).
    fn try_from(wire: pb::ConvergenceReport) -> Result<Self, Self::Error> {
        let (report, unreadable) = convert_report(wire, jiff::Timestamp::UNIX_EPOCH)?;
        if let Some(error) = unreadable.into_iter().next() {
            return Err(WireError::Invalid { field: "report", reason: error.to_string() });
        }
        report
            .validate()
            .map_err(|error| WireError::Invalid { field: "report", reason: error.to_string() })?;
        Ok(report)
    }
}

fn phase_from_wire(phase: i32) -> Option<Phase> {
    match pb::ConvergencePhase::try_from(phase).ok()? {
        pb::ConvergencePhase::Idle => Some(Phase::Idle),
        pb::ConvergencePhase::Preparing => Some(Phase::Preparing),
        pb::ConvergencePhase::Prepared => Some(Phase::Prepared),
        pb::ConvergencePhase::Activating => Some(Phase::Activating),
        pb::ConvergencePhase::Active => Some(Phase::Active),
        pb::ConvergencePhase::Failed => Some(Phase::Failed),
        pb::ConvergencePhase::Unspecified => None,
    }
}

fn step_state_from_wire(state: i32) -> Option<StepState> {
    match pb::StepState::try_from(state).ok()? {
        pb::StepState::Pending => Some(StepState::Pending),
        pb::StepState::Running => Some(StepState::Running),
        pb::StepState::Done => Some(StepState::Done),
        pb::StepState::Skipped => Some(StepState::Skipped),
        pb::StepState::Failed => Some(StepState::Failed),
        pb::StepState::Unspecified => None,
    }
}

fn optimization_state_from_wire(state: i32) -> Option<OptimizationState> {
    match pb::OptimizationState::try_from(state).ok()? {
        pb::OptimizationState::Pending => Some(OptimizationState::Pending),
        pb::OptimizationState::Verified => Some(OptimizationState::Verified),
        pb::OptimizationState::Failed => Some(OptimizationState::Failed),
        pb::OptimizationState::Skipped => Some(OptimizationState::Skipped),
        pb::OptimizationState::Unspecified => None,
    }
}

/// An agent's report as the controller takes it: a field that fails its check costs
/// that field, not the report — text is cut to its limit and marked, control
/// characters escaped ([`ConvergenceReport::mend`]), a step or optimisation in an
/// unknown state left out, an unreadable revision id or start time dropped, a missing
/// `updated_at` replaced by `received_at`. Returns the report with what was mended and
/// why. Only a report whose phase is unknown is refused: it claims nothing readable.
pub fn report_from_agent(
    wire: pb::ConvergenceReport,
    received_at: jiff::Timestamp,
) -> Result<(ConvergenceReport, Vec<ReportError>), WireError> {
    let (mut report, mut mended) = convert_report(wire, received_at)?;
    mended.extend(report.mend());
    Ok((report, mended))
}

/// The report with what cannot be read at all left out (and said in the list);
/// sizes and text not checked yet.
fn convert_report(
    wire: pb::ConvergenceReport,
    received_at: jiff::Timestamp,
) -> Result<(ConvergenceReport, Vec<ReportError>), WireError> {
    let phase = phase_from_wire(wire.phase).ok_or_else(|| WireError::Invalid {
        field: "report.phase",
        reason: format!("{} is not a known phase", wire.phase),
    })?;
    let mut mended = Vec::new();
    let mut steps = Vec::with_capacity(wire.steps.len());
    for (position, step) in wire.steps.into_iter().enumerate() {
        let Some(state) = step_state_from_wire(step.state) else {
            mended.push(ReportError::new(
                format!("steps[{position}].state"),
                format!("{} is not a known step state; the step was left out", step.state),
            ));
            continue;
        };
        let started_at = step.started_at.as_ref().and_then(|at| {
            timestamp_from_wire("report.steps.started_at", at)
                .map_err(|error| {
                    mended.push(ReportError::new(format!("steps[{position}].started_at"), error.to_string()));
                })
                .ok()
        });
        steps.push(StepReport {
            name: step.name,
            state,
            started_at,
            duration_ms: step.duration_ms,
            detail: step.detail,
            output_tail: step.output_tail,
        });
    }
    let mut optimizations = Vec::with_capacity(wire.optimizations.len());
    for (position, outcome) in wire.optimizations.into_iter().enumerate() {
        let Some(state) = optimization_state_from_wire(outcome.state) else {
            mended.push(ReportError::new(
                format!("optimizations[{position}].state"),
                format!("{} is not a known optimization state; the optimisation was left out", outcome.state),
            ));
            continue;
        };
        optimizations.push(OptimizationOutcome {
            name: outcome.name,
            version: outcome.version,
            fatal: outcome.fatal,
            state,
            detail: outcome.detail,
        });
    }
    let revision_id = optional_digest("report.revision_id", &wire.revision_id).unwrap_or_else(|error| {
        mended.push(ReportError::new("report.revision_id", format!("{error}; it was left out")));
        None
    });
    let updated_at = match wire.updated_at.as_ref().map(|at| timestamp_from_wire("report.updated_at", at)) {
        Some(Ok(at)) => at,
        Some(Err(error)) => {
            mended
                .push(ReportError::new("report.updated_at", format!("{error}; the time it arrived is kept")));
            received_at
        }
        None => {
            mended.push(ReportError::new("report.updated_at", "is missing; the time it arrived is kept"));
            received_at
        }
    };
    let mut instances = Vec::with_capacity(wire.instances.len());
    for (position, instance) in wire.instances.into_iter().enumerate() {
        let Some(state) = InstanceState::parse(&instance.state) else {
            mended.push(ReportError::new(
                format!("instances[{position}].state"),
                "is not a known instance state; the instance was left out",
            ));
            continue;
        };
        instances.push(InstanceReport {
            index: instance.index,
            gpus: instance.gpus,
            port: instance.port,
            pid: instance.pid,
            state,
            health: instance.health,
        });
    }
    let report = ConvergenceReport {
        instances,
        generation: wire.generation,
        environment: wire.environment,
        revision_number: wire.revision_number,
        revision_id,
        phase,
        steps,
        optimizations,
        error: wire.error,
        updated_at,
    };
    Ok((report, mended))
}

#[cfg(test)]
mod tests {
    use super::*;
    use jiff::Timestamp;

    #[test]
    fn reports_round_trip_and_bad_ones_name_the_field() {
        let mut report = ConvergenceReport::idle(Timestamp::from_second(1_700_000_000).unwrap());
        report.phase = Phase::Failed;
        report.revision_id = Some("a".repeat(64).parse().unwrap());
        report.steps.push(StepReport { state: StepState::Failed, ..StepReport::pending("optimizations") });
        report.error = "sha256 mismatch".into();
        let wire = pb::ConvergenceReport::from(&report);
        assert_eq!(ConvergenceReport::try_from(wire.clone()).unwrap(), report);

        let mut bad = wire.clone();
        bad.phase = 99;
        assert!(ConvergenceReport::try_from(bad).unwrap_err().to_string().contains("report.phase"));
        let mut bad = wire.clone();
        bad.revision_id = "../../etc".into();
        assert!(ConvergenceReport::try_from(bad).unwrap_err().to_string().contains("report.revision_id"));
        let mut bad = wire;
        bad.steps[0].detail = "\u{7}".into();
        assert!(ConvergenceReport::try_from(bad).unwrap_err().to_string().contains("steps[0].detail"));
    }

    #[test]
    fn an_agents_bad_fields_cost_those_fields_only() {
        let mut report = ConvergenceReport::idle(Timestamp::from_second(1_700_000_000).unwrap());
        report.phase = Phase::Failed;
        report.steps.push(StepReport { state: StepState::Failed, ..StepReport::pending("requirements") });
        report.steps.push(StepReport::pending("verify"));
        let mut wire = pb::ConvergenceReport::from(&report);
        wire.error = "x".repeat(100_000);
        wire.revision_id = "../../etc".into();
        wire.steps[1].state = 99;
        wire.updated_at = None;
        let received = Timestamp::from_second(1_800_000_000).unwrap();
        let (taken, mended) = report_from_agent(wire.clone(), received).unwrap();
        taken.validate().unwrap();
        assert!(taken.error.ends_with(" bytes]") && taken.error.len() <= 4096);
        assert_eq!((taken.revision_id, taken.updated_at, taken.steps.len()), (None, received, 1));
        let fields: Vec<String> = mended.iter().map(|error| error.field.clone()).collect();
        assert_eq!(fields, ["steps[1].state", "report.revision_id", "report.updated_at", "error"]);

        wire.phase = 42;
        assert!(report_from_agent(wire, received).unwrap_err().to_string().contains("report.phase"));
    }
}
