//! `[[model]]` entries through the real binaries: `plan` shows each machine the
//! models its targets give it and their total size; a bearer credential
//! (`secrets set hf --bearer`) is stored, listed without its secret, and refused
//! for a package index, which takes basic auth only.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test helpers fail loudly by design

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use comfyfleet_e2e::{CliOutput, Controller, binaries, test_dir};
use serde_json::{Value, json};

const SPEC: &str = r#"name = "render-prod"
python = "3.12"

[comfyui]
git = "https://github.com/comfyanonymous/ComfyUI.git"
ref = "v0.3.64"

[torch]
version = "2.8.0"
cuda = ["cu128"]

[[model]]
folder = "diffusion_models"
name = "flux1-dev.safetensors"
url = "https://huggingface.co/Comfy-Org/flux1-dev/resolve/0123456789abcdef0123456789abcdef01234567/flux1-dev.safetensors"
sha256 = "1111111111111111111111111111111111111111111111111111111111111111"
size = 23802932552
target = "gpu.memory >= 40"

[[model]]
folder = "diffusion_models"
name = "flux1-dev.safetensors"
url = "https://huggingface.co/Comfy-Org/flux1-dev/resolve/0123456789abcdef0123456789abcdef01234567/flux1-dev-fp8.safetensors"
sha256 = "2222222222222222222222222222222222222222222222222222222222222222"
size = 11901525888
target = "gpu.memory < 40"

[[model]]
folder = "vae"
name = "flux/ae.safetensors"
url = "https://huggingface.co/Comfy-Org/flux1-dev/resolve/0123456789abcdef0123456789abcdef01234567/ae.safetensors"
sha256 = "3333333333333333333333333333333333333333333333333333333333333333"
size = 335304388
credential = "hf"
"#;

/// Two machines as `machines -o json` shows them (the fields planning reads).
fn facts() -> Value {
    let machine = |id: &str, gpu: &str, memory_gib: u64| {
        json!({
            "id": id, "hostname": id, "labels": {}, "driver_version": "575.51.03",
            "cuda_driver_version": "12.9", "last_seen": null,
            "gpus": [{"index": 0, "name": gpu, "memory_total_bytes": memory_gib << 30, "compute_capability": "9.0"}]
        })
    };
    json!([machine("h100", "NVIDIA H100 80GB HBM3", 80), machine("l4", "NVIDIA L4", 24)])
}

#[test]
fn plan_shows_each_machine_its_models_and_their_total_size() {
    let dir = test_dir();
    let spec = dir.path().join("spec.toml");
    let facts_path = dir.path().join("facts.json");
    std::fs::write(&spec, SPEC).unwrap();
    std::fs::write(&facts_path, facts().to_string()).unwrap();
    let plan = |output: &str| {
        let out = Command::new(&binaries().cli)
            .args([
                "plan",
                "-f",
                spec.to_str().unwrap(),
                "--facts",
                facts_path.to_str().unwrap(),
                "-o",
                output,
            ])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    let json: Value = serde_json::from_str(&plan("json")).unwrap();
    let machine =
        |id: &str| json["machines"].as_array().unwrap().iter().find(|m| m["machine"] == id).unwrap().clone();
    let (h100, l4) = (machine("h100"), machine("l4"));
    assert_eq!(h100["status"], "ok", "{h100}");
    let paths = |m: &Value| -> Vec<String> {
        m["models"]
            .as_array()
            .unwrap()
            .iter()
            .map(|model| model["sha256"].as_str().unwrap()[..1].to_owned())
            .collect()
    };
    assert_eq!(paths(&h100), ["1", "3"], "the bf16 file on 80 GiB");
    assert_eq!(paths(&l4), ["2", "3"], "the fp8 file on 24 GiB");
    assert_eq!(h100["models"][0]["path"], "diffusion_models/flux1-dev.safetensors");
    assert_eq!(h100["model_bytes"], 23802932552_u64 + 335304388);
    assert_eq!(l4["model_bytes"], 11901525888_u64 + 335304388);
    let table = plan("table");
    assert!(table.contains("MODELS"), "{table}");
    assert!(table.contains("2 (22 GiB)") && table.contains("2 (11 GiB)"), "{table}");

    // A target overlap on one machine is its problem, naming both entries.
    let overlapping = SPEC.replace("gpu.memory < 40", "gpu.memory < 90");
    std::fs::write(&spec, overlapping).unwrap();
    let json: Value = serde_json::from_str(&plan("json")).unwrap();
    let h100 = json["machines"].as_array().unwrap().iter().find(|m| m["machine"] == "h100").unwrap().clone();
    assert_eq!(h100["status"], "incompatible");
    assert!(
        h100["reason"].as_str().unwrap().starts_with(
            "model[0] and model[1] both put diffusion_models/flux1-dev.safetensors on this machine"
        ),
        "{h100}"
    );
}

fn set_secret(config: &Path, args: &[&str], secret: &str) -> CliOutput {
    let mut child = Command::new(&binaries().cli)
        .args(["--config", config.to_str().unwrap(), "secrets", "set"])
        .args(args)
        .env_remove("COMFYFLEET_CONFIG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let _ = child.stdin.take().unwrap().write_all(format!("{secret}\n").as_bytes());
    let output = child.wait_with_output().unwrap();
    CliOutput {
        status: output.status,
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

#[test]
fn a_bearer_credential_is_stored_for_models_and_refused_for_an_index() {
    const TOKEN: &str = "hf_Xq81-bearer-secret";
    let dir = test_dir();
    let controller = Controller::start(dir.path());
    let admin = controller.admin_config();
    let conflict = set_secret(
        &admin,
        &["hf", "--bearer", "--username", "x", "--origin", "https://huggingface.co"],
        TOKEN,
    )
    .failure();
    assert!(conflict.contains("--username"), "{conflict}");
    let args = ["hf", "--bearer", "--origin", "https://huggingface.co", "--origin", "https://models.example"];
    let stored = set_secret(&admin, &args, TOKEN).success();
    assert!(
        stored.starts_with(
            "credential hf (bearer token) stored, sent only to https://huggingface.co, https://models.example"
        ),
        "{stored}"
    );
    let listed: Vec<Value> =
        serde_json::from_str(&controller.cli(&["secrets", "list", "-o", "json"]).success()).unwrap();
    assert_eq!((listed[0]["kind"].as_str(), listed[0]["username"].as_str()), (Some("bearer"), Some("")));
    let table = controller.cli(&["secrets", "list"]).success();
    assert!(table.contains("bearer token") && !table.contains(TOKEN), "{table}");

    // Named for a package index (on hosts the controller may fetch from): refused at
    // apply, before any source is asked.
    let spec = dir.path().join("index.toml");
    let text = SPEC.replace(
        "[torch]",
        "[index]\nurl = \"https://models.example/simple\"\ncredential = \"hf\"\n\n[torch]\nindex = \
         \"https://torch.example/{cuda}\"",
    );
    std::fs::write(&spec, text).unwrap();
    let refused = controller.cli(&["apply", "-f", spec.to_str().unwrap()]).failure();
    assert!(
        refused.contains(
            "index.credential: credential \"hf\" is a bearer token, which serves [[model]] downloads only"
        ),
        "{refused}"
    );
    assert!(!refused.contains(TOKEN));
}
