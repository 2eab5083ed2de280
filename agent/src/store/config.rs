//! `[store]`: the outbox settings.

use std::time::Duration;

use bytesize::ByteSize;
use edge_drivers::validate::Issues;
use serde::{Deserialize, Serialize};

/// `[store]`: the outbox every sample passes through before it is published.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoreConfig {
    /// How often buffered samples are written and flushed to disk as batches. This is the
    /// durability window: on a power cut, samples younger than this may be lost; anything
    /// older was flushed and will be delivered.
    #[serde(default = "default_flush_interval", with = "humantime_serde")]
    pub flush_interval: Duration,
    /// A device's batch is cut early when it reaches this many samples.
    #[serde(default = "default_max_batch_samples")]
    pub max_batch_samples: usize,
    /// Gathered samples are written and flushed early once they take about this many
    /// bytes (`"1 MiB"`), so a burst does not wait for the interval. Interval and size
    /// both apply: whichever comes first.
    #[serde(default = "default_flush_bytes")]
    pub flush_bytes: ByteSize,
    /// Most bytes of records the outbox may hold (`"512 MiB"`). When full, the oldest
    /// telemetry is dropped first and events last; every drop is counted and raised as a
    /// `buffer_overflow` event. Sled needs disk beyond this: up to `compact_above`, plus a
    /// copy of the store while compacting (see BENCHMARKS.md).
    #[serde(default = "default_max_bytes")]
    pub max_bytes: ByteSize,
    /// Telemetry older than this is dropped even when there is room (`"7d"`); unset keeps
    /// data until `max_bytes` forces it out.
    #[serde(default, with = "humantime_serde")]
    pub max_age: Option<Duration>,
    /// The outbox directory is compacted (its records rewritten into a fresh sled
    /// database, pausing the store briefly) when it grows past this size on disk
    /// (`"1.5 GiB"`) and by a quarter since the last compaction. Unset: 2 ×
    /// `max_bytes`. Must be more than `max_bytes`; a compaction needs room for a copy of
    /// the records beside the store (see BENCHMARKS.md).
    #[serde(default)]
    pub compact_above: Option<ByteSize>,
}

fn default_flush_interval() -> Duration {
    Duration::from_secs(1)
}
fn default_max_batch_samples() -> usize {
    1000
}
fn default_flush_bytes() -> ByteSize {
    ByteSize::mib(1)
}
fn default_max_bytes() -> ByteSize {
    ByteSize::mib(512)
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            flush_interval: default_flush_interval(),
            max_batch_samples: default_max_batch_samples(),
            flush_bytes: default_flush_bytes(),
            max_bytes: default_max_bytes(),
            max_age: None,
            compact_above: None,
        }
    }
}

/// `compact_above` when unset, as a multiple of `max_bytes`. Measured (BENCHMARKS.md, "Long
/// churn run"): a full store compacts to about 1.35–1.6 × `max_bytes` and churn takes it to
/// 2 × only after some 300 × `max_bytes` written, so 2 × compacts rarely, and the disk peak
/// during a compaction (old store + copy) stays near 3.6 × `max_bytes`.
const DEFAULT_COMPACT_ABOVE_TIMES_MAX_BYTES: u64 = 2;

/// `[store]` as the writer runs it: every size in bytes, every default resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreSettings {
    pub flush_interval: Duration,
    pub max_batch_samples: usize,
    pub flush_bytes: u64,
    pub max_bytes: u64,
    /// `None`: no age limit (telemetry stays until `max_bytes` forces it out).
    pub max_age: Option<Duration>,
    /// Size on disk above which the outbox is compacted: `compact_above`, else 2 ×
    /// `max_bytes`.
    pub compact_above: u64,
}

impl StoreConfig {
    /// The settings the writer runs with, `compact_above`'s default resolved here.
    pub fn build(&self) -> StoreSettings {
        let max_bytes = self.max_bytes.as_u64();
        StoreSettings {
            flush_interval: self.flush_interval,
            max_batch_samples: self.max_batch_samples,
            flush_bytes: self.flush_bytes.as_u64(),
            max_bytes,
            max_age: self.max_age,
            compact_above: self.compact_above.map_or(max_bytes.saturating_mul(DEFAULT_COMPACT_ABOVE_TIMES_MAX_BYTES), |b| b.as_u64()),
        }
    }

    /// Appends every problem of this section under `path`.
    pub fn validate(&self, path: &str, issues: &mut Issues) {
        if self.flush_interval < Duration::from_millis(10) || self.flush_interval > Duration::from_secs(60) {
            issues.push(format!("{path}.flush_interval"), "must be between 10ms and 60s");
        }
        if !(1..=100_000).contains(&self.max_batch_samples) {
            issues.push(format!("{path}.max_batch_samples"), "must be between 1 and 100000");
        }
        if self.flush_bytes.as_u64() < 1024 || self.flush_bytes.as_u64() > 64 * 1024 * 1024 {
            issues.push(format!("{path}.flush_bytes"), "must be between 1 KiB and 64 MiB");
        }
        if self.max_bytes.as_u64() < 64 * 1024 {
            issues.push(format!("{path}.max_bytes"), "must be at least 64 KiB");
        }
        if self.max_age.is_some_and(|a| a < Duration::from_secs(60)) {
            issues.push(format!("{path}.max_age"), "must be at least 1m");
        }
        if let Some(above) = self.compact_above {
            if above <= self.max_bytes {
                issues.push(format!("{path}.compact_above"), format!("must be more than max_bytes ({})", self.max_bytes));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use bytesize::ByteSize;

    const GATEWAY: &str = "[gateway]\nid = \"gw-01\"\nsite = \"s\"\ndata_dir = \"/var/lib/edge-agent\"\n";

    #[test]
    fn compact_above_defaults_to_twice_max_bytes_and_takes_a_set_size() {
        let config = crate::config::load_str(&format!("{GATEWAY}[store]\nmax_bytes = \"32 MiB\"\n"), "t.toml").unwrap();
        assert_eq!(config.store.build().compact_above, 64 << 20);
        let config =
            crate::config::load_str(&format!("{GATEWAY}[store]\nmax_bytes = \"32 MiB\"\ncompact_above = \"40 MiB\"\n"), "t.toml").unwrap();
        assert_eq!(config.store.compact_above, Some(ByteSize::mib(40)));
        assert_eq!(config.store.build().compact_above, 40 << 20);
    }

    #[test]
    fn compact_above_not_above_max_bytes_is_refused_at_its_path() {
        // Given a compaction bound equal to max_bytes (the store would compact forever)
        let text = format!("{GATEWAY}[store]\nmax_bytes = \"64 MiB\"\ncompact_above = \"64 MiB\"\n");
        // When the config is loaded
        let err = crate::config::load_str(&text, "t.toml").unwrap_err();
        // Then it is refused, at store.compact_above, saying why
        let p = err.problems.iter().find(|p| p.path == "store.compact_above").unwrap_or_else(|| panic!("{:#?}", err.problems));
        assert!(p.message.contains("more than max_bytes"), "{}", p.message);
    }
}
