//! The sled outbox: two trees of records keyed by big-endian sequence numbers (so sled's
//! key order is delivery order) and a meta tree with the next numbers to hand out.
//!
//! Sequence numbers survive restarts: on open, the next number is the larger of the one
//! saved in meta and one past the last key present, so a crash between the two writes can
//! never hand out a number twice. Nothing is published before the flush has returned,
//! so every number the ERP has seen is on disk.
//!
//! All the state an [`Outbox`] handle shares with its clones is one [`Shared`] behind one
//! `Arc`. The sled handles in it sit behind one lock ([`Handles`]) so that compaction
//! (`compaction.rs`) can swap the whole database for a rewritten copy: every method takes
//! the lock briefly (never across an await), and never while already holding it. The
//! numbers and counts the uplink reads on every publish are atomics, read without a lock.
//!
//! What can wait on the disk (writing and flushing records, raising the high-water marks,
//! dropping what the bounds require) runs on a blocking thread, never on an async worker;
//! the uplink's reads and acks are bounded, served from sled's cache, and never wait for a
//! compaction or a reopen (see `blocking_tests.rs`).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard, TryLockError};
use std::time::{Duration, Instant};

use chrono::Utc;
use tracing::{debug, error, info, warn};

use super::damage::{self, MovedAside, StoreReset, StoreState};
use super::format;
use super::highwater::{HighWater, Loaded, Marks};
use super::record::{self, StoredBatch, StoredEvent};

pub(super) const NEXT_BATCH_SEQ: &[u8] = b"next_batch_seq";
pub(super) const NEXT_EVENT_SEQ: &[u8] = b"next_event_seq";
pub(super) const NEXT_REPLY_SEQ: &[u8] = b"next_reply_seq";

/// How long `open` waits for a store locked by a closing instance.
pub(super) const LOCK_WAIT: Duration = if cfg!(test) { Duration::from_secs(1) } else { Duration::from_secs(10) };

/// Whether the database at `path` is locked by another handle (another process, or an
/// instance in this one still closing). sled 0.34 locks the file `db` with `flock` and
/// reports a held lock only as an I/O error of kind `Other` (its text is not an API), so
/// the lock is asked directly: a non-blocking exclusive lock on the same file fails with
/// the OS's "would block" while someone holds it.
pub(super) fn lock_is_held(path: &Path) -> bool {
    use fs2::FileExt as _;
    let Ok(file) = std::fs::File::open(path.join("db")) else { return false };
    match file.try_lock_exclusive() {
        Ok(()) => {
            // Closing the file releases the lock too; unlocking first says so.
            let _ = fs2::FileExt::unlock(&file);
            false
        }
        Err(e) => e.kind() == fs2::lock_contended_error().kind(),
    }
}

/// Whether `e`, from opening the database at `path`, is sled's refusal of a held lock: an
/// I/O error of the kind sled gives it, with the lock held (asked by [`lock_is_held`]).
pub(super) fn is_lock_error(e: &sled::Error, path: &Path) -> bool {
    is_other_io(e) && lock_is_held(path)
}

/// Why [`open_when_unlocked`] gave up.
#[derive(Debug)]
pub(super) enum OpenFailed {
    /// Still locked by another handle after the wait (with sled's error).
    Locked {
        waited: Duration,
        error: sled::Error,
    },
    Sled(sled::Error),
}

/// Opens the database at `path`, trying again every `poll` for up to `wait` while another
/// handle holds its lock. An I/O error of the lock's kind with the lock free by the time it
/// is asked (its holder let go in between) is tried once more before it is returned.
pub(super) fn open_when_unlocked(path: &Path, wait: Duration, poll: Duration) -> Result<Handles, OpenFailed> {
    let started = Instant::now();
    let mut tried_again = false;
    loop {
        match Handles::open(path) {
            Ok(h) => return Ok(h),
            Err(e) if is_lock_error(&e, path) => {
                let waited = started.elapsed();
                if waited >= wait {
                    return Err(OpenFailed::Locked { waited, error: e });
                }
                tried_again = false;
                std::thread::sleep(poll);
            }
            Err(e) if !tried_again && is_other_io(&e) => tried_again = true,
            Err(e) => return Err(OpenFailed::Sled(e)),
        }
    }
}

/// An I/O error of the kind sled gives a held lock (among others).
fn is_other_io(e: &sled::Error) -> bool {
    matches!(e, sled::Error::Io(io) if io.kind() == std::io::ErrorKind::Other)
}

/// Errors that mean the files are not a store this sled can read; I/O errors (permissions,
/// a failing disk) are not among them: moving the store aside would not help.
pub(super) fn is_unreadable(e: &sled::Error) -> bool {
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
    #[error("cannot move the store {path} aside: {source}")]
    MoveAside { path: PathBuf, source: std::io::Error },
    #[error("store file operation on {path} failed: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("the store is closed: a compaction could not reopen it (see the log); retried on the next check")]
    Closed,
    #[error("the store flush task failed: {0}")]
    FlushTask(String),
    #[error("a store task on a blocking thread failed: {0}")]
    BlockingTask(String),
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
    /// Compactions that completed (the outbox rewritten into a fresh sled database).
    pub compactions: AtomicU64,
    /// Compactions that failed; the agent kept running on the old store.
    pub compaction_failures: AtomicU64,
    /// The last completed compaction: how long the store was paused (ms), and the size of
    /// the outbox directory before and after (bytes).
    pub last_compaction_ms: AtomicU64,
    pub last_compaction_bytes_before: AtomicU64,
    pub last_compaction_bytes_after: AtomicU64,
    /// Gathered samples dropped before they could be written, while the store could not
    /// be written: from memory past its bound, or at shutdown (also in `samples_dropped`).
    pub samples_dropped_memory_bound: AtomicU64,
    /// Model events that could not be stored (the store unwritable past their retries, or
    /// still waiting for it at shutdown): counted by the model event sink.
    pub model_events_unwritten_dropped: AtomicU64,
    pub samples_dropped_shutdown: AtomicU64,
    /// Times the database was closed and opened again after an I/O error (`reopen.rs`).
    pub reopens: AtomicU64,
    /// Resets of the store found on open (moved aside, newest records lost, numbering
    /// unknown, a format this agent does not read): each raised as a `store_reset` event.
    pub store_resets: AtomicU64,
    /// Reads that sled panicked on (damaged data), contained.
    pub read_panics: AtomicU64,
}

