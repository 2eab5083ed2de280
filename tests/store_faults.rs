//! The store under faults it must survive on its own: a full buffer, a damaged one, and one
//! written in a newer format.
//! Real mosquitto, real Modbus server, the real agent binary.

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use edge_drivers::sim::register_server::{self, RegisterBank};
use support::agent::{config_with, AgentProcess};
use support::broker::Mosquitto;
use support::subscriber::Subscriber;
use support::{free_port, http_get, loopback, metric, wait_for};
use tokio_util::sync::CancellationToken;

/// A PLC with 50 holding registers, so every batch is a few KiB.
async fn plc(cancel: &CancellationToken) -> (u16, String) {
    let mut bank = RegisterBank::default();
    bank.set_holding(0, &(0..50).collect::<Vec<u16>>());
    let (listener, addr) = register_server::bind(loopback(0)).await.unwrap();
    tokio::spawn(register_server::serve(listener, bank.shared(), cancel.clone()));
    let tags: String = (0..50).map(|i| format!("[[devices.tags]]\nname = \"r{i}\"\ntable = \"holding\"\naddress = {i}\n")).collect();
    (addr.port(), tags)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_store_drops_the_oldest_telemetry_keeps_events_and_counts_exactly() {
    // Given an ERP subscribed to a broker that then goes down
    let cancel = CancellationToken::new();
    let (plc_port, tags) = plc(&cancel).await;
    let mut broker = Mosquitto::start().await;
    let erp = Subscriber::start(broker.port, "plant/#").await;
    broker.stop();
    // and an agent with a 64 KiB store
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("agent.toml");
    let web = free_port();
    std::fs::write(&cfg, config_with(&dir.path().join("data"), broker.port, plc_port, web, "max_bytes = \"64 KiB\"", &tags)).unwrap();
    let _agent = AgentProcess::start(&cfg, dir.path().join("agent.log"));

    // When it has produced well over 64 KiB while the broker is down
    support::wait_listening(loopback(web), Duration::from_secs(10)).await;
    let mut dropped = 0;
    for _ in 0..200 {
        let m = http_get(web, "/metrics").await;
        dropped = metric(&m, "edge_agent_store_batches_dropped_total");
        if dropped >= 10 {
            // Then the store stays within its bound while it drops
            assert!(metric(&m, "edge_agent_store_bytes") <= 64 * 1024 + 16 * 1024, "{m}");
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(dropped >= 10, "the store never dropped anything");
    // and the status page says so
    let status: serde_json::Value = serde_json::from_str(&http_get(web, "/api/status").await).unwrap();
    assert!(status["store"]["batches_dropped"].as_u64().unwrap() >= 10, "{status}");

    // When the broker comes back
    let before = erp.ready();
    broker.restart().await;
    erp.wait_resubscribed(before).await;

    // Then the events survived (device_connected from the start, buffer_overflow since)
    let kinds = || -> Vec<String> {
        erp.all().into_iter().filter(|m| m.topic.ends_with("/events")).filter_map(|m| m.json["kind"].as_str().map(str::to_string)).collect()
    };
    wait_for("device_connected and buffer_overflow events", Duration::from_secs(30), || {
        let k = kinds();
        (k.iter().any(|k| k == "device_connected") && k.iter().any(|k| k == "buffer_overflow")).then_some(())
    })
    .await;
    // and the telemetry that arrives skips only what the counter says was dropped
    wait_for("live telemetry", Duration::from_secs(30), || erp.telemetry().iter().any(|b| b["historical"] == false).then_some(())).await;
    let mut m = http_get(web, "/metrics").await;
    for _ in 0..300 {
        if metric(&m, "edge_agent_store_pending_batches") == 0 && metric(&m, "edge_agent_uplink_in_flight") == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        m = http_get(web, "/metrics").await;
    }
    let dropped = metric(&m, "edge_agent_store_batches_dropped_total");
    let acked_newest = metric(&m, "edge_agent_store_next_batch_seq") - 1;
    wait_for("every acknowledged batch at the ERP", Duration::from_secs(10), || {
        erp.batch_seqs().into_iter().max().filter(|&s| s >= acked_newest)
    })
    .await;
    let got: BTreeSet<u64> = erp.batch_seqs().into_iter().collect();
    let missing = (1..=acked_newest).filter(|s| !got.contains(s)).count() as u64;
    // Every batch the ERP never got was counted as dropped. A batch can also be counted
    // when it was dropped while its publish was already on the wire after the reconnect
    // (the store was still full): the ERP then has it although the store let it go. At
    // most one in-flight window (mqtt.max_inflight = 16) of those.
    assert!(missing <= dropped, "{missing} batches never arrived but only {dropped} were counted as dropped");
    assert!(dropped - missing <= 16, "{dropped} counted as dropped, only {missing} missing");
    // and the oldest went first: every missing batch is older than every received one
    let first_received = *got.iter().next().unwrap();
    assert!((first_received..=acked_newest).all(|s| got.contains(&s)), "a gap after the first received batch: {got:?}");
    cancel.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_store_is_moved_aside_and_the_agent_starts_and_reports_it() {
    // Given a data dir whose outbox files are garbage
    let cancel = CancellationToken::new();
    let (plc_port, tags) = plc(&cancel).await;
    let broker = Mosquitto::start().await;
    let erp = Subscriber::start(broker.port, "plant/#").await;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(data.join("outbox")).unwrap();
    std::fs::write(data.join("outbox").join("conf"), b"\xff\xfe\x00 not sled").unwrap();
    std::fs::write(data.join("outbox").join("db"), vec![0xA5u8; 4096]).unwrap();
    let cfg = dir.path().join("agent.toml");
    std::fs::write(&cfg, config_with(&data, broker.port, plc_port, free_port(), "", &tags)).unwrap();

    // When the agent starts
    let agent = AgentProcess::start(&cfg, dir.path().join("agent.log"));

    // Then it reports the reset as a critical event and publishes telemetry
    let reset = wait_for("a store_reset event", Duration::from_secs(30), || {
        erp.all().into_iter().find(|m| m.topic.ends_with("/events") && m.json["kind"] == "store_reset")
    })
    .await;
    assert_eq!(reset.json["severity"], "critical");
    wait_for("telemetry", Duration::from_secs(30), || (!erp.telemetry().is_empty()).then_some(())).await;
    // and the damaged store is kept for inspection
    let aside: Vec<_> =
        std::fs::read_dir(&data).unwrap().flatten().filter(|e| e.file_name().to_string_lossy().starts_with("outbox.unreadable-")).collect();
    assert_eq!(aside.len(), 1, "moved-aside store");
    assert!(agent.log_text().contains("moving it aside"), "the log says what happened");
    cancel.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_in_a_newer_format_is_set_aside_unread_and_the_agent_starts_reports_it_and_says_what_to_do() {
    // Given a data dir whose store is stamped with a newer format (its files are not sled's:
    // opened, they would read as damaged)
    let cancel = CancellationToken::new();
    let (plc_port, tags) = plc(&cancel).await;
    let broker = Mosquitto::start().await;
    let erp = Subscriber::start(broker.port, "plant/#").await;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(data.join("outbox")).unwrap();
    std::fs::write(data.join("outbox").join("db"), b"a store of format 2").unwrap();
    std::fs::write(data.join("store.format"), "edge-agent store format 2\n").unwrap();
    let cfg = dir.path().join("agent.toml");
    std::fs::write(&cfg, config_with(&data, broker.port, plc_port, free_port(), "", &tags)).unwrap();

    // When the agent starts
    let agent = AgentProcess::start(&cfg, dir.path().join("agent.log"));

    // Then it reports the reset as a critical event that names both versions
    let reset = wait_for("a store_reset event", Duration::from_secs(30), || {
        erp.all().into_iter().find(|m| m.topic.ends_with("/events") && m.json["kind"] == "store_reset")
    })
    .await;
    assert_eq!(reset.json["severity"], "critical");
    assert_eq!(reset.json["details"]["reason"], "format_newer", "{}", reset.json);
    let error = reset.json["details"]["error"].as_str().unwrap_or_default().to_string();
    assert!(error.contains("format version 2") && error.contains("store format version 1"), "{error}");
    // and publishes telemetry from a fresh store in its own format
    wait_for("telemetry", Duration::from_secs(30), || (!erp.telemetry().is_empty()).then_some(())).await;
    assert_eq!(std::fs::read_to_string(data.join("store.format")).unwrap(), "edge-agent store format 1\n");
    // and the store was set aside as it was, never opened
    let aside: Vec<_> =
        std::fs::read_dir(&data).unwrap().flatten().filter(|e| e.file_name().to_string_lossy().starts_with("outbox.format-v2-")).collect();
    assert_eq!(aside.len(), 1, "set-aside store");
    assert_eq!(std::fs::read(aside[0].path().join("db")).unwrap(), b"a store of format 2");
    // and the log says what to do
    let log = agent.log_text();
    assert!(log.contains("newer than this agent reads") && log.contains("run the edge-agent version that wrote it"), "{log}");
    cancel.cancel();
}
