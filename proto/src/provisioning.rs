//! Wire ⇄ domain conversions for provisioning: assignments going to agents and the
//! agents' convergence reports coming back. (The environments an agent has installed
//! are part of its inventory, in [`crate::convert`].)

use comfyfleet_config::assignment::{AssignmentRecord, MachineAssignment};
use comfyfleet_config::convergence::{
    ConvergenceReport, OptimizationOutcome, OptimizationState, Phase, StepReport, StepState,
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
        }
    }
}

impl TryFrom<pb::ConvergenceReport> for ConvergenceReport {
    type Error = WireError;

    fn try_from(wire: pb::ConvergenceReport) -> Result<Self, Self::Error> {
        let phase = match pb::ConvergencePhase::try_from(wire.phase) {
            Ok(pb::ConvergencePhase::Idle) => Phase::Idle,
            Ok(pb::ConvergencePhase::Preparing) => Phase::Preparing,
            Ok(pb::ConvergencePhase::Prepared) => Phase::Prepared,
            Ok(pb::ConvergencePhase::Activating) => Phase::Activating,
            Ok(pb::ConvergencePhase::Active) => Phase::Active,
            Ok(pb::ConvergencePhase::Failed) => Phase::Failed,
            Ok(pb::ConvergencePhase::Unspecified) | Err(_) => {
                return Err(WireError::Invalid {
                    field: "report.phase",
                    reason: format!("{} is not a known phase", wire.phase),
                });
            }
        };
        let steps = wire
            .steps
            .into_iter()
            .map(|step| {
                let state = match pb::StepState::try_from(step.state) {
                    Ok(pb::StepState::Pending) => StepState::Pending,
                    Ok(pb::StepState::Running) => StepState::Running,
                    Ok(pb::StepState::Done) => StepState::Done,
                    Ok(pb::StepState::Skipped) => StepState::Skipped,
                    Ok(pb::StepState::Failed) => StepState::Failed,
                    Ok(pb::StepState::Unspecified) | Err(_) => {
                        return Err(WireError::Invalid {
                            field: "report.steps.state",
                            reason: format!("{} is not a known step state", step.state),
                        });
                    }
                };
                Ok(StepReport {
                    name: step.name,
                    state,
                    started_at: step
                        .started_at
                        .as_ref()
                        .map(|at| timestamp_from_wire("report.steps.started_at", at))
                        .transpose()?,
                    duration_ms: step.duration_ms,
                    detail: step.detail,
                    output_tail: step.output_tail,
                })
            })
            .collect::<Result<Vec<_>, WireError>>()?;
        let optimizations = wire
            .optimizations
            .into_iter()
            .map(|outcome| {
                let state = match pb::OptimizationState::try_from(outcome.state) {
                    Ok(pb::OptimizationState::Pending) => OptimizationState::Pending,
                    Ok(pb::OptimizationState::Verified) => OptimizationState::Verified,
                    Ok(pb::OptimizationState::Failed) => OptimizationState::Failed,
                    Ok(pb::OptimizationState::Skipped) => OptimizationState::Skipped,
                    Ok(pb::OptimizationState::Unspecified) | Err(_) => {
                        return Err(WireError::Invalid {
                            field: "report.optimizations.state",
                            reason: format!("{} is not a known optimization state", outcome.state),
                        });
                    }
                };
                Ok(OptimizationOutcome {
                    name: outcome.name,
                    version: outcome.version,
                    fatal: outcome.fatal,
                    state,
                    detail: outcome.detail,
                })
            })
            .collect::<Result<Vec<_>, WireError>>()?;
        let report = ConvergenceReport {
            generation: wire.generation,
            environment: wire.environment,
            revision_number: wire.revision_number,
            revision_id: optional_digest("report.revision_id", &wire.revision_id)?,
            phase,
            steps,
            optimizations,
            error: wire.error,
            updated_at: timestamp_from_wire(
                "report.updated_at",
                wire.updated_at.as_ref().ok_or(WireError::Missing("report.updated_at"))?,
            )?,
        };
        report
            .validate()
            .map_err(|error| WireError::Invalid { field: "report", reason: error.to_string() })?;
        Ok(report)
    }
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
}
