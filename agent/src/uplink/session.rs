//! The uplink task: one rumqttc event loop, driven here, publishing from the outbox.
//! The event loop is MQTT 3.1.1 or 5 (`mqtt.protocol`); this module sees only the neutral
//! interface of [`super::transport`].
//!
//! Why the retransmission queue of rumqttc is emptied on every disconnect: the outbox,
//! not rumqttc's memory, is the source of truth. After each (re)connection everything
//! still in the outbox is published again, marked `historical` when it was stored before
//! the connection came up. This also covers a broker that lost our session (rumqttc would
//! then silently drop its pending packets), an agent restart and a switch to the failover
//! broker (a new event loop, which knows nothing of the old one). The cost is a possible
//! duplicate after a reconnect, which `batch_seq` lets the ERP drop.
//!
//! What goes out, in this order, while the in-flight window has room: replies to commands,
//! events, then telemetry as [`super::schedule`] decides (live batches first, the replay of
//! the backlog bounded by `mqtt.replay_max_per_sec`).
//!
//! Connecting: a random delay before the first connect (`mqtt.start_delay_max`), then
//! reconnects with full-jitter exponential backoff (0.5 s doubling up to 60 s); after
//! `mqtt.failover_after` failed connects in a row the uplink switches to the other broker
//! (`[mqtt.failover]`) and stays there until that one fails as often.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use edge_drivers::backoff::Backoff;
use edge_drivers::heartbeat::Heartbeat;
use edge_drivers::log_limit::LogLimit;
use rand::Rng;
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{mpsc, watch, Notify};
use tokio::time::Instant;
use tracing::{debug, error, info, warn};

use super::config::PayloadFormat;
use super::options::{Broker, Prepared};
use super::schedule::Schedule;
use super::topics::{Topics, RESPONSE};
use super::tracker::{Carried, Tracker};
use super::transport::{LinkError, Transport, Wire};
use crate::config::Config;
use crate::live::Live;
use crate::live::SparkplugView;
use crate::payload::{self, TelemetryPayload};
use crate::sparkplug::bdseq::BdSeq;
use crate::sparkplug::catalog::{decode_value, ALIAS_REBOOT};
use crate::sparkplug::node::{EdgeNode, NodeInfo, NAMESPACE};
use crate::sparkplug::{DataType, Payload};
use crate::store::Outbox;

/// Set to `Some(deadline)` to make the uplink drain the outbox and go offline.
pub type UplinkShutdown = watch::Receiver<Option<Instant>>;

/// Connect timeout of one attempt (TCP, TLS and CONNACK), seconds.
const CONNECT_TIMEOUT_S: u64 = 10;
/// While connected, the outbox is looked at least this often, even without a
/// notification (a reply stored by a task that does not notify `stored`).
const POLL_EVERY: Duration = Duration::from_millis(500);
/// How long to wait before trying again to load the TLS files or the password.
const OPTIONS_RETRY: Duration = Duration::from_secs(30);
/// The same connect error is logged as a warning at most this often (at debug otherwise).
const REPEAT_WARNING: Duration = Duration::from_secs(300);
/// How often the age of the oldest batch in the outbox is read again (one store read).
const BACKLOG_AGE_EVERY: Duration = Duration::from_secs(1);
/// Sparkplug: a changed node metric (the store depth) goes out as NDATA at most this often.
const NODE_DATA_EVERY: Duration = Duration::from_secs(10);

pub struct Uplink {
    pub config: Config,
    pub outbox: Outbox,
    pub live: Live,
    /// Woken by the store writer after each write.
    pub stored: Arc<Notify>,
}

/// Marks the uplink disconnected when dropped (the task ended or was dropped mid-flight).
struct MarkDisconnected(Live);

impl Drop for MarkDisconnected {
    fn drop(&mut self) {
        self.0.update(|v| {
            if v.uplink.connected {
                v.uplink.since = Some(Utc::now());
            }
            v.uplink.connected = false;
            v.uplink.in_flight = 0;
        });
    }
}

/// A command that arrived on `{root}/cmd/{name}`, for the command handler.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InboundCommand {
    /// The last topic level: `write`, `reload`, `rebirth`, `ping`, …
    pub name: String,
    /// The payload as received (JSON with an `"id"` by the contract; not checked here).
    pub payload: Vec<u8>,
}

/// Where the next publish of replies and events reads from in the outbox (telemetry has
/// its own cursors in [`Schedule`]).
#[derive(Debug, Default, Clone, Copy)]
struct Cursor {
    next_event: u64,
    next_reply: u64,
}

struct Session {
    prepared: Prepared,
    /// Index into `prepared.brokers` of the broker in use.
    current: usize,
    /// The client and event loop, of the version `mqtt.protocol` names.
    transport: Transport,
    topics: Topics,
    gateway: String,
    window: usize,
    tracker: Tracker,
    cursor: Cursor,
    schedule: Schedule,
    connected: bool,
    /// Whether the first connection of this process has come up.
    ever_connected: bool,
    /// `live_from` for the first connection if its first attempt succeeds: the outbox's
    /// next number when the uplink started, so that batches stored during the random start
    /// delay are not marked historical (nothing failed; what was in the outbox before the
    /// start is). After any failed connect, the usual rule applies (stored before the
    /// connection came up = historical).
    first_live_from: Option<u64>,
    /// Failed connects in a row to the current broker.
    failures: u32,
    failover_after: u32,
    failovers: u64,
    commands: Option<mpsc::Sender<InboundCommand>>,
    commands_dropped: u64,
    /// The last connect error logged as a warning, and when.
    last_warning: Option<(String, Instant)>,
    /// The last refused publish (MQTT 5 PUBACK reason) logged as a warning, and when.
    last_refusal: Option<(String, Instant)>,
    /// Source time of the oldest batch in the outbox, and when it was last read.
    oldest_pending: Option<(Option<chrono::DateTime<Utc>>, Instant)>,
    /// Warnings that can repeat on every message, by kind: a store error on the ack path
    /// (one per acked publish while the store fails), a command dropped.
    repeated: LogLimit,
    /// `mqtt.payload = "sparkplug"`: the edge node (births, DDATA, the NDEATH Will).
    sparkplug: Option<Sparkplug>,
    /// Sparkplug: the node is leaving the broker because its primary host went offline
    /// (its NDEATH and a DISCONNECT are queued); see [`Session::rejoin`].
    leaving: Option<Leave>,
}

