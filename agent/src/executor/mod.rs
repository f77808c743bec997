//! Builds one environment next to the running one: every step of DESIGN.md in order,
//! each idempotent and each reported with its start, progress, end, duration and
//! output. Finished steps are recorded in `envs/<revision>/.comfyfleet/progress.json`,
//! so an agent killed at any point resumes at the step it was in (and redoes that
//! step thoroughly). Nothing here touches `current` or the running ComfyUI.

mod git;
mod install_scripts;
mod locked;
mod models;
mod optimizations;
mod requirements;
mod torch;
mod uv;
mod venv;
mod verify;

use std::path::PathBuf;

use comfyfleet_config::Assignment;
use comfyfleet_config::convergence::{OptimizationOutcome, StepReport, StepState};
use comfyfleet_config::resolve::GpuFacts;
use comfyfleet_config::source_credentials::SourceCredentials;
use serde::{Deserialize, Serialize};

use crate::comfyui::ComfyuiFacts;
use crate::command::{self, ChildEnvironment, Invocation};
use crate::complete_record::{self, CompleteRecord};
use crate::download::Downloader;
use crate::layout::{EnvDir, Layout};
use crate::manager;
use crate::report::{Reporter, StepHandle};
use crate::session_state::{CurrentController, HeldSecrets};
pub use uv::PINNED_UV_VERSION;

/// The preparation steps, in order.
pub const STEPS: [&str; 11] = [
    "uv",
    "models",
    "comfyui",
    "custom-nodes",
    "venv",
    "torch",
    "requirements",
    "install-scripts",
    "optimizations",
    "verify",
    "complete",
];

/// Steps that run every time: finding uv is how later steps get its path, and
/// verification must see the environment as it is now.
const ALWAYS_RUN: [&str; 3] = ["uv", "verify", "complete"];

/// What the executor runs programs with.
#[derive(Debug, Clone)]
pub struct Tools {
    /// `--uv`: use this binary rather than looking on PATH or fetching one.
    pub uv_override: Option<PathBuf>,
    pub environment: ChildEnvironment,
    pub downloader: Downloader,
    /// The controller's package cache: locked files, kernel wheels and git commits
    /// come from there when set.
    pub package_cache: Option<PackageCacheClient>,
    /// `UV_PYTHON_DOWNLOADS` for `uv venv`: whether uv may fetch a missing Python.
    pub python_downloads: String,
    /// The source credentials the controller sent with the assignment (memory only).
    pub source_secrets: HeldSecrets,
}

/// The controller's package cache, as this agent reaches it.
#[derive(Debug, Clone)]
pub struct PackageCacheClient {
    /// The controller whose `/cache/v1` is used: the one the session is on.
    pub controller: CurrentController,
    /// Presents the machine's certificate; trusts only the controller's CA.
    pub downloader: Downloader,
    /// The machine's certificate and key in one PEM file, and the controller's CA:
    /// for uv and pip in `install.py` scripts (`SSL_CLIENT_CERT`, `SSL_CERT_FILE`).
    pub client_pem: PathBuf,
    pub ca_pem: PathBuf,
}

impl PackageCacheClient {
    /// `https://controller:7443/cache/v1`.
    fn base(&self) -> String {
        format!("{}/cache/v1", self.controller.url().trim_end_matches('/'))
    }

    pub fn file_url(&self, sha256: &str, file_name: &str) -> String {
        format!("{}/files/{sha256}/{}", self.base(), file_name.replace('%', "%25").replace('+', "%2B"))
    }

    /// The cache's copy of the index at `index` (its PEP 503/691 pages).
    pub fn index_url(&self, index: &str) -> String {
        format!(
            "{}/index/{}",
            self.base(),
            comfyfleet_config::lock::repository_key(index.trim_end_matches('/'))
        )
    }

    pub fn bundle_url(&self, git: &str, commit: &str) -> String {
        format!("{}/git/{}/{commit}.bundle", self.base(), comfyfleet_config::lock::repository_key(git))
    }
}

#[derive(Debug, Clone)]
pub struct Executor {
    layout: Layout,
    tools: Tools,
}

/// A step that failed, and why.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{step}: {message}")]
pub struct StepFailure {
    pub step: &'static str,
    pub message: String,
}

/// How a step ended when it did not fail.
struct StepOutcome {
    state: StepState,
    detail: String,
}

impl StepOutcome {
    fn done(detail: impl Into<String>) -> Self {
        Self { state: StepState::Done, detail: detail.into() }
    }

    fn skipped(detail: impl Into<String>) -> Self {
        Self { state: StepState::Skipped, detail: detail.into() }
    }
}

