//! `/metrics`: the live state in the Prometheus text exposition format 0.0.4, by hand.
//!
//! Every family gets its `# HELP` and `# TYPE` lines, even when it has no samples
//! (no devices configured), so a dashboard sees the family exist.

use std::fmt::Write as _;

use crate::health::{HealthState, ReasonCode};
use crate::live::{DeviceView, Snapshot};

/// The `content-type` a Prometheus server expects for the text format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

#[derive(Clone, Copy)]
enum Kind {
    Gauge,
    Counter,
}

/// One metric family: its name after `edge_agent_`, its type and its help text. The
/// help texts are ours and hold no backslash or newline, so they need no escaping.
struct Family {
    name: &'static str,
    kind: Kind,
    help: &'static str,
}

const fn gauge(name: &'static str, help: &'static str) -> Family {
    Family { name, kind: Kind::Gauge, help }
}

const fn counter(name: &'static str, help: &'static str) -> Family {
    Family { name, kind: Kind::Counter, help }
}

const DEVICE_CONNECTED: Family = gauge("device_connected", "1 when the agent holds a connection to the device, else 0.");
const DEVICE_POLLS: Family = counter("device_polls_total", "Polls of the device completed since the agent started.");
const DEVICE_REQUESTS: Family = counter("device_requests_total", "Requests the driver sent to the device.");
const DEVICE_TIMEOUTS: Family = counter("device_timeouts_total", "Requests the device did not answer in time.");
const DEVICE_EXCEPTIONS: Family = counter("device_exceptions_total", "Requests the device refused with a protocol exception.");
const DEVICE_TRANSPORT_ERRORS: Family =
    counter("device_transport_errors_total", "Requests lost to the connection (closed, reset, garbled frame).");
const DEVICE_DECODE_ERRORS: Family = counter("device_decode_errors_total", "Readings of the device that could not be decoded.");
const DEVICE_RECONNECTS: Family = counter("device_reconnects_total", "Connections rebuilt for the device after the first.");
const DEVICE_LATENCY: Family = gauge("device_last_latency_microseconds", "Round-trip time of the last answered request.");
// OPC-UA devices (zero for the others).
const OPCUA_SESSION_ATTEMPTS: Family =
    counter("device_opcua_session_attempts_total", "OPC-UA sessions attempted (secure channel and session), the first included.");
const OPCUA_SUBSCRIPTIONS_REBUILT: Family =
    counter("device_opcua_subscriptions_rebuilt_total", "OPC-UA subscriptions created again after a reconnect or a lost subscription.");
const OPCUA_BAD_ITEMS: Family =
    counter("device_opcua_bad_items_total", "OPC-UA items refused or lost (unknown node, unresolved browse path), counted each time.");
const OPCUA_NOTIFICATIONS: Family = counter("device_opcua_notifications_total", "OPC-UA data-change notifications received.");
const OPCUA_NOTIFICATIONS_DROPPED: Family =
    counter("device_opcua_notifications_dropped_total", "OPC-UA notifications dropped because the driver's queue was full.");
const DEVICE_BACKED_OFF: Family = gauge("device_backed_off", "1 while the device is backed off after repeated failures.");
const DEVICE_BACKOFFS: Family = counter("device_backoffs_total", "Times the device was backed off after repeated failures.");
const DEVICE_SPLITS: Family = counter("device_request_splits_total", "Merged read requests split because the device refused them.");
const DEVICE_POLLS_CONFIGURED: Family = gauge(
    "device_configured_polls_per_second",
    "Polls a second the device's config asks for (one per interval of each poll group in use). No sample for a device not in [[devices]].",
);
const DEVICE_POLLS_ACHIEVED: Family = gauge(
    "device_achieved_polls_per_second",
    "Polls a second the device got over the last measurement window (a minute or more). No sample while measuring, nor for OPC-UA devices.",
);
const TAG_QUALITY_GOOD: Family = gauge("tag_quality_good", "Number of the device's tags whose last reading is of good quality.");
const STORE_PENDING_BATCHES: Family = gauge("store_pending_batches", "Telemetry batches in the outbox waiting for their PUBACK.");
const STORE_PENDING_EVENTS: Family = gauge("store_pending_events", "Events in the outbox waiting for their PUBACK.");
const STORE_DISK_BYTES: Family = gauge("store_disk_bytes", "Size of the store on disk, in bytes.");
const STORE_NEXT_BATCH_SEQ: Family = gauge("store_next_batch_seq", "The batch_seq the next telemetry batch will get.");
const STORE_BATCHES_STORED: Family = counter("store_batches_stored_total", "Telemetry batches written to the store.");
const STORE_SAMPLES_STORED: Family = counter("store_samples_stored_total", "Samples written to the store.");
const STORE_BATCHES_ACKED: Family =
    counter("store_batches_acked_total", "Telemetry batches acknowledged by the broker and removed from the store.");
const STORE_CORRUPT_RECORDS: Family =
    counter("store_corrupt_records_total", "Store records that failed their checksum or decoding; skipped and deleted.");
const STORE_BYTES: Family = gauge("store_bytes", "Bytes of records held in the outbox (bounded by store.max_bytes).");
const STORE_MAX_BYTES: Family = gauge("store_max_bytes", "The store.max_bytes bound.");
const STORE_BATCHES_DROPPED: Family =
    counter("store_batches_dropped_total", "Telemetry batches dropped to keep the store within max_bytes / max_age (oldest first).");
const STORE_SAMPLES_DROPPED: Family =
    counter("store_samples_dropped_total", "Samples dropped with those batches, or from memory while the store could not be written.");
