//! NVIDIA driver versions (`570.133.07`), compared the way NVIDIA's tables compare
//! them: numerically, part by part, missing parts as zero (`580` is `580.0.0`).

use std::cmp::Ordering;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Eq)]
pub struct DriverVersion {
    parts: Vec<u32>,
    text: String,
}

impl DriverVersion {
    fn part(&self, index: usize) -> u32 {
        self.parts.get(index).copied().unwrap_or(0)
    }
}

impl FromStr for DriverVersion {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let parts: Option<Vec<u32>> = text.split('.').map(|part| part.parse().ok()).collect();
        match parts {
            Some(parts) if !parts.is_empty() && parts.len() <= 4 => Ok(Self { parts, text: text.to_owned() }),
            _ => Err(format!("`{text}` is not a driver version: write e.g. \"570.133.07\"")),
        }
    }
}

impl PartialEq for DriverVersion {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Ord for DriverVersion {
    fn cmp(&self, other: &Self) -> Ordering {
        let len = self.parts.len().max(other.parts.len());
        (0..len).map(|i| self.part(i).cmp(&other.part(i))).find(|o| o.is_ne()).unwrap_or(Ordering::Equal)
    }
}

impl PartialOrd for DriverVersion {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Display for DriverVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl Serialize for DriverVersion {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for DriverVersion {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(text: &str) -> DriverVersion {
        text.parse().unwrap()
    }

    #[test]
    fn driver_versions_compare_part_by_part() {
        assert!(v("550.144.03") > v("525.60.13"));
        assert!(v("525.60.13") >= v("525.60.13"));
        assert!(v("525.60.12") < v("525.60.13"));
        assert!(v("580.65.06") >= v("580"));
        assert!(v("575.57.08") < v("580"));
        assert_eq!(v("580"), v("580.0.0"));
        assert!(v("1000.1") > v("999.99.99"));
        assert!("".parse::<DriverVersion>().is_err());
        assert!("570.x".parse::<DriverVersion>().is_err());
        assert_eq!(v("570.133.07").to_string(), "570.133.07");
    }
}
