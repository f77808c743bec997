//! Retention: rollout events, reports and audit entries older than their limit are
//! deleted in the background, a batch at a time, so no delete holds the database's
//! write lock for long and agents' writes go on between batches.

use std::sync::Arc;
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};

use crate::store::{Prunable, Store, StoreResult};

/// Rows deleted per statement.
pub const BATCH: u32 = 1_000;
/// How long retention waits between batches, so writers get the lock.
const PAUSE: Duration = Duration::from_millis(20);
/// How often retention runs.
const EVERY: Duration = Duration::from_secs(3600);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// `--event-retention`: rollout events of finished rollouts, and reports.
    pub events: Duration,
    /// `--audit-retention`: the audit log.
    pub audit: Duration,
}

impl Default for Retention {
    fn default() -> Self {
        Self { events: Duration::from_secs(90 * 24 * 3600), audit: Duration::from_secs(365 * 24 * 3600) }
    }
}

impl Retention {
    fn keeps(&self, what: Prunable) -> Duration {
        match what {
            Prunable::RolloutEvents | Prunable::Reports => self.events,
            Prunable::Audit => self.audit,
        }
    }
}

/// One pass: everything older than its limit at `now` is deleted, `BATCH` rows at a
/// time. Returns how many rows of each kind went.
pub async fn prune_once(
    store: &dyn Store,
    retention: Retention,
    now: Timestamp,
) -> StoreResult<Vec<(Prunable, u64)>> {
    let mut pruned = Vec::new();
    for what in Prunable::ALL {
        let keep = SignedDuration::try_from(retention.keeps(what)).unwrap_or(SignedDuration::MAX);
        let Ok(before) = now.checked_sub(keep) else { continue };
        let mut total = 0;
        loop {
            let deleted = store.prune(what, before, BATCH).await?;
            total += deleted;
            if deleted < u64::from(BATCH) {
                break;
            }
            tokio::time::sleep(PAUSE).await;
        }
        pruned.push((what, total));
    }
    Ok(pruned)
}

/// Runs [`prune_once`] a minute after start and then every hour.
pub async fn prune_forever(store: Arc<dyn Store>, retention: Retention) {
    tokio::time::sleep(Duration::from_secs(60)).await;
    let mut tick = tokio::time::interval(EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match prune_once(store.as_ref(), retention, Timestamp::now()).await {
            Ok(pruned) => {
                for (what, count) in pruned.into_iter().filter(|(_, count)| *count > 0) {
                    tracing::info!(what = what.as_str(), count, "pruned rows past retention");
                }
            }
            Err(error) => tracing::warn!(%error, "retention could not prune; trying again later"),
        }
    }
}
