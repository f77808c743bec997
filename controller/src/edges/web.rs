//! The read-only web page (`--web-listen`, HTTPS with the controller's certificate):
//! the fleet's overview, the machines with the query selector as a filter, one
//! machine's GPUs, environments and steps, environments with their revision history
//! and diffs, and rollouts with live progress.
//!
//! Server-rendered HTML ([maud] escapes every value) with one small script for the
//! live rollout view; no JS toolchain. Signing in takes a credential of any role,
//! pasted once: the page keeps a random session id in a `__Host-`, `Secure; HttpOnly;
//! SameSite=Strict` cookie, and every request checks that the credential is still
//! valid, so revoking it signs the browser out. Sessions live in memory (a
//! controller restart signs everyone out), last [`SESSION_TTL`] and are bounded per
//! credential (`sessions`); failed sign-ins are throttled per address (`sign_in`).

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use comfyfleet_config::MachineId;
use comfyfleet_config::fleet_report::{FleetReport, ReportKind};
use comfyfleet_config::spec::{Spec, SpecFormat};
use comfyfleet_proto::v1 as pb;
use maud::{DOCTYPE, Markup, html};
use serde::Deserialize;

use crate::edges::operator_grpc::rollout_api::{event_to_wire, rollout_to_wire};
use crate::use_cases::ControllerState;
use crate::use_cases::machines::fleet_view::{self, FleetMachine};
use crate::use_cases::machines::lookup::{machine_record, resolve_machine};
use crate::use_cases::rollouts::api;

mod pages;
mod sessions;
mod sign_in;

/// How long a sign-in lasts.
pub const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);
/// Machines per page of the machines table.
pub const PAGE: u32 = 100;
/// `__Host-`: browsers take it only from HTTPS, for this host, path `/`.
const COOKIE: &str = "__Host-comfyfleet_session";
pub struct Web {
    state: Arc<ControllerState>,
    sessions: sessions::Sessions,
    /// Failed sign-ins per address.
    failed_sign_ins: crate::edges::failure_throttle::FailureThrottle,
}

type Shared = Arc<Web>;

pub fn router(state: Arc<ControllerState>) -> Router {
    let web = Arc::new(Web { state, sessions: Default::default(), failed_sign_ins: Default::default() });
    Router::new()
        .route("/", get(pages::overview))
        .route("/login", get(sign_in::login_page).post(sign_in::login))
        .route("/logout", post(sign_in::logout))
        .route("/machines", get(pages::machines))
        .route("/machines/{id}", get(pages::machine))
        .route("/environments", get(pages::environments))
        .route("/environments/{name}", get(pages::environment))
        .route("/rollouts", get(pages::rollouts))
        .route("/rollouts/{id}", get(pages::rollout))
        .route("/rollouts/{id}/live", get(pages::rollout_live))
        .route("/static/app.css", get(|| async { asset("text/css; charset=utf-8", APP_CSS) }))
        .route("/static/app.js", get(|| async { asset("text/javascript; charset=utf-8", APP_JS) }))
        .layer(axum::middleware::map_response(security_headers))
        .with_state(web)
}

const APP_CSS: &str = include_str!("web/app.css");
const APP_JS: &str = include_str!("web/app.js");

fn asset(content_type: &'static str, body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, content_type), (header::CACHE_CONTROL, "max-age=300")], body).into_response()
}

async fn security_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    let set = |headers: &mut HeaderMap, name: header::HeaderName, value: &'static str| {
        headers.insert(name, HeaderValue::from_static(value));
    };
    set(
        headers,
        header::CONTENT_SECURITY_POLICY,
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; \
         form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    );
    set(headers, header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    set(headers, header::REFERRER_POLICY, "no-referrer");
    set(headers, header::STRICT_TRANSPORT_SECURITY, "max-age=31536000");
    if !headers.contains_key(header::CACHE_CONTROL) {
        set(headers, header::CACHE_CONTROL, "no-store");
    }
    response
}

/// A signed-in viewer; pages that take one answer the sign-in page to anyone else.
pub struct Viewer {
    pub name: String,
}

/// Where someone who is not signed in is sent.
pub struct SignIn(Response);

impl IntoResponse for SignIn {
    fn into_response(self) -> Response {
        self.0
    }
}

fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value.to_owned())
}

impl FromRequestParts<Shared> for Viewer {
    type Rejection = SignIn;

