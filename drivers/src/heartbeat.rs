//! A cheap liveness signal from a long-running loop to the agent's systemd watchdog.
//!
//! A loop calls [`Heartbeat::beat`] on every turn; before a wait it means to take (a
//! back-off after a dead PLC, a reconnect delay, the next poll an interval away) it calls
//! [`Heartbeat::alive_until`] with its planned wake-up, so that a deliberate sleep does not
//! look like a hang. The watchdog reads [`Heartbeat::overdue`]: how long past its last
//! promise the loop has been silent. One relaxed atomic store per beat.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

/// Shared between a loop (beating) and the watchdog (reading). Clones share the signal.
#[derive(Debug, Clone)]
pub struct Heartbeat {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    epoch: Instant,
    /// Milliseconds after `epoch` until which the loop is known (or promised) alive.
    alive_until_ms: AtomicU64,
}

impl Default for Heartbeat {
    fn default() -> Self {
        Heartbeat::new()
    }
}

impl Heartbeat {
    /// A heartbeat that has just beaten.
    pub fn new() -> Self {
        Heartbeat { inner: Arc::new(Inner { epoch: Instant::now(), alive_until_ms: AtomicU64::new(0) }) }
    }

    /// The loop is alive now.
    pub fn beat(&self) {
        self.alive_until(Instant::now());
    }

    /// The loop waits on purpose until `at`: it counts as alive until then. A promise never
    /// shortens one already given (a beat during a long back-off keeps the back-off's).
    pub fn alive_until(&self, at: Instant) {
        // Rounded up from the nanosecond (rounding microseconds up would drop the
        // nanoseconds first): a loop is never taken for overdue before its promise ends.
        let ms = u64::try_from(at.saturating_duration_since(self.inner.epoch).as_nanos().div_ceil(1_000_000)).unwrap_or(u64::MAX);
        self.inner.alive_until_ms.fetch_max(ms, Ordering::Relaxed);
    }

    /// How long past its last beat or promise the loop has been silent at `now` (zero while
    /// the promise holds).
    pub fn overdue(&self, now: Instant) -> Duration {
        let until = self.inner.epoch + Duration::from_millis(self.inner.alive_until_ms.load(Ordering::Relaxed));
        now.saturating_duration_since(until)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_loop_that_stops_beating_becomes_overdue_by_the_time_it_has_been_silent() {
        // Given a heartbeat that beat at t0 (what `beat` does, at a known instant: reading
        // the clock after `beat` made this flaky on a loaded machine, when the two reads
        // fell on either side of a millisecond)
        let hb = Heartbeat::new();
        let t0 = Instant::now();
        hb.alive_until(t0);
        // When it is read 7 s later (the clock is an argument: no waiting)
        let overdue = hb.overdue(t0 + Duration::from_secs(7));
        // Then it is about 7 s overdue (less the rounding up to a millisecond)
        assert!(overdue > Duration::from_millis(6_990) && overdue <= Duration::from_secs(7), "{overdue:?}");
        // And at the moment of the beat it is not overdue
        assert_eq!(hb.overdue(t0), Duration::ZERO);
    }

    #[tokio::test]
    async fn a_planned_wait_is_not_overdue_until_its_wake_up_has_passed() {
        // Given a loop that promises to sleep 30 s (a reconnect delay), then beats once
        let t0 = Instant::now();
        let hb = Heartbeat::new();
        hb.alive_until(t0 + Duration::from_secs(30));
        hb.beat();
        // Then 29 s later it is not overdue (the beat did not shorten the promise)
        assert_eq!(hb.overdue(t0 + Duration::from_secs(29)), Duration::ZERO);
        // And 35 s later it is 5 s overdue (less the rounding)
        let overdue = hb.overdue(t0 + Duration::from_secs(35));
        assert!(overdue > Duration::from_millis(4_990) && overdue <= Duration::from_secs(5), "{overdue:?}");
    }
}
