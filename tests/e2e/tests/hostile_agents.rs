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
