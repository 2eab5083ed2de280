//! Which telemetry batches to publish next: live first, the replay bounded (pure, unit-tested).
//!
//! After a (re)connection everything still in the outbox is published again. Batches
//! numbered below `live_from` (the outbox's next `batch_seq` when the connection came up)
//! are **history**: stored while the broker was unreachable, or sent before and not
//! acknowledged. Batches from `live_from` on are **live**. Two cursors walk the outbox:
//!
//! - the live cursor, from `live_from` on, takes as many batches as the in-flight window
//!   has room for, first;
//! - the history cursor, from the oldest entry up to `live_from`, takes what room is left,
//!   at most `replay_max_per_sec` batches per second on average (a token bucket holding
//!   one second's worth), and never the last quarter of the window, which stays free for
//!   live batches.
//!
//! So a long backlog cannot delay live data (design §5: "live batches go first"), and the
//! broker and the ERP see the replay at a bounded rate. The bucket starts full at each
//! connection: a short outage's backlog (up to a second's worth) goes out at once, before
//! the first live batch of the new connection is even stored, so the ERP sees it in order;
//! only a longer backlog is spread out, with live batches overtaking it.
//!
//! **Order.** Each cursor reads the outbox in key order, which is `batch_seq` order, and
//! only moves forward, so each stream is published in `batch_seq` order. `batch_seq` is one
//! counter across all devices of the gateway, so the order per device is kept within the
//! live stream and within the historical stream separately. The two streams interleave:
//! every historical batch of a device is older than its live batches but may arrive after
//! some of them. The ERP orders by `batch_seq` (and sees `historical: true` on the replay),
//! which it does anyway to find gaps and duplicates; docs/mqtt.md says so.
//!
//! At shutdown the bound is lifted ([`Schedule::unbounded`]): no live data is coming any
//! more and the outbox should be drained before the deadline.

use tokio::time::{Duration, Instant};

/// Tokens for historical batches: `per_sec` added per second, at most `capacity` kept.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    per_sec: f64,
    capacity: f64,
    tokens: f64,
    at: Instant,
}

impl TokenBucket {
    /// A full bucket for `per_sec` batches per second, holding one second's worth.
    pub fn new(per_sec: u32, now: Instant) -> Self {
        let per_sec = f64::from(per_sec.max(1));
        let capacity = per_sec;
        Self { per_sec, capacity, tokens: capacity, at: now }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.per_sec).min(self.capacity);
        self.at = now;
    }

    /// Whole tokens available at `now`.
    pub fn available(&mut self, now: Instant) -> usize {
        self.refill(now);
        self.tokens.floor() as usize
    }

    pub fn take(&mut self, n: usize) {
        self.tokens = (self.tokens - n as f64).max(0.0);
    }

    /// When the next whole token will be there.
    pub fn next_token_at(&self) -> Instant {
        let missing = (1.0 - self.tokens).max(0.0);
        self.at + Duration::from_secs_f64(missing / self.per_sec)
    }

    /// Empty and full again: a fresh connection starts with a full bucket.
    pub fn fill_up(&mut self, now: Instant) {
        self.tokens = self.capacity;
        self.at = now;
    }
}

/// The two cursors over the telemetry tree and the replay bound.
#[derive(Debug, Clone)]
pub struct Schedule {
    live_from: u64,
    next_live: u64,
    next_history: u64,
    bucket: TokenBucket,
    bounded: bool,
    /// The last pick wanted more history than the tokens allowed.
    starved: bool,
}

impl Schedule {
    pub fn new(replay_max_per_sec: u32, now: Instant) -> Self {
        Self {
            live_from: 0,
            next_live: 0,
            next_history: 0,
            bucket: TokenBucket::new(replay_max_per_sec, now),
            bounded: true,
            starved: false,
        }
    }

    /// A new connection: everything numbered below `live_from` is history, to be resent.
    pub fn restart(&mut self, live_from: u64, now: Instant) {
        self.live_from = live_from;
        self.next_live = live_from;
        self.next_history = 0;
        self.starved = false;
        self.bucket.fill_up(now);
    }

    /// Batches below this were stored before the current connection came up.
    pub fn live_from(&self) -> u64 {
        self.live_from
    }

    /// Every live batch numbered below this has been queued for publishing.
    pub fn next_live(&self) -> u64 {
        self.next_live.max(self.live_from)
    }

    /// Lifts the replay bound (shutdown: drain everything before the deadline).
    pub fn unbounded(&mut self) {
        self.bounded = false;
    }

    /// Whether history may still be waiting below `live_from`.
    pub fn replaying(&self) -> bool {
        self.next_history < self.live_from
    }

