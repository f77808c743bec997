//! One project's page of a package index, as the package cache understands it:
//! parsed from PEP 503 HTML or PEP 691 JSON into a [`ProjectPage`] (each file's name,
//! upstream URL, sha256, `requires-python` and yanked state — nothing else), and
//! written back out from that model only, in either format. Upstream's bytes are
//! never passed on or kept: a page that is not an index page becomes an empty one,
//! a link without a sha256 or with an odd file name is left out, and every link
//! points at the cache's `/cache/v1/files/<sha256>/<name>`. PEP 658 metadata is not
//! offered (the cache serves whole files only), so installers read it from the wheel.

use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::store::PackageFile;
use crate::use_cases::package_cache::is_sha256;

/// Longer values are not a version specifier or a reason anyone wrote.
const MAX_ATTRIBUTE: usize = 1024;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProjectPage {
    pub files: Vec<IndexFile>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexFile {
    pub file_name: String,
    /// Absolute http(s) URL upstream serves it at.
    pub url: String,
    pub sha256: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requires_python: Option<String>,
    /// `Some("")` when yanked without a reason.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub yanked: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
}

impl IndexFile {
    pub fn package_file(&self) -> PackageFile {
        PackageFile {
            sha256: self.sha256.clone(),
            url: self.url.clone(),
            file_name: self.file_name.clone(),
            size: self.size,
        }
    }
}

impl ProjectPage {
    /// Parses an upstream answer: PEP 691 JSON when `json`, else PEP 503 HTML.
    /// `page_url` is where it came from (after redirects), for relative links.
    pub fn parse(body: &[u8], page_url: &str, json: bool) -> Result<Self, String> {
        let files = if json { parse_json(body, page_url)? } else { parse_html(body, page_url) };
        Ok(Self { files })
    }

    /// PEP 503 HTML for project `name`.
    pub fn to_html(&self, name: &str) -> String {
        let name = escape(name);
        let mut out = format!(
            "<!DOCTYPE html>\n<html>\n<head>\n<meta name=\"pypi:repository-version\" content=\"1.0\">\n\
             <title>Links for {name}</title>\n</head>\n<body>\n<h1>Links for {name}</h1>\n"
        );
        for file in &self.files {
            out.push_str(&format!("<a href=\"{}#sha256={}\"", escape(&cache_link(file)), file.sha256));
            if let Some(requires) = &file.requires_python {
                out.push_str(&format!(" data-requires-python=\"{}\"", escape(requires)));
            }
            if let Some(reason) = &file.yanked {
                out.push_str(&format!(" data-yanked=\"{}\"", escape(reason)));
            }
            out.push_str(&format!(">{}</a><br/>\n", escape(&file.file_name)));
        }
        out.push_str("</body>\n</html>\n");
        out
    }

    /// PEP 691 JSON for project `name`.
    pub fn to_json(&self, name: &str) -> Vec<u8> {
        let files: Vec<serde_json::Value> = self
            .files
            .iter()
            .map(|file| {
                let mut entry = json!({
                    "filename": file.file_name,
                    "url": cache_link(file),
                    "hashes": { "sha256": file.sha256 },
                });
                if let Some(requires) = &file.requires_python {
                    entry["requires-python"] = json!(requires);
                }
                if let Some(reason) = &file.yanked {
                    entry["yanked"] = if reason.is_empty() { json!(true) } else { json!(reason) };
                }
                if let Some(size) = file.size {
                    entry["size"] = json!(size);
                }
                entry
            })
            .collect();
        let page = json!({ "meta": { "api-version": "1.0" }, "name": name, "files": files });
        serde_json::to_vec(&page).unwrap_or_default()
    }
}

/// `/cache/v1/files/<sha256>/<name>`, the name percent-encoded where a URL needs it.
fn cache_link(file: &IndexFile) -> String {
    format!("/cache/v1/files/{}/{}", file.sha256, file.file_name.replace('%', "%25").replace('+', "%2B"))
}

/// A file entry from what upstream said, or `None` when any part is unusable.
fn file_entry(
    page_url: &str,
    href: &str,
    sha256: Option<&str>,
    listed_name: Option<&str>,
    requires_python: Option<&str>,
    yanked: Option<String>,
    size: Option<u64>,
) -> Option<IndexFile> {
    let base = reqwest::Url::parse(page_url).ok()?;
    let mut url = base.join(href).ok()?;
    if !matches!(url.scheme(), "http" | "https") {
        return None;
    }
    let fragment_hash = url.fragment().and_then(|fragment| {
        fragment.split('&').find_map(|pair| pair.strip_prefix("sha256=")).map(str::to_owned)
    });
    url.set_fragment(None);
    let sha256 = sha256.map(str::to_owned).or(fragment_hash)?.to_ascii_lowercase();
    if !is_sha256(&sha256) {
        return None;
    }
    let last = url.path_segments()?.next_back()?.to_owned();
    let file_name = comfyfleet_config::spec::wheel::percent_decode(&last);
    if !is_distribution_name(&file_name) || listed_name.is_some_and(|listed| listed != file_name) {
        return None;
    }
    let requires_python =
        requires_python.map(str::trim).filter(|value| !value.is_empty()).filter(|value| is_specifier(value));
    Some(IndexFile {
        file_name,
        url: url.to_string(),
        sha256,
        requires_python: requires_python.map(str::to_owned),
        yanked: yanked.map(|reason| printable(&reason)),
        size,
    })
}

/// A wheel's or source distribution's file name, in characters a URL path and an
/// HTML page carry as they are.
fn is_distribution_name(name: &str) -> bool {
    let allowed = |byte: u8| byte.is_ascii_alphanumeric() || b"._+!-".contains(&byte);
    (1..=255).contains(&name.len())
        && !name.starts_with('.')
        && name.bytes().all(allowed)
        && [".whl", ".tar.gz", ".zip", ".tar.bz2", ".tar.xz", ".tgz"].iter().any(|ext| name.ends_with(ext))
}

/// A PEP 440 specifier set's characters (`>=3.9, !=3.10.*`).
fn is_specifier(value: &str) -> bool {
    value.len() <= MAX_ATTRIBUTE
        && value.bytes().all(|byte| byte.is_ascii_alphanumeric() || b" .,<>=!~*+".contains(&byte))
}

/// Printable text of bounded length (a yank reason).
fn printable(text: &str) -> String {
    text.chars().filter(|c| !c.is_control()).take(MAX_ATTRIBUTE).collect()
}

fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            other => out.push(other),
        }
    }
    out
}

