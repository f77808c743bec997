//! Pinning a spec's git refs to commits. Every source's `ref` is looked up with
//! `git ls-remote` in its repository at apply time, so a revision names exact commits
//! and every machine that installs it gets the same code. The real `git` binary does
//! the talking because it already knows the operator's credential helpers, proxies and
//! ssh setup; it runs without a shell, without prompts, against a deadline and hardened
//! (`git_command`: the allow-listed environment, no hooks, known transports only).

use std::process::Stdio;
use std::time::Duration;

use comfyfleet_config::source_credentials::SourceCredentials;
use comfyfleet_config::spec::Spec;
use comfyfleet_config::spec::names::is_commit_id;
use comfyfleet_config::text::Escaped;
use comfyfleet_daemon::child_env::ChildEnvironment;
use tokio::io::{AsyncRead, AsyncReadExt};

const LS_REMOTE_TIMEOUT: Duration = Duration::from_secs(60);
/// Far more than a real repository lists (ComfyUI with every pull request: ~2 MiB).
const MAX_LISTING_BYTES: usize = 64 << 20;
/// git's stderr is kept only this far back: its last lines say what went wrong.
const STDERR_TAIL_BYTES: usize = 16 << 10;
const STDERR_LINES: usize = 6;
/// Branch and tag names shown when a ref is not found.
const NAMES_SHOWN: usize = 10;
/// Repositories listed at once.
const PARALLEL_LISTINGS: usize = 8;

/// What one git source's ref resolved to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GitPin {
    /// "comfyui" or "custom_node NAME".
    pub source: String,
    pub git: String,
    pub reference: String,
    pub commit: String,
}

#[derive(Debug, thiserror::Error)]
pub enum PinError {
    #[error(
        "{what}: cannot run git for {url}: {source}; install git on the controller's machine (apply pins refs \
         with `git ls-remote`)"
    )]
    Spawn { what: String, url: String, source: std::io::Error },
    #[error("{what}: reading what `git ls-remote {url}` printed failed: {source}")]
    Read { what: String, url: String, source: std::io::Error },
    #[error(
        "{what}: `git ls-remote {url}` did not finish within {seconds} s; check that the controller can reach \
         the repository"
    )]
    TimedOut { what: String, url: String, seconds: u64 },
    #[error("{what}: `git ls-remote {url}` listed more than {MAX_LISTING_BYTES} bytes of refs; refusing it")]
    TooLarge { what: String, url: String },
    #[error(
        "{what}: `git ls-remote {url}` failed: {stderr}; check the URL and that the controller can reach and \
         read the repository"
    )]
    ListingFailed { what: String, url: String, stderr: String },
    #[error("{what}: {url} has no branch, tag or ref `{reference}` ({available}); fix its ref{hint}")]
    RefNotFound { what: String, url: String, reference: String, available: String, hint: &'static str },
    #[error("{what}: the controller does not read git from {url}: {reason}")]
    Refused { what: String, url: String, reason: String },
    #[error("{what}: looking up `{reference}` in {url} stopped unexpectedly: {detail}")]
    Task { what: String, url: String, reference: String, detail: String },
}

/// Every source that could not be pinned, one per line.
#[derive(Debug, thiserror::Error)]
pub struct PinErrors(pub Vec<PinError>);

impl std::fmt::Display for PinErrors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let lines: Vec<String> = self.0.iter().map(ToString::to_string).collect();
        f.write_str(&lines.join("\n"))
    }
}