const STORE_EVENTS_DROPPED: Family =
    counter("store_events_dropped_total", "Events dropped because the store was full and no telemetry was left to drop.");
const STORE_WRITE_ERRORS: Family = counter("store_write_errors_total", "Failed writes to the store.");
const STORE_WRITABLE: Family = gauge("store_writable", "1 while the store takes writes; 0 from a failed write until it has been reopened.");
const STORE_REOPENS: Family = counter("store_reopens_total", "Reopens of the store after an I/O error (a full disk).");
const STORE_UNWRITTEN_SAMPLES_DROPPED: Family = counter(
    "store_unwritten_samples_dropped_total",
    "Samples dropped before they could be written (also in store_samples_dropped_total), by reason: memory_bound (past the bound kept in memory while the store was unwritable or compacting), shutdown (still held when the writer stopped).",
);
const STORE_UNWRITTEN_EVENTS_DROPPED: Family = counter(
    "store_unwritten_model_events_dropped_total",
    "Model events lost because the store could not be written (its retries ran out, or shutdown came while it waited).",
);
const STORE_DEFERRED_ACKS: Family =
    gauge("store_deferred_acks", "Acknowledged entries waiting to be deleted until the store can be written; they are not sent again.");
const UPLINK_CONNECTED: Family = gauge("uplink_connected", "1 when the MQTT connection to the broker is up, else 0.");
const UPLINK_CONNECTS: Family = counter("uplink_connects_total", "Successful connections to the broker.");
const UPLINK_CONNECTION_ERRORS: Family = counter("uplink_connection_errors_total", "Failed or lost connections to the broker.");
const UPLINK_PUBLISHED: Family = counter("uplink_published_total", "Messages published to the broker.");
const UPLINK_ACKED: Family = counter("uplink_acked_total", "Published messages acknowledged by the broker.");
const UPLINK_FAILOVERS: Family = counter("uplink_failovers_total", "Switches to the other broker.");
const UPLINK_COMMANDS_DROPPED: Family =
    counter("uplink_commands_dropped_total", "Commands from the ERP dropped because the command handler was busy or gone.");
const STORE_COMPACT_ABOVE: Family =
    gauge("store_compact_above_bytes", "The store.compact_above bound: size on disk above which the outbox is compacted.");
const STORE_COMPACTIONS: Family = counter("store_compactions_total", "Compactions of the outbox (rewritten into a fresh sled database).");
const STORE_RESETS: Family = counter(
    "store_resets_total",
    "Store resets found at start (moved aside, newest records lost, numbering unknown); each a store_reset event.",
);
const STORE_READ_PANICS: Family = counter("store_read_panics_total", "Store reads that sled panicked on (damaged data); contained.");
const STORE_COMPACTION_FAILURES: Family =
    counter("store_compaction_failures_total", "Compactions that failed; the agent kept running on the store as it was.");
const STORE_LAST_COMPACTION_MS: Family =
    gauge("store_last_compaction_pause_milliseconds", "How long the last compaction paused the store, in milliseconds.");
const STORE_LAST_COMPACTION_BYTES_BEFORE: Family =
    gauge("store_last_compaction_bytes_before", "Size of the outbox on disk before the last compaction.");
const STORE_LAST_COMPACTION_BYTES_AFTER: Family =
    gauge("store_last_compaction_bytes_after", "Size of the outbox on disk after the last compaction.");
const STORE_PENDING_REPLIES: Family = gauge("store_pending_replies", "Command replies in the outbox waiting for their PUBACK.");
const UPLINK_IN_FLIGHT: Family = gauge("uplink_in_flight", "Published messages waiting for their acknowledgement.");

const HOST_CPU: Family = gauge(
    "host_cpu_usage_ratio",
    "Busy share of all the gateway's cores over the last sampling interval (5 s), 0 to 1. No sample when unknown.",
);
const PROCESS_CPU: Family = gauge(
    "process_cpu_usage_ratio",
    "The agent's share of all the gateway's cores over the last sampling interval, 0 to 1. No sample when unknown.",
);
const HOST_MEMORY_TOTAL: Family = gauge("host_memory_total_bytes", "The gateway's memory (MemTotal).");
const HOST_MEMORY_AVAILABLE: Family =
    gauge("host_memory_available_bytes", "Memory the gateway can give to programs without swapping (MemAvailable).");
const PROCESS_RESIDENT_MEMORY: Family = gauge("process_resident_memory_bytes", "The agent's resident memory (VmRSS).");
const DATA_DIR_DISK_TOTAL: Family = gauge("data_dir_disk_total_bytes", "Size of the filesystem holding gateway.data_dir.");
const DATA_DIR_DISK_FREE: Family =
    gauge("data_dir_disk_free_bytes", "Space the agent may still write on the filesystem holding gateway.data_dir.");
const HOST_READ_ERRORS: Family = counter(
    "host_read_errors_total",
    "Failed reads of the gateway's resources by source: cpu (/proc/stat), memory (/proc/meminfo), process (/proc/self), disk (free space of gateway.data_dir), timeout (a round of reads slower than 2 s).",
);

const HEALTH: Family = gauge(
    "health",
    "The health verdict: 1 for the current state (ok, attention, degraded, fault), 0 for the others. The reasons are in edge_agent_health_reasons and /api/status.",
);
const HEALTH_REASONS: Family = gauge(
    "health_reasons",
    "Reasons of the health verdict now, by stable code (0 when the code does not apply); their words are in /api/status.",
);
const READY: Family = gauge("ready", "1 when every core task runs and the store can be written (/readyz answers 200), else 0.");
const TASK_UP: Family = gauge("task_up", "1 while the agent's long-lived task runs, 0 while it is down (restarting, failed or stopped).");
const TASK_RESTARTS: Family = counter("task_restarts_total", "Restarts of the task after it ended unexpectedly (a panic or an error).");
const LOG_LINES_LOST: Family =
    counter("log_lines_lost_total", "Log lines that could not be written to stderr (closed, full) and were dropped.");
