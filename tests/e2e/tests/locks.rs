//! Issue 11: one revision installs the same bytes on every machine of a build class,
//! fetched from upstream once, through the controller's package cache; a farm whose
//! upstream is gone still builds after `cache fill`. Real controller, real agents,
//! real uv, the stand-in upstream index (with its per-path byte counters).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test helpers fail loudly by design

use std::path::Path;
use std::time::Duration;

use comfyfleet_e2e::git::GitRepo;
use comfyfleet_e2e::provision::{
    Fleet, comfyui_get, comfyui_port, current_target, find_step, path_without_uv, pinned_uv_wheel, step,
};
use comfyfleet_e2e::standin::index::IndexLayout;
use comfyfleet_e2e::standin::packages::plain_module;
use comfyfleet_e2e::standin::wheel::WheelBuilder;
use comfyfleet_e2e::standin::{CatalogOptions, TestNode, find_uv, system_python};
use comfyfleet_e2e::{Agent, wait_until};
use serde_json::Value;

/// One node class named after `node`: ComfyUI's `/object_info` must list one from
/// every custom node that does not say `provides_nodes = false`.
fn node_class(node: &str) -> String {
    let class: String = node.chars().filter(char::is_ascii_alphanumeric).collect();
    format!(
        "class {class}:\n    RETURN_TYPES = ()\n\n    @classmethod\n    def INPUT_TYPES(cls):\n        \
         return {{\"required\": {{}}}}\n\nNODE_CLASS_MAPPINGS = {{\"{class}\": {class}}}\n"
    )
}

/// A custom node whose `requirements.txt` is `requirements` and that imports `module`.
fn node(fleet: &Fleet, name: &str, requirements: &str, module: &str) -> GitRepo {
    GitRepo::create(
        &fleet.dir.path().join(name),
        &[
            ("__init__.py", &format!("import {module}  # noqa: F401\n\n{}", node_class(name))),
            ("requirements.txt", requirements),
        ],
    )
}

/// `uv pip freeze` of the environment `current` points at.
fn freeze(agent: &Agent) -> String {
    let env = current_target(agent).expect("a current environment");
    let python = agent.data_dir.join(env).join("venv/bin/python");
    let output = std::process::Command::new(find_uv())
        .args(["pip", "freeze", "--no-config", "--python"])
        .arg(python)
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).unwrap()
}

fn class(cuda: &str) -> String {
    format!("{}-{cuda}-linux_x86_64", system_python().tag)
}

fn rollout(fleet: &Fleet) -> String {
    fleet.cli(&["rollout", "start", "render-prod", "--wait", "--timeout", "5m"]).success()
}

