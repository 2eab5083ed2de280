//! Compaction of the outbox. sled 0.34 does not give back the space of deleted records under
//! write/ack/evict churn: a 32 MiB store grew to 107 MiB on disk after 20 GiB written, and
//! kept growing (BENCHMARKS.md, "Long churn run"). When the outbox directory grows past
//! `store.compact_above`, every tree is rewritten, key for key, into a fresh sled database
//! that takes the old one's place. Sequence numbers live in the `meta` tree and in memory,
//! and neither changes, so numbering continues as if nothing happened.
//!
//! The whole compaction runs under the write lock of the outbox's handles (the pause is
//! measured in BENCHMARKS.md). The store writer runs it, so its appends and evictions wait
//! for it. The uplink does not wait, since that would hold its runtime worker and the MQTT
//! keep-alive for the whole pause: its reads come back empty meanwhile (it reads again on
//! the next stored batch or PUBACK), and its acks are kept in memory and applied as soon as
//! the new database is open. A command reply waits without holding a worker.
//!
//! On disk, under the data dir:
//! 1. every tree is copied into `outbox.compacting/`, which is flushed and closed;
//! 2. `outbox.compacting` is renamed `outbox.compacted` (the copy is complete);
//! 3. the live database is closed (sled writes blob files by path, so it must not be open
//!    once directories move), `outbox` is renamed `outbox.old`, `outbox.compacted` is
//!    renamed `outbox`;
//! 4. `outbox` is opened and `outbox.old` removed.
//!
//! The data dir is fsynced after every rename. What a power cut leaves, and what
//! [`Outbox::open`] does with it:
//!
//! | found beside the data | cut during | done at open |
//! |---|---|---|
//! | `outbox`, `outbox.compacting` | step 1 | the partial copy is removed |
//! | `outbox`, `outbox.compacted` | between 2 and 3 | the copy is removed (`outbox` is current) |
//! | `outbox.old`, `outbox.compacted` | between the renames of 3 | the copy becomes `outbox`, the old one is removed |
//! | `outbox`, `outbox.old` | step 4 | the old one is removed |
//!
//! While `outbox` exists it is always the current store: the copy only replaces it by the
//! rename that makes `outbox.compacted` disappear.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tracing::{error, info, warn};

use super::outbox::{lock, open_when_unlocked, Handles, OpenFailed, Outbox, StoreError, LOCK_WAIT};

pub(super) const OUTBOX: &str = "outbox";
pub(super) const COMPACTING: &str = "outbox.compacting";
pub(super) const COMPACTED: &str = "outbox.compacted";
pub(super) const OLD: &str = "outbox.old";

/// How often [`Outbox::compaction_due`] looks at the size of the directory.
const CHECK_EVERY: Duration = if cfg!(test) { Duration::ZERO } else { Duration::from_secs(5) };

/// After a failed compaction (disk full while copying, ...), how long before the next try:
/// each try pauses the store for a full copy.
const RETRY_AFTER_FAILURE: Duration = if cfg!(test) { Duration::ZERO } else { Duration::from_secs(600) };

/// When to compact next (shared by the clones of an outbox).
#[derive(Debug, Default)]
pub struct Trigger {
    next_check: Option<Instant>,
    /// Size on disk right after the last compaction (0 before the first).
    baseline: u64,
    /// Test hook: the copy fails after this many records (a disk that fills up).
    #[cfg(test)]
    pub(super) fail_copy_after: Option<usize>,
    /// Test hook: the next compaction waits for a message here before it takes the store
    /// (a compaction that takes long, as on an SD card).
    #[cfg(test)]
    pub(super) wait_before: Option<std::sync::mpsc::Receiver<()>>,
    /// Test hook: the copy is damaged once in place, so that it does not open.
    #[cfg(test)]
    pub(super) break_copy: bool,
}

/// Whether a store of `size` bytes on disk should be compacted: above the configured bound,
/// and at least a quarter larger than right after the last compaction, so that a store
/// whose compacted size is already above the bound is not rewritten over and over. (A
/// full store compacts to about 1.35–1.6 × `max_bytes`, so with the default bound of 2 ×
/// the bound decides; a factor of 2 here would override any bound below about 3 ×.)
pub(super) fn due(size: u64, above: u64, baseline: u64) -> bool {
    size > above && size > baseline.saturating_add(baseline / 4)
}