const LOG_LINES_SUPPRESSED: Family = counter(
    "log_lines_suppressed_total",
    "Log lines of other crates (library retries) held back by the once-a-minute limit; the agent's own lines carry suppressed = n.",
);

const SPARKPLUG_BDSEQ: Family = gauge(
    "sparkplug_bdseq",
    "Sparkplug B: the bdSeq of the current MQTT connection (in its NDEATH Will and NBIRTH). No sample in JSON mode.",
);
const SPARKPLUG_SEQ: Family = gauge("sparkplug_seq", "Sparkplug B: the seq of the last message published (0-255, wrapping).");
const SPARKPLUG_BORN: Family =
    gauge("sparkplug_born", "Sparkplug B: 1 while the edge node's NBIRTH of this connection stands (no NDEATH since).");
const SPARKPLUG_HOST_ONLINE: Family = gauge(
    "sparkplug_primary_host_online",
    "Sparkplug B: 1 while the primary host's STATE says online; no sample without sparkplug.primary_host_id.",
);
const SPARKPLUG_BIRTHS: Family =
    counter("sparkplug_births_total", "Sparkplug B: births published, by kind: node (NBIRTH), device (DBIRTH).");
const SPARKPLUG_DEVICE_DEATHS: Family = counter("sparkplug_device_deaths_total", "Sparkplug B: DDEATHs published for devices lost.");
const SPARKPLUG_REBIRTHS: Family =
    counter("sparkplug_rebirth_requests_total", "Sparkplug B: Node Control/Rebirth requests received from a host (NCMD).");
const SPARKPLUG_COMMANDS: Family = counter(
    "sparkplug_commands_total",
    "Sparkplug B: NCMD and DCMD messages from hosts: received, and refused (unreadable, not allowed by the command policy, Reboot without allow_reboot).",
);

const COMMANDS: Family = counter(
    "commands_total",
    "Commands from the ERP by result: accepted (done), rejected (refused, nothing done), failed (sent, the device refused or did not answer), duplicate (same id again: answered, not run again).",
);

const WEB_LOGINS: Family = counter(
    "web_logins_total",
    "Logins to the status page by result: success, failure (wrong user name or password), locked (refused unchecked: too many failures from the address or for the user).",
);
const WEB_LOCKOUTS: Family =
    counter("web_lockouts_total", "Times a source address or a user name was locked after too many failed logins, by scope.");
const WEB_REFUSED: Family = counter(
    "web_requests_refused_total",
    "Requests to the status page refused by reason: no_credentials, invalid_session, invalid_token, origin, csrf, role.",
);
const WEB_LOGOUTS_FORGOTTEN: Family = counter(
    "web_logouts_forgotten_total",
    "Logged-out sessions forgotten before their expiry because more than 4096 were remembered (web-sessions-revoked): their cookies work again until they expire.",
);
const WEB_ACTIONS: Family = counter(
    "web_operator_actions_total",
    "Operator actions on the status page that passed the checks, by action (acknowledge, trust_certificate) and result: done (with its audit event), already (done before: nothing changed), not_found, invalid (an info event, not a thumbprint), failed (the store or the PKI failed: nothing changed). Refused ones are in web_requests_refused_total.",
);

/// Renders every metric of `s`, one family after the other, ending with a newline.
pub fn render(s: &Snapshot) -> String {
    let mut out = String::with_capacity(4096);
    render_health(&mut out, s);
    render_host(&mut out, &s.host);
    render_devices(&mut out, s);
    render_store(&mut out, s);
    render_uplink(&mut out, s);
    render_sparkplug(&mut out, s);
    render_commands(&mut out, s);
    render_web(&mut out, &crate::web::auth::counters());
    // Local models: one sample per model in each family (analytics/metrics.rs).
    crate::analytics::metrics::render(&mut out, s);
    out
}

fn render_health(out: &mut String, s: &Snapshot) {
    let h = &s.health;
    let states: Vec<(&str, u64)> = HealthState::ALL.iter().map(|st| (st.as_str(), u64::from(*st == h.state))).collect();
    HEALTH.labelled(out, "state", &states);
    HEALTH_REASONS.header(out);
    // Every code, always: a stable set of series (a level label would change with the reason).
    for code in ReasonCode::ALL {
        let _ = writeln!(out, "edge_agent_{}{{code=\"{}\"}} {}", HEALTH_REASONS.name, code.as_str(), h.count(code));
    }
    READY.scalar(out, u64::from(h.ready));
    TASK_UP.header(out);
    for (name, t) in &s.tasks {
        let _ = writeln!(out, "edge_agent_{}{{task=\"{}\"}} {}", TASK_UP.name, escape_label_value(name), u64::from(t.alive()));
    }
    TASK_RESTARTS.header(out);
    for (name, t) in &s.tasks {
        let _ = writeln!(out, "edge_agent_{}{{task=\"{}\"}} {}", TASK_RESTARTS.name, escape_label_value(name), t.restarts);
    }
    LOG_LINES_LOST.scalar(out, crate::runtime::log_sink::lines_lost());
    LOG_LINES_SUPPRESSED.scalar(out, crate::runtime::log_sink::library_lines_suppressed());
}

