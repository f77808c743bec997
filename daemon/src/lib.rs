//! What comfyfleet's long-running programs (controller, agent) share: files written
//! atomically with private modes, logging set up once, one shutdown signal, child
//! processes that die with their parent and see only an allow-listed environment.
// One audited `unsafe` block (children.rs: a pre-exec hook) is allowed; nothing else.
#![deny(unsafe_code)]

pub mod child_env;
pub mod children;
pub mod files;
pub mod limits;
pub mod logging;
pub mod shutdown;
