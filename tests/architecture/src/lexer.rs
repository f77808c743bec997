//! A small Rust tokenizer: enough to see module declarations, attributes and paths, with
//! comments dropped and string and character literals kept whole so that nothing inside
//! them is ever mistaken for code. It never fails: unknown characters become punctuation.

/// What a token is. Literals keep their text only for `#[path = "…"]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenKind {
    /// An identifier or keyword (a raw identifier `r#type` is given as `type`).
    Ident,
    /// `::`, or any other single punctuation character.
    Punct,
    /// A string literal's contents (escapes left as written), or a number or char.
    Literal,
    /// A lifetime or label, `'a`: kept apart so that `'a` is never read as a char.
    Lifetime,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token {
    pub kind: TokenKind,
    pub text: String,
    /// 1-based line of the token's first character.
    pub line: usize,
}

impl Token {
    pub fn is_ident(&self, text: &str) -> bool {
        self.kind == TokenKind::Ident && self.text == text
    }

    pub fn is_punct(&self, text: &str) -> bool {
        self.kind == TokenKind::Punct && self.text == text
    }
}

pub fn tokenize(source: &str) -> Vec<Token> {
    Lexer { chars: source.chars().collect(), at: 0, line: 1, tokens: Vec::new() }.run()
}

struct Lexer {
    chars: Vec<char>,
    at: usize,
    line: usize,
    tokens: Vec<Token>,
}

impl Lexer {
    fn run(mut self) -> Vec<Token> {
        while let Some(c) = self.peek(0) {
            let line = self.line;
            match c {
                c if c.is_whitespace() => {
                    self.bump();
                }
                '/' if self.peek(1) == Some('/') => self.line_comment(),
                '/' if self.peek(1) == Some('*') => self.block_comment(),
                '"' => {
                    let text = self.quoted('"');
                    self.push(TokenKind::Literal, text, line);
                }
                '\'' => self.quote_or_lifetime(line),
                'r' | 'b' | 'c' if self.string_prefix().is_some() => {
                    let (prefix_len, raw) = self.string_prefix().unwrap_or((0, false));
                    self.at += prefix_len;
                    let text = if raw { self.raw_string() } else { self.quoted('"') };
                    self.push(TokenKind::Literal, text, line);
                }
                'b' if self.peek(1) == Some('\'') => {
                    self.bump();
                    let text = self.quoted('\'');
                    self.push(TokenKind::Literal, text, line);
                }
                'r' if self.peek(1) == Some('#') && self.peek(2).is_some_and(is_ident_start) => {
                    self.at += 2;
                    let text = self.ident();
                    self.push(TokenKind::Ident, text, line);
                }
                c if is_ident_start(c) => {
                    let text = self.ident();
                    self.push(TokenKind::Ident, text, line);
                }
                c if c.is_ascii_digit() => {
                    let text = self.number();
                    self.push(TokenKind::Literal, text, line);
                }
                ':' if self.peek(1) == Some(':') => {
                    self.at += 2;
                    self.push(TokenKind::Punct, "::".to_owned(), line);
                }
                c => {
                    self.bump();
                    self.push(TokenKind::Punct, c.to_string(), line);
                }
            }
        }
        self.tokens
    }

    fn peek(&self, ahead: usize) -> Option<char> {
        self.chars.get(self.at + ahead).copied()
    }

    fn bump(&mut self) -> Option<char> {
        let c = self.peek(0)?;
        self.at += 1;
        if c == '\n' {
            self.line += 1;
        }
        Some(c)
    }

    fn push(&mut self, kind: TokenKind, text: String, line: usize) {
        self.tokens.push(Token { kind, text, line });
    }

    fn line_comment(&mut self) {
        while let Some(c) = self.peek(0) {
            if c == '\n' {
                return;
            }
            self.bump();
        }
    }

    /// Block comments nest in Rust: `/* /* */ */` is one comment.
    fn block_comment(&mut self) {
        self.at += 2;
        let mut depth = 1;
        while depth > 0 {
            match (self.peek(0), self.peek(1)) {
                (Some('/'), Some('*')) => {
                    self.at += 2;
                    depth += 1;
                }
                (Some('*'), Some('/')) => {
                    self.at += 2;
                    depth -= 1;
                }
                (Some(_), _) => {
                    self.bump();
                }
                (None, _) => return,
            }
        }
    }

