use comfyfleet_config::Labels;
use pb::fleet_service_server::FleetService;

use super::*;

#[tokio::test]
async fn listed_reports_leave_out_step_output_which_get_machine_keeps() {
    use comfyfleet_config::convergence::{Phase, StepReport, StepState};
    use comfyfleet_config::{ConvergenceReport, MachineId};

    use crate::use_cases::test_fleet::TestFleet;

    let fleet = TestFleet::new().await;
    let machine: MachineId = fleet.add_machine("aa01", "h100-x8-580", &[]).await;
    let mut report = ConvergenceReport::idle(Timestamp::now());
    report.phase = Phase::Failed;
    report.steps.push(StepReport {
        state: StepState::Failed,
        output_tail: "error: no matching distribution".into(),
        ..StepReport::pending("torch")
    });
    fleet.state.store.record_report(&machine, &report, Timestamp::now()).await.unwrap();
    let full = fleet.get_machine(&machine).await.report.unwrap();
    assert_eq!(full.steps[0].output_tail, "error: no matching distribution");
    let message = pb::ListMachinesRequest::default();
    let listed = fleet.api.list_machines(TestFleet::request(&fleet.viewer, message)).await.unwrap();
    let listed = listed.into_inner().machines.remove(0).report.unwrap();
    assert_eq!((listed.phase(), listed.steps[0].output_tail.as_str()), (pb::ConvergencePhase::Failed, ""));
}

#[tokio::test]
async fn a_selector_filters_listed_machines_page_by_page_and_reports_come_from_the_same_machines() {
    use crate::use_cases::test_fleet::TestFleet;

    let fleet = TestFleet::new().await;
    // 12 machines, ids in order: every third a 4× A100 in pool b, the rest 4090s.
    for n in 0..12 {
        let profile = if n % 3 == 0 { "a100-x4-570" } else { "rtx4090-x1-570" };
        let pool = if n % 3 == 0 { "pool=b" } else { "pool=a" };
        fleet.add_machine(&format!("m{n:02}"), profile, &[pool]).await;
    }
    let list = |selector: &str, page_token: String| pb::ListMachinesRequest {
        page_size: 3,
        page_token,
        include_revoked: false,
        selector: selector.to_owned(),
    };
    let mut seen = Vec::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let request = TestFleet::request(&fleet.viewer, list("gpu.name contains A100 && pool == b", token));
        let page = fleet.api.list_machines(request).await.unwrap().into_inner();
        assert!(page.machines.len() <= 3);
        seen.extend(page.machines.into_iter().map(|machine| machine.id));
        pages += 1;
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(seen, ["m00", "m03", "m06", "m09"], "after {pages} pages");
    // A mistake says where it is and what to write.
    let request = TestFleet::request(&fleet.viewer, list("phase == actve", String::new()));
    let refused = fleet.api.list_machines(request).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    assert!(
        refused.message().contains("at character 10: `phase` cannot be compared"),
        "{}",
        refused.message()
    );
    // The same selector narrows a report.
    let request = pb::FleetReportRequest { report: "gpus".into(), selector: "pool == b".into() };
    let report = fleet.api.get_fleet_report(TestFleet::request(&fleet.viewer, request)).await.unwrap();
    let report: serde_json::Value = serde_json::from_str(&report.into_inner().report_json).unwrap();
    assert_eq!((report["report"].as_str(), report["machines"].as_u64()), (Some("gpus"), Some(4)));
    assert_eq!(report["rows"][0]["gpus"], 16);
    let request = pb::FleetReportRequest { report: "cpus".into(), selector: String::new() };
    let refused = fleet.api.get_fleet_report(TestFleet::request(&fleet.viewer, request)).await.unwrap_err();
    assert!(refused.message().contains("choose gpus, environments, optimizations or drift"));
}

#[test]
fn credential_names_are_checked() {
    assert!(check_credential_name("ci-reader").is_ok());
    assert!(check_credential_name("").is_err());
    assert!(check_credential_name("a b").is_err());
}

#[test]
fn labels_round_trip_for_tokens() {
    let record = JoinTokenRecord {
        id: "0123456789ab".into(),
        secret_sha256: [0; 32],
        created_at: Timestamp::UNIX_EPOCH,
        expires_at: Timestamp::UNIX_EPOCH,
        uses_allowed: None,
        uses: 0,
        labels: Labels::parse_pairs(["pool=a"]).unwrap(),
        description: String::new(),
        created_by: String::new(),
    };
    let wire = join_token_to_wire(&record);
    assert_eq!(wire.uses_allowed, 0);
    assert_eq!(wire.labels.get("pool").map(String::as_str), Some("a"));
}
