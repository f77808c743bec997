//! Named credentials for a spec's sources. A spec never carries a secret: it names a
//! credential (`index.credential = "farm-mirror"`) that the controller stores
//! (`comfyfleet secrets set farm-mirror`) and hands to whoever fetches from that
//! source — the controller itself (pinning, locking, the package cache) or the agent
//! over its mTLS session. A credential applies to every URL on the origin (scheme,
//! host and port) of the URLs that name it, as uv and pip send an index's credentials
//! to files linked from it on the same host.
//!
//! Storing a secret is an admin's right and naming one in a spec an operator's, so
//! the admin binds each secret to the origins it may be sent to
//! (`secrets set NAME --origin https://mirror.farm.internal`): a spec that names it for
//! any other origin is refused, and nothing here ever attaches it to a request for
//! another origin. A secret stored before origins existed is bound to none.
//!
//! What uv and git get is environment only: uv's named-index variables
//! (`UV_INDEX_<NAME>_USERNAME`), and for git a credential helper configured through
//! `GIT_CONFIG_COUNT` that prints variables it inherits. Nothing secret is ever an
//! argument (visible in `ps`) or a file.

use std::collections::BTreeMap;
use std::ffi::OsString;

use base64::Engine as _;

use crate::spec::{Spec, names};
// What a spec names (and the origin of a URL) is the spec's; its users outside this
// crate name it here, beside the secrets it is about.
pub use crate::spec::credentials::{
    CredentialUse, check_credential_name, credential_names, credential_origins, credential_uses, origin,
};

/// The most origins one secret is bound to.
pub const MAX_ORIGINS: usize = 32;

/// A stored credential's value: HTTP basic auth (a token is the password, with the
/// username the service expects, `__token__` by default) or a bearer token
/// (`Authorization: Bearer`, as Hugging Face and Civitai take it; no username), and
/// the origins its admin bound it to.
#[derive(Clone, PartialEq, Eq)]
pub struct SourceSecret {
    pub username: String,
    pub password: String,
    /// Canonical origins ([`parse_origin`]) it may be sent to; empty: none (a secret
    /// stored before secrets were bound).
    pub origins: Vec<String>,
    /// A bearer token: sent as `Authorization: Bearer`, for model downloads only (uv
    /// and git take basic auth).
    pub bearer: bool,
}

impl std::fmt::Debug for SourceSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SourceSecret")
            .field("username", &self.username)
            .field("origins", &self.origins)
            .field("bearer", &self.bearer)
            .finish_non_exhaustive()
    }
}