    async fn from_request_parts(parts: &mut Parts, web: &Shared) -> Result<Self, Self::Rejection> {
        let path = parts.uri.path_and_query().map_or("/", |path| path.as_str()).to_owned();
        let to_login = || {
            let live = path.ends_with("/live") || path.contains("/live?");
            if live {
                SignIn((StatusCode::UNAUTHORIZED, "sign in again\n").into_response())
            } else {
                SignIn(Redirect::to(&format!("/login?next={}", encode_query(&path))).into_response())
            }
        };
        let Some(id) = cookie(&parts.headers, COOKIE) else { return Err(to_login()) };
        let Some(session) = web.sessions.get(&id) else { return Err(to_login()) };
        // Revoking the credential signs its browsers out.
        let valid = matches!(
            web.state.store.get_credential(&session.credential_id).await,
            Ok(Some(record)) if record.revoked_at.is_none()
        );
        if !valid {
            web.sessions.remove(&id);
            return Err(to_login());
        }
        Ok(Viewer { name: session.name })
    }
}

/// Percent-encodes everything but unreserved characters and `/`.
fn encode_query(text: &str) -> String {
    let mut encoded = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~' | b'/') {
            encoded.push(char::from(byte));
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    encoded
}

/// Every page's frame: the navigation, who is signed in, the content.
fn layout(title: &str, viewer: Option<&Viewer>, content: Markup) -> Html<String> {
    Html(
        html! {
            (DOCTYPE)
            html lang="en" {
                head {
                    meta charset="utf-8";
                    meta name="viewport" content="width=device-width, initial-scale=1";
                    title { (title) " · comfyfleet" }
                    link rel="stylesheet" href="/static/app.css";
                    script src="/static/app.js" defer {}
                }
                body {
                    header {
                        a.brand href="/" { "comfyfleet" }
                        @if let Some(viewer) = viewer {
                            nav {
                                a href="/" { "Overview" }
                                a href="/machines" { "Machines" }
                                a href="/environments" { "Environments" }
                                a href="/rollouts" { "Rollouts" }
                            }
                            form.logout method="post" action="/logout" {
                                span { (viewer.name) }
                                button type="submit" { "Sign out" }
                            }
                        }
                    }
                    main { (content) }
                }
            }
        }
        .into_string(),
    )
}

/// An error page that keeps the frame.
/// What the page says of a use case's error: its text, as the operators' API says
/// it (a controller fault logged, an unreachable database said so).
fn message(error: impl Into<tonic::Status>) -> String {
    error.into().message().to_owned()
}

fn problem(viewer: &Viewer, status: StatusCode, message: &str) -> Response {
    (status, layout("Problem", Some(viewer), html! { p.error { (message) } })).into_response()
}

/// A horizontal bar of a rollout or one of its phases: active, failed, activating and
/// the rest. Drawn as SVG geometry, not `style` widths: the page's Content Security
/// Policy (`style-src 'self'`) drops inline styles, which left every bar empty on
/// pages whose script does not redraw them (the rollout list, the overview).
fn progress_bar(machines: u32, active: u32, failed: u32, activating: u32) -> Markup {
    let share = |part: u32| {
        if machines == 0 { 0.0 } else { f64::from(part.min(machines)) * 100.0 / f64::from(machines) }
    };
    // Laid end to end in a box 100 wide: each part starts where the last one ended.
    let mut x = 0.0;
    let parts: Vec<(&str, f64, f64)> =
        [("active", share(active)), ("failed", share(failed)), ("activating", share(activating))]
            .into_iter()
            .map(|(part, width)| {
                let width = width.min(100.0 - x);
                let start = x;
                x += width;
                (part, start, width)
            })
            .collect();
    html! {
        svg.bar viewBox="0 0 100 1" preserveAspectRatio="none" role="img"
            aria-label={ (active) " of " (machines) " active, " (failed) " failed" } {
            @for (part, x, width) in parts {
                rect class=(part) data-part=(part) x=(format!("{x:.1}")) y="0" width=(format!("{width:.1}")) height="1" {}
            }
        }
    }
}

fn report_table(report: &FleetReport) -> Markup {
    let (header, rows) = report.table();
    html! {
        @if rows.is_empty() {
            p.muted { "Nothing to show." }
        } @else {
            table {
                thead { tr { @for name in &header { th { (name.replace('_', " ")) } } } }
                tbody { @for row in &rows { tr { @for cell in row { td { (cell) } } } } }
            }
        }
    }
}

