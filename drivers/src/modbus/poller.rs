//! The task that owns one Modbus connection (a TCP device, a serial bus, or a
//! serial-to-Ethernet converter) and every device reached over it: connect, poll each
//! device's poll groups on their own intervals, decode, report, write, and rebuild the
//! connection after any transport failure.
//!
//! Two kinds of failure are kept apart, as tokio-modbus does:
//! - a **device exception** (illegal address, device busy…) marks the tags of that one
//!   request bad with the code named; the connection is fine and stays up. An
//!   illegal-address (or illegal-value) answer to a request merged over several tags
//!   splits it in two, for good (see [`super::plan::split`]);
//! - a **transport failure** (timeout, reset, garbled frame) marks the tags of the poll
//!   bad and drops the connection, because a late reply would otherwise be taken for the
//!   answer to the next request (RTU frames carry no transaction id at all). The next
//!   request opens a new one.
//!
//! **One dead device never stalls the others.** Devices on one connection are polled in
//! turn, earliest due first. A device that fails `backoff_after_failures` polls in a row
//! is backed off (see [`super::breaker`]): it is then only probed, one request at a
//! growing jittered interval, so the others keep their rate.
//!
//! **No drift.** Each poll group is due at fixed multiples of its interval from its
//! start; a late poll does not push the next ones back, and polls missed while the
//! device was unreachable are skipped, not caught up in a burst.
//!
//! Writes (see [`super::write`]) arrive on each device's write queue and are executed
//! between two polls, on the same connection; the device's poll groups are polled at once
//! after a write. While there is no connection, or the device is backed off, writes are
//! answered `NotConnected` at once.

use std::future::Future;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use chrono::Utc;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::{sleep_until, timeout, Instant};
use tokio_modbus::client::{Client, Context};
use tokio_modbus::slave::SlaveContext;
use tokio_modbus::{ExceptionCode, Request, Response, Slave};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::backoff::Backoff;
use crate::heartbeat::Heartbeat;
use crate::log_limit::LogLimit;
use crate::modbus::breaker::{Breaker, Change};
use crate::modbus::deadband::Deadbands;
use crate::modbus::decode::decode_tag;
use crate::modbus::device::ModbusDevice;
use crate::modbus::error::{ModbusError, TransportError};
use crate::modbus::plan::{items_of_group, plan_items, split, Limits, ReadRequest};
use crate::modbus::transport::Link;
use crate::modbus::types::Table;
use crate::modbus::write::{self, WriteEnd, WriteInbox, WriteRequest};
use crate::sample::{DeviceReport, DriverStats, Quality, ReportKind, Sample, Value};

/// How often a device's counters are reported at most.
const STATS_EVERY: Duration = Duration::from_secs(1);

/// Polls `device` alone on its own connection until `cancel` fires (see [`run_bus`]).
pub async fn run_device(device: ModbusDevice, reports: mpsc::Sender<DeviceReport>, writes: WriteInbox, cancel: CancellationToken) {
    run_bus(vec![(device, writes)], reports, cancel).await;
}

/// Polls every device of one connection (devices that share a serial port or a
/// converter; see [`super::config::group_by_bus`]) until `cancel` fires, sending every
/// result to `reports` and executing the writes that arrive on each device's inbox.
/// Returns when cancelled or when the receiving side is gone.
pub async fn run_bus(devices: Vec<(ModbusDevice, WriteInbox)>, reports: mpsc::Sender<DeviceReport>, cancel: CancellationToken) {
    run_bus_beating(devices, reports, cancel, Heartbeat::new()).await;
}

