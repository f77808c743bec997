//! Failures per source address — enrollments with a bad token, web sign-ins with a
//! bad credential: a few are a typo, many are someone guessing. After [`ALLOWED`]
//! failures within [`WINDOW`] an address is refused for [`BLOCK`] without a look at
//! what it sends (kubeadm and Salt accept no unlimited guessing either). Each use
//! (enrollment, sign-in) keeps its own [`FailureThrottle`].

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Failures an address may have within [`WINDOW`].
pub const ALLOWED: u32 = 5;
pub const WINDOW: Duration = Duration::from_secs(60);
/// How long an address that failed too often is refused.
pub const BLOCK: Duration = Duration::from_secs(60);
/// Past this many addresses tracked, those with no recent failure are forgotten.
const TRACKED: usize = 10_000;

struct Failures {
    count: u32,
    since: Instant,
    blocked_until: Option<Instant>,
    /// Whether this block was audited already.
    told: bool,
}

/// Whether an attempt from an address is looked at.
#[derive(Debug, PartialEq, Eq)]
pub enum Admission {
    Open,
    /// Refused for `wait` more; `first` the first refusal of this block (audit it).
    Blocked {
        wait: Duration,
        first: bool,
    },
}

#[derive(Default)]
pub struct FailureThrottle {
    failures: Mutex<HashMap<IpAddr, Failures>>,
}

impl FailureThrottle {
    pub fn admit(&self, address: IpAddr) -> Admission {
        self.admit_at(address, Instant::now())
    }

    fn admit_at(&self, address: IpAddr, now: Instant) -> Admission {
        let mut failures = self.failures.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(entry) = failures.get_mut(&address) else { return Admission::Open };
        match entry.blocked_until {
            Some(until) if until > now => {
                let first = !entry.told;
                entry.told = true;
                Admission::Blocked { wait: until - now, first }
            }
            Some(_) => {
                failures.remove(&address);
                Admission::Open
            }
            None => Admission::Open,
        }
    }

    /// Counts a failed attempt; whether the address is blocked now.
    pub fn failed(&self, address: IpAddr) -> bool {
        self.failed_at(address, Instant::now())
    }

    fn failed_at(&self, address: IpAddr, now: Instant) -> bool {
        let mut failures = self.failures.lock().unwrap_or_else(PoisonError::into_inner);
        if failures.len() >= TRACKED {
            failures.retain(|_, entry| {
                entry.blocked_until.is_some_and(|until| until > now) || now - entry.since < WINDOW
            });
        }
        let entry = failures.entry(address).or_insert(Failures {
            count: 0,
            since: now,
            blocked_until: None,
            told: false,
        });
        if now - entry.since >= WINDOW {
            *entry = Failures { count: 0, since: now, blocked_until: None, told: false };
        }
        entry.count += 1;
        if entry.count > ALLOWED {
            entry.blocked_until = Some(now + BLOCK);
        }
        entry.blocked_until.is_some()
    }

    /// An address that succeeded (enrolled a machine, signed in) starts over.
    pub fn succeeded(&self, address: IpAddr) {
        self.failures.lock().unwrap_or_else(PoisonError::into_inner).remove(&address);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_is_blocked_after_its_allowance_and_free_again_after_the_block() {
        let guard = FailureThrottle::default();
        let (address, other): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let start = Instant::now();
        for _ in 0..ALLOWED {
            assert!(!guard.failed_at(address, start));
        }
        assert_eq!(guard.admit_at(address, start), Admission::Open);
        assert!(guard.failed_at(address, start));
        assert_eq!(guard.admit_at(address, start), Admission::Blocked { wait: BLOCK, first: true });
        let later = start + Duration::from_secs(30);
        assert_eq!(
            guard.admit_at(address, later),
            Admission::Blocked { wait: BLOCK - Duration::from_secs(30), first: false }
        );
        assert_eq!(guard.admit_at(other, later), Admission::Open, "other addresses are not held");
        assert_eq!(guard.admit_at(address, start + BLOCK + Duration::from_secs(1)), Admission::Open);
    }

    #[test]
    fn failures_spread_over_windows_never_block_and_success_starts_over() {
        let guard = FailureThrottle::default();
        let address: IpAddr = "10.0.0.1".parse().unwrap();
        let start = Instant::now();
        for window in 0..4u32 {
            for _ in 0..ALLOWED {
                assert!(!guard.failed_at(address, start + WINDOW * window));
            }
        }
        for _ in 0..ALLOWED {
            guard.failed_at(address, start);
        }
        guard.succeeded(address);
        assert!(!guard.failed_at(address, start));
    }
}
