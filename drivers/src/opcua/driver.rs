//! The task of one OPC-UA device: connect, build every subscription and polled group,
//! report what arrives, carry out writes, and rebuild everything when the session is lost.
//!
//! **Recovery.** A lost session (server restart, network cut, keep-alive failures) ends
//! [`run_session`]: every tag is reported bad at once ("connection lost: …"), so that no
//! value from before the loss stands as good, and a new session is built after a
//! jittered, growing wait ([`super::reconnect`]) — new subscriptions, monitored items and
//! browse paths resolved again. Items the server refuses (`BadNodeIdUnknown` after a PLC
//! download, a browse path that does not resolve yet) are reported bad and retried
//! every `reconnect_min`–`reconnect_max` until the node is back. A subscription the
//! server drops is created again in the same session, its tags reported bad meanwhile:
//! whether the server says so (status change `BadTimeout`, `GoodSubscriptionTransferred`)
//! or says nothing (no data and no keep-alive for two keep-alive periods and a second;
//! [`subscription::Heartbeat`]).
//! Notifications of an older session are discarded, never reported. Notifications that
//! find the driver's queue full ([`subscription::EVENT_QUEUE`]) are dropped and counted.

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use opcua::client::{Client, Session};
use opcua::types::{AttributeId, DataValue, NodeId, NumericRange, StatusCode, WriteValue};
use tokio::sync::mpsc;
use tokio::time::{sleep_until, timeout, Instant};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::config::SecurityPolicy;
use super::device::{Connection, OpcuaDevice};
use super::error::{OpcuaError, ServiceError};
use super::reconnect::Reconnect;
use super::session::{build_client, connect, endpoint_gate, identity, Connected};
use super::subscription::{self, Event, Group, Heartbeat};
use super::value::{bad_sample, to_sample, to_variant};
use crate::heartbeat::Heartbeat as LoopHeartbeat;
use crate::log_limit::LogLimit;
use crate::modbus::write::{WriteError, WriteInbox, WriteRequest};
use crate::sample::{DeviceReport, DriverStats, ReportKind, Sample, Value};

/// Most samples sent to the agent in one report.
const MAX_BATCH: usize = 5_000;

/// Runs device `device` (built from the validated config, [`OpcuaDevice::build`]) until
/// `cancel` fires or the agent stops listening. `pki` is the agent's OPC-UA PKI directory
/// ([`super::session::pki_dir`]).
pub async fn run_device(
    device: OpcuaDevice,
    pki: PathBuf,
    reports: mpsc::Sender<DeviceReport>,
    writes: WriteInbox,
    cancel: CancellationToken,
) {
    run_device_beating(device, pki, reports, writes, cancel, LoopHeartbeat::new()).await;
}

