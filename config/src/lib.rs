//! comfyfleet's domain: the types and pure rules that the controller, the agent and the
//! CLI share. Nothing here does I/O; wire types live in `comfyfleet-proto` and are
//! converted into these at the edge.
#![forbid(unsafe_code)]

pub mod admin_config;
pub mod assignment;
pub mod bounded_text;
pub mod build_class;
pub mod comfyui_checkout;
pub mod convergence;
pub mod credential;
pub mod duration;
pub mod facts_check;
pub mod fleet_report;
pub mod installed;
pub mod inventory;
pub mod join_token;
pub mod labels;
pub mod lock;
pub mod machine;
pub mod machine_facts;
pub mod requirements;
mod secret_token;
pub mod source_credentials;
pub mod spec_digest;
pub mod uv_pin;

pub use admin_config::AdminConfig;
pub use assignment::{Assignment, AssignmentReason, AssignmentRecord};
pub use convergence::{ConvergenceReport, Phase, StepReport, StepState};
pub use credential::{OperatorCredential, Role};
pub use installed::{InstalledEnvironment, InstalledEnvironments};
pub use inventory::{ComputeCapability, CudaVersion, Gpu, HostInfo, Inventory, NvidiaInfo, NvmlStatus};
pub use join_token::JoinToken;
pub use labels::Labels;
pub use machine::{MachineId, MachineRecord};
pub mod resolve;
pub mod spec;
pub mod text;

pub use resolve::{MachineFacts, MachinePlan, Resolution, Resolver};
pub use spec::{Spec, SpecDigest, SpecErrors, SpecFormat};