/// [`run_bus`], beating `heartbeat` on every turn of its loops and promising its planned
/// waits (the back-off after a failed connect, the next poll), for the agent's watchdog.
pub async fn run_bus_beating(
    devices: Vec<(ModbusDevice, WriteInbox)>,
    reports: mpsc::Sender<DeviceReport>,
    cancel: CancellationToken,
    heartbeat: Heartbeat,
) {
    let Some((first, _)) = devices.first() else { return };
    let (link, frame_gap) = (first.link.clone(), first.frame_gap);
    // Each device's write queue is forwarded into one queue of the bus. The forwarders
    // hold the queues (a restarted task takes them over) and end with this task.
    let (bus_tx, mut bus_writes) = mpsc::channel::<(usize, WriteRequest)>(16);
    let mut forwarders = JoinSet::new();
    for (i, (_, inbox)) in devices.iter().enumerate() {
        let (inbox, tx, cancel) = (inbox.clone(), bus_tx.clone(), cancel.clone());
        forwarders.spawn(async move {
            let mut rx = tokio::select! {
                () = cancel.cancelled() => return,
                q = inbox.receiver().lock() => q,
            };
            loop {
                let req = tokio::select! {
                    () = cancel.cancelled() => return,
                    r = rx.recv() => r,
                };
                let Some(req) = req else { return };
                if tx.send((i, req)).await.is_err() {
                    return;
                }
            }
        });
    }
    drop(bus_tx);

    let mut bus = Bus {
        frame_gap,
        last_frame: None,
        drain: None,
        units: devices.into_iter().map(|(d, _)| Unit::new(d)).collect(),
        reports,
        log_limit: LogLimit::default(),
    };
    let connect_limit = bus.units.iter().map(|u| u.cfg.timeout).max().unwrap_or(Duration::from_secs(1));
    let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
    let mut connected_before = false;
    let mut writes_open = true;
    info!(link = %link.describe(), devices = bus.units.len(), "modbus connection starting");

    loop {
        // 1. A connection.
        // Kept until a connection is made: a line that would not fall silent is drained
        // again on the next try.
        let drain = bus.drain.filter(|_| link.is_shared_line());
        heartbeat.alive_until(Instant::now() + connect_limit);
        let connect = link.connect(bus.units[0].cfg.unit_id, connect_limit, drain);
        tokio::pin!(connect);
        let outcome = loop {
            tokio::select! {
                () = cancel.cancelled() => return,
                r = &mut connect => break r,
                w = next_write(&mut bus_writes, &mut writes_open) => write::refuse_not_connected(w.1),
            }
        };
        let mut ctx = match outcome {
            Ok(ctx) => ctx,
            Err(e) => {
                let reason = Arc::new(ModbusError::from(e));
                warn_once(&bus, &link, &reason);
                for i in 0..bus.units.len() {
                    if !bus.lose(i, &reason).await {
                        return;
                    }
                }
                let delay = backoff.next_delay();
                heartbeat.alive_until(Instant::now() + delay);
                let sleep = tokio::time::sleep(delay);
                tokio::pin!(sleep);
                loop {
                    tokio::select! {
                        () = cancel.cancelled() => return,
                        () = &mut sleep => break,
                        w = next_write(&mut bus_writes, &mut writes_open) => write::refuse_not_connected(w.1),
                    }
                }
                continue;
            }
        };
        backoff.reset();
        bus.drain = None;
        if connected_before {
            for u in &mut bus.units {
                u.stats.reconnects += 1;
            }
        }
        connected_before = true;
        debug!(link = %link.describe(), "connected");

        // 2. Poll and write until the connection fails.
        let reason = loop {
            heartbeat.beat();
            let (at, job) = bus.next_job();
            let write = if at > Instant::now() {
                heartbeat.alive_until(at);
                tokio::select! {
                    () = cancel.cancelled() => return,
                    () = sleep_until(at) => None,
                    w = next_write(&mut bus_writes, &mut writes_open) => Some(w),
                }
            } else if cancel.is_cancelled() {
                return;
            } else {
                // Already due (a busy bus): no timer, even an expired one, which would
                // wait for the runtime's next timer tick (up to a millisecond) before
                // every poll. A waiting write still goes first.
                bus_writes.try_recv().ok()
            };
            if let Some(w) = write {
                match bus.write(&mut ctx, w).await {
                    Ok(()) => continue,
                    Err(reason) => break reason,
                }
            }
            heartbeat.alive_until(Instant::now() + bus.budget(job));
            let outcome = tokio::select! {
                () = cancel.cancelled() => return,
                o = bus.run(&mut ctx, job) => o,
            };
            match outcome {
                Outcome::Ok => {}
                Outcome::ReceiverGone => return,
                Outcome::Transport(reason) => break reason,
            }
        };
        // Drop the context: its replies can no longer be trusted to match its requests.
        drop(ctx);
        debug!(link = %link.describe(), %reason, "connection dropped; opening a new one");
    }
}

fn warn_once(bus: &Bus, link: &Link, reason: &ModbusError) {
    if bus.units.iter().any(|u| u.online != Some(false)) {
        warn!(link = %link.describe(), %reason, "cannot connect");
    } else {
        debug!(link = %link.describe(), %reason, "still cannot connect");
    }
}

/// The next write of any device on the bus; pending forever once every queue is closed.
async fn next_write(rx: &mut mpsc::Receiver<(usize, WriteRequest)>, open: &mut bool) -> (usize, WriteRequest) {
    if *open {
        match rx.recv().await {
            Some(w) => return w,
            None => *open = false,
        }
    }
    std::future::pending().await
}

