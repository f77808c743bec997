//! Signing in and out of the web page. A sign-in takes a credential of any role and
//! keeps a session for it (`sessions`: bounded per credential, so no one signs anyone
//! else out); failed sign-ins are throttled per address, like enrollments
//! (`failure_throttle`); and where the browser goes next is only ever a plain path on
//! this site.

use std::net::IpAddr;

use axum::extract::{Extension, Form, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use comfyfleet_config::text::Escaped;
use maud::html;
use serde::Deserialize;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};

use super::{COOKIE, SESSION_TTL, Shared, cookie, layout};
use crate::edges::failure_throttle::{self, Admission};

/// Longest `next=` kept; a longer one is not a page of this site.
const MAX_NEXT: usize = 2048;

/// Only a plain absolute path on this site: it starts with one `/` (never `//host`),
/// and is visible ASCII without `\` — no scheme, no space, tab, line break or other
/// control, nothing a browser would read as another host. Anything else is `/`. (What
/// the sign-in page is sent is percent-encoded, so a real page's path always passes.)
pub(super) fn safe_next(next: Option<&str>) -> String {
    match next {
        Some(next)
            if next.len() <= MAX_NEXT
                && next.starts_with('/')
                && !next.starts_with("//")
                && next.bytes().all(|byte| byte.is_ascii_graphic() && byte != b'\\') =>
        {
            next.to_owned()
        }
        _ => "/".to_owned(),
    }
}

/// A 303 to `next`, which [`safe_next`] made a valid header value (else `/`).
fn redirect(next: &str) -> Response {
    let location = HeaderValue::from_str(next).unwrap_or(HeaderValue::from_static("/"));
    (StatusCode::SEE_OTHER, [(header::LOCATION, location)]).into_response()
}

#[derive(Deserialize)]
pub(super) struct LoginQuery {
    next: Option<String>,
}

pub(super) async fn login_page(Query(query): Query<LoginQuery>) -> Html<String> {
    login_form(&safe_next(query.next.as_deref()), None)
}

fn login_form(next: &str, error: Option<&str>) -> Html<String> {
    layout(
        "Sign in",
        None,
        html! {
            section.login {
                h1 { "Sign in to comfyfleet" }
                p { "Paste a credential (" code { "cfo1.…" } "): any role can read this page. "
                    "Make one with " code { "comfyfleet credentials create NAME --role viewer" } "." }
                @if let Some(error) = error { p.error { (error) } }
                form method="post" action="/login" {
                    input type="hidden" name="next" value=(next);
                    label for="credential" { "Credential" }
                    input #credential type="password" name="credential" autocomplete="off" required autofocus;
                    button type="submit" { "Sign in" }
                }
            }
        },
    )
}

#[derive(Deserialize)]
pub(super) struct LoginForm {
    credential: String,
    next: Option<String>,
}

/// The address a request came from (the web listener is TLS).
type Connection = Option<Extension<TlsConnectInfo<TcpConnectInfo>>>;

fn peer(connection: Connection) -> Option<IpAddr> {
    connection.and_then(|Extension(info)| info.get_ref().remote_addr()).map(|address| address.ip())
}

pub(super) async fn login(
    State(web): State<Shared>,
    connection: Connection,
    headers: HeaderMap,
    Form(form): Form<LoginForm>,
) -> Response {
    let next = safe_next(form.next.as_deref());
    // A sign-in posted from another site (login CSRF) is refused.
    let cross_site = headers
        .get("sec-fetch-site")
        .and_then(|value| value.to_str().ok())
        .is_some_and(|site| !matches!(site, "same-origin" | "none"));
    if cross_site {
        return (StatusCode::FORBIDDEN, "sign in from this site's own page\n").into_response();
    }
    let address = peer(connection);
    if let Some(ip) = address
        && let Admission::Blocked { wait, first } = web.failed_sign_ins.admit(ip)
    {
        if first {
            tracing::warn!(address = %ip, "web sign-ins from this address are refused for a while: too many failed");
            let detail = format!(
                "more than {} failed in {} s",
                failure_throttle::ALLOWED,
                failure_throttle::WINDOW.as_secs()
            );
            web.state.audit(&format!("web sign-in from {ip}"), "web.sign-in.throttled", "", &detail).await;
        }
        let seconds = wait.as_secs().max(1);
        let message = format!("Too many failed sign-ins from this address; try again in {seconds} s.");
        let page = login_form(&next, Some(&message));
        return (StatusCode::TOO_MANY_REQUESTS, [(header::RETRY_AFTER, seconds.to_string())], page)
            .into_response();
    }
    let caller = match crate::use_cases::credentials::auth::check_credential(
        web.state.store.as_ref(),
        form.credential.trim(),
    )
    .await
    .map_err(tonic::Status::from)
    {
        Ok(caller) => caller,
        Err(status) if status.code() == tonic::Code::Internal => {
            tracing::error!(error = %Escaped(status.message()), "cannot check a web sign-in");
            let page =
                login_form(&next, Some("The controller cannot check credentials now; try again shortly."));
            return (StatusCode::SERVICE_UNAVAILABLE, page).into_response();
        }
        Err(status) => {
            // Successes do not reset the count: a valid credential is no licence to guess others.
            if let Some(ip) = address {
                web.failed_sign_ins.failed(ip);
            }
            tracing::info!(address = ?address, reason = %Escaped(status.message()), "web sign-in refused");
            let page = login_form(&next, Some(status.message()));
            return (StatusCode::UNAUTHORIZED, page).into_response();
        }
    };
    let id = crate::use_cases::credentials::secrets::new_web_session_id();
    web.sessions.insert(id.clone(), &caller.credential_id, &caller.name, SESSION_TTL);
    tracing::info!(credential = %Escaped(&caller.credential_id), name = %Escaped(&caller.name), address = ?address, "web sign-in");
    let cookie = format!(
        "{COOKIE}={id}; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age={}",
        SESSION_TTL.as_secs()
    );
    let mut response = redirect(&next);
    if let Ok(value) = HeaderValue::from_str(&cookie) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    response
}

pub(super) async fn logout(State(web): State<Shared>, headers: HeaderMap) -> Response {
    if let Some(id) = cookie(&headers, COOKIE) {
        web.sessions.remove(&id);
    }
    let mut response = Redirect::to("/login").into_response();
    response.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static(
            "__Host-comfyfleet_session=; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age=0",
        ),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_is_only_ever_a_plain_path_on_this_site() {
        assert_eq!(safe_next(Some("/machines?where=x")), "/machines?where=x");
        assert_eq!(safe_next(Some("/machines/%2Fx?where=a%20b")), "/machines/%2Fx?where=a%20b");
        for hostile in [
            "//evil.example/",
            "https://evil.example/",
            "/\\evil.example",
            "machines",
            "/\t/evil.example",
            "/\n/",
            "/\r\nSet-Cookie: x=y",
            "/ /evil.example",
            "/\u{7f}",
            "/Łódź",
            "",
            "javascript:alert(1)",
        ] {
            assert_eq!(safe_next(Some(hostile)), "/", "{hostile:?}");
        }
        assert_eq!(safe_next(Some(&format!("/{}", "a".repeat(MAX_NEXT)))), "/");
        assert_eq!(safe_next(None), "/");
    }

    #[test]
    fn the_redirect_goes_where_next_says() {
        let response = redirect("/machines?where=x");
        assert_eq!(response.status(), StatusCode::SEE_OTHER);
        assert_eq!(response.headers()[header::LOCATION], "/machines?where=x");
    }
}