/// When the node that is leaving (primary host offline) drops the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Leave {
    /// Once the DISCONNECT has gone out (the broker then drops the Will).
    AfterDisconnect,
    /// At once: the DISCONNECT could not be queued.
    Now,
}

/// The command name a DCMD write is handed to the command handler under (a JSON `write`
/// payload); `/` cannot occur in a name from `{root}/cmd/{name}`, so no ERP can send it.
pub const SPARKPLUG_WRITE: &str = "sparkplug/write";
/// The command name of `Node Control/Reboot` (NCMD), for the command handler.
pub const SPARKPLUG_REBOOT: &str = "sparkplug/reboot";
const REBIRTH: &str = "Node Control/Rebirth";
const REBOOT: &str = "Node Control/Reboot";

/// The Sparkplug edge node's part of the session.
struct Sparkplug {
    node: EdgeNode,
    bdseq: BdSeq,
    /// The `bdSeq` of the CONNECT in progress (in its NDEATH Will, and its NBIRTH's).
    current: u8,
    reboot_allowed: bool,
    /// `spBv1.0/STATE/{primary_host_id}` when a primary host is configured.
    state_topic: Option<String>,
    /// The primary host's last STATE in this connection: `None` until one arrives.
    host_online: Option<bool>,
    /// The timestamp of the last STATE taken (an older one is stale and ignored).
    host_ts: u64,
    /// The host went offline: at the next NBIRTH, what was stored meanwhile is history.
    replay_on_birth: bool,
    /// When the last NBIRTH or NDATA of this session went out (NDATA rate limit).
    node_data_at: Option<Instant>,
    /// DCMDs handed to the command handler (for their ids).
    dcmds: u64,
    stats: SparkplugStats,
}

#[derive(Debug, Default, Clone, Copy)]
struct SparkplugStats {
    node_births: u64,
    device_births: u64,
    device_deaths: u64,
    rebirth_requests: u64,
    commands_received: u64,
    /// Refused here (unreadable payload, unknown NCMD metric); the handler counts the rest.
    commands_refused: u64,
}

impl Sparkplug {
    /// Reads the persisted `bdSeq` and takes the next one for the first CONNECT.
    async fn start(config: &Config) -> Self {
        let ids = config.sparkplug.ids(&config.gateway.site, &config.gateway.id);
        let node = EdgeNode::new(ids, &config.devices);
        let dir = config.gateway.data_dir.clone();
        let unread = BdSeq::unread(&dir);
        let (bdseq, current) = match tokio::task::spawn_blocking(move || {
            let (mut b, read) = BdSeq::open(&dir);
            if let Some(e) = read {
                warn!(error = %e, "sparkplug: could not read the last bdSeq");
            }
            let (current, written) = b.advance();
            if let Some(e) = written {
                error!(error = %e, "sparkplug: could not save bdSeq; a restart may repeat it");
            }
            (b, current)
        })
        .await
        {
            Ok(b) => b,
            Err(e) => {
                error!(error = %e, "sparkplug: reading bdSeq failed; starting from 0");
                (unread, 0)
            }
        };
        info!(group_id = %node.ids().group_id, edge_node_id = %node.ids().edge_node_id, bd_seq = current, "sparkplug edge node");
        let state_topic = config.sparkplug.primary_host_id.as_ref().map(|h| format!("{NAMESPACE}/STATE/{h}"));
        Sparkplug {
            node,
            bdseq,
            current,
            reboot_allowed: config.sparkplug.allow_reboot,
            state_topic,
            host_online: None,
            host_ts: 0,
            replay_on_birth: false,
            node_data_at: None,
            dcmds: 0,
            stats: SparkplugStats::default(),
        }
    }

    /// NBIRTH may go out: no primary host configured, or it is online.
    fn may_birth(&self) -> bool {
        self.state_topic.is_none() || self.host_online == Some(true)
    }

    /// The subscriptions of the edge node: NCMD, DCMD of its devices, the primary host's STATE.
    fn filters(&self) -> Vec<String> {
        let mut f = vec![self.node.topic("NCMD", None), format!("{}/+", self.node.topic("DCMD", None))];
        f.extend(self.state_topic.clone());
        f
    }

    fn view(&self, handler_refused: u64) -> SparkplugView {
        let ids = self.node.ids();
        let mut dead_devices: Vec<String> = self.node.dead_devices().map(str::to_string).collect();
        dead_devices.sort();
        SparkplugView {
            group_id: ids.group_id.clone(),
            edge_node_id: ids.edge_node_id.clone(),
            bd_seq: Some(self.current),
            seq: self.node.last_seq(),
            born: self.node.is_born(),
            primary_host: ids.primary_host_id.clone(),
            host_state: self.state_topic.as_ref().map(|_| {
                match self.host_online {
                    Some(true) => "online",
                    Some(false) => "offline",
                    None => "unknown",
                }
                .to_string()
            }),
            node_births: self.stats.node_births,
            device_births: self.stats.device_births,
            device_deaths: self.stats.device_deaths,
            rebirth_requests: self.stats.rebirth_requests,
            commands_received: self.stats.commands_received,
            commands_refused: self.stats.commands_refused + handler_refused,
            dead_devices,
        }
    }