#[derive(Deserialize)]
struct JsonPage {
    files: Vec<JsonFile>,
}

#[derive(Deserialize)]
struct JsonFile {
    filename: String,
    url: String,
    #[serde(default)]
    hashes: std::collections::HashMap<String, String>,
    #[serde(default, rename = "requires-python")]
    requires_python: Option<String>,
    #[serde(default)]
    yanked: Option<serde_json::Value>,
    #[serde(default)]
    size: Option<u64>,
}

fn parse_json(body: &[u8], page_url: &str) -> Result<Vec<IndexFile>, String> {
    let page: JsonPage =
        serde_json::from_slice(body).map_err(|error| format!("not a PEP 691 project page: {error}"))?;
    Ok(page
        .files
        .into_iter()
        .filter_map(|file| {
            let yanked = match file.yanked {
                Some(serde_json::Value::Bool(true)) => Some(String::new()),
                Some(serde_json::Value::String(reason)) => Some(reason),
                _ => None,
            };
            file_entry(
                page_url,
                &file.url,
                Some(file.hashes.get("sha256")?.as_str()),
                Some(&file.filename),
                file.requires_python.as_deref(),
                yanked,
                file.size,
            )
        })
        .collect())
}

/// Every `<a …>` of a PEP 503 page with its attributes (names lowercased, values
/// with their character references decoded).
fn parse_html(body: &[u8], page_url: &str) -> Vec<IndexFile> {
    let text = String::from_utf8_lossy(body);
    let mut files = Vec::new();
    let mut rest: &str = &text;
    while let Some(start) = find_anchor(rest) {
        let (attributes, after) = read_attributes(&rest[start + 2..]);
        rest = after;
        let attribute = |name: &str| attributes.iter().find(|(key, _)| key == name).map(|(_, value)| value);
        let Some(href) = attribute("href") else { continue };
        let yanked = attribute("data-yanked").cloned();
        if let Some(file) = file_entry(
            page_url,
            href,
            None,
            None,
            attribute("data-requires-python").map(String::as_str),
            yanked,
            None,
        ) {
            files.push(file);
        }
    }
    files
}

