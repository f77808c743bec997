//! The rules for every name, reference and URL a spec carries. These values end up
//! as directory names, git arguments and download URLs on thousands of machines, so
//! anything that could escape a directory, be read as an option, or reach a server
//! over plain http is refused here, with what to write instead.

/// Hosts a spec may reach over plain http (an internal mirror), from `index.trusted_hosts`.
pub type TrustedHosts<'a> = &'a [String];

/// Environment and custom-node names: they become directory names.
pub fn check_name(text: &str) -> Result<(), String> {
    let ok = !text.is_empty()
        && text.len() <= 64
        && text.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        && text.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && !text.contains("..");
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{}` is not a safe name: use 1 to 64 letters, digits, `-`, `_` or `.`, starting with a \
             letter or digit (e.g. \"render-prod\")",
            printable(text)
        ))
    }
}

/// A Python distribution name as PEP 508 allows it (`sageattention`, `flash_attn`).
pub fn check_package_name(text: &str) -> Result<(), String> {
    let bytes = text.as_bytes();
    let edge_ok = |b: Option<&u8>| b.is_some_and(|b| b.is_ascii_alphanumeric());
    let ok = !text.is_empty()
        && text.len() <= 100
        && edge_ok(bytes.first())
        && edge_ok(bytes.last())
        && bytes.iter().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{}` is not a Python package name: use letters, digits, `-`, `_` and `.`, starting and \
             ending with a letter or digit (e.g. \"sageattention\")",
            printable(text)
        ))
    }
}

/// PEP 503 normalisation: `Flash_Attn` and `flash-attn` are the same package.
pub fn normalize_package_name(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut separator = false;
    for c in text.chars() {
        if matches!(c, '-' | '_' | '.') {
            separator = true;
        } else {
            if separator && !out.is_empty() {
                out.push('-');
            }
            separator = false;
            out.push(c.to_ascii_lowercase());
        }
    }
    out
}

/// A git ref (branch, tag or commit) following `git check-ref-format`, and never
/// something git would read as an option.
pub fn check_git_ref(text: &str) -> Result<(), String> {
    let problem = if text.is_empty() {
        Some("is empty")
    } else if text.len() > 200 {
        Some("is longer than 200 characters")
    } else if text.starts_with('-') {
        Some("starts with `-`, which git would read as an option")
    } else if text.contains("..") || text.contains("@{") || text.contains("//") {
        Some("contains `..`, `@{` or `//`")
    } else if text.starts_with('/') || text.ends_with('/') || text.ends_with('.') || text.ends_with(".lock") {
        Some("starts or ends with `/`, or ends with `.` or `.lock`")
    } else if text.split('/').any(|part| part.starts_with('.')) {
        Some("has a component starting with `.`")
    } else if text.chars().any(|c| c.is_control() || c == ' ' || "~^:?*[\\$`'\";|&<>(){}".contains(c)) {
        Some("contains a space, control or shell character")
    } else {
        None
    };
    match problem {
        None => Ok(()),
        Some(problem) => Err(format!(
            "git ref `{}` {problem}: write a branch, tag or full commit (e.g. \"main\", \"v0.3.60\" or 40 \
             hex digits)",
            printable(text)
        )),
    }
}

