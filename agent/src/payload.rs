//! The MQTT contract: the JSON the ERP receives. Field names here are a public API;
//! change them only with a new contract version. Schemas: `schemas/*.json`.

use chrono::{DateTime, SecondsFormat, Utc};
use edge_drivers::{Sample, Value};
use serde::{Deserialize, Serialize};

use crate::events::{Event, Severity};

/// One sample inside a telemetry batch: `{"tag","v","q","ts"}` (+ `"reason"` when not good,
/// + `"server_ts"` when the protocol has one).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WireSample {
    pub tag: String,
    /// The value; `null` when the quality is bad and there is none.
    pub v: Option<Value>,
    /// `good`, `bad` or `uncertain`.
    pub q: String,
    /// Source timestamp, RFC 3339 UTC with milliseconds.
    pub ts: String,
    /// The server's timestamp (OPC-UA `ServerTimestamp`), same format; absent for Modbus.
    /// Optional with a default, so records stored before it existed still decode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_ts: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl From<&Sample> for WireSample {
    fn from(s: &Sample) -> Self {
        WireSample {
            tag: s.tag.clone(),
            v: s.value.clone(),
            q: s.quality.code().to_string(),
            ts: rfc3339(s.source_ts),
            server_ts: s.server_ts.map(rfc3339),
            reason: s.quality.reason().map(str::to_string),
        }
    }
}

/// `…/telemetry/{device}`: one batch of one device.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TelemetryPayload {
    pub gateway: String,
    pub device: String,
    /// +1 per batch per gateway, across restarts: a gap means data the ERP never got,
    /// a repeat is a duplicate to drop.
    pub batch_seq: u64,
    /// True when the batch is sent from the buffer after an outage or restart.
    pub historical: bool,
    pub samples: Vec<WireSample>,
}

/// `…/status` (retained): the gateway's presence; the MQTT Will publishes `offline`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StatusPayload {
    /// `online` or `offline`.
    pub state: String,
    pub ts: String,
    pub version: String,
}

/// `…/events`: something that happened.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventPayload {
    /// Unique per gateway, across restarts (`{gateway}-{event_seq}`): de-duplicate on it.
    pub id: String,
    /// `device_connected`, `device_lost`, … ([`Event::kind`]; any string when read back).
    pub kind: String,
    pub gateway: String,
    /// The device or asset it concerns.
    pub asset: String,
    pub severity: Severity,
    pub ts: String,
    /// The kind's details (`crate::events` has their types). Kept as JSON here: the
    /// outbox also holds records written by other versions, and receivers must accept
    /// kinds they do not know.
    #[serde(default)]
    pub details: serde_json::Value,
}

impl EventPayload {
    /// The payload of `event`, numbered `id`.
    pub fn new(id: String, gateway: String, asset: String, ts: DateTime<Utc>, event: &Event) -> Result<Self, serde_json::Error> {
        Ok(EventPayload {
            id,
            kind: event.kind().to_string(),
            gateway,
            asset,
            severity: event.severity(),
            ts: rfc3339(ts),
            details: event.details()?,
        })
    }

    /// The typed event; an error for a kind this build does not know, or details that do
    /// not fit its kind.
    pub fn event(&self) -> Result<Event, serde_json::Error> {
        Event::parse(&self.kind, &self.details, self.severity)
    }
}

pub const VERSION: &str = env!("CARGO_PKG_VERSION");

pub fn rfc3339(ts: DateTime<Utc>) -> String {
    ts.to_rfc3339_opts(SecondsFormat::Millis, true)
}

pub fn status(state: &str) -> StatusPayload {
    StatusPayload { state: state.to_string(), ts: rfc3339(Utc::now()), version: VERSION.to_string() }
}
