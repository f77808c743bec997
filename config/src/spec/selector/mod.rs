//! Target selectors: the small expression language that picks machines by their facts,
//! e.g. `gpu.compute >= 8.9 && pool == render-a`. A selector is parsed and type-checked
//! once, when the spec is loaded, so that a typo is an error pointing at its byte
//! offset rather than a selector that silently matches nothing; it is then evaluated
//! against [`MachineFacts`] with no I/O.
//!
//! ## Target selectors
//!
//! A selector is one line of text that is true or false for each machine:
//!
//! ```text
//! gpu.compute >= 8.9 && gpu.memory >= 24 && (pool == render-a || pool == render-b)
//! ```
//!
//! A condition compares a field with a value using `==`, `!=`, `<`, `<=`, `>`, `>=`,
//! `in [v1, v2, ...]` (equal to one of the values) or `contains "text"` (text fields
//! only). Conditions are combined with `&&` (or `and`), `||` (or `or`), `!` (or `not`)
//! and parentheses; `&&` binds tighter than `||`, so `a || b && c` means
//! `a || (b && c)`.
//!
//! | Field | Value | Example |
//! |---|---|---|
//! | `gpu.compute` | compute capability of every GPU, `MAJOR.MINOR` | `gpu.compute >= 8.0` |
//! | `gpu.memory` | memory of every GPU in GiB (may be fractional) | `gpu.memory >= 47.5` |
//! | `gpu.name` | name of every GPU (text) | `gpu.name contains "H100"` |
//! | `gpu.count` | number of GPUs (whole number) | `gpu.count >= 2` |
//! | `driver.cuda` | newest CUDA version the driver supports | `driver.cuda >= 12.8` |
//! | `driver.version` | NVIDIA driver version | `driver.version >= 570.124.06` |
//! | `host.os`, `host.arch` | text | `host.arch == x86_64` |
//! | `machine.id`, `machine.hostname` | text | `machine.hostname in [ws-01, ws-02]` |
//! | `labels.KEY`, or just `KEY` | the machine's label (text) | `pool == render-a` |
//!
//! Queries over the fleet (`comfyfleet machines --where`, `comfyfleet report`, the web
//! page) also select on what runs on the machines; a spec's selector cannot, since its
//! plan would change what it matches:
//!
//! | Field | Value | Example |
//! |---|---|---|
//! | `env.name`, `env.revision` | the current environment and its revision number | `env.revision >= 3` |
//! | `env.torch`, `env.cuda`, `env.python` | its torch build, CUDA build and Python (text) | `env.cuda == cu128` |
//! | `phase` | `idle`, `preparing`, `prepared`, `activating`, `active` or `failed` | `phase == failed` |
//! | `drift` | whether the current environment differs from what was verified | `drift == true` |
//! | `opt.NAME` | the optimisation on the current environment: `verified`, `failed`, `skipped`, `pending` or `absent` | `opt.sageattention != verified` |
//!
//! - `gpu.compute`, `gpu.memory` and `gpu.name` hold when the machine has at least one
//!   GPU and *every* GPU satisfies the condition; a GPU whose value could not be read
//!   fails it. So `gpu.compute >= 8.0` is false on a machine with an 8.6 and a 7.5 GPU,
//!   and false on a machine without GPUs.
//! - `driver.version` is compared number by number, a missing number counting as 0:
//!   `driver.version >= 570` holds for 570.133.07, `driver.version == 570` does not.
//! - Text is compared exactly (case matters). A text value is a double-quoted string,
//!   where `\"` and `\\` stand for `"` and `\`, or a bare word such as `render-a`,
//!   `x86_64` or `12`. Quote values with spaces or other punctuation, and values that
//!   are keywords (`"in"`).
//! - A name that is not a field is a label: `pool` means `labels.pool`. The words
//!   `and`, `or`, `not`, `in`, `contains`, the fields `phase` and `drift` and the field
//!   groups `gpu`, `driver`, `host`, `machine`, `env`, `opt` and `labels` are
//!   reserved: write `labels.gpu` for a label named `gpu`, and `labels.3d` for a label
//!   whose name starts with a digit.
//! - A label the machine lacks, or a fact it has not reported, makes a condition false,
//!   except `!=` on text, which is true: `pool != render-a` also picks machines with no
//!   `pool` label. (A GPU whose name is unknown still fails `gpu.name != ...`.)
//! - A selector is at most 4096 bytes long, with parentheses and negations nested at
//!   most 64 deep.

