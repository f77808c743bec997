//! A bad agent message is that agent's problem: it gets an error naming what was
//! wrong, nothing of it is stored, and the controller and every other agent carry on.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test helpers fail loudly by design

use std::time::Duration;

use comfyfleet_e2e::grpc::{AgentFiles, RawSession, channel, hello, inventory};
use comfyfleet_e2e::{Agent, Controller, profile, test_dir, wait_until};
use comfyfleet_proto::v1 as pb;
use tonic::Code;

/// Opens a session as `files`' machine and sends a valid Hello; returns it after Welcome.
async fn welcomed(url: &str, files: &AgentFiles, hostname: &str) -> RawSession {
    let channel = channel(url, &files.ca_pem, Some(files)).await;
    let mut session = RawSession::open(channel).await.unwrap();
    session.send(hello(&files.machine_id, Some(inventory(hostname, 1)))).await;
    let welcome = session.next().await.unwrap().unwrap();
    assert!(matches!(welcome.body, Some(pb::controller_message::Body::Welcome(_))));
    session
}

async fn refused_on_open(url: &str, files: &AgentFiles, first: Vec<u8>) -> tonic::Status {
    let channel = channel(url, &files.ca_pem, Some(files)).await;
    let mut session = RawSession::open(channel).await.unwrap();
    session.send_bytes(first).await;
    session.next().await.unwrap_err()
}

fn inventory_message(inventory: pb::Inventory) -> pb::AgentMessage {
    pb::AgentMessage { seq: 2, body: Some(pb::agent_message::Body::Inventory(inventory)) }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_oversized_inventory_is_refused_and_everyone_else_carries_on() {
    let dir = test_dir();
    let mut controller = Controller::start(&dir.path().join("controller"));
    let token = controller.create_token(&[]);
    let mut mallory =
        Agent::start(dir.path(), "mallory", &profile("t4-x1-535"), &controller.url, Some(&token), &[]);
    let _bystanders: Vec<Agent> = ["bystander-1", "bystander-2"]
        .iter()
        .map(|name| {
            Agent::start(dir.path(), name, &profile("a100-x4-570"), &controller.url, Some(&token), &[])
        })
        .collect();
    wait_until(Duration::from_secs(20), "three machines online", || {
        let machines = controller.machines();
        (machines.len() == 3 && machines.iter().all(|m| m["online"] == true)).then_some(())
    });
    mallory.process.kill();
    let files = AgentFiles::read(&mallory.data_dir);
    let url = controller.url.clone();

    // A valid report first: this is what must survive everything below.
    let session = welcomed(&url, &files, "mallory").await;
    drop(session);
    let stored = wait_until(Duration::from_secs(10), "mallory's own report", || {
        controller
            .machine("mallory")
            .filter(|m| m["gpus"].as_array().unwrap().len() == 1 && m["online"] == false)
    });
    assert_eq!(stored["gpus"][0]["name"], "NVIDIA L40S");

    // A compute capability that no GPU has, in the Hello.
    let mut bad = inventory("mallory", 1);
    bad.nvidia.as_mut().unwrap().gpus[0].compute_capability =
        Some(pb::ComputeCapability { major: 0, minor: 0 });
    let status =
        refused_on_open(&url, &files, prost::Message::encode_to_vec(&hello(&files.machine_id, Some(bad))))
            .await;
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("nvidia.gpus[0].compute_capability"), "{}", status.message());

    // Sixty-five GPUs in a later report.
    let mut session = welcomed(&url, &files, "mallory").await;
    session.send(inventory_message(inventory("mallory", 65))).await;
    let status = session.next().await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("lists 65 GPUs; at most 64"), "{}", status.message());

    // Two GPUs with the same index.
    let mut session = welcomed(&url, &files, "mallory").await;
    let mut twins = inventory("mallory", 2);
    twins.nvidia.as_mut().unwrap().gpus[1].index = 0;
    session.send(inventory_message(twins)).await;
    let status = session.next().await.unwrap_err();
    assert!(status.message().contains("nvidia.gpus[1].index"), "{}", status.message());

    // A 2 MiB message: refused by size, unread.
    let mut session = welcomed(&url, &files, "mallory").await;
    let mut huge = inventory("mallory", 1);
    huge.host.as_mut().unwrap().cpu_model = "x".repeat(2 << 20);
    session.send(inventory_message(huge)).await;
    let status = session.next().await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains("1048576"), "{}", status.message());

    // Bytes that are not a protobuf message at all.
    let mut session = welcomed(&url, &files, "mallory").await;
    session.send_bytes(vec![0xff; 64]).await;
    let status = session.next().await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("unreadable message"), "{}", status.message());

    // A session that does not start with Hello, and a Hello with a bad label.
    let heartbeat =
        pb::AgentMessage { seq: 1, body: Some(pb::agent_message::Body::Heartbeat(pb::Heartbeat {})) };
    let status = refused_on_open(&url, &files, prost::Message::encode_to_vec(&heartbeat)).await;
    assert!(status.message().contains("must be Hello"), "{}", status.message());
    let mut labelled = hello(&files.machine_id, Some(inventory("mallory", 1)));
    if let Some(pb::agent_message::Body::Hello(hello)) = labelled.body.as_mut() {
        hello.labels.insert("bad key".into(), "x".into());
    }
    let status = refused_on_open(&url, &files, prost::Message::encode_to_vec(&labelled)).await;
    assert!(status.message().contains("label key `bad key` is invalid"), "{}", status.message());

    // Nothing of that was stored; the controller and the others never noticed.
    controller.process.assert_running();
    let after = controller.machine("mallory").unwrap();
    assert_eq!(after["gpus"], stored["gpus"]);
    assert_eq!(after["online"], false);
    for name in ["bystander-1", "bystander-2"] {
        let machine = controller.machine(name).unwrap();
        assert_eq!(machine["online"], true, "{name}");
        assert_eq!(machine["gpus"].as_array().unwrap().len(), 4, "{name}");
    }
}

