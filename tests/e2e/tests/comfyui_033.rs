//! ComfyUI 0.33 with real binaries: the checkout decides what it needs (the real
//! 0.33.0 tree's `pyproject.toml` refuses Python 3.9 and its `comfy/cli_args.py`
//! refuses `--normalvram`, at apply), `plan` says per machine where comfy-kitchen's
//! CUDA ops are off (a torch build older than cu130) and warns about a manager that
//! will refuse installs beyond loopback; and ComfyUI-Manager is a package: its
//! `manager_requirements.txt` is locked and installed only when the spec runs the
//! manager, and the health check confirms the manager really serves.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test helpers fail loudly by design

use std::path::Path;
use std::time::Duration;

use comfyfleet_e2e::git::GitRepo;
use comfyfleet_e2e::provision::{Fleet, current_target, step};
use comfyfleet_e2e::real_comfyui::{COMFYUI_0_3_64, COMFYUI_0_33_0, real_comfyui};
use comfyfleet_e2e::standin::system_python;
use comfyfleet_e2e::wait_until;

/// A spec of ComfyUI `repo` at `tag` with nothing else to it: torch `torch` from the
/// stand-in index, no optimisation, no custom node.
fn bare_spec(fleet: &Fleet, repo: &GitRepo, tag: &str, python: &str, torch: &str, run: &str) -> String {
    let base = fleet.base_url();
    format!(
        r#"name = "render-prod"
python = "{python}"

[comfyui]
git = "{git}"
ref = "{tag}"

[torch]
version = "{torch}"
cuda = {cuda}
index = "{base}/whl/{{cuda}}"

[index]
url = "{base}/simple"
trusted_hosts = ["127.0.0.1"]

[run]
{run}
"#,
        git = repo.url(),
        cuda = if torch == "2.8.0" { r#"["cu128"]"# } else { r#"["cu130", "cu128"]"# },
    )
}

fn apply_refused(fleet: &Fleet, spec: &str) -> String {
    let path = fleet.dir.path().join("refused.toml");
    std::fs::write(&path, spec).unwrap();
    fleet.cli(&["apply", "-f", path.to_str().unwrap()]).failure()
}

#[test]
fn the_real_0_33_checkout_refuses_python_3_9_and_normalvram_at_apply() {
    let fleet = Fleet::start();
    let new = real_comfyui(fleet.dir.path(), COMFYUI_0_33_0);
    let old = real_comfyui(fleet.dir.path(), COMFYUI_0_3_64);
    let python = system_python().version.clone();
    let spec = |repo: &GitRepo, tag: &str, python: &str, args: &str| {
        bare_spec(&fleet, repo, tag, python, "2.8.0", &format!("args = [{args}]"))
    };

    let refused = apply_refused(&fleet, &spec(&new, "v0.33.0", "3.9", ""));
    let pinned = format!("render-prod cannot run on ComfyUI {}:", &new.head()[..12]);
    assert!(refused.contains(&pinned), "{refused}");
    assert!(
        refused.contains("python = \"3.9\", but this ComfyUI commit requires Python >=3.10"),
        "{refused}"
    );
    assert!(!refused.contains("--normalvram"), "{refused}");

    let refused = apply_refused(&fleet, &spec(&new, "v0.33.0", &python, "\"--normalvram\""));
    assert!(
        refused.contains("run.args: `--normalvram` is not an option of this ComfyUI commit"),
        "{refused}"
    );
    assert!(!refused.contains("requires Python"), "{refused}");
    // An option the checkout declares passes the check (and fails nothing here).
    let refused = apply_refused(&fleet, &spec(&new, "v0.33.0", "3.9", "\"--highvram\", \"--normalvram\""));
    assert!(refused.contains("requires Python >=3.10") && refused.contains("`--normalvram`"), "{refused}");
    assert!(!refused.contains("`--highvram`"), "{refused}");

    // 0.3.64 still has --normalvram and takes Python 3.9: its checkout refuses
    // neither, and apply goes on to lock it (which its pins fail on the stand-in index).
    let refused = apply_refused(&fleet, &spec(&old, "v0.3.64", &python, "\"--normalvram\""));
    assert!(refused.contains("cannot lock"), "{refused}");
    assert!(!refused.contains("cannot run on ComfyUI") && !refused.contains("not an option"), "{refused}");
}

#[test]
fn plan_says_where_comfy_kitchen_cuda_ops_are_off_and_warns_about_the_manager_beyond_loopback() {
    let fleet = Fleet::start();
    let _ada = fleet.agent("ada", "rtx4090-x1-570");
    let _hopper = fleet.agent("hopper", "h100-x8-580");
    let ada = fleet.machine_id("ada");
    let hopper = fleet.machine_id("hopper");
    for id in [&ada, &hopper] {
        fleet.wait_for(id, "its inventory", |machine| {
            machine["gpus"].as_array().is_some_and(|gpus| !gpus.is_empty())
        });
    }
    let new = real_comfyui(fleet.dir.path(), COMFYUI_0_33_0);
    let old = real_comfyui(fleet.dir.path(), COMFYUI_0_3_64);
    let spec = |repo: &GitRepo, tag: &str, run: &str| {
        bare_spec(
            &fleet,
            repo,
            tag,
            &system_python().version,
            "2.11.0",
            &format!("args = [\"--listen\", \"0.0.0.0\"]\n{run}"),
        )
    };
    let plan = |text: &str, output: &str| {
        let path = fleet.dir.path().join("plan.toml");
        std::fs::write(&path, text).unwrap();
        fleet.cli(&["plan", "-f", path.to_str().unwrap(), "-o", output]).success()
    };

    let table = plan(&spec(&new, "v0.33.0", "manager = \"on\"\n"), "table");
    let row = |id: &str| table.lines().find(|line| line.starts_with(id)).unwrap_or_else(|| panic!("{table}"));
    assert!(row(&ada).contains("comfy-kitchen CUDA ops off: torch 2.11.0+cu128"), "{table}");
    assert!(row(&hopper).contains("2.11.0+cu130") && !row(&hopper).contains("comfy-kitchen"), "{table}");
    assert!(
        table.contains("warning: run.manager = \"on\" with --listen 0.0.0.0 (not loopback)")
            && table.contains("network_mode is \"personal_cloud\""),
        "{table}"
    );
    let json: serde_json::Value = serde_json::from_str(&plan(&spec(&new, "v0.33.0", ""), "json")).unwrap();
    let notes = |id: &str| {
        json["machines"].as_array().unwrap().iter().find(|m| m["machine"] == id).unwrap()["notes"].clone()
    };
    assert_eq!(notes(&ada), serde_json::json!(["comfy-kitchen CUDA ops off: torch 2.11.0+cu128"]), "{json}");
    assert!(notes(&hopper).is_null(), "{json}");
    assert!(json["warnings"].is_null(), "read-only and off warn of nothing: {json}");

    // 0.3.64 has no comfy-kitchen: no note.
    let table = plan(&spec(&old, "v0.3.64", "manager = \"read-only\"\n"), "table");
    assert!(!table.contains("comfy-kitchen") && !table.contains("warning"), "{table}");
}

/// Whether the venv of the environment `current` points at has the manager package.
fn has_manager_package(env: &Path) -> bool {
    std::fs::read_dir(env.join("venv/lib"))
        .unwrap()
        .flatten()
        .any(|python| python.path().join("site-packages/comfyui_manager/__init__.py").exists())
}

/// "locked cp311-cu128-linux_x86_64: 61 packages" → 61.
fn locked_packages(applied: &str) -> usize {
    let line = applied.lines().find(|line| line.trim_start().starts_with("locked ")).unwrap();
    line.rsplit(": ").next().unwrap().trim_end_matches(" packages").parse().unwrap()
}

#[test]
fn the_manager_package_is_locked_installed_and_confirmed_only_when_the_manager_runs() {
    let fleet = Fleet::start();
    let agent = fleet.agent("rtx4090", "rtx4090-x1-570");
    let id = fleet.machine_id("rtx4090");
    let comfyui = &fleet.world.repos.comfyui;
    let release = comfyui.commit_version_0_33();
    let spec = |commit: &str, manager: &str| {
        fleet.spec(|options| {
            options.comfyui_ref = commit.to_owned();
            options.cuda = vec!["cu128".to_owned()];
            options.run_extra = format!("manager = \"{manager}\"\n");
        })
    };
    let rollout = |should_work: bool| {
        let run = fleet.cli(&["rollout", "start", "render-prod", "--wait", "--timeout", "3m"]);
        if should_work { run.success() } else { run.failure() }
    };

    // Off: no manager package in the lock or the venv, and nothing to confirm.
    let off = locked_packages(&fleet.apply(&spec(&release, "off")));
    rollout(true);
    let machine = fleet.show(&id);
    let health = step(&machine, "health")["detail"].as_str().unwrap().to_owned();
    assert!(!health.contains("ComfyUI-Manager"), "{health}");
    assert!(!has_manager_package(&agent.data_dir.join(current_target(&agent).unwrap())));
    // The convergence report records that comfy-kitchen runs without its CUDA ops.
    let requirements = step(&machine, "requirements")["detail"].as_str().unwrap().to_owned();
    assert!(requirements.contains("comfy-kitchen CUDA ops off: torch 2.9.0+cu128"), "{requirements}");

    // A checkout whose manager_requirements.txt names nothing: ComfyUI warns and runs
    // without the manager, and the health check fails the switch, saying why.
    let without =
        comfyui.repo.commit(&[("manager_requirements.txt", "# no manager package\n")], "No manager package");
    fleet.apply(&spec(&without, "read-only"));
    rollout(false);
    let machine = wait_until(Duration::from_secs(60), "the machine to be back on revision 1", || {
        let machine = fleet.show(&id);
        (machine["assignment"]["reason"] == "rollback" && machine["report"]["phase"] == "active")
            .then_some(machine)
    });
    let status: serde_json::Value =
        serde_json::from_str(&fleet.cli(&["rollout", "status", "render-prod", "-o", "json"]).success())
            .unwrap();
    let detail = status["machines"][0]["detail"].as_str().unwrap();
    assert!(detail.contains("ComfyUI-Manager did not load (/v2/manager/version: status 404"), "{detail}");
    assert!(detail.contains("comfyui-manager package is not installed"), "{detail}");
    assert!(machine["report"]["phase"] == "active");

    // Read-only: the package is locked and installed, and the manager serves.
    let read_only = locked_packages(&fleet.apply(&spec(&release, "read-only")));
    assert_eq!(read_only, off + 1, "the lock has comfyui-manager only when the manager runs");
    rollout(true);
    let machine = fleet.show(&id);
    let health = step(&machine, "health")["detail"].as_str().unwrap().to_owned();
    assert!(health.contains("ComfyUI-Manager 4.2.2 serves /v2/manager/version"), "{health}");
    assert!(has_manager_package(&agent.data_dir.join(current_target(&agent).unwrap())));
    let log = std::fs::read_to_string(agent.data_dir.join("logs/comfyui.log")).unwrap();
    assert!(log.contains("[START] ComfyUI-Manager"), "{log}");
    let config = agent.data_dir.join("shared/user/__manager/config.ini");
    assert!(std::fs::read_to_string(&config).unwrap().contains("security_level = strong"));

    // On, listening beyond loopback: apply says the manager will refuse installs.
    let on = spec(&release, "on").replacen("args = []", "args = [\"--listen\", \"0.0.0.0\"]", 1);
    let applied = fleet.apply(&on);
    assert!(
        applied.contains("warning: run.manager = \"on\" with --listen 0.0.0.0 (not loopback): ComfyUI-Manager refuses installs"),
        "{applied}"
    );
    assert!(!fleet.apply(&spec(&release, "on")).contains("warning"), "loopback: no warning");
}
