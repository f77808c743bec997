//! Named credentials for a spec's sources. A spec never carries a secret: it names a
//! credential (`index.credential = "farm-mirror"`) that the controller stores
//! (`comfyfleet secrets set farm-mirror`) and hands to whoever fetches from that
//! source — the controller itself (pinning, locking, the package cache) or the agent
//! over its mTLS session. A credential applies to every URL on the origin (scheme,
//! host and port) of the URLs that name it, as uv and pip send an index's credentials
//! to files linked from it on the same host.
//!
//! What uv and git get is environment only: uv's named-index variables
//! (`UV_INDEX_<NAME>_USERNAME`), and for git a credential helper configured through
//! `GIT_CONFIG_COUNT` that prints variables it inherits. Nothing secret is ever an
//! argument (visible in `ps`) or a file.

use std::collections::BTreeMap;
use std::ffi::OsString;

use base64::Engine as _;

use crate::spec::{Spec, names};

/// A stored credential's value: HTTP basic auth (a token is the password, with the
/// username the service expects, `__token__` by default).
#[derive(Clone, PartialEq, Eq)]
pub struct SourceSecret {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for SourceSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SourceSecret").field("username", &self.username).finish_non_exhaustive()
    }
}

impl SourceSecret {
    /// The `Authorization` header's value.
    pub fn basic_auth(&self) -> String {
        let pair = format!("{}:{}", self.username, self.password);
        format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(pair))
    }

    /// Checks a value before it is stored: printable, one line, bounded.
    pub fn check(&self) -> Result<(), String> {
        let printable = |text: &str| !text.chars().any(|c| c.is_control());
        if self.username.is_empty() || self.username.len() > 256 || self.username.contains(':') {
            return Err("the username must be 1 to 256 characters without `:`".to_owned());
        }
        if self.password.is_empty() || self.password.len() > 4096 {
            return Err("the secret must be 1 to 4096 bytes".to_owned());
        }
        if !printable(&self.username) || !printable(&self.password) {
            return Err("the username and secret must be one line without control characters".to_owned());
        }
        Ok(())
    }
}

/// A credential name: what `secrets set` stores and a spec's `credential` names.
pub fn check_credential_name(text: &str) -> Result<(), String> {
    names::check_name(text).map_err(|message| format!("credential name {message}"))
}

/// Where a spec names one credential: the key (`index.credential`) and the URLs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CredentialUse {
    pub key: String,
    pub name: String,
    pub urls: Vec<String>,
}

/// Every credential the spec names, with the URLs each covers.
pub fn credential_uses(spec: &Spec) -> Vec<CredentialUse> {
    let mut uses = Vec::new();
    let mut add = |key: String, name: &Option<String>, urls: Vec<String>| {
        if let Some(name) = name {
            uses.push(CredentialUse { key, name: name.clone(), urls });
        }
    };
    let mut indexes = vec![spec.index.url.clone()];
    indexes.extend(spec.index.extra.iter().cloned());
    add("index.credential".to_owned(), &spec.index.credential, indexes);
    let mut torch: Vec<String> = spec.torch.cuda.iter().map(|tag| spec.torch.index_for(*tag)).collect();
    torch.extend(spec.torch.indexes.values().cloned());
    add("torch.credential".to_owned(), &spec.torch.credential, torch);
    add("comfyui.credential".to_owned(), &spec.comfyui.credential, vec![spec.comfyui.git.clone()]);
    for (i, node) in spec.custom_nodes.iter().enumerate() {
        add(format!("custom_node[{i}].credential"), &node.credential, vec![node.git.clone()]);
    }
    for (i, optimization) in spec.optimizations.iter().enumerate() {
        for (j, wheel) in optimization.wheels.iter().enumerate() {
            add(
                format!("optimization[{i}].wheel[{j}].credential"),
                &wheel.credential,
                vec![wheel.url.clone()],
            );
        }
    }
    uses
}

/// The names a spec's credentials go by, each once.
pub fn credential_names(spec: &Spec) -> Vec<String> {
    let mut names: Vec<String> = credential_uses(spec).into_iter().map(|used| used.name).collect();
    names.sort();
    names.dedup();
    names
}

