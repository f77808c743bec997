//! Durations as operators write them on command lines and in specs: `30s`, `5m`,
//! `24h`, `7d`, `1h30m`.

use std::time::Duration;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DurationError {
    #[error("`{text}` is not a duration ({reason}); write e.g. 30s, 5m, 24h, 7d")]
    Unreadable { text: String, reason: String },
    #[error("`{text}` must be more than zero")]
    Zero { text: String },
}

/// Parses a duration that must be more than zero.
pub fn parse_positive(text: &str) -> Result<Duration, DurationError> {
    let duration = humantime::parse_duration(text.trim())
        .map_err(|error| DurationError::Unreadable { text: text.to_owned(), reason: error.to_string() })?;
    if duration.is_zero() { Err(DurationError::Zero { text: text.to_owned() }) } else { Ok(duration) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_what_operators_write() {
        assert_eq!(parse_positive("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_positive("7d"), Ok(Duration::from_secs(7 * 86_400)));
        assert_eq!(parse_positive("1h30m"), Ok(Duration::from_secs(5400)));
        assert!(matches!(parse_positive("0s"), Err(DurationError::Zero { .. })));
        let error = parse_positive("soon").unwrap_err().to_string();
        assert!(error.contains("write e.g. 30s, 5m, 24h, 7d"), "{error}");
    }
}