    /// The next CONNECT's `bdSeq`: advanced and saved before it is used.
    async fn advance(&mut self) {
        let mut b = self.bdseq.clone();
        match tokio::task::spawn_blocking(move || {
            let (current, written) = b.advance();
            (b, current, written)
        })
        .await
        {
            Ok((b, current, written)) => {
                if let Some(e) = written {
                    error!(error = %e, "sparkplug: could not save bdSeq; a restart may repeat it");
                }
                self.bdseq = b;
                self.current = current;
            }
            Err(e) => error!(error = %e, "sparkplug: advancing bdSeq failed"),
        }
    }

    fn arm_will(&self, transport: &mut Transport) {
        let death = self.node.death(self.current, Utc::now());
        transport.set_will(death.topic, death.payload);
    }
}

impl Uplink {
    /// Runs until `shutdown` carries a deadline and the outbox is drained (or the
    /// deadline passes); then publishes `offline` and disconnects. Inbound commands are
    /// not subscribed to.
    pub async fn run(self, shutdown: UplinkShutdown) {
        self.run_with_commands(shutdown, None).await;
    }

    /// [`Uplink::run`], forwarding every command that arrives on `{root}/cmd/+` to
    /// `commands`. The uplink never waits for the handler: when the channel is full the
    /// command is dropped, logged and counted.
    pub async fn run_with_commands(self, shutdown: UplinkShutdown, commands: Option<mpsc::Sender<InboundCommand>>) {
        self.run_beating(shutdown, commands, Heartbeat::new()).await;
    }

    /// [`Uplink::run_with_commands`], beating `heartbeat` on every turn of its loop and
    /// promising its planned waits (settings retry, start delay, reconnect delay), for the
    /// agent's watchdog.
    pub async fn run_beating(self, mut shutdown: UplinkShutdown, commands: Option<mpsc::Sender<InboundCommand>>, heartbeat: Heartbeat) {
        // However this task ends (a panic included), the page must not go on saying
        // "connected": the connection went with the task.
        let _disconnected = MarkDisconnected(self.live.clone());
        let mut deadline: Option<Instant> = *shutdown.borrow();
        heartbeat.beat();
        let Some(prepared) = self.prepare(&mut shutdown, &mut deadline, &heartbeat).await else {
            info!(pending_batches = self.outbox.pending_batches(), "uplink stopped");
            return;
        };
        // Batches stored since the agent started (before this task ran, or during the
        // deliberate start delay) are not held back by an outage: if the first connect
        // succeeds, they count as live (see `first_live_from`). Taking the number when this
        // task first runs instead made the first batch `historical` now and then on a loaded
        // machine, when the writer stored it before the uplink task was scheduled.
        let first_live_from = self.outbox.first_batch_seq_this_run();
        self.start_delay(&mut shutdown, &mut deadline, &heartbeat).await;

        let window = usize::from(self.config.mqtt.max_inflight);
        let broker = prepared.brokers[0].clone();
        let mut transport = new_transport(&prepared, &broker, window);
        let sparkplug = match self.config.mqtt.payload {
            PayloadFormat::Json => None,
            PayloadFormat::Sparkplug => {
                let sp = Sparkplug::start(&self.config).await;
                sp.arm_will(&mut transport);
                Some(sp)
            }
        };
        self.live.update(|s| s.uplink.broker = broker.to_string());
        info!(%broker, protocol = %prepared.protocol, tls = prepared.uses_tls(), failover = ?prepared.brokers.get(1).map(ToString::to_string), "uplink starting");
        let mut s = Session {
            prepared,
            current: 0,
            transport,
            topics: Topics::new(self.config.topic_root()),
            gateway: self.config.gateway.id.clone(),
            window,
            tracker: Tracker::default(),
            cursor: Cursor::default(),
            schedule: Schedule::new(self.config.mqtt.replay_max_per_sec, Instant::now()),
            connected: false,
            ever_connected: false,
            first_live_from: Some(first_live_from),
            failures: 0,
            failover_after: self.config.mqtt.failover_after.max(1),
            failovers: 0,
            commands,
            commands_dropped: 0,
            last_warning: None,
            last_refusal: None,
            oldest_pending: None,
            repeated: LogLimit::default(),
            sparkplug,
            leaving: None,
        };
        let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(60));

