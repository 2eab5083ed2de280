//! Simulated plants, served over real protocol servers on loopback.
//!
//! - [`register_server`]: a Modbus TCP server over an in-memory register bank.
//! - [`sugar_mill`]: a sugar mill whose process values move like a real one's.

pub mod opcua_server;
pub mod register_server;
pub mod sugar_mill;
