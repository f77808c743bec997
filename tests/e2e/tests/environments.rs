//! Specs against a live fleet: `plan` live and offline agree, `apply` pins git refs
//! and stores immutable revisions, `env` reads them back.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test helpers fail loudly by design

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use comfyfleet_e2e::git::GitRepo;
use comfyfleet_e2e::standin::catalog::{Catalog, CatalogOptions};
use comfyfleet_e2e::standin::server::IndexServer;
use comfyfleet_e2e::{Agent, Controller, binaries, cli, profile, test_dir, wait_until};
use serde_json::Value;

const EXAMPLE: &str = include_str!("../../../config/examples/render-farm.toml");

/// Plans with no controller at all: `--config` names a file that does not exist.
fn plan_offline(spec: &Path, facts: &Path, output: &str) -> String {
    let result = Command::new(&binaries().cli)
        .args(["--config", "/nonexistent/admin.toml", "plan", "-f"])
        .arg(spec)
        .arg("--facts")
        .arg(facts)
        .args(["-o", output])
        .output()
        .unwrap();
    assert!(result.status.success(), "{}", String::from_utf8_lossy(&result.stderr));
    String::from_utf8(result.stdout).unwrap()
}

fn outcome<'a>(plan: &'a Value, hostname: &str) -> &'a Value {
    plan["machines"].as_array().unwrap().iter().find(|m| m["hostname"] == hostname).unwrap()
}

