//! Debounced inputs and pulse counters that survive restarts.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::config::Level;

/// Turns raw edges into stable levels: a change counts once it has held for `debounce`
/// (contact bounce, a relay chattering, noise on a long cable are ignored).
#[derive(Debug, Clone)]
pub struct Debouncer {
    debounce: Duration,
    stable: Level,
    pending: Option<(Level, Instant)>,
    /// Stable low → high changes since the start.
    pub rising: u64,
}

impl Debouncer {
    pub fn new(initial: Level, debounce: Duration) -> Self {
        Self { debounce, stable: initial, pending: None, rising: 0 }
    }

    pub fn level(&self) -> Level {
        self.stable
    }

    /// A raw edge to `level` at `at`.
    pub fn edge(&mut self, level: Level, at: Instant) {
        self.settle(at);
        self.pending = (level != self.stable).then_some((level, at));
    }

    /// Accepts a pending change that has held for the debounce time by `now`.
    pub fn settle(&mut self, now: Instant) {
        if let Some((level, since)) = self.pending {
            if now.saturating_duration_since(since) >= self.debounce {
                if self.stable == Level::Low && level == Level::High {
                    self.rising += 1;
                }
                self.stable = level;
                self.pending = None;
            }
        }
    }
}

/// The counters' totals, kept in `{data_dir}/gpio-counters.json` (written to a temporary
/// file, synced and renamed over the old one: a power cut leaves the old or the new file,
/// never half of one).
#[derive(Debug, Clone)]
pub struct CounterFile {
    path: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum CounterFileError {
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("{path} is damaged ({source}); the counters start from 0 and the file is set aside as {aside}")]
    Damaged { path: String, aside: String, source: serde_json::Error },
}

impl CounterFile {
    pub fn new(data_dir: &Path) -> Self {
        Self { path: data_dir.join("gpio-counters.json") }
    }

    /// The saved totals; none when there is no file yet. A damaged file is moved aside and
    /// reported (the counters then start from 0: said, not hidden).
    pub fn load(&self) -> (BTreeMap<String, u64>, Option<CounterFileError>) {
        let text = match std::fs::read(&self.path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return (BTreeMap::new(), None),
            Err(e) => return (BTreeMap::new(), Some(CounterFileError::Io { path: self.path.display().to_string(), source: e })),
        };
        match serde_json::from_slice(&text) {
            Ok(map) => (map, None),
            Err(source) => {
                let aside = self.path.with_extension("json.damaged");
                let _ = std::fs::rename(&self.path, &aside);
                (
                    BTreeMap::new(),
                    Some(CounterFileError::Damaged { path: self.path.display().to_string(), aside: aside.display().to_string(), source }),
                )
            }
        }
    }

    pub fn save(&self, totals: &BTreeMap<String, u64>) -> Result<(), CounterFileError> {
        let io = |e| CounterFileError::Io { path: self.path.display().to_string(), source: e };
        let tmp = self.path.with_extension("json.tmp");
        let json = serde_json::to_vec_pretty(totals).unwrap_or_default();
        let mut f = std::fs::File::create(&tmp).map_err(io)?;
        f.write_all(&json).map_err(io)?;
        f.sync_all().map_err(io)?;
        std::fs::rename(&tmp, &self.path).map_err(io)?;
        if let Some(dir) = self.path.parent() {
            if let Ok(d) = std::fs::File::open(dir) {
                let _ = d.sync_all();
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn a_bouncing_contact_counts_once_per_press() {
        // Given a 20 ms debounce and a meter whose contact bounces for 5 ms on every pulse
        let t0 = Instant::now();
        let mut d = Debouncer::new(Level::Low, 20 * MS);
        for pulse in 0..100u32 {
            let start = t0 + pulse * 100 * MS;
            for (i, ms) in [0u32, 1, 2, 3, 4].into_iter().enumerate() {
                d.edge(if i % 2 == 0 { Level::High } else { Level::Low }, start + ms * MS);
            }
            // the contact settles high at +4 ms, stays 40 ms, then opens cleanly
            d.edge(Level::Low, start + 44 * MS);
        }
        d.settle(t0 + 100 * 100 * MS);
        // Then exactly 100 pulses are counted
        assert_eq!(d.rising, 100);
        assert_eq!(d.level(), Level::Low);
    }

    #[test]
    fn a_spike_shorter_than_the_debounce_is_not_a_pulse() {
        let t0 = Instant::now();
        let mut d = Debouncer::new(Level::Low, 20 * MS);
        d.edge(Level::High, t0);
        d.edge(Level::Low, t0 + 5 * MS);
        d.settle(t0 + 100 * MS);
        assert_eq!(d.rising, 0);
        assert_eq!(d.level(), Level::Low);
    }

    #[test]
    fn a_level_held_long_enough_is_taken_without_a_further_edge() {
        let t0 = Instant::now();
        let mut d = Debouncer::new(Level::Low, 20 * MS);
        d.edge(Level::High, t0);
        d.settle(t0 + 19 * MS);
        assert_eq!(d.level(), Level::Low);
        d.settle(t0 + 20 * MS);
        assert_eq!((d.level(), d.rising), (Level::High, 1));
    }

    #[test]
    fn totals_survive_a_restart_and_a_damaged_file_is_set_aside() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let file = CounterFile::new(dir.path());
        assert!(file.load().0.is_empty());
        let totals = BTreeMap::from([("bags".to_string(), 1234u64)]);
        file.save(&totals).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(CounterFile::new(dir.path()).load().0, totals);

        std::fs::write(dir.path().join("gpio-counters.json"), b"{\"bags\": 12").unwrap_or_else(|e| panic!("{e}"));
        let (loaded, error) = file.load();
        assert!(loaded.is_empty());
        let message = error.map(|e| e.to_string()).unwrap_or_default();
        assert!(message.contains("gpio-counters.json is damaged") && message.contains("set aside"), "{message}");
        assert!(dir.path().join("gpio-counters.json.damaged").exists());
    }
}
