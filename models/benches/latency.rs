//! Inference latency per model kind, at the sizes of the evaluated models (MODELS.md):
//! `cargo bench -p edge-models --bench latency`. Weights come from a one-epoch training on
//! synthetic data: latency depends on the shapes, not on the values.

use std::time::Instant;

use edge_models::dataset::Dataset;
use edge_models::train::{train, TrainOptions};
use edge_models::{Model, ModelKind};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn table(rows: usize, cols: usize, target: bool, groups: usize, seed: u64) -> Dataset {
    let mut rng = StdRng::seed_from_u64(seed);
    Dataset {
        columns: (0..cols).map(|i| format!("x{i}")).collect(),
        rows: (0..rows).map(|_| (0..cols).map(|_| rng.gen_range(-1.0..1.0)).collect()).collect(),
        target_name: target.then(|| "y".into()),
        target: target.then(|| (0..rows).map(|_| rng.gen_range(0.0..1.0)).collect()),
        groups: (groups > 1).then(|| (0..rows).map(|i| format!("u{}", i * groups / rows)).collect()),
    }
}

fn bench(label: &str, model: &Model, cols: usize) {
    let window: Vec<Vec<f32>> =
        (0..model.manifest().window).map(|r| (0..cols).map(|c| ((r * cols + c) as f32 * 0.37).sin()).collect()).collect();
    for _ in 0..50 {
        model.infer(&window).unwrap();
    }
    let mut times: Vec<f64> = (0..1000)
        .map(|_| {
            let t = Instant::now();
            std::hint::black_box(model.infer(std::hint::black_box(&window)).unwrap());
            t.elapsed().as_secs_f64() * 1e6
        })
        .collect();
    times.sort_by(f64::total_cmp);
    println!("{label:<44} median {:>8.1} µs   p99 {:>8.1} µs", times[500], times[990]);
}

fn main() {
    let mem = std::path::Path::new("bench");
    let one = |a: &str| TrainOptions { architecture: Some(a.into()), epochs: Some(1), ..Default::default() };
    let anomaly = table(600, 8, false, 1, 1);
    let ae = Model::from_artifact(mem, train(ModelKind::Anomaly, &anomaly, &TrainOptions { window: Some(32), ..one("conv-ae") }).unwrap())
        .unwrap();
    bench("anomaly conv-ae (8 inputs, window 32)", &ae, 8);
    let pca = Model::from_artifact(mem, train(ModelKind::Anomaly, &anomaly, &one("pca")).unwrap()).unwrap();
    bench("anomaly pca (8 inputs, window 1)", &pca, 8);
    let quality = table(1200, 7, true, 1, 2);
    let lags: Vec<usize> = (0..=36).step_by(3).collect();
    let ridge =
        Model::from_artifact(mem, train(ModelKind::Quality, &quality, &TrainOptions { lags: Some(lags.clone()), ..one("ridge") }).unwrap())
            .unwrap();
    bench("quality ridge (7 inputs × 13 lags)", &ridge, 7);
    let mlp =
        Model::from_artifact(mem, train(ModelKind::Quality, &quality, &TrainOptions { lags: Some(lags), ..one("ridge-mlp") }).unwrap())
            .unwrap();
    bench("quality ridge-mlp (7 inputs × 13 lags, 3 nets)", &mlp, 7);
    let rul_data = table(6000, 21, false, 30, 3);
    let rul =
        Model::from_artifact(mem, train(ModelKind::Rul, &rul_data, &TrainOptions { members: Some(3), ..one("tcn") }).unwrap()).unwrap();
    bench("rul tcn (21 inputs, window 31, 3 nets)", &rul, 21);
}