/// [`run_device`], beating `heartbeat` on every turn of its loops and promising its
/// planned waits (a connect, the reconnect delay), for the agent's watchdog.
pub async fn run_device_beating(
    device: OpcuaDevice,
    pki: PathBuf,
    reports: mpsc::Sender<DeviceReport>,
    writes: WriteInbox,
    cancel: CancellationToken,
    heartbeat: LoopHeartbeat,
) {
    let mut out = Reporter {
        device: device.name.clone(),
        reports,
        stats: DriverStats::default(),
        sent: None,
        log_limit: LogLimit::default(),
        heartbeat,
    };
    let conn = &device.connection;
    if conn.auto_trust_server_certificate {
        warn!(device = %device.name, "auto_trust_server_certificate is on: the server's certificate is trusted without an operator");
    }
    out.stats.warnings = standing_warnings(conn, &pki);
    let (conn2, pki2, t) = (conn.clone(), pki.clone(), device.timeout);
    // Creating the client creates the agent's key pair on first run: seconds of CPU.
    out.heartbeat.alive_until(Instant::now() + Duration::from_secs(60));
    let mut client = match tokio::task::spawn_blocking(move || build_client(&conn2, &pki2, t)).await {
        Ok(Ok(c)) => c,
        Ok(Err(reason)) => {
            out.send(ReportKind::Disconnected(OpcuaError::Client { pki: pki.clone(), reason }.into())).await;
            return;
        }
        Err(e) => {
            out.send(ReportKind::Disconnected(OpcuaError::ClientTask(e.to_string()).into())).await;
            return;
        }
    };
    let inbox = writes.receiver();
    let mut writes = inbox.lock().await;
    let mut delay = Reconnect::new(device.reconnect_min, device.reconnect_max);
    let mut generation = 0u64;
    let mut last_error: Option<String> = None;
    // Whether the current loss was reported (every tag bad, then `Disconnected`, which the
    // agent turns into one `device_lost` event): once per loss, as for Modbus devices,
    // and again only for a refusal an operator must act on (certificate, login).
    let mut loss_reported = false;
    let mut had_session = false;
    // A certificate trusted meanwhile (the status page, in this process) ends the back-off.
    let mut trusts = super::pki::changes(&pki);
    loop {
        generation += 1;
        trusts.borrow_and_update();
        // The endpoint's gate may first wait for another device's attempt on the same server.
        out.heartbeat.alive_until(Instant::now() + device.connect_timeout * 2);
        let attempt = attempt(&mut client, &device, &mut out, &cancel).await;
        match attempt {
            None => return,
            Some(Err(error)) => {
                out.stats.transport_errors += 1;
                out.stats.warnings = standing_warnings(conn, &pki);
                // A bad tag's reason is the operator's sentence; the device's loss keeps the error.
                let message = error.to_string();
                let changed = last_error.as_deref() != Some(message.as_str());
                if changed {
                    warn!(device = %device.name, endpoint = %conn.endpoint, error = %message, "OPC-UA connection failed");
                    last_error = Some(message.clone());
                }
                if !loss_reported || (changed && error.needs_operator()) {
                    let now = Utc::now();
                    let bad: Vec<Sample> = device.tags.iter().map(|t| bad_sample(t, &message, now)).collect();
                    if !out.send(ReportKind::Samples(bad)).await || !out.send(ReportKind::Disconnected(error.into())).await {
                        return;
                    }
                    loss_reported = true;
                }
            }
            Some(Ok(connected)) => {
                let rebuild = had_session;
                if rebuild {
                    out.stats.reconnects += 1;
                }
                had_session = true;
                // A certificate trusted meanwhile is no longer a warning.
                out.stats.warnings = standing_warnings(conn, &pki);
                info!(device = %device.name, endpoint = %conn.endpoint, "OPC-UA session up");
                if !out.send(ReportKind::Connected).await {
                    return;
                }
                let started = Instant::now();
                let end = run_session(&device, connected, (generation, rebuild), &mut out, &mut writes, &cancel).await;
                match end {
                    SessionEnd::Stopped => return,
                    SessionEnd::Lost(error) => {
                        let reason = error.to_string();
                        if let Some(suppressed) = out.log_limit.allow("session lost") {
                            warn!(device = %device.name, endpoint = %conn.endpoint, reason = %reason, suppressed, "OPC-UA session lost; rebuilding");
                        }
                        let now = Utc::now();
                        let bad: Vec<Sample> = device.tags.iter().map(|t| bad_sample(t, &reason, now)).collect();
                        if !out.send(ReportKind::Samples(bad)).await || !out.send(ReportKind::Disconnected(error.into())).await {
                            return;
                        }
                        loss_reported = true;
                        last_error = Some(reason);
                    }
                }
                // A session that stayed up a while: the next failure starts small again.
                if started.elapsed() >= device.reconnect_max.min(Duration::from_secs(10)) {
                    delay.reset();
                }
            }
        }
        out.flush_stats().await;
        let until = Instant::now() + delay.next_delay();
        out.heartbeat.alive_until(until);
        if !wait_refusing_writes(until, &mut writes, &mut trusts, &cancel).await {
            return;
        }
    }
}