        loop {
            heartbeat.beat();
            if deadline.is_some() {
                s.schedule.unbounded();
            }
            if s.connected {
                s.fill(&self.outbox);
            }
            self.show(&mut s);
            if let Some(d) = deadline {
                let drained = s.tracker.is_empty()
                    && self.outbox.pending_replies() == 0
                    && self.outbox.pending_batches() == 0
                    && self.outbox.pending_events() == 0;
                if (s.connected && drained) || Instant::now() >= d {
                    break;
                }
            }
            let far = Instant::now() + Duration::from_secs(3600);
            let wake = if s.connected { s.schedule.wake_at().unwrap_or(far).min(Instant::now() + POLL_EVERY) } else { far };
            tokio::select! {
                event = s.transport.poll() => match event {
                    Ok(event) => {
                        let disconnect_sent = event == Wire::SentDisconnect;
                        s.handle(event, &self.outbox, &mut backoff, &self.live);
                        match s.leaving {
                            Some(Leave::Now) => s.rejoin(&self.live).await,
                            Some(Leave::AfterDisconnect) if disconnect_sent => s.rejoin(&self.live).await,
                            _ => {}
                        }
                    }
                    Err(e) => {
                        s.lost(&e, &self.live);
                        if s.failed_over(&self.live) {
                            backoff.reset();
                        }
                        s.next_sparkplug_session().await;
                        let delay = backoff.next_delay();
                        debug!(?delay, "uplink reconnect delay");
                        let until = deadline.map_or(Instant::now() + delay, |d| d.min(Instant::now() + delay));
                        heartbeat.alive_until(until);
                        tokio::select! {
                            () = tokio::time::sleep_until(until) => {}
                            Ok(()) = shutdown.changed() => deadline = *shutdown.borrow(),
                        }
                    }
                },
                () = self.stored.notified(), if s.connected => {}
                Ok(()) = shutdown.changed() => deadline = *shutdown.borrow(),
                () = tokio::time::sleep_until(deadline.unwrap_or(far).min(wake)) => {}
            }
        }
        s.go_offline(deadline).await;
        self.live.update(|v| v.uplink.connected = false);
        info!(
            pending_batches = self.outbox.pending_batches(),
            failovers = s.failovers,
            commands_dropped = s.commands_dropped,
            "uplink stopped"
        );
    }

    /// Loads the TLS files and the password. A problem is logged (naming the key and the
    /// file) and retried every 30 s, so that a certificate provisioned after the agent
    /// started is picked up; meanwhile everything stays in the outbox. `None`: shutdown.
    async fn prepare(&self, shutdown: &mut UplinkShutdown, deadline: &mut Option<Instant>, heartbeat: &Heartbeat) -> Option<Prepared> {
        loop {
            match Prepared::load(&self.config) {
                Ok(p) => return Some(p),
                Err(e) => {
                    error!(error = %e, retry_in = ?OPTIONS_RETRY, "uplink cannot connect: bad [mqtt] settings");
                    self.live.update(|v| {
                        v.uplink.connected = false;
                        v.uplink.last_error = Some(e.to_string());
                    });
                }
            }
            if deadline.is_some() {
                return None;
            }
            heartbeat.alive_until(Instant::now() + OPTIONS_RETRY * 2);
            tokio::select! {
                () = tokio::time::sleep(OPTIONS_RETRY) => {}
                changed = shutdown.changed() => match changed {
                    Ok(()) => *deadline = *shutdown.borrow(),
                    // The sender is gone: nobody can stop us any more; keep retrying.
                    Err(_) => tokio::time::sleep(OPTIONS_RETRY).await,
                },
            }
        }
    }

    /// Waits a uniformly random time in `[0, mqtt.start_delay_max]` before the first
    /// connect, so that gateways powered up together do not all connect at once. A
    /// shutdown cuts it short (the uplink then tries to drain until the deadline).
    async fn start_delay(&self, shutdown: &mut UplinkShutdown, deadline: &mut Option<Instant>, heartbeat: &Heartbeat) {
        let max = self.config.mqtt.start_delay_max;
        if max.is_zero() || deadline.is_some() {
            return;
        }
        let delay = rand::thread_rng().gen_range(Duration::ZERO..=max);
        info!(?delay, ?max, "uplink: random delay before the first connect (mqtt.start_delay_max)");
        heartbeat.alive_until(Instant::now() + delay);
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            Ok(()) = shutdown.changed() => *deadline = *shutdown.borrow(),
        }
    }

    fn show(&self, s: &mut Session) {
        let oldest_pending_at = self.oldest_pending(s);
        let in_flight = s.tracker.in_flight() as u64;
        let (pending_batches, pending_events) = (self.outbox.pending_batches(), self.outbox.pending_events());
        let pending_replies = self.outbox.pending_replies();
        let acked = self.outbox.counters().batches_acked.load(std::sync::atomic::Ordering::Relaxed);
        let (failovers, commands_dropped) = (s.failovers, s.commands_dropped);
        let sparkplug = s.sparkplug.as_ref();
        self.live.update(|v| {
            v.uplink.sparkplug = sparkplug.map(|sp| sp.view(v.commands.sparkplug_refused));
            v.uplink.in_flight = in_flight;
            v.uplink.failovers = failovers;
            v.uplink.commands_dropped = commands_dropped;
            v.uplink.oldest_pending_at = oldest_pending_at;
            v.store.pending_batches = pending_batches;
            v.store.pending_events = pending_events;
            v.store.pending_replies = pending_replies;
            v.store.batches_acked = acked;
        });
    }
}

impl Uplink {
    /// The source time of the oldest reading in the oldest batch still in the outbox (the
    /// backlog's age, for the health verdict), read at most once a second.
    fn oldest_pending(&self, s: &mut Session) -> Option<chrono::DateTime<Utc>> {
        if self.outbox.pending_batches() == 0 {
            s.oldest_pending = None;
            return None;
        }
        if let Some((at, read)) = s.oldest_pending {
            if read.elapsed() < BACKLOG_AGE_EVERY {
                return at;
            }
        }
        let at = self.outbox.telemetry_from(0, 1).first().and_then(|(_, batch)| {
            batch.samples.iter().filter_map(|x| chrono::DateTime::parse_from_rfc3339(&x.ts).ok()).min().map(|t| t.with_timezone(&Utc))
        });
        s.oldest_pending = Some((at, Instant::now()));
        at
    }
}

fn new_transport(prepared: &Prepared, broker: &Broker, window: usize) -> Transport {
    // Room for a full window plus the status, the subscription and the disconnect.
    Transport::new(prepared, broker, window + 16, CONNECT_TIMEOUT_S)
}

impl Session {
    fn broker(&self) -> &Broker {
        &self.prepared.brokers[self.current]
    }

