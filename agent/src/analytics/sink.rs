//! The one async task that stores the models' events: the model threads never block on
//! the store; they hand events over a bounded queue, and this task appends them to the
//! outbox (flushed) and wakes the uplink.

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

/// Stores events until every sender is gone.
pub async fn run(outbox: Outbox, stored: Arc<Notify>, mut events: mpsc::Receiver<StoredEventDraft>) {
    while let Some(first) = events.recv().await {
        let mut batch = vec![first];
        while let Ok(more) = events.try_recv() {
            batch.push(more);
        }
        // Retried a few times: an event lost here would be silent at the ERP.
        let mut stored_ok = false;
        for attempt in 0..3 {
            outbox.until_not_compacting().await;
            match timeout(STORE_TIMEOUT, outbox.append(&[], &batch)).await {
                Ok(Ok(())) => {
                    stored_ok = true;
                    break;
                }
                Ok(Err(e)) => error!(error = %e, attempt, events = batch.len(), "could not store model events"),
                Err(_) => error!(attempt, events = batch.len(), "storing model events took longer than {STORE_TIMEOUT:?}"),
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        if stored_ok {
            stored.notify_one();
        } else {
            let kinds: Vec<&str> = batch.iter().map(|e| e.kind.as_str()).collect();
            error!(?kinds, "model events lost: the store could not be written");
        }
    }
}
