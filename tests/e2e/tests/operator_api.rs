//! The operator's side: gRPC health and reflection for tools and load balancers,
//! labels, tokens, credentials and the audit log through the real CLI.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test helpers fail loudly by design

use std::time::Duration;

use comfyfleet_e2e::grpc::{channel, controller_ca};
use comfyfleet_e2e::{Agent, Controller, profile, test_dir, wait_until};
use serde_json::{Value, json};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_reflection_answer_on_the_same_port() {
    let dir = test_dir();
    let controller = Controller::start(&dir.path().join("controller"));
    let channel = channel(&controller.url, &controller_ca(&controller.data_dir), None).await;

    let mut health = HealthClient::new(channel.clone());
    for service in ["", "comfyfleet.v1.AgentService", "comfyfleet.v1.FleetService"] {
        let response = health
            .check(tonic_health::pb::HealthCheckRequest { service: service.into() })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(response.status(), ServingStatus::Serving, "{service:?}");
    }

    let mut reflection = ServerReflectionClient::new(channel);
    let request = tonic_reflection::pb::v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses =
        reflection.server_reflection_info(tokio_stream::iter([request])).await.unwrap().into_inner();
    let response = responses.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("unexpected reflection answer: {response:?}");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for expected in ["comfyfleet.v1.AgentService", "comfyfleet.v1.FleetService", "grpc.health.v1.Health"] {
        assert!(names.iter().any(|n| n == expected), "{expected} not in {names:?}");
    }
}

#[test]
fn operators_label_machines_manage_tokens_and_every_change_is_audited() {
    let dir = test_dir();
    let controller = Controller::start(&dir.path().join("controller"));
    let token =
        controller.create_token(&["--uses", "3", "--label", "pool=render-a", "--description", "rack 12"]);
    assert!(token.starts_with("cfj1.") && !token.contains('\n'), "only the token is printed: {token}");
    let _agent = Agent::start(
        dir.path(),
        "render-07",
        &profile("l40s-x2-550"),
        &controller.url,
        Some(&token),
        &["--label", "rack=r12"],
    );
    let machine = wait_until(Duration::from_secs(20), "render-07", || controller.machine("render-07"));
    let id = machine["id"].as_str().unwrap().to_owned();

    // Operator labels override agent and token labels; KEY- removes them again.
    controller.cli(&["machines", "label", &id[..5], "pool=render-b", "tier=gold"]).success();
    let labelled = controller.machine("render-07").unwrap();
    assert_eq!(labelled["labels"], json!({"pool": "render-b", "rack": "r12", "tier": "gold"}));
    controller.cli(&["machines", "label", &id, "pool-"]).success();
    assert_eq!(controller.machine("render-07").unwrap()["labels"]["pool"], "render-a");
    let error = controller.cli(&["machines", "label", &id, "rack-"]).failure();
    assert!(error.contains("comes from the agent's --label flags"), "{error}");
    let error = controller.cli(&["machines", "label", &id, "bad key=x"]).failure();
    assert!(error.contains("label key `bad key` is invalid"), "{error}");
    let error = controller.cli(&["machines", "show", "zzzz"]).failure();
    assert!(error.contains("no machine id starts with `zzzz`"), "{error}");

    // Tokens are listed without secrets and can be deleted.
    let tokens: Vec<Value> =
        serde_json::from_str(&controller.cli(&["token", "list", "-o", "json"]).success()).unwrap();
    assert_eq!(tokens.len(), 1);
    assert_eq!(tokens[0]["uses"], 1);
    assert_eq!(tokens[0]["uses_allowed"], 3);
    assert_eq!(tokens[0]["description"], "rack 12");
    let secret = token.split('.').nth(2).unwrap();
    assert!(!controller.cli(&["token", "list", "-o", "json"]).success().contains(secret));
    let token_id = tokens[0]["id"].as_str().unwrap();
    controller.cli(&["token", "delete", token_id]).success();
    let mut late =
        Agent::start(dir.path(), "render-08", &profile("l40s-x2-550"), &controller.url, Some(&token), &[]);
    let (status, log) = late.wait_exit(Duration::from_secs(20));
    assert_eq!(status.code(), Some(3));
    assert!(log.contains("not valid here (unknown to this controller, or its secret is wrong)"), "{log}");

    let audit: Vec<Value> =
        serde_json::from_str(&controller.cli(&["audit", "-o", "json"]).success()).unwrap();
    let actions: Vec<&str> = audit.iter().map(|event| event["action"].as_str().unwrap()).collect();
    for expected in ["credential.create", "token.create", "machine.enroll", "machine.label", "token.delete"] {
        assert!(actions.contains(&expected), "{expected} missing from {actions:?}");
    }
    assert!(
        audit
            .iter()
            .any(|e| e["action"] == "machine.label" && e["actor"].as_str().unwrap().starts_with("admin ("))
    );

    let whoami = controller.cli(&["whoami"]).success();
    assert!(whoami.contains("with role admin"), "{whoami}");

    // admin.toml names the port actually bound and only its owner can read it.
    use std::os::unix::fs::PermissionsExt;
    let admin = std::fs::read_to_string(controller.admin_config()).unwrap();
    assert!(admin.contains(&format!("server = \"https://127.0.0.1:{}\"", controller.port)), "{admin}");
    let mode = std::fs::metadata(controller.admin_config()).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
}

#[test]
fn bad_flags_and_bad_config_files_get_clear_errors() {
    let dir = test_dir();
    let controller = Controller::start(&dir.path().join("controller"));
    let error = controller.cli(&["token", "create", "--ttl", "soon"]).failure();
    assert!(error.contains("write e.g. 30s, 5m, 24h, 7d"), "{error}");
    let error = controller.cli(&["token", "create", "--label", "nokey"]).failure();
    assert!(error.contains("write it as key=value"), "{error}");
    let error = controller.cli(&["token", "create", "--ttl", "4000d"]).failure();
    assert!(error.contains("at most 365 days"), "{error}");

    let broken = dir.path().join("broken.toml");
    std::fs::write(&broken, "server = \"http://plain\"\n").unwrap();
    let error = comfyfleet_e2e::cli(&broken, &["machines"]).failure();
    assert!(error.contains("broken.toml"), "{error}");

    // The daemons refuse bad flags before doing anything.
    let output = std::process::Command::new(&comfyfleet_e2e::binaries().agent)
        .args(["--data-dir", dir.path().join("a").to_str().unwrap(), "--join-token", "nope"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("not a comfyfleet join token"));
    let output = std::process::Command::new(&comfyfleet_e2e::binaries().agent)
        .args(["--data-dir", dir.path().join("b").to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("not enrolled yet"));
    let output = std::process::Command::new(&comfyfleet_e2e::binaries().controller)
        .args(["--data-dir", dir.path().join("c").to_str().unwrap(), "--listen", "nowhere"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("is not HOST:PORT"), "{output:?}");
}
