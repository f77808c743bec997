//! The reconcile loop: the assignment the controller sent (journaled) against what
//! the machine has, and only the difference acted on. An assignment that is already
//! built and current costs a few file reads and no process; a new one is prepared
//! next to the running environment (cancelled if another assignment replaces it),
//! then activated. A failure is recorded and not retried until the controller
//! raises the generation. Between assignments the loop keeps ComfyUI running from
//! `current` and removes environments no longer kept.

use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use comfyfleet_config::convergence::{ConvergenceReport, Phase, StepReport};
use comfyfleet_config::resolve::GpuFacts;
use comfyfleet_config::{Assignment, AssignmentRecord, MachineFacts, Resolver};
use jiff::Timestamp;
use tokio::sync::{Notify, watch};

use crate::activation::{self, Activator};
use crate::complete_record::CompleteRecord;
use crate::executor::{self, Executor};
use crate::instances::GpuSlot;
use crate::inventory::InventoryCollector;
use crate::journal::{ActivationMarker, Failure, Journal};
use crate::layout::Layout;
use crate::report::Reporter;
use crate::service::ComfyuiService;

/// How often the loop checks that ComfyUI still runs when nothing else happens.
const SUPERVISE_INTERVAL: Duration = Duration::from_secs(2);

/// What stops work that is safe to stop (preparing, draining).
enum Interrupt {
    NewAssignment,
    Shutdown,
}

struct Interrupts<S> {
    desired: watch::Receiver<Option<AssignmentRecord>>,
    shutdown: std::pin::Pin<S>,
}

impl<S: std::ops::DerefMut<Target: Future<Output = ()>>> Interrupts<S> {
    async fn wait(&mut self) -> Interrupt {
        tokio::select! {
            changed = self.desired.changed() => match changed {
                Ok(()) => Interrupt::NewAssignment,
                Err(_) => Interrupt::Shutdown,
            },
            () = self.shutdown.as_mut() => Interrupt::Shutdown,
        }
    }

    /// Runs `work` unless an interrupt comes first.
    async fn guard<T>(&mut self, work: impl Future<Output = T>) -> Result<T, Interrupt> {
        tokio::select! {
            result = work => Ok(result),
            interrupt = self.wait() => Err(interrupt),
        }
    }
}

pub struct Converger {
    pub executor: Executor,
    pub layout: Layout,
    pub journal: Journal,
    pub service: Arc<ComfyuiService>,
    pub reporter: Reporter,
    pub http: reqwest::Client,
    pub collector: Arc<Mutex<InventoryCollector>>,
    /// Poked when what the inventory reports (the installed environments) changed.
    pub inventory_changed: Arc<Notify>,
    pub port_override: Option<u16>,
    /// Environments kept besides the current one, for instant rollback.
    pub keep_previous: usize,
    /// The GPUs the last inventory found (`None`: none taken yet), for the instances.
    pub gpus: Mutex<Option<Vec<GpuSlot>>>,
}