/// Sets every git source's `commit` to the commit its `ref` names now, overwriting
/// any commit the spec had: applying always re-resolves. Returns the pins, ComfyUI
/// first, then the custom nodes in spec order.
pub async fn pin_spec(
    spec: &mut Spec,
    policy: &crate::use_cases::sources::source_policy::SourcePolicy,
    credentials: &SourceCredentials,
    children: &ChildEnvironment,
) -> Result<Vec<GitPin>, PinErrors> {
    let mut wanted = vec![("comfyui".to_owned(), spec.comfyui.git.clone(), spec.comfyui.reference.clone())];
    wanted.extend(spec.custom_nodes.iter().map(|node| {
        (format!("custom_node {}", node.directory_name()), node.git.clone(), node.reference.clone())
    }));
    // Nothing is asked of a remote the controller's policy refuses.
    let mut refused = Vec::new();
    for (what, url, _) in &wanted {
        if let Err(reason) = policy.check_git(url).await {
            refused.push(PinError::Refused { what: what.clone(), url: url.clone(), reason });
        }
    }
    if !refused.is_empty() {
        return Err(PinErrors(refused));
    }
    let pins = resolve_all(wanted, credentials.git_env(), children).await?;
    let targets = std::iter::once(&mut spec.comfyui.commit)
        .chain(spec.custom_nodes.iter_mut().map(|node| &mut node.commit));
    for (target, pin) in targets.zip(&pins) {
        *target = Some(pin.commit.clone());
    }
    Ok(pins)
}

/// Resolves (source, url, ref) triples, a few repositories at a time; the pins come
/// back in the order asked, or every failure at once.
async fn resolve_all(
    wanted: Vec<(String, String, String)>,
    env: Vec<(String, String)>,
    children: &ChildEnvironment,
) -> Result<Vec<GitPin>, PinErrors> {
    let env = std::sync::Arc::new(env);
    let children = std::sync::Arc::new(children.clone());
    let limit = std::sync::Arc::new(tokio::sync::Semaphore::new(PARALLEL_LISTINGS));
    // Dropping the set (the call was cancelled) aborts the lookups, and dropping a
    // lookup kills its git.
    let mut lookups = tokio::task::JoinSet::new();
    for (index, (what, url, reference)) in wanted.iter().cloned().enumerate() {
        let limit = limit.clone();
        let env = env.clone();
        let children = children.clone();
        lookups.spawn(async move {
            let _permit = limit.acquire_owned().await;
            let commit = resolve_ref_with(&what, &url, &reference, &env, &children).await;
            (index, commit)
        });
    }
    let mut commits: Vec<Option<Result<String, PinError>>> = wanted.iter().map(|_| None).collect();
    while let Some(joined) = lookups.join_next().await {
        if let Ok((index, commit)) = joined
            && let Some(slot) = commits.get_mut(index)
        {
            *slot = Some(commit);
        }
    }
    let mut pins = Vec::with_capacity(wanted.len());
    let mut errors = Vec::new();
    for ((source, git, reference), commit) in wanted.into_iter().zip(commits) {
        match commit {
            Some(Ok(commit)) => pins.push(GitPin { source, git, reference, commit }),
            Some(Err(error)) => errors.push(error),
            None => errors.push(PinError::Task {
                what: source,
                url: git,
                reference,
                detail: "the lookup task ended without an answer".to_owned(),
            }),
        }
    }
    if errors.is_empty() { Ok(pins) } else { Err(PinErrors(errors)) }
}

/// The commit `reference` names in the repository at `url`. A full commit id is
/// taken as it is, without asking git.
#[cfg(test)]
pub async fn resolve_ref(what: &str, url: &str, reference: &str) -> Result<String, PinError> {
    resolve_ref_with(what, url, reference, &[], &ChildEnvironment::default()).await
}

/// As [`resolve_ref`], git given `env` (a source credential's helper).
async fn resolve_ref_with(
    what: &str,
    url: &str,
    reference: &str,
    env: &[(String, String)],
    children: &ChildEnvironment,
) -> Result<String, PinError> {
    if is_commit_id(reference) {
        return Ok(reference.to_owned());
    }
    let listing = ls_remote(what, url, env, children).await?;
    let refs = parse_listing(&listing);
    pick_commit(&refs, reference).map(str::to_owned).ok_or_else(|| PinError::RefNotFound {
        what: what.to_owned(),
        url: url.to_owned(),
        reference: reference.to_owned(),
        available: available_names(&refs),
        hint: short_commit_hint(reference),
    })
}

