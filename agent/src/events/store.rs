//! The details of the store's own events: `store_reset` and `buffer_overflow`.

use serde::{Deserialize, Serialize};

/// Why the store was reset (`store_reset_details.reason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StoreResetReason {
    /// The outbox could not be opened or read and was moved aside.
    Unreadable,
    /// It opened, but numbers it had handed out (its newest records) were gone.
    RecordsLost,
    /// The high-water file was damaged; numbering continues at the Unix time in ms or above.
    NumberingUnreadable,
    /// The store is in a newer format than this agent reads: set aside unread.
    FormatNewer,
    /// The store's format marker could not be read: set aside unread.
    FormatUnknown,
}

impl StoreResetReason {
    pub fn as_str(self) -> &'static str {
        match self {
            StoreResetReason::Unreadable => "unreadable",
            StoreResetReason::RecordsLost => "records_lost",
            StoreResetReason::NumberingUnreadable => "numbering_unreadable",
            StoreResetReason::FormatNewer => "format_newer",
            StoreResetReason::FormatUnknown => "format_unknown",
        }
    }
}

impl std::fmt::Display for StoreResetReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `store_reset`: the outbox was found damaged. The optional fields are absent (not
/// `null`) when unknown.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreResetDetails {
    pub reason: StoreResetReason,
    /// The `batch_seq` the next batch gets.
    pub next_batch_seq: u64,
    /// Where the unreadable outbox was moved (present when `reason` is `unreadable`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub moved_aside_to: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batches_possibly_lost: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub events_possibly_lost: Option<u64>,
    /// With `lost_batch_seq_below`: the lost batches are among `from ≤ n < below`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lost_batch_seq_from: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lost_batch_seq_below: Option<u64>,
    /// Why the outbox could not be read (sled's error, or the panic it raised, contained).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// `buffer_overflow`: what was dropped to keep the outbox within its bounds since the
/// previous one. Every field is always sent (`dropped_unwritten_samples` too, 0 when none).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BufferOverflow {
    pub dropped_batches: u64,
    pub dropped_samples: u64,
    pub dropped_events: u64,
    /// Of `dropped_batches`, those older than `store.max_age`.
    pub dropped_too_old: u64,
    /// Samples dropped before they could be written (a full disk, a compaction).
    pub dropped_unwritten_samples: u64,
    /// `store.max_bytes`, in bytes.
    pub max_bytes: u64,
    /// Bytes the outbox holds after the drop.
    pub bytes: u64,
}
