//! A machine as `comfyfleet machines` shows it. The JSON form is a stable, flat
//! contract (scripts and `plan --facts` read it); the table form is for eyes.

use std::collections::BTreeMap;

use comfyfleet_config::assignment::MachineAssignment;
use comfyfleet_config::resolve::{GpuFacts, MachineFacts, SoftwareFacts};
use comfyfleet_config::{ConvergenceReport, Gpu, InstalledEnvironments, MachineRecord, NvmlStatus};
use comfyfleet_proto::v1 as pb;
use serde::{Deserialize, Serialize};

use crate::format;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MachineView {
    pub id: String,
    pub hostname: String,
    /// Defaults (false, "", empty) let `plan --facts` read a hand-written file with only
    /// the facts planning uses: id, hostname, labels, driver_version,
    /// cuda_driver_version and gpus (index, name, memory_total_bytes,
    /// compute_capability); arch defaults to x86_64.
    #[serde(default)]
    pub online: bool,
    /// RFC 3339; null if the agent never connected.
    pub last_seen: Option<String>,
    /// When the stored inventory last changed (RFC 3339; an agent that reports the
    /// same one again does not move it); null before the first inventory.
    #[serde(default)]
    pub inventory_updated_at: Option<String>,
    #[serde(default)]
    pub enrolled_at: String,
    pub revoked_at: Option<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Which layer set each label: `token` (binding), `agent` or `operator`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub label_sources: BTreeMap<String, String>,
    pub driver_version: Option<String>,
    /// e.g. "12.8"; null without a driver.
    pub cuda_driver_version: Option<String>,
    /// "ok", "library-not-found", "driver-not-loaded", "error"; null before the first report.
    pub nvml_status: Option<String>,
    pub nvml_detail: Option<String>,
    pub os: Option<String>,
    pub kernel: Option<String>,
    pub arch: Option<String>,
    pub cpu_model: Option<String>,
    pub cpu_cores: Option<u32>,
    pub memory_total_bytes: Option<u64>,
    pub data_dir_free_bytes: Option<u64>,
    /// What is wrong with the agent itself (its identity files gone).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<String>,
    #[serde(default)]
    pub agent_version: String,
    #[serde(default)]
    pub remote_address: String,
    #[serde(default)]
    pub gpus: Vec<GpuView>,
    /// What the controller wants the machine to run; null when nothing is assigned.
    #[serde(default)]
    pub assignment: Option<MachineAssignment>,
    /// The agent's latest report on its assignment; null until it sent one.
    #[serde(default)]
    pub report: Option<ConvergenceReport>,
    /// The environments built on the machine (`current` and those kept); null before
    /// the first inventory.
    #[serde(default)]
    pub environments: Option<InstalledEnvironments>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct GpuView {
    pub index: u32,
    pub name: Option<String>,
    pub uuid: Option<String>,
    pub memory_total_bytes: Option<u64>,
    /// e.g. "8.9".
    pub compute_capability: Option<String>,
    pub pci_bus_id: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<String>,
}

impl From<&Gpu> for GpuView {
    fn from(gpu: &Gpu) -> Self {
        GpuView {
            index: gpu.index,
            name: gpu.name.clone(),
            uuid: gpu.uuid.clone(),
            memory_total_bytes: gpu.memory_total_bytes,
            compute_capability: gpu.compute_capability.map(|cc| cc.to_string()),
            pci_bus_id: gpu.pci_bus_id.clone(),
            errors: gpu.errors.clone(),
        }
    }
}

impl MachineView {
    /// A machine as the controller sent it; an unreadable record is the controller's
    /// fault and says which machine it was.
    pub fn from_wire(machine: pb::Machine) -> anyhow::Result<MachineView> {
        let id = machine.id.clone();
        let record = MachineRecord::try_from(machine).map_err(|error| {
            anyhow::anyhow!("the controller sent an unreadable record for machine {id}: {error}")
        })?;
        Ok(MachineView::from(&record))
    }
}

impl From<&MachineRecord> for MachineView {
    fn from(machine: &MachineRecord) -> Self {
        let inventory = machine.inventory.as_ref();
        let host = inventory.map(|inventory| &inventory.host);
        let nvidia = inventory.map(|inventory| &inventory.nvidia);
        let status = nvidia.map(|nvidia| {
            let json = serde_json::to_value(&nvidia.status).unwrap_or_default();
            json["status"].as_str().unwrap_or("error").to_owned()
        });
        MachineView {
            id: machine.id.to_string(),
            hostname: machine.hostname.clone(),
            online: machine.online,
            last_seen: machine.last_seen.map(format::rfc3339),
            inventory_updated_at: machine.inventory_updated_at.map(format::rfc3339),
            enrolled_at: format::rfc3339(machine.enrolled_at),
            revoked_at: machine.revoked_at.map(format::rfc3339),
            labels: machine.labels.as_map().clone(),
            label_sources: machine
                .labels
                .iter()
                .map(|(key, _)| {
                    let source = if machine.operator_labels.get(key).is_some() {
                        "operator"
                    } else if machine.token_labels.get(key).is_some() {
                        "token"
                    } else {
                        "agent"
                    };
                    (key.to_owned(), source.to_owned())
                })
                .collect(),
            driver_version: nvidia.and_then(|nvidia| nvidia.driver_version.clone()),
            cuda_driver_version: nvidia.and_then(|nvidia| nvidia.cuda_driver_version).map(|v| v.to_string()),
            nvml_status: status,
            nvml_detail: nvidia
                .map(|nvidia| nvidia.status.detail().to_owned())
                .filter(|detail| !detail.is_empty()),
            os: host.map(|host| host.os.clone()),
            kernel: host.map(|host| host.kernel.clone()),
            arch: host.map(|host| host.arch.clone()),
            cpu_model: host.map(|host| host.cpu_model.clone()),
            cpu_cores: host.map(|host| host.cpu_cores),
            memory_total_bytes: host.map(|host| host.memory_total_bytes),
            data_dir_free_bytes: host.map(|host| host.data_dir_free_bytes),
            problems: host.map(|host| host.problems.clone()).unwrap_or_default(),
            agent_version: machine.agent_version.clone(),
            remote_address: machine.remote_address.clone(),
            gpus: nvidia.map(|nvidia| nvidia.gpus.iter().map(GpuView::from).collect()).unwrap_or_default(),
            assignment: machine.assignment.clone(),
            report: machine.report.clone(),
            environments: inventory.map(|inventory| inventory.environments.clone()),
        }
    }
}

impl MachineView {
    pub fn status(&self) -> &'static str {
        if self.revoked_at.is_some() {
            "revoked"
        } else if self.online {
            "online"
        } else {
            "offline"
        }
    }

    /// "2× L40S (8.9, 45 GiB)"; mixed machines join their groups with " + ".
    pub fn gpu_summary(&self) -> String {
        if self.gpus.is_empty() {
            return match self.nvml_status.as_deref() {
                None => "unknown".to_owned(),
                Some("ok") => "none".to_owned(),
                Some("library-not-found") => "none (no NVIDIA library)".to_owned(),
                Some("driver-not-loaded") => "none (driver not loaded)".to_owned(),
                Some(_) => "none (NVML error)".to_owned(),
            };
        }
        let mut groups: Vec<(String, usize)> = Vec::new();
        for gpu in &self.gpus {
            let name = gpu.name.as_deref().map_or("unreadable GPU", format::short_gpu_name);
            let mut facts = Vec::new();
            if let Some(cc) = &gpu.compute_capability {
                facts.push(cc.clone());
            }
            if let Some(memory) = gpu.memory_total_bytes {
                facts.push(format::bytes(memory));
            }
            let label =
                if facts.is_empty() { name.to_owned() } else { format!("{name} ({})", facts.join(", ")) };
            match groups.iter_mut().find(|(existing, _)| *existing == label) {
                Some((_, count)) => *count += 1,
                None => groups.push((label, 1)),
            }
        }
        let summary: Vec<String> = groups.iter().map(|(label, count)| format!("{count}× {label}")).collect();
        let errors = self.gpus.iter().filter(|gpu| !gpu.errors.is_empty()).count();
        let mut text = summary.join(" + ");
        if errors > 0 {
            text.push_str(&format!(" [{errors} with errors]"));
        }
        text
    }

    /// What the resolver knows about this machine. The same conversion serves
    /// `plan --facts FILE` and `plan` against the live fleet, so both answer alike.
    pub fn facts(&self) -> Result<MachineFacts, String> {
        let bad = |field: &str, value: &str| format!("machine {}: {field} `{value}` is unreadable", self.id);
        let gpus = self
            .gpus
            .iter()
            .map(|gpu| {
                let compute_capability = match &gpu.compute_capability {
                    Some(cc) => Some(cc.parse().map_err(|_| bad("compute_capability", cc))?),
                    None => None,
                };
                Ok(GpuFacts {
                    index: gpu.index,
                    name: gpu.name.clone(),
                    compute_capability,
                    memory_total_bytes: gpu.memory_total_bytes,
                })
            })
            .collect::<Result<Vec<_>, String>>()?;
        let cuda_driver_version = match &self.cuda_driver_version {
            Some(version) => Some(version.parse().map_err(|_| bad("cuda_driver_version", version))?),
            None => None,
        };
        let nvml_problem = match self.nvml_status.as_deref() {
            None | Some("ok") => None,
            Some(status) => {
                let json = serde_json::json!({ "status": status, "detail": self.nvml_detail.clone().unwrap_or_default() });
                let status: NvmlStatus =
                    serde_json::from_value(json).map_err(|_| bad("nvml_status", status))?;
                Some(status.summary().to_owned())
            }
        };
        // A hand-written facts file (`plan --facts`) gives the driver and GPUs but no
        // NVML status: its machine has reported them, on x86_64 unless it says.
        let hand_written =
            self.nvml_status.is_none() && (self.driver_version.is_some() || !self.gpus.is_empty());
        let reported = self.nvml_status.is_some() || hand_written;
        Ok(MachineFacts {
            id: self.id.clone(),
            hostname: self.hostname.clone(),
            labels: self.labels.clone(),
            os: self.os.clone(),
            arch: self.arch.clone().or_else(|| hand_written.then(|| "x86_64".to_owned())),
            nvml_problem,
            driver_version: self.driver_version.clone(),
            cuda_driver_version,
            gpus,
            reported,
            software: SoftwareFacts::new(self.environments.as_ref(), self.report.as_ref()),
        })
    }

    /// The report on the assignment's generation, once the agent has sent one.
    pub fn current_report(&self) -> Option<&ConvergenceReport> {
        let assignment = self.assignment.as_ref()?;
        self.report.as_ref().filter(|report| report.generation >= assignment.generation)
    }

    /// `render-prod@2 active`; `pending` until the agent reports on the assignment;
    /// `-` when nothing is assigned.
    pub fn environment_status(&self) -> String {
        let Some(assignment) = &self.assignment else { return "-".to_owned() };
        let phase = self.current_report().map_or("pending", |report| report.phase.as_str());
        format!("{}@{} {phase}", assignment.environment, assignment.revision_number)
    }

    /// `pool=quarantine (token), rack=12 (operator)`: each label with the layer that set it.
    pub fn labels_with_sources(&self) -> String {
        self.labels
            .iter()
            .map(|(key, value)| match self.label_sources.get(key) {
                Some(source) => format!("{key}={value} ({source})"),
                None => format!("{key}={value}"),
            })
            .collect::<Vec<_>>()
            .join(", ")
    }

    pub fn labels_text(&self) -> String {
        self.labels.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",")
    }
}