/// What to do next on the bus.
#[derive(Debug, Clone, Copy)]
enum Job {
    /// Poll group `group` of unit `unit`.
    Poll { unit: usize, group: usize },
    /// Send one request to the backed-off unit `unit` to see whether it is back.
    Probe { unit: usize },
}

enum Outcome {
    Ok,
    ReceiverGone,
    Transport(Arc<ModbusError>),
}

/// One device on the bus.
struct Unit {
    cfg: ModbusDevice,
    groups: Vec<Group>,
    breaker: Breaker,
    deadbands: Deadbands,
    stats: DriverStats,
    stats_sent: Option<(Instant, DriverStats)>,
    /// `Some(true)` once reported connected, `Some(false)` once reported lost.
    online: Option<bool>,
}

struct Group {
    interval: Duration,
    plan: Vec<ReadRequest>,
    due: Instant,
}

impl Unit {
    fn new(cfg: ModbusDevice) -> Self {
        let limits = Limits::of(&cfg);
        let now = Instant::now();
        let mut names: Vec<Option<String>> = vec![None];
        names.extend(cfg.poll_groups.keys().cloned().map(Some));
        let groups = names
            .into_iter()
            .map(|name| {
                let plan = plan_items(&items_of_group(&cfg, name.as_deref()), limits);
                Group { interval: cfg.group_interval(name.as_deref()), plan, due: now }
            })
            .filter(|g| !g.plan.is_empty())
            .collect();
        let breaker = Breaker::new(cfg.backoff_after_failures, cfg.poll_interval.max(Duration::from_secs(1)), cfg.backoff_max);
        let deadbands = Deadbands::new(cfg.tags.len());
        Self { cfg, groups, breaker, deadbands, stats: DriverStats::default(), stats_sent: None, online: None }
    }
}

struct Bus {
    frame_gap: Option<Duration>,
    /// When the last frame on a serial line ended.
    last_frame: Option<Instant>,
    /// After a transport failure: how long the line must be silent before the next
    /// connection is used (the failed device's timeout; see [`Link::connect`]).
    drain: Option<Duration>,
    units: Vec<Unit>,
    reports: mpsc::Sender<DeviceReport>,
    /// Warnings that repeat every poll (a refused register, a timeout), one line a minute
    /// per device and register range, with the count held back.
    log_limit: LogLimit<String>,
}

impl Bus {
    /// The job due first, and when.
    fn next_job(&self) -> (Instant, Job) {
        let mut best: Option<(Instant, Job)> = None;
        for (u, unit) in self.units.iter().enumerate() {
            let candidates: Vec<(Instant, Job)> = match unit.breaker.next_probe() {
                Some(at) => vec![(at, Job::Probe { unit: u })],
                None => unit.groups.iter().enumerate().map(|(g, grp)| (grp.due, Job::Poll { unit: u, group: g })).collect(),
            };
            for c in candidates {
                if best.as_ref().is_none_or(|b| c.0 < b.0) {
                    best = Some(c);
                }
            }
        }
        // A device always has a group (validation requires a tag); stay total anyway.
        best.unwrap_or((Instant::now() + Duration::from_secs(3600), Job::Probe { unit: 0 }))
    }

    /// The longest `job` can take on a slow but working device: every request of it at
    /// the device's timeout (the watchdog does not take that for a hang).
    fn budget(&self, job: Job) -> Duration {
        let (unit, requests) = match job {
            Job::Poll { unit, group } => (unit, self.units.get(unit).and_then(|u| u.groups.get(group)).map_or(1, |g| g.plan.len())),
            Job::Probe { unit } => (unit, 1),
        };
        let timeout = self.units.get(unit).map_or(Duration::from_secs(1), |u| u.cfg.timeout);
        (timeout + self.frame_gap.unwrap_or_default()).saturating_mul(u32::try_from(requests).unwrap_or(u32::MAX))
    }

    async fn run(&mut self, ctx: &mut Context, job: Job) -> Outcome {
        match job {
            Job::Poll { unit, group } => self.poll(ctx, unit, group).await,
            Job::Probe { unit } => self.probe(ctx, unit).await,
        }
    }

