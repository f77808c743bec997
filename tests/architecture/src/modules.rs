//! A crate's module tree, followed from its root file through `mod` declarations the way
//! rustc does (`name.rs` or `name/mod.rs`, `#[path]`, inline modules), and the question
//! the other checks ask of it: which module does this path name?

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::source::{ParsedSource, PathKind, PathRef, parse};

/// A module's path from the crate root: empty for the root, `["commands", "machines"]`.
pub type ModulePath = Vec<String>;

pub fn display_module(path: &[String]) -> String {
    if path.is_empty() { "crate".to_owned() } else { path.join("::") }
}

#[derive(Debug)]
pub struct SourceFile {
    pub path: PathBuf,
    /// The module this file is.
    pub module: ModulePath,
    pub parsed: ParsedSource,
}

impl SourceFile {
    /// The module a path in this file sits in: the file's, plus its inline modules.
    pub fn module_of(&self, path: &PathRef) -> ModulePath {
        let mut module = self.module.clone();
        module.extend(path.within.iter().cloned());
        module
    }
}

#[derive(Debug, Default)]
pub struct CrateModules {
    /// Every module, with the file that holds it (an inline module's is its parent's);
    /// None when a declared module's file was not found (generated, or cfg'd away).
    pub modules: BTreeMap<ModulePath, Option<PathBuf>>,
    pub files: Vec<SourceFile>,
    /// `pub use` re-exports: (module, bound name) → the crate-absolute path it names.
    reexports: BTreeMap<(ModulePath, String), ModulePath>,
}

/// Follows the crate from `root` (its `lib.rs` or `main.rs`). Unreadable files are errors:
/// a check that silently skips a file could pass when it should fail.
pub fn load_crate(root: &Path) -> Result<CrateModules, String> {
    let mut crate_modules = CrateModules::default();
    crate_modules.modules.insert(Vec::new(), Some(root.to_path_buf()));
    let mut queue: Vec<(PathBuf, ModulePath, bool)> = vec![(root.to_path_buf(), Vec::new(), true)];
    while let Some((file, module, owns_directory)) = queue.pop() {
        let text = std::fs::read_to_string(&file).map_err(|error| {
            format!("cannot read {} (module {}): {error}", file.display(), display_module(&module))
        })?;
        let parsed = parse(&text);
        let file_directory = file.parent().map(Path::to_path_buf).unwrap_or_default();
        // Where `mod x;` looks for `x.rs`: beside a root or `mod.rs`, else in `stem/`.
        let module_directory = if owns_directory {
            file_directory.clone()
        } else {
            let stem = file.file_stem().map(|stem| stem.to_string_lossy().into_owned()).unwrap_or_default();
            file_directory.join(stem)
        };
        for declaration in &parsed.mods {
            let mut child = module.clone();
            child.extend(declaration.within.iter().cloned());
            child.push(declaration.name.clone());
            // A `#[path]` that loops back would otherwise load forever.
            if child.len() > 64 {
                return Err(format!("module path too deep at {}:{}", file.display(), declaration.line));
            }
            if declaration.inline {
                crate_modules.modules.insert(child, Some(file.clone()));
                continue;
            }
            let mut directory = module_directory.clone();
            directory.extend(declaration.within.iter());
            let found = match &declaration.path_attribute {
                Some(relative) => {
                    let base = if declaration.within.is_empty() { &file_directory } else { &directory };
                    Some((base.join(relative), true)).filter(|(path, _)| path.is_file())
                }
                None => [
                    (directory.join(format!("{}.rs", declaration.name)), false),
                    (directory.join(&declaration.name).join("mod.rs"), true),
                ]
                .into_iter()
                .find(|(path, _)| path.is_file()),
            };
            crate_modules.modules.insert(child.clone(), found.as_ref().map(|(path, _)| path.clone()));
            if let Some((path, owns)) = found {
                queue.push((path, child, owns));
            }
        }
        crate_modules.files.push(SourceFile { path: file, module, parsed });
    }
    crate_modules.files.sort_by(|a, b| a.path.cmp(&b.path).then(a.module.cmp(&b.module)));
    crate_modules.collect_reexports();
    Ok(crate_modules)
}

impl CrateModules {
    /// `crate::…`, `super::…`, `self::…` or a child module's name, made crate-absolute;
    /// None for an external crate or a name this check cannot place.
    pub fn absolute(&self, module: &[String], segments: &[String]) -> Option<ModulePath> {
        let first = segments.first()?;
        match first.as_str() {
            "crate" => Some(segments[1..].to_vec()),
            "self" | "super" => {
                let mut base = module.to_vec();
                let mut rest = segments;
                while let Some(first) = rest.first() {
                    match first.as_str() {
                        "super" => {
                            base.pop()?;
                        }
                        "self" => {}
                        _ => break,
                    }
                    rest = &rest[1..];
                }
                base.extend(rest.iter().cloned());
                Some(base)
            }
            _ => {
                let mut child = module.to_vec();
                child.push(first.clone());
                self.modules.contains_key(&child).then(|| {
                    child.extend(segments[1..].iter().cloned());
                    child
                })
            }
        }
    }