    /// `r"…"`, `r#"…"#`, `b"…"`, `br#"…"#`, `c"…"`, `cr"…"`: the prefix's length and
    /// whether the string is raw; None when the `r`/`b`/`c` starts an identifier.
    fn string_prefix(&self) -> Option<(usize, bool)> {
        let mut len = 0;
        if matches!(self.peek(0), Some('b' | 'c')) {
            len += 1;
        }
        let raw = self.peek(len) == Some('r');
        if raw {
            len += 1;
        }
        if len == 0 {
            return None;
        }
        match self.peek(len) {
            Some('"') => Some((len, raw)),
            Some('#') if raw => {
                let mut ahead = len;
                while self.peek(ahead) == Some('#') {
                    ahead += 1;
                }
                (self.peek(ahead) == Some('"')).then_some((len, raw))
            }
            _ => None,
        }
    }

    /// A quoted literal from its opening quote; backslash escapes skip the next char.
    fn quoted(&mut self, quote: char) -> String {
        self.bump();
        let mut text = String::new();
        while let Some(c) = self.bump() {
            if c == '\\' {
                text.push(c);
                if let Some(escaped) = self.bump() {
                    text.push(escaped);
                }
            } else if c == quote {
                break;
            } else {
                text.push(c);
            }
        }
        text
    }

    /// A raw string from its `#`s: ends at a quote followed by as many `#`s.
    fn raw_string(&mut self) -> String {
        let mut hashes = 0;
        while self.peek(0) == Some('#') {
            self.bump();
            hashes += 1;
        }
        self.bump();
        let mut text = String::new();
        while let Some(c) = self.bump() {
            if c == '"' && (0..hashes).all(|i| self.peek(i) == Some('#')) {
                self.at += hashes;
                break;
            }
            text.push(c);
        }
        text
    }

    /// `'x'`, `'\n'`, `'\u{1F600}'` are chars; `'a` and `'static` are lifetimes.
    fn quote_or_lifetime(&mut self, line: usize) {
        let is_char = matches!((self.peek(1), self.peek(2)), (Some('\\'), _) | (Some(_), Some('\'')));
        if is_char {
            let text = self.quoted('\'');
            self.push(TokenKind::Literal, text, line);
        } else if self.peek(1).is_some_and(is_ident_start) {
            self.bump();
            let text = self.ident();
            self.push(TokenKind::Lifetime, text, line);
        } else {
            self.bump();
            self.push(TokenKind::Punct, "'".to_owned(), line);
        }
    }

    fn ident(&mut self) -> String {
        let mut text = String::new();
        while let Some(c) = self.peek(0).filter(|c| is_ident_continue(*c)) {
            text.push(c);
            self.at += 1;
        }
        text
    }

    /// Digits, suffixes and a fractional part; `1..2` stays a range, `x.0.1` a field.
    fn number(&mut self) -> String {
        let mut text = String::new();
        while let Some(c) = self.peek(0) {
            let fraction =
                c == '.' && self.peek(1).is_some_and(|next| next.is_ascii_digit()) && !text.contains('.');
            if is_ident_continue(c) || fraction {
                text.push(c);
                self.at += 1;
            } else {
                break;
            }
        }
        text
    }
}

fn is_ident_start(c: char) -> bool {
    c == '_' || c.is_alphabetic()
}

fn is_ident_continue(c: char) -> bool {
    c == '_' || c.is_alphanumeric()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn idents(source: &str) -> Vec<String> {
        tokenize(source).into_iter().filter(|t| t.kind == TokenKind::Ident).map(|t| t.text).collect()
    }

    #[test]
    fn comments_and_strings_hide_what_is_inside_them() {
        let source = r####"
            // use crate::a;
            /* use crate::b; /* nested */ use crate::c; */
            let s = "use crate::d;";
            let r = r#"use crate::e; "quoted""#;
            let b = br##"crate::f"##;
            let c = '"'; let l: &'static str = "x";
            use crate::g;
        "####;
        assert_eq!(
            idents(source),
            ["let", "s", "let", "r", "let", "b", "let", "c", "let", "l", "str", "use", "crate", "g"]
        );
    }

    #[test]
    fn lines_are_counted_through_multiline_comments_and_strings() {
        let tokens = tokenize("/*\n\n*/ a \"\n\" b\nr\"\n\" c");
        let lines: Vec<(String, usize)> =
            tokens.into_iter().filter(|t| t.kind == TokenKind::Ident).map(|t| (t.text, t.line)).collect();
        assert_eq!(lines, [("a".to_owned(), 3), ("b".to_owned(), 4), ("c".to_owned(), 6)]);
    }

    #[test]
    fn raw_identifiers_and_paths() {
        let tokens = tokenize("r#type::x");
        assert!(tokens[0].is_ident("type"));
        assert!(tokens[1].is_punct("::"));
        assert!(tokens[2].is_ident("x"));
    }
}
