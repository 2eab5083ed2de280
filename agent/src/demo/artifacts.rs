//! `edge-agent demo build-artifacts`: trains the demo's three models on simulated history
//! of the sugar mill and writes them to `models/artifacts/demo/NAME/` (then rebuild: the
//! binary embeds them). Deterministic for a seed.
//!
//! | artifact | kind | inputs | rows | training data |
//! |---|---|---|---|---|
//! | `juice-pump-anomaly` | anomaly, conv-ae, window 16 | the pump's four tags and the juice flow | 1 min | 10 days without faults |
//! | `syrup-purity` | quality, ridge-mlp, lags 0–40 min | brix in, heater outlet, bagasse moisture, vacuum | 1 min | 30 days with under-heat episodes; target: the true purity |
//! | `mill-bearing-rul` | rul, tcn, window 24 | bearing vibration and temperature, cane feed | 10 min | ~16 bearings run to failure |
//!
//! Each model is then scored on history it never saw (another seed), and the figures are
//! printed and kept in the manifest's `metrics` (`sim_*`).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::{DateTime, Utc};
use edge_drivers::sim::history::{write_csv, HistoryOptions};
use edge_models::csv::{parse, CsvOptions};
use edge_models::dataset::Dataset;
use edge_models::train::{train, TrainOptions};
use edge_models::{Model, ModelKind, Prediction};

/// The inputs of each demo model, as tags of the demo config's `mill-plc`.
pub const PUMP_INPUTS: [&str; 5] =
    ["juice_pump_suction_pressure", "juice_pump_discharge_pressure", "juice_pump_current", "juice_pump_vibration", "mill_mixed_juice_flow"];
pub const PURITY_INPUTS: [&str; 4] = ["evap_brix_in", "heater_juice_out_temp", "mill_bagasse_moisture", "evap_vacuum"];
pub const BEARING_INPUTS: [&str; 3] = ["mill_bearing_vibration", "mill_bearing_temp", "mill_cane_feed"];
/// RUL is capped here (hours): early in a bearing's life there is nothing to see.
pub const RUL_CAP_H: f32 = 400.0;

fn start() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z").map(|t| t.with_timezone(&Utc)).unwrap_or_default()
}

/// Simulated history as a dataset: `columns` as features, `target` and `group` as named.
fn history(
    seed: u64,
    hours: u64,
    every: Duration,
    random_faults: bool,
    columns: &[&str],
    target: &str,
    group: Option<&str>,
) -> anyhow::Result<Dataset> {
    let opts = HistoryOptions { seed, duration: Duration::from_secs(hours * 3600), every, random_faults, start: start() };
    let mut csv = Vec::new();
    write_csv(&opts, &mut csv).context("simulating history")?;
    let text = String::from_utf8(csv).context("history is UTF-8")?;
    let read = CsvOptions {
        time: Some("ts".into()),
        columns: Some(columns.iter().map(|c| c.to_string()).collect()),
        target: Some(target.into()),
        group: group.map(str::to_string),
        ..Default::default()
    };
    Ok(parse(Path::new("simulated history"), &text, &read)?)
}

/// Keeps the rows whose target is known.
fn labelled(mut d: Dataset) -> Dataset {
    let Some(target) = d.target.take() else { return d };
    let keep: Vec<usize> = (0..d.rows.len()).filter(|&i| target[i].is_finite()).collect();
    d.rows = keep.iter().map(|&i| d.rows[i].clone()).collect();
    d.groups = d.groups.map(|g| keep.iter().map(|&i| g[i].clone()).collect());
    d.target = Some(keep.iter().map(|&i| target[i]).collect());
    d
}

/// What was built.
pub struct Built {
    pub name: &'static str,
    pub dir: PathBuf,
    pub metrics: Vec<(String, f64)>,
}

