//! Rollouts and rollbacks through the real `FleetService` handlers over SQLite, with
//! machines of the fixture GPU profiles.

use comfyfleet_config::MachineId;
use comfyfleet_config::installed::{InstalledEnvironment, InstalledEnvironments};
use comfyfleet_config::resolve::MachinePlan;
use comfyfleet_proto::v1::fleet_service_server::FleetService;
use jiff::Timestamp;
use tonic::Code;

use super::*;
use crate::use_cases::test_fleet::{TestFleet, inventory, spec};

fn commit(digit: char) -> String {
    digit.to_string().repeat(40)
}

/// Machines: an 8× H100 and a T4 on a 535 driver in pool render-a, an RTX 4090 in
/// pool render-b, and a revoked A100 in render-a.
async fn fleet() -> TestFleet {
    let fleet = TestFleet::new().await;
    fleet.add_machine("aa01", "h100-x8-580", &["pool=render-a"]).await;
    fleet.add_machine("aa02", "t4-x1-535", &["pool=render-a"]).await;
    fleet.add_machine("bb01", "rtx4090-x1-570", &["pool=render-b"]).await;
    let revoked = fleet.add_machine("cc01", "a100-x4-570", &["pool=render-a"]).await;
    fleet.state.store.revoke_machine(&revoked, Timestamp::now()).await.unwrap();
    fleet
}

fn outcomes(response: &pb::StartRolloutResponse) -> Vec<(String, pb::TargetOutcome, u64)> {
    response
        .targets
        .iter()
        .map(|target| (target.machine_id.clone(), target.outcome(), target.generation))
        .collect()
}

fn id(text: &str) -> MachineId {
    text.parse().unwrap()
}

#[tokio::test]
async fn a_rollout_takes_every_targeted_machine_that_has_a_plan() {
    let fleet = fleet().await;
    let revision = fleet.apply(&spec("render", &commit('1'))).await;
    let response = fleet.start_rollout("render", "", &[]).await.unwrap();
    assert_eq!(response.revision.as_ref().map(|r| r.id.as_str()), Some(revision.id.as_str()));
    assert_eq!(
        outcomes(&response),
        [
            ("aa01".to_owned(), pb::TargetOutcome::Assigned, 0),
            ("aa02".to_owned(), pb::TargetOutcome::Incompatible, 0),
            ("bb01".to_owned(), pb::TargetOutcome::NotTargeted, 0),
        ],
        "the revoked machine is not even considered"
    );
    let [h100, t4, rtx4090] = &response.targets[..] else { panic!("three targets") };
    assert_eq!((h100.hostname.as_str(), h100.detail.as_str()), ("h100-x8-580", "2.8.0+cu128"));
    assert!(!h100.online, "no agent is connected in this test");
    assert!(t4.detail.contains("driver 535.230.02 supports CUDA 12.2"), "{}", t4.detail);
    assert_eq!(rtx4090.detail, "left out by the target selector");

    let rollout = response.rollout.unwrap();
    assert_eq!(
        (rollout.id, rollout.state(), rollout.kind.as_str()),
        (1, pb::RolloutState::Running, "rollout")
    );
    let counts = rollout.counts.unwrap();
    assert_eq!((counts.machines, counts.pending, counts.offline), (1, 1, 1));
    let rows = fleet.state.store.rollout_machines(1).await.unwrap();
    let plan: MachinePlan = serde_json::from_str(&rows[0].row.plan_json).unwrap();
    assert_eq!((plan.torch.as_str(), rows[0].row.torch.as_str()), ("2.8.0+cu128", "2.8.0+cu128"));
    // Offline: nothing is assigned until the machine is back.
    assert_eq!(fleet.state.store.assignment(&id("aa01")).await.unwrap(), None);

    let audit = fleet.state.store.list_audit(1).await.unwrap();
    assert_eq!(
        (audit[0].action.as_str(), audit[0].target.as_str()),
        ("rollout.start", "render@1 (rollout 1)")
    );
    assert!(
        audit[0].detail.starts_with("1 machine, canary 1, max unavailable 1 (10%)"),
        "{}",
        audit[0].detail
    );
}

