//! The fleet's summary in memory: what the overview page, `/metrics` and the fleet
//! reports count — machines by status, phase and revision, GPU model × driver ×
//! CUDA, optimisation outcomes, drift — kept up to date where the changes happen
//! instead of read machine by machine from the store at every request.
//!
//! Machines with the same facts are counted together: each distinct set of facts (a
//! *class*: GPUs, driver, CUDA, OS, current environment, phase, optimisation
//! outcomes; no id, hostname or labels) is kept once with how many machines have it,
//! and each machine holds only the key of its class. A fleet of 10,000 machines from
//! a few hardware profiles in a few phases is a few dozen classes, so a request
//! counts classes, not machines. A drifted machine is its own class (the drift
//! report names it).
//!
//! Who tells it (no store read on any of these paths):
//! - the store, once, when the controller starts ([`FleetSummary::load`]);
//! - enrollment (a new machine), a session's Hello (the machine's stored record,
//!   read then anyway), its inventories and its stored reports (`agent_service`);
//! - a revocation (`fleet_service`; another controller's through its notice);
//! - on PostgreSQL, other controllers' notices that a machine connected or reported
//!   there: those machines are read again, in batches, by a task of their own
//!   ([`FleetSummary::refresh_from`]), never on the notice listener's path.
//!
//! Online and offline are not kept here: they are presence's, asked at each request.
//! Assignments change nothing counted (a machine's revision and phase are what its
//! agent reports), nor do labels (selectors are answered from the store).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use comfyfleet_config::fleet_report::{FleetReport, ReportKind};
use comfyfleet_config::machine_facts::SoftwareFacts;
use comfyfleet_config::{ConvergenceReport, InstalledEnvironments, Inventory, MachineFacts, MachineId};

use crate::store::{Store, StoreResult, StoredMachine};
use crate::use_cases::presence::Presence;

/// How many machines a full load reads from the store at a time.
const LOAD_PAGE: u32 = 1000;
/// How long changed machines are collected before they are read again.
const REFRESH_DELAY: std::time::Duration = std::time::Duration::from_millis(500);

#[derive(Default)]
pub struct FleetSummary {
    inner: Mutex<Inner>,
    /// Machines to read again from the store (PostgreSQL: changed on another
    /// controller); drained by [`FleetSummary::refresh_from`].
    stale: Mutex<Option<tokio::sync::mpsc::UnboundedSender<Vec<MachineId>>>>,
}

#[derive(Default)]
struct Inner {
    machines: HashMap<MachineId, Entry>,
    classes: HashMap<Arc<str>, Class>,
    revoked: u64,
}

struct Entry {
    hostname: Box<str>,
    /// `None` once revoked: a revoked machine is counted as such and nowhere else.
    class: Option<Arc<str>>,
}

struct Class {
    key: Arc<str>,
    facts: Arc<MachineFacts>,
    machines: u64,
}

/// What the summary holds at one moment.
pub struct Summary {
    pub online: u64,
    pub offline: u64,
    pub revoked: u64,
    /// Each class of the machines that are not revoked, with how many have it.
    pub classes: Vec<(Arc<MachineFacts>, u64)>,
}

impl Summary {
    /// Machines that are not revoked.
    pub fn machines(&self) -> u64 {
        self.online + self.offline
    }

    /// How many machines whose facts satisfy `test`.
    pub fn count(&self, test: impl Fn(&MachineFacts) -> bool) -> u64 {
        self.classes.iter().filter(|(facts, _)| test(facts)).map(|(_, machines)| machines).sum()
    }

    pub fn report(&self, kind: ReportKind) -> FleetReport {
        FleetReport::build_counted(
            kind,
            self.classes.iter().map(|(facts, machines)| (facts.as_ref(), *machines)),
        )
    }
}

impl FleetSummary {
    fn inner(&self) -> MutexGuard<'_, Inner> {
        // Every change is made whole under the lock; a panic cannot leave half of one.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Reads every machine from the store, replacing what was known.
    pub async fn load(&self, store: &dyn Store) -> StoreResult<()> {
        let mut fresh = Inner::default();
        let mut after: Option<MachineId> = None;
        loop {
            let page = store.list_machines(after.as_ref(), LOAD_PAGE, true).await?;
            let full = page.len() == LOAD_PAGE as usize;
            after = page.last().map(|machine| machine.id.clone());
            for machine in &page {
                fresh.put_stored(machine);
            }
            if !full {
                break;
            }
        }
        *self.inner() = fresh;
        Ok(())
    }

    /// A machine's whole stored record (a session's Hello, a machine read again).
    pub fn stored(&self, machine: &StoredMachine) {
        self.inner().put_stored(machine);
    }

    /// A machine just enrolled: nothing known of it but its name.
    pub fn enrolled(&self, id: &MachineId, hostname: &str) {
        let facts = MachineFacts::new(String::new(), String::new(), Default::default(), None);
        self.inner().put(id, hostname, Some(facts));
    }

    /// A machine's new inventory, with its latest stored report.
    pub fn inventory(&self, id: &MachineId, inventory: &Inventory, report: Option<&ConvergenceReport>) {
        let mut facts = MachineFacts::new(String::new(), String::new(), Default::default(), Some(inventory));
        facts.software = SoftwareFacts::new(Some(&inventory.environments), report);
        self.inner().put(id, &inventory.host.hostname, Some(facts));
    }

