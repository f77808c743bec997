use super::*;

fn uses(parsed: &ParsedSource) -> Vec<(String, String, usize)> {
    parsed
        .paths
        .iter()
        .filter_map(|path| match &path.kind {
            PathKind::Use { alias, .. } => Some((path.segments.join("::"), alias.clone(), path.line)),
            PathKind::Code => None,
        })
        .collect()
}

fn code_paths(parsed: &ParsedSource) -> Vec<(String, usize)> {
    parsed
        .paths
        .iter()
        .filter(|path| path.kind == PathKind::Code)
        .map(|path| (path.segments.join("::"), path.line))
        .collect()
}

#[test]
fn use_trees_are_expanded_into_their_leaves_with_lines() {
    let parsed = parse(
        "use crate::a::{self, b::{c, d as e}, f::*};\nuse super::g;\nuse ::std::fmt;\nuse crate::{\n    h,\n    i::j,\n};\n",
    );
    assert_eq!(
        uses(&parsed),
        [
            ("crate::a".to_owned(), "a".to_owned(), 1),
            ("crate::a::b::c".to_owned(), "c".to_owned(), 1),
            ("crate::a::b::d".to_owned(), "e".to_owned(), 1),
            ("crate::a::f".to_owned(), "*".to_owned(), 1),
            ("super::g".to_owned(), "g".to_owned(), 2),
            ("std::fmt".to_owned(), "fmt".to_owned(), 3),
            ("crate::h".to_owned(), "h".to_owned(), 5),
            ("crate::i::j".to_owned(), "j".to_owned(), 6),
        ]
    );
}

#[test]
fn public_uses_are_told_apart() {
    let parsed = parse("pub use a::b;\npub(crate) use c::d;\nuse e::f;\n");
    let public: Vec<bool> =
        parsed.paths.iter().map(|path| matches!(path.kind, PathKind::Use { public: true, .. })).collect();
    assert_eq!(public, [true, true, false]);
}

#[test]
fn paths_in_code_are_found_but_not_inside_comments_strings_or_macros_crate() {
    let parsed = parse(
        "fn f() {\n    crate::a::run(super::b::X, \"crate::c\");\n    // crate::d\n    $crate::e::f();\n    Vec::<u8>::new();\n}\n",
    );
    assert_eq!(
        code_paths(&parsed),
        [("crate::a::run".to_owned(), 2), ("super::b::X".to_owned(), 2), ("Vec".to_owned(), 5)]
    );
}

#[test]
fn module_declarations_with_path_attributes_and_inline_modules() {
    let parsed = parse(
        "mod a;\n#[path = \"x/y.rs\"]\npub mod b;\nmod c {\n    mod d;\n    fn f() { crate::a::g(); }\n}\nmod e;\n",
    );
    let mods: Vec<(String, Vec<String>, Option<String>, bool)> = parsed
        .mods
        .iter()
        .map(|m| (m.name.clone(), m.within.clone(), m.path_attribute.clone(), m.inline))
        .collect();
    assert_eq!(
        mods,
        [
            ("a".to_owned(), vec![], None, false),
            ("b".to_owned(), vec![], Some("x/y.rs".to_owned()), false),
            ("c".to_owned(), vec![], None, true),
            ("d".to_owned(), vec!["c".to_owned()], None, false),
            ("e".to_owned(), vec![], None, false),
        ]
    );
    assert_eq!(parsed.paths[0].within, ["c"]);
}

#[test]
fn test_only_items_are_left_out() {
    let parsed = parse(
        "#[cfg(test)]\nmod tests;\n#[cfg(test)]\nmod inline_tests {\n    use crate::a;\n    fn f() { crate::b::g(); }\n}\n#[cfg(all(test, unix))]\nuse crate::c::{d, e};\n#[cfg(test)]\npub(crate) fn helper() { crate::f::g(); }\n#[cfg(not(test))]\nuse crate::kept;\nmod after;\n",
    );
    assert_eq!(parsed.mods.iter().map(|m| m.name.as_str()).collect::<Vec<_>>(), ["after"]);
    assert_eq!(uses(&parsed), [("crate::kept".to_owned(), "kept".to_owned(), 13)]);
    assert!(code_paths(&parsed).is_empty());
}
