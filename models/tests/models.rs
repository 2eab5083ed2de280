//! Each model kind trained on small synthetic data: it learns, it flags what it should, and
//! its artifact survives a save/load round trip bit for bit (and is refused when damaged).

use edge_models::dataset::Dataset;
use edge_models::train::{train, TrainOptions};
use edge_models::{ArtifactError, Model, ModelError, ModelKind, Prediction, MANIFEST_FORMAT};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Three coupled signals: a sine, its cosine and their mix, with noise.
fn plant(rows: usize, seed: u64) -> Vec<Vec<f32>> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..rows)
        .map(|t| {
            let p = t as f32 * 0.2;
            let (s, c) = (p.sin(), p.cos());
            vec![s + rng.gen_range(-0.05..0.05), c + rng.gen_range(-0.05..0.05), 0.5 * s + 0.5 * c + rng.gen_range(-0.05..0.05)]
        })
        .collect()
}

fn table(rows: Vec<Vec<f32>>) -> Dataset {
    Dataset { columns: vec!["a".into(), "b".into(), "mix".into()], rows, ..Default::default() }
}

fn score(p: &Prediction) -> (f32, String) {
    match p {
        Prediction::Anomaly { score, contributions } => (*score, contributions[0].0.clone()),
        other => panic!("not an anomaly prediction: {other:?}"),
    }
}

fn anomaly_model_flags_an_injected_step_on_the_right_tag(architecture: &str) {
    // Given a model trained on normal operation (threshold 20 % above the calibration
    // quantile: 120 calibration rows estimate a 99 % quantile only roughly)
    let opts = TrainOptions {
        architecture: Some(architecture.into()),
        window: Some(16),
        epochs: Some(40),
        threshold_margin: 1.2,
        ..Default::default()
    };
    let art = train(ModelKind::Anomaly, &table(plant(600, 1)), &opts).unwrap();
    let model = Model::from_artifact(std::path::Path::new("mem"), art).unwrap();
    let w = model.manifest().window;
    // When it scores fresh normal data, then nearly all windows stay under the threshold
    let normal = plant(400, 2);
    let ends: Vec<usize> = (w - 1..normal.len()).collect();
    let scores: Vec<f32> = model.infer_many(&normal, &ends).unwrap().iter().map(|p| score(p).0).collect();
    let alarms = scores.iter().filter(|s| **s >= 1.0).count();
    assert!(alarms * 20 < scores.len(), "{architecture}: {alarms} of {} normal windows alarm", scores.len());
    // When "mix" steps away from its relation with a and b, then the score passes 1 and
    // "mix" contributes most.
    let mut faulty = plant(400, 3);
    for row in &mut faulty[200..] {
        row[2] += 1.5;
    }
    let window: Vec<Vec<f32>> = faulty[220 - w..220].to_vec();
    let (s, top) = score(&model.infer(&window).unwrap());
    assert!(s > 2.0, "{architecture}: score {s} after the step");
    assert_eq!(top, "mix", "{architecture}");
}

#[test]
fn conv_autoencoder_flags_an_injected_step_on_the_right_tag() {
    anomaly_model_flags_an_injected_step_on_the_right_tag("conv-ae");
}

#[test]
fn pca_t2_q_flags_an_injected_step_on_the_right_tag() {
    anomaly_model_flags_an_injected_step_on_the_right_tag("pca");
}

#[test]
fn conv_autoencoder_training_loss_falls_and_a_save_load_round_trip_gives_identical_outputs() {
    let opts = TrainOptions { window: Some(16), epochs: Some(20), ..Default::default() };
    let data = table(plant(500, 4));
    let art = train(ModelKind::Anomaly, &data, &opts).unwrap();
    let m = &art.manifest.metrics;
    assert!(m["train_loss_last_epoch"] < 0.5 * m["train_loss_first_epoch"], "loss did not fall: {m:?}");
    // The same seed gives the same weights.
    assert_eq!(train(ModelKind::Anomaly, &data, &opts).unwrap().weights, art.weights);
    let dir = tempfile::tempdir().unwrap();
    art.save(dir.path()).unwrap();
    let loaded = Model::load(dir.path()).unwrap();
    let fresh = Model::from_artifact(dir.path(), art.clone()).unwrap();
    let window = plant(16, 5);
    assert_eq!(loaded.infer(&window).unwrap(), fresh.infer(&window).unwrap());
    let from_bytes = Model::from_bytes(&std::fs::read(dir.path().join("manifest.json")).unwrap(), &art.weights).unwrap();
    assert_eq!(from_bytes.infer(&window).unwrap(), fresh.infer(&window).unwrap());
    assert_eq!(loaded.manifest().format, MANIFEST_FORMAT);
}

