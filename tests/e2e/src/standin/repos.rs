//! Stand-in git repositories, reached over `file://`: ComfyUI (ComfyUI's real
//! requirements.txt and stdlib-only Python laid out as ComfyUI 0.3.64 is: `main.py`,
//! `comfy/cli_args.py`, `app/database/db.py` with migrations in
//! `alembic_db/versions`, `folder_paths.py`) and two custom nodes whose
//! requirements try to replace torch, as the real ones do.

use std::path::Path;

use super::catalog::COMFYUI_REQUIREMENTS;
use crate::git::GitRepo;

/// The stand-in ComfyUI's `main.py`.
pub const COMFYUI_MAIN: &str = include_str!("comfyui/main.py");

/// Every file of the stand-in ComfyUI but `main.py` and `requirements.txt`.
const COMFYUI_FILES: [(&str, &str); 7] = [
    ("comfy/__init__.py", ""),
    ("comfy/cli_args.py", include_str!("comfyui/comfy/cli_args.py")),
    ("app/__init__.py", ""),
    ("app/database/__init__.py", ""),
    ("app/database/db.py", include_str!("comfyui/app/database/db.py")),
    ("folder_paths.py", include_str!("comfyui/folder_paths.py")),
    (
        "alembic_db/versions/e9c714da8d57_init.py",
        include_str!("comfyui/alembic_db/versions/e9c714da8d57_init.py"),
    ),
];

/// The stand-in's first migration and the one [`StandinComfyui::commit_database_migration`] adds.
pub const FIRST_MIGRATION: &str = "e9c714da8d57";
pub const SECOND_MIGRATION: &str = "4a1f0c2b9d3e";

/// The tag of the first ComfyUI commit.
pub const COMFYUI_TAG: &str = "v0.3.64";

const BEFORE_LISTENING: &str = "    # standin: before listening\n";
const REPORTED_VERSION: &str = "REPORTED_PYTORCH_VERSION = None  # standin: reported pytorch_version\n";

/// The stand-in ComfyUI repository, on `main`.
pub struct StandinComfyui {
    pub repo: GitRepo,
}

impl StandinComfyui {
    /// `git init` at `path` with ComfyUI's files, tagged `v0.3.64`.
    pub fn create(path: &Path) -> Self {
        let mut files = vec![("main.py", COMFYUI_MAIN), ("requirements.txt", COMFYUI_REQUIREMENTS)];
        files.extend(COMFYUI_FILES);
        let repo = GitRepo::create(path, &files);
        repo.tag(COMFYUI_TAG);
        Self { repo }
    }

    /// Commits a second database migration (a column added to `model`): a ComfyUI that
    /// moves its database to a schema the first cannot open. Returns the commit.
    pub fn commit_database_migration(&self) -> String {
        let migration = format!(
            "\"\"\"add model hash (comfyfleet stand-in migration)\"\"\"\nrevision = \"{SECOND_MIGRATION}\"\n\
             down_revision = \"{FIRST_MIGRATION}\"\n\n\ndef upgrade(connection):\n    \
             connection.execute(\"ALTER TABLE model ADD COLUMN hash TEXT\")\n"
        );
        self.repo.commit(
            &[(&format!("alembic_db/versions/{SECOND_MIGRATION}_add_model_hash.py"), &migration)],
            "Add a model hash column",
        )
    }

    pub fn url(&self) -> String {
        self.repo.url()
    }

    /// Commits a `main.py` that exits with "broken build" before it listens: a
    /// ComfyUI that never passes its health check. Returns the commit.
    pub fn commit_crash_at_start(&self) -> String {
        let main = COMFYUI_MAIN.replacen(BEFORE_LISTENING, "    raise SystemExit(\"broken build\")\n", 1);
        assert_ne!(main, COMFYUI_MAIN, "main.py lost its marker");
        self.repo.commit(&[("main.py", &main)], "Break the start")
    }

