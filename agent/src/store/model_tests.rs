//! Model-based test of the outbox: random sequences of append / ack / reopen / evict /
//! corrupt / compact run against the real sled outbox and against a plain in-memory model, and
//! after every step the two must agree on what the uplink would deliver.
//!
//! Properties:
//! - nothing appended (and so reported stored) is lost unless it was acknowledged,
//!   evicted (counted) or corrupt (counted);
//! - delivery order is `batch_seq` order, hence per-device order;
//! - sequence numbers are never handed out twice, across reopens;
//! - the drop and corruption counters match the model exactly.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

use chrono::Utc;
use proptest::prelude::*;

use super::outbox::{key, Outbox};
use super::record::{self, StoredBatch};
use super::StoredEventDraft;
use crate::payload::WireSample;

#[derive(Debug, Clone)]
enum Op {
    Append {
        device: u8,
        samples: u8,
    },
    AppendEvent,
    Ack(usize),
    Reopen,
    /// Evict down to this share (percent) of the current bytes.
    Evict(u8),
    Corrupt(usize),
    /// Rewrite the store into a fresh database (`compaction.rs`): nothing may change.
    Compact,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0u8..3, 1u8..12).prop_map(|(device, samples)| Op::Append { device, samples }),
        1 => Just(Op::AppendEvent),
        4 => any::<usize>().prop_map(Op::Ack),
        1 => Just(Op::Reopen),
        1 => (10u8..100).prop_map(Op::Evict),
        1 => any::<usize>().prop_map(Op::Corrupt),
        1 => Just(Op::Compact),
    ]
}

#[derive(Debug, Default)]
struct Model {
    /// batch_seq → (device, samples, record bytes) not yet acknowledged, evicted or corrupted.
    pending: BTreeMap<u64, (String, usize, u64)>,
    /// Record bytes of each pending event, oldest first.
    events: std::collections::VecDeque<u64>,
    next_seq: u64,
    dropped_batches: u64,
    dropped_samples: u64,
    corrupt: u64,
}

fn batch(device: u8, samples: u8) -> StoredBatch {
    StoredBatch {
        device: format!("plc{device}"),
        samples: (0..samples)
            .map(|i| WireSample {
                tag: format!("t{i}"),
                v: Some(edge_drivers::Value::Int(i64::from(i))),
                q: "good".into(),
                ts: crate::payload::rfc3339(Utc::now()),
                server_ts: None,
                reason: None,
            })
            .collect(),
    }
}

fn event() -> StoredEventDraft {
    StoredEventDraft {
        gateway: "gw".into(),
        kind: "device_lost".into(),
        asset: "plc0".into(),
        severity: "warning".into(),
        ts: Utc::now(),
        details: serde_json::json!({}),
    }
}

