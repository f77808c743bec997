//! What every request handler shares: the store, the CA, who is connected, settings.

use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;

use crate::desired_state::SpecCache;
use crate::pki::CertificateAuthority;
use crate::presence::Presence;
use crate::report_writer::ReportWriter;
use crate::rollouts::Rollouts;
use crate::store::Store;

#[derive(Debug, Clone)]
pub struct Settings {
    /// How often agents send a heartbeat; a session silent for three intervals ends.
    pub heartbeat_interval: Duration,
    pub default_token_ttl: Duration,
    pub max_token_ttl: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            heartbeat_interval: Duration::from_secs(5),
            default_token_ttl: Duration::from_secs(24 * 3600),
            max_token_ttl: Duration::from_secs(365 * 24 * 3600),
        }
    }
}

pub struct ControllerState {
    pub store: Arc<dyn Store>,
    pub ca: CertificateAuthority,
    pub presence: Arc<Presence>,
    pub settings: Settings,
    pub rollouts: Rollouts,
    /// Where sessions store their agents' reports.
    pub reports: ReportWriter,
    /// Revision specs for the desired-state pushers.
    pub specs: Arc<SpecCache>,
}

impl ControllerState {
    /// Appends to the audit log. The change it records has already happened, so a
    /// failure here is logged loudly rather than reported as the call failing.
    pub async fn audit(&self, actor: &str, action: &str, target: &str, detail: &str) {
        if let Err(error) = self.store.append_audit(Timestamp::now(), actor, action, target, detail).await {
            tracing::error!(%error, actor, action, target, "cannot write the audit log");
        }
    }
}
