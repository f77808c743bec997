//! One source file read for its shape: the modules it declares and every path it names
//! (in `use` declarations, expanded, and in code), each with the inline module it sits in
//! and its line. Items under `#[cfg(test)]` are left out: test code may reach anywhere.

use crate::lexer::{Token, TokenKind, tokenize};

/// A `mod NAME;` or `mod NAME { … }` outside test code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModDecl {
    pub name: String,
    /// The inline modules of this file the declaration sits in, outermost first.
    pub within: Vec<String>,
    /// The `#[path = "…"]` attribute's value, when there is one.
    pub path_attribute: Option<String>,
    /// `mod NAME { … }` rather than `mod NAME;`.
    pub inline: bool,
    pub line: usize,
}

/// A path the file names, `a::b::c`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathRef {
    pub segments: Vec<String>,
    /// The inline modules of this file the path sits in, outermost first.
    pub within: Vec<String>,
    pub line: usize,
    pub kind: PathKind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathKind {
    /// Named in code: `crate::a::f()`, `pb::Request`.
    Code,
    /// Imported by `use`; `alias` is the name it is bound to (its last segment, `as x`,
    /// or `*` for a glob, whose path is the module globbed).
    Use { alias: String, public: bool },
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ParsedSource {
    pub mods: Vec<ModDecl>,
    pub paths: Vec<PathRef>,
}

pub fn parse(source: &str) -> ParsedSource {
    let tokens = tokenize(source);
    let mut parser = Parser { tokens: &tokens, at: 0, parsed: ParsedSource::default() };
    parser.run();
    parser.parsed
}

struct Parser<'t> {
    tokens: &'t [Token],
    at: usize,
    parsed: ParsedSource,
}

