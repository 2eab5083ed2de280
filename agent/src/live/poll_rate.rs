//! A device's achieved poll rate against the one its config asks for.
//!
//! The configured rate is the sum over the device's poll groups in use (those with tags)
//! of one poll per interval. The achieved rate is measured from the device's poll counter
//! (its driver's `polls`, or one per batch of readings for a driver that counts none) over
//! the last [`PollRate::window`]: at least a minute, and long enough for ten polls of the
//! configured rate (at most ten minutes). The counter is observed when the driver reports
//! it (the Modbus driver: after a poll, at most once a second), so the measurement ends at
//! the latest observation, or earlier than now by one poll and the reporting delay when the
//! driver has gone quiet: a stalled device's rate falls to zero.
//!
//! A device **falls behind** when, over a whole window, it made less than
//! [`BEHIND_BELOW`] of its configured polls. OPC-UA devices are not measured: subscribed
//! groups are sampled by the server, and the OPC-UA driver counts no polls.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use edge_drivers::{DeviceConfig, Protocol};
use serde::Serialize;

/// Below this share of its configured rate, over a whole window, a device falls behind.
pub const BEHIND_BELOW: f64 = 0.8;
/// The shortest measurement window.
const MIN_WINDOW: Duration = Duration::from_secs(60);
/// The longest (a device polled every ten minutes is measured over ten polls at most this).
const MAX_WINDOW: Duration = Duration::from_secs(600);
/// Polls of the configured rate a window must hold for "behind" to be judged at all.
const MIN_POLLS_JUDGED: f64 = 10.0;
/// Observations kept per window (older ones are merged): bounds memory and work.
const STEPS: u32 = 60;
/// How late a driver's counters may arrive after a poll (the Modbus driver reports them
/// at most once a second) before the device counts as quiet.
const REPORT_DELAY: Duration = Duration::from_secs(2);

/// One poll group's configured interval, for the page.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GroupInterval {
    /// The group's name; `None` for the device's `poll_interval`.
    pub group: Option<String>,
    pub interval_ms: u64,
}

/// What the page, `/api/status` and `/metrics` show (`poll_rate` of a device).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PollRateView {
    /// The configured intervals, one per poll group in use.
    pub intervals: Vec<GroupInterval>,
    /// Polls per second the config asks for (every group together).
    pub configured_per_s: f64,
    /// Polls per second made over the last `measured_s`; `None` while too little has been
    /// seen, or for a device whose polls are not counted (`note` says why).
    pub achieved_per_s: Option<f64>,
    /// The span the achieved rate was measured over, in seconds.
    pub measured_s: f64,
    /// The window a judgement needs, in seconds.
    pub window_s: f64,
    /// Less than [`BEHIND_BELOW`] of the configured rate over a whole window.
    pub behind: bool,
    pub note: Option<String>,
}

/// The measurement of one device.
#[derive(Debug, Clone)]
pub struct PollRate {
    intervals: Vec<GroupInterval>,
    configured_per_s: f64,
    /// Whether the device's polls are counted at all.
    measured: bool,
    window: Duration,
    /// (when, polls so far), oldest first, at least `window / STEPS` apart but the last.
    seen: VecDeque<(Instant, u64)>,
    /// The last raw value of the counter (to see a restarted driver count from zero).
    raw: Option<u64>,
    /// Polls counted since the measurement started, across driver restarts.
    total: u64,
}

impl PollRate {
    /// The configured rate of `device`.
    pub fn of(device: &DeviceConfig) -> PollRate {
        let mut groups: Vec<Option<&str>> = Vec::new();
        for tag in &device.tags {
            let g = tag.poll_group.as_deref();
            if !groups.contains(&g) {
                groups.push(g);
            }
        }
        let intervals: Vec<GroupInterval> = groups
            .into_iter()
            .map(|g| GroupInterval { group: g.map(str::to_string), interval_ms: device.group_interval(g).as_millis() as u64 })
            .collect();
        Self::new(intervals, device.protocol != Protocol::Opcua)
    }

    /// A measurement against `intervals`; `measured`: whether the device's polls are counted.
    pub fn new(intervals: Vec<GroupInterval>, measured: bool) -> PollRate {
        let configured_per_s: f64 = intervals.iter().filter(|g| g.interval_ms > 0).map(|g| 1000.0 / g.interval_ms as f64).sum();
        let window = if configured_per_s > 0.0 {
            Duration::from_secs_f64((MIN_POLLS_JUDGED / configured_per_s).clamp(MIN_WINDOW.as_secs_f64(), MAX_WINDOW.as_secs_f64()))
        } else {
            MIN_WINDOW
        };
        PollRate { intervals, configured_per_s, measured, window, seen: VecDeque::new(), raw: None, total: 0 }
    }