use std::borrow::Cow;
use std::cmp::Ordering;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::convergence::Phase;
use crate::inventory::{ComputeCapability, CudaVersion};
use crate::machine_facts::{MachineFacts, OptimizationOutcomeKind};

mod evaluate;
mod lexer;
mod parser;
#[cfg(test)]
mod tests;

use evaluate::*;
use lexer::*;
use parser::*;

/// Longest selector accepted, in bytes.
pub const MAX_SELECTOR_BYTES: usize = 4096;
/// Deepest nesting of parentheses and negations; it bounds the recursion of the parser
/// and of evaluation, so no input can overflow the stack.
pub const MAX_SELECTOR_DEPTH: usize = 64;

pub(super) const BYTES_PER_GIB: f64 = 1_073_741_824.0;

/// A parsed, type-checked target selector; it remembers the text it was written as.
#[derive(Debug, Clone, PartialEq)]
pub struct Selector {
    text: String,
    expression: Expression,
}

/// Why a selector was refused: where in the text the problem starts (a byte offset)
/// and what to write instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct SelectorError {
    pub offset: usize,
    pub message: String,
}

impl SelectorError {
    pub(super) fn new(offset: usize, message: impl Into<String>) -> Self {
        Self { offset, message: message.into() }
    }
}

impl Selector {
    /// A spec's selector: hardware, driver, host and labels.
    pub fn parse(text: &str) -> Result<Selector, SelectorError> {
        Selector::parse_with(text, false)
    }

    /// A query over the fleet (`comfyfleet machines --where`, reports, the web page):
    /// also what runs on the machines, `env.*`, `phase`, `drift` and `opt.NAME`.
    pub fn parse_query(text: &str) -> Result<Selector, SelectorError> {
        Selector::parse_with(text, true)
    }

    fn parse_with(text: &str, software: bool) -> Result<Selector, SelectorError> {
        if text.len() > MAX_SELECTOR_BYTES {
            let offset = (0..=MAX_SELECTOR_BYTES).rev().find(|&at| text.is_char_boundary(at)).unwrap_or(0);
            let message = format!(
                "the selector is {} bytes long, more than the {MAX_SELECTOR_BYTES} allowed: shorten it, \
                 e.g. by giving the machines a label and selecting on it",
                text.len()
            );
            return Err(SelectorError::new(offset, message));
        }
        let tokens = lex(text)?;
        let expression = Parser { text, tokens, position: 0, depth: 0, software }.parse_selector()?;
        Ok(Selector { text: text.to_owned(), expression })
    }

    pub fn matches(&self, machine: &MachineFacts) -> bool {
        self.expression.matches(machine)
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl FromStr for Selector {
    type Err = SelectorError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Selector::parse(text)
    }
}

impl Serialize for Selector {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.text)
    }
}

impl<'de> Deserialize<'de> for Selector {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Selector::parse(&text).map_err(|err| {
            let character = text.get(..err.offset).map_or(0, |before| before.chars().count()) + 1;
            serde::de::Error::custom(format!("{}{SELECTOR_AT}{character}{SELECTOR_AT_END}", err.message))
        })
    }
}

/// How a deserialised selector's error says where in the selector it is; the spec
/// reader turns it into a file position.
pub(crate) const SELECTOR_AT: &str = " (at character ";
const SELECTOR_AT_END: &str = " of the selector)";
