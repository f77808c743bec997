//! Packages that exist only as source distributions. The controller locks with
//! wheels only (`uv pip compile --no-build`): building one would run the package's own
//! build backend as the controller's user. uv then fails naming each package it would
//! have had to build; apply is refused naming them, the build classes they have no
//! wheel for, and how to provide one.

use std::collections::BTreeMap;

use comfyfleet_config::lock::BuildClass;
use comfyfleet_config::spec::names::normalize_package_name;

/// Why one build class could not be locked.
#[derive(Debug)]
pub(super) enum ClassFailure {
    /// These packages have no wheel for the class (uv would have had to build them).
    SourceOnly(Vec<String>),
    Other(String),
}

impl From<String> for ClassFailure {
    fn from(problem: String) -> Self {
        Self::Other(problem)
    }
}

impl std::fmt::Display for ClassFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::SourceOnly(packages) => {
                write!(f, "{} published only as a source distribution", packages.join(", "))
            }
            Self::Other(problem) => f.write_str(problem),
        }
    }
}

/// The packages uv's error says it would have had to build: each in backticks after
/// "Wheels are required for" (no version has a wheel for the class), or "attempted
/// to build" / "source distributions for" (a direct reference).
pub(super) fn packages_named(stderr: &str) -> Vec<String> {
    const MARKERS: &[&str] =
        &["Wheels are required for `", "attempted to build `", "source distributions for `"];
    let mut names = Vec::new();
    for marker in MARKERS {
        for (at, _) in stderr.match_indices(marker) {
            let rest = &stderr[at + marker.len()..];
            if let Some(end) = rest.find('`') {
                let name = normalize_package_name(&rest[..end]);
                if !name.is_empty() && !names.contains(&name) {
                    names.push(name);
                }
            }
        }
    }
    names
}

/// Source-only packages met while locking, with the classes each has no wheel for.
#[derive(Debug, Default)]
pub(super) struct SourceOnly {
    by_package: BTreeMap<String, Vec<String>>,
}

impl SourceOnly {
    pub(super) fn add(&mut self, packages: &[String], class: &BuildClass) {
        for package in packages {
            self.by_package.entry(package.clone()).or_default().push(class.to_string());
        }
    }

    /// One refusal per package: what it is, why the controller will not build it,
    /// and how to provide a wheel.
    pub(super) fn refusals(&self) -> Vec<String> {
        self.by_package
            .iter()
            .map(|(package, classes)| {
                format!(
                    "{package} is published only as a source distribution on the spec's indexes (no wheel \
                     for {}), and the controller never builds a package: building runs the package's own \
                     code, as the controller's user. Provide a wheel: build one on a build machine (`uv \
                     build --wheel`, or `pip wheel --no-deps {package}==VERSION`) for each of those classes \
                     and host it on the spec's index or an `index.extra` index, or require a version of \
                     {package} that publishes wheels",
                    classes.join(", ")
                )
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_source_only_package_is_named_once_with_every_class_it_blocks() {
        let stderr = concat!(
            "error: No solution found when resolving dependencies\n",
            "  cause: Because evil-pkg==1.0 has no usable wheels and only evil-pkg==1.0 is available, we ",
            "can conclude that all versions of evil-pkg cannot be used.\n\n",
            "hint: Wheels are required for `Evil_Pkg` because building from source is disabled for all ",
            "packages (i.e., with `--no-build`)\n",
        );
        assert_eq!(packages_named(stderr), vec!["evil-pkg".to_owned()]);
        assert!(packages_named("error: No solution found: foo>=9 is not available").is_empty());

        let mut source_only = SourceOnly::default();
        for class in ["cp312-cu128-linux_x86_64", "cp312-cu126-linux_x86_64"] {
            source_only.add(&packages_named(stderr), &BuildClass::parse(class).unwrap());
        }
        let refusals = source_only.refusals();
        assert_eq!(refusals.len(), 1, "{refusals:?}");
        assert!(
            refusals[0].starts_with(
                "evil-pkg is published only as a source distribution on the spec's indexes (no wheel for \
                 cp312-cu128-linux_x86_64, cp312-cu126-linux_x86_64)"
            ),
            "{}",
            refusals[0]
        );
        assert!(refusals[0].contains("host it on the spec's index"));
    }
}
