//! The package cache's HTTP face, on the controller's own TLS port beside gRPC
//! (HTTP/1.1 or HTTP/2): agents present the client certificate enrollment gave
//! them, as on their session. Paths:
//!
//! - `GET /cache/v1/files/{sha256}/{file name}`: a file the machine's revisions
//!   install, or one a page of an index they name links to;
//! - `GET /cache/v1/git/{repository key}/{commit}.bundle`: a commit the machine's
//!   revisions pin, as a git bundle (the key is the first 16 hex digits of the
//!   sha256 of the spec's URL; the commit in lower-case hex, as revisions name it);
//! - `GET /cache/v1/index/{index key}/{project}/`: a page of an index the machine's
//!   revisions name, whose file links point back here ([`crate::use_cases::package_cache::index_proxy`]).
//!
//! A machine is served only what its own revisions name ([`crate::use_cases::package_cache::source_access`]);
//! anything else is 403 before any work is done for it. Files and bundles honour a
//! single byte range (206, or 416 past the end; several ranges get the whole file).
//! Errors are plain text saying what went wrong: 409 when upstream's bytes do not
//! match the sha256 the revision requires, 502 when upstream is unreachable.

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use comfyfleet_config::text::Escaped;
use futures_util::StreamExt;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};

use crate::edges::agent_grpc::authenticated_machine;
use crate::use_cases::ControllerState;
use crate::use_cases::package_cache::body::{ByteRange, body_stream};
use crate::use_cases::package_cache::source_access::MachineSources;
use crate::use_cases::package_cache::{CacheError, HOLDBACK, Opened, State as Download, is_sha256};

pub fn router(state: Arc<ControllerState>) -> Router {
    Router::new()
        .route("/cache/v1/files/{sha256}/{name}", get(file))
        .route("/cache/v1/git/{key}/{bundle}", get(bundle))
        .route("/cache/v1/index/{key}/{*path}", get(index_page))
        .with_state(state)
}

fn text(status: StatusCode, message: impl Into<String>) -> Response {
    (status, [(header::CONTENT_TYPE, "text/plain; charset=utf-8")], message.into() + "\n").into_response()
}

/// The machine the request's client certificate names and what it may be served,
/// or the answer to send.
async fn machine(state: &ControllerState, request: &Parts) -> Result<(String, MachineSources), Response> {
    let certificates =
        request.extensions.get::<TlsConnectInfo<TcpConnectInfo>>().and_then(TlsConnectInfo::peer_certs);
    let machine =
        authenticated_machine(state, certificates.as_deref().map(Vec::as_slice)).await.map_err(|status| {
            let code = match status.code() {
                tonic::Code::Unauthenticated => StatusCode::UNAUTHORIZED,
                tonic::Code::PermissionDenied => StatusCode::FORBIDDEN,
                _ => StatusCode::INTERNAL_SERVER_ERROR,
            };
            text(code, status.message())
        })?;
    let sources = state.access.of_machine(state.store.as_ref(), &machine).await.map_err(|error| {
        text(StatusCode::SERVICE_UNAVAILABLE, format!("cannot read this machine's revisions: {error}"))
    })?;
    Ok((machine.id.to_string(), sources))
}

/// 403, in words that say why and what would change it.
fn not_named(machine: &str, sources: &MachineSources, what: &str) -> Response {
    let reason = if sources.is_empty() {
        "this machine is assigned no revision"
    } else {
        "its revisions do not name it"
    };
    tracing::info!(%machine, %what, "refused a package-cache request for a source the machine's revisions do not name");
    text(
        StatusCode::FORBIDDEN,
        format!(
            "the package cache does not serve {what} to machine {machine}: {reason} (a machine is served only the \
             sources and files its own assigned or running revision names)"
        ),
    )
}

