//! Commands from the ERP over MQTT (`…/cmd/{name}` in, `…/cmd/response` out).
//!
//! - [`config`]: the `[commands]` section: writes on/off, the allowlist of writable tags.
//! - [`inbound`]: one message as the uplink hands it over.
//! - [`parse`]: payload → typed [`parse::Command`] (pure, fuzzed).
//! - [`policy`]: may this write go to the PLC? (pure).
//! - [`handler`]: the task that runs them, replies, and records the audit events.
//! - [`recent`]: commands already carried out, so a repeat is answered, not run again.

pub mod config;
pub mod handler;
pub mod inbound;
pub mod parse;
pub mod policy;
pub mod recent;

pub use config::{CommandsConfig, WritableTag};
pub use handler::{CommandCounters, Handler, Outcome};
pub use inbound::InboundCommand;
pub use parse::{parse, Command, ParseError, WriteCommand};