/// A number per kind of record: telemetry batch, event, reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Numbers {
    pub batch: u64,
    pub event: u64,
    pub reply: u64,
}

/// [`Numbers`] read without a lock (the uplink reads them on every publish).
#[derive(Debug)]
pub(super) struct AtomicNumbers {
    batch: AtomicU64,
    event: AtomicU64,
    reply: AtomicU64,
}

impl AtomicNumbers {
    fn new(n: Numbers) -> Self {
        Self { batch: AtomicU64::new(n.batch), event: AtomicU64::new(n.event), reply: AtomicU64::new(n.reply) }
    }

    pub(super) fn load(&self) -> Numbers {
        Numbers {
            batch: self.batch.load(Ordering::SeqCst),
            event: self.event.load(Ordering::SeqCst),
            reply: self.reply.load(Ordering::SeqCst),
        }
    }

    fn store(&self, n: Numbers) {
        self.batch.store(n.batch, Ordering::SeqCst);
        self.event.store(n.event, Ordering::SeqCst);
        self.reply.store(n.reply, Ordering::SeqCst);
    }

    /// Raises each number to `n`'s if that is higher.
    fn raise(&self, n: Numbers) {
        self.batch.fetch_max(n.batch, Ordering::SeqCst);
        self.event.fetch_max(n.event, Ordering::SeqCst);
        self.reply.fetch_max(n.reply, Ordering::SeqCst);
    }
}

/// One value per record tree.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(super) struct PerTree<T> {
    pub telemetry: T,
    pub events: T,
    pub replies: T,
}

impl<T> PerTree<T> {
    pub(super) fn get(&self, id: TreeId) -> &T {
        match id {
            TreeId::Telemetry => &self.telemetry,
            TreeId::Events => &self.events,
            TreeId::Replies => &self.replies,
        }
    }

    fn get_mut(&mut self, id: TreeId) -> &mut T {
        match id {
            TreeId::Telemetry => &mut self.telemetry,
            TreeId::Events => &mut self.events,
            TreeId::Replies => &mut self.replies,
        }
    }
}

/// What the store holds: records per tree and their bytes (what `store.max_bytes` bounds).
/// Counted as records come and go, because sled's `Tree::len` scans the whole tree, far
/// too slow to call on every uplink event with a large backlog.
#[derive(Debug, Default)]
pub(super) struct Held {
    pub(super) bytes: AtomicU64,
    records: PerTree<AtomicU64>,
}

impl Held {
    fn set(&self, counted: Counted) {
        self.bytes.store(counted.bytes, Ordering::Relaxed);
        for id in TreeId::ALL {
            self.records.get(id).store(*counted.records.get(id), Ordering::Relaxed);
        }
    }

    fn added(&self, id: TreeId, records: u64, bytes: u64) {
        self.records.get(id).fetch_add(records, Ordering::Relaxed);
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    fn removed(&self, id: TreeId, bytes: u64) {
        self.records.get(id).fetch_sub(1, Ordering::Relaxed);
        self.bytes.fetch_sub(bytes, Ordering::Relaxed);
    }

    fn records(&self, id: TreeId) -> u64 {
        self.records.get(id).load(Ordering::Relaxed)
    }
}

/// Records and bytes counted by a scan of every tree.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Counted {
    bytes: u64,
    records: PerTree<u64>,
}

/// Reads every record of every tree (sled can panic on a damaged one: call it contained).
pub(super) fn count(h: &Handles) -> Result<Counted, sled::Error> {
    let mut counted = Counted::default();
    for id in TreeId::ALL {
        for entry in h.tree(id).iter() {
            let (_, v) = entry?;
            counted.bytes += v.len() as u64;
            *counted.records.get_mut(id) += 1;
        }
    }
    Ok(counted)
}

/// A database just opened, with its next numbers and what it holds.
type Scanned = (Handles, Numbers, Counted);

/// Reads the next numbers and every record of the database `h`. A damaged database (sled
/// panics on it, contained) is closed again and reported unreadable.
fn scan(h: Handles) -> Result<Scanned, sled::Error> {
    let scanned = damage::contained("reading the store", || {
        let next = |tree: &sled::Tree, name: &[u8]| -> Result<u64, sled::Error> {
            let saved = h.meta.get(name)?.and_then(|v| seq_of(&v)).unwrap_or(1);
            let after_last = tree.last()?.and_then(|(k, _)| seq_of(&k)).map_or(1, |s| s + 1);
            Ok(saved.max(after_last))
        };
        let next = Numbers {
            batch: next(&h.telemetry, NEXT_BATCH_SEQ)?,
            event: next(&h.events, NEXT_EVENT_SEQ)?,
            reply: next(&h.replies, NEXT_REPLY_SEQ)?,
        };
        Ok((next, count(&h)?))
    });
    match scanned {
        Ok((next, counted)) => Ok((h, next, counted)),
        Err(e) => {
            // Closing goes in the same containment: sled flushes when it closes.
            let _ = damage::contained("closing the damaged store", move || {
                drop(h);
                Ok(())
            });
            Err(e)
        }
    }
}