#[test]
fn damaged_weights_or_a_manifest_from_another_format_are_refused_naming_the_problem() {
    let art =
        train(ModelKind::Anomaly, &table(plant(300, 6)), &TrainOptions { architecture: Some("pca".into()), ..Default::default() }).unwrap();
    let dir = tempfile::tempdir().unwrap();
    art.save(dir.path()).unwrap();
    // Given one flipped byte in the weights, then the checksum refuses them.
    let mut weights = art.weights.clone();
    let last = weights.len() - 1;
    weights[last] ^= 0x01;
    std::fs::write(dir.path().join("weights.safetensors"), &weights).unwrap();
    let err = Model::load(dir.path()).unwrap_err();
    assert!(matches!(err, ArtifactError::Checksum { .. }), "{err}");
    assert!(err.to_string().contains("checksum"), "{err}");
    // Given a manifest of another format, then the format is named.
    let mut manifest = art.manifest.clone();
    manifest.format = MANIFEST_FORMAT + 1;
    let json = serde_json::to_vec(&manifest).unwrap();
    let err = Model::from_bytes(&json, &art.weights).unwrap_err();
    assert!(
        matches!(err, ArtifactError::Format { found, expected, .. } if found == MANIFEST_FORMAT + 1 && expected == MANIFEST_FORMAT),
        "{err}"
    );
    // Given a missing directory, then the path is named.
    let err = Model::load(&dir.path().join("nope")).unwrap_err();
    assert!(err.to_string().contains("nope"), "{err}");
}

#[test]
fn an_artifact_whose_weights_do_not_match_its_inputs_is_refused_at_load() {
    // Given a manifest claiming 4 inputs for weights trained on 3
    let mut art =
        train(ModelKind::Anomaly, &table(plant(300, 7)), &TrainOptions { window: Some(8), epochs: Some(2), ..Default::default() }).unwrap();
    art.manifest.inputs.push("extra".into());
    art.manifest.normalization.mean.push(0.0);
    art.manifest.normalization.std.push(1.0);
    let err = Model::from_artifact(std::path::Path::new("mill-ae"), art).unwrap_err();
    assert!(matches!(err, ArtifactError::Weights { .. }), "{err}");
    assert!(err.to_string().contains("mill-ae"), "{err}");
}

#[test]
fn inference_refuses_a_wrong_shape_or_a_non_finite_value() {
    let art =
        train(ModelKind::Anomaly, &table(plant(300, 8)), &TrainOptions { architecture: Some("pca".into()), ..Default::default() }).unwrap();
    let model = Model::from_artifact(std::path::Path::new("mem"), art).unwrap();
    let err = model.infer(&[vec![1.0, 2.0]]).unwrap_err();
    assert!(matches!(err, ModelError::Shape { expected_rows: 1, expected_cols: 3, rows: 1, cols: 2 }), "{err}");
    let err = model.infer(&[vec![1.0, f32::NAN, 0.0]]).unwrap_err();
    assert!(matches!(&err, ModelError::NonFinite { input } if input == "b"), "{err}");
    // Batch scoring refuses a window end past the rows instead of panicking.
    let err = model.infer_many(&[vec![1.0, 2.0, 3.0]], &[1]).unwrap_err();
    assert!(matches!(err, ModelError::Shape { .. }), "{err}");
}