    pub fn window(&self) -> Duration {
        self.window
    }

    /// Forgets what was seen (the counter changes source: the driver's first counters).
    pub fn restart(&mut self) {
        self.seen.clear();
        self.raw = None;
        self.total = 0;
    }

    /// The device's poll counter read `polls` at `now`. A counter lower than the last one
    /// is a restarted driver counting from zero again: its polls add to the total.
    pub fn record(&mut self, now: Instant, polls: u64) {
        let added = match self.raw {
            None => 0,
            Some(last) if polls >= last => polls - last,
            Some(_) => polls,
        };
        self.raw = Some(polls);
        self.total += added;
        let step = self.window / STEPS;
        // The last observation moves with the counter while it is within a step of the one
        // before it; the others stay at least a step apart.
        let merge =
            self.seen.len() >= 2 && self.seen.get(self.seen.len() - 2).is_some_and(|(t, _)| now.saturating_duration_since(*t) < step);
        if merge {
            self.seen.pop_back();
        }
        self.seen.push_back((now, self.total));
        // One observation at or before the window's start is kept as its base.
        while self.seen.len() > 2 && self.seen.get(1).is_some_and(|(t, _)| now.saturating_duration_since(*t) >= self.window) {
            self.seen.pop_front();
        }
    }

    /// The rate at `now`.
    pub fn view(&self, now: Instant) -> PollRateView {
        let mut view = PollRateView {
            intervals: self.intervals.clone(),
            configured_per_s: self.configured_per_s,
            achieved_per_s: None,
            measured_s: 0.0,
            window_s: self.window.as_secs_f64(),
            behind: false,
            note: None,
        };
        if !self.measured {
            view.note = Some("not measured for OPC-UA (the server samples subscribed tags)".into());
            return view;
        }
        let Some(&(last_at, last_polls)) = self.seen.back() else {
            view.note = Some("no poll seen yet".into());
            return view;
        };
        // The base: the newest observation at or before the window's start, else the oldest.
        let start = now.checked_sub(self.window);
        let base = self.seen.iter().rev().find(|(t, _)| start.is_some_and(|s| *t <= s)).or(self.seen.front()).copied();
        let Some((base_at, base_polls)) = base else { return view };
        // A quiet driver: the measurement runs on to now, less one poll and the reporting delay.
        let one_poll = if self.configured_per_s > 0.0 { Duration::from_secs_f64(1.0 / self.configured_per_s) } else { Duration::ZERO };
        let quiet_from = now.checked_sub(one_poll + REPORT_DELAY).unwrap_or(last_at);
        let end = last_at.max(quiet_from);
        let span = end.saturating_duration_since(base_at);
        view.measured_s = span.as_secs_f64();
        // Too short to say anything: at least ten seconds (or three polls), at most a window.
        let shortest = self.window.min(Duration::from_secs(10).max(one_poll * 3));
        if span < shortest {
            view.note = Some("measuring".into());
            return view;
        }
        let achieved = (last_polls - base_polls) as f64 / span.as_secs_f64();
        view.achieved_per_s = Some(achieved);
        let whole_window = start.is_some_and(|s| base_at <= s);
        let judged = self.configured_per_s * self.window.as_secs_f64() >= MIN_POLLS_JUDGED;
        view.behind = whole_window && judged && achieved < self.configured_per_s * BEHIND_BELOW;
        view
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn every(ms: u64) -> GroupInterval {
        GroupInterval { group: None, interval_ms: ms }
    }

    /// A device polled every `period` from `t0` for `count` polls, its counter observed
    /// after each poll; returns the time of the last poll.
    fn poll(rate: &mut PollRate, t0: Instant, from: u64, count: u64, period: Duration) -> Instant {
        let mut at = t0;
        for i in 1..=count {
            at = t0 + period * i as u32;
            rate.record(at, from + i);
        }
        at
    }

    #[test]
    fn a_device_polled_at_its_configured_rate_achieves_it_and_is_not_behind() {
        // Given a device polled once a second, observed for two minutes
        let mut rate = PollRate::new(vec![every(1000)], true);
        let t0 = Instant::now();
        let last = poll(&mut rate, t0, 0, 120, Duration::from_secs(1));
        // When its rate is read half a second after the last poll
        let v = rate.view(last + Duration::from_millis(500));
        // Then it achieved one poll a second over the last minute
        assert_eq!(v.configured_per_s, 1.0);
        let achieved = v.achieved_per_s.unwrap();
        assert!((achieved - 1.0).abs() < 0.02, "{v:?}");
        assert!(v.measured_s >= 60.0 && v.measured_s <= 62.0, "{v:?}");
        assert!(!v.behind);
        // And its memory stays bounded: about one observation per second of the window
        assert!(rate.seen.len() <= STEPS as usize + 2, "{}", rate.seen.len());
    }

    #[test]
    fn a_device_polled_at_half_its_rate_falls_behind_only_after_a_whole_window() {
        // Given a device configured for 10 polls a second that manages 5
        let mut rate = PollRate::new(vec![every(100)], true);
        let t0 = Instant::now();
        // When it has been watched for 30 s: the rate is known, but no verdict yet
        let at = poll(&mut rate, t0, 0, 150, Duration::from_millis(200));
        let v = rate.view(at);
        assert!((v.achieved_per_s.unwrap() - 5.0).abs() < 0.1, "{v:?}");
        assert!(!v.behind, "judged before a whole window: {v:?}");
        // When it has been watched for more than a minute
        let at = poll(&mut rate, at, 150, 200, Duration::from_millis(200));
        // Then it is behind
        let v = rate.view(at);
        assert!((v.achieved_per_s.unwrap() - 5.0).abs() < 0.1, "{v:?}");
        assert!(v.behind, "{v:?}");
    }

    #[test]
    fn a_stalled_device_drops_to_zero_without_any_new_report() {
        // Given a device polled every second for two minutes, then silent for two more
        let mut rate = PollRate::new(vec![every(1000)], true);
        let t0 = Instant::now();
        let last = poll(&mut rate, t0, 0, 120, Duration::from_secs(1));
        // Then half a minute later its rate is about half, and after two minutes zero
        let v = rate.view(last + Duration::from_secs(30));
        assert!(v.achieved_per_s.unwrap() < 0.6, "{v:?}");
        let v = rate.view(last + Duration::from_secs(120));
        assert_eq!(v.achieved_per_s, Some(0.0), "{v:?}");
        assert!(v.behind);
    }

    #[test]
    fn a_restarted_driver_counting_from_zero_does_not_stop_the_measurement() {
        // Given a driver at 60 polls that restarts and counts from zero again
        let mut rate = PollRate::new(vec![every(1000)], true);
        let t0 = Instant::now();
        let at = poll(&mut rate, t0, 0, 60, Duration::from_secs(1));
        let at = poll(&mut rate, at, 0, 60, Duration::from_secs(1));
        // Then its rate is still one a second
        let v = rate.view(at);
        assert!((v.achieved_per_s.unwrap() - 1.0).abs() < 0.02, "{v:?}");
        assert!(!v.behind);
    }

    #[test]
    fn rates_add_up_over_poll_groups_and_slow_devices_get_a_longer_window() {
        let fast_and_slow = PollRate::new(vec![every(100), GroupInterval { group: Some("slow".into()), interval_ms: 10_000 }], true);
        assert!((fast_and_slow.configured_per_s - 10.1).abs() < 1e-9);
        assert_eq!(fast_and_slow.window(), MIN_WINDOW);
        // Ten polls of a 10 s group take 100 s; a 10 min group is capped at 10 min (not judged)
        assert_eq!(PollRate::new(vec![every(10_000)], true).window(), Duration::from_secs(100));
        let mut slow = PollRate::new(vec![every(600_000)], true);
        assert_eq!(slow.window(), MAX_WINDOW);
        let t0 = Instant::now();
        let at = poll(&mut slow, t0, 0, 3, Duration::from_secs(900));
        assert!(!slow.view(at + Duration::from_secs(1)).behind);
    }

    #[test]
    fn a_device_just_started_is_measuring_and_an_opcua_device_is_not_measured() {
        let mut rate = PollRate::new(vec![every(1000)], true);
        assert_eq!(rate.view(Instant::now()).note.as_deref(), Some("no poll seen yet"));
        let t0 = Instant::now();
        let at = poll(&mut rate, t0, 0, 3, Duration::from_secs(1));
        let v = rate.view(at);
        assert_eq!((v.achieved_per_s, v.note.as_deref()), (None, Some("measuring")));
        let mut ua = PollRate::new(vec![every(1000)], false);
        poll(&mut ua, t0, 0, 100, Duration::from_secs(1));
        let v = ua.view(t0 + Duration::from_secs(100));
        assert_eq!(v.achieved_per_s, None);
        assert!(!v.behind && v.note.as_deref().is_some_and(|n| n.contains("OPC-UA")), "{v:?}");
    }
}