#[tokio::test]
async fn a_new_rollout_of_the_environment_supersedes_the_open_one() {
    let fleet = fleet().await;
    fleet.apply(&spec("render", &commit('1'))).await;
    fleet.apply(&spec("render", &commit('2'))).await;
    let first = fleet.start_rollout("render", "1", &[]).await.unwrap().rollout.unwrap();
    let second = fleet.start_rollout("render", "", &[]).await.unwrap().rollout.unwrap();
    assert_eq!((second.id, second.revision_number), (first.id + 1, 2));
    let first = fleet.state.store.rollout(first.id).await.unwrap().unwrap();
    assert_eq!(first.state, crate::store::rollout_model::RolloutState::Aborted);
    assert!(first.reason.ends_with(": superseded by a new rollout"), "{}", first.reason);

    let unknown = fleet.start_rollout("render", "9", &[]).await.unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound);
    let missing = fleet.start_rollout("preview", "", &[]).await.unwrap_err();
    assert_eq!(missing.message(), "no environment preview; `comfyfleet env list` shows them");
}

#[tokio::test]
async fn named_machines_are_exactly_the_targets_and_a_bad_name_assigns_nothing() {
    let fleet = fleet().await;
    fleet.apply(&spec("render", &commit('1'))).await;
    let response = fleet.start_rollout("render", "1", &["bb01", "aa0", "aa01"]).await;
    let error = response.unwrap_err();
    assert_eq!(error.code(), Code::InvalidArgument, "aa0 is ambiguous");
    assert!(error.message().contains("matches several machines (aa01, aa02)"), "{}", error.message());

    let response = fleet.start_rollout("render", "1", &["aa01", "zz"]).await.unwrap_err();
    assert_eq!(response.code(), Code::NotFound);
    assert_eq!(response.message(), "no machine id starts with `zz` (see `comfyfleet machines`)");
    let revoked = fleet.start_rollout("render", "1", &["aa01", "cc01"]).await.unwrap_err();
    assert_eq!(revoked.code(), Code::FailedPrecondition);
    assert!(revoked.message().starts_with("machine cc01 is revoked"), "{}", revoked.message());
    assert_eq!(fleet.state.store.assignment(&id("aa01")).await.unwrap(), None, "nothing was assigned");

    let response = fleet.start_rollout("render", "1", &["bb", "aa01", "aa01"]).await.unwrap();
    assert_eq!(
        outcomes(&response),
        [
            ("bb01".to_owned(), pb::TargetOutcome::NotTargeted, 0),
            ("aa01".to_owned(), pb::TargetOutcome::Assigned, 0),
        ],
        "in the order named, each once; the selector still applies"
    );
    assert_eq!(fleet.state.store.assignment(&id("aa02")).await.unwrap(), None);
}

#[tokio::test]
async fn a_viewer_cannot_start_a_rollout_or_roll_back() {
    let fleet = fleet().await;
    fleet.apply(&spec("render", &commit('1'))).await;
    let message = pb::StartRolloutRequest { environment: "render".into(), ..Default::default() };
    let refused = fleet.api.start_rollout(TestFleet::request(&fleet.viewer, message)).await.unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied);
    let message = pb::RollbackMachineRequest { id: "aa01".into() };
    let refused = fleet.api.rollback_machine(TestFleet::request(&fleet.viewer, message)).await.unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied);
    assert_eq!(fleet.state.store.assignment(&id("aa01")).await.unwrap(), None);
}

fn installed(revision: &pb::EnvironmentRevision, current: bool, activated: i64) -> InstalledEnvironment {
    InstalledEnvironment {
        revision_id: revision.id.parse().unwrap(),
        environment: revision.environment.clone(),
        revision_number: revision.number,
        current,
        activated_at: Some(Timestamp::from_second(activated).unwrap()),
        python_version: "3.12.7".into(),
        torch_version: "2.8.0+cu128".into(),
        comfyui_commit: "1".repeat(40),
        optimizations: vec![],
        custom_nodes: vec![],
        drift: vec![],
    }
}

/// Records that the machine runs `current` and still has `previous` on disk.
async fn report_installed(
    fleet: &TestFleet,
    machine: &str,
    profile: &str,
    current: &pb::EnvironmentRevision,
    previous: &pb::EnvironmentRevision,
) {
    let mut inventory = inventory(profile);
    inventory.environments = InstalledEnvironments {
        current: Some(current.id.parse().unwrap()),
        installed: vec![installed(current, true, 2_000_000), installed(previous, false, 1_000_000)],
    };
    fleet.state.store.record_inventory(&id(machine), &inventory, Timestamp::now()).await.unwrap();
}

