//! `comfyfleet models import` on the four real workflow templates, against a
//! stand-in Hugging Face (hub and CDN on two ports, bearer auth, HF's HEAD headers,
//! a CDN that refuses credentials, Range, cut downloads): the entries their
//! `properties.models` declare, subgraphs included, with sha256 and size from the
//! hub's headers (or from hashing the download), and `resolve/main` pinned.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test helpers fail loudly by design

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use comfyfleet_config::{Spec, SpecFormat};
use comfyfleet_e2e::binaries;
use comfyfleet_e2e::standin::hub::{HubFile, ModelHub};
use serde_json::Value;
use sha2::{Digest as _, Sha256};

const BASE_SPEC: &str = r#"name = "render-prod"
python = "3.12"

[comfyui]
git = "https://github.com/comfyanonymous/ComfyUI.git"
ref = "v0.3.64"

[torch]
version = "2.8.0"
cuda = ["cu128"]
"#;

const TOKEN: &str = "hf_standin_token_0123456789";

/// (workflow, distinct models it declares, of them with a SHA256)
const WORKFLOWS: [(&str, usize, usize); 4] = [
    ("hidream_e1_full.json", 6, 6),
    ("flux_dev_full_text_to_image.json", 4, 0),
    ("image_qwen_image_instantx_inpainting_controlnet.json", 5, 0),
    ("video_wan2_2_14B_i2v.json", 6, 0),
];

fn workflow_path(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/real/workflows").join(name)
}

/// Every `properties.models` reference of a workflow, subgraphs included.
fn references(name: &str) -> Vec<Value> {
    let workflow: Value =
        serde_json::from_str(&std::fs::read_to_string(workflow_path(name)).unwrap()).unwrap();
    let mut graphs = vec![workflow.clone()];
    graphs.extend(
        workflow.pointer("/definitions/subgraphs").and_then(Value::as_array).cloned().unwrap_or_default(),
    );
    graphs
        .iter()
        .flat_map(|graph| graph["nodes"].as_array().cloned().unwrap_or_default())
        .flat_map(|node| {
            node.pointer("/properties/models").and_then(Value::as_array).cloned().unwrap_or_default()
        })
        .collect()
}

fn commit_of(repo: &str) -> String {
    hex::encode(&Sha256::digest(repo.as_bytes())[..20])
}

/// (repo, path in it) of a huggingface.co resolve URL.
fn split(url: &str) -> (String, String) {
    let path = url.strip_prefix("https://huggingface.co/").unwrap();
    let (repo, rest) = path.split_once("/resolve/main/").unwrap();
    (repo.to_owned(), rest.to_owned())
}

/// A hub holding every file the four workflows name: the flux files with bytes
/// (1 to 2 MiB), the others declared with a sha256 (the workflow's own where it
/// has one) and a size like the real ones'.
fn hub() -> (ModelHub, BTreeMap<String, HubFile>) {
    let hub = ModelHub::start();
    let mut files = BTreeMap::new();
    for (workflow, _, _) in WORKFLOWS {
        for (i, reference) in references(workflow).iter().enumerate() {
            let url = reference["url"].as_str().unwrap().to_owned();
            let file = if workflow.starts_with("flux") {
                let size = (1 << 20) + i * 300_000;
                HubFile::Lfs((0..size).map(|at| (at * 31 + i * 7) as u8).collect::<Vec<u8>>().into())
            } else {
                let sha256 = reference["hash"]
                    .as_str()
                    .map_or_else(|| hex::encode(Sha256::digest(url.as_bytes())), str::to_owned);
                HubFile::Declared { sha256, size: 7_000_000_000 + i as u64 }
            };
            let (repo, path) = split(&url);
            hub.add(&repo, &commit_of(&repo), &path, file.clone());
            files.insert(url, file);
        }
    }
    (hub, files)
}

