//! `[history]`: how much recent history the gateway keeps in memory for trends.

use std::time::Duration;

use bytesize::ByteSize;
use edge_drivers::validate::Issues;
use serde::{Deserialize, Serialize};

use super::tag::Limits;

/// `[history]`: the in-memory history behind the status page's trends and the factory
/// tools (full-rate points for a window, min/avg/max per minute for a day).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HistoryConfig {
    /// Keep a history at all.
    #[serde(default = "default_enabled")]
    pub enabled: bool,
    /// How far back full-rate points reach (`"1h"`).
    #[serde(default = "default_full_rate_window", with = "humantime_serde")]
    pub full_rate_window: Duration,
    /// At most this many full-rate points per tag (8 bytes each): a tag polled faster than
    /// `full_rate_window / max_points_per_tag` keeps less than the window at full rate.
    #[serde(default = "default_max_points_per_tag")]
    pub max_points_per_tag: usize,
    /// How many minutes of per-minute min/avg/max to keep (16 bytes each; 1440 = 24 h).
    #[serde(default = "default_minutes")]
    pub minutes: usize,
    /// The most memory the whole history may take (`"256 MiB"`). Tags beyond
    /// `memory_limit / bytes per tag` get no history (counted, logged, shown on the page).
    #[serde(default = "default_memory_limit")]
    pub memory_limit: ByteSize,
}

fn default_enabled() -> bool {
    true
}
fn default_full_rate_window() -> Duration {
    Duration::from_secs(3600)
}
fn default_max_points_per_tag() -> usize {
    3600
}
fn default_minutes() -> usize {
    1440
}
fn default_memory_limit() -> ByteSize {
    ByteSize::mib(256)
}

impl Default for HistoryConfig {
    fn default() -> Self {
        Self {
            enabled: default_enabled(),
            full_rate_window: default_full_rate_window(),
            max_points_per_tag: default_max_points_per_tag(),
            minutes: default_minutes(),
            memory_limit: default_memory_limit(),
        }
    }
}

/// `[history]` built: what the history runs with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistorySettings {
    pub enabled: bool,
    pub limits: Limits,
    /// Bytes.
    pub memory_limit: usize,
}

impl Default for HistorySettings {
    fn default() -> Self {
        HistoryConfig::default().build()
    }
}

impl HistorySettings {
    /// How many tags fit under the memory limit.
    pub fn max_tags(&self) -> usize {
        self.memory_limit / self.limits.bytes_per_tag().max(1)
    }
}

impl HistoryConfig {
    /// Appends every problem of this section under `path`.
    pub fn validate(&self, path: &str, issues: &mut Issues) {
        if self.full_rate_window.is_zero() && self.max_points_per_tag > 0 {
            issues
                .push(format!("{path}.full_rate_window"), "must be more than 0 s (or set max_points_per_tag = 0 for no full-rate points)");
        }
        if self.minutes > 100 * 1440 {
            issues.push(
                format!("{path}.minutes"),
                format!("{} minutes is more than 100 days; the history is for trends, the ERP keeps the record", self.minutes),
            );
        }
        let settings = self.build();
        if self.enabled && settings.max_tags() == 0 {
            issues.push(
                format!("{path}.memory_limit"),
                format!(
                    "{} does not hold the history of even one tag ({} bytes each with these settings)",
                    self.memory_limit,
                    settings.limits.bytes_per_tag()
                ),
            );
        }
    }

    /// The runtime settings, every default resolved.
    pub fn build(&self) -> HistorySettings {
        HistorySettings {
            enabled: self.enabled,
            limits: Limits {
                full_rate_window_ms: i64::try_from(self.full_rate_window.as_millis()).unwrap_or(i64::MAX),
                max_points: self.max_points_per_tag,
                minutes: self.minutes,
            },
            memory_limit: usize::try_from(self.memory_limit.as_u64()).unwrap_or(usize::MAX),
        }
    }
}
