//! What every driver produces: one reading of one tag.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// A tag's value, already decoded and scaled into engineering units.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Value {
    Bool(bool),
    Int(i64),
    Float(f64),
    Text(String),
}

/// How far a value can be trusted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "q", content = "reason")]
pub enum Quality {
    Good,
    /// The read failed; the reason says how (timeout, exception code, connection lost…).
    Bad(String),
    Uncertain(String),
}

impl Quality {
    pub fn is_good(&self) -> bool {
        matches!(self, Quality::Good)
    }

    /// The short word used on the wire: `good`, `bad` or `uncertain`.
    pub fn code(&self) -> &'static str {
        match self {
            Quality::Good => "good",
            Quality::Bad(_) => "bad",
            Quality::Uncertain(_) => "uncertain",
        }
    }

    pub fn reason(&self) -> Option<&str> {
        match self {
            Quality::Good => None,
            Quality::Bad(r) | Quality::Uncertain(r) => Some(r),
        }
    }
}

/// One reading of one tag.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Tag name, unique within its device.
    pub tag: String,
    /// `None` when the quality is bad and there is no value to give.
    pub value: Option<Value>,
    pub quality: Quality,
    /// When the device says the value was taken (Modbus has no such time: the read time).
    pub source_ts: DateTime<Utc>,
    /// When the server says it last knew the value (OPC-UA `ServerTimestamp`); `None` for
    /// protocols without one (Modbus) and for samples the agent makes up (bad on a lost
    /// connection). Kept apart from `source_ts` because a SCADA server relaying a PLC stamps
    /// its own clock here, and the two disagree when either clock drifts.
    pub server_ts: Option<DateTime<Utc>>,
    /// When the agent received it.
    pub agent_ts: DateTime<Utc>,
}

/// Everything one poll of one device produced, handed to the agent in one piece.
#[derive(Debug, Clone)]
pub struct DeviceReport {
    pub device: String,
    pub kind: ReportKind,
}

#[derive(Debug, Clone)]
pub enum ReportKind {
    /// Fresh readings.
    Samples(Vec<Sample>),
    /// The connection to the device came up.
    Connected,
    /// The connection was lost or could not be made; the error says why (its `Display`
    /// is the sentence the operator sees).
    Disconnected(crate::error::DeviceError),
    /// The driver's counters for the device, sent at most about once a second.
    Stats(DriverStats),
}

/// A driver's counters for one device, sent now and then as [`ReportKind::Stats`] and
/// shown on the status page and `/metrics`. Counters only grow (a restarted driver task
/// starts again from zero).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DriverStats {
    /// Polls made (one round of reads of one poll group, whatever its outcome), counted
    /// by the driver: a poll whose readings a deadband held back still counts.
    #[serde(default)]
    pub polls: u64,
    /// Requests sent to the device (reads, writes, read-backs, probes).
    pub requests: u64,
    /// Requests the device did not answer in time.
    pub timeouts: u64,
    /// Requests answered with a protocol exception (illegal address, device busy…).
    pub exceptions: u64,
    /// Requests lost to the connection (closed, reset, garbled frame).
    pub transport_errors: u64,
    /// Readings that could not be decoded (NaN, wrong length).
    pub decode_errors: u64,
    /// Connections made (or serial ports opened) for this device after the first.
    pub reconnects: u64,
    /// Round-trip time of the last answered request, in milliseconds.
    pub last_latency_ms: Option<f64>,
    /// Whether the device is backed off after repeated failures (polled only by a
    /// periodic probe until it answers again).
    pub backed_off: bool,
    /// Times the device was backed off.
    pub backoffs: u64,
    /// Merged requests split because the device refused them.
    pub splits: u64,
    /// OPC-UA: sessions attempted (each one secure channel and session), first included.
    #[serde(default)]
    pub session_attempts: u64,
    /// OPC-UA: subscriptions created again after a reconnect or a lost subscription.
    #[serde(default)]
    pub subscriptions_rebuilt: u64,
    /// OPC-UA: items the server refused or lost (unknown node, bad browse path), counted
    /// each time; they are tried again on the next rebuild.
    #[serde(default)]
    pub bad_items: u64,
    /// OPC-UA: data-change notifications received.
    #[serde(default)]
    pub notifications: u64,
    /// OPC-UA: data-change notifications dropped because the driver's queue was full
    /// (the agent did not take reports in time). Counted per session.
    #[serde(default)]
    pub notifications_dropped: u64,
    /// Standing problems of the device's setup that an operator must see (OPC-UA: a
    /// rejected server certificate waiting for `edge-agent opcua trust`; certificates
    /// trusted without an operator).
    #[serde(default)]
    pub warnings: Vec<String>,
}