    fn handle(&mut self, event: Wire, outbox: &Outbox, backoff: &mut Backoff, live: &Live) {
        match event {
            Wire::ConnAck { session_present } => {
                info!(broker = %self.broker(), session_present, "uplink connected");
                backoff.reset();
                self.connected = true;
                self.failures = 0;
                self.last_warning = None;
                // Everything still in the outbox is resent; what is there now is history.
                self.tracker.clear();
                self.cursor = Cursor::default();
                let live_from = self.first_live_from.take().unwrap_or_else(|| outbox.next_batch_seq());
                self.schedule.restart(live_from, Instant::now());
                let broker = self.broker().to_string();
                live.update(|v| {
                    v.uplink.broker = broker;
                    v.uplink.connected = true;
                    v.uplink.since = Some(Utc::now());
                    v.uplink.last_error = None;
                    v.uplink.connects += 1;
                });
                // A broker that kept our session kept the subscription too. The first
                // connection of the process subscribes anyway: the session may be from a
                // version of the agent that did not subscribe.
                if self.commands.is_some() && (!session_present || !self.ever_connected) {
                    self.subscribe_commands();
                }
                self.ever_connected = true;
                match &mut self.sparkplug {
                    None => self.publish_status("online"),
                    Some(sp) => {
                        // A clean session: subscribe every time. The NBIRTH goes out from
                        // `fill_sparkplug` (at once, or when the primary host is online).
                        sp.host_online = None;
                        for filter in sp.filters() {
                            if let Err(e) = self.transport.try_subscribe(filter.clone()) {
                                warn!(error = %e, %filter, "could not queue a Sparkplug subscription");
                            }
                        }
                    }
                }
            }
            Wire::SentPublish(pkid) => {
                self.tracker.sent(pkid);
                live.update(|v| v.uplink.published += 1);
            }
            Wire::PubAck { pkid, refused: Some(reason) } => {
                // MQTT 5 only: the broker answered the publish but did not take it (see
                // `transport::v5_puback`). The packet id is free again (rumqttc freed it; the
                // tracker must too, or the next publish with that id would be taken for a
                // resend), but the outbox entry stays: it goes out again after the next
                // (re)connection, when everything still in the outbox is resent.
                let carried = self.tracker.acked(pkid);
                let repeat = self.last_refusal.as_ref().is_some_and(|(r, at)| *r == reason && at.elapsed() < REPEAT_WARNING);
                if repeat {
                    debug!(pkid, %reason, ?carried, "the broker refused a publish");
                } else {
                    warn!(pkid, %reason, ?carried, broker = %self.broker(), "the broker refused a publish (MQTT 5 PUBACK reason code; check its ACL and quotas); the entry stays in the outbox and is sent again after the next reconnect");
                    self.last_refusal = Some((reason.clone(), Instant::now()));
                }
                live.update(|v| v.uplink.last_error = Some(format!("the broker refused a publish: {reason}")));
            }
            Wire::PubAck { pkid, refused: None } => {
                let result = match self.tracker.acked(pkid) {
                    Some(Carried::Telemetry(seq)) => outbox.ack_telemetry(seq),
                    Some(Carried::Event(seq)) => outbox.ack_event(seq),
                    Some(Carried::Reply(seq)) => outbox.ack_reply(seq),
                    Some(Carried::Status) | None => Ok(()),
                };
                if let Err(e) = result {
                    // The entry stays and is sent again later: a duplicate, never a loss.
                    // While the store fails this happens on every ack: one line a minute.
                    if let Some(suppressed) = self.repeated.allow("ack") {
                        error!(error = %e, pkid, suppressed, "could not delete an acknowledged entry");
                    }
                }
                live.update(|v| v.uplink.acked += 1);
            }
            Wire::Publish { topic, payload } => {
                if self.sparkplug.is_some() && topic.starts_with(NAMESPACE) && topic.as_bytes().get(NAMESPACE.len()) == Some(&b'/') {
                    self.sparkplug_inbound(&topic, &payload, outbox);
                } else {
                    self.inbound(&topic, payload);
                }
            }
            Wire::SubAck { refused } => {
                let what = if self.sparkplug.is_some() { "commands, or Sparkplug NCMD/DCMD/STATE" } else { "commands" };
                if refused {
                    error!(filter = %self.topics.commands(), broker = %self.broker(), "the broker refused a subscription ({what}; check its ACL): those messages will not arrive");
                } else {
                    debug!("subscribed ({what})");
                }
            }
            Wire::SentDisconnect | Wire::Other => {}
        }
    }

    fn subscribe_commands(&mut self) {
        let filter = self.topics.commands();
        if let Err(e) = self.transport.try_subscribe(filter.clone()) {
            // Only when the request queue is full, which the window sizing rules out.
            warn!(error = %e, %filter, "could not queue the subscription to commands");
        }
    }

    /// A publish on `{root}/cmd/{name}`: handed to the command handler, never awaited.
    fn inbound(&mut self, topic: &str, payload: Vec<u8>) {
        let Some(name) = self.topics.command_name(topic) else {
            debug!(topic, "ignoring a message outside the command topics");
            return;
        };
        if name == RESPONSE {
            return; // our own reply, echoed back by the cmd/+ subscription
        }
        let command = InboundCommand { name: name.to_string(), payload };
        self.forward(command);
    }

    /// Hands a command to the handler, never waiting: dropped and counted when it is busy.
    fn forward(&mut self, command: InboundCommand) {
        let Some(tx) = &self.commands else {
            if let Some(suppressed) = self.repeated.allow("no handler") {
                warn!(command = %command.name, suppressed, "command received but no command handler is running; dropped");
            }
            return;
        };
        let name = command.name.clone();
        match tx.try_send(command) {
            Ok(()) => debug!(command = %name, "command forwarded"),
            Err(TrySendError::Full(c)) => {
                self.commands_dropped += 1;
                if let Some(suppressed) = self.repeated.allow("handler busy") {
                    warn!(command = %c.name, dropped = self.commands_dropped, suppressed, "command handler busy (queue full); command dropped");
                }
            }
            Err(TrySendError::Closed(c)) => {
                self.commands_dropped += 1;
                if let Some(suppressed) = self.repeated.allow("handler stopped") {
                    warn!(command = %c.name, dropped = self.commands_dropped, suppressed, "command handler stopped; command dropped");
                }
            }
        }
    }

