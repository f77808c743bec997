//! Reading a requirements file (ComfyUI's) well enough to give every line a
//! stand-in wheel at a version its specifier accepts. The fixture follows the file:
//! a requirement added upstream gets a stand-in without touching this code.

use std::str::FromStr;

use pep440_rs::{Operator, Version, VersionSpecifiers};

/// One requirement line: the project and the version a stand-in should have.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StandinRequirement {
    /// As written (`Pillow`, `comfyui-frontend-package`).
    pub name: String,
    pub version: String,
}

/// Every requirement of `text`, comments, blank lines and options (`-r`, `--index-url`)
/// skipped.
pub fn parse_requirements(text: &str) -> Vec<StandinRequirement> {
    text.lines()
        .map(|line| line.split('#').next().unwrap_or_default().trim())
        .filter(|line| !line.is_empty() && !line.starts_with('-'))
        .map(|line| {
            let requirement = line.split(';').next().unwrap_or_default().trim();
            let name_end = requirement
                .find(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
                .unwrap_or(requirement.len());
            let name = &requirement[..name_end];
            let rest = requirement[name_end..].trim();
            // Extras (`name[extra]`) need no stand-in of their own.
            let specifiers = match rest.strip_prefix('[') {
                Some(after) => after.split_once(']').map_or("", |(_, specifiers)| specifiers).trim(),
                None => rest,
            };
            StandinRequirement { name: name.to_owned(), version: satisfying_version(name, specifiers) }
        })
        .collect()
}

/// A version `specifiers` accepts: the pinned one for `==`, the lower bound for
/// `>=` and `~=`, just above it for `>`, `1.0.0` when unconstrained.
fn satisfying_version(name: &str, specifiers: &str) -> String {
    let parsed = VersionSpecifiers::from_str(specifiers)
        .unwrap_or_else(|e| panic!("requirement {name}{specifiers}: cannot parse the specifier: {e}"));
    let mut candidates: Vec<Version> = Vec::new();
    for specifier in parsed.iter() {
        let version = specifier.version().clone();
        match specifier.operator() {
            Operator::Equal | Operator::ExactEqual | Operator::GreaterThanEqual | Operator::TildeEqual => {
                candidates.insert(0, version);
            }
            Operator::GreaterThan => {
                let mut release = version.release().to_vec();
                release.push(1);
                candidates.push(Version::new(release));
            }
            _ => {}
        }
    }
    candidates.extend(["1.0.0", "0.1.0", "0.0.1"].map(|text| Version::from_str(text).unwrap()));
    candidates
        .into_iter()
        .find(|candidate| parsed.contains(candidate))
        .unwrap_or_else(|| {
            panic!("requirement {name}{specifiers}: no stand-in version fits; extend the fixture")
        })
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_specifier_gets_a_version_it_accepts() {
        let parsed = parse_requirements(
            "# a comment\ncomfyui-frontend-package==1.45.15\nnumpy>=1.25.0\neinops\n\npydantic~=2.0\n\
             av>=16.0.0 # trailing\nfoo>2.1,<3 ; sys_platform == 'linux'\nbar[extra]<0.5\n-r other.txt\n",
        );
        let versions: Vec<(&str, &str)> = parsed
            .iter()
            .map(|requirement| (requirement.name.as_str(), requirement.version.as_str()))
            .collect();
        assert_eq!(
            versions,
            [
                ("comfyui-frontend-package", "1.45.15"),
                ("numpy", "1.25.0"),
                ("einops", "1.0.0"),
                ("pydantic", "2.0"),
                ("av", "16.0.0"),
                ("foo", "2.1.1"),
                ("bar", "0.1.0"),
            ]
        );
    }
}
