use comfyfleet_config::fleet_report::{FleetReport, ReportKind};
use comfyfleet_config::{InstalledEnvironment, Phase};
use jiff::Timestamp;

use super::*;
use crate::use_cases::test_fleet::{TestFleet, inventory};

fn id(text: &str) -> MachineId {
    text.parse().unwrap()
}

fn report(phase: Phase) -> ConvergenceReport {
    ConvergenceReport {
        generation: 1,
        environment: "render".into(),
        revision_number: 1,
        revision_id: None,
        phase,
        steps: Vec::new(),
        optimizations: Vec::new(),
        error: String::new(),
        instances: Vec::new(),
        updated_at: Timestamp::now(),
    }
}

/// Every report kind from the summary equals the one built machine by machine from
/// the store's records, as the requests were answered before.
async fn assert_matches_the_store(fleet: &TestFleet) {
    let state = &fleet.state;
    let summary = state.fleet.summary(&state.presence);
    let machines = crate::use_cases::machines::fleet_view::machines(state, None, true).await.unwrap();
    let live: Vec<_> = machines.iter().filter(|machine| machine.record.revoked_at.is_none()).collect();
    for kind in ReportKind::ALL {
        let expected = FleetReport::build(kind, live.iter().map(|machine| &machine.facts));
        assert_eq!(summary.report(kind), expected, "{kind:?}");
    }
    let online = live.iter().filter(|machine| machine.record.online).count() as u64;
    let revoked = (machines.len() - live.len()) as u64;
    assert_eq!(
        (summary.online, summary.offline, summary.revoked),
        (online, live.len() as u64 - online, revoked)
    );
}

#[tokio::test]
async fn the_summary_follows_sessions_inventories_reports_and_revocations() {
    let fleet = TestFleet::new().await;
    let state = &fleet.state;
    let a = fleet.add_machine("aa01", "h100-x8-580", &["pool=a"]).await;
    let b = fleet.add_machine("aa02", "h100-x8-580", &["pool=a"]).await;
    let c = fleet.add_machine("aa03", "rtx4090-x1-570", &["pool=b"]).await;
    assert_eq!(state.fleet.classes(), 2, "machines alike are counted together");
    assert_matches_the_store(&fleet).await;

    // Sessions come and go: presence says who is online.
    let session = state.presence.register(a.clone(), Timestamp::now());
    assert_eq!(state.fleet.summary(&state.presence).online, 1);
    assert_matches_the_store(&fleet).await;
    drop(session);
    assert_eq!(state.fleet.summary(&state.presence).online, 0);

    // A report arrives (stored as the report writer stores it).
    let preparing = report(Phase::Preparing);
    state.store.record_report(&b, &preparing, Timestamp::now()).await.unwrap();
    state.fleet.reported(&b, None, Some(&preparing));
    assert_eq!(
        state.fleet.summary(&state.presence).count(|facts| facts.software.phase == Some(Phase::Preparing)),
        1
    );
    assert_matches_the_store(&fleet).await;

    // A new inventory: an environment that drifted, named in the drift report.
    let mut changed = inventory("rtx4090-x1-570");
    changed.environments.installed.push(InstalledEnvironment {
        revision_id: "1".repeat(64).parse().unwrap(),
        environment: "render".into(),
        revision_number: 1,
        current: true,
        activated_at: None,
        python_version: "3.12".into(),
        torch_version: "2.8.0+cu128".into(),
        comfyui_commit: "a".repeat(40),
        optimizations: Vec::new(),
        custom_nodes: Vec::new(),
        drift: vec!["torch 2.8.0 → 2.9.0".into()],
    });
    state.store.record_inventory(&c, &changed, Timestamp::now()).await.unwrap();
    state.fleet.inventory(&c, &changed, None);
    let drift = state.fleet.summary(&state.presence).report(ReportKind::Drift);
    let FleetReport::Drift { rows, .. } = &drift else { panic!("{drift:?}") };
    assert_eq!((rows.len(), rows[0].machine.as_str()), (1, c.as_str()));
    assert_matches_the_store(&fleet).await;
    // Its report keeps the environments the inventory lists.
    let active = report(Phase::Active);
    state.store.record_report(&c, &active, Timestamp::now()).await.unwrap();
    state.fleet.reported(&c, Some(&changed.environments), Some(&active));
    assert_matches_the_store(&fleet).await;

    // A revoked machine counts as revoked and nowhere else.
    state.store.revoke_machine(&b, Timestamp::now()).await.unwrap();
    state.fleet.revoked(&b);
    let summary = state.fleet.summary(&state.presence);
    assert_eq!((summary.machines(), summary.revoked), (2, 1));
    assert_matches_the_store(&fleet).await;

    // What the store holds, read again from scratch, is what the summary kept.
    let reloaded = FleetSummary::default();
    reloaded.load(state.store.as_ref()).await.unwrap();
    let kept = state.fleet.summary(&state.presence);
    let read = reloaded.summary(&state.presence);
    for kind in ReportKind::ALL {
        assert_eq!(read.report(kind), kept.report(kind), "{kind:?}");
    }
    assert_eq!((read.online, read.offline, read.revoked), (kept.online, kept.offline, kept.revoked));
    assert_eq!(reloaded.classes(), state.fleet.classes());
}

#[test]
fn a_machine_that_moves_leaves_its_old_class() {
    let summary = FleetSummary::default();
    let presence = Presence::new();
    for index in 0..100 {
        summary.inventory(&id(&format!("m{index:03}")), &inventory("h100-x8-580"), None);
    }
    assert_eq!(summary.classes(), 1);
    let preparing = report(Phase::Preparing);
    for index in 0..100 {
        summary.reported(&id(&format!("m{index:03}")), None, Some(&preparing));
    }
    assert_eq!(summary.classes(), 1, "every machine moved: the old class is gone");
    summary.enrolled(&id("m100"), "new");
    summary.revoked(&id("m000"));
    let now = summary.summary(&presence);
    assert_eq!((now.machines(), now.revoked, now.classes.len()), (100, 1, 2));
    assert_eq!(now.count(|facts| facts.software.phase == Some(Phase::Preparing)), 99);
}
