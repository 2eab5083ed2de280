//! The birth/death sequence number (`bdSeq`), persisted in `{data_dir}/sparkplug-bdseq`.
//!
//! Each MQTT CONNECT carries an NDEATH Will with a new `bdSeq` (0–255, wrapping), and the
//! NBIRTH of that session repeats it, so a host can tell which death ends which birth. The
//! number is written (temporary file, fsync, rename, fsync of the directory) *before* the
//! CONNECT that uses it: after a crash, a `kill -9` or a power cut the agent starts from the
//! next one and never reuses a value the broker may still hold as a Will.

use std::path::{Path, PathBuf};

/// The file's name in `gateway.data_dir`.
pub const FILE: &str = "sparkplug-bdseq";

/// Why the file could not be read or written (the number still advances in memory).
#[derive(Debug, thiserror::Error)]
pub enum BdSeqError {
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("{path} holds {text:?}, not a number 0–255; starting again from 0")]
    Damaged { path: String, text: String },
}

/// The persisted counter.
#[derive(Debug, Clone)]
pub struct BdSeq {
    path: PathBuf,
    /// The value of the last CONNECT (the file's content), if any.
    last: Option<u8>,
}

impl BdSeq {
    /// Reads `{data_dir}/sparkplug-bdseq`; a missing file starts at 0, a damaged one too
    /// (returned as the error to log, with the counter usable).
    pub fn open(data_dir: &Path) -> (Self, Option<BdSeqError>) {
        let path = data_dir.join(FILE);
        let shown = path.display().to_string();
        match std::fs::read_to_string(&path) {
            Ok(text) => match text.trim().parse::<u8>() {
                Ok(n) => (Self { path, last: Some(n) }, None),
                Err(_) => (Self { path, last: None }, Some(BdSeqError::Damaged { path: shown, text: text.chars().take(32).collect() })),
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => (Self { path, last: None }, None),
            Err(source) => (Self { path, last: None }, Some(BdSeqError::Io { path: shown, source })),
        }
    }

    /// The counter of `data_dir` as if its file were missing (when it could not be read).
    pub fn unread(data_dir: &Path) -> Self {
        Self { path: data_dir.join(FILE), last: None }
    }

    /// The value of the last CONNECT, as read or last advanced.
    pub fn last(&self) -> Option<u8> {
        self.last
    }

    /// The value for the next CONNECT: one more than the last (0 after 255, or when there
    /// was none), written to disk before it is returned. A write error is returned with
    /// the value, which is used anyway (the node must connect; the next restart may then
    /// repeat a number, which the log says).
    pub fn advance(&mut self) -> (u8, Option<BdSeqError>) {
        let next = self.last.map_or(0, |n| n.wrapping_add(1));
        self.last = Some(next);
        let written = crate::web::users::write_private_atomically(&self.path, format!("{next}\n").as_bytes())
            .err()
            .map(|source| BdSeqError::Io { path: self.path.display().to_string(), source });
        (next, written)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bdseq_starts_at_zero_advances_by_one_and_survives_a_reopen() {
        // Given an empty data dir
        let dir = tempfile::tempdir().unwrap();
        let (mut b, err) = BdSeq::open(dir.path());
        assert!(err.is_none());
        // When two sessions start
        assert_eq!(b.advance().0, 0);
        assert_eq!(b.advance().0, 1);
        // Then a new process goes on from the last one written
        let (mut again, _) = BdSeq::open(dir.path());
        assert_eq!(again.last(), Some(1));
        assert_eq!(again.advance().0, 2);
    }

    #[test]
    fn bdseq_wraps_after_255() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(FILE), "255\n").unwrap();
        let (mut b, _) = BdSeq::open(dir.path());
        assert_eq!(b.advance().0, 0);
    }

    #[test]
    fn a_damaged_bdseq_file_is_reported_and_the_counter_starts_again() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(FILE), "garbage").unwrap();
        let (mut b, err) = BdSeq::open(dir.path());
        assert!(matches!(err, Some(BdSeqError::Damaged { .. })));
        assert_eq!(b.advance().0, 0);
        assert_eq!(std::fs::read_to_string(dir.path().join(FILE)).unwrap(), "0\n");
    }
}