async fn file(
    State(state): State<Arc<ControllerState>>,
    Path((sha256, _name)): Path<(String, String)>,
    request: Request,
) -> Response {
    // Parts only: the body is not Sync, and nothing is read from it.
    let (request, _) = request.into_parts();
    let (machine, sources) = match machine(&state, &request).await {
        Ok(found) => found,
        Err(response) => return response,
    };
    if !is_sha256(&sha256) {
        return text(
            StatusCode::NOT_FOUND,
            CacheError::BadDigest(comfyfleet_config::spec::names::printable(&sha256)).to_string(),
        );
    }
    if !sources.names_file(&sha256) {
        // A file a page of one of the machine's own indexes links to.
        let linked = match state.store.linking_indexes(&sha256).await {
            Ok(keys) => keys.iter().any(|key| sources.index(key).is_some()),
            Err(error) => {
                return text(StatusCode::SERVICE_UNAVAILABLE, format!("cannot read the store: {error}"));
            }
        };
        if !linked {
            return not_named(&machine, &sources, &format!("the file with sha256 {sha256}"));
        }
    }
    let cache = state.packages.clone();
    let opened = match cache.open(&sha256).await {
        Ok(opened) => opened,
        Err(error @ (CacheError::BadDigest(_) | CacheError::Unknown(_))) => {
            return text(StatusCode::NOT_FOUND, error.to_string());
        }
        Err(CacheError::Refused { message, integrity: true }) => return text(StatusCode::CONFLICT, message),
        Err(CacheError::Refused { message, integrity: false }) => {
            return text(StatusCode::BAD_GATEWAY, message);
        }
        Err(error) => return text(StatusCode::SERVICE_UNAVAILABLE, error.to_string()),
    };
    // A download that has already failed (or fails before a byte could be sent) is
    // answered with its reason.
    let length = match &opened {
        Opened::Ready { size, .. } => Some(*size),
        Opened::Downloading { state: download, .. } => {
            let mut download = download.clone();
            loop {
                let current = download.borrow_and_update().clone();
                match current {
                    // 409: upstream's bytes conflict with the sha256 the revision
                    // requires (a supply-chain problem); 502: upstream failed.
                    Download::Failed { message, integrity: true } => {
                        return text(StatusCode::CONFLICT, message);
                    }
                    Download::Failed { message, integrity: false } => {
                        return text(StatusCode::BAD_GATEWAY, message);
                    }
                    Download::Verified { size } => break Some(size),
                    // Answer once bytes can flow; a small file is answered only
                    // once verified, so its refusal is a status with a reason.
                    Download::Downloading { written, total } if written > HOLDBACK => break total,
                    Download::Downloading { .. } => {
                        if download.changed().await.is_err() {
                            return text(StatusCode::BAD_GATEWAY, "the upstream download stopped");
                        }
                    }
                }
            }
        }
    };
    tracing::debug!(%machine, sha256 = %Escaped(&sha256), "serving a cached file");
    // The sha256 names these bytes for good: a strong validator for If-Range.
    serve(&state, opened, length, &request.headers, Some(format!("\"{sha256}\"")))
}

/// The answer with `opened`'s bytes (`size` when known): whole, or the one range
/// the request asks for.
fn serve(
    state: &ControllerState,
    opened: Opened,
    size: Option<u64>,
    headers: &HeaderMap,
    etag: Option<String>,
) -> Response {
    // An If-Range that does not name these exact bytes asks for all of them.
    let validated = match headers.get(header::IF_RANGE) {
        None => true,
        Some(value) => etag.as_deref().is_some_and(|etag| value.as_bytes() == etag.as_bytes()),
    };
    let range = match size {
        Some(size) if validated => {
            ByteRange::parse(headers.get(header::RANGE).and_then(|value| value.to_str().ok()), size)
        }
        _ => ByteRange::Whole,
    };
    let (status, first, end) = match range {
        ByteRange::Unsatisfiable => {
            let mut response =
                text(StatusCode::RANGE_NOT_SATISFIABLE, "the range starts past the end of the file");
            if let Some(size) = size
                && let Ok(value) = HeaderValue::from_str(&format!("bytes */{size}"))
            {
                response.headers_mut().insert(header::CONTENT_RANGE, value);
            }
            return response;
        }
        ByteRange::Part { first, last } => (StatusCode::PARTIAL_CONTENT, first, Some(last + 1)),
        ByteRange::Whole => (StatusCode::OK, 0, None),
    };
    let counted = state.packages.clone();
    let stream = body_stream(opened, first, end).map(move |chunk| {
        if let Ok(bytes) = &chunk {
            counted.count_served(bytes.len() as u64);
        }
        chunk
    });
    let mut response = Response::new(Body::from_stream(stream));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
    if let Some(size) = size {
        headers.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
        let length = end.unwrap_or(size) - first;
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
        if let Some(end) = end
            && let Ok(value) = HeaderValue::from_str(&format!("bytes {first}-{}/{size}", end - 1))
        {
            headers.insert(header::CONTENT_RANGE, value);
        }
    }
    if let Some(etag) = etag.and_then(|etag| HeaderValue::from_str(&etag).ok()) {
        headers.insert(header::ETAG, etag);
    }
    response
}