/// True for a full 40-hex (SHA-1) or 64-hex (SHA-256) commit id.
pub fn is_commit_id(text: &str) -> bool {
    matches!(text.len(), 40 | 64) && text.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// A URL the agent downloads from (wheels, package indexes): https, or http to a
/// host the spec lists in `index.trusted_hosts`.
pub fn check_download_url(text: &str, trusted: TrustedHosts<'_>) -> Result<(), String> {
    refuse_inline_credentials(text)?;
    check_url_text(text)?;
    match split_url(text) {
        Some(("https", _)) => Ok(()),
        Some(("http", host)) if trusted.iter().any(|t| t.eq_ignore_ascii_case(host)) => Ok(()),
        Some(("http", host)) => Err(format!(
            "`{text}` uses plain http: write https://, or list \"{host}\" in index.trusted_hosts if it is \
             your own mirror"
        )),
        _ => Err(format!("`{text}` is not an https URL: write e.g. \"https://pypi.org/simple\"")),
    }
}

/// A git remote: https, ssh (`ssh://` or `user@host:path`), `file://` for a local
/// mirror, or http to a trusted host. git's `ext::` and `fd::` transports run
/// commands, so they (and anything starting with `-`) are refused.
pub fn check_git_url(text: &str, trusted: TrustedHosts<'_>) -> Result<(), String> {
    refuse_inline_credentials(text)?;
    check_url_text(text)?;
    let scp_like = || {
        text.split_once(':').is_some_and(|(user_host, path)| {
            user_host.contains('@') && !user_host.contains('/') && !path.is_empty() && !path.starts_with("//")
        })
    };
    match split_url(text) {
        Some(("https" | "ssh" | "file", _)) => Ok(()),
        Some(("http", host)) if trusted.iter().any(|t| t.eq_ignore_ascii_case(host)) => Ok(()),
        Some(("http", host)) => Err(format!(
            "`{text}` uses plain http: write https:// or ssh://, or list \"{host}\" in index.trusted_hosts \
             if it is your own mirror"
        )),
        _ if scp_like() => Ok(()),
        _ => Err(format!(
            "`{text}` is not a git URL comfyfleet accepts: write https://…, ssh://…, git@host:path or \
             file:///path (git's ext:: and fd:: transports are never allowed)"
        )),
    }
}

/// The package-index pattern for torch, with `{cuda}` standing for the CUDA tag.
pub fn check_index_pattern(text: &str, trusted: TrustedHosts<'_>) -> Result<(), String> {
    if !text.contains("{cuda}") {
        return Err(format!(
            "`{text}` has no `{{cuda}}`: write the index with {{cuda}} where the CUDA tag goes, e.g. \
             \"https://download.pytorch.org/whl/{{cuda}}\""
        ));
    }
    check_download_url(&text.replace("{cuda}", "cu128"), trusted)
}

/// A secret in a URL is shown to every viewer of the spec, lands in logs and
/// progress text, in uv's argv and in `.git/config`: refused, with what to write
/// instead. http(s) URLs take no user info at all (a lone token is a secret); ssh
/// URLs may name a user (`git@host`) but no password. The message masks the secret.
fn refuse_inline_credentials(text: &str) -> Result<(), String> {
    let Some((scheme, rest)) = text.split_once("://") else {
        // scp-like `user:password@host:path` (git takes the password's `:` as the path's).
        if let Some((user_info, _)) = text.split_once('@')
            && user_info.contains(':')
            && !user_info.contains('/')
        {
            return Err(inline_credentials_advice(&format!(
                "***@{}",
                text.split_once('@').map_or("", |(_, h)| h)
            )));
        }
        return Ok(());
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let Some((user_info, host)) = rest[..authority_end].rsplit_once('@') else { return Ok(()) };
    let http = scheme.eq_ignore_ascii_case("http") || scheme.eq_ignore_ascii_case("https");
    if http || user_info.contains(':') {
        let masked = format!("{scheme}://***@{host}{}", &rest[authority_end..]);
        return Err(inline_credentials_advice(&masked));
    }
    Ok(())
}

fn inline_credentials_advice(masked: &str) -> String {
    format!(
        "`{}` carries a credential, which every viewer of the spec would see and which would reach logs, uv's \
         command line and the checkout's .git/config: have an admin store it on the controller with `comfyfleet \
         secrets set NAME --username USER --origin SCHEME://HOST` (the secret on stdin), write the URL without \
         it, and name it beside the URL with credential = \"NAME\" (index.credential, torch.credential, \
         comfyui.credential, a custom_node's or a wheel's credential)",
        printable(masked)
    )
}

fn check_url_text(text: &str) -> Result<(), String> {
    if text.starts_with('-') {
        return Err(format!("`{}` starts with `-`: write a URL", printable(text)));
    }
    if text.len() > 2048 {
        return Err("URL is longer than 2048 characters".to_owned());
    }
    if text.chars().any(|c| c.is_control() || c.is_whitespace() || c == '\\' || c == '`') {
        return Err(format!(
            "`{}` contains a space, backslash or control character: percent-encode it",
            printable(text)
        ));
    }
    Ok(())
}

/// ("https", "host") for `https://user@host:443/path`.
fn split_url(text: &str) -> Option<(&str, &str)> {
    let (scheme, rest) = text.split_once("://")?;
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, host)| host);
    let host = if host_port.starts_with('[') {
        host_port.split_inclusive(']').next().unwrap_or(host_port)
    } else {
        host_port.split(':').next().unwrap_or(host_port)
    };
    if scheme != "file" && host.is_empty() {
        return None;
    }
    Some((scheme, host))
}