impl Converger {
    pub(crate) fn activator(&self) -> Activator<'_> {
        Activator {
            layout: &self.layout,
            service: &self.service,
            journal: &self.journal,
            reporter: &self.reporter,
            http: &self.http,
            port_override: self.port_override,
            gpus: self.gpu_slots(),
        }
    }

    pub async fn run(
        self,
        desired: watch::Receiver<Option<AssignmentRecord>>,
        shutdown: impl Future<Output = ()>,
    ) {
        tokio::pin!(shutdown);
        let mut interrupts = Interrupts { desired, shutdown };
        remove_trash(&self.layout).await;
        let mut last_restart: Option<Instant> = None;
        loop {
            let record = interrupts.desired.borrow_and_update().clone();
            match self.converge(record, &mut interrupts).await {
                Ok(()) => {}
                Err(Interrupt::NewAssignment) => {
                    tracing::info!("a new assignment arrived; the one in progress is dropped");
                    continue;
                }
                Err(Interrupt::Shutdown) => return,
            }
            loop {
                tokio::select! {
                    interrupt = interrupts.wait() => match interrupt {
                        Interrupt::NewAssignment => break,
                        Interrupt::Shutdown => return,
                    },
                    () = tokio::time::sleep(SUPERVISE_INTERVAL) => self.supervise(&mut last_restart),
                }
            }
        }
    }

    async fn converge<S: std::ops::DerefMut<Target: Future<Output = ()>>>(
        &self,
        record: Option<AssignmentRecord>,
        interrupts: &mut Interrupts<S>,
    ) -> Result<(), Interrupt> {
        let Some(record) = record else {
            self.reporter.replace(ConvergenceReport::idle(Timestamp::now()));
            return Ok(());
        };
        let mut report = ConvergenceReport::idle(Timestamp::now());
        report.generation = record.generation;
        report.environment = record.environment.clone();
        report.revision_number = record.revision_number;
        report.revision_id = record.revision_id.parse().ok();
        let assignment = match Assignment::from_record(&record) {
            Ok(assignment) => assignment,
            Err(error) => {
                let message = format!("the controller sent an assignment this agent cannot use: {error}");
                tracing::error!(%message);
                report.phase = Phase::Failed;
                report.error = message;
                self.reporter.replace(report);
                return Ok(());
            }
        };
        if let Some(failure) = self.journal.failure()
            && failure.generation == assignment.generation
            && failure.revision_id == assignment.revision_id
        {
            // Failed before (perhaps before a restart): not retried until the
            // controller assigns again.
            report.phase = Phase::Failed;
            report.error = failure.error;
            self.reporter.replace(report);
            return Ok(());
        }
        let facts = self.facts().await;
        if let Err(mismatch) = check_plan(&assignment, &facts) {
            self.fail(report, &assignment, mismatch);
            return Ok(());
        }
        let env = self.layout.env(&assignment.revision_id);
        let activator = self.activator();
        let current = activator.current();
        let is_current =
            current.as_ref().is_some_and(|current| current.revision_id == assignment.revision_id);
        // An activation the agent died in: `current` may point at an environment whose
        // health was never confirmed. It is finished (or undone) before anything else.
        let interrupted = self.journal.activating();
        let built = CompleteRecord::load(&env).filter(|built| built.matches(&assignment));
        if let Some(built) = &built
            && (!assignment.activate || (is_current && interrupted.is_none()))
        {
            // Nothing to do: the no-op path, a few file reads and no process.
            report.phase = if assignment.activate { Phase::Active } else { Phase::Prepared };
            report.steps = built.steps.clone();
            report.optimizations = built.optimizations.clone();
            self.reporter.replace(report);
            return Ok(());
        }

        tracing::info!(assignment = %assignment.describe(), generation = assignment.generation, "converging");
        let built = match built {
            // Built already (a rollback, an interrupted activation): switch only.
            Some(built) => {
                report.steps = built.steps.clone();
                report.optimizations = built.optimizations.clone();
                self.reporter.replace(report);
                built
            }
            None => {
                report.phase = Phase::Preparing;
                report.steps = executor::STEPS.iter().map(|name| StepReport::pending(name)).collect();
                self.reporter.replace(report);
                let gpus: Vec<GpuFacts> = facts.gpus.clone();
                match interrupts.guard(self.executor.prepare(&assignment, &gpus, &self.reporter)).await? {
                    Ok(built) => built,
                    Err(failure) => {
                        let error = failure.to_string();
                        if is_out_of_space(&error) {
                            // Half-built environments hold what the next try needs.
                            collect_incomplete(&self.layout).await;
                        }
                        self.fail(self.reporter.current(), &assignment, error);
                        return Ok(());
                    }
                }
            }
        };
        self.reporter.update(|report| report.optimizations = built.optimizations.clone());
        self.inventory_changed.notify_one();
        if !assignment.activate {
            self.reporter.update(|report| report.phase = Phase::Prepared);
            return Ok(());
        }
        // Where to go back to if this activation fails: what ran before it.
        let previous = match &interrupted {
            Some(marker) => {
                marker.previous.as_ref().and_then(|revision| CompleteRecord::load(&self.layout.env(revision)))
            }
            None => current,
        };
        self.reporter.update(|report| {
            report.phase = Phase::Activating;
            report.steps.retain(|step| !activation::STEPS.contains(&step.name.as_str()));
            report.steps.extend(activation::STEPS.iter().map(|name| StepReport::pending(name)));
        });
        if let Err(failure) = interrupts.guard(activator.drain(&built)).await? {
            self.fail(self.reporter.current(), &assignment, failure.to_string());
            return Ok(());
        }
        // From here on nothing interrupts: the switch always ends consistent, and
        // the marker lets a restarted agent finish it if this one dies.
        let marker = ActivationMarker {
            revision_id: built.revision_id.clone(),
            previous: previous.as_ref().map(|previous| previous.revision_id.clone()),
            at: Timestamp::now(),
        };
        if let Err(error) = self.journal.set_activating(&marker) {
            tracing::warn!(%error, "cannot journal the activation");
        }
        let switched = activator.switch_to(&built, previous.as_ref()).await;
        self.journal.clear_activating();
        self.inventory_changed.notify_one();
        match switched {
            Ok(()) => {
                tracing::info!(assignment = %assignment.describe(), "active");
                self.reporter.update(|report| report.phase = Phase::Active);
                self.collect_garbage(&assignment).await;
                self.inventory_changed.notify_one();
            }
            Err(failure) => self.fail(self.reporter.current(), &assignment, failure.to_string()),
        }
        Ok(())
    }

    fn fail(&self, mut report: ConvergenceReport, assignment: &Assignment, error: String) {
        tracing::error!(assignment = %assignment.describe(), %error, "assignment failed");
        let failure = Failure {
            generation: assignment.generation,
            revision_id: assignment.revision_id.clone(),
            error: error.clone(),
            at: Timestamp::now(),
        };
        if let Err(error) = self.journal.set_failure(&failure) {
            tracing::warn!(%error, "cannot record the failure");
        }
        report.phase = Phase::Failed;
        report.error = error;
        self.reporter.replace(report);
    }

    /// This machine's facts now, for checking a plan and verifying GPUs.
    async fn facts(&self) -> MachineFacts {
        let collector = self.collector.clone();
        let inventory = tokio::task::spawn_blocking(move || {
            collector.lock().unwrap_or_else(PoisonError::into_inner).collect()
        })
        .await
        .ok();
        if let Some(inventory) = &inventory {
            *self.gpus.lock().unwrap_or_else(PoisonError::into_inner) =
                Some(GpuSlot::from_inventory(&inventory.nvidia.gpus));
        }
        MachineFacts::new(String::new(), String::new(), Default::default(), inventory.as_ref())
    }

    /// Removes environments beyond the current one, the assigned one and the
    /// `keep_previous` most recently current others; and any incomplete leftovers.
    async fn collect_garbage(&self, assignment: &Assignment) {
        let keep = kept_environments(&self.journal, assignment, self.keep_previous);
        let keep_dirs: Vec<_> = keep.iter().map(|revision| self.layout.env(revision).path).collect();
        let Ok(entries) = std::fs::read_dir(self.layout.envs()) else { return };
        for entry in entries.flatten() {
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') || keep_dirs.contains(&path) {
                continue;
            }
            let trash = self.layout.envs().join(format!(".trash-{name}"));
            match std::fs::rename(&path, &trash) {
                Ok(()) => tracing::info!(env = %name, "removing an environment no longer kept"),
                Err(error) => tracing::warn!(env = %name, %error, "cannot remove an old environment"),
            }
        }
        remove_trash(&self.layout).await;
        let wheels = self.layout.wheel_cache();
        let in_use = wheels_in_use(&keep_dirs, assignment);
        let _ = tokio::task::spawn_blocking(move || prune_wheels(&wheels, &in_use)).await;
    }
}

