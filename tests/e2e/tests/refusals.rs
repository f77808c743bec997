//! Everything that must be refused is refused with an error that says what to do,
//! and nothing of it is stored.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::print_stderr)] // test helpers fail loudly by design

use std::time::Duration;

use comfyfleet_e2e::grpc::{AgentFiles, RawSession, channel, controller_ca, hello, inventory};

use comfyfleet_e2e::{Agent, Controller, cli, profile, test_dir, wait_until};
use comfyfleet_proto::v1 as pb;
use serde_json::Value;

const REFUSED: i32 = 3;

fn token_uses(controller: &Controller) -> Vec<u64> {
    let tokens: Vec<Value> =
        serde_json::from_str(&controller.cli(&["token", "list", "-o", "json"]).success()).unwrap();
    tokens.iter().map(|t| t["uses"].as_u64().unwrap()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_api_refuses_a_client_without_a_certificate() {
    let dir = test_dir();
    let controller = Controller::start(&dir.path().join("controller"));
    let ca = controller_ca(&controller.data_dir);
    let anonymous = channel(&controller.url, &ca, None).await;

    // Refused as the stream opens, before any message is read.
    let status = RawSession::open(anonymous.clone()).await.err().unwrap();
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");
    assert!(status.message().contains("client certificate"), "{}", status.message());

    // Enrollment is the one call without a certificate, and it wants a real token.
    let mut client = pb::agent_service_client::AgentServiceClient::new(anonymous);
    let status = client
        .enroll(pb::EnrollRequest {
            join_token: "let-me-in".into(),
            hostname: "intruder".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(status.message().contains("comfyfleet token create"), "{}", status.message());
    assert!(controller.machines_with(&["--all"]).is_empty());
}

#[test]
fn an_expired_token_is_refused() {
    let dir = test_dir();
    let controller = Controller::start(&dir.path().join("controller"));
    let token = controller.create_token(&["--ttl", "1s"]);
    std::thread::sleep(Duration::from_millis(1500));
    let mut agent =
        Agent::start(dir.path(), "late", &profile("t4-x1-535"), &controller.url, Some(&token), &[]);
    let (status, log) = agent.wait_exit(Duration::from_secs(20));
    assert_eq!(status.code(), Some(REFUSED), "{log}");
    assert!(log.contains("expired at"), "{log}");
    assert!(log.contains("comfyfleet token create"), "{log}");
    assert!(controller.machines_with(&["--all"]).is_empty());
    assert_eq!(token_uses(&controller), [0]);
    assert!(!agent.data_dir.join("identity/machine.toml").exists());
    let listed = controller.cli(&["token", "list"]).success();
    assert!(listed.contains("expired"), "{listed}");
}

#[test]
fn a_token_past_its_uses_is_refused() {
    let dir = test_dir();
    let controller = Controller::start(&dir.path().join("controller"));
    let token = controller.create_token(&["--uses", "1"]);
    let _first = Agent::start(dir.path(), "first", &profile("t4-x1-535"), &controller.url, Some(&token), &[]);
    wait_until(Duration::from_secs(20), "the first machine", || controller.machine("first"));
    let mut second =
        Agent::start(dir.path(), "second", &profile("t4-x1-535"), &controller.url, Some(&token), &[]);
    let (status, log) = second.wait_exit(Duration::from_secs(20));
    assert_eq!(status.code(), Some(REFUSED), "{log}");
    assert!(log.contains("has been used 1 times, all it allowed"), "{log}");
    let machines = controller.machines_with(&["--all"]);
    assert_eq!(machines.len(), 1);
    assert_eq!(machines[0]["hostname"], "first");
    assert_eq!(token_uses(&controller), [1]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_whose_ca_hash_does_not_match_is_refused_before_it_is_sent() {
    let dir = test_dir();
    let ours = Controller::start(&dir.path().join("ours"));
    let theirs = Controller::start(&dir.path().join("theirs"));
    let foreign_token = theirs.create_token(&[]);

    // The agent checks the pin during the handshake and never sends the token.
    let mut agent =
        Agent::start(dir.path(), "confused", &profile("t4-x1-535"), &ours.url, Some(&foreign_token), &[]);
    let (status, log) = agent.wait_exit(Duration::from_secs(20));
    assert_eq!(status.code(), Some(REFUSED), "{log}");
    assert!(log.contains("but the join token pins"), "{log}");
    assert!(log.contains("Nothing was sent"), "{log}");

    // A tampered hash on a real token is caught the same way.
    let real = ours.create_token(&[]);
    let (head, _) = real.rsplit_once('.').unwrap();
    let tampered = format!("{head}.{}", "0".repeat(64));
    let mut agent =
        Agent::start(dir.path(), "tampered", &profile("t4-x1-535"), &ours.url, Some(&tampered), &[]);
    let (status, log) = agent.wait_exit(Duration::from_secs(20));
    assert_eq!(status.code(), Some(REFUSED), "{log}");
    assert!(log.contains("pins 0000"), "{log}");

    // A client that skips the check meets the controller's own check.
    let anonymous = channel(&ours.url, &controller_ca(&ours.data_dir), None).await;
    let status = pb::agent_service_client::AgentServiceClient::new(anonymous)
        .enroll(pb::EnrollRequest {
            join_token: foreign_token,
            hostname: "sneaky".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::FailedPrecondition);
    assert!(status.message().contains("made by another controller"), "{}", status.message());

    assert!(ours.machines_with(&["--all"]).is_empty());
    assert!(theirs.machines_with(&["--all"]).is_empty());
    assert_eq!(token_uses(&theirs), [0]);
    assert_eq!(token_uses(&ours), [0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_certificate_cannot_speak_for_another_machine() {
    let dir = test_dir();
    let controller = Controller::start(&dir.path().join("controller"));
    let token = controller.create_token(&[]);
    let mut mallory =
        Agent::start(dir.path(), "mallory", &profile("t4-x1-535"), &controller.url, Some(&token), &[]);
    let _victim =
        Agent::start(dir.path(), "victim", &profile("h100-x8-580"), &controller.url, Some(&token), &[]);
    wait_until(Duration::from_secs(20), "both machines", || (controller.machines().len() == 2).then_some(()));
    let victim_before = wait_until(Duration::from_secs(20), "the victim's inventory", || {
        controller.machine("victim").filter(|m| m["gpus"].as_array().unwrap().len() == 8)
    });
    mallory.process.kill();
    let files = AgentFiles::read(&mallory.data_dir);

    let stolen = channel(&controller.url, &files.ca_pem, Some(&files)).await;
    let mut session = RawSession::open(stolen).await.unwrap();
    let victim_id = victim_before["id"].as_str().unwrap();
    session.send(hello(victim_id, Some(inventory("victim", 0)))).await;
    let status = session.next().await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
    assert!(
        status.message().contains(&format!("certificate is machine {}", files.machine_id))
            && status.message().contains(victim_id),
        "{}",
        status.message()
    );

    let victim_after = controller.machine("victim").unwrap();
    assert_eq!(victim_after["gpus"], victim_before["gpus"], "nothing stored for the victim");
    assert_eq!(victim_after["online"], true);
}

#[test]
fn the_cli_needs_a_valid_credential_for_its_role() {
    let dir = test_dir();
    let controller = Controller::start(&dir.path().join("controller"));
    let other = Controller::start(&dir.path().join("other"));

    // No config at all.
    let output = std::process::Command::new(&comfyfleet_e2e::binaries().cli)
        .args(["machines"])
        .env_remove("COMFYFLEET_CONFIG")
        .env("HOME", dir.path())
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("pass --config FILE or set COMFYFLEET_CONFIG"));

    // A wrong secret.
    let admin = std::fs::read_to_string(controller.admin_config()).unwrap();
    let credential = admin.lines().find(|l| l.starts_with("credential")).unwrap();
    let secret = credential.trim_end_matches('"').rsplit('.').next().unwrap();
    let forged_path = dir.path().join("forged.toml");
    std::fs::write(&forged_path, admin.replace(secret, &"f".repeat(32))).unwrap();
    let error = cli(&forged_path, &["machines"]).failure();
    assert!(error.contains("is not valid on this controller"), "{error}");

    // Another controller's credential, pointed at this controller.
    let other_admin = std::fs::read_to_string(other.admin_config()).unwrap();
    let crossed_path = dir.path().join("crossed.toml");
    std::fs::write(&crossed_path, other_admin.replace(&other.url, &controller.url)).unwrap();
    let error = cli(&crossed_path, &["machines"]).failure();
    assert!(error.contains("cannot reach the controller") && error.contains("certificate"), "{error}");

    // A viewer may look but not change.
    let viewer = controller.cli(&["credentials", "create", "dashboards", "--role", "viewer"]).success();
    let viewer_path = dir.path().join("viewer.toml");
    std::fs::write(&viewer_path, viewer).unwrap();
    assert!(cli(&viewer_path, &["machines"]).success().contains("0 machines"));
    let error = cli(&viewer_path, &["token", "create"]).failure();
    assert!(error.contains("has role viewer; this needs operator"), "{error}");
    assert_eq!(
        serde_json::from_str::<Vec<Value>>(&controller.cli(&["token", "list", "-o", "json"]).success())
            .unwrap()
            .len(),
        0
    );

    // A revoked credential stops working at once.
    let creds: Vec<Value> =
        serde_json::from_str(&controller.cli(&["credentials", "list", "-o", "json"]).success()).unwrap();
    let viewer_id =
        creds.iter().find(|c| c["name"] == "dashboards").unwrap()["id"].as_str().unwrap().to_owned();
    controller.cli(&["credentials", "revoke", &viewer_id]).success();
    let error = cli(&viewer_path, &["machines"]).failure();
    assert!(error.contains("is not valid on this controller"), "{error}");

    // The last admin cannot lock everyone out.
    let admin_id = creds.iter().find(|c| c["role"] == "admin").unwrap()["id"].as_str().unwrap().to_owned();
    let error = controller.cli(&["credentials", "revoke", &admin_id]).failure();
    assert!(error.contains("last admin credential"), "{error}");
}

#[test]
fn a_revoked_machine_is_cut_off_and_cannot_reconnect() {
    let dir = test_dir();
    let controller = Controller::start(&dir.path().join("controller"));
    let token = controller.create_token(&[]);
    let mut agent = Agent::start(
        dir.path(),
        "stolen-box",
        &profile("rtx4090-x1-570"),
        &controller.url,
        Some(&token),
        &[],
    );
    let machine = wait_until(Duration::from_secs(20), "online", || {
        controller.machine("stolen-box").filter(|m| m["online"] == true)
    });
    let id = machine["id"].as_str().unwrap();

    let said = controller.cli(&["machines", "revoke", id]).success();
    assert!(said.contains("revoked"), "{said}");
    let (status, log) = agent.wait_exit(Duration::from_secs(15));
    assert_eq!(status.code(), Some(REFUSED), "{log}");
    assert!(log.contains("was revoked by an operator"), "{log}");

    agent.restart();
    let (status, log) = agent.wait_exit(Duration::from_secs(15));
    assert_eq!(status.code(), Some(REFUSED), "{log}");
    assert!(log.contains("was revoked at") && log.contains("enroll again"), "{log}");

    assert!(controller.machines().is_empty(), "revoked machines are hidden by default");
    let all = controller.machines_with(&["--all"]);
    assert_eq!(all.len(), 1);
    assert_eq!(all[0]["online"], false);
    assert!(all[0]["revoked_at"].is_string());
    let table = controller.cli(&["machines", "--all"]).success();
    assert!(table.contains("revoked"), "{table}");
    let audit = controller.cli(&["audit"]).success();
    assert!(audit.contains("machine.revoke") && audit.contains(id), "{audit}");
    let error = controller.cli(&["machines", "revoke", id]).failure();
    assert!(error.contains("already revoked"), "{error}");
}

/// A spec with `count` SageAttention wheels, every one for the same SMs: each
/// overlaps every other.
fn spec_with_overlapping_wheels(count: usize) -> String {
    let mut text = String::from(
        "name = \"many-wheels\"\npython = \"3.12\"\n\n[comfyui]\ngit = \"https://github.com/comfyanonymous/ComfyUI.git\"\n\
         ref = \"v0.3.64\"\n\n[torch]\nversion = \"2.8.0\"\ncuda = [\"cu128\"]\n\n[[optimization]]\nname = \"sageattention\"\n\
         smoke = { call = \"sageattention.sageattn\" }\n",
    );
    for n in 0..count {
        text.push_str(&format!(
            "  [[optimization.wheel]]\n  compute = \">=8.0,<9.0\"\n  python = \"cp312\"\n  cuda = \"cu128\"\n  torch = \"2.8\"\n  \
             url = \"https://wheels.example/{n}/sageattention-2.2.0-cp312-cp312-linux_x86_64.whl\"\n  sha256 = \"{n:064x}\"\n"
        ));
    }
    text
}

/// Two applies of specs built to be expensive (400 wheels each overlapping every
/// other, and 2,000 wheels), sent straight to the controller as a hostile client
/// would, used to take its cores for seconds each and answer with a 20 MB message
/// that no gRPC client could read ("metadata size exceeds hard limit"). Both are now
/// refused with a short message that names the first problems and counts the rest,
/// or the bound, each refusal is audited, and the controller answers others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn specs_built_to_be_expensive_are_refused_quickly_with_a_short_message() {
    let dir = test_dir();
    let controller = Controller::start(&dir.path().join("controller"));
    let admin: toml::Value =
        toml::from_str(&std::fs::read_to_string(controller.admin_config()).unwrap()).unwrap();
    let channel = channel(&controller.url, admin["ca_certificate"].as_str().unwrap(), None).await;
    let bearer: tonic::metadata::MetadataValue<_> =
        format!("Bearer {}", admin["credential"].as_str().unwrap()).parse().unwrap();
    let applies: Vec<_> = [400, 2000]
        .into_iter()
        .map(|wheels| {
            let mut fleet = pb::fleet_service_client::FleetServiceClient::new(channel.clone());
            let mut request = tonic::Request::new(pb::ApplyEnvironmentRequest {
                spec: spec_with_overlapping_wheels(wheels),
                format: pb::SpecFormat::Toml as i32,
                file_name: format!("{wheels}-wheels.toml"),
                classes: Vec::new(),
            });
            request.metadata_mut().insert("authorization", bearer.clone());
            tokio::spawn(async move { fleet.apply_environment(request).await.unwrap_err() })
        })
        .collect();
    let asked = std::time::Instant::now();
    let whoami = tokio::task::spawn_blocking({
        let config = controller.admin_config();
        move || cli(&config, &["whoami"]).success()
    });
    assert!(whoami.await.unwrap().contains("admin"));
    eprintln!("whoami answered in {:?} while the two applies ran", asked.elapsed());
    let mut refusals = Vec::new();
    for apply in applies {
        let status = apply.await.unwrap();
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
        refusals.push(status.message().to_owned());
    }

    let overlapping = &refusals[0];
    assert!(overlapping.contains("wheel[1].compute: >=8.0,<9.0 overlaps wheel[0]"), "{overlapping}");
    assert!(overlapping.contains("more problems (fix these first)"), "{overlapping}");
    assert!(overlapping.len() < 8 * 1024, "{} bytes", overlapping.len());
    let oversized = &refusals[1];
    assert!(
        oversized.contains("the spec has 2000 kernel wheels; one spec may have at most 1024"),
        "{oversized}"
    );
    assert!(!oversized.contains("overlaps"), "nothing past the bound is checked: {oversized}");

    let audit = controller.cli(&["audit"]).success();
    assert_eq!(audit.matches("environment.apply.refused").count(), 2, "{audit}");
}