/// `https://host:port` of an http(s) URL, lowercased; `None` for other schemes
/// (ssh and file carry no HTTP credential).
pub fn origin(url: &str) -> Option<String> {
    let (scheme, rest) = url.split_once("://")?;
    let scheme = scheme.to_ascii_lowercase();
    if scheme != "https" && scheme != "http" {
        return None;
    }
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, host)| host).to_ascii_lowercase();
    if host_port.is_empty() {
        return None;
    }
    let default_port = if scheme == "https" { ":443" } else { ":80" };
    let host_port = host_port.strip_suffix(default_port).unwrap_or(&host_port).to_owned();
    Some(format!("{scheme}://{host_port}"))
}

/// The credentials one spec's sources need, each bound to its origins.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SourceCredentials {
    /// origin → (credential name, value).
    by_origin: BTreeMap<String, (String, SourceSecret)>,
}

impl SourceCredentials {
    /// Binds each credential `spec` names to its URLs' origins, from `known` (name →
    /// value). Err: the names `known` lacks.
    pub fn for_spec(spec: &Spec, known: &BTreeMap<String, SourceSecret>) -> Result<Self, Vec<String>> {
        let mut missing: Vec<String> =
            credential_names(spec).into_iter().filter(|name| !known.contains_key(name)).collect();
        if !missing.is_empty() {
            missing.dedup();
            return Err(missing);
        }
        let mut credentials = Self::default();
        credentials.add_spec(spec, known);
        Ok(credentials)
    }