fn render_host(out: &mut String, h: &crate::host::HostView) {
    HOST_CPU.scalar_f64(out, h.cpu_percent.map(|p| p / 100.0));
    PROCESS_CPU.scalar_f64(out, h.agent_cpu_percent.map(|p| p / 100.0));
    HOST_MEMORY_TOTAL.scalar_opt(out, h.memory_total_bytes);
    HOST_MEMORY_AVAILABLE.scalar_opt(out, h.memory_available_bytes);
    PROCESS_RESIDENT_MEMORY.scalar_opt(out, h.agent_memory_bytes);
    DATA_DIR_DISK_TOTAL.scalar_opt(out, h.disk_total_bytes);
    DATA_DIR_DISK_FREE.scalar_opt(out, h.disk_free_bytes);
    HOST_READ_ERRORS.labelled(out, "source", &h.read_errors.by_source());
}

fn render_devices(out: &mut String, s: &Snapshot) {
    DEVICE_CONNECTED.per_device(out, s, |d| u64::from(d.connected));
    DEVICE_POLLS.per_device(out, s, |d| d.polls);
    let c = |d: &DeviceView| d.counters.clone().unwrap_or_default();
    DEVICE_REQUESTS.per_device(out, s, |d| c(d).requests);
    DEVICE_TIMEOUTS.per_device(out, s, |d| c(d).timeouts);
    DEVICE_EXCEPTIONS.per_device(out, s, |d| c(d).exceptions);
    DEVICE_TRANSPORT_ERRORS.per_device(out, s, |d| c(d).transport_errors);
    DEVICE_DECODE_ERRORS.per_device(out, s, |d| c(d).decode_errors);
    DEVICE_RECONNECTS.per_device(out, s, |d| c(d).reconnects);
    DEVICE_LATENCY.per_device(out, s, |d| c(d).last_latency_ms.map_or(0, |ms| (ms * 1000.0) as u64));
    DEVICE_BACKED_OFF.per_device(out, s, |d| u64::from(c(d).backed_off));
    DEVICE_BACKOFFS.per_device(out, s, |d| c(d).backoffs);
    DEVICE_SPLITS.per_device(out, s, |d| c(d).splits);
    OPCUA_SESSION_ATTEMPTS.per_device(out, s, |d| c(d).session_attempts);
    OPCUA_SUBSCRIPTIONS_REBUILT.per_device(out, s, |d| c(d).subscriptions_rebuilt);
    OPCUA_BAD_ITEMS.per_device(out, s, |d| c(d).bad_items);
    OPCUA_NOTIFICATIONS.per_device(out, s, |d| c(d).notifications);
    OPCUA_NOTIFICATIONS_DROPPED.per_device(out, s, |d| c(d).notifications_dropped);
    TAG_QUALITY_GOOD.per_device(out, s, |d| d.tags.iter().filter(|t| t.quality == "good").count() as u64);
    DEVICE_POLLS_CONFIGURED.per_device_f64(out, s, |d| d.poll_rate.as_ref().map(|r| r.configured_per_s));
    DEVICE_POLLS_ACHIEVED.per_device_f64(out, s, |d| d.poll_rate.as_ref().and_then(|r| r.achieved_per_s));
}

fn render_store(out: &mut String, s: &Snapshot) {
    let st = &s.store;
    STORE_PENDING_BATCHES.scalar(out, st.pending_batches);
    STORE_PENDING_EVENTS.scalar(out, st.pending_events);
    STORE_PENDING_REPLIES.scalar(out, st.pending_replies);
    STORE_DISK_BYTES.scalar(out, st.disk_bytes);
    STORE_NEXT_BATCH_SEQ.scalar(out, st.next_batch_seq);
    STORE_BATCHES_STORED.scalar(out, st.batches_stored);
    STORE_SAMPLES_STORED.scalar(out, st.samples_stored);
    STORE_BATCHES_ACKED.scalar(out, st.batches_acked);
    STORE_CORRUPT_RECORDS.scalar(out, st.corrupt_records);
    STORE_RESETS.scalar(out, st.store_resets);
    STORE_READ_PANICS.scalar(out, st.read_panics);
    STORE_BYTES.scalar(out, st.bytes);
    STORE_MAX_BYTES.scalar(out, st.max_bytes);
    STORE_BATCHES_DROPPED.scalar(out, st.batches_dropped);
    STORE_SAMPLES_DROPPED.scalar(out, st.samples_dropped);
    STORE_EVENTS_DROPPED.scalar(out, st.events_dropped);
    STORE_WRITE_ERRORS.scalar(out, st.write_errors);
    STORE_WRITABLE.scalar(out, u64::from(st.writable));
    STORE_REOPENS.scalar(out, st.reopens);
    STORE_UNWRITTEN_SAMPLES_DROPPED.labelled(
        out,
        "reason",
        &[("memory_bound", st.samples_dropped_memory_bound), ("shutdown", st.samples_dropped_shutdown)],
    );
    STORE_UNWRITTEN_EVENTS_DROPPED.scalar(out, st.model_events_unwritten_dropped);
    STORE_DEFERRED_ACKS.scalar(out, st.deferred_acks);
    render_compaction(out, st);
}

fn render_compaction(out: &mut String, st: &crate::live::StoreView) {
    STORE_COMPACT_ABOVE.scalar(out, st.compact_above);
    STORE_COMPACTIONS.scalar(out, st.compactions);
    STORE_COMPACTION_FAILURES.scalar(out, st.compaction_failures);
    STORE_LAST_COMPACTION_MS.scalar(out, st.last_compaction_ms);
    STORE_LAST_COMPACTION_BYTES_BEFORE.scalar(out, st.last_compaction_bytes_before);
    STORE_LAST_COMPACTION_BYTES_AFTER.scalar(out, st.last_compaction_bytes_after);
}

