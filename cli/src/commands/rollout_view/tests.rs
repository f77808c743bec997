//! Wire fixtures shared by the rollout commands' tests, and the views' own tests.

use super::*;

pub fn wire_time(seconds: i64) -> Option<prost_types::Timestamp> {
    Some(prost_types::Timestamp { seconds, nanos: 0 })
}

pub fn wire_phase(index: u32, machines: u32, done: u32, failed: u32, activating: u32) -> pb::RolloutPhase {
    pb::RolloutPhase {
        index,
        name: if index == 0 { "canary".into() } else { format!("batch {index}") },
        machines,
        done,
        active: done - failed,
        failed,
        activating,
    }
}

pub fn wire_machine(
    id: &str,
    phase: u32,
    status: pb::RolloutMachineStatus,
    detail: &str,
) -> pb::RolloutMachine {
    pb::RolloutMachine {
        machine_id: id.into(),
        hostname: format!("gpu-{id}"),
        phase,
        status: status.into(),
        detail: detail.into(),
        since: wire_time(1_746_093_600),
        online: true,
        stalled: false,
        from_environment: "render-prod".into(),
        from_revision_number: 2,
        activations: 1,
        joined: false,
    }
}

/// Rollout 7 of render-prod@3 over 22 machines: the canary done, batch 1 running.
pub fn wire_rollout() -> pb::Rollout {
    pb::Rollout {
        id: 7,
        environment: "render-prod".into(),
        revision_number: 3,
        revision_id: "1a2b3c4d5e6f".repeat(5) + "abcd",
        kind: "rollout".into(),
        state: pb::RolloutState::Running.into(),
        reason: "activating batch 1".into(),
        policy: Some(pb::RolloutPolicy {
            canary: Some(2),
            max_unavailable: "10%".into(),
            max_parallel_prepare: "25%".into(),
            soak: "10m".into(),
            failure_budget: "3".into(),
            auto_rollback: Some(true),
            progress_deadline: "30m".into(),
            stalled_is_failure: Some(false),
        }),
        created_at: Some(prost_types::Timestamp { seconds: 1_746_093_000, nanos: 600_000_000 }),
        created_by: "alice".into(),
        finished_at: None,
        counts: Some(pb::RolloutCounts {
            machines: 22,
            pending: 0,
            preparing: 0,
            prepared: 12,
            activating: 2,
            active: 6,
            failed: 2,
            offline: 1,
            ..Default::default()
        }),
        max_unavailable: 2,
        max_parallel_prepare: 5,
        failure_budget: 3,
        phases: vec![wire_phase(0, 2, 2, 0, 0), wire_phase(1, 20, 6, 2, 2)],
        machines: vec![
            wire_machine("aa01", 0, pb::RolloutMachineStatus::Active, ""),
            wire_machine(
                "bb07",
                1,
                pb::RolloutMachineStatus::Failed,
                "health check: HTTP 502\nafter 3 tries",
            ),
            pb::RolloutMachine {
                online: false,
                stalled: true,
                from_environment: String::new(),
                ..wire_machine("bb08", 1, pb::RolloutMachineStatus::Preparing, "uv")
            },
        ],
        soak_until: None,
        stalled: false,
        undo_of_revision: 0,
        budget_exceeded: false,
    }
}

#[test]
fn the_view_names_states_and_truncates_times_to_the_second() {
    let view = RolloutView::from(&wire_rollout());
    assert_eq!(view.title(), "rollout 7 of render-prod@3");
    assert_eq!(view.state, "running");
    assert_eq!(view.unavailable, 2);
    assert_eq!(view.created_at, Some(Timestamp::from_second(1_746_093_000).unwrap()));
    assert_eq!(view.machines[1].phase_name, "batch 1");
    assert_eq!(view.machines[1].from.as_deref(), Some("render-prod@2"));
    assert_eq!(view.machines[2].from, None);
    assert_eq!(view.undo_of_revision, None);
    assert_eq!(view.policy_summary(), "canary 2, max unavailable 2 (10%), failure budget 3");
    assert_eq!(
        view.policy_details(),
        "canary 2, max unavailable 2 (10%), failure budget 3, max parallel prepare 5 (25%), soak 10m, \
         auto rollback yes, progress deadline 30m, stalled is failure no"
    );
}

#[test]
fn the_json_view_has_stable_field_names() {
    let view = RolloutView::from(&wire_rollout());
    let json = serde_json::to_value(&view).unwrap();
    // serde_json's map sorts its keys.
    let keys: Vec<&str> = json.as_object().unwrap().keys().map(String::as_str).collect();
    let mut expected = vec![
        "id",
        "environment",
        "revision",
        "revision_id",
        "kind",
        "undo_of_revision",
        "state",
        "reason",
        "budget_exceeded",
        "stalled",
        "created_at",
        "created_by",
        "finished_at",
        "soak_until",
        "policy",
        "limits",
        "unavailable",
        "counts",
        "phases",
        "machines",
    ];
    expected.sort_unstable();
    assert_eq!(keys, expected);
    assert_eq!(json["created_at"], "2025-05-01T09:50:00Z");
    assert_eq!(json["finished_at"], serde_json::Value::Null);
    assert_eq!(json["policy"]["max_unavailable"], "10%");
    assert_eq!(
        json["limits"],
        serde_json::json!({"max_unavailable": 2, "max_parallel_prepare": 5, "failure_budget": 3})
    );
    assert_eq!(
        json["phases"][1],
        serde_json::json!({
            "index": 1, "name": "batch 1", "machines": 20, "done": 6, "active": 4, "failed": 2, "activating": 2
        })
    );
    assert_eq!(
        json["machines"][1],
        serde_json::json!({
            "machine": "bb07",
            "hostname": "gpu-bb07",
            "phase": 1,
            "phase_name": "batch 1",
            "status": "failed",
            "detail": "health check: HTTP 502\nafter 3 tries",
            "since": "2025-05-01T10:00:00Z",
            "online": true,
            "stalled": false,
            "from": "render-prod@2",
            "activations": 1,
            "joined": false
        })
    );
    let event = pb::RolloutEvent {
        id: 41,
        rollout_id: 7,
        at: wire_time(1_746_093_600),
        machine_id: String::new(),
        kind: "paused".into(),
        from: String::new(),
        detail: "maintenance".into(),
        phase: 1,
    };
    assert_eq!(
        serde_json::to_value(EventView::from(&event)).unwrap(),
        serde_json::json!({
            "id": 41, "rollout": 7, "at": "2025-05-01T10:00:00Z", "machine": null, "kind": "paused",
            "from": null, "detail": "maintenance", "phase": 1
        })
    );
}

#[test]
fn states_read_with_their_reason() {
    let mut wire = wire_rollout();
    wire.state = pb::RolloutState::Paused.into();
    wire.budget_exceeded = true;
    wire.reason = "4 machines failed, budget 3".into();
    assert_eq!(
        RolloutView::from(&wire).state_text(),
        "paused by the failure budget (4 machines failed, budget 3)"
    );
    wire.state = 42;
    wire.reason = String::new();
    assert_eq!(RolloutView::from(&wire).state_text(), "unknown");
}