#[test]
fn one_revision_installs_the_same_packages_everywhere_and_a_new_class_needs_a_lock() {
    let fleet = Fleet::start();
    let index = fleet.world.server.root().to_owned();
    IndexLayout::publish(&index, &[plain_module("standin-comfy-dep", "1.0.0")]);
    let dep = node(&fleet, "ComfyUI-Dep", "standin-comfy-dep>=1.0\n", "standin_comfy_dep");
    let spec = fleet.spec(|options| options.custom_nodes.push(TestNode::new(&dep.url(), "main")));

    let first = fleet.agent("first", "rtx4090-x1-570");
    let applied = fleet.apply(&spec);
    assert!(applied.contains(&format!("locked {}", class("cu128"))), "{applied}");
    let shown = fleet.cli(&["env", "show", "render-prod@1", "--lock"]).success();
    assert!(shown.contains("standin-comfy-dep") && shown.contains("1.0.0"), "{shown}");
    assert!(shown.contains("/files/standin_comfy_dep-1.0.0-py3-none-any.whl"), "{shown}");
    let started = rollout(&fleet);
    assert!(started.contains("succeeded: 1 active"), "{started}");

    // An hour later upstream publishes a newer dependency; a second machine of the
    // same class joins and builds the same revision.
    IndexLayout::publish(
        &index,
        &[plain_module("standin-comfy-dep", "1.0.0"), plain_module("standin-comfy-dep", "1.1.0")],
    );
    let second = fleet.agent("second", "rtx4090-x1-570");
    let second_id = fleet.machine_id("second");
    let machine = fleet.wait_for(&second_id, "the joining machine to run revision 1", |machine| {
        machine["report"]["phase"] == "active" && machine["assignment"]["revision_number"] == 1
    });
    let requirements = step(&machine, "requirements")["detail"].as_str().unwrap().to_owned();
    assert!(requirements.contains(&format!("locked packages of {}", class("cu128"))), "{requirements}");
    let (a, b) = (freeze(&first), freeze(&second));
    assert!(a.contains("standin-comfy-dep==1.0.0"), "{a}");
    assert_eq!(a, b, "two machines of one class on one revision have the same packages");

    // A revision applied after the publish locks the newer one, and says so.
    let applied = fleet.apply(&spec);
    assert!(applied.contains("render-prod revision 2 created"), "{applied}");
    let diff = fleet.cli(&["env", "diff", "render-prod@1", "2"]).success();
    assert!(diff.contains("standin-comfy-dep 1.0.0 → 1.1.0"), "{diff}");
    assert!(diff.contains(&format!("packages of {}", class("cu128"))), "{diff}");

    // A V100 (a cu126 build) joins: revision 2 has no lock for its class. It is
    // refused with the reason, never resolved on the machine; `env lock` adds it.
    let _third = fleet.agent("third", "v100-x2-560");
    let started = fleet.cli(&["rollout", "start", "render-prod", "-o", "json"]).success();
    let started: Value = serde_json::from_str(&started).unwrap();
    let third = started["targets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|target| target["hostname"] == "third")
        .unwrap_or_else(|| panic!("{started}"))
        .clone();
    assert_eq!(third["outcome"], "incompatible", "{third}");
    let reason = third["reason"].as_str().unwrap();
    assert!(
        reason
            .contains(&format!("build class {} (2.9.0+cu126) has no lock in this revision", class("cu126")))
            && reason.contains(&format!("comfyfleet env lock render-prod@REV --class {}", class("cu126"))),
        "{reason}"
    );
    let locked = fleet.cli(&["env", "lock", "render-prod@2", "--class", &class("cu126")]).success();
    assert!(locked.contains("render-prod revision 3 created"), "{locked}");
    assert!(locked.contains(&format!("locked {}", class("cu126"))), "{locked}");
    let diff = fleet.cli(&["env", "diff", "render-prod@2", "3"]).success();
    assert!(diff.contains(&format!("{}: locked", class("cu126"))), "{diff}");
    assert!(!diff.contains("packages of"), "the cu128 lock is unchanged: {diff}");
    let started = rollout(&fleet);
    assert!(started.contains("succeeded: 3 active"), "{started}");
    assert!(freeze(&_third).contains("standin-comfy-dep==1.1.0"));
}

#[test]
fn six_machines_of_three_classes_download_every_file_from_upstream_exactly_once() {
    let fleet = Fleet::start();
    let spec = fleet.spec(|options| options.cuda = ["cu130", "cu128", "cu126"].map(str::to_owned).to_vec());
    let machines = [
        ("h100-a", "h100-x8-580"),
        ("h100-b", "h100-x8-580"),
        ("rtx4090", "rtx4090-x1-570"),
        ("a100", "a100-x4-570"),
        ("v100-a", "v100-x2-560"),
        ("v100-b", "v100-x2-560"),
    ];
    let _agents: Vec<Agent> = machines.iter().map(|(name, profile)| fleet.agent(name, profile)).collect();
    let applied = fleet.apply(&spec);
    for cuda in ["cu130", "cu128", "cu126"] {
        assert!(applied.contains(&format!("locked {}", class(cuda))), "{applied}");
    }
    // What apply read (index pages, PEP 658 metadata) is not a build's download.
    fleet.world.server.reset_counts();
    let started = rollout(&fleet);
    assert!(started.contains("succeeded: 6 active"), "{started}");

    let wheels: Vec<(String, u64, u64)> = fleet
        .world
        .server
        .counts()
        .into_iter()
        .filter(|(path, _)| path.ends_with(".whl"))
        .map(|(path, count)| (path, count.requests, count.bytes))
        .collect();
    let downloaded_twice: Vec<&(String, u64, u64)> =
        wheels.iter().filter(|(_, requests, _)| *requests != 1).collect();
    assert!(downloaded_twice.is_empty(), "every file once from upstream: {downloaded_twice:?}");
    // Three torch builds and three kernel wheels (one per class and SM) among them.
    assert_eq!(wheels.iter().filter(|(path, ..)| path.contains("/torch-2.9.0+")).count(), 3, "{wheels:?}");
    let upstream: u64 = wheels.iter().map(|(_, _, bytes)| bytes).sum();
    let cache: Value =
        serde_json::from_str(&fleet.cli(&["cache", "status", "-o", "json"]).success()).unwrap();
    assert_eq!(cache["bytes_from_upstream"], upstream, "only the controller fetched wheels: {cache}");
    assert!(
        cache["bytes_served"].as_u64().unwrap() > upstream,
        "the agents were served from the cache: {cache}"
    );
    assert!(cache["hits"].as_u64().unwrap() > 0, "{cache}");
    // The agents' uv never talked to an index: every install was of verified files.
    let calls = std::fs::read_to_string(&fleet.uv_log).unwrap();
    assert!(!calls.contains(&fleet.base_url()), "an agent's uv reached upstream:\n{calls}");
    let text = fleet.cli(&["cache", "status"]).success();
    assert!(text.contains("hit rate") && text.contains("from upstream"), "{text}");
    // Every cached file is one the newest revision needs: prune keeps them all.
    let pruned = fleet.cli(&["cache", "prune"]).success();
    assert!(pruned.starts_with("removed 0 files"), "{pruned}");
    let pruned = fleet.cli(&["cache", "prune", "--all"]).success();
    assert!(!pruned.starts_with("removed 0 files"), "{pruned}");
}

/// `GET` of the cache URL with an agent's own identity (its key, certificate and the
/// controller's CA from its identity directory), run `n` at once by Python; each
/// line of the result is `BYTES SHA256` of what one request received.
fn fetch_concurrently(agents: &[Agent], url: &str) -> Vec<String> {
    let script = r#"
import hashlib, ssl, sys, threading, urllib.request
url = sys.argv[1]
dirs = sys.argv[2:]
results = [None] * len(dirs)
def fetch(i, d):
    context = ssl.create_default_context(cafile=d + "/identity/ca.crt")
    context.load_cert_chain(d + "/identity/machine.crt", d + "/identity/machine.key")
    digest, size = hashlib.sha256(), 0
    with urllib.request.urlopen(url, context=context, timeout=300) as response:
        while True:
            chunk = response.read(1 << 20)
            if not chunk:
                break
            digest.update(chunk)
            size += len(chunk)
    results[i] = f"{size} {digest.hexdigest()}"
threads = [threading.Thread(target=fetch, args=(i, d)) for i, d in enumerate(dirs)]
for t in threads: t.start()
for t in threads: t.join()
print("\n".join(str(r) for r in results))
"#;
    let output = std::process::Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(url)
        .args(agents.iter().map(|agent| agent.data_dir.clone()))
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).unwrap().lines().map(str::to_owned).collect()
}

