//! The task that owns one Modbus TCP device: connect, poll on a fixed interval,
//! decode, report, and rebuild the connection after any transport failure.
//!
//! Two kinds of failure are kept apart, as tokio-modbus does:
//! - a **device exception** (illegal address, device busy…) marks the tags of that one
//!   request bad; the connection is fine and stays up;
//! - a **transport failure** (timeout, reset, garbled frame) marks every tag bad and drops
//!   the connection, because a late reply would otherwise be taken for the answer to the
//!   next request. The next attempt waits a jittered, growing delay.

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
use crate::sample::{DeviceReport, Quality, ReportKind, Sample, Value};

/// Why a poll could not complete: the connection must be rebuilt.
#[derive(Debug, thiserror::Error)]
enum TransportFailure {
    #[error("no reply within {0:?}")]
    Timeout(Duration),
    #[error("{0}")]
    Io(#[from] tokio_modbus::Error),
}

/// Polls `device` until `cancel` fires, sending every result to `reports`.
/// Returns when cancelled or when the receiving side is gone.
pub async fn run_device(device: DeviceConfig, reports: mpsc::Sender<DeviceReport>, cancel: CancellationToken) {
    let plan = plan_requests(&device);
    let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
    let Ok(addr) = device.address.parse::<SocketAddr>() else {
        // validate() rejects this before a driver is ever started.
        warn!(device = %device.name, address = %device.address, "invalid address; driver not started");
        return;
    };
    let mut was_connected = true; // so that a first failed connect is reported once
    info!(device = %device.name, %addr, requests = plan.len(), tags = device.tags.len(), "modbus device starting");

    loop {
        let connect = timeout(device.timeout, tokio_modbus::client::tcp::connect_slave(addr, Slave(device.unit_id)));
        let outcome = tokio::select! {
            () = cancel.cancelled() => return,
            r = connect => r,
        };
        let failure = match outcome {
            Ok(Ok(ctx)) => {
                info!(device = %device.name, %addr, "connected");
                backoff.reset();
                was_connected = true;
                if !send(&reports, &device.name, ReportKind::Connected).await {
                    return;
                }
                match poll_until_failure(&device, &plan, ctx, &reports, &cancel).await {
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
        let delay = backoff.next_delay();
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(delay) => {}
        }
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
    cancel: &CancellationToken,
) -> PollEnd {
    let mut ticker = tokio::time::interval(device.poll_interval);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = cancel.cancelled() => return PollEnd::Cancelled,
            _ = ticker.tick() => {}
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
        Ok(Err(e)) => Err(TransportFailure::Io(e)),
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
