//! The store writer: the one task that turns device reports into outbox batches.
//!
//! Samples are gathered per device and written as one batch per device every
//! `store.flush_interval` (or sooner when a device reaches `max_batch_samples`), then
//! flushed. That interval is the durability window. Connection changes become events.
//! When every report sender is gone (shutdown), whatever is gathered is written and the
//! task ends.
//!
//! When a write fails (a full disk), the store is unwritable until it has been reopened
//! (`reopen.rs`): the writer keeps gathering in memory within a bound, tries a reopen with
//! back-off on a blocking thread, and writes what it holds once that succeeds. Every
//! sample dropped meanwhile (past the memory bound, or still held at shutdown) is counted
//! and reported in the next `buffer_overflow` event.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use edge_drivers::backoff::Backoff;
use edge_drivers::{DeviceReport, ReportKind};
use tokio::sync::{mpsc, Notify};
use tokio::time::MissedTickBehavior;
use tracing::{error, info, warn};

use super::config::StoreSettings;
use super::damage::StoreReset;
use super::outbox::{Outbox, StoreError, StoredEventDraft};
use super::record::StoredBatch;
use super::retention::Dropped;
use crate::events::{BufferOverflow, DeviceConnected, DeviceLost, Event, StoreResetReason};
use crate::live::Live;
use crate::payload::WireSample;

pub struct Writer {
    pub outbox: Outbox,
    pub gateway: String,
    pub config: StoreSettings,
    pub live: Live,
    /// Woken after every successful write, so the uplink publishes without polling.
    pub stored: Arc<Notify>,
    /// Beaten on every turn of the loop, for the systemd watchdog.
    pub heartbeat: edge_drivers::heartbeat::Heartbeat,
}

#[derive(Default)]
struct Gathered {
    batches: BTreeMap<String, Vec<WireSample>>,
    events: Vec<StoredEventDraft>,
    /// Rough size of what is gathered, for `store.flush_bytes`.
    bytes: u64,
}

/// How often a `buffer_overflow` event may be raised while the store stays full.
const OVERFLOW_EVENT_EVERY: Duration = Duration::from_secs(60);

/// Drops not yet reported in a `buffer_overflow` event, and when the last one was raised.
#[derive(Default)]
struct Overflow {
    pending: Dropped,
    /// Gathered samples dropped before they could be written (store unwritable).
    unwritten: u64,
    last: Option<Instant>,
}

impl Overflow {
    fn add(&mut self, d: Dropped) {
        self.pending.batches += d.batches;
        self.pending.samples += d.samples;
        self.pending.events += d.events;
        self.pending.too_old += d.too_old;
    }
}

/// A compaction running on a blocking thread. The writer does not wait for it: it keeps
/// taking reports (so drivers are never held up by it) and gathers them in memory, written
/// once the compaction is over.
type Compaction = Option<tokio::task::JoinHandle<()>>;

/// While the store cannot be written, samples kept in memory per device, in batches' worth.
const BATCHES_KEPT_WHEN_UNWRITABLE: usize = 10;

/// Back-off between reopens of an unwritable store: the first soon (a disk freed by an
/// operator), then up to half a minute apart (each try writes a small probe file).
const REOPEN_BACKOFF: (Duration, Duration) =
    if cfg!(test) { (Duration::from_millis(10), Duration::from_millis(50)) } else { (Duration::from_millis(500), Duration::from_secs(30)) };

/// At shutdown, how many times an unwritable store is reopened and written before what is
/// still gathered is given up (counted). The agent's `shutdown_timeout` ends it sooner.
const SHUTDOWN_ATTEMPTS: u32 = 5;

/// While the store is unwritable: the reopen running on a blocking thread, if any, and
/// when to try the next one.
struct Recovery {
    running: Option<tokio::task::JoinHandle<Result<Option<std::path::PathBuf>, StoreError>>>,
    /// Set when a reopen found the database unreadable and moved it here: a `store_reset`
    /// event is due.
    reset: Option<std::path::PathBuf>,
    next_try: Option<Instant>,
    backoff: Backoff,
    /// At shutdown: wait for a reopen to finish rather than gather meanwhile.
    wait: bool,
}