#[test]
fn eight_agents_asking_at_once_for_an_uncached_256_mib_wheel_cause_one_upstream_download() {
    let fleet = Fleet::start();
    let index = fleet.world.server.root().to_owned();
    let big =
        IndexLayout::publish(&index, &[plain_module("standin-big", "1.0.0").padding(256 << 20)]).remove(0);
    let mut agents: Vec<Agent> = (0..8).map(|i| fleet.agent(&format!("m{i}"), "rtx4090-x1-570")).collect();
    fleet.apply(&fleet.spec(|_| {}));
    // The cache serves a machine only what its own revision names: every machine is
    // assigned the revision, and one reads the page of the revision's index that
    // links the wheel. The requests below need only the machines' identities, so
    // the agents stop rather than build.
    fleet.cli(&["rollout", "start", "render-prod", "--max-parallel-prepare", "8"]).success();
    for agent in &mut agents {
        let id = fleet.machine_id(&agent.name);
        fleet.wait_for(&id, "its assignment", |machine| !machine["assignment"].is_null());
        agent.process.terminate(Duration::from_secs(60));
    }
    let index_key = &sha256_hex(format!("{}/simple", fleet.base_url()).as_bytes())[..16];
    let page = format!("{}/cache/v1/index/{index_key}/standin-big/", fleet.controller.url);
    assert_eq!(fetch_concurrently(&agents[..1], &page).len(), 1);
    fleet.world.server.reset_counts();
    // Upstream is slow to answer: every agent asks before the first byte arrives.
    fleet.world.server.set_delay("/files/standin_big", Duration::from_secs(2));
    let url = format!("{}/cache/v1/files/{}/{}", fleet.controller.url, big.wheel.sha256, big.wheel.file_name);
    let received = fetch_concurrently(&agents, &url);
    assert_eq!(received.len(), 8);
    for line in &received {
        assert_eq!(
            line,
            &format!("{} {}", big.wheel.size, big.wheel.sha256),
            "every agent got the whole file"
        );
    }
    let count = fleet.world.server.count(&big.url_path);
    assert_eq!((count.requests, count.bytes), (1, big.wheel.size), "one upstream download for 8 agents");

    // Without a machine certificate there is nothing to fetch.
    let anonymous = std::process::Command::new("python3")
        .arg("-c")
        .arg(format!(
            "import ssl, urllib.request, urllib.error\nc = ssl.create_default_context(cafile='{}')\n\
             try:\n    urllib.request.urlopen('{url}', context=c)\nexcept urllib.error.HTTPError as e:\n    print(e.code, e.read().decode())",
            agents[0].data_dir.join("identity/ca.crt").display()
        ))
        .output()
        .unwrap();
    let answer = String::from_utf8_lossy(&anonymous.stdout);
    assert!(answer.starts_with("401") && answer.contains("client certificate"), "{answer}");
}

