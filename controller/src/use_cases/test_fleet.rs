//! A fleet for unit tests: the real `FleetService` over a SQLite store, with machines
//! whose inventories are the GPU profiles of tests/fixtures/gpu-profiles.json.

use std::sync::Arc;

use comfyfleet_config::inventory::{ComputeCapability, CudaVersion, Gpu, HostInfo, NvidiaInfo, NvmlStatus};
use comfyfleet_config::{Inventory, Labels, MachineId, Role};
use comfyfleet_proto::v1 as pb;
use comfyfleet_proto::v1::fleet_service_server::FleetService;
use jiff::Timestamp;
use tonic::{Request, Status};

use crate::edges::operator_grpc::fleet_service::FleetApi;
use crate::store::{JoinTokenRecord, NewMachine, SqliteStore};
use crate::use_cases::credentials::auth::mint_credential;
use crate::use_cases::credentials::pki::CertificateAuthority;
use crate::use_cases::presence::Presence;
use crate::use_cases::sources::source_policy::SourcePolicy;
use crate::use_cases::{ControllerState, Settings};

const PROFILES: &str = include_str!("../../../tests/fixtures/gpu-profiles.json");
const TOKEN_ID: &str = "0123456789ab";

pub struct TestFleet {
    _dir: tempfile::TempDir,
    pub state: Arc<ControllerState>,
    pub api: FleetApi,
    pub operator: String,
    pub viewer: String,
}

impl TestFleet {
    pub async fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("controller.db")).await.unwrap();
        let (rollouts, inbox) = crate::use_cases::rollouts::Rollouts::new();
        let metrics = crate::counters::Metrics::default();
        let store: Arc<dyn crate::store::Store> =
            Arc::new(crate::store::MeteredStore { inner: store, metrics: metrics.clone() });
        let reports =
            crate::use_cases::rollouts::report_writer::ReportWriter::spawn(store.clone(), rollouts.clone());
        let store_for_cache = store.clone();
        let source_secrets = Arc::new(crate::use_cases::source_secrets::SourceSecrets::new(
            store.clone(),
            crate::use_cases::credentials::fleet_secrets::SecretsKey::load_or_create(
                &dir.path().join("secrets.key"),
            )
            .unwrap(),
            "0123456789abcdef0123456789abcdef".into(),
        ));
        let ca = Arc::new(CertificateAuthority::load_or_create(dir.path()).unwrap());
        let server_certificate = Arc::new(
            crate::use_cases::credentials::server_certificate::ServerCertificate::issue(
                &ca,
                vec!["localhost".into()],
                crate::use_cases::credentials::pki::SERVER_VALIDITY,
                dir.path(),
            )
            .unwrap(),
        );
        let state = Arc::new(ControllerState {
            store,
            ca,
            server_certificate,
            presence: Presence::new(),
            settings: Settings {
                lock_on_apply: false,
                sources: SourcePolicy::permissive(),
                ..Settings::default()
            },
            reports,
            rollouts,
            specs: Default::default(),
            packages: Arc::new(
                crate::use_cases::package_cache::PackageCache::with_secrets(
                    dir.path().join("cache/packages"),
                    None,
                    store_for_cache,
                    SourcePolicy::permissive(),
                    Some(source_secrets.clone()),
                )
                .unwrap(),
            ),
            mirror: crate::use_cases::sources::git_mirror::GitMirror::new(
                dir.path().join("cache/git"),
                SourcePolicy::permissive(),
                Default::default(),
            ),
            locker: crate::use_cases::environments::locking::Locker {
                uv: None,
                children: Default::default(),
                work: dir.path().join("cache/locking"),
                mirror: crate::use_cases::sources::git_mirror::GitMirror::new(
                    dir.path().join("cache/git"),
                    SourcePolicy::permissive(),
                    Default::default(),
                ),
                upstream: crate::use_cases::sources::upstream_client::UpstreamClient::new(
                    SourcePolicy::permissive(),
                )
                .unwrap(),
            },
            metrics,
            fleet_id: "0123456789abcdef0123456789abcdef".into(),
            cluster: None,
            source_secrets,
            access: Default::default(),
            fleet: Default::default(),
        });
        crate::use_cases::rollouts::spawn(state.clone(), inbox, tokio::sync::watch::channel(true).1);
        let (operator, _) = mint_credential(&state, "op", Role::Operator, "test", "").await.unwrap();
        let (viewer, _) = mint_credential(&state, "reader", Role::Viewer, "test", "").await.unwrap();
        let now = Timestamp::now();
        let token = JoinTokenRecord {
            id: TOKEN_ID.into(),
            secret_sha256: [1; 32],
            created_at: now,
            expires_at: now + jiff::SignedDuration::from_hours(1),
            uses_allowed: None,
            uses: 0,
            labels: Labels::new(),
            description: String::new(),
            created_by: "test".into(),
        };
        state.store.create_join_token(&token).await.unwrap();
        Self {
            _dir: dir,
            api: FleetApi::new(state.clone()),
            state,
            operator: operator.to_string(),
            viewer: viewer.to_string(),
        }
    }

    pub fn request<T>(credential: &str, message: T) -> Request<T> {
        let mut request = Request::new(message);
        request.metadata_mut().insert("authorization", format!("Bearer {credential}").parse().unwrap());
        request
    }

    /// Enrolls machine `id` (hostname = the profile's name) with `labels` and records
    /// the inventory of GPU profile `profile`.
    pub async fn add_machine(&self, id: &str, profile: &str, labels: &[&str]) -> MachineId {
        let machine = NewMachine {
            id: id.parse().unwrap(),
            hostname: profile.to_owned(),
            cert_sha256: "ab".into(),
            agent_labels: Labels::parse_pairs(labels).unwrap(),
            enrolled_at: Timestamp::now(),
        };
        self.state.store.enroll_machine(TOKEN_ID, &[1; 32], &machine).await.unwrap().unwrap();
        self.state.store.record_inventory(&machine.id, &inventory(profile), Timestamp::now()).await.unwrap();
        self.state.fleet.inventory(&machine.id, &inventory(profile), None);
        machine.id
    }

    /// Applies a spec whose ComfyUI ref is already a commit (no git is asked).
    pub async fn apply(&self, spec: &str) -> pb::EnvironmentRevision {
        let message = pb::ApplyEnvironmentRequest {
            spec: spec.to_owned(),
            format: pb::SpecFormat::Toml.into(),
            file_name: "spec.toml".into(),
            classes: Vec::new(),
        };
        let response = self.api.apply_environment(Self::request(&self.operator, message)).await.unwrap();
        response.into_inner().revision.unwrap()
    }

    pub async fn get_machine(&self, id: &MachineId) -> pb::Machine {
        let message = pb::GetMachineRequest { id: id.to_string() };
        self.api.get_machine(Self::request(&self.viewer, message)).await.unwrap().into_inner()
    }

    pub async fn start_rollout(
        &self,
        environment: &str,
        revision: &str,
        machines: &[&str],
    ) -> Result<pb::StartRolloutResponse, Status> {
        let message = pb::StartRolloutRequest {
            environment: environment.to_owned(),
            revision: revision.to_owned(),
            machines: machines.iter().map(|m| (*m).to_owned()).collect(),
            policy: None,
        };
        self.api.start_rollout(Self::request(&self.operator, message)).await.map(tonic::Response::into_inner)
    }

    pub async fn rollback(&self, id: &str) -> Result<pb::RollbackMachineResponse, Status> {
        let message = pb::RollbackMachineRequest { id: id.to_owned() };
        self.api
            .rollback_machine(Self::request(&self.operator, message))
            .await
            .map(tonic::Response::into_inner)
    }
}

