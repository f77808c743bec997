//! One session's convergence reports on their way in. A bad field costs that field,
//! never the session: the report is stored with the field cut to its limit and marked,
//! escaped or left out (by the agents' edge, which converts it). A report counts only
//! for what the controller assigned: its generation must be one this machine was given
//! and, for the current generation, the revision must be that generation's — anything
//! else ([`check_claim`]) is refused for that machine: not stored, not seen by
//! rollouts, the session left up. Both are counted (`comfyfleet_refusals`, stages
//! `report` and `report-field`) and logged escaped, each kind at most once a minute
//! per session, so a peer that repeats itself floods neither the log nor the store.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use comfyfleet_config::convergence::ReportError;
use comfyfleet_config::text::Escaped;
use comfyfleet_config::{ConvergenceReport, MachineId, Phase, SpecDigest};
use jiff::Timestamp;

use crate::counters::Refusal;
use crate::use_cases::ControllerState;

/// The least time between two log lines of one kind of complaint in one session.
const COMPLAINT_INTERVAL: Duration = Duration::from_secs(60);
/// Kinds of complaint remembered per session; past this they start over.
const COMPLAINT_KINDS: usize = 32;

/// An assignment as a report must name it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assigned {
    pub generation: u64,
    pub environment: String,
    pub revision_number: u32,
    pub revision_id: SpecDigest,
}

impl Assigned {
    fn describe(&self) -> String {
        format!("{}@{} ({})", self.environment, self.revision_number, self.revision_id.short())
    }
}

impl From<&comfyfleet_config::assignment::MachineAssignment> for Assigned {
    fn from(assignment: &comfyfleet_config::assignment::MachineAssignment) -> Self {
        Self {
            generation: assignment.generation,
            environment: assignment.environment.clone(),
            revision_number: assignment.revision_number,
            revision_id: assignment.revision_id.clone(),
        }
    }
}

impl From<&crate::store::StoredAssignment> for Assigned {
    fn from(assignment: &crate::store::StoredAssignment) -> Self {
        Self {
            generation: assignment.generation,
            environment: assignment.environment.clone(),
            revision_number: assignment.revision_number,
            revision_id: assignment.revision_id.clone(),
        }
    }
}

/// The newest assignment a session knows its machine was given: the stored one when
/// the session opened, raised by every desired state the session sends. An agent can
/// only have heard of a generation one of these holds, so reports are checked without
/// a trip to the store.
#[derive(Debug, Default)]
pub struct KnownAssignment(Mutex<Option<Assigned>>);

impl KnownAssignment {
    /// Keeps `assigned` if it is newer than what is known.
    pub fn raise(&self, assigned: Assigned) {
        let mut known = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if known.as_ref().is_none_or(|known| assigned.generation > known.generation) {
            *known = Some(assigned);
        }
    }

    pub fn get(&self) -> Option<Assigned> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }
}

/// What a report's claim is worth.
#[derive(Debug, PartialEq, Eq)]
pub enum Claim {
    /// About the current assignment (or idle with none): stored, told to rollouts.
    Counts,
    /// About an earlier generation, which the agent is leaving: dropped quietly (its
    /// revision cannot be checked, and nothing waits for it any more).
    Superseded,
    Refused(ClaimRefusal),
}

/// A claim the controller never made.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ClaimRefusal {
    #[error("generation {claimed} was never assigned to this machine (its newest is {assigned})")]
    UnassignedGeneration { claimed: u64, assigned: u64 },
    #[error("a report without an assignment (generation 0) may only be idle, not {phase}")]
    NothingAssigned { phase: Phase },
    #[error("generation {generation} is {assigned}, but the report claims {claimed}")]
    OtherRevision { generation: u64, assigned: String, claimed: String },
}

impl ClaimRefusal {
    fn reason(&self) -> Refusal {
        match self {
            ClaimRefusal::UnassignedGeneration { .. } | ClaimRefusal::NothingAssigned { .. } => {
                Refusal::UnassignedGeneration
            }
            ClaimRefusal::OtherRevision { .. } => Refusal::UnassignedRevision,
        }
    }
}

