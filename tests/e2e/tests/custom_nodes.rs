//! Custom nodes as real ComfyUI treats them, with real agents: ComfyUI runs on
//! without a node that fails to import, or that `--whitelist-custom-nodes` left out,
//! so the agent's health check holds every node against the node classes ComfyUI's
//! `/object_info` lists (a pack without classes, against its import list), fails the
//! switch (or, for `required = false`, warns) and takes the reason from ComfyUI's
//! log, plain (0.3.64) or colour-coded (0.33); a node's `install.py` runs only when
//! its spec entry says so; ComfyUI-Manager is off, read-only or on as the spec says,
//! and what it installs shows as drift.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test helpers fail loudly by design

use std::time::Duration;

use comfyfleet_e2e::git::GitRepo;
use comfyfleet_e2e::provision::{
    Fleet, comfyui_get, comfyui_port, current_environment, current_target, step,
};
use comfyfleet_e2e::standin::{TestNode, WheelBuilder, find_uv};
use comfyfleet_e2e::wait_until;

/// A node whose import fails the way a missing dependency does.
const BROKEN: &str = "# A node whose requirements were never installed.\nimport cv2  # noqa: F401\n\nNODE_CLASS_MAPPINGS = {}\n";

/// One node class named `class`: ComfyUI's `/object_info` must list one from every
/// custom node that does not say `provides_nodes = false`.
fn node_class(class: &str) -> String {
    format!(
        "class {class}:\n    RETURN_TYPES = ()\n\n    @classmethod\n    def INPUT_TYPES(cls):\n        \
         return {{\"required\": {{}}}}\n\nNODE_CLASS_MAPPINGS = {{\"{class}\": {class}}}\n"
    )
}

/// A node whose install.py records that it ran, and in which interpreter.
const SETUP: [(&str, &str); 2] = [
    (
        "__init__.py",
        "class Setup:\n    RETURN_TYPES = ()\n\n    @classmethod\n    def INPUT_TYPES(cls):\n        \
                     return {\"required\": {}}\n\nNODE_CLASS_MAPPINGS = {\"Setup\": Setup}\n",
    ),
    (
        "install.py",
        "import os, sys\nprint('setting up ComfyUI-Setup')\n\
         open('installed.txt', 'w').write(sys.executable + '\\n' + os.environ.get('VIRTUAL_ENV', '') + '\\n')\n",
    ),
];

fn node(fleet: &Fleet, name: &str, files: &[(&str, &str)]) -> GitRepo {
    GitRepo::create(&fleet.dir.path().join("nodes").join(name), files)
}

