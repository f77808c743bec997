//! The uv comfyfleet pins (the agent fetches it where a machine has none; the
//! controller's package cache serves it), and reading links off a PEP 503 page.

/// The uv the agent fetches when none is installed, with the sha256 of each wheel
/// as PyPI publishes it.
pub const PINNED_UV_VERSION: &str = "0.13.9";
pub const PINNED_UV_WHEELS: &[(&str, &str, &str)] = &[
    (
        "x86_64",
        "uv-0.13.9-py3-none-manylinux_2_17_x86_64.manylinux2014_x86_64.whl",
        "d7f459fe4fd247d830351c75686d3996ace3c6f3f728eb0e85a30b7ada0cef19",
    ),
    (
        "aarch64",
        "uv-0.13.9-py3-none-manylinux_2_17_aarch64.manylinux2014_aarch64.musllinux_1_1_aarch64.whl",
        "5435c5ce14a56431208ca0996416d310f1598e8c2c8ba707688985a16bb82dbe",
    ),
];
/// The pinned wheel for this `uname -m`: (file name, sha256).
pub fn pinned_wheel(arch: &str) -> Option<(&'static str, &'static str)> {
    PINNED_UV_WHEELS.iter().find(|(a, _, _)| *a == arch).map(|(_, file, sha)| (*file, *sha))
}

/// The `href` of the anchor whose text or file name is `file_name` (PEP 503 page).
pub fn find_link(page: &str, file_name: &str) -> Option<String> {
    let encoded = file_name.replace('+', "%2B");
    page.split("<a ").skip(1).find_map(|anchor| {
        let href = anchor.split("href=\"").nth(1)?.split('"').next()?;
        let path = href.split('#').next().unwrap_or(href);
        let last = path.rsplit('/').next().unwrap_or(path);
        (last == file_name || last == encoded).then(|| href.replace("&amp;", "&"))
    })
}

/// Resolves `href` against the page it was found on.
pub fn join_url(base: &str, href: &str) -> String {
    let href = href.split('#').next().unwrap_or(href);
    if href.contains("://") {
        return href.to_owned();
    }
    let origin_end =
        base.find("://").and_then(|i| base[i + 3..].find('/').map(|j| i + 3 + j)).unwrap_or(base.len());
    if let Some(absolute) = href.strip_prefix('/') {
        return format!("{}/{absolute}", &base[..origin_end]);
    }
    let directory = base.rfind('/').filter(|&i| i >= origin_end).map_or(base, |i| &base[..=i]);
    let mut segments: Vec<&str> = directory[origin_end..].split('/').filter(|s| !s.is_empty()).collect();
    for part in href.split('/') {
        match part {
            ".." => {
                segments.pop();
            }
            "." | "" => {}
            other => segments.push(other),
        }
    }
    format!("{}/{}", &base[..origin_end], segments.join("/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_on_index_pages_resolve_like_a_browser() {
        let page = r#"<html><a href="../../files/uv-0.13.9-py3-none-any.whl#sha256=ab">x</a>
            <a href="https://files.example/uv/uv-0.13.9-py3-none-manylinux_2_17_x86_64.whl">y</a></html>"#;
        assert_eq!(
            find_link(page, "uv-0.13.9-py3-none-any.whl").unwrap(),
            "../../files/uv-0.13.9-py3-none-any.whl#sha256=ab"
        );
        assert_eq!(
            join_url("http://127.0.0.1:8000/simple/uv/", "../../files/uv.whl#sha256=ab"),
            "http://127.0.0.1:8000/files/uv.whl"
        );
        assert_eq!(
            join_url("https://pypi.org/simple/uv/", "/packages/uv.whl"),
            "https://pypi.org/packages/uv.whl"
        );
        assert_eq!(
            join_url("https://pypi.org/simple/uv/", "https://f.example/uv.whl"),
            "https://f.example/uv.whl"
        );
        assert!(find_link(page, "uv-0.1.0.whl").is_none());
    }
}
