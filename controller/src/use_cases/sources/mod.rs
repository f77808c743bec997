//! The outside sources the controller fetches from (git repositories, package
//! indexes, wheels): which it may reach, how, and its copies of git repositories.

pub(crate) mod git_command;
pub(crate) mod git_mirror;
pub mod source_policy;
pub(crate) mod upstream_client;
