//! One tag's recent history: full-rate points for a window (capped in count), and one
//! min/avg/max aggregate per minute for a day. Fixed memory: both rings are allocated to
//! their cap once the tag has that much history, and never grow beyond it.
//!
//! Timestamps are Unix milliseconds. Values are `f32`: a trend is drawn, not audited, and
//! half the bytes per point matter at 10,000 tags (the exact values are in the outbox and at
//! the ERP). A bad-quality sample is kept as NaN, so a trend shows a gap, not a line across
//! the outage.

use std::collections::VecDeque;

/// How much history one tag keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Full-rate points older than this (from the newest point) are dropped.
    pub full_rate_window_ms: i64,
    /// At most this many full-rate points per tag (a fast poll keeps less than the window).
    pub max_points: usize,
    /// Per-minute aggregates kept (1440 = 24 h).
    pub minutes: usize,
}

impl Limits {
    /// Worst-case heap bytes of one tag's history under these limits.
    pub const fn bytes_per_tag(&self) -> usize {
        self.max_points * std::mem::size_of::<Point>() + self.minutes * std::mem::size_of::<Minute>() + std::mem::size_of::<TagHistory>()
    }
}

/// One full-rate point, 8 bytes: milliseconds after the tag's base time, and the value.
#[derive(Debug, Clone, Copy)]
struct Point {
    dt_ms: u32,
    value: f32,
}

/// One minute's aggregate, 16 bytes. A minute whose samples were all bad has NaN in all
/// three and `count` 0.
#[derive(Debug, Clone, Copy)]
struct Minute {
    /// Minutes since the Unix epoch.
    minute: u32,
    min: f32,
    max: f32,
    mean: f32,
}

/// The minute being filled.
#[derive(Debug, Clone, Copy)]
struct Open {
    minute: u32,
    min: f64,
    max: f64,
    sum: f64,
    count: u32,
}

impl Open {
    fn close(&self) -> Minute {
        if self.count == 0 {
            return Minute { minute: self.minute, min: f32::NAN, max: f32::NAN, mean: f32::NAN };
        }
        Minute { minute: self.minute, min: self.min as f32, max: self.max as f32, mean: (self.sum / f64::from(self.count)) as f32 }
    }
}

/// A point of a history answer: a raw sample (`min == avg == max`, `count == 1`), or the
/// aggregate of a step. All NaN when the step had only bad samples.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bucket {
    /// Start of the step (or the sample's time), Unix ms.
    pub t_ms: i64,
    pub min: f64,
    pub avg: f64,
    pub max: f64,
}

/// History of one tag.
#[derive(Debug, Clone)]
pub struct TagHistory {
    /// Unix ms that `Point::dt_ms` counts from; moved forward when the offsets near `u32::MAX`.
    base_ms: i64,
    points: VecDeque<Point>,
    minutes: VecDeque<Minute>,
    open: Option<Open>,
    last_ms: Option<i64>,
}

const MINUTE_MS: i64 = 60_000;

impl Default for TagHistory {
    fn default() -> Self {
        Self::new()
    }
}

impl TagHistory {
    pub fn new() -> Self {
        Self { base_ms: 0, points: VecDeque::new(), minutes: VecDeque::new(), open: None, last_ms: None }
    }

    /// Adds a sample at `t_ms`; `None` for a bad-quality sample (a gap). A sample older than
    /// the newest one is ignored (returns false): history is append-only, and a device
    /// whose clock steps back must not reorder the trend.
    pub fn push(&mut self, t_ms: i64, value: Option<f64>, limits: &Limits) -> bool {
        if self.last_ms.is_some_and(|last| t_ms < last) {
            return false;
        }
        self.last_ms = Some(t_ms);
        self.push_point(t_ms, value, limits);
        self.push_minute(t_ms, value, limits);
        true
    }

