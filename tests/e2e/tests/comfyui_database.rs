//! ComfyUI's database across switches and rollbacks, with a real agent: it lives
//! under shared/ rather than in each checkout, a newer ComfyUI migrates it forward,
//! and `machines rollback` starts the older ComfyUI on the snapshot it had (an older
//! ComfyUI cannot open a newer schema: it would log "Failed to initialize database").

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test helpers fail loudly by design

use std::path::Path;

use comfyfleet_e2e::Agent;
use comfyfleet_e2e::provision::{Fleet, comfyui_get, comfyui_port, step};
use comfyfleet_e2e::standin::repos::{FIRST_MIGRATION, SECOND_MIGRATION};
use comfyfleet_e2e::standin::system_python;

/// `sql` against the machine's live ComfyUI database, with python3's sqlite3.
fn query(database: &Path, sql: &str) -> String {
    let script = format!(
        "import sqlite3, json; c = sqlite3.connect({:?}); print(json.dumps(c.execute({sql:?}).fetchall())); c.commit()",
        database.display().to_string()
    );
    let output =
        std::process::Command::new(&system_python().executable).args(["-c", &script]).output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

fn this_start(agent: &Agent) -> String {
    let log = std::fs::read_to_string(agent.data_dir.join("logs/comfyui.log")).unwrap();
    log[log.rfind("=== comfyfleet: starting ComfyUI").unwrap()..].to_owned()
}

#[test]
fn a_rollback_starts_the_older_comfyui_on_the_database_snapshot_it_had() {
    let fleet = Fleet::start();
    let agent = fleet.agent("rtx4090", "rtx4090-x1-570");
    let id = fleet.machine_id("rtx4090");
    let database = agent.data_dir.join("shared/database/comfyui.db");

    // Revision 1: ComfyUI's database is under shared/, at the first migration.
    fleet.apply(&fleet.spec(|options| options.cuda = vec!["cu128".to_owned()]));
    fleet.cli(&["rollout", "start", "render-prod", "--wait", "--timeout", "3m"]).success();
    assert_eq!(
        query(&database, "select version_num from alembic_version"),
        format!("[[\"{FIRST_MIGRATION}\"]]")
    );
    let argv = comfyui_get(comfyui_port(&agent), "/system_stats").unwrap()["system"]["argv"].to_string();
    assert!(argv.contains(&format!("sqlite:///{}", database.display())), "{argv}");
    query(&database, "insert into model (path) values ('checkpoints/written-under-revision-1.safetensors')");

    // Revision 2's ComfyUI migrates it forward, keeping what revision 1 wrote.
    fleet.world.repos.comfyui.commit_database_migration();
    fleet.apply(&fleet.spec(|options| {
        options.cuda = vec!["cu128".to_owned()];
        options.comfyui_ref = "main".to_owned();
    }));
    fleet.cli(&["rollout", "start", "render-prod", "--wait", "--timeout", "3m"]).success();
    assert_eq!(
        query(&database, "select version_num from alembic_version"),
        format!("[[\"{SECOND_MIGRATION}\"]]")
    );
    assert!(
        this_start(&agent)
            .contains(&format!("Database upgraded from {FIRST_MIGRATION} to {SECOND_MIGRATION}"))
    );
    assert!(query(&database, "select path, hash from model").contains("written-under-revision-1"));
    query(&database, "update model set hash = 'written-under-revision-2'");

    // Back to revision 1: it starts on the snapshot taken when it was left, and can
    // open it; revision 2's database is kept.
    fleet.cli(&["machines", "rollback", &id, "--wait", "--timeout", "1m"]).success();
    let machine = fleet.show(&id);
    assert_eq!(
        (machine["report"]["phase"].as_str(), machine["assignment"]["revision_number"].as_u64()),
        (Some("active"), Some(1))
    );
    assert_eq!(
        query(&database, "select version_num from alembic_version"),
        format!("[[\"{FIRST_MIGRATION}\"]]")
    );
    assert_eq!(
        query(&database, "select path from model"),
        "[[\"checkpoints/written-under-revision-1.safetensors\"]]"
    );
    let start = step(&machine, "start")["detail"].as_str().unwrap().to_owned();
    assert!(
        start.contains("ComfyUI's database restored from the snapshot taken when render-prod@1 was left"),
        "{start}"
    );
    assert!(start.contains("render-prod@2 had moved it to a newer schema"), "{start}");
    let log = this_start(&agent);
    assert!(!log.contains("Failed to initialize database"), "{log}");
    let revision_two = machine["environments"]["installed"]
        .as_array()
        .unwrap()
        .iter()
        .find(|environment| environment["revision_number"] == 2)
        .unwrap()["revision_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let kept = agent.data_dir.join(format!("shared/database/snapshots/{}.db", &revision_two[..16]));
    assert!(
        query(&kept, "select hash from model").contains("written-under-revision-2"),
        "revision 2's data is kept"
    );
}