/// Where the next `<a` tag (followed by whitespace) starts.
fn find_anchor(text: &str) -> Option<usize> {
    let bytes = text.as_bytes();
    (0..bytes.len().saturating_sub(2)).find(|&i| {
        bytes[i] == b'<' && bytes[i + 1].eq_ignore_ascii_case(&b'a') && bytes[i + 2].is_ascii_whitespace()
    })
}

/// The attributes of a tag whose name has been read, and the text after its `>`.
fn read_attributes(text: &str) -> (Vec<(String, String)>, &str) {
    let mut attributes = Vec::new();
    let mut chars = text.char_indices().peekable();
    loop {
        while chars.next_if(|(_, c)| c.is_whitespace() || *c == '/').is_some() {}
        let Some(&(start, c)) = chars.peek() else { return (attributes, "") };
        if c == '>' {
            return (attributes, &text[start + 1..]);
        }
        let mut name_end = start;
        while let Some((i, c)) = chars.next_if(|(_, c)| !c.is_whitespace() && !matches!(c, '=' | '>' | '/')) {
            name_end = i + c.len_utf8();
        }
        if name_end == start {
            // A stray `=`: skip it so the loop moves on.
            chars.next();
            continue;
        }
        let name = text[start..name_end].to_ascii_lowercase();
        while chars.next_if(|(_, c)| c.is_whitespace()).is_some() {}
        let mut value = String::new();
        if chars.next_if(|(_, c)| *c == '=').is_some() {
            while chars.next_if(|(_, c)| c.is_whitespace()).is_some() {}
            match chars.peek().map(|(_, c)| *c) {
                Some(quote @ ('"' | '\'')) => {
                    chars.next();
                    for (_, c) in chars.by_ref() {
                        if c == quote {
                            break;
                        }
                        value.push(c);
                    }
                }
                _ => {
                    while let Some((_, c)) = chars.next_if(|(_, c)| !c.is_whitespace() && *c != '>') {
                        value.push(c);
                    }
                }
            }
        }
        attributes.push((name, decode_references(&value)));
    }
}

