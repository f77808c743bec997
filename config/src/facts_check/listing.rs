//! PEP 503 project pages: the wheel file names their links point at.

use crate::spec::wheel::percent_decode;

/// The file names of every `.whl` link on a PEP 503 page, in page order:
/// `<a href="/whl/cu130/torch-2.12.1%2Bcu130-cp312-cp312-manylinux_2_28_x86_64.whl#sha256=…">`
/// gives `torch-2.12.1+cu130-cp312-cp312-manylinux_2_28_x86_64.whl`. Links are read
/// from `href` attributes (either quote); the anchor text is not trusted, as PEP 503
/// only says it should be the file name.
pub fn wheel_file_names(html: &str) -> Vec<String> {
    let mut names = Vec::new();
    let lower = html.to_ascii_lowercase();
    let mut from = 0;
    while let Some(found) = lower[from..].find("href=") {
        let start = from + found + "href=".len();
        from = start;
        let Some(quote) = html[start..].chars().next().filter(|c| *c == '"' || *c == '\'') else { continue };
        let value_start = start + 1;
        let Some(length) = html[value_start..].find(quote) else { break };
        let href = html_unescape(&html[value_start..value_start + length]);
        from = value_start + length;
        let path = href.split(['#', '?']).next().unwrap_or_default();
        let last = path.rsplit('/').next().unwrap_or_default();
        let name = percent_decode(last);
        if name.ends_with(".whl") {
            names.push(name);
        }
    }
    names
}

/// The few entities an href can carry (`&amp;` before a query).
fn html_unescape(text: &str) -> String {
    text.replace("&amp;", "&").replace("&#43;", "+").replace("&quot;", "\"")
}
