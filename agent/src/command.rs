//! Running the programs the executor drives (uv, git, the venv's python): no shell,
//! an environment built from the daemons' allow-list (`comfyfleet_daemon::child_env`:
//! the agent's own secrets, such as its join token, never reach a child), output
//! captured line by line for progress and kept as a tail for reports, a deadline, and
//! death with the agent.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::Command;

/// Lines of output a report keeps per step.
const TAIL_LINES: usize = 40;
const TAIL_BYTES: usize = 4096;
/// Longer lines (a progress bar, minified JSON) are cut.
const MAX_LINE: usize = 512;
/// Arguments an error shows before it says how many more there were: a locked
/// install passes one `--find-links` per file, kilobytes that say nothing useful.
const SHOWN_ARGS: usize = 8;

pub use comfyfleet_daemon::child_env::ChildEnvironment;

/// One program to run.
#[derive(Debug, Clone)]
pub struct Invocation {
    program: PathBuf,
    args: Vec<OsString>,
    cwd: Option<PathBuf>,
    env: Vec<(String, OsString)>,
    timeout: Duration,
}

impl Invocation {
    pub fn new(program: impl AsRef<Path>) -> Self {
        Self {
            program: program.as_ref().to_owned(),
            args: Vec::new(),
            cwd: None,
            env: Vec::new(),
            timeout: Duration::from_secs(3600),
        }
    }

    pub fn arg(mut self, arg: impl Into<OsString>) -> Self {
        self.args.push(arg.into());
        self
    }

    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    pub fn cwd(mut self, dir: impl AsRef<Path>) -> Self {
        self.cwd = Some(dir.as_ref().to_owned());
        self
    }

    pub fn env(mut self, name: &str, value: impl Into<OsString>) -> Self {
        self.env.push((name.to_owned(), value.into()));
        self
    }

    /// Several variables at once (a source credential's for uv or git).
    pub fn envs(mut self, vars: Vec<(String, String)>) -> Self {
        self.env.extend(vars.into_iter().map(|(name, value)| (name, value.into())));
        self
    }

    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The command line as people read it in errors: the program, its first
    /// [`SHOWN_ARGS`] arguments and how many more there were, with credentials in URLs
    /// hidden.
    pub fn display(&self) -> String {
        let mut line = self.words(SHOWN_ARGS);
        if self.args.len() > SHOWN_ARGS {
            line.push_str(&format!(" … {} more arguments", self.args.len() - SHOWN_ARGS));
        }
        line
    }

    /// The whole command line, credentials hidden: for the agent's debug log.
    pub fn full_display(&self) -> String {
        self.words(self.args.len())
    }

    fn words(&self, args: usize) -> String {
        std::iter::once(self.program.as_os_str())
            .chain(self.args.iter().take(args).map(OsString::as_os_str))
            .map(|arg| redact_credentials(&arg.to_string_lossy()))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error("cannot start `{argv}`: {source}")]
    Spawn { argv: String, source: std::io::Error },
    #[error("`{argv}` failed ({status})")]
    Failed { argv: String, status: String, tail: String },
    #[error("`{argv}` did not finish within {seconds} s and was killed")]
    TimedOut { argv: String, seconds: u64, tail: String },
}

impl CommandError {
    /// The error with the last line the command printed (where uv and git say why).
    pub fn summary(&self) -> String {
        let last = self.tail().lines().rev().find(|line| !line.trim().is_empty()).unwrap_or_default();
        if last.is_empty() { self.to_string() } else { format!("{self}: {}", last.trim()) }
    }

    /// What the command printed last.
    pub fn tail(&self) -> &str {
        match self {
            CommandError::Spawn { .. } => "",
            CommandError::Failed { tail, .. } | CommandError::TimedOut { tail, .. } => tail,
        }
    }
}

/// The last lines of a command's output.
#[derive(Debug, Default)]
pub struct OutputTail {
    lines: VecDeque<String>,
    bytes: usize,
}

impl OutputTail {
    pub fn push(&mut self, line: &str) {
        let line = truncate(line, MAX_LINE).to_owned();
        self.bytes += line.len() + 1;
        self.lines.push_back(line);
        while self.lines.len() > TAIL_LINES || self.bytes > TAIL_BYTES {
            match self.lines.pop_front() {
                Some(dropped) => self.bytes -= dropped.len() + 1,
                None => break,
            }
        }
    }

    pub fn text(&self) -> String {
        self.lines.iter().map(String::as_str).collect::<Vec<_>>().join("\n")
    }
}