/// `git ls-remote -- URL`: every ref of the repository and the object it names.
#[tracing::instrument(skip_all, fields(url = %Escaped(url)))]
async fn ls_remote(
    what: &str,
    url: &str,
    env: &[(String, String)],
    children: &ChildEnvironment,
) -> Result<String, PinError> {
    let mut child = crate::use_cases::sources::git_command::git(children)
        .args(["ls-remote", "--", url])
        .envs(env.iter().map(|(name, value)| (name, value)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| PinError::Spawn { what: what.to_owned(), url: url.to_owned(), source })?;
    let read_failed = |source| PinError::Read { what: what.to_owned(), url: url.to_owned(), source };
    let run = async {
        let stdout = child.stdout.take();
        let stderr = child.stderr.take();
        let (listing, stderr) = tokio::try_join!(
            async {
                let Some(stdout) = stdout else { return Ok(None) };
                read_capped(stdout, MAX_LISTING_BYTES).await.map_err(read_failed)
            },
            async {
                let Some(stderr) = stderr else { return Ok(Vec::new()) };
                read_tail(stderr, STDERR_TAIL_BYTES).await.map_err(read_failed)
            },
        )?;
        let Some(listing) = listing else {
            return Err(PinError::TooLarge { what: what.to_owned(), url: url.to_owned() });
        };
        let status = child.wait().await.map_err(read_failed)?;
        if !status.success() {
            let mut stderr = last_lines(&String::from_utf8_lossy(&stderr));
            if stderr.is_empty() {
                stderr = status.to_string();
            }
            return Err(PinError::ListingFailed { what: what.to_owned(), url: url.to_owned(), stderr });
        }
        Ok(String::from_utf8_lossy(&listing).into_owned())
    };
    match tokio::time::timeout(LS_REMOTE_TIMEOUT, run).await {
        Ok(result) => result,
        // The child is dropped with this future, which kills it.
        Err(_) => Err(PinError::TimedOut {
            what: what.to_owned(),
            url: url.to_owned(),
            seconds: LS_REMOTE_TIMEOUT.as_secs(),
        }),
    }
}

/// Everything `reader` gives, or `None` once it passes `limit` bytes.
async fn read_capped(reader: impl AsyncRead + Unpin, limit: usize) -> std::io::Result<Option<Vec<u8>>> {
    let mut bytes = Vec::new();
    let cap = u64::try_from(limit).unwrap_or(u64::MAX).saturating_add(1);
    reader.take(cap).read_to_end(&mut bytes).await?;
    Ok((bytes.len() <= limit).then_some(bytes))
}

/// Reads `reader` to its end, keeping only the last `keep` bytes, so a chatty child
/// never blocks on a full pipe and never fills memory.
async fn read_tail(mut reader: impl AsyncRead + Unpin, keep: usize) -> std::io::Result<Vec<u8>> {
    let mut tail = Vec::new();
    let mut buffer = vec![0; 8192];
    loop {
        let read = reader.read(&mut buffer).await?;
        if read == 0 {
            return Ok(tail);
        }
        tail.extend_from_slice(buffer.get(..read).unwrap_or_default());
        if tail.len() > keep {
            tail.drain(..tail.len() - keep);
        }
    }
}

/// git's last few non-empty lines on one line, without control characters.
fn last_lines(stderr: &str) -> String {
    let lines: Vec<&str> = stderr.lines().map(str::trim).filter(|line| !line.is_empty()).collect();
    let start = lines.len().saturating_sub(STDERR_LINES);
    let text = lines.get(start..).unwrap_or_default().join(" ");
    text.chars().map(|c| if c.is_control() { ' ' } else { c }).collect()
}

/// (ref name, object id) pairs in the order git listed them.
fn parse_listing(listing: &str) -> Vec<(&str, &str)> {
    listing
        .lines()
        .filter_map(|line| {
            let (object, name) = line.split_once('\t')?;
            is_commit_id(object).then_some((name.trim_end(), object))
        })
        .collect()
}

/// A branch named `reference`, else a tag (the commit an annotated tag points at),
/// else a ref with exactly that full name (`refs/pull/1/head`, `HEAD`).
fn pick_commit<'a>(refs: &[(&str, &'a str)], reference: &str) -> Option<&'a str> {
    let find = |name: &str| refs.iter().find(|(listed, _)| *listed == name).map(|(_, object)| *object);
    // An annotated tag is listed twice: the tag object, and `^{}` for its commit.
    let peeled = |name: &str| find(&format!("{name}^{{}}")).or_else(|| find(name));
    find(&format!("refs/heads/{reference}"))
        .or_else(|| peeled(&format!("refs/tags/{reference}")))
        .or_else(|| peeled(reference))
}

