//! Machine labels: `key=value` pairs that selectors match on (`pool=render-a`).
//!
//! The rules follow Kubernetes labels, which operators already know: a key is an
//! optional DNS-style prefix and `/`, then a name of at most 63 characters of
//! letters, digits, `-`, `_` and `.`, starting and ending alphanumeric; a value is
//! empty or such a name. A refused key or value is shown escaped (`text::Escaped`):
//! it came from an agent or a command line, and its message reaches logs.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::text::Escaped;

const MAX_NAME: usize = 63;
const MAX_PREFIX: usize = 253;
/// More labels than this on one machine is a mistake, not a use.
pub const MAX_LABELS: usize = 64;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LabelError {
    #[error(
        "label key `{}` is invalid: use up to 63 letters, digits, `-`, `_` or `.`, starting and ending with a letter or digit, optionally after a `prefix/` (e.g. `pool` or `example.com/pool`)",
        Escaped(.key)
    )]
    Key { key: String },
    #[error(
        "label value `{}` for `{}` is invalid: use up to 63 letters, digits, `-`, `_` or `.`, starting and ending with a letter or digit (or an empty value)",
        Escaped(.value),
        Escaped(.key)
    )]
    Value { key: String, value: String },
    #[error("`{}` is not a label: write it as key=value (e.g. pool=render-a)", Escaped(.text))]
    NotAPair { text: String },
    #[error("too many labels ({count}); a machine may carry at most {MAX_LABELS}")]
    TooMany { count: usize },
}

/// A validated, ordered set of labels.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "BTreeMap<String, String>", into = "BTreeMap<String, String>")]
pub struct Labels(BTreeMap<String, String>);

impl Labels {
    pub fn new() -> Self {
        Self::default()
    }

    /// Parses `key=value` arguments as given on a command line.
    pub fn parse_pairs<I, S>(pairs: I) -> Result<Self, LabelError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut labels = Labels::new();
        for pair in pairs {
            let (key, value) = parse_pair(pair.as_ref())?;
            labels.insert(key, value)?;
        }
        Ok(labels)
    }

    pub fn insert(&mut self, key: String, value: String) -> Result<(), LabelError> {
        validate_key(&key)?;
        validate_value(&key, &value)?;
        if !self.0.contains_key(&key) && self.0.len() >= MAX_LABELS {
            return Err(LabelError::TooMany { count: self.0.len() + 1 });
        }
        self.0.insert(key, value);
        Ok(())
    }

    pub fn remove(&mut self, key: &str) -> Option<String> {
        self.0.remove(key)
    }

    /// The first of these labels that gives a key of `binding` another value:
    /// `(key, this value, binding's value)`.
    pub fn overriding<'a>(&'a self, binding: &'a Labels) -> Option<(&'a str, &'a str, &'a str)> {
        self.iter().find_map(|(key, value)| {
            binding.get(key).filter(|bound| *bound != value).map(|bound| (key, value, bound))
        })
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// `self` with `over`'s labels laid on top (later layers win).
    pub fn overlaid(&self, over: &Labels) -> Labels {
        let mut merged = self.0.clone();
        merged.extend(over.0.iter().map(|(k, v)| (k.clone(), v.clone())));
        Labels(merged)
    }

    pub fn as_map(&self) -> &BTreeMap<String, String> {
        &self.0
    }
}

impl TryFrom<BTreeMap<String, String>> for Labels {
    type Error = LabelError;

    fn try_from(map: BTreeMap<String, String>) -> Result<Self, Self::Error> {
        if map.len() > MAX_LABELS {
            return Err(LabelError::TooMany { count: map.len() });
        }
        for (key, value) in &map {
            validate_key(key)?;
            validate_value(key, value)?;
        }
        Ok(Labels(map))
    }
}

impl<S: std::hash::BuildHasher> TryFrom<std::collections::HashMap<String, String, S>> for Labels {
    type Error = LabelError;