/// Whether `report` is about what this machine was assigned (`known`).
pub fn check_claim(report: &ConvergenceReport, known: Option<&Assigned>) -> Claim {
    let assigned = known.map_or(0, |known| known.generation);
    if report.generation == 0 {
        return if report.phase == Phase::Idle {
            Claim::Counts
        } else {
            Claim::Refused(ClaimRefusal::NothingAssigned { phase: report.phase })
        };
    }
    if report.generation > assigned {
        return Claim::Refused(ClaimRefusal::UnassignedGeneration { claimed: report.generation, assigned });
    }
    if report.generation < assigned {
        return Claim::Superseded;
    }
    let Some(known) = known else { return Claim::Superseded };
    let same = report.revision_id.as_ref() == Some(&known.revision_id)
        && report.environment == known.environment
        && report.revision_number == known.revision_number;
    if same {
        Claim::Counts
    } else {
        let id = report.revision_id.as_ref().map_or("no revision id", SpecDigest::short);
        Claim::Refused(ClaimRefusal::OtherRevision {
            generation: report.generation,
            assigned: known.describe(),
            claimed: format!("{}@{} ({id})", report.environment, report.revision_number),
        })
    }
}

/// `steps[3].detail` → `steps[].detail`: one kind of complaint whichever entry it is
/// about, so a peer cannot make every line a new kind.
fn without_positions(field: &str) -> String {
    let mut kind = String::with_capacity(field.len());
    let mut inside = false;
    for c in field.chars() {
        match c {
            '[' => inside = true,
            ']' => inside = false,
            _ if inside => continue,
            _ => {}
        }
        kind.push(c);
    }
    kind
}

/// When each kind of complaint was last logged in this session.
#[derive(Default)]
struct Complaints(HashMap<String, Instant>);

impl Complaints {
    /// Whether a complaint of `kind` should be logged now.
    fn due(&mut self, kind: &str) -> bool {
        let now = Instant::now();
        if self.0.get(kind).is_some_and(|at| now.duration_since(*at) < COMPLAINT_INTERVAL) {
            return false;
        }
        if self.0.len() >= COMPLAINT_KINDS {
            self.0.clear();
        }
        self.0.insert(kind.to_owned(), now);
        true
    }
}

/// One session's report handling.
pub struct ReportIntake {
    pub known: Arc<KnownAssignment>,
    /// The generation and phase of the last report, to log only changes.
    last_phase: Option<(u64, Phase)>,
    /// The latest report stored for this machine: finished steps are timed once.
    last_report: Option<ConvergenceReport>,
    complaints: Complaints,
}

impl ReportIntake {
    /// Starts from the machine's stored assignment and report.
    pub fn new(assigned: Option<Assigned>, stored: Option<ConvergenceReport>) -> Self {
        let known = Arc::new(KnownAssignment::default());
        if let Some(assigned) = assigned {
            known.raise(assigned);
        }
        Self { known, last_phase: None, last_report: stored, complaints: Complaints::default() }
    }

    /// The latest report stored for this machine.
    pub fn latest(&self) -> Option<&ConvergenceReport> {
        self.last_report.as_ref()
    }

