//! The store under disk faults, with the disk behind the test seam of `reopen.rs` (a disk
//! that fills up and frees again, failing as sled 0.34 does: once a write has failed,
//! every write fails until a reopen). `tests/store_disk_full.rs` does the same with a
//! real full filesystem and the real binary.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytesize::ByteSize;
use edge_drivers::Value;
use proptest::prelude::*;
use tokio::sync::mpsc;

use super::outbox::Outbox;
use super::record::StoredBatch;
use super::test_support::{self, report, settings, wait_until};
use super::writer::Writer;
use crate::live::{GatewayView, Live};
use crate::payload::WireSample;

fn batch(content: u64) -> StoredBatch {
    StoredBatch {
        device: "plc".into(),
        samples: vec![WireSample {
            tag: format!("c{content}"),
            v: Some(Value::Int(content as i64)),
            q: "good".into(),
            ts: "2026-01-01T00:00:00.000Z".into(),
            server_ts: None,
            reason: None,
        }],
    }
}

fn seqs(o: &Outbox) -> Vec<u64> {
    o.telemetry_from(0, usize::MAX).into_iter().map(|(s, _)| s).collect()
}

#[tokio::test]
async fn after_a_failed_write_the_store_writes_again_once_reopened_without_the_unconfirmed_batch() {
    // Given a store holding batch 1, on a disk that then fills up
    let dir = tempfile::tempdir().unwrap();
    let o = Outbox::open(dir.path()).unwrap();
    o.append(&[batch(1)], &[]).await.unwrap();
    o.shared.disk.set_full(true);
    // When a write fails
    assert!(o.append(&[batch(2)], &[]).await.is_err());
    // Then the store is unwritable, and stays so while the disk is full (a reopen fails)
    assert!(!o.is_writable());
    assert!(o.reopen().is_err());
    assert!(o.append(&[batch(2)], &[]).await.is_err(), "the handle keeps its error");
    // When space returns and the store is reopened
    o.shared.disk.set_full(false);
    o.reopen().unwrap();
    // Then writes resume, and the batch whose writes failed (numbered 2, then 3) is gone:
    // its writer writes it again under a new number, so the ERP never gets it twice, and
    // the numbers it was given are never used again
    assert!(o.is_writable());
    o.append(&[batch(2)], &[]).await.unwrap();
    assert_eq!(seqs(&o), vec![1, 4]);
    assert_eq!(o.pending_batches(), 2, "the record count is recounted");
    assert_eq!(o.counters().reopens.load(Ordering::Relaxed), 1);
}

