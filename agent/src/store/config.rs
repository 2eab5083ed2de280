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
    /// `buffer_overflow` event. Sled needs disk beyond this (see BENCHMARKS.md).
    #[serde(default = "default_max_bytes")]
    pub max_bytes: ByteSize,
    /// Telemetry older than this is dropped even when there is room (`"7d"`); unset keeps
    /// data until `max_bytes` forces it out.
    #[serde(default, with = "humantime_serde")]
    pub max_age: Option<Duration>,
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
        }
    }
}

impl StoreConfig {
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
    }
}