#[test]
fn plan_offline_over_saved_facts_gives_the_same_answer_as_the_live_fleet() {
    let dir = test_dir();
    let controller = Controller::start(&dir.path().join("controller"));
    let render = controller.create_token(&["--label", "pool=render-a"]);
    let staging = controller.create_token(&["--label", "pool=staging"]);
    let names = [
        "h100-x8-580",
        "rtx4090-x1-570",
        "rtx5090-x1-575",
        "mixed-4090-a6000-570",
        "gtx1080ti-x1-570",
        "t4-x1-535",
        "no-gpu",
    ];
    let mut agents: Vec<Agent> = names
        .iter()
        .map(|name| Agent::start(dir.path(), name, &profile(name), &controller.url, Some(&render), &[]))
        .collect();
    agents.push(Agent::start(
        dir.path(),
        "staging-a100",
        &profile("a100-x4-570"),
        &controller.url,
        Some(&staging),
        &[],
    ));
    wait_until(Duration::from_secs(30), "eight machines with inventory", || {
        let machines = controller.machines();
        (machines.len() == 8 && machines.iter().all(|m| !m["nvml_status"].is_null())).then_some(())
    });

    let spec = dir.path().join("render-farm.toml");
    std::fs::write(&spec, EXAMPLE).unwrap();
    let facts = dir.path().join("machines.json");
    std::fs::write(&facts, controller.cli(&["machines", "-o", "json"]).success()).unwrap();

    let live: Value = serde_json::from_str(
        &controller.cli(&["plan", "-f", spec.to_str().unwrap(), "-o", "json"]).success(),
    )
    .unwrap();
    let offline: Value = serde_json::from_str(&plan_offline(&spec, &facts, "json")).unwrap();
    assert_eq!(live, offline, "plan --facts must answer exactly as the live fleet does");

    // A hand-written file with only the facts planning uses (no enrolled_at, online,
    // agent_version or nvml_status; arch defaults to x86_64) plans the same.
    let full: Value = serde_json::from_str(&std::fs::read_to_string(&facts).unwrap()).unwrap();
    let minimal: Vec<Value> = full
        .as_array()
        .unwrap()
        .iter()
        .map(|machine| {
            let mut kept = serde_json::Map::new();
            for key in ["id", "hostname", "labels", "driver_version", "cuda_driver_version"] {
                if !machine[key].is_null() {
                    kept.insert(key.to_owned(), machine[key].clone());
                }
            }
            let gpus: Vec<Value> = machine["gpus"]
                .as_array()
                .unwrap()
                .iter()
                .map(|gpu| {
                    serde_json::json!({
                        "index": gpu["index"],
                        "name": gpu["name"],
                        "memory_total_bytes": gpu["memory_total_bytes"],
                        "compute_capability": gpu["compute_capability"],
                    })
                })
                .collect();
            kept.insert("gpus".to_owned(), Value::from(gpus));
            Value::Object(kept)
        })
        .collect();
    let hand_written = dir.path().join("hand-written.json");
    std::fs::write(&hand_written, serde_json::to_string_pretty(&minimal).unwrap()).unwrap();
    let mut from_minimal: Value = serde_json::from_str(&plan_offline(&spec, &hand_written, "json")).unwrap();
    // Only the display of a machine without GPUs differs: the full file says why
    // (NVML found no driver), the hand-written one cannot.
    let mut expected = live.clone();
    for plan in [&mut from_minimal, &mut expected] {
        for machine in plan["machines"].as_array_mut().unwrap() {
            if machine["hostname"] == "no-gpu" {
                machine.as_object_mut().unwrap().remove("gpus");
            }
        }
    }
    assert_eq!(from_minimal, expected, "the minimal hand-written facts plan exactly as the full file");
    // "What would 2× B200 on a 580 driver get?", asked before buying them.
    let b200 = dir.path().join("b200.json");
    std::fs::write(
        &b200,
        r#"[{"id": "b200-candidate", "hostname": "b200-candidate", "labels": {"pool": "render-a"},
             "driver_version": "580.95.05", "cuda_driver_version": "13.0",
             "gpus": [{"index": 0, "name": "NVIDIA B200", "memory_total_bytes": 191915573248, "compute_capability": "10.0"},
                      {"index": 1, "name": "NVIDIA B200", "memory_total_bytes": 191915573248, "compute_capability": "10.0"}]}]"#,
    )
    .unwrap();
    let b200_plan: Value = serde_json::from_str(&plan_offline(&spec, &b200, "json")).unwrap();
    let candidate = outcome(&b200_plan, "b200-candidate");
    assert_eq!(candidate["status"], "ok", "{candidate}");
    assert_eq!(candidate["cuda_tag"], "cu130", "{candidate}");

    let ada = outcome(&live, "rtx4090-x1-570");
    assert_eq!((ada["status"].as_str(), ada["torch"].as_str()), (Some("ok"), Some("2.11.0+cu128")));
    assert_eq!(ada["cuda_tag"], "cu128");
    assert_eq!(ada["python"], "3.12");
    let sage = &ada["optimizations"][0];
    assert_eq!(sage["name"], "sageattention");
    assert!(sage["url"].as_str().unwrap().contains("cu128torch2.9.0andhigher"), "{sage}");
    assert_eq!(sage["sha256"].as_str().unwrap().len(), 64);
    assert_eq!(ada["optimizations"][1]["requirement"], "triton>=3.6,<3.7");
    assert_eq!(outcome(&live, "gtx1080ti-x1-570")["cuda_tag"], "cu126");
    assert_eq!(outcome(&live, "h100-x8-580")["cuda_tag"], "cu130");
    assert_eq!(outcome(&live, "rtx5090-x1-575")["optimizations"][1]["name"], "sageattention3");
    let t4 = outcome(&live, "t4-x1-535");
    assert_eq!(t4["status"], "incompatible");
    assert!(t4["reason"].as_str().unwrap().contains("driver 535.230.02 supports CUDA 12.2"), "{t4}");
    // `gpu.compute >= 6.0` leaves out a machine without GPUs; `pool != "staging"` the staging box.
    assert_eq!(outcome(&live, "no-gpu")["status"], "not-targeted");
    assert_eq!(outcome(&live, "staging-a100")["status"], "not-targeted");
    assert_eq!(
        live["summary"],
        serde_json::json!({"machines": 8, "ok": 5, "incompatible": 1, "not_targeted": 2, "cuda": {"cu126": 1, "cu128": 3, "cu130": 1}})
    );

    // A facts file that is not `machines -o json` says how to make one.
    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, "{\"machines\": 3}").unwrap();
    let refused = Command::new(&binaries().cli)
        .args(["plan", "-f"])
        .arg(&spec)
        .arg("--facts")
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("is not the output of `comfyfleet machines -o json`"), "{stderr}");

    // A torch release comfyfleet has no facts for: `plan` says so, and how to add them.
    let unknown = dir.path().join("unknown-torch.toml");
    std::fs::write(&unknown, EXAMPLE.replace("version = \"2.11.0\"", "version = \"2.99.0\"")).unwrap();
    let refused = Command::new(&binaries().cli)
        .args(["plan", "-f"])
        .arg(&unknown)
        .arg("--facts")
        .arg(&facts)
        .output()
        .unwrap();
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("comfyfleet has no build facts for torch 2.99"), "{stderr}");
    assert!(stderr.contains("add a [[torch.release]] with series = \"2.99\" and its builds"), "{stderr}");

    let table = plan_offline(&spec, &facts, "table");
    assert!(
        table.contains(
            "render-prod: 8 machines: 5 ok, 1 incompatible, 2 not targeted; cu128 3, cu126 1, cu130 1"
        ),
        "{table}"
    );
    assert_eq!(table, controller.cli(&["plan", "-f", spec.to_str().unwrap()]).success());
    drop(agents);
}

