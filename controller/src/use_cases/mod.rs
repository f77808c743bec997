//! The use cases: what the controller does, grouped by capability, whoever asks (an
//! operator's gRPC call, the web page, an agent's session, a background loop). They
//! take and return domain types and typed errors; the edges turn those into the wire.
//! Below them is only the store. This file holds what every use case shares: the
//! store, the CA, who is connected, settings ([`ControllerState`]).

pub mod cluster;
pub mod credentials;
pub mod environments;
pub mod machines;
pub mod package_cache;
pub mod presence;
pub mod rollouts;
pub mod source_secrets;
pub mod sources;
#[cfg(test)]
pub(crate) mod test_fleet;

use std::sync::Arc;
use std::time::Duration;

use comfyfleet_config::text::Escaped;
use jiff::Timestamp;

use crate::store::Store;
use crate::use_cases::credentials::pki::CertificateAuthority;
use crate::use_cases::environments::spec_cache::SpecCache;
use crate::use_cases::presence::Presence;
use crate::use_cases::rollouts::Rollouts;
use crate::use_cases::rollouts::report_writer::ReportWriter;

#[derive(Debug, Clone)]
pub struct Settings {
    /// How often agents send a heartbeat; a session silent for three intervals ends.
    pub heartbeat_interval: Duration,
    pub default_token_ttl: Duration,
    pub max_token_ttl: Duration,
    /// `--uv`: the uv apply locks with (else `uv` on PATH).
    pub uv: Option<std::path::PathBuf>,
    /// `--cache-max-size`: the package cache's disk limit, in bytes.
    pub cache_max_size: Option<u64>,
    /// Which sources (git, indexes, wheels) the controller may fetch from
    /// (`--git-allow-file`, `--source-allow-host`, `--source-allow-public`).
    pub sources: crate::use_cases::sources::source_policy::SourcePolicy,
    /// The environment the controller's children (uv, git) get: the daemons'
    /// allow-list and `--pass-env` names, never the controller's whole environment.
    pub children: comfyfleet_daemon::child_env::ChildEnvironment,
    /// Whether apply reads the pinned ComfyUI checkout and locks every build class
    /// (always, in the controller binary; the unit tests of revision storage and
    /// rollouts run without git, uv or an index).
    pub lock_on_apply: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            heartbeat_interval: Duration::from_secs(5),
            default_token_ttl: Duration::from_secs(24 * 3600),
            max_token_ttl: Duration::from_secs(365 * 24 * 3600),
            uv: None,
            cache_max_size: None,
            sources: crate::use_cases::sources::source_policy::SourcePolicy::default(),
            children: Default::default(),
            lock_on_apply: true,
        }
    }
}

pub struct ControllerState {
    pub store: Arc<dyn Store>,
    pub ca: Arc<CertificateAuthority>,
    /// The certificate the TLS listeners serve, renewed while the controller runs.
    pub server_certificate: Arc<crate::use_cases::credentials::server_certificate::ServerCertificate>,
    pub presence: Arc<Presence>,
    pub settings: Settings,
    pub rollouts: Rollouts,
    /// Where sessions store their agents' reports.
    pub reports: ReportWriter,
    /// Revision specs for the desired-state pushers.
    pub specs: Arc<SpecCache>,
    /// The pull-through package cache agents build from.
    pub packages: Arc<crate::use_cases::package_cache::PackageCache>,
    /// The controller's copies of the specs' git repositories.
    pub mirror: crate::use_cases::sources::git_mirror::GitMirror,
    /// What apply locks build classes with.
    pub locker: crate::use_cases::environments::locking::Locker,
    /// What `/metrics` counts as it happens.
    pub metrics: crate::counters::Metrics,
    /// The fleet the store holds (agents learn it at enrollment and in Welcome).
    pub fleet_id: String,
    /// This controller's place among several on one PostgreSQL database; `None`
    /// with SQLite (the one controller leads).
    pub cluster: Option<Arc<crate::use_cases::cluster::Cluster>>,
    /// The credentials specs name for their sources.
    pub source_secrets: Arc<crate::use_cases::source_secrets::SourceSecrets>,
    /// What each machine's revisions name: all the package cache serves it.
    pub access: crate::use_cases::package_cache::source_access::SourceAccess,
    /// What the overview, `/metrics` and the fleet reports count, kept in memory.
    pub fleet: Arc<crate::use_cases::machines::fleet_summary::FleetSummary>,
}

impl ControllerState {
    /// Appends to the audit log. The change it records has already happened, so a
    /// failure here is logged loudly rather than reported as the call failing.
    pub async fn audit(&self, actor: &str, action: &str, target: &str, detail: &str) {
        if let Err(error) = self.store.append_audit(Timestamp::now(), actor, action, target, detail).await {
            tracing::error!(error = %Escaped(&error), actor = %Escaped(actor), action, target = %Escaped(target), "cannot write the audit log");
        }
    }
}
