//! The package cache's HTTP face, on the controller's own TLS port beside gRPC
//! (HTTP/1.1 or HTTP/2): agents present the client certificate enrollment gave
//! them, as on their session. Paths:
//!
//! - `GET /cache/v1/files/{sha256}/{file name}`: a file a stored revision names;
//! - `GET /cache/v1/git/{repository key}/{commit}.bundle`: a pinned commit as a git
//!   bundle (the key is the first 16 hex digits of the sha256 of the spec's URL);
//! - `GET /cache/v1/index/{index key}/{project}/`: an index page whose file links
//!   point back here ([`crate::index_proxy`]).
//!
//! Errors are plain text saying what went wrong and, for upstream errors, the URL:
//! 409 when upstream's bytes do not match the sha256 the revision requires, 502 when
//! upstream failed, 404 for a file no stored revision names.

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use comfyfleet_config::text::Escaped;
use futures_util::StreamExt;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};

use crate::agent_service::authenticate_certificate;
use crate::package_cache::{CacheError, HOLDBACK, Opened, State as Download, body_stream};
use crate::state::ControllerState;

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

/// The machine the request's client certificate names, or the answer to send.
async fn machine(state: &ControllerState, request: Request) -> Result<String, Response> {
    let certificates =
        request.extensions().get::<TlsConnectInfo<TcpConnectInfo>>().and_then(TlsConnectInfo::peer_certs);
    drop(request);
    authenticate_certificate(state, certificates.as_deref().map(Vec::as_slice))
        .await
        .map(|id| id.to_string())
        .map_err(|status| {
            let code = match status.code() {
                tonic::Code::Unauthenticated => StatusCode::UNAUTHORIZED,
                tonic::Code::PermissionDenied => StatusCode::FORBIDDEN,
                _ => StatusCode::INTERNAL_SERVER_ERROR,
            };
            text(code, status.message())
        })
}

async fn file(
    State(state): State<Arc<ControllerState>>,
    Path((sha256, _name)): Path<(String, String)>,
    request: Request,
) -> Response {
    let machine = match machine(&state, request).await {
        Ok(machine) => machine,
        Err(response) => return response,
    };
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
    // answered with its reason, which names the URL.
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
    let counted = cache.clone();
    let stream = body_stream(opened).map(move |chunk| {
        if let Ok(bytes) = &chunk {
            counted.count_served(bytes.len() as u64);
        }
        chunk
    });
    let mut response = Response::new(Body::from_stream(stream));
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, header::HeaderValue::from_static("application/octet-stream"));
    if let Some(length) = length {
        headers.insert(header::CONTENT_LENGTH, header::HeaderValue::from(length));
    }
    response
}

async fn bundle(
    State(state): State<Arc<ControllerState>>,
    Path((key, bundle)): Path<(String, String)>,
    request: Request,
) -> Response {
    if let Err(response) = machine(&state, request).await {
        return response;
    }
    let Some(commit) = bundle.strip_suffix(".bundle") else {
        return text(StatusCode::NOT_FOUND, "git bundles are named COMMIT.bundle");
    };
    let hex = |text: &str, len: usize| text.len() == len && text.bytes().all(|b| b.is_ascii_hexdigit());
    if !hex(&key, 16) || !hex(commit, 40) {
        return text(StatusCode::NOT_FOUND, "a git bundle is /cache/v1/git/KEY/COMMIT.bundle");
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
    let counted = state.packages.clone();
    let stream = body_stream(opened).map(move |chunk| {
        if let Ok(bytes) = &chunk {
            counted.count_served(bytes.len() as u64);
        }
        chunk
    });
    let mut response = Response::new(Body::from_stream(stream));
    if let Some(size) = size {
        response.headers_mut().insert(header::CONTENT_LENGTH, header::HeaderValue::from(size));
    }
    response
}

async fn index_page(
    State(state): State<Arc<ControllerState>>,
    Path((key, path)): Path<(String, String)>,
    request: Request,
) -> Response {
    let headers = request.headers().clone();
    if let Err(response) = machine(&state, request).await {
        return response;
    }
    let page = crate::index_proxy::page(&state, &key, &path, &headers).await;
    let mut response = Response::new(Body::from(page.body));
    *response.status_mut() = page.status;
    if let Ok(value) = header::HeaderValue::from_str(&page.content_type) {
        response.headers_mut().insert(header::CONTENT_TYPE, value);
    }
    if page.stale {
        response.headers_mut().insert(
            header::WARNING,
            header::HeaderValue::from_static("110 - \"upstream unreachable: the kept copy\""),
        );
    }
    response
}
