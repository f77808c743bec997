//! Which git remotes `apply` asks for refs. The controller runs `git ls-remote` on
//! its own host, so an operator could otherwise use a spec to learn which paths
//! exist there (`file:///etc`) or which ports answer (`http://127.0.0.1:5432`). Local
//! paths and `file://` are read only with `--git-allow-file`; a host is asked only if
//! `--git-allow-host` names it, or — when no host is named — if every address it
//! resolves to is public. Nothing is asked of a remote the policy refuses, so the
//! refusal says nothing about it.

use std::net::IpAddr;

#[derive(Debug, Clone, Default)]
pub struct GitPolicy {
    /// `--git-allow-file`: local paths and `file://` URLs.
    pub allow_file: bool,
    /// `--git-allow-host`: `host` or `*.domain`; empty: any host on a public address.
    pub allow_hosts: Vec<String>,
}

impl GitPolicy {
    /// Every remote the tests and a local demo use (their repositories are files).
    pub fn permissive() -> Self {
        Self { allow_file: true, allow_hosts: Vec::new() }
    }

    /// Whether `url` may be asked for refs; the reason it may not, as advice.
    pub async fn check(&self, url: &str) -> Result<(), String> {
        let Some(host) = remote_host(url)? else {
            return if self.allow_file {
                Ok(())
            } else {
                Err("local paths and file:// URLs are read only when the controller runs with --git-allow-file".into())
            };
        };
        if !self.allow_hosts.is_empty() {
            return if self.allow_hosts.iter().any(|allowed| host_matches(allowed, &host)) {
                Ok(())
            } else {
                Err(format!(
                    "host {host} is not one the controller reads git from (--git-allow-host {})",
                    self.allow_hosts.join(", --git-allow-host ")
                ))
            };
        }
        let addresses: Vec<IpAddr> = match tokio::net::lookup_host((host.as_str(), 0)).await {
            Ok(addresses) => addresses.map(|address| address.ip()).collect(),
            // git says the same about a name nobody can resolve.
            Err(_) => return Ok(()),
        };
        if let Some(local) = addresses.iter().find(|address| !is_public(**address)) {
            return Err(format!(
                "host {host} is on a local or private address ({local}); the controller reads git from such a host only \
                 when it runs with --git-allow-host {host}"
            ));
        }
        Ok(())
    }
}

/// The host a git URL names: `Ok(None)` for a local path or `file://`.
fn remote_host(url: &str) -> Result<Option<String>, String> {
    if let Some((scheme, rest)) = url.split_once("://") {
        let scheme = scheme.to_ascii_lowercase();
        match scheme.as_str() {
            "file" => return Ok(None),
            "https" | "http" | "ssh" | "git" | "git+ssh" | "ssh+git" => {}
            other => {
                return Err(format!("git URLs with scheme {other}:// are not read (use https, ssh or git)"));
            }
        }
        let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
        let host_port = authority.rsplit_once('@').map_or(authority, |(_, host)| host);
        let host = match host_port.strip_prefix('[') {
            Some(v6) => v6.split(']').next().unwrap_or_default(),
            None => host_port.split(':').next().unwrap_or_default(),
        };
        if host.is_empty() {
            return Err(format!("the git URL {url} names no host"));
        }
        return Ok(Some(host.to_ascii_lowercase()));
    }
    if url.contains("::") {
        return Err("git remote helpers (`helper::address`) are not read".into());
    }
    // scp-like `user@host:path` (a colon before any slash); anything else is a path.
    match url.split_once(':') {
        Some((before, _)) if !before.contains('/') && !before.is_empty() => {
            let host = before.rsplit_once('@').map_or(before, |(_, host)| host);
            Ok(Some(host.to_ascii_lowercase()))
        }
        _ => Ok(None),
    }
}

fn host_matches(allowed: &str, host: &str) -> bool {
    let allowed = allowed.to_ascii_lowercase();
    match allowed.strip_prefix("*.") {
        Some(domain) => host.ends_with(&format!(".{domain}")),
        None => allowed == host,
    }
}

/// An address on the public internet: not loopback, private, link-local, shared
/// (CGNAT), unique-local, documentation or unspecified.
fn is_public(address: IpAddr) -> bool {
    match address {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            !(v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_documentation()
                || a == 0
                || (a == 100 && (64..128).contains(&b)))
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public(IpAddr::V4(v4));
            }
            let first = v6.segments()[0];
            !(v6.is_loopback()
                || v6.is_unspecified()
                || (first & 0xfe00) == 0xfc00
                || (first & 0xffc0) == 0xfe80)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_are_read_from_every_form_of_git_url() {
        let host = |url: &str| remote_host(url).unwrap();
        assert_eq!(host("https://github.com/comfyanonymous/ComfyUI"), Some("github.com".into()));
        assert_eq!(host("https://user:pw@GitHub.com:443/x.git"), Some("github.com".into()));
        assert_eq!(host("ssh://git@[fd00::1]:22/x"), Some("fd00::1".into()));
        assert_eq!(host("git@github.com:comfyanonymous/ComfyUI.git"), Some("github.com".into()));
        assert_eq!(host("file:///srv/git/ComfyUI"), None);
        assert_eq!(host("/srv/git/ComfyUI"), None);
        assert_eq!(host("./ComfyUI"), None);
        assert!(remote_host("ext::sh -c touch% /tmp/pwned").is_err());
        assert!(remote_host("fd::17").is_err());
        assert!(remote_host("ftp://x/y").is_err());
    }

    #[tokio::test]
    async fn local_things_need_the_flags_that_allow_them() {
        let strict = GitPolicy::default();
        assert!(strict.check("file:///etc").await.unwrap_err().contains("--git-allow-file"));
        assert!(strict.check("/etc/passwd").await.unwrap_err().contains("--git-allow-file"));
        assert!(
            strict.check("http://127.0.0.1:5432/x").await.unwrap_err().contains("--git-allow-host 127.0.0.1")
        );
        assert!(strict.check("http://localhost:22/x").await.unwrap_err().contains("local or private"));
        assert!(strict.check("https://10.1.2.3/x").await.is_err());
        assert!(strict.check("https://[::1]/x").await.is_err());
        assert!(strict.check("https://169.254.169.254/latest").await.is_err(), "the cloud metadata address");
        assert!(strict.check("https://8.8.8.8/x").await.is_ok());
        assert!(GitPolicy::permissive().check("file:///srv/git/x").await.is_ok());

        let named = GitPolicy {
            allow_file: false,
            allow_hosts: vec!["git.farm.internal".into(), "*.example.com".into()],
        };
        assert!(named.check("https://git.farm.internal/ComfyUI").await.is_ok());
        assert!(named.check("https://mirror.example.com/x").await.is_ok());
        assert!(
            named.check("https://example.com.evil.net/x").await.unwrap_err().contains("--git-allow-host")
        );
        assert!(named.check("https://github.com/x").await.is_err());
    }
}
