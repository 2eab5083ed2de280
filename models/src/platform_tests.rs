//! The shipped models give the same outputs on every target (x86_64, aarch64, armv7) within
//! a stated tolerance, on fixed inputs.
//!
//! `testdata/platform_outputs.json` holds the outputs computed on x86_64; the test
//! recomputes them where it runs (under qemu for the ARM targets: `cross/build --test`) and
//! compares. Tolerance: |arm - x86| ≤ 1e-4 · max(1, |x86|) per number (f32 kernels differ in
//! summation order and FMA use between AVX and NEON; seen: see BENCHMARKS.md). Regenerate
//! the fixture on x86_64 after retraining the demo's models with:
//!
//!   EDGE_MODELS_WRITE_FIXTURE=1 cargo test -p edge-models --lib platform_tests

use std::path::{Path, PathBuf};

use crate::{Model, Prediction};

const MODELS: [&str; 3] = ["juice-pump-anomaly", "syrup-purity", "mill-bearing-rul"];
const TOLERANCE: f64 = 1e-4;
const WINDOWS: usize = 4;

fn artifacts() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("artifacts/demo")
}

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/platform_outputs.json")
}

/// Fixed inputs: each input swings around its training mean by up to 2.5 standard
/// deviations, on a different phase per input and per window, so both normal and
/// abnormal windows are scored.
fn rows(model: &Model, k: usize) -> Vec<Vec<f32>> {
    let m = model.manifest();
    (0..m.window)
        .map(|r| {
            (0..m.inputs.len())
                .map(|i| {
                    let (mean, std) = (m.normalization.mean[i], m.normalization.std[i]);
                    let amplitude = 0.5 + k as f32;
                    mean + std * amplitude * (0.37 * r as f32 + 1.3 * i as f32 + 0.7 * k as f32).sin()
                })
                .collect()
        })
        .collect()
}

/// Every number of a prediction, in a fixed order.
fn numbers(p: &Prediction) -> Vec<f64> {
    match p {
        Prediction::Anomaly { score, contributions } => {
            let mut v = vec![f64::from(*score)];
            let mut c = contributions.clone();
            c.sort_by(|a, b| a.0.cmp(&b.0));
            v.extend(c.iter().map(|(_, share)| f64::from(*share)));
            v
        }
        Prediction::Quality { value, lower, upper } | Prediction::Rul { value, lower, upper } => {
            vec![f64::from(*value), f64::from(*lower), f64::from(*upper)]
        }
    }
}

fn outputs() -> serde_json::Map<String, serde_json::Value> {
    let mut all = serde_json::Map::new();
    for name in MODELS {
        let model = Model::load(&artifacts().join(name)).unwrap();
        let windows: Vec<Vec<f64>> = (0..WINDOWS).map(|k| numbers(&model.infer(&rows(&model, k)).unwrap())).collect();
        all.insert(name.to_string(), serde_json::json!(windows));
    }
    all
}

#[test]
fn the_shipped_models_give_the_x86_outputs_on_fixed_inputs_within_the_tolerance() {
    // Given the demo's three models and fixed input windows
    let here = outputs();
    if std::env::var_os("EDGE_MODELS_WRITE_FIXTURE").is_some() {
        assert_eq!(std::env::consts::ARCH, "x86_64", "the fixture is x86_64's");
        let text = serde_json::to_string_pretty(&serde_json::Value::Object(here)).unwrap();
        std::fs::write(fixture(), text + "\n").unwrap();
        return;
    }
    // When they run on this target
    let expected: serde_json::Map<String, serde_json::Value> = serde_json::from_str(&std::fs::read_to_string(fixture()).unwrap()).unwrap();
    // Then every number matches x86_64's within the tolerance
    let mut worst = 0.0f64;
    for name in MODELS {
        let (want, got) = (expected[name].as_array().unwrap(), here[name].as_array().unwrap());
        assert_eq!(want.len(), got.len(), "{name}");
        for (k, (w, g)) in want.iter().zip(got).enumerate() {
            let (w, g) = (w.as_array().unwrap(), g.as_array().unwrap());
            assert_eq!(w.len(), g.len(), "{name} window {k}");
            for (a, b) in w.iter().zip(g) {
                let (a, b) = (a.as_f64().unwrap(), b.as_f64().unwrap());
                let err = (a - b).abs() / a.abs().max(1.0);
                worst = worst.max(err);
                assert!(err <= TOLERANCE, "{name} window {k}: x86_64 {a}, {} {b} (relative error {err:e})", std::env::consts::ARCH);
            }
        }
    }
    println!("{}: largest relative difference from x86_64: {worst:e}", std::env::consts::ARCH);
}