/// What a completed compaction did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Compacted {
    /// sled's size on disk before and after, in bytes.
    pub before: u64,
    pub after: u64,
    /// How long the store was paused (held under the write lock).
    pub paused: Duration,
}

impl Outbox {
    /// Cheap check (at most every few seconds, otherwise `false`): has the outbox grown past
    /// `above` bytes on disk, and by a quarter since the last compaction? Also true
    /// when an earlier compaction left the store closed, so that reopening it is retried.
    pub fn compaction_due(&self, above: u64) -> bool {
        self.compaction_due_at(above, || self.disk_bytes())
    }

    /// [`Outbox::compaction_due`] with the size on disk from `size` (the writer measures
    /// it on a blocking thread).
    pub(super) fn compaction_due_at(&self, above: u64, size: impl FnOnce() -> u64) -> bool {
        let mut trigger = lock(&self.shared.compaction);
        let now = Instant::now();
        if trigger.next_check.is_some_and(|at| now < at) {
            return false;
        }
        trigger.next_check = Some(now + CHECK_EVERY);
        let baseline = trigger.baseline;
        drop(trigger);
        // (Never waits: a compaction or a reopen holding the store is not a reason to.)
        match self.try_handles() {
            None => false,
            Some(Err(_closed)) => true,
            Some(Ok(h)) => {
                drop(h);
                due(size(), above, baseline)
            }
        }
    }

    /// Runs [`Outbox::compact`] if [`Outbox::compaction_due`]; blocking (call it from a
    /// blocking thread in async code).
    pub fn compact_if_due(&self, above: u64) -> Option<Result<Compacted, StoreError>> {
        self.compaction_due(above).then(|| self.compact())
    }

    /// Rewrites the outbox into a fresh sled database and switches to it (see the module
    /// docs). Blocking: holds the write lock of the handles throughout. Logs, counts and
    /// reports the outcome; on failure the agent keeps running on the old store.
    pub fn compact(&self) -> Result<Compacted, StoreError> {
        #[cfg(test)]
        {
            let wait = lock(&self.shared.compaction).wait_before.take();
            if let Some(go) = wait {
                let _ = go.recv();
            }
        }
        let started = Instant::now();
        let mut guard = self.shared.handles.write().unwrap_or_else(|p| p.into_inner());
        // A store left closed by an earlier failure is reopened first.
        let result = if guard.is_none() { self.reopen_locked(&mut guard) } else { Ok(()) }.and_then(|()| self.compact_locked(&mut guard));
        drop(guard);
        let paused = started.elapsed();
        let mut trigger = lock(&self.shared.compaction);
        let c = self.counters();
        match result {
            Ok((before, after)) => {
                trigger.baseline = after;
                self.shared.last_disk_bytes.store(after, Ordering::Relaxed);
                c.compactions.fetch_add(1, Ordering::Relaxed);
                c.last_compaction_ms.store(u64::try_from(paused.as_millis()).unwrap_or(u64::MAX), Ordering::Relaxed);
                c.last_compaction_bytes_before.store(before, Ordering::Relaxed);
                c.last_compaction_bytes_after.store(after, Ordering::Relaxed);
                info!(before, after, paused_ms = paused.as_millis() as u64, records_bytes = self.bytes(), "store compacted");
                Ok(Compacted { before, after, paused })
            }
            Err(e) => {
                trigger.next_check = Some(Instant::now() + RETRY_AFTER_FAILURE);
                c.compaction_failures.fetch_add(1, Ordering::Relaxed);
                warn!(error = %e, paused_ms = paused.as_millis() as u64, "store compaction failed; carrying on with the store as it was");
                Err(e)
            }
        }
    }

