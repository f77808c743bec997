//! Reconnect delays: exponential with jitter, so ten thousand agents that lost the
//! controller at the same instant do not come back at the same instant.

use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    current: Duration,
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration) -> Self {
        Self { initial, max, current: initial }
    }

    /// The next delay: uniformly random in [d/2, d], where d doubles up to `max`.
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self.current;
        self.current = (self.current * 2).min(self.max);
        let half = ceiling / 2;
        let spread = u64::try_from((ceiling - half).as_millis()).unwrap_or(u64::MAX);
        half + Duration::from_millis(rand::random_range(0..=spread))
    }

    /// After a connection that worked, start again from the initial delay.
    pub fn reset(&mut self) {
        self.current = self.initial;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_to_the_cap_with_jitter_and_resets() {
        let mut backoff = Backoff::new(Duration::from_millis(400), Duration::from_secs(3));
        let first = backoff.next_delay();
        assert!(first >= Duration::from_millis(200) && first <= Duration::from_millis(400));
        for _ in 0..10 {
            assert!(backoff.next_delay() <= Duration::from_secs(3));
        }
        let capped = backoff.next_delay();
        assert!(capped >= Duration::from_millis(1500));
        backoff.reset();
        assert!(backoff.next_delay() <= Duration::from_millis(400));
    }
}
