//! Each check run over a small fake workspace, to show it fails when it should.

use std::path::{Path, PathBuf};

use super::*;
use crate::workspace::{Package, Target};

struct FakeWorkspace {
    _dir: tempfile::TempDir,
    workspace: Workspace,
}

fn write(root: &Path, relative: &str, text: &str) {
    let path = root.join(relative);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

fn lines(count: usize) -> String {
    "fn f() {}\n".repeat(count)
}

/// One package `shop` in `shop/`, a library with `orders` and `billing` that import each
/// other, a long file, and long tests that do not count.
fn fake_workspace() -> FakeWorkspace {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    write(
        root,
        "shop/src/lib.rs",
        "mod orders;\nmod billing;\nmod long;\nmod wire;\n#[cfg(test)]\nmod tests;\n",
    );
    write(
        root,
        "shop/src/orders.rs",
        "// use crate::wire;\nuse crate::billing::Invoice;\npub struct Order;\n",
    );
    write(root, "shop/src/billing.rs", "pub struct Invoice;\n\nfn total() {\n    super::orders::Order;\n}\n");
    write(root, "shop/src/long.rs", &lines(601));
    write(root, "shop/src/wire.rs", "use tonic::{Code, Status};\nfn f() -> pb::Machine { let pb = 1; }\n");
    write(root, "shop/src/tests.rs", &lines(700));
    write(root, "shop/tests/everything.rs", &lines(700));
    write(root, "shop/target/debug/build/out.rs", &lines(700));
    let package = Package {
        name: "shop".to_owned(),
        directory: root.join("shop"),
        targets: vec![Target {
            name: "shop".to_owned(),
            kinds: vec!["lib".to_owned()],
            root: root.join("shop/src/lib.rs"),
        }],
    };
    let workspace = Workspace { root: PathBuf::from(root), packages: vec![package] };
    FakeWorkspace { _dir: dir, workspace }
}

const NO_EXEMPTIONS: Rules = Rules { max_file_lines: 600, layering: &[], exemptions: &[] };

#[test]
fn a_long_file_outside_tests_is_found_with_its_length() {
    let fake = fake_workspace();
    let findings = file_lengths(&fake.workspace, &NO_EXEMPTIONS).unwrap();
    let messages: Vec<&str> = findings.iter().map(|f| f.message.as_str()).collect();
    assert_eq!(messages, ["shop/src/long.rs: 601 lines (limit 600)"]);
}

#[test]
fn a_file_at_the_limit_passes() {
    let fake = fake_workspace();
    write(&fake.workspace.root, "shop/src/long.rs", &lines(600));
    assert!(file_lengths(&fake.workspace, &NO_EXEMPTIONS).unwrap().is_empty());
}

#[test]
fn an_import_circle_is_found_with_the_line_of_each_import() {
    let fake = fake_workspace();
    let crates = fake.workspace.load_crates().unwrap();
    let findings = import_circles(&fake.workspace, &crates);
    assert_eq!(findings.len(), 1, "{findings:?}");
    let message = &findings[0].message;
    assert!(message.contains("import circle between billing, orders"), "{message}");
    assert!(
        message.contains("billing -> orders   at shop/src/billing.rs:4 (super::orders::Order)"),
        "{message}"
    );
    assert!(
        message.contains("orders -> billing   at shop/src/orders.rs:2 (crate::billing::Invoice)"),
        "{message}"
    );
    assert_eq!(findings[0].files, ["shop/src/billing.rs", "shop/src/orders.rs"]);
}

#[test]
fn a_circle_through_a_reexport_is_still_a_circle() {
    let fake = fake_workspace();
    let root = &fake.workspace.root;
    // billing now reaches orders only through a name the crate root re-exports.
    write(root, "shop/src/lib.rs", "mod orders;\nmod billing;\npub use orders::Order;\n");
    write(root, "shop/src/billing.rs", "pub struct Invoice;\nfn total() { crate::Order; }\n");
    let crates = fake.workspace.load_crates().unwrap();
    let findings = import_circles(&fake.workspace, &crates);
    assert_eq!(findings.len(), 1, "{findings:?}");
    assert!(findings[0].message.contains("billing -> orders   at shop/src/billing.rs:2 (crate::Order)"));
}

#[test]
fn moving_the_shared_piece_breaks_the_circle() {
    let fake = fake_workspace();
    write(&fake.workspace.root, "shop/src/billing.rs", "pub struct Invoice;\n");
    let crates = fake.workspace.load_crates().unwrap();
    assert!(import_circles(&fake.workspace, &crates).is_empty());
}

#[test]
fn a_layering_rule_finds_the_names_it_keeps_out() {
    const RULES: Rules = Rules {
        max_file_lines: 600,
        layering: &[LayeringRule {
            files_under: "shop/src/",
            except_under: &["shop/src/billing.rs"],
            may_not_name: &["pb::", "tonic::Status", "crate::wire"],
            because: "only the edge speaks the wire",
        }],
        exemptions: &[],
    };
    let fake = fake_workspace();
    let crates = fake.workspace.load_crates().unwrap();
    let findings = layering(&fake.workspace, &crates, &RULES);
    let messages: Vec<&str> = findings.iter().map(|f| f.message.as_str()).collect();
    assert_eq!(messages.len(), 1, "{messages:?}");
    // The comment in orders.rs and the variable `pb` are not names of the wire.
    assert!(messages[0].starts_with(
        "shop/src/wire.rs:1 names `tonic::Status` (tonic::Status)\nshop/src/wire.rs:2 names `pb::` (pb::Machine)\n"
    ), "{}", messages[0]);
    assert!(messages[0].contains("only the edge speaks the wire"));

    write(&fake.workspace.root, "shop/src/orders.rs", "fn f() { super::wire::g(); }\n");
    let crates = fake.workspace.load_crates().unwrap();
    let findings = layering(&fake.workspace, &crates, &RULES);
    assert!(findings.iter().any(|f| f.message.contains("orders.rs:1 names `crate::wire`")), "{findings:?}");
}

#[test]
fn exemptions_lift_findings_and_unused_ones_are_named() {
    const RULES: Rules = Rules {
        max_file_lines: 600,
        layering: &[],
        exemptions: &[
            Exemption { path: "shop/src/long.rs", checks: &[Check::FileLength], why: "test" },
            Exemption { path: "shop/", checks: &[Check::ImportCircles], why: "test" },
            Exemption { path: "gone/", checks: &[Check::FileLength], why: "test" },
        ],
    };
    let fake = fake_workspace();
    let crates = fake.workspace.load_crates().unwrap();
    let mut findings = file_lengths(&fake.workspace, &RULES).unwrap();
    findings.extend(import_circles(&fake.workspace, &crates));
    let verdict = judge(findings.clone(), &RULES);
    assert!(verdict.breaches.is_empty(), "{:?}", verdict.breaches);
    assert_eq!(verdict.exempted.len(), 2);
    assert_eq!(unused_exemptions(&findings, &RULES), ["gone/ from FileLength"]);

    let without = judge(findings, &NO_EXEMPTIONS);
    assert_eq!(without.breaches.len(), 2);
}
