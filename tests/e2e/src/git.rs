//! Local git repositories for tests: stand-ins for ComfyUI and custom nodes that
//! the controller pins and (later) agents clone, reached over `file://`.

use std::path::{Path, PathBuf};
use std::process::Command;

/// A working repository on disk with a `main` branch.
pub struct GitRepo {
    pub path: PathBuf,
}

impl GitRepo {
    /// `git init` at `path` with one commit holding `files` (relative path, content).
    pub fn create(path: &Path, files: &[(&str, &str)]) -> GitRepo {
        std::fs::create_dir_all(path).unwrap();
        let repo = GitRepo { path: path.to_owned() };
        repo.git(&["init", "--quiet", "--initial-branch=main"]);
        repo.commit(files, "initial");
        repo
    }

    /// Writes `files` and commits them; returns the new commit id.
    pub fn commit(&self, files: &[(&str, &str)], message: &str) -> String {
        for (name, content) in files {
            let file = self.path.join(name);
            std::fs::create_dir_all(file.parent().unwrap()).unwrap();
            std::fs::write(file, content).unwrap();
        }
        self.git(&["add", "--all"]);
        self.git(&["commit", "--quiet", "--allow-empty", "-m", message]);
        self.head()
    }

    pub fn head(&self) -> String {
        self.rev_parse("HEAD")
    }

    /// The commit a ref points at (tags peeled).
    pub fn rev_parse(&self, reference: &str) -> String {
        self.git(&["rev-parse", &format!("{reference}^{{commit}}")]).trim().to_owned()
    }

    /// An annotated tag at HEAD.
    pub fn tag(&self, name: &str) {
        self.git(&["tag", "-a", name, "-m", name]);
    }

    pub fn url(&self) -> String {
        format!("file://{}", self.path.display())
    }

    /// Runs git in the repository with a config that does not depend on the machine's.
    pub fn git(&self, args: &[&str]) -> String {
        let output = Command::new("git")
            .current_dir(&self.path)
            .args(["-c", "user.name=comfyfleet-test", "-c", "user.email=test@comfyfleet.invalid"])
            .args(["-c", "commit.gpgsign=false", "-c", "tag.gpgsign=false"])
            .args(args)
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .output()
            .unwrap();
        assert!(output.status.success(), "git {args:?} failed: {}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8_lossy(&output.stdout).into_owned()
    }
}
