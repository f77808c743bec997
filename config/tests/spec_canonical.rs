//! The same spec content always has the same digest, whatever its formatting or
//! format; a change of content changes it; the canonical form reads back as itself.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use comfyfleet_config::spec::canonical::{to_canonical_json, to_toml};
use comfyfleet_config::spec::{Spec, SpecFormat};

const EXAMPLE: &str = include_str!("../examples/render-farm.toml");

fn toml(text: &str) -> Spec {
    Spec::parse("spec.toml", text, SpecFormat::Toml).unwrap_or_else(|err| panic!("{err}"))
}

#[test]
fn formatting_comments_key_order_and_format_do_not_change_the_digest() {
    let spec = toml(EXAMPLE);
    // Comments and blank lines removed, indentation dropped.
    let stripped: String = EXAMPLE
        .lines()
        .map(|line| line.split(" # ").next().unwrap().trim())
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .collect::<Vec<_>>()
        .join("\n");
    assert_eq!(toml(&stripped).digest(), spec.digest());
    // Top-level keys in another order.
    let reordered = EXAMPLE.replacen("name = \"render-prod\"\n", "", 1).replacen(
        "python = \"3.12\"\n",
        "python = \"3.12\"\nname = \"render-prod\"\n",
        1,
    );
    assert_eq!(toml(&reordered).digest(), spec.digest());
    // The same content as JSON.
    let value: toml::Value = toml::from_str(EXAMPLE).unwrap();
    let json = serde_json::to_string_pretty(&value).unwrap();
    let from_json = Spec::parse("spec.json", &json, SpecFormat::Json).unwrap();
    assert_eq!(from_json.digest(), spec.digest());
    // Spelling variants of one value, and defaults written out.
    let spelled =
        EXAMPLE.replace("soak = \"10m\"", "soak = \"600s\"").replace("port = 8188", "port = 8188\n");
    assert_eq!(toml(&spelled).digest(), spec.digest());
    let with_default = EXAMPLE.replace("[rollout]\n", "[rollout]\nstalled_is_failure = true\n");
    assert_eq!(toml(&with_default).digest(), spec.digest());
    // A key added later is left out at its default: earlier revisions keep their ids.
    let node_default = EXAMPLE.replace("required = false", "required = false\nprovides_nodes = true");
    assert_eq!(toml(&node_default).digest(), spec.digest());
}

#[test]
fn a_change_of_content_changes_the_digest() {
    let spec = toml(EXAMPLE);
    let changes = [
        ("version = \"2.11.0\"", "version = \"2.11.1\""),
        ("cuda = [\"cu130\", \"cu128\", \"cu126\"]", "cuda = [\"cu126\", \"cu128\", \"cu130\"]"),
        ("compute = [\"8.0\", \"8.6\",", "compute = [\"8.0\", \"8.7\","),
        ("# driver_compat = \"minor\"", "driver_compat = \"minor\""),
        ("manager = \"off\"", "manager = \"on\""),
        ("required = false", "required = true\ninstall_script = true"),
        ("required = false", "required = false\nprovides_nodes = false"),
        ("ref = \"v0.33.0\"", "ref = \"v0.33.1\""),
        ("canary = 2", "canary = 3"),
    ];
    for (from, to) in changes {
        assert_ne!(toml(&EXAMPLE.replace(from, to)).digest(), spec.digest(), "{to}");
    }
    let mut pinned = spec.clone();
    pinned.comfyui.commit = Some("a".repeat(40));
    assert_ne!(pinned.digest(), spec.digest(), "a pin is part of the content");
}

#[test]
fn the_canonical_forms_read_back_as_the_same_spec() {
    let spec = toml(EXAMPLE);
    let canonical = to_canonical_json(&spec);
    let again = Spec::parse("canonical.json", &canonical, SpecFormat::Json).unwrap();
    assert_eq!(again, spec);
    assert_eq!(to_canonical_json(&again), canonical);
    let rendered = to_toml(&spec);
    assert_eq!(toml(&rendered).digest(), spec.digest(), "{rendered}");
    assert_eq!(spec.digest().as_str().len(), 64);
    assert_eq!(spec.digest().short().len(), 12);
}
