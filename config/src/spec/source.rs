//! Reading a spec file: TOML or JSON text in, a checked [`Spec`] or every problem
//! with its file, line and column out. Syntax and type errors come from the parser
//! with its own position; cross-field problems are found on the parsed spec by
//! path (`optimization[1].wheel[0].sha256`) and located in the text afterwards.

use std::collections::BTreeMap;
use std::fmt;

use super::Spec;
use super::bounds::MAX_PROBLEMS_SHOWN;
use super::validate;

/// Larger than any real spec; refused before parsing.
pub const MAX_SPEC_BYTES: usize = 1024 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpecFormat {
    Toml,
    Json,
}

impl SpecFormat {
    /// From the file name, else from the text: JSON starts with `{`.
    pub fn detect(file_name: &str, text: &str) -> Self {
        let lower = file_name.to_ascii_lowercase();
        if lower.ends_with(".json") {
            SpecFormat::Json
        } else if lower.ends_with(".toml") {
            SpecFormat::Toml
        } else if text.trim_start().starts_with('{') {
            SpecFormat::Json
        } else {
            SpecFormat::Toml
        }
    }
}

/// One problem in a spec, where it is and what to write instead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecError {
    pub file: String,
    pub line: usize,
    pub column: usize,
    /// The key path, when the problem is about one value.
    pub path: Option<String>,
    pub message: String,
}

impl fmt::Display for SpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}: ", self.file, self.line, self.column)?;
        if let Some(path) = &self.path {
            write!(f, "{path}: ")?;
        }
        f.write_str(&self.message)
    }
}

/// Every problem found in one spec, in file order.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct SpecErrors(pub Vec<SpecError>);

/// A refusal's text stays small enough to travel in a gRPC status (whose message is
/// a header: 16 KiB in all by default) and to read.
const MAX_SHOWN_BYTES: usize = 6 * 1024;

/// The first problems (at most [`MAX_PROBLEMS_SHOWN`] and about 6 KiB), then how many
/// more there are: the first ones are what to fix, and a spec with thousands of
/// problems must not make a message of megabytes.
impl fmt::Display for SpecErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut written = 0;
        let mut shown = 0;
        for error in self.0.iter().take(MAX_PROBLEMS_SHOWN) {
            let line = error.to_string();
            if shown > 0 && written + line.len() > MAX_SHOWN_BYTES {
                break;
            }
            if shown > 0 {
                f.write_str("\n")?;
            }
            // One line longer than the whole budget is cut (at a character boundary).
            let mut cut = line.len().min(MAX_SHOWN_BYTES);
            while !line.is_char_boundary(cut) {
                cut -= 1;
            }
            f.write_str(&line[..cut])?;
            if cut < line.len() {
                f.write_str("…")?;
            }
            written += cut + 1;
            shown += 1;
        }
        let more = self.0.len() - shown;
        if more > 0 {
            write!(f, "\n… and {more} more problem{} (fix these first)", if more == 1 { "" } else { "s" })?;
        }
        Ok(())
    }
}

impl Spec {
    /// Parses and checks a spec. `file` names it in messages.
    pub fn parse(file: &str, text: &str, format: SpecFormat) -> Result<Spec, SpecErrors> {
        let at = |offset: usize, path: Option<String>, message: String| {
            let (line, column) = line_column(text, offset);
            SpecErrors(vec![SpecError { file: file.to_owned(), line, column, path, message }])
        };
        if text.len() > MAX_SPEC_BYTES {
            return Err(at(
                0,
                None,
                format!("the spec is {} bytes; the limit is {MAX_SPEC_BYTES}", text.len()),
            ));
        }
        let spec: Spec = match format {
            SpecFormat::Toml => toml::from_str(text).map_err(|err| {
                let offset = err.span().map_or(0, |span| {
                    span.start
                        + selector_offset(text, span.start, err.message()).max(quoted_value_offset(
                            text,
                            &span,
                            err.message(),
                        ))
                });
                let path = err.span().and_then(|span| path_at(&toml_index(text), span.start));
                at(offset, path, tidy_message(err.message()))
            })?,
            SpecFormat::Json => serde_json::from_str(text).map_err(|err| {
                let offset = offset_of_line_column(text, err.line(), err.column());
                at(offset, None, tidy_message(&json_message(&err)))
            })?,
        };
        let problems = validate::check(&spec);
        if problems.is_empty() {
            return Ok(spec);
        }
        let index = match format {
            SpecFormat::Toml => toml_index(text),
            SpecFormat::Json => json_index(text),
        };
        let lines = LineStarts::of(text);
        let mut errors: Vec<SpecError> = problems
            .into_iter()
            .map(|problem| {
                let offset = locate(&index, &problem.path);
                let (line, column) = lines.line_column(text, offset);
                SpecError {
                    file: file.to_owned(),
                    line,
                    column,
                    path: Some(problem.path),
                    message: problem.message,
                }
            })
            .collect();
        errors.sort_by_key(|error| (error.line, error.column));
        Err(SpecErrors(errors))
    }
}