/// The sha256 of every verified file a kept environment was built from (its
/// `.comfyfleet/*.lock.txt`), the assigned lock and the assigned plan's kernel
/// wheels: what the agent's file cache keeps. A file of an environment no longer
/// kept is fetched again (from the controller's cache) if it is ever needed.
fn wheels_in_use(kept: &[std::path::PathBuf], assignment: &Assignment) -> std::collections::HashSet<String> {
    let mut in_use: std::collections::HashSet<String> = std::collections::HashSet::new();
    if let Some(lock) = &assignment.lock {
        in_use.extend(lock.packages.iter().map(|package| package.sha256.clone()));
    }
    for optimization in &assignment.plan.optimizations {
        if let comfyfleet_config::resolve::OptimizationSource::Wheel { sha256, .. } = &optimization.source {
            in_use.insert(sha256.clone());
        }
    }
    for env in kept {
        let Ok(entries) = std::fs::read_dir(env.join(".comfyfleet")) else { continue };
        for entry in entries.flatten() {
            if !entry.file_name().to_string_lossy().ends_with(".lock.txt") {
                continue;
            }
            let Ok(text) = std::fs::read_to_string(entry.path()) else { continue };
            in_use.extend(
                text.lines()
                    .filter_map(|line| line.split("--hash=sha256:").nth(1))
                    .map(|hash| hash.trim().to_owned()),
            );
        }
    }
    in_use
}

