//! Simulated history of the sugar mill as CSV: the training data of the demo's models.
//!
//! One row every `every` of plant time: `ts` (RFC 3339), every numeric tag of the mill's
//! register map (bits left out), then the ground truth no PLC shows, as labels:
//!
//! | column | meaning |
//! |---|---|
//! | `pump_cavitation` | 1 while the juice pump cavitates (anomaly label), else 0 |
//! | `heater_underheat` | 1 while the heater's steam valve is stuck, else 0 |
//! | `syrup_purity` | the true syrup purity, % (the lab only samples it every 4 h) |
//! | `bearing_life` | which bearing is fitted: 0, 1, 2… (the group of run-to-failure data) |
//! | `bearing_rul_h` | hours until that bearing failed; empty for the last bearing, which has not failed yet |
//!
//! The RUL label is what happened, not a formula: rows are held back until their bearing
//! fails, then written with the time that was actually left.

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::modbus::types::DataType;
use crate::sim::sugar_mill::{SugarMill, REGISTER_MAP};

/// Integration step of long simulations (see [`SugarMill::step_in`]).
const HISTORY_SUBSTEP: Duration = Duration::from_secs(10);

/// What to simulate.
#[derive(Debug, Clone)]
pub struct HistoryOptions {
    pub seed: u64,
    /// Plant time to simulate.
    pub duration: Duration,
    /// Plant time between two rows.
    pub every: Duration,
    /// Whether cavitation and under-heat episodes come at random (bearing wear goes on anyway).
    pub random_faults: bool,
    /// Time stamp of the first row.
    pub start: DateTime<Utc>,
}

/// What was written.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HistorySummary {
    pub rows: u64,
    pub bearing_failures: u32,
    pub cavitation_rows: u64,
    pub underheat_rows: u64,
    pub lab_samples: u64,
}

/// The numeric tags of the register map, in map order (the CSV's feature columns).
pub fn feature_tags() -> Vec<&'static str> {
    REGISTER_MAP.iter().filter(|p| p.data_type != DataType::Bool).map(|p| p.tag).collect()
}

/// The label columns after the tags.
pub const LABEL_COLUMNS: [&str; 5] = ["pump_cavitation", "heater_underheat", "syrup_purity", "bearing_life", "bearing_rul_h"];

/// Simulates the mill and writes its history as CSV to `out`.
pub fn write_csv(opts: &HistoryOptions, out: &mut impl Write) -> io::Result<HistorySummary> {
    let mut mill = SugarMill::new(opts.seed);
    mill.set_random_faults(opts.random_faults);
    let tags = feature_tags();
    let mut header: Vec<&str> = vec!["ts"];
    header.extend(&tags);
    header.extend(LABEL_COLUMNS);
    writeln!(out, "{}", header.join(","))?;

    let every = opts.every.max(Duration::from_secs(1));
    let rows = (opts.duration.as_secs_f64() / every.as_secs_f64()).floor() as u64;
    let mut summary = HistorySummary::default();
    // Rows of the bearing now fitted, waiting for its failure: (elapsed hours, text before the RUL).
    let mut pending: Vec<(f64, String)> = Vec::new();
    let mut life = 0u32;
    for _ in 0..rows {
        mill.step_in(every, HISTORY_SUBSTEP);
        let failures = mill.bearing_failures();
        if failures > life {
            // The bearing failed during this step: its rows now know their RUL.
            let failed_at = mill.elapsed().as_secs_f64() / 3600.0;
            for (t, text) in pending.drain(..) {
                writeln!(out, "{text},{:.3}", failed_at - t)?;
            }
            life = failures;
        }
        let elapsed = mill.elapsed();
        let ts = opts.start + chrono::Duration::from_std(elapsed).unwrap_or_default();
        let mut text = ts.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        for tag in &tags {
            let v = mill.value(tag).unwrap_or(f64::NAN);
            text.push_str(&format!(",{v:.4}"));
        }
        let (cav, under) = (mill.pump_cavitating(), mill.heater_underheating());
        summary.cavitation_rows += u64::from(cav);
        summary.underheat_rows += u64::from(under);
        text.push_str(&format!(",{},{},{:.4},{life}", u8::from(cav), u8::from(under), mill.syrup_purity()));
        pending.push((elapsed.as_secs_f64() / 3600.0, text));
        summary.rows += 1;
    }
    // The bearing still fitted has not failed: its rows carry no RUL.
    for (_, text) in pending {
        writeln!(out, "{text},")?;
    }
    summary.bearing_failures = mill.bearing_failures();
    summary.lab_samples = mill.lab_samples();
    Ok(summary)
}

