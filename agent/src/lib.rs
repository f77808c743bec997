//! comfyfleet's agent: enrolls once with a join token, keeps its identity on disk,
//! reports this machine's GPUs (NVML) and host facts, holds one long-lived
//! mutual-TLS session to the controller, and converges the machine on the
//! environment the controller assigns: built with uv next to the running one,
//! verified on this machine's GPUs, switched to without losing a render.
#![forbid(unsafe_code)]

mod activation;
mod backoff;
pub mod comfyui;
pub mod command;
pub mod complete_record;
mod converge;
mod database;
pub mod download;
pub mod enroll;
pub mod executor;
pub mod identity;
mod installed;
pub mod instances;
pub mod inventory;
pub mod journal;
pub mod layout;
pub mod link;
mod manager;
pub mod report;
pub mod service;
pub mod session_state;
mod supervise;

use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use comfyfleet_config::{JoinToken, Labels};
use tokio::sync::{Notify, watch};

use crate::command::ChildEnvironment;
use crate::converge::Converger;
use crate::download::Downloader;
use crate::enroll::{EnrollError, Enrollment};
use crate::executor::PackageCacheClient;
use crate::executor::{Executor, Tools};
use crate::identity::{IdentityDir, IdentityError};
use crate::inventory::{InventoryCollector, NvmlProbe, kernel_hostname};
use crate::journal::Journal;
use crate::layout::Layout;
use crate::link::{Link, LinkError};
use crate::report::Reporter;
use crate::service::ComfyuiService;
use crate::session_state::CurrentController;

#[derive(Debug, Clone)]
pub struct AgentOptions {
    /// The controllers' URLs; optional once enrolled (the identity remembers them).
    pub controller_urls: Vec<String>,
    pub join_token: Option<JoinToken>,
    pub data_dir: PathBuf,
    pub nvml_library: PathBuf,
    pub labels: Labels,
    pub hostname_override: Option<String>,
    pub inventory_interval: Duration,
    pub max_backoff: Duration,
    pub provisioning: ProvisioningOptions,
}

/// How the agent builds and runs environments.
#[derive(Debug, Clone)]
pub struct ProvisioningOptions {
    /// Use this uv rather than one on PATH or the pinned one fetched from the index.
    pub uv: Option<PathBuf>,
    /// Environments kept besides the current one, for instant rollback.
    pub keep_previous: usize,
    /// Run ComfyUI on this port rather than the spec's (several agents on one host).
    pub comfyui_port: Option<u16>,
    /// `UV_PYTHON_DOWNLOADS` for creating venvs: `automatic`, `manual` or `never`.
    pub python_downloads: String,
    /// Environment variables passed to ComfyUI and the build commands, besides the
    /// built-in allow-list.
    pub pass_env: Vec<String>,
    /// uv's cache, instead of `<data-dir>/cache/uv`.
    pub uv_cache_dir: Option<PathBuf>,
    /// Fetch locked files, kernel wheels and git commits through the controller's
    /// package cache (the default), or straight from upstream.
    pub package_cache: bool,
}