/// Removes `cache/wheels/<sha256>/` directories not in `in_use` (the pinned uv's
/// wheel too: it was unpacked under `tools/`).
fn prune_wheels(wheels: &std::path::Path, in_use: &std::collections::HashSet<String>) {
    let Ok(entries) = std::fs::read_dir(wheels) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.len() == 64 && name.bytes().all(|b| b.is_ascii_hexdigit()) && !in_use.contains(&name) {
            match std::fs::remove_dir_all(entry.path()) {
                Ok(()) => tracing::debug!(sha256 = %name, "removed a file no kept environment uses"),
                Err(error) => tracing::warn!(sha256 = %name, %error, "cannot remove a cached file"),
            }
        }
    }
}

/// The revisions whose environments stay on disk.
fn kept_environments(
    journal: &Journal,
    assignment: &Assignment,
    keep_previous: usize,
) -> Vec<comfyfleet_config::SpecDigest> {
    let mut keep = vec![assignment.revision_id.clone()];
    for activation in journal.activations() {
        if keep.len() > keep_previous {
            break;
        }
        if !keep.contains(&activation.revision_id) {
            keep.push(activation.revision_id);
        }
    }
    keep
}

/// Whether a failure came from a full disk (or quota).
fn is_out_of_space(error: &str) -> bool {
    ["No space left on device", "os error 28", "ENOSPC", "Disk quota exceeded", "os error 122"]
        .iter()
        .any(|sign| error.contains(sign))
}

/// Removes every environment that was never completed (a build that failed or was
/// cut short): a full disk gets back what they held at once, rather than at the next
/// successful switch. Complete ones, `current`'s among them, stay.
async fn collect_incomplete(layout: &Layout) {
    let envs = layout.envs();
    let Ok(entries) = std::fs::read_dir(&envs) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') || !entry.path().is_dir() {
            continue;
        }
        if (crate::layout::EnvDir { path: entry.path() }).is_complete() {
            continue;
        }
        let trash = envs.join(format!(".trash-{name}"));
        match std::fs::rename(entry.path(), &trash) {
            Ok(()) => tracing::warn!(env = %name, "the disk is full: removing a half-built environment"),
            Err(error) => tracing::warn!(env = %name, %error, "cannot remove a half-built environment"),
        }
    }
    remove_trash(layout).await;
}

