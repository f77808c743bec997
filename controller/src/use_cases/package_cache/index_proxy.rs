//! The package cache's index pages: `GET /cache/v1/index/<key>/<project>/` is the
//! page of that project on one of the indexes the requesting machine's own
//! revisions name (its `index.url`, `index.extra`, or a torch index; `key` is the
//! first 16 hex digits of the sha256 of the index URL), as PEP 503 HTML or PEP 691
//! JSON, whichever the client asks for. The page is rebuilt from what upstream's
//! says ([`crate::use_cases::package_cache::index_page`]): every file link that carries a sha256 points at the
//! cache's `/cache/v1/files/<sha256>/<name>`, recorded (with the index that linked
//! it), so what a client installs from the page comes through the cache, checked.
//! The last good page (as parsed) is kept and served when upstream cannot be reached.

use std::path::PathBuf;

use axum::http::{HeaderMap, StatusCode, header};
use comfyfleet_config::text::Escaped;

use crate::use_cases::ControllerState;
use crate::use_cases::package_cache::index_page::ProjectPage;
use crate::use_cases::sources::upstream_client::{detail, unreachable};

const PEP691: &str = "application/vnd.pypi.simple.v1+json";
/// Larger than any real project page (PyPI's torch page is a few MiB).
const MAX_PAGE_BYTES: usize = 64 << 20;

/// A page as answered: status, content type, body.
pub struct Page {
    pub status: StatusCode,
    pub content_type: String,
    pub body: Vec<u8>,
    /// Served from the kept copy because upstream failed.
    pub stale: bool,
}

/// A project's name as it appears in an index path: one segment, `name` or `name/`.
fn project_of(path: &str) -> Option<&str> {
    let name = path.strip_suffix('/').unwrap_or(path);
    let plain = |b: u8| b.is_ascii_alphanumeric() || b"._-".contains(&b);
    (!name.is_empty() && name.len() <= 200 && !name.starts_with('.') && name.bytes().all(plain))
        .then_some(name)
}

fn error(status: StatusCode, message: String) -> Page {
    Page {
        status,
        content_type: "text/plain; charset=utf-8".into(),
        body: (message + "\n").into_bytes(),
        stale: false,
    }
}

/// The page of `path` on the index `base` (key `key`), which the asking machine's
/// revisions name.
pub async fn page(state: &ControllerState, key: &str, base: &str, path: &str, headers: &HeaderMap) -> Page {
    let Some(project) = project_of(path) else {
        return error(StatusCode::NOT_FOUND, "an index page is /cache/v1/index/KEY/PROJECT/".into());
    };
    let wants_json = headers
        .get(header::ACCEPT)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|accept| accept.contains(PEP691));
    let render = |page: &ProjectPage| {
        if wants_json { page.to_json(project) } else { page.to_html(project).into_bytes() }
    };
    let content_type = if wants_json { PEP691 } else { "text/html; charset=utf-8" }.to_owned();
    let upstream = format!("{base}/{project}/");
    let kept = kept_path(state, key, project);
    match fetch(state, &upstream, wants_json).await {
        Ok(page) => {
            let files: Vec<_> = page
                .files
                .iter()
                .map(crate::use_cases::package_cache::index_page::IndexFile::package_file)
                .collect();
            if let Err(problem) = state.packages.store().record_index_files(key, &files).await {
                tracing::warn!(problem = %Escaped(&problem), "cannot record an index page's files");
                return error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("cannot record the page's files: {problem}"),
                );
            }
            if let Some(parent) = kept.parent()
                && std::fs::create_dir_all(parent).is_ok()
                && let Ok(json) = serde_json::to_vec(&page)
            {
                let _ = comfyfleet_daemon::files::write_atomic(&kept, &json, 0o644);
            }
            Page { status: StatusCode::OK, content_type, body: render(&page), stale: false }
        }
        Err(problem) => {
            let stored =
                std::fs::read(&kept).ok().and_then(|json| serde_json::from_slice::<ProjectPage>(&json).ok());
            match stored {
                Some(page) => {
                    tracing::info!(upstream = %Escaped(&upstream), "upstream unreachable; serving the kept index page");
                    Page { status: StatusCode::OK, content_type, body: render(&page), stale: true }
                }
                None => error(StatusCode::BAD_GATEWAY, problem),
            }
        }
    }
}

fn kept_path(state: &ControllerState, key: &str, project: &str) -> PathBuf {
    state.packages.directory().join("index-pages").join(key).join(format!("{project}.json"))
}

/// The page at `url`, parsed; on any failure, the words of [`unreachable`].
async fn fetch(state: &ControllerState, url: &str, json: bool) -> Result<ProjectPage, String> {
    let accept = if json { "application/vnd.pypi.simple.v1+json, text/html;q=0.1" } else { "text/html" };
    let mut request = state.packages.upstream().get(url).await?.header(header::ACCEPT, accept);
    if let Some(authorization) = state.packages.authorization(url).await {
        request = request.header(header::AUTHORIZATION, authorization);
    }
    let mut response = request.send().await.map_err(|error| unreachable(url, &detail(&error)))?;
    if !response.status().is_success() {
        return Err(unreachable(url, &format!("it answered {}", response.status())));
    }
    let final_url = response.url().to_string();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.contains("json"));
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|error| unreachable(url, &detail(&error)))? {
        body.extend_from_slice(&chunk);
        if body.len() > MAX_PAGE_BYTES {
            return Err(unreachable(url, &format!("its page is larger than {MAX_PAGE_BYTES} bytes")));
        }
    }
    ProjectPage::parse(&body, &final_url, is_json).map_err(|problem| unreachable(url, &problem))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_project_names_are_proxied() {
        assert_eq!(project_of("einops/"), Some("einops"));
        assert_eq!(project_of("comfyui-frontend-package"), Some("comfyui-frontend-package"));
        for bad in ["", "/", "../etc/passwd", "a/../../b", "a/b/", "x%2F", "a b/", "../", ".hidden/"] {
            assert_eq!(project_of(bad), None, "{bad}");
        }
    }
}