#[test]
fn a_node_that_fails_to_import_fails_the_switch_unless_it_is_optional() {
    let fleet = Fleet::start();
    let agent = fleet.agent("rtx4090", "rtx4090-x1-570");
    let id = fleet.machine_id("rtx4090");
    let setup = node(&fleet, "ComfyUI-Setup", &SETUP);
    let extras = node(
        &fleet,
        "ComfyUI-Extras",
        &[("__init__.py", &node_class("Extras")), ("install.py", "raise SystemExit('must not run')\n")],
    );
    let broken = node(&fleet, "ComfyUI-Broken", &[("__init__.py", BROKEN)]);
    let mut setup_node = TestNode::new(&setup.url(), "main");
    setup_node.extra = "install_script = true\n".to_owned();
    let base_nodes = vec![setup_node, TestNode::new(&extras.url(), "main")];

    // Revision 1: install.py runs where the spec says so, nowhere else.
    fleet.apply(&fleet.spec(|options| {
        options.cuda = vec!["cu128".to_owned()];
        options.custom_nodes.extend(base_nodes.clone());
    }));
    fleet.cli(&["rollout", "start", "render-prod", "--wait", "--timeout", "3m"]).success();
    let machine = fleet.show(&id);
    let scripts = step(&machine, "install-scripts");
    let detail = scripts["detail"].as_str().unwrap();
    assert_eq!(scripts["state"], "done", "{scripts}");
    assert!(detail.contains("ComfyUI-Setup's install.py ran"), "{detail}");
    assert!(
        detail.contains(
            "ComfyUI-Extras: install.py not run (set install_script = true in its [[custom_node]] to run it)"
        ),
        "{detail}"
    );
    assert!(
        scripts["output_tail"].as_str().unwrap_or_default().contains("setting up ComfyUI-Setup"),
        "{scripts}"
    );
    let first = current_target(&agent).unwrap();
    let nodes = agent.data_dir.join(&first).join("ComfyUI/custom_nodes");
    let installed = std::fs::read_to_string(nodes.join("ComfyUI-Setup/installed.txt")).unwrap();
    let venv = agent.data_dir.join(&first).join("venv");
    assert!(
        installed.starts_with(venv.join("bin/python").to_str().unwrap()),
        "the venv's Python ran it: {installed}"
    );
    assert!(installed.contains(venv.to_str().unwrap()), "VIRTUAL_ENV is the new venv: {installed}");
    assert!(!nodes.join("ComfyUI-Extras/installed.txt").exists());

    // Revision 2 adds a node that does not import: ComfyUI runs without it, the agent
    // does not accept that, and the machine is back on revision 1.
    fleet.apply(&fleet.spec(|options| {
        options.cuda = vec!["cu128".to_owned()];
        options.custom_nodes.extend(base_nodes.clone());
        options.custom_nodes.push(TestNode::new(&broken.url(), "main"));
    }));
    fleet.cli(&["rollout", "start", "render-prod", "--wait", "--timeout", "3m"]).failure();
    let machine = wait_until(Duration::from_secs(60), "the machine to be back on revision 1", || {
        let machine = fleet.show(&id);
        (machine["assignment"]["reason"] == "rollback" && machine["report"]["phase"] == "active")
            .then_some(machine)
    });
    let rollout = fleet.cli(&["rollout", "status", "render-prod", "-o", "json"]).success();
    let status: serde_json::Value = serde_json::from_str(&rollout).unwrap();
    let why = status["machines"][0]["detail"].as_str().unwrap();
    assert!(why.starts_with("health: custom node ComfyUI-Broken failed to import"), "{why}");
    assert!(
        why.contains("import cv2") && why.contains("ModuleNotFoundError: No module named 'cv2'"),
        "{why}"
    );
    assert!(why.contains("switched back to render-prod@1"), "{why}");
    assert_eq!(current_target(&agent).unwrap(), first, "current is back on revision 1");
    assert_eq!(machine["assignment"]["revision_number"], 1);

    // Revision 3: the same node, `required = false`: the switch goes through, and the
    // report carries the warning.
    let mut optional = TestNode::new(&broken.url(), "main");
    optional.extra = "required = false\n".to_owned();
    fleet.apply(&fleet.spec(|options| {
        options.cuda = vec!["cu128".to_owned()];
        options.custom_nodes.extend(base_nodes.clone());
        options.custom_nodes.push(optional.clone());
    }));
    fleet.cli(&["rollout", "start", "render-prod", "--wait", "--timeout", "3m"]).success();
    let machine = fleet.show(&id);
    assert_eq!(
        (machine["report"]["phase"].as_str(), machine["assignment"]["revision_number"].as_u64()),
        (Some("active"), Some(3))
    );
    let health = step(&machine, "health")["detail"].as_str().unwrap();
    assert!(
        health.contains(
            "warning: custom node ComfyUI-Broken failed to import (required = false, ComfyUI runs without it)"
        ),
        "{health}"
    );
    let shown = fleet.cli(&["machines", "show", &id]).success();
    assert!(shown.contains("ComfyUI-Broken failed to import"), "{shown}");
    assert_ne!(current_target(&agent).unwrap(), first);
}

/// A node pack that defines no node classes: a web extension.
const WEB_EXTENSION: &str =
    "# Adds to the frontend only.\nWEB_DIRECTORY = \"./js\"\nNODE_CLASS_MAPPINGS = {}\n";

