//! Simulated plants, served over real protocol servers on loopback.
//!
//! - [`register_server`]: a Modbus TCP server over an in-memory register bank.
//! - [`sugar_mill`]: a sugar mill whose process values move like a real one's.
//! - [`mill_condition`]: the mill's faults and degradation (bearing wear, pump cavitation,
//!   syrup purity), which the local models learn.
//! - [`history`]: simulated history as CSV, to train those models.

pub mod opcua_server;
pub mod history;
pub mod mill_condition;
pub mod register_server;
pub mod sugar_mill;