    fn push_point(&mut self, t_ms: i64, value: Option<f64>, limits: &Limits) {
        if limits.max_points == 0 {
            return;
        }
        if self.points.capacity() < limits.max_points {
            // Once, at the first sample: the ring takes its full size now, so its memory is
            // the documented bound from the start instead of doubling past it later.
            self.points.reserve_exact(limits.max_points - self.points.len());
        }
        if self.points.is_empty() {
            self.base_ms = t_ms;
        }
        if t_ms - self.base_ms > i64::from(u32::MAX / 2) {
            self.rebase(t_ms);
        }
        let cutoff = t_ms - limits.full_rate_window_ms;
        while self.points.front().is_some_and(|p| self.at(p) < cutoff) || self.points.len() >= limits.max_points {
            self.points.pop_front();
        }
        if self.points.is_empty() {
            self.base_ms = t_ms;
        }
        let dt_ms = u32::try_from(t_ms - self.base_ms).unwrap_or(u32::MAX);
        self.points.push_back(Point { dt_ms, value: value.map_or(f32::NAN, |v| v as f32) });
    }

    /// Moves the base to the oldest point kept, so new offsets fit in `u32` again.
    fn rebase(&mut self, now_ms: i64) {
        let new_base = self.points.front().map_or(now_ms, |p| self.at(p));
        let shift = u32::try_from(new_base - self.base_ms).unwrap_or(0);
        for p in &mut self.points {
            p.dt_ms = p.dt_ms.saturating_sub(shift);
        }
        self.base_ms = new_base;
    }

    fn at(&self, p: &Point) -> i64 {
        self.base_ms + i64::from(p.dt_ms)
    }

    fn push_minute(&mut self, t_ms: i64, value: Option<f64>, limits: &Limits) {
        if limits.minutes == 0 {
            return;
        }
        let minute = u32::try_from(t_ms.div_euclid(MINUTE_MS)).unwrap_or(0);
        if self.minutes.capacity() < limits.minutes {
            self.minutes.reserve_exact(limits.minutes - self.minutes.len());
        }
        match &mut self.open {
            Some(open) if open.minute == minute => {}
            slot => {
                if let Some(done) = slot.take() {
                    if self.minutes.len() >= limits.minutes {
                        self.minutes.pop_front();
                    }
                    self.minutes.push_back(done.close());
                }
                *slot = Some(Open { minute, min: f64::INFINITY, max: f64::NEG_INFINITY, sum: 0.0, count: 0 });
            }
        }
        let oldest = minute.saturating_sub(u32::try_from(limits.minutes).unwrap_or(u32::MAX));
        while self.minutes.front().is_some_and(|m| m.minute <= oldest) {
            self.minutes.pop_front();
        }
        if let (Some(open), Some(v)) = (&mut self.open, value.filter(|v| v.is_finite())) {
            open.min = open.min.min(v);
            open.max = open.max.max(v);
            open.sum += v;
            open.count += 1;
        }
    }

    /// Full-rate points with `from_ms <= t < to_ms`.
    pub fn raw(&self, from_ms: i64, to_ms: i64) -> Vec<Bucket> {
        self.points
            .iter()
            .map(|p| (self.at(p), f64::from(p.value)))
            .filter(|&(t, _)| t >= from_ms && t < to_ms)
            .map(|(t, v)| Bucket { t_ms: t, min: v, avg: v, max: v })
            .collect()
    }

    /// Oldest time the full-rate points cover (None when there are none).
    pub fn raw_since(&self) -> Option<i64> {
        self.points.front().map(|p| self.at(p))
    }

    /// Oldest minute the aggregates cover, as Unix ms.
    pub fn minutes_since(&self) -> Option<i64> {
        self.minutes.front().map(|m| i64::from(m.minute) * MINUTE_MS).or(self.open.map(|o| i64::from(o.minute) * MINUTE_MS))
    }

