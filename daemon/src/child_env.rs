//! The environment a daemon's children (uv, git, the venv's python) start with: an
//! allow-list of the daemon's variables, never the whole of it. The controller holds
//! the CA key and every stored secret and the agent its join token; whatever either was
//! started with (a database URL, a token in a variable, `AWS_*` from a unit file) stays
//! in the daemon. Credentials a child needs are set on it one by one, by the caller.

use std::ffi::OsString;

/// Variables a child inherits, besides what the daemon sets itself: what programs
/// need to find things, proxies and CA bundles (a farm behind a proxy), and the GPUs
/// a machine lets ComfyUI see.
pub const INHERITED: &[&str] = &[
    "PATH",
    "HOME",
    "USER",
    "LANG",
    "LC_ALL",
    "LC_CTYPE",
    "TZ",
    "TMPDIR",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "NO_PROXY",
    "http_proxy",
    "https_proxy",
    "no_proxy",
    "CUDA_VISIBLE_DEVICES",
    "NVIDIA_VISIBLE_DEVICES",
    "LD_LIBRARY_PATH",
];

/// Which of the daemon's environment variables its children see, read once at start.
#[derive(Clone)]
pub struct ChildEnvironment {
    inherited: Vec<(String, OsString)>,
}

/// Names only: a value passed with `--pass-env` may be a secret.
impl std::fmt::Debug for ChildEnvironment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.inherited.iter().map(|(name, _)| name)).finish()
    }
}

impl Default for ChildEnvironment {
    /// The built-in allow-list alone.
    fn default() -> Self {
        Self::from_process(&[])
    }
}

impl ChildEnvironment {
    /// The built-in allow-list plus `extra` names (`--pass-env`), with the values this
    /// process has now.
    pub fn from_process(extra: &[String]) -> Self {
        let inherited = INHERITED
            .iter()
            .map(|name| (*name).to_owned())
            .chain(extra.iter().cloned())
            .filter_map(|name| std::env::var_os(&name).map(|value| (name, value)))
            .collect();
        Self { inherited }
    }

    /// Clears `command`'s environment and gives it the allowed variables; the caller
    /// adds what this child needs after.
    pub fn apply(&self, command: &mut tokio::process::Command) {
        command.env_clear();
        for (name, value) in &self.inherited {
            command.env(name, value);
        }
    }

    /// The names a child gets.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.inherited.iter().map(|(name, _)| name.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn child_sees(environment: &ChildEnvironment, name: &str) -> String {
        let mut command = tokio::process::Command::new("sh");
        command.args(["-c", &format!("printf %s \"${name}\"")]);
        environment.apply(&mut command);
        let output = command.output().await.unwrap();
        String::from_utf8(output.stdout).unwrap()
    }

    #[tokio::test]
    async fn a_child_sees_only_the_allow_list_and_the_names_passed() {
        // cargo runs tests with CARGO_MANIFEST_DIR set; it is not on the allow-list.
        assert!(std::env::var_os("CARGO_MANIFEST_DIR").is_some());
        let environment = ChildEnvironment::default();
        assert_eq!(child_sees(&environment, "CARGO_MANIFEST_DIR").await, "");
        assert!(!child_sees(&environment, "PATH").await.is_empty());
        let passed = ChildEnvironment::from_process(&["CARGO_MANIFEST_DIR".to_owned()]);
        assert!(
            !child_sees(&passed, "CARGO_MANIFEST_DIR").await.is_empty(),
            "--pass-env names reach the child"
        );
        assert!(!format!("{passed:?}").contains('/'), "Debug shows names, not values: {passed:?}");
    }
}