    /// Adds the origins of `spec`'s credentials that `known` has; an origin bound
    /// already keeps its credential.
    pub fn add_spec(&mut self, spec: &Spec, known: &BTreeMap<String, SourceSecret>) {
        for used in credential_uses(spec) {
            let Some(secret) = known.get(&used.name) else { continue };
            for url in &used.urls {
                if let Some(origin) = origin(url) {
                    self.by_origin.entry(origin).or_insert_with(|| (used.name.clone(), secret.clone()));
                }
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.by_origin.is_empty()
    }

    /// The credential for `url`, if its origin has one.
    pub fn for_url(&self, url: &str) -> Option<&SourceSecret> {
        self.by_origin.get(&origin(url)?).map(|(_, secret)| secret)
    }

    /// The `Authorization` header for a request to `url`.
    pub fn authorization(&self, url: &str) -> Option<String> {
        self.for_url(url).map(SourceSecret::basic_auth)
    }

    /// The index argument for uv: `NAME=URL` when the URL has a credential (uv then
    /// reads it from `UV_INDEX_NAME_USERNAME` and `_PASSWORD`, see [`Self::uv_env`]),
    /// else the URL.
    pub fn uv_index(&self, url: &str) -> OsString {
        match self.for_url(url) {
            Some(_) => format!("{}={url}", uv_index_name(url)).into(),
            None => url.into(),
        }
    }

    /// The variables uv reads the credentials of `urls`' indexes from.
    pub fn uv_env<'a>(&self, urls: impl IntoIterator<Item = &'a str>) -> Vec<(String, String)> {
        let mut env = Vec::new();
        for url in urls {
            if let Some(secret) = self.for_url(url) {
                let upper = uv_index_name(url).to_ascii_uppercase();
                env.push((format!("UV_INDEX_{upper}_USERNAME"), secret.username.clone()));
                env.push((format!("UV_INDEX_{upper}_PASSWORD"), secret.password.clone()));
            }
        }
        env
    }

    /// Variables that give git a credential helper per origin, answering from
    /// variables of its own environment, and no other helper (none may store them).
    pub fn git_env(&self) -> Vec<(String, String)> {
        if self.by_origin.is_empty() {
            return Vec::new();
        }
        let mut env = vec![
            ("GIT_CONFIG_KEY_0".to_owned(), "credential.helper".to_owned()),
            ("GIT_CONFIG_VALUE_0".to_owned(), String::new()),
        ];
        for (i, (origin, (_, secret))) in self.by_origin.iter().enumerate() {
            let slot = i + 1;
            env.push((format!("GIT_CONFIG_KEY_{slot}"), format!("credential.{origin}.helper")));
            env.push((
                format!("GIT_CONFIG_VALUE_{slot}"),
                format!(
                    "!f() {{ test \"$1\" = get && printf 'username=%s\\npassword=%s\\n' \
                     \"$COMFYFLEET_GIT_USERNAME_{slot}\" \"$COMFYFLEET_GIT_PASSWORD_{slot}\"; }}; f"
                ),
            ));
            env.push((format!("COMFYFLEET_GIT_USERNAME_{slot}"), secret.username.clone()));
            env.push((format!("COMFYFLEET_GIT_PASSWORD_{slot}"), secret.password.clone()));
        }
        env.push(("GIT_CONFIG_COUNT".to_owned(), (self.by_origin.len() + 1).to_string()));
        env
    }
}

/// A name uv accepts for an index (letters, digits, `_`), the same for one URL in
/// the argument and in the variables.
fn uv_index_name(url: &str) -> String {
    use sha2::Digest as _;
    let digest = sha2::Sha256::digest(url.as_bytes());
    format!("comfyfleet_{}", hex::encode(&digest[..6]))
}

/// Problems with the spec's credentials: bad names, and one origin given two.
pub(crate) fn check(spec: &Spec) -> Vec<(String, String)> {
    let mut problems = Vec::new();
    let mut seen: BTreeMap<String, (String, String)> = BTreeMap::new();
    for used in credential_uses(spec) {
        if let Err(message) = check_credential_name(&used.name) {
            problems.push((used.key.clone(), message));
            continue;
        }
        if used.urls.iter().all(|url| origin(url).is_none()) {
            problems.push((
                used.key.clone(),
                "names a credential for a URL that is not http(s): ssh and file remotes take none (give ssh keys to \
                 the agent's user)"
                    .to_owned(),
            ));
        }
        for url in &used.urls {
            let Some(origin) = origin(url) else { continue };
            match seen.get(&origin) {
                Some((name, key)) if *name != used.name => problems.push((
                    used.key.clone(),
                    format!(
                        "{origin} already takes credential \"{name}\" ({key}): one host takes one credential"
                    ),
                )),
                Some(_) => {}
                None => {
                    seen.insert(origin, (used.name.clone(), used.key.clone()));
                }
            }
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(password: &str) -> SourceSecret {
        SourceSecret { username: "builder".to_owned(), password: password.to_owned() }
    }

    #[test]
    fn origins_ignore_paths_default_ports_and_case() {
        assert_eq!(origin("https://Mirror.Farm:443/simple").as_deref(), Some("https://mirror.farm"));
        assert_eq!(origin("http://127.0.0.1:8080/x").as_deref(), Some("http://127.0.0.1:8080"));
        assert_eq!(origin("ssh://git@host/repo"), None);
        assert_eq!(origin("git@host:repo"), None);
    }

    #[test]
    fn uv_and_git_get_the_secret_only_through_their_environment() {
        let mut credentials = SourceCredentials::default();
        credentials
            .by_origin
            .insert("https://mirror.farm".to_owned(), ("farm".to_owned(), secret("hunter2-secret")));
        let url = "https://mirror.farm/simple";
        let name = uv_index_name(url);
        assert_eq!(credentials.uv_index(url), OsString::from(format!("{name}={url}")));
        let env = credentials.uv_env([url, "https://pypi.org/simple"]);
        let password = format!("UV_INDEX_{}_PASSWORD", name.to_ascii_uppercase());
        assert_eq!(env.len(), 2, "{env:?}");
        assert!(env.contains(&(password, "hunter2-secret".to_owned())));
        assert_eq!(
            credentials.uv_index("https://pypi.org/simple"),
            OsString::from("https://pypi.org/simple")
        );

        let env = credentials.git_env();
        let keys_and_config: Vec<&String> =
            env.iter().filter(|(key, _)| key.starts_with("GIT_CONFIG")).map(|(_, value)| value).collect();
        assert!(keys_and_config.iter().all(|value| !value.contains("hunter2")), "{env:?}");
        assert!(
            env.contains(&(
                "GIT_CONFIG_KEY_1".to_owned(),
                "credential.https://mirror.farm.helper".to_owned()
            ))
        );
        assert!(format!("{:?}", secret("hunter2-secret")).find("hunter2").is_none());
        assert_eq!(
            secret("pw").basic_auth(),
            format!("Basic {}", base64::engine::general_purpose::STANDARD.encode("builder:pw"))
        );
    }

    #[test]
    fn values_are_checked_before_they_are_stored() {
        assert!(secret("x").check().is_ok());
        assert!(secret("").check().is_err());
        assert!(secret("a\nb").check().is_err());
        assert!(SourceSecret { username: "a:b".to_owned(), password: "x".to_owned() }.check().is_err());
    }
}
