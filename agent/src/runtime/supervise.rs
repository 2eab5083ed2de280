//! Supervision: every long-lived task of the agent runs under one of two policies, and is
//! listed in the task register (`Snapshot::tasks`: state, restarts, last exit cause), which
//! the health verdict, `/api/status` and `/metrics` read.
//!
//! - [`supervise`] (**restart**): a task that ends before it is asked to (an error, a
//!   panic, or it just returns) is logged with its cause and started again after a
//!   jittered, growing delay (0.5 s doubling up to 30 s), until shutdown. For tasks whose
//!   state can be rebuilt from what outlives them: the drivers (a new connection), the
//!   status page (a new listener), the uplink (a new MQTT session: the outbox, not the
//!   task, holds what is unpublished, and everything in it is sent again after a connect)
//!   and the command handler (a command in progress is lost with its reply; the ERP times
//!   out and sends it again, and the id memory outlives the task so it is not run twice).
//! - [`watch_once`] (**exit**): a task that cannot be started again in the same process
//!   ends the agent: the runtime is told (the `fatal` channel), stops every other task in
//!   order, and the process exits non-zero so that systemd restarts it. For the store
//!   writer (it owns the readings gathered since the last write and the only receiver of
//!   the drivers' reports: a fresh process re-opens the store from disk, which is the
//!   truth, and loses at most the unflushed window, as after `kill -9`), the sample feed
//!   (it owns the models' inboxes) and the model event sink (the only receiver of the
//!   models' events).
//!
//! One bad device or a bug in one component must never silently take the data path down.

use std::any::Any;
use std::future::Future;
use std::time::Duration;

use chrono::Utc;
use edge_drivers::backoff::Backoff;
use tokio::sync::mpsc;
use tokio::task::{JoinError, JoinHandle};
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;
use tracing::{error, info, warn};

use crate::live::{Live, TaskState, TaskView};

/// A task that ran this long before it failed counts as having worked: its back-off
/// starts again from the shortest delay.
const STABLE_AFTER: Duration = Duration::from_secs(60);

/// What happens when a task ends unexpectedly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnFailure {
    Restart,
    Exit,
}

impl OnFailure {
    fn as_str(self) -> &'static str {
        match self {
            OnFailure::Restart => "restart",
            OnFailure::Exit => "exit",
        }
    }
}

/// The task register in the live state.
#[derive(Clone)]
pub struct Register {
    live: Live,
}

impl Register {
    pub fn new(live: Live) -> Self {
        Register { live }
    }

    /// Lists `name` as running.
    fn add(&self, name: &str, core: bool, on_failure: OnFailure) {
        self.live.update(|s| {
            s.tasks.insert(
                name.to_string(),
                TaskView {
                    name: name.to_string(),
                    core,
                    on_failure: on_failure.as_str().into(),
                    state: TaskState::Running,
                    ..Default::default()
                },
            );
        });
    }

    fn set(&self, name: &str, state: TaskState) {
        self.live.update(|s| {
            if let Some(t) = s.tasks.get_mut(name) {
                t.state = state;
            }
        });
    }

    /// `name` ended unexpectedly because of `cause`; `state` is what happens next.
    fn exited(&self, name: &str, cause: &str, state: TaskState) {
        self.live.update(|s| {
            if let Some(t) = s.tasks.get_mut(name) {
                t.state = state;
                t.last_exit = Some(cause.to_string());
                t.last_exit_at = Some(Utc::now());
                if state == TaskState::Restarting {
                    t.restarts += 1;
                }
            }
        });
    }
}

/// Why a task ended unexpectedly, from what its inner `tokio::spawn` returned.
fn cause_of(outcome: Result<anyhow::Result<()>, JoinError>) -> String {
    match outcome {
        Ok(Ok(())) => "it ended by itself".to_string(),
        Ok(Err(e)) => format!("failed: {e:#}"),
        Err(join) if join.is_panic() => format!("panicked: {}", panic_message(join.into_panic())),
        Err(join) => format!("cancelled: {join}"),
    }
}

/// The message of a panic payload (`panic!("…")` gives a `&str` or a `String`).
pub fn panic_message(payload: Box<dyn Any + Send>) -> String {
    match payload.downcast::<String>() {
        Ok(s) => *s,
        Err(payload) => match payload.downcast::<&'static str>() {
            Ok(s) => (*s).to_string(),
            Err(_) => "a panic without a message".to_string(),
        },
    }
}