fn import(hub: &ModelHub, args: &[&str], token: Option<&str>) -> Output {
    let mut command = Command::new(&binaries().cli);
    command.args(["models", "import"]).args(args).args(["--hf-endpoint", &hub.endpoint()]);
    command.env_remove("HF_ENDPOINT").env_remove("HF_TOKEN");
    if let Some(token) = token {
        command.env("HF_TOKEN", token);
    }
    command.output().unwrap()
}

fn ok(output: &Output) -> String {
    assert!(
        output.status.success(),
        "failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout.clone()).unwrap()
}

fn spec_with(entries: &str) -> Spec {
    Spec::parse("spec.toml", &format!("{BASE_SPEC}{entries}"), SpecFormat::Toml)
        .unwrap_or_else(|errors| panic!("{errors}\n{entries}"))
}

#[test]
fn offline_import_contacts_nothing_and_lists_the_models_needing_a_sha256() {
    let (hub, _) = hub();
    for (workflow, distinct, hashed) in WORKFLOWS {
        let output = import(&hub, &[workflow_path(workflow).to_str().unwrap(), "--offline"], Some(TOKEN));
        let stdout = ok(&output);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(stdout.matches("[[model]]").count(), hashed, "{workflow}:\n{stdout}");
        assert_eq!(stderr.matches("needs a sha256").count(), distinct - hashed, "{workflow}:\n{stderr}");
        if hashed > 0 {
            let spec = spec_with(&stdout);
            assert!(spec.models.iter().all(|model| model.url.contains("/resolve/main/")), "left as it was");
        }
    }
    assert_eq!(hub.hub_requests(), 0, "--offline contacts nothing");
}

#[test]
fn import_fills_every_model_from_the_hubs_headers_and_pins_the_commit() {
    let (hub, files) = hub();
    hub.require_token(TOKEN);
    for (workflow, distinct, _) in WORKFLOWS {
        let stdout = ok(&import(&hub, &[workflow_path(workflow).to_str().unwrap()], Some(TOKEN)));
        let spec = spec_with(&stdout);
        assert_eq!(spec.models.len(), distinct, "{workflow}:\n{stdout}");
        let declared = references(workflow);
        for model in &spec.models {
            let reference = declared.iter().find(|r| r["name"] == model.name.as_str()).unwrap();
            let url = reference["url"].as_str().unwrap();
            let (repo, path) = split(url);
            let file = &files[url];
            assert_eq!(
                model.url,
                format!("https://huggingface.co/{repo}/resolve/{}/{path}", commit_of(&repo))
            );
            assert_eq!(model.sha256.as_ref().unwrap().as_str(), file.sha256(), "{workflow}: {}", model.name);
            assert_eq!(model.size, Some(file.size()));
            assert_eq!(model.directory(), reference["directory"].as_str().unwrap());
            if let Some(hash) = reference["hash"].as_str() {
                assert_eq!(model.sha256.as_ref().unwrap().as_str(), hash);
            }
        }
        if workflow.starts_with("flux") || workflow.starts_with("video") {
            assert!(stdout.contains("in subgraph"), "the models are in a subgraph:\n{stdout}");
        }
    }
    assert_eq!(hub.unauthorized(), 0, "every lookup carried the token");
    for file in files.values() {
        assert_eq!(hub.cdn_served(&file.sha256()).requests, 0, "the headers sufficed: nothing downloaded");
    }

    // --append: into a spec file, once; a second import finds them there.
    let dir = tempfile::tempdir().unwrap();
    let spec_path = dir.path().join("render.toml");
    std::fs::write(&spec_path, BASE_SPEC).unwrap();
    let qwen = workflow_path(WORKFLOWS[2].0);
    let args = [qwen.to_str().unwrap(), "--append", spec_path.to_str().unwrap(), "--credential", "hf"];
    assert_eq!(
        ok(&import(&hub, &args, Some(TOKEN))),
        format!("appended 5 models to {}\n", spec_path.display())
    );
    let again = ok(&import(&hub, &args, Some(TOKEN)));
    assert_eq!(again, format!("appended 0 models to {} (5 already there)\n", spec_path.display()));
    let text = std::fs::read_to_string(&spec_path).unwrap();
    let spec = Spec::parse("render.toml", &text, SpecFormat::Toml).unwrap();
    assert_eq!(spec.models.len(), 5);
    assert!(spec.models.iter().all(|model| model.credential.as_deref() == Some("hf")));
}

#[test]
fn without_a_token_or_against_the_workflows_hash_nothing_is_written() {
    let (hub, _) = hub();
    hub.require_token(TOKEN);
    let dir = tempfile::tempdir().unwrap();
    let spec_path = dir.path().join("render.toml");
    std::fs::write(&spec_path, BASE_SPEC).unwrap();
    let hidream = workflow_path(WORKFLOWS[0].0);
    let output = import(&hub, &[hidream.to_str().unwrap(), "--append", spec_path.to_str().unwrap()], None);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("answered 401 Unauthorized: the repository is gated or private: set HF_TOKEN"),
        "{stderr}"
    );
    assert!(
        stderr.contains("6 of the workflow's models could not be completed (nothing was written)"),
        "{stderr}"
    );
    assert_eq!(std::fs::read_to_string(&spec_path).unwrap(), BASE_SPEC);

    // The hub now serves other bytes than the workflow was made with.
    let reference = &references(WORKFLOWS[0].0)[0];
    let (repo, path) = split(reference["url"].as_str().unwrap());
    let changed = "1".repeat(64);
    hub.add(&repo, &commit_of(&repo), &path, HubFile::Declared { sha256: changed.clone(), size: 5 });
    let output = import(&hub, &[hidream.to_str().unwrap()], Some(TOKEN));
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    let declared = reference["hash"].as_str().unwrap();
    assert!(
        stderr.contains(&format!(
            "the workflow says sha256 {declared} but https://huggingface.co/{repo}/resolve/"
        )),
        "{stderr}"
    );
    assert!(stderr.contains(&format!("serves {changed} at commit {}", commit_of(&repo))), "{stderr}");
}