type StepResult = Result<StepOutcome, String>;

/// Which steps of this environment have finished, and which one was running.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Progress {
    running: Option<String>,
    done: Vec<StepReport>,
}

impl Progress {
    fn path(env: &EnvDir) -> PathBuf {
        env.meta().join("progress.json")
    }

    fn load(env: &EnvDir) -> Progress {
        std::fs::read(Self::path(env))
            .ok()
            .and_then(|text| serde_json::from_slice(&text).ok())
            .unwrap_or_default()
    }

    fn save(&self, env: &EnvDir) -> Result<(), String> {
        let json = serde_json::to_vec_pretty(self).unwrap_or_default();
        comfyfleet_daemon::files::write_atomic(&Self::path(env), &json, 0o644)
            .map_err(|error| format!("cannot record progress in {}: {error}", Self::path(env).display()))
    }

    fn finished(&self, step: &str) -> Option<&StepReport> {
        self.done.iter().find(|report| report.name == step)
    }
}

/// One preparation under way.
struct Build<'a> {
    tools: &'a Tools,
    layout: &'a Layout,
    assignment: &'a Assignment,
    env: EnvDir,
    gpus: &'a [GpuFacts],
    uv: Option<PathBuf>,
    /// Filled by the optimizations step, settled by verify.
    outcomes: Vec<OptimizationOutcome>,
    verified: Option<verify::Verification>,
    /// Whether the current step was interrupted in an earlier run: redo it fully.
    repair: bool,
    /// The spec's source credentials, for uv, git and downloads from the sources.
    credentials: SourceCredentials,
}

impl Build<'_> {
    /// The downloader for `url` at a source: with its credential, if it has one.
    fn direct_downloader(&self, url: &str) -> Downloader {
        self.tools.downloader.with_authorization(self.credentials.authorization(url))
    }

    fn uv(&self) -> Result<&PathBuf, String> {
        self.uv.as_ref().ok_or_else(|| "uv was not found in the uv step".to_owned())
    }

    /// Runs a program as part of `step`, streaming its output into the report.
    async fn run(&self, step: &mut StepHandle, invocation: Invocation) -> Result<String, String> {
        command::run(&invocation, &self.tools.environment, &mut |line| step.line(line))
            .await
            .map_err(|error| error.summary())
    }
}

impl Executor {
    pub fn new(layout: Layout, tools: Tools) -> Self {
        Self { layout, tools }
    }

    /// Builds and verifies the environment `assignment` asks for, or finds it built.
    pub async fn prepare(
        &self,
        assignment: &Assignment,
        gpus: &[GpuFacts],
        reporter: &Reporter,
    ) -> Result<CompleteRecord, StepFailure> {
        let env = self.layout.env(&assignment.revision_id);
        if let Some(record) = CompleteRecord::load(&env) {
            if record.matches(assignment) {
                return Ok(record);
            }
            // Built for another plan (this machine's hardware changed): build again.
            tracing::info!(env = %env.path.display(), "environment was built for another plan; rebuilding");
            let _ = std::fs::remove_file(env.complete_marker());
            let _ = std::fs::remove_file(Progress::path(&env));
        }
        std::fs::create_dir_all(env.meta()).map_err(|error| StepFailure {
            step: "uv",
            message: format!("cannot create {}: {error}", env.meta().display()),
        })?;
        let mut progress = Progress::load(&env);
        let (credentials, undelivered) = {
            let names = comfyfleet_config::source_credentials::credential_names(&assignment.spec);
            let held = if names.is_empty() {
                Default::default()
            } else {
                tracing::debug!(?names, "waiting for the session to deliver the credentials the spec names");
                self.tools.source_secrets.delivered().await
            };
            let mut credentials = SourceCredentials::default();
            credentials.add_spec(&assignment.spec, &held);
            let undelivered: Vec<String> =
                names.into_iter().filter(|name| !held.contains_key(name)).collect();
            (credentials, undelivered)
        };
        let mut build = Build {
            tools: &self.tools,
            layout: &self.layout,
            assignment,
            env: env.clone(),
            gpus,
            uv: None,
            outcomes: Vec::new(),
            verified: None,
            repair: false,
            credentials,
        };
        let mut record = None;
        for step in STEPS {
            if !ALWAYS_RUN.contains(&step)
                && let Some(done) = progress.finished(step)
            {
                reporter.record(done.clone());
                continue;
            }
            build.repair = progress.running.as_deref() == Some(step);
            progress.running = Some(step.to_owned());
            progress.save(&env).map_err(|message| StepFailure { step, message })?;
            let mut handle = reporter.begin(step);
            let result = match step {
                "uv" => uv::find_or_fetch(&mut build, &mut handle).await,
                "models" => models::fetch(&build, &mut handle).await,
                "comfyui" => git::comfyui(&build, &mut handle).await,
                "custom-nodes" => git::custom_nodes(&build, &mut handle).await,
                "venv" => venv::create(&build, &mut handle).await,
                "torch" => torch::install(&build, &mut handle).await,
                "requirements" => requirements::install(&build, &mut handle).await,
                "install-scripts" => install_scripts::run(&build, &mut handle).await,
                "optimizations" => optimizations::install(&mut build, &mut handle).await,
                "verify" => verify::run(&mut build, &mut handle).await,
                _ => complete(&build, &progress).map(|(outcome, complete)| {
                    record = Some(complete);
                    outcome
                }),
            };
            match result {
                Ok(outcome) => {
                    let report = handle.finish(outcome.state, outcome.detail);
                    progress.running = None;
                    progress.done.retain(|done| done.name != step);
                    progress.done.push(report);
                    progress.save(&env).map_err(|message| StepFailure { step, message })?;
                }
                Err(mut message) => {
                    if !undelivered.is_empty() {
                        // Most likely why a private source refused it.
                        message.push_str(&format!(
                            " (the controller sent no credential {} that the spec names: see `comfyfleet secrets \
                             list`)",
                            undelivered.join(", ")
                        ));
                    }
                    handle.finish(StepState::Failed, message.clone());
                    return Err(StepFailure { step, message });
                }
            }
        }
        record.ok_or_else(|| StepFailure {
            step: "complete",
            message: "no completion record was written".into(),
        })
    }
}