/// Sends `report` as message `seq` and waits for its Ack; fails the test if the
/// controller ends the session instead. Returns the desired states that came first.
async fn report_acked(
    session: &mut RawSession,
    seq: u64,
    report: pb::ConvergenceReport,
) -> Vec<pb::DesiredState> {
    session.send(pb::AgentMessage { seq, body: Some(pb::agent_message::Body::Report(report)) }).await;
    let mut desired = Vec::new();
    loop {
        match session.next().await {
            Ok(Some(pb::ControllerMessage { body: Some(pb::controller_message::Body::Ack(ack)) }))
                if ack.seq == seq =>
            {
                return desired;
            }
            Ok(Some(pb::ControllerMessage { body: Some(pb::controller_message::Body::Desired(sent)) })) => {
                desired.push(sent);
            }
            Ok(Some(_)) => {}
            Ok(None) => panic!("the controller closed the session after report {seq}"),
            Err(status) => panic!("the controller ended the session after report {seq}: {status:?}"),
        }
    }
}

/// An idle report, sent now.
fn idle() -> pb::ConvergenceReport {
    pb::ConvergenceReport {
        phase: pb::ConvergencePhase::Idle.into(),
        updated_at: Some(comfyfleet_proto::timestamp_to_wire(jiff::Timestamp::now())),
        ..Default::default()
    }
}

fn step(name: &str, state: pb::StepState, detail: &str) -> pb::StepReport {
    pb::StepReport {
        name: name.to_owned(),
        state: state.into(),
        detail: detail.to_owned(),
        ..Default::default()
    }
}

