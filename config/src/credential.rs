//! Operator credentials and their roles.
//!
//! `cfo1.<id>.<secret>`, sent as `authorization: Bearer …`. The controller writes the
//! first (admin) one into `admin.toml` at first start; admins mint scoped ones.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::secret_token::{ID_LEN, SECRET_LEN, is_lower_hex};

const PREFIX: &str = "cfo1";

/// What a credential may do. Ordered: each role can do everything the ones below it can.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Reads everything, changes nothing.
    Viewer,
    /// Also labels machines and creates join tokens.
    Operator,
    /// Also revokes machines and manages credentials.
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("unknown role `{0}`: expected viewer, operator or admin")]
pub struct UnknownRole(String);

impl FromStr for Role {
    type Err = UnknownRole;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "viewer" => Ok(Role::Viewer),
            "operator" => Ok(Role::Operator),
            "admin" => Ok(Role::Admin),
            other => Err(UnknownRole(other.to_owned())),
        }
    }
}

#[derive(Clone, PartialEq, Eq)]
pub struct OperatorCredential {
    id: String,
    secret: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "this is not a comfyfleet operator credential (expected `cfo1.<id>.<secret>`, as written in admin.toml or printed by `comfyfleet credentials create`)"
)]
pub struct MalformedCredential;

impl OperatorCredential {
    pub fn new(id: &str, secret: &str) -> Result<Self, MalformedCredential> {
        if is_lower_hex(id, ID_LEN) && is_lower_hex(secret, SECRET_LEN) {
            Ok(Self { id: id.to_owned(), secret: secret.to_owned() })
        } else {
            Err(MalformedCredential)
        }
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn secret(&self) -> &str {
        &self.secret
    }
}

impl FromStr for OperatorCredential {
    type Err = MalformedCredential;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let mut parts = text.trim().split('.');
        match (parts.next(), parts.next(), parts.next(), parts.next()) {
            (Some(PREFIX), Some(id), Some(secret), None) => Self::new(id, secret),
            _ => Err(MalformedCredential),
        }
    }
}

impl fmt::Display for OperatorCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{PREFIX}.{}.{}", self.id, self.secret)
    }
}

impl fmt::Debug for OperatorCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OperatorCredential").field("id", &self.id).finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_are_ordered_by_power() {
        assert!(Role::Admin > Role::Operator && Role::Operator > Role::Viewer);
        assert_eq!("operator".parse::<Role>(), Ok(Role::Operator));
        assert!("root".parse::<Role>().unwrap_err().to_string().contains("viewer, operator or admin"));
    }

    #[test]
    fn credential_round_trips() {
        let text = "cfo1.0123456789ab.00112233445566778899aabbccddeeff";
        let credential: OperatorCredential = text.parse().unwrap();
        assert_eq!(credential.to_string(), text);
        assert!("cfj1.0123456789ab.00112233445566778899aabbccddeeff".parse::<OperatorCredential>().is_err());
        assert!(!format!("{credential:?}").contains("0011"));
    }
}
