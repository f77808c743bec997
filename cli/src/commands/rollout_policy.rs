//! The policy flags of `rollout start` and `rollout undo`: each overrides one field of
//! the spec's `[rollout]` policy for this rollout only. They are checked here, with the
//! config crate's parsers, so a typo is a usage error before anything is sent.

use comfyfleet_config::duration::{self, DurationError};
use comfyfleet_config::spec::{Amount, HumanDuration};
use comfyfleet_proto::v1 as pb;

/// Unset flags keep what the spec says.
#[derive(Debug, Clone, Default, PartialEq, Eq, clap::Args)]
#[command(next_help_heading = "Policy (overrides the spec's [rollout] for this rollout)")]
pub struct PolicyFlags {
    /// Machines activated first, in a phase of their own (0: no canary).
    #[arg(long, value_name = "N")]
    pub canary: Option<u32>,
    /// Most machines unavailable at once (draining, switching, health-checking): a
    /// count ("3") or a share of the rollout's machines ("10%").
    #[arg(long, value_name = "AMOUNT", value_parser = parse_gate)]
    pub max_unavailable: Option<Amount>,
    /// Most machines building the revision at once: a count or a share.
    #[arg(long, value_name = "AMOUNT", value_parser = parse_gate)]
    pub max_parallel_prepare: Option<Amount>,
    /// Wait this long after each activation phase before the next ("0s": no wait).
    #[arg(long, value_name = "DUR", value_parser = parse_soak)]
    pub soak: Option<Soak>,
    /// Failed machines tolerated before the rollout pauses itself: a count or a share.
    #[arg(long, value_name = "AMOUNT", value_parser = parse_budget)]
    pub failure_budget: Option<Amount>,
    /// Return failed machines to the revision they ran before.
    #[arg(long, value_name = "true|false")]
    pub auto_rollback: Option<bool>,
    /// No progress for this long marks a machine stalled (e.g. 30m).
    #[arg(long, value_name = "DUR", value_parser = parse_deadline)]
    pub progress_deadline: Option<HumanDuration>,
    /// Whether a stalled machine counts against the failure budget.
    #[arg(long, value_name = "true|false")]
    pub stalled_is_failure: Option<bool>,
}

/// A soak time; `None` is "0s", no soak at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Soak(pub Option<HumanDuration>);

impl std::fmt::Display for Soak {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(duration) => duration.fmt(f),
            None => f.write_str("0s"),
        }
    }
}

impl PolicyFlags {
    /// The overrides as the controller reads them, `None` when no flag was given.
    /// Amounts and durations go in their canonical spelling (`10%`, `1h 30m`).
    pub fn to_wire(&self) -> Option<pb::RolloutPolicy> {
        if *self == PolicyFlags::default() {
            return None;
        }
        let text = |value: Option<String>| value.unwrap_or_default();
        Some(pb::RolloutPolicy {
            canary: self.canary,
            max_unavailable: text(self.max_unavailable.map(|amount| amount.to_string())),
            max_parallel_prepare: text(self.max_parallel_prepare.map(|amount| amount.to_string())),
            soak: text(self.soak.map(|soak| soak.to_string())),
            failure_budget: text(self.failure_budget.map(|amount| amount.to_string())),
            auto_rollback: self.auto_rollback,
            progress_deadline: text(self.progress_deadline.map(|deadline| deadline.to_string())),
            stalled_is_failure: self.stalled_is_failure,
        })
    }
}

/// `--max-unavailable` and `--max-parallel-prepare`: zero would stop the rollout.
pub fn parse_gate(text: &str) -> Result<Amount, String> {
    let amount: Amount = text.parse()?;
    if matches!(amount, Amount::Count(0) | Amount::Percent(0)) {
        return Err(format!(
            "`{}` would never let a machine through: write at least 1 (or a percentage, e.g. 10%)",
            text.trim()
        ));
    }
    Ok(amount)
}

/// `--failure-budget`: zero is allowed (the first failure pauses the rollout).
pub fn parse_budget(text: &str) -> Result<Amount, String> {
    text.parse()
}

pub fn parse_soak(text: &str) -> Result<Soak, String> {
    match duration::parse_positive(text) {
        Ok(soak) => Ok(Soak(Some(HumanDuration(soak)))),
        Err(DurationError::Zero { .. }) => Ok(Soak(None)),
        Err(error) => Err(format!("{error}, or 0s for no soak")),
    }
}

pub fn parse_deadline(text: &str) -> Result<HumanDuration, String> {
    text.parse()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Command {
        #[command(flatten)]
        policy: PolicyFlags,
    }

    fn parse(args: &[&str]) -> Result<PolicyFlags, String> {
        let args = std::iter::once("rollout").chain(args.iter().copied());
        Command::try_parse_from(args).map(|command| command.policy).map_err(|error| error.to_string())
    }

    #[test]
    fn no_flag_sends_no_policy() {
        assert_eq!(parse(&[]).unwrap().to_wire(), None);
    }

    #[test]
    fn every_flag_reaches_the_wire_in_canonical_spelling() {
        let flags = parse(&[
            "--canary",
            "2",
            "--max-unavailable",
            " 10 % ",
            "--max-parallel-prepare",
            "5",
            "--soak",
            "90s",
            "--failure-budget",
            "0",
            "--auto-rollback",
            "false",
            "--progress-deadline",
            "1h30m",
            "--stalled-is-failure",
            "true",
        ])
        .unwrap();
        assert_eq!(flags.progress_deadline, Some(HumanDuration(Duration::from_secs(5400))));
        assert_eq!(
            flags.to_wire(),
            Some(pb::RolloutPolicy {
                canary: Some(2),
                max_unavailable: "10%".into(),
                max_parallel_prepare: "5".into(),
                soak: "1m 30s".into(),
                failure_budget: "0".into(),
                auto_rollback: Some(false),
                progress_deadline: "1h 30m".into(),
                stalled_is_failure: Some(true),
            })
        );
    }

    #[test]
    fn one_flag_leaves_the_others_to_the_spec() {
        let wire = parse(&["--soak", "0s"]).unwrap().to_wire().unwrap();
        assert_eq!(wire, pb::RolloutPolicy { soak: "0s".into(), ..Default::default() });
        let wire = parse(&["--canary", "0"]).unwrap().to_wire().unwrap();
        assert_eq!(wire, pb::RolloutPolicy { canary: Some(0), ..Default::default() });
    }

    #[test]
    fn mistakes_are_usage_errors_that_say_what_to_write() {
        let error = parse(&["--max-unavailable", "0"]).unwrap_err();
        assert!(error.contains("`0` would never let a machine through: write at least 1"), "{error}");
        let error = parse(&["--max-parallel-prepare", "0%"]).unwrap_err();
        assert!(error.contains("would never let a machine through"), "{error}");
        let error = parse(&["--failure-budget", "lots"]).unwrap_err();
        assert!(error.contains("`lots` is not a count or a percentage: write e.g. 5"), "{error}");
        let error = parse(&["--max-unavailable", "120%"]).unwrap_err();
        assert!(error.contains("`120%` is more than 100%"), "{error}");
        let error = parse(&["--soak", "a while"]).unwrap_err();
        assert!(error.contains("write e.g. 30s, 5m, 24h, 7d, or 0s for no soak"), "{error}");
        let error = parse(&["--progress-deadline", "0s"]).unwrap_err();
        assert!(error.contains("`0s` must be more than zero"), "{error}");
        let error = parse(&["--auto-rollback", "yes"]).unwrap_err();
        assert!(error.contains("--auto-rollback"), "{error}");
        assert!(parse(&["--canary", "-1"]).is_err());
    }
}