impl Parser<'_> {
    fn run(&mut self) {
        // Inline modules open: their name and the brace depth inside them.
        let mut inline: Vec<(String, usize)> = Vec::new();
        let mut depth = 0usize;
        // Outer attributes seen since the last item boundary.
        let mut attributes: Vec<Vec<Token>> = Vec::new();
        while let Some(token) = self.tokens.get(self.at) {
            let within: Vec<String> = inline.iter().map(|(name, _)| name.clone()).collect();
            if token.is_punct("#") {
                let inner = self.punct_at(1, "!");
                let open = if inner { 2 } else { 1 };
                if self.punct_at(open, "[") {
                    let start = self.at + open + 1;
                    let end = self.matching_close(self.at + open);
                    if !inner {
                        attributes.push(self.tokens[start..end.min(self.tokens.len())].to_vec());
                    }
                    self.at = end + 1;
                    continue;
                }
            }
            if attributes.iter().any(|attribute| is_cfg_test(attribute)) && starts_item(token) {
                self.at = self.end_of_item(self.at) + 1;
                attributes.clear();
                continue;
            }
            if token.is_ident("mod")
                && let Some(name) = self.tokens.get(self.at + 1).filter(|t| t.kind == TokenKind::Ident)
                && (self.punct_at(2, ";") || self.punct_at(2, "{"))
            {
                let is_inline = self.punct_at(2, "{");
                self.parsed.mods.push(ModDecl {
                    name: name.text.clone(),
                    within,
                    path_attribute: attributes.iter().find_map(|attribute| path_attribute(attribute)),
                    inline: is_inline,
                    line: token.line,
                });
                if is_inline {
                    depth += 1;
                    inline.push((name.text.clone(), depth));
                }
                attributes.clear();
                self.at += 3;
                continue;
            }
            if token.is_ident("use") && !self.punct_at_back(1, "::") {
                let public = self.preceded_by_visibility();
                let end = self.end_of_item(self.at);
                let mut leaves = Vec::new();
                UseTree { tokens: &self.tokens[self.at + 1..end.min(self.tokens.len())], at: 0 }
                    .parse(&mut Vec::new(), &mut leaves);
                for (segments, alias, line) in leaves {
                    let kind = PathKind::Use { alias, public };
                    self.parsed.paths.push(PathRef { segments, within: within.clone(), line, kind });
                }
                attributes.clear();
                self.at = end + 1;
                continue;
            }
            if token.kind == TokenKind::Ident
                && self.punct_at(1, "::")
                && !self.punct_at_back(1, "::")
                && !self.punct_at_back(1, "$")
            {
                let line = token.line;
                let mut segments = vec![token.text.clone()];
                while self.punct_at(1, "::")
                    && let Some(next) = self.tokens.get(self.at + 2).filter(|t| t.kind == TokenKind::Ident)
                {
                    segments.push(next.text.clone());
                    self.at += 2;
                }
                self.parsed.paths.push(PathRef { segments, within, line, kind: PathKind::Code });
                self.at += 1;
                continue;
            }
            if token.is_punct("{") {
                depth += 1;
                attributes.clear();
            } else if token.is_punct("}") {
                if inline.last().is_some_and(|(_, open)| *open == depth) {
                    inline.pop();
                }
                depth = depth.saturating_sub(1);
                attributes.clear();
            } else if token.is_punct(";") {
                attributes.clear();
            }
            self.at += 1;
        }
    }

    fn punct_at(&self, ahead: usize, text: &str) -> bool {
        self.tokens.get(self.at + ahead).is_some_and(|t| t.is_punct(text))
    }

    fn punct_at_back(&self, back: usize, text: &str) -> bool {
        self.at.checked_sub(back).and_then(|i| self.tokens.get(i)).is_some_and(|t| t.is_punct(text))
    }

    /// `pub use`, `pub(crate) use`, `pub(in crate::a) use`: the import is visible to others.
    fn preceded_by_visibility(&self) -> bool {
        let Some(before) = self.at.checked_sub(1).and_then(|i| self.tokens.get(i)) else {
            return false;
        };
        if before.is_ident("pub") {
            return true;
        }
        if !before.is_punct(")") {
            return false;
        }
        let mut i = self.at - 1;
        while i > 0 && !self.tokens[i].is_punct("(") {
            i -= 1;
        }
        i > 0 && self.tokens[i - 1].is_ident("pub")
    }

    /// The token after `pub` or `pub(…)` at `start`, or the one at `start`.
    fn after_visibility(&self, start: usize) -> Option<&Token> {
        let mut i = start;
        if self.tokens.get(i).is_some_and(|t| t.is_ident("pub")) {
            i += 1;
            if self.tokens.get(i).is_some_and(|t| t.is_punct("(")) {
                i = self.matching_close(i) + 1;
            }
        }
        self.tokens.get(i)
    }

    /// The index of the bracket closing the one at `open` (or the last token).
    fn matching_close(&self, open: usize) -> usize {
        let mut depth = 0usize;
        for (i, token) in self.tokens.iter().enumerate().skip(open) {
            if token.kind != TokenKind::Punct {
                continue;
            }
            match token.text.as_str() {
                "(" | "[" | "{" => depth += 1,
                ")" | "]" | "}" => {
                    depth = depth.saturating_sub(1);
                    if depth == 0 {
                        return i;
                    }
                }
                _ => {}
            }
        }
        self.tokens.len().saturating_sub(1)
    }

    /// The last token of the item starting at `start`: its `;`, or the `}` closing its body.
    /// A `use` ends only at its `;` (its braces are a tree, not a body). Stops before a
    /// bracket that closes the enclosing block.
    fn end_of_item(&self, start: usize) -> usize {
        let is_use = self.after_visibility(start).is_some_and(|t| t.is_ident("use"));
        let mut depth = 0usize;
        for (i, token) in self.tokens.iter().enumerate().skip(start) {
            if token.kind != TokenKind::Punct {
                continue;
            }
            match token.text.as_str() {
                "(" | "[" | "{" => depth += 1,
                ")" | "]" | "}" => {
                    if depth == 0 {
                        return i.saturating_sub(1);
                    }
                    depth -= 1;
                    if depth == 0 && token.text == "}" && !is_use {
                        return i;
                    }
                }
                ";" if depth == 0 => return i,
                _ => {}
            }
        }
        self.tokens.len().saturating_sub(1)
    }
}

