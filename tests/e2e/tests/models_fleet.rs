//! Models on the machines, with real agents and the real controller: three agents on
//! one revision with four models (two of them the same bytes under two names) from
//! a stand-in Hugging Face behind a bearer token. Each agent fetches through the
//! controller's package cache, which fetched each model from upstream once (the
//! token never reaching the CDN host); every agent ends with identical bytes,
//! hard-linked from its store where ComfyUI's folders look, and an operator's own
//! file left as it was.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test helpers fail loudly by design

use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::process::{Command, Stdio};

use comfyfleet_e2e::binaries;
use comfyfleet_e2e::provision::{Fleet, comfyui_get, comfyui_port};
use comfyfleet_e2e::standin::hub::{HubFile, ModelHub};
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

const TOKEN: &str = "hf_fleet_token_42";
const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

fn bytes(seed: u8, size: usize) -> Vec<u8> {
    (0..size).map(|at| (at as u8).wrapping_mul(seed).wrapping_add(seed)).collect()
}

#[test]
fn three_agents_get_identical_models_fetched_from_upstream_once() {
    let hub = ModelHub::start();
    hub.require_token(TOKEN);
    // (folder, name, path in the repository, bytes)
    let shared = bytes(7, 3 << 20);
    let models = [
        ("diffusion_models", "flux1-dev.safetensors", "flux1-dev.safetensors", bytes(3, 5 << 20)),
        ("vae", "flux/ae.safetensors", "ae.safetensors", bytes(5, 2 << 20)),
        ("loras", "style.safetensors", "style.safetensors", shared.clone()),
        ("loras", "style-copy.safetensors", "style-copy.safetensors", shared.clone()),
    ];
    let mut entries = String::new();
    for (folder, name, path, content) in &models {
        hub.add("Comfy-Org/flux1-dev", COMMIT, path, HubFile::Lfs(content.clone().into()));
        entries.push_str(&format!(
            "\n[[model]]\nfolder = \"{folder}\"\nname = \"{name}\"\nurl = \"{}/Comfy-Org/flux1-dev/resolve/{COMMIT}/{path}\"\n\
             sha256 = \"{}\"\nsize = {}\ncredential = \"hf\"\n",
            hub.endpoint(),
            hex::encode(Sha256::digest(content)),
            content.len()
        ));
    }

    let fleet = Fleet::start();
    let mut child = Command::new(&binaries().cli)
        .args(["--config", fleet.controller.admin_config().to_str().unwrap()])
        .args(["secrets", "set", "hf", "--bearer", "--origin", &hub.endpoint()])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(format!("{TOKEN}\n").as_bytes()).unwrap();
    assert!(child.wait().unwrap().success());
    let agents: Vec<_> = (1..=3).map(|i| fleet.agent(&format!("ws-{i}"), "rtx4090-x1-570")).collect();
    // An operator's own file, and one in a folder a model also uses.
    let own = agents[0].data_dir.join("shared/models/loras/mine.safetensors");
    std::fs::create_dir_all(own.parent().unwrap()).unwrap();
    std::fs::write(&own, b"the operator's lora").unwrap();

    let spec = format!("{}{entries}", fleet.spec(|options| options.cuda = vec!["cu128".to_owned()]));
    fleet.apply(&spec);
    fleet.cli(&["rollout", "start", "render-prod", "--wait", "--timeout", "5m"]).success();

    for agent in &agents {
        let root = agent.data_dir.join("shared/models");
        for (folder, name, _, content) in &models {
            let path = root.join(folder).join(name);
            assert_eq!(&std::fs::read(&path).unwrap(), content, "{}", path.display());
            let sha = hex::encode(Sha256::digest(content));
            let blob = agent.data_dir.join("models/store").join(&sha).join("blob");
            assert_eq!(std::fs::metadata(&blob).unwrap().ino(), std::fs::metadata(&path).unwrap().ino());
        }
        let ino = |name: &str| std::fs::metadata(root.join("loras").join(name)).unwrap().ino();
        assert_eq!(ino("style.safetensors"), ino("style-copy.safetensors"), "one copy for two names");
        // ComfyUI's folder_paths sees them.
        let port = comfyui_port(agent);
        let vae = comfyui_get(port, "/models/vae").unwrap();
        assert_eq!(vae, json!(["flux/ae.safetensors"]), "{vae}");
        let loras = comfyui_get(port, "/models/loras").unwrap();
        for name in ["style.safetensors", "style-copy.safetensors"] {
            assert!(loras.as_array().unwrap().contains(&Value::from(name)), "{loras}");
        }
    }
    assert_eq!(std::fs::read(&own).unwrap(), b"the operator's lora", "a hand-placed file is left alone");
    let machine = fleet.show(&fleet.machine_id("ws-1"));
    let steps = machine.to_string();
    assert!(
        steps.contains("unmanaged file(s) under shared/models (left as they are): loras/mine.safetensors"),
        "{steps}"
    );

    for (_, name, _, content) in &models {
        let served = hub.cdn_served(&hex::encode(Sha256::digest(content)));
        assert_eq!(served.bytes, content.len() as u64, "{name}: upstream sent its bytes once for the fleet");
    }
    assert_eq!(hub.cdn_refused_credentials(), 0, "the bearer token never went to the CDN host");
    assert_eq!(hub.unauthorized(), 0, "the controller sent the token to the hub");
}