#[test]
fn a_source_without_a_sha256_is_hashed_through_the_cdn_without_the_credential_and_resumed() {
    let (hub, files) = hub();
    hub.require_token(TOKEN);
    hub.drop_linked_etag(true);
    // The first two downloads are cut after 400 kB: each resumes with Range.
    hub.cut_downloads(400_000, 2);
    let flux = workflow_path(WORKFLOWS[1].0);
    let output = import(&hub, &[flux.to_str().unwrap()], Some(TOKEN));
    let spec = spec_with(&ok(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(spec.models.len(), 4);
    for model in &spec.models {
        let reference =
            references(WORKFLOWS[1].0).into_iter().find(|r| r["name"] == model.name.as_str()).unwrap();
        let file = &files[reference["url"].as_str().unwrap()];
        assert_eq!(model.sha256.as_ref().unwrap().as_str(), file.sha256(), "hashed from the bytes");
        assert_eq!(model.size, Some(file.size()));
        let served = hub.cdn_served(&file.sha256());
        assert_eq!(
            served.bytes,
            file.size(),
            "{}: every byte sent once, resumed where it was cut",
            model.name
        );
        assert!(stderr.contains(&format!("hashing {}/{}: ", model.folder, model.name)), "progress: {stderr}");
    }
    assert_eq!(hub.cdn_ranges(), 2, "two resumptions");
    assert_eq!(hub.cdn_refused_credentials(), 0, "the token never reached the CDN");

    // The CDN does refuse a credential: a client that carried it would have failed.
    let mut stream = TcpStream::connect(("127.0.0.1", hub.cdn_port())).unwrap();
    let sha256 = files.values().next().unwrap().sha256();
    write!(stream, "GET /lfs/{sha256} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n\r\n").unwrap();
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 403"), "{answer}");
    assert_eq!(hub.cdn_refused_credentials(), 1);
}