/// The example spec with its git sources pointing at local repositories.
struct Sources {
    comfyui: GitRepo,
    kjnodes: GitRepo,
    videohelper: GitRepo,
    /// The stand-in package index the example's indexes are pointed at.
    index: IndexServer,
}

fn sources(root: &Path) -> Sources {
    // apply locks every build class: the example's indexes are the stand-in's.
    Catalog::build(&root.join("index"), &CatalogOptions::new("cp312"));
    let index = IndexServer::start(&root.join("index"));
    let comfyui = GitRepo::create(&root.join("git/ComfyUI"), &[("main.py", "print('stand-in ComfyUI')\n")]);
    comfyui.tag("v0.33.0");
    comfyui.commit(&[("main.py", "print('newer ComfyUI')\n")], "after the tag");
    let kjnodes = GitRepo::create(&root.join("git/ComfyUI-KJNodes"), &[("__init__.py", "")]);
    let videohelper = GitRepo::create(&root.join("git/ComfyUI-VideoHelperSuite"), &[("__init__.py", "")]);
    Sources { comfyui, kjnodes, videohelper, index }
}

fn local_spec(sources: &Sources) -> String {
    let base = sources.index.base_url();
    EXAMPLE
        .replace("https://download.pytorch.org/whl/{cuda}", &format!("{base}/whl/{{cuda}}"))
        .replace(
            "url = \"https://pypi.org/simple\"",
            &format!("url = \"{base}/simple\"\ntrusted_hosts = [\"127.0.0.1\"]"),
        )
        .replace("https://github.com/comfyanonymous/ComfyUI.git", &sources.comfyui.url())
        .replace("https://github.com/kijai/ComfyUI-KJNodes.git", &sources.kjnodes.url())
        .replace("https://github.com/Kosinkadink/ComfyUI-VideoHelperSuite.git", &sources.videohelper.url())
}

fn show(controller: &Controller, reference: &str) -> Value {
    serde_json::from_str(&controller.cli(&["env", "show", reference, "-o", "json"]).success()).unwrap()
}

