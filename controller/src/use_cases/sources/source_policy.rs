//! Which sources the controller fetches from: one policy for every URL it contacts —
//! git remotes (`apply` pins refs with `git ls-remote`, the mirror fetches commits),
//! package indexes, torch indexes and wheels (the package cache's upstreams). The
//! controller holds the CA key and every stored secret, so a spec must not make it
//! read its own host (`file:///etc`), probe which ports answer on it or beside it
//! (`http://127.0.0.1:5432`), or read a cloud metadata service back to an agent.
//!
//! Local paths and `file://` are read (git only) with `--git-allow-file`. A host is
//! contacted if `--source-allow-host` names it (at any address); a host it does not
//! name is contacted only while public hosts are allowed (no host named, or
//! `--source-allow-public`) and only if every address it resolves to is public.
//! Nothing is asked of a source the policy refuses, so the refusal says nothing
//! about it. [`crate::use_cases::sources::upstream_client`] applies the same rules at every connection
//! and redirect the cache makes.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

#[derive(Debug, Clone, Default)]
pub struct SourcePolicy {
    /// `--git-allow-file`: local paths and `file://` URLs (git only).
    pub allow_file: bool,
    /// `--source-allow-host` (alias `--git-allow-host`): `host`, `*.domain`, or an
    /// address; contacted whatever address it resolves to.
    pub allow_hosts: Vec<String>,
    /// `--source-allow-public`: hosts on public addresses are allowed besides the
    /// named ones (always so when none is named).
    pub allow_public: bool,
    /// Every host, at any address: the unit tests' specs name public indexes that
    /// their sandbox resolves to anything. No flag sets it.
    pub allow_any: bool,
}

impl SourcePolicy {
    /// Every source, local files included: for the unit tests, which name public
    /// indexes they never contact and repositories that are local paths.
    pub fn permissive() -> Self {
        Self { allow_file: true, allow_hosts: Vec::new(), allow_public: true, allow_any: true }
    }

    /// Whether hosts nobody named may be contacted (when all their addresses are public).
    fn public_allowed(&self) -> bool {
        self.allow_public || self.allow_hosts.is_empty()
    }

    fn named(&self, host: &str) -> bool {
        self.allow_any || self.allow_hosts.iter().any(|allowed| host_matches(allowed, host))
    }

    /// Whether the git remote `url` may be asked for refs or fetched; the reason it
    /// may not, as advice.
    pub async fn check_git(&self, url: &str) -> Result<(), String> {
        match remote_host(url)? {
            Some(host) => self.check_host(&host).await,
            None if self.allow_file => Ok(()),
            None => Err(
                "local paths and file:// URLs are read only when the controller runs with --git-allow-file"
                    .into(),
            ),
        }
    }

    /// Whether the http(s) URL `url` (an index, a wheel) may be fetched.
    pub async fn check_url(&self, url: &str) -> Result<(), String> {
        let host = http_host(url)?;
        self.check_host(&host).await
    }

    /// What [`check_url`](Self::check_url) checks without resolving a name: the
    /// scheme, and an address written into the URL (names are checked when they
    /// are resolved, see [`crate::use_cases::sources::upstream_client`]).
    pub fn check_literal(&self, url: &str) -> Result<(), String> {
        let host = http_host(url)?;
        match host.parse::<IpAddr>() {
            Ok(address) => self.permits(&host, &[address]),
            Err(_) => Ok(()),
        }
    }

    /// Every http(s) URL `spec` makes the controller fetch that the policy refuses
    /// (its indexes, each allowed torch index, its kernel wheels), one line each
    /// with the reason; its git sources are checked where they are pinned.
    pub async fn refused_urls(&self, spec: &comfyfleet_config::Spec) -> Vec<String> {
        let mut urls: Vec<(String, String)> = vec![("index.url".to_owned(), spec.index.url.clone())];
        urls.extend(spec.index.extra.iter().map(|url| ("index.extra".to_owned(), url.clone())));
        urls.extend(
            spec.torch
                .cuda
                .iter()
                .map(|cuda| (format!("the torch index for {cuda}"), spec.torch.index_for(*cuda))),
        );
        for optimization in &spec.optimizations {
            let what = format!("optimization {}: a wheel", optimization.name);
            urls.extend(optimization.wheels.iter().map(|wheel| (what.clone(), wheel.url.clone())));
        }
        let mut refused = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for (what, url) in urls {
            if seen.insert(url.clone())
                && let Err(reason) = self.check_url(&url).await
            {
                refused.push(format!("{what}: the controller does not fetch {url}: {reason}"));
            }
        }
        refused
    }

