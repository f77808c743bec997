//! One canonical text per spec, and its digest. The canonical form is compact JSON
//! with keys in a fixed order, every default written out and every value in its
//! canonical spelling, so formatting, comments, key order, TOML versus JSON and
//! spelling variants (`"90s"` / `"1m 30s"`) never change the digest. It is itself a
//! valid spec: stored revisions are read back through [`Spec::parse`].

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::Spec;

/// Domain separation: a future canonical form gets a new prefix, not a collision.
const DIGEST_PREFIX: &[u8] = b"comfyfleet-spec-v1\n";

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
    let mut hasher = Sha256::new();
    hasher.update(DIGEST_PREFIX);
    hasher.update(to_canonical_json(spec).as_bytes());
    SpecDigest(hex::encode(hasher.finalize()))
}

/// sha256 of a canonical spec: 64 hex digits. A revision id is the digest of the
/// spec with every git ref pinned to a commit.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct SpecDigest(String);

impl SpecDigest {
    pub const SHORT: usize = 12;

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The 12-digit form people read and type.
    pub fn short(&self) -> &str {
        self.0.get(..Self::SHORT).unwrap_or(&self.0)
    }
}

impl FromStr for SpecDigest {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        if text.len() == 64 && text.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
            Ok(Self(text.to_owned()))
        } else {
            Err(format!("`{text}` is not a spec digest (64 lowercase hex digits)"))
        }
    }
}

impl TryFrom<String> for SpecDigest {
    type Error = String;

    fn try_from(text: String) -> Result<Self, Self::Error> {
        text.parse()
    }
}

impl From<SpecDigest> for String {
    fn from(digest: SpecDigest) -> Self {
        digest.0
    }
}

impl fmt::Display for SpecDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
