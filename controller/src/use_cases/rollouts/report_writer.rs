//! Agents' convergence reports, written in batches. During a fleet rollout
//! thousands of agents report within the same second; one SQLite transaction per
//! report would queue them all behind the single writer. Sessions hand their report
//! to one writer task, which stores everything that arrived together in one
//! transaction (the latest of each machine wins, as it would anyway), then answers
//! each session — so an agent's report is still acknowledged only once it is
//! stored — and tells the rollout engine.

use std::collections::HashMap;
use std::sync::Arc;

use comfyfleet_config::{ConvergenceReport, MachineId};
use jiff::Timestamp;
use tokio::sync::{mpsc, oneshot};

use crate::store::{Store, StoreError};
use crate::use_cases::rollouts::Rollouts;

/// Reports stored in one transaction at most.
const BATCH: usize = 4_096;

struct Pending {
    machine: MachineId,
    report: ConvergenceReport,
    at: Timestamp,
    stored: oneshot::Sender<Result<(), String>>,
}

#[derive(Clone)]
pub struct ReportWriter {
    sender: mpsc::UnboundedSender<Pending>,
}

impl ReportWriter {
    /// Starts the writer task; it ends when every handle is gone.
    pub fn spawn(store: Arc<dyn Store>, rollouts: Rollouts) -> ReportWriter {
        let (sender, receiver) = mpsc::unbounded_channel();
        tokio::spawn(write(store, rollouts, receiver));
        ReportWriter { sender }
    }

    /// Stores `report` as `machine`'s latest; resolves once it is stored.
    pub async fn record(
        &self,
        machine: &MachineId,
        report: ConvergenceReport,
        at: Timestamp,
    ) -> Result<(), String> {
        let (stored, answer) = oneshot::channel();
        let pending = Pending { machine: machine.clone(), report, at, stored };
        self.sender.send(pending).map_err(|_| "the controller is shutting down".to_owned())?;
        answer.await.map_err(|_| "the controller is shutting down".to_owned())?
    }
}

async fn write(store: Arc<dyn Store>, rollouts: Rollouts, mut receiver: mpsc::UnboundedReceiver<Pending>) {
    let mut batch = Vec::with_capacity(BATCH);
    while receiver.recv_many(&mut batch, BATCH).await > 0 {
        // The latest report of each machine; every sender is answered.
        let mut latest: HashMap<&MachineId, usize> = HashMap::new();
        for (index, pending) in batch.iter().enumerate() {
            latest.insert(&pending.machine, index);
        }
        let mut keep: Vec<usize> = latest.into_values().collect();
        keep.sort_unstable();
        let rows: Vec<(MachineId, ConvergenceReport, Timestamp)> = keep
            .iter()
            .map(|&index| (batch[index].machine.clone(), batch[index].report.clone(), batch[index].at))
            .collect();
        let result: Result<(), StoreError> = store.record_reports(&rows).await;
        if result.is_ok() {
            for (machine, report, at) in &rows {
                rollouts.reported(machine, report, *at);
            }
        }
        let answer = result.map_err(|error| error.to_string());
        for pending in batch.drain(..) {
            let _ = pending.stored.send(answer.clone());
        }
    }
}
