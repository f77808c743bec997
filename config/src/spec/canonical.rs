//! One canonical text per spec, and its digest. The canonical form is compact JSON
//! with keys in a fixed order, every default written out and every value in its
//! canonical spelling, so formatting, comments, key order, TOML versus JSON and
//! spelling variants (`"90s"` / `"1m 30s"`) never change the digest. It is itself a
//! valid spec: stored revisions are read back through [`Spec::parse`].

use super::Spec;
use crate::spec_digest::SpecDigest;

/// The canonical JSON text of a spec.
pub fn to_canonical_json(spec: &Spec) -> String {
    // Serialising plain data into a String cannot fail; an empty object keeps this total.
    serde_json::to_string(spec).unwrap_or_else(|_| "{}".to_owned())
}

/// The spec rendered as TOML, for people (`env show`, `env diff`).
pub fn to_toml(spec: &Spec) -> String {
    toml::to_string_pretty(spec).unwrap_or_else(|err| format!("# cannot render as TOML: {err}\n"))
}

pub fn digest(spec: &Spec) -> SpecDigest {
    SpecDigest::of_canonical_json(&to_canonical_json(spec))
}