impl SourceSecret {
    /// The `Authorization` header's value.
    pub fn basic_auth(&self) -> String {
        let pair = format!("{}:{}", self.username, self.password);
        format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(pair))
    }

    /// The `Authorization` header's value for its kind: bearer or basic.
    pub fn authorization(&self) -> String {
        if self.bearer { format!("Bearer {}", self.password) } else { self.basic_auth() }
    }

    /// Whether it may be sent to `origin` (canonical, as [`origin`] gives it).
    pub fn allows(&self, origin: &str) -> bool {
        self.origins.iter().any(|allowed| allowed == origin)
    }

    /// Checks a value before it is stored: printable, one line, bounded, bound to
    /// 1 to [`MAX_ORIGINS`] canonical origins.
    pub fn check(&self) -> Result<(), String> {
        if self.origins.is_empty() {
            return Err(
                "name the origins it may be sent to: --origin https://HOST[:PORT] (repeatable); a spec that \
                 names it for any other origin is refused"
                    .to_owned(),
            );
        }
        if self.origins.len() > MAX_ORIGINS {
            return Err(format!("a secret is bound to at most {MAX_ORIGINS} origins"));
        }
        for given in &self.origins {
            if parse_origin(given).as_deref() != Ok(given.as_str()) {
                return Err(format!("origin {given:?} is not a canonical origin (see parse_origin)"));
            }
        }
        let printable = |text: &str| !text.chars().any(|c| c.is_control());
        if self.bearer {
            if !self.username.is_empty() {
                return Err("a bearer token has no username: leave --username out".to_owned());
            }
        } else if self.username.is_empty() || self.username.len() > 256 || self.username.contains(':') {
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

/// An origin as an admin writes it (`https://mirror.farm.internal`,
/// `http://10.0.0.5:8080/`), in the canonical form [`origin`] gives a URL: scheme,
/// lowercased host, and the port unless it is the scheme's default. Exact only: no
/// path, no username, no wildcard, so a secret goes only where its admin said.
pub fn parse_origin(text: &str) -> Result<String, String> {
    let text = text.trim();
    let invalid = |why: &str| {
        Err(format!(
            "origin `{}` {why}: write scheme, host and port only, e.g. https://mirror.farm.internal or \
             http://10.0.0.5:8080",
            names::printable(text)
        ))
    };
    let Some((scheme, rest)) = text.split_once("://") else { return invalid("has no scheme") };
    if !matches!(scheme.to_ascii_lowercase().as_str(), "https" | "http") {
        return invalid("is not http or https (ssh and file remotes take no secret)");
    }
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    if authority.contains(['/', '?', '#']) {
        return invalid("has a path, query or fragment");
    }
    if authority.contains('@') {
        return invalid("carries a username or password");
    }
    if authority.contains('*') {
        return invalid("has a wildcard (name every host)");
    }
    let (host, port, v6) = match authority.strip_prefix('[') {
        Some(bracketed) => {
            let Some((host, after)) = bracketed.split_once(']') else {
                return invalid("has an unclosed `[`");
            };
            match after.strip_prefix(':') {
                Some(port) => (host, Some(port), true),
                None if after.is_empty() => (host, None, true),
                None => return invalid("has a bad port"),
            }
        }
        None => match authority.split_once(':') {
            Some((host, port)) => (host, Some(port), false),
            None => (authority, None, false),
        },
    };
    let host_character =
        |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_') || (v6 && c == ':');
    if host.is_empty() || !host.chars().all(host_character) {
        return invalid("names no valid host");
    }
    if let Some(port) = port
        && port.parse::<u16>().map_or(true, |port| port == 0)
    {
        return invalid("has a bad port");
    }
    match origin(text) {
        Some(origin) => Ok(origin),
        None => invalid("names no host"),
    }
}

/// A spec naming a credential for an origin its admin did not bind it to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnboundUse {
    /// Where the spec names it: `index.credential`.
    pub key: String,
    pub name: String,
    pub origin: String,
    /// The origins it is bound to (empty: stored before secrets were bound).
    pub allowed: Vec<String>,
}

impl std::fmt::Display for UnboundUse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let Self { key, name, origin, allowed } = self;
        if allowed.is_empty() {
            write!(
                f,
                "{key}: credential \"{name}\" is bound to no origin (it was stored before secrets were bound to \
                 origins), so it is sent nowhere: an admin binds it with `comfyfleet secrets set {name} --username \
                 USER --origin {origin}` (the secret again on stdin)"
            )
        } else {
            write!(
                f,
                "{key}: credential \"{name}\" may be sent only to {}, not to {origin}: name a credential stored for \
                 {origin}, or ask an admin to bind it there (`comfyfleet secrets set {name} --origin {origin} …`)",
                allowed.join(", ")
            )
        }
    }
}

/// Why the credentials a spec names cannot be bound to its sources.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CredentialRefusal {
    /// Names nothing is stored under.
    pub missing: Vec<String>,
    /// Names used for an origin their secret is not bound to.
    pub unbound: Vec<UnboundUse>,
    /// Bearer tokens named for a package index or git remote (`index.credential:
    /// credential "hf" …`): uv and git take basic auth only.
    pub bearer_for_packages: Vec<String>,
}

impl CredentialRefusal {
    /// What to fix, one line per problem.
    pub fn lines(&self) -> Vec<String> {
        let mut lines: Vec<String> = self.unbound.iter().map(ToString::to_string).collect();
        lines.extend(self.bearer_for_packages.iter().cloned());
        lines
    }
}

/// The credentials one spec's sources need, each bound to its origins.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SourceCredentials {
    /// origin → (credential name, value).
    by_origin: BTreeMap<String, (String, SourceSecret)>,
}

impl SourceCredentials {
    /// Binds each credential `spec` names to its URLs' origins, from `known` (name →
    /// value). Refused when a name is not in `known`, or is named for an origin its
    /// secret is not bound to: nothing is bound then, so nothing can be sent.
    pub fn for_spec(spec: &Spec, known: &BTreeMap<String, SourceSecret>) -> Result<Self, CredentialRefusal> {
        let mut refusal = CredentialRefusal::default();
        for used in credential_uses(spec) {
            let Some(secret) = known.get(&used.name) else {
                if !refusal.missing.contains(&used.name) {
                    refusal.missing.push(used.name);
                }
                continue;
            };
            for origin in used.urls.iter().filter_map(|url| origin(url)) {
                let unbound = UnboundUse {
                    key: used.key.clone(),
                    name: used.name.clone(),
                    origin,
                    allowed: secret.origins.clone(),
                };
                if !secret.allows(&unbound.origin) && !refusal.unbound.contains(&unbound) {
                    refusal.unbound.push(unbound);
                }
            }
            if secret.bearer && !used.key.starts_with("model[") {
                refusal.bearer_for_packages.push(format!(
                    "{}: credential \"{}\" is a bearer token, which serves [[model]] downloads only (uv and git \
                     take a username and secret): store one with `comfyfleet secrets set NAME --username USER \
                     --origin …` for this source",
                    used.key, used.name
                ));
            }
        }
        if refusal != CredentialRefusal::default() {
            refusal.missing.sort();
            return Err(refusal);
        }
        let mut credentials = Self::default();
        credentials.add_spec(spec, known);
        Ok(credentials)
    }