    fn try_from(map: std::collections::HashMap<String, String, S>) -> Result<Self, Self::Error> {
        Labels::try_from(map.into_iter().collect::<BTreeMap<_, _>>())
    }
}

impl From<Labels> for BTreeMap<String, String> {
    fn from(labels: Labels) -> Self {
        labels.0
    }
}

impl fmt::Display for Labels {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (key, value)) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{key}={value}")?;
        }
        Ok(())
    }
}

/// Splits `key=value`; the key and value are not validated yet.
pub fn parse_pair(text: &str) -> Result<(String, String), LabelError> {
    match text.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_owned(), value.to_owned())),
        _ => Err(LabelError::NotAPair { text: text.to_owned() }),
    }
}

pub fn validate_key(key: &str) -> Result<(), LabelError> {
    let (prefix, name) = match key.rsplit_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, key),
    };
    let prefix_ok = prefix.is_none_or(|p| {
        !p.is_empty()
            && p.len() <= MAX_PREFIX
            && p.split('.').all(|part| {
                !part.is_empty()
                    && part.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                    && !part.starts_with('-')
                    && !part.ends_with('-')
            })
    });
    if prefix_ok && !name.is_empty() && is_name(name) {
        Ok(())
    } else {
        Err(LabelError::Key { key: key.to_owned() })
    }
}

fn validate_value(key: &str, value: &str) -> Result<(), LabelError> {
    if value.is_empty() || is_name(value) {
        Ok(())
    } else {
        Err(LabelError::Value { key: key.to_owned(), value: value.to_owned() })
    }
}

fn is_name(text: &str) -> bool {
    let bytes = text.as_bytes();
    text.len() <= MAX_NAME
        && bytes.first().is_some_and(u8::is_ascii_alphanumeric)
        && bytes.last().is_some_and(u8::is_ascii_alphanumeric)
        && bytes.iter().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_what_kubernetes_accepts() {
        let labels =
            Labels::parse_pairs(["pool=render-a", "example.com/rack=r12", "spot=", "tier=A_1.x"]).unwrap();
        assert_eq!(labels.get("pool"), Some("render-a"));
        assert_eq!(labels.get("spot"), Some(""));
        assert_eq!(labels.to_string(), "example.com/rack=r12,pool=render-a,spot=,tier=A_1.x");
    }

    #[test]
    fn rejects_what_could_break_a_selector_or_a_shell() {
        for bad in
            ["=x", "pool", "-pool=x", "pool-=x", "po ol=x", "a/b/c=x", "Example.com/x=y", "pool=$(rm -rf /)"]
        {
            assert!(Labels::parse_pairs([bad]).is_err(), "{bad} should be rejected");
        }
        let long = format!("k={}", "a".repeat(64));
        assert!(matches!(Labels::parse_pairs([long]), Err(LabelError::Value { .. })));
    }

    #[test]
    fn later_layers_win() {
        let base = Labels::parse_pairs(["pool=a", "zone=1"]).unwrap();
        let over = Labels::parse_pairs(["pool=b"]).unwrap();
        assert_eq!(base.overlaid(&over).to_string(), "pool=b,zone=1");
    }

    #[test]
    fn deserialising_validates() {
        assert!(serde_json::from_str::<Labels>(r#"{"pool":"a"}"#).is_ok());
        assert!(serde_json::from_str::<Labels>(r#"{"bad key":"a"}"#).is_err());
    }

    #[test]
    fn a_refused_label_is_shown_on_one_line() {
        let error =
            Labels::parse_pairs(["pool=a\n2026 INFO audit: admin credential created\x1b[31m"]).unwrap_err();
        let message = error.to_string();
        assert!(!message.contains('\n') && !message.contains('\x1b'), "{message}");
        assert!(message.contains("a\\n2026 INFO audit"), "{message}");
        let key = Labels::parse_pairs(["po\rol=a"]).unwrap_err().to_string();
        assert!(key.contains("po\\rol"), "{key}");
    }
}