/// y = 2 a - 3 b(t-2) + 0.5 + noise, plus a nonlinear part 0.8 sin(3 a) when asked.
fn lagged_relation(rows: usize, nonlinear: bool, seed: u64) -> Dataset {
    let mut rng = StdRng::seed_from_u64(seed);
    let x: Vec<Vec<f32>> = (0..rows).map(|_| vec![rng.gen_range(-1.0..1.0), rng.gen_range(-1.0..1.0)]).collect();
    let y = (0..rows)
        .map(|t| {
            if t < 2 {
                return f32::NAN;
            }
            let base = 2.0 * x[t][0] - 3.0 * x[t - 2][1] + 0.5 + rng.gen_range(-0.05..0.05);
            base + if nonlinear { 0.8 * (3.0 * x[t][0]).sin() } else { 0.0 }
        })
        .collect();
    Dataset { columns: vec!["a".into(), "b".into()], rows: x, target_name: Some("y".into()), target: Some(y), groups: None }
}

fn quality_rmse(model: &Model, data: &Dataset) -> f64 {
    let w = model.manifest().window;
    let ends: Vec<usize> = (w - 1..data.len()).collect();
    let preds = model.infer_many(&data.rows, &ends).unwrap();
    let truth: Vec<f32> = ends.iter().map(|&e| data.target.as_ref().unwrap()[e]).collect();
    let values: Vec<f32> = preds
        .iter()
        .map(|p| match p {
            Prediction::Quality { value, .. } => *value,
            other => panic!("{other:?}"),
        })
        .collect();
    edge_models::eval::rmse(&values, &truth)
}

#[test]
fn ridge_recovers_a_known_lagged_linear_relation_with_a_band_around_it() {
    let opts = TrainOptions { architecture: Some("ridge".into()), lags: Some(vec![0, 1, 2]), ..Default::default() };
    let art = train(ModelKind::Quality, &lagged_relation(600, false, 9), &opts).unwrap();
    let model = Model::from_artifact(std::path::Path::new("mem"), art).unwrap();
    assert_eq!(model.manifest().window, 3);
    let rmse = quality_rmse(&model, &lagged_relation(300, false, 10));
    assert!(rmse < 0.06, "rmse {rmse}");
    // Then a window with a = 1, b(t-2) = 1 predicts 2 - 3 + 0.5 = -0.5 inside its band.
    let p = model.infer(&[vec![0.0, 1.0], vec![0.0, 0.0], vec![1.0, 0.0]]).unwrap();
    let Prediction::Quality { value, lower, upper } = p else { panic!("{p:?}") };
    assert!((value + 0.5).abs() < 0.05, "value {value}");
    assert!(lower < value && value < upper && upper - lower < 0.3, "band {lower}..{upper}");
}

#[test]
fn ridge_mlp_learns_the_nonlinear_part_the_ridge_misses() {
    let train_set = lagged_relation(1500, true, 11);
    let test_set = lagged_relation(400, true, 12);
    let ridge = TrainOptions { architecture: Some("ridge".into()), lags: Some(vec![0, 2]), ..Default::default() };
    let mlp = TrainOptions { architecture: Some("ridge-mlp".into()), epochs: Some(150), ..ridge.clone() };
    let r = Model::from_artifact(std::path::Path::new("r"), train(ModelKind::Quality, &train_set, &ridge).unwrap()).unwrap();
    let m = Model::from_artifact(std::path::Path::new("m"), train(ModelKind::Quality, &train_set, &mlp).unwrap()).unwrap();
    let (rr, mr) = (quality_rmse(&r, &test_set), quality_rmse(&m, &test_set));
    assert!(mr < 0.6 * rr, "ridge-mlp rmse {mr} vs ridge {rr}");
}

/// Run-to-failure units in two operating regimes: a wear signal grows towards failure, the
/// regime shifts every signal's level.
fn fleet(units: usize, seed: u64) -> Dataset {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut ds =
        Dataset { columns: vec!["regime".into(), "wear".into(), "temp".into(), "flat".into()], groups: Some(vec![]), ..Default::default() };
    for u in 0..units {
        let life = rng.gen_range(80..160);
        for t in 0..life {
            let regime = rng.gen_range(0..2) as f32;
            let wear = (t as f32 / life as f32).powi(2);
            ds.rows.push(vec![
                regime * 10.0,
                regime * 5.0 + wear + rng.gen_range(-0.03..0.03),
                regime * 20.0 + 0.5 * wear + rng.gen_range(-0.05..0.05),
                1.0,
            ]);
            ds.groups.as_mut().unwrap().push(format!("u{u}"));
        }
    }
    ds
}