#[tokio::test]
async fn a_rollback_assigns_the_environment_the_machine_ran_before() {
    let fleet = fleet().await;
    let first = fleet.apply(&spec("render", &commit('1'))).await;
    let second = fleet.apply(&spec("render", &commit('2'))).await;

    let none = fleet.rollback("aa01").await.unwrap_err();
    assert_eq!(none.code(), Code::FailedPrecondition);
    assert!(
        none.message().starts_with("machine aa01 has no earlier environment on disk to return to; "),
        "{}",
        none.message()
    );

    fleet.start_rollout("render", "2", &["aa01"]).await.unwrap();
    report_installed(&fleet, "aa01", "h100-x8-580", &second, &first).await;
    let response = fleet.rollback("aa0").await.unwrap_err();
    assert_eq!(response.code(), Code::InvalidArgument, "an ambiguous prefix");
    let response = fleet.rollback("aa01").await.unwrap();
    let revision = response.revision.unwrap();
    assert_eq!((revision.number, revision.id.as_str()), (1, first.id.as_str()));
    let assignment = response.machine.unwrap().assignment.unwrap();
    assert_eq!(
        (assignment.generation, assignment.revision_number),
        (1, 1),
        "offline, the rollout assigned nothing"
    );
    assert_eq!((assignment.reason.as_str(), assignment.activate), ("rollback", true));
    let stored = fleet.state.store.assignment(&id("aa01")).await.unwrap().unwrap();
    let plan: MachinePlan = serde_json::from_str(&stored.plan_json).unwrap();
    assert_eq!(plan.torch, "2.8.0+cu128");
    let audit = fleet.state.store.list_audit(1).await.unwrap();
    assert_eq!((audit[0].action.as_str(), audit[0].target.as_str()), ("machine.rollback", "aa01"));
    assert_eq!(audit[0].detail, format!("to render@1 ({}), generation 1", &first.id[..12]));
}

#[tokio::test]
async fn a_rollback_ignores_the_selector_but_not_the_hardware() {
    let fleet = fleet().await;
    let first = fleet.apply(&spec("render", &commit('1'))).await;
    let second = fleet.apply(&spec("render", &commit('2'))).await;
    // bb01 is in pool render-b, which the spec's selector leaves out.
    report_installed(&fleet, "bb01", "rtx4090-x1-570", &second, &first).await;
    let response = fleet.rollback("bb01").await.unwrap();
    assert_eq!(response.revision.unwrap().number, 1);
    assert_eq!(response.machine.unwrap().assignment.unwrap().generation, 1);

    // The T4's 535 driver runs no torch 2.8 build, whatever it has on disk.
    report_installed(&fleet, "aa02", "t4-x1-535", &second, &first).await;
    let error = fleet.rollback("aa02").await.unwrap_err();
    assert_eq!(error.code(), Code::FailedPrecondition);
    assert!(error.message().starts_with("machine aa02 cannot run render@1 ("), "{}", error.message());
    assert!(error.message().contains("driver 535.230.02 supports CUDA 12.2"), "{}", error.message());
    assert_eq!(fleet.state.store.assignment(&id("aa02")).await.unwrap(), None);
}

#[tokio::test]
async fn a_rollback_to_a_revision_the_controller_never_stored_is_refused() {
    let fleet = fleet().await;
    let first = fleet.apply(&spec("render", &commit('1'))).await;
    let mut foreign = first.clone();
    foreign.id = "f".repeat(64);
    foreign.environment = "elsewhere".into();
    report_installed(&fleet, "aa01", "h100-x8-580", &first, &foreign).await;
    let error = fleet.rollback("aa01").await.unwrap_err();
    assert_eq!(error.code(), Code::FailedPrecondition);
    assert!(
        error
            .message()
            .starts_with("machine aa01's earlier environment elsewhere@1 (ffffffffffff) is not a revision"),
        "{}",
        error.message()
    );
    let revoked = fleet.rollback("cc01").await.unwrap_err();
    assert_eq!(revoked.code(), Code::FailedPrecondition);
}