#[test]
fn apply_pins_refs_into_immutable_revisions() {
    let dir = test_dir();
    let controller = Controller::start(&dir.path().join("controller"));
    let sources = sources(dir.path());
    let spec = dir.path().join("render-farm.toml");
    std::fs::write(&spec, local_spec(&sources)).unwrap();
    let spec_arg = spec.to_str().unwrap();

    let first = controller.cli(&["apply", "-f", spec_arg]).success();
    assert!(first.starts_with("render-prod revision 1 created, id "), "{first}");
    let tagged = sources.comfyui.rev_parse("v0.33.0");
    assert_ne!(tagged, sources.comfyui.head(), "the tag is behind the branch");
    assert!(first.contains(&tagged), "the annotated tag is pinned to its commit: {first}");
    assert!(first.contains(&sources.kjnodes.head()), "{first}");
    let one = show(&controller, "render-prod");
    assert_eq!(one["number"], 1);
    assert_eq!(one["spec"]["comfyui"]["commit"], tagged.as_str());
    assert_eq!(one["spec"]["custom_node"][0]["commit"], sources.kjnodes.head().as_str());
    let id = one["id"].as_str().unwrap().to_owned();
    assert_eq!(id.len(), 64);

    // The same spec again: the same revision, nothing new stored.
    let again = controller.cli(&["apply", "-f", spec_arg]).success();
    assert!(again.starts_with(&format!("render-prod unchanged: revision 1 (id {id})")), "{again}");
    assert!(first.starts_with(&format!("render-prod revision 1 created, id {id}\n")), "{first}");
    // Reformatting the file does not make a new revision either.
    let reformatted: String = local_spec(&sources)
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(&spec, reformatted).unwrap();
    assert!(controller.cli(&["apply", "-f", spec_arg]).success().contains("unchanged: revision 1"));

    // The branch moves: the stored revision keeps its pin until the spec is applied again.
    let moved = sources.kjnodes.commit(&[("nodes.py", "# new node\n")], "a new node");
    assert_eq!(
        show(&controller, "render-prod")["spec"]["custom_node"][0]["commit"],
        one["spec"]["custom_node"][0]["commit"]
    );
    let second = controller.cli(&["apply", "-f", spec_arg]).success();
    assert!(second.starts_with("render-prod revision 2 created"), "{second}");
    let two = show(&controller, "render-prod");
    assert_eq!(two["spec"]["custom_node"][0]["commit"], moved.as_str());
    assert_eq!(two["spec"]["comfyui"]["commit"], tagged.as_str(), "the tag did not move");
    assert_ne!(two["id"], one["id"]);

    // Revisions by number and by id prefix; the old one is unchanged.
    assert_eq!(show(&controller, "render-prod@1")["id"], id.as_str());
    assert_eq!(show(&controller, &format!("render-prod@{}", &id[..8]))["number"], 1);
    let history = controller.cli(&["env", "history", "render-prod"]).success();
    assert_eq!(history.lines().count(), 3, "{history}");
    assert!(history.contains("torch 2.11.0 (cu130,cu128,cu126)"), "{history}");
    let list = controller.cli(&["env", "list"]).success();
    assert!(
        list.contains("render-prod") && list.contains(&format!("2 ({}", &two["id"].as_str().unwrap()[..12])),
        "{list}"
    );
    let diff = controller.cli(&["env", "diff", "render-prod@1", "2"]).success();
    assert!(diff.contains(&format!("-commit = \"{}\"", sources.kjnodes.rev_parse("HEAD~1"))), "{diff}");
    assert!(diff.contains(&format!("+commit = \"{moved}\"")), "{diff}");
    assert_eq!(diff.lines().filter(|l| l.starts_with('+') && !l.starts_with("+++")).count(), 1, "{diff}");
    let shown = controller.cli(&["env", "show", "render-prod@1"]).success();
    assert!(shown.contains("[comfyui]") && shown.contains(&tagged), "{shown}");

    // Every apply is audited.
    let audit = controller.cli(&["audit"]).success();
    assert_eq!(audit.matches("environment.apply").count(), 4, "{audit}");
}