    /// Takes one report, as converted from the wire (with the fields that were
    /// mended, or why it could not be read): stores what counts, refuses the rest.
    /// Errs only when the store fails (the controller's fault, not the agent's).
    pub async fn take(
        &mut self,
        state: &ControllerState,
        machine: &MachineId,
        received: Result<(ConvergenceReport, Vec<ReportError>), String>,
        now: Timestamp,
    ) -> Result<(), String> {
        let (report, mended) = match received {
            Ok(taken) => taken,
            Err(error) => {
                state.metrics.refused("report", Refusal::BadMessage);
                if self.complaints.due("unreadable") {
                    tracing::warn!(error = %Escaped(&error), "report refused: its phase cannot be read");
                }
                return Ok(());
            }
        };
        for _ in &mended {
            state.metrics.refused("report-field", Refusal::BadField);
        }
        if let Some(first) = mended.first()
            && self.complaints.due(&format!("field {}", without_positions(&first.field)))
        {
            let fields: Vec<String> = mended.iter().map(ToString::to_string).collect();
            tracing::warn!(
                generation = report.generation,
                fields = %Escaped(fields.join("; ")),
                "report fields mended: each was cut, escaped or left out, the rest stored"
            );
        }
        match check_claim(&report, self.known.get().as_ref()) {
            Claim::Counts => {}
            Claim::Superseded => {
                tracing::debug!(generation = report.generation, "report on an earlier assignment dropped");
                return Ok(());
            }
            Claim::Refused(refusal) => {
                state.metrics.refused("report", refusal.reason());
                if self.complaints.due(refusal.reason().as_str()) {
                    tracing::warn!(
                        generation = report.generation,
                        phase = %report.phase,
                        reason = %Escaped(&refusal),
                        "report refused: it claims what this machine was not assigned"
                    );
                }
                return Ok(());
            }
        }
        let phase = (report.generation, report.phase, report.error.clone());
        state.metrics.steps_reported(self.last_report.as_ref(), &report);
        self.last_report = Some(report.clone());
        state.reports.record(machine, report, now).await?;
        let (generation, phase, error) = phase;
        if self.last_phase != Some((generation, phase)) {
            self.last_phase = Some((generation, phase));
            // One line per machine per phase is a flood at 10,000 machines: the
            // rollout's events keep the story; failures stay in the log.
            if phase == Phase::Failed || !error.is_empty() {
                tracing::warn!(generation, phase = %phase, error = %Escaped(&error), "convergence report");
            } else {
                tracing::debug!(generation, phase = %phase, "convergence report");
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assigned(generation: u64) -> Assigned {
        Assigned {
            generation,
            environment: "render".into(),
            revision_number: 3,
            revision_id: "a".repeat(64).parse().unwrap(),
        }
    }

    fn report(generation: u64, phase: Phase, environment: &str, number: u32, id: char) -> ConvergenceReport {
        let mut report = ConvergenceReport::idle(Timestamp::UNIX_EPOCH);
        report.generation = generation;
        report.phase = phase;
        report.environment = environment.into();
        report.revision_number = number;
        report.revision_id = Some(id.to_string().repeat(64).parse().unwrap());
        report
    }

    #[test]
    fn a_report_counts_only_for_the_revision_and_generation_assigned() {
        let known = assigned(7);
        let check = |report: &ConvergenceReport| check_claim(report, Some(&known));
        assert_eq!(check(&report(7, Phase::Active, "render", 3, 'a')), Claim::Counts);
        assert_eq!(check(&report(6, Phase::Active, "render", 2, 'b')), Claim::Superseded);
        assert_eq!(check(&ConvergenceReport::idle(Timestamp::UNIX_EPOCH)), Claim::Counts);
        for (claim, reason) in [
            (report(7, Phase::Active, "evil-env", 999, 'a'), Refusal::UnassignedRevision),
            (report(7, Phase::Active, "render", 3, 'b'), Refusal::UnassignedRevision),
            (report(7, Phase::Active, "render", 4, 'a'), Refusal::UnassignedRevision),
            (report(u64::MAX, Phase::Active, "render", 3, 'a'), Refusal::UnassignedGeneration),
            (report(8, Phase::Preparing, "render", 3, 'a'), Refusal::UnassignedGeneration),
            (report(0, Phase::Active, "render", 3, 'a'), Refusal::UnassignedGeneration),
        ] {
            match check(&claim) {
                Claim::Refused(refusal) => assert_eq!(refusal.reason(), reason, "{refusal}"),
                other => panic!("{claim:?} was {other:?}"),
            }
        }
        let mut without_id = report(7, Phase::Active, "render", 3, 'a');
        without_id.revision_id = None;
        assert!(matches!(check(&without_id), Claim::Refused(ClaimRefusal::OtherRevision { .. })));
        // Nothing assigned yet: any generation is one the controller never gave.
        assert!(matches!(check_claim(&report(1, Phase::Active, "render", 3, 'a'), None), Claim::Refused(_)));
    }

    #[test]
    fn the_known_assignment_only_rises() {
        let known = KnownAssignment::default();
        known.raise(assigned(5));
        known.raise(assigned(4));
        assert_eq!(known.get().unwrap().generation, 5);
        known.raise(assigned(6));
        assert_eq!(known.get().unwrap().generation, 6);
    }

    #[test]
    fn a_complaint_is_logged_once_a_minute_per_kind() {
        let mut complaints = Complaints::default();
        assert!(complaints.due("field error"));
        assert!(!complaints.due("field error"));
        assert!(complaints.due("unassigned-revision"));
        assert_eq!(without_positions("optimizations[12].detail"), "optimizations[].detail");
    }
}
