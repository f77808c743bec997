//! Which GPUs a prebuilt kernel wheel has code for: a compute-capability range
//! (`">=8.9,<9.0"`), one SM (`"8.6"`), or a list of either
//! (`["8.0", "8.6", "8.9", "9.0", "12.0"]`: the SMs of a "fat" wheel, which need not
//! be contiguous). Capabilities are discrete, so the set is held as half-open
//! intervals of ordinals and membership and overlap are exact.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::inventory::ComputeCapability;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ComputeSet {
    /// Sorted, disjoint, non-adjacent `[low, high)` ordinal intervals.
    intervals: Vec<(u32, u32)>,
    /// Whether the operator wrote a list (kept so the canonical form round-trips).
    listed: bool,
}

const MINORS: u32 = 100;

fn ordinal(cc: ComputeCapability) -> u32 {
    cc.major.saturating_mul(MINORS).saturating_add(cc.minor)
}

fn from_ordinal(value: u32) -> ComputeCapability {
    ComputeCapability::new(value / MINORS, value % MINORS)
}

const HINT: &str = "write a compute-capability range such as \">=8.9,<9.0\", an SM such as \"8.6\", or a list \
                    of them such as [\"8.0\", \"8.6\", \"8.9\", \"9.0\", \"12.0\"]";

impl ComputeSet {
    pub fn contains(&self, cc: ComputeCapability) -> bool {
        let at = ordinal(cc);
        self.intervals.iter().any(|(low, high)| (*low..*high).contains(&at))
    }

    pub fn overlaps(&self, other: &ComputeSet) -> bool {
        self.intervals.iter().any(|(low, high)| {
            other.intervals.iter().any(|(other_low, other_high)| low.max(other_low) < high.min(other_high))
        })
    }

    /// `[low, high)` intervals as `(major*100 + minor)` ordinals, for code that checks
    /// membership elsewhere (the stand-in kernels).
    pub fn ordinal_intervals(&self) -> &[(u32, u32)] {
        &self.intervals
    }

    /// Parses one range: `">=8.0,<9.0"`, `"==8.9"` or a bare `"8.9"`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let (low, high) = parse_range(text)?;
        Ok(Self { intervals: vec![(low, high)], listed: false })
    }

    /// The union of several ranges or SMs.
    pub fn parse_list(items: &[String]) -> Result<Self, String> {
        if items.is_empty() {
            return Err(format!("the list is empty: {HINT}"));
        }
        let mut intervals = items.iter().map(|item| parse_range(item)).collect::<Result<Vec<_>, _>>()?;
        intervals.sort_unstable();
        let mut merged: Vec<(u32, u32)> = Vec::with_capacity(intervals.len());
        for (low, high) in intervals {
            match merged.last_mut() {
                Some(last) if low <= last.1 => last.1 = last.1.max(high),
                _ => merged.push((low, high)),
            }
        }
        Ok(Self { intervals: merged, listed: true })
    }

    fn describe_interval(low: u32, high: u32) -> String {
        if high == low + 1 {
            return from_ordinal(low).to_string();
        }
        let mut parts = Vec::new();
        if low > 0 {
            parts.push(format!(">={}", from_ordinal(low)));
        }
        if high != u32::MAX {
            parts.push(format!("<{}", from_ordinal(high)));
        }
        if parts.is_empty() { ">=0.0".to_owned() } else { parts.join(",") }
    }

    /// Each interval as the operator would write it: `8.6`, `>=8.9,<9.0`.
    fn items(&self) -> Vec<String> {
        self.intervals
            .iter()
            .flat_map(|(low, high)| {
                // A run of single SMs merged into one interval is written back as SMs.
                if high - low <= 9 && (high - low) > 1 && self.listed {
                    (*low..*high).map(|at| from_ordinal(at).to_string()).collect::<Vec<_>>()
                } else {
                    vec![Self::describe_interval(*low, *high)]
                }
            })
            .collect()
    }
}

fn parse_range(text: &str) -> Result<(u32, u32), String> {
    let mut low = 0u32;
    let mut high = u32::MAX;
    if text.trim().is_empty() {
        return Err(format!("the range is empty: {HINT}"));
    }
    for clause in text.split(',') {
        let clause = clause.trim();
        let (op, value) = ["==", ">=", "<=", ">", "<", "="]
            .iter()
            .find_map(|op| clause.strip_prefix(op).map(|rest| (*op, rest.trim())))
            .unwrap_or(("==", clause));
        let cc: ComputeCapability =
            value.parse().map_err(|_| format!("`{clause}` is not a compute-capability bound: {HINT}"))?;
        if cc.minor >= MINORS {
            return Err(format!("`{value}` has a minor version of 100 or more: {HINT}"));
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
        return Err(format!("`{text}` contains no compute capability at all: {HINT}"));
    }
    Ok((low, high))
}

impl fmt::Display for ComputeSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.listed
            && let [(low, high)] = self.intervals.as_slice()
        {
            // A single range keeps the spelling it always had: `==8.6`, `>=8.9,<9.0`.
            if *high == low + 1 {
                return write!(f, "=={}", from_ordinal(*low));
            }
            return f.write_str(&Self::describe_interval(*low, *high));
        }
        write!(f, "[{}]", self.items().join(", "))
    }
}