    async fn check_host(&self, host: &str) -> Result<(), String> {
        if self.named(host) {
            return Ok(());
        }
        if let Ok(address) = host.parse::<IpAddr>() {
            return self.permits(host, &[address]);
        }
        if !self.public_allowed() {
            return self.permits(host, &[]);
        }
        match tokio::net::lookup_host((host, 0)).await {
            Ok(addresses) => self.permits(host, &addresses.map(|address| address.ip()).collect::<Vec<_>>()),
            // Nothing can be fetched from a name nobody resolves; the fetch says so.
            Err(_) => Ok(()),
        }
    }

    /// Whether `host`, resolved to `addresses`, may be contacted.
    pub fn permits(&self, host: &str, addresses: &[IpAddr]) -> Result<(), String> {
        if self.named(host) {
            return Ok(());
        }
        if !self.public_allowed() {
            return Err(format!(
                "host {host} is not one the controller fetches sources from (--source-allow-host {}); name it with \
                 --source-allow-host {host}, or allow every host on a public address with --source-allow-public",
                self.allow_hosts.join(", --source-allow-host ")
            ));
        }
        if let Some(local) = addresses.iter().find(|address| !is_public(**address)) {
            return Err(format!(
                "host {host} is on a local or private address ({local}); the controller fetches sources from such a \
                 host only when it runs with --source-allow-host {host}"
            ));
        }
        Ok(())
    }
}

/// The host of an http(s) URL, lowercased, an IPv6 address without brackets.
fn http_host(url: &str) -> Result<String, String> {
    let parsed = reqwest::Url::parse(url).map_err(|error| format!("`{url}` is not a URL: {error}"))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(format!("{url}: the controller fetches only http and https URLs"));
    }
    let host =
        parsed.host_str().filter(|host| !host.is_empty()).ok_or_else(|| format!("{url} names no host"))?;
    Ok(host.trim_start_matches('[').trim_end_matches(']').to_ascii_lowercase())
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
    let allowed = allowed.trim_start_matches('[').trim_end_matches(']').to_ascii_lowercase();
    match allowed.strip_prefix("*.") {
        Some(domain) => host.ends_with(&format!(".{domain}")),
        None => allowed == host,
    }
}

/// An address on the public internet: not loopback, private, link-local (cloud
/// metadata services), shared (CGNAT), unique-local, multicast, reserved,
/// documentation or unspecified — and no IPv6 form of such an IPv4 address.
pub fn is_public(address: IpAddr) -> bool {
    match address {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => is_public_v6(v6),
    }
}

fn is_public_v4(v4: Ipv4Addr) -> bool {
    let [a, b, c, _] = v4.octets();
    !(v4.is_loopback()
        || v4.is_private()
        || v4.is_link_local()
        || v4.is_unspecified()
        || v4.is_broadcast()
        || v4.is_documentation()
        || v4.is_multicast()
        || a == 0
        || a >= 240
        || (a == 100 && (64..128).contains(&b))
        || (a == 192 && b == 0 && c == 0)
        || (a == 198 && (18..20).contains(&b)))
}