/// Issue 24, point 1: a report field over its limit ended the session, and the agent
/// sent the same report again at once — 406 reconnects in 80 s, the failure never
/// stored. A bad field costs that field now: stored cut to the limit and marked,
/// escaped, or left out; the session stays up; each is counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_report_field_over_its_limit_is_stored_cut_and_the_session_stays_up() {
    let dir = test_dir();
    let metrics_port = comfyfleet_e2e::provision::free_port();
    let listen = format!("127.0.0.1:{metrics_port}");
    let mut controller =
        Controller::start_with(&dir.path().join("controller"), 0, &["--metrics-listen", &listen]);
    let token = controller.create_token(&[]);
    let mut mallory =
        Agent::start(dir.path(), "mallory", &profile("t4-x1-535"), &controller.url, Some(&token), &[]);
    let id = wait_until(Duration::from_secs(20), "mallory online", || {
        controller
            .machine("mallory")
            .filter(|m| m["online"] == true)
            .map(|m| m["id"].as_str().unwrap().to_owned())
    });
    mallory.process.kill();
    let files = AgentFiles::read(&mallory.data_dir);
    let mut session = welcomed(&controller.url, &files, "mallory").await;
    let _alive = session.keep_alive(Duration::from_millis(300));

    // Nothing is assigned, so the report is about generation 0: idle.
    let long_error = format!("requirements failed: {}", "x".repeat(100 * 1024));
    let report = pb::ConvergenceReport {
        error: long_error.clone(),
        steps: vec![
            step("uv", pb::StepState::Done, "uv 0.9\u{1b}[31m on PATH"),
            step("two words", pb::StepState::Done, ""),
            pb::StepReport { state: 99, ..step("verify", pb::StepState::Done, "") },
        ],
        ..idle()
    };
    report_acked(&mut session, 2, report).await;
    let shown: serde_json::Value =
        serde_json::from_str(&controller.cli(&["machines", "show", &id, "-o", "json"]).success()).unwrap();
    let error = shown["report"]["error"].as_str().unwrap();
    assert!(error.len() <= 4096 && error.starts_with("requirements failed: xxx"), "{} bytes", error.len());
    let cut: usize = error.rsplit("… [cut: ").next().unwrap().trim_end_matches(" bytes]").parse().unwrap();
    assert!(cut > 100 * 1024 - 4096, "the mark says how much was cut: {cut}");
    let steps = shown["report"]["steps"].as_array().unwrap();
    assert_eq!(steps.len(), 1, "the steps without a valid name or state are left out: {steps:?}");
    assert_eq!(steps[0]["detail"], "uv 0.9\\u{1b}[31m on PATH", "control characters escaped");
    assert_eq!(shown["online"], true);
    // Still up: the next reports are taken as well.
    report_acked(&mut session, 3, idle()).await;
    report_acked(&mut session, 4, pb::ConvergenceReport { error: long_error, ..idle() }).await;

    let metrics = comfyfleet_e2e::observe::http_get(metrics_port, "/metrics", &[]).unwrap().body;
    let counted = |line: &str| {
        metrics.lines().find(|l| l.starts_with(line)).and_then(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
    };
    assert_eq!(
        counted("comfyfleet_refusals_total{stage=\"report-field\",reason=\"bad-field\"}"),
        Some(5.0),
        "error twice, a detail, a name, a state:\n{metrics}"
    );
    drop(session);
    controller.process.assert_running();
    let log = controller.process.log();
    assert!(!log.contains("session ended by the controller"), "{log}");
    assert_eq!(log.matches("agent connected").count(), 2, "mallory's own session, then this one:\n{log}");
    assert!(log.contains("report fields mended"), "{log}");
    controller.kill();
}

/// The next desired state: the first of `pending`, else the next the controller sends
/// (Acks skipped).
async fn next_desired(session: &mut RawSession, pending: &mut Vec<pb::DesiredState>) -> pb::DesiredState {
    if !pending.is_empty() {
        return pending.remove(0);
    }
    loop {
        match session.next().await.unwrap() {
            Some(pb::ControllerMessage { body: Some(pb::controller_message::Body::Desired(desired)) }) => {
                return desired;
            }
            Some(_) => {}
            None => panic!("the controller closed the session"),
        }
    }
}

/// A report on `desired`'s revision, in `phase`.
fn honest(desired: &pb::DesiredState, phase: pb::ConvergencePhase) -> pb::ConvergenceReport {
    let assignment = desired.assignment.as_ref().unwrap();
    pb::ConvergenceReport {
        generation: desired.generation,
        environment: assignment.environment.clone(),
        revision_number: assignment.revision_number,
        revision_id: assignment.revision_id.clone(),
        phase: phase.into(),
        ..idle()
    }
}

/// The rollout's row of `machine`.
fn row(controller: &Controller, rollout: u64, machine: &str) -> serde_json::Value {
    let status = comfyfleet_e2e::rollouts::status(controller, rollout);
    status["machines"].as_array().unwrap().iter().find(|row| row["machine"] == machine).unwrap().clone()
}

