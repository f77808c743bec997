//! What comfyfleet's long-running programs (controller, agent) share: files written
//! atomically with private modes, logging set up once, and one shutdown signal.
#![forbid(unsafe_code)]

pub mod files;
pub mod limits;
pub mod logging;
pub mod shutdown;
