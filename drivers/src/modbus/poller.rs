//! The task that owns one Modbus TCP device: connect, poll on a fixed interval,
//! decode, report, and rebuild the connection after any transport failure.
//!
//! Two kinds of failure are kept apart, as tokio-modbus does:
//! - a **device exception** (illegal address, device busy…) marks the tags of that one
//!   request bad; the connection is fine and stays up;
//! - a **transport failure** (timeout, reset, garbled frame) marks every tag bad and drops
//!   the connection, because a late reply would otherwise be taken for the answer to the
//!   next request. The next attempt waits a jittered, growing delay.
//!
//! Writes (see [`super::write`]) arrive on the device's write queue and are executed
//! between two polls, on the same connection; a poll follows each write at once, so the
//! new value is read back. While there is no connection, writes are answered
//! `NotConnected` at once.

use std::net::SocketAddr;
use std::time::Duration;

use chrono::Utc;
use tokio::sync::mpsc;
use tokio::time::{timeout, MissedTickBehavior};
use tokio_modbus::client::{Context, Reader};
use tokio_modbus::Slave;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::backoff::Backoff;
use crate::config::DeviceConfig;
use crate::modbus::decode::{decode_bit, decode_registers};
use crate::modbus::plan::{plan_requests, ReadRequest};
use crate::modbus::types::Table;
use crate::modbus::write::{self, WriteEnd, WriteInbox, WriteRequest};
use crate::sample::{DeviceReport, Quality, ReportKind, Sample, Value};

/// Why a poll could not complete: the connection must be rebuilt.
#[derive(Debug, thiserror::Error)]
enum TransportFailure {
    #[error("no reply within {0:?}")]
    Timeout(Duration),
    #[error("the device closed the connection")]
    Closed,
    #[error("{0}")]
    Io(tokio_modbus::Error),
}

impl From<tokio_modbus::Error> for TransportFailure {
    /// tokio-modbus reports a connection the device closed as an I/O error "Success (os
    /// error 0)" or an unexpected EOF; say what happened instead.
    fn from(e: tokio_modbus::Error) -> Self {
        match &e {
            tokio_modbus::Error::Transport(io)
                if io.raw_os_error() == Some(0)
                    || matches!(io.kind(), std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe) =>
            {
                TransportFailure::Closed
            }
            _ => TransportFailure::Io(e),
        }
    }
}

/// Polls `device` until `cancel` fires, sending every result to `reports` and executing
/// the writes that arrive on `writes`. Returns when cancelled or when the receiving side
/// is gone.
pub async fn run_device(device: DeviceConfig, reports: mpsc::Sender<DeviceReport>, writes: WriteInbox, cancel: CancellationToken) {
    // A restarted task takes the queue over from the one that ended.
    let mut queue = tokio::select! {
        () = cancel.cancelled() => return,
        q = writes.receiver().lock() => q,
    };
    let mut writes = Writes { rx: &mut queue, open: true };
    let plan = plan_requests(&device);
    let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
    let Some(Ok(addr)) = device.address.as_deref().map(str::parse::<SocketAddr>) else {
        // validate() rejects this before a driver is ever started.
        warn!(device = %device.name, address = ?device.address, "invalid address; driver not started");
        return;
    };
    let mut was_connected = true; // so that a first failed connect is reported once
    info!(device = %device.name, %addr, requests = plan.len(), tags = device.tags.len(), "modbus device starting");

    loop {
        let connect = timeout(device.timeout, tokio_modbus::client::tcp::connect_slave(addr, Slave(device.unit_id)));
        tokio::pin!(connect);
        let outcome = loop {
            tokio::select! {
                () = cancel.cancelled() => return,
                r = &mut connect => break r,
                req = writes.next() => write::refuse_not_connected(req),
            }
        };
        let failure = match outcome {
            Ok(Ok(ctx)) => {
                info!(device = %device.name, %addr, "connected");
                backoff.reset();
                was_connected = true;
                if !send(&reports, &device.name, ReportKind::Connected).await {
                    return;
                }
                match poll_until_failure(&device, &plan, ctx, &reports, &mut writes, &cancel).await {
                    PollEnd::Cancelled | PollEnd::ReceiverGone => return,
                    PollEnd::Transport(reason) => reason,
                }
            }
            Ok(Err(e)) => format!("connect failed: {e}"),
            Err(_) => format!("connect timed out after {:?}", device.timeout),
        };
        if was_connected {
            warn!(device = %device.name, %addr, reason = %failure, "device lost");
            let bad = bad_samples(&device, &failure);
            if !send(&reports, &device.name, ReportKind::Samples(bad)).await
                || !send(&reports, &device.name, ReportKind::Disconnected(failure)).await
            {
                return;
            }
            was_connected = false;
        } else {
            debug!(device = %device.name, reason = %failure, "still unreachable");
        }
        let sleep = tokio::time::sleep(backoff.next_delay());
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                () = cancel.cancelled() => return,
                () = &mut sleep => break,
                req = writes.next() => write::refuse_not_connected(req),
            }
        }
    }
}

/// The device's write queue, as the task sees it.
struct Writes<'a> {
    rx: &'a mut mpsc::Receiver<WriteRequest>,
    /// False once every sender is gone: the queue is then never polled again.
    open: bool,
}

