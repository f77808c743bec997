use comfyfleet_config::assignment::MachineAssignment;
use comfyfleet_config::convergence::{OptimizationOutcome, StepReport};
use comfyfleet_config::{AssignmentReason, InstalledEnvironment, InstalledEnvironments};
use jiff::Timestamp;

use super::*;

fn revision_id() -> comfyfleet_config::SpecDigest {
    "1a2b3c4d5e6f".repeat(5).chars().chain("abcd".chars()).collect::<String>().parse().unwrap()
}

/// A machine assigned render-prod@2 at generation 3, whose agent reports `phase`
/// for generation `reported`.
fn machine(reported: Option<u64>, phase: Phase) -> MachineView {
    let mut machine = MachineView::example("aa01", "render-01");
    machine.assignment = Some(MachineAssignment {
        generation: 3,
        environment: "render-prod".into(),
        revision_number: 2,
        revision_id: revision_id(),
        activate: true,
        reason: AssignmentReason::Rollout,
        assigned_at: Timestamp::UNIX_EPOCH,
        assigned_by: "op (0123456789ab)".into(),
        torch: "2.8.0+cu128".into(),
        driver_compat: Default::default(),
    });
    machine.report = reported.map(|generation| {
        let mut report = ConvergenceReport::idle(Timestamp::UNIX_EPOCH);
        report.generation = generation;
        report.environment = "render-prod".into();
        report.revision_number = 2;
        report.revision_id = Some(revision_id());
        report.phase = phase;
        report
    });
    machine
}

fn report(machine: &mut MachineView) -> &mut ConvergenceReport {
    machine.report.as_mut().unwrap()
}

fn awaited() -> Awaited {
    Awaited { id: "aa01".into(), hostname: "render-01".into(), generation: 3 }
}

#[test]
fn before_the_agent_reports_on_the_generation_it_is_pending() {
    let online = progress(&machine(Some(2), Phase::Active), 3);
    assert_eq!((online.phase.as_str(), online.settled), ("pending", None));
    assert!(online.is_quiet(), "an online machine about to start is not worth a line");
    let mut offline = machine(None, Phase::Idle);
    offline.online = false;
    let offline = progress(&offline, 3);
    assert_eq!(
        offline.line(&awaited()),
        "aa01  render-01  pending  offline: it gets the assignment when its agent reconnects"
    );
}

#[test]
fn a_running_step_is_named_while_preparing() {
    let mut preparing = machine(Some(3), Phase::Preparing);
    report(&mut preparing).steps = vec![
        StepReport { state: StepState::Done, ..StepReport::pending("venv") },
        StepReport {
            state: StepState::Running,
            detail: "12 of 40 MiB".into(),
            ..StepReport::pending("torch")
        },
        StepReport::pending("verify"),
    ];
    let now = progress(&preparing, 3);
    assert_eq!(now.line(&awaited()), "aa01  render-01  preparing  torch");
    assert_eq!(now.settled, None);
}

#[test]
fn an_active_machine_shows_its_torch_and_optimisations() {
    let mut active = machine(Some(3), Phase::Active);
    report(&mut active).optimizations = vec![
        OptimizationOutcome {
            name: "sageattention".into(),
            version: "2.2.0".into(),
            fatal: false,
            state: OptimizationState::Verified,
            detail: String::new(),
        },
        OptimizationOutcome {
            name: "sageattention3".into(),
            version: "1.0.0".into(),
            fatal: false,
            state: OptimizationState::Skipped,
            detail: "no wheel for SM 8.9".into(),
        },
    ];
    let now = progress(&active, 3);
    assert_eq!(now.settled, Some(Settled::Active));
    assert_eq!(
        now.line(&awaited()),
        "aa01  render-01  active  2.8.0+cu128  sageattention 2.2.0 verified, sageattention3 skipped"
    );
    // The torch the environment really has wins over the planned one.
    active.environments = Some(InstalledEnvironments {
        current: Some(revision_id()),
        installed: vec![InstalledEnvironment {
            revision_id: revision_id(),
            environment: "render-prod".into(),
            revision_number: 2,
            current: true,
            activated_at: None,
            python_version: "3.12.7".into(),
            torch_version: "2.8.0+cu126".into(),
            comfyui_commit: String::new(),
            optimizations: vec![],
            custom_nodes: vec![],
            drift: vec![],
        }],
    });
    assert!(progress(&active, 3).detail.starts_with("2.8.0+cu126  "));
    let prepared = progress(&machine(Some(3), Phase::Prepared), 3);
    assert_eq!(
        (prepared.line(&awaited()), prepared.settled),
        ("aa01  render-01  prepared  2.8.0+cu128".into(), Some(Settled::Prepared))
    );
}

