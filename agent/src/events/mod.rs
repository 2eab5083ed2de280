//! The events the agent raises, as types: one [`Event`] variant per kind, each carrying
//! its typed details, and the [`Severity`] enum. Producers build a variant; the outbox
//! turns it into the published `EventPayload` (`crate::payload`), whose `kind` and
//! `details` are exactly what `schemas/event.schema.json` describes (checked in
//! `tests.rs` for every variant, and the set of kinds against the schema's).
//!
//! The published payload keeps `kind` a string and `details` a JSON object: receivers
//! (and the outbox, reading records written by other versions) must accept kinds they do
//! not know. [`crate::payload::EventPayload::event`] gives the typed view back.

mod command;
mod device;
mod model;
mod operator;
mod severity;
mod store;
#[cfg(test)]
mod tests;

use serde::{Deserialize, Serialize};

pub use command::CommandAudit;
pub use device::{DeviceConnected, DeviceLost};
pub use model::{
    AnomalyEnded, AnomalyStarted, Contribution, LastLab, MaintenanceDue, MaintenanceWindow, ModelFailed, ModelLoaded, QualityDeviation,
    QualityFigures, QualityRestored,
};
pub use operator::{CertificateTrusted, EventAcknowledged};
pub use severity::Severity;
pub use store::{BufferOverflow, StoreResetDetails, StoreResetReason};

/// Declares [`Event`] from one list, so that a variant, its kind on the wire and
/// [`Event::KINDS`] cannot disagree.
macro_rules! events {
    ($($(#[doc = $doc:literal])* $kind:literal => $variant:ident($details:ty),)*) => {
        /// Something that happened, with its details: serialised as
        /// `{"kind": "<kind>", "details": {…}}` (the rest of the payload is the envelope).
        #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
        #[serde(tag = "kind", content = "details")]
        pub enum Event {
            $($(#[doc = $doc])* #[serde(rename = $kind)] $variant($details),)*
        }

        impl Event {
            /// Every kind the agent raises, as the schema names them.
            pub const KINDS: &'static [&'static str] = &[$($kind),*];

            /// The `kind` on the wire.
            pub fn kind(&self) -> &'static str {
                match self {
                    $(Event::$variant(_) => $kind,)*
                }
            }
        }
    };
}

events! {
    /// A device answered again (or for the first time).
    "device_connected" => DeviceConnected(DeviceConnected),
    /// A device's connection was lost or could not be made.
    "device_lost" => DeviceLost(DeviceLost),
    /// The outbox was found damaged; numbering continues above every number handed out.
    "store_reset" => StoreReset(StoreResetDetails),
    /// Data was dropped to keep the outbox within its bounds.
    "buffer_overflow" => BufferOverflow(BufferOverflow),
    /// A command was carried out (`ok` false: the device refused it or did not answer).
    "command_executed" => CommandExecuted(CommandAudit),
    /// A command was refused; the agent did nothing.
    "command_rejected" => CommandRejected(CommandAudit),
    "model_loaded" => ModelLoaded(ModelLoaded),
    "model_failed" => ModelFailed(ModelFailed),
    "anomaly_started" => AnomalyStarted(AnomalyStarted),
    "anomaly_ended" => AnomalyEnded(AnomalyEnded),
    "quality_deviation" => QualityDeviation(QualityDeviation),
    "quality_restored" => QualityRestored(QualityRestored),
    "maintenance_due" => MaintenanceDue(MaintenanceDue),
    /// An operator acknowledged an event on the status page.
    "event_acknowledged" => EventAcknowledged(EventAcknowledged),
    /// An operator trusted a rejected OPC-UA server certificate on the status page.
    "certificate_trusted" => CertificateTrusted(CertificateTrusted),
}

impl Event {
    /// The severity the schema fixes for this kind (and, for `command_executed` and
    /// `maintenance_due`, for these details).
    pub fn severity(&self) -> Severity {
        match self {
            Event::DeviceConnected(_)
            | Event::ModelLoaded(_)
            | Event::AnomalyEnded(_)
            | Event::QualityRestored(_)
            | Event::EventAcknowledged(_)
            | Event::CertificateTrusted(_) => Severity::Info,
            Event::DeviceLost(_)
            | Event::BufferOverflow(_)
            | Event::CommandRejected(_)
            | Event::ModelFailed(_)
            | Event::AnomalyStarted(_)
            | Event::QualityDeviation(_) => Severity::Warning,
            Event::StoreReset(_) => Severity::Critical,
            Event::CommandExecuted(audit) if audit.ok => Severity::Info,
            Event::CommandExecuted(_) => Severity::Warning,
            Event::MaintenanceDue(due) if due.critical => Severity::Critical,
            Event::MaintenanceDue(_) => Severity::Warning,
        }
    }

    /// True for the events that end a model's active state (`anomaly_ended`,
    /// `quality_restored`).
    pub fn ends_activity(&self) -> bool {
        matches!(self, Event::AnomalyEnded(_) | Event::QualityRestored(_))
    }

    /// The details alone, as the JSON object published under `details`.
    pub fn details(&self) -> Result<serde_json::Value, serde_json::Error> {
        let mut tagged = serde_json::to_value(self)?;
        Ok(tagged.get_mut("details").map(serde_json::Value::take).unwrap_or_default())
    }

    /// The typed event of a published `kind` and `details`; an error for a kind this
    /// build does not know or details that do not fit it. `severity`: the published one
    /// (it tells a critical `maintenance_due`, which its details do not).
    pub fn parse(kind: &str, details: &serde_json::Value, severity: Severity) -> Result<Event, serde_json::Error> {
        let mut event: Event = serde_json::from_value(serde_json::json!({ "kind": kind, "details": details }))?;
        if let Event::MaintenanceDue(due) = &mut event {
            due.critical = severity == Severity::Critical;
        }
        Ok(event)
    }
}
