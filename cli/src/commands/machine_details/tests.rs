use comfyfleet_config::convergence::{OptimizationOutcome, OptimizationState, Phase, StepReport};
use comfyfleet_config::installed::{InstalledNode, InstalledPackage};
use comfyfleet_config::{AssignmentReason, SpecDigest};

use super::*;

fn digest(digit: char) -> SpecDigest {
    digit.to_string().repeat(64).parse().unwrap()
}

fn environment(digit: char, number: u32, current: bool, torch: &str) -> InstalledEnvironment {
    InstalledEnvironment {
        revision_id: digest(digit),
        environment: "render-prod".into(),
        revision_number: number,
        current,
        activated_at: Some(Timestamp::from_second(1_767_225_600 + i64::from(number)).unwrap()),
        python_version: "3.12.7".into(),
        torch_version: torch.into(),
        comfyui_commit: "0123456789abcdef0123456789abcdef01234567".into(),
        optimizations: vec![InstalledPackage {
            name: "sageattention".into(),
            version: "2.2.0".into(),
            verified: true,
            detail: String::new(),
        }],
        custom_nodes: vec![InstalledNode {
            name: "ComfyUI-KJNodes".into(),
            commit: "fedcba9876543210fedcba9876543210fedcba98".into(),
        }],
        drift: vec![],
    }
}

fn machine() -> MachineView {
    let mut machine = MachineView::example("aa01", "render-01");
    machine.assignment = Some(MachineAssignment {
        generation: 3,
        environment: "render-prod".into(),
        revision_number: 2,
        revision_id: digest('b'),
        activate: true,
        reason: AssignmentReason::Rollout,
        assigned_at: Timestamp::from_second(1_767_225_600).unwrap(),
        assigned_by: "op (0123456789ab)".into(),
        torch: "2.8.0+cu128".into(),
        driver_compat: Default::default(),
    });
    let mut report = ConvergenceReport::idle(Timestamp::from_second(1_767_225_660).unwrap());
    report.generation = 3;
    report.environment = "render-prod".into();
    report.revision_number = 2;
    report.revision_id = Some(digest('b'));
    report.phase = Phase::Failed;
    report.error = "optimizations: sha256 mismatch".into();
    report.steps = vec![
        StepReport {
            state: StepState::Done,
            duration_ms: 340,
            detail: "uv 0.9.0 on PATH".into(),
            ..StepReport::pending("uv")
        },
        StepReport {
            state: StepState::Failed,
            duration_ms: 2_500,
            detail: "sha256 mismatch for https://example.org/sageattention.whl".into(),
            output_tail: "Downloading sageattention.whl\nexpected aa, got bb".into(),
            ..StepReport::pending("optimizations")
        },
        StepReport::pending("verify"),
    ];
    report.optimizations = vec![OptimizationOutcome {
        name: "sageattention".into(),
        version: "2.2.0".into(),
        fatal: true,
        state: OptimizationState::Failed,
        detail: "sha256 mismatch".into(),
    }];
    machine.report = Some(report);
    let mut kept = environment('a', 1, false, "2.7.1+cu126");
    kept.drift = vec!["torch is 2.7.0, verified as 2.7.1+cu126".into()];
    machine.environments = Some(InstalledEnvironments {
        current: Some(digest('c')),
        installed: vec![environment('c', 4, true, "2.8.0+cu128"), kept],
    });
    machine
}

#[test]
fn show_has_the_assignment_the_report_its_steps_and_the_environments() {
    let now = Timestamp::from_second(1_767_225_670).unwrap();
    let text = describe(&machine(), now);
    let after_gpus: Vec<&str> = text.lines().skip_while(|line| !line.starts_with("Assignment")).collect();
    let expected = [
        "Assignment:",
        "  revision:    render-prod@2 (bbbbbbbbbbbb)",
        "  generation:  3",
        "  reason:      rollout (build and switch)",
        "  assigned:    2026-01-01T00:00:00Z by op (0123456789ab)",
        "  torch:       2.8.0+cu128 (planned)",
        "Report:",
        "  phase:       failed",
        "  generation:  3 (render-prod@2 (bbbbbbbbbbbb))",
        "  updated:     2026-01-01T00:01:00Z (10s ago)",
        "  error:       optimizations: sha256 mismatch",
        "  STEP           STATE    DURATION  DETAIL",
        "  uv             done     0.3s      uv 0.9.0 on PATH",
        "  optimizations  failed   2.5s      sha256 mismatch for https://example.org/sageattention.whl",
        "      Downloading sageattention.whl",
        "      expected aa, got bb",
        "  verify         pending  -",
        "Optimizations:",
        "  NAME           VERSION  STATE   FATAL  DETAIL",
        "  sageattention  2.2.0    failed  yes    sha256 mismatch",
        "Environments:",
        "  render-prod@4 (cccccccccccc)  current, activated 2026-01-01T00:00:04Z",
        "    python 3.12.7, torch 2.8.0+cu128, ComfyUI 0123456789ab",
        "    optimizations: sageattention 2.2.0 (verified)",
        "    custom nodes: ComfyUI-KJNodes fedcba987654",
        "  render-prod@1 (aaaaaaaaaaaa)  kept, activated 2026-01-01T00:00:01Z",
        "    python 3.12.7, torch 2.7.1+cu126, ComfyUI 0123456789ab",
        "    optimizations: sageattention 2.2.0 (verified)",
        "    custom nodes: ComfyUI-KJNodes fedcba987654",
        "    drift: torch is 2.7.0, verified as 2.7.1+cu126",
    ];
    assert_eq!(after_gpus, expected, "{text}");
    assert!(text.contains("GPUs: 1× RTX 4090 (8.9, 24 GiB)"), "{text}");
}

#[test]
fn show_says_what_is_missing() {
    let mut machine = MachineView::example("aa01", "render-01");
    let text = describe(&machine, Timestamp::now());
    assert!(
        text.contains("\nAssignment: none (`comfyfleet rollout start ENV --machines ID` assigns one)\n"),
        "{text}"
    );
    assert!(text.contains("\nReport: none yet\n"), "{text}");
    assert!(text.ends_with("Environments: none built\n"), "{text}");
    machine.environments = None;
    assert!(describe(&machine, Timestamp::now()).ends_with("Environments: not reported yet\n"));
}

#[test]
fn a_plan_relying_on_minor_compatibility_says_so() {
    let now = Timestamp::from_second(1_767_225_670).unwrap();
    let mut machine = machine();
    if let Some(assignment) = machine.assignment.as_mut() {
        assignment.driver_compat = comfyfleet_config::spec::DriverCompat::Minor;
    }
    let text = describe(&machine, now);
    assert!(
        text.contains(
            "  torch:       2.8.0+cu128 (planned; runs on this driver through CUDA minor-version compatibility)\n"
        ),
        "{text}"
    );
}
