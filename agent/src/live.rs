//! The agent's live state: what the status page, `/api/status` and `/metrics` show.
//!
//! Every task writes its own part; readers take a [`Snapshot`]. Counters only go up
//! (Prometheus semantics) so a scrape never misses a drop or an error.

pub mod poll_rate;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Instant;

use chrono::{DateTime, Utc};
use edge_drivers::{DeviceConfig, DriverStats, Quality, Sample, Value};
use serde::Serialize;

/// Shared handle to the live state.
#[derive(Clone)]
pub struct Live {
    state: Arc<RwLock<Snapshot>>,
    /// Recent history of every tag (trends); fed with the same samples as the state.
    history: crate::history::History,
    /// The latest events, as appended to the outbox (the page's event list).
    events: crate::recent_events::RecentEvents,
    /// Each configured device's poll rate measurement, by name (kept out of the state: a
    /// snapshot copies its result, not its observations).
    poll_rates: Arc<Mutex<BTreeMap<String, poll_rate::PollRate>>>,
}

/// Everything the page shows, at one instant. Serialised as `/api/status`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Snapshot {
    /// The agent's clock when the snapshot was taken: the page computes ages against it,
    /// not against the tablet's clock.
    pub generated_at: Option<DateTime<Utc>>,
    pub gateway: GatewayView,
    pub devices: BTreeMap<String, DeviceView>,
    pub store: StoreView,
    pub uplink: UplinkView,
    pub commands: CommandsView,
    /// The local models (`[[models]]`), by name.
    pub models: BTreeMap<String, crate::analytics::status::ModelView>,
    /// Every long-lived task of the agent, by name (see `runtime::supervise`).
    pub tasks: BTreeMap<String, TaskView>,
    /// The health verdict, computed from the rest of this snapshot when it is taken
    /// (see [`crate::health`]).
    pub health: crate::health::Health,
    /// The in-memory history's size and what it refused (see [`crate::history`]).
    pub history: crate::history::HistoryStats,
    /// The GPIO outputs' and inputs' levels (`[gpio]`; empty without one).
    pub gpio: crate::gpio::GpioView,
    /// The gateway's CPU, memory and disk (see [`crate::host`]).
    pub host: crate::host::HostView,
}

/// Where a task is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskState {
    #[default]
    Running,
    /// Ended unexpectedly; waiting for its back-off before it starts again.
    Restarting,
    /// Ended unexpectedly and is not restarted: the agent stops and exits non-zero.
    Failed,
    /// Stopped by the agent (shutdown or reload).
    Stopped,
    /// Ended by itself with nothing left to do (the model event sink when no model runs).
    Finished,
}

