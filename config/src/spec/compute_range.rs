//! Compute-capability ranges (`">=8.9,<9.0"`, `"8.6"`): which GPUs a prebuilt
//! kernel wheel has code for. Capabilities are discrete, so a range is held as a
//! half-open interval of ordinals and emptiness and overlap are exact.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::inventory::ComputeCapability;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ComputeRange {
    /// Inclusive lower ordinal.
    low: u32,
    /// Exclusive upper ordinal.
    high: u32,
}

const MINORS: u32 = 100;

fn ordinal(cc: ComputeCapability) -> u32 {
    cc.major.saturating_mul(MINORS).saturating_add(cc.minor)
}

fn from_ordinal(value: u32) -> ComputeCapability {
    ComputeCapability::new(value / MINORS, value % MINORS)
}

impl ComputeRange {
    pub fn contains(&self, cc: ComputeCapability) -> bool {
        (self.low..self.high).contains(&ordinal(cc))
    }

    pub fn overlaps(&self, other: &ComputeRange) -> bool {
        self.low.max(other.low) < self.high.min(other.high)
    }

    /// Parses `">=8.0,<9.0"`, `"==8.9"` or a bare `"8.9"`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let hint = "write a compute-capability range such as \">=8.9,<9.0\" or \"8.6\"";
        let mut low = 0u32;
        let mut high = u32::MAX;
        if text.trim().is_empty() {
            return Err(format!("the range is empty: {hint}"));
        }
        for clause in text.split(',') {
            let clause = clause.trim();
            let (op, value) = ["==", ">=", "<=", ">", "<", "="]
                .iter()
                .find_map(|op| clause.strip_prefix(op).map(|rest| (*op, rest.trim())))
                .unwrap_or(("==", clause));
            let cc: ComputeCapability =
                value.parse().map_err(|_| format!("`{clause}` is not a compute-capability bound: {hint}"))?;
            if cc.minor >= MINORS {
                return Err(format!("`{value}` has a minor version of 100 or more: {hint}"));
            }
            let at = ordinal(cc);
            match op {
                "==" | "=" => {
                    low = low.max(at);
                    high = high.min(at + 1);
                }
                ">=" => low = low.max(at),
                ">" => low = low.max(at + 1),
                "<=" => high = high.min(at + 1),
                _ => high = high.min(at),
            }
        }
        if low >= high {
            return Err(format!("`{text}` contains no compute capability at all: {hint}"));
        }
        Ok(Self { low, high })
    }
}

impl fmt::Display for ComputeRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.high == self.low + 1 {
            return write!(f, "=={}", from_ordinal(self.low));
        }
        let mut parts = Vec::new();
        if self.low > 0 {
            parts.push(format!(">={}", from_ordinal(self.low)));
        }
        if self.high != u32::MAX {
            parts.push(format!("<{}", from_ordinal(self.high)));
        }
        if parts.is_empty() {
            return f.write_str(">=0.0");
        }
        f.write_str(&parts.join(","))
    }
}

impl Serialize for ComputeRange {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ComputeRange {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        ComputeRange::parse(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cc(text: &str) -> ComputeCapability {
        text.parse().unwrap()
    }

    #[test]
    fn ranges_contain_what_they_say() {
        let sm89 = ComputeRange::parse(">=8.9,<9.0").unwrap();
        assert!(sm89.contains(cc("8.9")) && !sm89.contains(cc("9.0")) && !sm89.contains(cc("8.6")));
        let exact = ComputeRange::parse("8.6").unwrap();
        assert!(exact.contains(cc("8.6")) && !exact.contains(cc("8.7")));
        assert_eq!(exact.to_string(), "==8.6");
        assert_eq!(sm89.to_string(), ">=8.9,<9.0");
        assert_eq!(ComputeRange::parse(">8.0,<=9.0").unwrap().to_string(), ">=8.1,<9.1");
        assert_eq!(ComputeRange::parse(">=10.0").unwrap().to_string(), ">=10.0");
    }

    #[test]
    fn empty_and_malformed_ranges_are_refused() {
        assert!(ComputeRange::parse(">=9.0,<8.0").unwrap_err().contains("no compute capability"));
        assert!(ComputeRange::parse("").is_err());
        assert!(ComputeRange::parse(">=sm89").is_err());
        assert!(ComputeRange::parse(">=8").is_err());
    }

    #[test]
    fn overlap_is_exact() {
        let a = ComputeRange::parse(">=8.6,<8.9").unwrap();
        let b = ComputeRange::parse(">=8.9,<9.0").unwrap();
        let c = ComputeRange::parse(">=8.0,<9.0").unwrap();
        assert!(!a.overlaps(&b) && a.overlaps(&c) && b.overlaps(&c));
    }
}