/// A fleet of one agent whose spec names `content` at `vae/ae.safetensors` with
/// `sha256` and `size`; its rollout is started (and fails).
fn one_agent_with(
    hub: &ModelHub,
    content: &[u8],
    sha256: &str,
    size: u64,
) -> (Fleet, comfyfleet_e2e::Agent, Value) {
    hub.add("Comfy-Org/vae", COMMIT, "ae.safetensors", HubFile::Lfs(content.to_vec().into()));
    let fleet = Fleet::start();
    let agent = fleet.agent("ws-1", "rtx4090-x1-570");
    let entry = format!(
        "\n[[model]]\nfolder = \"vae\"\nname = \"ae.safetensors\"\nurl = \"{}/Comfy-Org/vae/resolve/{COMMIT}/ae.safetensors\"\n\
         sha256 = \"{sha256}\"\nsize = {size}\n",
        hub.endpoint()
    );
    fleet.apply(&format!("{}{entry}", fleet.spec(|options| options.cuda = vec!["cu128".to_owned()])));
    let _ = fleet.cli(&["rollout", "start", "render-prod", "--wait", "--timeout", "3m"]);
    let machine = fleet.wait_for_phase(&fleet.machine_id("ws-1"), "failed");
    (fleet, agent, machine)
}

#[test]
fn bytes_that_are_not_the_specs_are_never_linked() {
    let hub = ModelHub::start();
    let content = bytes(11, 2 << 20);
    let actual = hex::encode(Sha256::digest(&content));
    let claimed = "9".repeat(64);
    let (_fleet, agent, machine) = one_agent_with(&hub, &content, &claimed, content.len() as u64);
    let text = machine.to_string();
    assert!(text.contains("model vae/ae.safetensors ("), "names the model: {text}");
    assert!(text.contains(&format!("has sha256 {actual}, but the revision requires {claimed}")), "{text}");
    assert!(text.contains("/Comfy-Org/vae/resolve/"), "names the URL: {text}");
    assert!(!agent.data_dir.join("shared/models/vae/ae.safetensors").exists(), "nothing linked");
    assert!(!agent.data_dir.join("models/store").join(&claimed).join("blob").exists());
    assert!(std::fs::read_link(agent.data_dir.join("current")).is_err(), "nothing switched");
}

#[test]
fn a_machine_without_room_for_its_models_fails_before_fetching_with_the_figures() {
    let hub = ModelHub::start();
    let content = bytes(13, 1 << 20);
    let sha256 = hex::encode(Sha256::digest(&content));
    // A size no test machine has free (the bytes served would be the real ones).
    let size: u64 = 1 << 60;
    let (_fleet, agent, machine) = one_agent_with(&hub, &content, &sha256, size);
    let text = machine.to_string();
    assert!(
        text.contains(&format!("the models still missing need {size} bytes (vae/ae.safetensors)")),
        "{text}"
    );
    assert!(text.contains("bytes free: free space there"), "{text}");
    assert_eq!(hub.cdn_served(&sha256).requests, 0, "nothing was fetched");
    assert!(std::fs::read_link(agent.data_dir.join("current")).is_err(), "nothing switched");
}