    /// A message on the edge node's subscriptions: the primary host's STATE, NCMD, DCMD.
    fn sparkplug_inbound(&mut self, topic: &str, payload: &[u8], outbox: &Outbox) {
        let Some(sp) = &mut self.sparkplug else { return };
        if sp.state_topic.as_deref() == Some(topic) {
            self.host_state(payload, outbox);
            return;
        }
        let ncmd = sp.node.topic("NCMD", None);
        let dcmd = format!("{}/", sp.node.topic("DCMD", None));
        let device = topic.strip_prefix(dcmd.as_str()).filter(|d| !d.is_empty() && !d.contains('/')).map(str::to_string);
        if topic != ncmd && device.is_none() {
            debug!(topic, "ignoring a Sparkplug message not for this edge node");
            return;
        }
        sp.stats.commands_received += 1;
        let message = match <Payload as prost::Message>::decode(payload) {
            Ok(p) => p,
            Err(e) => {
                sp.stats.commands_refused += 1;
                if let Some(suppressed) = self.repeated.allow("sparkplug payload") {
                    warn!(topic, error = %e, suppressed, "sparkplug: a command that is not a Sparkplug B payload; ignored");
                }
                return;
            }
        };
        let mut forward = Vec::new();
        match device {
            None => {
                for m in &message.metrics {
                    // `Node Control/Rebirth` has no alias (Sparkplug 3.0): by name only.
                    let name = m.name.as_deref().or(match m.alias {
                        Some(ALIAS_REBOOT) => Some(REBOOT),
                        _ => None,
                    });
                    let yes = matches!(m.value, Some(srad_types::payload::metric::Value::BooleanValue(true)));
                    match (name, yes) {
                        (Some(REBIRTH), true) => {
                            sp.stats.rebirth_requests += 1;
                            info!(requests = sp.stats.rebirth_requests, "sparkplug: rebirth requested by a host (NCMD)");
                            sp.node.rebirth();
                        }
                        (Some(REBOOT), true) => {
                            let id = format!("ncmd-reboot-{}", Utc::now().timestamp_millis());
                            forward.push(InboundCommand {
                                name: SPARKPLUG_REBOOT.into(),
                                payload: serde_json::json!({ "id": id }).to_string().into_bytes(),
                            });
                        }
                        _ => {
                            sp.stats.commands_refused += 1;
                            if let Some(suppressed) = self.repeated.allow("sparkplug ncmd") {
                                warn!(metric = ?m.name, alias = ?m.alias, suppressed, "sparkplug: NCMD metric not understood (only Node Control/Rebirth and Node Control/Reboot = true); ignored");
                            }
                        }
                    }
                }
            }
            Some(device) => {
                // Each metric becomes a `write` through the command policy (allowlist,
                // limits, audit): by name, or by the alias of the device's DBIRTH.
                let defs = sp.node.catalog().device(&device);
                for m in &message.metrics {
                    let def = m.name.as_deref().and_then(|n| defs?.get(n)).or_else(|| m.alias.and_then(|a| defs?.by_alias(a)));
                    let tag =
                        def.map(|d| d.name.clone()).or_else(|| m.name.clone()).unwrap_or_else(|| format!("alias {}", m.alias.unwrap_or(0)));
                    let datatype = m.datatype.and_then(|d| DataType::try_from(d as i32).ok()).or(def.map(|d| d.datatype));
                    let value = m.value.as_ref().and_then(|v| decode_value(datatype, v));
                    sp.dcmds += 1;
                    let id = format!("dcmd-{}-{}", Utc::now().timestamp_millis(), sp.dcmds);
                    let body = serde_json::json!({ "id": id, "device": device, "tag": tag, "value": value });
                    forward.push(InboundCommand { name: SPARKPLUG_WRITE.into(), payload: body.to_string().into_bytes() });
                }
            }
        }
        for command in forward {
            self.forward(command);
        }
    }

    /// `spBv1.0/STATE/{primary_host_id}`: `{"online": bool, "timestamp": ms}` (Sparkplug
    /// 3.0). A STATE older than the last one taken is ignored (an equal one is taken: the
    /// broker hands the retained STATE again to every new connection). Offline while the
    /// node is born: it publishes its NDEATH, disconnects and connects again with the next
    /// `bdSeq` (`message-flow-edge-node-birth-publish-phid-offline`,
    /// `operational-behavior-edge-node-termination-host-offline`), then waits, publishing no
    /// births and no data (the outbox keeps everything). Online again: a new NBIRTH and
    /// DBIRTHs, then what was stored meanwhile as history, live data going on.
    fn host_state(&mut self, payload: &[u8], outbox: &Outbox) {
        let Some(sp) = &mut self.sparkplug else { return };
        let parsed = serde_json::from_slice::<serde_json::Value>(payload)
            .ok()
            .and_then(|v| Some((v.get("online")?.as_bool()?, v.get("timestamp").and_then(serde_json::Value::as_u64).unwrap_or(0))));
        let Some((online, ts)) = parsed else {
            if let Some(suppressed) = self.repeated.allow("sparkplug state") {
                warn!(payload = %String::from_utf8_lossy(&payload[..payload.len().min(200)]), suppressed, "sparkplug: primary host STATE not understood (expected {{\"online\":bool,\"timestamp\":ms}}); ignored");
            }
            return;
        };
        if ts < sp.host_ts {
            debug!(ts, last = sp.host_ts, "sparkplug: a stale STATE of the primary host; ignored");
            return;
        }
        sp.host_ts = ts;
        let was = sp.host_online.replace(online);
        if online {
            if was != Some(true) {
                info!(host = ?sp.node.ids().primary_host_id, "sparkplug: primary host online; births follow");
            }
            return;
        }
        sp.replay_on_birth = true;
        if was != Some(false) {
            info!(host = ?sp.node.ids().primary_host_id, pending_batches = outbox.pending_batches(), "sparkplug: primary host offline; storing, not publishing, until it is back");
        }
        if sp.node.is_born() && self.leaving.is_none() {
            let death = sp.node.death(sp.current, Utc::now());
            sp.node.session_ended();
            match self.transport.try_publish(death.topic, false, death.payload) {
                Ok(()) => self.tracker.queued(Carried::Status),
                Err(e) => warn!(error = %e, "could not queue the NDEATH"),
            }
            info!(
                bd_seq = sp.current,
                "sparkplug: NDEATH published; disconnecting, to connect again with the next bdSeq and wait for the primary host"
            );
            self.leaving = Some(match self.transport.try_disconnect() {
                Ok(()) => Leave::AfterDisconnect,
                Err(e) => {
                    warn!(error = %e, "could not queue the DISCONNECT; dropping the connection (the broker publishes the Will)");
                    Leave::Now
                }
            });
        }
    }

