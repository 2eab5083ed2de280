//! The circuit breaker of one device on a bus.
//!
//! A device that stops answering costs its whole timeout on every request, and on a
//! shared RS-485 line every other device waits meanwhile. After `threshold` failed polls
//! in a row the breaker opens: the device is no longer polled, only probed with one
//! request at growing, jittered intervals (half the ceiling plus a random half, the
//! ceiling doubling from `base` up to `cap`). The first answer closes it again.

use std::time::Duration;

use rand::Rng;
use tokio::time::Instant;

#[derive(Debug, Clone)]
pub struct Breaker {
    threshold: u32,
    base: Duration,
    cap: Duration,
    failures: u32,
    /// Probes made since the breaker opened (sets the ceiling).
    probes: u32,
    /// When open: the time of the next probe.
    next_probe: Option<Instant>,
}

/// What a result did to the breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    None,
    Opened,
    Closed,
}

impl Breaker {
    pub fn new(threshold: u32, base: Duration, cap: Duration) -> Self {
        Self {
            threshold: threshold.max(1),
            base: base.max(Duration::from_millis(10)),
            cap: cap.max(base),
            failures: 0,
            probes: 0,
            next_probe: None,
        }
    }

    pub fn is_open(&self) -> bool {
        self.next_probe.is_some()
    }

    /// When open, the time of the next probe.
    pub fn next_probe(&self) -> Option<Instant> {
        self.next_probe
    }

    /// Consecutive failures so far.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    pub fn on_success(&mut self) -> Change {
        self.failures = 0;
        self.probes = 0;
        if self.next_probe.take().is_some() {
            Change::Closed
        } else {
            Change::None
        }
    }

    pub fn on_failure(&mut self, now: Instant) -> Change {
        self.failures = self.failures.saturating_add(1);
        let was_open = self.is_open();
        if was_open || self.failures >= self.threshold {
            let delay = self.delay();
            self.probes = self.probes.saturating_add(1);
            self.next_probe = Some(now + delay);
        }
        if !was_open && self.is_open() {
            Change::Opened
        } else {
            Change::None
        }
    }

    /// The wait before the next probe: ceiling/2 + uniform(0, ceiling/2).
    fn delay(&self) -> Duration {
        let factor = 1u32.checked_shl(self.probes.min(20)).unwrap_or(u32::MAX);
        let ceiling = self.base.saturating_mul(factor).min(self.cap);
        let half = ceiling / 2;
        let jitter_ms = u64::try_from(half.as_millis()).unwrap_or(u64::MAX);
        half + Duration::from_millis(rand::thread_rng().gen_range(0..=jitter_ms))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_breaker_opens_after_the_threshold_and_closes_on_the_first_answer() {
        let now = Instant::now();
        let mut b = Breaker::new(3, Duration::from_secs(1), Duration::from_secs(60));
        assert_eq!(b.on_failure(now), Change::None);
        assert_eq!(b.on_failure(now), Change::None);
        assert!(!b.is_open());
        assert_eq!(b.on_failure(now), Change::Opened);
        let first = b.next_probe().unwrap() - now;
        assert!(first >= Duration::from_millis(500) && first <= Duration::from_secs(1), "{first:?}");
        assert_eq!(b.on_success(), Change::Closed);
        assert!(!b.is_open());
        assert_eq!(b.failures(), 0);
    }

    #[test]
    fn probes_space_out_up_to_the_cap_with_jitter() {
        let now = Instant::now();
        let mut b = Breaker::new(1, Duration::from_secs(1), Duration::from_secs(8));
        let mut delays = Vec::new();
        for _ in 0..8 {
            b.on_failure(now);
            delays.push(b.next_probe().unwrap() - now);
        }
        for (i, d) in delays.iter().enumerate() {
            let ceiling = Duration::from_secs(1 << i.min(3));
            assert!(*d >= ceiling / 2 && *d <= ceiling, "probe {i}: {d:?} vs ceiling {ceiling:?}");
        }
    }
}
