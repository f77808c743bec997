//! Fresh identifiers and secrets, and how their digests are compared.

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// `len` lowercase hex digits from the OS's CSPRNG.
pub fn random_hex(len: usize) -> String {
    let mut bytes = vec![0u8; len.div_ceil(2)];
    rand::fill(bytes.as_mut_slice());
    let mut text = hex::encode(bytes);
    text.truncate(len);
    text
}

/// A public id for a token or credential (12 hex digits).
pub fn new_token_id() -> String {
    random_hex(12)
}

/// A 128-bit secret (32 hex digits).
pub fn new_secret() -> String {
    random_hex(32)
}

/// A machine id: 16 hex digits. Operators type unique prefixes of it.
pub fn new_machine_id() -> String {
    random_hex(16)
}

/// A web page session id: 256 bits (64 hex digits).
pub fn new_web_session_id() -> String {
    random_hex(64)
}

pub fn digest(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

pub fn digests_match(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.ct_eq(b).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_have_the_documented_shape() {
        let id = new_machine_id();
        assert_eq!(id.len(), 16);
        assert!(id.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
        assert_ne!(new_secret(), new_secret());
        assert!(digests_match(&digest("a"), &digest("a")));
        assert!(!digests_match(&digest("a"), &digest("b")));
    }
}
