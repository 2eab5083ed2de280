//! `[store]`: the outbox settings.

use std::time::Duration;

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
}

fn default_flush_interval() -> Duration {
    Duration::from_secs(1)
}
fn default_max_batch_samples() -> usize {
    1000
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self { flush_interval: default_flush_interval(), max_batch_samples: default_max_batch_samples() }
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
    }
}