/// Deletes `envs/.trash-*` (renamed first, so a crash mid-delete leaves nothing that
/// looks like an environment).
async fn remove_trash(layout: &Layout) {
    let envs = layout.envs();
    let _ = tokio::task::spawn_blocking(move || {
        let Ok(entries) = std::fs::read_dir(&envs) else { return };
        for entry in entries.flatten() {
            if entry.file_name().to_string_lossy().starts_with(".trash-")
                && let Err(error) = std::fs::remove_dir_all(entry.path())
            {
                tracing::warn!(path = %entry.path().display(), %error, "cannot delete an old environment");
            }
        }
    })
    .await;
}

/// The agent resolves the spec again from its own facts: a plan that differs means
/// the controller planned from stale facts (or is not to be trusted), and building
/// it could install the wrong torch for these GPUs.
fn check_plan(assignment: &Assignment, facts: &MachineFacts) -> Result<(), String> {
    // The models' targets may select on labels, which only the controller holds:
    // which models the machine gets is the controller's to plan.
    let without_models = |plan: &comfyfleet_config::MachinePlan| comfyfleet_config::MachinePlan {
        models: Vec::new(),
        ..plan.clone()
    };
    match Resolver::new(&assignment.spec).plan(facts) {
        Ok(plan) if without_models(&plan) == without_models(&assignment.plan) => Ok(()),
        Ok(plan) => Err(format!(
            "the controller planned torch {} with {} optimisation(s), but this machine's own facts give torch {} \
             with {}; its inventory changed since it was planned: start the rollout again",
            assignment.plan.torch,
            assignment.plan.optimizations.len(),
            plan.torch,
            plan.optimizations.len()
        )),
        Err(incompatible) => Err(format!(
            "this machine cannot run {} by its own facts: {}",
            assignment.describe(),
            incompatible.summary()
        )),
    }
}

#[cfg(test)]
mod tests {

