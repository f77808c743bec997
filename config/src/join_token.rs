//! Join tokens: what an operator hands to a new machine so it can enroll.
//!
//! `cfj1.<id>.<secret>.<ca-sha256>` — like kubeadm's token plus its
//! `--discovery-token-ca-cert-hash` in one string. The CA hash lets the agent trust
//! the controller on first contact: it refuses to send the token to a server whose CA
//! does not hash to it.

use std::fmt;
use std::str::FromStr;

use crate::secret_token::{ID_LEN, SECRET_LEN, is_lower_hex};

const PREFIX: &str = "cfj1";
const CA_HASH_LEN: usize = 64;

#[derive(Clone, PartialEq, Eq)]
pub struct JoinToken {
    id: String,
    secret: String,
    ca_sha256: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum JoinTokenError {
    #[error(
        "this is not a comfyfleet join token (expected `cfj1.<id>.<secret>.<ca-sha256>` as printed by `comfyfleet token create`)"
    )]
    Shape,
    #[error("the join token's {part} is malformed: expected {expected}")]
    Part { part: &'static str, expected: &'static str },
}

impl JoinToken {
    /// Builds a token from its parts; the id and secret must be lowercase hex of the
    /// standard lengths and the CA hash a lowercase hex sha256.
    pub fn new(id: &str, secret: &str, ca_sha256: &str) -> Result<Self, JoinTokenError> {
        if !is_lower_hex(id, ID_LEN) {
            return Err(JoinTokenError::Part { part: "id", expected: "12 lowercase hex digits" });
        }
        if !is_lower_hex(secret, SECRET_LEN) {
            return Err(JoinTokenError::Part { part: "secret", expected: "32 lowercase hex digits" });
        }
        if !is_lower_hex(ca_sha256, CA_HASH_LEN) {
            return Err(JoinTokenError::Part {
                part: "CA hash",
                expected: "64 lowercase hex digits (a sha256)",
            });
        }
        Ok(Self { id: id.to_owned(), secret: secret.to_owned(), ca_sha256: ca_sha256.to_owned() })
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn secret(&self) -> &str {
        &self.secret
    }

    /// The sha256 (lowercase hex) of the DER of the controller's CA certificate.
    pub fn ca_sha256(&self) -> &str {
        &self.ca_sha256
    }
}

impl FromStr for JoinToken {
    type Err = JoinTokenError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let mut parts = text.trim().split('.');
        let (Some(PREFIX), Some(id), Some(secret), Some(ca), None) =
            (parts.next(), parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(JoinTokenError::Shape);
        };
        Self::new(id, secret, ca)
    }
}

impl fmt::Display for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{PREFIX}.{}.{}.{}", self.id, self.secret, self.ca_sha256)
    }
}

/// Never print the secret by accident.
impl fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JoinToken")
            .field("id", &self.id)
            .field("secret", &"<redacted>")
            .field("ca_sha256", &self.ca_sha256)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CA: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

    #[test]
    fn round_trips_through_text() {
        let token = JoinToken::new("0123456789ab", "00112233445566778899aabbccddeeff", CA).unwrap();
        let text = token.to_string();
        assert_eq!(text, format!("cfj1.0123456789ab.00112233445566778899aabbccddeeff.{CA}"));
        assert_eq!(text.parse::<JoinToken>().unwrap(), token);
    }

    #[test]
    fn rejects_other_shapes_with_a_reason() {
        assert_eq!("hello".parse::<JoinToken>(), Err(JoinTokenError::Shape));
        assert_eq!(
            format!("cfj1.0123456789ab.00112233445566778899aabbccddeeff.{CA}.x").parse::<JoinToken>(),
            Err(JoinTokenError::Shape)
        );
        let bad_hash = "cfj1.0123456789ab.00112233445566778899aabbccddeeff.abc".parse::<JoinToken>();
        assert!(matches!(bad_hash, Err(JoinTokenError::Part { part: "CA hash", .. })));
    }

    #[test]
    fn debug_hides_the_secret() {
        let token = JoinToken::new("0123456789ab", "00112233445566778899aabbccddeeff", CA).unwrap();
        assert!(!format!("{token:?}").contains("0011223344"));
    }
}
