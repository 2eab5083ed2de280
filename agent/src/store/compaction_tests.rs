//! Tests of compaction: each point a power cut can interrupt it (the half-done directory
//! states are made by hand, then the store is opened), the trigger, a failing copy, and a
//! compaction concurrent with appends and acks from other tasks.

use std::path::Path;
use std::sync::atomic::Ordering;

use super::compaction::{due, COMPACTED, COMPACTING, OLD, OUTBOX};
use super::{Outbox, StoredBatch, StoredEventDraft, StoredReply};
use crate::payload::WireSample;

pub(super) fn batch(device: &str) -> StoredBatch {
    StoredBatch {
        device: device.into(),
        samples: vec![WireSample {
            tag: "t".into(),
            v: Some(edge_drivers::Value::Int(1)),
            q: "good".into(),
            ts: "2026-01-01T00:00:00.000Z".into(),
            server_ts: None,
            reason: None,
        }],
    }
}

pub(super) fn event() -> StoredEventDraft {
    StoredEventDraft::now("gw", "plc", crate::events::Event::DeviceLost(crate::events::DeviceLost { reason: "no answer".into() }))
}

fn reply(n: u64) -> StoredReply {
    StoredReply { topic_leaf: "cmd/response".into(), body: serde_json::json!({ "n": n }) }
}

/// What a store holds, as the uplink would read it, and the numbers it hands out next.
#[derive(Debug, PartialEq)]
struct Held {
    telemetry: Vec<(u64, String)>,
    events: Vec<String>,
    replies: Vec<u64>,
    next: (u64, u64),
}

fn held(o: &Outbox) -> Held {
    Held {
        telemetry: o.telemetry_from(0, usize::MAX).into_iter().map(|(s, b)| (s, b.device)).collect(),
        events: o.events_from(0, usize::MAX).into_iter().map(|(_, e)| e.0.id).collect(),
        replies: o.replies_from(0, usize::MAX).into_iter().map(|(s, _)| s).collect(),
        next: (o.next_batch_seq(), o.next_event_seq()),
    }
}