impl Default for ProvisioningOptions {
    fn default() -> Self {
        Self {
            uv: None,
            keep_previous: 2,
            comfyui_port: None,
            python_downloads: "automatic".to_owned(),
            pass_env: Vec::new(),
            uv_cache_dir: None,
            package_cache: true,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(
        "this agent is not enrolled yet: start it with --join-token TOKEN (from `comfyfleet token create`) and --controller URL"
    )]
    NotEnrolled,
    #[error("--controller URL is needed for the first enrollment")]
    NoControllerUrl,
    #[error("cannot create the data dir {path}: {source}")]
    DataDir { path: PathBuf, source: std::io::Error },
    #[error(transparent)]
    Identity(#[from] IdentityError),
    #[error(transparent)]
    Enroll(#[from] EnrollError),
    #[error(transparent)]
    Link(#[from] LinkError),
    #[error("cannot prepare {path}: {source}")]
    Layout { path: PathBuf, source: std::io::Error },
    #[error(transparent)]
    Download(#[from] crate::download::DownloadError),
}

impl AgentError {
    /// The controller said no (revoked, bad token, wrong CA): an operator must act,
    /// so a supervisor should not restart the agent in a tight loop.
    pub fn is_refusal(&self) -> bool {
        matches!(
            self,
            AgentError::Link(LinkError::Refused(_))
                | AgentError::Enroll(EnrollError::Refused(_) | EnrollError::CaMismatch { .. })
        )
    }
}

/// Runs the agent until `shutdown` resolves.
pub async fn run(options: AgentOptions, shutdown: impl Future<Output = ()>) -> Result<(), AgentError> {
    tokio::pin!(shutdown);
    comfyfleet_daemon::files::create_private_dir(&options.data_dir)
        .map_err(|source| AgentError::DataDir { path: options.data_dir.clone(), source })?;
    let identity_dir = IdentityDir::new(&options.data_dir);
    let hostname = options.hostname_override.clone().unwrap_or_else(kernel_hostname);

    let identity = match identity_dir.load()? {
        Some(mut identity) => {
            if options.join_token.is_some() {
                tracing::info!(machine_id = %identity.machine_id, "already enrolled; --join-token ignored");
            }
            if !options.controller_urls.is_empty() && options.controller_urls != identity.controller_urls() {
                tracing::info!(from = ?identity.controller_urls(), to = ?options.controller_urls, "controller URLs changed");
                identity_dir.update_controller_urls(&mut identity, &options.controller_urls)?;
            }
            identity
        }
        None => {
            let token = options.join_token.as_ref().ok_or(AgentError::NotEnrolled)?;
            if options.controller_urls.is_empty() {
                return Err(AgentError::NoControllerUrl);
            }
            tracing::info!(controller = ?options.controller_urls, token = token.id(), "enrolling");
            let enrollment = Enrollment {
                controller_urls: &options.controller_urls,
                token,
                hostname: &hostname,
                labels: &options.labels,
            };
            let identity = enroll::enroll(&identity_dir, enrollment, &mut shutdown).await?;
            tracing::info!(machine_id = %identity.machine_id, "enrolled");
            identity
        }
    };

    // The controller the session is on: the package cache is fetched from it.
    let controller = CurrentController::new(&identity.controller_url);
    let layout = Layout::new(&options.data_dir).with_uv_cache(options.provisioning.uv_cache_dir.clone());
    layout.create().map_err(|source| AgentError::Layout { path: options.data_dir.clone(), source })?;
    let journal = Journal::new(&layout.journal());
    let provisioning = options.provisioning;
    let environment = ChildEnvironment::from_process(&provisioning.pass_env);
    let source_secrets = crate::session_state::HeldSecrets::default();
    let tools = Tools {
        uv_override: provisioning.uv.clone(),
        environment: environment.clone(),
        downloader: Downloader::new(&layout.wheel_cache())?,
        package_cache: if provisioning.package_cache {
            let client_pem = identity_dir.path().join("client.pem");
            comfyfleet_daemon::files::write_atomic(
                &client_pem,
                format!("{}\n{}", identity.certificate_pem, identity.key_pem).as_bytes(),
                0o600,
            )
            .map_err(|source| AgentError::Layout { path: client_pem.clone(), source })?;
            Some(PackageCacheClient {
                client_pem,
                ca_pem: identity_dir.path().join("ca.crt"),
                controller: controller.clone(),
                downloader: Downloader::for_controller(
                    &layout.wheel_cache(),
                    &identity.ca_pem,
                    &identity.certificate_pem,
                    &identity.key_pem,
                )?,
            })
        } else {
            None
        },
        python_downloads: provisioning.python_downloads.clone(),
        source_secrets: source_secrets.clone(),
    };
    let collector = Arc::new(Mutex::new(InventoryCollector::new(
        Box::new(NvmlProbe::new(options.nvml_library.clone())),
        options.data_dir.clone(),
        options.hostname_override.clone(),
    )));
    let (reporter, reports) = Reporter::new();
    let (desired, desired_receiver) = watch::channel(journal.desired());
    let inventory_changed = Arc::new(Notify::new());
    let inventory_changed_for_watch = inventory_changed.clone();
    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(5))
        .build()
        .map_err(|error| crate::download::DownloadError::Client(error.to_string()))?;
    let converger = Converger {
        executor: Executor::new(layout.clone(), tools),
        layout: layout.clone(),
        journal: journal.clone(),
        service: Arc::new(ComfyuiService::new(layout.clone(), environment)),
        reporter,
        http,
        collector: collector.clone(),
        inventory_changed: inventory_changed.clone(),
        port_override: provisioning.comfyui_port,
        keep_previous: provisioning.keep_previous,
        gpus: Mutex::new(None),
    };
    let (stop, stopped) = watch::channel(false);
    let wait_stop = |mut stopped: watch::Receiver<bool>| async move {
        let _ = stopped.wait_for(|stop| *stop).await;
    };
    let converging = tokio::spawn(converger.run(desired_receiver, wait_stop(stopped.clone())));
    let link = Link {
        identity,
        labels: options.labels,
        collector,
        inventory_interval: options.inventory_interval,
        max_backoff: options.max_backoff,
        journal,
        desired,
        reports,
        inventory_changed,
        connected: watch::channel(false).0,
        controller,
        source_secrets,
    };
    let _identity_watch = tokio::spawn(watch_identity(identity_dir, inventory_changed_for_watch));
    let linked = tokio::select! {
        result = link.run(wait_stop(stopped)) => result,
        () = &mut shutdown => Ok(()),
    };
    // ComfyUI keeps running: an agent stopping is no reason to stop a render.
    let _ = stop.send(true);
    let _ = converging.await;
    linked?;
    tracing::info!("agent stopped");
    Ok(())
}

/// How often the identity files are looked for.
const IDENTITY_CHECK: Duration = Duration::from_secs(5);

/// Says at once (a log line, and the inventory the controller shows) when the
/// identity files go: the session goes on from memory, but a restart could not
/// reconnect, and nobody would know until then.
async fn watch_identity(identity_dir: IdentityDir, inventory_changed: Arc<Notify>) {
    let mut tick = tokio::time::interval(IDENTITY_CHECK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut missing = false;
    loop {
        tick.tick().await;
        match identity_dir.missing_problem() {
            Some(problem) if !missing => {
                missing = true;
                tracing::error!("{problem}");
                inventory_changed.notify_one();
            }
            None if missing => {
                missing = false;
                tracing::info!("the identity files are back");
                inventory_changed.notify_one();
            }
            _ => {}
        }
    }
}