/// Spawns `make()` and restarts it whenever it ends before `cancel` fires (policy
/// **restart**), keeping `name`'s entry in the task register up to date.
pub fn supervise<F, Fut>(name: String, core: bool, register: Register, cancel: CancellationToken, mut make: F) -> JoinHandle<()>
where
    F: FnMut() -> Fut + Send + 'static,
    Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
{
    register.add(&name, core, OnFailure::Restart);
    tokio::spawn(async move {
        let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
        loop {
            let started = tokio::time::Instant::now();
            // Abort-on-drop: aborting this supervisor (the shutdown deadline, a reload) must
            // stop the task too; a dropped plain JoinHandle would leave it running detached
            // (an old uplink sharing the new one's MQTT client id, a driver polling on).
            let outcome =
                AbortOnDropHandle::new(tokio::spawn(super::fault::inject(name.clone(), super::fault::hang(name.clone(), make())))).await;
            // A task that ran for a good while before failing starts again from a short delay.
            if started.elapsed() >= STABLE_AFTER {
                backoff.reset();
            }
            if cancel.is_cancelled() {
                if let Err(join) = &outcome {
                    error!(task = %name, error = %join, "task failed while stopping");
                }
                register.set(&name, TaskState::Stopped);
                return;
            }
            let cause = cause_of(outcome);
            let delay = backoff.next_delay();
            register.exited(&name, &cause, TaskState::Restarting);
            error!(task = %name, %cause, restart_in = ?delay, "task ended unexpectedly; restarting");
            tokio::select! {
                () = cancel.cancelled() => {
                    register.set(&name, TaskState::Stopped);
                    return;
                }
                () = tokio::time::sleep(delay) => {}
            }
            info!(task = %name, "task restarted");
            register.set(&name, TaskState::Running);
        }
    })
}

/// A task that cannot be restarted in the process (policy **exit**).
pub struct Once {
    pub name: String,
    pub core: bool,
    pub register: Register,
    /// Cancelled when the agent starts to stop: from then on, the task ending is expected.
    pub stopping: CancellationToken,
    /// Where the runtime hears that the agent must stop and exit non-zero.
    pub fatal: mpsc::Sender<String>,
    /// The task may end by itself when its work is done (the model event sink, when no
    /// model runs): that is no failure. A panic still is.
    pub may_finish: bool,
}

