//! The exported `nvml*` symbols, by area. Each is `#[unsafe(no_mangle)]` and
//! re-exported from the crate root, so the cdylib exports it under NVML's name.

pub mod device;
pub mod library;
pub mod system;
