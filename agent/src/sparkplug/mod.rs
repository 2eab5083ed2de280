//! Sparkplug B 3.0 edge node (`mqtt.payload = "sparkplug"`): the payloads, topics and
//! state an edge node keeps, on top of the outbox and uplink the JSON mode uses.
//!
//! - [`config`]: `[sparkplug]` (group id, edge node id, primary host, reboot).
//! - [`bdseq`]: the birth/death sequence number, persisted crash-safe in `data_dir`.
//! - [`catalog`]: which metrics each device has: name, alias, datatype, properties.
//! - [`node`]: the edge node (pure, no I/O): NBIRTH, DBIRTH, DDATA and NDEATH payloads,
//!   their topics, `seq`, and which devices were born in this session.
//!
//! **Why `srad-types` and not `srad-eon`.** `srad-types` is the prost code generated from
//! the Eclipse Tahu `sparkplug_b.proto` (MIT OR Apache-2.0), so we use its types for every
//! payload and need no `.proto`, `protoc` or build script (nothing extra for the ARM cross
//! builds). `srad-eon`'s edge node owns its MQTT client and publishes from memory: it
//! cannot give the guarantee the agent makes (nothing published that was not stored first;
//! deleted only on the broker's PUBACK), so the node's state machine lives here instead,
//! driven by `uplink::session`.
//!
//! **QoS.** Sparkplug 3.0 asks for QoS 0 on BIRTH and DATA messages; the agent publishes
//! them with QoS 1, because a batch leaves the outbox only on its PUBACK (design §5). Hosts
//! accept QoS 1 (it is a subscriber-side no-op); the NDEATH Will is QoS 1 as required.

pub mod bdseq;
pub mod catalog;
pub mod config;
pub mod node;

pub use srad_types::payload::{DataType, Payload};