/// Spawns `fut` once. If it panics, or ends before `stopping` fires, or its output is a
/// failure (`failure` says why), the cause is logged and sent on `fatal`. The handle gives
/// the output back (`None` after a panic).
pub fn watch_once<T, Fut>(task: Once, fut: Fut, failure: fn(&T) -> Option<String>) -> JoinHandle<Option<T>>
where
    T: Send + 'static,
    Fut: Future<Output = T> + Send + 'static,
{
    let Once { name, core, register, stopping, fatal, may_finish } = task;
    register.add(&name, core, OnFailure::Exit);
    tokio::spawn(async move {
        // Abort-on-drop, as in `supervise`: aborting the watcher stops the task.
        let outcome = AbortOnDropHandle::new(tokio::spawn(super::fault::inject(name.clone(), fut))).await;
        let (output, cause) = match outcome {
            Ok(v) => {
                let cause = failure(&v).map(|e| format!("failed: {e}"));
                (Some(v), cause)
            }
            Err(join) if join.is_panic() => (None, Some(format!("panicked: {}", panic_message(join.into_panic())))),
            Err(join) => (None, Some(format!("cancelled: {join}"))),
        };
        let expected = stopping.is_cancelled();
        match (cause, expected) {
            (None, true) => register.set(&name, TaskState::Stopped),
            (None, false) if may_finish => {
                info!(task = %name, "task finished: nothing left for it to do");
                register.set(&name, TaskState::Finished);
            }
            (Some(cause), true) => {
                error!(task = %name, %cause, "task failed while stopping");
                register.exited(&name, &cause, TaskState::Failed);
            }
            (cause, false) => {
                let cause = cause.unwrap_or_else(|| "it ended by itself".to_string());
                error!(task = %name, %cause, "task ended unexpectedly; it cannot be restarted in the process: the agent stops and exits non-zero so that systemd restarts it");
                register.exited(&name, &cause, TaskState::Failed);
                if fatal.try_send(format!("task {name} {cause}")).is_err() {
                    warn!(task = %name, "the agent is already stopping");
                }
            }
        }
        output
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;

    #[tokio::test(start_paused = true)]
    async fn a_panicking_task_is_restarted_until_shutdown_and_the_register_counts_it() {
        // Given a task that panics on its first two runs
        let runs = Arc::new(AtomicU32::new(0));
        let cancel = CancellationToken::new();
        let live = Live::default();
        let (r, c) = (runs.clone(), cancel.clone());
        let handle = supervise("flaky".into(), true, Register::new(live.clone()), cancel.clone(), move || {
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
        // And the register shows it running, with two restarts and the panic's message
        let t = live.snapshot().tasks["flaky"].clone();
        assert_eq!((t.state, t.restarts, t.last_exit.as_deref()), (TaskState::Running, 2, Some("panicked: boom")));
        cancel.cancel();
        handle.await.unwrap();
        assert_eq!(live.snapshot().tasks["flaky"].state, TaskState::Stopped);
    }

    /// A task that counts every 100 ms while it runs.
    fn ticker(ticks: &Arc<AtomicU32>) -> impl FnMut() -> std::pin::Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send>> {
        let ticks = ticks.clone();
        move || {
            let ticks = ticks.clone();
            Box::pin(async move {
                loop {
                    ticks.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            })
        }
    }

    /// Lets the ticker run a second, aborts `handle`, and checks that it ticks no more.
    async fn abort_and_check_it_stopped<T: std::fmt::Debug>(handle: JoinHandle<T>, ticks: &AtomicU32) {
        tokio::time::sleep(Duration::from_secs(1)).await;
        handle.abort();
        assert!(handle.await.unwrap_err().is_cancelled());
        let at_abort = ticks.load(Ordering::SeqCst);
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(at_abort > 0);
        assert_eq!(ticks.load(Ordering::SeqCst), at_abort, "the task ran on after its supervisor was aborted");
    }

    #[tokio::test(start_paused = true)]
    async fn regression_aborting_a_supervised_task_at_the_deadline_stops_the_task_not_only_its_supervisor() {
        // Given a supervised task that runs on (it ignores cancellation, as a stuck one would)
        let ticks = Arc::new(AtomicU32::new(0));
        let handle = supervise("stuck".into(), true, Register::new(Live::default()), CancellationToken::new(), ticker(&ticks));
        // When the agent aborts it at the shutdown deadline
        // Then the task itself has stopped (an uplink left running would share the next
        // one's MQTT client id)
        abort_and_check_it_stopped(handle, &ticks).await;
    }

    #[tokio::test(start_paused = true)]
    async fn regression_aborting_a_watched_task_at_the_deadline_stops_the_task_not_only_its_watcher() {
        // Given a task watched once (the store writer's policy) that runs on
        let ticks = Arc::new(AtomicU32::new(0));
        let (fatal, _fatal_rx) = mpsc::channel(1);
        let task = Once {
            name: "stuck".into(),
            core: true,
            register: Register::new(Live::default()),
            stopping: CancellationToken::new(),
            fatal,
            may_finish: false,
        };
        let handle = watch_once(task, ticker(&ticks)(), |_: &anyhow::Result<()>| None);
        // When the agent aborts it at the shutdown deadline
        // Then the task itself has stopped
        abort_and_check_it_stopped(handle, &ticks).await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_task_waiting_for_its_restart_shows_as_down_in_the_verdict() {
        // Given a core task that always fails
        let cancel = CancellationToken::new();
        let live = Live::default();
        let _handle =
            supervise("uplink".into(), true, Register::new(live.clone()), cancel.clone(), || async { Err(anyhow::anyhow!("no luck")) });
        // When it has failed once and waits for its back-off
        tokio::time::sleep(Duration::from_millis(1)).await;
        // Then the verdict is a fault, not ready, naming the task and the cause
        let s = live.snapshot();
        assert_eq!(s.tasks["uplink"].state, TaskState::Restarting);
        assert!(!s.health.ready);
        assert_eq!(s.health.state, crate::health::HealthState::Fault);
        assert!(s.health.reasons[0].message.contains("failed: no luck"), "{:?}", s.health.reasons);
        cancel.cancel();
    }

    #[tokio::test]
    async fn a_once_task_that_panics_tells_the_runtime_to_exit() {
        // Given a task under the exit policy that panics
        let live = Live::default();
        let (fatal, mut fatal_rx) = mpsc::channel(4);
        let task = Once {
            name: "store-writer".into(),
            core: true,
            register: Register::new(live.clone()),
            stopping: CancellationToken::new(),
            fatal,
            may_finish: false,
        };
        let handle = watch_once(task, async { panic!("disk on fire") }, |_: &()| None);
        // Then its output is gone, the runtime hears why, and the register says failed
        assert!(handle.await.unwrap().is_none());
        assert_eq!(fatal_rx.recv().await.as_deref(), Some("task store-writer panicked: disk on fire"));
        let t = live.snapshot().tasks["store-writer"].clone();
        assert_eq!(t.state, TaskState::Failed);
        assert!(!live.snapshot().health.ready);
    }

    #[tokio::test]
    async fn a_once_task_that_ends_while_stopping_is_no_failure() {
        // Given the agent is stopping
        let live = Live::default();
        let (fatal, mut fatal_rx) = mpsc::channel(4);
        let stopping = CancellationToken::new();
        stopping.cancel();
        let task =
            Once { name: "sample-feed".into(), core: true, register: Register::new(live.clone()), stopping, fatal, may_finish: false };
        // When the task returns its value
        let out = watch_once(task, async { 7 }, |_| None).await.unwrap();
        // Then the value comes back, nothing is fatal, and it is listed as stopped
        assert_eq!(out, Some(7));
        drop(live.snapshot());
        assert!(fatal_rx.try_recv().is_err());
        assert_eq!(live.snapshot().tasks["sample-feed"].state, TaskState::Stopped);
    }
}
