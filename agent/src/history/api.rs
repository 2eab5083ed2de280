//! The history's JSON API (served by `web`, behind the same authentication as the page):
//!
//! - `GET /api/tags`: every tag by device, with its current value, unit, quality and age,
//!   and whether it has a history.
//! - `GET /api/tags/{device}/{tag}/history?from=&to=&step=`: a [`Series`]. `from` and `to`
//!   are RFC 3339 times or durations before now (`from=1h`); default: the last hour. `step`
//!   (`5m`, `30s`) asks for min/avg/max per step (at least a minute); without it a window
//!   the full-rate points still cover comes sample by sample.
//! - `GET /api/sparklines?from=1h&step=1m`: every tag's mean per step, for the small trends
//!   beside each tag on the page (one request for all tags).

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{History, Series};
use crate::live::Snapshot;

/// Query of `/api/tags/{device}/{tag}/history`.
#[derive(Debug, Default, Deserialize)]
pub struct HistoryQuery {
    pub from: Option<String>,
    pub to: Option<String>,
    pub step: Option<String>,
}

/// The longest window one request may ask for (the aggregates reach back a day by default;
/// a bound keeps a mistyped `from` from building a huge answer).
const MAX_SPAN: chrono::Duration = chrono::Duration::days(100);

/// A bad query, said in words for the 400 answer.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum QueryError {
    #[error("{key}={value:?} is neither an RFC 3339 time (2026-12-07T10:00:00Z) nor a duration before now (1h, 15m)")]
    BadTime { key: &'static str, value: String },
    #[error("step={0:?} is not a duration (30s, 5m, 1h)")]
    BadStep(String),
    #[error("from ({from}) is not before to ({to})")]
    Empty { from: DateTime<Utc>, to: DateTime<Utc> },
    #[error("the window from {from} to {to} is longer than 100 days")]
    TooLong { from: DateTime<Utc>, to: DateTime<Utc> },
}

/// A history query resolved against the clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    /// `None`: full rate where the points reach back to `from`.
    pub step: Option<Duration>,
}

/// `from`, `to` and `step` of a history query, resolved against `now`.
pub fn window(q: &HistoryQuery, now: DateTime<Utc>) -> Result<Window, QueryError> {
    let to = match &q.to {
        Some(v) => time("to", v, now)?,
        None => now,
    };
    let from = match &q.from {
        Some(v) => time("from", v, now)?,
        None => to - chrono::Duration::hours(1),
    };
    if from >= to {
        return Err(QueryError::Empty { from, to });
    }
    if to - from > MAX_SPAN {
        return Err(QueryError::TooLong { from, to });
    }
    let step = match &q.step {
        Some(v) => Some(humantime_serde::re::humantime::parse_duration(v).map_err(|_| QueryError::BadStep(v.clone()))?),
        None => None,
    };
    Ok(Window { from, to, step })
}

/// `value` of query key `key` as a time: RFC 3339, or a duration before `now` (`1h`, `-15m`).
pub fn time(key: &'static str, value: &str, now: DateTime<Utc>) -> Result<DateTime<Utc>, QueryError> {
    if let Ok(t) = DateTime::parse_from_rfc3339(value) {
        return Ok(t.with_timezone(&Utc));
    }
    let bad = || QueryError::BadTime { key, value: value.to_string() };
    let ago = humantime_serde::re::humantime::parse_duration(value.trim_start_matches('-')).map_err(|_| bad())?;
    let ago = chrono::Duration::from_std(ago).map_err(|_| bad())?;
    now.checked_sub_signed(ago).ok_or_else(bad)
}

/// One entry of `/api/tags`.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct TagEntry {
    pub device: String,
    pub tag: String,
    pub unit: Option<String>,
    pub value: Option<edge_drivers::Value>,
    pub quality: String,
    pub ts: Option<DateTime<Utc>>,
    /// Seconds between `ts` and the snapshot's clock.
    pub age_s: Option<f64>,
    /// Whether `/api/tags/{device}/{tag}/history` has points for it.
    pub history: bool,
}

/// `/api/tags`: every tag of the snapshot, devices in name order, tags in config order.
pub fn tags(snapshot: &Snapshot, history: &History) -> Vec<TagEntry> {
    let with_history = history.tags();
    let now = snapshot.generated_at.unwrap_or_else(Utc::now);
    snapshot
        .devices
        .iter()
        .flat_map(|(device, view)| {
            let known = with_history.get(device);
            view.tags.iter().map(move |t| TagEntry {
                device: device.clone(),
                tag: t.name.clone(),
                unit: t.unit.clone(),
                value: t.value.clone(),
                quality: t.quality.clone(),
                ts: t.ts,
                age_s: t.ts.map(|ts| (now - ts).num_milliseconds() as f64 / 1000.0),
                history: known.is_some_and(|k| k.iter().any(|n| n == &t.name)),
            })
        })
        .collect()
}

/// `/api/tags/{device}/{tag}/history`: `None` for a tag without history.
pub fn series(history: &History, device: &str, tag: &str, q: &HistoryQuery, now: DateTime<Utc>) -> Result<Option<Series>, QueryError> {
    let w = window(q, now)?;
    Ok(history.series(device, tag, w.from, w.to, w.step))
}

/// `/api/sparklines`: the last hour per minute unless asked otherwise.
pub fn sparklines(history: &History, q: &HistoryQuery, now: DateTime<Utc>) -> Result<super::Sparklines, QueryError> {
    let w = window(q, now)?;
    Ok(history.sparklines(w.from, w.to, w.step.unwrap_or(Duration::from_secs(60))))
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 12, 7, 12, 0, 0).single().unwrap_or_default()
    }

    fn q(from: Option<&str>, to: Option<&str>, step: Option<&str>) -> HistoryQuery {
        HistoryQuery { from: from.map(Into::into), to: to.map(Into::into), step: step.map(Into::into) }
    }

    #[test]
    fn no_window_means_the_last_hour() {
        let Window { from, to, step } = window(&q(None, None, None), now()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((to - from).num_minutes(), 60);
        assert_eq!(to, now());
        assert_eq!(step, None);
    }

    #[test]
    fn a_duration_means_that_long_before_now() {
        let Window { from, step, .. } = window(&q(Some("24h"), None, Some("5m")), now()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(now() - from, chrono::Duration::hours(24));
        assert_eq!(step, Some(Duration::from_secs(300)));
        let Window { from, .. } = window(&q(Some("-15m"), None, None), now()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(now() - from, chrono::Duration::minutes(15));
    }

    #[test]
    fn rfc3339_times_are_taken_as_they_are() {
        let Window { from, to, .. } =
            window(&q(Some("2026-12-07T10:00:00Z"), Some("2026-12-07T12:00:00+01:00"), None), now()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(from, Utc.with_ymd_and_hms(2026, 12, 7, 10, 0, 0).single().unwrap_or_default());
        assert_eq!(to - from, chrono::Duration::hours(1));
    }

    #[test]
    fn an_empty_window_is_refused() {
        let e = window(&q(Some("2026-12-07T10:00:00Z"), Some("2026-12-07T11:00:00+01:00"), None), now());
        assert!(matches!(e, Err(QueryError::Empty { .. })), "{e:?}");
    }

    #[test]
    fn bad_parameters_are_refused_naming_the_key() {
        let e = window(&q(Some("yesterday"), None, None), now()).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.starts_with("from=\"yesterday\""), "{e}");
        let e = window(&q(None, None, Some("often")), now()).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.starts_with("step=\"often\""), "{e}");
        assert!(matches!(window(&q(Some("200d"), None, None), now()), Err(QueryError::TooLong { .. })));
    }
}
