//! Splitting selector text into tokens.

use super::*;

#[derive(Debug, Clone, PartialEq)]
pub(super) enum TokenKind {
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
pub(super) struct Token {
    pub(super) kind: TokenKind,
    pub(super) start: usize,
    pub(super) end: usize,
}

pub(super) fn is_word_start(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

pub(super) fn is_word_continue(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-' | '/')
}

pub(super) fn lex(text: &str) -> Result<Vec<Token>, SelectorError> {
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
pub(super) fn lex_string(
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
