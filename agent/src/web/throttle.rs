//! Failed-login throttling, per key (a source address, a user name).
//!
//! [`LIMIT`] failures within [`WINDOW`] lock the key for [`FIRST_LOCK`]; each further lockout
//! doubles the lock, up to [`MAX_LOCK`]; a key that stays out of trouble for [`FORGET_AFTER`]
//! starts again from the first lock. While a key is locked every login with it is refused
//! without looking at the password, the right one included, so guessing stops meanwhile.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub const LIMIT: usize = 5;
pub const WINDOW: Duration = Duration::from_secs(60);
pub const FIRST_LOCK: Duration = Duration::from_secs(30);
pub const MAX_LOCK: Duration = Duration::from_secs(15 * 60);
pub const FORGET_AFTER: Duration = Duration::from_secs(3600);
/// Most keys tracked; past this, keys with nothing to remember are dropped, and new keys
/// are not tracked until there is room (the other dimension still limits them).
const MAX_KEYS: usize = 4096;

/// The status page's two throttles, per source address and per user name. The agent keeps
/// one for its whole life and hands it to the page again after a `reload` (SIGHUP), so a
/// reload neither forgets failures nor lifts a lock.
#[derive(Debug, Default)]
pub struct LoginThrottle {
    pub by_address: Mutex<Throttle<IpAddr>>,
    pub by_user: Mutex<Throttle<String>>,
}

#[derive(Debug)]
struct Record {
    failures: VecDeque<Instant>,
    locked_until: Option<Instant>,
    lockouts: u32,
    last: Instant,
}

#[derive(Debug)]
pub struct Throttle<K: Eq + Hash> {
    records: HashMap<K, Record>,
}

impl<K: Eq + Hash> Default for Throttle<K> {
    fn default() -> Self {
        Self { records: HashMap::new() }
    }
}

impl<K: Eq + Hash> Throttle<K> {
    /// `Err(wait)` while `key` is locked.
    pub fn check(&self, key: &K, now: Instant) -> Result<(), Duration> {
        match self.records.get(key).and_then(|r| r.locked_until) {
            Some(until) if until > now => Err(until - now),
            _ => Ok(()),
        }
    }

    /// Counts a failed login of `key`; `Some(lock)` when this failure locked it.
    pub fn failure(&mut self, key: K, now: Instant) -> Option<Duration> {
        if !self.records.contains_key(&key) && !self.make_room(now) {
            return None;
        }
        let r = self.records.entry(key).or_insert_with(|| Record { failures: VecDeque::new(), locked_until: None, lockouts: 0, last: now });
        if now.saturating_duration_since(r.last) > FORGET_AFTER {
            r.lockouts = 0;
        }
        r.last = now;
        while r.failures.front().is_some_and(|t| now.saturating_duration_since(*t) >= WINDOW) {
            r.failures.pop_front();
        }
        r.failures.push_back(now);
        if r.failures.len() < LIMIT {
            return None;
        }
        r.failures.clear();
        let lock = FIRST_LOCK.saturating_mul(1u32 << r.lockouts.min(16)).min(MAX_LOCK);
        r.lockouts = r.lockouts.saturating_add(1);
        r.locked_until = Some(now + lock);
        Some(lock)
    }

    /// A successful login of `key`: its failures are forgotten (its lockout history is not).
    pub fn success(&mut self, key: &K) {
        if let Some(r) = self.records.get_mut(key) {
            r.failures.clear();
        }
    }

    fn make_room(&mut self, now: Instant) -> bool {
        if self.records.len() < MAX_KEYS {
            return true;
        }
        self.records.retain(|_, r| {
            r.locked_until.is_some_and(|u| u > now)
                || r.failures.back().is_some_and(|t| now.saturating_duration_since(*t) < WINDOW)
                || (r.lockouts > 0 && now.saturating_duration_since(r.last) < FORGET_AFTER)
        });
        self.records.len() < MAX_KEYS
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn five_failures_in_a_minute_lock_the_key_and_each_lockout_doubles() {
        // Given a throttle and a start instant
        let mut t = Throttle::default();
        let t0 = Instant::now();
        // When four failures come within the minute, the key stays open
        for i in 0..4 {
            assert_eq!(t.failure("10.0.0.9", t0 + Duration::from_secs(i)), None);
        }
        assert!(t.check(&"10.0.0.9", t0 + Duration::from_secs(4)).is_ok());
        // Then the fifth locks it for 30 s, and it is open again after
        assert_eq!(t.failure("10.0.0.9", t0 + Duration::from_secs(5)), Some(Duration::from_secs(30)));
        assert_eq!(t.check(&"10.0.0.9", t0 + Duration::from_secs(15)), Err(Duration::from_secs(20)));
        assert!(t.check(&"10.0.0.9", t0 + Duration::from_secs(35)).is_ok());
        // And the next five failures lock it for 60 s, then 120 s
        let mut at = t0 + Duration::from_secs(40);
        for expected in [60, 120] {
            let mut lock = None;
            for _ in 0..5 {
                lock = t.failure("10.0.0.9", at);
                at += Duration::from_secs(1);
            }
            assert_eq!(lock, Some(Duration::from_secs(expected)));
            at += Duration::from_secs(expected);
        }
        // And another key was never touched
        assert!(t.check(&"10.0.0.8", at).is_ok());
    }

    #[test]
    fn failures_spread_over_more_than_a_minute_do_not_lock_and_the_lock_is_capped() {
        // Given failures 20 s apart (never five within 60 s)
        let mut t = Throttle::default();
        let t0 = Instant::now();
        for i in 0..20 {
            assert_eq!(t.failure("bob", t0 + Duration::from_secs(20 * i)), None, "failure {i}");
        }
        // When the key is locked over and over in quick bursts
        let mut at = t0 + Duration::from_secs(1000);
        let mut last = None;
        for _ in 0..10 {
            for _ in 0..5 {
                if let Some(l) = t.failure("bob", at) {
                    last = Some(l);
                }
            }
            at += MAX_LOCK;
        }
        // Then the lock never exceeds the cap
        assert_eq!(last, Some(MAX_LOCK));
    }

    #[test]
    fn a_success_forgets_the_failures_so_far() {
        // Given four failures
        let mut t = Throttle::default();
        let t0 = Instant::now();
        for i in 0..4 {
            t.failure("alice", t0 + Duration::from_secs(i));
        }
        // When a login succeeds, then one more failure does not lock
        t.success(&"alice");
        assert_eq!(t.failure("alice", t0 + Duration::from_secs(5)), None);
    }
}