/// `&amp;`, `&lt;`, `&gt;`, `&quot;`, `&apos;`, `&#NN;` and `&#xNN;`; anything else as written.
fn decode_references(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('&') {
        out.push_str(&rest[..at]);
        rest = &rest[at..];
        let decoded = rest.find(';').filter(|&end| end <= 10).and_then(|end| {
            let name = &rest[1..end];
            let c = match name {
                "amp" => Some('&'),
                "lt" => Some('<'),
                "gt" => Some('>'),
                "quot" => Some('"'),
                "apos" => Some('\''),
                _ => match name.strip_prefix('#') {
                    Some(hex) if hex.starts_with(['x', 'X']) => {
                        u32::from_str_radix(&hex[1..], 16).ok().and_then(char::from_u32)
                    }
                    Some(decimal) => decimal.parse().ok().and_then(char::from_u32),
                    None => None,
                },
            };
            c.map(|c| (c, end))
        });
        match decoded {
            Some((c, end)) => {
                out.push(c);
                rest = &rest[end + 1..];
            }
            None => {
                out.push('&');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE: &str = "http://127.0.0.1:1/simple/einops/";

    #[test]
    fn html_pages_are_rebuilt_from_what_they_say() {
        let sha = "ab12".repeat(16);
        let upstream = format!(
            "<html><script>alert(1)</script><A HREF='../../files/einops-1.0-py3-none-any.whl#sha256={}' \
             data-dist-info-metadata=\"sha256=ff\" data-requires-python=\"&gt;=3.9\" data-yanked>einops</A>\n\
             <a href=\"https://elsewhere/x-1.0.tar.gz\">no hash</a>\n\
             <a href=\"x-2.0.tar.gz#sha256={sha}\" data-requires-python='\"><script>'>bad attribute</a>\n\
             <a href=\"%3Cscript%3E.whl#sha256={sha}\">bad name</a>\n\
             <a href=\"file:///etc/passwd#sha256={sha}\">not http</a></html>",
            sha.to_ascii_uppercase()
        );
        let page = ProjectPage::parse(upstream.as_bytes(), PAGE, false).unwrap();
        assert_eq!(page.files.len(), 2, "{page:?}");
        let first = &page.files[0];
        assert_eq!(first.url, "http://127.0.0.1:1/files/einops-1.0-py3-none-any.whl");
        assert_eq!(first.sha256, sha);
        assert_eq!(first.requires_python.as_deref(), Some(">=3.9"));
        assert_eq!(first.yanked.as_deref(), Some(""));
        assert_eq!(page.files[1].requires_python, None, "an attribute that is not a specifier is dropped");
        let html = page.to_html("einops");
        assert!(
            html.contains(&format!(
                "<a href=\"/cache/v1/files/{sha}/einops-1.0-py3-none-any.whl#sha256={sha}\" \
                 data-requires-python=\"&gt;=3.9\" data-yanked=\"\">einops-1.0-py3-none-any.whl</a>"
            )),
            "{html}"
        );
        for absent in ["script", "metadata", "elsewhere", "passwd"] {
            assert!(!html.contains(absent), "{absent}: {html}");
        }
        let found = comfyfleet_config::uv_pin::find_link(&html, "einops-1.0-py3-none-any.whl");
        assert!(found.is_some(), "the agent's uv wheel lookup reads the page");
    }

    #[test]
    fn json_pages_are_rebuilt_from_what_they_say() {
        let sha = "cd".repeat(32);
        let upstream = format!(
            r#"{{"meta":{{"api-version":"1.1","_secret":"leak"}},"name":"torch","internal":"leak","files":[
              {{"filename":"torch-2.9.0+cu128-cp312-cp312-linux_x86_64.whl","url":"https://dl.example/whl/torch-2.9.0%2Bcu128-cp312-cp312-linux_x86_64.whl","hashes":{{"sha256":"{sha}"}},"core-metadata":{{"sha256":"aa"}},"yanked":"broken","size":42,"extra":"leak"}},
              {{"filename":"x.tar.gz","url":"x.tar.gz","hashes":{{}}}},
              {{"filename":"other-name.whl","url":"y-1.0-py3-none-any.whl","hashes":{{"sha256":"{sha}"}}}}]}}"#
        );
        let page =
            ProjectPage::parse(upstream.as_bytes(), "https://dl.example/whl/cu128/torch/", true).unwrap();
        assert_eq!(page.files.len(), 1, "no hash, and a name that is not the URL's, are left out");
        let body = page.to_json("torch");
        let text = String::from_utf8(body.clone()).unwrap();
        assert!(!text.contains("leak") && !text.contains("core-metadata"), "{text}");
        let value: serde_json::Value = serde_json::from_slice(&body).unwrap();
        let file = &value["files"][0];
        assert_eq!(
            file["url"],
            format!("/cache/v1/files/{sha}/torch-2.9.0%2Bcu128-cp312-cp312-linux_x86_64.whl")
        );
        assert_eq!(file["yanked"], "broken");
        assert_eq!(file["size"], 42);
        assert_eq!(page.files[0].file_name, "torch-2.9.0+cu128-cp312-cp312-linux_x86_64.whl");
        assert!(ProjectPage::parse(b"{\"ami-id\": \"i-123\"}", PAGE, true).is_err());
        let not_a_page = ProjectPage::parse(b"ami-id\nhostname\n", PAGE, false).unwrap();
        assert!(not_a_page.files.is_empty() && !not_a_page.to_html("x").contains("ami"));
    }

    #[test]
    fn character_references_decode() {
        assert_eq!(decode_references("a&amp;b&lt;&#62;&#x3d;&bogus;&"), "a&b<>=&bogus;&");
    }
}
