//! Label values as the exposition formats need them. prometheus-client writes a label
//! value as it is given, and some of ours come from agents (a GPU's NVML name, a
//! driver version, a step name): a `"` in one would end the value early — the whole
//! page unreadable, or `X",status="…` a forged label — and a `\` would start an escape.
//! Every label of this crate's metrics is a [`LabelValue`], so none can skip escaping.

use std::fmt::Write;

use prometheus_client::encoding::{EncodeLabelValue, LabelValueEncoder};

/// A metric's labels: names are ours, values are escaped when written.
pub type Labels = Vec<(&'static str, LabelValue)>;

/// One label value, held as given and written escaped: `\` → `\\`, `"` → `\"`, line
/// feed → `\n`, which is what both the Prometheus text format (0.0.4) and
/// OpenMetrics 1.0 (`escaped-string` in its ABNF) require; every other character is
/// valid as it is.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LabelValue(String);

impl From<String> for LabelValue {
    fn from(value: String) -> Self {
        Self(value)
    }
}

impl From<&str> for LabelValue {
    fn from(value: &str) -> Self {
        Self(value.to_owned())
    }
}

/// `(name, value)`, the value escaped when written.
pub fn label(name: &'static str, value: impl Into<LabelValue>) -> (&'static str, LabelValue) {
    (name, value.into())
}

/// Writes `value` escaped into `out`.
pub fn write_escaped(out: &mut impl Write, value: &str) -> std::fmt::Result {
    let mut rest = value;
    while let Some(at) = rest.find(['\\', '"', '\n']) {
        out.write_str(&rest[..at])?;
        out.write_str(match rest.as_bytes()[at] {
            b'\\' => "\\\\",
            b'"' => "\\\"",
            _ => "\\n",
        })?;
        rest = &rest[at + 1..];
    }
    out.write_str(rest)
}

impl EncodeLabelValue for LabelValue {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        write_escaped(encoder, &self.0)
    }
}

#[cfg(test)]
mod tests {
    use prometheus_client::encoding::text::encode;
    use prometheus_client::metrics::family::Family;
    use prometheus_client::metrics::gauge::Gauge;
    use prometheus_client::registry::Registry;

    use super::*;

    fn escaped(value: &str) -> String {
        let mut out = String::new();
        write_escaped(&mut out, value).unwrap();
        out
    }

    #[test]
    fn backslashes_quotes_and_line_feeds_are_escaped_and_nothing_else() {
        assert_eq!(escaped("NVIDIA-GeForce-RTX-4090"), "NVIDIA-GeForce-RTX-4090");
        assert_eq!(escaped(r#"X",status="online"#), r#"X\",status=\"online"#);
        assert_eq!(escaped("a\\b"), "a\\\\b");
        assert_eq!(escaped("one\ntwo"), "one\\ntwo");
        assert_eq!(escaped("\\\"\n"), "\\\\\\\"\\n");
        assert_eq!(escaped("Łódź\ttab"), "Łódź\ttab", "any other character is valid as it is");
        assert_eq!(escaped(""), "");
    }

    #[test]
    fn a_hostile_value_stays_inside_its_label() {
        let family = Family::<Labels, Gauge>::default();
        family.get_or_create(&vec![label("product", r#"X",status="online"#), label("b", "\\")]).set(1);
        let mut registry = Registry::default();
        registry.register("gpus", "GPUs", family);
        let mut text = String::new();
        encode(&mut text, &registry).unwrap();
        assert!(text.contains(r#"gpus{product="X\",status=\"online",b="\\"} 1"#), "{text}");
    }
}