/// The mill's readings at each of `offsets` (plant time from now, ascending): the mill
/// is stepped through them and stands at the last one afterwards. A demo that serves the
/// mill live from there has, in the returned rows, the recent past of the very plant it
/// serves (its models' windows can start full: see `edge-agent demo`).
///
/// Each returned map holds every numeric tag of the register map (bits left out), in
/// engineering units, as a PLC poll would read them (before the register's rounding).
pub fn readings_at(mill: &mut SugarMill, offsets: &[Duration]) -> Vec<BTreeMap<&'static str, f64>> {
    let tags = feature_tags();
    let mut out = Vec::with_capacity(offsets.len());
    let mut at = Duration::ZERO;
    for &offset in offsets {
        mill.step_in(offset.saturating_sub(at), HISTORY_SUBSTEP);
        at = at.max(offset);
        out.push(tags.iter().filter_map(|&t| Some((t, mill.value(t)?))).collect());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn history(hours: u64, every_s: u64, random_faults: bool, seed: u64) -> (String, HistorySummary) {
        let opts = HistoryOptions {
            seed,
            duration: Duration::from_secs(hours * 3600),
            every: Duration::from_secs(every_s),
            random_faults,
            start: DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z").unwrap().with_timezone(&Utc),
        };
        let mut out = Vec::new();
        let summary = write_csv(&opts, &mut out).unwrap();
        (String::from_utf8(out).unwrap(), summary)
    }

    #[test]
    fn every_row_has_a_value_for_every_column_but_the_open_rul() {
        // Given two simulated days at one row per 10 minutes
        let (csv, summary) = history(48, 600, true, 4);

        // Then the header names the tags and the labels, and each row has as many fields
        let mut lines = csv.lines();
        let header: Vec<&str> = lines.next().unwrap().split(',').collect();
        assert_eq!(header[0], "ts");
        assert!(header.contains(&"mill_bearing_vibration") && header.contains(&"lab_syrup_purity"));
        assert!(!header.contains(&"mill_running"), "bits are left out");
        assert_eq!(&header[header.len() - 5..], &LABEL_COLUMNS);
        let rows: Vec<Vec<&str>> = lines.map(|l| l.split(',').collect()).collect();
        assert_eq!(rows.len() as u64, summary.rows);
        assert_eq!(summary.rows, 48 * 6);
        for row in &rows {
            assert_eq!(row.len(), header.len());
            for (name, field) in header.iter().zip(row).take(header.len() - 1).skip(1) {
                let v: f64 = field.parse().unwrap_or_else(|_| panic!("{name} = {field:?}"));
                assert!(v.is_finite(), "{name}");
            }
        }
        // And the lab sampled every 4 h
        assert_eq!(summary.lab_samples, 12);
    }

    #[test]
    fn the_rul_label_counts_down_to_each_bearing_failure() {
        // Given a long history, long enough for bearings to fail
        let (csv, summary) = history(1300, 3600, false, 8);
        assert!(summary.bearing_failures >= 2, "{summary:?}");

        // Then within each finished life the RUL falls by one hour per hourly row and ends near 0
        let rows: Vec<Vec<String>> = csv.lines().skip(1).map(|l| l.split(',').map(str::to_string).collect()).collect();
        let (life_col, rul_col) = (rows[0].len() - 2, rows[0].len() - 1);
        let mut last: Option<(String, f64)> = None;
        let mut ends = Vec::new();
        for row in &rows {
            let life = row[life_col].clone();
            if row[rul_col].is_empty() {
                assert_eq!(life, summary.bearing_failures.to_string(), "only the last bearing has no RUL");
                continue;
            }
            let rul: f64 = row[rul_col].parse().unwrap();
            if let Some((prev_life, prev_rul)) = &last {
                if *prev_life == life {
                    assert!((prev_rul - rul - 1.0).abs() < 1e-6, "{prev_rul} then {rul}");
                } else {
                    ends.push(*prev_rul);
                }
            }
            last = Some((life, rul));
        }
        ends.extend(last.map(|(_, r)| r));
        assert_eq!(ends.len() as u32, summary.bearing_failures);
        assert!(ends.iter().all(|&r| (0.0..=1.0).contains(&r)), "{ends:?}");
    }

    #[test]
    fn readings_at_steps_the_mill_through_each_offset_and_leaves_it_at_the_last() {
        // Given a fresh mill and three offsets, ten minutes apart
        let mut mill = SugarMill::new(3);
        let offsets = [Duration::ZERO, Duration::from_secs(600), Duration::from_secs(1200)];

        // When its readings are taken at them
        let rows = readings_at(&mut mill, &offsets);

        // Then there is one row per offset, each with every numeric tag, and the mill now stands at the last offset
        assert_eq!(rows.len(), 3);
        for row in &rows {
            assert_eq!(row.len(), feature_tags().len());
            assert!(row.values().all(|v| v.is_finite()));
        }
        assert_eq!(mill.elapsed(), Duration::from_secs(1200));
        assert_eq!(rows[2]["mill_bearing_temp"], mill.value("mill_bearing_temp").unwrap());
        // And the plant moved between the rows (noise and drifts)
        assert_ne!(rows[0]["juice_pump_vibration"], rows[1]["juice_pump_vibration"]);
    }
}
