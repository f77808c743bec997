//! The controller's copies of the spec's git repositories: one bare repository per
//! URL under `cache/git/`, holding every pinned commit. Apply reads requirement files
//! from them (to lock), and the package cache serves agents each pinned commit as a
//! git bundle, so a machine needs nothing but the controller. git runs without a
//! shell, without prompts, against a deadline and hardened (`git_command`), and
//! fetches only from remotes the source policy allows (checked again at every fetch:
//! the policy may have changed since the revision was applied).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use comfyfleet_config::source_credentials::SourceCredentials;
use comfyfleet_daemon::child_env::ChildEnvironment;

const FETCH_TIMEOUT: Duration = Duration::from_secs(600);
const LOCAL_TIMEOUT: Duration = Duration::from_secs(120);
/// A requirement file larger than this is not one.
const MAX_FILE_BYTES: usize = 1 << 20;

/// The repositories and the bundles made from them.
#[derive(Debug, Clone)]
pub struct GitMirror {
    root: PathBuf,
    /// What git's environment is made of.
    children: ChildEnvironment,
    /// One bundle is made at a time per controller: making one is CPU- and disk-bound.
    bundling: std::sync::Arc<tokio::sync::Mutex<()>>,
    policy: crate::use_cases::sources::source_policy::SourcePolicy,
}

pub use comfyfleet_config::lock::repository_key;

impl GitMirror {
    pub fn new(
        root: PathBuf,
        policy: crate::use_cases::sources::source_policy::SourcePolicy,
        children: ChildEnvironment,
    ) -> Self {
        Self { root, children, bundling: Default::default(), policy }
    }

    /// Runs git in the copies' directory; its stdout, or the end of its stderr.
    async fn git(&self, args: &[&str], timeout: Duration) -> Result<Vec<u8>, String> {
        git_with(&self.children, &self.root, args, timeout, &[]).await
    }

    fn repository(&self, key: &str) -> PathBuf {
        self.root.join(format!("{key}.git"))
    }

    /// Makes sure the copy of `url` holds `commit`, fetching it if not (with the
    /// source credential `credentials` have for it).
    pub async fn ensure(
        &self,
        url: &str,
        commit: &str,
        credentials: &SourceCredentials,
    ) -> Result<PathBuf, String> {
        let env = credentials.git_env();
        let repository = self.repository(&repository_key(url));
        if !repository.join("HEAD").is_file() {
            std::fs::create_dir_all(&self.root)
                .map_err(|error| format!("cannot create {}: {error}", self.root.display()))?;
            self.git(&["init", "--quiet", "--bare", &path_text(&repository)], LOCAL_TIMEOUT).await?;
        }
        if self.has_commit(&repository, commit).await {
            return Ok(repository);
        }
        self.policy
            .check_git(url)
            .await
            .map_err(|reason| format!("the controller does not fetch {url}: {reason}"))?;
        let dir = path_text(&repository);
        let by_commit = git_with(
            &self.children,
            &self.root,
            &[
                "--git-dir",
                &dir,
                "fetch",
                "--quiet",
                "--no-tags",
                url,
                &format!("+{commit}:refs/comfyfleet/{commit}"),
            ],
            FETCH_TIMEOUT,
            &env,
        )
        .await;
        if by_commit.is_err() || !self.has_commit(&repository, commit).await {
            git_with(
                &self.children,
                &self.root,
                &[
                    "--git-dir",
                    &dir,
                    "fetch",
                    "--quiet",
                    "--no-tags",
                    url,
                    "+refs/heads/*:refs/heads/*",
                    "+refs/tags/*:refs/tags/*",
                ],
                FETCH_TIMEOUT,
                &env,
            )
            .await
            .map_err(|error| format!("cannot fetch {url}: {error}"))?;
        }
        if !self.has_commit(&repository, commit).await {
            return Err(format!("{url} has no commit {commit}; apply the spec again to pin one that exists"));
        }
        self.git(
            &["--git-dir", &dir, "update-ref", &format!("refs/comfyfleet/{commit}"), commit],
            LOCAL_TIMEOUT,
        )
        .await?;
        Ok(repository)
    }