    /// Reads every request of one poll group of one unit. Each reply is decoded while the
    /// next request is on its way (see [`Bus::read`]).
    async fn poll(&mut self, ctx: &mut Context, u: usize, g: usize) -> Outcome {
        ctx.set_slave(Slave(self.units[u].cfg.unit_id));
        let mut samples = Vec::new();
        let mut failure = None;
        let mut undecoded: Option<(ReadRequest, Vec<u16>)> = None;
        let mut i = 0;
        while i < self.units[u].groups[g].plan.len() {
            let req = self.units[u].groups[g].plan[i].clone();
            match self.read(ctx, u, &req, undecoded.take(), &mut samples).await {
                Ok(Ok(words)) => {
                    undecoded = Some((req, words));
                    i += 1;
                }
                Ok(Err(exception)) => {
                    let unit = &mut self.units[u];
                    if matches!(exception, ExceptionCode::IllegalDataAddress | ExceptionCode::IllegalDataValue) {
                        let tags = &unit.cfg.tags;
                        if let Some((a, b)) = split(&req, |t| tags[t].register_count()) {
                            info!(device = %unit.cfg.name, %exception, table = req.table.as_str(), start = req.start, count = req.count,
                                "device refused a merged read; splitting it for good");
                            unit.stats.splits += 1;
                            unit.groups[g].plan.splice(i..=i, [a, b]);
                            continue;
                        }
                    }
                    let reason = ModbusError::Exception { exception, table: req.table, start: req.start, count: req.count }.to_string();
                    let key = format!("{}/{}/{}+{}/{exception}", unit.cfg.name, req.table.as_str(), req.start, req.count);
                    if let Some(suppressed) = self.log_limit.allow(key) {
                        warn!(device = %unit.cfg.name, %reason, suppressed, "device refused a read");
                    }
                    for &(t, _) in &req.tags {
                        samples.push((t, bad_sample(&unit.cfg.tags[t].name, &reason)));
                    }
                    i += 1;
                }
                Err(f) => {
                    // The rest of the group is not read on this connection.
                    let reason = f.to_string();
                    let unit = &self.units[u];
                    for r in &unit.groups[g].plan[i..] {
                        for &(t, _) in &r.tags {
                            samples.push((t, bad_sample(&unit.cfg.tags[t].name, &reason)));
                        }
                    }
                    failure = Some(ModbusError::from(f));
                    break;
                }
            }
        }
        if let Some((req, words)) = undecoded {
            let unit = &mut self.units[u];
            decode_request(&unit.cfg, &req, &words, &mut samples, &mut unit.stats);
        }
        let now = Instant::now();
        self.units[u].stats.polls += 1;
        let group = &mut self.units[u].groups[g];
        group.due = next_due(group.due, group.interval, now);
        if let Some(reason) = failure {
            return self.failed(u, samples, reason).await;
        }
        self.answered(u, samples).await
    }

    /// One request to a backed-off unit: the first of its first group.
    async fn probe(&mut self, ctx: &mut Context, u: usize) -> Outcome {
        ctx.set_slave(Slave(self.units[u].cfg.unit_id));
        let Some(req) = self.units[u].groups.first().and_then(|g| g.plan.first()).cloned() else {
            return Outcome::Ok;
        };
        debug!(device = %self.units[u].cfg.name, "probing a backed-off device");
        match self.read(ctx, u, &req, None, &mut Vec::new()).await {
            Ok(_) => {
                // Back: poll every group now.
                let now = Instant::now();
                for g in &mut self.units[u].groups {
                    g.due = now;
                }
                self.answered(u, Vec::new()).await
            }
            Err(f) => self.failed(u, Vec::new(), f.into()).await,
        }
    }

    /// One read under the device's timeout, keeping the silence a serial line needs.
    ///
    /// `meanwhile`, the previous reply of the poll, is decoded into `out` once this
    /// request is on the wire (the first poll of the call writes it out), so that decoding
    /// overlaps the round trip instead of adding to it: on a fast link the decoding of 125
    /// tags takes as long as a round trip. It is decoded whatever this read's outcome.
    async fn read(
        &mut self,
        ctx: &mut Context,
        u: usize,
        req: &ReadRequest,
        meanwhile: Option<(ReadRequest, Vec<u16>)>,
        out: &mut Vec<Tagged>,
    ) -> ReadResult {
        if let (Some(gap), Some(last)) = (self.frame_gap, self.last_frame) {
            sleep_until(last + gap).await;
        }
        let unit = &mut self.units[u];
        unit.stats.requests += 1;
        let started = Instant::now();
        let call = read_request(ctx, req, unit.cfg.timeout);
        tokio::pin!(call);
        let first = std::future::poll_fn(|cx| Poll::Ready(call.as_mut().poll(cx))).await;
        if let Some((previous, words)) = meanwhile {
            decode_request(&unit.cfg, &previous, &words, out, &mut unit.stats);
        }
        let result = match first {
            Poll::Ready(r) => r,
            Poll::Pending => call.await,
        };
        self.last_frame = Some(Instant::now());
        match &result {
            Ok(Ok(_)) => unit.stats.last_latency_ms = Some(started.elapsed().as_secs_f64() * 1000.0),
            Ok(Err(_)) => {
                unit.stats.exceptions += 1;
                unit.stats.last_latency_ms = Some(started.elapsed().as_secs_f64() * 1000.0);
            }
            Err(TransportError::Timeout(_)) => unit.stats.timeouts += 1,
            Err(_) => unit.stats.transport_errors += 1,
        }
        if result.is_err() {
            self.drain = Some(unit.cfg.timeout);
        }
        result
    }