    /// Min/avg/max per `step_ms` (rounded up to whole minutes, aligned on the epoch) over `from_ms..to_ms`, from
    /// the per-minute aggregates (the minute being filled included). Steps with no data are
    /// left out; steps whose samples were all bad are NaN.
    pub fn aggregated(&self, from_ms: i64, to_ms: i64, step_ms: i64) -> Vec<Bucket> {
        let step = (step_ms.max(MINUTE_MS) + MINUTE_MS - 1) / MINUTE_MS * MINUTE_MS;
        let open = self.open.map(|o| o.close());
        let mut out: Vec<(Bucket, u32)> = Vec::new();
        for m in self.minutes.iter().chain(open.iter()) {
            let t = i64::from(m.minute) * MINUTE_MS;
            if t < from_ms - (MINUTE_MS - 1) || t >= to_ms {
                continue;
            }
            // Steps start on multiples of the step since the epoch: the same buckets whatever
            // `from` a client asks with, so a page refreshing its trend sees them stay put.
            let start = t.div_euclid(step) * step;
            let good = !m.mean.is_nan();
            match out.last_mut() {
                Some((b, n)) if b.t_ms == start => {
                    if good {
                        if *n == 0 {
                            *b = Bucket { t_ms: start, min: f64::from(m.min), avg: f64::from(m.mean), max: f64::from(m.max) };
                        } else {
                            b.min = b.min.min(f64::from(m.min));
                            b.max = b.max.max(f64::from(m.max));
                            // Mean of minute means: every minute weighs the same (polls are
                            // regular; a minute's sample count is not kept, to save bytes).
                            b.avg = (b.avg * f64::from(*n) + f64::from(m.mean)) / f64::from(*n + 1);
                        }
                        *n += 1;
                    }
                }
                _ => {
                    let b = Bucket { t_ms: start, min: f64::from(m.min), avg: f64::from(m.mean), max: f64::from(m.max) };
                    out.push((b, u32::from(good)));
                }
            }
        }
        out.into_iter().map(|(b, _)| b).collect()
    }

    /// Heap bytes this tag holds now (its rings' capacity).
    pub fn heap_bytes(&self) -> usize {
        self.points.capacity() * std::mem::size_of::<Point>() + self.minutes.capacity() * std::mem::size_of::<Minute>()
    }

