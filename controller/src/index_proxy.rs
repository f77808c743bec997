//! The package cache's index pages: `GET /cache/v1/index/<key>/<project>/` is the
//! page of that project on one of the indexes a kept revision's spec names (its
//! `index.url`, `index.extra`, or a torch index; `key` is the first 16 hex digits of
//! the sha256 of the index URL), as PEP 503 HTML or PEP 691 JSON, whichever the
//! client asks for. Every file link that carries a sha256 is rewritten to the
//! cache's `/cache/v1/files/<sha256>/<name>` (and its source recorded), so what a
//! client installs from the page comes through the cache, checked; links without a
//! sha256, and PEP 658 metadata links, are left out. The last good copy of each page
//! is kept and served when upstream cannot be reached.

use std::collections::HashMap;
use std::path::PathBuf;

use axum::http::{HeaderMap, StatusCode, header};
use comfyfleet_config::lock::repository_key;
use comfyfleet_config::spec::wheel::percent_decode;
use comfyfleet_config::text::Escaped;
use comfyfleet_config::uv_pin::join_url;
use comfyfleet_config::{Spec, SpecFormat};

use crate::state::ControllerState;
use crate::store::PackageFile;

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

/// Every index URL kept revisions name, by key.
async fn known_indexes(state: &ControllerState) -> HashMap<String, String> {
    let mut known = HashMap::new();
    let Ok(specs) = state.store.kept_revision_specs().await else { return known };
    for text in specs {
        let Ok(spec) = Spec::parse("stored spec", &text, SpecFormat::Json) else { continue };
        let mut urls = vec![spec.index.url.clone()];
        urls.extend(spec.index.extra.iter().cloned());
        urls.extend(spec.torch.cuda.iter().map(|cuda| spec.torch.index_for(*cuda)));
        for url in urls {
            let base = url.trim_end_matches('/').to_owned();
            known.insert(repository_key(&base), base);
        }
    }
    known
}

fn safe_path(path: &str) -> bool {
    !path.is_empty()
        && path.len() < 512
        && path.split('/').all(|segment| {
            segment != ".."
                && segment != "."
                && segment.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        })
}

pub async fn page(state: &ControllerState, key: &str, path: &str, headers: &HeaderMap) -> Page {
    let error = |status: StatusCode, message: String| Page {
        status,
        content_type: "text/plain; charset=utf-8".into(),
        body: (message + "\n").into_bytes(),
        stale: false,
    };
    if !safe_path(path) {
        return error(StatusCode::NOT_FOUND, "an index page is /cache/v1/index/KEY/PROJECT/".into());
    }
    let Some(base) = known_indexes(state).await.remove(key) else {
        return error(StatusCode::NOT_FOUND, format!("no kept revision names an index with key {key}"));
    };
    let wants_json = headers
        .get(header::ACCEPT)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|accept| accept.contains(PEP691));
    let upstream = format!("{base}/{path}");
    match fetch(state, &upstream, wants_json).await {
        // Whatever the client asked for, the answer is in the format upstream chose.
        Ok((body, final_url, json)) => {
            let kept = kept_path(state, key, path, json);
            let (body, files) =
                if json { rewrite_json(&body, &final_url) } else { rewrite_html(&body, &final_url) };
            if let Err(problem) = state.packages.store().record_package_files(&files).await {
                tracing::warn!(problem = %Escaped(&problem), "cannot record an index page's files");
            }
            if let Some(parent) = kept.parent()
                && std::fs::create_dir_all(parent).is_ok()
            {
                let _ = comfyfleet_daemon::files::write_atomic(&kept, &body, 0o644);
            }
            Page { status: StatusCode::OK, content_type: content_type(json), body, stale: false }
        }
        Err(problem) => {
            let kept = [wants_json, !wants_json].into_iter().find_map(|json| {
                std::fs::read(kept_path(state, key, path, json)).ok().map(|body| (body, json))
            });
            match kept {
                Some((body, json)) => {
                    tracing::info!(upstream = %Escaped(&upstream), problem = %Escaped(&problem), "upstream unreachable; serving the kept index page");
                    Page { status: StatusCode::OK, content_type: content_type(json), body, stale: true }
                }
                None => error(StatusCode::BAD_GATEWAY, problem),
            }
        }
    }
}

