//! Parsing tokens into a type-checked expression, bounded in depth.

use super::*;

pub(super) struct Parser<'a> {
    pub(super) text: &'a str,
    pub(super) tokens: Vec<Token>,
    pub(super) position: usize,
    pub(super) depth: usize,
    /// Whether the fields of what runs on a machine are allowed.
    pub(super) software: bool,
}

impl Parser<'_> {
    pub(super) fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.position)
    }

    pub(super) fn next_token(&mut self) -> Option<Token> {
        let token = self.peek().cloned();
        self.position += usize::from(token.is_some());
        token
    }

    /// Consumes the next token if it is `kind`.
    pub(super) fn eat(&mut self, kind: &TokenKind) -> bool {
        let matched = self.peek().is_some_and(|token| token.kind == *kind);
        self.position += usize::from(matched);
        matched
    }

    /// Where `token` starts, or the end of the text when there is none.
    pub(super) fn offset(&self, token: Option<&Token>) -> usize {
        token.map_or(self.text.len(), |token| token.start)
    }

    /// "expected …, found `…`: advice", pointing at `found` (or at the end of the text).
    pub(super) fn unexpected(&self, found: Option<&Token>, expected: &str, advice: &str) -> SelectorError {
        let written = match found {
            Some(token) => format!("`{}`", self.text.get(token.start..token.end).unwrap_or_default()),
            None => "the end of the selector".to_owned(),
        };
        SelectorError::new(self.offset(found), format!("expected {expected}, found {written}: {advice}"))
    }

    pub(super) fn parse_selector(&mut self) -> Result<Expression, SelectorError> {
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

    pub(super) fn parse_any(&mut self) -> Result<Expression, SelectorError> {
        self.parse_joined(&TokenKind::Or, Self::parse_all, Expression::Any)
    }

    pub(super) fn parse_all(&mut self) -> Result<Expression, SelectorError> {
        self.parse_joined(&TokenKind::And, Self::parse_unary, Expression::All)
    }

    /// `term (joiner term)*`; a single term stands for itself.
    pub(super) fn parse_joined(
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

    pub(super) fn parse_unary(&mut self) -> Result<Expression, SelectorError> {
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

    pub(super) fn parse_condition(&mut self, token: Token) -> Result<Expression, SelectorError> {
        let TokenKind::Word(word) = &token.kind else {
            return Err(self.unexpected(Some(&token), "a condition", "write one such as pool == render-a"));
        };
        let field = Field::named(word, token.start, self.software)?;
        let kind = field.kind();
        let operator = self.next_token();
        let test = match operator.as_ref().map(|token| &token.kind) {
            Some(TokenKind::Compare(operator @ (Operator::Eq | Operator::Ne))) => {
                Test::Compare(*operator, self.parse_literal(&field)?)
            }
            Some(TokenKind::Compare(operator)) if kind.is_ordered() => {
                Test::Compare(*operator, self.parse_literal(&field)?)
            }
            Some(TokenKind::In) => Test::In(self.parse_list(&field)?),
            Some(TokenKind::Contains) if kind == Kind::Text => Test::Contains(self.parse_text(&field)?),
            Some(TokenKind::Compare(_) | TokenKind::Contains) => {
                let message = if kind == Kind::Text {
                    format!("`{field}` is text: compare it with == or !=, in [...] or contains")
                } else if !kind.is_ordered() {
                    format!("`{field}` has no order: compare it with == or != or in [...] ({})", kind.hint())
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
    pub(super) fn parse_literal(&mut self, field: &Field) -> Result<Literal, SelectorError> {
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
    pub(super) fn parse_text(&mut self, field: &Field) -> Result<String, SelectorError> {
        let token = self.next_token();
        match token.as_ref().map(|token| &token.kind) {
            Some(TokenKind::Quoted(text) | TokenKind::Word(text)) => Ok(text.clone()),
            _ => Err(self.unexpected(token.as_ref(), &format!("a value for `{field}`"), Kind::Text.hint())),
        }
    }

    /// `[v1, v2, ...]` after `in`; a trailing comma is allowed, an empty list is not.
    pub(super) fn parse_list(&mut self, field: &Field) -> Result<Vec<Literal>, SelectorError> {
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
