//! The service manager's side of the agent (`Type=notify` in `systemd/edge-agent.service`),
//! through the `sd-notify` crate:
//!
//! - `READY=1` once the config is valid, the store open and every task started (the first
//!   start only); `RELOADING=1` (with `MONOTONIC_USEC`, which systemd 253+ wants) and
//!   `READY=1` again around a reload; `STOPPING=1` when the agent starts to stop.
//! - `STATUS=` with the health verdict and its first reasons, whenever that line changes
//!   (looked at every [`STATUS_EVERY`]): `systemctl status edge-agent` shows it.
//! - `WATCHDOG=1` every half `WatchdogSec=`, but only while the store writer, the uplink and
//!   every driver loop show progress ([`Heartbeat`]): a hung loop stops the pings and systemd
//!   restarts the agent. The hung task is logged and shown in the task register
//!   (`TaskView::hung_for_s`) and the verdict (`task_hung`), so the page says why.
//!
//! Everything here is a no-op without `NOTIFY_SOCKET` (not started by systemd). The
//! datagrams are sent from a thread of their own (a full socket must never block an async
//! worker); a failure to notify is logged, rate-limited, and never fatal.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use edge_drivers::heartbeat::Heartbeat;
use edge_drivers::log_limit::SharedLogLimit;
use sd_notify::NotifyState;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{error, warn};

use crate::health::Health;
use crate::live::{Live, TaskState};

/// How often the verdict is looked at for `STATUS=` (sent only when its line changed).
pub const STATUS_EVERY: Duration = Duration::from_secs(2);
/// How long past its last beat (or planned wake-up) a loop may be silent before it counts
/// as hung: longer than any single unplanned step of a loop (one Modbus group's requests,
/// an MQTT poll, a store write), shorter than the unit's `WatchdogSec=30s`.
pub const HUNG_AFTER: Duration = Duration::from_secs(15);
/// Notifications waiting for the sender thread; more are dropped (and logged).
const QUEUE: usize = 64;

/// One notification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Note {
    Ready,
    Reloading,
    Stopping,
    Status(String),
    Watchdog,
}

/// Sends notifications to systemd, or nothing when not started by it. Cheap to clone.
#[derive(Clone, Default)]
pub struct Notifier {
    tx: Option<std::sync::mpsc::SyncSender<Note>>,
    log: Option<Arc<SharedLogLimit<&'static str>>>,
}

impl Notifier {
    /// A notifier for `NOTIFY_SOCKET`, or a no-op one when it is not set.
    pub fn from_env() -> Notifier {
        if std::env::var_os("NOTIFY_SOCKET").is_none() {
            return Notifier::default();
        }
        let (tx, rx) = std::sync::mpsc::sync_channel::<Note>(QUEUE);
        let log = Arc::new(SharedLogLimit::new(edge_drivers::log_limit::DEFAULT_PERIOD));
        let thread_log = log.clone();
        let spawned = std::thread::Builder::new().name("sd-notify".into()).spawn(move || {
            for note in rx {
                if let Err(e) = send(&note) {
                    if let Some(suppressed) = thread_log.allow("send") {
                        warn!(error = %e, note = ?note, suppressed, "cannot notify systemd");
                    }
                }
            }
        });
        match spawned {
            Ok(_) => Notifier { tx: Some(tx), log: Some(log) },
            Err(e) => {
                error!(error = %e, "cannot start the systemd notification thread: systemd will not hear from the agent");
                Notifier::default()
            }
        }
    }

    /// Whether notifications go anywhere.
    pub fn enabled(&self) -> bool {
        self.tx.is_some()
    }

    pub fn notify(&self, note: Note) {
        let Some(tx) = &self.tx else { return };
        if let Err(e) = tx.try_send(note) {
            if let Some(suppressed) = self.log.as_ref().and_then(|l| l.allow("queue")) {
                warn!(error = %e, suppressed, "systemd notification dropped: the sender thread is behind or gone");
            }
        }
    }
}

/// Sends one notification (blocking: the sender thread only).
fn send(note: &Note) -> std::io::Result<()> {
    match note {
        Note::Ready => sd_notify::notify(&[NotifyState::Ready]),
        Note::Reloading => sd_notify::notify(&[NotifyState::Reloading, NotifyState::monotonic_usec_now()?]),
        Note::Stopping => sd_notify::notify(&[NotifyState::Stopping]),
        Note::Status(line) => sd_notify::notify(&[NotifyState::Status(line)]),
        Note::Watchdog => sd_notify::notify(&[NotifyState::Watchdog]),
    }
}

/// The `STATUS=` line for a verdict: its level and its first two reasons, on one line.
pub fn status_line(health: &Health) -> String {
    let mut line = health.state.as_str().to_string();
    for (i, r) in health.reasons.iter().take(2).enumerate() {
        line.push_str(if i == 0 { ": " } else { "; " });
        line.push_str(&r.message);
    }
    if health.reasons.len() > 2 {
        line.push_str(&format!(" (+{} more)", health.reasons.len() - 2));
    }
    line.replace(['\n', '\r'], " ")
}