fn content_type(json: bool) -> String {
    if json { PEP691.to_owned() } else { "text/html; charset=utf-8".to_owned() }
}

fn kept_path(state: &ControllerState, key: &str, path: &str, json: bool) -> PathBuf {
    let name = path.trim_end_matches('/').replace('/', "_");
    state
        .packages
        .directory()
        .join("pages")
        .join(key)
        .join(format!("{name}.{}", if json { "json" } else { "html" }))
}

/// The page, the URL it came from, and whether it is PEP 691 JSON.
async fn fetch(state: &ControllerState, url: &str, json: bool) -> Result<(Vec<u8>, String, bool), String> {
    let accept = if json { "application/vnd.pypi.simple.v1+json, text/html;q=0.1" } else { "text/html" };
    let mut request = state.packages.client().get(url).header(header::ACCEPT, accept);
    if let Some(authorization) = state.packages.authorization(url).await {
        request = request.header(header::AUTHORIZATION, authorization);
    }
    let mut response = request.send().await.map_err(|error| {
        format!("cannot reach {url}: {}", comfyfleet_proto::transport::error_chain(&error))
    })?;
    if !response.status().is_success() {
        return Err(format!("{url} answered {}", response.status()));
    }
    let final_url = response.url().to_string();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.contains("json"));
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|error| format!("reading {url}: {error}"))? {
        body.extend_from_slice(&chunk);
        if body.len() > MAX_PAGE_BYTES {
            return Err(format!("{url} is larger than {MAX_PAGE_BYTES} bytes"));
        }
    }
    Ok((body, final_url, is_json))
}

fn file_name_of(url: &str) -> String {
    let path = url.split(['#', '?']).next().unwrap_or(url);
    percent_decode(path.rsplit('/').next().unwrap_or(path))
}

fn cache_link(sha256: &str, name: &str) -> String {
    format!("/cache/v1/files/{sha256}/{}", name.replace('%', "%25").replace('+', "%2B"))
}

/// PEP 503 HTML: anchors with a `#sha256=` keep their text and point at the cache;
/// others are dropped, as are metadata attributes.
fn rewrite_html(body: &[u8], page_url: &str) -> (Vec<u8>, Vec<PackageFile>) {
    let text = String::from_utf8_lossy(body);
    let mut files = Vec::new();
    let mut out = String::from("<!DOCTYPE html>\n<html><body>\n");
    for anchor in text.split("<a ").skip(1) {
        let Some(href) = anchor.split("href=\"").nth(1).and_then(|rest| rest.split('"').next()) else {
            continue;
        };
        let href = href.replace("&amp;", "&");
        let Some(sha256) = href.split("#sha256=").nth(1).map(|hash| hash.split('&').next().unwrap_or(hash))
        else {
            continue;
        };
        let sha256 = sha256.to_ascii_lowercase();
        if !crate::package_cache::is_sha256(&sha256) {
            continue;
        }
        let url = join_url(page_url, &href);
        let name = file_name_of(&url);
        if name.is_empty() || name.contains(['"', '<', '>']) {
            continue;
        }
        let requires_python = anchor
            .split("data-requires-python=\"")
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .map(|value| format!(" data-requires-python=\"{value}\""))
            .unwrap_or_default();
        out.push_str(&format!(
            "<a href=\"{}#sha256={sha256}\"{requires_python}>{name}</a><br/>\n",
            cache_link(&sha256, &name)
        ));
        files.push(PackageFile { sha256, url, file_name: name, size: None });
    }
    out.push_str("</body></html>\n");
    (out.into_bytes(), files)
}

