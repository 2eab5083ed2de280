//! Model-based test of the outbox: random sequences of append / ack / reopen / evict /
//! corrupt / compact run against the real sled outbox and against a plain in-memory model, and
//! after every step the two must agree on what the uplink would deliver.
//!
//! Properties:
//! - nothing appended (and so reported stored) is lost unless it was acknowledged,
//!   evicted (counted) or corrupt (counted);
//! - delivery order is `batch_seq` order, hence per-device order;
//! - sequence numbers are never handed out twice, across reopens;
//! - the drop and corruption counters match the model exactly;
//! - with crashes and damage in the sequence (the store comes back as an earlier copy of
//!   itself, without its newest records; bits flipped in sled's `db` file): the ERP-side
//!   view, batches received by `batch_seq`, never shows one number with two contents,
//!   numbering never goes back, and a store that lost batches it held raises a reset whose
//!   bound covers them (exactly for a store back without its newest records).

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
    /// A crash after which the store comes back as the copy saved at an earlier reopen
    /// (what sled does when it cuts its log at a damaged segment).
    ComeBackOlder(usize),
    /// Bits flipped in sled's `db` file while the agent is stopped (seeded).
    FlipBits(u64),
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
        1 => any::<usize>().prop_map(Op::ComeBackOlder),
        1 => any::<u64>().prop_map(Op::FlipBits),
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
    /// Every batch_seq settled: acknowledged by the broker (delivered), evicted or corrupt
    /// (counted). Not lost when an older copy of the store brings it back and a later
    /// damage takes it away again.
    settled: std::collections::BTreeSet<u64>,
}

/// A batch whose content is told apart by `uid` (the value of every sample).
fn batch(device: u8, samples: u8, uid: u64) -> StoredBatch {
    StoredBatch {
        device: format!("plc{device}"),
        samples: (0..samples)
            .map(|i| WireSample {
                tag: format!("t{i}"),
                v: Some(edge_drivers::Value::Int(uid as i64)),
                q: "good".into(),
                ts: crate::payload::rfc3339(Utc::now()),
                server_ts: None,
                reason: None,
            })
            .collect(),
    }
}

fn event() -> StoredEventDraft {
    StoredEventDraft::now("gw", "plc0", crate::events::Event::DeviceLost(crate::events::DeviceLost { reason: "no answer".into() }))
}