fn is_public_v6(v6: Ipv6Addr) -> bool {
    if v6.is_loopback() || v6.is_unspecified() || v6.is_multicast() {
        return false;
    }
    let segments = v6.segments();
    let embedded_v4 = |high: usize| {
        let [a, b] = segments[high].to_be_bytes();
        let [c, d] = segments[high + 1].to_be_bytes();
        Ipv4Addr::new(a, b, c, d)
    };
    // ::ffff:a.b.c.d, ::a.b.c.d, NAT64 64:ff9b::a.b.c.d and 6to4 2002:abcd:… reach an IPv4 host.
    if segments[..5].iter().all(|segment| *segment == 0) && (segments[5] == 0xffff || segments[5] == 0) {
        return is_public_v4(embedded_v4(6));
    }
    if segments[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return is_public_v4(embedded_v4(6));
    }
    if segments[0] == 0x2002 {
        return is_public_v4(embedded_v4(1));
    }
    let first = segments[0];
    !((first & 0xfe00) == 0xfc00       // unique local (fd00:ec2::254 is a metadata service)
        || (first & 0xffc0) == 0xfe80  // link-local
        || (first & 0xffc0) == 0xfec0  // site-local
        || (first == 0x2001 && segments[1] == 0x0db8)) // documentation
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
        let strict = SourcePolicy::default();
        assert!(strict.check_git("file:///etc").await.unwrap_err().contains("--git-allow-file"));
        assert!(strict.check_git("/etc/passwd").await.unwrap_err().contains("--git-allow-file"));
        assert!(
            strict
                .check_git("http://127.0.0.1:5432/x")
                .await
                .unwrap_err()
                .contains("--source-allow-host 127.0.0.1")
        );
        assert!(strict.check_git("http://localhost:22/x").await.unwrap_err().contains("local or private"));
        assert!(strict.check_git("https://10.1.2.3/x").await.is_err());
        assert!(strict.check_git("https://[::1]/x").await.is_err());
        assert!(
            strict.check_git("https://169.254.169.254/latest").await.is_err(),
            "the cloud metadata address"
        );
        assert!(strict.check_git("https://8.8.8.8/x").await.is_ok());
        assert!(SourcePolicy::permissive().check_git("file:///srv/git/x").await.is_ok());

        let named = SourcePolicy {
            allow_hosts: vec!["git.farm.internal".into(), "*.example.com".into()],
            ..SourcePolicy::default()
        };
        assert!(named.check_git("https://git.farm.internal/ComfyUI").await.is_ok());
        assert!(named.check_git("https://mirror.example.com/x").await.is_ok());
        assert!(
            named
                .check_git("https://example.com.evil.net/x")
                .await
                .unwrap_err()
                .contains("--source-allow-host")
        );
        assert!(named.check_git("https://github.com/x").await.is_err());
        let and_public = SourcePolicy { allow_public: true, ..named };
        assert!(and_public.check_git("https://8.8.8.8/x").await.is_ok());
        assert!(and_public.check_git("https://10.0.0.1/x").await.is_err());
    }

    #[tokio::test]
    async fn index_and_wheel_urls_are_under_the_same_policy() {
        let strict = SourcePolicy::default();
        for url in [
            "http://169.254.169.254/latest/meta-data/",
            "http://127.0.0.1:7443/cache/v1/",
            "http://[::ffff:127.0.0.1]/simple",
            "http://[fd00:ec2::254]/latest",
            "http://[64:ff9b::a9fe:a9fe]/latest",
            "http://100.100.100.200/latest",
            "http://0.0.0.0:8080/",
        ] {
            let refused = strict.check_url(url).await.unwrap_err();
            assert!(refused.contains("--source-allow-host"), "{url}: {refused}");
            assert!(strict.check_literal(url).is_err(), "{url}");
        }
        assert!(strict.check_url("https://8.8.8.8/simple").await.is_ok());
        assert!(strict.check_url("file:///etc/passwd").await.is_err());
        assert!(strict.check_url("gopher://x/").await.is_err());
        let named = SourcePolicy { allow_hosts: vec!["127.0.0.1".into()], ..SourcePolicy::default() };
        assert!(named.check_url("http://127.0.0.1:8080/simple").await.is_ok());
        assert!(named.check_url("http://127.0.0.2:8080/simple").await.is_err());
        assert!(named.check_literal("http://127.0.0.2:8080/simple").is_err());
        assert!(named.check_literal("https://pypi.org/simple").is_ok(), "names are checked when resolved");
        assert!(named.permits("pypi.org", &["151.101.0.223".parse().unwrap()]).is_err(), "not named");
        assert!(SourcePolicy::default().permits("pypi.org", &["151.101.0.223".parse().unwrap()]).is_ok());
        assert!(SourcePolicy::default().permits("evil.example", &["10.0.0.1".parse().unwrap()]).is_err());
    }
}