#[cfg(test)]
impl MachineView {
    /// An online machine with one RTX 4090 and nothing assigned, for tests.
    pub fn example(id: &str, hostname: &str) -> Self {
        MachineView {
            id: id.into(),
            hostname: hostname.into(),
            online: true,
            last_seen: None,
            inventory_updated_at: None,
            enrolled_at: "2026-01-01T00:00:00Z".into(),
            revoked_at: None,
            labels: BTreeMap::from([("pool".to_owned(), "render-a".to_owned())]),
            label_sources: BTreeMap::new(),
            problems: Vec::new(),
            driver_version: Some("570.133.07".into()),
            cuda_driver_version: Some("12.8".into()),
            nvml_status: Some("ok".into()),
            nvml_detail: None,
            os: Some("Debian GNU/Linux 13 (trixie)".into()),
            kernel: Some("6.12.0".into()),
            arch: Some("x86_64".into()),
            cpu_model: None,
            cpu_cores: Some(16),
            memory_total_bytes: None,
            data_dir_free_bytes: None,
            agent_version: "0.1.0".into(),
            remote_address: String::new(),
            gpus: vec![GpuView {
                index: 0,
                name: Some("NVIDIA GeForce RTX 4090".into()),
                uuid: None,
                memory_total_bytes: Some(25_757_220_864),
                compute_capability: Some("8.9".into()),
                pci_bus_id: None,
                errors: vec![],
            }],
            assignment: None,
            report: None,
            environments: Some(InstalledEnvironments::default()),
        }
    }
}