#[test]
fn after_cache_fill_a_new_machine_builds_with_every_upstream_gone() {
    // The index lists the uv wheel the agent pins: a machine without uv gets it too.
    let mut options = CatalogOptions::new(&system_python().tag);
    options.extra_wheels.push(pinned_uv_wheel());
    let mut fleet = Fleet::start_with(&options);
    let spec = fleet.spec(|_| {});
    // No machine yet: apply locks every CUDA build the spec allows.
    let applied = fleet.apply(&spec);
    for cuda in ["cu128", "cu126", "cu130"] {
        assert!(applied.contains(&format!("locked {}", class(cuda))), "{applied}");
    }
    let filled = fleet.cli(&["cache", "fill", "render-prod"]);
    let progress = filled.stderr.clone();
    let text = filled.success();
    assert!(text.contains("cached") && text.contains("fetched from upstream"), "{text}");
    assert!(progress.contains("] ") && progress.contains(" files, "), "progress is shown: {progress}");
    // Fill and status count the same files (git sources apart), and no total reads 0 B.
    assert!(!progress.contains("of 0 B"), "{progress}");
    let last = progress.lines().last().unwrap();
    let files: u64 = last.split(" files").next().unwrap().rsplit('/').next().unwrap().parse().unwrap();
    let sources = last.split(" git sources").next().unwrap().rsplit(", ").next().unwrap();
    assert_eq!(sources, "3/3", "ComfyUI and two nodes, apart from the files: {last}");
    assert!(last.contains(&format!("{files}/{files} files")), "{last}");
    let status: Value =
        serde_json::from_str(&fleet.cli(&["cache", "status", "-o", "json"]).success()).unwrap();
    assert_eq!(status["needed_files"], files, "cache status counts what fill cached: {status}\n{progress}");
    assert!(text.contains(&format!("cached {files} files")) && text.contains("and 3 git sources"), "{text}");

    // The package index goes away, and so do the git repositories.
    fleet.world.server.stop();
    let repos = fleet.world.repos.comfyui.repo.path.parent().unwrap().to_owned();
    std::fs::rename(&repos, repos.with_extension("gone")).unwrap();

    // A new machine with nothing but git and python3: no uv, no index, no repository.
    let path = path_without_uv(fleet.dir.path());
    let late = fleet.agent_with("late", "rtx4090-x1-570", &[], Some(&path));
    let started = rollout(&fleet);
    assert!(started.contains("succeeded: 1 active"), "{started}");
    let machine = fleet.show(&fleet.machine_id("late"));
    let uv = step(&machine, "uv")["detail"].as_str().unwrap().to_owned();
    assert!(uv.contains("fetched from the controller's package cache, sha256 verified"), "{uv}");
    let stats = comfyui_get(comfyui_port(&late), "/system_stats").expect("ComfyUI answers");
    assert_eq!(stats["system"]["pytorch_version"], "2.9.0+cu128");
}