/// Sends `STATUS=` for `live`'s verdict now and whenever its line changes, until `cancel`.
pub fn spawn_status(notifier: Notifier, live: Live, cancel: CancellationToken) -> Option<JoinHandle<()>> {
    if !notifier.enabled() {
        return None;
    }
    Some(tokio::spawn(async move {
        let mut last = String::new();
        loop {
            let line = status_line(&live.snapshot().health);
            if line != last {
                notifier.notify(Note::Status(line.clone()));
                last = line;
            }
            tokio::select! {
                () = cancel.cancelled() => return,
                () = tokio::time::sleep(STATUS_EVERY) => {}
            }
        }
    }))
}

/// The loops the watchdog watches: the current run's live state and each loop's
/// heartbeat, by task name (as in the task register). Replaced on every (re)start; empty
/// while the agent stops (an orderly stop is bounded by `gateway.shutdown_timeout`).
#[derive(Clone, Default)]
pub struct Watched {
    inner: Arc<Mutex<Option<(Live, Loops)>>>,
}

/// Each watched loop's heartbeat, by task name, with its own slack on top of the common
/// allowance: the longest wait it takes on purpose without promising it (the store
/// writer's `store.flush_interval` tick when no reading comes).
pub type Loops = Vec<(String, Heartbeat, Duration)>;

impl Watched {
    pub fn set(&self, live: Live, loops: Loops) {
        *self.inner.lock().unwrap_or_else(|p| p.into_inner()) = Some((live, loops));
    }

    pub fn clear(&self) {
        *self.inner.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// The running loops silent for more than `allowance` (and their slack) at `now`, with how long. A task
    /// the register does not show running (waiting for its restart, stopped) is the
    /// supervisor's business, not a hang.
    fn overdue(&self, now: Instant, allowance: Duration) -> (Option<Live>, Vec<(String, Duration)>) {
        let guard = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let Some((live, loops)) = guard.as_ref() else { return (None, Vec::new()) };
        let tasks = live.snapshot().tasks;
        let overdue = loops
            .iter()
            .filter(|(name, _, _)| tasks.get(name).is_some_and(|t| t.state == TaskState::Running))
            .map(|(name, hb, slack)| (name.clone(), hb.overdue(now), *slack))
            .filter(|(_, d, slack)| *d > allowance + *slack)
            .map(|(name, d, _)| (name, d))
            .collect();
        (Some(live.clone()), overdue)
    }
}

/// The watchdog's judgement, one check at a time: a loop counts as hung when it was
/// overdue on two checks in a row (a task restarted a moment ago beats within
/// microseconds of being listed running again; one check may catch it before).
#[derive(Default)]
pub struct Judge {
    suspects: Vec<String>,
}

impl Judge {
    /// The hung loops at `now`, marked in the register (`hung_for_s`); every other loop's
    /// mark is cleared.
    pub fn check(&mut self, watched: &Watched, now: Instant, allowance: Duration) -> Vec<(String, Duration)> {
        let (live, overdue) = watched.overdue(now, allowance);
        let hung: Vec<(String, Duration)> = overdue.iter().filter(|(name, _)| self.suspects.contains(name)).cloned().collect();
        self.suspects = overdue.into_iter().map(|(name, _)| name).collect();
        if let Some(live) = live {
            live.update(|s| {
                for (name, t) in s.tasks.iter_mut() {
                    t.hung_for_s = hung.iter().find(|(n, _)| n == name).map(|(_, d)| d.as_secs());
                }
            });
        }
        hung
    }
}

/// Pings `WATCHDOG=1` every half `period` while no watched loop is hung (see [`Judge`]).
/// Runs for the life of the process; `None` when systemd set no watchdog.
pub fn spawn_watchdog(notifier: Notifier, watched: Watched, period: Option<Duration>) -> Option<JoinHandle<()>> {
    let period = period.filter(|p| !p.is_zero())?;
    if !notifier.enabled() {
        return None;
    }
    Some(tokio::spawn(async move {
        let mut judge = Judge::default();
        let log = SharedLogLimit::<String>::new(edge_drivers::log_limit::DEFAULT_PERIOD);
        let mut tick = tokio::time::interval(period / 2);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let hung = judge.check(&watched, Instant::now(), HUNG_AFTER);
            if hung.is_empty() {
                notifier.notify(Note::Watchdog);
                continue;
            }
            for (task, silent) in hung {
                if let Some(suppressed) = log.allow(task.clone()) {
                    error!(%task, silent_for = ?silent, suppressed, "task looks hung (no progress): the systemd watchdog is no longer fed, so systemd restarts the agent");
                }
            }
        }
    }))
}

#[cfg(test)]
mod tests;