#[tokio::test]
async fn a_bad_policy_override_is_refused_naming_the_field() {
    let fleet = fleet().await;
    fleet.apply(&spec("render", &commit('1'))).await;
    let start = |policy: pb::RolloutPolicy| {
        let message = pb::StartRolloutRequest {
            environment: "render".into(),
            policy: Some(policy),
            ..Default::default()
        };
        fleet.api.start_rollout(TestFleet::request(&fleet.operator, message))
    };
    let zero =
        start(pb::RolloutPolicy { max_unavailable: "0".into(), ..Default::default() }).await.unwrap_err();
    assert_eq!(zero.code(), Code::InvalidArgument);
    assert!(
        zero.message().starts_with("policy.max_unavailable: 0 would never let a machine through"),
        "{}",
        zero.message()
    );
    let garbage =
        start(pb::RolloutPolicy { failure_budget: "lots".into(), ..Default::default() }).await.unwrap_err();
    assert!(
        garbage.message().starts_with("policy.failure_budget: `lots` is not a count or a percentage"),
        "{}",
        garbage.message()
    );
    let never =
        start(pb::RolloutPolicy { progress_deadline: "0s".into(), ..Default::default() }).await.unwrap_err();
    assert!(
        never.message().starts_with("policy.progress_deadline: must be more than 0s"),
        "{}",
        never.message()
    );
    let soak = start(pb::RolloutPolicy { soak: "soon".into(), ..Default::default() }).await.unwrap_err();
    assert!(soak.message().starts_with("policy.soak: "), "{}", soak.message());
    assert!(fleet.state.store.list_rollouts(None, 10).await.unwrap().is_empty(), "nothing was started");

    // A good override is what the rollout runs with, the rest from the spec.
    let response = start(pb::RolloutPolicy {
        canary: Some(0),
        max_unavailable: "25%".into(),
        soak: "0s".into(),
        auto_rollback: Some(false),
        ..Default::default()
    })
    .await
    .unwrap()
    .into_inner();
    let policy = response.rollout.unwrap().policy.unwrap();
    assert_eq!(
        (policy.canary, policy.max_unavailable.as_str(), policy.soak.as_str()),
        (Some(0), "25%", "0s")
    );
    assert_eq!((policy.auto_rollback, policy.failure_budget.as_str()), (Some(false), "0"));
}

#[tokio::test]
async fn rollout_names_that_match_nothing_say_what_to_do() {
    let fleet = fleet().await;
    fleet.apply(&spec("render", &commit('1'))).await;
    let get = |rollout: &str| {
        let message = pb::GetRolloutRequest { rollout: rollout.into(), without_machines: false };
        fleet.api.get_rollout(TestFleet::request(&fleet.viewer, message))
    };
    let none = get("").await.unwrap_err();
    assert_eq!(none.code(), Code::NotFound);
    assert!(none.message().contains("start one with `comfyfleet rollout start ENV`"), "{}", none.message());
    let undo = pb::UndoRolloutRequest { environment: "render".into(), ..Default::default() };
    let refused = fleet.api.undo_rollout(TestFleet::request(&fleet.operator, undo)).await.unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition);
    assert!(refused.message().contains("has had no rollout to undo"), "{}", refused.message());

    let started = fleet.start_rollout("render", "", &[]).await.unwrap().rollout.unwrap();
    assert_eq!(get("render").await.unwrap().into_inner().id, started.id);
    assert_eq!(get(&started.id.to_string()).await.unwrap().into_inner().machines.len(), 1);
    let missing = get("99").await.unwrap_err();
    assert_eq!(
        (missing.code(), missing.message()),
        (Code::NotFound, "there is no rollout 99 (`comfyfleet rollout list` shows them)")
    );
    let unnamed = pb::RolloutActionRequest { rollout: String::new(), reason: String::new() };
    let refused = fleet.api.pause_rollout(TestFleet::request(&fleet.operator, unnamed)).await.unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument);
    let viewer = pb::RolloutActionRequest { rollout: started.id.to_string(), reason: String::new() };
    let refused = fleet.api.abort_rollout(TestFleet::request(&fleet.viewer, viewer)).await.unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "a viewer cannot abort");
    let abort = pb::RolloutActionRequest { rollout: started.id.to_string(), reason: "test".into() };
    let aborted = fleet
        .api
        .abort_rollout(TestFleet::request(&fleet.operator, abort.clone()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(aborted.state(), pb::RolloutState::Aborted);
    let again = fleet.api.resume_rollout(TestFleet::request(&fleet.operator, abort)).await.unwrap_err();
    assert_eq!(again.code(), Code::FailedPrecondition);
    assert!(again.message().starts_with("rollout 1 has aborted"), "{}", again.message());
}