/// Writes `.complete`: the environment is ready to be switched to.
fn complete(build: &Build<'_>, progress: &Progress) -> Result<(StepOutcome, CompleteRecord), String> {
    let assignment = build.assignment;
    let verification = build.verified.as_ref().ok_or("verification did not run")?;
    let spec = &assignment.spec;
    let plan = &assignment.plan;
    let comfyui = ComfyuiFacts::read(&build.env.comfyui());
    manager::check_supported(spec, &comfyui)?;
    let mut comfyui_args = plan.comfyui_args.clone();
    for (name, args) in &plan.comfyui_args_when_verified {
        if build.outcomes.iter().any(|outcome| {
            &outcome.name == name
                && outcome.state == comfyfleet_config::convergence::OptimizationState::Verified
        }) {
            comfyui_args.extend(args.iter().cloned());
        }
    }
    let mut steps = progress.done.clone();
    steps.push(StepReport { state: StepState::Done, ..StepReport::pending("complete") });
    let record = CompleteRecord {
        revision_id: assignment.revision_id.clone(),
        environment: assignment.environment.clone(),
        revision_number: assignment.revision_number,
        plan: plan.clone(),
        comfyui_commit: assignment.comfyui_commit().to_owned(),
        custom_nodes: spec
            .custom_nodes
            .iter()
            .map(|node| comfyfleet_config::installed::InstalledNode {
                name: node.directory_name(),
                commit: node.commit.clone().unwrap_or_default(),
            })
            .collect(),
        python_version: verification.python.clone(),
        torch: verification.torch.clone(),
        optimizations: build.outcomes.clone(),
        distributions: optimizations::distributions(plan),
        steps,
        comfyui_args,
        port: spec.run.port,
        instances: spec.run.instances_plan(),
        drain_timeout_ms: duration_ms(spec.run.drain_timeout.0),
        health_timeout_ms: duration_ms(spec.run.health_timeout.0),
        completed_at: jiff::Timestamp::now(),
        comfyui: comfyui.clone(),
        optional_nodes: spec
            .custom_nodes
            .iter()
            .filter(|node| !node.required)
            .map(|node| node.directory_name())
            .collect(),
        nodes_without_classes: spec
            .custom_nodes
            .iter()
            .filter(|node| !node.expects_node_classes())
            .map(|node| node.directory_name())
            .collect(),
        manager: spec.run.manager,
        packages: Some(complete_record::installed_distributions(&build.env.venv())),
        custom_node_entries: Some(complete_record::custom_node_entries(&build.env.comfyui())),
    };
    record
        .save(&build.env)
        .map_err(|error| format!("cannot write {}: {error}", build.env.complete_marker().display()))?;
    Ok((StepOutcome::done(format!("{} is ready", record.describe())), record))
}

fn duration_ms(duration: std::time::Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}
