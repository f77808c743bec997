//! Reproducible chance: which simulated agents fail (exactly `round(fraction × n)` of
//! a batch, by a shuffle seeded from `--seed`) and the jitter of their step durations.
//! A small generator of our own (SplitMix64) rather than a library's, so a seed picks
//! the same machines whatever dependency versions a build has.

use std::time::Duration;

/// SplitMix64: tiny, fast, and good enough for picking machines and jitter.
#[derive(Debug, Clone)]
pub struct SeededRandom {
    state: u64,
}

impl SeededRandom {
    pub fn new(seed: u64) -> Self {
        Self { state: seed }
    }

    /// A generator for one purpose of one agent, independent of the others.
    pub fn derived(seed: u64, purpose: u64, index: usize) -> Self {
        let mut mixer = Self::new(seed ^ purpose.wrapping_mul(0xA076_1D64_78BD_642F));
        let salt = mixer.next_u64() ^ (index as u64).wrapping_mul(0xE703_7ED1_A0B4_28DB);
        Self::new(salt)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in 0..bound (bound > 0).
    fn below(&mut self, bound: usize) -> usize {
        // The modulo bias is negligible for fleet sizes.
        (self.next_u64() % bound as u64) as usize
    }

    /// `base` stretched or shrunk by up to `jitter` (0.2: ±20 %).
    pub fn jittered(&mut self, base: Duration, jitter: f64) -> Duration {
        let factor = 1.0 + jitter * (2.0 * self.unit() - 1.0);
        base.mul_f64(factor.max(0.0))
    }
}

const PREPARE: u64 = 1;
const ACTIVATE: u64 = 2;
pub(super) const JITTER: u64 = 3;

/// How one agent fails, for its whole life (until `fix`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Failer {
    pub prepare: bool,
    pub activate: bool,
}

/// The failers among the batch of `count` agents from index `first` on: exactly
/// `round(fraction × count)` of each kind, the two kinds chosen independently.
pub fn choose_failers(
    seed: u64,
    first: usize,
    count: usize,
    fail_prepare: f64,
    fail_activate: f64,
) -> Vec<Failer> {
    let mut failers = vec![Failer::default(); count];
    for index in chosen(seed, PREPARE, first, count, fail_prepare) {
        failers[index].prepare = true;
    }
    for index in chosen(seed, ACTIVATE, first, count, fail_activate) {
        failers[index].activate = true;
    }
    failers
}

/// `round(fraction × count)` positions in 0..count, by a seeded Fisher–Yates shuffle.
fn chosen(seed: u64, purpose: u64, first: usize, count: usize, fraction: f64) -> Vec<usize> {
    let wanted = ((fraction.clamp(0.0, 1.0) * count as f64).round() as usize).min(count);
    let mut random = SeededRandom::derived(seed, purpose, first);
    let mut positions: Vec<usize> = (0..count).collect();
    for i in (1..count).rev() {
        positions.swap(i, random.below(i + 1));
    }
    positions.truncate(wanted);
    positions
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exactly_the_fraction_fails_and_the_seed_decides_which() {
        let failers = choose_failers(7, 0, 1000, 0.1, 0.05);
        assert_eq!(failers.iter().filter(|f| f.prepare).count(), 100);
        assert_eq!(failers.iter().filter(|f| f.activate).count(), 50);
        assert_eq!(failers, choose_failers(7, 0, 1000, 0.1, 0.05), "same seed, same failers");
        assert_ne!(failers, choose_failers(8, 0, 1000, 0.1, 0.05), "another seed, other failers");
        assert_eq!(choose_failers(1, 0, 3, 0.5, 0.0).iter().filter(|f| f.prepare).count(), 2);
        assert!(choose_failers(1, 0, 10, 0.0, 0.0).iter().all(|f| *f == Failer::default()));
        assert!(choose_failers(1, 0, 10, 1.0, 1.0).iter().all(|f| f.prepare && f.activate));
    }

    #[test]
    fn jitter_stays_within_its_bounds() {
        let mut random = SeededRandom::derived(1, JITTER, 0);
        let base = Duration::from_secs(2);
        for _ in 0..1000 {
            let delay = random.jittered(base, 0.2);
            assert!(
                delay >= Duration::from_millis(1600) && delay <= Duration::from_millis(2400),
                "{delay:?}"
            );
        }
        assert_eq!(random.jittered(base, 0.0), base);
    }
}