#[test]
fn a_file_tampered_with_upstream_is_refused_by_the_cache_and_by_the_agent_and_nothing_switches() {
    let fleet = Fleet::start();
    let via_cache = fleet.agent("via-cache", "rtx4090-x1-570");
    let direct = fleet.agent_with("direct", "rtx4090-x1-570", &["--no-package-cache"], None);
    fleet.apply(&fleet.spec(|_| {}));
    assert!(rollout(&fleet).contains("succeeded: 2 active"));
    let before: Vec<_> = [&via_cache, &direct].iter().map(|agent| current_target(agent).unwrap()).collect();

    // Revision 2 adds a node whose dependency is then replaced upstream: same name,
    // other bytes.
    let index = fleet.world.server.root().to_owned();
    let tampered = IndexLayout::publish(&index, &[plain_module("standin-tamper", "1.0.0")]).remove(0);
    let extra = node(&fleet, "ComfyUI-Tamper", "standin-tamper\n", "standin_tamper");
    fleet.apply(&fleet.spec(|options| options.custom_nodes.push(TestNode::new(&extra.url(), "main"))));
    let evil = WheelBuilder::new("standin-tamper", "1.0.0").file("standin_tamper/__init__.py", "import os\n");
    let evil_dir = fleet.dir.path().join("evil");
    let evil_bytes = std::fs::read(evil.write_to(&evil_dir).path).unwrap();
    let evil_sha = sha256_hex(&evil_bytes);
    fleet.world.server.replace(&tampered.url_path, evil_bytes);

    // Both machines build at once, and both failures are let through.
    let _ = fleet.cli(&[
        "rollout",
        "start",
        "render-prod",
        "--max-parallel-prepare",
        "2",
        "--failure-budget",
        "2",
        "--wait",
        "--timeout",
        "5m",
    ]);
    for (agent, through_cache) in [(&via_cache, true), (&direct, false)] {
        let id = fleet.machine_id(&agent.name);
        let machine = fleet.wait_for(&id, "the build to fail", |machine| {
            machine["report"]["phase"] == "failed" && machine["assignment"]["revision_number"] == 2
        });
        let failed = step(&machine, "torch");
        assert_eq!(failed["state"], "failed", "{machine}");
        let message = failed["detail"].as_str().unwrap();
        let upstream = format!("{}{}", fleet.base_url(), tampered.url_path);
        assert!(message.contains("standin-tamper 1.0.0"), "{message}");
        assert!(message.contains(&upstream), "{message}");
        assert!(message.contains(&tampered.wheel.sha256) && message.contains(&evil_sha), "{message}");
        if through_cache {
            assert!(message.contains("the cache refused it"), "{message}");
        }
        assert!(find_step(&machine, "requirements").is_none_or(|step| step["state"] != "done"), "{machine}");
    }
    // The cache kept nothing for that file; `current` and ComfyUI are as they were.
    let stored = fleet.controller.data_dir.join("cache/packages/files").join(&tampered.wheel.sha256);
    assert!(!Path::new(&stored).exists());
    for (agent, before) in [&via_cache, &direct].iter().zip(before) {
        assert_eq!(current_target(agent).unwrap(), before);
        let stats = comfyui_get(comfyui_port(agent), "/system_stats").expect("ComfyUI still answers");
        assert_eq!(stats["system"]["pytorch_version"], "2.9.0+cu128");
    }
    wait_until(Duration::from_secs(1), "nothing", || Some(()));
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(bytes))
}

#[test]
fn an_install_script_installs_from_the_controllers_copy_of_the_index() {
    let fleet = Fleet::start();
    let index = fleet.world.server.root().to_owned();
    let extra = IndexLayout::publish(&index, &[plain_module("standin-extra", "1.0.0")]).remove(0);
    // install.py asks uv for a package the requirement files do not name.
    let setup = GitRepo::create(
        &fleet.dir.path().join("ComfyUI-Setup"),
        &[
            ("__init__.py", &node_class("ComfyUI-Setup")),
            (
                "install.py",
                "import subprocess, sys\n\
                 subprocess.check_call(['uv', 'pip', 'install', '--python', sys.executable, 'standin-extra'])\n",
            ),
        ],
    );
    let spec = fleet.spec(|options| {
        let mut node = TestNode::new(&setup.url(), "main");
        node.extra = "install_script = true\n".to_owned();
        options.custom_nodes.push(node);
    });
    let agent = fleet.agent("rtx4090", "rtx4090-x1-570");
    fleet.apply(&spec);
    assert!(rollout(&fleet).contains("succeeded: 1 active"));
    let env = current_target(&agent).unwrap();
    let python = agent.data_dir.join(env).join("venv/bin/python");
    let version = std::process::Command::new(python)
        .args(["-c", "import standin_extra; print(standin_extra.__version__)"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&version.stdout).trim(), "1.0.0");
    // The wheel came through the controller: it fetched it (once) and kept it.
    let kept = fleet.controller.data_dir.join("cache/packages/files").join(&extra.wheel.sha256);
    assert!(kept.is_file(), "the cache has {}", extra.wheel.file_name);
    assert_eq!(fleet.world.server.count(&extra.url_path).requests, 1);
}