/// Lower-case hex digits, `len` of them.
fn lower_hex(text: &str, len: usize) -> bool {
    text.len() == len && text.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

async fn bundle(
    State(state): State<Arc<ControllerState>>,
    Path((key, bundle)): Path<(String, String)>,
    request: Request,
) -> Response {
    // Parts only: the body is not Sync, and nothing is read from it.
    let (request, _) = request.into_parts();
    let (machine, sources) = match machine(&state, &request).await {
        Ok(found) => found,
        Err(response) => return response,
    };
    // Only the spelling revisions use: another would be another bundle of one commit.
    let commit = bundle.strip_suffix(".bundle").unwrap_or_default();
    if !lower_hex(&key, 16) || !(lower_hex(commit, 40) || lower_hex(commit, 64)) {
        return text(
            StatusCode::NOT_FOUND,
            "a git bundle is /cache/v1/git/KEY/COMMIT.bundle, KEY 16 and COMMIT 40 (or 64) lower-case hex digits",
        );
    }
    if !sources.names_commit(&key, commit) {
        return not_named(&machine, &sources, &format!("commit {commit} of repository {key}"));
    }
    let path = match state.mirror.bundle(&key, commit).await {
        Ok(Some(path)) => path,
        Ok(None) => {
            return text(
                StatusCode::NOT_FOUND,
                format!("the controller holds no commit {commit} of that repository: apply the spec again"),
            );
        }
        Err(error) => {
            return text(StatusCode::INTERNAL_SERVER_ERROR, format!("cannot bundle {commit}: {error}"));
        }
    };
    let size = std::fs::metadata(&path).map(|meta| meta.len()).ok();
    let opened = Opened::Ready { path, size: size.unwrap_or(0) };
    serve(&state, opened, size, &request.headers, None)
}

async fn index_page(
    State(state): State<Arc<ControllerState>>,
    Path((key, path)): Path<(String, String)>,
    request: Request,
) -> Response {
    // Parts only: the body is not Sync, and nothing is read from it.
    let (request, _) = request.into_parts();
    let (machine, sources) = match machine(&state, &request).await {
        Ok(found) => found,
        Err(response) => return response,
    };
    if !lower_hex(&key, 16) {
        return text(
            StatusCode::NOT_FOUND,
            "an index page is /cache/v1/index/KEY/PROJECT/, KEY 16 lower-case hex digits",
        );
    }
    let Some(base) = sources.index(&key) else {
        return not_named(&machine, &sources, &format!("the index with key {key}"));
    };
    let page =
        crate::use_cases::package_cache::index_proxy::page(&state, &key, base, &path, &request.headers).await;
    let mut response = Response::new(Body::from(page.body));
    *response.status_mut() = page.status;
    if let Ok(value) = HeaderValue::from_str(&page.content_type) {
        response.headers_mut().insert(header::CONTENT_TYPE, value);
    }
    if page.stale {
        response.headers_mut().insert(
            header::WARNING,
            HeaderValue::from_static("110 - \"upstream unreachable: the kept copy\""),
        );
    }
    response
}