    /// The unit answered: close its breaker, say it is connected, send its readings.
    async fn answered(&mut self, u: usize, samples: Vec<Tagged>) -> Outcome {
        let unit = &mut self.units[u];
        if unit.breaker.on_success() == Change::Closed {
            info!(device = %unit.cfg.name, "device answers again; no longer backed off");
        }
        unit.stats.backed_off = false;
        if unit.online != Some(true) {
            unit.online = Some(true);
            info!(device = %unit.cfg.name, "connected");
            if !self.send(u, ReportKind::Connected).await {
                return Outcome::ReceiverGone;
            }
        }
        self.deliver(u, samples).await
    }

    /// The unit did not answer: its readings so far are sent bad; the breaker counts it;
    /// the connection is to be rebuilt.
    async fn failed(&mut self, u: usize, samples: Vec<Tagged>, reason: ModbusError) -> Outcome {
        let unit = &mut self.units[u];
        let change = unit.breaker.on_failure(Instant::now());
        let reason = if change == Change::Opened {
            unit.stats.backoffs += 1;
            unit.stats.backed_off = true;
            let wait = unit.breaker.next_probe().map(|t| t.saturating_duration_since(Instant::now())).unwrap_or_default();
            warn!(device = %unit.cfg.name, %reason, failures = unit.breaker.failures(), next_probe = ?wait, "device backed off");
            let lost = Arc::new(ModbusError::BackedOff { cause: Box::new(reason), failures: unit.breaker.failures() });
            if !self.lose(u, &lost).await {
                return Outcome::ReceiverGone;
            }
            lost
        } else {
            if !samples.is_empty() {
                if let Some(suppressed) = self.log_limit.allow(format!("{}/poll failed", unit.cfg.name)) {
                    warn!(device = %unit.cfg.name, %reason, suppressed, "poll failed");
                }
                if let Outcome::ReceiverGone = self.deliver(u, samples).await {
                    return Outcome::ReceiverGone;
                }
            }
            Arc::new(reason)
        };
        if !self.send_stats(u, Instant::now()).await {
            return Outcome::ReceiverGone;
        }
        Outcome::Transport(reason)
    }

    /// Reports `u` lost (every tag bad, then `Disconnected`), once per loss.
    async fn lose(&mut self, u: usize, error: &Arc<ModbusError>) -> bool {
        let unit = &mut self.units[u];
        if unit.online == Some(false) {
            return true;
        }
        // A bad tag's reason is the operator's sentence; the device's loss keeps the error.
        let reason = error.to_string();
        unit.online = Some(false);
        warn!(device = %unit.cfg.name, %reason, "device lost");
        let bad: Vec<Sample> = unit.cfg.tags.iter().map(|t| bad_sample(&t.name, &reason)).collect();
        let now = Instant::now();
        let mut pass = Vec::with_capacity(bad.len());
        for (i, s) in bad.into_iter().enumerate() {
            if unit.deadbands.pass(i, &unit.cfg.tags[i], &s, now) {
                pass.push(s);
            }
        }
        self.send(u, ReportKind::Samples(pass)).await && self.send(u, ReportKind::Disconnected(Arc::clone(error).into())).await
    }

    /// Sends the readings that pass their deadband, and the counters when due.
    async fn deliver(&mut self, u: usize, samples: Vec<Tagged>) -> Outcome {
        let unit = &mut self.units[u];
        let now = Instant::now();
        let samples: Vec<Sample> = samples
            .into_iter()
            .filter(|(i, s)| unit.cfg.tags.get(*i).is_none_or(|tag| unit.deadbands.pass(*i, tag, s, now)))
            .map(|(_, s)| s)
            .collect();
        if !samples.is_empty() && !self.send(u, ReportKind::Samples(samples)).await {
            return Outcome::ReceiverGone;
        }
        if !self.send_stats(u, now).await {
            return Outcome::ReceiverGone;
        }
        Outcome::Ok
    }

