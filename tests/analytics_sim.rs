//! The demo's embedded models on long runs of the simulated mill, in process (no broker,
//! no PLC: this is about the models and the detectors, plant days in seconds): no false
//! alarm over days of normal operation, every cavitation caught, the RUL estimate falling
//! with the bearing's true remaining life, the purity soft sensor tracking the truth (and
//! tracking it better with the lab's results than without).

use std::time::{Duration, Instant};

use chrono::Utc;
use edge_agent::analytics::config::ModelConfig;
use edge_agent::analytics::detect::{AnomalyDetector, LabValue, ModelId, QualityDetector};
use edge_agent::analytics::embedded;
use edge_drivers::sim::sugar_mill::{Fault, SugarMill};
use edge_models::Prediction;

/// Steps `mill` by `every` (10 s integration steps) and returns the readings of `tags`.
fn row(mill: &mut SugarMill, every: Duration, tags: &[&str]) -> Vec<f32> {
    mill.step_in(every, Duration::from_secs(10));
    tags.iter().map(|t| mill.value(t).unwrap() as f32).collect()
}

fn inputs(name: &str) -> Vec<String> {
    embedded::load(name).unwrap().manifest().inputs.clone()
}

#[test]
fn the_pump_model_raises_nothing_over_three_days_of_normal_operation_and_catches_each_cavitation() {
    // Given the pump model, its detector as the demo configures it (3 rows), and a mill without random faults
    let model = embedded::load("juice-pump-anomaly").unwrap();
    let tags = inputs("juice-pump-anomaly");
    let tags: Vec<&str> = tags.iter().map(String::as_str).collect();
    let cfg: ModelConfig =
        toml::from_str("name = \"p\"\nkind = \"anomaly\"\nartifact = \"x\"\ninputs = [\"a/b\"]\nmin_duration = \"3s\"").unwrap();
    let mut detector = AnomalyDetector::new(&cfg, ModelId::new(&cfg, &model.manifest().version));
    let mut mill = SugarMill::new(101);
    mill.set_random_faults(false);
    let window = model.manifest().window;
    let mut rows = Vec::new();
    let t0 = Instant::now();
    let (mut started, mut ended) = (Vec::new(), 0);
    // When it runs three plant days, one row a minute, with a cavitation at the start of
    // days two and three (one row = one second of the detector's clock)
    for minute in 0..3 * 24 * 60u32 {
        if minute == 24 * 60 || minute == 48 * 60 {
            mill.inject(Fault::Cavitation);
        }
        rows.push(row(&mut mill, Duration::from_secs(60), &tags));
        if rows.len() < window {
            continue;
        }
        let w = &rows[rows.len() - window..];
        let Prediction::Anomaly { score, contributions } = model.infer(w).unwrap() else { panic!("not an anomaly model") };
        match detector.update(score, &contributions, t0 + Duration::from_secs(minute as u64), Utc::now()).map(|r| r.kind()) {
            Some("anomaly_started") => started.push(minute),
            Some("anomaly_ended") => ended += 1,
            _ => {}
        }
    }
    // Then exactly the two cavitations raised an anomaly, each within 15 plant minutes, and both ended
    assert_eq!(started.len(), 2, "anomalies started at minutes {started:?}");
    assert!(started[0] >= 24 * 60 && started[0] < 24 * 60 + 15, "{started:?}");
    assert!(started[1] >= 48 * 60 && started[1] < 48 * 60 + 15, "{started:?}");
    assert_eq!(ended, 2);
}

