//! Keeping the outbox within `store.max_bytes` and `store.max_age`.
//!
//! When the bound is exceeded the oldest telemetry goes first; events go only when no
//! telemetry is left, because they are few and carry what the ERP must act on. Every
//! drop is counted, logged, and reported by the caller as a `buffer_overflow` event.

use std::sync::atomic::Ordering;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tracing::warn;

use super::outbox::{seq_of, Outbox, StoreError, TreeId};
use super::record::{self, StoredBatch};

/// What one enforcement pass dropped.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Dropped {
    pub batches: u64,
    pub samples: u64,
    pub events: u64,
    /// Of the batches, how many went because they were older than `max_age`.
    pub too_old: u64,
}

impl Dropped {
    pub fn is_empty(&self) -> bool {
        self.batches == 0 && self.events == 0
    }
}

impl Outbox {
    /// Drops telemetry older than `max_age`, then the oldest telemetry (then events)
    /// until the records take at most `max_bytes`.
    pub fn enforce_bounds(&self, max_bytes: u64, max_age: Option<Duration>, now: DateTime<Utc>) -> Result<Dropped, StoreError> {
        let mut dropped = Dropped::default();
        if let Some(age) = max_age {
            let cutoff = now - chrono::Duration::from_std(age).unwrap_or(chrono::Duration::MAX);
            while let Some((k, v)) = self.first(TreeId::Telemetry)? {
                let Some(seq) = seq_of(&k) else { break };
                let sampled = record::decode::<StoredBatch>(&v).ok().and_then(|b| oldest_sample(&b));
                match sampled {
                    Some(ts) if ts < cutoff => {
                        self.drop_batch(seq, &mut dropped)?;
                        dropped.too_old += 1;
                    }
                    _ => break,
                }
            }
        }
        while self.bytes() > max_bytes {
            if let Some((k, _)) = self.first(TreeId::Telemetry)? {
                let Some(seq) = seq_of(&k) else { break };
                self.drop_batch(seq, &mut dropped)?;
            } else if let Some((k, _)) = self.first(TreeId::Events)? {
                let Some(seq) = seq_of(&k) else { break };
                if self.remove(TreeId::Events, seq)?.is_some() {
                    dropped.events += 1;
                }
            } else {
                break; // only replies left: they are tiny and answer the ERP
            }
        }
        if !dropped.is_empty() {
            let c = self.counters();
            c.batches_dropped.fetch_add(dropped.batches, Ordering::Relaxed);
            c.samples_dropped.fetch_add(dropped.samples, Ordering::Relaxed);
            c.events_dropped.fetch_add(dropped.events, Ordering::Relaxed);
            warn!(
                batches = dropped.batches,
                samples = dropped.samples,
                events = dropped.events,
                too_old = dropped.too_old,
                bytes = self.bytes(),
                max_bytes,
                "store full: oldest data dropped"
            );
        }
        Ok(dropped)
    }

    /// The oldest record of a tree (the read lock is released on return).
    fn first(&self, id: TreeId) -> Result<Option<(sled::IVec, sled::IVec)>, StoreError> {
        Ok(self.handles()?.tree(id).first()?)
    }

    fn drop_batch(&self, seq: u64, dropped: &mut Dropped) -> Result<(), StoreError> {
        if let Some(v) = self.remove(TreeId::Telemetry, seq)? {
            dropped.batches += 1;
            // A record that does not decode still counts as a dropped batch, with 0 samples.
            dropped.samples += record::decode::<StoredBatch>(&v).map_or(0, |b| b.samples.len() as u64);
        }
        Ok(())
    }
}