/// Issue 24, point 4: reports were matched to a rollout by generation only — an agent
/// reported `evil-env@999` active with its assignment's generation and the rollout
/// counted it, and a generation of 2^64−1 took the machine out of rollouts. A report
/// counts only for the generation and revision assigned now; anything else is refused
/// for that machine (logged, counted), and the session stays up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_report_counts_only_for_the_revision_and_generation_assigned() {
    use comfyfleet_e2e::rollouts::{PROFILES, apply, spec, start, wait_for_state};
    use comfyfleet_e2e::sim::{SimFleet, SimOptions};

    let dir = test_dir();
    let controller = Controller::start(&dir.path().join("controller"));
    let mut options = SimOptions::new(2);
    options.profiles = PROFILES.iter().map(|name| (*name).to_owned()).collect();
    options.labels = vec!["pool=sim".to_owned()];
    let _sim = SimFleet::start(dir.path(), &controller, &options);
    let token = controller.create_token(&[]);
    let mut mallory =
        Agent::start(dir.path(), "mallory", &profile("rtx4090-x1-570"), &controller.url, Some(&token), &[]);
    let id = wait_until(Duration::from_secs(30), "three machines online", || {
        let machines = controller.machines();
        let all_online = machines.len() == 3 && machines.iter().all(|m| m["online"] == true);
        let mallory = machines.iter().find(|m| m["hostname"] == "mallory")?;
        all_online.then(|| mallory["id"].as_str().unwrap().to_owned())
    });
    mallory.process.kill();

    // Mallory's machine, driven by hand: a machine the sim spec targets.
    let files = AgentFiles::read(&mallory.data_dir);
    let mut machine = inventory("mallory", 1);
    let host = machine.host.as_mut().unwrap();
    (host.os, host.arch) = ("linux".to_owned(), "x86_64".to_owned());
    let mut first = hello(&files.machine_id, Some(machine));
    if let Some(pb::agent_message::Body::Hello(hello)) = first.body.as_mut() {
        hello.labels.insert("pool".to_owned(), "sim".to_owned());
    }
    let mut session =
        RawSession::open(channel(&controller.url, &files.ca_pem, Some(&files)).await).await.unwrap();
    session.send(first).await;
    let _alive = session.keep_alive(Duration::from_millis(300));
    apply(&controller, dir.path(), &spec('1', "canary = 1\nmax_unavailable = \"100%\""));
    let rollout = start(&controller, &["render"]);

    // Assigned to prepare revision 1, it claims to run another revision, active.
    let mut pending = Vec::new();
    let prepare = next_desired(&mut session, &mut pending).await;
    assert!(!prepare.assignment.as_ref().unwrap().activate);
    let evil = pb::ConvergenceReport {
        environment: "evil-env".to_owned(),
        revision_number: 999,
        revision_id: "e".repeat(64),
        ..honest(&prepare, pb::ConvergencePhase::Active)
    };
    pending.extend(report_acked(&mut session, 2, evil).await);
    // Then it prepares honestly: a row the evil report had made active stays active.
    pending.extend(report_acked(&mut session, 3, honest(&prepare, pb::ConvergencePhase::Prepared)).await);
    wait_until(Duration::from_secs(30), "mallory's row to show the honest report", || {
        let status = row(&controller, rollout, &id)["status"].as_str().unwrap().to_owned();
        assert_ne!(status, "active", "the claim of another revision was counted");
        matches!(status.as_str(), "prepared" | "activating").then_some(())
    });
    let shown: serde_json::Value =
        serde_json::from_str(&controller.cli(&["machines", "show", &id, "-o", "json"]).success()).unwrap();
    assert_eq!(shown["report"]["environment"], "render", "{}", shown["report"]);

    // A generation it was never given: refused, and the machine stays in the rollout.
    let forged =
        pb::ConvergenceReport { generation: u64::MAX, ..honest(&prepare, pb::ConvergencePhase::Active) };
    pending.extend(report_acked(&mut session, 4, forged).await);
    let activate = next_desired(&mut session, &mut pending).await;
    assert!(activate.assignment.as_ref().unwrap().activate && activate.generation > prepare.generation);
    report_acked(&mut session, 5, honest(&activate, pb::ConvergencePhase::Activating)).await;
    report_acked(&mut session, 6, honest(&activate, pb::ConvergencePhase::Active)).await;
    let done = wait_for_state(&controller, rollout, "succeeded", Duration::from_secs(120));
    assert_eq!(done["counts"]["active"], 3, "{}", done["counts"]);
    assert_eq!(row(&controller, rollout, &id)["status"], "active");

    let log = controller.process.log();
    let refused: Vec<&str> = log.lines().filter(|line| line.contains("report refused")).collect();
    assert!(refused.iter().any(|line| line.contains("evil-env@999")), "{log}");
    assert!(
        refused.iter().any(|line| line.contains(&format!("generation {} was never assigned", u64::MAX))),
        "{log}"
    );
    assert!(!log.contains("session ended by the controller"), "{log}");
}