/// Trains and writes the three artifacts under `out`.
pub fn build(out: &Path, seed: u64) -> anyhow::Result<Vec<Built>> {
    let version = format!("demo-{seed}");
    let mut built = Vec::new();

    // --- Pump anomaly: normal operation only --------------------------------------------
    let t = Instant::now();
    let normal = history(seed, 240, Duration::from_secs(60), false, &PUMP_INPUTS, "pump_cavitation", None)?;
    let opts = TrainOptions {
        name: "juice-pump-anomaly".into(),
        version: version.clone(),
        window: Some(16),
        epochs: Some(30),
        seed,
        false_alarm_rate: 0.002,
        threshold_margin: 1.3,
        ..Default::default()
    };
    let mut art = train(ModelKind::Anomaly, &Dataset { target: None, target_name: None, ..normal }, &opts)?;
    // Scored on unseen history with random cavitation episodes.
    let test = history(seed + 1000, 240, Duration::from_secs(60), true, &PUMP_INPUTS, "pump_cavitation", None)?;
    let model = Model::from_artifact(Path::new("trained"), art.clone())?;
    let (f1, far, recall) = anomaly_scores(&model, &test)?;
    art.manifest.metrics.insert("sim_window_f1".into(), f1);
    art.manifest.metrics.insert("sim_false_alarm_rate".into(), far);
    art.manifest.metrics.insert("sim_recall".into(), recall);
    let dir = out.join("juice-pump-anomaly");
    art.save(&dir)?;
    built.push(Built {
        name: "juice-pump-anomaly",
        dir,
        metrics: vec![
            ("window_f1".into(), f1),
            ("false_alarm_rate".into(), far),
            ("recall".into(), recall),
            ("train_s".into(), t.elapsed().as_secs_f64()),
        ],
    });

    // --- Syrup purity soft sensor ---------------------------------------------------------
    let t = Instant::now();
    let data = history(seed + 1, 720, Duration::from_secs(60), true, &PURITY_INPUTS, "syrup_purity", None)?;
    let opts = TrainOptions {
        name: "syrup-purity".into(),
        version: version.clone(),
        lags: Some(vec![0, 5, 10, 20, 30, 40]),
        unit: Some("%".into()),
        seed,
        ..Default::default()
    };
    let mut art = train(ModelKind::Quality, &labelled(data), &opts)?;
    let test = labelled(history(seed + 1001, 240, Duration::from_secs(60), true, &PURITY_INPUTS, "syrup_purity", None)?);
    let model = Model::from_artifact(Path::new("trained"), art.clone())?;
    let (rmse, r2, coverage) = regression_scores(&model, &test, None)?;
    art.manifest.metrics.insert("sim_rmse".into(), rmse);
    art.manifest.metrics.insert("sim_r2".into(), r2);
    art.manifest.metrics.insert("sim_band_coverage".into(), coverage);
    let dir = out.join("syrup-purity");
    art.save(&dir)?;
    built.push(Built {
        name: "syrup-purity",
        dir,
        metrics: vec![
            ("rmse_pct".into(), rmse),
            ("r2".into(), r2),
            ("band_coverage".into(), coverage),
            ("train_s".into(), t.elapsed().as_secs_f64()),
        ],
    });

    // --- Bearing RUL ------------------------------------------------------------------------
    let t = Instant::now();
    let every = Duration::from_secs(600);
    let data = labelled(history(seed + 2, 8000, every, false, &BEARING_INPUTS, "bearing_rul_h", Some("bearing_life"))?);
    let opts = TrainOptions {
        name: "mill-bearing-rul".into(),
        version,
        window: Some(24),
        unit: Some("h".into()),
        seed,
        rul_cap: RUL_CAP_H,
        members: Some(2),
        hidden: Some(16),
        epochs: Some(20),
        ..Default::default()
    };
    let mut art = train(ModelKind::Rul, &data, &opts)?;
    let test = labelled(history(seed + 1002, 2000, every, false, &BEARING_INPUTS, "bearing_rul_h", Some("bearing_life"))?);
    let model = Model::from_artifact(Path::new("trained"), art.clone())?;
    let (rmse, _, coverage) = regression_scores(&model, &test, Some(RUL_CAP_H))?;
    let (rmse_late, _, _) = regression_scores(&model, &late(&test, 100.0), Some(RUL_CAP_H))?;
    art.manifest.metrics.insert("sim_rmse_h".into(), rmse);
    art.manifest.metrics.insert("sim_rmse_last_100h".into(), rmse_late);
    art.manifest.metrics.insert("sim_band_coverage".into(), coverage);
    let dir = out.join("mill-bearing-rul");
    art.save(&dir)?;
    built.push(Built {
        name: "mill-bearing-rul",
        dir,
        metrics: vec![
            ("rmse_h".into(), rmse),
            ("rmse_last_100h".into(), rmse_late),
            ("band_coverage".into(), coverage),
            ("train_s".into(), t.elapsed().as_secs_f64()),
        ],
    });
    Ok(built)
}

