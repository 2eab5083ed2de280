//! The store's format version, kept in `{data_dir}/store.format` beside `store.highwater`,
//! so that an agent can tell which format a store is in without opening it with sled.
//!
//! The file is one line of text: `edge-agent store format 1`. It is written (a temporary
//! file, fsynced, renamed, the data dir fsynced) when a store is created, and after an
//! older store has been migrated. On open (see `docs/store-format.md`):
//!
//! | found | done |
//! |---|---|
//! | no `outbox/` | a fresh store is created and stamped with [`CURRENT`] |
//! | [`CURRENT`] | opened as it is |
//! | an older version, or no marker (a store written before the marker existed, which is version 1) | migrated step by step ([`MIGRATIONS`]), then stamped |
//! | a newer version | set aside to `outbox.format-v{N}-{time}` (reason `format_newer`), a fresh store started |
//! | a marker that names no version | set aside to `outbox.format-unknown-{time}` (reason `format_unknown`), a fresh store started |
//!
//! A store set aside is never opened: it stays as the newer agent wrote it, and is raised
//! as a `store_reset` event (counted and logged as every reset is). Numbering goes on above
//! the high-water marks, which live outside the store.

use std::fs::File;
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use chrono::Utc;

use super::outbox::{Handles, StoreError, LOCK_WAIT};

pub(super) const FILE: &str = "store.format";
/// The store format this agent writes and reads. Version 1: the sled outbox described in
/// `docs/store-format.md`.
pub const CURRENT: u32 = 1;
const PREFIX: &str = "edge-agent store format ";

/// The steps that bring a store from version `i + 1` to `i + 2`, run in order on the
/// opened database before it is stamped (a crash midway runs them again: each step must
/// be idempotent). None yet: version 1 is the first.
pub(super) const MIGRATIONS: &[Migration] = &[];
/// One migration step, on the opened database.
pub(super) type Migration = fn(&Handles) -> Result<(), sled::Error>;
const _: () = assert!(MIGRATIONS.len() + 1 == CURRENT as usize, "one migration per version after the first");

/// What `store.format` says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Marker {
    Missing,
    Version(u32),
    /// A marker that names no version (damaged, or not written by an edge-agent): its
    /// first line, shortened.
    Unknown(String),
}

/// Reads `{dir}/store.format`.
pub(super) fn read(dir: &Path) -> io::Result<Marker> {
    match std::fs::read(dir.join(FILE)) {
        Ok(bytes) => Ok(parse(&bytes)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Marker::Missing),
        Err(e) => Err(e),
    }
}

fn parse(bytes: &[u8]) -> Marker {
    let text = String::from_utf8_lossy(bytes);
    let line = text.lines().next().unwrap_or("").trim();
    match line.strip_prefix(PREFIX).and_then(|v| v.parse::<u32>().ok()) {
        Some(v) if v >= 1 => Marker::Version(v),
        _ => Marker::Unknown(line.chars().take(80).collect()),
    }
}

/// Writes `{dir}/store.format` for `version`, durably.
pub(super) fn write(dir: &Path, version: u32) -> io::Result<()> {
    let tmp = dir.join(format!("{FILE}.tmp"));
    let mut f = File::create(&tmp)?;
    writeln!(f, "{PREFIX}{version}")?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, dir.join(FILE))?;
    File::open(dir)?.sync_all()
}

/// What open does with the store it finds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Verdict {
    /// No store yet: the one created is stamped.
    Fresh,
    /// In this agent's format.
    Current,
    /// In an older format (version `from`): migrated, then stamped.
    Migrate { from: u32 },
    /// Not a format this agent reads: set aside, never opened.
    SetAside(Foreign),
}

/// A store in a format this agent does not read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Foreign {
    Newer(u32),
    Unknown(String),
}

impl Foreign {
    /// The `store_reset` reason.
    pub(super) fn reason(&self) -> crate::events::StoreResetReason {
        match self {
            Foreign::Newer(_) => crate::events::StoreResetReason::FormatNewer,
            Foreign::Unknown(_) => crate::events::StoreResetReason::FormatUnknown,
        }
    }

    /// Where the store goes: `outbox.format-v2-{time}`, `outbox.format-unknown-{time}`.
    fn aside_name(&self) -> String {
        let time = Utc::now().format("%Y%m%dT%H%M%S%.3fZ");
        match self {
            Foreign::Newer(v) => format!("outbox.format-v{v}-{time}"),
            Foreign::Unknown(_) => format!("outbox.format-unknown-{time}"),
        }
    }