/// Up to [`NAMES_SHOWN`] branch and tag names, for a "not found" message.
fn available_names(refs: &[(&str, &str)]) -> String {
    let names: Vec<&str> = refs
        .iter()
        .filter_map(|(name, _)| name.strip_prefix("refs/heads/").or_else(|| name.strip_prefix("refs/tags/")))
        .filter(|name| !name.ends_with("^{}"))
        .collect();
    match names.len() {
        0 => "it has no branches or tags".to_owned(),
        count if count <= NAMES_SHOWN => format!("it has {}", names.join(", ")),
        count => format!(
            "it has {} and {} more",
            names.get(..NAMES_SHOWN).unwrap_or_default().join(", "),
            count - NAMES_SHOWN
        ),
    }
}

/// git cannot look up an abbreviated commit id remotely; say how to pin a commit.
fn short_commit_hint(reference: &str) -> &'static str {
    let looks_abbreviated =
        (4..40).contains(&reference.len()) && reference.bytes().all(|b| b.is_ascii_hexdigit());
    if looks_abbreviated { " (to pin a commit, write its full 40-digit id as the ref)" } else { "" }
}

/// Local git repositories for tests, independent of the machine's git configuration.
#[cfg(test)]
pub(crate) mod test_repo {
    use std::path::{Path, PathBuf};
    use std::process::Command;

    pub struct TestRepo {
        home: tempfile::TempDir,
    }

    impl TestRepo {
        /// A repository on branch `main` with one commit.
        pub fn new() -> Self {
            let home = tempfile::tempdir().unwrap();
            std::fs::create_dir(home.path().join("repo")).unwrap();
            let repo = Self { home };
            repo.git(&["init", "--quiet"]);
            repo.commit("first");
            repo
        }

        pub fn path(&self) -> PathBuf {
            self.home.path().join("repo")
        }

        pub fn url(&self) -> String {
            format!("file://{}", self.path().display())
        }

        /// A URL in the same temporary directory where no repository is.
        pub fn missing_url(&self) -> String {
            format!("file://{}", self.home.path().join("nothing-here").display())
        }

        /// Runs git in the repository and returns what it printed, trimmed.
        pub fn git(&self, args: &[&str]) -> String {
            git_in(self.home.path(), &self.path(), args)
        }

        /// A new (empty) commit on the current branch; returns its id.
        pub fn commit(&self, message: &str) -> String {
            self.git(&["commit", "--quiet", "--allow-empty", "-m", message]);
            self.git(&["rev-parse", "HEAD"])
        }
    }

    fn git_in(home: &Path, dir: &Path, args: &[&str]) -> String {
        let output = Command::new("git")
            .args(["-c", "user.name=t", "-c", "user.email=t@t", "-c", "init.defaultBranch=main"])
            .args(["-c", "commit.gpgsign=false", "-c", "tag.gpgsign=false"])
            .args(args)
            .current_dir(dir)
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("HOME", home)
            .env("XDG_CONFIG_HOME", home)
            .output()
            .unwrap();
        assert!(output.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8(output.stdout).unwrap().trim().to_owned()
    }
}

#[cfg(test)]
mod tests {
    use comfyfleet_config::spec::SpecFormat;

    use super::test_repo::TestRepo;
    use super::*;

