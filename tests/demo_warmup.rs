//! `edge-agent demo` at normal speed: its three models show an output within 30 s of the
//! start (their windows start full of the simulated mill's recent past, marked as
//! warm-up), nothing computed from that invented past leaves the gateway, and the demo's
//! console prints the events from the first one.

mod support;

use std::time::{Duration, Instant};

use serde_json::Value;
use support::demo::Demo;
use support::subscriber::Subscriber;
use support::{http_get, loopback, wait_listening};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_shows_all_three_models_outputs_within_30_s_and_publishes_none_from_warm_up_data() {
    // Given the demo at normal speed on free loopback ports, with a fresh outbox
    let dir = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let demo = Demo::start(dir.path(), "127.0.0.1", &[]);
    let (web, mqtt) = (demo.web, demo.mqtt);
    // And an ERP subscribed to everything as soon as the embedded broker listens
    wait_listening(loopback(mqtt), Duration::from_secs(20)).await;
    let erp = Subscriber::start(mqtt, "plant/#").await;

    // When the status page is asked until every model has an output
    wait_listening(loopback(web), Duration::from_secs(20)).await;
    let models = loop {
        let status: Value = serde_json::from_str(&http_get(web, "/api/status").await).unwrap();
        let models = status["models"].as_object().cloned().unwrap_or_default();
        if models.len() == 3 && models.values().all(|m| !m["last_prediction"].is_null()) {
            break models;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "not every model has an output 30 s after the start: {models:#?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };

    // Then all three are there, each marked as running on warm-up rows (a live row comes
    // once a minute at most, so none of their windows is live yet)
    let mut names: Vec<&str> = models.keys().map(String::as_str).collect();
    names.sort_unstable();
    assert_eq!(names, ["juice-pump-anomaly", "mill-bearing-rul", "syrup-purity"]);
    for (name, m) in &models {
        assert_eq!(m["state"], "warm-up", "{name}: {m:#}");
        assert!(m["warm_up_rows"].as_u64().unwrap() > 0, "{name}: {m:#}");
        assert_eq!(m["filled"], m["window"], "{name}: the window is full");
        assert!(m["last_prediction"]["value"].as_f64().unwrap().is_finite(), "{name}: {m:#}");
    }

    // And when a few batches of the mill's live telemetry have been published after that
    let seen = erp.batch_seqs().len();
    support::wait_for("three more telemetry batches", Duration::from_secs(20), || (erp.batch_seqs().len() >= seen + 3).then_some(())).await;

    // Then the ERP received every batch from the first (batch_seq 1, no gap: nothing went
    // by before it subscribed), and none of them carries the models' outputs
    let telemetry = erp.telemetry();
    let seqs: Vec<u64> = telemetry.iter().filter_map(|t| t["batch_seq"].as_u64()).collect();
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>());
    let devices: std::collections::BTreeSet<&str> = telemetry.iter().filter_map(|t| t["device"].as_str()).collect();
    assert_eq!(devices.into_iter().collect::<Vec<_>>(), ["mill-plc"], "outputs of warm-up windows were published");
    // And no model raised an event from them
    let raised: Vec<String> = erp
        .all()
        .into_iter()
        .filter(|m| m.topic.ends_with("/events"))
        .filter_map(|m| m.json["kind"].as_str().map(str::to_string))
        .filter(|k| !matches!(k.as_str(), "model_loaded" | "device_connected"))
        .collect();
    assert!(raised.is_empty(), "events from warm-up windows: {raised:?}");

    // And the demo's console printed the first event of the start, which no later `watch` can see
    let console = std::fs::read_to_string(dir.path().join("console.txt")).unwrap();
    assert!(console.lines().any(|l| l.starts_with("event  device_connected") && l.contains("mill-plc")), "console:\n{console}");
}
