//! Store-and-forward under faults: the broker goes away, the agent is killed. Real
//! mosquitto, real Modbus server, the real agent binary.

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use chrono::{DateTime, Utc};
use edge_agent::store::Outbox;
use serde_json::Value;
use support::agent::{config, AgentProcess};
use support::broker::Mosquitto;
use support::subscriber::Subscriber;
use support::{free_port, wait_for};
use tokio_util::sync::CancellationToken;

const TAGS: &str = r#"
[[devices.tags]]
name = "counter"
table = "holding"
address = 0
type = "u16"
"#;

async fn counting_plc(cancel: &CancellationToken) -> u16 {
    support::plc::counting_plc(cancel, &[0], Duration::from_millis(50)).await
}

fn seq_set(erp: &Subscriber) -> BTreeSet<u64> {
    erp.batch_seqs().into_iter().collect()
}

fn assert_no_gaps(seqs: &BTreeSet<u64>) {
    let max = *seqs.iter().max().expect("some batches");
    let missing: Vec<u64> = (1..=max).filter(|s| !seqs.contains(s)).collect();
    assert!(missing.is_empty(), "batches lost: {missing:?} (received {} distinct up to {max})", seqs.len());
}

fn first_sample_ts(batch: &Value) -> DateTime<Utc> {
    batch["samples"][0]["ts"].as_str().and_then(|s| s.parse().ok()).expect("sample ts")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_outage_loses_nothing_and_replays_stored_batches_as_historical() {
    // Given the agent publishing through mosquitto to a subscriber
    let cancel = CancellationToken::new();
    let plc = counting_plc(&cancel).await;
    let mut broker = Mosquitto::start().await;
    let erp = Subscriber::start(broker.port, "plant/#").await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("agent.toml");
    std::fs::write(&cfg, config(&dir.path().join("data"), broker.port, plc, free_port(), TAGS)).unwrap();
    let _agent = AgentProcess::start(&cfg, dir.path().join("agent.log"));
    wait_for("5 live batches", Duration::from_secs(30), || (seq_set(&erp).len() >= 5).then_some(())).await;

    // When the broker is down for 3 seconds while the PLC keeps producing
    broker.stop();
    let down_at = Utc::now();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let up_at = Utc::now();
    let before = erp.ready();
    broker.restart().await;
    erp.wait_resubscribed(before).await;

    // Then once live data flows again, every batch_seq up to the newest has arrived
    wait_for("live batches after the outage", Duration::from_secs(60), || {
        erp.telemetry().iter().any(|b| b["historical"] == false && first_sample_ts(b) > up_at + chrono::Duration::seconds(1)).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_no_gaps(&seq_set(&erp));

    // and every batch sampled while the broker was down came back marked historical
    let during: Vec<Value> = erp
        .telemetry()
        .into_iter()
        // (margins: a batch sampled just before the stop may still have gone out live, and
        // one sampled just before the restart is only flushed (200 ms) after the agent has
        // reconnected, so it is live, not history; the agent reconnects within ~100 ms)
        .filter(|b| {
            let ts = first_sample_ts(b);
            ts > down_at + chrono::Duration::milliseconds(300) && ts < up_at - chrono::Duration::milliseconds(500)
        })
        .collect();
    assert!(during.len() >= 5, "expected batches from the 3 s outage, got {}", during.len());
    for b in &during {
        assert_eq!(b["historical"], true, "batch {} sampled during the outage: {b}", b["batch_seq"]);
    }
    cancel.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_killed_with_sigkill_delivers_every_flushed_batch_after_restart() {
    // Given the agent publishing, with the broker down so that batches pile up in the outbox
    let cancel = CancellationToken::new();
    let plc = counting_plc(&cancel).await;
    let mut broker = Mosquitto::start().await;
    let erp = Subscriber::start(broker.port, "plant/#").await;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let cfg = dir.path().join("agent.toml");
    std::fs::write(&cfg, config(&data, broker.port, plc, free_port(), TAGS)).unwrap();
    let mut agent = AgentProcess::start(&cfg, dir.path().join("agent.log"));
    wait_for("3 live batches", Duration::from_secs(30), || (seq_set(&erp).len() >= 3).then_some(())).await;
    broker.stop();
    tokio::time::sleep(Duration::from_secs(2)).await;

    // When the agent is killed with SIGKILL (no flush, no goodbye)
    agent.kill9();
    let (flushed, next_seq) = {
        let outbox = Outbox::open(&data).expect("the outbox opens after a SIGKILL");
        let flushed: Vec<u64> = outbox.telemetry_from(0, 100_000).into_iter().map(|(s, _)| s).collect();
        (flushed, outbox.next_batch_seq())
    };
    assert!(flushed.len() >= 5, "expected batches stored during the outage, found {flushed:?}");

    // and restarted, with the broker back (and the ERP's subscription live again)
    let before = erp.ready();
    broker.restart().await;
    erp.wait_resubscribed(before).await;
    let _agent = AgentProcess::start(&cfg, dir.path().join("agent-restarted.log"));

    // Then every batch that was on disk at the kill arrives, marked historical
    let waited = tokio::time::timeout(Duration::from_secs(60), async {
        while !flushed.iter().all(|s| seq_set(&erp).contains(s)) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(waited.is_ok(), "flushed batches {flushed:?} did not all arrive; received {:?}", seq_set(&erp));
    for b in erp.telemetry() {
        let seq = b["batch_seq"].as_u64().unwrap();
        if flushed.contains(&seq) {
            assert_eq!(b["historical"], true, "replayed batch {seq}: {b}");
        }
    }
    // and numbering continues after the old batches instead of starting again
    wait_for("a new live batch", Duration::from_secs(30), || erp.batch_seqs().into_iter().find(|&s| s >= next_seq)).await;
    assert_no_gaps(&seq_set(&erp));
    cancel.cancel();
}