/// What the status page must say about the device's security setup.
fn standing_warnings(conn: &Connection, pki: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    if conn.auto_trust_server_certificate {
        out.push("auto_trust_server_certificate is on: any server certificate is trusted without an operator".to_string());
    }
    if conn.security_policy != SecurityPolicy::None {
        for c in super::pki::rejected(pki) {
            let short: String = c.thumbprint.chars().take(12).collect();
            out.push(format!(
                "rejected server certificate {} [{}]: trust it with `edge-agent opcua trust {short}`",
                c.subject, c.thumbprint
            ));
        }
    }
    out
}

/// One session attempt under the endpoint's gate. `None`: cancelled.
async fn attempt(
    client: &mut Client,
    device: &OpcuaDevice,
    out: &mut Reporter,
    cancel: &CancellationToken,
) -> Option<Result<Connected, OpcuaError>> {
    let conn = &device.connection;
    let gate = endpoint_gate(&conn.endpoint);
    let _held = tokio::select! {
        () = cancel.cancelled() => return None,
        g = gate.lock() => g,
    };
    out.stats.session_attempts += 1;
    let token = match identity(&conn.identity) {
        Ok(t) => t,
        Err(e) => return Some(Err(OpcuaError::Identity(e))),
    };
    let deadline = Instant::now() + device.connect_timeout;
    tokio::select! {
        () = cancel.cancelled() => None,
        r = connect(client, conn, token, deadline) => Some(r.map_err(|e| {
            if e.is_untrusted_certificate() && !conn.auto_trust_server_certificate {
                OpcuaError::Untrusted(e)
            } else {
                OpcuaError::Connect(e)
            }
        })),
    }
}

/// Waits until `until`, or until a certificate is trusted (`trusts` changes: the next
/// attempt may now succeed), answering writes "not connected" meanwhile. `false`: cancelled.
async fn wait_refusing_writes(
    until: Instant,
    writes: &mut mpsc::Receiver<WriteRequest>,
    trusts: &mut tokio::sync::watch::Receiver<u64>,
    cancel: &CancellationToken,
) -> bool {
    loop {
        tokio::select! {
            () = cancel.cancelled() => return false,
            () = sleep_until(until) => return true,
            Ok(()) = trusts.changed() => return true,
            Some(w) = writes.recv() => { let _ = w.reply.send(Err(WriteError::NotConnected)); }
        }
    }
}

enum SessionEnd {
    Stopped,
    Lost(OpcuaError),
}

/// What the driver knows about one tag in the current session.
#[derive(Debug, Clone, Default)]
struct ItemState {
    node: Option<NodeId>,
    /// (subscription id, monitored item id) while the server monitors it.
    monitored: Option<(u32, u32)>,
}

struct SessionState<'a> {
    device: &'a OpcuaDevice,
    session: Arc<Session>,
    groups: Vec<Group>,
    /// Subscription id of each group (`None` for polled groups or while missing).
    subs: Vec<Option<u32>>,
    /// Each subscription's heartbeat and the silence that means the server dropped it.
    watch: Vec<Option<(Heartbeat, Duration)>>,
    /// Subscriptions lost: deleted (on the server, if it still knows them, and in the
    /// library's state) before their groups are subscribed again.
    forget: Vec<u32>,
    /// Whether each group's subscription was created once in this session.
    created: Vec<bool>,
    /// Whether this session replaces a lost one (its subscriptions are rebuilt ones).
    rebuild: bool,
    items: Vec<ItemState>,
    /// Tags to resolve and create again (refused, lost, unknown node).
    retry: BTreeSet<usize>,
    /// Tags reported bad by the retries, with the reason: reported (and counted) again
    /// only when the reason changes, not on every retry.
    reported_bad: HashMap<usize, String>,
    events: subscription::Events,
    generation: u64,
    /// Subscriptions lost or silent again and again within the session: one line a minute.
    log_limit: LogLimit,
}