#[cfg(test)]
mod tests {
    use comfyfleet_config::{AssignmentReason, Phase};

    use super::*;

    fn gpu(index: u32, name: &str, cc: &str, memory: u64) -> GpuView {
        GpuView {
            index,
            name: Some(name.into()),
            uuid: None,
            memory_total_bytes: Some(memory),
            compute_capability: Some(cc.into()),
            pci_bus_id: None,
            errors: vec![],
        }
    }

    fn view(gpus: Vec<GpuView>) -> MachineView {
        MachineView {
            id: "m".into(),
            hostname: "h".into(),
            online: true,
            last_seen: None,
            inventory_updated_at: None,
            enrolled_at: String::new(),
            revoked_at: None,
            labels: BTreeMap::new(),
            label_sources: BTreeMap::new(),
            problems: Vec::new(),
            driver_version: None,
            cuda_driver_version: None,
            nvml_status: Some("ok".into()),
            nvml_detail: None,
            os: None,
            kernel: None,
            arch: None,
            cpu_model: None,
            cpu_cores: None,
            memory_total_bytes: None,
            data_dir_free_bytes: None,
            agent_version: String::new(),
            remote_address: String::new(),
            gpus,
            assignment: None,
            report: None,
            environments: None,
        }
    }

    #[test]
    fn the_environment_column_reads_the_report_on_the_assigned_generation() {
        let mut machine = MachineView::example("m", "h");
        assert_eq!(machine.environment_status(), "-");
        machine.assignment = Some(MachineAssignment {
            generation: 2,
            environment: "render-prod".into(),
            revision_number: 3,
            revision_id: "a".repeat(64).parse().unwrap(),
            activate: true,
            reason: AssignmentReason::Rollout,
            assigned_at: jiff::Timestamp::UNIX_EPOCH,
            assigned_by: "op".into(),
            torch: "2.8.0+cu128".into(),
            driver_compat: Default::default(),
        });
        let mut report = ConvergenceReport::idle(jiff::Timestamp::UNIX_EPOCH);
        report.generation = 1;
        report.phase = Phase::Active;
        machine.report = Some(report.clone());
        assert_eq!(machine.environment_status(), "render-prod@3 pending", "a report on the old generation");
        report.generation = 2;
        report.phase = Phase::Preparing;
        machine.report = Some(report);
        assert_eq!(machine.environment_status(), "render-prod@3 preparing");

        // Facts files saved before provisioning still read.
        let mut json = serde_json::to_value(MachineView::example("m", "h")).unwrap();
        for key in ["assignment", "report", "environments"] {
            json.as_object_mut().unwrap().remove(key);
        }
        let old: MachineView = serde_json::from_value(json).unwrap();
        assert_eq!((old.assignment, old.report, old.environments), (None, None, None));
    }

    #[test]
    fn summaries_group_identical_gpus() {
        let l40s = view(vec![
            gpu(0, "NVIDIA L40S", "8.9", 48_305_799_168),
            gpu(1, "NVIDIA L40S", "8.9", 48_305_799_168),
        ]);
        assert_eq!(l40s.gpu_summary(), "2× L40S (8.9, 45 GiB)");
        let mixed = view(vec![
            gpu(0, "NVIDIA GeForce RTX 4090", "8.9", 25_757_220_864),
            gpu(1, "NVIDIA RTX A6000", "8.6", 51_527_024_640),
        ]);
        assert_eq!(mixed.gpu_summary(), "1× RTX 4090 (8.9, 24 GiB) + 1× RTX A6000 (8.6, 48 GiB)");
        let mut none = view(vec![]);
        none.nvml_status = Some("driver-not-loaded".into());
        assert_eq!(none.gpu_summary(), "none (driver not loaded)");
    }
}