#[test]
fn the_bearing_rul_estimate_falls_with_the_true_remaining_life() {
    // Given the RUL model and a bearing late in its life
    let model = embedded::load("mill-bearing-rul").unwrap();
    let tags = inputs("mill-bearing-rul");
    let tags: Vec<&str> = tags.iter().map(String::as_str).collect();
    let window = model.manifest().window;
    let mut mill = SugarMill::new(102);
    mill.set_random_faults(false);
    mill.inject(Fault::BearingWear);
    let mut rows = Vec::new();
    let mut errors = Vec::new();
    let mut estimates = Vec::new();
    // When it runs until shortly before failure, one row every ten minutes
    while mill.bearing_rul_hours() > 4.0 {
        rows.push(row(&mut mill, Duration::from_secs(600), &tags));
        if rows.len() < window {
            continue;
        }
        let Prediction::Rul { value, lower, upper } = model.infer(&rows[rows.len() - window..]).unwrap() else { panic!("not a RUL model") };
        assert!(lower <= value && value <= upper);
        errors.push(value as f64 - mill.bearing_rul_hours());
        estimates.push(value as f64);
    }
    // Then the estimate is within a few hours of the truth on average
    let rmse = (errors.iter().map(|e| e * e).sum::<f64>() / errors.len() as f64).sqrt();
    assert!(rmse < 10.0, "RMSE {rmse:.1} h over {} estimates", errors.len());
    // And it falls: each six-hour mean is below the one before, within two hours
    let means: Vec<f64> = estimates.chunks(36).filter(|c| c.len() == 36).map(|c| c.iter().sum::<f64>() / 36.0).collect();
    assert!(means.len() >= 5, "{means:?}");
    for pair in means.windows(2) {
        assert!(pair[1] < pair[0] + 2.0, "six-hour means {means:?}");
    }
    assert!(means[0] - means[means.len() - 1] > 20.0, "{means:?}");
}

#[test]
fn the_purity_soft_sensor_tracks_the_true_purity_through_an_underheat_episode() {
    // Given the purity model and a mill whose heater under-heats for two hours
    let model = embedded::load("syrup-purity").unwrap();
    let tags = inputs("syrup-purity");
    let tags: Vec<&str> = tags.iter().map(String::as_str).collect();
    let window = model.manifest().window;
    let mut mill = SugarMill::new(103);
    mill.set_random_faults(false);
    // And the detector as the agent runs it, taking each lab result (every 4 h) as it comes
    let cfg: ModelConfig =
        toml::from_str("name = \"q\"\nkind = \"quality\"\nartifact = \"x\"\ninputs = [\"a/b\"]\nspec_min = 85.0").unwrap();
    let mut detector = QualityDetector::new(&cfg, ModelId::new(&cfg, &model.manifest().version));
    let mut labs = mill.lab_samples();
    let (mut rows, mut errors, mut inside, mut lowest) = (Vec::new(), Vec::new(), 0usize, f64::INFINITY);
    let t0 = Instant::now();
    let mut raw_errors = Vec::new();
    // When it runs twelve plant hours with the episode in the middle
    for minute in 0..12 * 60u64 {
        if minute == 5 * 60 {
            mill.inject(Fault::Underheat);
        }
        rows.push(row(&mut mill, Duration::from_secs(60), &tags));
        if rows.len() < window {
            continue;
        }
        let Prediction::Quality { value, lower, upper } = model.infer(&rows[rows.len() - window..]).unwrap() else {
            panic!("not a quality model")
        };
        if mill.lab_samples() > labs {
            labs = mill.lab_samples();
            detector.lab(LabValue { value: mill.value("lab_syrup_purity").unwrap(), at: Utc::now(), source: "tag" });
        }
        let (c, _) = detector.update(value as f64, lower as f64, upper as f64, t0 + Duration::from_secs(minute), Utc::now());
        let truth = mill.syrup_purity();
        errors.push(c.value - truth);
        raw_errors.push(value as f64 - truth);
        inside += usize::from(c.lower <= truth && truth <= c.upper);
        lowest = lowest.min(c.value);
    }
    // Then the corrected prediction follows the truth, the excursion below spec included
    let rmse = (errors.iter().map(|e| e * e).sum::<f64>() / errors.len() as f64).sqrt();
    let raw = (raw_errors.iter().map(|e| e * e).sum::<f64>() / raw_errors.len() as f64).sqrt();
    eprintln!(
        "purity: raw RMSE {raw:.3} %, corrected RMSE {rmse:.3} %, band holds the truth {inside} of {}, lowest {lowest:.2}",
        errors.len()
    );
    assert!(rmse < 0.45, "RMSE {rmse:.2} %");
    assert!(lowest < 85.0, "the prediction never left the specification (lowest {lowest:.2})");
    // And the lab values make it better, not worse (the drift no tag shows is corrected)
    assert!(rmse < raw, "corrected RMSE {rmse:.3} %, uncorrected {raw:.3} %");
}
