//! The high-water marks of the outbox's numbering, kept beside it in
//! `{data_dir}/store.highwater`, where damage to the sled files cannot take them.
//!
//! sled can open a damaged store without an error and silently lose its newest records
//! (with the counters in its meta tree): numbering would then start again below numbers the
//! ERP has already seen, and the ERP, which drops duplicates by `batch_seq`, would throw
//! new data away. So every number is recorded here, fsynced, before it is published, and
//! on open the outbox never continues below these marks.
//!
//! The file is two 64-byte slots, written alternately (the newer generation wins):
//!
//! | bytes | field |
//! |---|---|
//! | 0..4 | magic `EAHW` |
//! | 4..8 | format version (1), little-endian |
//! | 8..16 | generation (increases with every write) |
//! | 16..24 | next `batch_seq` |
//! | 24..32 | next event sequence |
//! | 32..40 | next reply sequence |
//! | 40..48 | oldest telemetry batch held when written (1 if none) |
//! | 48..56 | oldest event held when written |
//! | 56..60 | CRC-32 of bytes 0..56 |
//! | 60..64 | zero |
//!
//! A torn write can damage only the slot being written, and that slot's numbers are not
//! published yet: the other slot still covers every number published. One write and one
//! `fdatasync` per append; the file lives outside `outbox/`, so compactions and
//! move-asides keep it.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

pub(super) const FILE: &str = "store.highwater";
const MAGIC: &[u8; 4] = b"EAHW";
const VERSION: u32 = 1;
const SLOT: usize = 64;

/// The next numbers to hand out, and the oldest entries held, when they were written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Marks {
    pub next_batch: u64,
    pub next_event: u64,
    pub next_reply: u64,
    /// Oldest telemetry batch held in the outbox when the marks were written: a store lost
    /// since can have held only batches in `oldest_batch..next_batch`.
    pub oldest_batch: u64,
    pub oldest_event: u64,
}

impl Default for Marks {
    fn default() -> Self {
        Self { next_batch: 1, next_event: 1, next_reply: 1, oldest_batch: 1, oldest_event: 1 }
    }
}

impl Marks {
    /// Field by field: the next numbers the larger, the oldest held the newer `other`'s.
    fn raised_by(self, other: Marks) -> Marks {
        Marks {
            next_batch: self.next_batch.max(other.next_batch),
            next_event: self.next_event.max(other.next_event),
            next_reply: self.next_reply.max(other.next_reply),
            oldest_batch: other.oldest_batch,
            oldest_event: other.oldest_event,
        }
    }

    fn encode(self, generation: u64) -> [u8; SLOT] {
        let mut b = [0u8; SLOT];
        b[0..4].copy_from_slice(MAGIC);
        b[4..8].copy_from_slice(&VERSION.to_le_bytes());
        for (i, v) in
            [generation, self.next_batch, self.next_event, self.next_reply, self.oldest_batch, self.oldest_event].into_iter().enumerate()
        {
            b[8 + i * 8..16 + i * 8].copy_from_slice(&v.to_le_bytes());
        }
        let crc = crc32fast::hash(&b[0..56]);
        b[56..60].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// `(generation, marks)` if the slot is intact.
    fn decode(b: &[u8]) -> Option<(u64, Marks)> {
        if b.len() != SLOT || &b[0..4] != MAGIC || b[4..8] != VERSION.to_le_bytes() {
            return None;
        }
        if crc32fast::hash(&b[0..56]).to_le_bytes() != b[56..60] {
            return None;
        }
        let u = |i: usize| b[8 + i * 8..16 + i * 8].try_into().ok().map(u64::from_le_bytes);
        Some((u(0)?, Marks { next_batch: u(1)?, next_event: u(2)?, next_reply: u(3)?, oldest_batch: u(4)?, oldest_event: u(5)? }))
    }
}

/// What the file held when it was opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Loaded {
    /// No file: a new data dir, or one from a version of the agent without it.
    Missing,
    /// A file with no intact slot: the marks are unknown.
    Unreadable,
    Found(Marks),
}

/// The open file and the marks last written.
#[derive(Debug)]
pub struct HighWater {
    file: File,
    path: PathBuf,
    generation: u64,
    marks: Marks,
}

