//! Supervision: a task that fails (returns an error or panics) is logged and started
//! again after a jittered, growing delay, until shutdown. One bad device or a bug in one
//! component must never take the whole gateway down.

use std::future::Future;
use std::time::Duration;

use edge_drivers::backoff::Backoff;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

/// Spawns `make()` and restarts it whenever it ends before `cancel` fires.
pub fn supervise<F, Fut>(name: String, cancel: CancellationToken, mut make: F) -> JoinHandle<()>
where
    F: FnMut() -> Fut + Send + 'static,
    Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
{
    tokio::spawn(async move {
        let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
        loop {
            let outcome = tokio::spawn(make()).await;
            if cancel.is_cancelled() {
                return;
            }
            match outcome {
                Ok(Ok(())) => info!(task = %name, "task ended; restarting"),
                Ok(Err(e)) => error!(task = %name, error = format!("{e:#}"), "task failed; restarting"),
                Err(join) => error!(task = %name, error = %join, "task panicked; restarting"),
            }
            let delay = backoff.next_delay();
            tokio::select! {
                () = cancel.cancelled() => return,
                () = tokio::time::sleep(delay) => {}
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;

    #[tokio::test(start_paused = true)]
    async fn a_panicking_task_is_restarted_until_shutdown() {
        // Given a task that panics on its first two runs
        let runs = Arc::new(AtomicU32::new(0));
        let cancel = CancellationToken::new();
        let (r, c) = (runs.clone(), cancel.clone());
        let handle = supervise("flaky".into(), cancel.clone(), move || {
            let (r, c) = (r.clone(), c.clone());
            async move {
                if r.fetch_add(1, Ordering::SeqCst) < 2 {
                    panic!("boom");
                }
                c.cancelled().await;
                Ok(())
            }
        });
        // When time passes
        tokio::time::sleep(Duration::from_secs(10)).await;
        // Then it was started a third time and is still running
        assert_eq!(runs.load(Ordering::SeqCst), 3);
        cancel.cancel();
        handle.await.unwrap();
    }
}
