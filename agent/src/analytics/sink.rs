//! The one async task that stores the models' events: the model threads never block on
//! the store; they hand events over a bounded queue, and this task appends them to the
//! outbox (flushed) and wakes the uplink.
//!
//! While the store cannot be written (a full disk: the store writer reopens it), the task
//! waits rather than burn its retries; the queue fills meanwhile and the model threads
//! count what it cannot take (`edge_agent_model_outputs_dropped_total`). An event lost
//! here (retries run out, or shutdown comes while it waits) is counted
//! (`edge_agent_store_unwritten_model_events_dropped_total`) and logged: never silent.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, Notify};
use tokio::time::timeout;
use tracing::error;

use crate::store::{Outbox, StoredEventDraft};

/// Limit on one append to the store.
const STORE_TIMEOUT: Duration = Duration::from_secs(10);
/// Events queued between the model threads and this task.
pub const QUEUE: usize = 256;
/// How often a store that cannot be written is looked at again.
const UNWRITABLE_POLL: Duration = Duration::from_millis(200);

/// Events taken from the queue and not stored yet. Dropped unstored (the retries ran out,
/// or the task was aborted at the shutdown deadline while waiting), they are counted and
/// logged.
struct Pending<'a> {
    outbox: &'a Outbox,
    events: Vec<StoredEventDraft>,
    stored: bool,
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        if self.stored || self.events.is_empty() {
            return;
        }
        self.outbox.counters().model_events_unwritten_dropped.fetch_add(self.events.len() as u64, Ordering::Relaxed);
        let kinds: Vec<&str> = self.events.iter().map(|e| e.event.kind()).collect();
        error!(?kinds, "model events lost: the store could not be written (counted in store_unwritten_model_events_dropped_total)");
    }
}

/// Stores events until every sender is gone.
pub async fn run(outbox: Outbox, stored: Arc<Notify>, mut events: mpsc::Receiver<StoredEventDraft>) {
    while let Some(first) = events.recv().await {
        let mut pending = Pending { outbox: &outbox, events: vec![first], stored: false };
        while let Ok(more) = events.try_recv() {
            pending.events.push(more);
        }
        // Retried a few times: an event lost here would be silent at the ERP.
        for attempt in 0..3 {
            outbox.until_not_compacting().await;
            while !outbox.is_writable() {
                tokio::time::sleep(UNWRITABLE_POLL).await;
            }
            match timeout(STORE_TIMEOUT, outbox.append(&[], &pending.events)).await {
                Ok(Ok(())) => {
                    pending.stored = true;
                    break;
                }
                Ok(Err(e)) => error!(error = %e, attempt, events = pending.events.len(), "could not store model events"),
                Err(_) => error!(attempt, events = pending.events.len(), "storing model events took longer than {STORE_TIMEOUT:?}"),
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        if pending.stored {
            stored.notify_one();
        }
    }
}
