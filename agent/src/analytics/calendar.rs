//! `[calendar]` (wall-clock times) → the scheduler's calendar (hours from now).

use chrono::{DateTime, Datelike, Duration as ChronoDuration, Utc};
use edge_models::schedule::{Calendar, PlannedStop, Shift};

use super::config::{parse_time_of_day, CalendarConfig, WEEKDAYS};

/// Hours from `now` to `t`.
fn hours(now: DateTime<Utc>, t: DateTime<Utc>) -> f64 {
    (t - now).num_milliseconds() as f64 / 3_600_000.0
}

/// The shift and stop occurrences that overlap `[now, now + horizon]`.
pub fn expand(cfg: &CalendarConfig, now: DateTime<Utc>) -> Calendar {
    let horizon = cfg.horizon.as_secs_f64() / 3600.0;
    let end = now + ChronoDuration::seconds(cfg.horizon.as_secs() as i64);
    let mut shifts = Vec::new();
    for s in &cfg.shifts {
        let Some(time) = parse_time_of_day(&s.start) else { continue };
        let length = ChronoDuration::seconds(s.duration.as_secs() as i64);
        // From yesterday (a night shift may still be running) to the end of the horizon.
        let mut day = (now - ChronoDuration::days(1)).date_naive();
        while day <= end.date_naive() {
            let weekday = WEEKDAYS[day.weekday().num_days_from_monday() as usize];
            let on = s.days.as_ref().is_none_or(|days| days.iter().any(|d| d == weekday));
            let start = day.and_time(time).and_utc();
            if on && start + length > now && start < end {
                shifts.push(Shift { start: hours(now, start), end: hours(now, start + length), crew: s.crew });
            }
            let Some(next) = day.succ_opt() else { break };
            day = next;
        }
    }
    let mut stops = Vec::new();
    for s in &cfg.planned_stops {
        let length = ChronoDuration::seconds(s.duration.as_secs() as i64);
        let mut start = s.start;
        if let Some(every) = s.every.filter(|e| e.as_secs() > 0) {
            let every = ChronoDuration::seconds(every.as_secs() as i64);
            // Skip whole periods that ended before now.
            if start + length <= now {
                let behind = (now - (start + length)).num_seconds() / every.num_seconds().max(1);
                start += every * behind as i32;
            }
            while start < end {
                if start + length > now {
                    stops.push(PlannedStop {
                        name: s.name.clone(),
                        start: hours(now, start),
                        end: hours(now, start + length),
                        crew: s.crew,
                    });
                }
                start += every;
            }
        } else if start + length > now && start < end {
            stops.push(PlannedStop { name: s.name.clone(), start: hours(now, start), end: hours(now, start + length), crew: s.crew });
        }
    }
    stops.sort_by(|a, b| a.start.total_cmp(&b.start));
    Calendar { shifts, stops, horizon, booked: Vec::new() }
}

/// `now + hours` as a time stamp.
pub fn at(now: DateTime<Utc>, hours: f64) -> DateTime<Utc> {
    now + ChronoDuration::milliseconds((hours * 3_600_000.0).round() as i64)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::config::{PlannedStopConfig, ShiftConfig};
    use super::*;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn weekday_shifts_and_a_weekly_stop_expand_into_hours_from_now() {
        // Given a weekday day shift and a weekly Sunday stop, and now = Saturday 2026-11-28 12:00 UTC
        let cfg = CalendarConfig {
            horizon: Duration::from_secs(8 * 86_400),
            shifts: vec![ShiftConfig {
                name: "day".into(),
                start: "06:00".into(),
                duration: Duration::from_secs(8 * 3600),
                crew: 4,
                days: Some(["mon", "tue", "wed", "thu", "fri"].map(String::from).to_vec()),
            }],
            planned_stops: vec![PlannedStopConfig {
                name: "sunday".into(),
                start: utc("2026-11-01T06:00:00Z"),
                duration: Duration::from_secs(12 * 3600),
                every: Some(Duration::from_secs(7 * 86_400)),
                crew: Some(6),
            }],
        };
        let cal = expand(&cfg, utc("2026-11-28T12:00:00Z"));

        // Then the next Sunday's stop starts in 18 h, and the one after a week later
        let starts: Vec<f64> = cal.stops.iter().map(|s| s.start).collect();
        assert_eq!(starts, vec![18.0, 186.0]);
        assert_eq!(cal.stops[0].crew, Some(6));
        // And the first shift is Monday 06:00 (42 h away); five weekday shifts in the horizon
        assert_eq!(cal.shifts.first().map(|s| s.start), Some(42.0));
        assert_eq!(cal.shifts.len(), 5);
        assert_eq!(cal.horizon, 192.0);
    }

    #[test]
    fn a_night_shift_that_began_yesterday_is_still_on() {
        let cfg = CalendarConfig {
            shifts: vec![ShiftConfig {
                name: "night".into(),
                start: "22:00".into(),
                duration: Duration::from_secs(8 * 3600),
                crew: 2,
                days: None,
            }],
            ..Default::default()
        };
        let cal = expand(&cfg, utc("2026-11-28T02:00:00Z"));
        assert_eq!(cal.shifts[0].start, -4.0);
        assert_eq!(cal.crew_free(0.0), 2);
    }
}
