//! Recovering from I/O errors (a full disk, a card that failed a write) without a restart.
//!
//! What sled 0.34.7 does after `ENOSPC`, measured on a 2 MiB tmpfs (the experiment is in
//! the notes of issue 16, and `tests/store_disk_full.rs` repeats it end to end):
//! - the first failed write or flush leaves the `Db` with that error for good: every later
//!   insert, remove and flush on the same handle fails with it, even once space is back;
//!   reads keep working. It never panicked;
//! - dropping the handle and opening the directory again works as soon as there is room
//!   (opening fails with the same error while the disk is still full);
//! - every record flushed before the error is intact after the reopen; the write that
//!   failed is absent (30 fill/free cycles on a 4 MiB tmpfs: no flushed record lost or
//!   damaged, reopen 6–33 ms);
//! - but *opening* the directory while the disk is still full can leave it unreadable:
//!   in one run of those cycles with an open tried on the full disk, the third such open
//!   left a database that every later open refused with `Corruption` ("Read corrupted data
//!   at file offset None"), with room again.
//!
//! Hence the probe below (a reopen waits until the data dir takes a write of two sled
//! segments), and if a reopen meets an unreadable database all the same, it is moved aside
//! and a fresh one started in place, as at start: a `store_reset` event (raised by the
//! writer), the numbering continuing from where it was in memory, and the records lost
//! with it counted as dropped.
//!
//! So the store recovers by a reopen: [`Outbox::reopen`] closes the database and opens it
//! again in place, behind the handles' write lock (as a compaction does). Before closing
//! the old handle it checks that the data dir takes a small write: while the disk is full
//! the broken handle stays, so the uplink can still read (and publish) the backlog; its
//! acks wait in memory (`deferred_acks`) and are applied right after the reopen.
//!
//! Records numbered by a write whose flush failed were never confirmed to their writer,
//! which keeps them in memory and writes them again under new numbers. Whether sled got
//! them to disk is unknown, so the reopen removes them: the ERP never gets the same
//! samples twice under two numbers, and a `batch_seq` it has seen is never reused (the
//! numbers skipped show as a gap, the samples arrive in later batches).

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::Instant;

use tracing::{error, info, warn};

use super::compaction::{open_waiting_for_lock, remove_leftovers, restore_missing_outbox, OUTBOX};
use super::outbox::{
    count, is_unreadable, key, lock, Handles, Numbers, Outbox, StoreError, TreeId, NEXT_BATCH_SEQ, NEXT_EVENT_SEQ, NEXT_REPLY_SEQ,
};

/// The write the data dir must take before the broken database is closed: two of sled's
/// 512 KiB segments, so that the open does not meet a full disk (see the module docs).
const PROBE_BYTES: usize = 1024 * 1024;
const PROBE_FILE: &str = "outbox.write-probe";

impl Outbox {
    /// False from a failed write, flush or delete until a [`Outbox::reopen`] succeeds.
    pub fn is_writable(&self) -> bool {
        !self.shared.unwritable.load(Ordering::SeqCst)
    }

    pub(super) fn mark_unwritable(&self, why: &StoreError) {
        if !self.shared.unwritable.swap(true, Ordering::SeqCst) {
            warn!(error = %why, "the store cannot be written; it is reopened once the disk takes writes again");
        }
    }

    /// Closes the database and opens it again in place, then removes what was never
    /// confirmed, recounts the records, applies the deferred acks and flushes. Blocking
    /// (call it from a blocking thread). On failure the store stays unwritable: with the
    /// old handle if the disk does not take a write yet, closed if the open itself failed;
    /// the caller tries again later.
    ///
    /// Returns where an unreadable database was moved (a fresh one replaced it): the caller
    /// raises `store_reset`.
    pub fn reopen(&self) -> Result<Option<PathBuf>, StoreError> {
        #[cfg(test)]
        self.shared.disk.fail_reopen()?;
        probe_write(&self.shared.dir)?;
        // (Appends to an unwritable store fail before they number anything, so these are
        // the numbers handed out.)
        let numbers = self.next_numbers();
        let started = Instant::now();
        let mut guard = self.shared.handles.write().unwrap_or_else(|p| p.into_inner());
        // sled writes by path: the old instance must be gone before the new one opens.
        *guard = None;
        restore_missing_outbox(&self.shared.dir)?;
        let path = self.shared.dir.join(OUTBOX);
        #[cfg(test)]
        let opened =
            if self.shared.disk.take_corrupt() { Err(sled::Error::Corruption { at: None, bt: () }) } else { open_waiting_for_lock(&path) };
        #[cfg(not(test))]
        let opened = open_waiting_for_lock(&path);
        let (h, moved_aside) = match opened {
            Ok(h) => (h, None),
            Err(e) if is_unreadable(&e) => self.replace_unreadable_in_place(&path, &e, numbers)?,
            Err(e) => return Err(e.into()),
        };
        let discarded = self.discard_unconfirmed(&h)?;
        self.recount(&h)?;
        self.apply_deferred_acks(&h)?;
        h.db.flush()?;
        *guard = Some(h);
        drop(guard);
        remove_leftovers(&self.shared.dir);
        *lock(&self.shared.unconfirmed_below) = None;
        self.counters().reopens.fetch_add(1, Ordering::Relaxed);
        self.shared.unwritable.store(false, Ordering::SeqCst);
        info!(discarded, paused_ms = started.elapsed().as_millis() as u64, records_bytes = self.bytes(), "store reopened; writes resume");
        Ok(moved_aside)
    }

