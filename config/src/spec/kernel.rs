//! What a prebuilt kernel wheel says it is for, beyond its GPUs ([`super::ComputeSet`]):
//! the Pythons it serves ([`WheelPython`]: `cp312`, or `cp39-abi3` for a stable-ABI
//! wheel), the torch releases it was built against ([`TorchMatch`]: `2.8`, or
//! `>=2.9` for a wheel built on torch's stable ABI), and the call that proves its
//! kernels run ([`SmokeCall`]).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::values::{PythonVersion, Specifiers, TorchSeries, string_serde};

/// The CPython a wheel serves: `cp312` (exactly 3.12) or `cp39-abi3` (3.9 and later,
/// through the stable ABI).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct WheelPython {
    pub minor: u32,
    pub abi3: bool,
}

impl WheelPython {
    /// Whether a venv of this Python can install the wheel.
    pub fn serves(&self, python: PythonVersion) -> bool {
        python.major == 3 && if self.abi3 { self.minor <= python.minor } else { self.minor == python.minor }
    }

    /// The interpreter tag in the wheel's file name: `cp39`.
    pub fn interpreter_tag(&self) -> String {
        format!("cp3{}", self.minor)
    }
}

impl FromStr for WheelPython {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad = || {
            format!(
                "`{}` is not a CPython wheel tag: write the venv's tag (\"cp312\") or, for a stable-ABI wheel, \
                 the oldest CPython it serves and abi3 (\"cp39-abi3\")",
                super::names::printable(text)
            )
        };
        let (interpreter, abi3) = match text.split_once('-') {
            Some((interpreter, "abi3")) => (interpreter, true),
            Some(_) => return Err(bad()),
            None => (text, false),
        };
        let digits = interpreter.strip_prefix("cp3").ok_or_else(bad)?;
        if !(1..=2).contains(&digits.len()) || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        Ok(Self { minor: digits.parse().map_err(|_| bad())?, abi3 })
    }
}

impl fmt::Display for WheelPython {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cp3{}{}", self.minor, if self.abi3 { "-abi3" } else { "" })
    }
}

/// The torch releases a kernel wheel runs with: one series (`"2.8"`, the usual ABI
/// tie) or a range of them (`">=2.9"`, a wheel on torch's stable ABI).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum TorchMatch {
    Series(TorchSeries),
    Range(Specifiers),
}

impl TorchMatch {
    pub fn contains(&self, series: TorchSeries) -> bool {
        match self {
            TorchMatch::Series(own) => *own == series,
            TorchMatch::Range(specifiers) => pep440_rs::Version::from_str(&series.to_string())
                .is_ok_and(|version| specifiers.contains(&version)),
        }
    }
}

impl FromStr for TorchMatch {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let trimmed = text.trim();
        if trimmed.starts_with(['<', '>', '=', '!', '~']) {
            trimmed.parse().map(TorchMatch::Range).map_err(|_| {
                format!("`{text}` is not a range of torch series: write e.g. \">=2.9\" or \">=2.9,<2.12\"")
            })
        } else {
            trimmed.parse().map(TorchMatch::Series).map_err(|_| {
                format!("`{text}` is not a torch series or range: write \"2.8\", or \">=2.9\" for a wheel on torch's stable ABI")
            })
        }
    }
}

impl fmt::Display for TorchMatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TorchMatch::Series(series) => series.fmt(f),
            TorchMatch::Range(specifiers) => specifiers.fmt(f),
        }
    }
}

string_serde!(WheelPython);
string_serde!(TorchMatch);

/// The call that proves an optimisation's kernels run: made by the verify step on
/// every GPU of the machine, in the environment's own Python.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmokeCall {
    /// `module.function`, e.g. `sageattention.sageattn`.
    pub call: String,
    /// What the function is called with.
    #[serde(default, skip_serializing_if = "SmokeInputs::is_default")]
    pub inputs: SmokeInputs,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SmokeInputs {
    /// `call(q, k, v)`: three float16 tensors of shape (1, 2, 128, 64) on the GPU, in
    /// the (batch, heads, tokens, head dim) layout attention kernels take by default;
    /// the result must have q's shape.
    #[default]
    Attention,
    /// `call(device)`: the package's own self-test, given a `torch.device`.
    Device,
}

impl SmokeInputs {
    fn is_default(&self) -> bool {
        *self == SmokeInputs::default()
    }
}

impl SmokeCall {
    /// Why `call` is not a `module.function` path, if it is not.
    pub fn check(&self) -> Result<(), String> {
        let parts: Vec<&str> = self.call.split('.').collect();
        let identifier = |part: &&str| {
            part.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && part.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        };
        if parts.len() >= 2 && parts.iter().all(identifier) {
            Ok(())
        } else {
            Err(format!(
                "`{}` is not a Python function path: write module.function, e.g. \"sageattention.sageattn\"",
                super::names::printable(&self.call)
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn python(text: &str) -> PythonVersion {
        text.parse().unwrap()
    }

    #[test]
    fn wheel_pythons_serve_their_venvs() {
        let abi3: WheelPython = "cp39-abi3".parse().unwrap();
        for venv in ["3.9", "3.11", "3.12", "3.13", "3.14"] {
            assert!(abi3.serves(python(venv)), "{venv}");
        }
        let cp312: WheelPython = "cp312".parse().unwrap();
        assert!(
            cp312.serves(python("3.12")) && !cp312.serves(python("3.13")) && !cp312.serves(python("3.11"))
        );
        let cp310: WheelPython = "cp310-abi3".parse().unwrap();
        assert!(!cp310.serves(python("3.9")));
        assert_eq!(abi3.to_string(), "cp39-abi3");
        for bad in ["cp3", "py3", "cp312-cp312", "cp39-abi4", "312", "cp3x"] {
            assert!(bad.parse::<WheelPython>().is_err(), "{bad}");
        }
    }

    #[test]
    fn torch_matches_take_a_series_or_a_range() {
        let series = |text: &str| text.parse::<TorchSeries>().unwrap();
        let stable: TorchMatch = ">=2.9".parse().unwrap();
        assert!(
            stable.contains(series("2.9"))
                && stable.contains(series("2.10"))
                && !stable.contains(series("2.8"))
        );
        let bounded: TorchMatch = ">=2.9,<2.12".parse().unwrap();
        assert!(bounded.contains(series("2.11")) && !bounded.contains(series("2.12")));
        let exact: TorchMatch = "2.8".parse().unwrap();
        assert!(exact.contains(series("2.8")) && !exact.contains(series("2.9")));
        assert_eq!(stable.to_string(), ">=2.9");
        assert!("2".parse::<TorchMatch>().is_err() && ">=two".parse::<TorchMatch>().is_err());
    }

    #[test]
    fn smoke_calls_are_function_paths() {
        let call = |text: &str| SmokeCall { call: text.to_owned(), inputs: SmokeInputs::Attention };
        assert!(call("sageattention.sageattn").check().is_ok());
        assert!(call("sageattn3.api.sageattn3_blackwell").check().is_ok());
        for bad in ["sageattn", "os.system('x')", "a..b", "1x.y", ""] {
            assert!(call(bad).check().is_err(), "{bad}");
        }
    }
}