    /// Makes the rings' capacity match their caps, so growth never doubles past them.
    pub fn reserve_exact(&mut self, limits: &Limits) {
        self.points.reserve_exact(limits.max_points.saturating_sub(self.points.len()));
        self.minutes.reserve_exact(limits.minutes.saturating_sub(self.minutes.len()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: Limits = Limits { full_rate_window_ms: 3_600_000, max_points: 3600, minutes: 1440 };
    const T0: i64 = 1_790_000_000_000 - 1_790_000_000_000 % 3_600_000;

    #[test]
    fn a_point_and_a_minute_cost_8_and_16_bytes() {
        assert_eq!(std::mem::size_of::<Point>(), 8);
        assert_eq!(std::mem::size_of::<Minute>(), 16);
    }

    #[test]
    fn full_rate_points_older_than_the_window_are_dropped() {
        // Given a tag polled every second for two hours
        let mut h = TagHistory::new();
        for s in 0..7200 {
            h.push(T0 + s * 1000, Some(s as f64), &HOUR);
        }
        // Then the full-rate points cover the last hour only, oldest first
        let raw = h.raw(i64::MIN, i64::MAX);
        assert_eq!(raw.len(), 3600);
        assert_eq!(raw[0].t_ms, T0 + 3600 * 1000);
        assert_eq!(raw[3599].avg, 7199.0);
    }

    #[test]
    fn a_fast_poll_keeps_at_most_max_points() {
        // Given a tag polled every 100 ms for ten minutes, with a cap of 3600 points
        let mut h = TagHistory::new();
        for i in 0..6000 {
            h.push(T0 + i * 100, Some(1.0), &HOUR);
        }
        h.reserve_exact(&HOUR);
        // Then it keeps the newest 3600 (six minutes), and its memory stays at the cap
        let raw = h.raw(i64::MIN, i64::MAX);
        assert_eq!(raw.len(), 3600);
        assert_eq!(raw[0].t_ms, T0 + 2400 * 100);
        assert!(h.heap_bytes() <= HOUR.bytes_per_tag(), "{} > {}", h.heap_bytes(), HOUR.bytes_per_tag());
    }

    #[test]
    fn per_minute_min_avg_max_cover_a_day_and_no_more() {
        // Given a tag sampled every 10 s for 25 hours, its value the minute number
        let mut h = TagHistory::new();
        for s in (0..25 * 3600).step_by(10) {
            h.push(T0 + s * 1000, Some((s / 60) as f64 + (s % 60) as f64 / 100.0), &HOUR);
        }
        // Then there are 1440 minutes (24 h, the one being filled included)
        let all = h.aggregated(i64::MIN / 2, i64::MAX / 2, MINUTE_MS);
        assert_eq!(all.len(), 1440);
        assert_eq!(all[0].t_ms, T0 + (25 * 60 - 1440) * MINUTE_MS);
        let last = all[1439];
        assert_eq!(last.t_ms, T0 + (25 * 60 - 1) * MINUTE_MS);
        // And each minute has the min, mean and max of its six samples
        assert_eq!(last.min, 1499.0);
        assert_eq!(last.max, 1499.5);
        assert!((last.avg - 1499.25).abs() < 1e-3, "{}", last.avg);
    }

    #[test]
    fn a_step_of_five_minutes_aggregates_five_minutes() {
        let mut h = TagHistory::new();
        for s in 0..600 {
            h.push(T0 + s * 1000, Some(f64::from(u32::try_from(s / 60).unwrap_or(0))), &HOUR);
        }
        let b = h.aggregated(T0, T0 + 600_000, 5 * MINUTE_MS);
        assert_eq!(b.len(), 2);
        assert_eq!((b[0].t_ms, b[0].min, b[0].max), (T0, 0.0, 4.0));
        assert!((b[0].avg - 2.0).abs() < 1e-9);
        assert_eq!((b[1].t_ms, b[1].min, b[1].max), (T0 + 300_000, 5.0, 9.0));
    }

    #[test]
    fn a_bad_sample_is_a_gap_not_a_value() {
        let mut h = TagHistory::new();
        h.push(T0, Some(5.0), &HOUR);
        h.push(T0 + 1000, None, &HOUR);
        h.push(T0 + 2000, Some(7.0), &HOUR);
        let raw = h.raw(i64::MIN, i64::MAX);
        assert!(raw[1].avg.is_nan());
        // And the minute's aggregate counts only the good samples
        let m = h.aggregated(T0, T0 + MINUTE_MS, MINUTE_MS);
        assert_eq!((m[0].min, m[0].max, m[0].avg), (5.0, 7.0, 6.0));
    }

    #[test]
    fn a_minute_of_only_bad_samples_is_nan() {
        let mut h = TagHistory::new();
        h.push(T0, None, &HOUR);
        h.push(T0 + MINUTE_MS, Some(1.0), &HOUR);
        let m = h.aggregated(T0, T0 + 2 * MINUTE_MS, MINUTE_MS);
        assert_eq!(m.len(), 2);
        assert!(m[0].avg.is_nan() && m[0].min.is_nan());
        assert_eq!(m[1].avg, 1.0);
    }

    #[test]
    fn a_sample_older_than_the_newest_is_ignored() {
        let mut h = TagHistory::new();
        assert!(h.push(T0 + 5000, Some(1.0), &HOUR));
        assert!(!h.push(T0, Some(2.0), &HOUR));
        assert_eq!(h.raw(i64::MIN, i64::MAX).len(), 1);
    }

    #[test]
    fn offsets_are_rebased_over_months_without_losing_points() {
        // Given a tag sampled every minute for 60 days (u32 ms offsets overflow after 49)
        let mut h = TagHistory::new();
        for m in 0..60 * 1440 {
            h.push(T0 + m * MINUTE_MS, Some(1.0), &HOUR);
        }
        // Then the last hour's points still carry their true times
        let raw = h.raw(i64::MIN, i64::MAX);
        assert_eq!(raw.len(), 61);
        assert_eq!(raw[60].t_ms, T0 + (60 * 1440 - 1) * MINUTE_MS);
        assert_eq!(raw[0].t_ms, T0 + (60 * 1440 - 61) * MINUTE_MS);
    }

    #[test]
    fn a_gap_of_more_than_a_day_empties_the_minutes() {
        let mut h = TagHistory::new();
        h.push(T0, Some(1.0), &HOUR);
        h.push(T0 + MINUTE_MS, Some(1.0), &HOUR);
        h.push(T0 + 3 * 24 * 3_600_000, Some(2.0), &HOUR);
        let m = h.aggregated(i64::MIN / 2, i64::MAX / 2, MINUTE_MS);
        assert_eq!(m.len(), 1, "{m:?}");
        assert_eq!(m[0].avg, 2.0);
        assert_eq!(h.raw(i64::MIN, i64::MAX).len(), 1);
    }
}