/// A spec for environment `name` with ComfyUI pinned to `commit` (40 hex digits),
/// torch 2.8 from cu128 or cu126, for machines labelled pool=render-a.
pub fn spec(name: &str, commit: &str) -> String {
    format!(
        "name = \"{name}\"\npython = \"3.12\"\n\n[comfyui]\ngit = \"https://example.com/ComfyUI.git\"\n\
         ref = \"{commit}\"\n\n[torch]\nversion = \"2.8.0\"\ncuda = [\"cu128\", \"cu126\"]\n\n\
         [target]\nselector = 'labels.pool == \"render-a\"'\n"
    )
}

/// What an agent on a machine of GPU profile `name` reports.
pub fn inventory(name: &str) -> Inventory {
    let profiles: serde_json::Value = serde_json::from_str(PROFILES).unwrap();
    let profile = &profiles["profiles"][name];
    assert!(profile.is_object(), "no profile {name}");
    let mut gpus = Vec::new();
    for group in profile["gpus"].as_array().unwrap() {
        let cc = group["compute_capability"].as_array().unwrap();
        for _ in 0..group["count"].as_u64().unwrap() {
            let index = u32::try_from(gpus.len()).unwrap();
            gpus.push(Gpu {
                index,
                name: Some(group["name"].as_str().unwrap().to_owned()),
                uuid: Some(format!("GPU-{name}-{index}")),
                memory_total_bytes: group["memory_total_bytes"].as_u64(),
                compute_capability: Some(ComputeCapability::new(
                    u32::try_from(cc[0].as_u64().unwrap()).unwrap(),
                    u32::try_from(cc[1].as_u64().unwrap()).unwrap(),
                )),
                pci_bus_id: None,
                errors: vec![],
            });
        }
    }
    let driver_version = profile["driver_version"].as_str().map(str::to_owned);
    let nvidia = match &driver_version {
        Some(_) => NvidiaInfo {
            status: NvmlStatus::Ok,
            driver_version,
            cuda_driver_version: profile["cuda_driver_version"]
                .as_u64()
                .map(|v| CudaVersion::from_nvml(u32::try_from(v).unwrap()).unwrap()),
            gpus,
        },
        None => NvidiaInfo::unavailable(NvmlStatus::DriverNotLoaded("no kernel module".into())),
    };
    Inventory {
        host: HostInfo {
            hostname: name.to_owned(),
            os: "Debian GNU/Linux 13 (trixie)".into(),
            kernel: "6.12.0".into(),
            arch: "x86_64".into(),
            cpu_model: "AMD EPYC".into(),
            cpu_cores: 16,
            memory_total_bytes: 1 << 36,
            data_dir_free_bytes: 1 << 40,
            data_dir_total_bytes: 1 << 41,
            agent_version: "0.1.0".into(),
            problems: Vec::new(),
        },
        nvidia,
        environments: Default::default(),
    }
}
