//! The three checks over a workspace, each giving findings, and the verdict once the
//! exemptions are applied.

use std::collections::BTreeMap;

use crate::cycles::{Location, Reference, find_circles};
use crate::modules::{CrateModules, SourceFile};
use crate::rules::{Check, Exemption, LayeringRule, Rules};
use crate::source::PathRef;
use crate::workspace::{LoadedCrate, Workspace, is_test_file};

/// One breach of a rule, before exemptions.
#[derive(Debug, Clone)]
pub struct Finding {
    pub check: Check,
    /// The files it involves, from the workspace root; an exemption covers a finding when
    /// it covers every one of them.
    pub files: Vec<String>,
    pub message: String,
}

/// Files outside tests longer than the limit, longest first.
pub fn file_lengths(workspace: &Workspace, rules: &Rules) -> Result<Vec<Finding>, String> {
    let mut findings = Vec::new();
    for (package, file) in workspace.rust_files()? {
        let within_package = file.strip_prefix(&package.directory).unwrap_or(&file);
        if is_test_file(within_package) {
            continue;
        }
        let text = std::fs::read_to_string(&file)
            .map_err(|error| format!("cannot read {}: {error}", file.display()))?;
        let lines = text.lines().count();
        if lines > rules.max_file_lines {
            let relative = workspace.relative(&file);
            findings.push((lines, relative));
        }
    }
    findings.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    Ok(findings
        .into_iter()
        .map(|(lines, file)| Finding {
            check: Check::FileLength,
            message: format!("{file}: {lines} lines (limit {})", rules.max_file_lines),
            files: vec![file],
        })
        .collect())
}

/// Every module-to-module reference in a crate (`crate::…`, `super::…`, `self::…` and
/// child modules, in `use` and in code), resolved to the module it lands in.
pub fn references(workspace: &Workspace, modules: &CrateModules) -> Vec<Reference> {
    let mut references = Vec::new();
    for file in &modules.files {
        for path in &file.parsed.paths {
            let from = file.module_of(path);
            let Some(absolute) = modules.absolute(&from, &path.segments) else { continue };
            references.push(Reference {
                to: modules.module_named(&absolute),
                from,
                at: Location { file: workspace.relative(&file.path), line: path.line },
                text: path.segments.join("::"),
            });
        }
    }
    references
}

/// Import circles between sibling modules, per crate.
pub fn import_circles(workspace: &Workspace, crates: &[LoadedCrate]) -> Vec<Finding> {
    let mut findings = Vec::new();
    for loaded in crates {
        for circle in find_circles(&references(workspace, &loaded.modules)) {
            let mut files: Vec<String> =
                circle.edges.values().flatten().map(|reference| reference.at.file.clone()).collect();
            files.sort();
            files.dedup();
            findings.push(Finding {
                check: Check::ImportCircles,
                files,
                message: format!("{} (target {}): {circle}", loaded.package, loaded.target),
            });
        }
    }
    findings
}

/// Files that name what a layering rule keeps out of them.
pub fn layering(workspace: &Workspace, crates: &[LoadedCrate], rules: &Rules) -> Vec<Finding> {
    let mut findings = Vec::new();
    for rule in rules.layering {
        // A file compiled into several targets (a lib and its bin) is reported once.
        let mut breaches: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for loaded in crates {
            for file in &loaded.modules.files {
                let relative = workspace.relative(&file.path);
                if !rule_covers(rule, &relative) {
                    continue;
                }
                for path in &file.parsed.paths {
                    if let Some(pattern) = named_pattern(rule, &loaded.modules, file, path) {
                        let breach = format!(
                            "{relative}:{} names `{pattern}` ({})",
                            path.line,
                            path.segments.join("::")
                        );
                        breaches.entry(relative.clone()).or_default().push(breach);
                    }
                }
            }
        }
        for (file, mut lines) in breaches {
            lines.dedup();
            findings.push(Finding {
                check: Check::Layering,
                files: vec![file.clone()],
                message: format!(
                    "{}\n    rule: files under {} (except {}) may not name {}: {}",
                    lines.join("\n"),
                    rule.files_under,
                    if rule.except_under.is_empty() {
                        "none".to_owned()
                    } else {
                        rule.except_under.join(", ")
                    },
                    rule.may_not_name.join(", "),
                    rule.because
                ),
            });
        }
    }
    findings
}

fn rule_covers(rule: &LayeringRule, relative: &str) -> bool {
    relative.starts_with(rule.files_under)
        && !rule.except_under.iter().any(|except| relative.starts_with(except))
}

/// The first of the rule's patterns this path names, as written or once made absolute.
fn named_pattern(
    rule: &LayeringRule,
    modules: &CrateModules,
    file: &SourceFile,
    path: &PathRef,
) -> Option<&'static str> {
    let absolute = modules.absolute(&file.module_of(path), &path.segments).map(|absolute| {
        let mut written = vec!["crate".to_owned()];
        written.extend(absolute);
        written
    });
    rule.may_not_name.iter().copied().find(|pattern| {
        std::iter::once(&path.segments).chain(absolute.as_ref()).any(|segments| names(segments, pattern))
    })
}

/// Whether `segments` contain the pattern's segments in a row (and, for a pattern ending
/// in `::`, something after them).
fn names(segments: &[String], pattern: &str) -> bool {
    let needs_more = pattern.ends_with("::");
    let wanted: Vec<&str> = pattern.trim_end_matches("::").split("::").collect();
    let extra = usize::from(needs_more);
    segments.len() >= wanted.len() + extra
        && (0..=segments.len() - wanted.len() - extra)
            .any(|start| segments[start..start + wanted.len()].iter().zip(&wanted).all(|(a, b)| a == b))
}

/// The findings that stand once exemptions are applied, and the exemptions each check used.
#[derive(Debug, Default)]
pub struct Verdict {
    pub breaches: Vec<Finding>,
    pub exempted: Vec<(Exemption, Finding)>,
}

pub fn judge(findings: Vec<Finding>, rules: &Rules) -> Verdict {
    let mut verdict = Verdict::default();
    for finding in findings {
        let exemption = rules.exemptions.iter().find(|exemption| {
            exemption.checks.contains(&finding.check)
                && !finding.files.is_empty()
                && finding.files.iter().all(|file| covered(exemption.path, file))
        });
        match exemption {
            Some(exemption) => verdict.exempted.push((*exemption, finding)),
            None => verdict.breaches.push(finding),
        }
    }
    verdict
}

fn covered(exemption: &str, file: &str) -> bool {
    if exemption.ends_with('/') { file.starts_with(exemption) } else { file == exemption }
}

/// Exemptions (of the checks given) that exempted none of `findings`: stale, to remove.
pub fn unused_exemptions(findings: &[Finding], rules: &Rules) -> Vec<String> {
    let verdict = judge(findings.to_vec(), rules);
    let mut unused = Vec::new();
    for exemption in rules.exemptions {
        for check in exemption.checks {
            let used = verdict
                .exempted
                .iter()
                .any(|(used, finding)| used.path == exemption.path && finding.check == *check);
            if !used {
                unused.push(format!("{} from {check:?}", exemption.path));
            }
        }
    }
    unused
}

#[cfg(test)]
mod tests;