    #[tokio::test]
    async fn a_branch_resolves_to_its_head_commit() {
        let repo = TestRepo::new();
        repo.git(&["checkout", "--quiet", "-b", "dev"]);
        let dev = repo.commit("on dev");
        repo.git(&["checkout", "--quiet", "main"]);
        let main = repo.commit("on main");
        assert_eq!(resolve_ref("comfyui", &repo.url(), "dev").await.unwrap(), dev);
        assert_eq!(resolve_ref("comfyui", &repo.url(), "main").await.unwrap(), main);
        assert_eq!(resolve_ref("comfyui", &repo.url(), "HEAD").await.unwrap(), main);
        assert_eq!(resolve_ref("comfyui", &repo.url(), "refs/heads/dev").await.unwrap(), dev);
    }

    #[tokio::test]
    async fn an_annotated_tag_resolves_to_the_commit_it_points_at() {
        let repo = TestRepo::new();
        let tagged = repo.commit("release");
        repo.git(&["tag", "-a", "v1.0", "-m", "release 1.0"]);
        repo.commit("after the release");
        let tag_object = repo.git(&["rev-parse", "refs/tags/v1.0"]);
        assert_ne!(tag_object, tagged, "the tag must be annotated for this test to mean anything");
        assert_eq!(resolve_ref("comfyui", &repo.url(), "v1.0").await.unwrap(), tagged);
        assert_eq!(resolve_ref("comfyui", &repo.url(), "refs/tags/v1.0").await.unwrap(), tagged);
    }

    #[tokio::test]
    async fn a_lightweight_tag_resolves_to_its_commit() {
        let repo = TestRepo::new();
        let tagged = repo.commit("release");
        repo.git(&["tag", "v2"]);
        repo.commit("after the release");
        assert_eq!(resolve_ref("comfyui", &repo.url(), "v2").await.unwrap(), tagged);
    }

    #[tokio::test]
    async fn a_branch_wins_over_a_tag_of_the_same_name() {
        let repo = TestRepo::new();
        let tagged = repo.commit("tagged");
        repo.git(&["tag", "stable"]);
        repo.git(&["branch", "stable"]);
        repo.git(&["checkout", "--quiet", "stable"]);
        let branch = repo.commit("moved on");
        assert_ne!(branch, tagged);
        assert_eq!(resolve_ref("comfyui", &repo.url(), "stable").await.unwrap(), branch);
    }

    #[tokio::test]
    async fn a_full_commit_id_is_taken_without_asking_git() {
        let commit = "0123456789abcdef0123456789abcdef01234567";
        // The URL leads nowhere: any git call would fail.
        let url = "file:///nonexistent/comfyfleet/repo";
        assert_eq!(resolve_ref("comfyui", url, commit).await.unwrap(), commit);
        let sha256_commit = "ab".repeat(32);
        assert_eq!(resolve_ref("comfyui", url, &sha256_commit).await.unwrap(), sha256_commit);
    }

    #[tokio::test]
    async fn a_missing_ref_names_the_url_the_ref_and_what_exists() {
        let repo = TestRepo::new();
        repo.git(&["tag", "v1.0"]);
        let error = resolve_ref("custom_node KJNodes", &repo.url(), "v9.9").await.unwrap_err().to_string();
        assert_eq!(
            error,
            format!(
                "custom_node KJNodes: {} has no branch, tag or ref `v9.9` (it has main, v1.0); fix its ref",
                repo.url()
            )
        );
        let error = resolve_ref("comfyui", &repo.url(), "abc1234").await.unwrap_err().to_string();
        assert!(error.ends_with("(to pin a commit, write its full 40-digit id as the ref)"), "{error}");
    }

    #[tokio::test]
    async fn many_names_are_cut_at_ten() {
        let repo = TestRepo::new();
        for i in 0..12 {
            repo.git(&["branch", &format!("b{i:02}")]);
        }
        let error = resolve_ref("comfyui", &repo.url(), "nope").await.unwrap_err().to_string();
        assert!(
            error.contains("(it has b00, b01, b02, b03, b04, b05, b06, b07, b08, b09 and 3 more)"),
            "{error}"
        );
    }

    #[tokio::test]
    async fn an_unreachable_repository_names_the_url_and_what_git_said() {
        let repo = TestRepo::new();
        let url = repo.missing_url();
        let error = resolve_ref("comfyui", &url, "main").await.unwrap_err().to_string();
        let expected = format!("comfyui: `git ls-remote {url}` failed: fatal: ");
        assert!(error.starts_with(&expected), "{error}");
        assert!(error.contains("does not appear to be a git repository"), "{error}");
        assert!(error.ends_with("check the URL and that the controller can reach and read the repository"));
        assert!(!error.contains('\n'), "{error}");
    }