/// The first token of an item that `#[cfg(test)]` may remove; other tokens after such an
/// attribute (a field, a match arm) are left alone rather than guessed at.
fn starts_item(token: &Token) -> bool {
    const ITEM_STARTS: [&str; 15] = [
        "mod",
        "use",
        "fn",
        "pub",
        "impl",
        "struct",
        "enum",
        "const",
        "static",
        "trait",
        "type",
        "async",
        "unsafe",
        "extern",
        "macro_rules",
    ];
    token.kind == TokenKind::Ident && ITEM_STARTS.contains(&token.text.as_str())
}

/// `cfg(test)` or `cfg(all(test, …))`: code that exists only in unit tests.
fn is_cfg_test(attribute: &[Token]) -> bool {
    let idents: Vec<&str> =
        attribute.iter().filter(|t| t.kind == TokenKind::Ident).map(|t| t.text.as_str()).collect();
    match idents.as_slice() {
        ["cfg", "test"] => true,
        ["cfg", "all", rest @ ..] => rest.contains(&"test") && !rest.contains(&"not"),
        _ => false,
    }
}

fn path_attribute(attribute: &[Token]) -> Option<String> {
    match attribute {
        [name, equals, value] if name.is_ident("path") && equals.is_punct("=") => Some(value.text.clone()),
        _ => None,
    }
}

/// A `use` tree between `use` and `;`, expanded into its leaves.
struct UseTree<'t> {
    tokens: &'t [Token],
    at: usize,
}

impl UseTree<'_> {
    /// Appends each leaf under `prefix` as (segments, bound name, line).
    fn parse(&mut self, prefix: &mut Vec<String>, leaves: &mut Vec<(Vec<String>, String, usize)>) {
        let depth = prefix.len();
        if self.punct("::") {
            self.at += 1;
        }
        while let Some(token) = self.tokens.get(self.at) {
            if token.is_punct("{") {
                self.at += 1;
                while !self.punct("}") && self.at < self.tokens.len() {
                    self.parse(prefix, leaves);
                    if self.punct(",") {
                        self.at += 1;
                    }
                }
                self.at += 1;
                break;
            }
            if token.is_punct("*") {
                // A glob still names the module it empties.
                if !prefix.is_empty() {
                    leaves.push((prefix.clone(), "*".to_owned(), token.line));
                }
                self.at += 1;
                break;
            }
            if token.kind != TokenKind::Ident {
                break;
            }
            self.at += 1;
            if token.text == "self" && !self.punct("::") {
                // `a::{self, b}`: the prefix itself.
                let alias = self.alias().unwrap_or_else(|| prefix.last().cloned().unwrap_or_default());
                if !prefix.is_empty() {
                    leaves.push((prefix.clone(), alias, token.line));
                }
                break;
            }
            prefix.push(token.text.clone());
            if self.punct("::") {
                self.at += 1;
                continue;
            }
            let alias = self.alias().unwrap_or_else(|| token.text.clone());
            leaves.push((prefix.clone(), alias, token.line));
            break;
        }
        prefix.truncate(depth);
    }

    fn punct(&self, text: &str) -> bool {
        self.tokens.get(self.at).is_some_and(|t| t.is_punct(text))
    }

    fn alias(&mut self) -> Option<String> {
        let is_alias = self.tokens.get(self.at).is_some_and(|t| t.is_ident("as"));
        let name = self.tokens.get(self.at + 1).filter(|t| t.kind == TokenKind::Ident)?;
        if !is_alias {
            return None;
        }
        self.at += 2;
        Some(name.text.clone())
    }
}

#[cfg(test)]
mod tests;
