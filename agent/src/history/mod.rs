//! The gateway's local history: what the status page's trends and the factory tools read.
//!
//! Per tag, full-rate points for the last hour (capped in count) and min/avg/max per minute
//! for 24 hours, in memory only (the outbox is the durable record; this is for looking).
//! Memory is bounded twice: each tag's rings have a fixed size ([`Limits::bytes_per_tag`]),
//! and tags beyond `memory_limit / bytes_per_tag` are not kept (counted, logged once per tag
//! and shown), so the whole history never holds more than `[history] memory_limit`.

pub mod api;
pub mod config;
pub mod tag;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, PoisonError};

use chrono::{DateTime, Utc};
use edge_drivers::{Quality, Sample, Value};
use serde::Serialize;

pub use config::{HistoryConfig, HistorySettings};
pub use tag::{Bucket, Limits, TagHistory};

/// Shared handle to the history of every tag.
#[derive(Clone)]
pub struct History {
    inner: Arc<Inner>,
}

struct Inner {
    settings: HistorySettings,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// device → tag → history.
    devices: BTreeMap<String, BTreeMap<String, TagHistory>>,
    tags: usize,
    /// Samples of tags that did not fit under the memory limit.
    refused_samples: u64,
    /// Tags that did not fit, by `device/tag` (kept small: one entry per refused tag, and a
    /// refused tag is one the config named, so their number is bounded by the config).
    refused_tags: BTreeSet<String>,
    /// Samples older than the tag's newest (a clock that stepped back), not kept.
    out_of_order: u64,
}

/// Counters of the history, for `/metrics` and the page.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct HistoryStats {
    pub tags: usize,
    /// Heap bytes the tags' rings hold now.
    pub bytes: usize,
    /// The most the history may hold (`[history] memory_limit`).
    pub memory_limit: usize,
    /// Tags with no history because the memory limit was reached.
    pub tags_refused: usize,
    pub samples_refused: u64,
    pub samples_out_of_order: u64,
}

/// What `/api/tags/{device}/{tag}/history` answers.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Series {
    pub device: String,
    pub tag: String,
    /// `raw` (every sample) or `aggregate` (min/avg/max per `step_s`).
    pub resolution: Resolution,
    pub step_s: Option<u64>,
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    /// The oldest time this tag's history covers at this resolution: when it is after
    /// `from`, the history is shorter than asked (the agent started later, or the window
    /// ends there), and a client must say so rather than draw a flat line.
    pub covered_from: Option<DateTime<Utc>>,
    pub points: Vec<SeriesPoint>,
}

/// What `/api/sparklines` answers: per tag, the mean of each step since `from`.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Sparklines {
    /// Start of the first step.
    pub from: DateTime<Utc>,
    pub step_s: u64,
    /// device → tag → one value per step (`null`: no good sample in that step).
    pub devices: BTreeMap<String, BTreeMap<String, Vec<Option<f64>>>>,
}

#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Resolution {
    Raw,
    Aggregate,
}

/// One point of a [`Series`]. Values are `null` where the samples were bad (a gap).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct SeriesPoint {
    pub ts: DateTime<Utc>,
    pub min: Option<f64>,
    pub avg: Option<f64>,
    pub max: Option<f64>,
}

impl History {
    pub fn new(settings: HistorySettings) -> Self {
        Self { inner: Arc::new(Inner { settings, state: Mutex::new(State::default()) }) }
    }

