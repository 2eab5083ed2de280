//! Store-and-forward under repeated, random faults: SIGKILLs, broker restarts and a
//! dead network path, all under continuous load. The consumer must receive every
//! flushed batch at least once, in batch_seq order within each connection, with
//! replays marked `historical` and duplicates identifiable by `batch_seq`.

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use edge_agent::store::Outbox;
use rand::Rng;
use support::agent::{config, AgentProcess};
use support::broker::Mosquitto;
use support::proxy::Proxy;
use support::subscriber::Subscriber;
use support::{free_port, loopback};
use tokio_util::sync::CancellationToken;

const TAGS: &str = r#"
[[devices.tags]]
name = "counter"
table = "holding"
address = 0
type = "u16"
[[devices.tags]]
name = "level"
table = "holding"
address = 1
type = "u16"
"#;

async fn counting_plc(cancel: &CancellationToken) -> u16 {
    support::plc::counting_plc(cancel, &[0, 500], Duration::from_millis(20)).await
}

/// Waits until the ERP has every batch in `1..=upto`, or fails listing the missing ones.
async fn wait_complete(erp: &Subscriber, upto: u64, limit: Duration) {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let got: BTreeSet<u64> = erp.batch_seqs().into_iter().collect();
        let missing: Vec<u64> = (1..=upto).filter(|s| !got.contains(s)).collect();
        if missing.is_empty() {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "after {limit:?}, {} of {upto} batches never arrived: {:?}…",
            missing.len(),
            &missing[..missing.len().min(20)]
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Arrival order: batch_seq only goes down when a connection restarts and resends.
fn order_breaks(seqs: &[u64]) -> usize {
    seqs.windows(2).filter(|w| w[1] < w[0]).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_sigkills_at_random_points_lose_no_flushed_batch() {
    // Given an agent under load, publishing through mosquitto
    let cancel = CancellationToken::new();
    let plc = counting_plc(&cancel).await;
    let broker = Mosquitto::start().await;
    let erp = Subscriber::start(broker.port, "plant/#").await;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let cfg = dir.path().join("agent.toml");
    std::fs::write(&cfg, config(&data, broker.port, plc, free_port(), TAGS)).unwrap();

    // When it is killed with SIGKILL at a random point, 20 times
    let mut flushed_upto = 0;
    let rounds = 20;
    for round in 0..rounds {
        let mut agent = AgentProcess::start(&cfg, dir.path().join(format!("agent-{round}.log")));
        let run_for = rand::thread_rng().gen_range(300..1500);
        tokio::time::sleep(Duration::from_millis(run_for)).await;
        agent.kill9();
        // everything on disk now is what must arrive
        let outbox = Outbox::open(&data).expect("outbox opens after SIGKILL");
        flushed_upto = flushed_upto.max(outbox.next_batch_seq() - 1);
    }
    assert!(flushed_upto > 50, "too little load to mean anything: {flushed_upto} batches");

    // and started once more
    let _agent = AgentProcess::start(&cfg, dir.path().join("agent-final.log"));

    // Then every batch flushed before any of the kills arrives
    wait_complete(&erp, flushed_upto, Duration::from_secs(60)).await;
    // in batch_seq order within each connection (a resend after a restart may go back)
    let seqs = erp.batch_seqs();
    assert!(order_breaks(&seqs) <= rounds + 1, "{} order breaks for {} connections", order_breaks(&seqs), rounds + 1);
    // and duplicates exist only as repeats of a batch_seq, with identical content
    let telemetry = erp.telemetry();
    for a in &telemetry {
        for b in telemetry.iter().filter(|b| b["batch_seq"] == a["batch_seq"]) {
            assert_eq!(a["samples"], b["samples"], "batch {} sent twice with different content", a["batch_seq"]);
        }
    }
    cancel.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_restarted_five_times_under_load_loses_nothing() {
    let cancel = CancellationToken::new();
    let plc = counting_plc(&cancel).await;
    let mut broker = Mosquitto::start().await;
    let erp = Subscriber::start(broker.port, "plant/#").await;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let cfg = dir.path().join("agent.toml");
    std::fs::write(&cfg, config(&data, broker.port, plc, free_port(), TAGS)).unwrap();
    let mut agent = AgentProcess::start(&cfg, dir.path().join("agent.log"));

    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(rand::thread_rng().gen_range(500..1500))).await;
        broker.stop();
        tokio::time::sleep(Duration::from_millis(rand::thread_rng().gen_range(200..2000))).await;
        let before = erp.ready();
        broker.restart().await;
        erp.wait_resubscribed(before).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    // A clean stop drains the outbox; what it had stored is then all delivered.
    assert!(agent.terminate(Duration::from_secs(15)), "agent did not stop cleanly");
    let stored_upto = Outbox::open(&data).unwrap().next_batch_seq() - 1;
    wait_complete(&erp, stored_upto, Duration::from_secs(30)).await;
    let historical = erp.telemetry().iter().filter(|b| b["historical"] == true).count();
    assert!(historical > 0, "outages produced no replayed batches");
    cancel.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_network_path_for_60_seconds_loses_nothing_and_replays_in_order() {
    // Given the agent reaching mosquitto through a proxy that can kill the path
    let cancel = CancellationToken::new();
    let plc = counting_plc(&cancel).await;
    let broker = Mosquitto::start().await;
    let proxy = Proxy::start(loopback(broker.port)).await;
    let erp = Subscriber::start(broker.port, "plant/#").await;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let cfg = dir.path().join("agent.toml");
    std::fs::write(&cfg, config(&data, proxy.port, plc, free_port(), TAGS)).unwrap();
    let mut agent = AgentProcess::start(&cfg, dir.path().join("agent.log"));
    support::wait_for("live data", Duration::from_secs(30), || (erp.batch_seqs().len() >= 5).then_some(())).await;

    // When the path goes dead (no RST, packets just vanish) for 60 s
    proxy.cut();
    let cut_at = erp.batch_seqs().len();
    tokio::time::sleep(Duration::from_secs(60)).await;
    proxy.restore();

    // Then, once the agent notices and reconnects, the backlog arrives, marked historical
    let arrived_during_cut = erp.batch_seqs().len() - cut_at;
    assert!(arrived_during_cut <= 1, "{arrived_during_cut} batches got through a dead path");
    support::wait_for("replayed batches", Duration::from_secs(90), || {
        (erp.telemetry().iter().filter(|b| b["historical"] == true).count() > 100).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(agent.terminate(Duration::from_secs(20)), "agent did not stop cleanly");
    let stored_upto = Outbox::open(&data).unwrap().next_batch_seq() - 1;
    wait_complete(&erp, stored_upto, Duration::from_secs(30)).await;
    // and the replay came in batch_seq order
    let replayed: Vec<u64> = erp.telemetry().iter().filter(|b| b["historical"] == true).filter_map(|b| b["batch_seq"].as_u64()).collect();
    assert!(order_breaks(&replayed) <= 1, "replay out of order: {} breaks", order_breaks(&replayed));
    cancel.cancel();
}
