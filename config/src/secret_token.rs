//! The shape shared by every secret comfyfleet hands out: `<kind>.<id>.<secret>[.<extra>]`.
//!
//! The id is public (it names the token in lists and audit logs); only the secret's
//! sha256 is stored by the controller. Both are lowercase hex so a token survives
//! copy-paste, shells and URLs unchanged.

pub(crate) const ID_LEN: usize = 12;
pub(crate) const SECRET_LEN: usize = 32;

pub(crate) fn is_lower_hex(text: &str, len: usize) -> bool {
    text.len() == len && text.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_check_needs_exact_length_and_lowercase() {
        assert!(is_lower_hex("0a1b2c3d4e5f", 12));
        assert!(!is_lower_hex("0A1B2C3D4E5F", 12));
        assert!(!is_lower_hex("0a1b2c", 12));
        assert!(!is_lower_hex("0a1b2c3d4e5g", 12));
    }
}
