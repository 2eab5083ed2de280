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
    /// The connection was lost or could not be made; the reason says why.
    Disconnected(String),
}
