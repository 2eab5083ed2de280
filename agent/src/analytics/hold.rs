//! A condition with hysteresis in time: it becomes active only after holding for
//! `min_duration`, and clears only after being false for as long. The thresholds'
//! hysteresis (a lower level to clear than to raise) is the caller's: it passes the
//! condition already evaluated against the right level for the current state.

use std::time::{Duration, Instant};

/// What one update did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    None,
    Raised,
    Cleared,
}

#[derive(Debug, Clone)]
pub struct Hold {
    min_duration: Duration,
    active: bool,
    /// When the condition started to disagree with `active`.
    since: Option<Instant>,
    /// When the current active period began.
    raised_at: Option<Instant>,
}

impl Hold {
    pub fn new(min_duration: Duration) -> Self {
        Hold { min_duration, active: false, since: None, raised_at: None }
    }

    pub fn active(&self) -> bool {
        self.active
    }

    /// How long the current active period has lasted.
    pub fn active_for(&self, now: Instant) -> Option<Duration> {
        self.raised_at.map(|t| now.saturating_duration_since(t))
    }

    /// Feeds the condition as evaluated at `now`.
    pub fn update(&mut self, condition: bool, now: Instant) -> Change {
        if condition == self.active {
            self.since = None;
            return Change::None;
        }
        let since = *self.since.get_or_insert(now);
        if now.saturating_duration_since(since) < self.min_duration {
            return Change::None;
        }
        self.active = condition;
        self.since = None;
        if condition {
            self.raised_at = Some(since);
            Change::Raised
        } else {
            self.raised_at = None;
            Change::Cleared
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_condition_shorter_than_the_minimum_duration_raises_nothing() {
        // Given a hold of 3 s and a condition true for 2 s
        let t0 = Instant::now();
        let mut h = Hold::new(Duration::from_secs(3));
        let s = Duration::from_secs(1);
        assert_eq!(h.update(true, t0), Change::None);
        assert_eq!(h.update(true, t0 + 2 * s), Change::None);
        assert_eq!(h.update(false, t0 + 3 * s), Change::None);
        // When it then holds for 3 s, it is raised, dated from its start
        assert_eq!(h.update(true, t0 + 4 * s), Change::None);
        assert_eq!(h.update(true, t0 + 7 * s), Change::Raised);
        assert_eq!(h.active_for(t0 + 8 * s), Some(4 * s));
        // Then a short dip does not clear it; a long one does
        assert_eq!(h.update(false, t0 + 8 * s), Change::None);
        assert_eq!(h.update(true, t0 + 9 * s), Change::None);
        assert_eq!(h.update(false, t0 + 10 * s), Change::None);
        assert_eq!(h.update(false, t0 + 13 * s), Change::Cleared);
        assert!(!h.active());
    }

    #[test]
    fn with_no_minimum_the_first_update_changes_it() {
        let t0 = Instant::now();
        let mut h = Hold::new(Duration::ZERO);
        assert_eq!(h.update(true, t0), Change::Raised);
        assert_eq!(h.update(false, t0), Change::Cleared);
    }
}