    fn spec(comfyui: &str, node: &str) -> Spec {
        let text = format!(
            "name = \"render\"\npython = \"3.12\"\n\n[comfyui]\ngit = \"{comfyui}\"\nref = \"main\"\n\
             commit = \"{}\"\n\n[torch]\nversion = \"2.8.0\"\ncuda = [\"cu128\"]\n\n\
             [[custom_node]]\nname = \"nodes\"\ngit = \"{node}\"\nref = \"v1\"\n",
            "f".repeat(40)
        );
        Spec::parse("spec.toml", &text, SpecFormat::Toml).unwrap()
    }

    #[tokio::test]
    async fn pinning_fills_every_commit_and_overwrites_a_written_one() {
        let comfyui = TestRepo::new();
        let comfyui_head = comfyui.commit("second");
        let nodes = TestRepo::new();
        let nodes_v1 = nodes.commit("v1");
        nodes.git(&["tag", "-a", "v1", "-m", "v1"]);
        let mut spec = spec(&comfyui.url(), &nodes.url());
        let pins = pin_spec(
            &mut spec,
            &crate::use_cases::sources::source_policy::SourcePolicy::permissive(),
            &SourceCredentials::default(),
            &ChildEnvironment::default(),
        )
        .await
        .unwrap();
        assert_eq!(
            pins,
            [
                GitPin {
                    source: "comfyui".into(),
                    git: comfyui.url(),
                    reference: "main".into(),
                    commit: comfyui_head.clone()
                },
                GitPin {
                    source: "custom_node nodes".into(),
                    git: nodes.url(),
                    reference: "v1".into(),
                    commit: nodes_v1.clone()
                },
            ]
        );
        assert_eq!(spec.comfyui.commit, Some(comfyui_head));
        assert_eq!(spec.custom_nodes.first().and_then(|node| node.commit.clone()), Some(nodes_v1));
    }

    #[tokio::test]
    async fn pinning_reports_every_failure_at_once() {
        let comfyui = TestRepo::new();
        let mut spec = spec(&comfyui.missing_url(), &comfyui.url());
        let errors = pin_spec(
            &mut spec,
            &crate::use_cases::sources::source_policy::SourcePolicy::permissive(),
            &SourceCredentials::default(),
            &ChildEnvironment::default(),
        )
        .await
        .unwrap_err();
        assert_eq!(errors.0.len(), 2, "{errors}");
        let text = errors.to_string();
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("comfyui: `git ls-remote "), "{text}");
        assert!(lines[1].starts_with("custom_node nodes: "), "{text}");
        assert!(lines[1].contains("has no branch, tag or ref `v1`"), "{text}");
    }

    #[test]
    fn listings_are_read_leniently() {
        let listing = "0123456789abcdef0123456789abcdef01234567\tHEAD\n\
                       not a line\n\
                       0123456789abcdef0123456789abcdef0123456\trefs/heads/short-id\n\
                       1111111111111111111111111111111111111111\trefs/pull/1/head\n";
        let refs = parse_listing(listing);
        assert_eq!(refs.len(), 2);
        assert_eq!(pick_commit(&refs, "refs/pull/1/head"), Some("1111111111111111111111111111111111111111"));
        assert_eq!(pick_commit(&refs, "short-id"), None);
        assert_eq!(available_names(&refs), "it has no branches or tags");
    }

    #[test]
    fn stderr_keeps_its_last_lines_on_one_line() {
        let stderr = "warning: a\n\nfatal: b\r\n  c \u{1b}[31md\n";
        assert_eq!(last_lines(stderr), "warning: a fatal: b c  [31md");
        let many: String = (0..20).map(|i| format!("line {i}\n")).collect();
        assert_eq!(last_lines(&many), "line 14 line 15 line 16 line 17 line 18 line 19");
    }
}