    /// Sends the counters of `u` when they changed and the last ones are a second old, or
    /// at once when the device was backed off or came back. Failing devices report too:
    /// their counters are the news.
    async fn send_stats(&mut self, u: usize, now: Instant) -> bool {
        let unit = &mut self.units[u];
        let due = unit.stats_sent.as_ref().is_none_or(|(at, last)| {
            *last != unit.stats && (now.duration_since(*at) >= STATS_EVERY || last.backed_off != unit.stats.backed_off)
        });
        if !due {
            return true;
        }
        let stats = unit.stats.clone();
        unit.stats_sent = Some((now, stats.clone()));
        self.send(u, ReportKind::Stats(stats)).await
    }

    /// Executes one write for unit `u`; `Err` when the connection must be rebuilt.
    async fn write(&mut self, ctx: &mut Context, (u, req): (usize, WriteRequest)) -> Result<(), Arc<ModbusError>> {
        let Some(unit) = self.units.get_mut(u) else { return Ok(()) };
        if unit.breaker.is_open() {
            write::refuse_not_connected(req);
            return Ok(());
        }
        ctx.set_slave(Slave(unit.cfg.unit_id));
        if let (Some(gap), Some(last)) = (self.frame_gap, self.last_frame) {
            sleep_until(last + gap).await;
        }
        let end = write::execute(ctx, &unit.cfg, req, &mut unit.stats).await;
        self.last_frame = Some(Instant::now());
        if matches!(end, WriteEnd::Transport(_)) {
            self.drain = Some(unit.cfg.timeout);
        }
        // Read the new value back at once.
        let now = Instant::now();
        for g in &mut unit.groups {
            g.due = now;
        }
        match end {
            WriteEnd::Done => Ok(()),
            WriteEnd::Transport(e) => Err(Arc::new(ModbusError::Write(e))),
        }
    }

    async fn send(&self, u: usize, kind: ReportKind) -> bool {
        self.reports.send(DeviceReport { device: self.units[u].cfg.name.clone(), kind }).await.is_ok()
    }
}

/// The next time a group is due: one interval after the last due time, skipping the
/// polls missed while it was late (no drift, no burst).
fn next_due(due: Instant, interval: Duration, now: Instant) -> Instant {
    let next = due + interval;
    if next > now {
        return next;
    }
    let behind = now.duration_since(next).as_nanos();
    let step = interval.as_nanos().max(1);
    let skipped = u32::try_from(behind / step + 1).unwrap_or(u32::MAX);
    next + interval.saturating_mul(skipped)
}

/// Registers as words (bits as 0/1), or the device's exception.
type ReadResult = Result<Result<Vec<u16>, ExceptionCode>, TransportError>;

/// One read under `limit`. The reply must hold exactly what was asked for (bits come
/// padded to whole bytes): RTU frames carry no transaction id, so a reply of another size
/// is taken for a late answer to an earlier request, and the connection is rebuilt.
///
/// Goes through `Client::call` rather than the `Reader` helpers, which assume the reply
/// has the right size (a debug assertion for coils) instead of checking it.
async fn read_request(ctx: &mut Context, req: &ReadRequest, limit: Duration) -> ReadResult {
    let request = match req.table {
        Table::Holding => Request::ReadHoldingRegisters(req.start, req.count),
        Table::Input => Request::ReadInputRegisters(req.start, req.count),
        Table::Coil => Request::ReadCoils(req.start, req.count),
        Table::Discrete => Request::ReadDiscreteInputs(req.start, req.count),
    };
    let reply = match timeout(limit, ctx.call(request)).await {
        Ok(Ok(Ok(reply))) => reply,
        Ok(Ok(Err(exception))) => return Ok(Err(exception)),
        Ok(Err(e)) => return Err(TransportError::from(e)),
        Err(_) => return Err(TransportError::Timeout(limit)),
    };
    let asked = usize::from(req.count);
    let mismatch = |got| TransportError::Mismatch { asked: req.count, got };
    match reply {
        Response::ReadHoldingRegisters(words) | Response::ReadInputRegisters(words) if words.len() == asked => Ok(Ok(words)),
        Response::ReadCoils(bits) | Response::ReadDiscreteInputs(bits) if bits.len() >= asked && bits.len() < asked + 8 => {
            Ok(Ok(bits.into_iter().take(asked).map(u16::from).collect()))
        }
        Response::ReadHoldingRegisters(v) | Response::ReadInputRegisters(v) => Err(mismatch(v.len())),
        Response::ReadCoils(v) | Response::ReadDiscreteInputs(v) => Err(mismatch(v.len())),
        // call() checks the function code of the reply against the request.
        _ => Err(mismatch(0)),
    }
}