/// Everything the clones of an [`Outbox`] share.
pub(super) struct Shared {
    /// The data dir holding `outbox/` (and, during a compaction, its siblings).
    pub(super) dir: PathBuf,
    /// The latest events appended, for the status page (`/api/events`).
    pub(super) recent: crate::recent_events::RecentEvents,
    /// `None` only after a compaction that could not reopen the store (see `compaction.rs`).
    pub(super) handles: RwLock<Option<Handles>>,
    /// When compaction was last checked for, and the directory size after the last one.
    pub(super) compaction: Mutex<super::compaction::Trigger>,
    /// Held while numbering and writing records, so that numbers are handed out in order
    /// and written under the numbers in `next` (the only writer of `next`).
    numbering: Mutex<()>,
    /// The next numbers to hand out.
    next: AtomicNumbers,
    /// Everything numbered below these is flushed to disk. Readers see only those
    /// entries, so nothing is published before it is durable.
    durable: AtomicNumbers,
    pub(super) held: Held,
    /// The high-water marks of the numbering (`highwater.rs`), raised before anything
    /// numbered is published.
    high_water: Mutex<HighWater>,
    /// The first batch number of the current run of the agent (set at open and by
    /// [`Outbox::mark_run_start`] when a reload restarts everything).
    run_start: AtomicU64,
    /// Acks that came while a compaction held the store: the uplink does not wait for a
    /// compaction (it would hold a runtime worker, and the MQTT keep-alive, for the whole
    /// pause). Applied by the compaction once it is done, or by the next ack. Also acks
    /// that could not be applied because the store was unwritable (a full disk): applied
    /// after the reopen. Reads skip deferred entries, so an acked entry is not sent again.
    deferred_acks: Mutex<BTreeSet<(TreeId, u64)>>,
    /// The size on disk last read, shown while a compaction holds the store.
    pub(super) last_disk_bytes: AtomicU64,
    /// A read hit damaged data that sled panicked on (logged once).
    read_damaged: AtomicBool,
    /// Set after a failed write, flush or delete: sled keeps an I/O error once it has had
    /// one, so nothing is written until [`Outbox::reopen`] has succeeded.
    pub(super) unwritable: AtomicBool,
    /// After a failed flush: the next numbers at that moment. What was numbered below them
    /// and above the durable marks was never confirmed; a reopen removes it (the writer
    /// still holds it and writes it again).
    pub(super) unconfirmed_below: Mutex<Option<Numbers>>,
    /// A line per minute for failed deletes of acknowledged entries.
    pub(super) log_limit: edge_drivers::log_limit::SharedLogLimit,
    #[cfg(test)]
    pub(super) disk: super::reopen::TestDisk,
    counters: OutboxCounters,
}

/// Locks `m`, going on with the data of a thread that panicked while holding it (every
/// value behind these locks is valid at all times).
pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The sled database and its trees. Never cloned out of [`Shared::handles`]' lock: a
/// compaction must be able to close the database (sled writes blob files by path, so an
/// old instance still open after the directories are swapped would write into the new one).
pub(super) struct Handles {
    pub(super) db: sled::Db,
    pub(super) telemetry: sled::Tree,
    pub(super) events: sled::Tree,
    /// Replies to ERP commands (`cmd/response`): few, small, published before telemetry.
    pub(super) replies: sled::Tree,
    pub(super) meta: sled::Tree,
}

impl Handles {
    /// Opens the database; a panic of sled on damaged files is contained (an error that
    /// marks the store unreadable).
    pub(super) fn open(path: &Path) -> Result<Self, sled::Error> {
        damage::contained("opening the store", || {
            let db = sled::Config::new().path(path).mode(sled::Mode::LowSpace).open()?;
            Ok(Self {
                telemetry: db.open_tree("telemetry")?,
                events: db.open_tree("events")?,
                replies: db.open_tree("replies")?,
                meta: db.open_tree("meta")?,
                db,
            })
        })
    }

    pub(super) fn tree(&self, id: TreeId) -> &sled::Tree {
        match id {
            TreeId::Telemetry => &self.telemetry,
            TreeId::Events => &self.events,
            TreeId::Replies => &self.replies,
        }
    }
}

/// The record trees (meta holds only the sequence counters).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum TreeId {
    Telemetry,
    Events,
    Replies,
}

impl TreeId {
    pub(super) const ALL: [TreeId; 3] = [TreeId::Telemetry, TreeId::Events, TreeId::Replies];

    fn name(self) -> &'static str {
        match self {
            TreeId::Telemetry => "telemetry",
            TreeId::Events => "events",
            TreeId::Replies => "replies",
        }
    }
}

/// Handle to the outbox; cheap to clone (one `Arc`).
#[derive(Clone)]
pub struct Outbox {
    pub(super) shared: Arc<Shared>,
    /// Set when the store could not be opened and was moved aside (path of the old one).
    pub moved_aside: Option<PathBuf>,
    /// Set when open found the store reset (moved aside, newest records lost, numbering
    /// unknown): the agent raises it as a `store_reset` event.
    pub reset: Option<StoreReset>,
}

pub(super) fn key(seq: u64) -> [u8; 8] {
    seq.to_be_bytes()
}

pub(super) fn seq_of(key: &[u8]) -> Option<u64> {
    key.try_into().ok().map(u64::from_be_bytes)
}

/// A batch encoded for the store, with its number of samples.
type Encoded = (Vec<u8>, usize);