impl Default for Recovery {
    fn default() -> Self {
        Self { running: None, reset: None, next_try: None, backoff: Backoff::new(REOPEN_BACKOFF.0, REOPEN_BACKOFF.1), wait: false }
    }
}

/// What the writer holds and has not written. Whatever is still in it when the writer ends
/// (shutdown with an unwritable store, or the task aborted at `shutdown_timeout`) is
/// counted as dropped, logged and shown, so no path loses samples silently.
struct Held {
    gathered: Gathered,
    outbox: Outbox,
    live: Live,
}

impl Drop for Held {
    fn drop(&mut self) {
        let samples: u64 = self.gathered.batches.values().map(|s| s.len() as u64).sum();
        let events = self.gathered.events.len() as u64;
        if samples == 0 && events == 0 {
            return;
        }
        let c = self.outbox.counters();
        c.samples_dropped.fetch_add(samples, Ordering::Relaxed);
        c.samples_dropped_shutdown.fetch_add(samples, Ordering::Relaxed);
        c.events_dropped.fetch_add(events, Ordering::Relaxed);
        error!(samples, events, "the store could not be written before the writer stopped: samples and events dropped");
        self.live.update(|s| {
            s.store.samples_dropped = c.samples_dropped.load(Ordering::Relaxed);
            s.store.samples_dropped_shutdown = c.samples_dropped_shutdown.load(Ordering::Relaxed);
            s.store.events_dropped = c.events_dropped.load(Ordering::Relaxed);
        });
    }
}
/// While a compaction runs, samples kept in memory per device, in batches' worth: a
/// compaction of a full store on an SD card may take a minute (see BENCHMARKS.md).
const BATCHES_KEPT_WHILE_COMPACTING: usize = 100;

/// Approximate JSON size of one sample in a stored batch.
fn sample_bytes(s: &WireSample) -> u64 {
    (s.tag.len() + s.reason.as_ref().map_or(0, String::len) + 64) as u64
}

impl Gathered {
    fn is_empty(&self) -> bool {
        self.batches.is_empty() && self.events.is_empty()
    }
}

impl Writer {
    /// Runs until `reports` is closed and drained.
    pub async fn run(self, mut reports: mpsc::Receiver<DeviceReport>) {
        let mut held = Held { gathered: Gathered::default(), outbox: self.outbox.clone(), live: self.live.clone() };
        let gathered = &mut held.gathered;
        let mut overflow = Overflow::default();
        let mut compaction: Compaction = None;
        let mut recovery = Recovery::default();
        let mut ticker = tokio::time::interval(self.config.flush_interval);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        self.outbox.measure_disk_bytes().await;
        self.publish_state();
        loop {
            self.heartbeat.beat();
            tokio::select! {
                report = reports.recv() => match report {
                    Some(report) => {
                        let full = self.take(report, gathered);
                        if full {
                            self.write(gathered, &mut overflow, &mut compaction, &mut recovery).await;
                        }
                    }
                    None => break,
                },
                _ = ticker.tick() => self.write(gathered, &mut overflow, &mut compaction, &mut recovery).await,
            }
        }
        // Shutdown: let a running compaction finish, then write what is left, reopening an
        // unwritable store a few times (what is still held after that is counted as
        // dropped when `held` goes, as it is if the agent aborts this at its deadline).
        if let Some(running) = compaction.take() {
            if let Err(e) = running.await {
                error!(error = %e, "the store compaction task failed");
            }
            self.publish_state();
        }
        recovery.wait = true;
        for attempt in 0..SHUTDOWN_ATTEMPTS {
            if gathered.is_empty() {
                break;
            }
            if attempt > 0 {
                tokio::time::sleep(REOPEN_BACKOFF.0 * attempt).await;
            }
            recovery.next_try = None;
            self.write(gathered, &mut overflow, &mut compaction, &mut recovery).await;
        }
        drop(held);
        self.publish_state();
        info!("store writer finished");
    }