/// A reading and the index of its tag in the device's config.
type Tagged = (usize, Sample);

/// Decodes the reply to `req` into one reading per tag, all stamped with the same time
/// (the reply's).
fn decode_request(device: &ModbusDevice, req: &ReadRequest, words: &[u16], out: &mut Vec<Tagged>, stats: &mut DriverStats) {
    let now = Utc::now();
    for &(i, offset) in &req.tags {
        let tag = &device.tags[i];
        let start = usize::from(offset);
        let end = start + usize::from(tag.register_count());
        let decoded = match words.get(start..end) {
            None => Err(format!("reply held {} items, expected at least {end}", words.len())),
            Some(regs) if matches!(req.table, Table::Coil | Table::Discrete) => Ok((Value::Bool(regs[0] != 0), None)),
            Some(regs) => decode_tag(regs, tag).map(|d| (d.value, d.clamped_from)).map_err(|e| e.to_string()),
        };
        out.push((
            i,
            match decoded {
                Ok((value, None)) => Sample {
                    tag: tag.name.clone(),
                    value: Some(value),
                    quality: Quality::Good,
                    source_ts: now,
                    server_ts: None,
                    agent_ts: now,
                },
                Ok((value, Some(raw))) => {
                    let reason = format!("clamped: read {raw}, outside [{}, {}]", show_limit(tag.clamp_min), show_limit(tag.clamp_max));
                    Sample {
                        tag: tag.name.clone(),
                        value: Some(value),
                        quality: Quality::Uncertain(reason),
                        source_ts: now,
                        server_ts: None,
                        agent_ts: now,
                    }
                }
                Err(reason) => {
                    stats.decode_errors += 1;
                    bad_sample(&tag.name, &reason)
                }
            },
        ));
    }
}

fn show_limit(l: Option<f64>) -> String {
    l.map_or_else(|| "none".into(), |v| v.to_string())
}

