//! The outbox: every batch and event is written here, flushed, and only then published.
//! Entries leave the outbox when the broker acknowledges them (PUBACK), never before.
//!
//! - [`record`]: the on-disk record (checksummed).
//! - [`outbox`]: the sled trees, sequence numbers and counters.
//! - [`writer`]: the task that turns device reports into batches on the flush interval.
//! - [`highwater`]: the numbering's high-water marks, kept outside the sled files.
//! - [`damage`]: containing sled's panics, and never numbering below the marks after damage.
//! - [`compaction`]: rewriting the outbox into a fresh database when sled's files grow.
//! - [`format`]: the store's format version, and what open does with an older or newer one.

pub mod compaction;
pub mod config;
pub mod damage;
pub mod format;
pub mod highwater;
pub mod outbox;
pub mod record;
pub mod reopen;
pub mod retention;
pub mod writer;

#[cfg(test)]
mod blocking_tests;
#[cfg(test)]
mod compaction_tests;
#[cfg(test)]
mod damage_tests;
#[cfg(test)]
mod disk_fault_tests;
#[cfg(test)]
mod format_tests;
#[cfg(test)]
mod model_tests;
#[cfg(test)]
mod test_support;

pub use compaction::Compacted;
pub use damage::StoreReset;
pub use outbox::{Outbox, StoreError, StoredEventDraft, StoredReply};
pub use record::{StoredBatch, StoredEvent};