async fn run(ops: Vec<Op>) {
    let dir = tempfile::tempdir().unwrap();
    let mut outbox = Outbox::open(dir.path()).unwrap();
    let mut model = Model { next_seq: 1, ..Model::default() };
    let mut counters_base = (0u64, 0u64, 0u64); // counters restart at 0 on reopen

    for op in ops {
        match op {
            Op::Append { device, samples } => {
                let b = batch(device, samples);
                outbox.append(std::slice::from_ref(&b), &[]).await.unwrap();
                let size = record::encode(&b).unwrap().len() as u64;
                model.pending.insert(model.next_seq, (b.device, b.samples.len(), size));
                model.next_seq += 1;
            }
            Op::AppendEvent => {
                outbox.append(&[], &[event()]).await.unwrap();
                let (_, newest) = outbox.handles().unwrap().events.last().unwrap().unwrap();
                model.events.push_back(newest.len() as u64);
            }
            Op::Ack(i) => {
                if let Some(&seq) = model.pending.keys().nth(i % model.pending.len().max(1)) {
                    outbox.ack_telemetry(seq).unwrap();
                    model.pending.remove(&seq);
                }
            }
            Op::Reopen => {
                let c = &outbox.counters;
                counters_base.0 += c.batches_dropped.load(Ordering::Relaxed);
                counters_base.1 += c.samples_dropped.load(Ordering::Relaxed);
                counters_base.2 += c.corrupt_records.load(Ordering::Relaxed);
                drop(outbox);
                outbox = Outbox::open(dir.path()).unwrap();
                assert!(outbox.next_batch_seq() >= model.next_seq, "a sequence number would be reused");
            }
            Op::Evict(percent) => {
                let total = held_bytes(&outbox);
                let max = total * u64::from(percent) / 100;
                let dropped = outbox.enforce_bounds(max, None, Utc::now()).unwrap();
                // The model: oldest telemetry first, events only when no telemetry is left.
                let (mut bytes, mut batches, mut events) = (total, 0, 0);
                while bytes > max {
                    if let Some((&seq, _)) = model.pending.iter().next() {
                        let (_, n, size) = model.pending.remove(&seq).unwrap();
                        model.dropped_batches += 1;
                        model.dropped_samples += n as u64;
                        bytes -= size;
                        batches += 1;
                    } else if let Some(size) = model.events.pop_front() {
                        bytes -= size;
                        events += 1;
                    } else {
                        break;
                    }
                }
                assert_eq!((dropped.batches, dropped.events), (batches, events), "what eviction dropped");
            }
            Op::Corrupt(i) => {
                if let Some(&seq) = model.pending.keys().nth(i % model.pending.len().max(1)) {
                    let old = outbox.handles().unwrap().telemetry.insert(key(seq), b"\x00\x00\x00\x00torn".to_vec()).unwrap().unwrap();
                    outbox.bytes.fetch_sub(old.len() as u64, Ordering::Relaxed);
                    outbox.bytes.fetch_add(8, Ordering::Relaxed);
                    model.pending.remove(&seq);
                    model.corrupt += 1;
                }
            }
            Op::Compact => {
                let next = outbox.next_batch_seq();
                outbox.compact().unwrap();
                assert_eq!(outbox.next_batch_seq(), next, "compaction changed the numbering");
                assert!(!dir.path().join("outbox.old").exists() && !dir.path().join("outbox.compacted").exists());
            }
        }

        // What the uplink would deliver now equals the model, in batch_seq order.
        let delivered: Vec<(u64, String, usize)> =
            outbox.telemetry_from(0, usize::MAX).into_iter().map(|(s, b)| (s, b.device, b.samples.len())).collect();
        let expected: Vec<(u64, String, usize)> = model.pending.iter().map(|(s, (d, n, _))| (*s, d.clone(), *n)).collect();
        assert_eq!(delivered, expected);
        assert_eq!(outbox.pending_events() as usize, model.events.len());
        let c = &outbox.counters;
        assert_eq!(counters_base.0 + c.batches_dropped.load(Ordering::Relaxed), model.dropped_batches, "dropped batches counter");
        assert_eq!(counters_base.1 + c.samples_dropped.load(Ordering::Relaxed), model.dropped_samples, "dropped samples counter");
        assert_eq!(counters_base.2 + c.corrupt_records.load(Ordering::Relaxed), model.corrupt, "corrupt records counter");
        // and the byte and record counts are those of what is held
        assert_eq!(outbox.bytes(), held_bytes(&outbox), "byte accounting");
        let h = outbox.handles().unwrap();
        assert_eq!(outbox.pending_batches(), h.telemetry.iter().count() as u64, "batch count");
        assert_eq!(outbox.pending_events(), h.events.iter().count() as u64, "event count");
    }
}

/// Bytes of every record in the outbox, counted independently of its own counter.
fn held_bytes(outbox: &Outbox) -> u64 {
    let h = outbox.handles().unwrap();
    [&h.telemetry, &h.events, &h.replies].iter().flat_map(|t| t.iter().map(|e| e.unwrap().1.len() as u64)).sum()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn the_outbox_delivers_exactly_what_the_model_says(ops in proptest::collection::vec(op(), 1..60)) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(run(ops));
    }
}
