use chrono::{TimeZone, Utc};
use edge_drivers::{Quality, Sample, Value};

use super::*;

fn at(ms: i64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(ms).single().unwrap_or_default()
}

const T0: i64 = 1_790_000_000_000 - 1_790_000_000_000 % 3_600_000;

fn sample(tag: &str, ms: i64, value: Option<Value>, quality: Quality) -> Sample {
    Sample { tag: tag.into(), value, quality, source_ts: at(ms), server_ts: None, agent_ts: at(ms) }
}

fn good(tag: &str, ms: i64, v: f64) -> Sample {
    sample(tag, ms, Some(Value::Float(v)), Quality::Good)
}

#[test]
fn a_recent_window_is_answered_at_full_rate_and_an_old_one_per_minute() {
    // Given two hours of one tag at 1 s
    let h = History::new(HistorySettings::default());
    for s in 0..7200 {
        h.record("mill-plc", &[good("speed", T0 + s * 1000, s as f64)]);
    }
    // When the last ten minutes are asked for without a step
    let end = T0 + 7200 * 1000;
    let recent = h.series("mill-plc", "speed", at(end - 600_000), at(end), None).unwrap_or_else(|| panic!("no series"));
    // Then every sample is there
    assert_eq!(recent.resolution, Resolution::Raw);
    assert_eq!(recent.points.len(), 600);
    assert_eq!(recent.points[599].avg, Some(7199.0));
    // When the whole two hours are asked for
    let all = h.series("mill-plc", "speed", at(T0), at(end), None).unwrap_or_else(|| panic!("no series"));
    // Then they come per minute (the full-rate window is one hour), 120 minutes
    assert_eq!(all.resolution, Resolution::Aggregate);
    assert_eq!(all.step_s, Some(60));
    assert_eq!(all.points.len(), 120);
    assert_eq!((all.points[0].min, all.points[0].max), (Some(0.0), Some(59.0)));
    assert_eq!(all.covered_from, Some(at(T0)));
}

#[test]
fn bad_samples_are_gaps_and_text_is_not_kept() {
    let h = History::new(HistorySettings::default());
    h.record(
        "boiler",
        &[
            good("drum_level", T0, 1.0),
            sample("drum_level", T0 + 1000, None, Quality::Bad("timeout".into())),
            sample("state", T0, Some(Value::Text("RUN".into())), Quality::Good),
            sample("trip", T0, Some(Value::Bool(true)), Quality::Good),
        ],
    );
    let s = h.series("boiler", "drum_level", at(T0), at(T0 + 2000), None).unwrap_or_else(|| panic!("no series"));
    assert_eq!(s.points.len(), 2);
    assert_eq!(s.points[1].avg, None);
    assert!(h.series("boiler", "state", at(T0), at(T0 + 1), None).is_none());
    let trip = h.series("boiler", "trip", at(T0), at(T0 + 1), None).unwrap_or_else(|| panic!("no series"));
    assert_eq!(trip.points[0].avg, Some(1.0));
    assert_eq!(h.tags().get("boiler").map(Vec::len), Some(2));
}

#[test]
fn memory_stays_within_its_limit_with_many_tags() {
    // Given small rings (10 min at 1 s, 10 minutes of aggregates), a limit of what 1,000
    // tags take, and 1,500 tags polled every second for 12 minutes (the rings fill up)
    let limits = Limits { full_rate_window_ms: 600_000, max_points: 600, minutes: 10 };
    let limit = limits.bytes_per_tag() * 1000;
    let h = History::new(HistorySettings { enabled: true, limits, memory_limit: limit });
    let names: Vec<String> = (0..1500).map(|i| format!("t{i:04}")).collect();
    for s in 0..(12 * 60) {
        let batch: Vec<Sample> = names.iter().map(|n| good(n, T0 + s * 1000, 1.0)).collect();
        h.record("plc", &batch);
    }
    // Then 1,000 tags have a history, the rest are counted as refused
    let stats = h.stats();
    assert_eq!(stats.tags, 1000);
    assert_eq!(stats.tags_refused, 500);
    assert_eq!(stats.samples_refused, 500 * 12 * 60);
    // And the rings hold no more than the limit
    assert!(stats.bytes <= limit, "{} bytes > limit {limit}", stats.bytes);
    assert!(stats.bytes >= limit * 9 / 10, "{} bytes: the rings should be full after 12 min", stats.bytes);
}

#[test]
fn a_disabled_history_keeps_nothing() {
    let h = History::new(HistoryConfig { enabled: false, ..HistoryConfig::default() }.build());
    h.record("plc", &[good("a", T0, 1.0)]);
    assert!(h.tags().is_empty());
}

#[test]
fn the_default_settings_cost_about_52_kb_per_tag() {
    // The figure the docs state: 3600 points × 8 B + 1440 minutes × 16 B (+ the ring headers).
    let b = HistorySettings::default().limits.bytes_per_tag();
    assert!((51_840..52_100).contains(&b), "{b}");
    assert_eq!(HistorySettings::default().max_tags(), 256 * 1024 * 1024 / b);
}

#[test]
fn a_memory_limit_below_one_tag_is_refused_with_its_key() {
    let cfg = HistoryConfig { memory_limit: bytesize::ByteSize::kib(10), ..HistoryConfig::default() };
    let mut issues = edge_drivers::validate::Issues::default();
    cfg.validate("history", &mut issues);
    let text = format!("{issues:?}");
    assert!(text.contains("history.memory_limit"), "{text}");
}

#[test]
fn sparklines_give_every_tag_one_mean_per_step_on_the_same_steps() {
    // Given two tags, one with a gap of bad samples in its third minute
    let h = History::new(HistorySettings::default());
    for s in 0..300 {
        let level = if (120..180).contains(&s) {
            sample("level", T0 + s * 1000, None, Quality::Bad("timeout".into()))
        } else {
            good("level", T0 + s * 1000, (s / 60) as f64)
        };
        h.record("plc", &[good("flow", T0 + s * 1000, 10.0), level]);
    }
    // When the sparklines of those five minutes are asked per minute
    let lines = h.sparklines(at(T0), at(T0 + 299_000), std::time::Duration::from_secs(60));
    // Then each tag has five values, the gap as null
    assert_eq!(lines.step_s, 60);
    assert_eq!(lines.from, at(T0));
    assert_eq!(lines.devices["plc"]["flow"], vec![Some(10.0); 5]);
    assert_eq!(lines.devices["plc"]["level"], vec![Some(0.0), Some(1.0), None, Some(3.0), Some(4.0)]);
}