    /// The node left the broker for its primary host (see [`Session::host_state`]): the
    /// connection is dropped without counting an error, everything in flight is forgotten
    /// (the outbox resends it), and the next poll connects again with a new `bdSeq`.
    async fn rejoin(&mut self, live: &Live) {
        self.leaving = None;
        self.transport.close();
        self.transport.clear_pending();
        self.tracker.clear();
        self.connected = false;
        live.update(|v| {
            v.uplink.connected = false;
            v.uplink.since = Some(Utc::now());
            v.uplink.in_flight = 0;
        });
        self.next_sparkplug_session().await;
    }

    /// Sparkplug: the session is over; every CONNECT carries a new `bdSeq` in its NDEATH Will.
    async fn next_sparkplug_session(&mut self) {
        if let Some(sp) = &mut self.sparkplug {
            sp.node.session_ended();
            sp.advance().await;
            sp.arm_will(&mut self.transport);
        }
    }

    /// The connection failed or was lost: forget everything in flight (the outbox resends
    /// it) and count a failed connect if it never came up.
    fn lost(&mut self, error: &LinkError, live: &Live) {
        let reason = match error {
            LinkError::V4(e) => self.prepared.explain(self.broker(), e),
            LinkError::V5(e) => self.prepared.explain_v5(self.broker(), e),
        };
        if self.connected {
            warn!(%reason, "uplink connection lost");
        } else {
            self.failures += 1;
            self.first_live_from = None;
            // Warn on a new reason, and now and then on a repeated one; debug otherwise.
            let repeat = self.last_warning.as_ref().is_some_and(|(r, at)| *r == reason && at.elapsed() < REPEAT_WARNING);
            if repeat {
                debug!(%reason, failures = self.failures, "uplink connect failed");
            } else {
                warn!(%reason, failures = self.failures, "uplink connect failed");
                self.last_warning = Some((reason.clone(), Instant::now()));
            }
        }
        self.connected = false;
        // A node leaving for its primary host lost the connection first: it has left.
        self.leaving = None;
        // The outbox will resend all of it after reconnecting (see the module comment).
        self.transport.clear_pending();
        self.tracker.clear();
        live.update(|v| {
            v.uplink.connected = false;
            v.uplink.since = Some(Utc::now());
            v.uplink.last_error = Some(reason);
            v.uplink.connection_errors += 1;
            v.uplink.in_flight = 0;
        });
    }

    /// After `failover_after` failed connects in a row, switches to the other broker with
    /// a new event loop (see the module comment on why nothing is lost). Returns whether
    /// it switched.
    fn failed_over(&mut self, live: &Live) -> bool {
        if self.prepared.brokers.len() < 2 || self.connected || self.failures < self.failover_after {
            return false;
        }
        let from = self.broker().clone();
        self.current = (self.current + 1) % self.prepared.brokers.len();
        self.failures = 0;
        self.failovers += 1;
        let to = self.broker().clone();
        warn!(%from, %to, after = self.failover_after, failovers = self.failovers, "uplink: switching to the other broker");
        self.transport = new_transport(&self.prepared, &to, self.window);
        self.tracker.clear();
        self.last_warning = None;
        live.update(|v| v.uplink.broker = to.to_string());
        true
    }

    fn publish_status(&mut self, state: &str) {
        let body = serde_json::to_vec(&payload::status(state)).unwrap_or_default();
        match self.transport.try_publish(self.topics.status(), true, body) {
            Ok(()) => self.tracker.queued(Carried::Status),
            Err(e) => warn!(error = %e, "could not queue the status message"),
        }
    }

    /// Queues publishes from the outbox until the in-flight window is full: replies to
    /// commands first (an ERP is waiting for them), then events (few, and they matter
    /// most), then telemetry as the [`Schedule`] picks it.
    fn fill(&mut self, outbox: &Outbox) {
        let mut room = self.window.saturating_sub(self.tracker.len());
        if room == 0 {
            return;
        }
        for (seq, reply) in outbox.replies_from(self.cursor.next_reply, room) {
            self.cursor.next_reply = seq + 1;
            let Some(topic) = self.topics.reply(&reply.topic_leaf) else {
                // It could never be published; keeping it would block the outbox's drain.
                error!(seq, leaf = %reply.topic_leaf, "a stored reply has an unusable topic; deleted");
                if let Err(e) = outbox.ack_reply(seq) {
                    error!(error = %e, seq, "could not delete an unusable reply");
                }
                continue;
            };
            let Ok(body) = serde_json::to_vec(&reply.body) else { continue };
            if self.transport.try_publish(topic, false, body).is_err() {
                self.cursor.next_reply = seq;
                return;
            }
            self.tracker.queued(Carried::Reply(seq));
            room -= 1;
        }
        for (seq, event) in outbox.events_from(self.cursor.next_event, room) {
            let Ok(body) = serde_json::to_vec(&event.0) else { continue };
            if self.transport.try_publish(self.topics.events(), false, body).is_err() {
                return;
            }
            self.tracker.queued(Carried::Event(seq));
            self.cursor.next_event = seq + 1;
            room -= 1;
            // Sparkplug: a device lost gets its DDEATH, one back its DBIRTH, both derived
            // from the stored events (in order, replays included).
            if let Some(sp) = &mut self.sparkplug {
                match event.0.kind.as_str() {
                    "device_lost" => sp.node.device_lost(&event.0.asset, outbox.next_batch_seq()),
                    "device_connected" => sp.node.device_back(&event.0.asset),
                    _ => {}
                }
            }
        }
        if self.sparkplug.is_some() {
            self.fill_sparkplug(outbox, room);
            return;
        }
        let picked = self.schedule.pick(room, self.window, Instant::now(), |from, limit| outbox.telemetry_from(from, limit));
        let live_from = self.schedule.live_from();
        for (seq, batch) in picked {
            let topic = self.topics.telemetry(&batch.device);
            let body = TelemetryPayload {
                gateway: self.gateway.clone(),
                device: batch.device,
                batch_seq: seq,
                historical: seq < live_from,
                samples: batch.samples,
            };
            let Ok(body) = serde_json::to_vec(&body) else { continue };
            if self.transport.try_publish(topic, false, body).is_err() {
                return;
            }
            self.tracker.queued(Carried::Telemetry(seq));
            self.schedule.published(seq);
        }
    }

