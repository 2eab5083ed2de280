//! What the outbox does about damage to its own files: sled calls that can panic on damaged
//! data are contained, and on open the numbering is checked against the high-water marks
//! (`highwater.rs`) so that it never goes backwards, whatever sled lost.

use std::any::Any;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;

use super::highwater::{Loaded, Marks};
use crate::events::{Event, StoreResetDetails, StoreResetReason};

/// Runs sled calls that can panic on damaged data (sled 0.34 panics with e.g. "cannot find
/// pid … in view_for_key" or "tried to serialize Uninitialized" where it expects
/// consistent pages). A panic becomes `ReportableBug`, which the outbox treats as an
/// unreadable store.
pub(super) fn contained<T>(what: &str, f: impl FnOnce() -> Result<T, sled::Error>) -> Result<T, sled::Error> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(payload) => Err(sled::Error::ReportableBug(format!("sled panicked while {what}: {}", panic_message(&payload)))),
    }
}

pub(super) fn panic_message(payload: &Box<dyn Any + Send>) -> String {
    let msg = payload.downcast_ref::<String>().cloned().or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()));
    let mut msg = msg.unwrap_or_else(|| "(no message)".into());
    // sled's messages can quote a whole key; the log needs the start.
    if msg.len() > 200 {
        let cut = (0..=200).rev().find(|&i| msg.is_char_boundary(i)).unwrap_or(0);
        msg.truncate(cut);
        msg.push('…');
    }
    msg
}

/// A store that was moved aside on open and replaced by a fresh one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct MovedAside {
    pub path: PathBuf,
    /// The [`StoreReset::reason`] to report.
    pub reason: StoreResetReason,
    /// Why (the error, contained panic or message that made it be set aside).
    pub error: String,
}

/// A reset of the store found on open: raised once as a `store_reset` event and counted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreReset {
    /// `unreadable` (the store was moved aside), `records_lost` (sled opened it but the
    /// newest numbers are gone), `numbering_unreadable` (the high-water file is damaged),
    /// `format_newer` or `format_unknown` (its format version is not one this agent reads:
    /// it was set aside, see `format.rs`).
    pub reason: StoreResetReason,
    pub moved_aside: Option<PathBuf>,
    /// Upper bound of telemetry batches that may be lost (some may have been delivered
    /// already); `None` when unknown (no intact high-water marks).
    pub batches_possibly_lost: Option<u64>,
    pub events_possibly_lost: Option<u64>,
    /// The batch numbers among which the lost ones are: `from..below` (the window held
    /// when the marks were last written).
    pub lost_batch_seqs: Option<(u64, u64)>,
    /// Where numbering continues.
    pub next_batch_seq: u64,
    /// The error (or contained panic) that made the store unreadable.
    pub error: Option<String>,
}

impl StoreReset {
    /// The `store_reset` event (`schemas/event.schema.json`, `store_reset_details`), for a
    /// reset found at start or at a reopen.
    pub fn event(&self) -> Event {
        Event::StoreReset(StoreResetDetails {
            reason: self.reason,
            next_batch_seq: self.next_batch_seq,
            moved_aside_to: self.moved_aside.as_ref().map(|aside| aside.display().to_string()),
            batches_possibly_lost: self.batches_possibly_lost,
            events_possibly_lost: self.events_possibly_lost,
            lost_batch_seq_from: self.lost_batch_seqs.map(|(from, _)| from),
            lost_batch_seq_below: self.lost_batch_seqs.map(|(_, below)| below),
            error: self.error.clone(),
        })
    }
}

/// What the store itself says after opening: its next numbers, and how many batches and
/// events it holds of the window the marks describe (`oldest..next`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct StoreState {
    pub next: (u64, u64, u64),
    pub held_batches: u64,
    pub held_events: u64,
}