/// "2× NVIDIA RTX A6000 (8.6)"; mixed machines join their groups with " + ".
fn gpu_summary(machine: &FleetMachine) -> String {
    let mut groups: Vec<(String, usize)> = Vec::new();
    for gpu in &machine.facts.gpus {
        let mut label = gpu.name.clone().unwrap_or_else(|| "unreadable GPU".to_owned());
        if let Some(cc) = gpu.compute_capability {
            label.push_str(&format!(" ({cc})"));
        }
        match groups.iter_mut().find(|(existing, _)| *existing == label) {
            Some((_, count)) => *count += 1,
            None => groups.push((label, 1)),
        }
    }
    if groups.is_empty() {
        return if machine.facts.reported { "none".to_owned() } else { "unknown".to_owned() };
    }
    groups.iter().map(|(label, count)| format!("{count}× {label}")).collect::<Vec<_>>().join(" + ")
}

fn status_of(machine: &FleetMachine) -> &'static str {
    if machine.record.revoked_at.is_some() {
        "revoked"
    } else if machine.record.online {
        "online"
    } else {
        "offline"
    }
}

/// A revision's spec as TOML, without its lock digests (they change with any package).
fn spec_text(environment: &str, number: u32, spec_json: &str) -> String {
    match Spec::parse(&format!("{environment}@{number}"), spec_json, SpecFormat::Json) {
        Ok(mut spec) => {
            spec.lock.digests.clear();
            comfyfleet_config::spec::canonical::to_toml(&spec)
        }
        Err(error) => format!("# unreadable revision: {error}\n"),
    }
}

/// A unified diff as lines with their kind, for colouring.
fn diff_lines(before: &str, after: &str, old_label: &str, new_label: &str) -> Vec<(&'static str, String)> {
    let diff = similar::TextDiff::from_lines(before, after);
    let text = diff.unified_diff().context_radius(3).header(old_label, new_label).to_string();
    text.lines()
        .map(|line| {
            let kind = if line.starts_with("+++") || line.starts_with("---") {
                "head"
            } else if line.starts_with('+') {
                "add"
            } else if line.starts_with('-') {
                "del"
            } else if line.starts_with("@@") {
                "hunk"
            } else {
                "same"
            };
            (kind, line.to_owned())
        })
        .collect()
}

fn rollout_label(rollout: &pb::Rollout) -> String {
    format!("#{} {}@{}", rollout.id, rollout.environment, rollout.revision_number)
}

fn rollout_state(rollout: &pb::Rollout) -> &'static str {
    match pb::RolloutState::try_from(rollout.state).unwrap_or(pb::RolloutState::Unspecified) {
        pb::RolloutState::Running => "running",
        pb::RolloutState::Paused => "paused",
        pb::RolloutState::Succeeded => "succeeded",
        pb::RolloutState::Aborted => "aborted",
        pb::RolloutState::Unspecified => "unknown",
    }
}

fn parse_machine_id(text: &str) -> Option<MachineId> {
    text.parse().ok()
}

fn timestamp(at: Option<jiff::Timestamp>) -> String {
    at.map_or_else(|| "-".to_owned(), |at| at.strftime("%Y-%m-%d %H:%M:%S UTC").to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_path_to_come_back_to_is_percent_encoded() {
        assert_eq!(encode_query("/machines?where=a && b"), "/machines%3Fwhere%3Da%20%26%26%20b");
    }

    #[test]
    fn cookies_are_read_by_name() {
        let mut headers = HeaderMap::new();
        headers.insert(header::COOKIE, HeaderValue::from_static("a=1; __Host-comfyfleet_session=abc; b=2"));
        assert_eq!(cookie(&headers, COOKIE).as_deref(), Some("abc"));
        assert_eq!(cookie(&headers, "missing"), None);
    }

    #[test]
    fn a_bar_is_drawn_without_inline_styles() {
        let bar = progress_bar(3, 2, 1, 0).into_string();
        assert!(!bar.contains("style="), "the page's CSP drops inline styles: {bar}");
        assert!(bar.contains(r#"data-part="active" x="0.0" y="0" width="66.7""#), "{bar}");
        assert!(bar.contains(r#"data-part="failed" x="66.7" y="0" width="33.3""#), "{bar}");
        let full = progress_bar(3, 3, 0, 0).into_string();
        assert!(full.contains(r#"data-part="active" x="0.0" y="0" width="100.0""#), "{full}");
        let empty = progress_bar(0, 0, 0, 0).into_string();
        assert!(empty.contains(r#"width="0.0""#), "{empty}");
    }

    #[test]
    fn diffs_colour_their_lines() {
        let lines = diff_lines("a = 1\nb = 2\n", "a = 1\nb = 3\n", "x@1", "x@2");
        assert!(lines.contains(&("del", "-b = 2".to_owned())), "{lines:?}");
        assert!(lines.contains(&("add", "+b = 3".to_owned())), "{lines:?}");
    }
}