fn oldest_sample(batch: &StoredBatch) -> Option<DateTime<Utc>> {
    batch.samples.iter().filter_map(|s| s.ts.parse::<DateTime<Utc>>().ok()).min()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::payload::WireSample;
    use crate::store::StoredEventDraft;

    fn batch(ts: &str, n: usize) -> StoredBatch {
        StoredBatch {
            device: "plc".into(),
            samples: (0..n)
                .map(|i| WireSample {
                    tag: format!("t{i}"),
                    v: Some(edge_drivers::Value::Int(1)),
                    q: "good".into(),
                    ts: ts.into(),
                    server_ts: None,
                    reason: None,
                })
                .collect(),
        }
    }

    fn event() -> StoredEventDraft {
        StoredEventDraft::now("gw", "plc", crate::events::Event::DeviceLost(crate::events::DeviceLost { reason: "no answer".into() }))
    }

    fn seqs(o: &Outbox) -> Vec<u64> {
        o.telemetry_from(0, 1000).into_iter().map(|(s, _)| s).collect()
    }

    #[tokio::test]
    async fn a_full_store_drops_the_oldest_telemetry_and_keeps_events() {
        // Given ten batches and two events
        let dir = tempfile::tempdir().unwrap();
        let o = Outbox::open(dir.path()).unwrap();
        let now = Utc::now();
        let ts = crate::payload::rfc3339(now);
        for _ in 0..10 {
            o.append(&[batch(&ts, 5)], &[]).await.unwrap();
        }
        o.append(&[], &[event(), event()]).await.unwrap();
        let per_batch = (o.bytes() - 2 * 200) / 10; // events are well under 200 bytes
                                                    // When the bound leaves room for about half of the batches
        let max = o.bytes() - 5 * per_batch;
        let dropped = o.enforce_bounds(max, None, now).unwrap();
        // Then the oldest batches went, the newest stayed in order, the events stayed
        assert!(o.bytes() <= max);
        assert!(dropped.batches >= 5 && dropped.batches <= 6, "{dropped:?}");
        assert_eq!(dropped.samples, dropped.batches * 5);
        assert_eq!(dropped.events, 0);
        let left = seqs(&o);
        assert_eq!(left, ((dropped.batches + 1)..=10).collect::<Vec<u64>>());
        assert_eq!(o.pending_events(), 2);
        assert_eq!(o.counters().batches_dropped.load(Ordering::Relaxed), dropped.batches);
    }

    #[tokio::test]
    async fn events_go_only_when_no_telemetry_is_left() {
        let dir = tempfile::tempdir().unwrap();
        let o = Outbox::open(dir.path()).unwrap();
        o.append(&[batch("2026-01-01T00:00:00.000Z", 1)], &[event(), event(), event()]).await.unwrap();
        let dropped = o.enforce_bounds(1, None, Utc::now()).unwrap();
        assert_eq!((dropped.batches, dropped.events), (1, 3));
        assert_eq!(o.bytes(), 0);
    }

    #[tokio::test]
    async fn telemetry_older_than_max_age_is_dropped_and_newer_kept() {
        let dir = tempfile::tempdir().unwrap();
        let o = Outbox::open(dir.path()).unwrap();
        let now: DateTime<Utc> = "2026-06-01T12:00:00Z".parse().unwrap();
        o.append(&[batch("2026-06-01T09:00:00.000Z", 2), batch("2026-06-01T10:30:00.000Z", 2), batch("2026-06-01T11:59:00.000Z", 2)], &[])
            .await
            .unwrap();
        let dropped = o.enforce_bounds(u64::MAX, Some(Duration::from_secs(2 * 3600)), now).unwrap();
        assert_eq!((dropped.batches, dropped.too_old, dropped.samples), (1, 1, 2));
        assert_eq!(seqs(&o), vec![2, 3]);
    }

    #[tokio::test]
    async fn the_byte_count_survives_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let before = {
            let o = Outbox::open(dir.path()).unwrap();
            o.append(&[batch("2026-01-01T00:00:00.000Z", 3), batch("2026-01-01T00:00:00.000Z", 4)], &[event()]).await.unwrap();
            o.ack_telemetry(1).unwrap();
            o.flush().await.unwrap();
            o.bytes()
        };
        let o = Outbox::open(dir.path()).unwrap();
        assert!(before > 0);
        assert_eq!(o.bytes(), before);
    }
}
