//! Rate-limited logging: a warning that repeats (a refused register on every poll, a
//! failed store write on every tick, a flood of rejected commands) is logged once per
//! period, and the next line that gets through says how many were suppressed meanwhile.
//! A gateway's SD card and journald cannot afford one line per poll for years.
//!
//! ```
//! use std::time::Duration;
//! use edge_drivers::log_limit::LogLimit;
//!
//! let mut limit = LogLimit::new(Duration::from_secs(60));
//! if let Some(suppressed) = limit.allow("plc1/r0") {
//!     tracing::warn!(suppressed, "register refused");
//! }
//! ```

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How often one kind of repeated warning gets a line, unless a caller says otherwise.
pub const DEFAULT_PERIOD: Duration = Duration::from_secs(60);

/// Most keys remembered; past this, keys not seen for a period are forgotten, so a
/// limiter keyed by something unbounded (a client address, a tag) stays small.
const MAX_KEYS: usize = 4096;

#[derive(Debug)]
struct Slot {
    /// When the last line for this key was let through.
    last: Instant,
    /// Occurrences held back since then.
    suppressed: u64,
}

/// Decides, per key, whether a repeated log line is let through now.
#[derive(Debug)]
pub struct LogLimit<K: Eq + Hash = &'static str> {
    period: Duration,
    slots: HashMap<K, Slot>,
}

impl<K: Eq + Hash> LogLimit<K> {
    pub fn new(period: Duration) -> Self {
        Self { period, slots: HashMap::new() }
    }

    /// `Some(n)` when this occurrence should be logged, `n` being how many were suppressed
    /// since the last line for `key` (log it as a field: `suppressed = n`); `None` when it
    /// should be suppressed (it is counted for the next line).
    pub fn allow(&mut self, key: K) -> Option<u64> {
        self.allow_at(key, Instant::now())
    }

    fn allow_at(&mut self, key: K, now: Instant) -> Option<u64> {
        if let Some(slot) = self.slots.get_mut(&key) {
            if now.saturating_duration_since(slot.last) < self.period {
                slot.suppressed += 1;
                return None;
            }
            let n = slot.suppressed;
            *slot = Slot { last: now, suppressed: 0 };
            return Some(n);
        }
        if self.slots.len() >= MAX_KEYS {
            let period = self.period;
            self.slots.retain(|_, s| now.saturating_duration_since(s.last) < period);
        }
        // Still full of keys seen within the period: let the line through rather than grow.
        if self.slots.len() < MAX_KEYS {
            self.slots.insert(key, Slot { last: now, suppressed: 0 });
        }
        Some(0)
    }
}

impl<K: Eq + Hash> Default for LogLimit<K> {
    fn default() -> Self {
        Self::new(DEFAULT_PERIOD)
    }
}

/// A [`LogLimit`] shared between tasks or called from `&self` methods.
#[derive(Debug)]
pub struct SharedLogLimit<K: Eq + Hash = &'static str>(Mutex<LogLimit<K>>);

impl<K: Eq + Hash> SharedLogLimit<K> {
    pub fn new(period: Duration) -> Self {
        Self(Mutex::new(LogLimit::new(period)))
    }

    /// As [`LogLimit::allow`].
    pub fn allow(&self, key: K) -> Option<u64> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).allow(key)
    }
}

impl<K: Eq + Hash> Default for SharedLogLimit<K> {
    fn default() -> Self {
        Self::new(DEFAULT_PERIOD)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_repeated_warning_is_logged_once_per_period_with_the_count_it_held_back() {
        // Given a limiter with a 60 s period
        let mut limit = LogLimit::new(Duration::from_secs(60));
        let t0 = Instant::now();
        // When the same warning comes every second for two minutes
        let logged: Vec<(u64, u64)> =
            (0..120u64).filter_map(|s| limit.allow_at("plc1", t0 + Duration::from_secs(s)).map(|n| (s, n))).collect();
        // Then it is logged at 0 s and 60 s, the second line counting the 59 held back
        assert_eq!(logged, vec![(0, 0), (60, 59)]);
    }

    #[test]
    fn different_keys_are_limited_apart() {
        let mut limit = LogLimit::new(Duration::from_secs(60));
        let t0 = Instant::now();
        assert_eq!(limit.allow_at("plc1", t0), Some(0));
        assert_eq!(limit.allow_at("plc2", t0), Some(0));
        assert_eq!(limit.allow_at("plc1", t0), None);
    }

    #[test]
    fn an_unbounded_key_space_does_not_grow_the_limiter_past_its_cap() {
        let mut limit: LogLimit<u64> = LogLimit::new(Duration::from_secs(60));
        let t0 = Instant::now();
        for k in 0..(MAX_KEYS as u64 * 3) {
            assert_eq!(limit.allow_at(k, t0), Some(0));
        }
        assert!(limit.slots.len() <= MAX_KEYS);
    }
}