fn bad_sample(tag: &str, reason: &str) -> Sample {
    let now = Utc::now();
    Sample { tag: tag.to_string(), value: None, quality: Quality::Bad(reason.to_string()), source_ts: now, server_ts: None, agent_ts: now }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::time::Duration;

    use tokio::sync::{mpsc, oneshot};
    use tokio_util::sync::CancellationToken;

    use super::run_device;
    use crate::config::{DeviceConfig, Protocol, TagConfig};
    use crate::modbus::types::{ByteOrder, DataType, Table};
    use crate::modbus::write::{write_channel, WriteError, WriteRequest};
    use crate::sample::{ReportKind, Value};
    use crate::sim::register_server::{self, RegisterBank, SharedBank};

    fn tag(name: &str, table: Table, address: u16, data_type: DataType, byte_order: ByteOrder, scale: f64) -> TagConfig {
        TagConfig {
            name: name.into(),
            table: Some(table),
            address: Some(address),
            data_type: Some(data_type),
            byte_order,
            scale,
            offset: 0.0,
            unit: None,
            description: None,
            ..TagConfig::default()
        }
    }

    fn built(addr: SocketAddr) -> crate::modbus::ModbusDevice {
        crate::modbus::ModbusDevice::build(&device(addr)).unwrap()
    }

    fn device(addr: SocketAddr) -> DeviceConfig {
        DeviceConfig {
            name: "plc".into(),
            protocol: Protocol::ModbusTcp,
            address: Some(addr.to_string()),
            unit_id: 1,
            address_base: 0,
            poll_interval: Duration::from_millis(50),
            timeout: Duration::from_millis(500),
            max_gap: 0,
            tags: vec![
                tag("flow", Table::Holding, 0, DataType::U16, ByteOrder::ABCD, 0.1),
                tag("setpoint", Table::Holding, 2, DataType::F32, ByteOrder::CDAB, 1.0),
                tag("pump", Table::Coil, 5, DataType::Bool, ByteOrder::ABCD, 1.0),
                tag("unmapped", Table::Holding, 40, DataType::U16, ByteOrder::ABCD, 1.0),
                tag("level", Table::Input, 0, DataType::U16, ByteOrder::ABCD, 1.0),
            ],
            ..DeviceConfig::default()
        }
    }

    async fn write(tx: &mpsc::Sender<WriteRequest>, tag: &str, value: Value) -> Result<(), WriteError> {
        let (reply, answer) = oneshot::channel();
        tx.send(WriteRequest { tag: tag.into(), value, reply }).await.unwrap();
        tokio::time::timeout(Duration::from_secs(5), answer).await.unwrap().unwrap()
    }

    async fn server(cancel: &CancellationToken) -> (SocketAddr, SharedBank) {
        let mut bank = RegisterBank::default();
        bank.set_holding(0, &[100, 0, 0, 0]);
        bank.coils.insert(5, false);
        bank.set_input(0, &[7]);
        let bank = bank.shared();
        let (listener, addr) = register_server::bind(([127, 0, 0, 1], 0).into()).await.unwrap();
        tokio::spawn(register_server::serve(listener, bank.clone(), cancel.clone()));
        (addr, bank)
    }

    #[tokio::test]
    async fn writes_reach_the_device_between_polls_with_the_right_registers() {
        let cancel = CancellationToken::new();
        let (addr, bank) = server(&cancel).await;
        let (reports_tx, mut reports) = mpsc::channel(256);
        let (tx, inbox) = write_channel(4);
        tokio::spawn(run_device(built(addr), reports_tx, inbox, cancel.clone()));
        // Wait for the connection.
        loop {
            match tokio::time::timeout(Duration::from_secs(5), reports.recv()).await.unwrap().unwrap().kind {
                ReportKind::Connected => break,
                _ => continue,
            }
        }
        tokio::spawn(async move { while reports.recv().await.is_some() {} });

        write(&tx, "flow", Value::Float(308.4)).await.unwrap();
        write(&tx, "setpoint", Value::Float(1234.5)).await.unwrap();
        write(&tx, "pump", Value::Bool(true)).await.unwrap();
        {
            let b = bank.read().unwrap();
            assert_eq!(b.holding[&0], 3084);
            assert_eq!((b.holding[&2], b.holding[&3]), (0x5000, 0x449A));
            assert!(b.coils[&5]);
        }

        // A device exception is returned and the connection stays.
        let e = write(&tx, "unmapped", Value::Int(1)).await.unwrap_err();
        assert_eq!(e, WriteError::Exception(tokio_modbus::ExceptionCode::IllegalDataAddress));
        assert_eq!(
            write(&tx, "level", Value::Int(1)).await.unwrap_err().to_string(),
            "input tags are read-only: only holding registers and coils can be written"
        );
        assert!(matches!(write(&tx, "nope", Value::Int(1)).await, Err(WriteError::UnknownTag(_))));
        write(&tx, "flow", Value::Int(5)).await.unwrap();
        assert_eq!(bank.read().unwrap().holding[&0], 50);
        cancel.cancel();
    }

    #[tokio::test]
    async fn without_a_connection_a_write_is_refused_at_once() {
        // A port nobody listens on.
        let addr = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let cancel = CancellationToken::new();
        let (reports_tx, mut reports) = mpsc::channel(256);
        let (tx, inbox) = write_channel(4);
        tokio::spawn(run_device(built(addr), reports_tx, inbox, cancel.clone()));
        tokio::spawn(async move { while reports.recv().await.is_some() {} });
        for _ in 0..3 {
            let started = std::time::Instant::now();
            assert_eq!(write(&tx, "flow", Value::Int(1)).await, Err(WriteError::NotConnected));
            assert!(started.elapsed() < Duration::from_secs(1));
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        cancel.cancel();
    }

    #[tokio::test]
    async fn a_restarted_device_task_takes_over_the_same_write_queue() {
        let cancel = CancellationToken::new();
        let (addr, bank) = server(&cancel).await;
        let (tx, inbox) = write_channel(4);
        // The first task ends (its report receiver is gone) …
        let (reports_tx, reports) = mpsc::channel(1);
        drop(reports);
        run_device(built(addr), reports_tx, inbox.clone(), cancel.clone()).await;
        // … and the next one serves the writes.
        let (reports_tx, mut reports) = mpsc::channel(256);
        tokio::spawn(run_device(built(addr), reports_tx, inbox, cancel.clone()));
        tokio::spawn(async move { while reports.recv().await.is_some() {} });
        let mut last = Err(WriteError::NotConnected);
        for _ in 0..50 {
            last = write(&tx, "flow", Value::Int(12)).await;
            if last.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        last.unwrap();
        assert_eq!(bank.read().unwrap().holding[&0], 120);
        cancel.cancel();
    }
}