    /// Steps 1 to 4 under the write lock; returns the sizes before and after.
    fn compact_locked(&self, guard: &mut Option<Handles>) -> Result<(u64, u64), StoreError> {
        let h = guard.as_ref().ok_or(StoreError::Closed)?;
        let before = h.db.size_on_disk()?;
        remove_dir_if_present(&self.shared.dir.join(COMPACTING))?;
        remove_dir_if_present(&self.shared.dir.join(COMPACTED))?;
        remove_dir_if_present(&self.shared.dir.join(OLD))?;
        if let Err(e) = self.copy_into(h, &self.shared.dir.join(COMPACTING)) {
            // Nothing has moved yet: remove the partial copy and keep the old store.
            if let Err(rm) = remove_dir_if_present(&self.shared.dir.join(COMPACTING)) {
                warn!(error = %rm, "could not remove the partial copy of the store; it is removed at the next start");
            }
            return Err(e);
        }
        let compacting = self.shared.dir.join(COMPACTING);
        let compacted = self.shared.dir.join(COMPACTED);
        if let Err(e) = std::fs::rename(&compacting, &compacted).map_err(io_err(&compacting)).and_then(|()| sync_dir(&self.shared.dir)) {
            // The old store is still open and current: the copy goes (or goes at the next start).
            for path in [&compacting, &compacted] {
                if let Err(rm) = remove_dir_if_present(path) {
                    warn!(error = %rm, "could not remove the copy of the store; it is removed at the next start");
                }
            }
            return Err(e);
        }
        // Step 3: from here the old database is closed; any failure reopens what is there.
        *guard = None;
        let switched = self.switch_directories();
        if let Err(e) = switched {
            error!(error = %e, "store compaction failed while switching directories; reopening the store");
            self.reopen_locked(guard)?;
            return Err(e);
        }
        #[cfg(test)]
        if lock(&self.shared.compaction).break_copy {
            std::fs::write(self.shared.dir.join(OUTBOX).join("conf"), b"not a sled config").map_err(io_err(&self.shared.dir))?;
        }
        let fresh = match open_waiting_for_lock(&self.shared.dir.join(OUTBOX)) {
            Ok(fresh) => fresh,
            Err(e) => {
                // The old store is intact beside it: it goes back, and the copy (nothing in
                // it that the old one lacks) goes.
                error!(error = %e, "the compacted store does not open; going back to the store as it was");
                self.put_back_old_store()?;
                self.reopen_locked(guard)?;
                return Err(e.into());
            }
        };
        // Acks that came during the copy (the uplink does not wait for a compaction); any
        // that fail stay deferred and are logged.
        let _ = self.apply_deferred_acks(&fresh);
        let after = fresh.db.size_on_disk().unwrap_or(0);
        *guard = Some(fresh);
        if let Err(e) = remove_dir_if_present(&self.shared.dir.join(OLD)).and_then(|()| sync_dir(&self.shared.dir)) {
            warn!(error = %e, "could not remove the store from before the compaction; it is removed at the next start");
        }
        Ok((before, after))
    }

    /// Step 1: every tree, every key, into a fresh database at `path`, flushed and closed.
    fn copy_into(&self, h: &Handles, path: &Path) -> Result<(), StoreError> {
        let copy = Handles::open(path)?;
        #[cfg(test)]
        let fail_after = lock(&self.shared.compaction).fail_copy_after;
        let mut copied = 0usize;
        for name in h.db.tree_names() {
            let from = h.db.open_tree(&name)?;
            let to = copy.db.open_tree(&name)?;
            // One insert per record, in key order: in a one-off comparison on a full 32 MiB
            // store this gave a slightly smaller copy than sled batches of a few MiB.
            for entry in from.iter() {
                let (k, v) = entry?;
                #[cfg(test)]
                if fail_after.is_some_and(|n| copied >= n) {
                    return Err(StoreError::Io {
                        path: path.to_path_buf(),
                        source: std::io::Error::other("no space left on device (test)"),
                    });
                }
                to.insert(k, v)?;
                copied += 1;
            }
        }
        copy.db.flush()?;
        drop(copy);
        tracing::debug!(records = copied, path = %path.display(), "store copied for compaction");
        Ok(())
    }