    /// Files one report; returns true when a device's batch is full.
    fn take(&self, report: DeviceReport, gathered: &mut Gathered) -> bool {
        let DeviceReport { device, kind } = report;
        match kind {
            ReportKind::Samples(samples) => {
                self.live.record_samples(&device, &samples);
                let batch = gathered.batches.entry(device).or_default();
                for s in &samples {
                    let wire = WireSample::from(s);
                    gathered.bytes += sample_bytes(&wire);
                    batch.push(wire);
                }
                batch.len() >= self.config.max_batch_samples || gathered.bytes >= self.config.flush_bytes
            }
            ReportKind::Connected => {
                self.live.record_connection(&device, true, None);
                gathered.events.push(self.event(&device, Event::DeviceConnected(DeviceConnected {})));
                false
            }
            ReportKind::Stats(stats) => {
                self.live.record_stats(&device, stats);
                false
            }
            ReportKind::Disconnected(error) => {
                // The operator's sentence, on the status page and in the event.
                let reason = error.to_string();
                self.live.record_connection(&device, false, Some(reason.clone()));
                gathered.events.push(self.event(&device, Event::DeviceLost(DeviceLost { reason })));
                false
            }
        }
    }

    fn event(&self, asset: &str, event: Event) -> StoredEventDraft {
        StoredEventDraft::now(self.gateway.as_str(), asset, event)
    }

    async fn write(&self, gathered: &mut Gathered, overflow: &mut Overflow, compaction: &mut Compaction, recovery: &mut Recovery) {
        if gathered.is_empty() && self.outbox.is_writable() {
            return;
        }
        if let Some(running) = compaction.take() {
            if !running.is_finished() {
                // Gathered meanwhile, written once it is over (memory bounded, drops counted).
                *compaction = Some(running);
                overflow.unwritten += self.bound_memory(gathered, BATCHES_KEPT_WHILE_COMPACTING, "store busy with a compaction");
                return;
            }
            if let Err(e) = running.await {
                error!(error = %e, "the store compaction task failed");
            }
        }
        if !self.recover(recovery).await {
            overflow.unwritten += self.bound_memory(gathered, BATCHES_KEPT_WHEN_UNWRITABLE, "store unwritable");
            self.publish_state();
            return;
        }
        if let Some(aside) = recovery.reset.take() {
            // Raised and counted as a reset found at start; what the unreadable store held
            // cannot be counted, so the loss fields stay unknown.
            self.outbox.counters().store_resets.fetch_add(1, Ordering::Relaxed);
            let reset = StoreReset {
                reason: StoreResetReason::Unreadable,
                moved_aside: Some(aside),
                batches_possibly_lost: None,
                events_possibly_lost: None,
                lost_batch_seqs: None,
                next_batch_seq: self.outbox.next_batch_seq(),
                error: None,
            };
            gathered.events.push(self.event(&self.gateway, reset.event()));
        }
        if gathered.is_empty() {
            self.publish_state();
            return;
        }
        let max = self.config.max_batch_samples.max(1);
        let batches: Vec<StoredBatch> = gathered
            .batches
            .iter()
            .flat_map(|(device, samples)| samples.chunks(max).map(|chunk| StoredBatch { device: device.clone(), samples: chunk.to_vec() }))
            .collect();
        match self.outbox.append(&batches, &gathered.events).await {
            Ok(()) => {
                *gathered = Gathered::default();
                self.enforce_bounds(overflow).await;
                self.stored.notify_one();
                // (sled lists its blob files to tell its size: on a blocking thread)
                let disk = self.outbox.measure_disk_bytes().await;
                self.compact_if_due(compaction, disk);
                self.publish_state();
            }
            Err(e) => {
                // Kept in memory (bounded) and written once the store has been reopened:
                // sled keeps an I/O error, so retrying on the same handle is pointless.
                self.outbox.mark_unwritable(&e);
                if let Some(suppressed) = self.outbox.shared.log_limit.allow("store write") {
                    error!(error = %e, batches = batches.len(), suppressed, "store write failed; kept in memory, the store is reopened with back-off");
                }
                self.live.update(|s| s.store.write_errors += 1);
                recovery.next_try = Some(Instant::now() + recovery.backoff.next_delay());
                overflow.unwritten += self.bound_memory(gathered, BATCHES_KEPT_WHEN_UNWRITABLE, "store unwritable");
                self.publish_state();
            }
        }
    }

