//! Text that prints as something it is not: bidirectional overrides (`U+202E` turns
//! `render-01` + U+202E + `gnp.exe` around), zero-width characters (two hostnames that look the
//! same) and line separators (a forged second line in a log or a table). Names an
//! operator reads — hostnames, descriptions, reasons — refuse them, with controls.
//! What is logged as a peer sent it goes through [`Escaped`], which writes those
//! characters as escapes instead.

/// The first character of `text` that would print as something else, if any.
pub fn deceptive(text: &str) -> Option<char> {
    text.chars().find(|c| deceptive_char(*c))
}

/// What kind of deceptive character `c` is, for the message that refuses it.
pub fn kind(c: char) -> Option<&'static str> {
    match c {
        '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}' | '\u{200E}' | '\u{200F}' | '\u{061C}' => {
            Some("a bidirectional text control")
        }
        '\u{200B}'..='\u{200D}'
        | '\u{2060}'..='\u{2064}'
        | '\u{FEFF}'
        | '\u{180E}'
        | '\u{00AD}'
        | '\u{034F}' => Some("an invisible character"),
        '\u{2028}' | '\u{2029}' | '\u{0085}' => Some("a line separator"),
        '\u{FFF9}'..='\u{FFFB}' | '\u{E0000}'..='\u{E007F}' => Some("an invisible format character"),
        _ => None,
    }
}

/// Why `field` is refused because of `c`: `U+202E (a bidirectional text control)`.
pub fn refusal(field: &str, c: char) -> String {
    let what = kind(c).unwrap_or("a control character");
    format!(
        "{field} contains U+{:04X} ({what}), which would print as something it is not; use plain printable text",
        u32::from(c)
    )
}

/// Longest text [`Escaped`] writes, in characters, before it ends with `…`.
pub const ESCAPED_MAX: usize = 512;

/// Writes a value a peer sent (an agent's label, hostname or error, a client's header)
/// so that it cannot pass for something else in a log: every character [`deceptive`]
/// finds — line breaks, escape codes and other controls, bidirectional overrides,
/// invisible characters — is written as its Rust escape (`\n`, `\u{1b}`), and the
/// value ends after [`ESCAPED_MAX`] characters with `…`. Anything else, `Łódź` and `\`
/// included, is written as it is, so escaping twice (a message that holds an escaped
/// value, logged escaped) changes nothing. Wraps any `Display`:
/// `tracing::warn!(hostname = %Escaped(&hostname), …)`, `%Escaped(&error)`.
#[derive(Debug, Clone, Copy)]
pub struct Escaped<T>(pub T);

impl<T: std::fmt::Display> std::fmt::Display for Escaped<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut writer = EscapingWriter { out: f, written: 0, clipped: false };
        std::fmt::write(&mut writer, format_args!("{}", self.0))?;
        if writer.clipped {
            f.write_str("…")?;
        }
        Ok(())
    }
}

struct EscapingWriter<'a, 'b> {
    out: &'a mut std::fmt::Formatter<'b>,
    written: usize,
    clipped: bool,
}

impl std::fmt::Write for EscapingWriter<'_, '_> {
    fn write_str(&mut self, text: &str) -> std::fmt::Result {
        for c in text.chars() {
            if self.written == ESCAPED_MAX {
                // The rest is dropped, not an error: `to_string()` on an error panics.
                self.clipped = true;
                return Ok(());
            }
            self.written += 1;
            if deceptive_char(c) {
                for escaped in c.escape_default() {
                    self.out.write_char(escaped)?;
                }
            } else {
                self.out.write_char(c)?;
            }
        }
        Ok(())
    }
}

fn deceptive_char(c: char) -> bool {
    c.is_control() || kind(c).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_prints_as_something_else_is_found() {
        for sneaky in [
            "render-01\u{202E}gnp",
            "ren\u{200B}der",
            "a\u{200D}b",
            "one\u{2028}two",
            "x\u{2066}y",
            "\u{FEFF}bom",
        ] {
            assert!(deceptive(sneaky).is_some(), "{sneaky:?}");
        }
        for plain in ["render-01", "Łódź-gpu-3", "节点-7", "gpu box (rack 12)", "naïve"] {
            assert_eq!(deceptive(plain), None, "{plain:?}");
        }
        assert!(refusal("hostname", '\u{202E}').contains("U+202E (a bidirectional text control)"));
        assert!(deceptive("tab\there").is_some(), "controls too");
    }

    #[test]
    fn escaped_text_keeps_to_one_line_and_shows_what_it_hides() {
        let forged = "pool\n2026-01-01T00:00:00Z  INFO audit: admin credential created\x1b[31m";
        let shown = Escaped(forged).to_string();
        assert!(!shown.contains('\n') && !shown.contains('\x1b'), "{shown}");
        assert_eq!(shown, "pool\\n2026-01-01T00:00:00Z  INFO audit: admin credential created\\u{1b}[31m");
        assert_eq!(Escaped(&shown).to_string(), shown, "escaping twice changes nothing");
        assert_eq!(Escaped("render\u{202E}gnp").to_string(), "render\\u{202e}gnp");
        assert_eq!(Escaped("one\u{2028}two\r").to_string(), "one\\u{2028}two\\r");
        assert_eq!(Escaped("Łódź-gpu \"3\"").to_string(), "Łódź-gpu \"3\"", "printable text as it is");
        assert_eq!(Escaped(format_args!("{}: {}", "x", "y\tz")).to_string(), "x: y\\tz", "any Display");
        let long = Escaped("é".repeat(ESCAPED_MAX + 1)).to_string();
        assert_eq!(long, format!("{}…", "é".repeat(ESCAPED_MAX)));
        assert_eq!(Escaped("é".repeat(ESCAPED_MAX)).to_string(), "é".repeat(ESCAPED_MAX));
    }
}