    /// Commits a `main.py` whose `/system_stats` reports `pytorch_version` instead
    /// of the installed torch's: a health check that must fail. Returns the commit.
    pub fn commit_reporting_pytorch_version(&self, pytorch_version: &str) -> String {
        let line = format!("REPORTED_PYTORCH_VERSION = \"{pytorch_version}\"\n");
        let main = COMFYUI_MAIN.replacen(REPORTED_VERSION, &line, 1);
        assert_ne!(main, COMFYUI_MAIN, "main.py lost its marker");
        self.repo.commit(&[("main.py", &main)], &format!("Report torch {pytorch_version}"))
    }

    /// Commits a `main.py` that waits `seconds` before it listens: a slow start, for
    /// catching an agent in its health check. Returns the commit.
    pub fn commit_slow_start(&self, seconds: u32) -> String {
        let wait = format!("    import time; time.sleep({seconds})  # standin: slow start\n");
        let main = COMFYUI_MAIN.replacen(BEFORE_LISTENING, &wait, 1);
        assert_ne!(main, COMFYUI_MAIN, "main.py lost its marker");
        self.repo.commit(&[("main.py", &main)], &format!("Start {seconds} s late"))
    }

    /// Commits the working `main.py` again (after a broken variant). Returns the commit.
    pub fn commit_working(&self) -> String {
        self.repo.commit(&[("main.py", COMFYUI_MAIN)], "Fix the start")
    }
}

/// ComfyUI and the two custom nodes, under one directory.
pub struct StandinRepos {
    pub comfyui: StandinComfyui,
    /// `ComfyUI-KJNodes`: needs `einops`, and asks for `torch==2.3.0`.
    pub kjnodes: GitRepo,
    /// `ComfyUI-VideoHelperSuite`: needs `imageio-ffmpeg` and `numpy>=1.25.0`, and
    /// asks for `torch-cpu`.
    pub video_helper_suite: GitRepo,
}

impl StandinRepos {
    /// Both custom nodes at `main`, for a spec.
    pub fn custom_nodes(&self) -> Vec<super::TestNode> {
        [&self.kjnodes, &self.video_helper_suite]
            .iter()
            .map(|repo| super::TestNode::new(&repo.url(), "main"))
            .collect()
    }
}

/// Creates `dir/ComfyUI`, `dir/ComfyUI-KJNodes` and `dir/ComfyUI-VideoHelperSuite`.
pub fn create_standin_repos(dir: &Path) -> StandinRepos {
    let comfyui = StandinComfyui::create(&dir.join("ComfyUI"));
    let kjnodes = GitRepo::create(
        &dir.join("ComfyUI-KJNodes"),
        &[
            (
                "__init__.py",
                "# Stand-in ComfyUI-KJNodes: loads only where its requirements were installed.\n\
                 import einops  # noqa: F401\n\nNODE_CLASS_MAPPINGS = {}\nNODE_DISPLAY_NAME_MAPPINGS = {}\n",
            ),
            // The real node's file once pinned torch; an agent must not let it.
            ("requirements.txt", "einops\ntorch==2.3.0\n"),
        ],
    );
    let video_helper_suite = GitRepo::create(
        &dir.join("ComfyUI-VideoHelperSuite"),
        &[
            (
                "__init__.py",
                "# Stand-in ComfyUI-VideoHelperSuite: loads only where its requirements were installed.\n\
                 import imageio_ffmpeg  # noqa: F401\n\n\
                 class VHS_VideoCombine:\n    pass\n\n\
                 NODE_CLASS_MAPPINGS = {\"VHS_VideoCombine\": VHS_VideoCombine}\n",
            ),
            ("requirements.txt", "torch-cpu\nnumpy>=1.25.0\nimageio-ffmpeg\n"),
        ],
    );
    StandinRepos { comfyui, kjnodes, video_helper_suite }
}