impl HighWater {
    /// Opens (creating if needed) `{dir}/store.highwater` and reads the newest intact slot.
    pub fn open(dir: &Path) -> io::Result<(Self, Loaded)> {
        let path = dir.join(FILE);
        let existed = path.exists();
        let file = OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&path)?;
        let mut bytes = Vec::new();
        io::Read::read_to_end(&mut &file, &mut bytes)?;
        let newest = bytes.chunks(SLOT).filter_map(Marks::decode).max_by_key(|(generation, _)| *generation);
        let loaded = match newest {
            Some((_, m)) => Loaded::Found(m),
            None if existed && !bytes.is_empty() => Loaded::Unreadable,
            None => Loaded::Missing,
        };
        let (generation, marks) = newest.unwrap_or((0, Marks::default()));
        let hw = Self { file, path, generation, marks };
        if !existed {
            // The file's directory entry must survive a power cut too.
            File::open(dir).and_then(|d| d.sync_all())?;
        }
        Ok((hw, loaded))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn marks(&self) -> Marks {
        self.marks
    }

    /// Records `marks` (each next number only ever goes up) and waits until they are on
    /// disk. Call before publishing any number below them.
    pub fn raise(&mut self, marks: Marks) -> io::Result<()> {
        let new = self.marks.raised_by(marks);
        if new == self.marks && self.generation > 0 {
            return Ok(());
        }
        let generation = self.generation + 1;
        let slot = (generation % 2) * SLOT as u64;
        self.file.write_all_at(&new.encode(generation), slot)?;
        self.file.sync_data()?;
        self.generation = generation;
        self.marks = new;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn marks(n: u64) -> Marks {
        Marks { next_batch: n, next_event: n + 1, next_reply: n + 2, oldest_batch: n / 2, oldest_event: 1 }
    }

    #[test]
    fn the_marks_written_last_are_read_back_after_reopening() {
        // Given marks raised three times
        let dir = tempfile::tempdir().unwrap();
        let (mut hw, loaded) = HighWater::open(dir.path()).unwrap();
        assert_eq!(loaded, Loaded::Missing);
        for n in [5, 9, 14] {
            hw.raise(marks(n)).unwrap();
        }
        drop(hw);
        // When the file is opened again
        let (hw, loaded) = HighWater::open(dir.path()).unwrap();
        // Then the last marks are there
        assert_eq!(loaded, Loaded::Found(marks(14)));
        assert_eq!(hw.marks(), marks(14));
    }

    #[test]
    fn a_next_number_never_goes_down_when_raised_with_a_lower_one() {
        let dir = tempfile::tempdir().unwrap();
        let (mut hw, _) = HighWater::open(dir.path()).unwrap();
        hw.raise(marks(10)).unwrap();
        hw.raise(Marks { next_batch: 3, next_event: 30, next_reply: 1, oldest_batch: 2, oldest_event: 1 }).unwrap();
        assert_eq!((hw.marks().next_batch, hw.marks().next_event, hw.marks().next_reply), (10, 30, 12));
    }

    #[test]
    fn a_torn_write_of_one_slot_falls_back_to_the_other_slot() {
        // Given marks written twice (one slot each)
        let dir = tempfile::tempdir().unwrap();
        let (mut hw, _) = HighWater::open(dir.path()).unwrap();
        hw.raise(marks(7)).unwrap();
        hw.raise(marks(8)).unwrap();
        drop(hw);
        // When the newer slot is damaged (generation 2 lives in slot 0)
        let path = dir.path().join(FILE);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[20] ^= 0x10;
        std::fs::write(&path, &bytes).unwrap();
        // Then the older one is read: never a number above what it recorded is lost
        let (_, loaded) = HighWater::open(dir.path()).unwrap();
        assert_eq!(loaded, Loaded::Found(marks(7)));
    }

    #[test]
    fn a_file_with_no_intact_slot_is_reported_unreadable_not_missing() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(FILE), vec![0x5Au8; 128]).unwrap();
        let (_, loaded) = HighWater::open(dir.path()).unwrap();
        assert_eq!(loaded, Loaded::Unreadable);
    }
}