    /// Undoes step 3 after the copy failed to open: `outbox.old` becomes `outbox` again.
    fn put_back_old_store(&self) -> Result<(), StoreError> {
        let (outbox, old) = (self.shared.dir.join(OUTBOX), self.shared.dir.join(OLD));
        if !old.exists() {
            return Ok(());
        }
        remove_dir_if_present(&outbox)?;
        sync_dir(&self.shared.dir)?;
        std::fs::rename(&old, &outbox).map_err(io_err(&old))?;
        sync_dir(&self.shared.dir)
    }

    /// Step 3's renames (the old database is closed).
    fn switch_directories(&self) -> Result<(), StoreError> {
        let (outbox, old, compacted) = (self.shared.dir.join(OUTBOX), self.shared.dir.join(OLD), self.shared.dir.join(COMPACTED));
        std::fs::rename(&outbox, &old).map_err(io_err(&outbox))?;
        sync_dir(&self.shared.dir)?;
        std::fs::rename(&compacted, &outbox).map_err(io_err(&compacted))?;
        sync_dir(&self.shared.dir)?;
        Ok(())
    }

    /// After a failure with the database closed: finish or undo what is on disk, as a start
    /// would, and open it again. If even that fails the store stays closed (writes fail and
    /// are retried by the writer, which keeps memory bounded) and the next check retries.
    fn reopen_locked(&self, guard: &mut Option<Handles>) -> Result<(), StoreError> {
        restore_missing_outbox(&self.shared.dir)?;
        match open_waiting_for_lock(&self.shared.dir.join(OUTBOX)) {
            Ok(h) => {
                *guard = Some(h);
                remove_leftovers(&self.shared.dir);
                warn!("store reopened after a failed compaction");
                Ok(())
            }
            Err(e) => {
                error!(error = %e, "the store cannot be reopened after a failed compaction; writes fail until it can");
                Err(e.into())
            }
        }
    }
}

/// Opens a database this process has just closed. sled's threads can keep its file (and so
/// its lock) open for a moment after the last handle is dropped, so a lock error is retried
/// for a while rather than taken for another instance.
pub(super) fn open_waiting_for_lock(path: &Path) -> Result<Handles, sled::Error> {
    open_when_unlocked(path, LOCK_WAIT, Duration::from_millis(10)).map_err(|e| match e {
        OpenFailed::Locked { error, .. } | OpenFailed::Sled(error) => error,
    })
}

/// Before a store is opened: if a power cut came between the two renames of step 3,
/// `outbox` is missing and the complete copy takes its place (or, if there is none, the
/// old store goes back).
pub(super) fn restore_missing_outbox(dir: &Path) -> Result<(), StoreError> {
    let outbox = dir.join(OUTBOX);
    if outbox.exists() {
        return Ok(());
    }
    for name in [COMPACTED, OLD] {
        let from = dir.join(name);
        if from.exists() {
            warn!(from = %from.display(), "finishing a compaction cut short: this becomes the store");
            std::fs::rename(&from, &outbox).map_err(io_err(&from))?;
            sync_dir(dir)?;
            return Ok(());
        }
    }
    Ok(())
}

/// After the store is open (and so locked by this instance): whatever a cut-short
/// compaction left beside it goes. A leftover that cannot be removed is logged; the next
/// compaction tries again.
pub(super) fn remove_leftovers(dir: &Path) {
    let mut removed = false;
    for name in [COMPACTING, COMPACTED, OLD] {
        let path = dir.join(name);
        if !path.exists() {
            continue;
        }
        match std::fs::remove_dir_all(&path) {
            Ok(()) => {
                warn!(path = %path.display(), "removed what a compaction cut short left behind");
                removed = true;
            }
            Err(e) => warn!(path = %path.display(), error = %e, "cannot remove what a compaction cut short left behind"),
        }
    }
    if removed {
        if let Err(e) = sync_dir(dir) {
            warn!(error = %e, "cannot sync the data dir");
        }
    }
}

fn remove_dir_if_present(path: &Path) -> Result<(), StoreError> {
    match std::fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(StoreError::Io { path: path.to_path_buf(), source: e }),
    }
}

/// Makes renames and removals in `dir` durable.
fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io_err(dir))
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io { path: path.to_path_buf(), source }
}