    /// True when the store is writable, possibly after a reopen that finished just now.
    /// Otherwise starts a reopen on a blocking thread when the back-off allows (and at
    /// shutdown waits for it).
    async fn recover(&self, r: &mut Recovery) -> bool {
        if let Some(running) = r.running.take() {
            if !running.is_finished() && !r.wait {
                r.running = Some(running);
                return false;
            }
            let outcome = running.await.unwrap_or_else(|e| Err(StoreError::FlushTask(e.to_string())));
            match outcome {
                Ok(moved_aside) => {
                    r.backoff.reset();
                    r.next_try = None;
                    r.reset = moved_aside.or(r.reset.take());
                }
                Err(e) => {
                    let delay = r.backoff.next_delay();
                    r.next_try = Some(Instant::now() + delay);
                    if let Some(suppressed) = self.outbox.shared.log_limit.allow("store reopen") {
                        warn!(error = %e, retry_in_ms = delay.as_millis() as u64, suppressed, "the store cannot be reopened yet");
                    }
                }
            }
        }
        if self.outbox.is_writable() {
            return true;
        }
        if r.next_try.is_some_and(|at| Instant::now() < at) {
            return false;
        }
        let outbox = self.outbox.clone();
        r.running = Some(tokio::task::spawn_blocking(move || outbox.reopen()));
        if r.wait {
            return Box::pin(self.recover(r)).await;
        }
        false
    }

    /// Drops what the store bounds require and tells the ERP with a `buffer_overflow` event:
    /// one right away, then at most one a minute while the store stays full, each carrying
    /// the drops since the previous one (the counters in `/metrics` are exact at all times).
    async fn enforce_bounds(&self, overflow: &mut Overflow) {
        let max = self.config.max_bytes;
        // Dropping can remove (and decode) many records: on a blocking thread.
        let max_age = self.config.max_age;
        match self.outbox.on_blocking_thread(move |o| o.enforce_bounds(max, max_age, Utc::now())).await {
            Ok(dropped) => overflow.add(dropped),
            Err(e) => error!(error = %e, "could not enforce the store bounds"),
        }
        if (overflow.pending.is_empty() && overflow.unwritten == 0) || overflow.last.is_some_and(|t| t.elapsed() < OVERFLOW_EVENT_EVERY) {
            return;
        }
        let d = overflow.pending;
        let event = self.event(
            &self.gateway,
            Event::BufferOverflow(BufferOverflow {
                dropped_batches: d.batches,
                dropped_samples: d.samples,
                dropped_events: d.events,
                dropped_too_old: d.too_old,
                dropped_unwritten_samples: overflow.unwritten,
                max_bytes: max,
                bytes: self.outbox.bytes(),
            }),
        );
        match self.outbox.append(&[], &[event]).await {
            Ok(()) => {
                overflow.pending = Dropped::default();
                overflow.unwritten = 0;
                overflow.last = Some(Instant::now());
            }
            Err(e) => error!(error = %e, "could not store the buffer_overflow event"),
        }
    }

    /// Starts a compaction of the outbox when its directory has grown past
    /// `store.compact_above` (checked cheaply, at most every few seconds). It pauses the
    /// store and is blocking, so it runs on a blocking thread while the writer goes on
    /// gathering; the outbox logs and counts its outcome.
    fn compact_if_due(&self, compaction: &mut Compaction, disk_bytes: u64) {
        if compaction.is_some() || !self.outbox.compaction_due_at(self.config.compact_above, || disk_bytes) {
            return;
        }
        let outbox = self.outbox.clone();
        *compaction = Some(tokio::task::spawn_blocking(move || {
            let _ = outbox.compact();
        }));
    }

