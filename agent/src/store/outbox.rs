//! The sled outbox: two trees of records keyed by big-endian sequence numbers (so sled's
//! key order is delivery order) and a meta tree with the next numbers to hand out.
//!
//! Sequence numbers survive restarts: on open, the next number is the larger of the one
//! saved in meta and one past the last key present, so a crash between the two writes can
//! never hand out a number twice. Nothing is published before `flush_async` has returned,
//! so every number the ERP has seen is on disk.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use tracing::{error, warn};

use super::record::{self, StoredBatch, StoredEvent};

const NEXT_BATCH_SEQ: &[u8] = b"next_batch_seq";
const NEXT_EVENT_SEQ: &[u8] = b"next_event_seq";
const NEXT_REPLY_SEQ: &[u8] = b"next_reply_seq";

/// How long `open` waits for a store locked by a closing instance.
const LOCK_WAIT: Duration = if cfg!(test) { Duration::from_secs(1) } else { Duration::from_secs(10) };

/// sled reports a held file lock as an I/O error with this text (sled 0.34, `Config::open`).
fn is_lock_error(e: &sled::Error) -> bool {
    matches!(e, sled::Error::Io(io) if io.to_string().contains("could not acquire lock"))
}

/// Errors that mean the files are not a store this sled can read; I/O errors (permissions,
/// a failing disk) are not among them: moving the store aside would not help.
fn is_unreadable(e: &sled::Error) -> bool {
    matches!(e, sled::Error::Corruption { .. } | sled::Error::Unsupported(_) | sled::Error::ReportableBug(_))
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store database error: {0}")]
    Sled(#[from] sled::Error),
    #[error("cannot encode a record: {0}")]
    Encode(#[from] serde_json::Error),
    #[error("the store {path} is locked by another process (another edge-agent on the same gateway.data_dir?); waited {waited:?}")]
    Locked { path: PathBuf, waited: Duration },
    #[error("cannot move the unreadable store {path} aside: {source}")]
    MoveAside { path: PathBuf, source: std::io::Error },
}

/// Counters, shown on the page and in `/metrics`.
#[derive(Debug, Default)]
pub struct OutboxCounters {
    pub batches_stored: AtomicU64,
    /// Telemetry batches dropped to keep the store within its bounds (oldest first).
    pub batches_dropped: AtomicU64,
    pub samples_dropped: AtomicU64,
    /// Events dropped (only when no telemetry was left to drop).
    pub events_dropped: AtomicU64,
    pub samples_stored: AtomicU64,
    pub batches_acked: AtomicU64,
    pub events_acked: AtomicU64,
    pub corrupt_records: AtomicU64,
}

/// Handle to the outbox; cheap to clone.
#[derive(Clone)]
pub struct Outbox {
    pub(super) db: sled::Db,
    pub(super) telemetry: sled::Tree,
    pub(super) events: sled::Tree,
    /// Replies to ERP commands (`cmd/response`): few, small, published before telemetry.
    pub(super) replies: sled::Tree,
    meta: sled::Tree,
    /// Bytes of all records held (telemetry, events, replies): what `store.max_bytes` bounds.
    pub(super) bytes: Arc<AtomicU64>,
    /// Records held per tree (telemetry, events, replies). sled's `Tree::len` scans the
    /// whole tree, far too slow to call on every uplink event with a large backlog.
    lens: Arc<[AtomicU64; 3]>,
    seqs: Arc<Mutex<(u64, u64)>>,
    /// Next reply number.
    next_reply: Arc<Mutex<u64>>,
    /// Replies numbered below this are flushed; readers see only those.
    durable_reply: Arc<AtomicU64>,
    /// Everything numbered below these (batch, event) is flushed to disk. Readers see
    /// only those entries, so nothing is published before it is durable.
    durable: Arc<Mutex<(u64, u64)>>,
    pub counters: Arc<OutboxCounters>,
    /// Set when the store could not be opened and was moved aside (path of the old one).
    pub moved_aside: Option<PathBuf>,
    /// The first batch number of the current run of the agent (set at open and by
    /// [`Outbox::mark_run_start`] when a reload restarts everything).
    run_start: Arc<AtomicU64>,
}

pub(super) fn key(seq: u64) -> [u8; 8] {
    seq.to_be_bytes()
}

pub(super) fn seq_of(key: &[u8]) -> Option<u64> {
    key.try_into().ok().map(u64::from_be_bytes)
}

impl Outbox {
    /// Opens the outbox under `dir`. A store whose contents cannot be read (corrupt, from an
    /// incompatible version) is renamed to `outbox.unreadable-{time}` for inspection and a
    /// fresh one is started: the agent never refuses to run because of its own buffer.
    ///
    /// A store that is merely *locked* (another agent on the same `data_dir`, or an earlier
    /// instance in this process still closing) is never moved aside: opening is retried for
    /// a few seconds, then refused with a clear error.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let path = dir.join("outbox");
        let mut waited = Duration::ZERO;
        loop {
            match Self::open_at(&path) {
                Ok(outbox) => return Ok(outbox),
                Err(StoreError::Sled(e)) if is_lock_error(&e) => {
                    if waited >= LOCK_WAIT {
                        return Err(StoreError::Locked { path, waited });
                    }
                    std::thread::sleep(Duration::from_millis(100));
                    waited += Duration::from_millis(100);
                }
                Err(StoreError::Sled(e)) if is_unreadable(&e) => return Self::replace_unreadable(dir, &path, &e),
                Err(other) => return Err(other),
            }
        }
    }

    fn replace_unreadable(dir: &Path, path: &Path, why: &sled::Error) -> Result<Self, StoreError> {
        let aside = dir.join(format!("outbox.unreadable-{}", Utc::now().format("%Y%m%dT%H%M%SZ")));
        error!(path = %path.display(), error = %why, aside = %aside.display(), "store cannot be read; moving it aside and starting a fresh one");
        std::fs::rename(path, &aside).map_err(|source| StoreError::MoveAside { path: path.to_path_buf(), source })?;
        let mut fresh = Self::open_at(path)?;
        fresh.moved_aside = Some(aside);
        fresh.continue_numbering_after_reset()?;
        Ok(fresh)
    }

    fn open_at(path: &Path) -> Result<Self, StoreError> {
        let db = sled::Config::new().path(path).mode(sled::Mode::LowSpace).open()?;
        let telemetry = db.open_tree("telemetry")?;
        let events = db.open_tree("events")?;
        let replies = db.open_tree("replies")?;
        let meta = db.open_tree("meta")?;
        let next = |tree: &sled::Tree, name: &[u8]| -> Result<u64, StoreError> {
            let saved = meta.get(name)?.and_then(|v| seq_of(&v)).unwrap_or(1);
            let after_last = tree.last()?.and_then(|(k, _)| seq_of(&k)).map_or(1, |s| s + 1);
            Ok(saved.max(after_last))
        };
        let seqs = (next(&telemetry, NEXT_BATCH_SEQ)?, next(&events, NEXT_EVENT_SEQ)?);
        let next_reply = next(&replies, NEXT_REPLY_SEQ)?;
        let mut bytes = 0u64;
        let mut lens = [0u64; 3];
        for (i, tree) in [&telemetry, &events, &replies].into_iter().enumerate() {
            for entry in tree.iter() {
                let (_, v) = entry?;
                bytes += v.len() as u64;
                lens[i] += 1;
            }
        }
        Ok(Self {
            db,
            telemetry,
            events,
            replies,
            meta,
            bytes: Arc::new(AtomicU64::new(bytes)),
            lens: Arc::new(lens.map(AtomicU64::new)),
            next_reply: Arc::new(Mutex::new(next_reply)),
            durable_reply: Arc::new(AtomicU64::new(next_reply)),
            seqs: Arc::new(Mutex::new(seqs)),
            durable: Arc::new(Mutex::new(seqs)),
            counters: Arc::default(),
            moved_aside: None,
            run_start: Arc::new(AtomicU64::new(seqs.0)),
        })
    }

    /// The numbers of the unreadable store are lost with it. Starting again at 1 would make
    /// new data look like duplicates to the ERP; instead numbering restarts at the current
    /// Unix time in milliseconds, always above any earlier number, and the jump shows the
    /// ERP a gap (data that may have been lost with the old store).
    fn continue_numbering_after_reset(&mut self) -> Result<(), StoreError> {
        let base = u64::try_from(Utc::now().timestamp_millis()).unwrap_or(1).max(1);
        let seqs = (base, base);
        self.meta.insert(NEXT_BATCH_SEQ, &key(base))?;
        self.meta.insert(NEXT_EVENT_SEQ, &key(base))?;
        self.meta.insert(NEXT_REPLY_SEQ, &key(base))?;
        *self.seqs.lock().unwrap_or_else(|p| p.into_inner()) = seqs;
        *self.durable.lock().unwrap_or_else(|p| p.into_inner()) = seqs;
        *self.next_reply.lock().unwrap_or_else(|p| p.into_inner()) = base;
        self.durable_reply.store(base, Ordering::SeqCst);
        self.run_start.store(base, Ordering::SeqCst);
        self.db.flush()?;
        Ok(())
    }

    /// Numbers and writes the batches and events, then flushes. Returns once they are on
    /// disk; only then may they be published.
    pub async fn append(&self, batches: &[StoredBatch], events: &[StoredEventDraft]) -> Result<(), StoreError> {
        let samples: usize = batches.iter().map(|b| b.samples.len()).sum();
        let written = {
            let mut seqs = self.seqs.lock().unwrap_or_else(|p| p.into_inner());
            let (mut next_batch, mut next_event) = *seqs;
            let mut added = 0u64;
            let mut tb = sled::Batch::default();
            for b in batches {
                let rec = record::encode(b)?;
                added += rec.len() as u64;
                tb.insert(&key(next_batch), rec);
                next_batch += 1;
            }
            let mut eb = sled::Batch::default();
            for e in events {
                let rec = record::encode(&StoredEvent(e.finish(next_event)))?;
                added += rec.len() as u64;
                eb.insert(&key(next_event), rec);
                next_event += 1;
            }
            // Records first, then the counters: a crash in between is covered by open().
            self.telemetry.apply_batch(tb)?;
            self.events.apply_batch(eb)?;
            self.meta.insert(NEXT_BATCH_SEQ, &key(next_batch))?;
            self.meta.insert(NEXT_EVENT_SEQ, &key(next_event))?;
            self.bytes.fetch_add(added, Ordering::Relaxed);
            self.lens[0].fetch_add(batches.len() as u64, Ordering::Relaxed);
            self.lens[1].fetch_add(events.len() as u64, Ordering::Relaxed);
            *seqs = (next_batch, next_event);
            *seqs
        };
        self.db.flush_async().await?;
        // Only now may readers (the uplink) see the new entries.
        let mut durable = self.durable.lock().unwrap_or_else(|p| p.into_inner());
        durable.0 = durable.0.max(written.0);
        durable.1 = durable.1.max(written.1);
        drop(durable);
        self.counters.batches_stored.fetch_add(batches.len() as u64, Ordering::Relaxed);
        self.counters.samples_stored.fetch_add(samples as u64, Ordering::Relaxed);
        Ok(())
    }

    /// Up to `limit` telemetry batches with `batch_seq >= from`, in order. Corrupt
    /// records are skipped, counted and removed.
    pub fn telemetry_from(&self, from: u64, limit: usize) -> Vec<(u64, StoredBatch)> {
        let below = self.durable.lock().unwrap_or_else(|p| p.into_inner()).0;
        self.read_from(&self.telemetry, "telemetry", from, below, limit)
    }

    /// Up to `limit` events with sequence `>= from`, in order.
    pub fn events_from(&self, from: u64, limit: usize) -> Vec<(u64, StoredEvent)> {
        let below = self.durable.lock().unwrap_or_else(|p| p.into_inner()).1;
        self.read_from(&self.events, "events", from, below, limit)
    }

    /// Entries with `from <= seq < below`, at most `limit`.
    fn read_from<T: serde::de::DeserializeOwned>(&self, tree: &sled::Tree, name: &str, from: u64, below: u64, limit: usize) -> Vec<(u64, T)> {
        let mut out = Vec::with_capacity(limit.min(256));
        if from >= below {
            return out;
        }
        for entry in tree.range(key(from)..key(below)) {
            if out.len() >= limit {
                break;
            }
            let (k, v) = match entry {
                Ok(kv) => kv,
                Err(e) => {
                    error!(tree = name, error = %e, "store read failed");
                    break;
                }
            };
            let Some(seq) = seq_of(&k) else {
                self.drop_corrupt(tree, name, &k, "key is not a sequence number");
                continue;
            };
            match record::decode::<T>(&v) {
                Ok(r) => out.push((seq, r)),
                Err(e) => self.drop_corrupt(tree, name, &k, &e.to_string()),
            }
        }
        out
    }

    fn drop_corrupt(&self, tree: &sled::Tree, name: &str, k: &[u8], why: &str) {
        self.counters.corrupt_records.fetch_add(1, Ordering::Relaxed);
        warn!(tree = name, key = ?k, reason = why, "corrupt record skipped and removed");
        match tree.remove(k) {
            Ok(Some(v)) => {
                self.bytes.fetch_sub(v.len() as u64, Ordering::Relaxed);
                self.len_of(tree).fetch_sub(1, Ordering::Relaxed);
            }
            Ok(None) => {}
            Err(e) => error!(tree = name, error = %e, "could not remove a corrupt record"),
        }
    }

    /// Stores a reply to a command and flushes it. Returns its sequence number.
    pub async fn append_reply(&self, reply: &StoredReply) -> Result<u64, StoreError> {
        let seq = {
            let mut next = self.next_reply.lock().unwrap_or_else(|p| p.into_inner());
            let seq = *next;
            let rec = record::encode(reply)?;
            self.bytes.fetch_add(rec.len() as u64, Ordering::Relaxed);
            if self.replies.insert(key(seq), rec)?.is_none() {
                self.lens[2].fetch_add(1, Ordering::Relaxed);
            }
            self.meta.insert(NEXT_REPLY_SEQ, &key(seq + 1))?;
            *next = seq + 1;
            seq
        };
        self.db.flush_async().await?;
        self.durable_reply.fetch_max(seq + 1, Ordering::SeqCst);
        Ok(seq)
    }

    /// Up to `limit` replies with sequence `>= from`, in order.
    pub fn replies_from(&self, from: u64, limit: usize) -> Vec<(u64, StoredReply)> {
        self.read_from(&self.replies, "replies", from, self.durable_reply.load(Ordering::SeqCst), limit)
    }

    pub fn ack_reply(&self, seq: u64) -> Result<(), StoreError> {
        self.remove(&self.replies, seq)?;
        Ok(())
    }

    /// Removes one record and keeps the byte count; returns the record if it was there.
    pub(super) fn remove(&self, tree: &sled::Tree, seq: u64) -> Result<Option<sled::IVec>, StoreError> {
        let old = tree.remove(key(seq))?;
        if let Some(v) = &old {
            self.bytes.fetch_sub(v.len() as u64, Ordering::Relaxed);
            self.len_of(tree).fetch_sub(1, Ordering::Relaxed);
        }
        Ok(old)
    }

    /// Bytes of records held, the quantity `store.max_bytes` bounds.
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    /// The record counter of `tree`.
    fn len_of(&self, tree: &sled::Tree) -> &AtomicU64 {
        let name = tree.name();
        if name == self.events.name() {
            &self.lens[1]
        } else if name == self.replies.name() {
            &self.lens[2]
        } else {
            &self.lens[0]
        }
    }

    pub fn pending_replies(&self) -> u64 {
        self.lens[2].load(Ordering::Relaxed)
    }

    /// The broker acknowledged batch `seq`: it may go.
    pub fn ack_telemetry(&self, seq: u64) -> Result<(), StoreError> {
        if self.remove(&self.telemetry, seq)?.is_some() {
            self.counters.batches_acked.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }

    pub fn ack_event(&self, seq: u64) -> Result<(), StoreError> {
        if self.remove(&self.events, seq)?.is_some() {
            self.counters.events_acked.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }

    pub fn pending_batches(&self) -> u64 {
        self.lens[0].load(Ordering::Relaxed)
    }

    pub fn pending_events(&self) -> u64 {
        self.lens[1].load(Ordering::Relaxed)
    }

    /// The `batch_seq` the next stored batch will get.
    /// Marks the start of a run of the agent (called before the drivers start, also after a
    /// reload): batches numbered from here on belong to this run.
    pub fn mark_run_start(&self) {
        self.run_start.store(self.next_batch_seq(), Ordering::SeqCst);
    }

    /// The first batch number of the current run. The uplink counts batches from here on
    /// as live if its first connection succeeds: they were not held back by an outage,
    /// however early the writer stored them.
    pub fn first_batch_seq_this_run(&self) -> u64 {
        self.run_start.load(Ordering::SeqCst)
    }

    pub fn next_batch_seq(&self) -> u64 {
        self.seqs.lock().unwrap_or_else(|p| p.into_inner()).0
    }

    pub fn next_event_seq(&self) -> u64 {
        self.seqs.lock().unwrap_or_else(|p| p.into_inner()).1
    }

    pub fn disk_bytes(&self) -> u64 {
        self.db.size_on_disk().unwrap_or(0)
    }

    pub async fn flush(&self) -> Result<(), StoreError> {
        self.db.flush_async().await?;
        Ok(())
    }
}

/// A message to the ERP that is neither telemetry nor an event: a reply to a command.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct StoredReply {
    /// Topic below the gateway root, e.g. `cmd/response`.
    pub topic_leaf: String,
    pub body: serde_json::Value,
}

/// An event before it has its sequence number (and so its id).
#[derive(Debug, Clone)]
pub struct StoredEventDraft {
    pub gateway: String,
    pub kind: String,
    pub asset: String,
    pub severity: String,
    pub ts: chrono::DateTime<Utc>,
    pub details: serde_json::Value,
}

impl StoredEventDraft {
    fn finish(&self, seq: u64) -> crate::payload::EventPayload {
        crate::payload::EventPayload {
            id: format!("{}-{seq}", self.gateway),
            kind: self.kind.clone(),
            gateway: self.gateway.clone(),
            asset: self.asset.clone(),
            severity: self.severity.clone(),
            ts: crate::payload::rfc3339(self.ts),
            details: self.details.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::payload::WireSample;

    fn batch(device: &str, n: usize) -> StoredBatch {
        StoredBatch {
            device: device.into(),
            samples: (0..n)
                .map(|i| WireSample { tag: format!("t{i}"), v: Some(edge_drivers::Value::Int(i as i64)), q: "good".into(), ts: "2026-01-01T00:00:00.000Z".into(), server_ts: None, reason: None })
                .collect(),
        }
    }

    #[tokio::test]
    async fn batch_seq_continues_after_reopen_even_when_everything_was_acked() {
        // Given an outbox with three batches, all acknowledged
        let dir = tempfile::tempdir().unwrap();
        {
            let outbox = Outbox::open(dir.path()).unwrap();
            outbox.append(&[batch("a", 1), batch("a", 1), batch("b", 2)], &[]).await.unwrap();
            for (seq, _) in outbox.telemetry_from(0, 10) {
                outbox.ack_telemetry(seq).unwrap();
            }
            outbox.flush().await.unwrap();
        }
        // When it is reopened and another batch is stored
        let outbox = Outbox::open(dir.path()).unwrap();
        outbox.append(&[batch("a", 1)], &[]).await.unwrap();
        // Then the new batch gets number 4, not 1
        let left: Vec<u64> = outbox.telemetry_from(0, 10).into_iter().map(|(s, _)| s).collect();
        assert_eq!(left, vec![4]);
    }

    #[tokio::test]
    async fn unacknowledged_batches_are_still_there_after_reopen_in_order() {
        let dir = tempfile::tempdir().unwrap();
        {
            let outbox = Outbox::open(dir.path()).unwrap();
            outbox.append(&[batch("a", 1), batch("b", 2), batch("a", 3)], &[]).await.unwrap();
            outbox.ack_telemetry(2).unwrap();
        }
        let outbox = Outbox::open(dir.path()).unwrap();
        let left: Vec<(u64, String, usize)> =
            outbox.telemetry_from(0, 10).into_iter().map(|(s, b)| (s, b.device, b.samples.len())).collect();
        assert_eq!(left, vec![(1, "a".to_string(), 1), (3, "a".to_string(), 3)]);
    }

    #[tokio::test]
    async fn a_corrupt_record_is_skipped_counted_and_removed() {
        // Given two good batches and one whose bytes were damaged on disk
        let dir = tempfile::tempdir().unwrap();
        let outbox = Outbox::open(dir.path()).unwrap();
        outbox.append(&[batch("a", 1), batch("a", 2), batch("a", 3)], &[]).await.unwrap();
        outbox.telemetry.insert(key(2), b"\x00\x00\x00\x00garbage".to_vec()).unwrap();
        // When the outbox is read
        let seqs: Vec<u64> = outbox.telemetry_from(0, 10).into_iter().map(|(s, _)| s).collect();
        // Then the damaged one is skipped, counted and gone
        assert_eq!(seqs, vec![1, 3]);
        assert_eq!(outbox.counters.corrupt_records.load(Ordering::Relaxed), 1);
        assert_eq!(outbox.pending_batches(), 2);
    }

    #[tokio::test]
    async fn an_unreadable_store_is_moved_aside_and_a_fresh_one_opens() {
        // Given a data dir whose outbox is not a sled database at all
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("outbox")).unwrap();
        std::fs::write(dir.path().join("outbox").join("conf"), b"\xff\xfe not a sled config").unwrap();
        // When the outbox is opened
        let outbox = Outbox::open(dir.path()).unwrap();
        // Then it works, and the old one is kept for inspection
        outbox.append(&[batch("a", 1)], &[]).await.unwrap();
        let aside = outbox.moved_aside.clone().expect("moved aside");
        assert!(aside.exists(), "{aside:?}");
        // and numbering jumps far above anything the old store can have handed out
        let (seq, _) = outbox.telemetry_from(0, 1)[0].clone();
        assert!(seq > 1_600_000_000_000, "batch_seq after a reset: {seq}");
    }

    #[tokio::test]
    async fn a_store_locked_by_another_instance_is_refused_not_moved_aside() {
        // Given an outbox held open by another instance
        let dir = tempfile::tempdir().unwrap();
        let held = Outbox::open(dir.path()).unwrap();
        held.append(&[batch("a", 1)], &[]).await.unwrap();
        // When a second instance opens the same directory
        let second = Outbox::open(dir.path());
        // Then it is refused with a clear error, and the data stays where it is
        assert!(matches!(second, Err(StoreError::Locked { .. })), "{:?}", second.err());
        drop(held);
        let reopened = Outbox::open(dir.path()).unwrap();
        assert!(reopened.moved_aside.is_none());
        assert_eq!(reopened.pending_batches(), 1);
    }

    #[tokio::test]
    async fn events_get_ids_that_are_unique_across_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let draft = StoredEventDraft {
            gateway: "gw".into(),
            kind: "device_lost".into(),
            asset: "plc".into(),
            severity: "warning".into(),
            ts: Utc::now(),
            details: serde_json::json!({}),
        };
        {
            let outbox = Outbox::open(dir.path()).unwrap();
            outbox.append(&[], &[draft.clone()]).await.unwrap();
            outbox.ack_event(1).unwrap();
        }
        let outbox = Outbox::open(dir.path()).unwrap();
        outbox.append(&[], &[draft]).await.unwrap();
        let ids: Vec<String> = outbox.events_from(0, 10).into_iter().map(|(_, e)| e.0.id).collect();
        assert_eq!(ids, vec!["gw-2".to_string()]);
    }
}