/// A selector error names the character it is at; point there inside the quoted value.
fn selector_offset(text: &str, value_start: usize, message: &str) -> usize {
    let Some(at) = message.rfind(super::selector::SELECTOR_AT) else { return 0 };
    let digits: String =
        message[at + super::selector::SELECTOR_AT.len()..].chars().take_while(char::is_ascii_digit).collect();
    let Ok(character) = digits.parse::<usize>() else { return 0 };
    let rest = text.get(value_start..).unwrap_or_default();
    let quote = if rest.starts_with("'''") || rest.starts_with("\"\"\"") { 3 } else { 1 };
    let value = text.get(value_start + quote..).unwrap_or_default();
    quote + value.chars().take(character.saturating_sub(1)).map(char::len_utf8).sum::<usize>()
}

/// toml puts an error inside an array (`cuda = ["cu128", "cuda12"]`) on the whole
/// array; when the message quotes the bad value, point at that value instead.
fn quoted_value_offset(text: &str, span: &std::ops::Range<usize>, message: &str) -> usize {
    let Some(value) = message.strip_prefix('`').and_then(|rest| rest.split_once('`')).map(|(value, _)| value)
    else {
        return 0;
    };
    let within = text.get(span.clone()).unwrap_or_default();
    if !within.starts_with('[') || value.is_empty() {
        return 0;
    }
    ["\"", "'"].iter().find_map(|quote| within.find(&format!("{quote}{value}{quote}"))).unwrap_or(0)
}

/// serde_json's message without its " at line L column C" suffix.
fn json_message(err: &serde_json::Error) -> String {
    let text = err.to_string();
    match text.rfind(" at line ") {
        Some(cut) => text[..cut].to_owned(),
        None => text,
    }
}

/// The key whose value starts at `offset`, to name it in a type error.
fn path_at(index: &SpanIndex, offset: usize) -> Option<String> {
    index
        .iter()
        .filter(|(path, at)| **at == offset && path.ends_with("#value"))
        .map(|(path, _)| path.trim_end_matches("#value").to_owned())
        .max_by_key(String::len)
}

/// serde says "unknown field" and "u32"; a spec has keys and whole numbers.
fn tidy_message(message: &str) -> String {
    let message = message
        .trim()
        .replace("unknown field", "unknown key")
        .replace("missing field", "missing key")
        .replace("expected u16", "expected a whole number from 1 to 65535")
        .replace("expected u32", "expected a whole number")
        .replace("expected u64", "expected a whole number");
    if message.starts_with("unknown key") {
        format!("{message}; remove it or fix its spelling")
    } else {
        message
    }
}

/// Where each value starts, by path: `torch.cuda[1]`, `optimization[0].wheel[2].url`.
type SpanIndex = BTreeMap<String, usize>;

/// The offset of `path`, or of its nearest located ancestor (a missing key is
/// reported at its table).
fn locate(index: &SpanIndex, path: &str) -> usize {
    let mut current = path;
    loop {
        if let Some(offset) = index.get(current) {
            return *offset;
        }
        match current.rfind(['.', '[']) {
            Some(cut) => current = &current[..cut],
            None => return 0,
        }
    }
}

fn join(parent: &str, key: &str) -> String {
    if parent.is_empty() { key.to_owned() } else { format!("{parent}.{key}") }
}

fn toml_index(text: &str) -> SpanIndex {
    use toml::de::{DeTable, DeValue};
    fn walk_table(table: &DeTable<'_>, path: &str, index: &mut SpanIndex) {
        for (key, value) in table {
            let child = join(path, key.get_ref());
            // A key is located at its name: that is where an operator looks.
            index.entry(child.clone()).or_insert(key.span().start);
            walk_value(value.get_ref(), &child, value.span().start, index);
        }
    }
    fn walk_value(value: &DeValue<'_>, path: &str, start: usize, index: &mut SpanIndex) {
        match value {
            DeValue::Table(table) => walk_table(table, path, index),
            DeValue::Array(array) => {
                for (i, item) in array.iter().enumerate() {
                    let child = format!("{path}[{i}]");
                    index.insert(child.clone(), item.span().start);
                    walk_value(item.get_ref(), &child, item.span().start, index);
                }
            }
            _ => {
                index.insert(format!("{path}#value"), start);
            }
        }
    }
    let mut index = SpanIndex::new();
    if let Ok(root) = DeTable::parse(text) {
        walk_table(root.get_ref(), "", &mut index);
    }
    index
}