    /// While the store cannot be written, keep at most `batches` batches' worth of samples
    /// per device in memory, dropping (and counting) the oldest. Returns how many went.
    fn bound_memory(&self, gathered: &mut Gathered, batches: usize, why: &'static str) -> u64 {
        let cap = self.config.max_batch_samples.saturating_mul(batches);
        let mut dropped = 0u64;
        for samples in gathered.batches.values_mut() {
            if samples.len() > cap {
                let excess = samples.len() - cap;
                samples.drain(..excess);
                dropped += excess as u64;
            }
        }
        if dropped > 0 {
            let c = self.outbox.counters();
            c.samples_dropped.fetch_add(dropped, Ordering::Relaxed);
            c.samples_dropped_memory_bound.fetch_add(dropped, Ordering::Relaxed);
            if let Some(suppressed) = self.outbox.shared.log_limit.allow(why) {
                error!(dropped, suppressed, "{why}: oldest gathered samples dropped from memory");
            }
        }
        dropped
    }

    fn publish_state(&self) {
        let o = &self.outbox;
        let c = o.counters();
        let (pending_batches, pending_events, disk, next) =
            (o.pending_batches(), o.pending_events(), o.last_disk_bytes(), o.next_batch_seq());
        let (writable, deferred_acks) = (o.is_writable(), o.deferred_acks());
        self.live.update(|s| {
            s.store.pending_batches = pending_batches;
            s.store.pending_events = pending_events;
            s.store.disk_bytes = disk;
            s.store.next_batch_seq = next;
            s.store.batches_stored = c.batches_stored.load(Ordering::Relaxed);
            s.store.samples_stored = c.samples_stored.load(Ordering::Relaxed);
            s.store.batches_acked = c.batches_acked.load(Ordering::Relaxed);
            s.store.corrupt_records = c.corrupt_records.load(Ordering::Relaxed);
            (s.store.store_resets, s.store.read_panics) = (c.store_resets.load(Ordering::Relaxed), c.read_panics.load(Ordering::Relaxed));
            s.store.batches_dropped = c.batches_dropped.load(Ordering::Relaxed);
            s.store.samples_dropped = c.samples_dropped.load(Ordering::Relaxed);
            s.store.events_dropped = c.events_dropped.load(Ordering::Relaxed);
            s.store.bytes = o.bytes();
            s.store.max_bytes = self.config.max_bytes;
            s.store.compact_above = self.config.compact_above;
            s.store.compactions = c.compactions.load(Ordering::Relaxed);
            s.store.compaction_failures = c.compaction_failures.load(Ordering::Relaxed);
            s.store.last_compaction_ms = c.last_compaction_ms.load(Ordering::Relaxed);
            s.store.last_compaction_bytes_before = c.last_compaction_bytes_before.load(Ordering::Relaxed);
            s.store.last_compaction_bytes_after = c.last_compaction_bytes_after.load(Ordering::Relaxed);
            s.store.writable = writable;
            s.store.reopens = c.reopens.load(Ordering::Relaxed);
            s.store.samples_dropped_memory_bound = c.samples_dropped_memory_bound.load(Ordering::Relaxed);
            s.store.samples_dropped_shutdown = c.samples_dropped_shutdown.load(Ordering::Relaxed);
            s.store.model_events_unwritten_dropped = c.model_events_unwritten_dropped.load(Ordering::Relaxed);
            s.store.deferred_acks = deferred_acks;
        });
    }
}

#[cfg(test)]
mod tests {
    use bytesize::ByteSize;

    use super::*;
    use crate::store::test_support::{self, report, settings, wait_until};