impl Writes<'_> {
    /// The next write; pending forever once the queue is closed. Cancel-safe.
    async fn next(&mut self) -> WriteRequest {
        if self.open {
            match self.rx.recv().await {
                Some(req) => return req,
                None => self.open = false,
            }
        }
        std::future::pending().await
    }
}

enum PollEnd {
    Cancelled,
    ReceiverGone,
    Transport(String),
}

async fn poll_until_failure(
    device: &DeviceConfig,
    plan: &[ReadRequest],
    mut ctx: Context,
    reports: &mpsc::Sender<DeviceReport>,
    writes: &mut Writes<'_>,
    cancel: &CancellationToken,
) -> PollEnd {
    let mut ticker = tokio::time::interval(device.poll_interval);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = cancel.cancelled() => return PollEnd::Cancelled,
            _ = ticker.tick() => {}
            req = writes.next() => {
                if let WriteEnd::Transport(reason) = write::execute(&mut ctx, device, req).await {
                    // Drop the context, as after a failed read.
                    drop(ctx);
                    return PollEnd::Transport(reason);
                }
                // Read the new value back at once.
                ticker.reset_immediately();
                continue;
            }
        }
        let mut samples = Vec::with_capacity(device.tags.len());
        for req in plan {
            let read = tokio::select! {
                () = cancel.cancelled() => return PollEnd::Cancelled,
                r = read_request(&mut ctx, req, device.timeout) => r,
            };
            match read {
                Ok(Ok(words)) => decode_request(device, req, &words, &mut samples),
                Ok(Err(exception)) => {
                    let reason = format!("modbus exception {exception} reading {} {}+{}", req.table.as_str(), req.start, req.count);
                    warn!(device = %device.name, %reason, "device refused a read");
                    for &(i, _) in &req.tags {
                        samples.push(bad_sample(&device.tags[i].name, &reason));
                    }
                }
                Err(failure) => {
                    // Drop the context: its transaction ids can no longer be trusted.
                    drop(ctx);
                    return PollEnd::Transport(failure.to_string());
                }
            }
        }
        if !send(reports, &device.name, ReportKind::Samples(samples)).await {
            return PollEnd::ReceiverGone;
        }
    }
}

/// Registers as words (bits as 0/1), or the device's exception.
type ReadResult = Result<Result<Vec<u16>, tokio_modbus::ExceptionCode>, TransportFailure>;

async fn read_request(ctx: &mut Context, req: &ReadRequest, limit: Duration) -> ReadResult {
    let bits = |r: Result<Vec<bool>, tokio_modbus::ExceptionCode>| r.map(|v| v.into_iter().map(u16::from).collect());
    let call = async {
        Ok::<_, tokio_modbus::Error>(match req.table {
            Table::Holding => ctx.read_holding_registers(req.start, req.count).await?,
            Table::Input => ctx.read_input_registers(req.start, req.count).await?,
            Table::Coil => bits(ctx.read_coils(req.start, req.count).await?),
            Table::Discrete => bits(ctx.read_discrete_inputs(req.start, req.count).await?),
        })
    };
    match timeout(limit, call).await {
        Ok(Ok(r)) => Ok(r),
        Ok(Err(e)) => Err(TransportFailure::from(e)),
        Err(_) => Err(TransportFailure::Timeout(limit)),
    }
}

fn decode_request(device: &DeviceConfig, req: &ReadRequest, words: &[u16], out: &mut Vec<Sample>) {
    for &(i, offset) in &req.tags {
        let tag = &device.tags[i];
        let start = usize::from(offset);
        let end = start + usize::from(tag.data_type().register_count());
        let decoded = match words.get(start..end) {
            None => Err(format!("reply held {} items, expected at least {end}", words.len())),
            Some(regs) if matches!(req.table, Table::Coil | Table::Discrete) => Ok(decode_bit(regs[0] != 0)),
            Some(regs) => decode_registers(regs, tag).map_err(|e| e.to_string()),
        };
        out.push(match decoded {
            Ok(value) => good_sample(&tag.name, value),
            Err(reason) => bad_sample(&tag.name, &reason),
        });
    }
}

fn good_sample(tag: &str, value: Value) -> Sample {
    let now = Utc::now();
    Sample { tag: tag.to_string(), value: Some(value), quality: Quality::Good, source_ts: now, agent_ts: now }
}

fn bad_sample(tag: &str, reason: &str) -> Sample {
    let now = Utc::now();
    Sample { tag: tag.to_string(), value: None, quality: Quality::Bad(reason.to_string()), source_ts: now, agent_ts: now }
}

fn bad_samples(device: &DeviceConfig, reason: &str) -> Vec<Sample> {
    device.tags.iter().map(|t| bad_sample(&t.name, reason)).collect()
}

async fn send(reports: &mpsc::Sender<DeviceReport>, device: &str, kind: ReportKind) -> bool {
    reports.send(DeviceReport { device: device.to_string(), kind }).await.is_ok()
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
        tokio::spawn(run_device(device(addr), reports_tx, inbox, cancel.clone()));
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
        tokio::spawn(run_device(device(addr), reports_tx, inbox, cancel.clone()));
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
        run_device(device(addr), reports_tx, inbox.clone(), cancel.clone()).await;
        // … and the next one serves the writes.
        let (reports_tx, mut reports) = mpsc::channel(256);
        tokio::spawn(run_device(device(addr), reports_tx, inbox, cancel.clone()));
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