/// Rolls `spec` out and waits for the machine to be back on the revision before it;
/// returns why the switch failed.
fn failed_switch(fleet: &Fleet, id: &str, spec: &str) -> String {
    fleet.apply(spec);
    fleet.cli(&["rollout", "start", "render-prod", "--wait", "--timeout", "3m"]).failure();
    wait_until(Duration::from_secs(60), "the machine to be back on the previous revision", || {
        let machine = fleet.show(id);
        (machine["assignment"]["reason"] == "rollback" && machine["report"]["phase"] == "active")
            .then_some(())
    });
    let rollout = fleet.cli(&["rollout", "status", "render-prod", "-o", "json"]).success();
    let status: serde_json::Value = serde_json::from_str(&rollout).unwrap();
    status["machines"][0]["detail"].as_str().unwrap().to_owned()
}

#[test]
fn on_comfyui_0_33_nodes_are_held_against_object_info_and_its_colour_coded_log_says_why() {
    let fleet = Fleet::start();
    let agent = fleet.agent("rtx4090", "rtx4090-x1-570");
    let id = fleet.machine_id("rtx4090");
    let comfyui_0_33 = fleet.world.repos.comfyui.commit_version_0_33();
    let web = node(&fleet, "ComfyUI-Web", &[("__init__.py", WEB_EXTENSION)]);
    let broken = node(&fleet, "ComfyUI-Broken", &[("__init__.py", BROKEN)]);
    let left_out = node(&fleet, "ComfyUI-Left-Out", &[("__init__.py", &node_class("LeftOut"))]);
    let mut web_without_classes = TestNode::new(&web.url(), "main");
    web_without_classes.extra = "provides_nodes = false\n".to_owned();
    let spec = |nodes: &[&TestNode], args: &str| {
        fleet
            .spec(|options| {
                options.comfyui_ref = comfyui_0_33.clone();
                options.cuda = vec!["cu128".to_owned()];
                options.custom_nodes.extend(nodes.iter().map(|node| (*node).clone()));
            })
            .replacen("args = []", &format!("args = [{args}]"), 1)
    };

    // Revision 1: a pack without node classes passes on its import, under 0.33's log.
    fleet.apply(&spec(&[&web_without_classes], ""));
    fleet.cli(&["rollout", "start", "render-prod", "--wait", "--timeout", "3m"]).success();
    let machine = fleet.show(&id);
    let health = step(&machine, "health")["detail"].as_str().unwrap();
    assert!(!health.contains("warning"), "{health}");
    let log = std::fs::read_to_string(agent.data_dir.join("logs/comfyui.log")).unwrap();
    assert!(log.contains("\u{1b}[32m[INFO]\u{1b}[0m    0.0 seconds: "), "ComfyUI 0.33's log format: {log}");
    assert!(log.contains("custom_nodes/ComfyUI-Web"), "{log}");
    let first = current_target(&agent).unwrap();

    // Revision 2: a node that does not import; the reason is read through the colours.
    let why =
        failed_switch(&fleet, &id, &spec(&[&web_without_classes, &TestNode::new(&broken.url(), "main")], ""));
    assert!(why.starts_with("health: custom node ComfyUI-Broken failed to import: "), "{why}");
    assert!(
        why.contains("import cv2") && why.contains("ModuleNotFoundError: No module named 'cv2'"),
        "{why}"
    );
    assert!(why.contains("switched back to render-prod@1"), "{why}");
    assert_eq!(current_target(&agent).unwrap(), first);

    // Revision 3: ComfyUI leaves out a node the whitelist does not name, logging no
    // failure; and a pack without classes that the spec does not mark so.
    let why = failed_switch(
        &fleet,
        &id,
        &spec(
            &[&TestNode::new(&web.url(), "main"), &TestNode::new(&left_out.url(), "main")],
            r#""--disable-all-custom-nodes", "--whitelist-custom-nodes", "ComfyUI-KJNodes", "ComfyUI-VideoHelperSuite", "ComfyUI-Web""#,
        ),
    );
    assert!(
        why.contains(
            "custom node ComfyUI-Left-Out was not loaded (it contributed no node classes to /object_info): ComfyUI \
             logged \"Skipping ComfyUI-Left-Out due to disable_all_custom_nodes and whitelist_custom_nodes\""
        ),
        "{why}"
    );
    assert!(
        why.contains("custom node ComfyUI-Web contributed no node classes to /object_info")
            && why.contains("provides_nodes = false"),
        "{why}"
    );
    assert_eq!(current_target(&agent).unwrap(), first);
}