async fn run_session(
    device: &OpcuaDevice,
    connected: Connected,
    (generation, rebuild): (u64, bool),
    out: &mut Reporter,
    writes: &mut mpsc::Receiver<WriteRequest>,
    cancel: &CancellationToken,
) -> SessionEnd {
    let (tx, mut rx) = subscription::events();
    let mut connected = connected;
    let session = connected.session.clone();
    let session = &session;
    let lost = &mut connected.lost;
    let mut st = SessionState {
        device,
        session: session.clone(),
        groups: device.groups.clone(),
        subs: Vec::new(),
        watch: Vec::new(),
        forget: Vec::new(),
        created: Vec::new(),
        rebuild,
        items: vec![ItemState::default(); device.tags.len()],
        retry: BTreeSet::new(),
        reported_bad: HashMap::new(),
        events: tx,
        generation,
        log_limit: LogLimit::default(),
    };
    st.subs = vec![None; st.groups.len()];
    st.watch = vec![None; st.groups.len()];
    st.created = vec![false; st.groups.len()];
    let deadline = Instant::now() + device.connect_timeout;
    out.heartbeat.alive_until(deadline);
    let setup = tokio::select! {
        () = cancel.cancelled() => return stop(session).await,
        r = timeout_at_deadline(deadline, st.build(out)) => r,
        reason = &mut *lost => return SessionEnd::Lost(reason.map_or(OpcuaError::Ended, OpcuaError::Lost)),
    };
    if let Err(e) = setup {
        return SessionEnd::Lost(OpcuaError::Setup(e));
    }
    let retry_every = device.reconnect_min.max(Duration::from_millis(200)).min(Duration::from_secs(5));
    let mut next_retry = Instant::now() + retry_every;
    let mut poll_due: Vec<Instant> = st.groups.iter().map(|_| Instant::now()).collect();
    let mut next_stats = Instant::now() + Duration::from_secs(1);
    let dropped_before = out.stats.notifications_dropped;
    loop {
        out.heartbeat.beat();
        let next_poll = st.groups.iter().zip(&poll_due).filter(|(g, _)| g.poll).map(|(_, d)| *d).min();
        let wake =
            [Some(next_stats), next_poll, (!st.retry.is_empty()).then_some(next_retry)].into_iter().flatten().min().unwrap_or(next_stats);
        tokio::select! {
            biased;
            () = cancel.cancelled() => return stop(session).await,
            reason = &mut *lost => {
                // What arrived before the loss is reported before the loss.
                let mut batch = Vec::new();
                while let Ok(e) = rx.data.try_recv() {
                    st.handle(e, &mut batch, out);
                }
                if !batch.is_empty() {
                    out.send(ReportKind::Samples(batch)).await;
                }
                return SessionEnd::Lost(reason.map_or(OpcuaError::Ended, OpcuaError::Lost));
            }
            Some(status) = rx.status.recv() => {
                let mut batch = Vec::new();
                st.handle(status, &mut batch, out);
                if !batch.is_empty() && !out.send(ReportKind::Samples(batch)).await {
                    return stop(session).await;
                }
            }
            Some(first) = rx.data.recv() => {
                let mut batch = Vec::new();
                st.handle(first, &mut batch, out);
                while batch.len() < MAX_BATCH {
                    match rx.data.try_recv() {
                        Ok(e) => st.handle(e, &mut batch, out),
                        Err(_) => break,
                    }
                }
                if !batch.is_empty() && !out.send(ReportKind::Samples(batch)).await {
                    return stop(session).await;
                }
            }
            Some(w) = writes.recv() => {
                let result = st.write(&w, out).await;
                if let Err(e) = &result {
                    warn!(device = %device.name, tag = %w.tag, error = %e, "OPC-UA write failed");
                }
                let _ = w.reply.send(result);
            }
            () = sleep_until(wake) => {
                let now = Instant::now();
                if now >= next_stats {
                    // The session's queue counts from zero; the device's counter goes on.
                    let dropped = dropped_before + st.events.dropped.load(std::sync::atomic::Ordering::Relaxed);
                    if dropped > out.stats.notifications_dropped {
                        warn!(device = %device.name, dropped = dropped - out.stats.notifications_dropped, "OPC-UA notifications dropped: the agent did not take them in time");
                        out.stats.notifications_dropped = dropped;
                    }
                    out.flush_stats().await;
                    next_stats = now + Duration::from_secs(1);
                    let mut batch = Vec::new();
                    st.check_heartbeats(&mut batch);
                    if !batch.is_empty() && !out.send(ReportKind::Samples(batch)).await {
                        return stop(session).await;
                    }
                }
                let due: Vec<usize> = st.groups.iter().zip(&poll_due).enumerate().filter(|(_, (g, d))| g.poll && **d <= now).map(|(i, _)| i).collect();
                for g in due {
                    poll_due[g] = next_due(poll_due[g], st.groups[g].interval, now);
                    if let Err(e) = st.poll(g, out).await {
                        return SessionEnd::Lost(OpcuaError::PolledRead(e));
                    }
                }
                if !st.retry.is_empty() && now >= next_retry {
                    next_retry = now + retry_every;
                    if let Err(e) = timeout_at_deadline(now + device.connect_timeout, st.rebuild_items(out)).await {
                        return SessionEnd::Lost(OpcuaError::Recreate(e));
                    }
                }
            }
        }
    }
}