/// Rows whose (uncapped) RUL is below `hours`, each group kept contiguous.
fn late(d: &Dataset, hours: f32) -> Dataset {
    let target = d.target.clone().unwrap_or_default();
    // Windows need the rows before; keep whole groups but only score the late ends.
    let mut out = d.clone();
    out.target = Some(target.iter().map(|&t| if t < hours { t } else { f32::NAN }).collect());
    out
}

/// Per-window F1, false-alarm rate (on windows without cavitation) and recall.
fn anomaly_scores(model: &Model, test: &Dataset) -> anyhow::Result<(f64, f64, f64)> {
    let w = model.manifest().window;
    let labels = test.target.clone().unwrap_or_default();
    let ends: Vec<usize> = (w - 1..test.rows.len()).collect();
    let preds = model.infer_many(&test.rows, &ends)?;
    let (mut tp, mut fp, mut fn_, mut tn) = (0f64, 0f64, 0f64, 0f64);
    for (end, p) in ends.iter().zip(preds) {
        let Prediction::Anomaly { score, .. } = p else { continue };
        let actual = labels.get(*end).copied().unwrap_or(0.0) > 0.5;
        match (score >= 1.0, actual) {
            (true, true) => tp += 1.0,
            (true, false) => fp += 1.0,
            (false, true) => fn_ += 1.0,
            (false, false) => tn += 1.0,
        }
    }
    let f1 = if tp > 0.0 { 2.0 * tp / (2.0 * tp + fp + fn_) } else { 0.0 };
    Ok((f1, fp / (fp + tn).max(1.0), tp / (tp + fn_).max(1.0)))
}

/// RMSE, R² and band coverage where the target is known; targets capped at `cap`.
fn regression_scores(model: &Model, test: &Dataset, cap: Option<f32>) -> anyhow::Result<(f64, f64, f64)> {
    let w = model.manifest().window;
    let target = test.target.clone().unwrap_or_default();
    let mut ends = Vec::new();
    for g in test.group_ranges() {
        ends.extend((g.start + w - 1..g.end).filter(|&i| target[i].is_finite()));
    }
    let preds = model.infer_many(&test.rows, &ends)?;
    let (mut p, mut t, mut lo, mut hi) = (vec![], vec![], vec![], vec![]);
    for (end, pred) in ends.iter().zip(preds) {
        let (v, l, u) = match pred {
            Prediction::Quality { value, lower, upper } | Prediction::Rul { value, lower, upper } => (value, lower, upper),
            Prediction::Anomaly { .. } => continue,
        };
        let truth = cap.map_or(target[*end], |c| target[*end].min(c));
        p.push(v);
        t.push(truth);
        lo.push(l);
        hi.push(u);
    }
    anyhow::ensure!(!p.is_empty(), "no rows to score");
    Ok((edge_models::eval::rmse(&p, &t), edge_models::eval::r2(&p, &t), edge_models::eval::coverage(&lo, &hi, &t)))
}
