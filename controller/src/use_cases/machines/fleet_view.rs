//! The fleet as queries see it: every machine with what it runs, picked by a query
//! selector, for `ListMachines`, the fleet reports, the web page and `/metrics`.

use comfyfleet_config::fleet_report::{FleetReport, ReportKind};
use comfyfleet_config::resolve::MachineFacts;
use comfyfleet_config::spec::Selector;
use comfyfleet_config::{MachineId, MachineRecord};

use super::lookup::machine_record;
use crate::store::StoreResult;
use crate::use_cases::ControllerState;

/// How many machines are read from the store at a time.
const SCAN_PAGE: u32 = 1000;

/// A query selector as an operator wrote it; `None` for an empty one.
pub fn query(text: &str) -> Result<Option<Selector>, String> {
    if text.trim().is_empty() {
        return Ok(None);
    }
    Selector::parse_query(text).map(Some).map_err(|error| {
        let character = text.get(..error.offset).map_or(0, |before| before.chars().count()) + 1;
        format!("the selector `{text}` is wrong at character {character}: {}", error.message)
    })
}

/// A machine with its facts, built once per scan.
pub struct FleetMachine {
    pub record: MachineRecord,
    pub facts: MachineFacts,
}

impl FleetMachine {
    pub fn new(record: MachineRecord) -> Self {
        let facts = MachineFacts::from(&record);
        Self { record, facts }
    }
}

/// Every machine (revoked ones only when asked) that `selector` picks, in id order.
pub async fn machines(
    state: &ControllerState,
    selector: Option<&Selector>,
    include_revoked: bool,
) -> StoreResult<Vec<FleetMachine>> {
    let mut picked = Vec::new();
    let mut after: Option<MachineId> = None;
    loop {
        let page = state.store.list_machines(after.as_ref(), SCAN_PAGE, include_revoked).await?;
        let full = page.len() == SCAN_PAGE as usize;
        after = page.last().map(|machine| machine.id.clone());
        for stored in page {
            let machine = FleetMachine::new(machine_record(&state.presence, stored));
            if selector.is_none_or(|selector| selector.matches(&machine.facts)) {
                picked.push(machine);
            }
        }
        if !full {
            return Ok(picked);
        }
    }
}

/// One page of the machines `selector` picks after `after`: at most `limit`, and
/// the id to go on from when more may follow.
pub async fn page(
    state: &ControllerState,
    selector: Option<&Selector>,
    after: Option<MachineId>,
    limit: u32,
    include_revoked: bool,
) -> StoreResult<(Vec<FleetMachine>, Option<MachineId>)> {
    let mut picked = Vec::new();
    let mut after = after;
    loop {
        let want = limit.saturating_sub(u32::try_from(picked.len()).unwrap_or(u32::MAX)).max(1);
        let batch = if selector.is_some() { SCAN_PAGE.max(want) } else { want };
        let page = state.store.list_machines(after.as_ref(), batch, include_revoked).await?;
        let full = page.len() == batch as usize;
        for stored in page {
            after = Some(stored.id.clone());
            let machine = FleetMachine::new(machine_record(&state.presence, stored));
            if selector.is_none_or(|selector| selector.matches(&machine.facts)) {
                picked.push(machine);
                if picked.len() == limit as usize {
                    // More may follow unless this was the store's last machine.
                    return Ok((picked, after));
                }
            }
        }
        if !full {
            return Ok((picked, None));
        }
    }
}

/// `kind` over the machines `selector` picks (revoked machines left out): over the
/// whole fleet from its summary in memory, else from the machines the store lists.
pub async fn report(
    state: &ControllerState,
    kind: ReportKind,
    selector: Option<&Selector>,
) -> StoreResult<FleetReport> {
    if selector.is_none() {
        return Ok(state.fleet.summary(&state.presence).report(kind));
    }
    let machines = machines(state, selector, false).await?;
    Ok(FleetReport::build(kind, machines.iter().map(|machine| &machine.facts)))
}