    pub fn settings(&self) -> &HistorySettings {
        &self.inner.settings
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave a ring half-updated in a way that
        // matters for a trend: go on with what is there.
        self.inner.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Adds one poll's samples of `device`. Numbers and booleans are kept; text is not
    /// (a trend of a string is not drawn).
    pub fn record(&self, device: &str, samples: &[Sample]) {
        let s = &self.inner.settings;
        if !s.enabled {
            return;
        }
        let mut st = self.lock();
        let st = &mut *st;
        for sample in samples {
            let value = match (&sample.value, &sample.quality) {
                (_, Quality::Bad(_)) | (None, _) => None,
                (Some(v), _) => match numeric(v) {
                    Some(x) => Some(x),
                    None => continue,
                },
            };
            let t_ms = sample.source_ts.timestamp_millis();
            let known = st.devices.get(device).is_some_and(|tags| tags.contains_key(&sample.tag));
            if !known {
                if st.tags >= s.max_tags() {
                    st.refused_samples += 1;
                    let key = format!("{device}/{}", sample.tag);
                    if !st.refused_tags.contains(&key) {
                        tracing::warn!(
                            tag = %key,
                            limit = s.memory_limit,
                            "history: memory limit reached, this tag has no trend (raise [history] memory_limit or lower max_points_per_tag)"
                        );
                        st.refused_tags.insert(key);
                    }
                    continue;
                }
                st.tags += 1;
            }
            let h = st.devices.entry(device.to_string()).or_default().entry(sample.tag.clone()).or_default();
            if !h.push(t_ms, value, &s.limits) {
                st.out_of_order += 1;
            }
        }
    }

    /// Every tag with history, by device.
    pub fn tags(&self) -> BTreeMap<String, Vec<String>> {
        self.lock().devices.iter().map(|(d, tags)| (d.clone(), tags.keys().cloned().collect())).collect()
    }

    /// The history of one tag over `from..to`: full-rate points when `step` is `None` and
    /// the full-rate window still reaches back to `from`, else min/avg/max per `step`
    /// (at least a minute; by default the span over ~300 points). `None` for an unknown tag.
    pub fn series(
        &self,
        device: &str,
        tag: &str,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        step: Option<std::time::Duration>,
    ) -> Option<Series> {
        let st = self.lock();
        let h = st.devices.get(device)?.get(tag)?;
        let (from_ms, to_ms) = (from.timestamp_millis(), to.timestamp_millis());
        // Full rate when its points reach back to `from`, or when the minutes reach no
        // further back than they do (a young history: the aggregates add nothing).
        let raw_covers = match (h.raw_since(), h.minutes_since()) {
            (Some(raw), minutes) => raw <= from_ms || minutes.is_none_or(|m| m >= raw.div_euclid(60_000) * 60_000),
            (None, _) => false,
        };
        let (resolution, step_s, buckets, covered) = match step {
            None if raw_covers => (Resolution::Raw, None, h.raw(from_ms, to_ms), h.raw_since()),
            _ => {
                let span = u64::try_from((to_ms - from_ms).max(0)).unwrap_or(0);
                let step_ms = step.map_or(span / 300, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)).max(60_000);
                let step_ms = step_ms.div_ceil(60_000) * 60_000;
                let buckets = h.aggregated(from_ms, to_ms, i64::try_from(step_ms).unwrap_or(i64::MAX));
                (Resolution::Aggregate, Some(step_ms / 1000), buckets, h.minutes_since())
            }
        };
        let points = buckets
            .into_iter()
            .filter_map(|b| {
                let ts = DateTime::from_timestamp_millis(b.t_ms)?;
                let finite = |x: f64| x.is_finite().then_some(x);
                Some(SeriesPoint { ts, min: finite(b.min), avg: finite(b.avg), max: finite(b.max) })
            })
            .collect();
        Some(Series {
            device: device.to_string(),
            tag: tag.to_string(),
            resolution,
            step_s,
            from,
            to,
            covered_from: covered.and_then(DateTime::from_timestamp_millis),
            points,
        })
    }

    /// One small trend per tag for the page's tag tables: the mean of each `step` over
    /// `from..to` (`null` where a step had only bad samples or no data), device → tag →
    /// values, oldest first, aligned on the same steps for every tag.
    pub fn sparklines(&self, from: DateTime<Utc>, to: DateTime<Utc>, step: std::time::Duration) -> Sparklines {
        let st = self.lock();
        let step_ms = u64::try_from(step.as_millis()).unwrap_or(u64::MAX).max(60_000).div_ceil(60_000) * 60_000;
        let step_ms = i64::try_from(step_ms).unwrap_or(i64::MAX);
        let (from_ms, to_ms) = (from.timestamp_millis().div_euclid(step_ms) * step_ms, to.timestamp_millis());
        let slots = usize::try_from((to_ms - from_ms).div_euclid(step_ms) + 1).unwrap_or(0).min(1440);
        let devices = st
            .devices
            .iter()
            .map(|(device, tags)| {
                let lines = tags
                    .iter()
                    .map(|(tag, h)| {
                        let mut line = vec![None; slots];
                        for b in h.aggregated(from_ms, to_ms, step_ms) {
                            let i = usize::try_from((b.t_ms - from_ms).div_euclid(step_ms)).unwrap_or(usize::MAX);
                            if let Some(slot) = line.get_mut(i) {
                                *slot = b.avg.is_finite().then_some(b.avg);
                            }
                        }
                        (tag.clone(), line)
                    })
                    .collect();
                (device.clone(), lines)
            })
            .collect();
        Sparklines {
            from: DateTime::from_timestamp_millis(from_ms).unwrap_or(from),
            step_s: u64::try_from(step_ms / 1000).unwrap_or(60),
            devices,
        }
    }

    pub fn stats(&self) -> HistoryStats {
        let st = self.lock();
        let bytes = st.devices.values().flat_map(|t| t.values()).map(TagHistory::heap_bytes).sum();
        HistoryStats {
            tags: st.tags,
            bytes,
            memory_limit: self.inner.settings.memory_limit,
            tags_refused: st.refused_tags.len(),
            samples_refused: st.refused_samples,
            samples_out_of_order: st.out_of_order,
        }
    }
}

/// A sample's value as a number for a trend: numbers as they are, booleans as 0/1.
fn numeric(v: &Value) -> Option<f64> {
    match v {
        Value::Bool(b) => Some(f64::from(u8::from(*b))),
        Value::Int(i) => Some(*i as f64),
        Value::Float(f) => Some(*f),
        _ => None,
    }
}

#[cfg(test)]
mod tests;
