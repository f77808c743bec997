//! The fleet simulator behind `comfyfleet-fleetsim`: N simulated agents in one
//! process, each with its own enrolled identity and a real mutual-TLS session to the
//! real controller (the agent crate's own enrollment, link, journal, reporter and
//! inventory collector), GPUs from a machine profile, and a converger that only
//! sleeps. For rollout tests and benchmarks at fleet sizes no test machine could
//! run real agents for.
//!
//! The simulator answers control commands (see [`commands`]) with one line each and
//! appends what happens to an events file (see [`events`]).
#![warn(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::print_stdout, clippy::print_stderr)]

mod agent;
pub mod commands;
mod converger;
pub mod events;
mod failures;
mod fleet;
pub mod profiles;
mod resources;

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use comfyfleet_config::{JoinToken, Labels};
use tokio::sync::mpsc;

use self::agent::FleetContext;
use self::commands::Command;
use self::converger::Behaviour;
use self::events::EventLog;
use self::fleet::Fleet;
use self::profiles::{ProfileError, ProfileSet};

#[derive(Debug, thiserror::Error)]
pub enum FleetSimError {
    #[error(transparent)]
    Profiles(#[from] ProfileError),
    #[error("{0}")]
    BadOption(String),
    #[error(
        "the open-files limit is {limit}, but {agents} simulated agents need about {needed} (a socket each, \
         plus enrollments in flight): raise the hard limit (`ulimit -Hn`, systemd LimitNOFILE=, \
         docker --ulimit nofile=) or simulate fewer agents"
    )]
    OpenFiles { limit: u64, needed: u64, agents: usize },
    #[error("cannot create {path}: {source}")]
    DataDir { path: PathBuf, source: std::io::Error },
    #[error("cannot open the events file {path}: {source}")]
    Events { path: PathBuf, source: std::io::Error },
    #[error("agent {agent}: {source}")]
    Identity { agent: usize, source: comfyfleet_agent::identity::IdentityError },
    #[error(
        "agent {agent} is not enrolled yet: pass --join-token TOKEN (from `comfyfleet token create`, \
         with enough uses for the whole fleet)"
    )]
    NotEnrolled { agent: usize },
    #[error("agent {agent} cannot enroll: {source}")]
    Enroll { agent: usize, source: comfyfleet_agent::enroll::EnrollError },
    #[error("agent {agent}: the controller refused its session: {reason}")]
    Refused { agent: usize, reason: String },
    #[error("an agent's task crashed: {0}")]
    Crashed(String),
}

impl FleetSimError {
    /// A bad flag (or a profile file that does not fit them).
    pub fn is_usage(&self) -> bool {
        matches!(
            self,
            FleetSimError::Profiles(_) | FleetSimError::BadOption(_) | FleetSimError::NotEnrolled { .. }
        )
    }

    /// The controller said no: an operator must act (new token, other controller).
    pub fn is_refusal(&self) -> bool {
        use comfyfleet_agent::enroll::EnrollError;
        matches!(
            self,
            FleetSimError::Refused { .. }
                | FleetSimError::Enroll {
                    source: EnrollError::Refused(_) | EnrollError::CaMismatch { .. },
                    ..
                }
        )
    }
}

/// Everything the simulator is told at start.
#[derive(Debug, Clone)]
pub struct SimOptions {
    pub controller_urls: Vec<String>,
    /// Needed only for agents without an identity under `data_dir` yet.
    pub join_token: Option<JoinToken>,
    /// Agent `i` keeps its identity and journal in `data_dir/agent-<i>/`.
    pub data_dir: PathBuf,
    pub count: usize,
    /// Default: the built-in copy of tests/fixtures/gpu-profiles.json.
    pub profiles_file: Option<PathBuf>,
    /// Profiles the fleet cycles through; empty: all of the file's, by name.
    pub profile_names: Vec<String>,
    pub prepare: Duration,
    pub activate: Duration,
    pub jitter: f64,
    pub fail_prepare: f64,
    pub fail_activate: f64,
    pub spare_first_revision: bool,
    pub seed: u64,
    pub events: Option<PathBuf>,
    pub enroll_parallel: usize,
    pub labels: Labels,
    /// Agent `i` reports hostname `<prefix><i>`.
    pub hostname_prefix: String,
    pub max_backoff: Duration,
    pub inventory_interval: Duration,
}