    /// Chooses what to publish now, given `room` free places in a window of `window`.
    /// `read(from, limit)` returns up to `limit` entries with `seq >= from` in `seq` order
    /// (`Outbox::telemetry_from`). Returns live entries first, then historical ones. Nothing
    /// moves until [`Schedule::published`] says an entry was actually queued.
    pub fn pick<T>(
        &mut self,
        room: usize,
        window: usize,
        now: Instant,
        mut read: impl FnMut(u64, usize) -> Vec<(u64, T)>,
    ) -> Vec<(u64, T)> {
        self.starved = false;
        if room == 0 {
            return Vec::new();
        }
        let mut out = read(self.next_live.max(self.live_from), room);
        if !self.replaying() {
            return out;
        }
        let reserve = if self.bounded { window / 4 } else { 0 };
        let wanted = (room - out.len()).saturating_sub(reserve);
        let allowed = if self.bounded { wanted.min(self.bucket.available(now)) } else { wanted };
        self.starved = allowed < wanted;
        if allowed == 0 {
            return out;
        }
        let before = out.len();
        for (seq, entry) in read(self.next_history, allowed) {
            if seq >= self.live_from {
                // Nothing (flushed) is left below live_from. Entries not flushed yet are never
                // skipped this way: the outbox returns only flushed entries, and everything
                // numbered below a flushed entry is flushed. When history was picked just
                // now, the replay ends once those are published (the next pick sees this
                // again with nothing before it), so an entry that could not be queued is
                // not skipped either.
                if out.len() == before {
                    self.next_history = self.live_from;
                }
                self.starved = false;
                break;
            }
            out.push((seq, entry));
        }
        out
    }

    /// Entry `seq` from the last pick was queued for publishing.
    pub fn published(&mut self, seq: u64) {
        if seq >= self.live_from {
            self.next_live = self.next_live.max(seq + 1);
        } else {
            self.next_history = self.next_history.max(seq + 1);
            if self.bounded {
                self.bucket.take(1);
            }
        }
    }

    /// When to pick again because tokens will be there for history that is waiting; `None`
    /// when nothing waits for tokens (new entries and PUBACKs wake the uplink anyway).
    pub fn wake_at(&self) -> Option<Instant> {
        (self.bounded && self.starved && self.replaying()).then(|| self.bucket.next_token_at())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An outbox holding the given sequence numbers (as `telemetry_from` sees them).
    fn reader(seqs: &[u64]) -> impl FnMut(u64, usize) -> Vec<(u64, ())> + '_ {
        move |from, limit| seqs.iter().copied().filter(|&s| s >= from).take(limit).map(|s| (s, ())).collect()
    }

    fn pick_and_publish(s: &mut Schedule, seqs: &[u64], room: usize, window: usize, now: Instant) -> Vec<u64> {
        let picked: Vec<u64> = s.pick(room, window, now, reader(seqs)).into_iter().map(|(seq, ())| seq).collect();
        for &seq in &picked {
            s.published(seq);
        }
        picked
    }

    #[test]
    fn live_batches_go_before_the_backlog() {
        // Given 100 batches of backlog (1..=100) and a connection that came up at 101
        let t0 = Instant::now();
        let mut s = Schedule::new(1000, t0);
        s.restart(101, t0);
        // and live batches 101..=103 stored since
        let seqs: Vec<u64> = (1..=103).collect();
        // When 8 places are free in a window of 8
        let picked = pick_and_publish(&mut s, &seqs, 8, 8, t0);
        // Then the live batches come first, then the oldest history
        assert_eq!(picked, vec![101, 102, 103, 1, 2, 3]);
    }

    #[test]
    fn history_is_bounded_by_the_tokens_and_live_is_not() {
        // Given 50 batches/s (a bucket of 50), a big backlog and room for everything
        let t0 = Instant::now();
        let mut s = Schedule::new(50, t0);
        s.restart(1001, t0);
        let mut seqs: Vec<u64> = (1..=1000).collect();
        seqs.extend(1001..=1020);
        // When picking with a huge window
        let picked = pick_and_publish(&mut s, &seqs, 1000, 1000, t0);
        // Then all 20 live batches go, and only 50 historical ones, the oldest
        assert_eq!(picked.iter().filter(|&&x| x >= 1001).count(), 20);
        assert_eq!(picked.iter().filter(|&&x| x < 1001).copied().collect::<Vec<_>>(), (1..=50).collect::<Vec<_>>());
        // and the uplink is told when the next token is there (20 ms at 50/s)
        assert_eq!(s.wake_at(), Some(t0 + Duration::from_millis(20)));
        // and nothing more of the history goes at the same instant
        assert!(pick_and_publish(&mut s, &seqs, 1000, 1000, t0).is_empty());
    }

