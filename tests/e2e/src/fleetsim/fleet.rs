//! The simulated fleet: agents added in batches (identities obtained with bounded
//! parallelism, each agent started as soon as it has one), and the control commands
//! answered against it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use comfyfleet_config::convergence::Phase;
use tokio::task::JoinSet;

use super::FleetSimError;
use super::agent::{FleetContext, SimAgent, obtain_identity};
use super::commands::Command;
use super::events::{Event, EventKind};
use super::failures::choose_failers;
use super::resources;

/// How long `online I` waits for the session before answering.
const ONLINE_TIMEOUT: Duration = Duration::from_secs(30);
/// How often progress is logged while a batch enrolls and connects.
const PROGRESS_INTERVAL: Duration = Duration::from_secs(5);

pub struct Fleet {
    context: Arc<FleetContext>,
    agents: Vec<SimAgent>,
    enroll_parallel: usize,
    fail_prepare: f64,
    fail_activate: f64,
}

impl Fleet {
    pub fn new(
        context: Arc<FleetContext>,
        enroll_parallel: usize,
        fail_prepare: f64,
        fail_activate: f64,
    ) -> Self {
        Self { context, agents: Vec::new(), enroll_parallel, fail_prepare, fail_activate }
    }

    pub fn agent_count(&self) -> usize {
        self.agents.len()
    }

    /// Adds `count` agents with the next indices and waits until each has had a
    /// session; returns their machine ids. On error the batch is dropped (its links
    /// stop); identities already obtained stay on disk for the next try.
    pub async fn add(&mut self, count: usize) -> Result<Vec<String>, FleetSimError> {
        let first = self.agents.len();
        resources::check_open_files(first + count, self.enroll_parallel)?;
        let failers = choose_failers(self.context.seed, first, count, self.fail_prepare, self.fail_activate);
        let mut batch: Vec<Option<SimAgent>> = (0..count).map(|_| None).collect();
        let mut pending = JoinSet::new();
        let mut next = 0;
        let mut started = 0;
        let mut last_progress = Instant::now();
        while started < count {
            while next < count && pending.len() < self.enroll_parallel {
                let context = self.context.clone();
                let index = first + next;
                pending.spawn(async move { (index, obtain_identity(&context, index).await) });
                next += 1;
            }
            let Some(joined) = pending.join_next().await else { break };
            let (index, obtained) = joined.map_err(|error| FleetSimError::Crashed(error.to_string()))?;
            let (identity, reused) = obtained?;
            let machine_id = identity.machine_id.to_string();
            let mut enrolled = Event::new(index, &machine_id, EventKind::Enrolled);
            enrolled.reused = Some(reused);
            self.context.events.emit(enrolled);
            let failer = failers[index - first];
            for (fails, kind) in [(failer.prepare, "prepare"), (failer.activate, "activate")] {
                if fails {
                    let mut event = Event::new(index, &machine_id, EventKind::Failer);
                    event.fails = Some(kind);
                    self.context.events.emit(event);
                }
            }
            batch[index - first] = Some(SimAgent::start(self.context.clone(), index, identity, failer)?);
            started += 1;
            if last_progress.elapsed() >= PROGRESS_INTERVAL {
                last_progress = Instant::now();
                tracing::info!(started, of = count, "agents enrolled and started");
            }
        }
        let batch: Vec<SimAgent> = batch.into_iter().flatten().collect();
        wait_all_connected(&batch).await?;
        let ids = batch.iter().map(|agent| agent.machine_id.clone()).collect();
        self.agents.extend(batch);
        Ok(ids)
    }

    /// One answer line for `command`: `ok …` or `error …`.
    pub async fn answer(&mut self, command: Command) -> String {
        match self.execute(command).await {
            Ok(answer) if answer.is_empty() => "ok".to_owned(),
            Ok(answer) => format!("ok {answer}"),
            Err(error) => format!("error {error}"),
        }
    }

    async fn execute(&mut self, command: Command) -> Result<String, String> {
        match command {
            Command::Offline(index) => {
                let agent = self.agent(index)?;
                if !agent.go_offline().await {
                    return Err(format!("agent {index} is offline already"));
                }
                Ok(format!("offline {index} {}", agent.machine_id))
            }
            Command::Online(index) => {
                let agent = self.agent(index)?;
                if !agent.go_online() {
                    return Err(format!("agent {index} is online already"));
                }
                agent
                    .wait_connected(ONLINE_TIMEOUT)
                    .await
                    .map_err(|reason| format!("agent {index} did not connect: {reason}"))?;
                Ok(format!("online {index} {}", agent.machine_id))
            }
            Command::Spawn(count) => {
                let ids = self.add(count).await.map_err(|error| error.to_string())?;
                Ok(format!("spawned {}", ids.join(" ")))
            }
            Command::Fix => {
                self.context.behaviour.fix();
                Ok("fixed".to_owned())
            }
            Command::Ids => Ok(self.ids().join(" ")),
            Command::Stats => Ok(self.stats().to_string()),
        }
    }

    fn agent(&mut self, index: usize) -> Result<&mut SimAgent, String> {
        let count = self.agents.len();
        self.agents.get_mut(index).ok_or_else(|| match count {
            0 => format!("no agent {index}: the fleet is empty"),
            _ => format!("no agent {index}: there are {count}, numbered 0 to {}", count - 1),
        })
    }

    pub fn ids(&self) -> Vec<String> {
        self.agents.iter().map(|agent| agent.machine_id.clone()).collect()
    }

    /// `{"agents", "online", "connected", "refused", "phases": {phase: count}}`.
    pub fn stats(&self) -> serde_json::Value {
        let mut phases: BTreeMap<&str, usize> =
            [Phase::Idle, Phase::Preparing, Phase::Prepared, Phase::Activating, Phase::Active, Phase::Failed]
                .into_iter()
                .map(|phase| (phase.as_str(), 0))
                .collect();
        for agent in &self.agents {
            *phases.entry(agent.phase().as_str()).or_default() += 1;
        }
        let count = |check: fn(&SimAgent) -> bool| self.agents.iter().filter(|agent| check(agent)).count();
        serde_json::json!({
            "agents": self.agents.len(),
            "online": count(SimAgent::is_online),
            "connected": count(SimAgent::is_connected),
            "refused": count(|agent| agent.refusal().is_some()),
            "phases": phases,
        })
    }

    /// Stops every link (the controller sees each session end).
    pub async fn stop(&mut self) {
        let mut stopping = JoinSet::new();
        for mut agent in self.agents.drain(..) {
            stopping.spawn(async move {
                agent.go_offline().await;
            });
        }
        while stopping.join_next().await.is_some() {}
    }
}

/// Waits until every agent of `batch` has had a session; a refused one fails the batch.
async fn wait_all_connected(batch: &[SimAgent]) -> Result<(), FleetSimError> {
    let mut last_progress = Instant::now();
    let mut remaining: Vec<&SimAgent> = batch.iter().collect();
    loop {
        remaining.retain(|agent| !agent.is_connected());
        if remaining.is_empty() {
            return Ok(());
        }
        if let Some((agent, reason)) =
            remaining.iter().find_map(|agent| agent.refusal().map(|reason| (agent, reason)))
        {
            return Err(FleetSimError::Refused { agent: agent.index, reason });
        }
        if last_progress.elapsed() >= PROGRESS_INTERVAL {
            last_progress = Instant::now();
            tracing::info!(waiting = remaining.len(), of = batch.len(), "waiting for first sessions");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