    #[tokio::test]
    async fn a_full_disk_takes_back_half_built_environments_and_keeps_complete_ones() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::new(dir.path());
        layout.create().unwrap();
        let complete = layout.envs().join("aaaaaaaaaaaa");
        let half = layout.envs().join("bbbbbbbbbbbb");
        std::fs::create_dir_all(complete.join("venv")).unwrap();
        std::fs::write(complete.join(".complete"), b"{}").unwrap();
        std::fs::create_dir_all(half.join("venv/lib")).unwrap();
        std::fs::write(half.join("venv/lib/big.so"), vec![0u8; 4096]).unwrap();
        assert!(is_out_of_space("uv: error: failed to write: No space left on device (os error 28)"));
        assert!(!is_out_of_space("uv: error: no matching distribution for torch==9"));
        collect_incomplete(&layout).await;
        assert!(complete.join(".complete").exists(), "a complete environment stays");
        assert!(!half.exists(), "a half-built one goes");
        let left: Vec<_> =
            std::fs::read_dir(layout.envs()).unwrap().flatten().map(|e| e.file_name()).collect();
        assert_eq!(left.len(), 1, "no trash left: {left:?}");
    }
    use comfyfleet_config::inventory::{ComputeCapability, CudaVersion};
    use comfyfleet_config::{AssignmentReason, Spec, SpecFormat};

    use super::*;

    fn h100() -> MachineFacts {
        MachineFacts {
            id: String::new(),
            hostname: String::new(),
            labels: Default::default(),
            os: Some("linux".into()),
            arch: Some("x86_64".into()),
            nvml_problem: None,
            driver_version: Some("580.95.05".into()),
            cuda_driver_version: Some(CudaVersion::new(13, 0)),
            gpus: vec![GpuFacts {
                index: 0,
                name: Some("NVIDIA H100 80GB HBM3".into()),
                compute_capability: Some(ComputeCapability::new(9, 0)),
                memory_total_bytes: Some(80 << 30),
            }],
            reported: true,
            software: Default::default(),
        }
    }

    fn assignment_for(facts: &MachineFacts) -> Assignment {
        let text = include_str!("../../config/examples/render-farm.toml")
            .replace("ref = \"v0.33.0\"", &format!("ref = \"v0.33.0\"\ncommit = \"{}\"", "a".repeat(40)))
            .replace("ref = \"main\"", &format!("ref = \"main\"\ncommit = \"{}\"", "b".repeat(40)));
        let spec = Spec::parse("render-farm.toml", &text, SpecFormat::Toml).unwrap();
        let plan = Resolver::new(&spec).plan(facts).unwrap();
        Assignment {
            generation: 1,
            environment: spec.name.clone(),
            revision_number: 1,
            revision_id: spec.digest(),
            spec,
            plan,
            activate: true,
            reason: AssignmentReason::Rollout,
            lock: None,
        }
    }

    #[test]
    fn the_plan_must_be_what_this_machine_resolves_itself() {
        let facts = h100();
        let assignment = assignment_for(&facts);
        assert_eq!(check_plan(&assignment, &facts), Ok(()));

        // The controller planned from facts this machine no longer has: an RTX 5090
        // was put in, which the planned SageAttention 2 wheel has no kernels for.
        let mut swapped = facts.clone();
        swapped.gpus[0].compute_capability = Some(ComputeCapability::new(12, 0));
        let refused = check_plan(&assignment, &swapped).unwrap_err();
        assert!(refused.contains("inventory changed since it was planned"), "{refused}");

        // A driver too old for every allowed build: this machine cannot run it at all.
        let mut old_driver = facts;
        old_driver.cuda_driver_version = Some(CudaVersion::new(12, 2));
        let refused = check_plan(&assignment, &old_driver).unwrap_err();
        assert!(refused.contains("cannot run render-prod@1") && refused.contains("CUDA 12.2"), "{refused}");
    }

    #[test]
    fn the_file_cache_keeps_what_kept_environments_and_the_assignment_use() {
        let dir = tempfile::tempdir().unwrap();
        let wheels = dir.path().join("cache/wheels");
        let assignment = assignment_for(&h100());
        let kernel = assignment
            .plan
            .optimizations
            .iter()
            .find_map(|optimization| match &optimization.source {
                comfyfleet_config::resolve::OptimizationSource::Wheel { sha256, .. } => Some(sha256.clone()),
                comfyfleet_config::resolve::OptimizationSource::Index { .. } => None,
            })
            .unwrap();
        let (built, gone) = ("a".repeat(64), "b".repeat(64));
        for sha in [&built, &gone, &kernel] {
            std::fs::create_dir_all(wheels.join(sha)).unwrap();
            std::fs::write(wheels.join(sha).join("x-1.0-py3-none-any.whl"), "x").unwrap();
        }
        std::fs::create_dir_all(wheels.join("not-a-digest")).unwrap();
        let kept = dir.path().join("envs/kept");
        std::fs::create_dir_all(kept.join(".comfyfleet")).unwrap();
        std::fs::write(
            kept.join(".comfyfleet/requirements.lock.txt"),
            format!("x==1.0 --hash=sha256:{built}\n"),
        )
        .unwrap();
        let in_use = wheels_in_use(std::slice::from_ref(&kept), &assignment);
        prune_wheels(&wheels, &in_use);
        assert!(wheels.join(&built).is_dir(), "a kept environment's file stays");
        assert!(wheels.join(&kernel).is_dir(), "the assigned plan's kernel wheel stays");
        assert!(!wheels.join(&gone).exists(), "a file nothing kept uses goes");
        assert!(wheels.join("not-a-digest").is_dir(), "only digests are touched");
    }
}