#[test]
fn a_failure_names_the_step_and_the_error_on_one_line() {
    let mut failed = machine(Some(3), Phase::Failed);
    report(&mut failed).steps = vec![
        StepReport { state: StepState::Done, ..StepReport::pending("torch") },
        StepReport {
            state: StepState::Failed,
            detail: "step detail".into(),
            ..StepReport::pending("optimizations")
        },
    ];
    report(&mut failed).error =
        "sha256 mismatch for https://example.org/a.whl:\n  expected aa\n  got bb".into();
    let now = progress(&failed, 3);
    assert_eq!(now.settled, Some(Settled::Failed));
    assert_eq!(
        now.line(&awaited()),
        "aa01  render-01  failed  optimizations: sha256 mismatch for https://example.org/a.whl:; expected aa; got bb"
    );
    report(&mut failed).error.clear();
    assert_eq!(progress(&failed, 3).detail, "optimizations: step detail", "the step's detail when no error");
    report(&mut failed).error = "optimizations: sha256 mismatch".into();
    assert_eq!(progress(&failed, 3).detail, "optimizations: sha256 mismatch", "the step is named once");

    let mut revoked = machine(Some(2), Phase::Active);
    revoked.revoked_at = Some("2026-01-01T00:00:00Z".into());
    assert_eq!(progress(&revoked, 3).settled, Some(Settled::Failed));
}

#[test]
fn the_summary_counts_outcomes_and_fails_when_one_failed() {
    let machines = [awaited(), Awaited { id: "bb01".into(), hostname: "render-02".into(), generation: 1 }];
    let active = Progress::new("active", String::new(), Some(Settled::Active));
    let failed = Progress::new("failed", String::new(), Some(Settled::Failed));
    let last = HashMap::from([("aa01", active.clone()), ("bb01", active)]);
    assert_eq!(
        summary("render-prod@2", &machines, &last).unwrap(),
        "render-prod@2: 2 active, 0 prepared, 0 failed\n"
    );
    let last = HashMap::from([
        ("aa01", Progress::new("prepared", String::new(), Some(Settled::Prepared))),
        ("bb01", failed),
    ]);
    let error = summary("render-prod@2", &machines, &last).unwrap_err().to_string();
    assert!(
        error.starts_with(
            "render-prod@2: 0 active, 1 prepared, 1 failed: bb01 (render-02); `comfyfleet machines show ID`"
        ),
        "{error}"
    );
    assert_eq!(parse_wait_limit("30m").unwrap().duration, Duration::from_secs(1800));
    assert!(parse_wait_limit("soon").is_err());
}

#[test]
fn a_timeout_names_every_machine_still_on_its_way() {
    let machines = [awaited(), Awaited { id: "bb01".into(), hostname: "render-02".into(), generation: 1 }];
    let limit = parse_wait_limit("5m").unwrap();
    let last = HashMap::from([("aa01", Progress::new("preparing", "torch".into(), None))]);
    assert_eq!(unsettled_after(&machines, &last).len(), 2);
    let error = timed_out("render-prod@2", &machines, &last, &limit).to_string();
    assert_eq!(
        error,
        "timed out after 5m: 2 of 2 machines have not converged on render-prod@2 (aa01 render-01 preparing torch; \
         bb01 render-02); they carry on without this command: follow them with `comfyfleet machines show ID`"
    );
}