async fn timeout_at_deadline<T>(
    deadline: Instant,
    f: impl std::future::Future<Output = Result<T, ServiceError>>,
) -> Result<T, ServiceError> {
    match tokio::time::timeout_at(deadline, f).await {
        Ok(r) => r,
        Err(_) => Err(ServiceError::Deadline),
    }
}

/// Closes the session politely (deleting its subscriptions), within a second.
async fn stop(session: &Session) -> SessionEnd {
    let _ = timeout(Duration::from_secs(1), session.disconnect()).await;
    SessionEnd::Stopped
}

/// One interval after the last due time, skipping missed polls (no drift, no burst).
fn next_due(due: Instant, interval: Duration, now: Instant) -> Instant {
    let mut next = due + interval;
    while next <= now {
        next += interval;
    }
    next
}

impl SessionState<'_> {
    /// Resolves every tag and creates every subscription and item of the session.
    async fn build(&mut self, out: &mut Reporter) -> Result<(), ServiceError> {
        self.retry.extend(0..self.device.tags.len());
        self.rebuild_items(out).await
    }

    async fn create_group_subscription(&mut self, g: usize, out: &mut Reporter) -> Result<(), ServiceError> {
        let created = subscription::create_subscription(
            &self.session,
            g,
            &self.groups[g],
            self.device.connection.session_timeout,
            &self.events,
            self.generation,
        )
        .await
        .map_err(|status| ServiceError::Refused { service: "CreateSubscription", status })?;
        let id = created.id;
        self.watch[g] = Some((created.heartbeat, created.silence_limit));
        // Rebuilt: after a reconnect, or again in this session after the server dropped it.
        if self.rebuild || self.created[g] {
            out.stats.subscriptions_rebuilt += 1;
        }
        self.created[g] = true;
        self.subs[g] = Some(id);
        Ok(())
    }

    /// Resolves and (re)creates the items waiting in `retry`; those still refused stay.
    async fn rebuild_items(&mut self, out: &mut Reporter) -> Result<(), ServiceError> {
        if !self.forget.is_empty() {
            // Mostly answered BadSubscriptionIdInvalid (the server no longer has them); what
            // matters is that the library stops tracking them.
            let forget = std::mem::take(&mut self.forget);
            let _ = timeout(self.device.timeout, self.session.delete_subscriptions(&forget)).await;
        }
        let pending: Vec<usize> = std::mem::take(&mut self.retry).into_iter().collect();
        let mut bad = Vec::new();
        for (i, node) in subscription::resolve(&self.session, self.device, &pending).await {
            match node {
                Ok(n) => self.items[i].node = Some(n),
                Err(reason) => {
                    self.items[i].node = None;
                    self.retry.insert(i);
                    self.report_bad(i, &reason, &mut bad, out);
                }
            }
        }
        for g in 0..self.groups.len() {
            if !self.groups[g].poll && self.subs[g].is_none() {
                if let Err(e) = self.create_group_subscription(g, out).await {
                    // Tried again with the group's items on the next retry.
                    if let Some(suppressed) = out.log_limit.allow("subscription not created") {
                        warn!(device = %self.device.name, error = %e, suppressed, "OPC-UA subscription not created");
                    }
                    let reason = e.to_string();
                    for i in self.groups[g].tags.clone() {
                        self.retry.insert(i);
                        self.report_bad(i, &reason, &mut bad, out);
                    }
                    continue;
                }
            }
            let Some(sub) = self.subs[g] else { continue };
            let mut to_create = Vec::new();
            for &i in &self.groups[g].tags {
                if !pending.contains(&i) || self.retry.contains(&i) {
                    continue;
                }
                if let Some((s, item)) = self.items[i].monitored.take() {
                    // A lost item is deleted before it is created again; a failure here
                    // only means the server already forgot it.
                    let _ = self.session.delete_monitored_items(s, &[item]).await;
                }
                if let Some(n) = &self.items[i].node {
                    to_create.push((i, n.clone()));
                }
            }
            let results = subscription::create_items(&self.session, sub, self.device, &to_create)
                .await
                .map_err(|status| ServiceError::Refused { service: "CreateMonitoredItems", status })?;
            for (i, status, id) in results {
                if status.is_good() {
                    // (reported_bad is cleared by the item's first good value: some servers
                    // accept an item on a missing node and report the status after.)
                    self.items[i].monitored = Some((sub, id));
                } else {
                    self.retry.insert(i);
                    self.report_bad(i, &status.to_string(), &mut bad, out);
                }
            }
        }
        if !bad.is_empty() {
            out.send(ReportKind::Samples(bad)).await;
        }
        Ok(())
    }

    /// Reports tag `i` bad for `reason` (and counts it), unless that was already said.
    fn report_bad(&mut self, i: usize, reason: &str, bad: &mut Vec<Sample>, out: &mut Reporter) {
        if self.reported_bad.get(&i).map(String::as_str) != Some(reason) {
            out.stats.bad_items += 1;
            bad.push(bad_sample(&self.device.tags[i], reason, Utc::now()));
            self.reported_bad.insert(i, reason.to_string());
        }
    }

    /// One event from the callbacks, into `batch`.
    fn handle(&mut self, (generation, event): (u64, Event), batch: &mut Vec<Sample>, out: &mut Reporter) {
        if generation != self.generation {
            return;
        }
        match event {
            Event::Data { handle, value } => {
                let Some(i) = subscription::index_of(handle).filter(|i| *i < self.device.tags.len()) else { return };
                out.stats.notifications += 1;
                let status = value.status();
                if is_node_gone(status) {
                    // Re-created on the next retry. Some servers accept an item on a missing
                    // node and report its status at once: say it once, not every retry.
                    self.retry.insert(i);
                    let reason = status.to_string();
                    if self.reported_bad.get(&i) == Some(&reason) {
                        return;
                    }
                    out.stats.bad_items += 1;
                    self.reported_bad.insert(i, reason);
                } else {
                    self.reported_bad.remove(&i);
                }
                batch.push(to_sample(&self.device.tags[i], &value, Utc::now()));
            }
            Event::Status { group, status, from } => {
                // Every status change the server sends (BadTimeout, GoodSubscriptionTransferred)
                // means the subscription is no longer this session's.
                let current = self.watch.get(group).and_then(Option::as_ref).is_some_and(|(h, _)| h.same_as(&from));
                if current && self.subs[group].is_some() {
                    if let Some(suppressed) = self.log_limit.allow("subscription lost") {
                        warn!(device = %self.device.name, %status, suppressed, "OPC-UA subscription lost; creating it again");
                    }
                    self.subscription_lost(group, &format!("subscription lost: the server ended it ({status})"), batch);
                }
            }
        }
    }

    /// Groups whose subscription has been silent too long: the server dropped it without a
    /// word. Their tags are reported bad into `batch` and the subscriptions made again.
    fn check_heartbeats(&mut self, batch: &mut Vec<Sample>) {
        for g in 0..self.groups.len() {
            let Some((heartbeat, limit)) = &self.watch[g] else { continue };
            let silence = heartbeat.silence();
            if self.subs[g].is_some() && silence > *limit {
                if let Some(suppressed) = self.log_limit.allow("subscription silent") {
                    warn!(device = %self.device.name, silence = ?silence, suppressed, "OPC-UA subscription silent (no data, no keep-alive): the server dropped it; creating it again");
                }
                let reason = format!("subscription lost: no data and no keep-alive from the server for {:.1} s", silence.as_secs_f64());
                self.subscription_lost(g, &reason, batch);
            }
        }
    }

    /// Group `g`'s subscription is gone: its tags are reported bad (no value from before
    /// stands as good) and wait in `retry` for a new subscription.
    fn subscription_lost(&mut self, g: usize, reason: &str, batch: &mut Vec<Sample>) {
        if let Some(id) = self.subs[g].take() {
            self.forget.push(id);
        }
        self.watch[g] = None;
        let now = Utc::now();
        for &i in &self.groups[g].tags {
            self.items[i].monitored = None;
            self.retry.insert(i);
            // A tag that was bad for its own reason is reported again if that persists.
            self.reported_bad.remove(&i);
            batch.push(bad_sample(&self.device.tags[i], reason, now));
        }
    }
}

