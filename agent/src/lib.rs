//! The edge agent: config, store-and-forward outbox, MQTT uplink, status page and the
//! runtime that supervises them. The binary (`main.rs`) is a thin command-line shell.

pub mod analytics;
pub mod cli;
pub mod commands;
pub mod config;
// `edge-agent demo` (feature `demo`, on by default; the gateway package leaves it out).
#[cfg(feature = "demo")]
pub mod demo;
pub mod events;
pub mod gpio;
pub mod health;
pub mod history;
pub mod host;
pub mod live;
pub mod payload;
pub mod recent_events;
pub mod runtime;
pub mod sparkplug;
pub mod store;
pub mod uplink;
pub mod watch;
pub mod web;