#[test]
fn rul_tcn_learns_regime_normalised_wear_and_its_estimate_falls_towards_failure() {
    let opts = TrainOptions {
        epochs: Some(15),
        members: Some(2),
        hidden: Some(16),
        regime_columns: vec!["regime".into()],
        regimes: 2,
        rul_cap: 60.0,
        unit: Some("cycles".into()),
        ..Default::default()
    };
    let art = train(ModelKind::Rul, &fleet(30, 13), &opts).unwrap();
    // The flat column is dropped, the regime column kept for the normalisation.
    assert_eq!(art.manifest.inputs, vec!["regime", "wear", "temp"]);
    assert_eq!(art.manifest.regimes.as_ref().map(|r| r.centroids.len()), Some(2));
    let model = Model::from_artifact(std::path::Path::new("mem"), art).unwrap();
    // One fresh unit: the estimate near the end is small, earlier ones larger, mostly falling.
    let unit = fleet(1, 14);
    let rows: Vec<Vec<f32>> = unit.rows.iter().map(|r| r[..3].to_vec()).collect();
    let n = rows.len();
    let ends: Vec<usize> = (n - 60..n).step_by(10).collect();
    let values: Vec<f32> = model
        .infer_many(&rows, &ends)
        .unwrap()
        .iter()
        .map(|p| match p {
            Prediction::Rul { value, .. } => *value,
            other => panic!("{other:?}"),
        })
        .collect();
    let truth: Vec<f32> = ends.iter().map(|&e| (n - 1 - e) as f32).collect();
    let rmse = edge_models::eval::rmse(&values, &truth);
    assert!(rmse < 15.0, "rmse {rmse}: {values:?} vs {truth:?}");
    assert!(values.first() > values.last(), "{values:?}");
    let window = rows[n - model.manifest().window..].to_vec();
    let Prediction::Rul { value, lower, upper } = model.infer(&window).unwrap() else { panic!() };
    assert!(lower <= value && value <= upper, "{lower} {value} {upper}");
}

#[test]
fn the_run_scorer_counts_flags_against_labels_with_and_without_the_alarm_filter() {
    let art = train(
        ModelKind::Anomaly,
        &table(plant(600, 15)),
        &TrainOptions { architecture: Some("pca".into()), threshold_margin: 1.2, ..Default::default() },
    )
    .unwrap();
    let model = Model::from_artifact(std::path::Path::new("mem"), art).unwrap();
    // Given a run whose second half is a labelled fault
    let mut run = table(plant(400, 16));
    for row in &mut run.rows[200..] {
        row[2] += 1.5;
    }
    run.target = Some((0..400).map(|i| if i >= 200 { 1.0 } else { 0.0 }).collect());
    let alarm = edge_models::alarm::AlarmOptions { smoothing: 0.5, on: 1.0, off: 0.8, min_on: 3, min_off: 3 };
    let r = edge_models::eval::score_run(&model, &run, alarm, 0, true).unwrap();
    // Then the fault is found, with few false alarms, and the alarm filter costs only its delay.
    assert!(r.raw.f1() > 0.9 && r.raw.far() < 0.1, "{:?}", r.raw);
    assert!(r.alarm.far() <= r.raw.far(), "{:?} vs {:?}", r.alarm, r.raw);
    assert!(r.alarm.tp + 10 >= r.raw.tp && r.alarm.tp + r.alarm.fn_ == 200, "{:?}", r.alarm);
}

#[test]
fn a_model_can_move_to_its_own_inference_thread() {
    fn assert_send<T: Send + 'static>() {}
    assert_send::<Model>();
    let art = train(ModelKind::Anomaly, &table(plant(300, 17)), &TrainOptions { architecture: Some("pca".into()), ..Default::default() })
        .unwrap();
    let model = Model::from_artifact(std::path::Path::new("mem"), art).unwrap();
    let row = plant(1, 18);
    let here = model.infer(&row).unwrap();
    let there = std::thread::spawn(move || model.infer(&row).unwrap()).join().unwrap();
    assert_eq!(here, there);
}
