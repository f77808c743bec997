//! Stand-in git repositories, reached over `file://`: ComfyUI (ComfyUI's real
//! requirements.txt and stdlib-only Python laid out as ComfyUI 0.3.64 is: `main.py`,
//! `comfyui_version.py`, `comfy/cli_args.py`, `app/logger.py`, `app/database/db.py`
//! with migrations in `alembic_db/versions`, `folder_paths.py`,
//! `utils/extra_config.py`; tagged `v0.3.64` on `main`, and `v0.33.0` on a branch;
//! a later commit on `main` can turn it into 0.33.0 too) and two custom
//! nodes whose requirements try to replace torch, as the real ones do.

use std::path::Path;

use super::catalog::COMFYUI_REQUIREMENTS;
use crate::git::GitRepo;

/// The stand-in ComfyUI's `main.py`.
pub const COMFYUI_MAIN: &str = include_str!("comfyui/main.py");

/// Every file of the stand-in ComfyUI but `main.py` and `requirements.txt`.
const COMFYUI_FILES: [(&str, &str); 11] = [
    ("comfyui_version.py", COMFYUI_VERSION_FILE),
    ("comfy/__init__.py", ""),
    ("comfy/cli_args.py", COMFYUI_CLI_ARGS),
    ("app/__init__.py", ""),
    ("app/logger.py", include_str!("comfyui/app/logger.py")),
    ("utils/__init__.py", ""),
    ("utils/extra_config.py", include_str!("comfyui/utils/extra_config.py")),
    ("app/database/__init__.py", ""),
    ("app/database/db.py", include_str!("comfyui/app/database/db.py")),
    ("folder_paths.py", COMFYUI_FOLDER_PATHS),
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
/// The tag of the stand-in's 0.33.0 (on its `release-0.33` branch): what the example
/// spec pins.
pub const COMFYUI_0_33_TAG: &str = "v0.33.0";

const COMFYUI_VERSION_FILE: &str = include_str!("comfyui/comfyui_version.py");
const COMFYUI_CLI_ARGS: &str = include_str!("comfyui/comfy/cli_args.py");
const COMFYUI_FOLDER_PATHS: &str = include_str!("comfyui/folder_paths.py");

/// What ComfyUI 0.33.0 changed in the files the stand-in has, as marker → text
/// (read from its `comfy/cli_args.py` and `folder_paths.py`): `--models-directory`,
/// which moves every model folder, and six more model folder types (`datasets` is
/// under the base path, not a model folder).
const COMFYUI_0_33_CLI_ARGS: (&str, &str) = (
    "# standin: later options\n",
    r#"def is_valid_directory(path):
    if not os.path.exists(path):
        raise argparse.ArgumentTypeError(f"The path '{path}' does not exist.")
    if not os.path.isdir(path):
        raise argparse.ArgumentTypeError(f"'{path}' is not a directory.")
    return path


parser.add_argument("--models-directory", type=is_valid_directory, default=None, help="Set the ComfyUI models directory. Overrides the models folder in --base-directory.")

parser.add_argument("--enable-manager", action="store_true", help="Enable the ComfyUI-Manager feature.")
manager_group = parser.add_mutually_exclusive_group()
manager_group.add_argument("--disable-manager-ui", action="store_true", help="Disables only the ComfyUI-Manager UI and endpoints. Scheduled installations and similar background tasks will still operate.")
manager_group.add_argument("--enable-manager-legacy-ui", action="store_true", help="Enables the legacy UI of ComfyUI-Manager. Implies --enable-manager.")
"#,
);
const COMFYUI_0_33_MODELS_DIR: (&str, &str) = (
    "models_dir = os.path.join(base_path, \"models\")  # standin: models_dir\n",
    r#"if args.models_directory:
    models_dir = os.path.abspath(args.models_directory)
else:
    models_dir = os.path.join(base_path, "models")

"#,
);
const COMFYUI_0_33_FOLDERS: (&str, &str) = (
    "# standin: later folders\n",
    r#"folder_names_and_paths["latent_upscale_models"] = ([os.path.join(models_dir, "latent_upscale_models")], supported_pt_extensions)

folder_names_and_paths["datasets"] = ([os.path.join(base_path, "datasets")], set())

folder_names_and_paths["background_removal"] = ([os.path.join(models_dir, "background_removal")], supported_pt_extensions)

folder_names_and_paths["frame_interpolation"] = ([os.path.join(models_dir, "frame_interpolation")], supported_pt_extensions)

folder_names_and_paths["geometry_estimation"] = ([os.path.join(models_dir, "geometry_estimation")], supported_pt_extensions)

folder_names_and_paths["optical_flow"] = ([os.path.join(models_dir, "optical_flow")], supported_pt_extensions)

folder_names_and_paths["detection"] = ([os.path.join(models_dir, "detection")], supported_pt_extensions)
"#,
);

/// 0.33.0's `manager_requirements.txt` and the `requires-python` of its
/// `pyproject.toml`, as in the real 0.33.0 tree (the stand-in's requirements.txt,
/// ComfyUI's of a later commit, already has comfy-kitchen).
const COMFYUI_0_33_MANAGER_REQUIREMENTS: &str = "comfyui_manager==4.2.2\n";
const COMFYUI_0_33_PYPROJECT: &str =
    "[project]\nname = \"ComfyUI\"\nversion = \"0.33.0\"\nrequires-python = \">=3.10\"\n";

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
        // 0.33.0 on a branch of its own, tagged as upstream is; `main` stays 0.3.64.
        let comfyui = Self { repo };
        comfyui.repo.git(&["checkout", "--quiet", "-b", "release-0.33"]);
        comfyui.commit_version_0_33();
        comfyui.repo.tag(COMFYUI_0_33_TAG);
        comfyui.repo.git(&["checkout", "--quiet", "main"]);
        comfyui
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

    /// Commits a `main.py` that exits with "broken GPU" before it listens when it is
    /// given the GPUs `visible` (its `CUDA_VISIBLE_DEVICES`): one instance of a
    /// machine's several that never passes its health check. Returns the commit.
    pub fn commit_crash_on_devices(&self, visible: &str) -> String {
        let crash = format!(
            "    if os.environ.get(\"CUDA_VISIBLE_DEVICES\") == {visible:?}:\n        raise SystemExit(\"broken GPU {visible}\")\n"
        );
        let main = COMFYUI_MAIN.replacen(BEFORE_LISTENING, &crash, 1);
        assert_ne!(main, COMFYUI_MAIN, "main.py lost its marker");
        self.repo.commit(&[("main.py", &main)], "Break the start on one GPU")
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

    /// Commits ComfyUI 0.33.0 (`comfyui_version.py`, and what 0.33.0 changed in
    /// `comfy/cli_args.py` and `folder_paths.py`, with its `manager_requirements.txt`
    /// and `pyproject.toml`): a ComfyUI that logs in colour with `[LEVEL] ` tags,
    /// takes `--models-directory` and `--enable-manager`, needs Python 3.10 and knows
    /// 25 model folder types.
    /// Returns the commit.
    pub fn commit_version_0_33(&self) -> String {
        let replace = |text: &str, (marker, with): (&str, &str)| {
            assert!(text.contains(marker), "the stand-in lost its marker {marker:?}");
            text.replacen(marker, with, 1)
        };
        let version = COMFYUI_VERSION_FILE.replacen("\"0.3.64\"", "\"0.33.0\"", 1);
        assert_ne!(version, COMFYUI_VERSION_FILE, "comfyui_version.py lost its version");
        let cli_args = replace(COMFYUI_CLI_ARGS, COMFYUI_0_33_CLI_ARGS);
        let folder_paths =
            replace(&replace(COMFYUI_FOLDER_PATHS, COMFYUI_0_33_MODELS_DIR), COMFYUI_0_33_FOLDERS);
        self.repo.commit(
            &[
                ("comfyui_version.py", version.as_str()),
                ("comfy/cli_args.py", cli_args.as_str()),
                ("folder_paths.py", folder_paths.as_str()),
                ("manager_requirements.txt", COMFYUI_0_33_MANAGER_REQUIREMENTS),
                ("pyproject.toml", COMFYUI_0_33_PYPROJECT),
            ],
            "ComfyUI 0.33.0",
        )
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
                 import einops  # noqa: F401\n\n\
                 class INTConstant:\n    RETURN_TYPES = (\"INT\",)\n    CATEGORY = \"KJNodes/constants\"\n\n    \
                 @classmethod\n    def INPUT_TYPES(cls):\n        return {\"required\": {\"value\": (\"INT\", {\"default\": 0})}}\n\n\
                 NODE_CLASS_MAPPINGS = {\"INTConstant\": INTConstant}\n\
                 NODE_DISPLAY_NAME_MAPPINGS = {\"INTConstant\": \"INT Constant\"}\n",
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
                 class VHS_VideoCombine:\n    RETURN_TYPES = ()\n    OUTPUT_NODE = True\n\n    \
                 @classmethod\n    def INPUT_TYPES(cls):\n        return {\"required\": {\"images\": (\"IMAGE\",)}}\n\n\
                 NODE_CLASS_MAPPINGS = {\"VHS_VideoCombine\": VHS_VideoCombine}\n",
            ),
            ("requirements.txt", "torch-cpu\nnumpy>=1.25.0\nimageio-ffmpeg\n"),
        ],
    );
    StandinRepos { comfyui, kjnodes, video_helper_suite }
}