    /// A machine's latest stored report, with the environments its inventory lists.
    pub fn reported(
        &self,
        id: &MachineId,
        environments: Option<&InstalledEnvironments>,
        report: Option<&ConvergenceReport>,
    ) {
        let software = SoftwareFacts::new(environments, report);
        let mut inner = self.inner();
        let Some(entry) = inner.machines.get(id) else { return };
        let Some(class) = entry.class.as_ref().and_then(|key| inner.classes.get(key)) else { return };
        if class.facts.software == software {
            return;
        }
        let mut facts = MachineFacts::clone(&class.facts);
        facts.software = software;
        let hostname = entry.hostname.clone();
        inner.put(id, &hostname, Some(facts));
    }

    /// A machine an operator revoked.
    pub fn revoked(&self, id: &MachineId) {
        let mut inner = self.inner();
        let hostname = inner.machines.get(id).map(|entry| entry.hostname.clone()).unwrap_or_default();
        inner.put(id, &hostname, None);
    }

    /// The summary now, with who is online as `presence` says.
    pub fn summary(&self, presence: &Presence) -> Summary {
        let inner = self.inner();
        let online = presence.with_online(|online| {
            inner.machines.iter().filter(|(id, entry)| entry.class.is_some() && online(id)).count()
        }) as u64;
        let machines = inner.machines.len() as u64 - inner.revoked;
        Summary {
            online,
            offline: machines - online,
            revoked: inner.revoked,
            classes: inner.classes.values().map(|class| (class.facts.clone(), class.machines)).collect(),
        }
    }

    /// How many distinct classes it keeps (for the bench and the tests).
    pub fn classes(&self) -> usize {
        self.inner().classes.len()
    }

    /// Has `machines` read again from the store by the task [`FleetSummary::refresh_from`]
    /// runs; nothing when that task is not running (one controller).
    pub fn stale(&self, machines: Vec<MachineId>) {
        let sender = self.stale.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(sender) = sender.as_ref() {
            let _ = sender.send(machines);
        }
    }

    /// Reads again the machines [`FleetSummary::stale`] names, as they come, until
    /// `store`'s controller shuts down; an empty list reads every machine again.
    pub async fn refresh_from(self: Arc<Self>, store: Arc<dyn Store>) {
        let (sender, mut receiver) = tokio::sync::mpsc::unbounded_channel::<Vec<MachineId>>();
        *self.stale.lock().unwrap_or_else(PoisonError::into_inner) = Some(sender);
        let mut batch = Vec::new();
        while receiver.recv_many(&mut batch, 64).await > 0 {
            // A rollout's reports come in waves: a moment's wait reads each machine once.
            tokio::time::sleep(REFRESH_DELAY).await;
            while let Ok(more) = receiver.try_recv() {
                batch.push(more);
            }
            let mut ids: Vec<MachineId> = Vec::new();
            let mut everything = false;
            for machines in batch.drain(..) {
                everything |= machines.is_empty();
                ids.extend(machines);
            }
            if everything {
                if let Err(error) = self.load(store.as_ref()).await {
                    tracing::warn!(%error, "cannot read the fleet again for its summary");
                }
                continue;
            }
            ids.sort_unstable();
            ids.dedup();
            for id in ids {
                match store.get_machine(&id).await {
                    Ok(Some(machine)) => self.stored(&machine),
                    Ok(None) => {}
                    Err(error) => {
                        tracing::warn!(%error, machine = %id, "cannot read a machine for the fleet summary")
                    }
                }
            }
        }
    }
}

impl Inner {
    fn put_stored(&mut self, machine: &StoredMachine) {
        if machine.revoked_at.is_some() {
            self.put(&machine.id, &machine.hostname, None);
            return;
        }
        let inventory = machine.inventory.as_ref();
        let mut facts = MachineFacts::new(String::new(), String::new(), Default::default(), inventory);
        facts.software =
            SoftwareFacts::new(inventory.map(|inventory| &inventory.environments), machine.report.as_ref());
        self.put(&machine.id, &machine.hostname, Some(facts));
    }

    /// Makes `facts` (`None`: revoked) `id`'s, moving it out of its old class.
    fn put(&mut self, id: &MachineId, hostname: &str, facts: Option<MachineFacts>) {
        let class = facts.map(|mut facts| {
            // A drifted machine is named by the drift report; the rest count alike.
            if facts.software.drift.is_empty() {
                facts.id.clear();
                facts.hostname.clear();
            } else {
                facts.id = id.to_string();
                facts.hostname = hostname.to_owned();
            }
            facts.labels.clear();
            self.enter(facts)
        });
        let revoked = class.is_none();
        let previous = self
            .machines
            .insert(id.clone(), Entry { hostname: hostname.into(), class })
            .map(|previous| previous.class);
        match previous {
            Some(Some(key)) => self.leave(&key),
            Some(None) => self.revoked -= 1,
            None => {}
        }
        if revoked {
            self.revoked += 1;
        }
    }

    /// Counts one more machine in the class of `facts`; its key.
    fn enter(&mut self, facts: MachineFacts) -> Arc<str> {
        // serde_json writes fields in declaration order and lists in order: equal
        // facts, equal text.
        let key: Arc<str> = serde_json::to_string(&facts).unwrap_or_default().into();
        if let Some(class) = self.classes.get_mut(&key) {
            class.machines += 1;
            return class.key.clone();
        }
        self.classes.insert(key.clone(), Class { key: key.clone(), facts: Arc::new(facts), machines: 1 });
        key
    }

    fn leave(&mut self, key: &Arc<str>) {
        if let Some(class) = self.classes.get_mut(key) {
            class.machines -= 1;
            if class.machines == 0 {
                self.classes.remove(key);
            }
        }
    }
}

#[cfg(test)]
mod tests;
