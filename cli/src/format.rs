//! How numbers and times read in tables.

use jiff::Timestamp;

/// Bytes as a rounded binary size: 25757220864 → "24 GiB".
pub fn bytes(value: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut size = value as f64;
    let mut unit = 0;
    while size >= 1024.0 && unit < UNITS.len() - 1 {
        size /= 1024.0;
        unit += 1;
    }
    if size >= 10.0 || unit == 0 {
        format!("{size:.0} {}", UNITS[unit])
    } else {
        format!("{size:.1} {}", UNITS[unit])
    }
}

/// How long ago `at` was, the way kubectl says it: "4s", "3m", "2h", "5d".
pub fn ago(at: Option<Timestamp>, now: Timestamp) -> String {
    let Some(at) = at else { return "never".to_owned() };
    let seconds = now.duration_since(at).as_secs().max(0);
    match seconds {
        0..=119 => format!("{seconds}s ago"),
        120..=7199 => format!("{}m ago", seconds / 60),
        7200..=172_799 => format!("{}h ago", seconds / 3600),
        _ => format!("{}d ago", seconds / 86_400),
    }
}

/// A step's duration: "0.3s", "12.0s", "2m05s", "1h02m".
pub fn duration_ms(millis: u64) -> String {
    let seconds = millis / 1000;
    match seconds {
        0..=59 => format!("{}.{}s", seconds, (millis % 1000) / 100),
        60..=3599 => format!("{}m{:02}s", seconds / 60, seconds % 60),
        _ => format!("{}h{:02}m", seconds / 3600, (seconds % 3600) / 60),
    }
}

/// RFC 3339 to the second, in UTC.
pub fn rfc3339(at: Timestamp) -> String {
    at.round(jiff::Unit::Second).map_or_else(|_| at.to_string(), |rounded| rounded.to_string())
}

/// A revision id as tables show it: its first 12 characters, enough to tell
/// revisions apart and to paste into `env show NAME@ID`.
pub fn short_id(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}

/// A GPU model name without the vendor words every row would repeat.
pub fn short_gpu_name(name: &str) -> &str {
    let name = name.strip_prefix("NVIDIA ").unwrap_or(name);
    name.strip_prefix("GeForce ").unwrap_or(name)
}

/// Left-aligned columns separated by two spaces, like kubectl's tables.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut text = String::new();
        for (i, (cell, width)) in cells.zip(&widths).enumerate() {
            if i + 1 == widths.len() {
                text.push_str(cell);
            } else {
                text.push_str(&format!("{cell:<width$}  "));
            }
        }
        text.trim_end().to_owned() + "\n"
    };
    let mut out = line(&mut header.iter().copied());
    for row in rows {
        out.push_str(&line(&mut row.iter().map(String::as_str)));
    }
    out
}

/// A CSV cell a spreadsheet will not run: one beginning with `=`, `+`, `-`, `@`, a tab
/// or a carriage return (a formula, or how one is smuggled) gets a leading `'`, as
/// OWASP advises. Text that is not a formula is unchanged.
pub fn csv_cell(text: &str) -> std::borrow::Cow<'_, str> {
    if text.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        std::borrow::Cow::Owned(format!("'{text}"))
    } else {
        std::borrow::Cow::Borrowed(text)
    }
}

/// Writes one CSV record, every cell through [`csv_cell`].
pub fn csv_record<W: std::io::Write, S: AsRef<str>>(
    writer: &mut csv::Writer<W>,
    cells: impl IntoIterator<Item = S>,
) -> csv::Result<()> {
    let cells: Vec<String> = cells.into_iter().map(|cell| csv_cell(cell.as_ref()).into_owned()).collect();
    writer.write_record(&cells)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_cells_that_a_spreadsheet_would_run_are_neutralised() {
        for formula in ["=HYPERLINK(\"http://x\")", "+1+1", "-2+3", "@SUM(A1)", "\tx", "\r=1"] {
            assert_eq!(csv_cell(formula), format!("'{formula}"));
        }
        for plain in ["render-a", "12.8", "", "a=b", "2026-12-07T10:00:00Z"] {
            assert_eq!(csv_cell(plain), plain);
        }
    }

    #[test]
    fn sizes_and_names_read_like_spec_sheets() {
        assert_eq!(bytes(25_757_220_864), "24 GiB");
        assert_eq!(bytes(48_305_799_168), "45 GiB");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(short_gpu_name("NVIDIA GeForce RTX 4090"), "RTX 4090");
        assert_eq!(short_gpu_name("Tesla T4"), "Tesla T4");
    }

    #[test]
    fn ages_and_tables() {
        let now = Timestamp::from_second(10_000).unwrap();
        assert_eq!(ago(Some(Timestamp::from_second(9_996).unwrap()), now), "4s ago");
        assert_eq!(ago(Some(Timestamp::from_second(9_000).unwrap()), now), "16m ago");
        assert_eq!(ago(None, now), "never");
        assert_eq!(duration_ms(340), "0.3s");
        assert_eq!(duration_ms(12_049), "12.0s");
        assert_eq!(duration_ms(125_000), "2m05s");
        assert_eq!(duration_ms(3_720_000), "1h02m");
        let text = table(&["A", "BB"], &[vec!["xxx".into(), "y".into()]]);
        assert_eq!(text, "A    BB\nxxx  y\n");
    }
}