#[test]
fn apply_refuses_what_it_cannot_pin_or_parse_and_stores_nothing() {
    let dir = test_dir();
    let controller = Controller::start(&dir.path().join("controller"));
    let sources = sources(dir.path());
    let spec = dir.path().join("spec.toml");

    // A ref the repository does not have: named with the repository, nothing stored.
    std::fs::write(&spec, local_spec(&sources).replacen("ref = \"main\"", "ref = \"no-such-branch\"", 1))
        .unwrap();
    let error = controller.cli(&["apply", "-f", spec.to_str().unwrap()]).failure();
    assert!(error.contains("no-such-branch") && error.contains(&sources.kjnodes.url()), "{error}");
    // A repository that does not exist.
    std::fs::write(
        &spec,
        local_spec(&sources).replace(&sources.videohelper.url(), "file:///nonexistent/repo.git"),
    )
    .unwrap();
    let error = controller.cli(&["apply", "-f", spec.to_str().unwrap()]).failure();
    assert!(error.contains("file:///nonexistent/repo.git"), "{error}");
    // A malformed spec is refused with its position before anything is sent.
    let malformed = local_spec(&sources).replace("canary = 2", "canary = \"two\"");
    let line = malformed.lines().position(|line| line.starts_with("canary = ")).unwrap() + 1;
    std::fs::write(&spec, malformed).unwrap();
    let error = controller.cli(&["apply", "-f", spec.to_str().unwrap()]).failure();
    assert!(
        error.contains(&format!(
            "spec.toml:{line}:10: rollout.canary: invalid type: string \"two\", expected a whole number"
        )),
        "{error}"
    );
    let error = controller.cli(&["env", "history", "render-prod"]).failure();
    assert!(error.contains("no environment render-prod"), "{error}");
    assert!(controller.cli(&["env", "list"]).success().lines().count() <= 1);

    // A viewer can read environments but not apply one.
    std::fs::write(&spec, local_spec(&sources)).unwrap();
    controller.cli(&["apply", "-f", spec.to_str().unwrap()]).success();
    let viewer = controller.cli(&["credentials", "create", "dashboards", "--role", "viewer"]).success();
    let viewer_path = dir.path().join("viewer.toml");
    std::fs::write(&viewer_path, viewer).unwrap();
    assert!(cli(&viewer_path, &["env", "list"]).success().contains("render-prod"));
    let error = cli(&viewer_path, &["apply", "-f", spec.to_str().unwrap()]).failure();
    assert!(error.contains("this needs operator"), "{error}");
}

/// A client that skips the CLI's own checks still meets the controller's: the spec
/// is validated again there, with every problem and its position.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_controller_validates_specs_itself() {
    use comfyfleet_proto::v1 as pb;
    let dir = test_dir();
    let controller = Controller::start(&dir.path().join("controller"));
    let admin: toml::Value =
        toml::from_str(&std::fs::read_to_string(controller.admin_config()).unwrap()).unwrap();
    let channel =
        comfyfleet_e2e::grpc::channel(&controller.url, admin["ca_certificate"].as_str().unwrap(), None).await;
    let mut fleet = pb::fleet_service_client::FleetServiceClient::new(channel);
    let bad = EXAMPLE
        .replace("ref = \"v0.33.0\"", "ref = \"--upload-pack=touch /tmp/pwned\"")
        .replace("python = \"3.12\"", "python = \"2.7\"");
    let mut request = tonic::Request::new(pb::ApplyEnvironmentRequest {
        spec: bad,
        format: pb::SpecFormat::Toml as i32,
        file_name: "hand-made.toml".into(),
        classes: Vec::new(),
    });
    let bearer = format!("Bearer {}", admin["credential"].as_str().unwrap());
    request.metadata_mut().insert("authorization", bearer.parse().unwrap());
    let status = fleet.apply_environment(request).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("hand-made.toml:"), "{}", status.message());
    assert!(status.message().contains("not a Python version"), "{}", status.message());
    let history = controller.cli(&["env", "list"]).success();
    assert!(!history.contains("render-prod"), "{history}");
}