    async fn has_commit(&self, repository: &Path, commit: &str) -> bool {
        let dir = path_text(repository);
        self.git(&["--git-dir", &dir, "cat-file", "-e", &format!("{commit}^{{commit}}")], LOCAL_TIMEOUT)
            .await
            .is_ok()
    }

    /// `path` at `commit` in the copy of `url`, or `None` when the commit has no such file.
    pub async fn read_file(
        &self,
        url: &str,
        commit: &str,
        path: &str,
        credentials: &SourceCredentials,
    ) -> Result<Option<String>, String> {
        let repository = self.ensure(url, commit, credentials).await?;
        let dir = path_text(&repository);
        match self
            .git(&["--git-dir", &dir, "cat-file", "-e", &format!("{commit}:{path}")], LOCAL_TIMEOUT)
            .await
        {
            Ok(_) => {}
            Err(_) => return Ok(None),
        }
        let bytes = self
            .git(&["--git-dir", &dir, "cat-file", "blob", &format!("{commit}:{path}")], LOCAL_TIMEOUT)
            .await?;
        if bytes.len() > MAX_FILE_BYTES {
            return Err(format!(
                "{path} at {commit} in {url} is {} bytes; that is not a requirement file",
                bytes.len()
            ));
        }
        Ok(Some(String::from_utf8_lossy(&bytes).into_owned()))
    }

    /// A bundle of `commit` (with its history) from the copy named `key`: made once,
    /// kept beside the repository. `None` when no copy holds the commit.
    pub async fn bundle(&self, key: &str, commit: &str) -> Result<Option<PathBuf>, String> {
        let repository = self.repository(key);
        if !repository.join("HEAD").is_file() || !self.has_commit(&repository, commit).await {
            return Ok(None);
        }
        let bundles = self.root.join("bundles");
        let bundle = bundles.join(format!("{commit}.bundle"));
        let _one = self.bundling.lock().await;
        if bundle.is_file() {
            return Ok(Some(bundle));
        }
        std::fs::create_dir_all(&bundles)
            .map_err(|error| format!("cannot create {}: {error}", bundles.display()))?;
        let dir = path_text(&repository);
        let reference = format!("refs/comfyfleet/{commit}");
        self.git(&["--git-dir", &dir, "update-ref", &reference, commit], LOCAL_TIMEOUT).await?;
        let partial = bundles.join(format!("{commit}.bundle.partial"));
        self.git(
            &["--git-dir", &dir, "bundle", "create", "--quiet", &path_text(&partial), &reference],
            FETCH_TIMEOUT,
        )
        .await?;
        std::fs::rename(&partial, &bundle)
            .map_err(|error| format!("cannot keep {}: {error}", bundle.display()))?;
        Ok(Some(bundle))
    }
}

fn path_text(path: &Path) -> String {
    path.to_string_lossy().into_owned()
}

/// Runs git in `cwd` with `env` added (a source credential's helper); its stdout,
/// or the end of its stderr as the error.
async fn git_with(
    children: &ChildEnvironment,
    cwd: &Path,
    args: &[&str],
    timeout: Duration,
    env: &[(String, String)],
) -> Result<Vec<u8>, String> {
    let mut command = crate::use_cases::sources::git_command::git(children);
    command
        .args(args)
        .current_dir(cwd)
        .envs(env.iter().map(|(name, value)| (name, value)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = command
        .spawn()
        .map_err(|error| format!("cannot run git: {error}; install git on the controller's machine"))?;
    let output = tokio::time::timeout(timeout, child.wait_with_output())
        .await
        .map_err(|_| format!("`git {}` did not finish within {} s", args.join(" "), timeout.as_secs()))?
        .map_err(|error| format!("git failed: {error}"))?;
    if output.status.success() {
        return Ok(output.stdout);
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    let tail: Vec<&str> = stderr.lines().filter(|line| !line.trim().is_empty()).collect();
    let tail = tail[tail.len().saturating_sub(4)..].join("; ");
    Err(if tail.is_empty() { format!("git exited with {}", output.status) } else { tail })
}
