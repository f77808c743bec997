//! One session's inventory messages: an inventory is stored only when it differs from
//! the machine's stored one, and a change is logged at most once a minute per session
//! with how many it stands for. An agent that repeats itself (a bug, a hostile peer: one
//! sent 10,000 in 15 s) costs neither writes nor log lines.

use std::time::Duration;

use comfyfleet_config::{Inventory, MachineId};
use jiff::Timestamp;
use tokio::time::Instant;

use crate::store::{Store, StoreResult};

/// The least time between two "inventory updated" lines of one session.
const LOG_INTERVAL: Duration = Duration::from_secs(60);

#[derive(Default)]
pub struct InventoryUpdates {
    /// The inventory this session last stored or found stored: the same one again
    /// needs no trip to the store.
    stored: Option<Inventory>,
    last_line: Option<Instant>,
    /// Changes stored since the last line.
    unlogged: u64,
}

impl InventoryUpdates {
    /// Starts from the inventory the machine has stored (its Hello's, when it sent one).
    pub fn new(stored: Option<Inventory>) -> Self {
        Self { stored, ..Self::default() }
    }

    /// The inventory this session last stored or found stored.
    pub fn stored(&self) -> Option<&Inventory> {
        self.stored.as_ref()
    }

    /// Stores `inventory` unless it is the machine's stored one, and logs the change
    /// unless a line went out less than a minute ago. Whether it was new to this
    /// session (then [`InventoryUpdates::stored`] is it).
    pub async fn record(
        &mut self,
        store: &dyn Store,
        machine_id: &MachineId,
        inventory: Inventory,
        at: Timestamp,
    ) -> StoreResult<bool> {
        if self.stored.as_ref() == Some(&inventory) {
            return Ok(false);
        }
        let changed = store.record_inventory(machine_id, &inventory, at).await?;
        let gpus = inventory.nvidia.gpus.len();
        self.stored = Some(inventory);
        if !changed {
            return Ok(true);
        }
        self.unlogged += 1;
        let now = Instant::now();
        if self.last_line.is_none_or(|line| now.duration_since(line) >= LOG_INTERVAL) {
            tracing::info!(gpus, changes = self.unlogged, "inventory updated");
            self.last_line = Some(now);
            self.unlogged = 0;
        }
        Ok(true)
    }
}
