//! `edge-agent train` and `edge-agent eval` as an operator runs them: a CSV export in, an
//! artifact directory out, metrics printed; bad input refused with a clear message.

use std::path::Path;
use std::process::Command;

fn agent(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_edge-agent")).args(args).output().expect("run edge-agent")
}

/// A pump's export: time, flow, pressure (pressure follows flow), and a 0/1 label; from row
/// `fault_from` on, pressure breaks away from flow.
fn write_pump_csv(path: &Path, rows: usize, fault_from: usize) {
    let mut text = String::from("time;flow;pressure;anomaly\n");
    for t in 0..rows {
        let flow = 10.0 + (t as f64 * 0.1).sin() + 0.05 * ((t * 7919) % 13) as f64 / 13.0;
        let fault = t >= fault_from;
        let pressure = 2.0 * flow + if fault { 6.0 } else { 0.0 } + 0.05 * ((t * 104729) % 11) as f64 / 11.0;
        text.push_str(&format!("2026-11-28 00:{:02}:{:02};{flow:.4};{pressure:.4};{}\n", t / 60 % 60, t % 60, u8::from(fault)));
    }
    std::fs::write(path, text).unwrap();
}

#[test]
fn train_writes_an_artifact_and_eval_finds_the_labelled_fault() {
    let dir = tempfile::tempdir().unwrap();
    let normal = dir.path().join("normal.csv");
    let faulty = dir.path().join("faulty.csv");
    write_pump_csv(&normal, 600, usize::MAX);
    write_pump_csv(&faulty, 400, 200);
    let out = dir.path().join("pump-ae");
    // Given a CSV of normal operation, when a PCA detector is trained from it
    let t = agent(&[
        "train",
        "anomaly",
        "--csv",
        normal.to_str().unwrap(),
        "--time",
        "time",
        "--drop",
        "anomaly",
        "--architecture",
        "pca",
        "--margin",
        "1.2",
        "--name",
        "pump",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(t.status.success(), "{}", String::from_utf8_lossy(&t.stderr));
    // Then the artifact exists and names its inputs
    let manifest: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["inputs"], serde_json::json!(["flow", "pressure"]));
    assert!(out.join("weights.safetensors").exists());
    // When eval scores a labelled run, then it reports a high F1 for the fault
    let e = agent(&[
        "eval",
        "anomaly",
        "--csv",
        faulty.to_str().unwrap(),
        "--time",
        "time",
        "--label",
        "anomaly",
        "--model",
        out.to_str().unwrap(),
    ]);
    let stdout = String::from_utf8_lossy(&e.stdout);
    assert!(e.status.success(), "{}", String::from_utf8_lossy(&e.stderr));
    let line = stdout.lines().find(|l| l.starts_with("alarm")).expect("an alarm line");
    let f1: f64 = line.split("F1 ").nth(1).unwrap().split_whitespace().next().unwrap().parse().unwrap();
    assert!(f1 > 0.9, "{stdout}");
}

#[test]
fn eval_refuses_data_without_the_columns_the_model_reads() {
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("q.csv");
    let mut text = String::from("a,b,y\n");
    for t in 0..200 {
        let (a, b) = ((t as f64 * 0.3).sin(), (t as f64 * 0.7).cos());
        text.push_str(&format!("{a},{b},{}\n", 3.0 * a - b));
    }
    std::fs::write(&csv, text).unwrap();
    let out = dir.path().join("q");
    let t = agent(&[
        "train",
        "quality",
        "--csv",
        csv.to_str().unwrap(),
        "--label",
        "y",
        "--architecture",
        "ridge",
        "--lags",
        "0",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(t.status.success(), "{}", String::from_utf8_lossy(&t.stderr));
    std::fs::write(&csv, "a,c,y\n1,2,3\n").unwrap();
    let e = agent(&["eval", "quality", "--csv", csv.to_str().unwrap(), "--label", "y", "--model", out.to_str().unwrap()]);
    assert!(!e.status.success());
    let err = String::from_utf8_lossy(&e.stderr);
    assert!(err.contains("no column \"b\""), "{err}");
}