fn render_uplink(out: &mut String, s: &Snapshot) {
    let up = &s.uplink;
    UPLINK_CONNECTED.scalar(out, u64::from(up.connected));
    UPLINK_CONNECTS.scalar(out, up.connects);
    UPLINK_CONNECTION_ERRORS.scalar(out, up.connection_errors);
    UPLINK_PUBLISHED.scalar(out, up.published);
    UPLINK_ACKED.scalar(out, up.acked);
    UPLINK_IN_FLIGHT.scalar(out, up.in_flight);
    UPLINK_FAILOVERS.scalar(out, up.failovers);
    UPLINK_COMMANDS_DROPPED.scalar(out, up.commands_dropped);
}

/// The Sparkplug families: declared always, with samples only in Sparkplug mode.
fn render_sparkplug(out: &mut String, s: &Snapshot) {
    let Some(sp) = &s.uplink.sparkplug else {
        for family in [
            &SPARKPLUG_BDSEQ,
            &SPARKPLUG_SEQ,
            &SPARKPLUG_BORN,
            &SPARKPLUG_HOST_ONLINE,
            &SPARKPLUG_BIRTHS,
            &SPARKPLUG_DEVICE_DEATHS,
            &SPARKPLUG_REBIRTHS,
            &SPARKPLUG_COMMANDS,
        ] {
            family.header(out);
        }
        return;
    };
    match sp.bd_seq {
        Some(b) => SPARKPLUG_BDSEQ.scalar(out, u64::from(b)),
        None => SPARKPLUG_BDSEQ.header(out),
    }
    match sp.seq {
        Some(n) => SPARKPLUG_SEQ.scalar(out, u64::from(n)),
        None => SPARKPLUG_SEQ.header(out),
    }
    SPARKPLUG_BORN.scalar(out, u64::from(sp.born));
    match &sp.host_state {
        Some(state) => SPARKPLUG_HOST_ONLINE.scalar(out, u64::from(state == "online")),
        None => SPARKPLUG_HOST_ONLINE.header(out),
    }
    SPARKPLUG_BIRTHS.labelled(out, "kind", &[("node", sp.node_births), ("device", sp.device_births)]);
    SPARKPLUG_DEVICE_DEATHS.scalar(out, sp.device_deaths);
    SPARKPLUG_REBIRTHS.scalar(out, sp.rebirth_requests);
    SPARKPLUG_COMMANDS.labelled(out, "result", &[("received", sp.commands_received), ("refused", sp.commands_refused)]);
}

fn render_commands(out: &mut String, s: &Snapshot) {
    let c = &s.commands;
    COMMANDS.labelled(
        out,
        "result",
        &[("accepted", c.accepted), ("rejected", c.rejected), ("failed", c.failed), ("duplicate", c.duplicates)],
    );
}

fn render_web(out: &mut String, c: &crate::web::auth::AuthCounters) {
    WEB_LOGINS.labelled(out, "result", &[("success", c.logins_success), ("failure", c.logins_failure), ("locked", c.logins_locked)]);
    WEB_LOCKOUTS.labelled(out, "scope", &[("address", c.lockouts_address), ("user", c.lockouts_user)]);
    let refused: Vec<(&str, u64)> = crate::web::auth::Refusal::ALL.iter().zip(c.refused).map(|(r, n)| (r.as_str(), n)).collect();
    WEB_REFUSED.labelled(out, "reason", &refused);
    WEB_LOGOUTS_FORGOTTEN.scalar(out, crate::web::revoked::forgotten());
    WEB_ACTIONS.header(out);
    for (action, result, n) in crate::web::actions::counters() {
        let _ = writeln!(out, "edge_agent_{}{{action=\"{action}\",result=\"{result}\"}} {n}", WEB_ACTIONS.name);
    }
}

// Writing into a String cannot fail: the `fmt::Result`s below are always Ok.
impl Family {
    fn header(&self, out: &mut String) {
        let (name, help) = (self.name, self.help);
        let kind = match self.kind {
            Kind::Gauge => "gauge",
            Kind::Counter => "counter",
        };
        let _ = writeln!(out, "# HELP edge_agent_{name} {help}");
        let _ = writeln!(out, "# TYPE edge_agent_{name} {kind}");
    }

    fn scalar(&self, out: &mut String, value: u64) {
        self.header(out);
        let _ = writeln!(out, "edge_agent_{} {value}", self.name);
    }

    /// The family, and its one sample when the value is known.
    fn scalar_opt(&self, out: &mut String, value: Option<u64>) {
        self.header(out);
        if let Some(value) = value {
            let _ = writeln!(out, "edge_agent_{} {value}", self.name);
        }
    }

    /// The same for a real number (never NaN or infinite: those are left out too).
    fn scalar_f64(&self, out: &mut String, value: Option<f64>) {
        self.header(out);
        if let Some(value) = value.filter(|v| v.is_finite()) {
            let _ = writeln!(out, "edge_agent_{} {value}", self.name);
        }
    }

    /// One sample per device whose value is known, labelled `device`.
    fn per_device_f64(&self, out: &mut String, s: &Snapshot, value: impl Fn(&DeviceView) -> Option<f64>) {
        self.header(out);
        for (device, view) in &s.devices {
            if let Some(v) = value(view).filter(|v| v.is_finite()) {
                let _ = writeln!(out, "edge_agent_{}{{device=\"{}\"}} {v}", self.name, escape_label_value(device));
            }
        }
    }