    #[tokio::test]
    async fn the_writer_compacts_the_store_once_it_is_past_compact_above_and_shows_it_on_the_page() {
        // Given a writer whose store is to be compacted above 128 KiB
        let dir = tempfile::tempdir().unwrap();
        let outbox = Outbox::open(dir.path()).unwrap();
        let config = settings(|c| {
            c.max_bytes = ByteSize::kib(64);
            c.compact_above = Some(ByteSize::kib(128));
        });
        let live = test_support::live();
        let writer = test_support::writer(&outbox, &live, config);
        let (tx, rx) = mpsc::channel(4);
        let task = tokio::spawn(writer.run(rx));
        // When three batches' worth of samples (about 240 KB of records) are written
        tx.send(report(0, 3000)).await.unwrap();
        drop(tx);
        task.await.unwrap();
        // Then the store was compacted, keeping what eviction left, and the page shows it
        assert_eq!(outbox.counters().compactions.load(Ordering::Relaxed), 1);
        assert_eq!(outbox.pending_batches() + outbox.counters().batches_dropped.load(Ordering::Relaxed), 3);
        let shown = live.snapshot().store;
        assert_eq!((shown.compactions, shown.compaction_failures, shown.compact_above), (1, 0, 128 * 1024));
        assert!(shown.last_compaction_bytes_before > 128 * 1024, "{shown:?}");
        assert!(shown.last_compaction_bytes_after > 0, "{shown:?}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_writer_keeps_taking_reports_during_a_long_compaction_and_stores_them_after_it() {
        // Given a writer whose store is due for a compaction that will take until the test
        // lets it go (as a full store on an SD card would)
        let dir = tempfile::tempdir().unwrap();
        let outbox = Outbox::open(dir.path()).unwrap();
        let (go, wait) = std::sync::mpsc::channel();
        outbox.shared.compaction.lock().unwrap().wait_before = Some(wait);
        let config = settings(|c| {
            c.max_bytes = ByteSize::mib(1);
            c.compact_above = Some(ByteSize::kib(1100));
            c.flush_interval = Duration::from_millis(10);
        });
        let writer = test_support::writer(&outbox, &test_support::live(), config);
        let (tx, rx) = mpsc::channel(4);
        let task = tokio::spawn(writer.run(rx));
        // (samples of 20 000 distinct tags: about 1.4 MB of records, past compact_above)
        tx.send(report(0, 20_000)).await.unwrap();
        wait_until("the samples", || outbox.counters().samples_stored.load(Ordering::Relaxed) == 20_000).await;
        let stored_before = outbox.next_batch_seq();
        // When reports keep coming while the compaction runs
        for k in 0..50 {
            tokio::time::timeout(Duration::from_secs(5), tx.send(report(20_000 + k * 100, 100)))
                .await
                .expect("a driver's report was held up by the compaction")
                .unwrap();
        }
        // Then the writer took them all without writing (the compaction holds the store)
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(outbox.next_batch_seq(), stored_before, "nothing is written during the compaction");
        assert_eq!(outbox.counters().compactions.load(Ordering::Relaxed), 0);
        // And once the compaction is over, they are all stored, in order (the store's bound
        // evicts the oldest batches of the first report, not these)
        go.send(()).unwrap();
        wait_until("the samples", || outbox.counters().samples_stored.load(Ordering::Relaxed) == 25_000).await;
        assert!(outbox.counters().compactions.load(Ordering::Relaxed) >= 1);
        // (the writer ends once any further compaction is over: reads skip while one runs)
        drop(tx);
        task.await.unwrap();
        let tags: Vec<String> = outbox.telemetry_from(0, usize::MAX).into_iter().flat_map(|(_, b)| b.samples).map(|s| s.tag).collect();
        let expected: Vec<String> = (20_000..25_000).map(|i| format!("t{i}")).collect();
        assert!(
            tags.len() >= 5000,
            "{} samples held, {} batches pending, {} dropped",
            tags.len(),
            outbox.pending_batches(),
            outbox.counters().batches_dropped.load(Ordering::Relaxed)
        );
        assert_eq!(tags[tags.len() - 5000..], expected[..]);
    }
}
