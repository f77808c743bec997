//! comfyfleet's agent: enrolls once with a join token, keeps its identity on disk,
//! reports this machine's GPUs (NVML) and host facts, and holds one long-lived
//! mutual-TLS session to the controller.
#![forbid(unsafe_code)]

mod backoff;
pub mod enroll;
pub mod identity;
pub mod inventory;
pub mod link;

use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use comfyfleet_config::{JoinToken, Labels};

use crate::enroll::{EnrollError, Enrollment};
use crate::identity::{IdentityDir, IdentityError};
use crate::inventory::{InventoryCollector, NvmlProbe, kernel_hostname};
use crate::link::{Link, LinkError};

#[derive(Debug, Clone)]
pub struct AgentOptions {
    /// The controller's URL; optional once enrolled (the identity remembers it).
    pub controller_url: Option<String>,
    pub join_token: Option<JoinToken>,
    pub data_dir: PathBuf,
    pub nvml_library: PathBuf,
    pub labels: Labels,
    pub hostname_override: Option<String>,
    pub inventory_interval: Duration,
    pub max_backoff: Duration,
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
            if let Some(url) = options.controller_url.as_deref()
                && url != identity.controller_url
            {
                tracing::info!(from = %identity.controller_url, to = %url, "controller URL changed");
                identity_dir.update_controller_url(&mut identity, url)?;
            }
            identity
        }
        None => {
            let token = options.join_token.as_ref().ok_or(AgentError::NotEnrolled)?;
            let url = options.controller_url.as_deref().ok_or(AgentError::NoControllerUrl)?;
            tracing::info!(controller = %url, token = token.id(), "enrolling");
            let enrollment =
                Enrollment { controller_url: url, token, hostname: &hostname, labels: &options.labels };
            let identity = enroll::enroll(&identity_dir, enrollment, &mut shutdown).await?;
            tracing::info!(machine_id = %identity.machine_id, "enrolled");
            identity
        }
    };

    let collector = InventoryCollector::new(
        Box::new(NvmlProbe::new(options.nvml_library.clone())),
        options.data_dir.clone(),
        options.hostname_override.clone(),
    );
    let link = Link {
        identity,
        labels: options.labels,
        collector: Arc::new(Mutex::new(collector)),
        inventory_interval: options.inventory_interval,
        max_backoff: options.max_backoff,
    };
    link.run(shutdown).await?;
    tracing::info!("agent stopped");
    Ok(())
}
