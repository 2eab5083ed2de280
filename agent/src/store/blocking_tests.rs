//! The store never stalls the async runtime. Each test runs a store path on a
//! `current_thread` runtime (one worker: whatever blocks it stops every task) beside a
//! ticker task that measures how late it wakes, while the store's work is made to take
//! seconds (a slow disk, a store held by a compaction). Work done on the worker would make
//! the ticker late by those seconds; the bound, [`MAX_LAG`], is generous for a loaded
//! 2-core machine and still far below the time the store's work takes.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytesize::ByteSize;
use chrono::Utc;
use edge_drivers::Value;
use tokio::sync::{mpsc, Notify};

use super::config::StoreSettings;
use super::outbox::{Outbox, StoredEventDraft, StoredReply};
use super::record::StoredBatch;
use super::test_support::{live, report, settings, wait_until, writer};
use crate::payload::WireSample;

/// The worst lateness of the ticker allowed while the store works for seconds.
const MAX_LAG: Duration = Duration::from_millis(250);
const TICK: Duration = Duration::from_millis(10);

/// A task that sleeps [`TICK`] over and over and records how late it woke.
struct LagProbe {
    worst_ms: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl LagProbe {
    fn start() -> Self {
        let worst_ms = Arc::new(AtomicU64::new(0));
        let worst = worst_ms.clone();
        let task = tokio::spawn(async move {
            loop {
                let asked = Instant::now();
                tokio::time::sleep(TICK).await;
                let late = asked.elapsed().saturating_sub(TICK);
                worst.fetch_max(late.as_millis() as u64, Ordering::Relaxed);
            }
        });
        Self { worst_ms, task }
    }

    fn worst(&self) -> Duration {
        Duration::from_millis(self.worst_ms.load(Ordering::Relaxed))
    }
}

impl Drop for LagProbe {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The store settings of these tests: written every 20 ms, never compacted, bounded by
/// `max_bytes`.
fn config(max_bytes: ByteSize) -> StoreSettings {
    settings(|c| {
        c.max_bytes = max_bytes;
        c.compact_above = Some(ByteSize::gib(64));
        c.flush_interval = Duration::from_millis(20);
    })
}

fn batch(i: u64) -> StoredBatch {
    StoredBatch {
        device: "plc".into(),
        samples: vec![WireSample {
            tag: format!("t{i}"),
            v: Some(Value::Int(i as i64)),
            q: "good".into(),
            ts: crate::payload::rfc3339(Utc::now()),
            server_ts: None,
            reason: None,
        }],
    }
}

fn event() -> StoredEventDraft {
    StoredEventDraft::now("gw", "plc", crate::events::Event::DeviceLost(crate::events::DeviceLost { reason: "no answer".into() }))
}

#[tokio::test(flavor = "current_thread")]
async fn evicting_a_large_backlog_from_a_slow_disk_does_not_stall_the_runtime() {
    // Given a store holding 2000 batches, on a disk where every delete takes 1 ms
    let dir = tempfile::tempdir().unwrap();
    let outbox = Outbox::open(dir.path()).unwrap();
    outbox.append(&(0..2000).map(batch).collect::<Vec<_>>(), &[]).await.unwrap();
    outbox.shared.disk.set_delay(Duration::from_millis(1));
    // and a writer whose bound leaves room for a few batches only
    let (tx, rx) = mpsc::channel(4);
    let task = tokio::spawn(writer(&outbox, &live(), config(ByteSize::kib(1))).run(rx));
    // When a report comes and the writer stores it and drops the backlog (seconds of work)
    let probe = LagProbe::start();
    let started = Instant::now();
    tx.send(report(0, 1)).await.unwrap();
    drop(tx);
    task.await.unwrap();
    let took = started.elapsed();
    // Then the backlog went (the bound keeps about ten batches), and it took seconds
    let c = outbox.counters();
    let dropped = c.batches_dropped.load(Ordering::Relaxed);
    assert_eq!(dropped + outbox.pending_batches(), 2001, "every batch is either held or dropped");
    assert!(dropped >= 1900, "{dropped} dropped, {} pending", outbox.pending_batches());
    assert!(took >= Duration::from_secs(2), "the eviction took {took:?}");
    // but the runtime's other tasks ran on time meanwhile
    let worst = probe.worst();
    eprintln!("eviction {took:?}, worst scheduling lag {worst:?}");
    assert!(worst < MAX_LAG, "a task was held up {worst:?} while the store evicted for {took:?}");
}

#[tokio::test(flavor = "current_thread")]
async fn a_flush_that_takes_two_seconds_does_not_stall_the_runtime() {
    // Given a store on a disk where a flush takes 2 s, a writer and the model event sink
    let dir = tempfile::tempdir().unwrap();
    let outbox = Outbox::open(dir.path()).unwrap();
    outbox.shared.disk.set_delay(Duration::from_secs(2));
    let (tx, rx) = mpsc::channel(4);
    let task = tokio::spawn(writer(&outbox, &live(), config(ByteSize::mib(64))).run(rx));
    let (events_tx, events_rx) = mpsc::channel(4);
    let sink = tokio::spawn(crate::analytics::sink::run(outbox.clone(), Arc::new(Notify::new()), events_rx));
    // When samples, a model event and a reply to a command are stored
    let probe = LagProbe::start();
    let started = Instant::now();
    tx.send(report(0, 10)).await.unwrap();
    events_tx.send(event()).await.unwrap();
    let reply = StoredReply { topic_leaf: "cmd/response".into(), body: serde_json::json!({ "id": "1", "ok": true }) };
    assert_eq!(outbox.append_reply(&reply).await.unwrap(), 1);
    drop((tx, events_tx));
    task.await.unwrap();
    sink.await.unwrap();
    let took = started.elapsed();
    // Then all of it is stored, which took seconds
    assert_eq!(outbox.counters().samples_stored.load(Ordering::Relaxed), 10);
    assert_eq!((outbox.pending_events(), outbox.pending_replies()), (1, 1));
    assert!(took >= Duration::from_secs(2), "storing took {took:?}");
    // but the runtime's other tasks ran on time meanwhile
    let worst = probe.worst();
    eprintln!("slow flushes {took:?}, worst scheduling lag {worst:?}");
    assert!(worst < MAX_LAG, "a task was held up {worst:?} while the store flushed for {took:?}");
}

#[tokio::test(flavor = "current_thread")]
async fn a_store_held_by_a_compaction_for_three_seconds_does_not_stall_the_runtime() {
    // Given a store with three batches, its writer, and the model event sink
    let dir = tempfile::tempdir().unwrap();
    let outbox = Outbox::open(dir.path()).unwrap();
    outbox.append(&[batch(1), batch(2), batch(3)], &[]).await.unwrap();
    let (tx, rx) = mpsc::channel(16);
    let task = tokio::spawn(writer(&outbox, &live(), config(ByteSize::mib(64))).run(rx));
    let (events_tx, events_rx) = mpsc::channel(4);
    let sink = tokio::spawn(crate::analytics::sink::run(outbox.clone(), Arc::new(Notify::new()), events_rx));
    // When something holds the store for 3 s, as a compaction or a reopen does
    let (held_tx, held_rx) = std::sync::mpsc::channel();
    let holder = {
        let outbox = outbox.clone();
        std::thread::spawn(move || {
            let guard = outbox.shared.handles.write().unwrap();
            held_tx.send(Instant::now()).unwrap();
            std::thread::sleep(Duration::from_secs(3));
            drop(guard);
        })
    };
    let held_since = loop {
        match held_rx.try_recv() {
            Ok(at) => break at,
            Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
        }
    };
    let probe = LagProbe::start();
    // and meanwhile drivers report, a model raises an event, a command is answered, and
    // the uplink reads and acks (and the page reads the store's size)
    let reply_outbox = outbox.clone();
    let reply = tokio::spawn(async move {
        reply_outbox
            .append_reply(&StoredReply { topic_leaf: "cmd/response".into(), body: serde_json::json!({ "id": "1", "ok": true }) })
            .await
    });
    events_tx.send(event()).await.unwrap();
    for k in 0..10 {
        tx.send(report(k * 10, 10)).await.unwrap();
        assert!(outbox.telemetry_from(0, 10).is_empty(), "a read while the store is held comes back empty");
        outbox.ack_telemetry(1).unwrap();
        let _ = outbox.disk_bytes();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::task::spawn_blocking(move || holder.join().unwrap()).await.unwrap();
    let held_for = held_since.elapsed();
    // Then once the store is free again, everything is stored (and the ack applied)
    wait_until("the samples", || outbox.counters().samples_stored.load(Ordering::Relaxed) == 3 + 100).await;
    assert_eq!(reply.await.unwrap().unwrap(), 1);
    wait_until("the model event", || outbox.pending_events() == 1).await;
    outbox.ack_telemetry(2).unwrap();
    assert_eq!(outbox.telemetry_from(0, 1)[0].0, 3, "batches 1 and 2 were acked");
    drop((tx, events_tx));
    task.await.unwrap();
    sink.await.unwrap();
    // and the runtime's tasks ran on time throughout
    let worst = probe.worst();
    eprintln!("store held {held_for:?}, worst scheduling lag {worst:?}");
    assert!(held_for >= Duration::from_secs(3));
    assert!(worst < MAX_LAG, "a task was held up {worst:?} while the store was held for {held_for:?}");
}
