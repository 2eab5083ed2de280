//! Logged-out sessions, kept in `web-sessions-revoked` in the data directory.
//!
//! A session cookie is signed under a secret that persists on disk, so a copy of a cookie
//! made before its logout would open the page again after a restart if the logout were
//! remembered in memory only. Each logout is therefore written to this small file (a
//! temporary file, synced, renamed over the old one, the directory synced) before the
//! logout is answered, and read back when the page starts (and on `reload`).
//!
//! A line is `<session id> <login time, unix seconds>`. An entry is kept while a cookie of
//! that login could still be valid (`login + session_max` is in the future, with the
//! `session_max` of now: a longer one after a reload keeps entries longer), and at most
//! [`MAX_ENTRIES`] are kept: past that, the sessions nearest to their absolute expiry are
//! forgotten first (counted and logged).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// The file's name in the data directory.
pub const FILE: &str = "web-sessions-revoked";
/// Most logged-out sessions remembered (about 40 bytes each on disk).
pub const MAX_ENTRIES: usize = 4096;
/// A larger file is not read (it was not written by the agent).
const MAX_FILE_BYTES: u64 = 1 << 20;
const HEADER: &str = "# edge-agent: logged-out status page sessions (session id, login time). \
Deleting this file lets their cookies work again until they expire.\n";

/// Logged-out sessions forgotten early because the store was full (process-wide, for
/// `/metrics`).
static FORGOTTEN: AtomicU64 = AtomicU64::new(0);

pub fn forgotten() -> u64 {
    FORGOTTEN.load(Ordering::Relaxed)
}

/// Why the store could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum RevokedError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: larger than {MAX_FILE_BYTES} bytes: not written by the agent (delete it)")]
    TooLarge { path: PathBuf },
}