/// One long-lived task in the task register.
#[derive(Debug, Clone, Default, Serialize)]
pub struct TaskView {
    pub name: String,
    /// A core task is one the data path needs (store writer, sample feed, model event
    /// sink, uplink, command handler): while one is down `/readyz` fails.
    pub core: bool,
    /// What happens when it ends unexpectedly: `restart` (with back-off) or `exit` (the
    /// agent stops in order and exits non-zero, so systemd restarts it).
    pub on_failure: String,
    pub state: TaskState,
    /// Restarts after an unexpected end, since the agent (re)started.
    pub restarts: u64,
    /// Why it last ended unexpectedly (the panic message or the error).
    pub last_exit: Option<String>,
    pub last_exit_at: Option<DateTime<Utc>>,
    /// Set while the task runs but its loop shows no progress (seconds since it last did):
    /// the systemd watchdog is no longer fed, and systemd restarts the agent.
    pub hung_for_s: Option<u64>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct GatewayView {
    pub id: String,
    pub site: String,
    pub version: String,
    pub started_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct DeviceView {
    pub name: String,
    pub protocol: String,
    pub address: String,
    pub connected: bool,
    /// Why the device is not connected (or why the last poll failed).
    pub last_error: Option<String>,
    /// When `connected` last changed.
    pub since: Option<DateTime<Utc>>,
    /// Polls of the device: counted by its driver when it reports counters, else one per
    /// batch of readings received.
    pub polls: u64,
    /// The driver's counters (requests, errors by kind, reconnects, latency).
    pub counters: Option<DriverStats>,
    /// Configured against achieved poll rate (see [`poll_rate`]); `None` for a device not
    /// in the config's `[[devices]]` (the `gpio` inputs).
    pub poll_rate: Option<poll_rate::PollRateView>,
    /// Tags in config order.
    pub tags: Vec<TagView>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct TagView {
    pub name: String,
    pub unit: Option<String>,
    pub value: Option<Value>,
    /// `good`, `bad`, `uncertain`, or `none` before the first reading.
    pub quality: String,
    pub reason: Option<String>,
    pub ts: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct StoreView {
    /// Telemetry batches waiting in the outbox for their PUBACK.
    pub pending_batches: u64,
    /// Events waiting in the outbox.
    pub pending_events: u64,
    /// Replies to ERP commands waiting in the outbox.
    pub pending_replies: u64,
    /// Size of the store on disk, in bytes.
    pub disk_bytes: u64,
    /// The `batch_seq` the next batch will get.
    pub next_batch_seq: u64,
    pub batches_stored: u64,
    pub samples_stored: u64,
    pub batches_acked: u64,
    /// Records that failed their checksum or could not be decoded; skipped and deleted.
    pub corrupt_records: u64,
    /// Resets of the store found at start (moved aside, newest records lost, numbering
    /// unknown), each raised as a `store_reset` event; and reads sled panicked on.
    pub store_resets: u64,
    pub read_panics: u64,
    /// Bytes of records held, bounded by `store.max_bytes`.
    pub bytes: u64,
    pub max_bytes: u64,
    /// Telemetry dropped to stay within `max_bytes` / `max_age` (oldest first).
    pub batches_dropped: u64,
    pub samples_dropped: u64,
    /// Events dropped (only when no telemetry was left to drop).
    pub events_dropped: u64,
    pub write_errors: u64,
    /// `store.compact_above`: the size on disk above which the outbox is compacted.
    pub compact_above: u64,
    /// Compactions done, and failed (the agent kept the old store), since the start.
    pub compactions: u64,
    pub compaction_failures: u64,
    /// The last compaction: how long the store was paused (ms), disk bytes before / after.
    pub last_compaction_ms: u64,
    pub last_compaction_bytes_before: u64,
    pub last_compaction_bytes_after: u64,
    /// False from a failed write until the store has been reopened (a full disk).
    pub writable: bool,
    /// Reopens of the store after an I/O error.
    pub reopens: u64,
    /// Of `samples_dropped`: gathered samples dropped before they could be written, past the
    /// memory bound while the store was unwritable, or at shutdown.
    pub samples_dropped_memory_bound: u64,
    pub samples_dropped_shutdown: u64,
    /// Model events lost because the store could not be written.
    pub model_events_unwritten_dropped: u64,
    /// Acks waiting for the store to be writable (their entries are not sent again).
    pub deferred_acks: u64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct UplinkView {
    /// `host:port` of the broker.
    pub broker: String,
    pub connected: bool,
    pub since: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
    pub connects: u64,
    pub connection_errors: u64,
    pub published: u64,
    pub acked: u64,
    pub in_flight: u64,
    /// Switches to the other broker (`[mqtt.failover]`).
    pub failovers: u64,
    /// Commands from the ERP dropped because the handler was busy or gone.
    pub commands_dropped: u64,
    /// Source time of the oldest telemetry batch still waiting in the outbox (the backlog's
    /// age); `None` when the outbox holds no batch.
    pub oldest_pending_at: Option<DateTime<Utc>>,
    /// The Sparkplug B edge node (`mqtt.payload = "sparkplug"`); `None` in JSON mode.
    pub sparkplug: Option<SparkplugView>,
}

/// The Sparkplug B edge node's state (`uplink::session`; `commands_refused` by the
/// command handler).
#[derive(Debug, Clone, Default, Serialize)]
pub struct SparkplugView {
    pub group_id: String,
    pub edge_node_id: String,
    /// The `bdSeq` of the current (or next) MQTT CONNECT, in its NDEATH Will.
    pub bd_seq: Option<u8>,
    /// The `seq` of the last message published.
    pub seq: Option<u8>,
    /// Whether the NBIRTH of the current session went out (and no NDEATH since).
    pub born: bool,
    /// `sparkplug.primary_host_id`, if set.
    pub primary_host: Option<String>,
    /// `online`, `offline` or `unknown` (no STATE received yet in this connection);
    /// `None` without a primary host.
    pub host_state: Option<String>,
    pub node_births: u64,
    pub device_births: u64,
    pub device_deaths: u64,
    /// `Node Control/Rebirth` requests received (NCMD).
    pub rebirth_requests: u64,
    /// DCMD and NCMD messages received.
    pub commands_received: u64,
    /// Host commands refused: DCMD writes the command policy refused, `Node Control/Reboot`
    /// without `sparkplug.allow_reboot`, unreadable NCMD/DCMD payloads.
    pub commands_refused: u64,
    /// Devices lost (DDEATH sent), in name order.
    pub dead_devices: Vec<String>,
}

/// Commands from the ERP since the agent started (see `commands::handler`).
#[derive(Debug, Clone, Default, Serialize)]
pub struct CommandsView {
    /// Carried out and succeeded.
    pub accepted: u64,
    /// Refused before anything was done (malformed, unknown, not allowed, out of range…).
    pub rejected: u64,
    /// Carried out, but the device refused or did not answer.
    pub failed: u64,
    /// Repeats of a command already carried out (same id): answered, not run again.
    pub duplicates: u64,
    /// Of `rejected`, those from a Sparkplug host (DCMD writes, `Node Control/Reboot`).
    pub sparkplug_refused: u64,
}

impl TaskView {
    /// Running, or done with its work: nothing is missing.
    pub fn alive(&self) -> bool {
        matches!(self.state, TaskState::Running | TaskState::Finished)
    }
}

impl Default for Live {
    fn default() -> Self {
        Live::new(GatewayView::default(), &[])
    }
}

impl Live {
    pub fn new(gateway: GatewayView, config: &[DeviceConfig]) -> Self {
        let devices = config
            .iter()
            .map(|d| {
                let view = DeviceView {
                    name: d.name.clone(),
                    protocol: d.protocol.as_str().into(),
                    address: d.endpoint(),
                    tags: d
                        .tags
                        .iter()
                        .map(|t| TagView { name: t.name.clone(), unit: t.unit.clone(), quality: "none".into(), ..Default::default() })
                        .collect(),
                    ..Default::default()
                };
                (d.name.clone(), view)
            })
            .collect();
        // The store counts as writable until the writer says otherwise (a failed write).
        let store = StoreView { writable: true, ..Default::default() };
        let history = crate::history::History::new(crate::history::HistorySettings::default());
        let poll_rates = config.iter().map(|d| (d.name.clone(), poll_rate::PollRate::of(d))).collect();
        Live {
            state: Arc::new(RwLock::new(Snapshot { gateway, devices, store, ..Default::default() })),
            history,
            events: crate::recent_events::RecentEvents::default(),
            poll_rates: Arc::new(Mutex::new(poll_rates)),
        }
    }

    /// The same state with a history kept under `settings` (`[history]`), instead of the
    /// defaults.
    pub fn with_history(mut self, settings: crate::history::HistorySettings) -> Self {
        self.history = crate::history::History::new(settings);
        self
    }

    /// The recent history of every tag.
    pub fn history(&self) -> &crate::history::History {
        &self.history
    }

    /// The same state listing the events of `events` (the outbox's ring, fed as events are
    /// appended).
    pub fn with_events(mut self, events: crate::recent_events::RecentEvents) -> Self {
        self.events = events;
        self
    }

    /// The latest events.
    pub fn events(&self) -> &crate::recent_events::RecentEvents {
        &self.events
    }

    /// A copy of the state, with its health verdict computed for this instant.
    pub fn snapshot(&self) -> Snapshot {
        let mut snapshot = match self.state.read() {
            Ok(s) => s.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        };
        let now = Utc::now();
        snapshot.generated_at = Some(now);
        {
            let rates = self.poll_rates.lock().unwrap_or_else(PoisonError::into_inner);
            let at = Instant::now();
            for (name, d) in &mut snapshot.devices {
                d.poll_rate = rates.get(name).map(|r| r.view(at));
            }
        }
        snapshot.health = crate::health::evaluate(&snapshot, now);
        snapshot.history = self.history.stats();
        snapshot
    }

    /// Runs `f` on the state under the read lock, without copying it (a snapshot clones
    /// every device, tag and model and computes the verdict: far too much to read one
    /// field on a hot path). `f` must be quick and must not call back into `Live`.
    pub fn read<R>(&self, f: impl FnOnce(&Snapshot) -> R) -> R {
        match self.state.read() {
            Ok(s) => f(&s),
            Err(poisoned) => f(&poisoned.into_inner()),
        }
    }

    /// Runs `f` on the state under the write lock. A poisoned lock (a panic elsewhere
    /// while holding it) is recovered: the state is plain data and stays usable.
    pub fn update<R>(&self, f: impl FnOnce(&mut Snapshot) -> R) -> R {
        match self.state.write() {
            Ok(mut s) => f(&mut s),
            Err(poisoned) => f(&mut poisoned.into_inner()),
        }
    }

    pub fn record_samples(&self, device: &str, samples: &[Sample]) {
        self.history.record(device, samples);
        let counted = self.update(|s| {
            let d = s.devices.get_mut(device)?;
            // A driver that reports counters counts its own polls (see `record_stats`):
            // a poll whose readings a deadband held back sends no samples at all.
            let counted = d.counters.is_none().then(|| {
                d.polls += 1;
                d.polls
            });
            for sample in samples {
                if let Some(t) = d.tags.iter_mut().find(|t| t.name == sample.tag) {
                    if sample.quality.is_good() || t.value.is_none() {
                        t.value = sample.value.clone();
                    }
                    t.quality = sample.quality.code().to_string();
                    t.reason = sample.quality.reason().map(str::to_string);
                    t.ts = Some(sample.source_ts);
                }
            }
            // The device's last error is the first bad reading of the latest poll; a fully
            // good poll clears it.
            d.last_error = samples.iter().find_map(|s| match &s.quality {
                Quality::Bad(r) => Some(r.clone()),
                _ => None,
            });
            counted
        });
        if let Some(polls) = counted {
            self.poll_rate(device, |r| r.record(Instant::now(), polls));
        }
    }

    pub fn record_stats(&self, device: &str, stats: DriverStats) {
        let polls = stats.polls;
        let first = self.update(|s| {
            let d = s.devices.get_mut(device)?;
            // Never backwards (a restarted driver task counts from zero again).
            d.polls = d.polls.max(stats.polls);
            let first = d.counters.is_none();
            d.counters = Some(stats);
            Some(first)
        });
        if let Some(first) = first {
            self.poll_rate(device, |r| {
                // The driver's own counter replaces the count of batches from here on.
                if first {
                    r.restart();
                }
                r.record(Instant::now(), polls);
            });
        }
    }

    /// Runs `f` on the poll rate measurement of `device`, if it is a configured one.
    fn poll_rate(&self, device: &str, f: impl FnOnce(&mut poll_rate::PollRate)) {
        let mut rates = self.poll_rates.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(r) = rates.get_mut(device) {
            f(r);
        }
    }

    /// Whether `device` is shown as connected (cheaper than a whole snapshot).
    pub fn device_connected(&self, device: &str) -> bool {
        self.update(|s| s.devices.get(device).is_some_and(|d| d.connected))
    }

    pub fn record_connection(&self, device: &str, connected: bool, error: Option<String>) {
        self.update(|s| {
            if let Some(d) = s.devices.get_mut(device) {
                d.connected = connected;
                d.since = Some(Utc::now());
                d.last_error = error;
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_store_the_writer_reports_unwritable_makes_the_verdict_a_fault_and_not_ready() {
        // Given a running agent's state with no failed store write
        let live = Live::default();
        assert!(live.snapshot().health.ready);
        // When a store write fails (the writer marks the store unwritable until a reopen)
        live.update(|s| {
            s.store.write_errors += 1;
            s.store.writable = false;
        });
        // Then the verdict is a fault, not ready
        let h = live.snapshot().health;
        assert!(!h.ready);
        assert_eq!(h.state, crate::health::HealthState::Fault);
        assert_eq!(h.count(crate::health::ReasonCode::StoreUnwritable), 1);
    }

    #[test]
    fn a_configured_device_shows_its_configured_poll_rate_and_measures_the_achieved_one() {
        // Given a device polled every 500 ms, and a device the config does not list
        let tag = edge_drivers::TagConfig { name: "t".into(), ..edge_drivers::TagConfig::default() };
        let device = DeviceConfig {
            name: "plc".into(),
            poll_interval: std::time::Duration::from_millis(500),
            tags: vec![tag],
            ..DeviceConfig::default()
        };
        let live = Live::new(GatewayView::default(), &[device]);
        live.update(|s| {
            s.devices.insert("gpio".into(), DeviceView { name: "gpio".into(), ..Default::default() });
        });
        // When its driver reports its first polls
        live.record_stats("plc", DriverStats { polls: 1, ..DriverStats::default() });
        live.record_stats("plc", DriverStats { polls: 2, ..DriverStats::default() });
        // Then the snapshot has its configured rate, the achieved one being measured
        let s = live.snapshot();
        let rate = s.devices["plc"].poll_rate.clone().expect("a poll rate");
        assert_eq!(rate.configured_per_s, 2.0);
        assert_eq!(rate.intervals, vec![poll_rate::GroupInterval { group: None, interval_ms: 500 }]);
        assert_eq!((rate.achieved_per_s, rate.note.as_deref(), rate.behind), (None, Some("measuring"), false));
        // And the unlisted device has none
        assert!(s.devices["gpio"].poll_rate.is_none());
    }

    #[test]
    fn regression_a_driver_that_counts_its_polls_is_believed_over_the_batches_it_sends() {
        let device = DeviceConfig { name: "plc".into(), ..DeviceConfig::default() };
        let live = Live::new(GatewayView::default(), &[device]);
        // Before the driver's first counters, each batch of readings counts as a poll.
        live.record_samples("plc", &[]);
        assert_eq!(live.snapshot().devices["plc"].polls, 1);
        // The driver polled 40 times, but a deadband held back most of the readings.
        live.record_stats("plc", DriverStats { polls: 40, ..DriverStats::default() });
        live.record_samples("plc", &[]);
        assert_eq!(live.snapshot().devices["plc"].polls, 40);
        // A restarted driver counts from zero again; the page's counter never goes back.
        live.record_stats("plc", DriverStats { polls: 3, ..DriverStats::default() });
        assert_eq!(live.snapshot().devices["plc"].polls, 40);
    }
}
