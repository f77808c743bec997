//! One module per command group; each returns the text to print.

pub mod audit;
pub mod cache;
pub mod convergence;
pub mod credentials;
pub mod environments;
pub mod facts;
mod machine_details;
pub mod machines;
pub mod models;
pub mod plan;
pub mod reports;
pub mod rollout;
pub mod rollout_policy;
mod rollout_render;
pub mod rollout_status;
mod rollout_view;
pub mod rollout_watch;
pub mod secrets;
pub mod tokens;

use comfyfleet_proto::v1 as pb;
use jiff::Timestamp;

/// A controller refusal, as the operator should read it.
pub fn status_error(status: tonic::Status) -> anyhow::Error {
    let message = status.message();
    match status.code() {
        tonic::Code::Unavailable => anyhow::anyhow!("the controller is unavailable: {message}"),
        tonic::Code::DeadlineExceeded => anyhow::anyhow!("the controller did not answer in time: {message}"),
        _ if message.is_empty() => anyhow::anyhow!("the controller refused: {:?}", status.code()),
        _ => anyhow::anyhow!("{message}"),
    }
}

pub fn time(at: Option<&prost_types::Timestamp>) -> Option<Timestamp> {
    at.and_then(|at| comfyfleet_proto::timestamp_from_wire("time", at).ok())
}

/// Less life left than this in the controller's server certificate is warned about.
/// A controller renews it with a third of its life left (four months of the default
/// year), so a warning means renewal is failing (or its life was set short for tests).
const CERTIFICATE_WARNING: jiff::SignedDuration = jiff::SignedDuration::from_hours(30 * 24);

/// When the controller's server certificate ends, with a warning when that is near;
/// `None` from a controller that does not say.
pub fn server_certificate_note(not_after: Option<&prost_types::Timestamp>, now: Timestamp) -> Option<String> {
    let not_after = time(not_after)?;
    let left = not_after.duration_since(now);
    let when = crate::format::rfc3339(not_after);
    if left >= CERTIFICATE_WARNING {
        return Some(format!("server certificate valid until {when}"));
    }
    let seconds = left.as_secs();
    let left = match seconds {
        ..=0 => "it has expired".to_owned(),
        1..=7199 => format!("{seconds} s left"),
        7200..=172_799 => format!("{} h left", seconds / 3600),
        _ => format!("{} days left", seconds / 86_400),
    };
    Some(format!(
        "warning: the controller's server certificate expires at {when} ({left}); the controller renews it \
         at two-thirds of its life, so renewal is failing: look for \"cannot renew the server certificate\" \
         in its log"
    ))
}

/// Prints the server certificate's note on standard error when it is a warning.
pub fn warn_if_certificate_expires(not_after: Option<&prost_types::Timestamp>) {
    if let Some(note) =
        server_certificate_note(not_after, Timestamp::now()).filter(|note| note.starts_with("warning"))
    {
        eprintln!("{note}");
    }
}

pub fn role_name(role: i32) -> &'static str {
    match pb::Role::try_from(role) {
        Ok(pb::Role::Viewer) => "viewer",
        Ok(pb::Role::Operator) => "operator",
        Ok(pb::Role::Admin) => "admin",
        _ => "unknown",
    }
}

pub fn to_json<T: serde::Serialize>(value: &T) -> anyhow::Result<String> {
    Ok(serde_json::to_string_pretty(value)? + "\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_server_certificate_is_warned_about_only_near_its_end() {
        let now = Timestamp::from_second(1_800_000_000).unwrap();
        let at = |days: i64| {
            Some(comfyfleet_proto::timestamp_to_wire(now + jiff::SignedDuration::from_hours(days * 24)))
        };
        assert_eq!(
            server_certificate_note(at(200).as_ref(), now).unwrap(),
            "server certificate valid until 2027-08-03T08:00:00Z"
        );
        let near = server_certificate_note(at(10).as_ref(), now).unwrap();
        assert!(near.starts_with("warning:") && near.contains("(10 days left)"), "{near}");
        let gone = server_certificate_note(at(-1).as_ref(), now).unwrap();
        assert!(gone.contains("it has expired"), "{gone}");
        assert_eq!(server_certificate_note(None, now), None, "an older controller says nothing");
    }
}