    /// Sparkplug: the NBIRTH when due (a new session, a rebirth request, the primary host
    /// back), the DBIRTHs still due, then telemetry as the [`Schedule`] picks it, each batch
    /// as one DDATA (preceded by a DBIRTH when its device needs one), `is_historical` when
    /// stored before this session's birth; then the DDEATHs of devices lost once their
    /// last readings are queued. Nothing while the primary host is offline. A publish that
    /// cannot be queued would leave a gap in `seq`: the node is born again instead.
    fn fill_sparkplug(&mut self, outbox: &Outbox, mut room: usize) {
        let (broker, failover) = (self.broker().to_string(), self.current != 0);
        let Some(sp) = &mut self.sparkplug else { return };
        let now = Utc::now();
        if !sp.node.is_born() {
            if !sp.may_birth() || room == 0 {
                return;
            }
            let info = NodeInfo {
                version: payload::VERSION.to_string(),
                store_depth: outbox.pending_batches(),
                reboot_allowed: sp.reboot_allowed,
                broker,
                failover,
            };
            let birth = sp.node.birth(sp.current, &info, now);
            if let Err(e) = self.transport.try_publish(birth.topic, false, birth.payload) {
                warn!(error = %e, "could not queue the NBIRTH");
                sp.node.rebirth();
                return;
            }
            self.tracker.queued(Carried::Status);
            sp.stats.node_births += 1;
            sp.node_data_at = Some(Instant::now());
            room -= 1;
            if std::mem::take(&mut sp.replay_on_birth) {
                self.schedule.restart(outbox.next_batch_seq(), Instant::now());
            }
        }
        for device in sp.node.unborn_devices() {
            if room == 0 {
                return;
            }
            let birth = sp.node.device_birth(&device, now);
            if self.transport.try_publish(birth.topic, false, birth.payload).is_err() {
                sp.node.rebirth();
                return;
            }
            self.tracker.queued(Carried::Status);
            sp.stats.device_births += 1;
            room -= 1;
        }
        // The store depth, when it changed, at most every NODE_DATA_EVERY.
        if room > 0 && sp.node_data_at.is_none_or(|at| at.elapsed() >= NODE_DATA_EVERY) {
            if let Some(data) = sp.node.node_data(outbox.pending_batches(), now) {
                if self.transport.try_publish(data.topic, false, data.payload).is_err() {
                    sp.node.rebirth();
                    return;
                }
                self.tracker.queued(Carried::Status);
                sp.node_data_at = Some(Instant::now());
                room -= 1;
            }
        }
        // A batch may need a DBIRTH first (a metric learned from its values): keep one
        // place in the window for it.
        let picked =
            self.schedule.pick(room.saturating_sub(1), self.window, Instant::now(), |from, limit| outbox.telemetry_from(from, limit));
        let live_from = self.schedule.live_from();
        for (seq, batch) in picked {
            let (birth, data) = sp.node.data(&batch.device, &batch.samples, seq < live_from, now);
            if let Some(birth) = birth {
                if self.transport.try_publish(birth.topic, false, birth.payload).is_err() {
                    sp.node.rebirth();
                    return;
                }
                self.tracker.queued(Carried::Status);
                sp.stats.device_births += 1;
            }
            if self.transport.try_publish(data.topic, false, data.payload).is_err() {
                sp.node.rebirth();
                return;
            }
            self.tracker.queued(Carried::Telemetry(seq));
            self.schedule.published(seq);
        }
        for death in sp.node.deaths_due(self.schedule.next_live(), now) {
            if self.transport.try_publish(death.topic, false, death.payload).is_err() {
                sp.node.rebirth();
                return;
            }
            self.tracker.queued(Carried::Status);
            sp.stats.device_deaths += 1;
        }
    }

    /// Publishes `offline` (retained) and waits, within the deadline, for its PUBACK so
    /// the broker has it before the connection closes; the Will covers the other cases.
    /// Sparkplug: the NDEATH of this session instead (a normal DISCONNECT drops the Will).
    async fn go_offline(&mut self, deadline: Option<Instant>) {
        if !self.connected {
            return;
        }
        let until = deadline.unwrap_or_else(Instant::now).max(Instant::now() + Duration::from_millis(500));
        match &self.sparkplug {
            None => self.publish_status("offline"),
            Some(sp) => {
                let death = sp.node.death(sp.current, Utc::now());
                match self.transport.try_publish(death.topic, false, death.payload) {
                    Ok(()) => self.tracker.queued(Carried::Status),
                    Err(e) => warn!(error = %e, "could not queue the NDEATH"),
                }
            }
        }
        let _ = self.transport.try_disconnect();
        loop {
            match tokio::time::timeout_at(until, self.transport.poll()).await {
                Ok(Ok(Wire::SentDisconnect)) | Ok(Err(_)) | Err(_) => break,
                Ok(Ok(_)) => {}
            }
        }
    }
}