impl Outbox {
    /// Opens the outbox under `dir`. A store whose contents cannot be read (corrupt, from an
    /// incompatible version) is renamed to `outbox.unreadable-{time}` for inspection and a
    /// fresh one is started: the agent never refuses to run because of its own buffer.
    ///
    /// A store that is merely *locked* (another agent on the same `data_dir`, or an earlier
    /// instance in this process still closing) is never moved aside: opening is retried for
    /// a few seconds, then refused with a clear error.
    ///
    /// A compaction cut short by a crash is finished or undone first (`compaction.rs`).
    ///
    /// Numbering never goes backwards: it continues at or above the high-water marks kept
    /// beside the store (`highwater.rs`), and a store found to have lost numbers it had
    /// handed out is reported in [`Outbox::reset`].
    ///
    /// Blocking (it may wait [`LOCK_WAIT`] for a lock, and reads every record): call it
    /// from a blocking thread in async code.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let path = dir.join("outbox");
        super::compaction::restore_missing_outbox(dir)?;
        let format_file = dir.join(format::FILE);
        let marker = format::read(dir).map_err(|source| StoreError::Io { path: format_file.clone(), source })?;
        let verdict = format::judge(&marker, path.exists());
        // A store in a format this agent does not read is set aside unopened.
        let foreign = match &verdict {
            format::Verdict::SetAside(foreign) => {
                let aside = format::set_aside(dir, &path, foreign)?;
                let message = foreign.message(&path, &aside);
                error!(reason = foreign.reason().as_str(), aside = %aside.display(), "{message}");
                Some((foreign.reason(), aside, message))
            }
            _ => None,
        };
        let (high_water, loaded) =
            HighWater::open(dir).map_err(|source| StoreError::Io { path: dir.join(super::highwater::FILE), source })?;
        let mut outbox = Self::open_waiting(dir, &path, high_water)?;
        // Holding the store's lock now, so no other instance is compacting it.
        super::compaction::remove_leftovers(dir);
        if let Some((reason, aside, message)) = foreign {
            outbox.moved_aside = Some(aside.clone());
            outbox.reset = Some(StoreReset {
                reason,
                moved_aside: Some(aside),
                batches_possibly_lost: None,
                events_possibly_lost: None,
                lost_batch_seqs: None,
                next_batch_seq: 1,
                error: Some(message),
            });
        }
        outbox.bring_format_up_to_date(&verdict, &marker)?;
        outbox.settle_numbering(loaded)?;
        Ok(outbox)
    }

    /// Migrates a store in an older format and stamps a store that is new, migrated or from
    /// before the marker with [`format::CURRENT`] (see `format.rs`).
    fn bring_format_up_to_date(&self, verdict: &format::Verdict, marker: &format::Marker) -> Result<(), StoreError> {
        let dir = &self.shared.dir;
        match verdict {
            format::Verdict::Current => return Ok(()),
            format::Verdict::Migrate { from } => {
                let h = self.handles()?;
                let from = usize::try_from(*from).unwrap_or(usize::MAX);
                for step in format::MIGRATIONS.iter().skip(from.saturating_sub(1)) {
                    step(&h)?;
                }
                h.db.flush()?;
                drop(h);
                if *marker == format::Marker::Missing {
                    info!(version = format::CURRENT, "store format marker written (the store is from before it: format version 1)");
                } else {
                    info!(from, to = format::CURRENT, "store migrated to the current format");
                }
            }
            format::Verdict::Fresh => {
                if let format::Marker::Version(v) = marker {
                    if *v != format::CURRENT {
                        warn!(marker = v, "the format marker names a store that is not there; a fresh store starts in the current format");
                    }
                }
            }
            format::Verdict::SetAside(_) => {}
        }
        format::write(dir, format::CURRENT).map_err(|source| StoreError::Io { path: dir.join(format::FILE), source })
    }

    fn open_waiting(dir: &Path, path: &Path, high_water: HighWater) -> Result<Self, StoreError> {
        let opened = open_when_unlocked(path, LOCK_WAIT, Duration::from_millis(100)).and_then(|h| scan(h).map_err(OpenFailed::Sled));
        match opened {
            Ok(scanned) => Ok(Self::build(dir, scanned, high_water)),
            Err(OpenFailed::Locked { waited, .. }) => Err(StoreError::Locked { path: path.to_path_buf(), waited }),
            Err(OpenFailed::Sled(e)) if is_unreadable(&e) => Self::replace_unreadable(dir, path, &e, high_water),
            Err(OpenFailed::Sled(e)) => Err(e.into()),
        }
    }

    fn replace_unreadable(dir: &Path, path: &Path, why: &sled::Error, high_water: HighWater) -> Result<Self, StoreError> {
        let aside = dir.join(format!("outbox.unreadable-{}", Utc::now().format("%Y%m%dT%H%M%S%.3fZ")));
        error!(path = %path.display(), error = %why, aside = %aside.display(), "store cannot be read; moving it aside and starting a fresh one");
        std::fs::rename(path, &aside).map_err(|source| StoreError::MoveAside { path: path.to_path_buf(), source })?;
        if let Err(e) = std::fs::File::open(dir).and_then(|d| d.sync_all()) {
            warn!(error = %e, "cannot sync the data dir after moving the store aside");
        }
        let mut fresh = Self::build(dir, scan(Handles::open(path)?)?, high_water);
        fresh.moved_aside = Some(aside);
        fresh.reset = Some(StoreReset {
            reason: crate::events::StoreResetReason::Unreadable,
            moved_aside: fresh.moved_aside.clone(),
            batches_possibly_lost: None,
            events_possibly_lost: None,
            lost_batch_seqs: None,
            next_batch_seq: 1,
            error: Some(why.to_string()),
        });
        Ok(fresh)
    }

    /// The outbox over a database just opened and scanned.
    fn build(dir: &Path, (h, next, counted): Scanned, high_water: HighWater) -> Self {
        let held = Held::default();
        held.set(counted);
        let shared = Shared {
            dir: dir.to_path_buf(),
            recent: Default::default(),
            handles: RwLock::new(Some(h)),
            compaction: Mutex::default(),
            numbering: Mutex::new(()),
            next: AtomicNumbers::new(next),
            durable: AtomicNumbers::new(next),
            held,
            high_water: Mutex::new(high_water),
            run_start: AtomicU64::new(next.batch),
            deferred_acks: Mutex::default(),
            last_disk_bytes: AtomicU64::new(0),
            read_damaged: AtomicBool::new(false),
            unwritable: AtomicBool::new(false),
            unconfirmed_below: Mutex::new(None),
            log_limit: Default::default(),
            #[cfg(test)]
            disk: Default::default(),
            counters: OutboxCounters::default(),
        };
        Self { shared: Arc::new(shared), moved_aside: None, reset: None }
    }

    /// The latest events appended (durable), newest last: the status page's event list.
    pub fn recent_events(&self) -> crate::recent_events::RecentEvents {
        self.shared.recent.clone()
    }

    /// The counters shown on the page and in `/metrics`.
    pub fn counters(&self) -> &OutboxCounters {
        &self.shared.counters
    }

    /// Checks the store's numbers against the high-water marks and continues at or above
    /// both (`damage::continue_numbering`): numbers the ERP may have seen are never handed
    /// out again, whatever sled lost. Starting again lower would make new data look like
    /// duplicates to the ERP; the jump instead shows it a gap. A reset found here is kept in
    /// [`Outbox::reset`], counted and logged.
    fn settle_numbering(&mut self, loaded: Loaded) -> Result<(), StoreError> {
        let s = &self.shared;
        // What the store holds of the window the marks describe (an older copy of the
        // store can also hold records acknowledged before that window).
        let (held_batches, held_events) = match loaded {
            Loaded::Found(m) => {
                let h = self.handles()?;
                let count = |tree: &sled::Tree, from: u64, below: u64| tree.range(key(from)..key(below.max(from))).count() as u64;
                damage::contained("counting the store", || {
                    Ok((count(&h.telemetry, m.oldest_batch, m.next_batch), count(&h.events, m.oldest_event, m.next_event)))
                })?
            }
            _ => (self.pending_batches(), self.pending_events()),
        };
        let before = s.next.load();
        let store = StoreState { next: (before.batch, before.event, before.reply), held_batches, held_events };
        let moved =
            self.reset.take().and_then(|r| Some(MovedAside { path: r.moved_aside?, reason: r.reason, error: r.error.unwrap_or_default() }));
        let now_ms = u64::try_from(Utc::now().timestamp_millis()).unwrap_or(1);
        let (next, reset) = damage::continue_numbering(store, loaded, moved, now_ms);
        let next = Numbers { batch: next.0, event: next.1, reply: next.2 };
        if next != before {
            let h = self.handles()?;
            h.meta.insert(NEXT_BATCH_SEQ, &key(next.batch))?;
            h.meta.insert(NEXT_EVENT_SEQ, &key(next.event))?;
            h.meta.insert(NEXT_REPLY_SEQ, &key(next.reply))?;
            h.db.flush()?;
            drop(h);
            s.next.store(next);
            s.durable.store(next);
            s.run_start.store(next.batch, Ordering::SeqCst);
        }
        let oldest = self.oldest_held()?;
        let marks = Marks {
            next_batch: next.batch,
            next_event: next.event,
            next_reply: next.reply,
            oldest_batch: oldest.0,
            oldest_event: oldest.1,
        };
        self.high_water_lock().raise(marks).map_err(|source| StoreError::Io { path: s.dir.join(super::highwater::FILE), source })?;
        if let Some(r) = &reset {
            self.counters().store_resets.fetch_add(1, Ordering::Relaxed);
            error!(
                reason = r.reason.as_str(),
                batches_possibly_lost = ?r.batches_possibly_lost,
                lost_batch_seqs = ?r.lost_batch_seqs,
                next_batch_seq = r.next_batch_seq,
                "store reset: numbering continues above every number handed out before"
            );
        }
        self.reset = reset;
        Ok(())
    }

    fn high_water_lock(&self) -> MutexGuard<'_, HighWater> {
        lock(&self.shared.high_water)
    }

    /// The oldest telemetry batch and event held (the next numbers if none).
    fn oldest_held(&self) -> Result<(u64, u64), StoreError> {
        let h = self.handles()?;
        let first =
            |tree: &sled::Tree, none: u64| -> Result<u64, sled::Error> { Ok(tree.first()?.and_then(|(k, _)| seq_of(&k)).unwrap_or(none)) };
        let next = self.shared.next.load();
        Ok((first(&h.telemetry, next.batch)?, first(&h.events, next.event)?))
    }

    /// Raises the high-water marks to the numbers written so far and waits until they are
    /// on disk (blocking). Called after the flush and before the new entries become
    /// readable, so the marks cover every number ever published. One `fdatasync` per
    /// append. `next`: the next numbers after what was written (0: unchanged).
    fn raise_high_water(&self, next: Numbers) -> Result<(), StoreError> {
        let (ob, oe) = match self.oldest_held() {
            Ok(o) => o,
            // The window cannot be narrowed: keep the last one (wider, still a bound).
            Err(_) => {
                let m = self.high_water_lock().marks();
                (m.oldest_batch, m.oldest_event)
            }
        };
        let marks = Marks { next_batch: next.batch, next_event: next.event, next_reply: next.reply, oldest_batch: ob, oldest_event: oe };
        self.high_water_lock().raise(marks).map_err(|source| StoreError::Io { path: self.shared.dir.join(super::highwater::FILE), source })
    }

    /// The high-water marks last written (for tests and the model).
    pub fn high_water(&self) -> Marks {
        self.high_water_lock().marks()
    }

    /// Runs `f` on a blocking thread with a clone of this handle: the work that can wait
    /// on the disk never holds an async worker.
    pub(super) async fn on_blocking_thread<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Outbox) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || f(&this)).await.map_err(|e| StoreError::BlockingTask(e.to_string()))?
    }

    /// The sled handles, read-locked. Hold the guard only briefly, never across an await,
    /// and never call another method of the outbox while holding it (a waiting compaction
    /// would deadlock a second read lock). Waits while a compaction or a reopen holds the
    /// store: from async code, only on a blocking thread (or see [`Outbox::try_handles`]).
    pub(super) fn handles(&self) -> Result<HandlesGuard<'_>, StoreError> {
        let guard = self.shared.handles.read().unwrap_or_else(|p| p.into_inner());
        if guard.is_none() {
            return Err(StoreError::Closed);
        }
        Ok(HandlesGuard(guard))
    }

    /// The handles if no compaction holds them now, `None` if one does. The uplink's reads
    /// and acks use this: they skip or defer rather than block their runtime worker for
    /// the length of a compaction.
    pub(super) fn try_handles(&self) -> Option<Result<HandlesGuard<'_>, StoreError>> {
        let guard = match self.shared.handles.try_read() {
            Ok(g) => g,
            Err(TryLockError::Poisoned(p)) => p.into_inner(),
            Err(TryLockError::WouldBlock) => return None,
        };
        Some(if guard.is_none() { Err(StoreError::Closed) } else { Ok(HandlesGuard(guard)) })
    }

    /// Waits (without holding a runtime worker) while a compaction holds the store. Callers
    /// with a store timeout wait for this first: a compaction is not a store failure.
    pub async fn until_not_compacting(&self) {
        while matches!(self.shared.handles.try_read(), Err(TryLockError::WouldBlock)) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Numbers and writes the batches and events, then flushes. Returns once they are on
    /// disk; only then may they be published. The batches are encoded here; the writes,
    /// the flush and the high-water marks' `fdatasync` run on a blocking thread.
    pub async fn append(&self, batches: &[StoredBatch], events: &[StoredEventDraft]) -> Result<(), StoreError> {
        self.until_not_compacting().await;
        let encoded = batches.iter().map(|b| Ok((record::encode(b)?, b.samples.len()))).collect::<Result<Vec<Encoded>, StoreError>>()?;
        let events = events.to_vec();
        self.on_blocking_thread(move |o| o.append_blocking(&encoded, &events)).await
    }

    /// [`Outbox::append`]'s work on its blocking thread.
    fn append_blocking(&self, batches: &[Encoded], events: &[StoredEventDraft]) -> Result<(), StoreError> {
        let s = &self.shared;
        let written = {
            let _numbering = lock(&s.numbering);
            let start = s.next.load();
            let (mut next_batch, mut next_event) = (start.batch, start.event);
            let (mut batch_bytes, mut event_bytes) = (0u64, 0u64);
            let mut tb = sled::Batch::default();
            for (rec, _) in batches {
                batch_bytes += rec.len() as u64;
                tb.insert(&key(next_batch), rec.as_slice());
                next_batch += 1;
            }
            let mut eb = sled::Batch::default();
            let mut payloads = Vec::with_capacity(events.len());
            for e in events {
                let payload = e.finish(next_event)?;
                let rec = record::encode(&StoredEvent(payload.clone()))?;
                payloads.push(payload);
                event_bytes += rec.len() as u64;
                eb.insert(&key(next_event), rec);
                next_event += 1;
            }
            // Records first, then the counters: a crash in between is covered by open().
            let h = self.handles()?;
            h.telemetry.apply_batch(tb)?;
            h.events.apply_batch(eb)?;
            h.meta.insert(NEXT_BATCH_SEQ, &key(next_batch))?;
            h.meta.insert(NEXT_EVENT_SEQ, &key(next_event))?;
            drop(h);
            s.held.added(TreeId::Telemetry, batches.len() as u64, batch_bytes);
            s.held.added(TreeId::Events, events.len() as u64, event_bytes);
            s.next.batch.store(next_batch, Ordering::SeqCst);
            s.next.event.store(next_event, Ordering::SeqCst);
            (Numbers { batch: next_batch, event: next_event, reply: 0 }, payloads)
        };
        let (written, payloads) = written;
        self.flush_blocking()?;
        self.raise_high_water(written)?;
        // Only now may readers (the uplink) see the new entries.
        s.durable.raise(written);
        for p in payloads {
            s.recent.push(p);
        }
        self.counters().batches_stored.fetch_add(batches.len() as u64, Ordering::Relaxed);
        let samples: usize = batches.iter().map(|(_, n)| n).sum();
        self.counters().samples_stored.fetch_add(samples as u64, Ordering::Relaxed);
        Ok(())
    }

    /// Up to `limit` telemetry batches with `batch_seq >= from`, in order. Corrupt
    /// records are skipped, counted and removed.
    pub fn telemetry_from(&self, from: u64, limit: usize) -> Vec<(u64, StoredBatch)> {
        self.read_from(TreeId::Telemetry, from, self.shared.durable.load().batch, limit)
    }

    /// Up to `limit` events with sequence `>= from`, in order.
    pub fn events_from(&self, from: u64, limit: usize) -> Vec<(u64, StoredEvent)> {
        self.read_from(TreeId::Events, from, self.shared.durable.load().event, limit)
    }

    /// Entries with `from <= seq < below`, at most `limit`.
    fn read_from<T: serde::de::DeserializeOwned>(&self, id: TreeId, from: u64, below: u64, limit: usize) -> Vec<(u64, T)> {
        let mut out = Vec::with_capacity(limit.min(256));
        if from >= below {
            return out;
        }
        let name = id.name();
        let h = match self.try_handles() {
            Some(Ok(h)) => h,
            Some(Err(e)) => {
                // Closed after an I/O error until the reopen: a line a minute, not per read.
                if let Some(suppressed) = self.shared.log_limit.allow("store read") {
                    error!(tree = name, error = %e, suppressed, "store read failed");
                }
                return out;
            }
            None => {
                // A compaction holds the store: nothing to read for now. The uplink reads
                // again on the next stored batch or PUBACK (an empty read moves no cursor).
                debug!(tree = name, "store busy with a compaction; read skipped");
                return out;
            }
        };
        let tree = h.tree(id);
        // sled can panic on damaged pages it meets only now (the open's scan read the
        // records, not every page a range visits later): contained, and what was read so
        // far is returned.
        // Acked entries whose delete is deferred (store unwritable) are not sent again.
        let deferred = lock(&self.shared.deferred_acks).clone();
        let scan = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
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
                    self.drop_corrupt(tree, id, &k, "key is not a sequence number");
                    continue;
                };
                if Self::ack_is_deferred(&deferred, id, seq) {
                    continue;
                }
                match record::decode::<T>(&v) {
                    Ok(r) => out.push((seq, r)),
                    Err(e) => self.drop_corrupt(tree, id, &k, &e.to_string()),
                }
            }
        }));
        if let Err(payload) = scan {
            self.counters().read_panics.fetch_add(1, Ordering::Relaxed);
            if !self.shared.read_damaged.swap(true, Ordering::Relaxed) {
                error!(
                    tree = name,
                    from,
                    panic = %damage::panic_message(&payload),
                    "the store is damaged: sled panicked reading it (contained, counted in read_panics, logged once); what lies past the damage cannot be read in this run"
                );
            }
        }
        out
    }

    /// `tree` is `id`'s tree, borrowed from the caller's read guard.
    fn drop_corrupt(&self, tree: &sled::Tree, id: TreeId, k: &[u8], why: &str) {
        self.counters().corrupt_records.fetch_add(1, Ordering::Relaxed);
        warn!(tree = id.name(), key = ?k, reason = why, "corrupt record skipped and removed");
        match tree.remove(k) {
            Ok(Some(v)) => self.shared.held.removed(id, v.len() as u64),
            Ok(None) => {}
            Err(e) => error!(tree = id.name(), error = %e, "could not remove a corrupt record"),
        }
    }

    /// Stores a reply to a command and flushes it (on a blocking thread). Returns its
    /// sequence number.
    pub async fn append_reply(&self, reply: &StoredReply) -> Result<u64, StoreError> {
        self.until_not_compacting().await;
        let rec = record::encode(reply)?;
        self.on_blocking_thread(move |o| o.append_reply_blocking(rec)).await
    }

    fn append_reply_blocking(&self, rec: Vec<u8>) -> Result<u64, StoreError> {
        let s = &self.shared;
        let seq = {
            let _numbering = lock(&s.numbering);
            let seq = s.next.load().reply;
            let len = rec.len() as u64;
            let h = self.handles()?;
            let added = u64::from(h.replies.insert(key(seq), rec)?.is_none());
            s.held.added(TreeId::Replies, added, len);
            h.meta.insert(NEXT_REPLY_SEQ, &key(seq + 1))?;
            drop(h);
            s.next.reply.store(seq + 1, Ordering::SeqCst);
            seq
        };
        self.flush_blocking()?;
        self.raise_high_water(Numbers { batch: 0, event: 0, reply: seq + 1 })?;
        s.durable.reply.fetch_max(seq + 1, Ordering::SeqCst);
        Ok(seq)
    }

    /// Up to `limit` replies with sequence `>= from`, in order.
    pub fn replies_from(&self, from: u64, limit: usize) -> Vec<(u64, StoredReply)> {
        self.read_from(TreeId::Replies, from, self.shared.durable.load().reply, limit)
    }

    pub fn ack_reply(&self, seq: u64) -> Result<(), StoreError> {
        self.ack(TreeId::Replies, seq)
    }

    /// The broker acknowledged entry `seq` of `id`: it goes, now or, while a compaction
    /// holds the store or the store cannot be written, later (see `deferred_acks`). An ack
    /// is never lost to a broken disk: it waits in memory for the reopen, and reads skip
    /// the entry meanwhile. Only a crash before then sends it again (QoS 1 allows that).
    fn ack(&self, id: TreeId, seq: u64) -> Result<(), StoreError> {
        if !self.is_writable() {
            self.defer_ack(id, seq, "the store is unwritable");
            return Ok(());
        }
        let h = match self.try_handles() {
            Some(Ok(h)) => h,
            None => {
                self.defer_ack(id, seq, "a compaction holds the store");
                return Ok(());
            }
            Some(Err(_closed)) => {
                self.defer_ack(id, seq, "the store is closed");
                return Ok(());
            }
        };
        if let Err(e) = self.apply_deferred_acks(&h).and_then(|()| self.remove_acked(&h, id, seq)) {
            drop(h);
            self.mark_unwritable(&e);
            self.defer_ack(id, seq, "the delete failed");
        }
        Ok(())
    }

    fn defer_ack(&self, id: TreeId, seq: u64, why: &str) {
        lock(&self.shared.deferred_acks).insert((id, seq));
        debug!(tree = id.name(), seq, why, "ack deferred");
    }

    /// Acks waiting to be applied (shown on the page).
    pub fn deferred_acks(&self) -> u64 {
        lock(&self.shared.deferred_acks).len() as u64
    }

    /// Applies the deferred acks to `h` (the store as it is now). Those that fail stay
    /// deferred for the next try; returns the first error.
    pub(super) fn apply_deferred_acks(&self, h: &Handles) -> Result<(), StoreError> {
        let mut deferred = lock(&self.shared.deferred_acks);
        if deferred.is_empty() {
            return Ok(());
        }
        let mut first_error = None;
        deferred.retain(|&(id, seq)| match self.remove_acked(h, id, seq) {
            Ok(()) => false,
            Err(e) => {
                first_error.get_or_insert(e);
                true
            }
        });
        let left = deferred.len();
        drop(deferred);
        match first_error {
            None => Ok(()),
            Some(e) => {
                if let Some(suppressed) = self.shared.log_limit.allow("deferred acks") {
                    error!(error = %e, left, suppressed, "could not delete acknowledged entries; kept until the store can be written");
                }
                Err(e)
            }
        }
    }

    /// Whether `seq` of `id` was acknowledged but not yet deleted: reads skip it.
    fn ack_is_deferred(deferred: &BTreeSet<(TreeId, u64)>, id: TreeId, seq: u64) -> bool {
        !deferred.is_empty() && deferred.contains(&(id, seq))
    }

    fn remove_acked(&self, h: &Handles, id: TreeId, seq: u64) -> Result<(), StoreError> {
        if self.remove_from(h, id, seq)?.is_some() {
            match id {
                TreeId::Telemetry => self.counters().batches_acked.fetch_add(1, Ordering::Relaxed),
                TreeId::Events => self.counters().events_acked.fetch_add(1, Ordering::Relaxed),
                TreeId::Replies => 0,
            };
        }
        Ok(())
    }

    /// Removes one record and keeps the byte count; returns the record if it was there.
    pub(super) fn remove(&self, id: TreeId, seq: u64) -> Result<Option<sled::IVec>, StoreError> {
        let h = self.handles()?;
        self.remove_from(&h, id, seq)
    }

    /// [`Outbox::remove`] with the handles the caller holds.
    fn remove_from(&self, h: &Handles, id: TreeId, seq: u64) -> Result<Option<sled::IVec>, StoreError> {
        #[cfg(test)]
        self.shared.disk.fail_write()?;
        let old = h.tree(id).remove(key(seq))?;
        if let Some(v) = &old {
            self.shared.held.removed(id, v.len() as u64);
        }
        Ok(old)
    }

    /// Sets the byte and record counts to what a scan of the database found.
    pub(super) fn set_held(&self, counted: Counted) {
        self.shared.held.set(counted);
    }

    /// Bytes of records held, the quantity `store.max_bytes` bounds.
    pub fn bytes(&self) -> u64 {
        self.shared.held.bytes.load(Ordering::Relaxed)
    }

    pub fn pending_replies(&self) -> u64 {
        self.shared.held.records(TreeId::Replies)
    }

    /// The broker acknowledged batch `seq`: it may go.
    pub fn ack_telemetry(&self, seq: u64) -> Result<(), StoreError> {
        self.ack(TreeId::Telemetry, seq)
    }

    pub fn ack_event(&self, seq: u64) -> Result<(), StoreError> {
        self.ack(TreeId::Events, seq)
    }

    pub fn pending_batches(&self) -> u64 {
        self.shared.held.records(TreeId::Telemetry)
    }

    pub fn pending_events(&self) -> u64 {
        self.shared.held.records(TreeId::Events)
    }

    /// Marks the start of a run of the agent (called before the drivers start, also after a
    /// reload): batches numbered from here on belong to this run.
    pub fn mark_run_start(&self) {
        self.shared.run_start.store(self.next_batch_seq(), Ordering::SeqCst);
    }

    /// The first batch number of the current run. The uplink counts batches from here on
    /// as live if its first connection succeeds: they were not held back by an outage,
    /// however early the writer stored them.
    pub fn first_batch_seq_this_run(&self) -> u64 {
        self.shared.run_start.load(Ordering::SeqCst)
    }

    /// The `batch_seq` the next stored batch will get.
    pub fn next_batch_seq(&self) -> u64 {
        self.shared.next.load().batch
    }

    pub fn next_event_seq(&self) -> u64 {
        self.shared.next.load().event
    }

    /// The numbers the next batch, event and reply will get.
    pub(super) fn next_numbers(&self) -> Numbers {
        self.shared.next.load()
    }

    /// The size of the sled files on disk last measured (by [`Outbox::disk_bytes`] or a
    /// compaction), without touching the disk.
    pub fn last_disk_bytes(&self) -> u64 {
        self.shared.last_disk_bytes.load(Ordering::Relaxed)
    }

    /// Measures the size on disk on a blocking thread (sled lists and stats every blob
    /// file for it) and returns it.
    pub async fn measure_disk_bytes(&self) -> u64 {
        self.on_blocking_thread(|o| Ok(o.disk_bytes())).await.unwrap_or_else(|_| self.last_disk_bytes())
    }

    /// Size of the sled files on disk (0 while the store is closed; the last size read
    /// while a compaction holds it). Reads the directory of sled's blob files: blocking
    /// (from async code, see [`Outbox::measure_disk_bytes`]).
    pub fn disk_bytes(&self) -> u64 {
        match self.try_handles() {
            None => self.shared.last_disk_bytes.load(Ordering::Relaxed),
            Some(h) => {
                let size = h.ok().and_then(|h| h.db.size_on_disk().ok()).unwrap_or(0);
                self.shared.last_disk_bytes.store(size, Ordering::Relaxed);
                size
            }
        }
    }

    /// Flushes everything written so far to disk, on a blocking thread (see
    /// [`Outbox::flush_blocking`]).
    pub async fn flush(&self) -> Result<(), StoreError> {
        let result = self.on_blocking_thread(|o| o.flush_blocking()).await;
        if let Err(e @ StoreError::BlockingTask(_)) = &result {
            // The flush task itself failed (panicked): as unconfirmed as a failed flush.
            self.flush_failed(e);
        }
        result
    }

    /// Flushes everything written so far to disk (blocking), under the read lock, rather
    /// than with sled's `flush_async`, which keeps the database alive in its own thread
    /// pool where a compaction could not wait for it to close.
    ///
    /// A failure marks the store unwritable and remembers what was numbered so far as
    /// unconfirmed (see `reopen.rs`).
    pub(super) fn flush_blocking(&self) -> Result<(), StoreError> {
        let result = (|| {
            let guard = self.shared.handles.read().unwrap_or_else(|p| p.into_inner());
            let h = guard.as_ref().ok_or(StoreError::Closed)?;
            #[cfg(test)]
            self.shared.disk.fail_write()?;
            h.db.flush()?;
            Ok(())
        })();
        if let Err(e) = &result {
            self.flush_failed(e);
        }
        result
    }

    fn flush_failed(&self, e: &StoreError) {
        let numbered = self.next_numbers();
        let mut below = lock(&self.shared.unconfirmed_below);
        let was = below.unwrap_or(numbered);
        *below = Some(Numbers {
            batch: was.batch.max(numbered.batch),
            event: was.event.max(numbered.event),
            reply: was.reply.max(numbered.reply),
        });
        drop(below);
        self.mark_unwritable(e);
    }

    /// Forgets the deferred acks (their entries went with an unreadable store).
    pub(super) fn clear_deferred_acks(&self) {
        lock(&self.shared.deferred_acks).clear();
    }

    /// The durable marks: numbers below them are on disk.
    pub(super) fn durable_below(&self) -> Numbers {
        self.shared.durable.load()
    }
}

