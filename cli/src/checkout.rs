//! ComfyUI's `requirements.txt` at the spec's ref, for `plan`'s per-machine notes
//! (comfy-kitchen): read with git (a one-commit, blob-only fetch into a temporary
//! repository; nothing of it runs). Best effort: a source `plan` cannot reach is
//! said, and the note left out.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use comfyfleet_config::comfyui_checkout::REQUIREMENTS;
use comfyfleet_config::spec::Spec;

/// The file's text, or why it could not be read.
pub fn comfyui_requirements(spec: &Spec) -> Result<String, String> {
    let source = &spec.comfyui;
    let wanted = source.commit.as_deref().unwrap_or(&source.reference);
    let dir = std::env::temp_dir().join(format!("comfyfleet-plan-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let result = fetch_and_read(&dir, &source.git, wanted);
    let _ = std::fs::remove_dir_all(&dir);
    result.map_err(|error| {
        format!("cannot read ComfyUI's {REQUIREMENTS} at {wanted} from {}: {error}", source.git)
    })
}

fn fetch_and_read(dir: &Path, url: &str, wanted: &str) -> Result<String, String> {
    git(dir, &["init", "--quiet", "--bare", "."])?;
    git(
        dir,
        &[
            "-c",
            "http.lowSpeedLimit=1000",
            "-c",
            "http.lowSpeedTime=30",
            "fetch",
            "--quiet",
            "--depth",
            "1",
            "--no-tags",
            "--",
            url,
            wanted,
        ],
    )?;
    git(dir, &["show", &format!("FETCH_HEAD:{REQUIREMENTS}")])
}

/// How long `plan` waits for one git command: a source it cannot reach costs the
/// note, not the plan.
const GIT_TIMEOUT: Duration = Duration::from_secs(60);

fn git(dir: &Path, args: &[&str]) -> Result<String, String> {
    std::fs::create_dir_all(dir).map_err(|error| format!("cannot create {}: {error}", dir.display()))?;
    let mut child = Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|error| format!("cannot run git: {error}"))?;
    let started = Instant::now();
    while child.try_wait().map_err(|error| format!("git: {error}"))?.is_none() {
        if started.elapsed() > GIT_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("git did not finish within {} s", GIT_TIMEOUT.as_secs()));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let output = child.wait_with_output().map_err(|error| format!("git: {error}"))?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let last = stderr.lines().rev().find(|line| !line.trim().is_empty()).unwrap_or("git failed");
        return Err(last.trim().to_owned());
    }
    String::from_utf8(output.stdout).map_err(|_| "the file is not UTF-8".to_owned())
}