    /// Adds the origins of `spec`'s credentials that `known` has and that each
    /// secret is bound to (any other use is left out: the request goes without); an
    /// origin bound already keeps its credential.
    pub fn add_spec(&mut self, spec: &Spec, known: &BTreeMap<String, SourceSecret>) {
        for used in credential_uses(spec) {
            let Some(secret) = known.get(&used.name) else { continue };
            for url in &used.urls {
                if let Some(origin) = origin(url)
                    && secret.allows(&origin)
                {
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

    /// The `Authorization` header for a request to `url` (basic or bearer, as stored).
    pub fn authorization(&self, url: &str) -> Option<String> {
        self.for_url(url).map(SourceSecret::authorization)
    }

    /// The credential for `url` when uv or git may use it: basic auth only.
    fn for_package_url(&self, url: &str) -> Option<&SourceSecret> {
        self.for_url(url).filter(|secret| !secret.bearer)
    }

    /// The index argument for uv: `NAME=URL` when the URL has a credential (uv then
    /// reads it from `UV_INDEX_NAME_USERNAME` and `_PASSWORD`, see [`Self::uv_env`]),
    /// else the URL.
    pub fn uv_index(&self, url: &str) -> OsString {
        match self.for_package_url(url) {
            Some(_) => format!("{}={url}", uv_index_name(url)).into(),
            None => url.into(),
        }
    }

    /// The variables uv reads the credentials of `urls`' indexes from.
    pub fn uv_env<'a>(&self, urls: impl IntoIterator<Item = &'a str>) -> Vec<(String, String)> {
        let mut env = Vec::new();
        for url in urls {
            if let Some(secret) = self.for_package_url(url) {
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
        let basic: Vec<(&String, &SourceSecret)> = self
            .by_origin
            .iter()
            .filter(|(_, (_, secret))| !secret.bearer)
            .map(|(o, (_, s))| (o, s))
            .collect();
        if basic.is_empty() {
            return Vec::new();
        }
        let mut env = vec![
            ("GIT_CONFIG_KEY_0".to_owned(), "credential.helper".to_owned()),
            ("GIT_CONFIG_VALUE_0".to_owned(), String::new()),
        ];
        for (i, (origin, secret)) in basic.iter().enumerate() {
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
        env.push(("GIT_CONFIG_COUNT".to_owned(), (basic.len() + 1).to_string()));
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

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(password: &str) -> SourceSecret {
        SourceSecret {
            username: "builder".to_owned(),
            password: password.to_owned(),
            origins: vec!["https://mirror.farm".to_owned()],
            bearer: false,
        }
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
    fn a_bearer_token_is_sent_as_bearer_and_serves_models_only() {
        let hf = SourceSecret {
            username: String::new(),
            password: "hf_token".to_owned(),
            origins: vec!["https://huggingface.co".to_owned()],
            bearer: true,
        };
        assert!(hf.check().is_ok());
        assert!(
            SourceSecret { username: "u".to_owned(), ..hf.clone() }
                .check()
                .unwrap_err()
                .contains("no username")
        );
        assert_eq!(hf.authorization(), "Bearer hf_token");
        let known: BTreeMap<String, SourceSecret> = [("hf".to_owned(), hf)].into();
        let model = format!(
            "{}\n[[model]]\nfolder = \"vae\"\nname = \"ae.safetensors\"\nurl = \
             \"https://huggingface.co/o/r/resolve/main/ae.safetensors\"\nsha256 = \"{}\"\ncredential = \"hf\"\n",
            "name = \"r\"\npython = \"3.12\"\n[comfyui]\ngit = \"https://github.com/c/ComfyUI\"\nref = \"v1\"\n\
             [torch]\nversion = \"2.8.0\"\ncuda = [\"cu128\"]",
            "a".repeat(64)
        );
        let spec = Spec::parse("spec.toml", &model, crate::spec::SpecFormat::Toml).unwrap();
        let bound = SourceCredentials::for_spec(&spec, &known).unwrap();
        let url = "https://huggingface.co/o/r/resolve/main/ae.safetensors";
        assert_eq!(bound.authorization(url).as_deref(), Some("Bearer hf_token"));
        assert!(
            bound.uv_env([url]).is_empty() && bound.git_env().is_empty(),
            "uv and git never get a bearer token"
        );
        assert_eq!(bound.uv_index(url), OsString::from(url));

        let index = spec_naming("https://huggingface.co/simple", "hf");
        let refusal = SourceCredentials::for_spec(&index, &known).unwrap_err();
        assert_eq!(refusal.bearer_for_packages.len(), 1, "{refusal:?}");
        assert!(
            refusal.lines()[0].starts_with("index.credential: credential \"hf\" is a bearer token"),
            "{refusal:?}"
        );
    }

    #[test]
    fn values_are_checked_before_they_are_stored() {
        assert!(secret("x").check().is_ok());
        assert!(secret("").check().is_err());
        assert!(secret("a\nb").check().is_err());
        assert!(SourceSecret { username: "a:b".to_owned(), ..secret("x") }.check().is_err());
        let unbound = SourceSecret { origins: Vec::new(), ..secret("x") };
        assert!(unbound.check().unwrap_err().contains("--origin"));
        let raw = SourceSecret { origins: vec!["https://Mirror.Farm/".to_owned()], ..secret("x") };
        assert!(raw.check().is_err(), "stored origins are canonical");
    }

    #[test]
    fn origins_are_exact_scheme_host_and_port() {
        let ok = |text: &str| parse_origin(text).unwrap();
        assert_eq!(ok("https://Mirror.Farm.Internal"), "https://mirror.farm.internal");
        assert_eq!(ok("https://mirror.farm:443/"), "https://mirror.farm");
        assert_eq!(ok("http://127.0.0.1:8080"), "http://127.0.0.1:8080");
        assert_eq!(ok("https://[fd00::1]:8443"), "https://[fd00::1]:8443");
        for bad in [
            "mirror.farm",
            "ssh://git@host",
            "https://mirror.farm/simple",
            "https://user:pw@mirror.farm",
            "https://*.farm",
            "https://mirror.farm:0",
            "https://mirror.farm:x",
            "https://",
            "https://mirror.farm?x",
            "https://[fd00::1",
        ] {
            let error = parse_origin(bad).unwrap_err();
            assert!(error.contains("e.g. https://mirror.farm.internal"), "{bad}: {error}");
        }
    }

    fn spec_naming(index: &str, credential: &str) -> Spec {
        let text = format!(
            "name = \"r\"\npython = \"3.12\"\n[comfyui]\ngit = \"https://github.com/c/ComfyUI\"\nref = \"v1\"\n\
             [torch]\nversion = \"2.8.0\"\ncuda = [\"cu128\"]\n[index]\nurl = \"{index}\"\ncredential = \"{credential}\"\n"
        );
        Spec::parse("spec.toml", &text, crate::spec::SpecFormat::Toml).unwrap()
    }

    #[test]
    fn a_secret_binds_only_to_the_origins_its_admin_named() {
        let known: BTreeMap<String, SourceSecret> = [("farm".to_owned(), secret("hunter2"))].into();
        let bound =
            SourceCredentials::for_spec(&spec_naming("https://mirror.farm/simple", "farm"), &known).unwrap();
        assert_eq!(
            bound.authorization("https://mirror.farm/simple/x/"),
            Some(secret("hunter2").basic_auth())
        );

        let elsewhere = spec_naming("https://operator.example:8443/simple", "farm");
        let refusal = SourceCredentials::for_spec(&elsewhere, &known).unwrap_err();
        assert!(refusal.missing.is_empty());
        assert_eq!(refusal.unbound.len(), 1, "{refusal:?}");
        let text = refusal.unbound[0].to_string();
        assert!(
            text.starts_with(
                "index.credential: credential \"farm\" may be sent only to https://mirror.farm, not to \
                              https://operator.example:8443"
            ),
            "{text}"
        );
        // What the package cache and agents use binds nothing there either.
        let mut credentials = SourceCredentials::default();
        credentials.add_spec(&elsewhere, &known);
        assert!(credentials.is_empty());
        assert_eq!(credentials.authorization("https://operator.example:8443/simple"), None);

        let legacy: BTreeMap<String, SourceSecret> =
            [("farm".to_owned(), SourceSecret { origins: Vec::new(), ..secret("hunter2") })].into();
        let refusal =
            SourceCredentials::for_spec(&spec_naming("https://mirror.farm/simple", "farm"), &legacy)
                .unwrap_err();
        assert!(refusal.unbound[0].to_string().contains("bound to no origin"), "{refusal:?}");
        let refusal =
            SourceCredentials::for_spec(&spec_naming("https://mirror.farm/simple", "other"), &known)
                .unwrap_err();
        assert_eq!(refusal.missing, vec!["other".to_owned()]);
        assert_eq!(
            credential_origins(&elsewhere),
            [("farm".to_owned(), ["https://operator.example:8443".to_owned()].into())].into()
        );
    }
}
