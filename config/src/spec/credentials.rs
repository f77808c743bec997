//! The credentials a spec names: where (`index.credential`, `custom_node[2].credential`)
//! and for which URLs, and the checks a spec's credentials must pass — a name a secret
//! can be stored under, an http(s) URL to send it to, one credential per origin. The
//! secrets themselves, and how they reach uv and git, are [`crate::source_credentials`].

use std::collections::{BTreeMap, BTreeSet};

use super::{Spec, names};

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
    for (i, model) in spec.models.iter().enumerate() {
        add(format!("model[{i}].credential"), &model.credential, vec![model.url.clone()]);
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

/// Each credential `spec` names, with the origins it names it for.
pub fn credential_origins(spec: &Spec) -> BTreeMap<String, BTreeSet<String>> {
    let mut origins: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for used in credential_uses(spec) {
        origins.entry(used.name).or_default().extend(used.urls.iter().filter_map(|url| origin(url)));
    }
    origins
}

/// Problems with the spec's credentials: bad names, and one origin given two.
pub(super) fn check(spec: &Spec) -> Vec<(String, String)> {
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

    #[test]
    fn origins_ignore_paths_default_ports_and_case() {
        assert_eq!(origin("https://Mirror.Farm:443/simple").as_deref(), Some("https://mirror.farm"));
        assert_eq!(origin("http://127.0.0.1:8080/x").as_deref(), Some("http://127.0.0.1:8080"));
        assert_eq!(origin("ssh://git@host/repo"), None);
        assert_eq!(origin("git@host:repo"), None);
    }
}
