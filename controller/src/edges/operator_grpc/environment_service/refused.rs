//! Audit entries for refused applies and locks. A refusal changes nothing, but who
//! tried what matters as much as what happened: an operator naming an admin's secret
//! for their own host, a spec that names a source-only package, a remote the git
//! policy refuses. Each entry says who, which spec and environment, which credentials
//! it named and why it was refused — the reason bounded in size, on one line, and
//! with the values of those credentials masked (a reason quotes uv's and git's output,
//! which must never carry one, but the audit log is read by every admin).

use tonic::Status;

use crate::use_cases::ControllerState;
use crate::use_cases::credentials::auth::Caller;

/// The most characters of a refusal's reason an entry keeps.
const MAX_REASON_CHARS: usize = 1500;

/// What is known of an apply when it is refused: filled in as it goes.
#[derive(Debug, Default)]
pub(super) struct Attempt {
    /// The file name the client sent (or "spec").
    pub file: String,
    /// The spec's environment, once it parsed.
    pub environment: Option<String>,
    /// The credentials the spec names, once it parsed.
    pub credentials: Vec<String>,
}

/// Writes `action`'s refusal of `attempt` to the audit log.
pub(super) async fn audit(
    state: &ControllerState,
    caller: &Caller,
    action: &str,
    attempt: &Attempt,
    status: &Status,
) {
    let secrets = state.source_secrets.values_of(&attempt.credentials).await;
    let target = attempt.environment.clone().unwrap_or_else(|| "-".to_owned());
    let credentials =
        if attempt.credentials.is_empty() { "none".to_owned() } else { attempt.credentials.join(", ") };
    let detail = format!(
        "spec {}; credentials {credentials}; {}: {}",
        one_line(&attempt.file, 200, &secrets),
        code_name(status.code()),
        one_line(status.message(), MAX_REASON_CHARS, &secrets)
    );
    tracing::info!(actor = %caller.actor(), action, environment = %target, %detail, "refused");
    state.audit(&caller.actor(), action, &target, &detail).await;
}

/// `text` on one line, every value in `secrets` masked, at most `limit` characters.
fn one_line(text: &str, limit: usize, secrets: &[String]) -> String {
    let mut text = text.to_owned();
    for secret in secrets.iter().filter(|secret| !secret.is_empty()) {
        text = text.replace(secret.as_str(), "***");
    }
    let flat: String = text
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .collect::<Vec<_>>()
        .join(" | ")
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if flat.chars().count() <= limit {
        return flat;
    }
    let mut cut: String = flat.chars().take(limit).collect();
    cut.push('…');
    cut
}

fn code_name(code: tonic::Code) -> &'static str {
    match code {
        tonic::Code::InvalidArgument => "invalid",
        tonic::Code::FailedPrecondition => "refused",
        tonic::Code::NotFound => "not found",
        tonic::Code::PermissionDenied => "not permitted",
        tonic::Code::ResourceExhausted => "too large",
        tonic::Code::Cancelled | tonic::Code::DeadlineExceeded => "cancelled",
        _ => "failed",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reason_is_one_bounded_line_without_the_secrets() {
        let secrets = vec!["hunter2".to_owned(), "Basic YnVpbGRlcjpodW50ZXIy".to_owned()];
        let reason = "cannot lock:\nbuild class x: uv said hunter2\r\n\u{1b}[31mBasic YnVpbGRlcjpodW50ZXIy";
        let line = one_line(reason, 1500, &secrets);
        assert_eq!(line, "cannot lock: | build class x: uv said *** |  [31m***");
        let long = "x".repeat(5000);
        let line = one_line(&long, MAX_REASON_CHARS, &[]);
        assert_eq!(line.chars().count(), MAX_REASON_CHARS + 1);
        assert!(line.ends_with('…'));
    }
}