#[tokio::test]
async fn an_ack_on_an_unwritable_store_is_kept_applied_after_the_reopen_and_the_batch_is_not_read_again() {
    // Given two stored batches and a disk that fills up and breaks the store
    let dir = tempfile::tempdir().unwrap();
    let o = Outbox::open(dir.path()).unwrap();
    o.append(&[batch(1), batch(2)], &[]).await.unwrap();
    o.shared.disk.set_full(true);
    assert!(o.append(&[batch(3)], &[]).await.is_err());
    // When the broker acknowledges batch 1
    o.ack_telemetry(1).unwrap();
    // Then it is not read again (not resent) although it could not be deleted yet
    assert_eq!(seqs(&o), vec![2]);
    assert_eq!(o.deferred_acks(), 1);
    assert_eq!(o.counters().batches_acked.load(Ordering::Relaxed), 0);
    // and once the disk has room and the store is reopened, the delete is done
    o.shared.disk.set_full(false);
    o.reopen().unwrap();
    assert_eq!(o.deferred_acks(), 0);
    assert_eq!(o.counters().batches_acked.load(Ordering::Relaxed), 1);
    assert_eq!(o.handles().unwrap().telemetry.len(), 1);
    // and it survives a restart
    drop(o);
    let o = Outbox::open(dir.path()).unwrap();
    assert_eq!(seqs(&o), vec![2]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_found_unreadable_at_a_reopen_is_moved_aside_reported_and_numbering_goes_on() {
    // Given a writer that stored a batch, then hit a full disk, and whose database is
    // unreadable at the reopen (as after sled opened it on a full disk)
    let dir = tempfile::tempdir().unwrap();
    let outbox = Outbox::open(dir.path()).unwrap();
    let live = Live::new(GatewayView::default(), &[]);
    let (tx, rx) = mpsc::channel(4);
    let task = tokio::spawn(writer(&outbox, &live).run(rx));
    tx.send(report(0, 10)).await.unwrap();
    wait_until("the first batch", || outbox.counters().samples_stored.load(Ordering::Relaxed) == 10).await;
    let next_before = outbox.next_batch_seq();
    outbox.shared.disk.corrupt_next_reopen();
    outbox.shared.disk.set_full(true);
    tx.send(report(10, 10)).await.unwrap();
    wait_until("the store unwritable", || !outbox.is_writable()).await;
    // When space returns
    outbox.shared.disk.set_full(false);
    // Then the store works again: the old one is set aside, the ERP gets a store_reset
    // event, the lost batch is counted, and numbers go on above every earlier one
    wait_until("writes resumed", || outbox.counters().samples_stored.load(Ordering::Relaxed) == 20).await;
    drop(tx);
    task.await.unwrap();
    let aside: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("outbox.unreadable-"))
        .collect();
    assert_eq!(aside.len(), 1);
    let events: Vec<_> = outbox.events_from(0, usize::MAX).into_iter().map(|(_, e)| e.0).collect();
    let reset = events.iter().find(|e| e.kind == "store_reset").unwrap_or_else(|| panic!("no store_reset in {events:?}"));
    // with the same details as a reset found at start, and counted
    assert_eq!(reset.details["reason"], "unreadable", "{reset:?}");
    assert!(reset.details["moved_aside_to"].as_str().is_some_and(|p| p.contains("outbox.unreadable-")), "{reset:?}");
    assert!(reset.details["next_batch_seq"].as_u64().is_some_and(|n| n >= next_before), "{reset:?}");
    assert_eq!(outbox.counters().store_resets.load(Ordering::Relaxed), 1);
    assert_eq!(outbox.counters().batches_dropped.load(Ordering::Relaxed), 1);
    let seqs = seqs(&outbox);
    assert!(!seqs.is_empty() && seqs.iter().all(|&s| s >= next_before), "{seqs:?} after {next_before}");
}

/// 10 samples a batch, written every 10 ms, bounded at 8 MiB.
fn writer(outbox: &Outbox, live: &Live) -> Writer {
    let config = settings(|c| {
        c.max_bytes = ByteSize::mib(8);
        c.max_batch_samples = 10;
        c.flush_interval = Duration::from_millis(10);
    });
    test_support::writer(outbox, live, config)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_the_disk_is_full_the_writer_keeps_a_bounded_memory_counts_what_it_drops_and_writes_again_when_space_returns() {
    // Given a writer (10 samples a batch, so 100 samples kept in memory while unwritable)
    let dir = tempfile::tempdir().unwrap();
    let outbox = Outbox::open(dir.path()).unwrap();
    let live = Live::new(GatewayView::default(), &[]);
    let (tx, rx) = mpsc::channel(4);
    let task = tokio::spawn(writer(&outbox, &live).run(rx));
    tx.send(report(0, 10)).await.unwrap();
    wait_until("the first batch", || outbox.counters().samples_stored.load(Ordering::Relaxed) == 10).await;
    assert!(live.snapshot().store.writable);
    // When the disk fills up and 300 more samples come
    outbox.shared.disk.set_full(true);
    for k in 0..30 {
        tx.send(report(10 + k * 10, 10)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Then the store shows unwritable, and what the memory bound dropped is counted
    wait_until("the store shown unwritable", || !live.snapshot().store.writable).await;
    wait_until("memory drops", || outbox.counters().samples_dropped_memory_bound.load(Ordering::Relaxed) > 0).await;
    let shown = live.snapshot().store;
    assert!(shown.write_errors >= 1, "{shown:?}");
    // When space returns
    outbox.shared.disk.set_full(false);
    // Then the writer reopens the store by itself and writes what it kept
    wait_until("writes resumed", || {
        let c = outbox.counters();
        c.samples_stored.load(Ordering::Relaxed) + c.samples_dropped_memory_bound.load(Ordering::Relaxed) == 310
    })
    .await;
    drop(tx);
    task.await.unwrap();
    let c = outbox.counters();
    let dropped = c.samples_dropped_memory_bound.load(Ordering::Relaxed);
    assert!(dropped >= 150, "at most 100 samples are kept in memory, {dropped} dropped");
    assert!(c.reopens.load(Ordering::Relaxed) >= 1);
    let shown = live.snapshot().store;
    assert!(shown.writable && shown.reopens >= 1, "{shown:?}");
    assert_eq!(shown.samples_dropped_memory_bound, dropped);
    // and the samples kept are the newest, in order, with nothing twice
    let tags: Vec<String> = outbox.telemetry_from(0, usize::MAX).into_iter().flat_map(|(_, b)| b.samples).map(|s| s.tag).collect();
    let expected: Vec<String> = (0..10).chain(10 + dropped as i64..310).map(|i| format!("t{i}")).collect();
    assert_eq!(tags, expected);
    // and the ERP is told with a buffer_overflow event carrying the count
    let overflow: Vec<_> =
        outbox.events_from(0, usize::MAX).into_iter().map(|(_, e)| e.0).filter(|e| e.kind == "buffer_overflow").collect();
    assert_eq!(overflow.len(), 1, "{overflow:?}");
    assert_eq!(overflow[0].details["dropped_unwritten_samples"], dropped);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_shutdown_with_a_full_disk_the_writer_ends_and_counts_what_it_could_not_write() {
    // Given a writer whose disk is full, holding 25 samples
    let dir = tempfile::tempdir().unwrap();
    let outbox = Outbox::open(dir.path()).unwrap();
    let live = Live::new(GatewayView::default(), &[]);
    let (tx, rx) = mpsc::channel(4);
    let task = tokio::spawn(writer(&outbox, &live).run(rx));
    outbox.shared.disk.set_full(true);
    tx.send(report(0, 5)).await.unwrap();
    tx.send(report(5, 20)).await.unwrap();
    // When the drivers stop (the reports close)
    drop(tx);
    // Then the writer ends on its own in a bounded time
    tokio::time::timeout(Duration::from_secs(5), task).await.expect("the writer ended").unwrap();
    // and every sample it held is counted as dropped at shutdown, and shown
    let c = outbox.counters();
    assert_eq!(c.samples_dropped_shutdown.load(Ordering::Relaxed), 25);
    assert_eq!(c.samples_dropped.load(Ordering::Relaxed), 25);
    assert_eq!(live.snapshot().store.samples_dropped_shutdown, 25);
    assert_eq!(c.samples_stored.load(Ordering::Relaxed), 0);
}

/// One step of the property below.
#[derive(Debug, Clone)]
enum Op {
    /// The writer appends `n` new batches (after any it still holds from a failed write).
    Append(u8),
    /// The uplink reads everything and the ERP receives it.
    Publish,
    /// The broker acknowledges the `i`-th published, not yet acknowledged batch.
    Ack(u8),
    DiskFull,
    SpaceBack,
    /// The writer tries a reopen (as its back-off would).
    Reopen,
    /// The process dies and starts again: the writer's memory is gone, the disk stays.
    Crash,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (1u8..4).prop_map(Op::Append),
        3 => Just(Op::Publish),
        3 => any::<u8>().prop_map(Op::Ack),
        1 => Just(Op::DiskFull),
        1 => Just(Op::SpaceBack),
        2 => Just(Op::Reopen),
        1 => Just(Op::Crash),
    ]
}

fn content(b: &StoredBatch) -> Vec<String> {
    b.samples.iter().map(|s| s.tag.clone()).collect()
}

async fn run(ops: Vec<Op>) {
    let dir = tempfile::tempdir().unwrap();
    let mut outbox = Outbox::open(dir.path()).unwrap();
    // The ERP's view: every batch_seq it received, with its content.
    let mut erp: BTreeMap<u64, Vec<String>> = BTreeMap::new();
    // Acknowledged since the last crash: must never be received again.
    let mut acked: BTreeSet<u64> = BTreeSet::new();
    let mut unacked: Vec<u64> = Vec::new();
    // The writer: batches it holds after a failed write; contents confirmed written.
    let mut held: Vec<StoredBatch> = Vec::new();
    let mut written: BTreeSet<Vec<String>> = BTreeSet::new();
    let mut next_content = 0u64;
    let receive = |outbox: &Outbox, erp: &mut BTreeMap<u64, Vec<String>>, acked: &BTreeSet<u64>, unacked: &mut Vec<u64>| {
        for (seq, b) in outbox.telemetry_from(0, usize::MAX) {
            let c = content(&b);
            if let Some(seen) = erp.get(&seq) {
                assert_eq!(seen, &c, "batch_seq {seq} received with two different contents");
            }
            assert!(!acked.contains(&seq), "batch_seq {seq} sent again after its PUBACK, with no crash in between");
            erp.insert(seq, c);
            if !unacked.contains(&seq) {
                unacked.push(seq);
            }
        }
    };
    for op in ops {
        match op {
            Op::Append(n) => {
                for _ in 0..n {
                    held.push(batch(next_content));
                    next_content += 1;
                }
                if outbox.append(&held, &[]).await.is_ok() {
                    written.extend(held.drain(..).map(|b| content(&b)));
                }
            }
            Op::Publish => receive(&outbox, &mut erp, &acked, &mut unacked),
            Op::Ack(i) => {
                if !unacked.is_empty() {
                    let seq = unacked.remove(i as usize % unacked.len());
                    outbox.ack_telemetry(seq).unwrap();
                    acked.insert(seq);
                }
            }
            Op::DiskFull => outbox.shared.disk.set_full(true),
            Op::SpaceBack => outbox.shared.disk.set_full(false),
            Op::Reopen => {
                if !outbox.is_writable() {
                    let o = outbox.clone();
                    let _ = tokio::task::spawn_blocking(move || o.reopen()).await.unwrap();
                }
            }
            Op::Crash => {
                let disk = outbox.shared.disk.state();
                drop(outbox);
                outbox = Outbox::open(dir.path()).unwrap();
                outbox.shared.disk.set_state(super::reopen::TestDiskState { broken: false, ..disk });
                held.clear();
                acked.clear();
                unacked.clear();
            }
        }
    }
    // Finally the disk has room, the store recovers, the writer writes what it holds and
    // everything is delivered: whatever a write confirmed reaches the ERP.
    outbox.shared.disk.set_full(false);
    if !outbox.is_writable() {
        let o = outbox.clone();
        tokio::task::spawn_blocking(move || o.reopen()).await.unwrap().unwrap();
    }
    outbox.append(&held, &[]).await.unwrap();
    written.extend(held.drain(..).map(|b| content(&b)));
    receive(&outbox, &mut erp, &acked, &mut unacked);
    let received: BTreeSet<&Vec<String>> = erp.values().collect();
    for c in &written {
        assert!(received.contains(c), "{c:?} was written but never reached the ERP");
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Across appends, acks, crashes and disk errors, the ERP never sees one batch_seq with
    /// two contents, never gets an acknowledged batch again unless the agent crashed
    /// meanwhile, and gets everything a write confirmed.
    #[test]
    fn disk_errors_never_show_the_erp_one_batch_seq_with_two_contents(ops in proptest::collection::vec(op(), 1..60)) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(run(ops));
    }
}
