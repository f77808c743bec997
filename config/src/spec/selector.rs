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
//!   `and`, `or`, `not`, `in`, `contains` and the field groups `gpu`, `driver`, `host`,
//!   `machine` and `labels` are reserved: write `labels.gpu` for a label named `gpu`,
//!   and `labels.3d` for a label whose name starts with a digit.
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

use crate::inventory::{ComputeCapability, CudaVersion};
use crate::resolve::MachineFacts;

/// Longest selector accepted, in bytes.
pub const MAX_SELECTOR_BYTES: usize = 4096;
/// Deepest nesting of parentheses and negations; it bounds the recursion of the parser
/// and of evaluation, so no input can overflow the stack.
pub const MAX_SELECTOR_DEPTH: usize = 64;

const BYTES_PER_GIB: f64 = 1_073_741_824.0;

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
    fn new(offset: usize, message: impl Into<String>) -> Self {
        Self { offset, message: message.into() }
    }
}

impl Selector {
    pub fn parse(text: &str) -> Result<Selector, SelectorError> {
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
        let expression = Parser { text, tokens, position: 0, depth: 0 }.parse_selector()?;
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

#[derive(Debug, Clone, PartialEq)]
enum Expression {
    Any(Vec<Expression>),
    All(Vec<Expression>),
    Not(Box<Expression>),
    Condition(Condition),
}

impl Expression {
    fn matches(&self, machine: &MachineFacts) -> bool {
        match self {
            Expression::Any(terms) => terms.iter().any(|term| term.matches(machine)),
            Expression::All(terms) => terms.iter().all(|term| term.matches(machine)),
            Expression::Not(inner) => !inner.matches(machine),
            Expression::Condition(condition) => condition.matches(machine),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
struct Condition {
    field: Field,
    test: Test,
}

impl Condition {
    fn matches(&self, machine: &MachineFacts) -> bool {
        match &self.field {
            Field::Gpu(field) => {
                !machine.gpus.is_empty()
                    && machine.gpus.iter().all(|gpu| {
                        let fact = match field {
                            GpuField::Compute => gpu.compute_capability.map(Value::ComputeCapability),
                            GpuField::Memory => gpu
                                .memory_total_bytes
                                .map(|bytes| Value::Gibibytes(bytes as f64 / BYTES_PER_GIB)),
                            GpuField::Name => gpu.name.as_deref().map(|name| Value::Text(name.into())),
                        };
                        fact.is_some_and(|fact| self.test.holds(&fact))
                    })
            }
            Field::GpuCount => {
                self.test.holds(&Value::Count(u64::try_from(machine.gpus.len()).unwrap_or(u64::MAX)))
            }
            Field::DriverCuda => {
                machine.cuda_driver_version.is_some_and(|cuda| self.test.holds(&Value::CudaVersion(cuda)))
            }
            Field::DriverVersion => machine
                .driver_version
                .as_deref()
                .and_then(parse_version)
                .is_some_and(|version| self.test.holds(&Value::DriverVersion(version))),
            Field::HostOs => self.text_holds(machine.os.as_deref()),
            Field::HostArch => self.text_holds(machine.arch.as_deref()),
            Field::MachineId => self.text_holds(Some(&machine.id)),
            Field::MachineHostname => self.text_holds(Some(&machine.hostname)),
            Field::Label(key) => self.text_holds(machine.labels.get(key).map(String::as_str)),
        }
    }

    fn text_holds(&self, value: Option<&str>) -> bool {
        match value {
            Some(text) => self.test.holds(&Value::Text(text.into())),
            // A missing label equals nothing, so "is not X" is true of it.
            None => matches!(self.test, Test::Compare(Operator::Ne, _)),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Field {
    Gpu(GpuField),
    GpuCount,
    DriverCuda,
    DriverVersion,
    HostOs,
    HostArch,
    MachineId,
    MachineHostname,
    Label(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum GpuField {
    Compute,
    Memory,
    Name,
}

const FIELD_NAMES: [(&str, Field); 10] = [
    ("gpu.compute", Field::Gpu(GpuField::Compute)),
    ("gpu.memory", Field::Gpu(GpuField::Memory)),
    ("gpu.name", Field::Gpu(GpuField::Name)),
    ("gpu.count", Field::GpuCount),
    ("driver.cuda", Field::DriverCuda),
    ("driver.version", Field::DriverVersion),
    ("host.os", Field::HostOs),
    ("host.arch", Field::HostArch),
    ("machine.id", Field::MachineId),
    ("machine.hostname", Field::MachineHostname),
];

/// What kind of value a field holds, which decides the operators and literals allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Text,
    ComputeCapability,
    Gibibytes,
    Count,
    CudaVersion,
    DriverVersion,
}

impl Field {
    fn kind(&self) -> Kind {
        match self {
            Field::Gpu(GpuField::Compute) => Kind::ComputeCapability,
            Field::Gpu(GpuField::Memory) => Kind::Gibibytes,
            Field::GpuCount => Kind::Count,
            Field::DriverCuda => Kind::CudaVersion,
            Field::DriverVersion => Kind::DriverVersion,
            Field::Gpu(GpuField::Name)
            | Field::HostOs
            | Field::HostArch
            | Field::MachineId
            | Field::MachineHostname
            | Field::Label(_) => Kind::Text,
        }
    }

    /// The field a word names; `offset` is where the word starts, for errors.
    fn named(word: &str, offset: usize) -> Result<Field, SelectorError> {
        match FIELD_NAMES.iter().find(|(name, _)| *name == word) {
            Some((_, field)) => Ok(field.clone()),
            None => Field::label_named(word, offset),
        }
    }

    fn label_named(word: &str, offset: usize) -> Result<Field, SelectorError> {
        if let Some(key) = word.strip_prefix("labels.")
            && !key.is_empty()
        {
            return Ok(Field::Label(key.to_owned()));
        }
        let group = word.split_once('.').map_or(word, |(group, _)| group);
        let known = match group {
            "gpu" => "the gpu fields are gpu.compute, gpu.memory, gpu.name and gpu.count",
            "driver" => "the driver fields are driver.cuda and driver.version",
            "host" => "the host fields are host.os and host.arch",
            "machine" => "the machine fields are machine.id and machine.hostname",
            "labels" => "write labels.KEY, e.g. labels.pool",
            _ if word.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_') => {
                return Ok(Field::Label(word.to_owned()));
            }
            _ => {
                return Err(SelectorError::new(
                    offset,
                    format!(
                        "expected a field such as gpu.compute or a label name, found `{word}`: \
                         put the field on the left, e.g. gpu.compute >= 8.0"
                    ),
                ));
            }
        };
        Err(SelectorError::new(
            offset,
            format!("`{word}` is not a field: {known} (for a label with this name, write labels.{word})"),
        ))
    }
}

impl fmt::Display for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self, FIELD_NAMES.iter().find(|(_, field)| field == self)) {
            (Field::Label(key), _) => write!(f, "labels.{key}"),
            (_, Some((name, _))) => f.write_str(name),
            (_, None) => write!(f, "{self:?}"),
        }
    }
}

impl Kind {
    fn hint(self) -> &'static str {
        match self {
            Kind::Text => "write a quoted string such as \"render-a\"",
            Kind::ComputeCapability => "write a compute capability such as 8.9",
            Kind::Gibibytes => "write a size in GiB such as 24 or 79.5",
            Kind::Count => "write a whole number such as 8",
            Kind::CudaVersion => "write a CUDA version such as 12.8",
            Kind::DriverVersion => "write a driver version such as 570 or 570.133.07",
        }
    }

    /// The literal a bare word stands for, if it is one of this kind.
    fn literal(self, word: &str) -> Option<Literal> {
        match self {
            Kind::Text => Some(Value::Text(word.to_owned().into())),
            Kind::ComputeCapability => word.parse().ok().map(Value::ComputeCapability),
            Kind::CudaVersion => word.parse().ok().map(Value::CudaVersion),
            Kind::Count => word.parse().ok().filter(|_| is_digits(word)).map(Value::Count),
            Kind::Gibibytes => {
                let (whole, fraction) = word.split_once('.').unwrap_or((word, "0"));
                let decimal = is_digits(whole) && is_digits(fraction);
                word.parse().ok().filter(|size: &f64| decimal && size.is_finite()).map(Value::Gibibytes)
            }
            Kind::DriverVersion => parse_version(word).map(Value::DriverVersion),
        }
    }
}

/// A value of one [`Kind`]: borrowed when a machine reports it, owned when the selector
/// holds it (a [`Literal`]).
#[derive(Debug, Clone, PartialEq)]
enum Value<'a> {
    Text(Cow<'a, str>),
    ComputeCapability(ComputeCapability),
    Gibibytes(f64),
    Count(u64),
    CudaVersion(CudaVersion),
    DriverVersion(Vec<u64>),
}

type Literal = Value<'static>;

/// `None` for values of different kinds, which type checking rules out.
fn compare(fact: &Value<'_>, literal: &Literal) -> Option<Ordering> {
    match (fact, literal) {
        (Value::Text(fact), Value::Text(literal)) => Some(fact.as_ref().cmp(literal.as_ref())),
        (Value::ComputeCapability(fact), Value::ComputeCapability(literal)) => Some(fact.cmp(literal)),
        (Value::Gibibytes(fact), Value::Gibibytes(literal)) => fact.partial_cmp(literal),
        (Value::Count(fact), Value::Count(literal)) => Some(fact.cmp(literal)),
        (Value::CudaVersion(fact), Value::CudaVersion(literal)) => Some(fact.cmp(literal)),
        (Value::DriverVersion(fact), Value::DriverVersion(literal)) => Some(compare_versions(fact, literal)),
        _ => None,
    }
}

/// Dotted numeric versions, number by number; a missing number counts as 0.
fn compare_versions(left: &[u64], right: &[u64]) -> Ordering {
    (0..left.len().max(right.len()))
        .map(|at| left.get(at).copied().unwrap_or(0).cmp(&right.get(at).copied().unwrap_or(0)))
        .find(|ordering| ordering.is_ne())
        .unwrap_or(Ordering::Equal)
}

/// `570.133.07` → `[570, 133, 7]`; `None` for anything that is not dotted numbers.
fn parse_version(text: &str) -> Option<Vec<u64>> {
    text.trim().split('.').map(|part| part.parse().ok().filter(|_| is_digits(part))).collect()
}

/// Plain decimal digits, at least one (`str::parse` would also take a leading `+`).
fn is_digits(text: &str) -> bool {
    !text.is_empty() && text.bytes().all(|byte| byte.is_ascii_digit())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Operator {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

impl Operator {
    fn accepts(self, ordering: Ordering) -> bool {
        match self {
            Operator::Eq => ordering.is_eq(),
            Operator::Ne => ordering.is_ne(),
            Operator::Lt => ordering.is_lt(),
            Operator::Le => ordering.is_le(),
            Operator::Gt => ordering.is_gt(),
            Operator::Ge => ordering.is_ge(),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Test {
    Compare(Operator, Literal),
    In(Vec<Literal>),
    Contains(String),
}

impl Test {
    fn holds(&self, fact: &Value<'_>) -> bool {
        match self {
            Test::Compare(operator, literal) => compare(fact, literal).is_some_and(|o| operator.accepts(o)),
            Test::In(literals) => {
                literals.iter().any(|literal| compare(fact, literal) == Some(Ordering::Equal))
            }
            Test::Contains(needle) => matches!(fact, Value::Text(text) if text.contains(needle.as_str())),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
enum TokenKind {
    And,
    Or,
    Not,
    In,
    Contains,
    LeftParen,
    RightParen,
    LeftBracket,
    RightBracket,
    Comma,
    Compare(Operator),
    /// A bare word: a field, a label name, a number, a version or an unquoted value.
    Word(String),
    /// A double-quoted string, escapes resolved.
    Quoted(String),
}

#[derive(Debug, Clone)]
struct Token {
    kind: TokenKind,
    start: usize,
    end: usize,
}

fn is_word_start(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

fn is_word_continue(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-' | '/')
}

fn lex(text: &str) -> Result<Vec<Token>, SelectorError> {
    let mut tokens = Vec::new();
    let mut chars = text.char_indices().peekable();
    while let Some((start, c)) = chars.next() {
        let mut followed_by = |next: char| chars.next_if(|&(_, c)| c == next).is_some();
        let kind = match c {
            c if c.is_whitespace() => continue,
            '(' => TokenKind::LeftParen,
            ')' => TokenKind::RightParen,
            '[' => TokenKind::LeftBracket,
            ']' => TokenKind::RightBracket,
            ',' => TokenKind::Comma,
            '&' if followed_by('&') => TokenKind::And,
            '|' if followed_by('|') => TokenKind::Or,
            '&' => return Err(SelectorError::new(start, "a single & is not an operator: write && for and")),
            '|' => return Err(SelectorError::new(start, "a single | is not an operator: write || for or")),
            '=' if followed_by('=') => TokenKind::Compare(Operator::Eq),
            '=' => return Err(SelectorError::new(start, "a single = does not compare: write == to compare")),
            '!' if followed_by('=') => TokenKind::Compare(Operator::Ne),
            '!' => TokenKind::Not,
            '<' if followed_by('=') => TokenKind::Compare(Operator::Le),
            '<' => TokenKind::Compare(Operator::Lt),
            '>' if followed_by('=') => TokenKind::Compare(Operator::Ge),
            '>' => TokenKind::Compare(Operator::Gt),
            '"' => TokenKind::Quoted(lex_string(&mut chars, start)?),
            c if is_word_start(c) => {
                let mut end = start + c.len_utf8();
                while let Some((at, c)) = chars.next_if(|&(_, c)| is_word_continue(c)) {
                    end = at + c.len_utf8();
                }
                match text.get(start..end).unwrap_or_default() {
                    "and" => TokenKind::And,
                    "or" => TokenKind::Or,
                    "not" => TokenKind::Not,
                    "in" => TokenKind::In,
                    "contains" => TokenKind::Contains,
                    word => TokenKind::Word(word.to_owned()),
                }
            }
            other => {
                let message = format!(
                    "unexpected character `{}`: a selector is made of fields, values in double quotes, \
                     == != < <= > >=, in [...], contains, && || ! and parentheses",
                    other.escape_debug()
                );
                return Err(SelectorError::new(start, message));
            }
        };
        let end = chars.peek().map_or(text.len(), |&(at, _)| at);
        tokens.push(Token { kind, start, end });
    }
    Ok(tokens)
}

/// The rest of a string whose opening quote is at `start`.
fn lex_string(
    chars: &mut std::iter::Peekable<std::str::CharIndices<'_>>,
    start: usize,
) -> Result<String, SelectorError> {
    let mut value = String::new();
    while let Some((at, c)) = chars.next() {
        match c {
            '"' => return Ok(value),
            '\\' => match chars.next() {
                Some((_, escaped @ ('"' | '\\'))) => value.push(escaped),
                Some((_, other)) => {
                    let escape = other.escape_debug();
                    let message =
                        format!("unknown escape `\\{escape}`: write \\\" for a quote, \\\\ for a backslash");
                    return Err(SelectorError::new(at, message));
                }
                None => break,
            },
            other => value.push(other),
        }
    }
    Err(SelectorError::new(start, "unterminated string: close it with a double quote (\")"))
}

struct Parser<'a> {
    text: &'a str,
    tokens: Vec<Token>,
    position: usize,
    depth: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.position)
    }

    fn next_token(&mut self) -> Option<Token> {
        let token = self.peek().cloned();
        self.position += usize::from(token.is_some());
        token
    }

    /// Consumes the next token if it is `kind`.
    fn eat(&mut self, kind: &TokenKind) -> bool {
        let matched = self.peek().is_some_and(|token| token.kind == *kind);
        self.position += usize::from(matched);
        matched
    }

    /// Where `token` starts, or the end of the text when there is none.
    fn offset(&self, token: Option<&Token>) -> usize {
        token.map_or(self.text.len(), |token| token.start)
    }

    /// "expected …, found `…`: advice", pointing at `found` (or at the end of the text).
    fn unexpected(&self, found: Option<&Token>, expected: &str, advice: &str) -> SelectorError {
        let written = match found {
            Some(token) => format!("`{}`", self.text.get(token.start..token.end).unwrap_or_default()),
            None => "the end of the selector".to_owned(),
        };
        SelectorError::new(self.offset(found), format!("expected {expected}, found {written}: {advice}"))
    }

    fn parse_selector(&mut self) -> Result<Expression, SelectorError> {
        if self.tokens.is_empty() {
            return Err(SelectorError::new(
                0,
                "the selector is empty: write a condition such as pool == render-a",
            ));
        }
        let expression = self.parse_any()?;
        match self.peek() {
            None => Ok(expression),
            Some(token) if token.kind == TokenKind::RightParen => Err(SelectorError::new(
                token.start,
                "unbalanced parentheses: this `)` has no matching `(`; remove it",
            )),
            token => Err(self.unexpected(token, "the end of the selector", "join conditions with && or ||")),
        }
    }

    fn parse_any(&mut self) -> Result<Expression, SelectorError> {
        self.parse_joined(&TokenKind::Or, Self::parse_all, Expression::Any)
    }

    fn parse_all(&mut self) -> Result<Expression, SelectorError> {
        self.parse_joined(&TokenKind::And, Self::parse_unary, Expression::All)
    }

    /// `term (joiner term)*`; a single term stands for itself.
    fn parse_joined(
        &mut self,
        joiner: &TokenKind,
        term: fn(&mut Self) -> Result<Expression, SelectorError>,
        join: fn(Vec<Expression>) -> Expression,
    ) -> Result<Expression, SelectorError> {
        let mut terms = vec![term(self)?];
        while self.eat(joiner) {
            terms.push(term(self)?);
        }
        Ok(match <[Expression; 1]>::try_from(terms) {
            Ok([only]) => only,
            Err(terms) => join(terms),
        })
    }

    fn parse_unary(&mut self) -> Result<Expression, SelectorError> {
        let Some(token) = self.next_token() else {
            return Err(self.unexpected(None, "a condition", "add one, e.g. pool == render-a"));
        };
        if !matches!(token.kind, TokenKind::Not | TokenKind::LeftParen) {
            return self.parse_condition(token);
        }
        self.depth += 1;
        if self.depth > MAX_SELECTOR_DEPTH {
            let message = format!("nested more than {MAX_SELECTOR_DEPTH} deep: write a simpler selector");
            return Err(SelectorError::new(token.start, message));
        }
        let expression = if token.kind == TokenKind::Not {
            Expression::Not(Box::new(self.parse_unary()?))
        } else {
            let inner = self.parse_any()?;
            if !self.eat(&TokenKind::RightParen) {
                return Err(match self.peek() {
                    None => SelectorError::new(
                        token.start,
                        "unbalanced parentheses: this `(` is never closed; add a `)`",
                    ),
                    next => self.unexpected(
                        next,
                        "`)`, && or ||",
                        "close the `(` or join conditions with && or ||",
                    ),
                });
            }
            inner
        };
        self.depth -= 1;
        Ok(expression)
    }

    fn parse_condition(&mut self, token: Token) -> Result<Expression, SelectorError> {
        let TokenKind::Word(word) = &token.kind else {
            return Err(self.unexpected(Some(&token), "a condition", "write one such as pool == render-a"));
        };
        let field = Field::named(word, token.start)?;
        let kind = field.kind();
        let operator = self.next_token();
        let test = match operator.as_ref().map(|token| &token.kind) {
            Some(TokenKind::Compare(operator @ (Operator::Eq | Operator::Ne))) => {
                Test::Compare(*operator, self.parse_literal(&field)?)
            }
            Some(TokenKind::Compare(operator)) if kind != Kind::Text => {
                Test::Compare(*operator, self.parse_literal(&field)?)
            }
            Some(TokenKind::In) => Test::In(self.parse_list(&field)?),
            Some(TokenKind::Contains) if kind == Kind::Text => Test::Contains(self.parse_text(&field)?),
            Some(TokenKind::Compare(_) | TokenKind::Contains) => {
                let message = if kind == Kind::Text {
                    format!("`{field}` is text: compare it with == or !=, in [...] or contains")
                } else {
                    format!(
                        "`{field}` is not text, so contains does not apply: use ==, !=, <, <=, >, >= or in [...]"
                    )
                };
                return Err(SelectorError::new(self.offset(operator.as_ref()), message));
            }
            _ => {
                let expected = format!("a comparison after `{field}`");
                return Err(self.unexpected(
                    operator.as_ref(),
                    &expected,
                    "write ==, !=, <, <=, >, >=, in [...] or contains",
                ));
            }
        };
        Ok(Expression::Condition(Condition { field, test }))
    }

    /// A value of `field`'s kind.
    fn parse_literal(&mut self, field: &Field) -> Result<Literal, SelectorError> {
        let kind = field.kind();
        if kind == Kind::Text {
            return self.parse_text(field).map(|text| Value::Text(text.into()));
        }
        let token = self.next_token();
        match token.as_ref().map(|token| &token.kind) {
            Some(TokenKind::Word(word)) => kind.literal(word).ok_or_else(|| {
                let message = format!("`{field}` cannot be compared with `{word}`: {}", kind.hint());
                SelectorError::new(self.offset(token.as_ref()), message)
            }),
            Some(TokenKind::Quoted(_)) => Err(SelectorError::new(
                self.offset(token.as_ref()),
                format!("`{field}` is not text: {}, without quotes", kind.hint()),
            )),
            _ => Err(self.unexpected(token.as_ref(), &format!("a value for `{field}`"), kind.hint())),
        }
    }

    /// A quoted string or a bare word, for a text field.
    fn parse_text(&mut self, field: &Field) -> Result<String, SelectorError> {
        let token = self.next_token();
        match token.as_ref().map(|token| &token.kind) {
            Some(TokenKind::Quoted(text) | TokenKind::Word(text)) => Ok(text.clone()),
            _ => Err(self.unexpected(token.as_ref(), &format!("a value for `{field}`"), Kind::Text.hint())),
        }
    }

    /// `[v1, v2, ...]` after `in`; a trailing comma is allowed, an empty list is not.
    fn parse_list(&mut self, field: &Field) -> Result<Vec<Literal>, SelectorError> {
        let open = self.next_token();
        if open.as_ref().is_none_or(|token| token.kind != TokenKind::LeftBracket) {
            let advice = format!("write a list such as {field} in [a, b]");
            return Err(self.unexpected(open.as_ref(), "`[` after `in`", &advice));
        }
        let open_at = self.offset(open.as_ref());
        if let Some(close) = self.peek().filter(|token| token.kind == TokenKind::RightBracket) {
            return Err(SelectorError::new(
                close.start,
                "the list is empty: write at least one value inside [...]",
            ));
        }
        let mut values = Vec::new();
        loop {
            values.push(self.parse_literal(field)?);
            let separator = self.next_token();
            match separator.as_ref().map(|token| &token.kind) {
                Some(TokenKind::RightBracket) => return Ok(values),
                Some(TokenKind::Comma) if self.eat(&TokenKind::RightBracket) => return Ok(values),
                Some(TokenKind::Comma) => {}
                None => return Err(SelectorError::new(open_at, "this `[` is never closed: add a `]`")),
                Some(_) => {
                    return Err(self.unexpected(
                        separator.as_ref(),
                        "`,` or `]`",
                        "separate values with commas",
                    ));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn gpu(index: u32, name: &str, compute: &str, memory_mib: u64) -> serde_json::Value {
        json!({
            "index": index,
            "name": name,
            "compute_capability": compute,
            "memory_total_bytes": memory_mib << 20,
        })
    }

    /// Built through JSON so the fixtures read like `comfyfleet machines -o json`.
    fn machine(
        id: &str,
        labels: serde_json::Value,
        driver: Option<(&str, &str)>,
        gpus: Vec<serde_json::Value>,
    ) -> MachineFacts {
        serde_json::from_value(json!({
            "id": id,
            "hostname": format!("{id}.example.net"),
            "labels": labels,
            "os": "Debian GNU/Linux 13 (trixie)",
            "arch": "x86_64",
            "nvml_problem": if gpus.is_empty() { Some("no NVIDIA library") } else { None },
            "driver_version": driver.map(|(version, _)| version),
            "cuda_driver_version": driver.map(|(_, cuda)| cuda),
            "gpus": gpus,
            "reported": true,
        }))
        .unwrap()
    }

    fn h100_box() -> MachineFacts {
        let gpus = (0..8).map(|index| gpu(index, "NVIDIA H100 80GB HBM3", "9.0", 81_559)).collect();
        machine("h100-01", json!({"pool": "render-a", "rack": "12"}), Some(("580.95.05", "13.0")), gpus)
    }

    fn mixed_box() -> MachineFacts {
        let gpus =
            vec![gpu(0, "NVIDIA GeForce RTX 4090", "8.9", 24_564), gpu(1, "NVIDIA RTX A6000", "8.6", 49_140)];
        let mut facts = machine(
            "ws-01",
            json!({"pool": "workstation", "note": "say \"hi\" \\o/"}),
            Some(("570.133.07", "12.8")),
            gpus,
        );
        facts.os = Some("Ubuntu 24.04.2 LTS".to_owned());
        facts
    }

    fn no_gpu_box() -> MachineFacts {
        let mut facts = machine("cpu-01", json!({"role": "encode"}), None, Vec::new());
        facts.arch = Some("aarch64".to_owned());
        facts
    }

    /// Reported nothing readable: a GPU with no known fields, an odd driver string, no OS.
    fn unknown_box() -> MachineFacts {
        let mut facts = machine("odd-01", json!({}), None, vec![json!({"index": 0})]);
        facts.driver_version = Some("n/a".to_owned());
        facts.os = None;
        facts.arch = None;
        facts
    }

    fn parse(text: &str) -> Selector {
        Selector::parse(text).unwrap_or_else(|error| panic!("`{text}` should parse: {error:?}"))
    }

    #[test]
    fn selectors_match_the_machines_they_describe() {
        // Expected result on [8×H100, RTX 4090 + A6000, no GPU].
        let cases: &[(&str, [bool; 3])] = &[
            ("gpu.compute >= 8.0", [true, true, false]),
            ("gpu.compute >= 8.9", [true, false, false]),
            ("gpu.compute == 9.0", [true, false, false]),
            ("gpu.compute < 12.0", [true, true, false]),
            ("gpu.compute in [8.6, 8.9]", [false, true, false]),
            ("gpu.compute != 8.9", [true, false, false]),
            ("!(gpu.compute >= 8.9)", [false, true, true]),
            ("gpu.memory >= 40", [true, false, false]),
            ("gpu.memory > 23.5", [true, true, false]),
            ("gpu.memory >= 79.6 && gpu.memory < 79.7", [true, false, false]),
            ("gpu.name contains \"H100\"", [true, false, false]),
            ("gpu.name contains RTX", [false, true, false]),
            ("gpu.name != \"NVIDIA H100 80GB HBM3\"", [false, true, false]),
            ("gpu.name in [\"NVIDIA GeForce RTX 4090\", \"NVIDIA RTX A6000\"]", [false, true, false]),
            ("gpu.count == 8", [true, false, false]),
            ("gpu.count >= 1", [true, true, false]),
            ("gpu.count == 0", [false, false, true]),
            ("gpu.count in [2, 8]", [true, true, false]),
            ("driver.cuda >= 12.8", [true, true, false]),
            ("driver.cuda >= 13.0", [true, false, false]),
            ("driver.cuda != 12.8", [true, false, false]),
            ("driver.version >= 570", [true, true, false]),
            ("driver.version >= 570.133.07", [true, true, false]),
            ("driver.version > 570.133.07", [true, false, false]),
            ("driver.version == 570.133.7", [false, true, false]),
            ("driver.version == 570", [false, false, false]),
            ("driver.version < 580.95.5.1", [true, true, false]),
            ("pool == render-a", [true, false, false]),
            ("labels.pool == \"render-a\"", [true, false, false]),
            ("pool != render-a", [false, true, true]),
            ("pool in [render-a, workstation]", [true, true, false]),
            ("pool contains render", [true, false, false]),
            ("rack == 12", [true, false, false]),
            ("labels.note == \"say \\\"hi\\\" \\\\o/\"", [false, true, false]),
            ("host.os contains Debian", [true, false, true]),
            ("host.arch == x86_64", [true, true, false]),
            ("host.arch in [aarch64]", [false, false, true]),
            ("machine.id == ws-01", [false, true, false]),
            ("machine.hostname == \"cpu-01.example.net\"", [false, false, true]),
            ("pool==render-a&&gpu.count>=8", [true, false, false]),
            ("gpu.count >= 1 and not pool == workstation", [true, false, false]),
            ("pool == render-a or role == encode", [true, false, true]),
            // && binds tighter: this is count 2 || (render-a && count 1).
            ("gpu.count == 2 || pool == render-a && gpu.count == 1", [false, true, false]),
            ("(gpu.count == 2 || pool == render-a) && gpu.count == 1", [false, false, false]),
            ("!!(pool == render-a)", [true, false, false]),
            ("not (gpu.count > 0) || driver.cuda >= 13.0", [true, false, true]),
        ];
        let machines = [h100_box(), mixed_box(), no_gpu_box()];
        for (text, expected) in cases {
            let selector = parse(text);
            let actual = machines.each_ref().map(|machine| selector.matches(machine));
            assert_eq!(actual, *expected, "`{text}`");
        }
    }

    #[test]
    fn unknown_facts_fail_comparisons_except_text_inequality() {
        let facts = unknown_box();
        let cases = [
            ("gpu.compute >= 1.0", false),
            ("!(gpu.compute >= 1.0)", true),
            ("gpu.memory >= 0", false),
            ("gpu.name != \"x\"", false),
            ("gpu.count == 1", true),
            ("driver.version >= 1", false),
            ("driver.cuda >= 1.0", false),
            ("host.os == \"x\"", false),
            ("host.os != \"x\"", true),
            ("host.os contains x", false),
            ("host.arch in [x86_64]", false),
            ("pool != x", true),
            ("pool == x", false),
        ];
        for (text, expected) in cases {
            assert_eq!(parse(text).matches(&facts), expected, "`{text}`");
        }
    }

    #[test]
    fn label_names_and_values_parse_as_written() {
        let facts = machine(
            "m",
            json!({"example.com/pool": "a", "3d": "yes", "in": "x", "gpu": "big", "zone": "eu west"}),
            None,
            Vec::new(),
        );
        for text in [
            "labels.example.com/pool == a",
            "example.com/pool == a",
            "labels.3d == yes",
            "labels.in == x",
            "labels.gpu == big",
            "zone == \"eu west\"",
            "zone contains \" \"",
            "gpu.count in [0,]",
        ] {
            assert!(parse(text).matches(&facts), "`{text}`");
        }
    }

    #[test]
    fn a_selector_keeps_its_text_and_round_trips() {
        let text = "gpu.compute >= 8.9  &&  pool == render-a";
        let selector: Selector = text.parse().unwrap();
        assert_eq!(selector.as_str(), text);
        assert_eq!(selector.to_string(), text);
        assert_eq!(selector, parse(text));
        assert_ne!(selector, parse("gpu.compute >= 8.9 && pool == render-a"));

        #[derive(Debug, PartialEq, Serialize, Deserialize)]
        struct Target {
            select: Selector,
        }
        let json = serde_json::to_string(&Target { select: selector.clone() }).unwrap();
        assert_eq!(json, r#"{"select":"gpu.compute >= 8.9  &&  pool == render-a"}"#);
        assert_eq!(serde_json::from_str::<Target>(&json).unwrap(), Target { select: selector });

        let error = serde_json::from_str::<Target>(r#"{"select":"pool = a"}"#).unwrap_err();
        assert!(error.to_string().contains("write == to compare"), "{error}");
    }

    #[test]
    fn errors_point_at_the_problem_and_say_what_to_write() {
        let long = "a".repeat(MAX_SELECTOR_BYTES + 1);
        // 4097 bytes where byte 4096 is inside a two-byte character.
        let long_unicode = format!("x{}", "é".repeat(2048));
        let deep_parens = format!("{}pool == a{}", "(".repeat(65), ")".repeat(65));
        let deep_bangs = format!("{}pool == a", "!".repeat(65));
        let deep_nots = format!("{}pool == a", "not ".repeat(65));
        let only_bangs = "!".repeat(4000);
        let cases: &[(&str, usize, &str)] = &[
            ("", 0, "the selector is empty: write a condition such as pool == render-a"),
            (" \t\n", 0, "the selector is empty"),
            ("gpu.compute >= 8.0 )", 19, "this `)` has no matching `(`"),
            ("(gpu.count > 1", 0, "unbalanced parentheses: this `(` is never closed; add a `)`"),
            ("((pool == a)", 0, "this `(` is never closed"),
            ("(gpu.count > 1 pool == a", 15, "expected `)`, && or ||, found `pool`"),
            ("pool == \"render", 8, "unterminated string: close it with a double quote"),
            ("pool == \"a\\nb\"", 10, "unknown escape `\\n`: write \\\" for a quote"),
            ("pool = render-a", 5, "a single = does not compare: write == to compare"),
            ("pool == a & b", 10, "write && for and"),
            ("pool == a | b", 10, "write || for or"),
            ("pool == a; rm", 9, "unexpected character `;`"),
            ("pool == réna", 9, "unexpected character `é`"),
            ("pool < render-a", 5, "`labels.pool` is text: compare it with == or !=, in [...] or contains"),
            ("labels.pool >= 3", 12, "`labels.pool` is text: compare it with == or !="),
            ("gpu.name > a", 9, "`gpu.name` is text"),
            (
                "gpu.compute >= 8",
                15,
                "`gpu.compute` cannot be compared with `8`: write a compute capability such as 8.9",
            ),
            ("gpu.compute >= abc", 15, "write a compute capability such as 8.9"),
            ("gpu.compute >= 8.10", 15, "write a compute capability such as 8.9"),
            (
                "gpu.compute == \"8.9\"",
                15,
                "`gpu.compute` is not text: write a compute capability such as 8.9, without quotes",
            ),
            ("gpu.compute in [8.9, 9]", 21, "write a compute capability such as 8.9"),
            ("gpu.compute >=", 14, "expected a value for `gpu.compute`, found the end of the selector"),
            ("gpu.count contains 8", 10, "`gpu.count` is not text, so contains does not apply"),
            ("driver.cuda >= 12", 15, "write a CUDA version such as 12.8"),
            ("gpu.memory >= 24GB", 14, "write a size in GiB such as 24 or 79.5"),
            ("gpu.memory >= .5", 14, "unexpected character `.`"),
            ("gpu.count == 1.5", 13, "write a whole number such as 8"),
            ("driver.version >= 570.", 18, "write a driver version such as 570 or 570.133.07"),
            (
                "gpu.xyz == 1",
                0,
                "`gpu.xyz` is not a field: the gpu fields are gpu.compute, gpu.memory, gpu.name and gpu.count",
            ),
            ("driver.foo == 1", 0, "the driver fields are driver.cuda and driver.version"),
            ("host.cpu == x", 0, "the host fields are host.os and host.arch (for a label"),
            ("machine.ip == x", 0, "the machine fields are machine.id and machine.hostname"),
            ("gpu == 1", 0, "`gpu` is not a field: the gpu fields are"),
            ("labels. == a", 0, "write labels.KEY, e.g. labels.pool"),
            ("8.0 <= gpu.compute", 0, "put the field on the left, e.g. gpu.compute >= 8.0"),
            ("== a", 0, "expected a condition, found `==`"),
            ("pool == a b", 10, "expected the end of the selector, found `b`: join conditions with && or ||"),
            ("pool == a AND gpu.count > 1", 10, "found `AND`: join conditions with && or ||"),
            ("pool ==", 7, "expected a value for `labels.pool`, found the end of the selector"),
            ("pool == and", 8, "expected a value for `labels.pool`, found `and`"),
            ("pool contains", 13, "expected a value for `labels.pool`"),
            ("pool", 4, "expected a comparison after `labels.pool`, found the end of the selector"),
            ("pool == a &&", 12, "expected a condition, found the end of the selector"),
            ("gpu.count in []", 14, "the list is empty: write at least one value inside [...]"),
            ("gpu.count in [1, 2", 13, "this `[` is never closed: add a `]`"),
            ("gpu.count in 1", 13, "expected `[` after `in`, found `1`"),
            ("gpu.count in [1 2]", 16, "expected `,` or `]`, found `2`"),
            (&long, 4096, "the selector is 4097 bytes long, more than the 4096 allowed"),
            (&long_unicode, 4095, "more than the 4096 allowed"),
            (&deep_parens, 64, "nested more than 64 deep"),
            (&deep_bangs, 64, "nested more than 64 deep"),
            (&deep_nots, 256, "nested more than 64 deep"),
            (&only_bangs, 64, "nested more than 64 deep"),
        ];
        for (text, offset, message) in cases {
            let error = Selector::parse(text).expect_err(text);
            assert!(error.message.contains(message), "`{text}`: {:?} lacks {message:?}", error.message);
            assert_eq!(error.offset, *offset, "`{text}`: {error:?}");
            assert_eq!(error.to_string(), error.message);
        }
    }

    #[test]
    fn nesting_up_to_the_limit_is_accepted() {
        let text = format!("{}pool == render-a{}", "(".repeat(32), ")".repeat(32));
        let text = format!("{}{text}", "!".repeat(MAX_SELECTOR_DEPTH - 32));
        // An even number of negations: the condition itself decides.
        let selector = parse(&text);
        assert!(selector.matches(&h100_box()));
        assert!(!selector.matches(&mixed_box()));
    }

    struct XorShift(u64);

    impl XorShift {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn below(&mut self, bound: usize) -> usize {
            (self.next() % bound as u64) as usize
        }
    }

    #[test]
    fn no_input_makes_parsing_or_matching_panic() {
        const FRAGMENTS: &[&str] = &[
            "gpu.compute",
            "gpu.memory",
            "gpu.name",
            "gpu.count",
            "driver.cuda",
            "driver.version",
            "host.os",
            "machine.id",
            "labels.pool",
            "pool",
            "labels.",
            "gpu.",
            "==",
            "!=",
            "<",
            "<=",
            ">",
            ">=",
            "=",
            " in ",
            " contains ",
            "[",
            "]",
            ",",
            "(",
            ")",
            "!",
            " not ",
            " and ",
            " or ",
            "&&",
            "||",
            "&",
            "|",
            "\"",
            "\"H100\"",
            "\\",
            "8.9",
            "12.0",
            "570.133.07",
            "8",
            "0",
            "99999999999999999999999",
            "1e9",
            "-",
            ".",
            " ",
            "é",
            "\u{0}",
            "🙂",
            "render-a",
        ];
        const SEEDS: &[&str] = &[
            "gpu.compute >= 8.9 && pool == render-a",
            "!(gpu.count in [1, 2, 4]) || host.os contains \"Debian\"",
            "driver.version >= 570.124.06 and driver.cuda >= 12.8 and gpu.memory > 23.5",
            "labels.note == \"say \\\"hi\\\"\" or not machine.id in [a, b,]",
        ];
        let machines = [h100_box(), mixed_box(), no_gpu_box(), unknown_box()];
        let mut random = XorShift(0x9E37_79B9_7F4A_7C15);
        let mut accepted = 0;
        for round in 0..30_000 {
            let bytes: Vec<u8> = match round % 3 {
                0 => (0..random.below(14))
                    .flat_map(|_| FRAGMENTS[random.below(FRAGMENTS.len())].bytes())
                    .collect(),
                1 => {
                    let mut bytes = SEEDS[random.below(SEEDS.len())].as_bytes().to_vec();
                    for _ in 0..=random.below(3) {
                        let at = random.below(bytes.len() + 1);
                        match random.below(4) {
                            0 => bytes.insert(at, random.next() as u8),
                            1 if at < bytes.len() => drop(bytes.remove(at)),
                            2 if at < bytes.len() => bytes[at] = random.next() as u8,
                            _ => {
                                let end = (at + random.below(8)).min(bytes.len());
                                let copy = bytes[at..end].to_vec();
                                bytes.splice(at..at, copy);
                            }
                        }
                    }
                    bytes
                }
                _ => (0..random.below(40)).map(|_| random.next() as u8).collect(),
            };
            let text = String::from_utf8_lossy(&bytes);
            match Selector::parse(&text) {
                Ok(selector) => {
                    accepted += 1;
                    for facts in &machines {
                        let _ = selector.matches(facts);
                    }
                    assert_eq!(selector.as_str(), text);
                    assert_eq!(Selector::parse(selector.as_str()), Ok(selector.clone()));
                }
                Err(error) => {
                    assert!(text.is_char_boundary(error.offset), "`{text}`: {error:?}");
                    assert!(!error.message.is_empty());
                }
            }
        }
        // The generator must reach the evaluator, not just the error paths.
        assert!(accepted > 1_000, "only {accepted} generated selectors parsed");
    }
}