impl SimOptions {
    fn check(&self) -> Result<(), FleetSimError> {
        for (flag, value) in [
            ("--jitter", self.jitter),
            ("--fail-prepare", self.fail_prepare),
            ("--fail-activate", self.fail_activate),
        ] {
            if !(0.0..=1.0).contains(&value) {
                return Err(FleetSimError::BadOption(format!("{flag} {value}: give a fraction from 0 to 1")));
            }
        }
        if self.enroll_parallel == 0 {
            return Err(FleetSimError::BadOption("--enroll-parallel must be at least 1".into()));
        }
        Ok(())
    }
}

/// Runs the fleet until `shutdown` resolves or `commands` closes (stdin's end).
/// `output` receives `ready <N>` once every agent had its first session, then one
/// answer per command.
pub async fn run(
    options: SimOptions,
    mut commands: mpsc::Receiver<String>,
    output: mpsc::UnboundedSender<String>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), FleetSimError> {
    tokio::pin!(shutdown);
    options.check()?;
    let profiles = ProfileSet::load(options.profiles_file.as_deref(), &options.profile_names)?;
    resources::check_open_files(options.count, options.enroll_parallel)?;
    comfyfleet_daemon::files::create_private_dir(&options.data_dir)
        .map_err(|source| FleetSimError::DataDir { path: options.data_dir.clone(), source })?;
    resources::warn_if_slow_data_dir(&options.data_dir, options.count);
    let (events, writer) = match &options.events {
        Some(path) => {
            let (log, writer) = EventLog::open(path)
                .map_err(|source| FleetSimError::Events { path: path.clone(), source })?;
            (log, Some(writer))
        }
        None => (EventLog::default(), None),
    };
    let context = Arc::new(FleetContext {
        controller_urls: options.controller_urls.clone(),
        join_token: options.join_token.clone(),
        data_dir: options.data_dir.clone(),
        hostname_prefix: options.hostname_prefix.clone(),
        labels: options.labels.clone(),
        profiles,
        behaviour: Arc::new(Behaviour::new(
            options.prepare,
            options.activate,
            options.jitter,
            options.spare_first_revision,
        )),
        events,
        inventory_interval: options.inventory_interval,
        max_backoff: options.max_backoff,
        seed: options.seed,
    });
    let mut fleet = Fleet::new(context, options.enroll_parallel, options.fail_prepare, options.fail_activate);

    let started = tokio::time::Instant::now();
    let result = tokio::select! {
        added = fleet.add(options.count) => added.map(|_| true),
        () = &mut shutdown => Ok(false),
    };
    let serving = match result {
        Ok(serving) => serving,
        Err(error) => {
            fleet.stop().await;
            drop(writer);
            return Err(error);
        }
    };
    if serving {
        tracing::info!(agents = fleet.agent_count(), took = ?started.elapsed(), "the fleet is up");
        let _ = output.send(format!("ready {}", fleet.agent_count()));
        serve(&mut fleet, &mut commands, &output, &mut shutdown).await;
    }
    tracing::info!(agents = fleet.agent_count(), "stopping the fleet");
    fleet.stop().await;
    if let Some(writer) = writer {
        writer.close();
    }
    tracing::info!("the fleet stopped");
    Ok(())
}

/// Answers commands until stdin ends or `shutdown` resolves.
async fn serve(
    fleet: &mut Fleet,
    commands: &mut mpsc::Receiver<String>,
    output: &mpsc::UnboundedSender<String>,
    shutdown: &mut std::pin::Pin<&mut impl Future<Output = ()>>,
) {
    loop {
        let line = tokio::select! {
            line = commands.recv() => line,
            () = shutdown.as_mut() => return,
        };
        let Some(line) = line else {
            tracing::info!("stdin closed");
            return;
        };
        if line.trim().is_empty() {
            continue;
        }
        let answer = match line.parse::<Command>() {
            Ok(command) => {
                tokio::select! {
                    answer = fleet.answer(command) => answer,
                    () = shutdown.as_mut() => return,
                }
            }
            Err(error) => format!("error {error}"),
        };
        let _ = output.send(answer);
    }
}
