//! Text made to fit a byte limit without hiding that it was shortened. The agent keeps
//! the head and the tail of what it reports ([`keep_head_and_tail`]: what failed is
//! said first, why it failed last); the controller cuts what a peer sent too long at
//! the limit and marks it ([`cut_to`]). Neither splits a character.

use std::borrow::Cow;

/// `text` in at most `limit` bytes: unchanged when it fits, else its head and its tail
/// around a line that says how many bytes were left out between them.
pub fn keep_head_and_tail(text: &str, limit: usize) -> Cow<'_, str> {
    if text.len() <= limit {
        return Cow::Borrowed(text);
    }
    // The marker's length depends on the number it holds; the whole text's length
    // has at least as many digits, so this budget always leaves room for it.
    let marker_room = marker_between(text.len()).len();
    let Some(budget) = limit.checked_sub(marker_room) else {
        return Cow::Borrowed(&text[..floor_boundary(text, limit)]);
    };
    let head_end = floor_boundary(text, budget / 2);
    let tail_start = ceil_boundary(text, text.len() - (budget - head_end));
    let left_out = tail_start - head_end;
    Cow::Owned(format!("{}{}{}", &text[..head_end], marker_between(left_out), &text[tail_start..]))
}

/// `text` in at most `limit` bytes: unchanged when it fits, else its head followed by
/// `… [cut: N bytes]`, N being how many bytes were dropped.
pub fn cut_to(text: &str, limit: usize) -> Cow<'_, str> {
    if text.len() <= limit {
        return Cow::Borrowed(text);
    }
    let marker_room = marker_after(text.len()).len();
    let Some(budget) = limit.checked_sub(marker_room) else {
        return Cow::Borrowed(&text[..floor_boundary(text, limit)]);
    };
    let end = floor_boundary(text, budget);
    Cow::Owned(format!("{}{}", &text[..end], marker_after(text.len() - end)))
}

/// Whether `text` holds a control character other than a newline or a tab.
pub fn has_controls(text: &str) -> bool {
    text.chars().any(is_escaped_control)
}

/// `text` with every control character but newlines and tabs written as its escape
/// (`\u{1b}`, `\r`), so it can be stored and shown without acting on a terminal.
pub fn escape_controls(text: &str) -> Cow<'_, str> {
    if !has_controls(text) {
        return Cow::Borrowed(text);
    }
    let mut escaped = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        if is_escaped_control(c) {
            escaped.extend(c.escape_default());
        } else {
            escaped.push(c);
        }
    }
    Cow::Owned(escaped)
}

fn is_escaped_control(c: char) -> bool {
    c.is_control() && c != '\n' && c != '\t'
}

fn marker_between(left_out: usize) -> String {
    format!("\n… [{left_out} bytes left out] …\n")
}

fn marker_after(cut: usize) -> String {
    format!("… [cut: {cut} bytes]")
}

fn floor_boundary(text: &str, mut at: usize) -> usize {
    at = at.min(text.len());
    while !text.is_char_boundary(at) {
        at -= 1;
    }
    at
}

fn ceil_boundary(text: &str, mut at: usize) -> usize {
    while at < text.len() && !text.is_char_boundary(at) {
        at += 1;
    }
    at
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_that_fits_is_left_alone() {
        assert!(matches!(keep_head_and_tail("short", 10), Cow::Borrowed("short")));
        assert!(matches!(cut_to("short", 5), Cow::Borrowed("short")));
        assert!(matches!(escape_controls("tab\tand\nnewline"), Cow::Borrowed(_)));
    }

    #[test]
    fn long_text_keeps_its_head_and_its_tail_within_the_limit() {
        let text = format!("`uv pip install` failed{}error: no space left", "x".repeat(10_000));
        let kept = keep_head_and_tail(&text, 300);
        assert!(kept.len() <= 300, "{}", kept.len());
        assert!(
            kept.starts_with("`uv pip install` failed") && kept.ends_with("error: no space left"),
            "{kept}"
        );
        let left_out: usize = kept.split("[").nth(1).unwrap().split(' ').next().unwrap().parse().unwrap();
        assert_eq!(left_out + kept.len() - marker_between(left_out).len(), text.len());
        // Never a split character, whatever the limit.
        let wide = "é".repeat(3_000);
        for limit in [0, 1, 7, 40, 41, 42, 43, 500] {
            let kept = keep_head_and_tail(&wide, limit);
            assert!(kept.len() <= limit, "{limit}: {}", kept.len());
            let cut = cut_to(&wide, limit);
            assert!(cut.len() <= limit, "{limit}: {}", cut.len());
        }
    }

    #[test]
    fn cut_text_says_how_much_was_cut() {
        let text = "a".repeat(100_000);
        let cut = cut_to(&text, 4096);
        assert!((4090..=4096).contains(&cut.len()), "{}", cut.len());
        let kept = cut.find('…').unwrap();
        assert!(cut.ends_with(&format!("… [cut: {} bytes]", 100_000 - kept)), "{}", &cut[kept..]);
    }

    #[test]
    fn controls_are_written_as_escapes() {
        assert_eq!(escape_controls("red\u{1b}[31m\rline\tok\n"), "red\\u{1b}[31m\\rline\tok\n");
        assert!(has_controls("a\u{7}") && !has_controls("a\tb\nc"));
    }
}
