//! Between assignments: every ComfyUI of `current` kept running (a crash, a reboot,
//! a first start), and the machine's GPUs the instances are planned on.

use std::sync::PoisonError;
use std::time::{Duration, Instant};

use comfyfleet_config::convergence::{InstanceReport, InstanceState};

use crate::converge::Converger;
use crate::instances::GpuSlot;
use crate::service::Recorded;

/// Shortest time between two restarts of a ComfyUI that keeps exiting.
const RESTART_BACKOFF: Duration = Duration::from_secs(10);

impl Converger {
    /// The machine's GPUs: from the last inventory, or from a new one.
    pub(crate) fn gpu_slots(&self) -> Vec<GpuSlot> {
        let mut cached = self.gpus.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(gpus) = cached.as_ref() {
            return gpus.clone();
        }
        let inventory = self.collector.lock().unwrap_or_else(PoisonError::into_inner).collect();
        let gpus = GpuSlot::from_inventory(&inventory.nvidia.gpus);
        *cached = Some(gpus.clone());
        gpus
    }

    /// Keeps every ComfyUI running from `current` (a crash, a reboot, a first
    /// start): an instance that exited is started again as it was launched.
    pub(crate) fn supervise(&self, last_restart: &mut Option<Instant>) {
        let recorded = self.service.recorded();
        self.report_instances(&recorded);
        let all_alive = !recorded.is_empty() && recorded.iter().all(|recorded| recorded.alive);
        if all_alive || last_restart.is_some_and(|at| at.elapsed() < RESTART_BACKOFF) {
            return;
        }
        let activator = self.activator();
        let Some(record) = activator.current() else { return };
        *last_restart = Some(Instant::now());
        if let Err(error) = crate::comfyui::model_folders::prepare(&self.layout.shared(), &record.comfyui) {
            tracing::error!(%error, "cannot prepare the shared model folders; starting ComfyUI anyway");
        }
        let launches: Vec<crate::service::Launch> = if recorded.is_empty() {
            match activator.launches(&record) {
                Ok(planned) => {
                    let plans: Vec<_> = planned.iter().map(|(plan, _)| plan.clone()).collect();
                    if let Err(error) = crate::instances::create_directories(&plans) {
                        tracing::error!(%error, "cannot prepare the instances' directories");
                    }
                    planned.into_iter().map(|(_, launch)| launch).collect()
                }
                Err(error) => {
                    tracing::error!(%error, "cannot plan the ComfyUI instances");
                    return;
                }
            }
        } else {
            recorded.into_iter().filter(|recorded| !recorded.alive).map(|recorded| recorded.launch).collect()
        };
        for launch in launches {
            tracing::warn!(
                instance = launch.instance,
                port = launch.port,
                "ComfyUI is not running; starting it"
            );
            if let Err(error) = self.service.start(&launch) {
                tracing::error!(%error, "cannot start ComfyUI");
            }
        }
    }

    /// The report's instances brought up to date with the processes: an adopted or
    /// restarted one is `running`, a gone one `exited`; a known one keeps its state.
    fn report_instances(&self, recorded: &[Recorded]) {
        let report = self.reporter.current();
        let instances: Vec<InstanceReport> = recorded
            .iter()
            .map(|recorded| {
                let pid = u32::try_from(recorded.pid).unwrap_or_default();
                let index = u32::try_from(recorded.launch.instance).unwrap_or(u32::MAX);
                let known =
                    report.instances.iter().find(|instance| instance.index == index && instance.pid == pid);
                let (state, health) = match known {
                    _ if !recorded.alive => (InstanceState::Exited, String::new()),
                    Some(known) => (known.state, known.health.clone()),
                    None => (InstanceState::Running, String::new()),
                };
                InstanceReport {
                    index,
                    gpus: recorded.launch.gpus.clone(),
                    port: recorded.launch.port.into(),
                    pid,
                    state,
                    health,
                }
            })
            .collect();
        if instances != report.instances {
            self.reporter.update(|report| report.instances = instances);
        }
    }
}