async fn run(ops: Vec<Op>) {
    let dir = tempfile::tempdir().unwrap();
    let mut outbox = Outbox::open(dir.path()).unwrap();
    let mut model = Model { next_seq: 1, ..Model::default() };
    let mut counters_base = (0u64, 0u64, 0u64); // counters restart at 0 on reopen
                                                // The ERP's view: content (uid) by batch_seq, of everything the uplink could publish.
    let mut erp: BTreeMap<u64, u64> = BTreeMap::new();
    let mut uid = 0u64;
    // Copies of the store taken at reopens, for ComeBackOlder.
    let snapshots = tempfile::tempdir().unwrap();
    let mut saved = 0usize;
    // Whether bits were flipped in the store's files (damage a later open may still find).
    let mut flipped = false;

    for op in ops {
        match op {
            Op::Append { device, samples } => {
                uid += 1;
                let b = batch(device, samples, uid);
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
                    model.settled.insert(seq);
                }
            }
            Op::Reopen => {
                let c = outbox.counters();
                counters_base.0 += c.batches_dropped.load(Ordering::Relaxed);
                counters_base.1 += c.samples_dropped.load(Ordering::Relaxed);
                counters_base.2 += c.corrupt_records.load(Ordering::Relaxed);
                drop(outbox);
                copy_dir(&dir.path().join("outbox"), &snapshots.path().join(saved.to_string()));
                saved += 1;
                outbox = Outbox::open(dir.path()).unwrap();
                assert!(outbox.next_batch_seq() >= model.next_seq, "a sequence number would be reused");
                // Bits flipped earlier can cost records written since (sled cuts its log at
                // the damage on this open): then a reset must say so and cover them.
                if let Some(reset) = outbox.reset.clone() {
                    assert!(flipped, "a reset on a reopen of an undamaged store: {reset:?}");
                    let missing = after_damage(&outbox, &mut model, &erp, &mut counters_base);
                    assert!(reset.batches_possibly_lost.unwrap_or(u64::MAX) >= missing, "{reset:?} does not cover {missing} lost");
                }
            }
            Op::ComeBackOlder(i) if saved > 0 => {
                rebase_counters(&outbox, &mut counters_base);
                drop(outbox);
                std::fs::remove_dir_all(dir.path().join("outbox")).unwrap();
                copy_dir(&snapshots.path().join((i % saved).to_string()), &dir.path().join("outbox"));
                outbox = Outbox::open(dir.path()).unwrap();
                let missing = after_damage(&outbox, &mut model, &erp, &mut counters_base);
                if missing > 0 {
                    let reset = outbox.reset.clone().unwrap_or_else(|| panic!("{missing} batches lost, no reset"));
                    assert!(reset.batches_possibly_lost.unwrap_or(u64::MAX) >= missing, "{reset:?} does not cover {missing} lost");
                }
            }
            Op::ComeBackOlder(_) => {}
            Op::FlipBits(seed) => {
                flipped = true;
                rebase_counters(&outbox, &mut counters_base);
                drop(outbox);
                flip_bits(&dir.path().join("outbox").join("db"), seed);
                outbox = Outbox::open(dir.path()).unwrap();
                let missing = after_damage(&outbox, &mut model, &erp, &mut counters_base);
                // A loss of older records with the newest intact is not detected (docs/guarantees.md).
                if missing > 0 && outbox.moved_aside.is_some() {
                    assert!(outbox.reset.is_some(), "moved aside without a reset");
                }
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
                        model.settled.insert(seq);
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
                    outbox.shared.held.bytes.fetch_sub(old.len() as u64, Ordering::Relaxed);
                    outbox.shared.held.bytes.fetch_add(8, Ordering::Relaxed);
                    model.pending.remove(&seq);
                    model.settled.insert(seq);
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

        // The ERP never sees one batch_seq with two contents.
        let read = outbox.telemetry_from(0, usize::MAX);
        for (seq, b) in &read {
            let content = uid_of(b);
            assert_eq!(*erp.entry(*seq).or_insert(content), content, "batch_seq {seq} with two contents");
        }
        // What the uplink would deliver now equals the model, in batch_seq order.
        let delivered: Vec<(u64, String, usize)> = read.into_iter().map(|(s, b)| (s, b.device, b.samples.len())).collect();
        let expected: Vec<(u64, String, usize)> = model.pending.iter().map(|(s, (d, n, _))| (*s, d.clone(), *n)).collect();
        assert_eq!(delivered, expected);
        assert_eq!(outbox.pending_events() as usize, model.events.len());
        let c = outbox.counters();
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

fn uid_of(b: &StoredBatch) -> u64 {
    match b.samples.first().and_then(|s| s.v.clone()) {
        Some(edge_drivers::Value::Int(u)) => u as u64,
        other => panic!("a batch without its uid: {other:?}"),
    }
}

fn rebase_counters(outbox: &Outbox, base: &mut (u64, u64, u64)) {
    let c = outbox.counters();
    base.0 += c.batches_dropped.load(Ordering::Relaxed);
    base.1 += c.samples_dropped.load(Ordering::Relaxed);
    base.2 += c.corrupt_records.load(Ordering::Relaxed);
}

/// After damage: numbering must not go back, and what the store still delivers must be
/// what the ERP saw under those numbers. The model then takes what the store holds as its
/// new state (damage decides what is left, not the model); returns how many of the
/// batches the model held, and never settled (acknowledged, evicted, corrupt), are gone.
fn after_damage(outbox: &Outbox, model: &mut Model, erp: &BTreeMap<u64, u64>, base: &mut (u64, u64, u64)) -> u64 {
    assert!(
        outbox.next_batch_seq() >= model.next_seq,
        "numbering went back after damage: {} < {}",
        outbox.next_batch_seq(),
        model.next_seq
    );
    let read = outbox.telemetry_from(0, usize::MAX);
    for (seq, b) in &read {
        if let Some(&seen) = erp.get(seq) {
            assert_eq!(seen, uid_of(b), "batch_seq {seq} came back with other content");
        }
    }
    // A batch settled before (brought back by an older copy of the store) was delivered or
    // counted: losing it again loses nothing.
    let missing = model.pending.keys().filter(|s| !model.settled.contains(s) && !read.iter().any(|(r, _)| r == *s)).count() as u64;
    model.pending = read.iter().map(|(s, b)| (*s, (b.device.clone(), b.samples.len(), record::encode(b).unwrap().len() as u64))).collect();
    let h = outbox.handles().unwrap();
    model.events = h.events.iter().map(|e| e.unwrap().1.len() as u64).collect();
    drop(h);
    model.next_seq = outbox.next_batch_seq();
    // Records damaged in place were skipped and counted as corrupt while reading: the
    // model starts counting afresh from here.
    let c = outbox.counters();
    model.corrupt = base.2 + c.corrupt_records.load(Ordering::Relaxed);
    model.dropped_batches = base.0 + c.batches_dropped.load(Ordering::Relaxed);
    model.dropped_samples = base.1 + c.samples_dropped.load(Ordering::Relaxed);
    missing
}

fn flip_bits(path: &std::path::Path, seed: u64) {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut bytes = std::fs::read(path).unwrap();
    for _ in 0..rng.gen_range(1..32) {
        let i = rng.gen_range(0..bytes.len());
        bytes[i] ^= 1 << rng.gen_range(0..8);
    }
    std::fs::write(path, &bytes).unwrap();
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        let t = to.join(e.file_name());
        if e.path().is_dir() {
            copy_dir(&e.path(), &t)
        } else {
            std::fs::copy(e.path(), t).unwrap();
        }
    }
}

/// Bytes of every record in the outbox, counted independently of its own counter.
fn held_bytes(outbox: &Outbox) -> u64 {
    let h = outbox.handles().unwrap();
    [&h.telemetry, &h.events, &h.replies].iter().flat_map(|t| t.iter().map(|e| e.unwrap().1.len() as u64)).sum()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: std::env::var("MODEL_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(48), ..ProptestConfig::default() })]

    #[test]
    fn the_outbox_delivers_exactly_what_the_model_says(ops in proptest::collection::vec(op(), 1..60)) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(run(ops));
    }
}