/// A small JSON walker: serde_json has already accepted the text, so this only
/// records where each key and array element starts.
fn json_index(text: &str) -> SpanIndex {
    struct Walker<'a> {
        bytes: &'a [u8],
        at: usize,
        index: SpanIndex,
        depth: usize,
    }
    impl Walker<'_> {
        fn skip_space(&mut self) {
            while self.bytes.get(self.at).is_some_and(|b| b.is_ascii_whitespace()) {
                self.at += 1;
            }
        }
        fn string(&mut self) -> String {
            let start = self.at + 1;
            self.at += 1;
            while let Some(&b) = self.bytes.get(self.at) {
                self.at += 1;
                match b {
                    b'\\' => self.at += 1,
                    b'"' => break,
                    _ => {}
                }
            }
            let end = self.at.saturating_sub(1).max(start);
            let raw = self.bytes.get(start..end).unwrap_or_default();
            serde_json::from_slice::<String>(&[b"\"", raw, b"\""].concat())
                .unwrap_or_else(|_| String::from_utf8_lossy(raw).into_owned())
        }
        fn value(&mut self, path: &str) {
            self.skip_space();
            self.depth += 1;
            if self.depth > 128 {
                return;
            }
            match self.bytes.get(self.at) {
                Some(b'{') => {
                    self.at += 1;
                    loop {
                        self.skip_space();
                        match self.bytes.get(self.at) {
                            Some(b'"') => {
                                let key_at = self.at;
                                let key = self.string();
                                let child = join(path, &key);
                                self.index.insert(child.clone(), key_at);
                                self.skip_space();
                                self.at += 1; // ':'
                                self.skip_space();
                                self.index.insert(format!("{child}#value"), self.at);
                                self.value(&child);
                            }
                            Some(b',') => self.at += 1,
                            Some(b'}') | None => {
                                self.at += 1;
                                break;
                            }
                            Some(_) => self.at += 1,
                        }
                    }
                }
                Some(b'[') => {
                    self.at += 1;
                    let mut i = 0;
                    loop {
                        self.skip_space();
                        match self.bytes.get(self.at) {
                            Some(b']') | None => {
                                self.at += 1;
                                break;
                            }
                            Some(b',') => self.at += 1,
                            Some(_) => {
                                let child = format!("{path}[{i}]");
                                self.index.insert(child.clone(), self.at);
                                self.value(&child);
                                i += 1;
                            }
                        }
                    }
                }
                Some(b'"') => {
                    self.string();
                }
                Some(_) => {
                    while self.bytes.get(self.at).is_some_and(|b| !matches!(b, b',' | b']' | b'}')) {
                        self.at += 1;
                    }
                }
                None => {}
            }
            self.depth -= 1;
        }
    }
    let mut walker = Walker { bytes: text.as_bytes(), at: 0, index: SpanIndex::new(), depth: 0 };
    walker.value("");
    walker.index
}

/// 1-based line and column (in characters) of a byte offset.
pub fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |at| at + 1);
    (line, before[line_start..].chars().count() + 1)
}

/// Where each line starts, so that placing many problems in a large spec costs a
/// binary search each rather than a scan of the text before it.
struct LineStarts(Vec<usize>);

impl LineStarts {
    fn of(text: &str) -> Self {
        Self(std::iter::once(0).chain(text.match_indices('\n').map(|(at, _)| at + 1)).collect())
    }

    /// The same as [`line_column`].
    fn line_column(&self, text: &str, offset: usize) -> (usize, usize) {
        let mut offset = offset.min(text.len());
        while !text.is_char_boundary(offset) {
            offset -= 1;
        }
        let line = self.0.partition_point(|start| *start <= offset);
        let line_start = self.0.get(line - 1).copied().unwrap_or(0);
        (line, text[line_start..offset].chars().count() + 1)
    }
}

fn offset_of_line_column(text: &str, line: usize, column: usize) -> usize {
    let line_start: usize = text.split_inclusive('\n').take(line.saturating_sub(1)).map(str::len).sum();
    let rest = text.get(line_start..).unwrap_or_default();
    let in_line: usize = rest.chars().take(column.saturating_sub(1)).map(char::len_utf8).sum();
    line_start + in_line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_count_lines_and_characters() {
        let text = "a = 1\nbé = 2\n";
        assert_eq!(line_column(text, 0), (1, 1));
        assert_eq!(line_column(text, 6), (2, 1));
        assert_eq!(line_column(text, 10), (2, 4));
        assert_eq!(offset_of_line_column(text, 2, 4), 10);
        let lines = LineStarts::of(text);
        for offset in 0..=text.len() + 2 {
            assert_eq!(lines.line_column(text, offset), line_column(text, offset), "at {offset}");
        }
    }

    #[test]
    fn toml_and_json_indexes_find_nested_paths() {
        let toml = "[torch]\ncuda = [\"cu128\", \"cu126\"]\n[[optimization]]\nname = \"x\"\n";
        let index = toml_index(toml);
        assert_eq!(line_column(toml, index["torch.cuda[1]"]), (2, 18));
        assert_eq!(line_column(toml, index["optimization[0].name"]), (4, 1));
        let json =
            "{\n  \"torch\": {\"cuda\": [\"cu128\", \"cu126\"]},\n  \"optimization\": [{\"name\": \"x\"}]\n}";
        let index = json_index(json);
        assert_eq!(line_column(json, index["torch.cuda[1]"]), (2, 31));
        assert_eq!(line_column(json, index["optimization[0].name"]), (3, 21));
        assert_eq!(line_column(json, locate(&index, "optimization[0].wheel[3].sha256")), (3, 20));
    }
}
