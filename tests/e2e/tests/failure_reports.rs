//! Issue 24, point 1: a failure whose report is long. When uv failed the requirements
//! step of a lock with many packages, the error carried its whole command line (one
//! `--find-links` per locked file, 4.6 KB for 37 packages); the controller ended the
//! session over the 4,096-byte field, the agent sent the same report again at once,
//! the failure was never stored and the rollout hung until its progress deadline.
//! Real controller, real agent, real uv behind a stand-in that fails that one step.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test helpers fail loudly by design

use comfyfleet_e2e::git::GitRepo;
use comfyfleet_e2e::provision::{Fleet, step};
use comfyfleet_e2e::standin::index::IndexLayout;
use comfyfleet_e2e::standin::packages::plain_module;
use comfyfleet_e2e::standin::{TestNode, find_uv};

/// Packages the custom node requires: with the base lock's, well over 4 KB of
/// `--find-links` arguments.
const PACKAGES: usize = 40;

#[test]
fn a_failure_with_a_long_command_line_is_stored_and_counted_by_the_rollout() {
    let fleet = Fleet::start();
    let index = fleet.world.server.root().to_owned();
    let names: Vec<String> = (0..PACKAGES).map(|n| format!("standin-many-{n:02}")).collect();
    IndexLayout::publish(&index, &names.iter().map(|name| plain_module(name, "1.0.0")).collect::<Vec<_>>());
    let requirements: String = names.iter().map(|name| format!("{name}>=1.0\n")).collect();
    let node = GitRepo::create(
        &fleet.dir.path().join("ComfyUI-Many"),
        &[("__init__.py", "NODE_CLASS_MAPPINGS = {}\n"), ("requirements.txt", &requirements)],
    );

    // uv as the agent finds it on PATH: the real one, except that the requirements
    // step's install fails, saying why on its last line, as uv does.
    let shims = fleet.dir.path().join("failing-uv");
    std::fs::create_dir_all(&shims).unwrap();
    let calls = fleet.dir.path().join("failing-uv.log");
    let shim = shims.join("uv");
    std::fs::write(
        &shim,
        format!(
            "#!/bin/sh\ncase \"$*\" in\n  *requirements.lock.txt*)\n    echo \"$*\" >> '{log}'\n    \
             echo 'error: Failed to install standin-many-07: No space left on device (os error 28)' >&2\n    \
             exit 2;;\nesac\nexec '{uv}' \"$@\"\n",
            log = calls.display(),
            uv = find_uv().display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&shim, std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = format!("{}:{}", shims.display(), std::env::var("PATH").unwrap_or_default());
    let _agent = fleet.agent_with("many", "rtx4090-x1-570", &[], Some(&path));
    let id = fleet.machine_id("many");

    fleet.apply(&fleet.spec(|options| options.custom_nodes.push(TestNode::new(&node.url(), "main"))));
    let refused = fleet.cli(&["rollout", "start", "render-prod", "--wait", "--timeout", "2m"]).failure();
    assert!(refused.contains("failed"), "{refused}");
    let argv = std::fs::read_to_string(&calls).unwrap();
    assert!(argv.len() > 4096, "the failing command line is long ({} bytes): {argv}", argv.len());

    // The rollout counted the failure, with what failed and why.
    let text = fleet.cli(&["rollout", "status", "render-prod", "--machines", "-o", "json"]).success();
    let status: serde_json::Value = serde_json::from_str(&text).unwrap();
    let row = &status["machines"][0];
    assert_eq!(row["status"], "failed", "{status}");
    let detail = row["detail"].as_str().unwrap();
    assert!(detail.contains("pip install") && detail.contains(" more arguments"), "{detail}");
    assert!(detail.ends_with("No space left on device (os error 28)"), "{detail}");
    assert!(detail.len() < 1024, "the command line is summarised: {} bytes", detail.len());

    // The machine's report holds it too.
    let machine = fleet.show(&id);
    assert_eq!(machine["report"]["phase"], "failed", "{}", machine["report"]);
    assert!(machine["report"]["error"].as_str().unwrap().contains("No space left on device"));
    let requirements = step(&machine, "requirements");
    assert_eq!(requirements["state"], "failed");
    assert!(requirements["detail"].as_str().unwrap().contains(" more arguments"), "{requirements}");

    // One session throughout: nothing was refused, nothing reconnected.
    let log = fleet.controller.process.log();
    assert!(!log.contains("session ended by the controller"), "{log}");
    assert_eq!(log.matches("agent connected").count(), 1, "{log}");
}
