//! The wait between two session attempts: exponential from `min` to `max`, with "equal
//! jitter" (a uniform pick in the upper half of the current step).
//!
//! Full jitter (as the MQTT uplink uses) can pick a wait near zero again and again; a
//! plant server that just restarted would then see bursts of sessions. Keeping every wait
//! at least half its step spreads many gateways out and still bounds the attempts a
//! server can see in a window: [`max_attempts_within`].

use std::time::Duration;

use rand::Rng;

#[derive(Debug, Clone)]
pub struct Reconnect {
    min: Duration,
    max: Duration,
    step: u32,
}

impl Reconnect {
    pub fn new(min: Duration, max: Duration) -> Self {
        Self { min, max: max.max(min), step: 0 }
    }

    /// The ceiling of the next wait: `min · 2ⁿ`, capped at `max`.
    fn ceiling(&self) -> Duration {
        let factor = 1u32.checked_shl(self.step.min(20)).unwrap_or(u32::MAX);
        self.min.saturating_mul(factor).min(self.max)
    }

    /// The next wait, in `[ceiling/2, ceiling]`.
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self.ceiling();
        self.step = self.step.saturating_add(1);
        let half = ceiling / 2;
        let spread = u64::try_from((ceiling - half).as_micros()).unwrap_or(u64::MAX);
        half + Duration::from_micros(rand::thread_rng().gen_range(0..=spread))
    }

    /// After a session that stayed up: the next failure starts small again.
    pub fn reset(&mut self) {
        self.step = 0;
    }
}

/// The most attempts a driver can make in `window` while every attempt fails at once:
/// the first, plus one after each wait, each wait being at least half its step.
pub fn max_attempts_within(window: Duration, min: Duration, max: Duration) -> u64 {
    let mut r = Reconnect::new(min, max);
    let (mut elapsed, mut attempts) = (Duration::ZERO, 1u64);
    loop {
        elapsed += r.ceiling() / 2;
        r.step += 1;
        if elapsed > window {
            return attempts;
        }
        attempts += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_stay_in_the_upper_half_of_a_doubling_step_up_to_the_cap() {
        let mut r = Reconnect::new(Duration::from_millis(100), Duration::from_secs(2));
        for n in 0..12u32 {
            let ceiling = Duration::from_millis(100 * 2u64.pow(n)).min(Duration::from_secs(2));
            let d = r.next_delay();
            assert!(d >= ceiling / 2 && d <= ceiling, "step {n}: {d:?} not in [{:?}, {ceiling:?}]", ceiling / 2);
        }
    }

    #[test]
    fn reset_starts_from_the_minimum_again() {
        let mut r = Reconnect::new(Duration::from_millis(10), Duration::from_secs(60));
        for _ in 0..10 {
            r.next_delay();
        }
        r.reset();
        assert!(r.next_delay() <= Duration::from_millis(10));
    }

    #[test]
    fn the_attempt_bound_over_a_minute_with_the_defaults_is_small() {
        // 1 s doubling to 60 s: waits ≥ 0.5, 1, 2, 4, 8, 16, 30 s… → 7 attempts in 60 s.
        assert_eq!(max_attempts_within(Duration::from_secs(60), Duration::from_secs(1), Duration::from_secs(60)), 7);
    }
}