/// Where numbering continues after open, and the reset to report if any. `moved_aside`:
/// the store was set aside (unreadable, or in a format this agent does not read) and is a
/// fresh one now. `now_ms`: the Unix
/// time, the last resort when the marks are unknown (always above any earlier number
/// unless the clock was set back).
pub(super) fn continue_numbering(
    store: StoreState,
    loaded: Loaded,
    moved_aside: Option<MovedAside>,
    now_ms: u64,
) -> ((u64, u64, u64), Option<StoreReset>) {
    let s = store.next;
    let (moved_aside, reason, error) = match moved_aside {
        Some(m) => (Some(m.path), m.reason, Some(m.error)),
        None => (None, StoreResetReason::Unreadable, None),
    };
    let clock = now_ms.max(1);
    let above = |m: &Marks| (s.0.max(m.next_batch), s.1.max(m.next_event), s.2.max(m.next_reply));
    let unknown = |reason, next: (u64, u64, u64)| {
        let reset = StoreReset {
            reason,
            moved_aside: moved_aside.clone(),
            batches_possibly_lost: None,
            events_possibly_lost: None,
            lost_batch_seqs: None,
            next_batch_seq: next.0,
            error: error.clone(),
        };
        (next, Some(reset))
    };
    match loaded {
        Loaded::Found(m) => {
            let next = above(&m);
            let lost_newest = s.0 < m.next_batch || s.1 < m.next_event || s.2 < m.next_reply;
            if moved_aside.is_none() && !lost_newest {
                return (next, None);
            }
            // Everything held when the marks were written lies in oldest..next; what the
            // store still holds of it is not lost. (Numbers below the window were
            // acknowledged or dropped, and counted, before.)
            let window_b = m.next_batch.saturating_sub(m.oldest_batch.min(m.next_batch));
            let window_e = m.next_event.saturating_sub(m.oldest_event.min(m.next_event));
            let lost_b = window_b.saturating_sub(store.held_batches);
            let lost_e = window_e.saturating_sub(store.held_events);
            let reset = StoreReset {
                reason: if moved_aside.is_some() { reason } else { StoreResetReason::RecordsLost },
                moved_aside,
                batches_possibly_lost: Some(lost_b),
                events_possibly_lost: Some(lost_e),
                lost_batch_seqs: (lost_b > 0).then_some((m.oldest_batch.min(m.next_batch), m.next_batch)),
                next_batch_seq: next.0,
                error,
            };
            (next, Some(reset))
        }
        Loaded::Unreadable => unknown(StoreResetReason::NumberingUnreadable, (s.0.max(clock), s.1.max(clock), s.2.max(clock))),
        // No marks (a data dir from before they existed, or a new one): the store's own
        // numbers are all there is; after a move-aside, the clock.
        Loaded::Missing if moved_aside.is_some() => unknown(reason, (s.0.max(clock), s.1.max(clock), s.2.max(clock))),
        Loaded::Missing => (s, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(next: u64, held: u64) -> StoreState {
        StoreState { next: (next, next, next), held_batches: held, held_events: 0 }
    }

    fn marks(next: u64, oldest: u64) -> Marks {
        Marks { next_batch: next, next_event: next, next_reply: next, oldest_batch: oldest, oldest_event: next }
    }

    #[test]
    fn a_normal_restart_continues_at_the_store_numbers_without_a_reset() {
        let (next, reset) = continue_numbering(store(50, 3), Loaded::Found(marks(50, 47)), None, 1_700_000_000_000);
        assert_eq!((next, reset), ((50, 50, 50), None));
    }

    #[test]
    fn a_store_that_lost_its_newest_records_continues_above_the_marks_and_reports_the_gap() {
        // Given marks at 100 (oldest held 90) and a store that came up at 95 holding 2
        let (next, reset) = continue_numbering(store(95, 2), Loaded::Found(marks(100, 90)), None, 1_700_000_000_000);
        // Then numbering continues at 100 and up to 8 batches may be lost (10 held, 2 left)
        assert_eq!(next, (100, 100, 100));
        let reset = reset.expect("a reset");
        assert_eq!(reset.reason, StoreResetReason::RecordsLost);
        assert_eq!(reset.batches_possibly_lost, Some(8));
        assert_eq!(reset.lost_batch_seqs, Some((90, 100)));
    }

    #[test]
    fn a_store_that_came_up_empty_counts_everything_held_at_the_last_write_as_possibly_lost() {
        let (next, reset) = continue_numbering(store(1, 0), Loaded::Found(marks(3000, 2700)), None, 1_700_000_000_000);
        assert_eq!(next.0, 3000);
        assert_eq!(reset.unwrap().batches_possibly_lost, Some(300));
    }

    #[test]
    fn a_moved_aside_store_continues_at_the_marks_not_at_the_clock() {
        let aside = Some(MovedAside {
            path: PathBuf::from("/d/outbox.unreadable-x"),
            reason: StoreResetReason::Unreadable,
            error: "corrupt".to_string(),
        });
        let (next, reset) = continue_numbering(store(1, 0), Loaded::Found(marks(40, 31)), aside, 1_700_000_000_000);
        assert_eq!(next.0, 40);
        let reset = reset.unwrap();
        assert_eq!((reset.reason, reset.batches_possibly_lost), (StoreResetReason::Unreadable, Some(9)));
    }

    #[test]
    fn without_intact_marks_numbering_continues_at_the_clock_or_above_never_lower() {
        let (next, reset) = continue_numbering(store(2_000_000_000_000, 0), Loaded::Unreadable, None, 1_700_000_000_000);
        assert_eq!(next.0, 2_000_000_000_000);
        assert_eq!(reset.unwrap().reason, StoreResetReason::NumberingUnreadable);
        let (next, _) = continue_numbering(store(7, 0), Loaded::Unreadable, None, 1_700_000_000_000);
        assert_eq!(next.0, 1_700_000_000_000);
    }

    #[test]
    fn a_contained_panic_becomes_an_error_that_marks_the_store_unreadable() {
        let r: Result<(), sled::Error> = contained("testing", || panic!("tried to serialize Uninitialized"));
        let msg = r.unwrap_err().to_string();
        assert!(msg.contains("tried to serialize Uninitialized"), "{msg}");
    }
}