    /// The reopened database is unreadable: it goes to `outbox.unreadable-{time}` and a
    /// fresh one takes its place, numbered on from the numbers in memory (never reused).
    /// What it held is lost: counted as dropped, and the acks waiting for it are moot.
    fn replace_unreadable_in_place(
        &self,
        path: &Path,
        why: &sled::Error,
        numbers: Numbers,
    ) -> Result<(Handles, Option<PathBuf>), StoreError> {
        let aside = self.shared.dir.join(format!("outbox.unreadable-{}", chrono::Utc::now().format("%Y%m%dT%H%M%SZ")));
        error!(path = %path.display(), error = %why, aside = %aside.display(), "the store cannot be read after a reopen; moving it aside and starting a fresh one");
        std::fs::rename(path, &aside).map_err(|source| StoreError::MoveAside { path: path.to_path_buf(), source })?;
        let h = open_waiting_for_lock(path)?;
        h.meta.insert(NEXT_BATCH_SEQ, &key(numbers.batch))?;
        h.meta.insert(NEXT_EVENT_SEQ, &key(numbers.event))?;
        h.meta.insert(NEXT_REPLY_SEQ, &key(numbers.reply))?;
        // Counted as held: the durable records, and those of the failed write (which its
        // writer still holds and writes again, so they are not lost).
        let durable = self.durable_below();
        let below = lock(&self.shared.unconfirmed_below).unwrap_or(durable);
        let lost_batches = self.pending_batches().saturating_sub(below.batch.saturating_sub(durable.batch));
        let lost_events = self.pending_events().saturating_sub(below.event.saturating_sub(durable.event));
        let c = self.counters();
        c.batches_dropped.fetch_add(lost_batches, Ordering::Relaxed);
        c.events_dropped.fetch_add(lost_events, Ordering::Relaxed);
        error!(lost_batches, lost_events, "the records of the unreadable store are lost (kept aside for inspection)");
        self.clear_deferred_acks();
        Ok((h, Some(aside)))
    }

    /// Removes the records numbered between the durable marks and the numbers handed out
    /// when the flush failed. Returns how many were there.
    fn discard_unconfirmed(&self, h: &Handles) -> Result<u64, StoreError> {
        let Some(below) = *lock(&self.shared.unconfirmed_below) else { return Ok(0) };
        let durable = self.durable_below();
        let mut discarded = 0u64;
        for (id, from, to) in [
            (TreeId::Telemetry, durable.batch, below.batch),
            (TreeId::Events, durable.event, below.event),
            (TreeId::Replies, durable.reply, below.reply),
        ] {
            for seq in from..to {
                if h.tree(id).remove(key(seq))?.is_some() {
                    discarded += 1;
                }
            }
        }
        Ok(discarded)
    }

    /// Byte and record counts from what the reopened database holds: a failed write may
    /// have counted records that are not there.
    fn recount(&self, h: &Handles) -> Result<(), StoreError> {
        self.set_held(count(h)?);
        Ok(())
    }
}

/// Writes, syncs and removes a small file in `dir`: fails while the disk is full.
fn probe_write(dir: &Path) -> Result<(), StoreError> {
    let path = dir.join(PROBE_FILE);
    let result = std::fs::File::create(&path).and_then(|mut f| {
        f.write_all(&[0u8; PROBE_BYTES])?;
        f.sync_all()
    });
    let removed = std::fs::remove_file(&path);
    result.and(removed).map_err(|source| StoreError::Io { path, source })
}

/// Test seam: a disk that fills up and frees again, failing as sled does (every write
/// after the first failure fails until a reopen, and a reopen fails while it is full).
#[cfg(test)]
#[derive(Debug, Default)]
pub(crate) struct TestDisk(std::sync::Mutex<TestDiskState>);

#[cfg(test)]
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct TestDiskState {
    pub full: bool,
    /// The next reopen finds the database unreadable (as after an open on a full disk).
    pub corrupt_on_reopen: bool,
    /// A write failed and no reopen followed yet.
    pub broken: bool,
    /// Every write, delete and flush takes this long first (a slow SD card).
    pub delay: std::time::Duration,
}

#[cfg(test)]
impl TestDisk {
    pub(crate) fn set_full(&self, full: bool) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).full = full;
    }

    pub(crate) fn state(&self) -> TestDiskState {
        *self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn set_state(&self, state: TestDiskState) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = state;
    }

    pub(crate) fn set_delay(&self, delay: std::time::Duration) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).delay = delay;
    }

    pub(super) fn fail_write(&self) -> Result<(), StoreError> {
        let delay = self.0.lock().unwrap_or_else(|p| p.into_inner()).delay;
        if !delay.is_zero() {
            std::thread::sleep(delay);
        }
        let mut s = self.0.lock().unwrap_or_else(|p| p.into_inner());
        s.broken |= s.full;
        if s.broken {
            return Err(enospc());
        }
        Ok(())
    }

    pub(crate) fn corrupt_next_reopen(&self) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).corrupt_on_reopen = true;
    }

    pub(super) fn take_corrupt(&self) -> bool {
        std::mem::take(&mut self.0.lock().unwrap_or_else(|p| p.into_inner()).corrupt_on_reopen)
    }

    pub(super) fn fail_reopen(&self) -> Result<(), StoreError> {
        let mut s = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if s.full {
            return Err(enospc());
        }
        s.broken = false;
        Ok(())
    }
}

#[cfg(test)]
fn enospc() -> StoreError {
    StoreError::Sled(sled::Error::Io(std::io::Error::new(std::io::ErrorKind::StorageFull, "No space left on device (test)")))
}