/// A stand-in ComfyUI-Manager: it reads the settings the real one reads and says
/// what it will allow.
const MANAGER: &str = "import configparser, logging, os\nimport folder_paths\n\n\
config = configparser.ConfigParser()\n\
config.read(os.path.join(folder_paths.get_user_directory(), 'default', 'ComfyUI-Manager', 'config.ini'))\n\
level = config.get('default', 'security_level', fallback='normal')\n\
logging.info(f'ComfyUI-Manager: security_level = {level}' + (' (installs refused)' if level == 'strong' else ''))\n\
NODE_CLASS_MAPPINGS = {}\n";

#[test]
fn comfyui_manager_is_off_read_only_or_on_and_what_it_installs_is_drift() {
    let fleet = Fleet::start();
    let agent = fleet.agent("rtx4090", "rtx4090-x1-570");
    let id = fleet.machine_id("rtx4090");
    let manager = node(&fleet, "ComfyUI-Manager", &[("__init__.py", MANAGER)]);
    let spec = |mode: &str| {
        fleet.spec(|options| {
            options.cuda = vec!["cu128".to_owned()];
            options.custom_nodes.push(TestNode::new(&manager.url(), "main"));
            options.run_extra = format!("manager = \"{mode}\"\n");
        })
    };

    // Off is the default: the node itself is refused, with what to write instead.
    let path = fleet.dir.path().join("spec.toml");
    std::fs::write(&path, spec("off")).unwrap();
    let refused = fleet.cli(&["apply", "-f", path.to_str().unwrap()]).failure();
    assert!(refused.contains("is ComfyUI-Manager, but run.manager is \"off\""), "{refused}");

    // Read-only: it runs, and the settings it reads refuse every install.
    fleet.apply(&spec("read-only"));
    fleet.cli(&["rollout", "start", "render-prod", "--wait", "--timeout", "3m"]).success();
    let config = agent.data_dir.join("shared/user/default/ComfyUI-Manager/config.ini");
    assert!(std::fs::read_to_string(&config).unwrap().contains("security_level = strong"));
    let log = std::fs::read_to_string(agent.data_dir.join("logs/comfyui.log")).unwrap();
    assert!(log.contains("ComfyUI-Manager: security_level = strong (installs refused)"), "{log}");

    // On: installs allowed, and what it installs (a package, a node) is drift.
    fleet.apply(&spec("on"));
    fleet.cli(&["rollout", "start", "render-prod", "--wait", "--timeout", "3m"]).success();
    assert!(std::fs::read_to_string(&config).unwrap().contains("security_level = normal"));
    let machine = fleet.show(&id);
    assert!(current_environment(&machine)["drift"].is_null(), "nothing drifted yet: {machine}");
    let env = agent.data_dir.join(current_target(&agent).unwrap());
    let extra = WheelBuilder::new("comfyui-clicked-install", "1.0.0")
        .file("comfyui_clicked_install/__init__.py", "")
        .write_to(&fleet.dir.path().join("clicked"));
    let installed = std::process::Command::new(find_uv())
        .args(["pip", "install", "--quiet", "--no-deps", "--python"])
        .arg(env.join("venv/bin/python"))
        .arg(&extra.path)
        .env("UV_CACHE_DIR", fleet.dir.path().join("by-hand-cache"))
        .status()
        .unwrap();
    assert!(installed.success());
    std::fs::create_dir_all(env.join("ComfyUI/custom_nodes/ComfyUI-Clicked")).unwrap();
    let machine = fleet.wait_for(&id, "the manager's installs to show as drift", |machine| {
        current_environment(machine)["drift"].as_array().is_some_and(|drift| drift.len() >= 2)
    });
    let drift = current_environment(&machine)["drift"].clone();
    assert!(
        drift.as_array().unwrap().iter().any(|d| d == "package comfyui-clicked-install 1.0.0 was added"),
        "{drift}"
    );
    assert!(
        drift
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d == "custom node ComfyUI-Clicked was added (the spec does not have it)"),
        "{drift}"
    );
    assert!(comfyui_get(comfyui_port(&agent), "/system_stats").is_some());
}