/// PEP 691 JSON: the same for `files[]`.
fn rewrite_json(body: &[u8], page_url: &str) -> (Vec<u8>, Vec<PackageFile>) {
    let mut files = Vec::new();
    let Ok(mut page) = serde_json::from_slice::<serde_json::Value>(body) else {
        return (b"{\"meta\":{\"api-version\":\"1.0\"},\"files\":[]}".to_vec(), files);
    };
    if let Some(list) = page.get_mut("files").and_then(serde_json::Value::as_array_mut) {
        list.retain_mut(|file| {
            let Some(sha256) =
                file.pointer("/hashes/sha256").and_then(|v| v.as_str()).map(str::to_ascii_lowercase)
            else {
                return false;
            };
            let Some(href) = file.get("url").and_then(|v| v.as_str()) else { return false };
            if !crate::package_cache::is_sha256(&sha256) {
                return false;
            }
            let url = join_url(page_url, href);
            let name = file_name_of(&url);
            let size = file.get("size").and_then(serde_json::Value::as_u64);
            if let Some(object) = file.as_object_mut() {
                object.insert("url".into(), serde_json::Value::from(cache_link(&sha256, &name)));
                object.remove("core-metadata");
                object.remove("dist-info-metadata");
                object.remove("data-dist-info-metadata");
            }
            files.push(PackageFile { sha256, url, file_name: name, size });
            true
        });
    }
    (serde_json::to_vec(&page).unwrap_or_default(), files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn html_links_point_at_the_cache_and_lose_what_it_does_not_serve() {
        let page = r#"<html><a href="../../files/einops-1.0-py3-none-any.whl#sha256=AB12ab12ab12ab12ab12ab12ab12ab12ab12ab12ab12ab12ab12ab12ab12ab12" data-dist-info-metadata="sha256=ff" data-requires-python="&gt;=3.9">einops</a>
            <a href="https://elsewhere/x-1.0.tar.gz">no hash</a></html>"#;
        let (body, files) = rewrite_html(page.as_bytes(), "http://127.0.0.1:1/simple/einops/");
        let body = String::from_utf8(body).unwrap();
        let sha = "ab12".repeat(16);
        assert!(
            body.contains(&format!(
                "href=\"/cache/v1/files/{sha}/einops-1.0-py3-none-any.whl#sha256={sha}\""
            )),
            "{body}"
        );
        assert!(!body.contains("metadata") && !body.contains("elsewhere"), "{body}");
        assert_eq!(files.len(), 1);
        assert_eq!(files[0].url, "http://127.0.0.1:1/files/einops-1.0-py3-none-any.whl");
    }

    #[test]
    fn json_files_point_at_the_cache() {
        let sha = "cd".repeat(32);
        let page = format!(
            r#"{{"meta":{{"api-version":"1.1"}},"name":"torch","files":[{{"filename":"torch-2.9.0+cu128-cp312-cp312-linux_x86_64.whl","url":"https://dl.example/whl/torch-2.9.0%2Bcu128-cp312-cp312-linux_x86_64.whl","hashes":{{"sha256":"{sha}"}},"core-metadata":{{"sha256":"aa"}}}},{{"filename":"x.tar.gz","url":"x.tar.gz","hashes":{{}}}}]}}"#
        );
        let (body, files) = rewrite_json(page.as_bytes(), "https://dl.example/whl/cu128/torch/");
        let value: serde_json::Value = serde_json::from_slice(&body).unwrap();
        let list = value["files"].as_array().unwrap();
        assert_eq!(list.len(), 1);
        assert_eq!(
            list[0]["url"],
            format!("/cache/v1/files/{sha}/torch-2.9.0%2Bcu128-cp312-cp312-linux_x86_64.whl")
        );
        assert!(list[0].get("core-metadata").is_none());
        assert_eq!(files[0].file_name, "torch-2.9.0+cu128-cp312-cp312-linux_x86_64.whl");
    }

    #[test]
    fn only_plain_project_paths_are_proxied() {
        assert!(safe_path("einops/"));
        assert!(safe_path("comfyui-frontend-package/"));
        for bad in ["", "../etc/passwd", "a/../../b", "x%2F", "a b/"] {
            assert!(!safe_path(bad), "{bad}");
        }
    }
}