    /// One sample per value of one label (fixed label values: no escaping needed).
    fn labelled(&self, out: &mut String, label: &str, values: &[(&str, u64)]) {
        self.header(out);
        for (key, value) in values {
            let _ = writeln!(out, "edge_agent_{}{{{label}=\"{key}\"}} {value}", self.name);
        }
    }

    /// One sample per device, labelled `device`, in the devices' name order.
    fn per_device(&self, out: &mut String, s: &Snapshot, value: impl Fn(&DeviceView) -> u64) {
        self.header(out);
        for (device, view) in &s.devices {
            let device = escape_label_value(device);
            let _ = writeln!(out, "edge_agent_{}{{device=\"{device}\"}} {}", self.name, value(view));
        }
    }
}

/// Escapes a label value as the text format requires: `\` as `\\`, `"` as `\"` and a
/// line feed as `\n`.
fn escape_label_value(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::live::{DeviceView, StoreView, TagView, UplinkView};

    fn tag(name: &str, quality: &str) -> TagView {
        TagView { name: name.into(), quality: quality.into(), ..Default::default() }
    }

    fn two_devices() -> Snapshot {
        let mut s = Snapshot::default();
        let press = DeviceView {
            name: "press-1".into(),
            connected: true,
            polls: 42,
            tags: vec![tag("temp", "good"), tag("pressure", "good"), tag("speed", "bad")],
            ..Default::default()
        };
        let odd = DeviceView {
            name: "line \"A\"".into(),
            connected: false,
            polls: 7,
            tags: vec![tag("level", "uncertain"), tag("flow", "none")],
            ..Default::default()
        };
        s.devices.insert(press.name.clone(), press);
        s.devices.insert(odd.name.clone(), odd);
        s.store = StoreView {
            pending_batches: 3,
            pending_events: 1,
            pending_replies: 0,
            disk_bytes: 65536,
            next_batch_seq: 101,
            batches_stored: 100,
            samples_stored: 1200,
            batches_acked: 97,
            corrupt_records: 2,
            store_resets: 1,
            read_panics: 0,
            bytes: 40960,
            max_bytes: 1048576,
            batches_dropped: 5,
            samples_dropped: 60,
            events_dropped: 0,
            write_errors: 0,
            compact_above: 3145728,
            compactions: 2,
            compaction_failures: 1,
            last_compaction_ms: 1250,
            last_compaction_bytes_before: 3200000,
            last_compaction_bytes_after: 1500000,
            writable: false,
            reopens: 2,
            samples_dropped_memory_bound: 40,
            samples_dropped_shutdown: 7,
            model_events_unwritten_dropped: 2,
            deferred_acks: 3,
        };
        s.uplink = UplinkView {
            broker: "10.0.0.5:1883".into(),
            connected: true,
            connects: 4,
            connection_errors: 3,
            published: 110,
            acked: 108,
            in_flight: 2,
            ..Default::default()
        };
        s
    }

    fn lines(text: &str) -> Vec<&str> {
        text.lines().collect()
    }

    #[test]
    fn renders_per_device_lines_for_each_of_two_devices() {
        // Given a snapshot with two devices, one connected with two good tags of three
        let s = two_devices();
        // When it is rendered
        let text = render(&s);
        let lines = lines(&text);
        // Then every device has its connected, polls and good-tags line
        for expected in [
            "edge_agent_device_connected{device=\"press-1\"} 1",
            "edge_agent_device_polls_total{device=\"press-1\"} 42",
            "edge_agent_tag_quality_good{device=\"press-1\"} 2",
            "edge_agent_device_connected{device=\"line \\\"A\\\"\"} 0",
            "edge_agent_device_polls_total{device=\"line \\\"A\\\"\"} 7",
            "edge_agent_tag_quality_good{device=\"line \\\"A\\\"\"} 0",
        ] {
            assert!(lines.contains(&expected), "missing {expected:?} in\n{text}");
        }
    }

    #[test]
    fn renders_store_and_uplink_values_with_their_types() {
        // Given a snapshot with store and uplink counters set
        let s = two_devices();
        // When it is rendered
        let text = render(&s);
        let lines = lines(&text);
        // Then each scalar metric carries its value and its declared type
        for expected in [
            "edge_agent_store_pending_batches 3",
            "edge_agent_store_pending_events 1",
            "edge_agent_store_disk_bytes 65536",
            "edge_agent_store_next_batch_seq 101",
            "edge_agent_store_batches_stored_total 100",
            "edge_agent_store_samples_stored_total 1200",
            "edge_agent_store_batches_acked_total 97",
            "edge_agent_store_corrupt_records_total 2",
            "edge_agent_store_resets_total 1",
            "edge_agent_store_bytes 40960",
            "edge_agent_store_max_bytes 1048576",
            "edge_agent_store_batches_dropped_total 5",
            "edge_agent_store_samples_dropped_total 60",
            "edge_agent_store_events_dropped_total 0",
            "edge_agent_store_write_errors_total 0",
            "edge_agent_store_compact_above_bytes 3145728",
            "edge_agent_store_compactions_total 2",
            "edge_agent_store_compaction_failures_total 1",
            "edge_agent_store_last_compaction_pause_milliseconds 1250",
            "edge_agent_store_last_compaction_bytes_before 3200000",
            "edge_agent_store_last_compaction_bytes_after 1500000",
            "edge_agent_uplink_connected 1",
            "edge_agent_uplink_connects_total 4",
            "edge_agent_uplink_connection_errors_total 3",
            "edge_agent_uplink_published_total 110",
            "edge_agent_uplink_acked_total 108",
            "edge_agent_uplink_in_flight 2",
            "# TYPE edge_agent_device_connected gauge",
            "# TYPE edge_agent_device_polls_total counter",
            "# TYPE edge_agent_tag_quality_good gauge",
            "# TYPE edge_agent_store_pending_batches gauge",
            "# TYPE edge_agent_store_write_errors_total counter",
            "# TYPE edge_agent_uplink_in_flight gauge",
        ] {
            assert!(lines.contains(&expected), "missing {expected:?} in\n{text}");
        }
    }

    #[test]
    fn renders_whether_the_store_is_writable_its_reopens_and_what_was_dropped_before_written() {
        // Given a snapshot of a store that a full disk made unwritable
        let s = two_devices();
        // When it is rendered
        let text = render(&s);
        // Then the gauge, the counters and the drops by reason are there with their types
        for expected in [
            "# TYPE edge_agent_store_writable gauge",
            "edge_agent_store_writable 0",
            "# TYPE edge_agent_store_reopens_total counter",
            "edge_agent_store_reopens_total 2",
            "# TYPE edge_agent_store_unwritten_samples_dropped_total counter",
            "edge_agent_store_unwritten_samples_dropped_total{reason=\"memory_bound\"} 40",
            "edge_agent_store_unwritten_samples_dropped_total{reason=\"shutdown\"} 7",
            "# TYPE edge_agent_store_unwritten_model_events_dropped_total counter",
            "edge_agent_store_unwritten_model_events_dropped_total 2",
            "edge_agent_store_deferred_acks 3",
        ] {
            assert!(lines(&text).contains(&expected), "missing {expected:?} in\n{text}");
        }
    }

    #[test]
    fn renders_command_counts_by_result() {
        // Given a snapshot after commands of every outcome
        let mut s = two_devices();
        s.commands = crate::live::CommandsView { accepted: 7, rejected: 3, failed: 1, duplicates: 2, ..Default::default() };
        // When it is rendered
        let text = render(&s);
        // Then each result is one labelled sample of one counter family
        for expected in [
            "# TYPE edge_agent_commands_total counter",
            "edge_agent_commands_total{result=\"accepted\"} 7",
            "edge_agent_commands_total{result=\"rejected\"} 3",
            "edge_agent_commands_total{result=\"failed\"} 1",
            "edge_agent_commands_total{result=\"duplicate\"} 2",
        ] {
            assert!(lines(&text).contains(&expected), "missing {expected:?} in\n{text}");
        }
    }

    #[test]
    fn every_family_has_one_help_and_one_type_line_before_its_samples() {
        // Given any snapshot
        let text = render(&two_devices());
        // When each sample line is checked against the TYPE lines seen before it
        let mut declared: Vec<&str> = Vec::new();
        let mut helped: Vec<&str> = Vec::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let name = rest.split(' ').next().unwrap_or_default();
                assert!(!declared.contains(&name), "{name} declared twice");
                assert!(helped.contains(&name), "{name} has TYPE before HELP");
                declared.push(name);
            } else if let Some(rest) = line.strip_prefix("# HELP ") {
                helped.push(rest.split(' ').next().unwrap_or_default());
            } else {
                // Then every sample belongs to the family declared just before it
                let name = line.split(['{', ' ']).next().unwrap_or_default();
                assert_eq!(declared.last(), Some(&name), "sample {line:?} outside its family");
                assert!(name.starts_with("edge_agent_"));
            }
        }
        assert_eq!(declared.len(), 85 + crate::analytics::metrics::FAMILY_COUNT);
        assert!(text.ends_with('\n'));
    }

    #[test]
    fn renders_the_health_verdict_its_reasons_and_the_task_register() {
        // Given a snapshot whose uplink task restarted once and is down again, and one
        // disconnected device
        let mut s = two_devices();
        let t = crate::live::TaskView {
            name: "uplink".into(),
            core: true,
            state: crate::live::TaskState::Restarting,
            restarts: 2,
            ..Default::default()
        };
        s.tasks.insert(t.name.clone(), t);
        s.health = crate::health::evaluate(&s, chrono::Utc::now());
        // When it is rendered
        let text = render(&s);
        // Then the state is one-hot, the reasons are counted by code, and each task has its lines
        for expected in [
            "edge_agent_health{state=\"ok\"} 0",
            "edge_agent_health{state=\"fault\"} 1",
            "edge_agent_health_reasons{code=\"task_down\"} 1",
            "edge_agent_health_reasons{code=\"device_disconnected\"} 1",
            "edge_agent_health_reasons{code=\"anomaly_active\"} 0",
            "edge_agent_ready 0",
            "edge_agent_task_up{task=\"uplink\"} 0",
            "edge_agent_task_restarts_total{task=\"uplink\"} 2",
            "# TYPE edge_agent_task_restarts_total counter",
        ] {
            assert!(lines(&text).contains(&expected), "missing {expected:?} in\n{text}");
        }
    }

    #[test]
    fn renders_the_status_page_login_counters_with_every_label() {
        // Given any snapshot
        let text = render(&two_devices());
        // Then the login, lockout and refusal families are there with each label value
        for prefix in [
            "# TYPE edge_agent_web_logins_total counter",
            "edge_agent_web_logins_total{result=\"success\"} ",
            "edge_agent_web_logins_total{result=\"failure\"} ",
            "edge_agent_web_logins_total{result=\"locked\"} ",
            "edge_agent_web_lockouts_total{scope=\"address\"} ",
            "edge_agent_web_lockouts_total{scope=\"user\"} ",
            "# TYPE edge_agent_web_logouts_forgotten_total counter",
            "edge_agent_web_logouts_forgotten_total ",
            "edge_agent_web_requests_refused_total{reason=\"no_credentials\"} ",
            "edge_agent_web_requests_refused_total{reason=\"csrf\"} ",
            "edge_agent_web_requests_refused_total{reason=\"role\"} ",
            "# TYPE edge_agent_web_operator_actions_total counter",
            "edge_agent_web_operator_actions_total{action=\"acknowledge\",result=\"done\"} ",
            "edge_agent_web_operator_actions_total{action=\"acknowledge\",result=\"already\"} ",
            "edge_agent_web_operator_actions_total{action=\"trust_certificate\",result=\"not_found\"} ",
        ] {
            assert!(text.lines().any(|l| l.starts_with(prefix)), "missing {prefix:?} in\n{text}");
        }
    }

    #[test]
    fn renders_the_gateways_resources_and_each_devices_poll_rates_leaving_out_the_unknown() {
        // Given a snapshot with CPU and disk known but memory not, and two devices, one of
        // them measured at 0.5 polls a second of 1 configured
        let mut s = two_devices();
        s.host = crate::host::HostView {
            cpu_percent: Some(12.5),
            agent_cpu_percent: Some(0.5),
            disk_free_bytes: Some(5_000_000_000),
            disk_total_bytes: Some(30_000_000_000),
            read_errors: crate::host::ReadErrors { memory: 3, ..Default::default() },
            ..Default::default()
        };
        let rate =
            crate::live::poll_rate::PollRate::new(vec![crate::live::poll_rate::GroupInterval { group: None, interval_ms: 1000 }], true);
        let mut view = rate.view(std::time::Instant::now());
        view.achieved_per_s = Some(0.5);
        s.devices.get_mut("press-1").unwrap().poll_rate = Some(view);
        // When it is rendered
        let text = render(&s);
        // Then the known values are samples, as ratios and bytes
        for expected in [
            "# TYPE edge_agent_host_cpu_usage_ratio gauge",
            "edge_agent_host_cpu_usage_ratio 0.125",
            "edge_agent_process_cpu_usage_ratio 0.005",
            "edge_agent_data_dir_disk_free_bytes 5000000000",
            "edge_agent_data_dir_disk_total_bytes 30000000000",
            "edge_agent_host_read_errors_total{source=\"memory\"} 3",
            "edge_agent_host_read_errors_total{source=\"timeout\"} 0",
            "edge_agent_device_configured_polls_per_second{device=\"press-1\"} 1",
            "edge_agent_device_achieved_polls_per_second{device=\"press-1\"} 0.5",
        ] {
            assert!(lines(&text).contains(&expected), "missing {expected:?} in\n{text}");
        }
        // And the unknown ones have their family but no sample
        assert!(text.contains("# TYPE edge_agent_host_memory_total_bytes gauge\n# HELP"), "{text}");
        assert!(!text.contains("edge_agent_device_configured_polls_per_second{device=\"line"), "{text}");
    }

    #[test]
    fn escapes_backslash_quote_and_newline_in_label_values() {
        // Given a label value with every character the format reserves
        let raw = "a\\b\"c\nd";
        // When it is escaped
        let escaped = escape_label_value(raw);
        // Then each is written as its escape sequence and nothing else changes
        assert_eq!(escaped, "a\\\\b\\\"c\\nd");
        assert_eq!(escape_label_value("Presse Süd"), "Presse Süd");
    }

    #[test]
    fn the_sparkplug_families_have_samples_only_in_sparkplug_mode() {
        // Given a JSON-mode snapshot, then a Sparkplug one
        let json = render(&Snapshot::default());
        let mut s = Snapshot::default();
        s.uplink.sparkplug = Some(crate::live::SparkplugView {
            bd_seq: Some(3),
            seq: Some(255),
            born: true,
            host_state: Some("online".into()),
            node_births: 2,
            device_births: 5,
            rebirth_requests: 1,
            commands_received: 4,
            commands_refused: 1,
            ..Default::default()
        });
        let text = render(&s);
        // Then JSON mode declares them without samples, Sparkplug mode fills them
        assert!(json.contains("# TYPE edge_agent_sparkplug_bdseq gauge"));
        assert!(!json.lines().any(|l| l.starts_with("edge_agent_sparkplug_")), "{json}");
        for line in [
            "edge_agent_sparkplug_bdseq 3",
            "edge_agent_sparkplug_seq 255",
            "edge_agent_sparkplug_born 1",
            "edge_agent_sparkplug_primary_host_online 1",
            "edge_agent_sparkplug_births_total{kind=\"node\"} 2",
            "edge_agent_sparkplug_births_total{kind=\"device\"} 5",
            "edge_agent_sparkplug_device_deaths_total 0",
            "edge_agent_sparkplug_rebirth_requests_total 1",
            "edge_agent_sparkplug_commands_total{result=\"refused\"} 1",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing in\n{text}");
        }
    }

    #[test]
    fn renders_families_without_samples_when_no_device_is_configured() {
        // Given an empty snapshot
        let text = render(&Snapshot::default());
        // Then the device families are declared but have no sample, and scalars are zero
        assert!(text.contains("# TYPE edge_agent_device_connected gauge\n# HELP edge_agent_device_polls_total"));
        assert!(text.lines().any(|l| l == "edge_agent_uplink_connected 0"));
    }
}
