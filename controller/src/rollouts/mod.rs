//! The rollout engine. Skeleton; filled in below.
pub mod api;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Pause,
    Resume,
    Abort,
}
