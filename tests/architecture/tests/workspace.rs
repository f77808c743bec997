//! The workspace keeps its shape: run with `cargo test -p comfyfleet-architecture`.
//! The rules and the exemptions left are in `tests/architecture/src/rules.rs`.
#![allow(clippy::panic)] // test helpers fail loudly by design

use std::path::Path;

use comfyfleet_architecture::checks::{
    Finding, file_lengths, import_circles, judge, layering, unused_exemptions,
};
use comfyfleet_architecture::rules::WORKSPACE;
use comfyfleet_architecture::workspace::{LoadedCrate, Workspace};

fn workspace() -> (Workspace, Vec<LoadedCrate>) {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../Cargo.toml");
    let workspace = Workspace::from_cargo_metadata(&manifest).unwrap_or_else(|error| panic!("{error}"));
    assert!(
        workspace.packages.iter().any(|p| p.name == "comfyfleet-agent"),
        "cargo metadata found no comfyfleet-agent: is {} the workspace?",
        manifest.display()
    );
    let crates = workspace.load_crates().unwrap_or_else(|error| panic!("{error}"));
    (workspace, crates)
}

fn report(findings: Vec<Finding>, what: &str, fix: &str) {
    let verdict = judge(findings, &WORKSPACE);
    if verdict.breaches.is_empty() {
        return;
    }
    let listed: Vec<String> =
        verdict.breaches.iter().map(|f| format!("  {}", f.message.trim_end())).collect();
    panic!("{} {what}:\n{}\n\n{fix}\n", verdict.breaches.len(), listed.join("\n"));
}

#[test]
fn no_file_outside_tests_is_over_600_lines() {
    let (workspace, _) = workspace();
    let findings = file_lengths(&workspace, &WORKSPACE).unwrap_or_else(|error| panic!("{error}"));
    report(
        findings,
        &format!("files outside tests are over {} lines", WORKSPACE.max_file_lines),
        "Split each into modules by concern, one concern per file (STYLE.md, habit 2). Tests do \
         not count: files under a crate's tests/ folder, files named tests.rs and files under a \
         tests/ folder in src/ (move a long #[cfg(test)] mod tests {} into tests.rs).",
    );
}

#[test]
fn no_import_circle_between_the_modules_of_a_crate() {
    let (workspace, crates) = workspace();
    report(
        import_circles(&workspace, &crates),
        "import circles between modules",
        "Break each circle: move the item both sides use into the module that owns it, or into \
         a small module both import, so that imports run one way. A `pub use` re-export does not \
         hide a circle: it is followed to where the item lives.",
    );
}

#[test]
fn no_file_names_what_a_layering_rule_keeps_out_of_it() {
    let (workspace, crates) = workspace();
    report(
        layering(&workspace, &crates, &WORKSPACE),
        "files name what their layer may not",
        "Convert at the edge and pass domain types and typed errors inward; see the rule's reason.",
    );
}

#[test]
fn every_exemption_still_exempts_something() {
    let (workspace, crates) = workspace();
    let mut findings = file_lengths(&workspace, &WORKSPACE).unwrap_or_else(|error| panic!("{error}"));
    findings.extend(import_circles(&workspace, &crates));
    findings.extend(layering(&workspace, &crates, &WORKSPACE));
    let unused = unused_exemptions(&findings, &WORKSPACE);
    assert!(
        unused.is_empty(),
        "these exemptions no longer exempt anything: remove them from EXEMPTIONS in \
         tests/architecture/src/rules.rs (the rule now holds there):\n  {}",
        unused.join("\n  ")
    );
    // The checks must see the workspace, or they would pass on nothing.
    assert!(crates.iter().any(|c| c.modules.files.len() > 10), "no crate with more than 10 files was read");
}