/// The host part of an http(s) URL, for messages and `trusted_hosts`.
pub fn url_host(text: &str) -> Option<&str> {
    split_url(text).map(|(_, host)| host)
}

/// The last path segment of a git URL without `.git`: the default custom-node name.
pub fn repository_name(url: &str) -> &str {
    let trimmed = url.trim_end_matches('/');
    let last = trimmed.rsplit(['/', ':']).next().unwrap_or(trimmed);
    last.strip_suffix(".git").unwrap_or(last)
}

/// Keeps a message readable (and one line) whatever bytes the input had.
pub fn printable(text: &str) -> String {
    let clipped: String = text.chars().take(80).collect();
    let mut out: String = clipped.escape_debug().collect();
    if text.chars().count() > 80 {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_escape_or_inject_are_refused() {
        for good in ["render-prod", "ComfyUI-KJNodes", "a", "x.y_z"] {
            assert!(check_name(good).is_ok(), "{good}");
        }
        for bad in ["", "../etc", "a/b", "-rf", ".hidden", "a b", "a;rm", "a..b", &"x".repeat(65)] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn git_refs_follow_check_ref_format() {
        for good in ["main", "v0.3.60", "release/2025.10", "a".repeat(40).as_str()] {
            assert!(check_git_ref(good).is_ok(), "{good}");
        }
        for bad in
            ["", "-c", "--upload-pack=x", "a..b", "a b", "x;rm", "$(id)", "a/", "x.lock", "a/.b", "@{-1}"]
        {
            assert!(check_git_ref(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn urls_need_https_or_a_trusted_mirror() {
        let trusted = vec!["mirror.farm".to_owned()];
        assert!(check_download_url("https://pypi.org/simple", &[]).is_ok());
        assert!(check_download_url("http://mirror.farm/simple", &trusted).is_ok());
        assert!(check_download_url("http://mirror.farm:8080/simple", &trusted).is_ok());
        let err = check_download_url("http://evil.example/simple", &trusted).unwrap_err();
        assert!(err.contains("trusted_hosts"), "{err}");
        assert!(check_download_url("ftp://x/y", &[]).is_err());
        assert!(check_download_url("file:///etc/passwd", &[]).is_err());
        assert!(check_git_url("file:///srv/git/ComfyUI.git", &[]).is_ok());
        assert!(check_git_url("git@github.com:org/repo.git", &[]).is_ok());
        assert!(check_git_url("ssh://git@host/repo.git", &[]).is_ok());
        assert!(check_git_url("ext::sh -c touch% /tmp/pwned", &[]).is_err());
        assert!(check_git_url("--upload-pack=touch /tmp/x", &[]).is_err());
        assert!(check_git_url("fd::3", &[]).is_err());
        for url in [
            "https://user:hunter2@mirror.farm/simple",
            "https://ghp_hunter2@github.com/org/repo.git",
            "ssh://git:hunter2@host/repo.git",
            "git:hunter2@host:org/repo.git",
        ] {
            let error = check_git_url(url, &[]).unwrap_err();
            assert!(error.contains("comfyfleet secrets set") && !error.contains("hunter2"), "{error}");
        }
        let error = check_download_url("http://u:hunter2@mirror.farm/simple", &trusted).unwrap_err();
        assert!(error.contains("***@mirror.farm/simple") && !error.contains("hunter2"), "{error}");
    }

    #[test]
    fn package_names_normalise_like_pep_503() {
        assert_eq!(normalize_package_name("Flash_Attn"), "flash-attn");
        assert_eq!(normalize_package_name("a.-_b"), "a-b");
        assert!(check_package_name("flash_attn").is_ok());
        assert!(check_package_name("-x").is_err());
        assert!(check_package_name("x y").is_err());
    }

    #[test]
    fn repository_names_come_from_the_url() {
        assert_eq!(repository_name("https://github.com/kijai/ComfyUI-KJNodes.git"), "ComfyUI-KJNodes");
        assert_eq!(repository_name("git@github.com:org/Repo"), "Repo");
        assert_eq!(repository_name("file:///srv/git/nodes/"), "nodes");
    }
}
