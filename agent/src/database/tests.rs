use super::*;
use crate::comfyui::ComfyuiFacts;

/// A complete record of revision `n` (id `n` repeated) whose ComfyUI knows `migrations`.
fn record(n: char, migrations: &[&str]) -> CompleteRecord {
    let plan = serde_json::json!({
        "python": "3.11", "python_tag": "cp311", "cuda_tag": "cu128", "torch": "2.9.0+cu128",
        "torch_index": "http://127.0.0.1/whl/cu128", "packages": [], "optimizations": [], "comfyui_args": []
    });
    serde_json::from_value(serde_json::json!({
        "revision_id": n.to_string().repeat(64),
        "environment": "render-prod",
        "revision_number": n.to_digit(16).unwrap(),
        "plan": plan,
        "comfyui_commit": "c".repeat(40),
        "custom_nodes": [],
        "python_version": "3.11.7",
        "torch": {"version": "2.9.0+cu128", "cuda": "12.8", "arch_list": []},
        "optimizations": [],
        "distributions": {},
        "steps": [],
        "comfyui_args": [],
        "port": 8188,
        "drain_timeout_ms": 1000,
        "health_timeout_ms": 1000,
        "completed_at": "2026-12-06T00:00:00Z",
        "comfyui": {"database_url": true, "migrations": migrations},
    }))
    .unwrap()
}

struct Machine {
    _dir: tempfile::TempDir,
    layout: Layout,
}

impl Machine {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::new(dir.path());
        layout.create().unwrap();
        Self { _dir: dir, layout }
    }

    /// `record`'s ComfyUI runs (its environment exists) and writes `content`.
    fn run(
        &self,
        record: &CompleteRecord,
        running: Option<&CompleteRecord>,
        content: &str,
    ) -> Option<String> {
        std::fs::create_dir_all(self.layout.env(&record.revision_id).path).unwrap();
        let note = prepare_for(&self.layout, record, running).unwrap();
        std::fs::write(live(&self.layout), content).unwrap();
        note
    }

    fn live(&self) -> String {
        std::fs::read_to_string(live(&self.layout)).unwrap_or_default()
    }
}

#[test]
fn a_rollback_starts_on_the_database_its_schema_knows() {
    let machine = Machine::new();
    let (one, two) = (record('1', &["a"]), record('2', &["a", "b"]));
    assert_eq!(machine.run(&one, None, "one's data"), None);
    // Revision 2 migrates forward: it starts on what 1 left.
    assert_eq!(machine.run(&two, Some(&one), "two migrated one's data"), None);
    // Back to 1: its own snapshot, the newer database kept.
    let note = prepare_for(&machine.layout, &one, Some(&two)).unwrap().unwrap();
    assert!(note.contains("restored from the snapshot taken when render-prod@1 was left"), "{note}");
    assert!(note.contains("render-prod@2 had moved it to a newer schema"), "{note}");
    assert_eq!(machine.live(), "one's data");
    let kept = snapshots(&machine.layout).join(format!("{}.db", "2".repeat(16)));
    assert_eq!(std::fs::read_to_string(kept).unwrap(), "two migrated one's data");
}

#[test]
fn going_forward_again_migrates_what_is_there() {
    let machine = Machine::new();
    let (one, two) = (record('1', &["a"]), record('2', &["a", "b"]));
    machine.run(&one, None, "v1");
    machine.run(&two, Some(&one), "v2");
    prepare_for(&machine.layout, &one, Some(&two)).unwrap();
    std::fs::write(live(&machine.layout), "v1 written after the rollback").unwrap();
    // Revision 2 can read revision 1's schema: nothing is restored, nothing written since lost.
    assert_eq!(prepare_for(&machine.layout, &two, Some(&one)).unwrap(), None);
    assert_eq!(machine.live(), "v1 written after the rollback");
}

#[test]
fn an_undo_over_two_revisions_finds_the_snapshot_it_can_read() {
    let machine = Machine::new();
    let (one, two, three) = (record('1', &["a"]), record('2', &["a", "b"]), record('3', &["a", "b", "c"]));
    machine.run(&one, None, "one");
    machine.run(&two, Some(&one), "two");
    machine.run(&three, Some(&two), "three");
    let note = prepare_for(&machine.layout, &one, Some(&three)).unwrap().unwrap();
    assert!(note.contains("render-prod@1 was left"), "{note}");
    assert_eq!(machine.live(), "one");
    // No snapshot an older schema can read: a new database, the newer one kept.
    let zero = record('4', &[]);
    let zero =
        CompleteRecord { comfyui: ComfyuiFacts { migrations: vec!["z".into()], ..zero.comfyui }, ..zero };
    let note = prepare_for(&machine.layout, &zero, Some(&one)).unwrap().unwrap();
    assert!(note.contains("starts with a new one"), "{note}");
    assert!(!live(&machine.layout).exists());
}

#[test]
fn a_database_left_in_the_checkout_moves_out_and_old_comfyuis_are_left_alone() {
    let machine = Machine::new();
    let (one, two) = (record('1', &["a"]), record('2', &["a"]));
    let inside = machine.layout.env(&one.revision_id).comfyui().join("user/comfyui.db");
    std::fs::create_dir_all(inside.parent().unwrap()).unwrap();
    std::fs::write(&inside, "kept by an older agent").unwrap();
    std::fs::create_dir_all(machine.layout.env(&two.revision_id).path).unwrap();
    let note = prepare_for(&machine.layout, &two, Some(&one)).unwrap().unwrap();
    assert!(note.contains("moved out of render-prod@1's checkout"), "{note}");
    assert_eq!(machine.live(), "kept by an older agent");
    let old = CompleteRecord { comfyui: ComfyuiFacts::default(), ..record('3', &[]) };
    assert_eq!(
        prepare_for(&machine.layout, &old, Some(&two)).unwrap(),
        None,
        "no --database-url: nothing to do"
    );
}