    #[test]
    fn over_one_second_the_replay_stays_near_the_rate() {
        let t0 = Instant::now();
        let mut s = Schedule::new(50, t0);
        s.restart(10_001, t0);
        let seqs: Vec<u64> = (1..=10_000).collect();
        let mut sent = Vec::new();
        // Picking every millisecond for one second, with plenty of room
        for ms in 0..=1000 {
            sent.extend(pick_and_publish(&mut s, &seqs, 100, 100, t0 + Duration::from_millis(ms)));
        }
        // the full bucket (50) then the rate (50 in the second), in batch_seq order without gaps
        assert!((99..=100).contains(&sent.len()), "{}", sent.len());
        assert_eq!(sent, (1..=sent.len() as u64).collect::<Vec<_>>());
    }

    #[test]
    fn history_leaves_a_quarter_of_the_window_for_live_batches() {
        let t0 = Instant::now();
        let mut s = Schedule::new(100_000, t0);
        s.restart(1001, t0);
        let seqs: Vec<u64> = (1..=1000).collect();
        let picked = pick_and_publish(&mut s, &seqs, 16, 16, t0);
        assert_eq!(picked.len(), 12);
        // and when live batches come, they get the rest
        let mut seqs = seqs;
        seqs.extend(1001..=1010);
        assert_eq!(pick_and_publish(&mut s, &seqs, 4, 16, t0), vec![1001, 1002, 1003, 1004]);
    }

    #[test]
    fn each_stream_keeps_batch_seq_order_across_picks_and_acks() {
        // Given a backlog with holes (acked entries) and live entries arriving over time
        let t0 = Instant::now();
        let mut s = Schedule::new(20, t0);
        s.restart(50, t0);
        let mut seqs: Vec<u64> = (1..50).filter(|x| x % 7 != 0).collect();
        let (mut live, mut history) = (Vec::new(), Vec::new());
        for step in 0..400u64 {
            if step % 10 == 0 {
                seqs.push(50 + step / 10);
            }
            for seq in pick_and_publish(&mut s, &seqs, 3, 8, t0 + Duration::from_millis(step * 10)) {
                if seq >= 50 {
                    live.push(seq);
                } else {
                    history.push(seq);
                }
            }
        }
        // Then every entry went out exactly once, each stream in order
        assert_eq!(history, (1..50).filter(|x| x % 7 != 0).collect::<Vec<_>>());
        assert_eq!(live, (50..90).collect::<Vec<_>>());
        assert!(!s.replaying());
        assert_eq!(s.wake_at(), None);
    }

    #[test]
    fn a_publish_that_could_not_be_queued_is_picked_again() {
        let t0 = Instant::now();
        let mut s = Schedule::new(1000, t0);
        s.restart(4, t0);
        let seqs = [1, 2, 3, 4, 5];
        let picked: Vec<u64> = s.pick(10, 10, t0, reader(&seqs)).into_iter().map(|(x, ())| x).collect();
        assert_eq!(picked, vec![4, 5, 1, 2, 3]);
        // Only 4 and 1 made it into the client's queue
        s.published(4);
        s.published(1);
        let again: Vec<u64> = s.pick(10, 10, t0, reader(&seqs)).into_iter().map(|(x, ())| x).collect();
        assert_eq!(again, vec![5, 2, 3]);
    }

    #[test]
    fn unflushed_history_is_not_skipped() {
        // Given a connection at 10 while entries 6..10 are numbered but not flushed yet
        let t0 = Instant::now();
        let mut s = Schedule::new(1000, t0);
        s.restart(10, t0);
        let flushed = [1, 2, 3, 4, 5];
        assert_eq!(pick_and_publish(&mut s, &flushed, 10, 10, t0), vec![1, 2, 3, 4, 5]);
        assert!(s.replaying());
        // When they become visible, they are replayed as history, then the replay ends
        let all: Vec<u64> = (1..=12).collect();
        assert_eq!(pick_and_publish(&mut s, &all, 10, 10, t0), vec![10, 11, 12, 6, 7, 8, 9]);
        assert!(!s.replaying());
    }

    #[test]
    fn unbounded_drains_history_as_fast_as_the_window_allows() {
        let t0 = Instant::now();
        let mut s = Schedule::new(1, t0);
        s.restart(101, t0);
        s.unbounded();
        let seqs: Vec<u64> = (1..=100).collect();
        assert_eq!(pick_and_publish(&mut s, &seqs, 32, 32, t0).len(), 32);
        assert_eq!(s.wake_at(), None);
    }
}
