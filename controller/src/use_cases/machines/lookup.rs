//! Finding machines: one by id or prefix, the named ones, the whole fleet, and a
//! stored machine as operators see it.

use std::collections::HashSet;

use comfyfleet_config::{MachineId, MachineRecord};

use super::MachineError;
use crate::store::{Store, StoredMachine};
use crate::use_cases::ControllerState;
use crate::use_cases::presence::Presence;

/// How many machines are read from the store at a time for [`fleet`].
const PAGE: u32 = 500;
/// The most machines one call may name.
const MAX_NAMED: usize = 10_000;

/// A stored machine as operators see it: online while it has a live session here.
pub fn machine_record(presence: &Presence, machine: StoredMachine) -> MachineRecord {
    let labels = machine.effective_labels();
    let live_seen = presence.last_seen(&machine.id);
    let live = machine.revoked_at.is_none() && live_seen.is_some();
    let last_seen = live_seen.or(machine.last_seen);
    MachineRecord {
        labels,
        online: live,
        last_seen,
        id: machine.id,
        hostname: machine.hostname,
        enrolled_at: machine.enrolled_at,
        revoked_at: machine.revoked_at,
        operator_labels: machine.operator_labels,
        token_labels: machine.token_labels,
        inventory: machine.inventory,
        inventory_updated_at: machine.inventory_updated_at,
        agent_version: machine.agent_version,
        remote_address: machine.remote_address,
        join_token_id: machine.join_token_id,
        assignment: machine.assignment,
        report: machine.report,
    }
}

/// The one machine whose id is `text` or starts with it.
pub async fn resolve_machine(store: &dyn Store, text: &str) -> Result<StoredMachine, MachineError> {
    if text.is_empty() || text.len() > MachineId::MAX_LEN {
        return Err(MachineError::NoMachineGiven);
    }
    let mut matches = store.find_machines(text, 6).await?;
    if let Some(exact) = matches.iter().position(|machine| machine.id.as_str() == text) {
        return Ok(matches.swap_remove(exact));
    }
    match matches.len() {
        0 => Err(MachineError::NoMachineStartsWith { prefix: text.to_owned() }),
        1 => Ok(matches.remove(0)),
        _ => {
            let ids: Vec<_> = matches.iter().map(|machine| machine.id.as_str()).collect();
            Err(MachineError::SeveralMachinesMatch { prefix: text.to_owned(), ids: ids.join(", ") })
        }
    }
}

/// Every machine that is not revoked, in id order.
pub async fn fleet(state: &ControllerState) -> Result<Vec<StoredMachine>, MachineError> {
    let mut machines: Vec<StoredMachine> = Vec::new();
    loop {
        let after = machines.last().map(|machine| machine.id.clone());
        let page = state.store.list_machines(after.as_ref(), PAGE, false).await?;
        let full = page.len() == PAGE as usize;
        machines.extend(page);
        if !full {
            return Ok(machines);
        }
    }
}

/// Exactly the machines named (ids or unique prefixes), each once, in the order given.
pub async fn named_machines(
    state: &ControllerState,
    names: &[String],
) -> Result<Vec<StoredMachine>, MachineError> {
    if names.len() > MAX_NAMED {
        return Err(MachineError::TooManyNamed { count: names.len(), max: MAX_NAMED });
    }
    let mut seen = HashSet::new();
    let mut machines = Vec::with_capacity(names.len());
    for name in names {
        let machine = resolve_machine(state.store.as_ref(), name.trim()).await?;
        if machine.revoked_at.is_some() {
            return Err(MachineError::Revoked { machine: machine.id });
        }
        if seen.insert(machine.id.clone()) {
            machines.push(machine);
        }
    }
    Ok(machines)
}
