//! The workspace's shape, checked by its test suite (`tests/workspace.rs`) without
//! compiling anything: no file outside tests over 600 lines, no import circle between the
//! modules of a crate, and the layering rules of `rules.rs`. Sources are read as tokens
//! (comments and strings cannot fool it); the crates and their targets come from
//! `cargo metadata --no-deps`.

pub mod checks;
pub mod cycles;
pub mod lexer;
pub mod modules;
pub mod rules;
pub mod source;
pub mod workspace;