/// Runs `invocation` to the end, calling `on_line` with every line of its output
/// (stdout and stderr together); returns the tail of that output.
pub async fn run(
    invocation: &Invocation,
    environment: &ChildEnvironment,
    on_line: &mut (dyn FnMut(&str) + Send),
) -> Result<String, CommandError> {
    let argv = invocation.display();
    let mut command = Command::new(&invocation.program);
    command.args(&invocation.args).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    environment.apply(&mut command);
    for (name, value) in &invocation.env {
        command.env(name, value);
    }
    if let Some(cwd) = &invocation.cwd {
        command.current_dir(cwd);
    }
    command.kill_on_drop(true);
    comfyfleet_daemon::children::die_with_parent(&mut command);
    tracing::debug!(argv = %invocation.full_display(), "running");
    let mut child = command.spawn().map_err(|source| CommandError::Spawn { argv: argv.clone(), source })?;

    let mut stdout = child.stdout.take().map(|out| BufReader::new(out).lines());
    let mut stderr = child.stderr.take().map(|err| BufReader::new(err).lines());
    let mut tail = OutputTail::default();
    let read_all = async {
        loop {
            let line = tokio::select! {
                line = next_line(&mut stdout), if stdout.is_some() => line,
                line = next_line(&mut stderr), if stderr.is_some() => line,
                else => break,
            };
            if let Some(line) = line {
                on_line(&line);
                tail.push(&line);
            }
        }
        child.wait().await
    };
    let status = match tokio::time::timeout(invocation.timeout, read_all).await {
        Ok(Ok(status)) => status,
        Ok(Err(source)) => return Err(CommandError::Spawn { argv, source }),
        Err(_) => {
            return Err(CommandError::TimedOut {
                argv,
                seconds: invocation.timeout.as_secs(),
                tail: tail.text(),
            });
        }
    };
    if status.success() {
        Ok(tail.text())
    } else {
        Err(CommandError::Failed { argv, status: status.to_string(), tail: tail.text() })
    }
}

/// The next line of one stream; the stream is set to `None` at its end.
async fn next_line<R: AsyncRead + Unpin>(
    stream: &mut Option<tokio::io::Lines<BufReader<R>>>,
) -> Option<String> {
    let lines = stream.as_mut()?;
    match lines.next_line().await {
        Ok(Some(line)) => Some(line),
        Ok(None) | Err(_) => {
            *stream = None;
            None
        }
    }
}

fn truncate(text: &str, limit: usize) -> &str {
    if text.len() <= limit {
        return text;
    }
    let mut end = limit;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// `https://user:token@mirror/simple` → `https://***@mirror/simple`.
pub fn redact_credentials(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("://") {
        let (before, after) = rest.split_at(start + 3);
        out.push_str(before);
        let authority_end = after.find(['/', '?', '#', ' ']).unwrap_or(after.len());
        match after[..authority_end].rfind('@') {
            Some(at) => {
                out.push_str("***");
                out.push_str(&after[at..authority_end]);
            }
            None => out.push_str(&after[..authority_end]),
        }
        rest = &after[authority_end..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_in_urls_are_hidden() {
        assert_eq!(
            redact_credentials("--index https://bot:s3cret@mirror.example/simple --x"),
            "--index https://***@mirror.example/simple --x"
        );
        assert_eq!(redact_credentials("https://pypi.org/simple"), "https://pypi.org/simple");
        assert_eq!(redact_credentials("file:///srv/a@b"), "file:///srv/a@b");
    }

    #[test]
    fn long_command_lines_are_summarised_in_errors() {
        let mut install = Invocation::new("/usr/bin/uv").args(["pip", "install", "--no-deps"]);
        for n in 0..37 {
            install = install.arg("--find-links").arg(format!("/var/lib/comfyfleet/cache/wheels/{n:064}"));
        }
        let shown = install.display();
        assert!(shown.starts_with("/usr/bin/uv pip install --no-deps --find-links"), "{shown}");
        assert!(shown.ends_with(" … 69 more arguments"), "{shown}");
        assert!(shown.len() < 300, "{} bytes: {shown}", shown.len());
        assert!(install.full_display().len() > 4096);
        let short = Invocation::new("git").args(["fetch", "https://bot:s3cret@git.example/x"]);
        assert_eq!(short.display(), "git fetch https://***@git.example/x");
    }

    #[test]
    fn the_tail_keeps_the_last_lines() {
        let mut tail = OutputTail::default();
        for i in 0..100 {
            tail.push(&format!("line {i}"));
        }
        let text = tail.text();
        assert!(text.starts_with("line 60\n") && text.ends_with("line 99"), "{text}");
    }

    #[tokio::test]
    async fn output_and_failures_are_captured_without_the_agents_environment() {
        // cargo runs tests with CARGO_MANIFEST_DIR set; it is not on the allow-list.
        assert!(std::env::var_os("CARGO_MANIFEST_DIR").is_some());
        let environment = ChildEnvironment::from_process(&[]);
        let mut seen = Vec::new();
        let invocation = Invocation::new("sh")
            .args(["-c", "echo out; echo err >&2; echo \"secret=$CARGO_MANIFEST_DIR\"; exit 3"]);
        let error = run(&invocation, &environment, &mut |line| seen.push(line.to_owned())).await.unwrap_err();
        assert!(seen.contains(&"out".to_owned()) && seen.contains(&"err".to_owned()));
        assert!(seen.contains(&"secret=".to_owned()), "{seen:?}");
        let passed = ChildEnvironment::from_process(&["CARGO_MANIFEST_DIR".to_owned()]);
        let mut seen = Vec::new();
        let echo = Invocation::new("sh").args(["-c", "echo \"secret=$CARGO_MANIFEST_DIR\""]);
        run(&echo, &passed, &mut |line| seen.push(line.to_owned())).await.unwrap();
        assert_ne!(seen, vec!["secret=".to_owned()], "--pass-env names reach the child");
        assert!(
            error.to_string().contains("sh -c") && error.to_string().contains("exit status: 3"),
            "{error}"
        );
        assert!(error.tail().contains("err"));

        let slow = Invocation::new("sleep").arg("5").timeout(Duration::from_millis(100));
        let error = run(&slow, &environment, &mut |_| {}).await.unwrap_err();
        assert!(matches!(error, CommandError::TimedOut { .. }), "{error}");
    }
}