    /// The operator's message (logged, and carried in the `store_reset` event): both
    /// versions, where the store went, and what to do.
    pub(super) fn message(&self, store: &Path, aside: &Path) -> String {
        let (store, aside) = (store.display(), aside.display());
        let what = match self {
            Foreign::Newer(v) => {
                format!("the store {store} is in format version {v}, newer than this agent reads (store format version {CURRENT})")
            }
            Foreign::Unknown(text) => {
                format!("the store {store} has a format marker ({FILE}: {text:?}) that names no version this agent knows (it reads store format version {CURRENT})")
            }
        };
        format!(
            "{what}: it was set aside to {aside}, unread, and a fresh store started. To deliver what it holds, run the edge-agent version that wrote it on this data_dir (stop this one, remove the fresh outbox and move {aside} back to outbox); otherwise export what you need from it and remove {aside}"
        )
    }
}

/// The verdict on a store (`store_exists`: `outbox/` is there) with this marker.
pub(super) fn judge(marker: &Marker, store_exists: bool) -> Verdict {
    if !store_exists {
        return Verdict::Fresh;
    }
    match marker {
        // Written by an agent from before the marker: version 1.
        Marker::Missing => Verdict::Migrate { from: 1 },
        Marker::Version(v) if *v == CURRENT => Verdict::Current,
        Marker::Version(v) if *v < CURRENT => Verdict::Migrate { from: *v },
        Marker::Version(v) => Verdict::SetAside(Foreign::Newer(*v)),
        Marker::Unknown(text) => Verdict::SetAside(Foreign::Unknown(text.clone())),
    }
}

/// Moves the store at `path` aside (to a sibling named after `foreign`) without opening it,
/// holding its lock meanwhile so that the store of an agent still running on this data dir
/// is never moved: while its lock is held (sled's `flock` on `db`) this waits up to
/// [`LOCK_WAIT`], then refuses as a locked store. Returns where it went.
pub(super) fn set_aside(dir: &Path, path: &Path, foreign: &Foreign) -> Result<PathBuf, StoreError> {
    use fs2::FileExt as _;
    let io_err = |source| StoreError::Io { path: path.to_path_buf(), source };
    let lock = match File::open(path.join("db")) {
        Ok(f) => Some(f),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(io_err(e)),
    };
    if let Some(f) = &lock {
        let started = Instant::now();
        loop {
            match f.try_lock_exclusive() {
                Ok(()) => break,
                Err(e) if e.kind() == fs2::lock_contended_error().kind() => {
                    let waited = started.elapsed();
                    if waited >= LOCK_WAIT {
                        return Err(StoreError::Locked { path: path.to_path_buf(), waited });
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(e) => return Err(io_err(e)),
            }
        }
    }
    let aside = dir.join(foreign.aside_name());
    std::fs::rename(path, &aside).map_err(|source| StoreError::MoveAside { path: path.to_path_buf(), source })?;
    File::open(dir).and_then(|d| d.sync_all()).map_err(|source| StoreError::Io { path: dir.to_path_buf(), source })?;
    drop(lock);
    Ok(aside)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_marker_written_is_read_back_as_its_version() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read(dir.path()).unwrap(), Marker::Missing);
        write(dir.path(), 7).unwrap();
        assert_eq!(read(dir.path()).unwrap(), Marker::Version(7));
        assert_eq!(std::fs::read_to_string(dir.path().join(FILE)).unwrap(), "edge-agent store format 7\n");
    }

    #[test]
    fn a_marker_that_names_no_version_is_unknown_never_a_version() {
        for text in ["", "edge-agent store format", "edge-agent store format 0", "edge-agent store format two", "\u{fffd}\u{1}garbage"] {
            assert!(matches!(parse(text.as_bytes()), Marker::Unknown(_)), "{text:?} read as {:?}", parse(text.as_bytes()));
        }
    }

    #[test]
    fn each_marker_gets_its_verdict() {
        assert_eq!(judge(&Marker::Version(CURRENT + 1), false), Verdict::Fresh);
        assert_eq!(judge(&Marker::Missing, true), Verdict::Migrate { from: 1 });
        assert_eq!(judge(&Marker::Version(CURRENT), true), Verdict::Current);
        assert_eq!(judge(&Marker::Version(CURRENT + 1), true), Verdict::SetAside(Foreign::Newer(CURRENT + 1)));
        assert_eq!(judge(&Marker::Unknown("x".into()), true), Verdict::SetAside(Foreign::Unknown("x".into())));
    }
}