/// A read guard on handles known to be present (checked by [`Outbox::handles`]).
pub(super) struct HandlesGuard<'a>(RwLockReadGuard<'a, Option<Handles>>);

impl std::ops::Deref for HandlesGuard<'_> {
    type Target = Handles;
    fn deref(&self) -> &Handles {
        match self.0.as_ref() {
            Some(h) => h,
            // Outbox::handles returns this guard only after checking Some, and nothing can
            // change the value while the read lock is held.
            None => unreachable!("HandlesGuard is only built over Some"),
        }
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
    /// The device or asset it concerns.
    pub asset: String,
    pub ts: chrono::DateTime<Utc>,
    pub event: crate::events::Event,
}

impl StoredEventDraft {
    /// An event of `gateway` about `asset`, noticed now.
    pub fn now(gateway: impl Into<String>, asset: impl Into<String>, event: crate::events::Event) -> Self {
        StoredEventDraft { gateway: gateway.into(), asset: asset.into(), ts: Utc::now(), event }
    }

    fn finish(&self, seq: u64) -> Result<crate::payload::EventPayload, serde_json::Error> {
        crate::payload::EventPayload::new(format!("{}-{seq}", self.gateway), self.gateway.clone(), self.asset.clone(), self.ts, &self.event)
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
                .map(|i| WireSample {
                    tag: format!("t{i}"),
                    v: Some(edge_drivers::Value::Int(i as i64)),
                    q: "good".into(),
                    ts: "2026-01-01T00:00:00.000Z".into(),
                    server_ts: None,
                    reason: None,
                })
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
        outbox.handles().unwrap().telemetry.insert(key(2), b"\x00\x00\x00\x00garbage".to_vec()).unwrap();
        // When the outbox is read
        let seqs: Vec<u64> = outbox.telemetry_from(0, 10).into_iter().map(|(s, _)| s).collect();
        // Then the damaged one is skipped, counted and gone
        assert_eq!(seqs, vec![1, 3]);
        assert_eq!(outbox.counters().corrupt_records.load(Ordering::Relaxed), 1);
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

    #[test]
    fn a_held_lock_is_told_by_the_lock_itself_not_by_the_text_of_the_error() {
        // Given a store, and an I/O error that reads like sled's lock error
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("outbox");
        drop(Outbox::open(dir.path()).unwrap());
        // (sled's background thread lets go of its files a moment after the drop)
        let released = |path: &std::path::Path| {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
            while lock_is_held(path) && std::time::Instant::now() < deadline {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            !lock_is_held(path)
        };
        assert!(released(&path), "the store is still locked 5 s after it was closed");
        let lookalike = sled::Error::Io(std::io::Error::other("could not acquire lock on \"db\""));
        // When nobody holds the store, Then that error is not taken for a held lock
        assert!(!is_lock_error(&lookalike, &path));
        // When another instance holds it, Then sled's own refusal is recognised as one
        let held = Outbox::open(dir.path()).unwrap();
        let refused = Handles::open(&path).err().expect("sled refuses a second handle");
        assert!(is_lock_error(&refused, &path), "{refused:?}");
        drop(held);
        assert!(released(&path), "the store is still locked 5 s after it was closed");
    }

    #[tokio::test]
    async fn events_get_ids_that_are_unique_across_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let draft =
            StoredEventDraft::now("gw", "plc", crate::events::Event::DeviceLost(crate::events::DeviceLost { reason: "no answer".into() }));
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
