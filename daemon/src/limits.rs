//! Process limits a daemon raises for itself at start.

use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};

/// Raises the open-files soft limit to the hard limit, as Go programs do at start:
/// every connected agent holds a socket, and the usual soft limit of 1024 (systemd,
/// container runtimes) would cap a controller at about a thousand machines. Needs
/// no privilege. Returns the limit now in force (`None`: unlimited).
pub fn raise_open_files_limit() -> Option<u64> {
    let limit = getrlimit(Resource::Nofile);
    if limit.current == limit.maximum {
        return limit.current;
    }
    match setrlimit(Resource::Nofile, Rlimit { current: limit.maximum, maximum: limit.maximum }) {
        Ok(()) => limit.maximum,
        Err(error) => {
            tracing::warn!(%error, soft = ?limit.current, "cannot raise the open-files limit");
            limit.current
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_soft_limit_ends_at_the_hard_limit() {
        let raised = raise_open_files_limit();
        assert_eq!(raised, getrlimit(Resource::Nofile).maximum);
        assert_eq!(getrlimit(Resource::Nofile).current, raised);
    }
}