/// Whether a status says the node is gone (deleted, renumbered by a PLC download).
fn is_node_gone(status: StatusCode) -> bool {
    matches!(status, StatusCode::BadNodeIdUnknown | StatusCode::BadNodeIdInvalid | StatusCode::BadAttributeIdInvalid)
}

impl SessionState<'_> {
    /// Reads polled group `g` once.
    async fn poll(&mut self, g: usize, out: &mut Reporter) -> Result<(), ServiceError> {
        let items: Vec<(usize, NodeId)> = self.groups[g].tags.iter().filter_map(|&i| self.items[i].node.clone().map(|n| (i, n))).collect();
        if items.is_empty() {
            return Ok(());
        }
        out.stats.requests += 1;
        let started = Instant::now();
        let values = match timeout(self.device.timeout, subscription::read(&self.session, &items)).await {
            Err(_) => {
                out.stats.timeouts += 1;
                return Err(ServiceError::ReadTimeout(self.device.timeout));
            }
            Ok(Err(status)) => {
                out.stats.exceptions += 1;
                return Err(ServiceError::Refused { service: "Read", status });
            }
            Ok(Ok(v)) => v,
        };
        out.stats.last_latency_ms = Some(started.elapsed().as_secs_f64() * 1000.0);
        let now = Utc::now();
        let mut batch = Vec::with_capacity(values.len());
        for (i, dv) in values {
            let status = dv.status();
            if is_node_gone(status) {
                self.retry.insert(i);
                let reason = status.to_string();
                if self.reported_bad.get(&i) == Some(&reason) {
                    continue;
                }
                out.stats.bad_items += 1;
                self.reported_bad.insert(i, reason);
            } else {
                self.reported_bad.remove(&i);
            }
            batch.push(to_sample(&self.device.tags[i], &dv, now));
        }
        out.send(ReportKind::Samples(batch)).await;
        Ok(())
    }

    /// Writes one tag: read the node's value (for its type), write, read back, compare.
    async fn write(&mut self, w: &WriteRequest, out: &mut Reporter) -> Result<(), WriteError> {
        let Some(i) = self.device.tags.iter().position(|t| t.name == w.tag) else {
            return Err(WriteError::UnknownTag(w.tag.clone()));
        };
        let tag = &self.device.tags[i];
        let Some(node) = self.items[i].node.clone() else {
            return Err(WriteError::NotSent(format!("the node of tag {:?} is not resolved on the server", w.tag)));
        };
        let t = self.device.timeout;
        let read_one = |session: Arc<Session>, node: NodeId| async move {
            match timeout(t, subscription::read(&session, &[(0, node)])).await {
                Err(_) => Err(WriteError::Timeout(t)),
                Ok(Err(s)) => Err(WriteError::Transport(format!("Read failed: {s}"))),
                Ok(Ok(mut v)) => v.pop().map(|(_, dv)| dv).ok_or_else(|| WriteError::Transport("Read returned no value".into())),
            }
        };
        out.stats.requests += 1;
        let current = read_one(self.session.clone(), node.clone()).await?;
        let Some(current_value) = current.value.as_ref() else {
            return Err(WriteError::NotSent(format!("the node has no value to take its type from ({})", current.status())));
        };
        let variant = to_variant(tag, &w.value, current_value).map_err(WriteError::NotSent)?;
        let request = WriteValue {
            node_id: node.clone(),
            attribute_id: AttributeId::Value as u32,
            index_range: NumericRange::None,
            value: DataValue::value_only(variant.clone()),
        };
        out.stats.requests += 1;
        let statuses = match timeout(t, self.session.write(&[request])).await {
            Err(_) => {
                out.stats.timeouts += 1;
                return Err(WriteError::Timeout(t));
            }
            Ok(Err(e)) => return Err(WriteError::Transport(format!("Write failed: {e}"))),
            Ok(Ok(s)) => s,
        };
        match statuses.first() {
            Some(s) if s.is_good() => {}
            Some(s) => {
                out.stats.exceptions += 1;
                return Err(WriteError::Refused(s.to_string()));
            }
            None => return Err(WriteError::Transport("Write returned no status".into())),
        }
        out.stats.requests += 1;
        let back = read_one(self.session.clone(), node).await?;
        if back.value.as_ref() == Some(&variant) {
            Ok(())
        } else {
            let got: Option<Value> = to_sample(tag, &back, Utc::now()).value;
            Err(WriteError::NotConfirmed(format!("wrote {:?} but read back {:?}", w.value, got)))
        }
    }
}

/// Sends reports to the agent and keeps the device's counters.
struct Reporter {
    device: String,
    reports: mpsc::Sender<DeviceReport>,
    stats: DriverStats,
    /// The counters last sent (sent again only when they changed).
    sent: Option<DriverStats>,
    /// Warnings that repeat while a server misbehaves (a session lost again and again, a
    /// subscription refused on every retry): one line a minute per kind, with the count
    /// held back. Kept across sessions.
    log_limit: LogLimit,
    /// Beaten by the session loop, for the agent's watchdog.
    heartbeat: LoopHeartbeat,
}

impl Reporter {
    /// `false` when the agent stopped listening.
    async fn send(&mut self, kind: ReportKind) -> bool {
        self.reports.send(DeviceReport { device: self.device.clone(), kind }).await.is_ok()
    }

    async fn flush_stats(&mut self) {
        if self.sent.as_ref() != Some(&self.stats) {
            self.sent = Some(self.stats.clone());
            let stats = self.stats.clone();
            self.send(ReportKind::Stats(stats)).await;
        }
    }
}
