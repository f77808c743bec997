//! The id of an environment revision: the sha256 of its spec's canonical JSON. Apart
//! from [`crate::spec`] because what machines report — the environments they have
//! installed, their convergence — names revisions by it without needing a spec.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Domain separation: a future canonical form gets a new prefix, not a collision.
const DIGEST_PREFIX: &[u8] = b"comfyfleet-spec-v1\n";

/// sha256 of a canonical spec: 64 hex digits. A revision id is the digest of the
/// spec with every git ref pinned to a commit.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct SpecDigest(String);

impl SpecDigest {
    pub const SHORT: usize = 12;

    /// The digest of a spec's canonical JSON ([`crate::spec::canonical::digest`]).
    pub(crate) fn of_canonical_json(json: &str) -> Self {
        let mut hasher = Sha256::new();
        hasher.update(DIGEST_PREFIX);
        hasher.update(json.as_bytes());
        Self(hex::encode(hasher.finalize()))
    }

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