impl Serialize for ComputeSet {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if self.listed { serializer.collect_seq(self.items()) } else { serializer.collect_str(self) }
    }
}

impl<'de> Deserialize<'de> for ComputeSet {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Written {
            One(String),
            Many(Vec<String>),
        }
        match Written::deserialize(deserializer).map_err(|_| serde::de::Error::custom(HINT))? {
            Written::One(text) => ComputeSet::parse(&text),
            Written::Many(items) => ComputeSet::parse_list(&items),
        }
        .map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cc(text: &str) -> ComputeCapability {
        text.parse().unwrap()
    }

    fn list(items: &[&str]) -> ComputeSet {
        ComputeSet::parse_list(&items.iter().map(|item| (*item).to_owned()).collect::<Vec<_>>()).unwrap()
    }

    #[test]
    fn ranges_contain_what_they_say() {
        let sm89 = ComputeSet::parse(">=8.9,<9.0").unwrap();
        assert!(sm89.contains(cc("8.9")) && !sm89.contains(cc("9.0")) && !sm89.contains(cc("8.6")));
        let exact = ComputeSet::parse("8.6").unwrap();
        assert!(exact.contains(cc("8.6")) && !exact.contains(cc("8.7")));
        assert_eq!(exact.to_string(), "==8.6");
        assert_eq!(sm89.to_string(), ">=8.9,<9.0");
        assert_eq!(ComputeSet::parse(">8.0,<=9.0").unwrap().to_string(), ">=8.1,<9.1");
        assert_eq!(ComputeSet::parse(">=10.0").unwrap().to_string(), ">=10.0");
    }

    #[test]
    fn a_fat_wheel_lists_exact_sms_that_need_not_be_contiguous() {
        let fat = list(&["8.0", "8.6", "8.9", "9.0", "12.0"]);
        for sm in ["8.0", "8.6", "8.9", "9.0", "12.0"] {
            assert!(fat.contains(cc(sm)), "{sm}");
        }
        for sm in ["7.5", "8.7", "10.0", "10.3", "12.1"] {
            assert!(!fat.contains(cc(sm)), "{sm}");
        }
        assert_eq!(fat.to_string(), "[8.0, 8.6, 8.9, 9.0, 12.0]");
        let mixed = list(&[">=8.0,<8.6", "12.0"]);
        assert!(mixed.contains(cc("8.5")) && mixed.contains(cc("12.0")) && !mixed.contains(cc("8.6")));
    }

    #[test]
    fn sets_round_trip_through_their_canonical_form() {
        for text in [r#"compute = ["8.0", "8.6", "8.9", "9.0", "12.0"]"#, r#"compute = ">=8.9,<9.0""#] {
            #[derive(Deserialize, Serialize)]
            struct Holder {
                compute: ComputeSet,
            }
            let holder: Holder = toml::from_str(text).unwrap();
            let again: Holder = toml::from_str(&toml::to_string(&holder).unwrap()).unwrap();
            assert_eq!(again.compute, holder.compute);
        }
    }

    #[test]
    fn empty_and_malformed_sets_are_refused() {
        assert!(ComputeSet::parse(">=9.0,<8.0").unwrap_err().contains("no compute capability"));
        assert!(ComputeSet::parse("").is_err());
        assert!(ComputeSet::parse(">=sm89").is_err());
        assert!(ComputeSet::parse(">=8").is_err());
        assert!(ComputeSet::parse_list(&[]).is_err());
        assert!(ComputeSet::parse_list(&["8.0".into(), "x".into()]).is_err());
    }

    #[test]
    fn overlap_is_exact() {
        let a = ComputeSet::parse(">=8.6,<8.9").unwrap();
        let b = ComputeSet::parse(">=8.9,<9.0").unwrap();
        let c = ComputeSet::parse(">=8.0,<9.0").unwrap();
        assert!(!a.overlaps(&b) && a.overlaps(&c) && b.overlaps(&c));
        let fat = list(&["8.0", "8.6", "8.9", "9.0", "12.0"]);
        assert!(fat.overlaps(&b) && !fat.overlaps(&ComputeSet::parse(">=10.0,<12.0").unwrap()));
    }
}
