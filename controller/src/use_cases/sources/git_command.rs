//! How the controller starts git. The controller holds the CA key and every stored
//! secret, so the git it runs for a spec's repositories must run nothing those
//! repositories bring and see nothing of the controller's own environment:
//!
//! - the daemons' allow-listed environment (`comfyfleet_daemon::child_env`), plus the
//!   source credential's helper variables the caller adds, never the controller's own;
//! - no hooks, whatever any configuration says (`core.hooksPath=/dev/null`: fetch and
//!   update-ref would run `reference-transaction`), no fsmonitor, no submodules;
//! - the transports a spec may name and nothing else: `ext::` and `fd::` would run
//!   commands or use descriptors named by the URL, and an unknown `helper::` would
//!   start `git-remote-helper` (refused by the git policy too, and here by git itself);
//! - no prompts, a death with the controller (a killed controller leaves no fetch
//!   running), and kill on drop (a cancelled apply stops its git).
//!
//! The controller only ever makes bare repositories and reads objects from them (no
//! checkout), so a repository's `.gitattributes` filters and its config never apply.

use comfyfleet_daemon::child_env::ChildEnvironment;
use tokio::process::Command;

/// `-c` settings every controller git gets, before its own arguments.
const HARDENING: &[&str] = &[
    "core.hooksPath=/dev/null",
    "core.fsmonitor=false",
    "fetch.recurseSubmodules=false",
    "submodule.recurse=false",
    "protocol.allow=never",
    "protocol.https.allow=always",
    "protocol.http.allow=always",
    "protocol.ssh.allow=always",
    "protocol.git.allow=always",
    // Local paths and file:// are read only with --git-allow-file (the git policy).
    "protocol.file.allow=always",
];

/// A `git` command hardened as the module says; the caller adds its arguments.
pub fn git(children: &ChildEnvironment) -> Command {
    let mut command = Command::new("git");
    children.apply(&mut command);
    for setting in HARDENING {
        command.arg("-c").arg(setting);
    }
    // A daemon has nobody to answer a password prompt: fail instead of waiting.
    command.env("GIT_TERMINAL_PROMPT", "0").env("GIT_ASKPASS", "").kill_on_drop(true);
    comfyfleet_daemon::children::die_with_parent(&mut command);
    command
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    async fn run(mut command: Command, args: &[&str]) -> std::process::Output {
        command.args(args).output().await.unwrap()
    }

    #[tokio::test]
    async fn git_refuses_remote_helpers() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("ran");
        // `ext::` would run this command if git allowed the transport.
        let url = format!("ext::sh -c touch% {}", marker.display());
        let output = run(git(&ChildEnvironment::default()), &["ls-remote", "--", &url]).await;
        assert!(!output.status.success());
        assert!(!marker.exists(), "the ext:: transport ran a command");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains("transport 'ext' not allowed"), "{stderr}");
    }

    #[tokio::test]
    async fn no_hook_runs_even_in_a_repository_that_has_one() {
        let dir = tempfile::tempdir().unwrap();
        let repo = dir.path().join("repo.git");
        let marker = dir.path().join("ran");
        let repo_text = repo.to_str().unwrap();
        assert!(
            run(git(&ChildEnvironment::default()), &["init", "--quiet", "--bare", repo_text])
                .await
                .status
                .success()
        );
        let hook = repo.join("hooks/reference-transaction");
        std::fs::write(&hook, format!("#!/bin/sh\ntouch {}\n", marker.display())).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o755)).unwrap();
        let tree = run(
            git(&ChildEnvironment::default()),
            &["--git-dir", repo_text, "hash-object", "-w", "-t", "tree", "/dev/null"],
        )
        .await;
        let tree = String::from_utf8_lossy(&tree.stdout).trim().to_owned();
        let commit = run(
            git(&ChildEnvironment::default()),
            &[
                "--git-dir",
                repo_text,
                "-c",
                "user.name=t",
                "-c",
                "user.email=t@t",
                "commit-tree",
                &tree,
                "-m",
                "x",
            ],
        )
        .await;
        let commit = String::from_utf8_lossy(&commit.stdout).trim().to_owned();
        let update = |reference: &'static str, command: Command| {
            let commit = commit.clone();
            async move {
                let output = run(command, &["--git-dir", repo_text, "update-ref", reference, &commit]).await;
                assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
            }
        };
        update("refs/heads/hardened", git(&ChildEnvironment::default())).await;
        assert!(!marker.exists(), "a hook ran");
        // The same call from a plain git runs it: the hook is real.
        update("refs/heads/plain", Command::new("git")).await;
        assert!(Path::new(&marker).exists(), "the hook did not run from a plain git either");
    }
}