/// Appends `names` as batches plus an event and a reply, acks the first batch, closes.
async fn write(dir: &Path, names: &[&str]) -> Held {
    let o = Outbox::open(dir).unwrap();
    let batches: Vec<StoredBatch> = names.iter().map(|n| batch(n)).collect();
    o.append(&batches, &[event()]).await.unwrap();
    o.append_reply(&reply(1)).await.unwrap();
    let first = o.telemetry_from(0, 1)[0].0;
    o.ack_telemetry(first).unwrap();
    o.flush().await.unwrap();
    held(&o)
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

fn only_the_store_is_left(dir: &Path) {
    for name in [COMPACTING, COMPACTED, OLD] {
        assert!(!dir.join(name).exists(), "{name} was left behind");
    }
    assert!(dir.join(OUTBOX).is_dir());
}

/// Copies the (closed) store of the scratch data dir `from` to `name` in `dir`: the
/// directory states a power cut can leave are put together from such copies, because
/// opening the store in `dir` would clean up what lies beside it.
fn place(from: &Path, dir: &Path, name: &str) {
    copy_dir(&from.join(OUTBOX), &dir.join(name));
}

#[tokio::test]
async fn a_power_cut_while_copying_leaves_the_store_as_it_was_and_the_partial_copy_goes() {
    // Given a store and, beside it, a copy cut short (its log truncated to half)
    let (scratch, dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let before = write(scratch.path(), &["a", "b", "c"]).await;
    place(scratch.path(), dir.path(), OUTBOX);
    place(scratch.path(), dir.path(), COMPACTING);
    let log = dir.path().join(COMPACTING).join("db");
    let len = std::fs::metadata(&log).unwrap().len();
    std::fs::OpenOptions::new().write(true).open(&log).unwrap().set_len(len / 2).unwrap();
    // When the store is opened
    let o = Outbox::open(dir.path()).unwrap();
    // Then it holds what it held, and the partial copy is gone
    assert_eq!(held(&o), before);
    only_the_store_is_left(dir.path());
}

#[tokio::test]
async fn a_power_cut_after_the_copy_was_complete_keeps_the_store_and_removes_the_copy() {
    // Given a complete copy beside the store, made different from it to tell which one
    // is opened
    let (scratch, dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    write(scratch.path(), &["a", "b"]).await;
    place(scratch.path(), dir.path(), COMPACTED);
    let current = write(scratch.path(), &["c"]).await;
    place(scratch.path(), dir.path(), OUTBOX);
    // When the store is opened
    let o = Outbox::open(dir.path()).unwrap();
    // Then `outbox` is the store (it is always current while it exists); the copy is gone
    assert_eq!(held(&o), current);
    only_the_store_is_left(dir.path());
}

#[tokio::test]
async fn a_power_cut_between_the_two_renames_makes_the_complete_copy_the_store() {
    // Given `outbox` already renamed `outbox.old` and the complete copy not yet renamed
    // `outbox` (the two made different, to tell which one is opened)
    let (scratch, dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    write(scratch.path(), &["a"]).await;
    place(scratch.path(), dir.path(), OLD);
    let copied = write(scratch.path(), &["b", "c"]).await;
    place(scratch.path(), dir.path(), COMPACTED);
    // When the store is opened
    let o = Outbox::open(dir.path()).unwrap();
    // Then the copy is the store and the old one is gone
    assert_eq!(held(&o), copied);
    only_the_store_is_left(dir.path());
}

#[tokio::test]
async fn a_power_cut_before_the_old_store_was_removed_opens_the_new_one_and_removes_the_old() {
    let (scratch, dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    write(scratch.path(), &["a"]).await;
    place(scratch.path(), dir.path(), OLD);
    let new = write(scratch.path(), &["b"]).await;
    place(scratch.path(), dir.path(), OUTBOX);
    let o = Outbox::open(dir.path()).unwrap();
    assert_eq!(held(&o), new);
    only_the_store_is_left(dir.path());
}

#[tokio::test]
async fn an_old_store_found_alone_is_put_back() {
    // Given only `outbox.old` (the copy lost by hand, say)
    let (scratch, dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let before = write(scratch.path(), &["a", "b"]).await;
    place(scratch.path(), dir.path(), OLD);
    // When the store is opened, then it is the old one, back in its place
    let o = Outbox::open(dir.path()).unwrap();
    assert_eq!(held(&o), before);
    only_the_store_is_left(dir.path());
}

#[tokio::test]
async fn a_compaction_keeps_every_record_and_the_numbering_across_a_reopen() {
    // Given a store with batches (one acked), an event and a reply
    let dir = tempfile::tempdir().unwrap();
    let before = write(dir.path(), &["a", "b", "c"]).await;
    let o = Outbox::open(dir.path()).unwrap();
    let bytes = o.bytes();
    // When it is compacted
    let c = o.compact().unwrap();
    // Then it holds the same, counts the same, and is counted as compacted
    assert_eq!(held(&o), before);
    assert_eq!(o.bytes(), bytes);
    assert_eq!(o.counters().compactions.load(Ordering::Relaxed), 1);
    assert_eq!(o.counters().last_compaction_bytes_after.load(Ordering::Relaxed), c.after);
    only_the_store_is_left(dir.path());
    // and numbering continues, also after a reopen
    o.append(&[batch("d")], &[event()]).await.unwrap();
    assert_eq!(o.append_reply(&reply(2)).await.unwrap(), before.replies[0] + 1);
    drop(o);
    let o = Outbox::open(dir.path()).unwrap();
    let after = held(&o);
    assert_eq!(after.telemetry.last(), Some(&(before.next.0, "d".to_string())));
    assert_eq!(after.events, vec!["gw-1".to_string(), format!("gw-{}", before.next.1)]);
    assert_eq!(after.next, (before.next.0 + 1, before.next.1 + 1));
}

#[tokio::test]
async fn a_compaction_that_fails_while_copying_is_counted_its_copy_removed_and_the_store_works_on() {
    // Given a store whose copy will fail after two records (a disk filling up)
    let dir = tempfile::tempdir().unwrap();
    let before = write(dir.path(), &["a", "b", "c", "d"]).await;
    let o = Outbox::open(dir.path()).unwrap();
    o.shared.compaction.lock().unwrap().fail_copy_after = Some(2);
    // When it is compacted
    let result = o.compact();
    // Then the failure is reported and counted, the partial copy is gone
    assert!(result.is_err());
    assert_eq!(o.counters().compaction_failures.load(Ordering::Relaxed), 1);
    assert_eq!(o.counters().compactions.load(Ordering::Relaxed), 0);
    only_the_store_is_left(dir.path());
    // and the store holds what it held and keeps working
    assert_eq!(held(&o), before);
    o.append(&[batch("e")], &[]).await.unwrap();
    assert_eq!(o.pending_batches(), before.telemetry.len() as u64 + 1);
}

#[tokio::test]
async fn a_compacted_copy_that_does_not_open_gives_way_to_the_store_as_it_was() {
    // Given a store whose compacted copy will be damaged once it has taken the store's place
    let dir = tempfile::tempdir().unwrap();
    let before = write(dir.path(), &["a", "b", "c", "d"]).await;
    let o = Outbox::open(dir.path()).unwrap();
    o.shared.compaction.lock().unwrap().break_copy = true;
    // When it is compacted
    let result = o.compact();
    // Then the failure is counted, the old store is back in place, and it keeps working
    assert!(result.is_err());
    assert_eq!(o.counters().compaction_failures.load(Ordering::Relaxed), 1);
    only_the_store_is_left(dir.path());
    assert_eq!(held(&o), before);
    o.append(&[batch("e")], &[]).await.unwrap();
    assert_eq!(o.pending_batches(), before.telemetry.len() as u64 + 1);
}

#[test]
fn compaction_is_due_only_above_the_bound_and_a_quarter_above_the_size_after_the_last_one() {
    // (size, bound, size after the last compaction) → due
    let cases = [
        (100, 96, 0, true),    // first time, above the bound
        (96, 96, 0, false),    // at the bound
        (100, 96, 79, true),   // above both
        (100, 96, 80, false),  // not yet a quarter larger than when it was compacted
        (126, 96, 100, true),  // a store whose compacted size is above the bound, grown by a quarter
        (150, 160, 10, false), // below the bound, however much it grew
    ];
    for (size, above, baseline, expected) in cases {
        assert_eq!(due(size, above, baseline), expected, "size {size}, above {above}, baseline {baseline}");
    }
}

#[tokio::test]
async fn a_store_whose_compacted_size_is_above_the_bound_is_not_compacted_again_and_again() {
    // Given a store larger on disk than a bound of one byte
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), &["a", "b"]).await;
    let o = Outbox::open(dir.path()).unwrap();
    // When compaction is checked for twice (the test build checks on every call)
    let first = o.compact_if_due(1);
    let second = o.compact_if_due(1);
    // Then the first check compacts and the second does not: the store has not grown
    assert!(matches!(first, Some(Ok(_))), "{first:?}");
    assert!(second.is_none(), "{second:?}");
    assert_eq!(o.counters().compactions.load(Ordering::Relaxed), 1);
    // and a bound above the store's size never compacts it
    let fresh = tempfile::tempdir().unwrap();
    write(fresh.path(), &["a"]).await;
    let o = Outbox::open(fresh.path()).unwrap();
    assert!(o.compact_if_due(u64::MAX).is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn compactions_during_appends_and_acks_from_other_tasks_lose_and_duplicate_nothing() {
    // Given an appender (batch i is device "n{i}", an event every 10), an uplink-like task
    // acking whatever it reads, and a task compacting the store over and over
    const N: usize = 300;
    let dir = tempfile::tempdir().unwrap();
    let o = Outbox::open(dir.path()).unwrap();
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let appender = {
        let o = o.clone();
        tokio::spawn(async move {
            for i in 0..N {
                let events = if i % 10 == 0 { vec![event()] } else { vec![] };
                o.append(&[batch(&format!("n{i}"))], &events).await.unwrap();
                if i % 50 == 0 {
                    o.append_reply(&reply(i as u64)).await.unwrap();
                }
                if i % 100 == 99 {
                    // Let at least one whole compaction fall between these appends.
                    let seen = o.counters().compactions.load(Ordering::SeqCst);
                    while o.counters().compactions.load(Ordering::SeqCst) < seen + 2 {
                        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
                    }
                }
            }
        })
    };
    let acker = {
        let o = o.clone();
        let done = done.clone();
        tokio::spawn(async move {
            let (mut read, mut from, mut events, mut event_from) = (Vec::new(), 0u64, 0usize, 0u64);
            loop {
                let finished = done.load(Ordering::SeqCst);
                let chunk = o.telemetry_from(from, 16);
                for (seq, b) in &chunk {
                    o.ack_telemetry(*seq).unwrap();
                    read.push((*seq, b.device.clone()));
                    from = seq + 1;
                }
                let event_chunk = o.events_from(event_from, 16);
                for (seq, _) in &event_chunk {
                    o.ack_event(*seq).unwrap();
                    events += 1;
                    event_from = seq + 1;
                }
                // (a read during a compaction comes back empty: stop only once all is read)
                if finished && read.len() >= N && events >= N / 10 && chunk.is_empty() && event_chunk.is_empty() {
                    return (read, events);
                }
                tokio::task::yield_now().await;
            }
        })
    };
    let compactor = {
        let o = o.clone();
        let done = done.clone();
        tokio::task::spawn_blocking(move || {
            let mut n = 0;
            while !done.load(Ordering::SeqCst) || n == 0 {
                o.compact().unwrap();
                n += 1;
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            n
        })
    };
    // When the appender has finished
    appender.await.unwrap();
    done.store(true, Ordering::SeqCst);
    let compactions = compactor.await.unwrap();
    let (read, events) = tokio::time::timeout(std::time::Duration::from_secs(60), acker)
        .await
        .expect("the acker did not read every batch and event within 60 s")
        .unwrap();
    // Then every batch was read exactly once, in order, under consecutive numbers
    let expected: Vec<(u64, String)> = (0..N).map(|i| (i as u64 + 1, format!("n{i}"))).collect();
    assert_eq!(read, expected, "after {compactions} compactions");
    assert!(compactions >= 6, "only {compactions} compactions ran during the appends");
    assert_eq!(events, N / 10);
    assert_eq!(o.counters().batches_acked.load(Ordering::Relaxed), N as u64);
    assert_eq!((o.pending_batches(), o.pending_events(), o.bytes() > 0), (0, 0, true), "only replies are left");
    assert_eq!(o.replies_from(0, usize::MAX).len(), N / 50);
    // and the store reopens with the same numbers
    let next = (o.next_batch_seq(), o.next_event_seq());
    drop(o);
    let o = Outbox::open(dir.path()).unwrap();
    assert_eq!((o.next_batch_seq(), o.next_event_seq()), next);
    assert_eq!((o.pending_batches(), o.pending_events(), o.pending_replies()), (0, 0, (N / 50) as u64));
}

#[tokio::test]
async fn reads_and_acks_do_not_wait_for_a_compaction_and_the_acks_are_applied_after_it() {
    // Given a store with three batches
    let dir = tempfile::tempdir().unwrap();
    let o = Outbox::open(dir.path()).unwrap();
    o.append(&[batch("a"), batch("b"), batch("c")], &[]).await.unwrap();
    // When a compaction holds the store (its write lock), the uplink reads and acks
    let held = o.shared.handles.write().unwrap();
    assert!(o.telemetry_from(0, 10).is_empty(), "a read during a compaction comes back empty instead of waiting");
    o.ack_telemetry(1).unwrap();
    o.ack_telemetry(2).unwrap();
    // Then the acks are kept, not lost: nothing is deleted yet
    assert_eq!(o.pending_batches(), 3);
    drop(held);
    // (and the acked ones are not read again meanwhile: they would be sent twice)
    assert_eq!(o.telemetry_from(0, 10).into_iter().map(|(s, _)| s).collect::<Vec<_>>(), vec![3]);
    // And the compaction applies them once the new database is open
    o.compact().unwrap();
    assert_eq!(o.telemetry_from(0, 10).into_iter().map(|(s, _)| s).collect::<Vec<_>>(), vec![3]);
    assert_eq!((o.pending_batches(), o.counters().batches_acked.load(Ordering::Relaxed)), (1, 2));
}

#[tokio::test]
async fn an_ack_deferred_by_a_compaction_is_applied_by_the_next_ack_if_the_compaction_did_not() {
    let dir = tempfile::tempdir().unwrap();
    let o = Outbox::open(dir.path()).unwrap();
    o.append(&[batch("a"), batch("b")], &[]).await.unwrap();
    let held = o.shared.handles.write().unwrap();
    o.ack_telemetry(1).unwrap();
    drop(held);
    o.ack_telemetry(2).unwrap();
    assert_eq!((o.pending_batches(), o.counters().batches_acked.load(Ordering::Relaxed)), (0, 2));
}