    /// The module an absolute path lands in: its longest prefix that is a module, after
    /// following named `pub use` re-exports (so `crate::a::Thing`, re-exported by `a`
    /// from `a::b`, lands in `a::b`).
    pub fn module_named(&self, absolute: &[String]) -> ModulePath {
        let mut path = absolute.to_vec();
        for _ in 0..16 {
            let prefix =
                (0..=path.len()).rev().find(|&len| self.modules.contains_key(&path[..len])).unwrap_or(0);
            let module = path[..prefix].to_vec();
            let Some(name) = path.get(prefix) else { return module };
            match self.reexports.get(&(module.clone(), name.clone())) {
                Some(target) if !target.starts_with(&path[..=prefix]) => {
                    let mut followed = target.clone();
                    followed.extend(path[prefix + 1..].iter().cloned());
                    path = followed;
                }
                _ => return module,
            }
        }
        Vec::new()
    }

    fn collect_reexports(&mut self) {
        let mut reexports = BTreeMap::new();
        for file in &self.files {
            for path in &file.parsed.paths {
                let PathKind::Use { alias, public: true } = &path.kind else { continue };
                if alias == "*" {
                    // A glob re-export names no item this check could follow.
                    continue;
                }
                let module = file.module_of(path);
                if let Some(target) = self.absolute(&module, &path.segments) {
                    reexports.insert((module, alias.clone()), target);
                }
            }
        }
        self.reexports = reexports;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(root: &Path, relative: &str, text: &str) {
        let path = root.join(relative);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    fn path(text: &str) -> ModulePath {
        if text.is_empty() { Vec::new() } else { text.split("::").map(str::to_owned).collect() }
    }

    #[test]
    fn modules_are_found_as_rustc_finds_them() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        write(root, "lib.rs", "mod a;\nmod b;\nmod c { mod d; }\n#[cfg(test)]\nmod tests;\nmod gone;\n");
        write(root, "a.rs", "mod nested;\n#[path = \"elsewhere/e.rs\"]\nmod e;\n");
        write(root, "a/nested.rs", "");
        write(root, "elsewhere/e.rs", "mod f;\n");
        write(root, "elsewhere/f.rs", "");
        write(root, "b/mod.rs", "mod g;\n");
        write(root, "b/g.rs", "");
        write(root, "c/d.rs", "");
        let modules = load_crate(&root.join("lib.rs")).unwrap();
        let found: Vec<(String, Option<String>)> = modules
            .modules
            .iter()
            .map(|(module, file)| {
                let file = file.as_ref().map(|f| f.strip_prefix(root).unwrap().display().to_string());
                (display_module(module), file)
            })
            .collect();
        let expected = [
            ("crate", Some("lib.rs")),
            ("a", Some("a.rs")),
            ("a::e", Some("elsewhere/e.rs")),
            ("a::e::f", Some("elsewhere/f.rs")),
            ("a::nested", Some("a/nested.rs")),
            ("b", Some("b/mod.rs")),
            ("b::g", Some("b/g.rs")),
            ("c", Some("lib.rs")),
            ("c::d", Some("c/d.rs")),
            ("gone", None),
        ];
        let expected: Vec<(String, Option<String>)> =
            expected.iter().map(|(m, f)| (m.to_string(), f.map(str::to_owned))).collect();
        assert_eq!(found, expected);
    }

    #[test]
    fn paths_resolve_through_super_self_and_reexports() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        write(root, "lib.rs", "mod a;\nmod b;\n");
        write(
            root,
            "a/mod.rs",
            "mod inner;\npub use inner::Thing;\npub(crate) use crate::b::Other as Renamed;\n",
        );
        write(root, "a/inner.rs", "pub struct Thing;\n");
        write(root, "b.rs", "pub struct Other;\n");
        let modules = load_crate(&root.join("lib.rs")).unwrap();
        let in_b = path("b");
        let absolute = modules.absolute(&in_b, &path("super::a::Thing")).unwrap();
        assert_eq!(modules.module_named(&absolute), path("a::inner"));
        assert_eq!(modules.module_named(&path("a::Renamed")), path("b"));
        assert_eq!(modules.module_named(&path("a::helper")), path("a"));
        assert_eq!(modules.absolute(&in_b, &path("self::x")), Some(path("b::x")));
        assert_eq!(modules.absolute(&[], &path("a::x")), Some(path("a::x")));
        assert_eq!(modules.absolute(&[], &path("std::fmt")), None);
        assert_eq!(modules.absolute(&[], &path("super::x")), None);
    }
}
