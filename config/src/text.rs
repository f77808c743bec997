//! Text that prints as something it is not: bidirectional overrides (`U+202E` turns
//! `render-01` + U+202E + `gnp.exe` around), zero-width characters (two hostnames that look the
//! same) and line separators (a forged second line in a log or a table). Names an
//! operator reads — hostnames, descriptions, reasons — refuse them, with controls.

/// The first character of `text` that would print as something else, if any.
pub fn deceptive(text: &str) -> Option<char> {
    text.chars().find(|c| c.is_control() || kind(*c).is_some())
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
}