/// The logged-out sessions: session id → login time (unix seconds).
#[derive(Debug)]
pub struct Revoked {
    path: PathBuf,
    entries: Mutex<HashMap<String, i64>>,
    /// Held while the file is written, so that two logouts write one after the other and
    /// the later snapshot lands last.
    writing: Mutex<()>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A session id as the agent makes them (base64url); anything else is not stored.
fn valid_sid(sid: &str) -> bool {
    !sid.is_empty() && sid.len() <= 64 && sid.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

impl Revoked {
    /// Reads `data_dir/web-sessions-revoked` (absent: nothing is revoked), keeping the
    /// entries that may still be valid at `now` under `max` (seconds). Malformed lines are
    /// skipped. Blocking.
    pub fn load(data_dir: &Path, max: i64, now: i64) -> Result<Revoked, RevokedError> {
        let path = data_dir.join(FILE);
        let io = |source| RevokedError::Io { path: path.clone(), source };
        let text = match std::fs::metadata(&path) {
            Ok(meta) if meta.len() > MAX_FILE_BYTES => return Err(RevokedError::TooLarge { path }),
            Ok(_) => std::fs::read_to_string(&path).map_err(io)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(io(e)),
        };
        let mut entries = HashMap::new();
        for line in text.lines().filter(|l| !l.starts_with('#') && !l.trim().is_empty()) {
            let mut it = line.split_whitespace();
            if let (Some(sid), Some(Ok(issued)), None) = (it.next(), it.next().map(str::parse::<i64>), it.next()) {
                if valid_sid(sid) && issued.saturating_add(max) > now {
                    entries.insert(sid.to_string(), issued);
                }
            }
        }
        prune(&mut entries, max, now);
        Ok(Revoked { path, entries: Mutex::new(entries), writing: Mutex::new(()) })
    }

    /// Whether session `sid` was logged out.
    pub fn contains(&self, sid: &str) -> bool {
        lock(&self.entries).contains_key(sid)
    }

    /// How many logged-out sessions are remembered.
    pub fn len(&self) -> usize {
        lock(&self.entries).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Revokes session `sid` (logged in at `issued`) at once in memory, then writes the
    /// file. An error means the logout holds until the agent stops, not after. Blocking.
    pub fn revoke(&self, sid: &str, issued: i64, max: i64, now: i64) -> Result<(), RevokedError> {
        let _writing = lock(&self.writing);
        let text = {
            let mut entries = lock(&self.entries);
            if valid_sid(sid) {
                entries.insert(sid.to_string(), issued);
            }
            prune(&mut entries, max, now);
            let mut lines: Vec<(&String, &i64)> = entries.iter().collect();
            lines.sort_by(|a, b| a.1.cmp(b.1).then(a.0.cmp(b.0)));
            let mut text = String::from(HEADER);
            for (sid, issued) in lines {
                text.push_str(&format!("{sid} {issued}\n"));
            }
            text
        };
        super::users::write_private_atomically(&self.path, text.as_bytes())
            .map_err(|source| RevokedError::Io { path: self.path.clone(), source })
    }
}

/// Drops the entries that expired by `now`, then the oldest logins past [`MAX_ENTRIES`].
fn prune(entries: &mut HashMap<String, i64>, max: i64, now: i64) {
    entries.retain(|_, issued| issued.saturating_add(max) > now);
    if entries.len() > MAX_ENTRIES {
        let mut by_age: Vec<(i64, String)> = entries.iter().map(|(s, i)| (*i, s.clone())).collect();
        by_age.sort();
        let excess = entries.len() - MAX_ENTRIES;
        for (_, sid) in by_age.into_iter().take(excess) {
            entries.remove(&sid);
        }
        FORGOTTEN.fetch_add(excess as u64, Ordering::Relaxed);
        tracing::warn!(
            forgotten = excess,
            max = MAX_ENTRIES,
            "status page: too many logged-out sessions to remember: the oldest are forgotten (their cookies work again until they expire)"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: i64 = 12 * 3600;
    const NOW: i64 = 1_700_000_000;

    #[test]
    fn a_logout_is_still_known_when_the_store_is_read_again_from_the_same_directory() {
        // Given an empty data directory and a session logged out in it
        let dir = tempfile::tempdir().expect("tempdir");
        let revoked = Revoked::load(dir.path(), MAX, NOW).expect("load");
        assert!(!revoked.contains("sid-A"));
        revoked.revoke("sid-A", NOW - 60, MAX, NOW).expect("revoke");
        assert!(revoked.contains("sid-A"));
        // When the store is read again (an agent restart)
        let again = Revoked::load(dir.path(), MAX, NOW + 1).expect("reload");
        // Then the session is still revoked, another is not, and the file is private
        assert!(again.contains("sid-A"));
        assert!(!again.contains("sid-B"));
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(dir.path().join(FILE)).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn a_logout_is_forgotten_once_its_session_would_have_expired_anyway() {
        // Given a session logged out an hour after its login
        let dir = tempfile::tempdir().expect("tempdir");
        let revoked = Revoked::load(dir.path(), MAX, NOW).expect("load");
        revoked.revoke("old", NOW - MAX + 10, MAX, NOW).expect("revoke");
        // When the store is read after that login's session_max passed
        let later = Revoked::load(dir.path(), MAX, NOW + 10).expect("reload");
        // Then it is gone, and the next write drops it from the file too
        assert!(!later.contains("old"));
        later.revoke("new", NOW, MAX, NOW + 10).expect("revoke");
        let text = std::fs::read_to_string(dir.path().join(FILE)).expect("read");
        assert!(!text.contains("old ") && text.contains("new "), "{text}");
        // But a longer session_max (after a reload) keeps it
        revoked.revoke("x", NOW, MAX, NOW).expect("revoke");
        let longer = Revoked::load(dir.path(), 2 * MAX, NOW + 10).expect("reload");
        assert!(longer.contains("x"));
    }

    #[test]
    fn the_store_keeps_at_most_max_entries_and_forgets_the_oldest_logins_first() {
        // Given more logouts than the store keeps
        let dir = tempfile::tempdir().expect("tempdir");
        let revoked = Revoked::load(dir.path(), MAX, NOW).expect("load");
        {
            let mut entries = lock(&revoked.entries);
            for i in 0..MAX_ENTRIES {
                entries.insert(format!("s{i}"), NOW - 1000 + (i as i64 % 500));
            }
        }
        let before = forgotten();
        // When one more is revoked
        revoked.revoke("newest", NOW, MAX, NOW).expect("revoke");
        // Then the store holds MAX_ENTRIES, the newest among them, the oldest login forgotten
        assert_eq!(revoked.len(), MAX_ENTRIES);
        assert!(revoked.contains("newest"));
        assert!(!revoked.contains("s0"));
        assert!(forgotten() > before);
        assert_eq!(Revoked::load(dir.path(), MAX, NOW).expect("reload").len(), MAX_ENTRIES);
    }

    #[test]
    fn malformed_lines_and_foreign_session_ids_are_skipped() {
        // Given a file with a good line, garbage and an id with spaces or symbols
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join(FILE), format!("# c\ngood_1-x {NOW}\nnot a line\nbad;id {NOW}\nsid notanumber\n\n")).expect("write");
        // Then the good one is read, the rest skipped
        let revoked = Revoked::load(dir.path(), MAX, NOW).expect("load");
        assert!(revoked.contains("good_1-x"));
        assert_eq!(revoked.len(), 1);
    }
}
