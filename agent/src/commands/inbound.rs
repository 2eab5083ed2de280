//! What arrives from the uplink: one MQTT message on `…/cmd/{name}`
//! ([`crate::uplink::InboundCommand`]: the last topic level and the raw payload).

pub use crate::uplink::InboundCommand;
